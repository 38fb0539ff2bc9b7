//! One `/v1/score` request end to end: tokens, scores, ranks, response. The server and the offline
//! scorer both come through here, so the same input gives the same numbers everywhere.
//!
//! A request is one pass (the candidates after the context) plus the passes its options ask for:
//! the candidates after the neutral context (`contrast`), the instruction after each candidate
//! (`reviewer`), the same tokens on a reference model (`reference_model`, run by the daemon on
//! that model's worker). Each pass is scored on its own; [`PreparedRequest::respond`] combines them.

use std::time::{Duration, Instant};

use crate::api::{
    CandidateResult, Contrast, ScoreRequest, ScoreResponse, Timings, TokenDetail, Usage,
};
use crate::reward::{consensus, order_best_first, Aggregate, Aggregates, Alpha, TokenValues};

use super::job::Layouts;
use super::{prepare, EngineError, Model, Prepared, Scored};

/// The largest `consensus` weight accepted: beyond it the aggregate is a tie-breaker only, which
/// a client asks for more plainly by ranking on agreement itself.
pub const MAX_CONSENSUS_WEIGHT: f64 = 100.0;

/// A score request in tokens, ready for a scorer, and when it arrived.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    /// The tokens to score.
    pub prepared: Prepared,
    /// The request's `alpha`.
    pub alpha: Alpha,
    /// The request's `consensus` weight, checked to lie in `0 < w ≤` [`MAX_CONSENSUS_WEIGHT`].
    pub consensus: Option<f64>,
    /// `contrast: "neutral"`: the same candidates after the neutral context.
    pub neutral: Option<Prepared>,
    /// `reviewer`: per candidate, the instruction after it.
    pub reviewer: Option<Vec<Prepared>>,
    started: Instant,
    tokenize_time: Duration,
}

impl PreparedRequest {
    /// Checks and tokenizes `request` on `model`.
    pub fn new(
        model: &Model,
        request: &ScoreRequest,
        default_principle: Option<&str>,
    ) -> Result<Self, EngineError> {
        let started = Instant::now();
        let alpha = match request.alpha {
            None => Alpha::ONE,
            Some(value) => Alpha::new(value).ok_or_else(|| {
                EngineError::InvalidInput(format!(
                    "`alpha` must be from {} to {}, not {value}",
                    Alpha::MIN,
                    Alpha::MAX
                ))
            })?,
        };
        let consensus = match request.consensus {
            None => None,
            // Written so that NaN fails too.
            Some(w) if w > 0.0 && w <= MAX_CONSENSUS_WEIGHT => Some(w),
            Some(w) => {
                return Err(EngineError::InvalidInput(format!(
                    "`consensus` is the weight of the candidates' agreement and must be above 0 \
                     and at most {MAX_CONSENSUS_WEIGHT}, not {w}; leave it out for the plain \
                     aggregate"
                )))
            }
        };
        let prepared = prepare::score_request(model, request, default_principle)?;
        let neutral = match request.contrast {
            None => None,
            Some(Contrast::Neutral) => Some(prepare::neutral(model, request, &prepared)?),
        };
        let reviewer = match request.reviewer {
            false => None,
            true => Some(prepare::reviewer(model, request)?),
        };
        Ok(PreparedRequest {
            prepared,
            alpha,
            consensus,
            neutral,
            reviewer,
            started,
            tokenize_time: started.elapsed(),
        })
    }

    /// Tokens of the context and all candidates.
    pub fn tokens(&self) -> usize {
        self.prepared.tokens()
    }

    /// Tokens of every pass together: what the request costs, checked against `max_tokens`.
    pub fn all_tokens(&self) -> usize {
        let extra = self.neutral.iter().chain(self.reviewer.iter().flatten());
        self.tokens() + extra.map(Prepared::tokens).sum::<usize>()
    }

    /// Tokens of its largest job on the worker: the main pass, the neutral pass, or the reviewer
    /// layouts (one job together); checked against `max_job_tokens`.
    pub fn largest_job(&self) -> usize {
        let neutral = self.neutral.as_ref().map_or(0, Prepared::tokens);
        let reviewer = self.reviewer.iter().flatten().map(Prepared::tokens).sum();
        self.tokens().max(neutral).max(reviewer)
    }

    /// The neutral pass as a request of its own (same `alpha`), for a worker's score job.
    pub fn neutral_pass(&self) -> Option<PreparedRequest> {
        self.neutral.as_ref().map(|neutral| PreparedRequest {
            prepared: neutral.clone(),
            alpha: self.alpha,
            consensus: None,
            neutral: None,
            reviewer: None,
            started: self.started,
            tokenize_time: self.tokenize_time,
        })
    }

    /// The reviewer layouts, each labelled for its error; scored at α = 1 (`log π` is the
    /// model's own log-probability).
    pub fn reviewer_layouts(&self) -> Option<Layouts> {
        self.reviewer.as_ref().map(|layouts| {
            layouts
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("reviewer layout of candidate {i}"), p.clone()))
                .collect()
        })
    }

    /// The same request on another model for `reference_model` (without the contrast and
    /// reviewer passes): the vocabularies must have the same size and this request's tokens there
    /// must be these very tokens, or the difference would compare different things.
    pub fn reference_pass(
        &self,
        model: &Model,
        reference: &Model,
        request: &ScoreRequest,
        default_principle: Option<&str>,
    ) -> Result<PreparedRequest, EngineError> {
        same_vocabulary(model, reference)?;
        let plain = ScoreRequest {
            consensus: None,
            contrast: None,
            reviewer: false,
            ..request.clone()
        };
        let other = PreparedRequest::new(reference, &plain, default_principle)?;
        if other.prepared != self.prepared {
            return Err(EngineError::InvalidInput(
                "`reference_model` tokenizes this request differently from the model: the \
                 contrast needs the same tokenizer (and chat template)"
                    .into(),
            ));
        }
        Ok(other)
    }

    /// The response to `request` from its scores. `total_ms` counts from [`PreparedRequest::new`],
    /// so it includes any time spent queued.
    pub fn respond(
        &self,
        model: &Model,
        model_id: &str,
        request: &ScoreRequest,
        passes: &Passes,
    ) -> Result<ScoreResponse, EngineError> {
        let alpha = self.alpha;
        let scored = &passes.main;
        let aggregate = request.aggregate;
        let n = self.prepared.candidates.len();
        let neutral = passes
            .neutral
            .as_ref()
            .map(|s| self.sums(s, n))
            .transpose()?;
        let reference = passes
            .reference
            .as_ref()
            .map(|s| self.sums(s, n))
            .transpose()?;
        let reviewer = match &passes.reviewer {
            None => None,
            Some(scored) => Some(reviewer_terms(scored, n, aggregate)?),
        };
        let mut results = Vec::with_capacity(n);
        for (index, (candidate, values)) in self
            .prepared
            .candidates
            .iter()
            .zip(&scored.candidates)
            .enumerate()
        {
            let sums = finite(index, values, alpha)?;
            let mut result = CandidateResult::new(index, aggregate, &sums, values.len());
            result.neutral = neutral.as_ref().map(|all| all[index].get(aggregate));
            result.reference = reference.as_ref().map(|all| all[index].get(aggregate));
            result.reviewer = reviewer.as_ref().map(|all| all[index]);
            result.score += result.reviewer.unwrap_or(0.0)
                - result.neutral.unwrap_or(0.0)
                - result.reference.unwrap_or(0.0);
            if request.return_tokens {
                let texts = model.token_texts(&candidate.tokens);
                result.tokens = Some(
                    candidate
                        .tokens
                        .iter()
                        .zip(texts)
                        .zip(values)
                        .map(|((token, text), values)| TokenDetail::new(token.id(), text, values))
                        .collect(),
                );
            }
            results.push(result);
        }
        if let Some(weight) = self.consensus {
            // The texts as sent (before any `max_candidate_tokens` cut): agreement is about what
            // the candidates say, not about how much of them was scored.
            let texts: Vec<&str> = request.candidates.iter().map(String::as_str).collect();
            let agreement = consensus::agreement(&texts);
            let aggregate: Vec<f64> = results.iter().map(|r| r.score).collect();
            let combined = consensus::combine(&aggregate, &agreement, weight);
            for ((result, agreement), score) in results.iter_mut().zip(agreement).zip(combined) {
                result.agreement = Some(agreement);
                result.score = score;
            }
        }
        let scores: Vec<f64> = results.iter().map(|r| r.score).collect();
        let order = order_best_first(&scores);
        for (rank, &index) in order.iter().enumerate() {
            results[index].rank = rank + 1;
        }

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        Ok(ScoreResponse {
            model: model_id.to_owned(),
            aggregate,
            reference_model: passes.reference_model.clone(),
            results,
            order,
            usage: Usage {
                prompt_tokens: self.prepared.context.len(),
                cached_tokens: scored.cached_tokens,
                candidate_tokens: self.prepared.candidate_tokens(),
                total_tokens: self.tokens(),
            },
            timings: Timings {
                queue_ms: 0.0,
                prompt_ms: ms(self.tokenize_time + scored.prompt_time),
                candidates_ms: ms(scored.candidates_time),
                total_ms: ms(self.started.elapsed()),
            },
        })
    }
}

/// The first check of a `reference_model`: the vocabularies must have the same size (the very
/// tokens are checked per request by [`PreparedRequest::reference_pass`]). `endorm eval` runs it
/// once before any item, so a reference of another family stops the run at once.
pub fn same_vocabulary(model: &Model, reference: &Model) -> Result<(), EngineError> {
    let (ours, theirs) = (model.meta().n_vocab, reference.meta().n_vocab);
    if ours != theirs {
        return Err(EngineError::InvalidInput(format!(
            "`reference_model` has a vocabulary of {theirs} tokens, the model {ours}: the \
             contrast needs the same tokenizer"
        )));
    }
    Ok(())
}

/// What the passes of one request computed.
#[derive(Debug, Clone)]
pub struct Passes {
    /// The candidates after the request's context.
    pub main: Scored,
    /// The candidates after the neutral context.
    pub neutral: Option<Scored>,
    /// The instruction after each candidate, one layout per candidate.
    pub reviewer: Option<Vec<Scored>>,
    /// The main pass on the reference model.
    pub reference: Option<Scored>,
    /// The reference model's id.
    pub reference_model: Option<String>,
}

impl Passes {
    /// The request's own pass alone.
    pub fn main(main: Scored) -> Passes {
        Passes {
            main,
            neutral: None,
            reviewer: None,
            reference: None,
            reference_model: None,
        }
    }
}

impl PreparedRequest {
    /// Each candidate's aggregates in another pass over the same candidates.
    fn sums(&self, scored: &Scored, n: usize) -> Result<Vec<Aggregates>, EngineError> {
        if scored.candidates.len() != n {
            return Err(EngineError::Internal(
                "a contrast pass scored another number of candidates".into(),
            ));
        }
        let sums = scored.candidates.iter().enumerate();
        sums.map(|(i, values)| finite(i, values, self.alpha))
            .collect()
    }
}

/// The candidate's aggregates, refused when not finite.
fn finite(index: usize, values: &[TokenValues], alpha: Alpha) -> Result<Aggregates, EngineError> {
    let sums = Aggregates::of(values, alpha);
    if [sums.endo, sums.endo_mean, sums.logprob, sums.logprob_mean]
        .iter()
        .all(|x| x.is_finite())
    {
        Ok(sums)
    } else {
        Err(EngineError::NotFinite(format!(
            "candidate {index} scored {} (endo); is the model file intact?",
            sums.endo
        )))
    }
}

/// Each candidate's reviewer term: `Σ log π` of the instruction's tokens after it (scored at
/// α = 1), divided by their count for the `*_mean` aggregates.
fn reviewer_terms(
    scored: &[Scored],
    n: usize,
    aggregate: Aggregate,
) -> Result<Vec<f64>, EngineError> {
    if scored.len() != n || scored.iter().any(|s| s.candidates.len() != 1) {
        return Err(EngineError::Internal(
            "the reviewer pass scored another number of layouts".into(),
        ));
    }
    let mean = matches!(aggregate, Aggregate::EndoMean | Aggregate::LogprobMean);
    scored
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sums = finite(i, &s.candidates[0], Alpha::ONE)?;
            Ok(if mean {
                sums.logprob_mean
            } else {
                sums.logprob
            })
        })
        .collect()
}

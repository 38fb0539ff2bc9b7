//! One `/v1/score` request end to end: tokens, scores, ranks, response. The server and the offline
//! scorer both come through here, so the same input gives the same numbers everywhere.

use std::time::{Duration, Instant};

use crate::api::{CandidateResult, ScoreRequest, ScoreResponse, Timings, TokenDetail, Usage};
use crate::reward::{consensus, order_best_first, Aggregates, Alpha};

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
        Ok(PreparedRequest {
            prepared,
            alpha,
            consensus,
            started,
            tokenize_time: started.elapsed(),
        })
    }

    /// Tokens of the context and all candidates.
    pub fn tokens(&self) -> usize {
        self.prepared.tokens()
    }

    /// The response to `request` from its scores. `total_ms` counts from [`PreparedRequest::new`],
    /// so it includes any time spent queued.
    pub fn respond(
        &self,
        model: &Model,
        model_id: &str,
        request: &ScoreRequest,
        scored: &Scored,
    ) -> Result<ScoreResponse, EngineError> {
        let alpha = self.alpha;
        let mut results = Vec::with_capacity(self.prepared.candidates.len());
        for (index, (candidate, values)) in self
            .prepared
            .candidates
            .iter()
            .zip(&scored.candidates)
            .enumerate()
        {
            let sums = Aggregates::of(values, alpha);
            if ![sums.endo, sums.endo_mean, sums.logprob, sums.logprob_mean]
                .iter()
                .all(|x| x.is_finite())
            {
                return Err(EngineError::NotFinite(format!(
                    "candidate {index} scored {} (endo); is the model file intact?",
                    sums.endo
                )));
            }
            let mut result = CandidateResult::new(index, request.aggregate, &sums, values.len());
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
            aggregate: request.aggregate,
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

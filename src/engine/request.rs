//! One `/v1/score` request end to end: tokens, passes, scores, ranks, response. The daemon, the
//! offline scorer and `endorm eval` all come through here, so the same input gives the same
//! numbers everywhere.
//!
//! A request is its main pass (the candidates after the context) plus one [`Pass`] per option
//! that needs more scoring: the candidates after the neutral context (`contrast`), the
//! instruction after each candidate (`reviewer`), the same tokens on a reference model
//! (`reference_model`, which the daemon runs on that model's worker). Whoever runs the passes
//! hands their scores back to [`PreparedRequest::respond`], which combines each candidate's
//! [`Terms`] with its [`Recipe`] (`crate::reward`), the one place the terms meet.

use std::time::{Duration, Instant};

use crate::api::{
    CandidateResult, Contrast, Format, ScoreRequest, ScoreResponse, Timings, TokenDetail, Usage,
};
use crate::reward::{
    consensus, order_best_first, Aggregate, Aggregates, Alpha, Baseline, Recipe, Terms, TokenValues,
};

use super::pass::{Layout, Pass, PassKind};
use super::{prepare, EngineError, Model, Prepared, Scored, Scorer};

/// The largest `consensus` weight accepted: beyond it the aggregate is a tie-breaker only, which
/// a client asks for more plainly by ranking on agreement itself.
pub const MAX_CONSENSUS_WEIGHT: f64 = 100.0;

/// A score request in tokens with the passes its options add, ready for a scorer, and when it
/// arrived.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    /// The main pass's tokens: the candidates after the context.
    pub prepared: Prepared,
    /// The request's `alpha`.
    pub alpha: Alpha,
    /// Which terms make each candidate's score.
    pub recipe: Recipe,
    /// The request's `consensus` weight, checked to lie in `0 < w ≤` [`MAX_CONSENSUS_WEIGHT`].
    pub consensus: Option<f64>,
    /// How it was read: its `format`, or the model's default (chat, raw without a template).
    pub format: Format,
    /// The passes besides the main one.
    extra: Vec<Pass>,
    started: Instant,
    tokenize_time: Duration,
}

impl PreparedRequest {
    /// Checks and tokenizes `request` on `model`, with the passes its options ask for. A
    /// `reference` model (the request's `reference_model`, or the model's configured one) adds
    /// the reference pass.
    pub fn new(
        model: &Model,
        reference: Option<&Model>,
        request: &ScoreRequest,
        default_principle: Option<&str>,
    ) -> Result<Self, EngineError> {
        let started = Instant::now();
        let alpha = alpha(request.alpha)?;
        let consensus = consensus_weight(request.consensus)?;
        if request.aggregate == Aggregate::EndoLc {
            let models = [(Some(model), "model"), (reference, "reference model")];
            if let Some((_, which)) = models
                .into_iter()
                .find(|(m, _)| m.is_some_and(|m| m.baseline().is_none()))
            {
                return Err(EngineError::InvalidInput(format!(
                    "aggregate `endo_lc` needs the {which}'s baseline, which could not be \
                     measured when it loaded (the daemon's log says why)"
                )));
            }
        }
        let prepared = prepare::score_request(model, request, default_principle)?;
        let mut extra = Vec::new();
        if let Some(Contrast::Neutral) = request.contrast {
            let neutral = prepare::neutral(model, request, &prepared)?;
            extra.push(Pass::one(PassKind::Neutral, alpha, neutral));
        }
        if request.reviewer {
            // Scored at α = 1: the term is the model's own log-probability of the instruction.
            let layouts = prepare::reviewer(model, request)?
                .into_iter()
                .enumerate()
                .map(|(i, prepared)| Layout {
                    prepared,
                    label: Some(format!("reviewer layout of candidate {i}")),
                })
                .collect();
            extra.push(Pass {
                kind: PassKind::Reviewer,
                alpha: Alpha::ONE,
                layouts,
            });
        }
        if let Some(reference) = reference {
            let tokens = reference_tokens(model, reference, request, default_principle, &prepared)?;
            extra.push(Pass::one(PassKind::Reference, alpha, tokens));
        }
        let recipe = Recipe {
            aggregate: request.aggregate,
            neutral: request.contrast.is_some(),
            reviewer: request.reviewer,
            reference: reference.is_some(),
        };
        Ok(PreparedRequest {
            prepared,
            alpha,
            recipe,
            consensus,
            format: prepare::format(model, request),
            extra,
            started,
            tokenize_time: started.elapsed(),
        })
    }

    /// Every pass: the main one first.
    pub fn passes(&self) -> Vec<Pass> {
        let main = Pass::one(PassKind::Main, self.alpha, self.prepared.clone());
        std::iter::once(main)
            .chain(self.extra.iter().cloned())
            .collect()
    }

    /// The pass of `kind`, if the request has one.
    pub fn pass(&self, kind: PassKind) -> Option<Pass> {
        self.passes().into_iter().find(|pass| pass.kind == kind)
    }

    /// Tokens of the context and all candidates.
    pub fn tokens(&self) -> usize {
        self.prepared.tokens()
    }

    /// Tokens of every pass together: what the request costs, checked against `max_tokens`.
    pub fn all_tokens(&self) -> usize {
        self.tokens() + self.extra.iter().map(Pass::tokens).sum::<usize>()
    }

    /// Tokens of its largest pass (one job on a worker), checked against `max_job_tokens`.
    pub fn largest_job(&self) -> usize {
        let extra = self.extra.iter().map(Pass::tokens);
        extra.fold(self.tokens(), usize::max)
    }

    /// The response to `request` from the scores of its passes. `total_ms` counts from
    /// [`PreparedRequest::new`], so it includes any time spent queued. `reference_model` names
    /// the model the reference pass ran on.
    pub fn respond(
        &self,
        model: &Model,
        model_id: &str,
        request: &ScoreRequest,
        passes: &Passes,
        reference_model: Option<&str>,
    ) -> Result<ScoreResponse, EngineError> {
        let n = self.prepared.candidates.len();
        let main = passes.main()?;
        let terms = passes.terms(n, self.alpha)?;
        let aggregate = self.recipe.aggregate;
        let mut results = Vec::with_capacity(n);
        for (index, ((candidate, values), terms)) in self
            .prepared
            .candidates
            .iter()
            .zip(&main.candidates)
            .zip(&terms)
            .enumerate()
        {
            let mut result = CandidateResult::new(index, aggregate, &terms.main, values.len());
            result.neutral = terms.neutral(aggregate);
            result.reference = terms.reference(aggregate);
            result.reviewer = terms.reviewer(aggregate);
            result.score = self.recipe.score(terms).ok_or_else(|| {
                EngineError::Internal("a pass the request asked for did not run".into())
            })?;
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
            let scores: Vec<f64> = results.iter().map(|r| r.score).collect();
            let combined = consensus::combine(&scores, &agreement, weight);
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
            format: self.format,
            reference_model: reference_model.map(str::to_owned),
            results,
            order,
            usage: Usage {
                prompt_tokens: self.prepared.context.len(),
                cached_tokens: main.cached_tokens,
                candidate_tokens: self.prepared.candidate_tokens(),
                decoded_candidate_tokens: main.decoded_tokens,
                shared_candidate_tokens: self
                    .prepared
                    .candidate_tokens()
                    .saturating_sub(main.decoded_tokens),
                total_tokens: self.tokens(),
            },
            timings: Timings {
                queue_ms: 0.0,
                prompt_ms: ms(self.tokenize_time + main.prompt_time),
                candidates_ms: ms(main.candidates_time),
                total_ms: ms(self.started.elapsed()),
            },
        })
    }
}

/// The request's `alpha`, checked.
fn alpha(value: Option<f64>) -> Result<Alpha, EngineError> {
    match value {
        None => Ok(Alpha::ONE),
        Some(value) => Alpha::new(value).ok_or_else(|| {
            EngineError::InvalidInput(format!(
                "`alpha` must be from {} to {}, not {}",
                Alpha::MIN,
                Alpha::MAX,
                short_number(value)
            ))
        }),
    }
}

/// A number as a person reads it in an error: `1.7e308`, not 309 digits.
fn short_number(value: f64) -> String {
    if value != 0.0 && !(1e-4..1e6).contains(&value.abs()) {
        format!("{value:e}")
    } else {
        value.to_string()
    }
}

/// The request's `consensus` weight, checked.
fn consensus_weight(value: Option<f64>) -> Result<Option<f64>, EngineError> {
    match value {
        None => Ok(None),
        // Written so that NaN fails too.
        Some(w) if w > 0.0 && w <= MAX_CONSENSUS_WEIGHT => Ok(Some(w)),
        Some(w) => Err(EngineError::InvalidInput(format!(
            "`consensus` is the weight of the candidates' agreement and must be above 0 and at \
             most {MAX_CONSENSUS_WEIGHT}, not {}; leave it out for the plain aggregate",
            short_number(w)
        ))),
    }
}

/// The main pass's tokens as the reference model tokenizes them: the vocabularies must have the
/// same size and the tokens must be these very tokens, or the difference would compare different
/// things.
fn reference_tokens(
    model: &Model,
    reference: &Model,
    request: &ScoreRequest,
    default_principle: Option<&str>,
    main: &Prepared,
) -> Result<Prepared, EngineError> {
    same_vocabulary(model, reference)?;
    let theirs = prepare::score_request(reference, request, default_principle)?;
    if &theirs != main {
        return Err(EngineError::InvalidInput(
            "`reference_model` tokenizes this request differently from the model: the contrast \
             needs the same tokenizer (and chat template)"
                .into(),
        ));
    }
    Ok(theirs)
}

/// The first check of a `reference_model`: the vocabularies must have the same size (the very
/// tokens are checked per request). `endorm eval` runs it once before any item, so a reference of
/// another family stops the run at once.
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

/// What the passes of one request computed, by kind.
#[derive(Debug, Clone, Default)]
pub struct Passes(Vec<(PassKind, Vec<Scored>)>);

impl Passes {
    /// The request's main pass alone.
    pub fn main_only(main: Scored) -> Passes {
        Passes(vec![(PassKind::Main, vec![main])])
    }

    /// Records the scores of a pass.
    pub fn add(&mut self, kind: PassKind, scored: Vec<Scored>) {
        self.0.push((kind, scored));
    }

    /// The scores of the pass of `kind`.
    pub fn get(&self, kind: PassKind) -> Option<&[Scored]> {
        let found = self.0.iter().find(|(k, _)| *k == kind);
        found.map(|(_, scored)| scored.as_slice())
    }

    fn main(&self) -> Result<&Scored, EngineError> {
        match self.get(PassKind::Main) {
            Some([main]) => Ok(main),
            _ => Err(EngineError::Internal("the main pass did not run".into())),
        }
    }

    /// Each of `n` candidates' terms, refused when a score is not finite.
    pub fn terms(&self, n: usize, alpha: Alpha) -> Result<Vec<Terms>, EngineError> {
        let main = self.main()?;
        if main.candidates.len() != n {
            return Err(miscounted(PassKind::Main));
        }
        let sums = main.candidates.iter().enumerate();
        let main: Vec<Aggregates> = sums
            .map(|(i, values)| finite(i, values, alpha, main.baseline))
            .collect::<Result<_, _>>()?;
        self.terms_around(&main, alpha)
    }

    /// Each candidate's terms from its `main` sums (given, not scored here: `endorm eval` reads
    /// them from its record of the main pass) and the other passes' scores.
    pub fn terms_around(
        &self,
        main: &[Aggregates],
        alpha: Alpha,
    ) -> Result<Vec<Terms>, EngineError> {
        let n = main.len();
        // The sums of each candidate in a pass of one layout, or of one layout per candidate.
        let sums = |kind: PassKind, alpha: Alpha| -> Result<Option<Vec<Aggregates>>, EngineError> {
            // Each candidate's values and the baseline of the model that scored them.
            let values: Vec<(&Vec<TokenValues>, Option<Baseline>)> = match self.get(kind) {
                None => return Ok(None),
                Some([one]) if kind != PassKind::Reviewer => {
                    one.candidates.iter().map(|c| (c, one.baseline)).collect()
                }
                Some(each)
                    if kind == PassKind::Reviewer
                        && each.iter().all(|s| s.candidates.len() == 1) =>
                {
                    each.iter()
                        .map(|s| (&s.candidates[0], s.baseline))
                        .collect()
                }
                Some(_) => return Err(miscounted(kind)),
            };
            if values.len() != n {
                return Err(miscounted(kind));
            }
            let sums = values.into_iter().enumerate();
            sums.map(|(i, (values, baseline))| finite(i, values, alpha, baseline))
                .collect::<Result<_, _>>()
                .map(Some)
        };
        let neutral = sums(PassKind::Neutral, alpha)?;
        let reference = sums(PassKind::Reference, alpha)?;
        // Scored at α = 1: the model's own log-probability of the instruction.
        let reviewer = sums(PassKind::Reviewer, Alpha::ONE)?;
        let pick = |all: &Option<Vec<Aggregates>>, i: usize| all.as_ref().map(|all| all[i]);
        Ok((0..n)
            .map(|i| Terms {
                main: main[i],
                neutral: pick(&neutral, i),
                reviewer: pick(&reviewer, i),
                reference: pick(&reference, i),
            })
            .collect())
    }
}

fn miscounted(kind: PassKind) -> EngineError {
    EngineError::Internal(format!(
        "the {kind:?} pass scored another number of candidates"
    ))
}

/// The candidate's aggregates, refused when not finite.
fn finite(
    index: usize,
    values: &[TokenValues],
    alpha: Alpha,
    baseline: Option<Baseline>,
) -> Result<Aggregates, EngineError> {
    let sums = Aggregates::of(values, alpha, baseline);
    if sums.is_finite() {
        Ok(sums)
    } else {
        Err(EngineError::NotFinite(format!(
            "candidate {index} scored {} (endo); is the model file intact?",
            sums.endo
        )))
    }
}

impl Scorer<'_> {
    /// Scores a `/v1/score` request end to end on this scorer: tokens, every pass, response.
    /// `model_id` names the model in the response; `default_principle` is the model's
    /// configured principle. A `reference_model` needs a second model ([`score_with`]).
    pub fn score_request(
        &mut self,
        model_id: &str,
        request: &ScoreRequest,
        default_principle: Option<&str>,
    ) -> Result<ScoreResponse, EngineError> {
        if request.reference_model.is_some() {
            return Err(EngineError::InvalidInput(
                "`reference_model` needs the daemon, which serves both models".into(),
            ));
        }
        score_with(self, None, model_id, request, default_principle)
    }
}

/// Scores `request` with every pass run here, one after another: the reference pass on
/// `reference` (`(scorer, id)`), the others on `scorer`. The models' baselines are measured on
/// first use ([`Scorer::baseline`]) whatever the aggregate, so that every result carries
/// `endo_lc` as the daemon's do (it measures them at load); only `endo_lc` needs them.
pub fn score_with(
    scorer: &mut Scorer<'_>,
    mut reference: Option<(&mut Scorer<'_>, &str)>,
    model_id: &str,
    request: &ScoreRequest,
    default_principle: Option<&str>,
) -> Result<ScoreResponse, EngineError> {
    let measured = [
        scorer.baseline(),
        reference
            .as_mut()
            .map_or(Ok(Baseline(0.0)), |(r, _)| r.baseline()),
    ];
    if request.aggregate == Aggregate::EndoLc {
        for baseline in measured {
            baseline.map_err(|error| {
                EngineError::InvalidInput(format!(
                    "aggregate `endo_lc` needs the model's baseline, which cannot be measured: \
                     {error}"
                ))
            })?;
        }
    }
    let model = scorer.model();
    let reference_model = reference.as_ref().map(|(r, _)| r.model());
    let prepared = PreparedRequest::new(model, reference_model, request, default_principle)?;
    let mut passes = Passes::default();
    for pass in prepared.passes() {
        let scored = match (&mut reference, pass.kind.on_reference()) {
            (Some((reference, _)), true) => reference.run_pass(&pass)?,
            _ => scorer.run_pass(&pass)?,
        };
        passes.add(pass.kind, scored);
    }
    let reference_id = reference.as_ref().map(|(_, id)| *id);
    prepared.respond(model, model_id, request, &passes, reference_id)
}

/// OpenRLHF's `/get_reward` in tokens: one pass per group of queries that share a context
/// ([`prepare::rewards`]), each a job of its own so other clients' requests run between them.
#[derive(Debug, Clone)]
pub struct PreparedRewards {
    /// One pass per group, in order.
    pub passes: Vec<Pass>,
    /// The query indices of each group's candidates.
    owners: Vec<Vec<usize>>,
    /// How many queries.
    count: usize,
}

impl PreparedRewards {
    /// Tokenizes `texts` (with their `prompts`, if given) on `model`.
    pub fn new(
        model: &Model,
        texts: &[String],
        prompts: Option<&[String]>,
    ) -> Result<Self, EngineError> {
        let groups = prepare::rewards(model, texts, prompts)?;
        let (passes, owners) = groups
            .into_iter()
            .map(|(prepared, indices)| {
                let layout = Layout {
                    prepared,
                    label: Some(format!("query[{}]", indices[0])),
                };
                let pass = Pass {
                    kind: PassKind::Main,
                    alpha: Alpha::ONE,
                    layouts: vec![layout],
                };
                (pass, indices)
            })
            .unzip();
        Ok(PreparedRewards {
            passes,
            owners,
            count: texts.len(),
        })
    }

    /// Tokens of every pass together.
    pub fn tokens(&self) -> usize {
        self.passes.iter().map(Pass::tokens).sum()
    }

    /// Tokens of the largest pass.
    pub fn largest_job(&self) -> usize {
        self.passes.iter().map(Pass::tokens).max().unwrap_or(0)
    }

    /// Each query's `endo` (α = 1) from its group's scores, in query order; a query with nothing
    /// to score gets 0, the empty sum. Refused when a score is not finite.
    pub fn rewards(&self, scored: &[Vec<Scored>]) -> Result<Vec<f64>, EngineError> {
        if scored.len() != self.passes.len() {
            return Err(miscounted(PassKind::Main));
        }
        let mut rewards = vec![0.0; self.count];
        for (scored, indices) in scored.iter().flatten().zip(&self.owners) {
            for (values, &index) in scored.candidates.iter().zip(indices) {
                rewards[index] = finite(index, values, Alpha::ONE, None)?.endo;
            }
        }
        Ok(rewards)
    }
}

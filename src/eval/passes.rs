//! What each pass of an evaluation computes for one item: the length and consensus baselines
//! (no model), endorm's reward with the passes its options add (through
//! [`PreparedRequest`], as `/v1/score` would score them), and the judges ([`super::judges`]).

use std::collections::BTreeMap;
use std::time::Instant;

use super::judges;
use super::methods::{
    distinct, expand, ItemRef, Method, Pass, PassScores, Scores, CONSENSUS_WEIGHT,
};
use crate::api::{Contrast, Format, ScoreRequest};
use crate::engine::{EngineError, PassKind, Passes, PreparedRequest, Scorer};
use crate::reward::{consensus, Aggregate, Aggregates, Alpha, Terms};

/// Settings every pass shares.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// Principle (system message) for the reward on chat-format items.
    pub principle: Option<String>,
}

/// Runs `pass` on one item. Input errors (e.g. an item longer than the context) come back as
/// `Err` for the caller to record; the caller decides which errors stop the run.
///
/// Identical candidates of an item (sampled code completions repeat often) are scored once and
/// share the score: the model would give them the same score anyway.
///
/// `reward` is the reward pass's scores of the item, which the neutral, reviewer and reference
/// passes combine with their own layouts (they do not score the candidates after the prompt
/// again); `reference` scores the reference pass.
pub fn run_pass(
    scorer: &mut Scorer<'_>,
    reference: Option<&mut Scorer<'_>>,
    pass: Pass,
    item: ItemRef<'_>,
    options: &PassOptions,
    reward: Option<&PassScores>,
) -> Result<PassScores, EngineError> {
    let started = Instant::now();
    let (scores, tokens) = match pass {
        Pass::Length => (length_scores(item), 0),
        Pass::Consensus => (consensus_scores(item), 0),
        Pass::Reward | Pass::Neutral | Pass::Reviewer | Pass::Reference => {
            reward_scores(scorer, reference, pass, item, options, reward)?
        }
        Pass::Verifier => judges::verifier_scores(scorer, item)?,
        Pass::Pairwise => judges::pairwise_scores(scorer, item)?,
    };
    Ok(PassScores {
        scores,
        tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Candidate length in characters (Unicode scalar values): `length` and its negation `-length`.
pub fn length_scores(item: ItemRef<'_>) -> BTreeMap<String, Scores> {
    let lengths: Vec<f64> = item
        .candidates()
        .iter()
        .map(|c| c.chars().count() as f64)
        .collect();
    BTreeMap::from([
        (
            Method::Length.name().to_owned(),
            Scores::Candidates(lengths.clone()),
        ),
        (
            Method::Shorter.name().to_owned(),
            Scores::Candidates(lengths.iter().map(|l| -l).collect()),
        ),
    ])
}

/// Each candidate's agreement with the item's other candidates, all of them as given (copies
/// included): `consensus`.
pub fn consensus_scores(item: ItemRef<'_>) -> BTreeMap<String, Scores> {
    BTreeMap::from([(
        Method::Consensus.name().to_owned(),
        Scores::Candidates(consensus::agreement(&item.candidates())),
    )])
}

/// The scores of `method` on one item from the scores its passes computed (`pass` looks a pass's
/// scores up): a pass's own method is read as stored; the reward plus consensus is combined here,
/// so it needs no pass of its own and no cache record. `None` when a pass is missing or failed.
pub fn method_scores<'a>(
    method: Method,
    pass: impl Fn(Pass) -> Option<&'a PassScores>,
) -> Option<Scores> {
    let get = |method: Method| pass(method.pass())?.scores.get(method.name());
    match method {
        Method::WithConsensus(aggregate) => {
            let Scores::Candidates(reward) = get(Method::of_aggregate(aggregate))? else {
                return None;
            };
            let Scores::Candidates(agreement) = get(Method::Consensus)? else {
                return None;
            };
            (reward.len() == agreement.len()).then(|| {
                Scores::Candidates(consensus::combine(reward, agreement, CONSENSUS_WEIGHT))
            })
        }
        _ => get(method).cloned(),
    }
}

/// endorm's reward: preference items in chat format (the prompt as the user's message, each
/// response an assistant turn, with the principle if given); ranking items in their own format,
/// raw by default (the prompt is the context, each completion its continuation, not terminal) or
/// chat (as preference items, the principle too). One scoring pass gives
/// all four aggregates; the neutral and reviewer passes add their extra layouts (a `/v1/score`
/// request with `contrast: "neutral"` or `reviewer: true`) and give their methods; the reference
/// pass scores the request's own layout on the reference model, as the daemon's
/// `reference_model` does (same check of the tokens). An empty candidate has nothing to score: it
/// gets the empty sums, 0.
fn reward_scores(
    scorer: &mut Scorer<'_>,
    reference: Option<&mut Scorer<'_>>,
    pass: Pass,
    item: ItemRef<'_>,
    options: &PassOptions,
    reward: Option<&PassScores>,
) -> Result<(BTreeMap<String, Scores>, usize), EngineError> {
    // The methods the pass stores (the reward plus consensus ones are combined later, from
    // these records, and have none of their own).
    let methods: Vec<Method> = Method::ALL
        .into_iter()
        .filter(|m| m.pass() == pass && m.passes() == [pass])
        .collect();
    let (candidates, index) = distinct(&item.candidates());
    let nonempty: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].is_empty())
        .collect();
    let mut values = vec![vec![0.0; methods.len()]; candidates.len()];
    let mut tokens = 0;
    if !nonempty.is_empty() {
        let (format, prompt, principle) = match item {
            ItemRef::Preference(item) => (Format::Chat, &item.prompt, options.principle.clone()),
            ItemRef::Ranking(item) => (
                item.format,
                &item.prompt,
                options
                    .principle
                    .clone()
                    .filter(|_| item.format == Format::Chat),
            ),
        };
        let request = ScoreRequest {
            format: Some(format),
            prompt: Some(prompt.clone()),
            principle,
            candidates: nonempty.iter().map(|&i| candidates[i].to_owned()).collect(),
            contrast: (pass == Pass::Neutral).then_some(Contrast::Neutral),
            reviewer: pass == Pass::Reviewer,
            ..ScoreRequest::default()
        };
        let reference_model = match (pass, &reference) {
            (Pass::Reference, Some(reference)) => Some(reference.model()),
            (Pass::Reference, None) => return Err(missing("the reference model")),
            _ => None,
        };
        let prepared = PreparedRequest::new(scorer.model(), reference_model, &request, None)?;
        let kind = match pass {
            Pass::Reward => PassKind::Main,
            Pass::Neutral => PassKind::Neutral,
            Pass::Reviewer => PassKind::Reviewer,
            Pass::Reference => PassKind::Reference,
            _ => return Err(missing("a scoring pass")),
        };
        let this = prepared
            .pass(kind)
            .ok_or_else(|| missing("the pass's layouts"))?;
        let scored = match (reference, kind.on_reference()) {
            (Some(reference), true) => reference.run_pass(&this)?,
            _ => scorer.run_pass(&this)?,
        };
        // What the pass decoded: each layout's context (less what the prefix cache held) and its
        // candidates' prefix tree.
        tokens += (this.layouts.iter().zip(&scored))
            .map(|(layout, s)| layout.prepared.context.len() - s.cached_tokens + s.decoded_tokens)
            .sum::<usize>();
        let mut passes = Passes::default();
        passes.add(kind, scored);
        // The candidates after the prompt: scored here by the reward pass, read back from its
        // record by the others.
        let terms = match pass {
            Pass::Reward => passes.terms(nonempty.len(), Alpha::ONE)?,
            _ => {
                let reward = reward.ok_or_else(|| missing("the reward pass's record"))?;
                let first = |i: usize| index.iter().position(|&d| d == i).unwrap_or(0);
                let main: Vec<Aggregates> = nonempty
                    .iter()
                    .map(|&i| recorded_sums(reward, first(i)))
                    .collect::<Option<_>>()
                    .ok_or_else(|| missing("the reward pass's scores of a candidate"))?;
                passes.terms_around(&main, Alpha::ONE)?
            }
        };
        for (k, &i) in nonempty.iter().enumerate() {
            values[i] = methods
                .iter()
                .map(|&method| method_value(method, &terms[k]))
                .collect::<Option<_>>()
                .ok_or_else(|| missing("a layout of the pass, or the model's baseline"))?;
        }
    }
    let scores = methods
        .iter()
        .enumerate()
        .map(|(k, method)| {
            let distinct_scores: Vec<f64> = values.iter().map(|v| v[k]).collect();
            (
                method.name().to_owned(),
                Scores::Candidates(expand(&distinct_scores, &index)),
            )
        })
        .collect();
    Ok((scores, tokens))
}

fn missing(what: &str) -> EngineError {
    EngineError::Internal(format!("{what} is missing"))
}

/// The aggregates of candidate `i` as the reward pass recorded them (`endo_lc` where it did).
fn recorded_sums(reward: &PassScores, i: usize) -> Option<Aggregates> {
    let get = |method: Method| match reward.scores.get(method.name())? {
        Scores::Candidates(values) => values.get(i).copied(),
        Scores::Pairs(_) => None,
    };
    Some(Aggregates {
        endo: get(Method::Endo)?,
        endo_mean: get(Method::EndoMean)?,
        logprob: get(Method::Logprob)?,
        logprob_mean: get(Method::LogprobMean)?,
        endo_lc: get(Method::EndoLengthControlled),
    })
}

/// A reward method's value from a candidate's terms (`None`: a pass it needs did not run): its
/// recipe's score ([`crate::reward::Recipe`], as `/v1/score` combines it), and for `reviewer`
/// alone the reviewer term, `Σ log π` of the instruction.
fn method_value(method: Method, terms: &Terms) -> Option<f64> {
    match method {
        Method::Reviewer => terms.reviewer(Aggregate::Logprob),
        method => method.recipe()?.score(terms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::data::{PreferenceItem, RankingItem};

    #[test]
    fn contrast_methods_combine_their_layouts_with_the_reward_passs_record() {
        let reward = PassScores {
            scores: [
                ("endo", [4.0, 8.0]),
                ("endo_mean", [2.0, 2.0]),
                ("logprob", [-6.0, -12.0]),
                ("logprob_mean", [-3.0, -3.0]),
                ("endo_lc", [1.0, 2.0]),
            ]
            .into_iter()
            .map(|(m, v)| (m.to_owned(), Scores::Candidates(v.to_vec())))
            .collect(),
            tokens: 0,
            seconds: 0.0,
        };
        let main = recorded_sums(&reward, 1).unwrap();
        assert_eq!((main.endo, main.logprob_mean), (8.0, -3.0));
        assert!(recorded_sums(&reward, 2).is_none());
        let neutral = Aggregates {
            endo: 5.0,
            endo_mean: 1.25,
            logprob: -20.0,
            logprob_mean: -5.0,
            endo_lc: None,
        };
        let reviewer = Aggregates {
            logprob: -9.0,
            logprob_mean: -1.5,
            ..neutral
        };
        let reference = Aggregates {
            endo: 10.0,
            endo_mean: 2.5,
            logprob: -4.0,
            logprob_mean: -1.0,
            endo_lc: None,
        };
        let layouts = Terms {
            main,
            neutral: Some(neutral),
            reviewer: Some(reviewer),
            reference: Some(reference),
        };
        let value = |m| method_value(m, &layouts);
        assert_eq!(value(Method::EndoNeutral), Some(3.0));
        assert_eq!(value(Method::EndoMeanNeutral), Some(0.75));
        assert_eq!(value(Method::LogprobNeutral), Some(8.0));
        assert_eq!(value(Method::LogprobMeanNeutral), Some(2.0));
        assert_eq!(value(Method::Reviewer), Some(-9.0));
        // The length-controlled sum as the reward pass recorded it; none without a baseline.
        assert_eq!(value(Method::EndoLengthControlled), Some(2.0));
        let unmeasured = Terms {
            main: Aggregates {
                endo_lc: None,
                ..main
            },
            ..layouts
        };
        assert_eq!(
            method_value(Method::EndoLengthControlled, &unmeasured),
            None
        );
        assert_eq!(value(Method::EndoReviewer), Some(-1.0));
        assert_eq!(value(Method::EndoMeanReviewer), Some(0.5));
        // The model minus the reference: 8 − 10, 2 − 2.5, −12 − (−4), −3 − (−1).
        assert_eq!(value(Method::EndoReference), Some(-2.0));
        assert_eq!(value(Method::EndoMeanReference), Some(-0.5));
        assert_eq!(value(Method::LogprobReference), Some(-8.0));
        assert_eq!(value(Method::LogprobMeanReference), Some(-2.0));
        let without = |layouts: Terms| {
            Method::ALL
                .into_iter()
                .filter(|&m| method_value(m, &layouts).is_none())
                .count()
        };
        assert_eq!(
            without(Terms {
                reviewer: None,
                ..layouts
            }),
            without(layouts) + 3
        );
        assert_eq!(
            without(Terms {
                reference: None,
                ..layouts
            }),
            without(layouts) + 4
        );
        assert_eq!(value(Method::Length), None);
        for method in Method::ALL {
            assert_eq!(
                method.pass().needs().is_some(),
                matches!(
                    method.pass(),
                    Pass::Neutral | Pass::Reviewer | Pass::Reference
                )
            );
        }
    }

    #[test]
    fn length_counts_characters_both_ways() {
        let item = PreferenceItem {
            id: "x".into(),
            prompt: "p".into(),
            chosen: vec!["héllo".into()],
            rejected: vec!["hi".into()],
        };
        let scores = length_scores(ItemRef::Preference(&item));
        assert_eq!(scores["length"], Scores::Candidates(vec![5.0, 2.0]));
        assert_eq!(scores["-length"], Scores::Candidates(vec![-5.0, -2.0]));
    }

    #[test]
    fn consensus_counts_copies_and_combines_with_the_cached_reward() {
        let item = RankingItem {
            id: "t".into(),
            prompt: "p".into(),
            format: Format::Raw,
            completions: vec!["x".into(), "x".into(), "y".into()],
            passed: vec![true, true, false],
        };
        let agreement = consensus_scores(ItemRef::Ranking(&item));
        assert_eq!(
            agreement["consensus"],
            Scores::Candidates(vec![0.5, 0.5, 0.0])
        );
        let consensus_pass = PassScores {
            scores: agreement,
            tokens: 0,
            seconds: 0.0,
        };
        // The reward prefers the odd one out, agreement its copies: with weight 1 they cancel.
        let reward_pass = PassScores {
            scores: BTreeMap::from([("endo".to_owned(), Scores::Candidates(vec![1.0, 1.0, 1.5]))]),
            tokens: 9,
            seconds: 1.0,
        };
        let lookup = |pass: Pass| match pass {
            Pass::Reward => Some(&reward_pass),
            Pass::Consensus => Some(&consensus_pass),
            _ => None,
        };
        let Some(Scores::Candidates(combined)) =
            method_scores(Method::WithConsensus(Aggregate::Endo), lookup)
        else {
            panic!("no combined scores");
        };
        // z(reward) = (−1/√2, −1/√2, √2), z(agreement) = (1/√2, 1/√2, −√2): exact opposites.
        assert!(combined.iter().all(|s| s.abs() < 1e-12), "{combined:?}");
        assert_eq!(
            method_scores(Method::Endo, lookup),
            Some(Scores::Candidates(vec![1.0, 1.0, 1.5]))
        );
        // A method whose reward aggregate was not scored, or without the consensus pass: none.
        assert_eq!(
            method_scores(Method::WithConsensus(Aggregate::Logprob), lookup),
            None
        );
        let reward_only = |pass: Pass| (pass == Pass::Reward).then_some(&reward_pass);
        assert_eq!(
            method_scores(Method::WithConsensus(Aggregate::Endo), reward_only),
            None
        );
    }
}

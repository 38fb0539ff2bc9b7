//! The methods an evaluation compares: endorm's reward aggregates, the length baselines, the
//! candidates' consensus alone and added to each aggregate, and the two training-free judges built
//! on the same model (REWARD.md, "Judge baselines"), and the model contrast: each aggregate minus
//! the same aggregate of the same tokens under a reference model (`--reference-model`).
//!
//! Every method turns one item into scores: one score per candidate (higher is better), or for the
//! pairwise judge on preference items one margin per chosen × rejected pair (> 0: chosen wins).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::data::{PreferenceItem, RankingItem};
use super::judges;
use crate::api::{Contrast, Format, ScoreRequest};
use crate::engine::{EngineError, PreparedRequest, Scored, Scorer};
use crate::reward::{consensus, Aggregate, Aggregates, Alpha};

/// The weight of agreement in the reward plus consensus methods: fixed at 1 (the standardised
/// reward and agreement count alike), not tuned.
pub const CONSENSUS_WEIGHT: f64 = 1.0;

/// A way of scoring candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `Σ r_t`, the paper's endogenous reward.
    Endo,
    /// `Σ r_t / H`.
    EndoMean,
    /// `Σ log π`.
    Logprob,
    /// `Σ log π / H`.
    LogprobMean,
    /// The longer candidate (in characters) wins.
    Length,
    /// The shorter candidate wins (`-length`).
    Shorter,
    /// Agreement with the item's other candidates (`crate::reward::consensus`); no model.
    Consensus,
    /// `z(aggregate) + z(agreement)`, from the reward pass's scores and the texts: no extra decode.
    WithConsensus(Aggregate),
    /// `log P("Yes")` after asking the model whether the response is good.
    JudgeVerifier,
    /// `log P("A") − log P("B")` after showing both responses, averaged over both orders.
    JudgePairwise,
    /// `endo` minus `endo` of the same tokens after the neutral context (`contrast: "neutral"`).
    EndoNeutral,
    /// `endo_mean` minus the neutral context's.
    EndoMeanNeutral,
    /// `logprob` minus the neutral context's.
    LogprobNeutral,
    /// `logprob_mean` minus the neutral context's.
    LogprobMeanNeutral,
    /// `log p(instruction | candidate)` alone (`reviewer: true`).
    Reviewer,
    /// `endo` plus the reviewer term.
    EndoReviewer,
    /// `endo_mean` plus the reviewer term per instruction token.
    EndoMeanReviewer,
    /// `endo` minus `endo` of the same tokens under the reference model (`reference_model`).
    EndoReference,
    /// `endo_mean` minus the reference model's.
    EndoMeanReference,
    /// `logprob` minus the reference model's.
    LogprobReference,
    /// `logprob_mean` minus the reference model's.
    LogprobMeanReference,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 24] = [
        Method::Endo,
        Method::EndoMean,
        Method::Logprob,
        Method::LogprobMean,
        Method::Length,
        Method::Shorter,
        Method::Consensus,
        Method::WithConsensus(Aggregate::Endo),
        Method::WithConsensus(Aggregate::EndoMean),
        Method::WithConsensus(Aggregate::Logprob),
        Method::WithConsensus(Aggregate::LogprobMean),
        Method::JudgeVerifier,
        Method::JudgePairwise,
        Method::EndoNeutral,
        Method::EndoMeanNeutral,
        Method::LogprobNeutral,
        Method::LogprobMeanNeutral,
        Method::Reviewer,
        Method::EndoReviewer,
        Method::EndoMeanReviewer,
        Method::EndoReference,
        Method::EndoMeanReference,
        Method::LogprobReference,
        Method::LogprobMeanReference,
    ];

    /// What `endorm eval` runs when no `--method` is given: the methods before the contrasts,
    /// so a run resumed from an older cache does not start passes it never asked for.
    pub const DEFAULT: &'static [Method] = Method::ALL.split_at(13).0;

    /// The model contrast's methods, which need a reference model: the last four.
    pub const REFERENCE: &'static [Method] = Method::ALL.split_at(20).1;

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Endo => "endo",
            Method::EndoMean => "endo_mean",
            Method::Logprob => "logprob",
            Method::LogprobMean => "logprob_mean",
            Method::Length => "length",
            Method::Shorter => "-length",
            Method::Consensus => "consensus",
            Method::WithConsensus(Aggregate::Endo) => "endo+consensus",
            Method::WithConsensus(Aggregate::EndoMean) => "endo_mean+consensus",
            Method::WithConsensus(Aggregate::Logprob) => "logprob+consensus",
            Method::WithConsensus(Aggregate::LogprobMean) => "logprob_mean+consensus",
            Method::JudgeVerifier => "judge-verifier",
            Method::JudgePairwise => "judge-pairwise",
            Method::EndoNeutral => "endo-neutral",
            Method::EndoMeanNeutral => "endo_mean-neutral",
            Method::LogprobNeutral => "logprob-neutral",
            Method::LogprobMeanNeutral => "logprob_mean-neutral",
            Method::Reviewer => "reviewer",
            Method::EndoReviewer => "endo+reviewer",
            Method::EndoMeanReviewer => "endo_mean+reviewer",
            Method::EndoReference => "endo-reference",
            Method::EndoMeanReference => "endo_mean-reference",
            Method::LogprobReference => "logprob-reference",
            Method::LogprobMeanReference => "logprob_mean-reference",
        }
    }

    /// The scoring pass whose cost this method is reported with (the reward pass for the reward
    /// plus consensus, whose agreement costs next to nothing).
    pub fn pass(self) -> Pass {
        match self {
            Method::Endo | Method::EndoMean | Method::Logprob | Method::LogprobMean => Pass::Reward,
            Method::WithConsensus(_) => Pass::Reward,
            Method::Length | Method::Shorter => Pass::Length,
            Method::Consensus => Pass::Consensus,
            Method::JudgeVerifier => Pass::Verifier,
            Method::JudgePairwise => Pass::Pairwise,
            Method::EndoNeutral
            | Method::EndoMeanNeutral
            | Method::LogprobNeutral
            | Method::LogprobMeanNeutral => Pass::Neutral,
            Method::Reviewer | Method::EndoReviewer | Method::EndoMeanReviewer => Pass::Reviewer,
            Method::EndoReference
            | Method::EndoMeanReference
            | Method::LogprobReference
            | Method::LogprobMeanReference => Pass::Reference,
        }
    }

    /// Every pass this method's scores are made from.
    pub fn passes(self) -> &'static [Pass] {
        match self {
            Method::WithConsensus(_) => &[Pass::Reward, Pass::Consensus],
            _ => match self.pass() {
                Pass::Length => &[Pass::Length],
                Pass::Consensus => &[Pass::Consensus],
                Pass::Reward => &[Pass::Reward],
                Pass::Verifier => &[Pass::Verifier],
                Pass::Pairwise => &[Pass::Pairwise],
                Pass::Neutral => &[Pass::Neutral],
                Pass::Reviewer => &[Pass::Reviewer],
                Pass::Reference => &[Pass::Reference],
            },
        }
    }

    /// The method of the reward pass that scores `aggregate`.
    pub fn of_aggregate(aggregate: Aggregate) -> Method {
        match aggregate {
            Aggregate::Endo => Method::Endo,
            Aggregate::EndoMean => Method::EndoMean,
            Aggregate::Logprob => Method::Logprob,
            Aggregate::LogprobMean => Method::LogprobMean,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s || m.name().replace('_', "-") == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                format!("unknown method `{s}`; known: {}", names.join(", "))
            })
    }
}

/// One model pass over the data; a pass computes one or more methods (the reward pass all four
/// aggregates at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pass {
    /// Candidate lengths; no model.
    Length,
    /// The candidates' agreement with each other; no model.
    Consensus,
    /// endorm's reward: one scoring pass gives all four aggregates.
    Reward,
    /// The verifier judge.
    Verifier,
    /// The pairwise judge.
    Pairwise,
    /// The same tokens after the neutral context, combined with the reward pass's record of the
    /// item (its own records: the reward pass's stay as they were).
    Neutral,
    /// The reviewer term, combined with the reward pass's record of the item.
    Reviewer,
    /// The reward pass's layout on the reference model, combined with the reward pass's record
    /// of the item; its cache records name the reference model.
    Reference,
}

impl Pass {
    /// The name in the cache and the report.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Length => "length",
            Pass::Consensus => "consensus",
            Pass::Reward => "reward",
            Pass::Verifier => "judge-verifier",
            Pass::Pairwise => "judge-pairwise",
            Pass::Neutral => "neutral",
            Pass::Reviewer => "reviewer",
            Pass::Reference => "reference",
        }
    }

    /// Whether the pass runs the model.
    pub fn uses_model(self) -> bool {
        !matches!(self, Pass::Length | Pass::Consensus)
    }

    /// The pass whose record of an item this pass combines with (run first: passes run in
    /// this enum's order).
    pub fn needs(self) -> Option<Pass> {
        matches!(self, Pass::Neutral | Pass::Reviewer | Pass::Reference).then_some(Pass::Reward)
    }
}

/// What a method says about one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scores {
    /// One score per candidate (preference: chosen then rejected; ranking: the completions), higher
    /// is better.
    Candidates(Vec<f64>),
    /// Preference only: one margin per chosen × rejected pair, chosen-major; > 0 means chosen wins.
    Pairs(Vec<f64>),
}

/// What one pass computed for one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassScores {
    /// Scores by method name.
    pub scores: BTreeMap<String, Scores>,
    /// Tokens decoded.
    pub tokens: usize,
    /// Seconds spent.
    pub seconds: f64,
}

/// An item, as the passes see it.
#[derive(Debug, Clone, Copy)]
pub enum ItemRef<'a> {
    /// A preference item.
    Preference(&'a PreferenceItem),
    /// A ranking item.
    Ranking(&'a RankingItem),
}

impl ItemRef<'_> {
    /// The item's id.
    pub fn id(&self) -> &str {
        match self {
            ItemRef::Preference(item) => &item.id,
            ItemRef::Ranking(item) => &item.id,
        }
    }

    pub(super) fn candidates(&self) -> Vec<&str> {
        match self {
            ItemRef::Preference(item) => item
                .chosen
                .iter()
                .chain(&item.rejected)
                .map(String::as_str)
                .collect(),
            ItemRef::Ranking(item) => item.completions.iter().map(String::as_str).collect(),
        }
    }
}

/// Settings every pass shares.
#[derive(Debug, Clone, Default)]
pub struct PassOptions {
    /// Principle (system message) for the reward on chat-format (preference) items.
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

/// The distinct texts of `texts` in first-seen order, and for each text the index of its
/// distinct copy.
pub fn distinct<'a>(texts: &[&'a str]) -> (Vec<&'a str>, Vec<usize>) {
    let mut unique: Vec<&'a str> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    let index = texts
        .iter()
        .map(|&text| {
            *seen.entry(text).or_insert_with(|| {
                unique.push(text);
                unique.len() - 1
            })
        })
        .collect();
    (unique, index)
}

pub(super) fn expand(values: &[f64], index: &[usize]) -> Vec<f64> {
    index.iter().map(|&i| values[i]).collect()
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
/// response an assistant turn, with the principle if given); ranking items in raw format (the
/// prompt is the context, each completion its continuation, not terminal). One scoring pass gives
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
            ItemRef::Ranking(item) => (Format::Raw, &item.prompt, None),
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
        let prepared = PreparedRequest::new(scorer.model(), &request, None)?;
        let sums = |scored: &Scored, k: usize| Aggregates::of(&scored.candidates[k], Alpha::ONE);
        // The candidates after the prompt: scored here by the reward pass, read back from its
        // record by the others.
        let main: Vec<Aggregates> = match pass {
            Pass::Reward => {
                let scored = scorer.score(&prepared.prepared, Alpha::ONE)?;
                tokens += prepared.prepared.tokens();
                (0..nonempty.len()).map(|k| sums(&scored, k)).collect()
            }
            _ => {
                let reward = reward.ok_or_else(|| missing("the reward pass's record"))?;
                let first = |i: usize| index.iter().position(|&d| d == i).unwrap_or(0);
                nonempty
                    .iter()
                    .map(|&i| recorded_sums(reward, first(i)))
                    .collect::<Option<_>>()
                    .ok_or_else(|| missing("the reward pass's scores of a candidate"))?
            }
        };
        let neutral = match &prepared.neutral {
            Some(layout) => {
                tokens += layout.tokens();
                Some(scorer.score(layout, Alpha::ONE)?)
            }
            None => None,
        };
        let reviewer = match &prepared.reviewer {
            Some(layouts) => {
                tokens += layouts.iter().map(|l| l.tokens()).sum::<usize>();
                let scored = layouts.iter().map(|l| scorer.score(l, Alpha::ONE));
                Some(scored.collect::<Result<Vec<_>, _>>()?)
            }
            None => None,
        };
        let reference = match (pass, reference) {
            (Pass::Reference, Some(reference)) => {
                let other =
                    prepared.reference_pass(scorer.model(), reference.model(), &request, None)?;
                tokens += other.tokens();
                Some(reference.score(&other.prepared, Alpha::ONE)?)
            }
            (Pass::Reference, None) => return Err(missing("the reference model")),
            _ => None,
        };
        for (k, &i) in nonempty.iter().enumerate() {
            let layouts = Layouts {
                neutral: neutral.as_ref().map(|n| sums(n, k)),
                reviewer: reviewer.as_ref().map(|r| sums(&r[k], 0)),
                reference: reference.as_ref().map(|r| sums(r, k)),
            };
            values[i] = methods
                .iter()
                .map(|&method| method_value(method, &main[k], &layouts))
                .collect::<Option<_>>()
                .ok_or_else(|| missing("a layout of the pass"))?;
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

/// The four aggregates of candidate `i` as the reward pass recorded them.
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
    })
}

/// One candidate's sums in the layouts a pass adds to the reward pass's.
#[derive(Debug, Clone, Copy, Default)]
struct Layouts {
    /// After the neutral context.
    neutral: Option<Aggregates>,
    /// The instruction after the candidate.
    reviewer: Option<Aggregates>,
    /// The same tokens on the reference model.
    reference: Option<Aggregates>,
}

/// A reward method's value from the sums of its pass's layouts (`None`: a layout it needs is
/// missing). The reviewer term is `Σ log π` of the instruction, per instruction token beside a
/// `*_mean` aggregate.
fn method_value(method: Method, main: &Aggregates, layouts: &Layouts) -> Option<f64> {
    let Layouts {
        neutral,
        reviewer,
        reference,
    } = *layouts;
    Some(match method {
        Method::Endo => main.endo,
        Method::EndoMean => main.endo_mean,
        Method::Logprob => main.logprob,
        Method::LogprobMean => main.logprob_mean,
        Method::EndoNeutral => main.endo - neutral?.endo,
        Method::EndoMeanNeutral => main.endo_mean - neutral?.endo_mean,
        Method::LogprobNeutral => main.logprob - neutral?.logprob,
        Method::LogprobMeanNeutral => main.logprob_mean - neutral?.logprob_mean,
        Method::Reviewer => reviewer?.logprob,
        Method::EndoReviewer => main.endo + reviewer?.logprob,
        Method::EndoMeanReviewer => main.endo_mean + reviewer?.logprob_mean,
        Method::EndoReference => main.endo - reference?.endo,
        Method::EndoMeanReference => main.endo_mean - reference?.endo_mean,
        Method::LogprobReference => main.logprob - reference?.logprob,
        Method::LogprobMeanReference => main.logprob_mean - reference?.logprob_mean,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip() {
        for method in Method::ALL {
            assert_eq!(method.name().parse::<Method>(), Ok(method));
        }
        assert_eq!("judge_verifier".parse::<Method>(), Err("unknown method `judge_verifier`; known: endo, endo_mean, logprob, logprob_mean, length, -length, consensus, endo+consensus, endo_mean+consensus, logprob+consensus, logprob_mean+consensus, judge-verifier, judge-pairwise, endo-neutral, endo_mean-neutral, logprob-neutral, logprob_mean-neutral, reviewer, endo+reviewer, endo_mean+reviewer, endo-reference, endo_mean-reference, logprob-reference, logprob_mean-reference".into()));
        assert_eq!("endo-mean".parse::<Method>(), Ok(Method::EndoMean));
        assert_eq!(
            "logprob-mean-reference".parse::<Method>(),
            Ok(Method::LogprobMeanReference)
        );
        // The contrasts of a reference model are never run unasked: they need one.
        assert!(Method::REFERENCE
            .iter()
            .all(|m| m.pass() == Pass::Reference && !Method::DEFAULT.contains(m)));
        assert_eq!(
            Method::REFERENCE
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>(),
            [
                "endo-reference",
                "endo_mean-reference",
                "logprob-reference",
                "logprob_mean-reference"
            ]
        );
        assert_eq!(
            "endo-mean+consensus".parse::<Method>(),
            Ok(Method::WithConsensus(Aggregate::EndoMean))
        );
    }

    #[test]
    fn contrast_methods_combine_their_layouts_with_the_reward_passs_record() {
        let reward = PassScores {
            scores: [
                ("endo", [4.0, 8.0]),
                ("endo_mean", [2.0, 2.0]),
                ("logprob", [-6.0, -12.0]),
                ("logprob_mean", [-3.0, -3.0]),
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
        };
        let layouts = Layouts {
            neutral: Some(neutral),
            reviewer: Some(reviewer),
            reference: Some(reference),
        };
        let value = |m| method_value(m, &main, &layouts);
        assert_eq!(value(Method::EndoNeutral), Some(3.0));
        assert_eq!(value(Method::EndoMeanNeutral), Some(0.75));
        assert_eq!(value(Method::LogprobNeutral), Some(8.0));
        assert_eq!(value(Method::LogprobMeanNeutral), Some(2.0));
        assert_eq!(value(Method::Reviewer), Some(-9.0));
        assert_eq!(value(Method::EndoReviewer), Some(-1.0));
        assert_eq!(value(Method::EndoMeanReviewer), Some(0.5));
        // The model minus the reference: 8 − 10, 2 − 2.5, −12 − (−4), −3 − (−1).
        assert_eq!(value(Method::EndoReference), Some(-2.0));
        assert_eq!(value(Method::EndoMeanReference), Some(-0.5));
        assert_eq!(value(Method::LogprobReference), Some(-8.0));
        assert_eq!(value(Method::LogprobMeanReference), Some(-2.0));
        let without = |layouts: Layouts| {
            Method::ALL
                .into_iter()
                .filter(|&m| method_value(m, &main, &layouts).is_none())
                .count()
        };
        assert_eq!(
            without(Layouts {
                reviewer: None,
                ..layouts
            }),
            without(layouts) + 3
        );
        assert_eq!(
            without(Layouts {
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

    #[test]
    fn distinct_texts_keep_first_seen_order() {
        let (unique, index) = distinct(&["b", "a", "b", "c", "a"]);
        assert_eq!(unique, vec!["b", "a", "c"]);
        assert_eq!(index, vec![0, 1, 0, 2, 1]);
        assert_eq!(
            expand(&[1.0, 2.0, 3.0], &index),
            vec![1.0, 2.0, 1.0, 3.0, 2.0]
        );
    }
}

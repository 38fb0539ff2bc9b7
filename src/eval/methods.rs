//! The methods an evaluation compares: endorm's reward aggregates, the length baselines, the
//! candidates' consensus alone and added to each aggregate, and the two training-free judges built
//! on the same model (REWARD.md, "Judge baselines").
//!
//! Every method turns one item into scores: one score per candidate (higher is better), or for the
//! pairwise judge on preference items one margin per chosen × rejected pair (> 0: chosen wins).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::data::{PreferenceItem, RankingItem};
use super::judges;
use crate::api::{Format, ScoreRequest};
use crate::engine::{EngineError, Scorer};
use crate::reward::{consensus, Aggregate};

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
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 13] = [
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
    ];

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
        }
    }

    /// Whether the pass runs the model.
    pub fn uses_model(self) -> bool {
        !matches!(self, Pass::Length | Pass::Consensus)
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
pub fn run_pass(
    scorer: &mut Scorer<'_>,
    pass: Pass,
    item: ItemRef<'_>,
    options: &PassOptions,
) -> Result<PassScores, EngineError> {
    let started = Instant::now();
    let (scores, tokens) = match pass {
        Pass::Length => (length_scores(item), 0),
        Pass::Consensus => (consensus_scores(item), 0),
        Pass::Reward => reward_scores(scorer, item, options)?,
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
/// all four aggregates. An empty candidate has nothing to score: it gets the empty sums, 0.
fn reward_scores(
    scorer: &mut Scorer<'_>,
    item: ItemRef<'_>,
    options: &PassOptions,
) -> Result<(BTreeMap<String, Scores>, usize), EngineError> {
    let (candidates, index) = distinct(&item.candidates());
    let nonempty: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].is_empty())
        .collect();
    let mut values = vec![[0.0; 4]; candidates.len()];
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
            ..ScoreRequest::default()
        };
        let response = scorer.score_request("eval", &request, None)?;
        tokens = response.usage.total_tokens;
        for (&i, result) in nonempty.iter().zip(&response.results) {
            values[i] = [
                result.endo,
                result.endo_mean,
                result.logprob,
                result.logprob_mean,
            ];
        }
    }
    let scores = [
        Method::Endo,
        Method::EndoMean,
        Method::Logprob,
        Method::LogprobMean,
    ]
    .into_iter()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_round_trip() {
        for method in Method::ALL {
            assert_eq!(method.name().parse::<Method>(), Ok(method));
        }
        assert_eq!("judge_verifier".parse::<Method>(), Err("unknown method `judge_verifier`; known: endo, endo_mean, logprob, logprob_mean, length, -length, consensus, endo+consensus, endo_mean+consensus, logprob+consensus, logprob_mean+consensus, judge-verifier, judge-pairwise".into()));
        assert_eq!("endo-mean".parse::<Method>(), Ok(Method::EndoMean));
        assert_eq!(
            "endo-mean+consensus".parse::<Method>(),
            Ok(Method::WithConsensus(Aggregate::EndoMean))
        );
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

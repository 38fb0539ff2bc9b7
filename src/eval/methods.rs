//! The methods an evaluation compares: endorm's reward aggregates, the length baselines, the
//! candidates' consensus alone and added to each aggregate, and the two training-free judges built
//! on the same model (REWARD.md, "Judge baselines"), and the model contrast: each aggregate minus
//! the same aggregate of the same tokens under a reference model (`--reference-model`).
//!
//! Every method turns one item into scores: one score per candidate (higher is better), or for the
//! pairwise judge on preference items one margin per chosen × rejected pair (> 0: chosen wins).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::data::{PreferenceItem, RankingItem};
use crate::reward::{Aggregate, Recipe};

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
    /// `Σ r_t − b·H`, the length-controlled reward (`aggregate: "endo_lc"`): `b` is the model's
    /// mean reward per token on a fixed neutral text ([`crate::reward::Baseline`]), measured once
    /// per model, never on the labels. Between the paper's sum (which favours short answers) and
    /// the mean.
    EndoLengthControlled,
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
    pub const ALL: [Method; 25] = [
        Method::Endo,
        Method::EndoMean,
        Method::Logprob,
        Method::LogprobMean,
        Method::EndoLengthControlled,
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

    /// What `endorm eval` runs when no `--method` is given: [`Method::ALL`]'s first fourteen, the
    /// methods before the contrasts, so a run resumed from an older cache does not start passes
    /// it never asked for.
    pub const DEFAULT: &'static [Method] = Self::ALL.split_at(14).0;

    /// The model contrast's methods, which need a reference model.
    pub const REFERENCE: &'static [Method] = &[
        Method::EndoReference,
        Method::EndoMeanReference,
        Method::LogprobReference,
        Method::LogprobMeanReference,
    ];

    /// The terms of `/v1/score` this method's score is made of, for the methods that are a
    /// request's score (the aggregates and their contrasts; not the reviewer term alone, the
    /// baselines, consensus or the judges).
    pub fn recipe(self) -> Option<Recipe> {
        let plain = Recipe::plain;
        let neutral = |aggregate| Recipe {
            neutral: true,
            ..plain(aggregate)
        };
        let reviewer = |aggregate| Recipe {
            reviewer: true,
            ..plain(aggregate)
        };
        let reference = |aggregate| Recipe {
            reference: true,
            ..plain(aggregate)
        };
        Some(match self {
            Method::Endo => plain(Aggregate::Endo),
            Method::EndoMean => plain(Aggregate::EndoMean),
            Method::Logprob => plain(Aggregate::Logprob),
            Method::LogprobMean => plain(Aggregate::LogprobMean),
            Method::EndoLengthControlled => plain(Aggregate::EndoLc),
            Method::EndoNeutral => neutral(Aggregate::Endo),
            Method::EndoMeanNeutral => neutral(Aggregate::EndoMean),
            Method::LogprobNeutral => neutral(Aggregate::Logprob),
            Method::LogprobMeanNeutral => neutral(Aggregate::LogprobMean),
            Method::EndoReviewer => reviewer(Aggregate::Endo),
            Method::EndoMeanReviewer => reviewer(Aggregate::EndoMean),
            Method::EndoReference => reference(Aggregate::Endo),
            Method::EndoMeanReference => reference(Aggregate::EndoMean),
            Method::LogprobReference => reference(Aggregate::Logprob),
            Method::LogprobMeanReference => reference(Aggregate::LogprobMean),
            Method::Length
            | Method::Shorter
            | Method::Consensus
            | Method::WithConsensus(_)
            | Method::JudgeVerifier
            | Method::JudgePairwise
            | Method::Reviewer => return None,
        })
    }

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Endo => "endo",
            Method::EndoMean => "endo_mean",
            Method::Logprob => "logprob",
            Method::LogprobMean => "logprob_mean",
            Method::EndoLengthControlled => "endo_lc",
            Method::Length => "length",
            Method::Shorter => "-length",
            Method::Consensus => "consensus",
            Method::WithConsensus(Aggregate::Endo) => "endo+consensus",
            Method::WithConsensus(Aggregate::EndoMean) => "endo_mean+consensus",
            Method::WithConsensus(Aggregate::Logprob) => "logprob+consensus",
            Method::WithConsensus(Aggregate::LogprobMean) => "logprob_mean+consensus",
            Method::WithConsensus(Aggregate::EndoLc) => "endo_lc+consensus",
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
            Method::Endo
            | Method::EndoMean
            | Method::Logprob
            | Method::LogprobMean
            | Method::EndoLengthControlled => Pass::Reward,
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
            Aggregate::EndoLc => Method::EndoLengthControlled,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_methods_name_is_its_recipes() {
        for method in Method::ALL {
            if let Some(recipe) = method.recipe() {
                assert_eq!(recipe.name(), method.name());
            }
        }
        assert_eq!(
            Method::ALL.iter().filter(|m| m.recipe().is_some()).count(),
            15
        );
    }

    #[test]
    fn the_default_and_reference_lists_partition_the_methods_before_and_after_the_contrasts() {
        let position = |m: &Method| Method::ALL.iter().position(|x| x == m);
        assert!(Method::DEFAULT.iter().all(|m| position(m) < Some(14)));
        assert_eq!(Method::DEFAULT.len(), 14);
        assert!(Method::REFERENCE.iter().all(|m| position(m) >= Some(21)));
        assert_eq!(Method::REFERENCE.len(), 4);
    }

    #[test]
    fn method_names_round_trip() {
        for method in Method::ALL {
            assert_eq!(method.name().parse::<Method>(), Ok(method));
        }
        assert_eq!("judge_verifier".parse::<Method>(), Err("unknown method `judge_verifier`; known: endo, endo_mean, logprob, logprob_mean, endo_lc, length, -length, consensus, endo+consensus, endo_mean+consensus, logprob+consensus, logprob_mean+consensus, judge-verifier, judge-pairwise, endo-neutral, endo_mean-neutral, logprob-neutral, logprob_mean-neutral, reviewer, endo+reviewer, endo_mean+reviewer, endo-reference, endo_mean-reference, logprob-reference, logprob_mean-reference".into()));
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

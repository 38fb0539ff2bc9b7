//! How one candidate's score is made from the passes of its request: the one place the options
//! of `/v1/score` that add a pass (`contrast`, `reviewer`, `reference_model`) are combined.
//!
//! `score = aggregate − neutral − reference + reviewer`, each term present only when its pass ran
//! (API.md). `consensus` then combines these scores across the candidates
//! ([`super::consensus::combine`]). The daemon, the offline scorer and `endorm eval` all come
//! through here, so a method of `eval` and the request with the same options give the same number.

use super::{Aggregate, Aggregates};

/// One candidate's aggregates in each pass of its request.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Terms {
    /// The candidate after the request's context.
    pub main: Aggregates,
    /// The same tokens after the neutral context (`contrast: "neutral"`).
    pub neutral: Option<Aggregates>,
    /// The instruction's tokens after the candidate, scored at α = 1 (`reviewer`).
    pub reviewer: Option<Aggregates>,
    /// The same tokens under the reference model (`reference_model`).
    pub reference: Option<Aggregates>,
}

impl Terms {
    /// The neutral term of `aggregate`: the same aggregate after the neutral context.
    pub fn neutral(&self, aggregate: Aggregate) -> Option<f64> {
        self.neutral?.get(aggregate)
    }

    /// The reference term of `aggregate`: the same aggregate under the reference model.
    pub fn reference(&self, aggregate: Aggregate) -> Option<f64> {
        self.reference?.get(aggregate)
    }

    /// The reviewer term beside `aggregate`: `Σ log π` of the instruction after the candidate,
    /// divided by its token count beside a `*_mean` aggregate (a mean beside a mean).
    pub fn reviewer(&self, aggregate: Aggregate) -> Option<f64> {
        self.reviewer.map(|sums| {
            if aggregate.is_mean() {
                sums.logprob_mean
            } else {
                sums.logprob
            }
        })
    }
}

/// Which terms make a score: the aggregate and the passes whose terms it adds or subtracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recipe {
    /// The aggregate of the main pass.
    pub aggregate: Aggregate,
    /// Minus the same aggregate after the neutral context.
    pub neutral: bool,
    /// Plus the reviewer term.
    pub reviewer: bool,
    /// Minus the same aggregate under the reference model.
    pub reference: bool,
}

impl Recipe {
    /// The plain aggregate.
    pub const fn plain(aggregate: Aggregate) -> Recipe {
        Recipe {
            aggregate,
            neutral: false,
            reviewer: false,
            reference: false,
        }
    }

    /// The name of the score in tables and reports: the aggregate's, then `-neutral`,
    /// `+reviewer`, `-reference` for the terms it has (`endo_mean-neutral+reviewer`).
    pub fn name(&self) -> String {
        let mut name = self.aggregate.name().to_owned();
        for (on, term) in [
            (self.neutral, "-neutral"),
            (self.reviewer, "+reviewer"),
            (self.reference, "-reference"),
        ] {
            if on {
                name.push_str(term);
            }
        }
        name
    }

    /// `aggregate − neutral − reference + reviewer`, with the terms this recipe names; `None` when
    /// one of them is missing from `terms` (its pass did not run, or `endo_lc` had no baseline).
    pub fn score(&self, terms: &Terms) -> Option<f64> {
        let aggregate = self.aggregate;
        let mut score = terms.main.get(aggregate)?;
        if self.neutral {
            score -= terms.neutral(aggregate)?;
        }
        if self.reference {
            score -= terms.reference(aggregate)?;
        }
        if self.reviewer {
            score += terms.reviewer(aggregate)?;
        }
        Some(score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate's sums over `n` tokens, with the baseline −0.5 per token.
    fn sums(endo: f64, logprob: f64, n: f64) -> Aggregates {
        Aggregates {
            endo,
            endo_mean: endo / n,
            logprob,
            logprob_mean: logprob / n,
            endo_lc: Some(endo + 0.5 * n),
        }
    }

    const TERMS: Terms = Terms {
        main: Aggregates {
            endo: 10.0,
            endo_mean: 2.0,
            logprob: -6.0,
            logprob_mean: -1.5,
            endo_lc: Some(12.5),
        },
        neutral: None,
        reviewer: None,
        reference: None,
    };

    #[test]
    fn a_plain_recipe_is_its_aggregate() {
        for aggregate in Aggregate::ALL {
            assert_eq!(
                Recipe::plain(aggregate).score(&TERMS),
                TERMS.main.get(aggregate)
            );
        }
    }

    #[test]
    fn contrasts_subtract_the_same_aggregate_and_the_reviewer_adds_its_log_probability() {
        let terms = Terms {
            neutral: Some(sums(4.0, -2.0, 2.0)),
            reference: Some(sums(1.0, -8.0, 4.0)),
            reviewer: Some(sums(-3.0, -5.0, 5.0)),
            ..TERMS
        };
        let all = |aggregate| Recipe {
            aggregate,
            neutral: true,
            reviewer: true,
            reference: true,
        };
        // endo: 10 − 4 − 1 + Σ log π (−5).
        assert_eq!(all(Aggregate::Endo).score(&terms), Some(0.0));
        // endo_mean: 2 − 2 − 0.25 + mean log π (−1).
        assert_eq!(all(Aggregate::EndoMean).score(&terms), Some(-1.25));
        // logprob: −6 − (−2) − (−8) + (−5).
        assert_eq!(all(Aggregate::Logprob).score(&terms), Some(-1.0));
        // endo_lc: 12.5 − 5 − 3 + Σ log π (−5).
        assert_eq!(all(Aggregate::EndoLc).score(&terms), Some(-0.5));
    }

    #[test]
    fn endo_lc_without_a_baseline_gives_no_score() {
        let terms = Terms {
            main: Aggregates {
                endo_lc: None,
                ..TERMS.main
            },
            ..TERMS
        };
        assert_eq!(Recipe::plain(Aggregate::EndoLc).score(&terms), None);
        assert_eq!(Recipe::plain(Aggregate::Endo).score(&terms), Some(10.0));
    }

    #[test]
    fn a_term_whose_pass_did_not_run_gives_no_score() {
        let recipe = Recipe {
            neutral: true,
            ..Recipe::plain(Aggregate::Endo)
        };
        assert_eq!(recipe.score(&TERMS), None);
        let reviewer = Recipe {
            reviewer: true,
            ..Recipe::plain(Aggregate::Endo)
        };
        assert_eq!(reviewer.score(&TERMS), None);
    }

    #[test]
    fn a_name_lists_the_terms_after_the_aggregate() {
        assert_eq!(Recipe::plain(Aggregate::EndoMean).name(), "endo_mean");
        let all = Recipe {
            aggregate: Aggregate::Logprob,
            neutral: true,
            reviewer: true,
            reference: true,
        };
        assert_eq!(all.name(), "logprob-neutral+reviewer-reference");
    }

    #[test]
    fn a_term_not_in_the_recipe_is_ignored() {
        let terms = Terms {
            neutral: Some(sums(4.0, -2.0, 2.0)),
            ..TERMS
        };
        assert_eq!(Recipe::plain(Aggregate::Endo).score(&terms), Some(10.0));
    }
}

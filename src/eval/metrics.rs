//! The metrics of an evaluation, as pure functions of scores and labels.
//!
//! * Preference accuracy: a pair is won (1), tied (½) or lost (0); the 95% interval is Wilson's
//!   score interval.
//! * Ranking (code completions with test results): ranked pass@1, the random baseline and pairwise
//!   AUC, each a mean over tasks with a 95% percentile bootstrap interval over tasks.

use serde::{Deserialize, Serialize};

/// `z` of a two-sided 95% normal interval.
const Z95: f64 = 1.959_963_984_540_054;

/// A mean with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The point estimate.
    pub value: f64,
    /// Lower end of the 95% interval.
    pub lo: f64,
    /// Upper end of the 95% interval.
    pub hi: f64,
    /// How many units (pairs, items or tasks) it is a mean over.
    pub n: usize,
}

/// The outcome of `a` against `b` where higher wins: 1, ½ for a tie, 0.
///
/// A NaN on either side (a score that could not be computed) counts as a tie.
pub fn pair_outcome(a: f64, b: f64) -> f64 {
    if a > b {
        1.0
    } else if a < b {
        0.0
    } else {
        0.5
    }
}

/// Wilson's score interval for a proportion `p` observed over `n` trials (`p` may be fractional, as
/// ties count half). `None` when `n` is 0.
pub fn wilson(p: f64, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    // Clamped so the interval always holds `p` (at p = 1 the upper end is 1 only up to rounding).
    Some(((centre - half).clamp(0.0, p), (centre + half).clamp(p, 1.0)))
}

/// Accuracy over items: each item's outcomes (one per chosen × rejected pair) are averaged, then
/// the items are averaged, so an item with many pairs weighs as much as an item with one. The
/// interval is Wilson's with `n` = the number of items (exact for one pair per item).
pub fn accuracy(item_outcomes: &[Vec<f64>]) -> Option<Estimate> {
    let per_item: Vec<f64> = item_outcomes
        .iter()
        .filter(|outcomes| !outcomes.is_empty())
        .map(|outcomes| mean(outcomes))
        .collect();
    let value = mean_of(&per_item)?;
    let (lo, hi) = wilson(value, per_item.len())?;
    Some(Estimate {
        value,
        lo,
        hi,
        n: per_item.len(),
    })
}

/// Preference accuracy split by length: many preference sets are length-biased (one side is
/// usually longer), so a score that only prefers long (or short) answers looks good on plain
/// accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LengthSplit {
    /// Accuracy over the pairs whose chosen answer is longer (in characters), Wilson interval.
    pub chosen_longer: Option<Estimate>,
    /// Accuracy over the pairs whose chosen answer is shorter, Wilson interval.
    pub chosen_shorter: Option<Estimate>,
    /// The mean of the two: 0.5 for any rule that looks only at length. Its interval is a
    /// bootstrap that resamples within each group; `None` unless both groups have pairs.
    pub balanced: Option<Estimate>,
}

/// The [`LengthSplit`] of pair outcomes: `longer` are the outcomes of pairs whose chosen answer is
/// longer, `shorter` of those where it is shorter (pairs of equal length are in neither).
pub fn length_split(longer: &[f64], shorter: &[f64], resamples: usize, seed: u64) -> LengthSplit {
    let group = |outcomes: &[f64]| {
        let value = mean_of(outcomes)?;
        let (lo, hi) = wilson(value, outcomes.len())?;
        Some(Estimate {
            value,
            lo,
            hi,
            n: outcomes.len(),
        })
    };
    let balanced = match (mean_of(longer), mean_of(shorter)) {
        (Some(a), Some(b)) => {
            let mut rng = SplitMix64(seed);
            let resample = |values: &[f64], rng: &mut SplitMix64| {
                let n = values.len();
                (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64
            };
            let mut means: Vec<f64> = (0..resamples.max(1))
                .map(|_| 0.5 * (resample(longer, &mut rng) + resample(shorter, &mut rng)))
                .collect();
            means.sort_by(f64::total_cmp);
            let at = |q: f64| {
                means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)]
            };
            Some(Estimate {
                value: 0.5 * (a + b),
                lo: at(0.025),
                hi: at(0.975),
                n: longer.len() + shorter.len(),
            })
        }
        _ => None,
    };
    LengthSplit {
        chosen_longer: group(longer),
        chosen_shorter: group(shorter),
        balanced,
    }
}

/// Whether the top-scored completion passes. Completions tied at the top score share the pick:
/// the result is the fraction of them that pass (the expected pass@1 of breaking the tie at random).
/// NaN scores never win. `None` for an empty task.
pub fn ranked_pass_at_1(scores: &[f64], passed: &[bool]) -> Option<f64> {
    let best = scores
        .iter()
        .copied()
        .filter(|s| !s.is_nan())
        .fold(f64::NEG_INFINITY, f64::max);
    let top: Vec<bool> = scores
        .iter()
        .zip(passed)
        .filter(|(s, _)| **s == best || (best == f64::NEG_INFINITY && s.is_nan()))
        .map(|(_, &p)| p)
        .collect();
    (!top.is_empty()).then(|| top.iter().filter(|&&p| p).count() as f64 / top.len() as f64)
}

/// The chance that a completion drawn at random passes. `None` for an empty task.
pub fn random_pass_at_1(passed: &[bool]) -> Option<f64> {
    (!passed.is_empty()).then(|| passed.iter().filter(|&&p| p).count() as f64 / passed.len() as f64)
}

/// Pairwise AUC: the chance that a passing completion outscores a failing one, ties counting half.
/// `None` when the task has no passing or no failing completion.
pub fn auc(scores: &[f64], passed: &[bool]) -> Option<f64> {
    let pass: Vec<f64> = scores
        .iter()
        .zip(passed)
        .filter(|(_, &p)| p)
        .map(|(&s, _)| s)
        .collect();
    let fail: Vec<f64> = scores
        .iter()
        .zip(passed)
        .filter(|(_, &p)| !p)
        .map(|(&s, _)| s)
        .collect();
    if pass.is_empty() || fail.is_empty() {
        return None;
    }
    let total: f64 = pass
        .iter()
        .flat_map(|&a| fail.iter().map(move |&b| pair_outcome(a, b)))
        .sum();
    Some(total / (pass.len() * fail.len()) as f64)
}

/// One ranking task's passing × failing pairs split by length: the mean outcome (passing wins 1,
/// tie ½) of the pairs whose passing completion is longer (in characters), and of those where it is
/// shorter; `None` for a group without pairs. Pairs of equal length are in neither.
pub fn task_length_split(scores: &[f64], passed: &[bool], lengths: &[usize]) -> TaskLengthSplit {
    let (mut longer, mut shorter) = (Vec::new(), Vec::new());
    for p in (0..scores.len()).filter(|&i| passed[i]) {
        for f in (0..scores.len()).filter(|&i| !passed[i]) {
            let outcome = pair_outcome(scores[p], scores[f]);
            match lengths[p].cmp(&lengths[f]) {
                std::cmp::Ordering::Greater => longer.push(outcome),
                std::cmp::Ordering::Less => shorter.push(outcome),
                std::cmp::Ordering::Equal => {}
            }
        }
    }
    TaskLengthSplit {
        longer: mean_of(&longer),
        shorter: mean_of(&shorter),
    }
}

/// See [`task_length_split`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskLengthSplit {
    /// Mean outcome of the pairs whose passing completion is longer.
    pub longer: Option<f64>,
    /// Mean outcome of the pairs whose passing completion is shorter.
    pub shorter: Option<f64>,
}

/// The [`LengthSplit`] of a ranking file, over tasks (pairs within a task are not independent):
/// `chosen_longer` and `chosen_shorter` are the means over the tasks that have such pairs, and
/// `balanced` the mean over the tasks that have both of their mean, each with a bootstrap interval
/// over tasks. The same reading as a preference file's: 0.5 for any rule that looks only at
/// length.
pub fn ranking_length_split(tasks: &[TaskLengthSplit], resamples: usize, seed: u64) -> LengthSplit {
    let longer: Vec<f64> = tasks.iter().filter_map(|t| t.longer).collect();
    let shorter: Vec<f64> = tasks.iter().filter_map(|t| t.shorter).collect();
    let balanced: Vec<f64> = tasks
        .iter()
        .filter_map(|t| Some(0.5 * (t.longer? + t.shorter?)))
        .collect();
    LengthSplit {
        chosen_longer: bootstrap_mean(&longer, resamples, seed),
        chosen_shorter: bootstrap_mean(&shorter, resamples, seed),
        balanced: bootstrap_mean(&balanced, resamples, seed),
    }
}

/// Resamples for [`bootstrap_mean`].
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// The mean of `values` with a 95% percentile bootstrap interval (`resamples` resamples with
/// replacement, a fixed seed so reports are reproducible). `None` when `values` is empty.
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> Option<Estimate> {
    let value = mean_of(values)?;
    let mut rng = SplitMix64(seed);
    let n = values.len();
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    Some(Estimate {
        value,
        lo: at(0.025),
        hi: at(0.975),
        n,
    })
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn mean_of(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| mean(values))
}

/// A small deterministic generator (SplitMix64) for the bootstrap: no dependency, same numbers on
/// every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is below 2^-50 for the sizes used here.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn outcomes_count_ties_half() {
        assert_eq!(pair_outcome(2.0, 1.0), 1.0);
        assert_eq!(pair_outcome(1.0, 2.0), 0.0);
        assert_eq!(pair_outcome(1.0, 1.0), 0.5);
        assert_eq!(pair_outcome(f64::NAN, 1.0), 0.5);
    }

    #[test]
    fn a_pure_length_rule_has_balanced_accuracy_one_half() {
        // "Longer wins" is right on every pair where chosen is longer, wrong on every other.
        let split = length_split(&[1.0; 30], &[0.0; 10], 500, 7);
        assert_eq!(split.chosen_longer.unwrap().value, 1.0);
        assert_eq!(split.chosen_shorter.unwrap().value, 0.0);
        let balanced = split.balanced.unwrap();
        assert_eq!(balanced.value, 0.5);
        assert!(balanced.lo <= 0.5 && balanced.hi >= 0.5);
        // Plain accuracy would be 0.75 here.
        let good = length_split(&[1.0, 1.0, 0.0, 1.0], &[1.0, 0.0, 1.0, 1.0], 500, 7);
        assert_eq!(good.balanced.unwrap().value, 0.75);
        assert_eq!(length_split(&[1.0], &[], 10, 1).balanced, None);
    }

    #[test]
    fn wilson_matches_known_values() {
        // 8 of 10: the textbook Wilson interval is [0.4902, 0.9433].
        let (lo, hi) = wilson(0.8, 10).unwrap();
        assert!(close(lo, 0.4902) && close(hi, 0.9433), "{lo} {hi}");
        // 0 of 10 stays inside [0, 1] and is not degenerate.
        let (lo, hi) = wilson(0.0, 10).unwrap();
        assert!(close(lo, 0.0) && close(hi, 0.2775), "{lo} {hi}");
        // 10 of 10: the interval holds 1 exactly.
        let (lo, hi) = wilson(1.0, 10).unwrap();
        assert!(close(lo, 0.7225) && hi == 1.0, "{lo} {hi}");
        assert_eq!(wilson(0.5, 0), None);
    }

    #[test]
    fn accuracy_averages_pairs_within_items_then_items() {
        // Item 1: won and tied (0.75); item 2: lost; item 3: won.
        let estimate = accuracy(&[vec![1.0, 0.5], vec![0.0], vec![1.0]]).unwrap();
        assert!(close(estimate.value, 1.75 / 3.0));
        assert_eq!(estimate.n, 3);
        assert!(estimate.lo < estimate.value && estimate.value < estimate.hi);
        assert_eq!(accuracy(&[]), None);
    }

    #[test]
    fn pass_at_1_follows_the_top_score_and_splits_ties() {
        assert_eq!(
            ranked_pass_at_1(&[0.1, 0.9, 0.5], &[false, true, false]),
            Some(1.0)
        );
        assert_eq!(
            ranked_pass_at_1(&[0.9, 0.1, 0.5], &[false, true, false]),
            Some(0.0)
        );
        // Two completions tied at the top, one passes: ½.
        assert_eq!(
            ranked_pass_at_1(&[0.9, 0.9, 0.5], &[false, true, true]),
            Some(0.5)
        );
        // NaN never wins.
        assert_eq!(
            ranked_pass_at_1(&[f64::NAN, 0.1], &[true, false]),
            Some(0.0)
        );
        assert_eq!(ranked_pass_at_1(&[], &[]), None);
    }

    #[test]
    fn random_baseline_is_the_pass_rate() {
        assert_eq!(random_pass_at_1(&[true, false, false, true]), Some(0.5));
        assert_eq!(random_pass_at_1(&[]), None);
    }

    #[test]
    fn auc_counts_correctly_ordered_pass_fail_pairs() {
        assert_eq!(auc(&[3.0, 2.0, 1.0], &[true, false, false]), Some(1.0));
        assert_eq!(auc(&[1.0, 2.0, 3.0], &[true, false, false]), Some(0.0));
        // Pairs: (2 vs 1) win, (2 vs 2) tie, (0 vs 1) loss, (0 vs 2) loss → 1.5 / 4.
        assert_eq!(
            auc(&[2.0, 0.0, 1.0, 2.0], &[true, true, false, false]),
            Some(0.375)
        );
        assert_eq!(auc(&[1.0, 2.0], &[true, true]), None);
    }

    #[test]
    fn bootstrap_brackets_the_mean_and_is_reproducible() {
        let values = [0.0, 1.0, 0.0, 1.0, 1.0, 0.5, 0.25, 0.75];
        let a = bootstrap_mean(&values, BOOTSTRAP_RESAMPLES, 7).unwrap();
        let b = bootstrap_mean(&values, BOOTSTRAP_RESAMPLES, 7).unwrap();
        assert_eq!(a, b);
        assert!(close(a.value, 0.5625));
        assert!(a.lo < a.value && a.value < a.hi, "{a:?}");
        assert!(a.lo > 0.2 && a.hi < 0.9, "{a:?}");
        // No spread, no interval.
        let flat = bootstrap_mean(&[0.3; 5], 100, 1).unwrap();
        assert!(close(flat.lo, 0.3) && close(flat.hi, 0.3));
        assert_eq!(bootstrap_mean(&[], 100, 1), None);
    }

    #[test]
    fn a_ranking_tasks_pairs_split_by_the_passing_ones_length() {
        // Passing 0 (long) and 1 (short); failing 2 (middle). The longer score wins.
        let split = task_length_split(&[3.0, 1.0, 2.0], &[true, true, false], &[30, 10, 20]);
        assert_eq!(
            split,
            TaskLengthSplit {
                longer: Some(1.0),
                shorter: Some(0.0)
            }
        );
        // Length alone is at chance when both groups exist, over tasks.
        let by_length = [
            split,
            TaskLengthSplit {
                longer: None,
                shorter: Some(1.0),
            },
        ];
        let summary = ranking_length_split(&by_length, 100, 1);
        assert_eq!(summary.balanced.map(|e| (e.value, e.n)), Some((0.5, 1)));
        assert_eq!(
            summary.chosen_shorter.map(|e| (e.value, e.n)),
            Some((0.5, 2))
        );
        assert_eq!(summary.chosen_longer.map(|e| e.n), Some(1));
        // A task without both labels has no pairs.
        assert_eq!(
            task_length_split(&[1.0, 2.0], &[true, true], &[1, 2]),
            TaskLengthSplit {
                longer: None,
                shorter: None
            }
        );
    }
}

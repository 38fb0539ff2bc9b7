//! Consensus across the candidates of one request: a candidate that agrees with the others is more
//! often right (minimum-Bayes-risk selection; CodeT's intuition, without executing anything).
//!
//! The definition is fixed, not tuned to any data:
//!
//! * the **words** of a text are its maximal runs of alphanumeric or `_` characters, and every other
//!   non-whitespace character on its own; its **features** are the multiset of word unigrams and
//!   word bigrams;
//! * [`similarity`] of two texts is the multiset Jaccard index of their features,
//!   `Σ min(count) / Σ max(count)`: 1 for identical texts, 0 when one has features and the other none;
//! * [`agreement`] of a candidate is its mean similarity to every other candidate of the request
//!   (copies count: a completion sampled many times agrees with its copies, which is the signal);
//! * [`combine`]: `z(aggregate) + w · z(agreement)`, each standardised across the request's
//!   candidates, so the weight `w` means the same for every aggregate and request.
//!
//! Pure functions over texts and numbers: nothing here knows about models.

use std::collections::HashMap;

/// The words of `text`: maximal runs of alphanumeric or `_` characters, and every other
/// non-whitespace character on its own (so `a+=b1` is `a`, `+`, `=`, `b1`).
pub fn words(text: &str) -> Vec<&str> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let mut run: Option<usize> = None;
    for (at, c) in text.char_indices() {
        if is_word(c) {
            run.get_or_insert(at);
            continue;
        }
        if let Some(start) = run.take() {
            out.push(&text[start..at]);
        }
        if !c.is_whitespace() {
            out.push(&text[at..at + c.len_utf8()]);
        }
    }
    if let Some(start) = run {
        out.push(&text[start..]);
    }
    out
}

/// The features of a text: how often each word unigram and bigram occurs (`(w, None)` is the
/// unigram `w`, `(w, Some(v))` the bigram `w v`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features<'a> {
    counts: HashMap<(&'a str, Option<&'a str>), u32>,
    total: u64,
}

impl<'a> Features<'a> {
    /// The features of `text`.
    pub fn of(text: &'a str) -> Features<'a> {
        let words = words(text);
        let mut features = Features::default();
        let unigrams = words.iter().map(|&w| (w, None));
        let bigrams = words.windows(2).map(|pair| (pair[0], Some(pair[1])));
        for key in unigrams.chain(bigrams) {
            *features.counts.entry(key).or_insert(0) += 1;
            features.total += 1;
        }
        features
    }
}

/// Multiset Jaccard index of two feature multisets: `Σ min / Σ max` over all features. Two empty
/// multisets are identical (1); one empty and one not share nothing (0).
pub fn similarity(a: &Features<'_>, b: &Features<'_>) -> f64 {
    if a.total == 0 && b.total == 0 {
        return 1.0;
    }
    let (small, large) = if a.counts.len() <= b.counts.len() {
        (a, b)
    } else {
        (b, a)
    };
    let shared: u64 = small
        .counts
        .iter()
        .map(|(key, &n)| u64::from(n.min(large.counts.get(key).copied().unwrap_or(0))))
        .sum();
    // Σ max = |a| + |b| − Σ min, as max(x, y) = x + y − min(x, y) feature by feature.
    shared as f64 / (a.total + b.total - shared) as f64
}

/// Each candidate's mean similarity to every other candidate (copies included); 0 for a single
/// candidate, which has nothing to agree with.
pub fn agreement(texts: &[&str]) -> Vec<f64> {
    let n = texts.len();
    if n < 2 {
        return vec![0.0; n];
    }
    let features: Vec<Features<'_>> = texts.iter().map(|t| Features::of(t)).collect();
    let mut sums = vec![0.0; n];
    for i in 0..n {
        for j in i + 1..n {
            let s = similarity(&features[i], &features[j]);
            sums[i] += s;
            sums[j] += s;
        }
    }
    sums.into_iter().map(|s| s / (n - 1) as f64).collect()
}

/// `values` standardised: `(x − mean) / sd` with the population standard deviation; all zeros when
/// the values do not vary (nothing to tell apart), or when there are none.
pub fn standardize(values: &[f64]) -> Vec<f64> {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    if !sd.is_finite() || sd <= 0.0 {
        return vec![0.0; values.len()];
    }
    values.iter().map(|x| (x - mean) / sd).collect()
}

/// The combined score `z(aggregate) + weight · z(agreement)` of each candidate; `aggregate` and
/// `agreement` are in the same candidate order (the shorter one bounds the result).
pub fn combine(aggregate: &[f64], agreement: &[f64], weight: f64) -> Vec<f64> {
    standardize(aggregate)
        .into_iter()
        .zip(standardize(agreement))
        .map(|(a, c)| a + weight * c)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(a: &str, b: &str) -> f64 {
        similarity(&Features::of(a), &Features::of(b))
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn words_split_identifiers_from_punctuation_and_drop_whitespace() {
        assert_eq!(
            words("  return a_1+= b(x)\n\té_z;"),
            vec!["return", "a_1", "+", "=", "b", "(", "x", ")", "é_z", ";"]
        );
        assert_eq!(words("x"), vec!["x"]);
        assert_eq!(words(" \n "), Vec::<&str>::new());
        assert_eq!(words("→→"), vec!["→", "→"]);
    }

    #[test]
    fn similarity_is_multiset_jaccard_of_unigrams_and_bigrams() {
        // "a b" = {a, b, a b}; "a c" = {a, c, a c}: 1 shared of 5 distinct.
        assert_eq!(sim("a b", "a c"), 1.0 / 5.0);
        // "a a" = {a×2, "a a"}; "a" = {a}: min 1, max 3.
        assert_eq!(sim("a a", "a"), 1.0 / 3.0);
        // Whitespace does not matter, order does (bigrams).
        assert_eq!(sim("f(x)", " f ( x ) "), 1.0);
        assert!(sim("a b", "b a") < 1.0);
        assert_eq!(sim("a b", "b a"), 2.0 / 4.0);
        assert_eq!(sim("same text", "same text"), 1.0);
        assert_eq!(sim("", ""), 1.0);
        assert_eq!(sim("", "x"), 0.0);
        assert_eq!(sim("x", "  "), 0.0);
        assert_eq!(sim("x", "y"), 0.0);
        assert_eq!(sim("a b", "a c"), sim("a c", "a b"));
    }

    #[test]
    fn agreement_counts_copies_and_is_zero_alone() {
        assert_eq!(agreement(&[]), Vec::<f64>::new());
        assert_eq!(agreement(&["only"]), vec![0.0]);
        // Two copies of "x" agree fully with each other and not at all with "y".
        close(&agreement(&["x", "x", "y"]), &[0.5, 0.5, 0.0]);
        // "a b" meets "a c" (1/5) and "a b" (1); "a c" meets both "a b" (1/5 each).
        close(&agreement(&["a b", "a c", "a b"]), &[0.6, 0.2, 0.6]);
    }

    #[test]
    fn standardize_uses_the_population_sd_and_zeros_for_no_spread() {
        close(&standardize(&[1.0, 3.0]), &[-1.0, 1.0]);
        close(
            &standardize(&[0.0, 0.0, 3.0]),
            &[-0.5f64.sqrt(), -0.5f64.sqrt(), 2.0f64.sqrt()],
        );
        assert_eq!(standardize(&[4.0, 4.0]), vec![0.0, 0.0]);
        assert_eq!(standardize(&[7.0]), vec![0.0]);
        assert_eq!(standardize(&[]), Vec::<f64>::new());
    }

    #[test]
    fn combine_adds_the_weighted_standardised_agreement() {
        // The aggregate prefers candidate 0, agreement prefers 1: the weight decides.
        let aggregate = [2.0, 0.0];
        let agreement = [0.1, 0.9];
        close(&combine(&aggregate, &agreement, 1.0), &[0.0, 0.0]);
        close(&combine(&aggregate, &agreement, 3.0), &[-2.0, 2.0]);
        close(&combine(&aggregate, &agreement, 0.5), &[0.5, -0.5]);
        // Agreement that does not vary leaves the standardised aggregate.
        close(&combine(&[5.0, 1.0], &[0.3, 0.3], 100.0), &[1.0, -1.0]);
        close(&combine(&[5.0], &[0.0], 1.0), &[0.0]);
    }
}

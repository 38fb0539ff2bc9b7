//! The endogenous reward of REWARD.md, as pure math over rows of logits.
//!
//! A language model's logits `f(s, ·)` are a soft Q-function. With the entropy coefficient `α`:
//!
//! * `Q(s, a) = f(s, a)`
//! * `V(s) = α · logsumexp_a(f(s, a) / α)`
//! * `log π(a | s) = (Q(s, a) − V(s)) / α`
//! * the per-token reward is the inverse soft Bellman operator `r_t = Q(s_t, a_t) − V(s_{t+1})`,
//!   with `V(s_{H+1}) = 0` when the candidate ends in an end-of-generation token.
//!
//! Nothing here knows about llama.cpp or I/O: the engine hands in logits rows and gets numbers back.

use serde::{Deserialize, Serialize};

/// The entropy coefficient `α` (the softmax temperature of the soft Q-function); always within
/// [`Alpha::MIN`]`..=`[`Alpha::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Alpha(f64);

impl Alpha {
    /// `α = 1`, the model's own distribution.
    pub const ONE: Alpha = Alpha(1.0);

    /// The smallest `α` accepted. Below it `V(s)` is the row's maximum logit to within
    /// `α · ln(vocabulary)` < 0.02 nat, so nothing is lost; far below it `1/α` overflows the f32 the
    /// logits are scaled in (`1/α = ∞`, and `0 · ∞` makes the soft value NaN).
    pub const MIN: f64 = 1e-3;

    /// The largest `α` accepted. Above it the policy `π = softmax(f/α)` is uniform to within 1% for
    /// logits spread over < 10 nats, so the reward says nothing more; far above it `α · ln(Σ…)`
    /// overflows f64 (`α = 1.7e308` gives `V = ∞`, and every score NaN).
    pub const MAX: f64 = 1e3;

    /// Accepts `α` in `MIN..=MAX` (so not NaN); `None` otherwise.
    pub fn new(value: f64) -> Option<Alpha> {
        (Self::MIN..=Self::MAX)
            .contains(&value)
            .then_some(Alpha(value))
    }

    /// The value of `α`.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for Alpha {
    fn default() -> Self {
        Alpha::ONE
    }
}

/// The soft value `V(s) = α · logsumexp(f(s, ·) / α)` of one logits row.
///
/// The maximum is subtracted before exponentiating (in f32, as the logits are); exponentials are
/// summed in f32 lanes over blocks of 1024 entries and the blocks in f64, so a 150k-entry
/// vocabulary loses no precision. This runs once per candidate token over the whole vocabulary,
/// so it is written to vectorise: see [`exp_non_positive`].
pub fn soft_value(logits: &[f32], alpha: Alpha) -> f64 {
    const LANES: usize = 16;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return f64::from(max);
    }
    let inv_alpha = (1.0 / alpha.0) as f32;
    let exp = |logit: f32| exp_non_positive((logit - max) * inv_alpha);
    let mut sum = 0f64;
    for block in logits.chunks(1024) {
        let mut lanes = [0f32; LANES];
        let mut columns = block.chunks_exact(LANES);
        for column in &mut columns {
            for (lane, &logit) in lanes.iter_mut().zip(column) {
                *lane += exp(logit);
            }
        }
        sum += lanes.iter().map(|&x| f64::from(x)).sum::<f64>();
        sum += columns
            .remainder()
            .iter()
            .map(|&x| f64::from(exp(x)))
            .sum::<f64>();
    }
    f64::from(max) + alpha.0 * sum.ln()
}

/// `e^x` for `x ≤ 0`, to a relative error below 1e-5 down to `x = −86` (smaller results are
/// flushed towards 2^-125, far below anything that changes a sum that includes `e^0 = 1`).
///
/// `f32::exp` calls libm once per element and does not vectorise; this is plain arithmetic: write
/// `x·log2 e = i + f` with `i` an integer (rounded by the 1.5·2^23 trick) and `|f| ≤ 1/2`, take `2^i`
/// from the exponent bits and `2^f` from a degree-6 polynomial.
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    let t = (x * std::f32::consts::LOG2_E).max(-125.0);
    let shifted = t + ROUND;
    let i = shifted - ROUND;
    let f = t - i;
    let two_to_f = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5
                + f * (0.055_504_11
                    + f * (0.009_618_129 + f * (0.001_333_355 + f * 0.000_154_035_3)))));
    let exponent = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    f32::from_bits(exponent << 23) * two_to_f
}

/// What one logits row contributes: its soft value and the logit of the token that follows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowValue {
    /// `V(s)` for the state that ends at this row.
    pub v: f64,
    /// `Q(s, a) = f(s, a)` for the candidate token `a` taken from this state, if there is one.
    pub q_next: Option<f64>,
}

/// Reduces one logits row to what the reward needs, reading the logit of `next` if given.
///
/// Returns `None` when `next` is not a valid index into the row.
pub fn row_value(logits: &[f32], next: Option<usize>, alpha: Alpha) -> Option<RowValue> {
    let q_next = match next {
        Some(token) => Some(f64::from(*logits.get(token)?)),
        None => None,
    };
    Some(RowValue {
        v: soft_value(logits, alpha),
        q_next,
    })
}

/// The values of one candidate token `a_t` taken in state `s_t`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TokenValues {
    /// `log π(a_t | s_t) = (Q − V(s_t)) / α`.
    pub logprob: f64,
    /// `Q(s_t, a_t)`, the raw logit.
    pub q: f64,
    /// `V(s_{t+1})`; `0` after a terminal token.
    pub v_next: f64,
    /// `r_t = Q(s_t, a_t) − V(s_{t+1})`.
    pub reward: f64,
}

impl TokenValues {
    /// Values of a token with logit `q`, taken in a state of value `v`, leading to a state of value
    /// `v_next` (pass `0` when the token ends the trajectory).
    pub fn new(q: f64, v: f64, v_next: f64, alpha: Alpha) -> TokenValues {
        TokenValues {
            logprob: (q - v) / alpha.0,
            q,
            v_next,
            reward: q - v_next,
        }
    }
}

/// Per-token values of a whole candidate from its `H + 1` rows.
///
/// `rows[0]` is the row of the last context token (with `q_next` of the first candidate token);
/// `rows[t]` is the row of candidate token `t` (with `q_next` of token `t + 1`, except for the last).
/// When `terminal`, the last row may be omitted (`rows.len() == H`): its value is defined as 0.
///
/// Returns `None` when the rows do not fit that shape.
pub fn candidate_values(
    rows: &[RowValue],
    terminal: bool,
    alpha: Alpha,
) -> Option<Vec<TokenValues>> {
    let n_tokens = if terminal {
        rows.len()
            .checked_sub(usize::from(rows.last()?.q_next.is_none()))?
    } else {
        rows.len().checked_sub(1)?
    };
    (0..n_tokens)
        .map(|t| {
            let here = rows[t];
            let v_next = match rows.get(t + 1) {
                _ if terminal && t + 1 == n_tokens => 0.0,
                Some(next) => next.v,
                None => return None,
            };
            Some(TokenValues::new(here.q_next?, here.v, v_next, alpha))
        })
        .collect()
}

/// Response-level scores of one candidate (REWARD.md, "aggregates").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Aggregates {
    /// `R = Σ r_t`, the paper's score.
    pub endo: f64,
    /// `R / H`.
    pub endo_mean: f64,
    /// `α · Σ log π(a_t | s_t)`.
    pub logprob: f64,
    /// `logprob / H`.
    pub logprob_mean: f64,
}

impl Aggregates {
    /// Sums the per-token values (in f64). An empty candidate scores 0 everywhere.
    pub fn of(tokens: &[TokenValues], alpha: Alpha) -> Aggregates {
        let endo: f64 = tokens.iter().map(|t| t.reward).sum();
        let logprob = alpha.0 * tokens.iter().map(|t| t.logprob).sum::<f64>();
        let n = tokens.len().max(1) as f64;
        Aggregates {
            endo,
            endo_mean: endo / n,
            logprob,
            logprob_mean: logprob / n,
        }
    }

    /// The score named by `aggregate`.
    pub fn get(&self, aggregate: Aggregate) -> f64 {
        match aggregate {
            Aggregate::Endo => self.endo,
            Aggregate::EndoMean => self.endo_mean,
            Aggregate::Logprob => self.logprob,
            Aggregate::LogprobMean => self.logprob_mean,
        }
    }
}

/// Which response-level score ranks the candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// `Σ r_t` (default).
    #[default]
    Endo,
    /// `Σ r_t / H`.
    EndoMean,
    /// `α · Σ log π`.
    Logprob,
    /// `α · Σ log π / H`.
    LogprobMean,
}

impl Aggregate {
    /// Every aggregate, in the order of REWARD.md.
    pub const ALL: [Aggregate; 4] = [
        Aggregate::Endo,
        Aggregate::EndoMean,
        Aggregate::Logprob,
        Aggregate::LogprobMean,
    ];

    /// The wire name (`endo`, `endo_mean`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Endo => "endo",
            Aggregate::EndoMean => "endo_mean",
            Aggregate::Logprob => "logprob",
            Aggregate::LogprobMean => "logprob_mean",
        }
    }
}

impl std::str::FromStr for Aggregate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Aggregate::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown aggregate `{s}` (expected endo, endo_mean, logprob or logprob_mean)"
                )
            })
    }
}

/// Ranks scores best first: returns the indices in descending score order (ties keep input order).
/// NaN sorts last.
pub fn order_best_first(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        y.partial_cmp(&x)
            .unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()))
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn soft_value_is_logsumexp_at_alpha_one() {
        // logsumexp(0, ln 3) = ln(1 + 3) = ln 4
        let v = soft_value(&[0.0, 3f32.ln()], Alpha::ONE);
        assert!((v - 4f64.ln()).abs() < 1e-6, "{v}");
    }

    #[test]
    fn soft_value_scales_with_alpha() {
        // α = 2 over (0, 2 ln 3): 2 · ln(e^0 + e^{ln 3}) = 2 ln 4
        let alpha = Alpha::new(2.0).unwrap();
        let v = soft_value(&[0.0, 2.0 * 3f32.ln()], alpha);
        assert!((v - 2.0 * 4f64.ln()).abs() < 1e-5, "{v}");
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in 0..8600 {
            let x = -(i as f32) * 0.01;
            let (got, want) = (f64::from(exp_non_positive(x)), f64::from(x).exp());
            assert!((got - want).abs() / want < 1e-5, "e^{x}: {got} vs {want}");
        }
    }

    #[test]
    fn soft_value_matches_f64_logsumexp_on_a_vocabulary_sized_row() {
        let mut state = 7u32;
        let row: Vec<f32> = (0..49_999)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / 16_777_216.0 * 40.0 - 15.0
            })
            .collect();
        for alpha in [0.3, 1.0, 2.5] {
            let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
            let exact = max
                + alpha
                    * row
                        .iter()
                        .map(|&x| ((x as f64 - max) / alpha).exp())
                        .sum::<f64>()
                        .ln();
            let got = soft_value(&row, Alpha::new(alpha).unwrap());
            assert!((got - exact).abs() < 1e-4, "α={alpha}: {got} vs {exact}");
        }
    }

    #[test]
    fn soft_value_survives_huge_logits() {
        // Without max subtraction e^1000 overflows.
        let v = soft_value(&[1000.0, 1000.0], Alpha::ONE);
        assert!((v - (1000.0 + 2f64.ln())).abs() < 1e-4, "{v}");
    }

    #[test]
    fn alpha_rejects_non_positive_and_non_finite() {
        assert!(Alpha::new(0.0).is_none());
        assert!(Alpha::new(-1.0).is_none());
        assert!(Alpha::new(f64::NAN).is_none());
        assert!(Alpha::new(f64::INFINITY).is_none());
        // Finite but out of range: 1.7e308 made every score -inf, 1e-300 made it NaN (the fuzzer).
        assert!(Alpha::new(1.7e308).is_none());
        assert!(Alpha::new(1e-300).is_none());
        assert!(Alpha::new(Alpha::MAX).is_some() && Alpha::new(Alpha::MIN).is_some());
        assert_eq!(Alpha::new(0.5).map(Alpha::get), Some(0.5));
    }

    #[test]
    fn alpha_is_bounded_where_the_math_stays_finite() {
        for outside in [1.7e308, 1e300, 1000.5, 9.99e-4, 1e-300, f64::MIN_POSITIVE] {
            assert!(Alpha::new(outside).is_none(), "{outside}");
        }
        assert_eq!(Alpha::new(Alpha::MIN).map(Alpha::get), Some(1e-3));
        assert_eq!(Alpha::new(Alpha::MAX).map(Alpha::get), Some(1e3));
        // At both ends, over a vocabulary-sized row with a wide spread, every value is finite.
        let row: Vec<f32> = (0..150_000)
            .map(|i| (i % 4000) as f32 * 0.01 - 20.0)
            .collect();
        for alpha in [Alpha::MIN, Alpha::MAX] {
            let alpha = Alpha::new(alpha).unwrap();
            let v = soft_value(&row, alpha);
            let t = TokenValues::new(f64::from(row[0]), v, v, alpha);
            assert!(v.is_finite() && t.logprob.is_finite() && t.reward.is_finite());
            assert!(Aggregates::of(&[t, t], alpha).logprob.is_finite());
        }
    }

    #[test]
    fn token_values_follow_the_bellman_identity() {
        let t = TokenValues::new(5.0, 7.0, 4.0, Alpha::new(2.0).unwrap());
        assert!(close(t.logprob, -1.0));
        assert!(close(t.reward, 1.0));
        assert!(close(t.v_next, 4.0));
    }

    #[test]
    fn candidate_values_chain_rows() {
        // Two tokens, not terminal: rows are context(V=10, q=9), tok1(V=8, q=7), tok2(V=6).
        let rows = [
            RowValue {
                v: 10.0,
                q_next: Some(9.0),
            },
            RowValue {
                v: 8.0,
                q_next: Some(7.0),
            },
            RowValue {
                v: 6.0,
                q_next: None,
            },
        ];
        let values = candidate_values(&rows, false, Alpha::ONE).unwrap();
        assert_eq!(values.len(), 2);
        assert!(close(values[0].reward, 9.0 - 8.0));
        assert!(close(values[0].logprob, 9.0 - 10.0));
        assert!(close(values[1].reward, 7.0 - 6.0));
        assert!(close(values[1].logprob, 7.0 - 8.0));
    }

    #[test]
    fn terminal_candidates_end_at_zero_value() {
        let with_last_row = [
            RowValue {
                v: 10.0,
                q_next: Some(9.0),
            },
            RowValue {
                v: 8.0,
                q_next: Some(7.0),
            },
            RowValue {
                v: 6.0,
                q_next: None,
            },
        ];
        let without_last_row = &with_last_row[..2];
        for rows in [&with_last_row[..], without_last_row] {
            let values = candidate_values(rows, true, Alpha::ONE).unwrap();
            assert_eq!(values.len(), 2);
            assert!(close(values[1].v_next, 0.0));
            assert!(close(values[1].reward, 7.0));
        }
    }

    #[test]
    fn telescoping_links_endo_and_logprob() {
        // R = α Σ log π + V(s_1) − V(s_{H+1})
        let alpha = Alpha::new(0.7).unwrap();
        let rows = [
            RowValue {
                v: 3.0,
                q_next: Some(2.5),
            },
            RowValue {
                v: 4.0,
                q_next: Some(1.0),
            },
            RowValue {
                v: 2.0,
                q_next: Some(0.5),
            },
            RowValue {
                v: 1.5,
                q_next: None,
            },
        ];
        let values = candidate_values(&rows, false, alpha).unwrap();
        let agg = Aggregates::of(&values, alpha);
        assert!(close(agg.endo, agg.logprob + 3.0 - 1.5));
        assert!(close(agg.endo, (2.5 - 4.0) + (1.0 - 2.0) + (0.5 - 1.5)));
        assert!(close(agg.endo_mean, agg.endo / 3.0));
        assert!(close(agg.logprob_mean, agg.logprob / 3.0));
    }

    #[test]
    fn malformed_rows_are_rejected() {
        assert!(candidate_values(&[], false, Alpha::ONE).is_none());
        let missing_q = [
            RowValue {
                v: 1.0,
                q_next: None,
            },
            RowValue {
                v: 1.0,
                q_next: None,
            },
        ];
        assert!(candidate_values(&missing_q, false, Alpha::ONE).is_none());
        assert!(row_value(&[0.0, 1.0], Some(2), Alpha::ONE).is_none());
    }

    #[test]
    fn aggregate_names_round_trip() {
        for a in Aggregate::ALL {
            assert_eq!(a.name().parse::<Aggregate>(), Ok(a));
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                format!("\"{}\"", a.name())
            );
        }
        assert!("best".parse::<Aggregate>().is_err());
    }

    #[test]
    fn order_is_best_first_and_stable() {
        assert_eq!(order_best_first(&[1.0, 3.0, 2.0, 3.0]), vec![1, 3, 2, 0]);
        assert_eq!(order_best_first(&[f64::NAN, 0.0]), vec![1, 0]);
    }
}

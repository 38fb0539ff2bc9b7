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
//! [`consensus`] scores candidates by how much they agree with each other, from their texts alone;
//! [`Recipe`] combines a candidate's [`Terms`] (its aggregates in each pass) into its score.

use serde::{Deserialize, Serialize};

pub mod consensus;
mod terms;

pub use terms::{Recipe, Terms};

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
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Aggregates {
    /// `R = Σ r_t`, the paper's score.
    pub endo: f64,
    /// `R / H`.
    pub endo_mean: f64,
    /// `α · Σ log π(a_t | s_t)`.
    pub logprob: f64,
    /// `logprob / H`.
    pub logprob_mean: f64,
    /// `R − b · H`, the length-controlled sum, where the scoring model's [`Baseline`] is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endo_lc: Option<f64>,
}

impl Aggregates {
    /// Sums the per-token values (in f64). An empty candidate scores 0 everywhere.
    pub fn of(tokens: &[TokenValues], alpha: Alpha, baseline: Option<Baseline>) -> Aggregates {
        let endo: f64 = tokens.iter().map(|t| t.reward).sum();
        let logprob = alpha.0 * tokens.iter().map(|t| t.logprob).sum::<f64>();
        let h = tokens.len() as f64;
        let n = h.max(1.0);
        Aggregates {
            endo,
            endo_mean: endo / n,
            logprob,
            logprob_mean: logprob / n,
            endo_lc: baseline.map(|b| endo - b.0 * h),
        }
    }

    /// The score named by `aggregate`; `None` for `endo_lc` without a baseline.
    pub fn get(&self, aggregate: Aggregate) -> Option<f64> {
        match aggregate {
            Aggregate::Endo => Some(self.endo),
            Aggregate::EndoMean => Some(self.endo_mean),
            Aggregate::Logprob => Some(self.logprob),
            Aggregate::LogprobMean => Some(self.logprob_mean),
            Aggregate::EndoLc => self.endo_lc,
        }
    }

    /// Whether every aggregate present is a finite number.
    pub fn is_finite(&self) -> bool {
        [self.endo, self.endo_mean, self.logprob, self.logprob_mean]
            .into_iter()
            .chain(self.endo_lc)
            .all(f64::is_finite)
    }
}

/// A model's typical reward per token, `b` of `endo_lc = endo − b · H`: its `endo_mean` on a
/// fixed neutral text ([`NEUTRAL_TEXT`]), measured once per model (`Scorer::baseline`) and
/// never fitted to any labels. Subtracting it per token puts a long and a short reply of
/// ordinary quality on the same footing: the paper's sum favours short replies when `b < 0`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Baseline(pub f64);

/// The request whose answer [`NEUTRAL_TEXT`] is, for models with a chat template.
pub const NEUTRAL_REQUEST: &str = "Describe what a public library offers its visitors.";

/// An ordinary, unremarkable answer: the text on which a model's typical reward per token is
/// measured for `endo_lc`. Written once, before any measurement; never changed to suit a result.
pub const NEUTRAL_TEXT: &str = "A public library lends books, magazines and films to anyone with \
a library card, which is usually free for people who live nearby. Most libraries let visitors \
borrow several items at a time for two or three weeks and renew them online or at the front desk. \
Besides the shelves, there are quiet reading rooms, tables with power outlets, computers with \
internet access and printers that charge a small fee per page. Many libraries run reading hours \
for children, language classes and help with job applications. If a book is not on the shelf, a \
librarian can order it from another branch, which often takes a few days.";

/// Which response-level score ranks the candidates.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
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
    /// `Σ r_t − b · H`: the sum less the model's typical reward per token ([`Baseline`]) times
    /// the tokens; between the sum (which favours short replies) and the mean.
    EndoLc,
}

impl Aggregate {
    /// Every aggregate: the four of REWARD.md, then `endo_lc` (docs/QUALITY.md, "Beyond the paper").
    pub const ALL: [Aggregate; 5] = [
        Aggregate::Endo,
        Aggregate::EndoMean,
        Aggregate::Logprob,
        Aggregate::LogprobMean,
        Aggregate::EndoLc,
    ];

    /// The wire name (`endo`, `endo_mean`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Endo => "endo",
            Aggregate::EndoMean => "endo_mean",
            Aggregate::Logprob => "logprob",
            Aggregate::LogprobMean => "logprob_mean",
            Aggregate::EndoLc => "endo_lc",
        }
    }

    /// Whether it is a per-token mean (`endo_mean`, `logprob_mean`).
    pub fn is_mean(self) -> bool {
        matches!(self, Aggregate::EndoMean | Aggregate::LogprobMean)
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
                    "unknown aggregate `{s}` (expected endo, endo_mean, logprob, logprob_mean or endo_lc)"
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
mod tests;

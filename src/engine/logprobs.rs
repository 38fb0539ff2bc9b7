//! Log-probabilities along token sequences: what OpenAI-style `echo` + `logprobs` scoring reports
//! (`/v1/completions`, as lm-evaluation-harness asks for log-likelihoods).

use super::context::Step;
use super::scorer::{along, logit, outside_row};
use super::{EngineError, Model, Scorer, Token};
use crate::reward::{self, Alpha};

/// The next-token distribution at one position of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct RowLogprobs {
    /// `log π` of the token that follows in the sequence; `None` after its last token.
    pub next_logprob: Option<f64>,
    /// The most likely next tokens with their `log π`, best first (ties: lower id first); at least
    /// one entry, so `top[0]` is the greedy next token.
    pub top: Vec<(Token, f64)>,
}

/// One sequence with its log-probabilities, ready to report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SequenceLogprobs {
    /// The sequence's tokens, plus the greedy next token when one was asked for.
    pub tokens: Vec<Token>,
    /// The text of each token (joined: the whole text).
    pub texts: Vec<String>,
    /// `log π` of each token after the first (the greedy token's too).
    pub logprobs: Vec<f64>,
    /// The `top_k` most likely tokens at each position after the first, as (text, `log π`), best
    /// first.
    pub top: Vec<Vec<(String, f64)>>,
}

impl Scorer<'_> {
    /// Log-probabilities (α = 1) along `tokens`, with the greedy next token appended when
    /// `greedy`, and `top_k` alternatives per position. With neither, nothing is decoded: only the
    /// texts are filled in.
    pub fn sequence_logprobs(
        &mut self,
        tokens: &[Token],
        top_k: Option<usize>,
        greedy: bool,
    ) -> Result<SequenceLogprobs, EngineError> {
        let model = self.model();
        if top_k.is_none() && !greedy {
            return Ok(SequenceLogprobs {
                texts: model.token_texts(tokens),
                tokens: tokens.to_vec(),
                logprobs: Vec::new(),
                top: Vec::new(),
            });
        }
        let rows = self.rows_along(tokens, top_k.unwrap_or(1), greedy)?;
        let mut all = tokens.to_vec();
        if greedy {
            let next = rows
                .last()
                .and_then(|row| row.top.first())
                .ok_or_else(|| EngineError::Internal("no row after the prompt".into()))?;
            all.push(next.0);
        }
        let logprobs: Vec<f64> = rows
            .iter()
            .take(all.len() - 1)
            .map(|row| match row.next_logprob {
                Some(logprob) => logprob,
                // The row after the prompt: the appended greedy token is its top entry.
                None => row.top.first().map_or(f64::NAN, |t| t.1),
            })
            .collect();
        let top = rows
            .iter()
            .take(all.len() - 1)
            .map(|row| {
                row.top
                    .iter()
                    .take(top_k.unwrap_or(0))
                    .map(|&(token, logprob)| (piece(model, token), logprob))
                    .collect()
            })
            .collect::<Vec<Vec<(String, f64)>>>();
        // A model whose logits are not finite numbers (a damaged file) gives no log-probs at all:
        // JSON has no NaN or infinity, and a `null` where a number is promised misleads.
        let all_finite = logprobs.iter().all(|x| x.is_finite())
            && top.iter().flatten().all(|(_, logprob)| logprob.is_finite());
        if !all_finite {
            return Err(EngineError::NotFinite(
                "the model's log-probabilities are not numbers; is the model file intact?".into(),
            ));
        }
        Ok(SequenceLogprobs {
            texts: model.token_texts(&all),
            tokens: all,
            logprobs,
            top,
        })
    }

    /// One [`RowLogprobs`] per position `i` in `0..tokens.len() - 1` (the distribution of
    /// `tokens[i + 1]`), plus one after the last token when `after_last`.
    ///
    /// The sequence is decoded on its own (from position 0) in chunks of `n_batch`; only one
    /// chunk's rows are held at a time.
    pub fn rows_along(
        &mut self,
        tokens: &[Token],
        top_k: usize,
        after_last: bool,
    ) -> Result<Vec<RowLogprobs>, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::InvalidInput("the prompt has no tokens".into()));
        }
        self.check_sequence(tokens)?;
        let rows_wanted = tokens.len() - usize::from(!after_last);
        let top_k = top_k.max(1);
        // Not on a context pinned by the job this one runs between the slices of.
        let steps: Vec<Step> = along(tokens, 0, self.free_slot(), |i| i < rows_wanted);
        let mut rows = Vec::with_capacity(rows_wanted);
        self.clear_cache();
        let result = self.context.decode(&steps, |chunk, logits| {
            for position in chunk.start..chunk.end.min(rows_wanted) {
                let row = logits.row(position - chunk.start);
                let log_z = reward::soft_value(row, Alpha::ONE);
                let next_logprob = match tokens.get(position + 1) {
                    Some(&next) => {
                        Some(logit(row, next).ok_or_else(|| outside_row("a token"))? - log_z)
                    }
                    None => None,
                };
                let top = top_tokens(row, top_k)
                    .into_iter()
                    .map(|(id, value)| (Token(id), f64::from(value) - log_z))
                    .collect();
                rows.push(RowLogprobs { next_logprob, top });
            }
            Ok(())
        });
        self.clear_cache();
        result.map(|()| rows)
    }
}

/// A token's text as a map key: its bytes, invalid UTF-8 replaced.
fn piece(model: &Model, token: Token) -> String {
    String::from_utf8_lossy(&model.token_bytes(token)).into_owned()
}

/// The `k` largest entries of `row` as (index, value), largest first, lower index first on ties.
fn top_tokens(row: &[f32], k: usize) -> Vec<(i32, f32)> {
    let mut best: Vec<(i32, f32)> = Vec::with_capacity(k + 1);
    for (index, &value) in row.iter().enumerate() {
        if best.len() == k && best.last().is_some_and(|&(_, worst)| value <= worst) {
            continue;
        }
        let at = best.partition_point(|&(_, v)| v >= value);
        best.insert(at, (index as i32, value));
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::top_tokens;

    #[test]
    fn top_tokens_are_best_first_and_stable_on_ties() {
        let row = [0.5, 2.0, -1.0, 2.0, 1.0];
        assert_eq!(top_tokens(&row, 3), vec![(1, 2.0), (3, 2.0), (4, 1.0)]);
        assert_eq!(top_tokens(&row, 1), vec![(1, 2.0)]);
        assert_eq!(top_tokens(&row, 10).len(), 5);
    }
}

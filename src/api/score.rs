//! `POST /v1/score`: the native call, also the offline scorer's line format.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::reward::{Aggregate, Aggregates, TokenValues};

/// How the context and the candidates are turned into tokens (REWARD.md, "Which tokens are the candidate").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The model's chat template over the messages; each candidate is an assistant turn.
    Chat,
    /// Plain text: the prompt is the context, each candidate its continuation.
    Raw,
}

/// What a candidate's score is contrasted with (the score minus the same aggregate there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Contrast {
    /// The same candidate tokens after a neutral context: chat, the template over one empty user
    /// turn; raw, the empty prompt (the model's BOS token).
    Neutral,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user` or `assistant` (passed to the template as given).
    pub role: String,
    /// The text of the message.
    pub content: String,
}

/// Body of `POST /v1/score`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// Model id; the configured default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `chat` when the model has a chat template, else `raw`, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Chat: the conversation up to the assistant turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    /// Chat: a single user message. Raw: the context text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Chat: a system message saying what "good" means for this reward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principle: Option<String>,
    /// The texts to score.
    pub candidates: Vec<String>,
    /// The response-level score that ranks the candidates.
    #[serde(default)]
    pub aggregate: Aggregate,
    /// Temperature of the soft Q-function; 1.0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Raw only: append and score the end-of-generation token.
    #[serde(default)]
    pub terminal: bool,
    /// Include the per-token values in the response.
    #[serde(default)]
    pub return_tokens: bool,
    /// Score at most this many tokens of each candidate's text; the rest is cut off (a chat
    /// reply still ends with its end-of-turn token). Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_candidate_tokens: Option<usize>,
    /// Weight `w` (0 < w ≤ 100) of the candidates' agreement with each other: `score` becomes
    /// `z(aggregate) + w · z(agreement)` (`crate::reward::consensus`). Plain aggregate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<f64>,
    /// Subtract the same aggregate under this context from `score` (each result's `neutral`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrast: Option<Contrast>,
    /// Add `log p(instruction | candidate)`, the reviewer term, to `score` (each result's
    /// `reviewer`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reviewer: bool,
    /// Subtract the same aggregate under this model, on the same tokens, from `score` (each
    /// result's `reference`); the model's configured `reference_model` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_model: Option<String>,
}

impl ScoreRequest {
    /// Bytes of text to tokenize: the prompt, the messages, the principle and the candidates.
    pub fn text_bytes(&self) -> usize {
        let messages = self.messages.iter().flatten();
        let texts = self
            .candidates
            .iter()
            .chain(&self.prompt)
            .chain(&self.principle);
        texts.map(String::len).sum::<usize>()
            + messages
                .map(|m| m.role.len() + m.content.len())
                .sum::<usize>()
    }

    /// Chat messages: each becomes at least one token of the context.
    pub fn message_count(&self) -> usize {
        self.messages.as_ref().map_or(0, Vec::len)
    }
}

/// Response of `POST /v1/score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScoreResponse {
    /// The model that scored.
    pub model: String,
    /// The aggregate in `score`.
    pub aggregate: Aggregate,
    /// How the request was read: the request's `format`, else `chat` when the model has a chat
    /// template and `raw` when it has none (a base model: the prompt is plain text then).
    pub format: Format,
    /// The model whose aggregate was subtracted (`reference` in each result), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_model: Option<String>,
    /// One entry per candidate, in request order.
    pub results: Vec<CandidateResult>,
    /// Candidate indices, best first.
    pub order: Vec<usize>,
    /// Token counts.
    pub usage: Usage,
    /// Where the time went.
    pub timings: Timings,
}

/// The scores of one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CandidateResult {
    /// Position of the candidate in the request.
    pub index: usize,
    /// The requested aggregate, minus `neutral` and `reference` and plus `reviewer` where present;
    /// with `consensus`, that score combined with `agreement`.
    pub score: f64,
    /// 1 for the best candidate.
    pub rank: usize,
    /// `Σ r_t`.
    pub endo: f64,
    /// `Σ r_t / H`.
    pub endo_mean: f64,
    /// `α · Σ log π`.
    pub logprob: f64,
    /// `α · Σ log π / H`.
    pub logprob_mean: f64,
    /// `Σ r_t − b · H`, `b` the model's baseline (`/v1/models`: `meta.endo_lc_baseline`): the
    /// sum less the model's typical reward per token. Absent where the baseline is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endo_lc: Option<f64>,
    /// `H`, the number of scored tokens.
    pub n_tokens: usize,
    /// With `consensus`: the mean similarity of this candidate's text to the others'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// The requested aggregate of the same tokens after the neutral context (`contrast: "neutral"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neutral: Option<f64>,
    /// `Σ log π` of the instruction's tokens after the candidate (divided by their count for the
    /// `*_mean` aggregates), when `reviewer` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<f64>,
    /// The requested aggregate under the reference model, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<f64>,
    /// Per-token detail, when `return_tokens` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<TokenDetail>>,
}

impl CandidateResult {
    /// A result with its aggregates filled in (`score` is the aggregate's, NaN for `endo_lc`
    /// without a baseline); `rank` is set once all candidates are known.
    pub fn new(index: usize, aggregate: Aggregate, sums: &Aggregates, n_tokens: usize) -> Self {
        CandidateResult {
            index,
            score: sums.get(aggregate).unwrap_or(f64::NAN),
            rank: 0,
            endo: sums.endo,
            endo_mean: sums.endo_mean,
            logprob: sums.logprob,
            logprob_mean: sums.logprob_mean,
            endo_lc: sums.endo_lc,
            n_tokens,
            agreement: None,
            neutral: None,
            reviewer: None,
            reference: None,
            tokens: None,
        }
    }
}

/// One scored token of a candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenDetail {
    /// Token id in the model's vocabulary.
    pub id: i32,
    /// The text this token completes (a multi-byte character split over tokens shows on its last token).
    pub text: String,
    /// `log π(a_t | s_t)`.
    pub logprob: f64,
    /// `Q(s_t, a_t)`.
    pub q: f64,
    /// `V(s_{t+1})`.
    pub v_next: f64,
    /// `r_t`.
    pub reward: f64,
}

impl TokenDetail {
    /// Joins a token's identity with its values.
    pub fn new(id: i32, text: String, values: &TokenValues) -> Self {
        TokenDetail {
            id,
            text,
            logprob: values.logprob,
            q: values.q,
            v_next: values.v_next,
            reward: values.reward,
        }
    }
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Tokens of the context.
    pub prompt_tokens: usize,
    /// Context tokens that were already in the cache and not decoded again.
    pub cached_tokens: usize,
    /// Tokens of all candidates together.
    pub candidate_tokens: usize,
    /// Candidate tokens decoded: `candidate_tokens - shared_candidate_tokens`.
    pub decoded_candidate_tokens: usize,
    /// Candidate tokens not decoded because another candidate begins with the same tokens: a
    /// shared beginning (and a repeated candidate) is decoded once for all of them (the prefix
    /// tree; 0 with `prefix_tree = false`).
    pub shared_candidate_tokens: usize,
    /// `prompt_tokens + candidate_tokens`.
    pub total_tokens: usize,
}

/// Wall time of one request, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    /// Waiting for the model's worker.
    pub queue_ms: f64,
    /// Tokenizing and decoding the context.
    pub prompt_ms: f64,
    /// Decoding the candidates and computing their rewards.
    pub candidates_ms: f64,
    /// Everything.
    pub total_ms: f64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::assert_wire;
    use super::*;

    #[test]
    fn request_round_trips_and_refuses_unknown_fields() {
        let minimal: ScoreRequest =
            serde_json::from_value(json!({"prompt": "Q?", "candidates": ["A."]})).unwrap();
        assert_wire(
            &minimal,
            json!({"prompt": "Q?", "candidates": ["A."], "aggregate": "endo", "terminal": false,
                   "return_tokens": false}),
        );
        let full = ScoreRequest {
            model: Some("m".into()),
            format: Some(Format::Chat),
            messages: Some(vec![Message {
                role: "user".into(),
                content: "Hi".into(),
            }]),
            prompt: None,
            principle: Some("Be brief.".into()),
            candidates: vec!["a".into(), "b".into()],
            aggregate: Aggregate::LogprobMean,
            alpha: Some(0.5),
            terminal: true,
            return_tokens: true,
            max_candidate_tokens: Some(3),
            consensus: Some(0.5),
            contrast: Some(Contrast::Neutral),
            reviewer: true,
            reference_model: Some("small".into()),
        };
        assert_wire(
            &full,
            json!({"model": "m", "format": "chat", "messages": [{"role": "user", "content": "Hi"}],
                   "principle": "Be brief.", "candidates": ["a", "b"], "aggregate": "logprob_mean",
                   "alpha": 0.5, "terminal": true, "return_tokens": true,
                   "max_candidate_tokens": 3, "consensus": 0.5, "contrast": "neutral", "reviewer": true,
                   "reference_model": "small"}),
        );
        assert_wire(&Format::Raw, json!("raw"));
        let error = serde_json::from_value::<ScoreRequest>(
            json!({"prompt": "Q?", "candidates": ["A."], "temprature": 1}),
        )
        .unwrap_err();
        assert!(error.to_string().contains("temprature"), "{error}");
        let error = serde_json::from_value::<ScoreRequest>(
            json!({"prompt": "Q?", "candidates": ["A."], "contrast": "generic"}),
        )
        .unwrap_err();
        assert!(error.to_string().contains("neutral"), "{error}");
    }

    #[test]
    fn contrast_terms_appear_only_when_asked_for() {
        let sums = Aggregates {
            endo: 1.5,
            endo_mean: 0.75,
            logprob: -2.0,
            logprob_mean: -1.0,
            endo_lc: None,
        };
        let mut result = CandidateResult::new(0, Aggregate::EndoMean, &sums, 2);
        result.neutral = Some(0.25);
        result.reviewer = Some(-0.5);
        result.reference = Some(0.125);
        result.score = 0.75 - 0.25 - 0.125 - 0.5;
        result.rank = 1;
        assert_wire(
            &result,
            json!({"index": 0, "score": -0.125, "rank": 1, "endo": 1.5, "endo_mean": 0.75,
                   "logprob": -2.0, "logprob_mean": -1.0, "n_tokens": 2, "neutral": 0.25,
                   "reviewer": -0.5, "reference": 0.125}),
        );
    }

    #[test]
    fn response_is_todays_json() {
        let values = TokenValues {
            logprob: -0.5,
            q: 18.25,
            v_next: 17.75,
            reward: 0.5,
        };
        let sums = Aggregates {
            endo: -11.25,
            endo_mean: -5.625,
            logprob: -13.5,
            logprob_mean: -6.75,
            endo_lc: Some(-10.25),
        };
        let mut result = CandidateResult::new(0, Aggregate::Endo, &sums, 2);
        result.rank = 1;
        result.tokens = Some(vec![TokenDetail::new(504, "Paris".into(), &values)]);
        let bare = CandidateResult {
            index: 1,
            tokens: None,
            agreement: Some(0.25),
            rank: 2,
            ..result.clone()
        };
        let response = ScoreResponse {
            model: "m".into(),
            aggregate: Aggregate::Endo,
            format: Format::Chat,
            reference_model: None,
            results: vec![result, bare],
            order: vec![0, 1],
            usage: Usage {
                prompt_tokens: 48,
                cached_tokens: 0,
                candidate_tokens: 31,
                decoded_candidate_tokens: 25,
                shared_candidate_tokens: 6,
                total_tokens: 79,
            },
            timings: Timings {
                queue_ms: 0.125,
                prompt_ms: 20.5,
                candidates_ms: 33.0,
                total_ms: 54.0,
            },
        };
        assert_wire(
            &response,
            json!({
                "model": "m",
                "aggregate": "endo",
                "format": "chat",
                "results": [
                    {"index": 0, "score": -11.25, "rank": 1, "endo": -11.25, "endo_mean": -5.625,
                     "logprob": -13.5, "logprob_mean": -6.75, "endo_lc": -10.25, "n_tokens": 2,
                     "tokens": [{"id": 504, "text": "Paris", "logprob": -0.5, "q": 18.25,
                                 "v_next": 17.75, "reward": 0.5}]},
                    {"index": 1, "score": -11.25, "rank": 2, "endo": -11.25, "endo_mean": -5.625,
                     "logprob": -13.5, "logprob_mean": -6.75, "endo_lc": -10.25, "n_tokens": 2,
                     "agreement": 0.25}
                ],
                "order": [0, 1],
                "usage": {"prompt_tokens": 48, "cached_tokens": 0, "candidate_tokens": 31,
                          "decoded_candidate_tokens": 25, "shared_candidate_tokens": 6,
                          "total_tokens": 79},
                "timings": {"queue_ms": 0.125, "prompt_ms": 20.5, "candidates_ms": 33.0,
                            "total_ms": 54.0}
            }),
        );
    }
}

//! The wire types of API.md, shared by the server, the offline scorer, the CLI and the tests.
//!
//! Scores are comparable only between the candidates of one request: the same context, model,
//! template, principle and `alpha`. Every response names the model and the aggregate it used.

use serde::{Deserialize, Serialize};

use crate::reward::{Aggregate, Aggregates, TokenValues};

/// How the context and the candidates are turned into tokens (REWARD.md, "Which tokens are the candidate").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The model's chat template over the messages; each candidate is an assistant turn.
    Chat,
    /// Plain text: the prompt is the context, each candidate its continuation.
    Raw,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user` or `assistant` (passed to the template as given).
    pub role: String,
    /// The text of the message.
    pub content: String,
}

/// Body of `POST /v1/score`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
}

/// Response of `POST /v1/score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResponse {
    /// The model that scored.
    pub model: String,
    /// The aggregate in `score`.
    pub aggregate: Aggregate,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateResult {
    /// Position of the candidate in the request.
    pub index: usize,
    /// The requested aggregate.
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
    /// `H`, the number of scored tokens.
    pub n_tokens: usize,
    /// Per-token detail, when `return_tokens` was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<TokenDetail>>,
}

impl CandidateResult {
    /// A result with its aggregates filled in; `rank` is set once all candidates are known.
    pub fn new(index: usize, aggregate: Aggregate, sums: &Aggregates, n_tokens: usize) -> Self {
        CandidateResult {
            index,
            score: sums.get(aggregate),
            rank: 0,
            endo: sums.endo,
            endo_mean: sums.endo_mean,
            logprob: sums.logprob,
            logprob_mean: sums.logprob_mean,
            n_tokens,
            tokens: None,
        }
    }
}

/// One scored token of a candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the context.
    pub prompt_tokens: usize,
    /// Context tokens that were already in the cache and not decoded again.
    pub cached_tokens: usize,
    /// Tokens of all candidates together.
    pub candidate_tokens: usize,
    /// `prompt_tokens + candidate_tokens`.
    pub total_tokens: usize,
}

/// Wall time of one request, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
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

/// The OpenAI-shaped error body: `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A sentence for a person.
    pub message: String,
    /// A broad class, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A stable machine-readable code, e.g. `context_length_exceeded`.
    pub code: String,
}

impl ErrorBody {
    /// An error body with the given class, code and message.
    pub fn new(kind: &str, code: &str, message: String) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message,
                kind: kind.to_owned(),
                code: code.to_owned(),
            },
        }
    }
}

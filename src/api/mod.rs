//! The wire types of API.md, shared by the server, the offline scorer, the CLI and the tests: one
//! `Serialize`/`Deserialize` type for every request and response body of every route. Pure data:
//! no llama.cpp, no I/O; the engine reads the request types and builds the response types.
//!
//! Scores are comparable only between the candidates of one request: the same context, model,
//! template, principle and `alpha`. Every response names the model and the aggregate it used.
//!
//! * [`score`] — `POST /v1/score` (and the offline scorer's lines).
//! * [`rerank`] — `POST /v1/rerank`, `/v2/rerank`, `/rerank` (Cohere, Jina, vLLM, Voyage, TEI).
//! * [`completions`] — `POST /v1/completions`.
//! * [`reward`] — `POST /get_reward`.
//! * [`tokenize`] — `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`.
//! * [`info`] — `GET /health`, `GET /v1/models`, `GET /info` (text-embeddings-inference).
//! * [`error`] — the error body of every route.
//! * [`openapi`] — every route, and the OpenAPI document derived from these types
//!   (`GET /openapi.json`, `docs/openapi.json`).

pub mod completions;
pub mod error;
pub mod info;
pub mod openapi;
pub mod rerank;
pub mod reward;
pub mod score;
pub mod tokenize;

pub use completions::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, CompletionUsage,
    FinishReason, Prompt, TopLogprobs,
};
pub use error::{ErrorBody, ErrorDetail};
pub use info::{
    HealthResponse, HealthStatus, ModelCard, ModelCardMeta, ModelHealth, ModelList, ModelState,
    RpcWorkerMeta, TeiInfo, TeiModelType,
};
pub use rerank::{
    AnyRerankRequest, ApiVersion, BilledUnits, Document, Ranking, RerankDocument, RerankMeta,
    RerankRequest, RerankResponse, RerankResult, RerankUsage, TeiRank, TeiRerankRequest,
};
pub use reward::{RewardRequest, RewardResponse};
pub use score::{
    CandidateResult, Contrast, Format, Message, ScoreRequest, ScoreResponse, Timings, TokenDetail,
    Usage,
};
pub use tokenize::{
    DetokenizeRequest, DetokenizeResponse, ModelQuery, Piece, TokenList, TokenPiece,
    TokenizeRequest, TokenizeResponse, TokenizerInfoResponse,
};

/// Asserts that `value` serializes to exactly `expected` (same fields, order, nulls and numbers)
/// and that `expected` deserializes back to `value`.
#[cfg(test)]
fn assert_wire<T>(value: &T, expected: serde_json::Value)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = serde_json::to_string(value).expect("serialize");
    assert_eq!(text, expected.to_string(), "serialized");
    let back: T = serde_json::from_str(&text).expect("deserialize");
    assert_eq!(&back, value, "round trip");
}

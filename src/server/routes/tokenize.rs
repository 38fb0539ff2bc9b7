//! `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info`, with llama-server's and vLLM's
//! field names both accepted.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::Token;
use crate::server::body::read_json;
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::{jobs, App};

/// Body of `/tokenize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    /// Model id.
    #[serde(default)]
    pub model: Option<String>,
    /// The text (llama-server's name).
    #[serde(default)]
    pub content: Option<String>,
    /// The text (vLLM's name).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Add BOS where the model wants one (llama-server; default false).
    #[serde(default)]
    pub add_special: Option<bool>,
    /// Add BOS where the model wants one (vLLM; default true).
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
    /// Turn special-token text such as `<|im_end|>` into its token (default true).
    #[serde(default)]
    pub parse_special: Option<bool>,
    /// Answer `[{"id", "piece"}]` instead of ids.
    #[serde(default)]
    pub with_pieces: bool,
    /// Also answer `token_strs` (vLLM).
    #[serde(default)]
    pub return_token_strs: bool,
}

/// `/tokenize`: `{"tokens", "count", "max_model_len"}` (+ `token_strs`).
pub async fn tokenize(State(app): State<Arc<App>>, body: Body) -> Result<Response, ApiError> {
    let snapshot = app.registry.snapshot();
    let request: TokenizeRequest = read_json(body, snapshot.limits.max_body_bytes).await?;
    let loaded = jobs::loaded(&*snapshot.resolve(request.model.as_deref())?)?;
    let (text, add_special) = match (request.content, request.prompt) {
        (Some(text), None) => (
            text,
            request
                .add_special
                .or(request.add_special_tokens)
                .unwrap_or(false),
        ),
        (None, Some(text)) => (
            text,
            request
                .add_special_tokens
                .or(request.add_special)
                .unwrap_or(true),
        ),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "send the text as exactly one of `content` (llama-server) or `prompt` (vLLM)",
            ))
        }
    };
    let parse_special = request.parse_special.unwrap_or(true);
    let (with_pieces, with_strs) = (request.with_pieces, request.return_token_strs);
    let body = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let model = &loaded.model;
        let tokens = model.tokenize(&text, add_special && model.adds_bos(), parse_special)?;
        let ids: Value = if with_pieces {
            tokens
                .iter()
                .map(|&t: &Token| json!({"id": t.id(), "piece": piece(&model.token_bytes(t))}))
                .collect::<Vec<_>>()
                .into()
        } else {
            tokens.iter().map(|t| t.id()).collect::<Vec<_>>().into()
        };
        let mut body = json!({"tokens": ids, "count": tokens.len(), "max_model_len": loaded.n_ctx});
        if with_strs {
            body["token_strs"] = model.token_texts(&tokens).into();
        }
        Ok(body)
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))??;
    let count = body["count"].as_u64().unwrap_or(0) as usize;
    Ok(with_tokens(
        Json(body),
        TokenCount {
            tokens: count,
            cached: 0,
        },
    ))
}

/// A token's piece as llama-server gives it: text when it is valid UTF-8, else its bytes.
fn piece(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => bytes
            .iter()
            .map(|&b| u64::from(b))
            .collect::<Vec<_>>()
            .into(),
    }
}

/// Body of `/detokenize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    /// Model id.
    #[serde(default)]
    pub model: Option<String>,
    /// Token ids.
    pub tokens: Vec<i64>,
}

/// `/detokenize`: `{"content", "prompt"}` (the same text twice). Bytes that are not valid UTF-8
/// (a character cut between tokens) become U+FFFD. Ids outside the vocabulary: 400.
pub async fn detokenize(State(app): State<Arc<App>>, body: Body) -> Result<Json<Value>, ApiError> {
    let snapshot = app.registry.snapshot();
    let request: DetokenizeRequest = read_json(body, snapshot.limits.max_body_bytes).await?;
    let loaded = jobs::loaded(&*snapshot.resolve(request.model.as_deref())?)?;
    let tokens = loaded.model.tokens(&request.tokens)?;
    let text = loaded.model.detokenize(&tokens);
    Ok(Json(json!({"content": text, "prompt": text})))
}

/// Query of `/tokenizer_info`.
#[derive(Debug, Deserialize)]
pub struct ModelQuery {
    /// Model id.
    pub model: Option<String>,
}

/// `GET /tokenizer_info[?model=ID]`: `{"eos_token", "bos_token", "pad_token", "chat_template", "model"}`.
pub async fn tokenizer_info(
    State(app): State<Arc<App>>,
    query: Result<Query<ModelQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let snapshot = app.registry.snapshot();
    let requested = query
        .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?
        .0
        .model;
    let entry = snapshot.resolve(requested.as_deref())?;
    let loaded = jobs::loaded(&entry)?;
    let info = &loaded.tokenizer;
    Ok(Json(json!({
        "model": entry.id(),
        "bos_token": info.bos_token,
        "eos_token": info.eos_token,
        "pad_token": info.eos_token,
        "chat_template": info.chat_template,
        "add_bos_token": loaded.model.adds_bos(),
        "model_max_length": loaded.n_ctx,
    })))
}

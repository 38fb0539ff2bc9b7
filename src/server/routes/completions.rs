//! `POST /v1/completions`: the scoring subset of OpenAI's legacy completions (what
//! lm-evaluation-harness's `local-completions` sends for log-likelihoods).
//!
//! Only `echo: true` with `max_tokens` 0 or 1 and `logprobs` 0..20. With `max_tokens: 1` one greedy
//! token is appended to each prompt with its log-prob; the harness drops that last entry.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::tokenize::to_tokens;
use super::{check_count, check_tokens};
use crate::engine::{LlamaToken, Model, RowLogprobs, Scorer};
use crate::server::body::read_json;
use crate::server::error::ApiError;
use crate::server::middleware::{with_tokens, TokenCount};
use crate::server::{jobs, App};

/// The most `logprobs` alternatives per position.
const MAX_LOGPROBS: u32 = 20;

const SUPPORTED: &str = "endorm's /v1/completions only scores text: send \"echo\": true, \
                         \"max_tokens\": 0 or 1 and \"logprobs\": 0..20 (sampling, max_tokens > 1, \
                         n > 1 and streaming are not supported)";

/// Body of `/v1/completions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// Model id.
    #[serde(default)]
    pub model: Option<String>,
    /// One prompt or several.
    pub prompt: Prompt,
    /// Must be true.
    #[serde(default)]
    pub echo: bool,
    /// 0 or 1.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Alternatives per position, 0..20; absent: no logprobs.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// 0 (greedy) or absent when `max_tokens` is 1.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Must be 1.
    #[serde(default)]
    pub n: Option<u32>,
    /// Must be false.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Ignored (nothing is sampled).
    #[serde(default)]
    pub seed: Option<i64>,
    /// Ignored (nothing is sampled).
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Ignored (at most one token is generated).
    #[serde(default)]
    pub stop: Option<Value>,
    /// Ignored.
    #[serde(default)]
    pub user: Option<String>,
}

/// The `prompt` field's four shapes.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "`prompt` must be a string, a list of strings, a list of token ids or a list of token-id lists"
)]
pub enum Prompt {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<i64>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<i64>>),
}

enum Item {
    Text(String),
    Tokens(Vec<i64>),
}

/// `POST /v1/completions`.
pub async fn completions(State(app): State<Arc<App>>, body: Body) -> Result<Response, ApiError> {
    let snapshot = app.registry.snapshot();
    let request: CompletionRequest = read_json(body, snapshot.limits.max_body_bytes).await?;
    let max_tokens = request.max_tokens.unwrap_or(0);
    let supported = request.echo
        && max_tokens <= 1
        && request.logprobs.is_none_or(|k| k <= MAX_LOGPROBS)
        && request.n.is_none_or(|n| n == 1)
        && request.stream != Some(true)
        && !(max_tokens == 1 && request.temperature.is_some_and(|t| t > 0.0));
    if !supported {
        return Err(ApiError::bad_request("unsupported", SUPPORTED));
    }
    let items: Vec<Item> = match request.prompt {
        Prompt::Text(text) => vec![Item::Text(text)],
        Prompt::Texts(texts) => texts.into_iter().map(Item::Text).collect(),
        Prompt::Tokens(ids) => vec![Item::Tokens(ids)],
        Prompt::TokenLists(lists) => lists.into_iter().map(Item::Tokens).collect(),
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "`prompt` is empty",
        ));
    }
    check_count(items.len(), &snapshot.limits, "prompts")?;
    let entry = snapshot.resolve(request.model.as_deref())?;
    let loaded = jobs::loaded(&entry)?;
    let limits = snapshot.limits;
    let logprobs = request.logprobs;
    let greedy = max_tokens == 1;
    let ((choices, prompt_tokens), _) = jobs::run(&entry, &app.metrics, move |scorer| {
        let mut prompts = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let place = format!("prompt[{index}]");
            let (tokens, text) = match item {
                Item::Text(text) => {
                    let model = scorer.model();
                    let tokens = model
                        .tokenize(&text, model.adds_bos(), true)
                        .map_err(|e| ApiError::from(e).at(&place))?;
                    (tokens, Some(text))
                }
                Item::Tokens(ids) => (to_tokens(&loaded, &ids).map_err(|e| e.at(&place))?, None),
            };
            if tokens.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("{place} has no tokens"),
                ));
            }
            prompts.push((tokens, text));
        }
        let total: usize = prompts
            .iter()
            .map(|(t, _)| t.len() + usize::from(greedy))
            .sum();
        check_tokens(total, &limits)?;
        let mut choices = Vec::with_capacity(prompts.len());
        for (index, (tokens, text)) in prompts.iter().enumerate() {
            let choice = choice(scorer, index, tokens, text.as_deref(), logprobs, greedy)
                .map_err(|e| e.at(&format!("prompt[{index}]")))?;
            choices.push(choice);
        }
        Ok((choices, total - prompts.len() * usize::from(greedy)))
    })
    .await?;
    let completion_tokens = choices.len() * usize::from(greedy);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let body = json!({
        "id": format!("cmpl-endorm-{created}"),
        "object": "text_completion",
        "created": created,
        "model": entry.id(),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    });
    let tokens = TokenCount {
        tokens: prompt_tokens + completion_tokens,
        cached: 0,
    };
    Ok(with_tokens(Json(body), tokens))
}

/// One choice: the echoed prompt (plus the greedy token) and, when asked, its logprobs.
fn choice(
    scorer: &mut Scorer<'_>,
    index: usize,
    tokens: &[LlamaToken],
    text: Option<&str>,
    logprobs: Option<u32>,
    greedy: bool,
) -> Result<Value, ApiError> {
    let rows = match logprobs.is_some() || greedy {
        true => scorer.sequence_logprobs(tokens, logprobs.unwrap_or(1) as usize, greedy)?,
        false => Vec::new(),
    };
    let model = scorer.model();
    let mut all = tokens.to_vec();
    if greedy {
        let next = rows
            .last()
            .and_then(|row| row.top.first())
            .ok_or_else(|| ApiError::internal("no row after the prompt"))?;
        all.push(next.0);
    }
    let texts = model.token_texts(&all)?;
    let full_text = match text {
        Some(prompt) => {
            let mut full = prompt.to_owned();
            if greedy {
                full.push_str(texts.last().map_or("", String::as_str));
            }
            full
        }
        None => texts.concat(),
    };
    let logprobs = match logprobs {
        Some(k) => logprob_object(model, &all, &texts, &rows, k as usize)?,
        None => Value::Null,
    };
    Ok(json!({
        "index": index,
        "text": full_text,
        "logprobs": logprobs,
        "finish_reason": "length",
    }))
}

/// `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, the first position `null`.
fn logprob_object(
    model: &Model,
    tokens: &[LlamaToken],
    texts: &[String],
    rows: &[RowLogprobs],
    k: usize,
) -> Result<Value, ApiError> {
    let mut token_logprobs = vec![Value::Null];
    let mut top_logprobs = vec![Value::Null];
    for (position, row) in rows.iter().enumerate().take(tokens.len() - 1) {
        let chosen = match row.next_logprob {
            Some(logprob) => logprob,
            // The row after the prompt: the appended greedy token is its top entry.
            None => row.top.first().map_or(f64::NAN, |t| t.1),
        };
        token_logprobs.push(json!(chosen));
        let mut top = Map::new();
        for &(token, logprob) in row.top.iter().take(k) {
            let text = String::from_utf8_lossy(&model.token_bytes(token)?).into_owned();
            top.entry(text).or_insert(json!(logprob));
        }
        top_logprobs.push(Value::Object(top));
        debug_assert!(position + 1 < tokens.len());
    }
    let mut offset = 0;
    let text_offset: Vec<usize> = texts
        .iter()
        .map(|text| {
            let here = offset;
            offset += text.chars().count();
            here
        })
        .collect();
    Ok(json!({
        "tokens": texts,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }))
}

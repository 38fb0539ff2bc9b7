//! The routes of API.md, one module per family.

pub mod completions;
pub mod info;
pub mod rerank;
pub mod reward;
pub mod score;
pub mod tokenize;

use axum::http::{Method, StatusCode, Uri};

use super::error::ApiError;
use super::registry::Limits;

/// Every route, for the 404 message.
const ROUTES: &str = "GET /health, GET /v1/models, GET /metrics, POST /v1/score, POST /v1/rerank, \
                      POST /v2/rerank, POST /rerank, GET /info, POST /v1/completions, \
                      POST /get_reward, POST /tokenize, POST /detokenize, GET /tokenizer_info";

/// 404 for a path that is no route.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!("no route {method} {}; the routes are {ROUTES}", uri.path()),
    )
}

/// 405 for a route called with the wrong method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}; the routes are {ROUTES}",
            uri.path()
        ),
    )
}

/// 400 when a request has more than `max_candidates` items (`what`: candidates, documents...).
pub fn check_count(count: usize, limits: &Limits, what: &str) -> Result<(), ApiError> {
    if count > limits.max_candidates {
        return Err(ApiError::bad_request(
            "too_many_candidates",
            format!(
                "{count} {what} in one request; the limit is max_candidates = {} (set in the config's [server] section)",
                limits.max_candidates
            ),
        ));
    }
    Ok(())
}

/// 422 when a request needs more than `max_tokens` tokens.
pub fn check_tokens(count: usize, limits: &Limits) -> Result<(), ApiError> {
    if count > limits.max_tokens {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many_tokens",
            format!(
                "this request has {count} tokens; the limit is max_tokens = {} per request (set in the config's [server] section)",
                limits.max_tokens
            ),
        ));
    }
    Ok(())
}

/// 413 when one job of a request would decode more than `max_job_tokens` tokens: such a job would
/// hold the model's worker, and every client queued behind it, for too long.
pub fn check_job_tokens(count: usize, limits: &Limits) -> Result<(), ApiError> {
    if count > limits.max_job_tokens {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "job_too_large",
            format!(
                "this request needs a job of {count} tokens (context and candidates, or one \
                 prompt or query group); the limit is max_job_tokens = {} per job (set in the \
                 config's [server] section): split the request or raise the limit",
                limits.max_job_tokens
            ),
        ));
    }
    Ok(())
}

//! Errors as HTTP responses: a status and the OpenAI-shaped body of API.md.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::ErrorBody;
use crate::engine::{EngineError, SubmitError};

/// A request that failed: its status, body and, for 503, when to retry.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// `{"error": {...}}`.
    pub body: ErrorBody,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`; the body's `type` follows from it.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        ApiError {
            status,
            body: ErrorBody::new(kind, code, message.into()),
            retry_after: None,
        }
    }

    /// 400: the request is malformed or inconsistent.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 500: endorm failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &str, message: impl Into<String>, retry_after: u64) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        error.retry_after = Some(retry_after);
        error
    }

    /// Prefixes the message with where in the request it happened (e.g. `query[3]`).
    pub fn at(mut self, place: &str) -> Self {
        self.body.error.message = format!("{place}: {}", self.body.error.message);
        self
    }
}

/// The HTTP side of an engine error: its status, code and (following from the status) type.
/// Every variant is listed, so a new one needs a decision here.
impl From<&EngineError> for ApiError {
    fn from(error: &EngineError) -> Self {
        let (status, code) = match error.root() {
            EngineError::Load { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "model_load_failed"),
            EngineError::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, "backend_error"),
            EngineError::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            EngineError::InvalidToken { .. } => (StatusCode::BAD_REQUEST, "invalid_token"),
            EngineError::NoChatTemplate => (StatusCode::BAD_REQUEST, "no_chat_template"),
            EngineError::Template(_) => (StatusCode::BAD_REQUEST, "chat_template_error"),
            EngineError::ContextOverflow { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "context_length_exceeded")
            }
            EngineError::Decode(_) => (StatusCode::INTERNAL_SERVER_ERROR, "decode_failed"),
            EngineError::NotFinite(_) => (StatusCode::INTERNAL_SERVER_ERROR, "scores_not_finite"),
            EngineError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            // `root` never returns an item: the status and code are those of what went wrong.
            EngineError::Item { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        ApiError::from(&error)
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Full { .. } => ApiError::unavailable(
                "queue_full",
                format!("{error} (queue_depth in the config): retry shortly"),
                1,
            ),
            SubmitError::Loading => ApiError::unavailable("model_loading", error.to_string(), 2),
            SubmitError::Failed(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "model_load_failed",
                error.to_string(),
            ),
            SubmitError::Stopped => ApiError::unavailable("model_unloaded", error.to_string(), 1),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The error body the daemon answers for `error` (the offline scorer writes the same one).
pub(crate) fn engine_error_body(error: &EngineError) -> ErrorBody {
    ApiError::from(error).body
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn engine_errors_map_to_status_type_and_code() {
        let overflow = EngineError::ContextOverflow {
            what: "the context".into(),
            needed: 3000,
            n_ctx: 2048,
            n_ctx_train: 8192,
        };
        let load = EngineError::Load {
            path: PathBuf::from("/m.gguf"),
            reason: "no such file".into(),
        };
        for (error, status, kind, code) in [
            (load, 500, "server_error", "model_load_failed"),
            (
                EngineError::Backend("x".into()),
                500,
                "server_error",
                "backend_error",
            ),
            (
                EngineError::InvalidInput("x".into()),
                400,
                "invalid_request_error",
                "invalid_request",
            ),
            (
                EngineError::InvalidToken { id: -1, n_vocab: 5 },
                400,
                "invalid_request_error",
                "invalid_token",
            ),
            (
                EngineError::NoChatTemplate,
                400,
                "invalid_request_error",
                "no_chat_template",
            ),
            (
                EngineError::Template("x".into()),
                400,
                "invalid_request_error",
                "chat_template_error",
            ),
            (
                overflow,
                422,
                "invalid_request_error",
                "context_length_exceeded",
            ),
            (
                EngineError::Decode("x".into()),
                500,
                "server_error",
                "decode_failed",
            ),
        ] {
            let api = ApiError::from(&error);
            assert_eq!(api.status.as_u16(), status, "{error}");
            assert_eq!(api.body.error.kind, kind, "{error}");
            assert_eq!(api.body.error.code, code, "{error}");
            assert_eq!(api.body.error.message, error.to_string());
            assert_eq!(api.retry_after, None);
        }
    }

    #[test]
    fn submit_errors_are_503_with_retry_after_except_a_failed_load() {
        let full = ApiError::from(SubmitError::Full { depth: 4 });
        assert_eq!((full.status.as_u16(), full.retry_after), (503, Some(1)));
        assert_eq!(full.body.error.code, "queue_full");
        let loading = ApiError::from(SubmitError::Loading);
        assert_eq!(
            (loading.status.as_u16(), loading.retry_after),
            (503, Some(2))
        );
        let failed = ApiError::from(SubmitError::Failed("no such file".into()));
        assert_eq!((failed.status.as_u16(), failed.retry_after), (500, None));
        assert_eq!(failed.body.error.code, "model_load_failed");
    }
}

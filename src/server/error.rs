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

impl From<&EngineError> for ApiError {
    fn from(error: &EngineError) -> Self {
        let status = match error.root() {
            EngineError::ContextOverflow { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            e if e.is_input_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.code(), error.to_string())
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

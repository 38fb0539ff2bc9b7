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
        let mut message = message.into();
        // The daemon's own failures name its files; the client gets their names only.
        if status.is_server_error() {
            message = without_directories(&message);
        }
        ApiError {
            status,
            body: ErrorBody::for_status(status.as_u16(), code, message),
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

/// The HTTP side of an engine error: the status and code the engine names for it
/// ([`EngineError::status_and_code`]), the type following from the status.
impl From<&EngineError> for ApiError {
    fn from(error: &EngineError) -> Self {
        let (status, code) = error.status_and_code();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut api = ApiError::new(status, code, error.to_string());
        api.retry_after = error.retry_after();
        api
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
            SubmitError::Lost(lost) => EngineError::RpcWorkerLost(lost).into(),
        }
    }
}

/// `message` with every absolute path (`/…`, `~/…`) cut to its last component. Error bodies and
/// `/health` go to clients, over TCP perhaps to other hosts, and a path tells them the daemon's
/// user and layout; the log keeps the whole path.
pub fn without_directories(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(['/', '~']) {
        let before = rest[..at].chars().next_back().or(out.chars().next_back());
        let starts_path = before.is_none_or(|c| c.is_whitespace() || "\"'(`=".contains(c))
            && (rest[at..].starts_with('/') || rest[at..].starts_with("~/"));
        if !starts_path {
            out.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            continue;
        }
        out.push_str(&rest[..at]);
        let path = &rest[at..];
        let end = path
            .find(|c: char| c.is_whitespace() || "\"'`,;)".contains(c))
            .unwrap_or(path.len());
        // A trailing `:` ends the path (`/m.gguf: no such file`), and a trailing `.` a sentence.
        let whole = path[..end].trim_end_matches([':', '.']);
        let name = whole.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        out.push_str(if name.is_empty() || name == "~" {
            "…"
        } else {
            name
        });
        rest = &path[whole.len()..];
    }
    out.push_str(rest);
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let close = self.status == StatusCode::REQUEST_TIMEOUT;
        let mut response = (self.status, Json(self.body)).into_response();
        if close {
            // The request was cut off: whatever the client sends next is not a request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
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
            (
                EngineError::NotFinite("x".into()),
                500,
                "server_error",
                "scores_not_finite",
            ),
            (
                EngineError::Internal("x".into()),
                500,
                "server_error",
                "internal_error",
            ),
            (
                EngineError::Cancelled,
                499,
                "invalid_request_error",
                "client_closed_request",
            ),
            (
                EngineError::NoChatTemplate.at("query[2]"),
                400,
                "invalid_request_error",
                "no_chat_template",
            ),
        ] {
            let api = ApiError::from(&error);
            assert_eq!(api.status.as_u16(), status, "{error}");
            assert_eq!(api.body.error.kind, kind, "{error}");
            assert_eq!(api.body.error.code, code, "{error}");
            assert_eq!(
                api.body.error.message,
                without_directories(&error.to_string())
            );
            assert_eq!(api.retry_after, None);
            // The offline scorer writes the same body (with whole paths: its file is local).
            let offline = error.body().error;
            assert_eq!(
                (offline.kind, offline.code),
                (api.body.error.kind.clone(), api.body.error.code.clone())
            );
        }
    }

    #[test]
    fn server_errors_name_files_not_directories() {
        for (message, shown) in [
            (
                "cannot load model /tmp/.tmp4Cfqtz/missing.gguf: no such file",
                "cannot load model missing.gguf: no such file",
            ),
            (
                "the config /home/ann/.config/endorm/config.toml is not valid: x",
                "the config config.toml is not valid: x",
            ),
            ("(~/models/a.gguf)", "(a.gguf)"),
            ("path = \"/etc/endorm/m.gguf\".", "path = \"m.gguf\"."),
            (
                "10/20 layers, a/b test, http://x",
                "10/20 layers, a/b test, http://x",
            ),
            ("root /", "root …"),
        ] {
            assert_eq!(without_directories(message), shown, "{message}");
        }
        let load = ApiError::from(&EngineError::Load {
            path: PathBuf::from("/srv/models/m.gguf"),
            reason: "no such file".into(),
        });
        assert_eq!(
            load.body.error.message,
            "cannot load model m.gguf: no such file"
        );
        // A client's own mistake is shown as it was sent.
        let bad = ApiError::bad_request("invalid_request", "no file /a/b");
        assert_eq!(bad.body.error.message, "no file /a/b");
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

    #[test]
    fn a_lost_rpc_worker_is_503_naming_it_with_retry_after() {
        let lost = crate::engine::RpcWorkerLost {
            model: "big".into(),
            workers: vec!["10.0.0.2:50052".into()],
            reason: "it cannot be reached: Connection refused".into(),
            retry_after: 4,
        };
        let queued = ApiError::from(SubmitError::Lost(lost.clone()));
        let running = ApiError::from(EngineError::RpcWorkerLost(lost).at("query[1]"));
        for api in [queued, running] {
            assert_eq!((api.status.as_u16(), api.retry_after), (503, Some(4)));
            assert_eq!(api.body.error.code, "rpc_worker_lost");
            assert_eq!(api.body.error.kind, "server_error");
            let message = &api.body.error.message;
            assert!(
                message.contains("model big: the RPC worker 10.0.0.2:50052 is lost")
                    && message.contains("next try in 4 s"),
                "{message}"
            );
        }
    }
}

//! The error body of every route (and of the offline scorer's failed lines).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The OpenAI-shaped error body: `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    /// An error body for an HTTP `status`: its class (`type`) follows from the status.
    pub fn for_status(status: u16, code: &str, message: String) -> Self {
        let kind = match status {
            401 => "authentication_error",
            404 => "not_found_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        ErrorBody::new(kind, code, message)
    }

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::assert_wire;
    use super::*;

    #[test]
    fn error_body_is_openais_shape() {
        assert_wire(
            &ErrorBody::new(
                "not_found_error",
                "model_not_found",
                "no model \"x\"".into(),
            ),
            json!({"error": {"message": "no model \"x\"", "type": "not_found_error",
                             "code": "model_not_found"}}),
        );
    }
}

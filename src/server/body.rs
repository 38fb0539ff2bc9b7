//! Reading a JSON request body within the configured size limit.

use axum::body::Body;
use axum::http::StatusCode;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Reads `body` (at most `limit` bytes) as JSON of type `T`. Too large: 413 naming the limit;
/// not JSON or not the right shape: 400 with serde's message (field, line and column).
pub async fn read_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(too_large(limit));
        }
        Err(error) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("cannot read the request body: {error}"),
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body is empty: send a JSON object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|error| {
        let code = match error.classify() {
            serde_json::error::Category::Data => "invalid_request",
            _ => "invalid_json",
        };
        ApiError::bad_request(code, format!("invalid request body: {error}"))
    })
}

/// 413 for a body over `limit` bytes.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than max_body_bytes = {limit} bytes (set in the config's [server] section)"),
    )
}

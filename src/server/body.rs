//! Reading a request: a JSON body within the configured size limit, a query string; both as
//! extractors that answer the errors of API.md.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::App;

/// A JSON body of type `T`, read within the current `max_body_bytes` ([`read_json`]'s errors).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let limit = app.registry.snapshot().limits.max_body_bytes;
        // A declared length over the limit is refused before any of the body arrives.
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large(limit));
        }
        let timeout = Duration::from_secs(app.started.server.body_timeout_secs);
        match tokio::time::timeout(timeout, read_json(request.into_body(), limit)).await {
            Ok(read) => read.map(JsonBody),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within body_timeout_secs = {} (set in the config's [server] section)",
                    timeout.as_secs()
                ),
            )),
        }
    }
}

/// A query string of type `T`; one that does not parse is a 400 with axum's message.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(query)| QueryParams(query))
            .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))
    }
}

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

/// The longest request target (path and query) accepted: 414 above.
pub const MAX_URI_BYTES: usize = 8 << 10;
/// The most bytes of header names and values accepted: 431 above. (hyper itself refuses a head
/// over its read buffer, about 400 KiB, or with over 100 headers: `listen::protocol_error`.)
pub const MAX_HEADER_BYTES: usize = 32 << 10;

/// Refuses a request whose target or headers are too long, with the JSON error body of API.md.
pub async fn check_head(request: Request, next: Next) -> Response {
    let uri = request.uri().to_string().len();
    if uri > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {uri} bytes; at most {MAX_URI_BYTES} are accepted"),
        )
        .into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request headers are {headers} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
        )
        .into_response();
    }
    next.run(request).await
}

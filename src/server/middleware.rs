//! Around every request: a request id, one log line (route, status, client, tokens, ms), the
//! metrics; and on TCP, the bearer token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use super::error::ApiError;
use super::App;

/// Tokens a request evaluated, put in the response's extensions by its handler for the log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenCount {
    /// Tokens evaluated.
    pub tokens: usize,
    /// Of which served from the prefix cache.
    pub cached: usize,
}

/// Attaches `tokens` to a response for the log line and the metrics.
pub fn with_tokens(response: impl IntoResponse, tokens: TokenCount) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(tokens);
    response
}

/// Logs and counts every request, and gives it an `x-request-id`.
pub async fn log_request(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    // An invalid `X-Endorm-Client` is answered 400 by the handler; the log line says so.
    let client = super::client::of(request.headers(), request.extensions())
        .map_or_else(|_| "invalid".to_owned(), |client| client.to_string());
    let started = Instant::now();
    let span = tracing::info_span!("request", id);
    let abandoned = Abandoned {
        app: Arc::clone(&app),
        id,
        method: method.clone(),
        route: route.clone(),
        started,
        answered: false,
    };
    let mut response = next.run(request).instrument(span).await;
    let mut abandoned = abandoned;
    abandoned.answered = true;
    let seconds = started.elapsed().as_secs_f64();
    let tokens = response
        .extensions()
        .get::<TokenCount>()
        .copied()
        .unwrap_or_default();
    let status = response.status().as_u16();
    macro_rules! log_line {
        ($level:ident) => {
            tracing::$level!(
                request_id = id,
                %method,
                route,
                status,
                client,
                tokens = tokens.tokens,
                ms = format_args!("{:.1}", seconds * 1e3),
                "request"
            )
        };
    }
    // Health checks poll (every few seconds, from every editor): logged at debug, counted alike.
    if route == "/health" {
        log_line!(debug);
    } else {
        log_line!(info);
    }
    app.metrics.record(
        &route,
        status,
        seconds,
        tokens.tokens as u64,
        tokens.cached as u64,
    );
    response
        .headers_mut()
        .insert("x-request-id", HeaderValue::from(id));
    response
}

/// The status logged and counted for a request whose client disconnected before its answer, as
/// nginx does: its queued work was skipped (or its remaining items were never queued).
pub const CLIENT_CLOSED: u16 = 499;

/// Logs and counts a request whose handler was dropped before answering (its client left).
struct Abandoned {
    app: Arc<App>,
    id: u64,
    method: axum::http::Method,
    route: String,
    started: Instant,
    answered: bool,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        tracing::info!(
            request_id = self.id,
            method = %self.method,
            route = self.route,
            status = CLIENT_CLOSED,
            ms = format_args!("{:.1}", seconds * 1e3),
            "request abandoned: the client disconnected before the answer"
        );
        self.app
            .metrics
            .record(&self.route, CLIENT_CLOSED, seconds, 0, 0);
    }
}

/// The bearer token every TCP request must carry, and where it comes from (for the 401).
#[derive(Clone)]
pub struct Token {
    /// The token.
    pub token: Arc<str>,
    /// Where a client finds it: "the token file PATH", "--token or ENDORM_TOKEN".
    pub source: Arc<str>,
}

/// Refuses a request without `Authorization: Bearer <token>` (401).
pub async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.token.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                format!(
                    "TCP requests need `Authorization: Bearer TOKEN` with the daemon's token, from \
                     {} (the Unix socket needs none)",
                    token.source
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The token of an `Authorization` value with the `Bearer` scheme, matched case-insensitively as
/// RFC 7235 says (`bearer`, `BEARER`), and one or more spaces before the token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in [
            "Bearer t0k",
            "bearer t0k",
            "BEARER t0k",
            "BeArEr   t0k",
            " Bearer t0k ",
        ] {
            assert_eq!(bearer_token(value), Some("t0k"), "{value:?}");
        }
        for value in ["Basic t0k", "Bearer", "Bearer ", "Bearert0k", "t0k", ""] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}

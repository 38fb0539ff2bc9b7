//! The routes of API.md, one module per family, and the lens's page (`page`).

pub mod completions;
pub mod info;
pub mod page;
pub mod rerank;
pub mod reward;
pub mod score;
pub mod tokenize;

use axum::http::{Method, StatusCode, Uri};

use super::error::ApiError;
use crate::api::openapi::route_list;

/// 404 for a path that is no route.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!(
            "no route {method} {}; the routes are {}",
            uri.path(),
            route_list()
        ),
    )
}

/// 405 for a route called with the wrong method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}; the routes are {}",
            uri.path(),
            route_list()
        ),
    )
}

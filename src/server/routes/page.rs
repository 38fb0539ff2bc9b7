//! `GET /` and `GET /web/{file}`: the lens ([`crate::web`]), from the binary's own bytes, with
//! its Content-Security-Policy and an `ETag` (`Cache-Control: no-cache`: a browser asks again each
//! time and gets a 304 until the binary changes). Static, so it needs no token: the API calls it
//! makes do. Routed only with `[server] web = true` (the default).

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::web::{self, Asset};

/// The page's routes, without state or token.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/web/{file}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve(&web::PAGE, &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    match web::find(&name) {
        Some(asset) => serve(asset, &headers),
        None => super::not_found(Method::GET, uri).await.into_response(),
    }
}

fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = asset.etag();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = asset.body.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        response
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in web::SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

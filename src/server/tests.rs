//! The real [`router`] driven in process with `tower::ServiceExt::oneshot`: the wire behaviour
//! that needs no model (routing, bodies, limits, the token, model resolution, a model that failed
//! to load, the shapes of `/health` and `/v1/models`). Where a model must answer, the
//! integration tests run the daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::middleware::Token;
use super::{router, App};
use crate::config::Config;
use crate::config::Overrides;
use crate::engine::WorkerState;

/// The model id of the test config; its file does not exist, so it fails to load.
const BROKEN: &str = "broken";
const MAX_BODY: usize = 1024;

/// An app serving one model whose file is missing, once its worker has given up on it.
fn app() -> (Arc<App>, PathBuf) {
    app_with("")
}

/// [`app`] with more `[server]` settings.
fn app_with(server: &str) -> (Arc<App>, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.gguf");
    let text = format!(
        "[server]\nmax_body_bytes = {MAX_BODY}\nmax_candidates = 4\n{server}\n[models.{BROKEN}]\npath = {:?}\n",
        missing.to_str().unwrap()
    );
    let config = Config::parse(&text, &dir.path().join("config.toml")).expect("config");
    let app = Arc::new(App::new(config, Overrides::default()));
    let started = Instant::now();
    while app
        .registry
        .snapshot()
        .models
        .values()
        .any(|entry| matches!(entry.state(), WorkerState::Loading))
    {
        assert!(started.elapsed() < Duration::from_secs(30), "still loading");
        std::thread::sleep(Duration::from_millis(5));
    }
    (app, missing)
}

/// What came back: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error of API.md's shape with this status and code; returns its message.
    fn error(&self, status: u16, code: &str) -> String {
        let body = self.json();
        assert_eq!(self.status.as_u16(), status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        let kind = match status {
            401 => "authentication_error",
            404 => "not_found_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        assert_eq!(body["error"]["type"], kind, "{body}");
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/json",
            "{body}"
        );
        body["error"]["message"].as_str().unwrap().to_owned()
    }
}

async fn send(router: Router, request: Request<Body>) -> Answer {
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: &Arc<App>, path: &str) -> Answer {
    let request = Request::get(path).body(Body::empty()).unwrap();
    send(router(Arc::clone(app), None), request).await
}

async fn post(app: &Arc<App>, path: &str, body: impl Into<Body>) -> Answer {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap();
    send(router(Arc::clone(app), None), request).await
}

/// What a client reads of a model file that is missing: its name, not where the daemon keeps it.
fn load_failure(missing: &Path) -> String {
    let name = missing.file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(!name.is_empty() && missing.is_absolute());
    format!("cannot load model {name}: no such file")
}

#[tokio::test]
async fn an_unknown_route_is_404_listing_the_routes() {
    let (app, _) = app();
    let answer = get(&app, "/v2/nothing").await;
    let message = answer.error(404, "unknown_route");
    assert!(message.starts_with("no route GET /v2/nothing; the routes are GET /health"));
    for route in ["POST /v1/score", "POST /v1/rerank", "GET /tokenizer_info"] {
        assert!(message.contains(route), "{message}");
    }
    assert!(answer.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn a_route_with_the_wrong_method_is_405() {
    let (app, _) = app();
    let message = get(&app, "/v1/score")
        .await
        .error(405, "method_not_allowed");
    assert!(
        message.starts_with("/v1/score does not take GET"),
        "{message}"
    );
    let message = post(&app, "/health", "{}")
        .await
        .error(405, "method_not_allowed");
    assert!(
        message.starts_with("/health does not take POST"),
        "{message}"
    );
}

#[tokio::test]
async fn an_empty_body_is_400_on_every_json_route() {
    let (app, _) = app();
    for route in [
        "/v1/score",
        "/v1/rerank",
        "/v1/completions",
        "/get_reward",
        "/tokenize",
        "/detokenize",
    ] {
        for body in ["", " \n"] {
            let message = post(&app, route, body).await.error(400, "invalid_json");
            assert_eq!(
                message, "the request body is empty: send a JSON object",
                "{route}"
            );
        }
    }
}

#[tokio::test]
async fn invalid_json_is_400_invalid_json() {
    let (app, _) = app();
    for route in ["/v1/score", "/tokenize", "/detokenize"] {
        let message = post(&app, route, r#"{"model": "m", "#)
            .await
            .error(400, "invalid_json");
        assert!(
            message.starts_with("invalid request body: EOF while parsing"),
            "{route}: {message}"
        );
        post(&app, route, &b"\xff\xfe{}"[..])
            .await
            .error(400, "invalid_json");
    }
}

#[tokio::test]
async fn the_wrong_shape_is_400_with_serdes_message() {
    let (app, _) = app();
    let message = post(
        &app,
        "/v1/score",
        r#"{"prompt": "hi", "candidates": "Paris"}"#,
    )
    .await
    .error(400, "invalid_request");
    assert_eq!(
        message,
        "invalid request body: invalid type: string \"Paris\", expected a sequence at line 1 column 38"
    );
    let message = post(&app, "/tokenize", r#"{"text": "hi"}"#)
        .await
        .error(400, "invalid_request");
    assert!(message.contains("unknown field `text`"), "{message}");
    let message = post(&app, "/detokenize", r#"{"tokens": [3.5]}"#)
        .await
        .error(400, "invalid_request");
    assert!(message.contains("expected i64"), "{message}");
    let message = post(&app, "/v1/rerank", r#"{"query": "q", "documents": [3]}"#)
        .await
        .error(400, "invalid_request");
    assert!(message.contains("a document: a string or"), "{message}");
    let message = post(
        &app,
        "/v1/completions",
        r#"{"prompt": {"a": 1}, "echo": true}"#,
    )
    .await
    .error(400, "invalid_request");
    assert!(message.contains("`prompt` must be"), "{message}");
    let message = get(&app, "/tokenizer_info?model=a&model=b")
        .await
        .error(400, "invalid_request");
    assert!(message.contains("duplicate field `model`"), "{message}");
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_413() {
    let (app, _) = app();
    let big = json!({"prompt": "x".repeat(MAX_BODY), "candidates": ["a"]}).to_string();
    for route in ["/v1/score", "/tokenize"] {
        let message = post(&app, route, big.clone())
            .await
            .error(413, "body_too_large");
        assert!(
            message.contains(&format!("max_body_bytes = {MAX_BODY} bytes")),
            "{message}"
        );
    }
    // Exactly at the limit is read (and then fails for another reason).
    let padded = format!("{:<MAX_BODY$}", r#"{"content": "hi"}"#);
    assert_eq!(padded.len(), MAX_BODY);
    assert_eq!(post(&app, "/tokenize", padded).await.status, 500);
}

#[tokio::test]
async fn tcp_needs_the_bearer_token() {
    let (app, _) = app();
    let tcp = || {
        let token = Token {
            token: "s3cret".into(),
            source: "the token file /run/t/token".into(),
        };
        router(Arc::clone(&app), Some(token))
    };
    let health = |authorization: Option<&str>| {
        let mut request = Request::get("/health");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request.body(Body::empty()).unwrap()
    };
    for authorization in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Basic s3cret"),
    ] {
        let answer = send(tcp(), health(authorization)).await;
        let message = answer.error(401, "invalid_token");
        assert!(message.contains("Authorization: Bearer TOKEN"), "{message}");
        assert!(message.contains("the token file /run/t/token"), "{message}");
        assert_eq!(answer.headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    // Checked before routing: an unknown route without the token is 401 too.
    let request = Request::get("/nothing").body(Body::empty()).unwrap();
    send(tcp(), request).await.error(401, "invalid_token");
    let answer = send(tcp(), health(Some("Bearer s3cret"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let request = Request::get("/nothing")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    send(tcp(), request).await.error(404, "unknown_route");
}

#[tokio::test]
async fn an_unknown_model_is_404_naming_the_served_ones() {
    let (app, _) = app();
    let message = post(
        &app,
        "/v1/score",
        r#"{"model": "gpt-9", "prompt": "hi", "candidates": ["a"]}"#,
    )
    .await
    .error(404, "model_not_found");
    assert_eq!(
        message,
        format!("model \"gpt-9\" is not served; served: {BROKEN}")
    );
    for (method, route, body) in [
        (
            Method::POST,
            "/tokenize",
            r#"{"model": "gpt-9", "content": "hi"}"#,
        ),
        (
            Method::POST,
            "/detokenize",
            r#"{"model": "gpt-9", "tokens": [1]}"#,
        ),
        (
            Method::POST,
            "/get_reward",
            r#"{"model": "gpt-9", "query": ["ab"]}"#,
        ),
        (
            Method::POST,
            "/v1/completions",
            r#"{"model": "gpt-9", "prompt": "hi", "echo": true}"#,
        ),
        (Method::GET, "/tokenizer_info?model=gpt-9", ""),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(route)
            .body(Body::from(body))
            .unwrap();
        send(router(Arc::clone(&app), None), request)
            .await
            .error(404, "model_not_found");
    }
    // Rerank clients always send some model name: an unknown one goes to the default model
    // (here the broken one, hence its 500, not a 404).
    for route in ["/v1/rerank", "/v2/rerank", "/rerank"] {
        post(
            &app,
            route,
            r#"{"model": "rerank-english-v3.0", "query": "q", "documents": ["a"]}"#,
        )
        .await
        .error(500, "model_load_failed");
    }
}

/// A model whose file is missing: `/health` is 200 `degraded` with the reason, `/v1/models`
/// lists it `failed` with `meta: null`, and every request for it is a 500 saying why.
#[tokio::test]
async fn a_model_that_failed_to_load_is_reported_and_refused() {
    let (app, missing) = app();
    let health = get(&app, "/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(!health.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(
        health.body,
        json!({"status": "degraded",
               "models": [{"id": BROKEN, "state": "failed", "error": load_failure(&missing)}]})
        .to_string()
        .as_bytes()
    );
    let models = get(&app, "/v1/models").await;
    assert_eq!(models.status, StatusCode::OK);
    assert_eq!(
        models.body,
        json!({"object": "list", "data": [{"id": BROKEN, "object": "model", "owned_by": "endorm",
               "created": 0, "state": "failed", "default": true, "meta": null}]})
        .to_string()
        .as_bytes()
    );

    // Every route answers 500 `model_load_failed` and says why.
    let why = load_failure(&missing);
    for (route, body) in [
        ("/v1/score", r#"{"prompt": "hi", "candidates": ["a"]}"#),
        ("/v1/rerank", r#"{"query": "q", "documents": ["a"]}"#),
        ("/tokenize", r#"{"content": "hi"}"#),
        ("/detokenize", r#"{"tokens": [1]}"#),
        ("/v1/completions", r#"{"prompt": "hi", "echo": true}"#),
        ("/get_reward", r#"{"query": ["ab"]}"#),
    ] {
        let message = post(&app, route, body)
            .await
            .error(500, "model_load_failed");
        assert!(message.contains("failed to load"), "{route}: {message}");
        assert!(message.contains(&why), "{route}: {message}");
    }
    get(&app, "/tokenizer_info")
        .await
        .error(500, "model_load_failed");
}

#[tokio::test]
async fn health_reports_a_config_that_could_not_be_applied() {
    let (app, missing) = app();
    app.registry
        .set_config_error(Some("config.toml: bad TOML".into()));
    let health = get(&app, "/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(
        health.json(),
        json!({"status": "degraded",
               "models": [{"id": BROKEN, "state": "failed", "error": load_failure(&missing)}],
               "config_error": "config.toml: bad TOML"})
    );
}

#[tokio::test]
async fn metrics_count_what_the_router_answered() {
    let (app, _) = app();
    get(&app, "/v2/nothing").await;
    post(&app, "/v1/score", "").await;
    let metrics = get(&app, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(metrics.body).unwrap();
    for needle in [
        "endorm_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "endorm_requests_total{route=\"/v1/score\",status=\"400\"} 1",
        &format!("endorm_model_state{{model=\"{BROKEN}\",state=\"failed\"}} 1"),
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

/// A body that never sends anything (a client that stalls after its head).
struct Stalled;

impl axum::body::HttpBody for Stalled {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test]
async fn a_declared_length_over_max_body_bytes_is_413_before_the_body() {
    let (app, _) = app();
    let request = Request::post("/v1/score")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "100000000000")
        .body(Body::new(Stalled))
        .unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        send(router(Arc::clone(&app), None), request),
    )
    .await
    .expect("answered without waiting for the body");
    answer.error(413, "body_too_large");
}

#[tokio::test]
async fn a_long_target_is_414_and_large_headers_431_with_the_json_body() {
    let (app, _) = app();
    let long = format!("/health?{}", "a".repeat(super::body::MAX_URI_BYTES));
    get(&app, &long).await.error(414, "uri_too_long");
    let request = Request::get("/health")
        .header("x-big", "b".repeat(super::body::MAX_HEADER_BYTES))
        .body(Body::empty())
        .unwrap();
    send(router(Arc::clone(&app), None), request)
        .await
        .error(431, "headers_too_large");
}

#[tokio::test]
async fn an_unknown_contrast_is_400_naming_the_known_ones() {
    let (app, _) = app();
    let message = post(
        &app,
        "/v1/score",
        r#"{"prompt": "hi", "candidates": ["a"], "contrast": "generic"}"#,
    )
    .await
    .error(400, "invalid_request");
    assert!(
        message.contains("unknown variant `generic`, expected `neutral`"),
        "{message}"
    );
}

#[tokio::test]
async fn an_unknown_reference_model_is_404_like_an_unknown_model() {
    let (app, _) = app();
    // Resolved before the model is used: the broken model's 500 does not hide it.
    let message = post(
        &app,
        "/v1/score",
        r#"{"prompt": "hi", "candidates": ["a"], "reference_model": "gpt-9"}"#,
    )
    .await
    .error(404, "model_not_found");
    assert_eq!(
        message,
        format!("model \"gpt-9\" is not served; served: {BROKEN}")
    );
}

#[tokio::test]
async fn every_route_of_the_api_table_is_routed_with_its_method() {
    use crate::api::openapi::{Method as RouteMethod, ROUTES};
    let (app, _) = app();
    for route in ROUTES {
        let answer = match route.method {
            RouteMethod::Get => get(&app, route.path).await,
            RouteMethod::Post => post(&app, route.path, "{}").await,
        };
        assert_ne!(answer.status, StatusCode::NOT_FOUND, "{}", route.path);
        assert_ne!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{}",
            route.path
        );
    }
}

#[tokio::test]
async fn openapi_json_is_the_checked_in_document() {
    let (app, _) = app();
    let answer = get(&app, "/openapi.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    let served = String::from_utf8(answer.body).expect("UTF-8");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("ENDORM_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &served).expect("write docs/openapi.json");
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == served,
        "docs/openapi.json is not what the wire types give: if the change is meant, regenerate it \
         with `ENDORM_UPDATE_OPENAPI=1 cargo test --release --lib openapi` and commit it"
    );
    let document: Value = serde_json::from_str(&served).expect("JSON");
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/v1/score"]["post"].is_object());
}

#[tokio::test]
async fn the_lens_is_served_without_a_token_with_its_policy() {
    let (app, _) = app();
    let tcp = || {
        router(
            Arc::clone(&app),
            Some(Token {
                token: "s3cret".into(),
                source: "the token file /run/t/token".into(),
            }),
        )
    };
    for router in [tcp(), router(Arc::clone(&app), None)] {
        let request = Request::get("/").body(Body::empty()).unwrap();
        let answer = send(router, request).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, crate::web::PAGE.body);
        assert_eq!(
            answer.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            answer.headers[header::CONTENT_SECURITY_POLICY],
            crate::web::CONTENT_SECURITY_POLICY
        );
        assert_eq!(answer.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(answer.headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(answer.headers[header::CACHE_CONTROL], "no-cache");
        assert!(answer.headers.contains_key("x-request-id"), "logged");
    }
    for asset in crate::web::ASSETS {
        let request = Request::get(format!("/web/{}", asset.name))
            .body(Body::empty())
            .unwrap();
        let answer = send(tcp(), request).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", asset.name);
        assert_eq!(answer.headers[header::CONTENT_TYPE], asset.content_type);
        assert_eq!(answer.body, asset.body);
        // Asked again with its ETag: 304, no body.
        let etag = answer.headers[header::ETAG].clone();
        let request = Request::get(format!("/web/{}", asset.name))
            .header(header::IF_NONE_MATCH, etag)
            .body(Body::empty())
            .unwrap();
        let again = send(tcp(), request).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{}", asset.name);
        assert!(again.body.is_empty());
    }
    // Only the page's own files: nothing else is found (a name that is no file needs no token).
    for path in [
        "/web/nothing.js",
        "/web/",
        "/web/../Cargo.toml",
        "/web/%2e%2e/Cargo.toml",
    ] {
        get(&app, path).await.error(404, "unknown_route");
    }
    let request = Request::get("/web/nothing.js").body(Body::empty()).unwrap();
    send(tcp(), request).await.error(404, "unknown_route");
    // What the page calls still needs the token; the page changes nothing.
    let request = Request::get("/v1/models").body(Body::empty()).unwrap();
    send(tcp(), request).await.error(401, "invalid_token");
    let request = Request::post("/").body(Body::empty()).unwrap();
    assert_eq!(
        send(tcp(), request).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn web_false_serves_no_page() {
    let (app, _) = app_with("web = false");
    for path in ["/", "/web/app.js", "/web/style.css"] {
        get(&app, path).await.error(404, "unknown_route");
        // On TCP like any unknown route: 401 without the token, 404 with it.
        let tcp = router(
            Arc::clone(&app),
            Some(Token {
                token: "s3cret".into(),
                source: "the token file /run/t/token".into(),
            }),
        );
        let request = Request::get(path).body(Body::empty()).unwrap();
        send(tcp, request).await.error(401, "invalid_token");
    }
}

//! `GET /health`, `GET /v1/models`, `GET /metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::engine::WorkerState;
use crate::server::metrics::state_name;
use crate::server::App;

/// `{"status": "ok" | "loading" | "degraded", "models": [...], "config_error"?}`; 503 while loading.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.registry.snapshot();
    let mut loading = false;
    let mut failed = false;
    let models: Vec<Value> = snapshot
        .models
        .values()
        .map(|entry| {
            let state = entry.state();
            let mut model = json!({"id": entry.id(), "state": state_name(&state)});
            match state {
                WorkerState::Loading => loading = true,
                WorkerState::Failed(reason) => {
                    failed = true;
                    model["error"] = Value::String(reason);
                }
                WorkerState::Ready(_) => {}
            }
            model
        })
        .collect();
    let status = if loading {
        "loading"
    } else if failed || models.is_empty() || snapshot.config_error.is_some() {
        "degraded"
    } else {
        "ok"
    };
    let mut body = json!({"status": status, "models": models});
    if let Some(error) = &snapshot.config_error {
        body["config_error"] = Value::String(error.clone());
    }
    if loading {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(body),
        )
            .into_response()
    } else {
        Json(body).into_response()
    }
}

/// The OpenAI model list, with each model's metadata (`null` until loaded) and state.
pub async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    let snapshot = app.registry.snapshot();
    let data: Vec<Value> = snapshot
        .models
        .values()
        .map(|entry| {
            let state = entry.state();
            let meta = match &state {
                WorkerState::Ready(loaded) => {
                    let info = loaded.model.meta();
                    json!({
                        "n_ctx_train": info.n_ctx_train,
                        "n_vocab": info.n_vocab,
                        "n_params": info.n_params,
                        "size_bytes": info.size_bytes,
                        "chat_template": info.chat_template,
                        "path": info.path,
                        "n_ctx": loaded.n_ctx,
                    })
                }
                _ => Value::Null,
            };
            json!({
                "id": entry.id(),
                "object": "model",
                "owned_by": "endorm",
                "created": 0,
                "state": state_name(&state),
                "default": snapshot.default_model.as_deref() == Some(entry.id()),
                "meta": meta,
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Prometheus text.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.render(&app.registry.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

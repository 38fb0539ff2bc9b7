//! `GET /health`, `GET /v1/models`, `GET /metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{
    HealthResponse, HealthStatus, ModelCard, ModelCardMeta, ModelHealth, ModelList, ModelState,
};
use crate::engine::{LoadedModel, WorkerState};
use crate::server::registry::ModelEntry;
use crate::server::App;

/// [`HealthResponse`]; 503 with `Retry-After` while a model loads.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.registry.snapshot();
    let models = snapshot.models.values().map(|e| model_health(e)).collect();
    let health = HealthResponse::new(models, snapshot.config_error.clone());
    match health.status {
        HealthStatus::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(health),
        )
            .into_response(),
        HealthStatus::Ok | HealthStatus::Degraded => Json(health).into_response(),
    }
}

/// The OpenAI model list ([`ModelList`]), with each model's state and metadata (`null` until loaded).
pub async fn models(State(app): State<Arc<App>>) -> Json<ModelList> {
    let snapshot = app.registry.snapshot();
    let default = snapshot.default_model.as_deref();
    let cards = snapshot
        .models
        .values()
        .map(|entry| model_card(entry, default == Some(entry.id())))
        .collect();
    Json(ModelList::new(cards))
}

/// A worker's state on the wire.
pub fn model_state(state: &WorkerState) -> ModelState {
    match state {
        WorkerState::Loading => ModelState::Loading,
        WorkerState::Ready(_) => ModelState::Ready,
        WorkerState::Failed(_) => ModelState::Failed,
    }
}

fn model_health(entry: &ModelEntry) -> ModelHealth {
    let state = entry.state();
    ModelHealth {
        id: entry.id().to_owned(),
        state: model_state(&state),
        error: match state {
            WorkerState::Failed(reason) => Some(reason),
            WorkerState::Loading | WorkerState::Ready(_) => None,
        },
    }
}

fn model_card(entry: &ModelEntry, default: bool) -> ModelCard {
    let state = entry.state();
    let meta = match &state {
        WorkerState::Ready(loaded) => Some(card_meta(loaded)),
        WorkerState::Loading | WorkerState::Failed(_) => None,
    };
    ModelCard::new(entry.id().to_owned(), model_state(&state), default, meta)
}

/// The engine's metadata as `/v1/models` shows it: the model file's name, not its path.
fn card_meta(loaded: &LoadedModel) -> ModelCardMeta {
    let meta = loaded.model.meta();
    ModelCardMeta {
        n_ctx_train: meta.n_ctx_train,
        n_vocab: meta.n_vocab,
        n_params: meta.n_params,
        size_bytes: meta.size_bytes,
        chat_template: meta.chat_template,
        file: meta
            .path
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned()),
        n_ctx: loaded.n_ctx,
        cpu: meta.cpu.clone(),
    }
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

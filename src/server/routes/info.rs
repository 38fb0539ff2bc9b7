//! `GET /health`, `GET /v1/models`, `GET /metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{
    HealthResponse, HealthStatus, ModelCard, ModelCardMeta, ModelHealth, ModelList, ModelState,
    RpcWorkerMeta,
};
use crate::engine::{LoadedModel, WorkerState};
use crate::server::error::without_directories;
use crate::server::registry::ModelEntry;
use crate::server::App;

/// [`HealthResponse`]; 503 with `Retry-After` while a model loads.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.registry.snapshot();
    let models = snapshot.models.values().map(|e| model_health(e)).collect();
    let config_error = snapshot.config_error.as_deref().map(without_directories);
    let health = HealthResponse::new(models, config_error);
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
        WorkerState::Lost(_) => ModelState::Degraded,
    }
}

fn model_health(entry: &ModelEntry) -> ModelHealth {
    let state = entry.state();
    ModelHealth {
        id: entry.id().to_owned(),
        state: model_state(&state),
        error: match state {
            WorkerState::Failed(reason) => Some(without_directories(&reason)),
            WorkerState::Lost(lost) => Some(without_directories(&lost.to_string())),
            WorkerState::Loading | WorkerState::Ready(_) => None,
        },
        waiting_on: entry.worker.as_ref().ok().and_then(|w| w.waiting_on()),
    }
}

fn model_card(entry: &ModelEntry, default: bool) -> ModelCard {
    let state = entry.state();
    let meta = match &state {
        WorkerState::Ready(loaded) => Some(card_meta(loaded)),
        WorkerState::Loading | WorkerState::Failed(_) | WorkerState::Lost(_) => None,
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
        rpc: loaded
            .rpc
            .iter()
            .map(|placed| RpcWorkerMeta {
                worker: placed.worker.to_string(),
                layers: placed.layers,
                weights_bytes: placed.weights_bytes,
            })
            .collect(),
        device: meta.placement.device(),
        gpu_layers: meta.placement.gpu_layers,
        n_layers: meta.placement.n_layers,
        kv_cache: meta.placement.kv_cache(),
        endo_lc_baseline: loaded.model.baseline().map(|b| b.0),
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

/// `GET /openapi.json`: the OpenAPI document of every route, derived from the wire types
/// ([`crate::api::openapi`]); built once per daemon.
pub async fn openapi() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOCUMENT.get_or_init(crate::api::openapi::document_json);
    ([(header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}

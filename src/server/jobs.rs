//! From an async handler to the engine: CPU work (tokenizing, rendering templates, building
//! responses) runs on a blocking thread, never on the executor; model work is a typed job on the
//! model's worker, awaited here. One policy for every route.

use std::sync::Arc;

use axum::http::StatusCode;

use super::error::ApiError;
use super::registry::ModelEntry;
use crate::engine::{Done, LoadedModel, Pending, SubmitError, Worker, WorkerState};

/// Runs `work` on tokio's blocking pool (tokenizing a request can take a while).
pub async fn blocking<T, F>(work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("a request task failed: {e}")))?
}

/// Waits for a job queued with one of [`Worker`]'s operations. A full queue or a loading model
/// answered at submission (503). When the handler is dropped (its client disconnected) before the
/// job starts, the job is skipped.
pub async fn done<I, O>(
    submitted: Result<Pending<I, O>, SubmitError>,
) -> Result<Done<I, O>, ApiError> {
    let done = submitted?.done().await.map_err(|_| {
        ApiError::internal("the model's worker stopped before answering (see the daemon log)")
    })?;
    Ok(done)
}

/// The worker of `entry`.
pub fn worker(entry: &ModelEntry) -> Result<&Worker, ApiError> {
    entry
        .worker
        .as_ref()
        .map_err(|reason| ApiError::internal(format!("the model has no worker: {reason}")))
}

/// The loaded model of `entry`, for its tokenizer (503 while loading).
pub fn loaded(entry: &ModelEntry) -> Result<Arc<LoadedModel>, ApiError> {
    match entry.state() {
        WorkerState::Ready(loaded) => Ok(loaded),
        WorkerState::Loading => Err(ApiError::unavailable(
            "model_loading",
            format!("model {} is still loading", entry.id()),
            2,
        )),
        WorkerState::Failed(reason) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "model_load_failed",
            format!("model {} failed to load: {reason}", entry.id()),
        )),
    }
}

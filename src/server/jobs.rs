//! Running work on a model's worker thread from an async handler.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::error::ApiError;
use super::metrics::Metrics;
use super::registry::ModelEntry;
use crate::engine::worker::WorkerState;
use crate::engine::Scorer;

/// Queues `work` on `entry`'s worker and waits for its result and the milliseconds it waited in
/// the queue. A full queue or a loading model answers at once (503). When the caller stops
/// waiting (the client disconnected, so axum dropped the handler) before the job starts, the
/// job is skipped.
pub async fn run<T, F>(
    entry: &ModelEntry,
    metrics: &Arc<Metrics>,
    work: F,
) -> Result<(T, f64), ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut Scorer<'_>) -> Result<T, ApiError> + Send + 'static,
{
    let worker = entry
        .worker
        .as_ref()
        .map_err(|reason| ApiError::internal(format!("the model has no worker: {reason}")))?;
    let (reply, answer) = oneshot::channel();
    let queued = Instant::now();
    let job_metrics = Arc::clone(metrics);
    let id = entry.id().to_owned();
    worker.submit(Box::new(move |scorer: &mut Scorer<'_>| {
        if reply.is_closed() {
            job_metrics.job_cancelled();
            tracing::debug!(model = %id, "client gone before its job started: skipped");
            return;
        }
        let queue_ms = queued.elapsed().as_secs_f64() * 1e3;
        let result = work(scorer).map(|value| (value, queue_ms));
        let _ = reply.send(result);
    }))?;
    answer.await.map_err(|_| {
        ApiError::internal("the model's worker stopped before answering (see the daemon log)")
    })?
}

/// The loaded model of `entry`, for work that needs only its tokenizer (503 while loading).
pub fn loaded(entry: &ModelEntry) -> Result<Arc<crate::engine::worker::LoadedModel>, ApiError> {
    match entry.state() {
        WorkerState::Ready(loaded) => Ok(loaded),
        WorkerState::Loading => Err(ApiError::unavailable(
            "model_loading",
            format!("model {} is still loading", entry.id()),
            2,
        )),
        WorkerState::Failed(reason) => Err(ApiError::internal(format!(
            "model {} failed to load: {reason}",
            entry.id()
        ))),
    }
}

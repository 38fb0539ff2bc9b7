//! From an async handler to the engine: CPU work (tokenizing, rendering templates, building
//! responses) runs on a blocking thread, never on the executor; model work is a typed job on the
//! model's worker, awaited here. One policy for every route.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::Notify;

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

/// Set when the shutdown grace period ran out (one daemon per process).
static GRACE_OVER: AtomicBool = AtomicBool::new(false);
static GRACE_NOTIFY: Notify = Notify::const_new();
static REFUSED_AT_SHUTDOWN: AtomicUsize = AtomicUsize::new(0);

/// The shutdown grace period ran out: every request still waiting for a job answers 503.
pub fn end_grace() {
    GRACE_OVER.store(true, Ordering::SeqCst);
    GRACE_NOTIFY.notify_waiters();
}

/// Requests answered 503 because the grace period ran out.
pub fn refused_at_shutdown() -> usize {
    REFUSED_AT_SHUTDOWN.load(Ordering::SeqCst)
}

async fn grace_over() {
    loop {
        let notified = GRACE_NOTIFY.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if GRACE_OVER.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

fn shutting_down() -> ApiError {
    REFUSED_AT_SHUTDOWN.fetch_add(1, Ordering::SeqCst);
    ApiError::unavailable(
        "shutting_down",
        "the daemon is shutting down and its grace period (shutdown_grace_secs) ran out before \
         this request was served: retry once it is back",
        1,
    )
}

/// Waits for a job queued with one of [`Worker`]'s operations. A full queue or a loading model
/// answered at submission (503). When the handler is dropped (its client disconnected) before the
/// job starts, the job is skipped. When the shutdown grace period runs out first: 503.
pub async fn done<I, O>(
    submitted: Result<Pending<I, O>, SubmitError>,
) -> Result<Done<I, O>, ApiError> {
    let pending = submitted?;
    let done = tokio::select! {
        done = pending.done() => done,
        () = grace_over() => return Err(shutting_down()),
    };
    done.map_err(|_| {
        ApiError::internal("the model's worker stopped before answering (see the daemon log)")
    })
}

/// Runs `items` as one job each, one after another: each is queued when the one before is done,
/// so other clients' jobs queued meanwhile run between them (a big request delays a small one by
/// one item, not all of it), and a client that leaves cancels the items not yet run. A full queue
/// refuses the first item (503); a later one waits for room, its request having been admitted.
pub async fn each<T: Clone, O>(
    items: Vec<T>,
    submit: impl Fn(T) -> Result<Pending<T, O>, SubmitError>,
) -> Result<Vec<O>, ApiError> {
    let mut outputs = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let pending = loop {
            match submit(item.clone()) {
                Err(SubmitError::Full { .. }) if index > 0 => {
                    if GRACE_OVER.load(Ordering::SeqCst) {
                        return Err(shutting_down());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                submitted => break submitted,
            }
        };
        outputs.push(done(pending).await?.result?);
    }
    Ok(outputs)
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

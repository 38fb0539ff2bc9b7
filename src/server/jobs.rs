//! Running work on a model's worker thread from an async handler.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::error::ApiError;
use super::metrics::Metrics;
use super::registry::ModelEntry;
use crate::engine::worker::{Job, LoadedModel, ScoreJob, ScoreOutcome, ScoreReply, WorkerState};
use crate::engine::{PreparedRequest, Scorer};

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
    let (sender, answer) = oneshot::channel();
    let waiter = Waiter::new(entry, metrics, sender);
    let queued = Instant::now();
    submit(
        entry,
        Job::Run(Box::new(move |scorer: &mut Scorer<'_>| {
            if waiter.is_wanted() {
                let queue_ms = queued.elapsed().as_secs_f64() * 1e3;
                let _ = waiter
                    .sender
                    .send(work(scorer).map(|value| (value, queue_ms)));
            }
        })),
    )?;
    answered(answer).await?
}

/// Queues a prepared score request on `entry`'s worker, where it may share a pass with the score
/// requests queued beside it, and waits for its outcome. 503s and cancellation as in [`run`].
pub async fn score(
    entry: &ModelEntry,
    metrics: &Arc<Metrics>,
    request: PreparedRequest,
) -> Result<ScoreOutcome, ApiError> {
    let (sender, answer) = oneshot::channel();
    let reply = Box::new(Waiter::new(entry, metrics, sender));
    submit(entry, Job::Score(ScoreJob::new(request, reply)))?;
    answered(answer).await
}

/// The loaded model of `entry`, for work that needs only its tokenizer (503 while loading).
pub fn loaded(entry: &ModelEntry) -> Result<Arc<LoadedModel>, ApiError> {
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

fn submit(entry: &ModelEntry, job: Job) -> Result<(), ApiError> {
    let worker = entry
        .worker
        .as_ref()
        .map_err(|reason| ApiError::internal(format!("the model has no worker: {reason}")))?;
    Ok(worker.submit(job)?)
}

async fn answered<T>(answer: oneshot::Receiver<T>) -> Result<T, ApiError> {
    answer.await.map_err(|_| {
        ApiError::internal("the model's worker stopped before answering (see the daemon log)")
    })
}

/// The handler waiting for a job: gone when axum dropped it (its client disconnected).
struct Waiter<T> {
    sender: oneshot::Sender<T>,
    metrics: Arc<Metrics>,
    model: String,
}

impl<T> Waiter<T> {
    fn new(entry: &ModelEntry, metrics: &Arc<Metrics>, sender: oneshot::Sender<T>) -> Self {
        Waiter {
            sender,
            metrics: Arc::clone(metrics),
            model: entry.id().to_owned(),
        }
    }

    fn is_wanted(&self) -> bool {
        let wanted = !self.sender.is_closed();
        if !wanted {
            self.metrics.job_cancelled();
            tracing::debug!(model = %self.model, "client gone before its job started: skipped");
        }
        wanted
    }
}

impl ScoreReply for Waiter<ScoreOutcome> {
    fn is_wanted(&self) -> bool {
        Waiter::is_wanted(self)
    }

    fn send(self: Box<Self>, outcome: ScoreOutcome) {
        let _ = self.sender.send(outcome);
    }
}

//! From an async handler to the engine, one policy for every route: the model a request names
//! ([`Target`]: resolved, loaded, with the limits of the moment), CPU work (tokenizing, rendering
//! templates, building responses) on a blocking thread, never on the executor, and model work as
//! typed jobs on the model's worker, awaited here until the shutdown's grace period runs out.

use std::sync::Arc;

use axum::http::StatusCode;

use super::error::ApiError;
use super::registry::{Limits, ModelEntry};
use super::shutdown::Shutdown;
use super::App;
use crate::engine::{cancel, Done, LoadedModel, Model, Pending, SubmitError, Worker, WorkerState};

/// Runs `work` on tokio's blocking pool (tokenizing a request can take a while). Should the
/// handler be dropped first (its client left), the work is told to stop ([`cancel::Flag`]): it
/// ends at its next step instead of running on for nobody.
pub async fn blocking<T, F>(work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    /// Raises the flag when the handler's future is dropped (or done: nothing runs then).
    struct Raise(cancel::Flag);
    impl Drop for Raise {
        fn drop(&mut self) {
            self.0.raise();
        }
    }
    let flag = cancel::Flag::default();
    let _raise = Raise(flag.clone());
    tokio::task::spawn_blocking(move || flag.run(work))
        .await
        .map_err(|e| ApiError::internal(format!("a request task failed: {e}")))?
}

/// The most bytes of text a request may hold per token of `max_tokens`, checked before it is
/// tokenized: text averages 3–5 bytes a token, so only text no tokenizer packs this densely is
/// refused without tokenizing it.
pub const BYTES_PER_TOKEN: usize = 16;

/// The model a request goes to, ready: its entry, its loaded model and the limits of the moment.
#[derive(Debug, Clone)]
pub struct Target {
    /// The served model.
    pub entry: Arc<ModelEntry>,
    /// Its tokenizer and metadata (it is loaded).
    pub loaded: Arc<LoadedModel>,
    /// `[server]`'s request limits.
    pub limits: Limits,
    shutdown: Arc<Shutdown>,
}

impl Target {
    /// The model `requested` (the default one when `None`), refusing a request of more than
    /// `max_candidates` items (`count` of `what`) first. 404 for an unknown model, 503 while it
    /// loads, 500 when it failed to.
    pub fn of(
        app: &App,
        requested: Option<&str>,
        count: usize,
        what: &str,
    ) -> Result<Target, ApiError> {
        let snapshot = app.registry.snapshot();
        check_count(count, &snapshot.limits, what)?;
        let entry = snapshot.resolve(requested)?;
        Ok(Target {
            loaded: loaded(&entry)?,
            entry,
            limits: snapshot.limits,
            shutdown: Arc::clone(&app.shutdown),
        })
    }

    /// Another served model for the same request (a reference model), under the same limits.
    pub fn other(&self, app: &App, id: &str) -> Result<Target, ApiError> {
        let entry = app.registry.snapshot().resolve(Some(id))?;
        Ok(Target {
            loaded: loaded(&entry)?,
            entry,
            ..self.clone()
        })
    }

    /// The model's id.
    pub fn id(&self) -> &str {
        self.entry.id()
    }

    /// The model, for tokenizing on a blocking thread.
    pub fn model(&self) -> Arc<Model> {
        Arc::clone(&self.loaded.model)
    }

    /// The model's worker.
    pub fn worker(&self) -> Result<&Worker, ApiError> {
        self.entry
            .worker
            .as_ref()
            .map_err(|reason| ApiError::internal(format!("the model has no worker: {reason}")))
    }

    /// 422, before anything is tokenized, for a request that cannot fit `max_tokens`: more text
    /// than [`BYTES_PER_TOKEN`] bytes per allowed token, or more chat messages than tokens (each
    /// message takes at least one). Tokenizing never starts on megabytes that would be refused
    /// after it.
    pub fn check_text(&self, bytes: usize, messages: usize) -> Result<(), ApiError> {
        let max = self.limits.max_tokens;
        let refuse = |what: String| {
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many_tokens",
                format!(
                    "{what}; the limit is max_tokens = {max} per request (set in the config's \
                     [server] section)"
                ),
            ))
        };
        if messages > max {
            return refuse(format!(
                "this request has {messages} messages, each at least one token"
            ));
        }
        if bytes > max.saturating_mul(BYTES_PER_TOKEN) {
            return refuse(format!(
                "this request has {bytes} bytes of text, more than {BYTES_PER_TOKEN} per allowed \
                 token, and was refused before tokenizing"
            ));
        }
        Ok(())
    }

    /// 422 when a request needs more than `max_tokens` tokens.
    pub fn check_tokens(&self, count: usize) -> Result<(), ApiError> {
        if count > self.limits.max_tokens {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many_tokens",
                format!(
                    "this request has {count} tokens; the limit is max_tokens = {} per request \
                     (set in the config's [server] section)",
                    self.limits.max_tokens
                ),
            ));
        }
        Ok(())
    }

    /// 413 when one job of a request would decode more than `max_job_tokens` tokens: such a job
    /// would hold the model's worker, and every client queued behind it, for too long.
    pub fn check_job_tokens(&self, count: usize) -> Result<(), ApiError> {
        if count > self.limits.max_job_tokens {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "job_too_large",
                format!(
                    "this request needs a job of {count} tokens (context and candidates, or one \
                     prompt or query group); the limit is max_job_tokens = {} per job (set in the \
                     config's [server] section): split the request or raise the limit",
                    self.limits.max_job_tokens
                ),
            ));
        }
        Ok(())
    }

    /// Waits for a job queued with one of [`Worker`]'s operations. A full queue or a loading
    /// model answered at submission (503). When the handler is dropped (its client disconnected)
    /// before the job starts, the job is skipped. When the shutdown grace period runs out first:
    /// 503.
    pub async fn done<I, O>(
        &self,
        submitted: Result<Pending<I, O>, SubmitError>,
    ) -> Result<Done<I, O>, ApiError> {
        let pending = submitted?;
        let done = tokio::select! {
            done = pending.done() => done,
            () = self.shutdown.grace_over() => return Err(self.shutdown.refuse()),
        };
        done.map_err(|_| {
            ApiError::internal("the model's worker stopped before answering (see the daemon log)")
        })
    }

    /// Runs `items` as one job each on the model's worker, one after another: each is queued
    /// when the one before is done, so other clients' jobs queued meanwhile run between them (a
    /// big request delays a small one by one item, not all of it), and a client that leaves
    /// cancels the items not yet run. A full queue refuses the first item (503); a later one
    /// waits until the worker takes a job, its request having been admitted.
    pub async fn each<T: Clone, O>(
        &self,
        items: Vec<T>,
        submit: impl Fn(&Worker, T) -> Result<Pending<T, O>, SubmitError>,
    ) -> Result<Vec<O>, ApiError> {
        let worker = self.worker()?;
        let mut outputs = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            let pending = loop {
                // Listening before trying: a job taken in between still wakes this request.
                let room = worker.room();
                let mut room = std::pin::pin!(room);
                room.as_mut().enable();
                match submit(worker, item.clone()) {
                    Err(SubmitError::Full { .. }) if index > 0 => {
                        tokio::select! {
                            () = room => {}
                            () = self.shutdown.grace_over() => return Err(self.shutdown.refuse()),
                        }
                    }
                    submitted => break submitted,
                }
            };
            outputs.push(self.done(pending).await?.result?);
        }
        Ok(outputs)
    }
}

/// 400 when a request has more than `max_candidates` items (`what`: candidates, documents...).
pub fn check_count(count: usize, limits: &Limits, what: &str) -> Result<(), ApiError> {
    if count > limits.max_candidates {
        return Err(ApiError::bad_request(
            "too_many_candidates",
            format!(
                "{count} {what} in one request; the limit is max_candidates = {} (set in the \
                 config's [server] section)",
                limits.max_candidates
            ),
        ));
    }
    Ok(())
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
        WorkerState::Lost(lost) => Err(SubmitError::Lost(lost).into()),
    }
}

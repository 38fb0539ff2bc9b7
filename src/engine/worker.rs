//! A thread that owns one model's llama.cpp context; typed [`Job`]s reach it through a bounded
//! queue and their outcomes come back on a oneshot channel, awaited by the daemon's handlers.
//!
//! A llama.cpp context is not `Send`, so it is created on the worker thread and never leaves it.
//! The model itself is shared (read-only) with whoever needs its tokenizer. The thread loads the
//! model, creates the context, then runs jobs in the [`FairQueue`]'s order (round-robin between
//! clients, each client's jobs in arrival order), and between the passes of a long job (and the
//! `n_batch` slices of a long context) one job of another client per pass; with `batching` on,
//! score jobs next in that order are scored together in one pass while they fit (continuous
//! batching, see [`Scorer::score_batch`]). Dropping the handle closes the queue: the jobs already
//! queued still run, then the thread ends and the model is unloaded.
//!
//! A model with RPC workers is not loaded in this process: the thread drives a host process that
//! holds it (`host.rs`) and supervises it ([`run_hosted`]): a lost worker fails the job under
//! way and those queued with `rpc_worker_lost`, and the model is loaded again, with backoff, once
//! every worker accepts connections. Such a model runs each job whole, in the queue's fair order:
//! no continuous batching, no other client's job between two passes of one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use super::host::{Host, HostError, Start, WorkerLayers};
use super::job::{Job, LogprobsInput, Pending, Queued, SubmitError};
use super::plan::PassBudget;
use super::queue::{ClientId, FairQueue, Refused};
use super::rpc::{self, RpcEndpoint};
use super::{
    EngineError, Model, ModelSettings, Pass, RpcWorkerLost, Scored, Scorer, SequenceLogprobs,
};

/// What a worker loads and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSettings {
    /// The GGUF file.
    pub path: PathBuf,
    /// A Jinja chat template that replaces the GGUF's; empty: none.
    pub chat_template: Option<String>,
    /// How the model is run, merged once from every layer ([`ModelSettings::merged`]).
    pub settings: ModelSettings,
    /// Jobs that may wait while one runs; a further one is refused ([`SubmitError::Full`]).
    pub queue_depth: usize,
}

/// A loaded model as the server sees it.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model (tokenizer, metadata); shared with request handlers.
    pub model: Arc<Model>,
    /// The context window the worker's context actually has.
    pub n_ctx: usize,
    /// Token texts and template source for `/tokenizer_info`.
    pub tokenizer: TokenizerInfo,
    /// What each RPC worker holds of it; empty for a model on this machine alone.
    pub rpc: Vec<WorkerLayers>,
}

/// What `/tokenizer_info` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerInfo {
    /// Text of the BOS token.
    pub bos_token: Option<String>,
    /// Text of the end-of-generation token.
    pub eos_token: Option<String>,
    /// The Jinja chat template source in use.
    pub chat_template: Option<String>,
}

/// Where a worker is in its life.
#[derive(Debug, Clone)]
pub enum WorkerState {
    /// Loading the model and creating the context.
    Loading,
    /// Serving jobs.
    Ready(Arc<LoadedModel>),
    /// The model could not be loaded or its context created.
    Failed(String),
    /// An RPC worker of the model is lost (or was never reached): requests fail with
    /// `rpc_worker_lost` until the model is loaded again, which is tried with backoff.
    Lost(RpcWorkerLost),
}

/// What the worker thread and its handle share.
pub(super) struct Shared {
    state: Mutex<WorkerState>,
    queue: FairQueue<Job>,
    running: AtomicUsize,
    batched: AtomicUsize,
    cancelled: AtomicUsize,
    /// Woken whenever the worker takes a job off the queue: there is room for one more.
    room: Notify,
    /// What a load waits for (an RPC worker busy with another client), while it does.
    waiting_on: Mutex<Option<String>>,
}

impl Shared {
    fn set(&self, state: WorkerState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    fn set_waiting_on(&self, note: Option<String>) {
        *self
            .waiting_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = note;
    }
}

/// The handle of one worker thread.
pub struct Worker {
    shared: Arc<Shared>,
    depth: usize,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.queue.close();
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("state", &self.state())
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts a thread that loads the model of `settings` and then serves jobs. Returns at once;
    /// [`Worker::state`] tells when the model is ready.
    pub fn spawn(name: &str, settings: WorkerSettings) -> Result<Worker, EngineError> {
        let depth = settings.queue_depth.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(WorkerState::Loading),
            queue: FairQueue::new(depth),
            running: AtomicUsize::new(0),
            batched: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            room: Notify::new(),
            waiting_on: Mutex::new(None),
        });
        let thread_shared = Arc::clone(&shared);
        let id = name.to_owned();
        std::thread::Builder::new()
            .name(format!("endorm-{name}"))
            .spawn(move || match settings.settings.rpc.as_deref() {
                Some([_, ..]) => run_hosted(&id, settings, &thread_shared),
                _ => run(settings, &thread_shared),
            })
            .map_err(|e| EngineError::Backend(format!("cannot start a worker thread: {e}")))?;
        Ok(Worker { shared, depth })
    }

    /// The worker's state now.
    pub fn state(&self) -> WorkerState {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What the model's load waits for, while it waits (an RPC worker busy with another client).
    pub fn waiting_on(&self) -> Option<String> {
        self.shared
            .waiting_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Jobs waiting in the queue (not counting the one running).
    pub fn waiting(&self) -> usize {
        self.shared.queue.len()
    }

    /// Jobs running now (0 or 1).
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::Relaxed)
    }

    /// Requests scored so far in a pass shared with other requests.
    pub fn batched(&self) -> usize {
        self.shared.batched.load(Ordering::Relaxed)
    }

    /// Jobs skipped because nobody waited for them any more when their turn came.
    pub fn cancelled(&self) -> usize {
        self.shared.cancelled.load(Ordering::Relaxed)
    }

    /// Resolves once the worker takes a job off its queue (there is room for another). Enable it
    /// before trying to queue, so a job taken in between still wakes the caller.
    pub fn room(&self) -> Notified<'_> {
        self.shared.room.notified()
    }

    /// Queues a pass of a request for `client`.
    pub fn score(
        &self,
        client: &ClientId,
        pass: Pass,
    ) -> Result<Pending<Pass, Vec<Scored>>, SubmitError> {
        self.submit(client, pass, Job::Score)
    }

    /// Queues sequences for their log-probabilities.
    pub fn logprobs(
        &self,
        client: &ClientId,
        input: LogprobsInput,
    ) -> Result<Pending<LogprobsInput, Vec<SequenceLogprobs>>, SubmitError> {
        self.submit(client, input, Job::Logprobs)
    }

    /// Queues a job behind `client`'s earlier ones, or says at once why it cannot be queued.
    fn submit<I, O>(
        &self,
        client: &ClientId,
        input: I,
        job: fn(Queued<I, O>) -> Job,
    ) -> Result<Pending<I, O>, SubmitError> {
        match self.state() {
            WorkerState::Loading => return Err(SubmitError::Loading),
            WorkerState::Failed(reason) => return Err(SubmitError::Failed(reason)),
            WorkerState::Lost(lost) => return Err(SubmitError::Lost(lost)),
            WorkerState::Ready(_) => {}
        }
        let (queued, pending) = Queued::new(input);
        match self.shared.queue.push(client, job(queued)) {
            Ok(()) => Ok(pending),
            Err(Refused::Full) => Err(SubmitError::Full { depth: self.depth }),
            Err(Refused::Closed) => Err(SubmitError::Stopped),
        }
    }
}

/// Drops the jobs still queued when the worker thread ends however it ends, so that their callers
/// hear `Stopped` instead of waiting for ever (a closed channel did this before).
struct DiscardOnExit<'a>(&'a Shared);

impl Drop for DiscardOnExit<'_> {
    fn drop(&mut self) {
        self.0.queue.discard();
        // Whoever waits for room tries again and hears that the worker stopped.
        self.0.room.notify_waiters();
    }
}

fn run(settings: WorkerSettings, shared: &Shared) {
    let _discard = DiscardOnExit(shared);
    let options = settings
        .settings
        .model_options(settings.chat_template.clone());
    // Between the daemon's "listening" and "model ready": a large model takes a while to load.
    tracing::info!(
        path = %settings.path.display(),
        mb = std::fs::metadata(&settings.path).map_or(0, |m| m.len() >> 20),
        "loading model"
    );
    let model = match Model::load(&settings.path, &options) {
        Ok(model) => Arc::new(model),
        Err(error) => {
            tracing::error!(path = %settings.path.display(), %error, "model not loaded");
            return shared.set(WorkerState::Failed(error.to_string()));
        }
    };
    let context_options = settings.settings.context_options(model.meta().n_ctx_train);
    let mut scorer = match Scorer::new(&model, context_options) {
        Ok(scorer) => scorer,
        Err(error) => {
            tracing::error!(path = %settings.path.display(), %error, "no context for the model");
            return shared.set(WorkerState::Failed(error.to_string()));
        }
    };
    let loaded = LoadedModel {
        model: Arc::clone(&model),
        n_ctx: scorer.n_ctx(),
        tokenizer: tokenizer_info(&model, &settings),
        rpc: Vec::new(),
    };
    tracing::info!(
        path = %settings.path.display(),
        n_ctx = loaded.n_ctx,
        n_threads = context_options.n_threads,
        cpu = %model.meta().cpu,
        placement = %model.meta().placement,
        "model ready"
    );
    shared.set(WorkerState::Ready(Arc::new(loaded)));
    // Measured once ready, before the first job: the model is listed sooner, and a request
    // that arrives at once waits for it, as it would for the first decode's warm-up anyway.
    scorer.baseline_at_load(&settings.path);
    while let Some((client, job)) = shared.queue.pop() {
        shared.room.notify_waiters();
        shared.running.fetch_add(1, Ordering::Relaxed);
        let mut turns = Turns {
            running: Some(client),
            shared,
            settings: &settings,
            since: Instant::now(),
        };
        turns.run(&mut scorer, job);
        shared.running.fetch_sub(1, Ordering::Relaxed);
    }
    tracing::info!(path = %settings.path.display(), "model unloaded");
}

/// Runs jobs, and between the passes of a long one the jobs of other clients, one per pass: a
/// big request delays another client's small one by one pass, not by all of its own (the
/// candidate groups of a score, the layouts of a reviewer term, the sequences of a logprobs job).
struct Turns<'a> {
    /// The client of the job running; `None` in a job run in between, which lets nobody in.
    running: Option<ClientId>,
    shared: &'a Shared,
    settings: &'a WorkerSettings,
    /// When the running job got the worker (back).
    since: Instant,
}

/// How long a job holds the worker before another client's job may run between two of its passes.
const QUANTUM: Duration = Duration::from_millis(500);

impl Turns<'_> {
    fn run(&mut self, scorer: &mut Scorer<'_>, job: Job) {
        let shared = self.shared;
        // A panicking job drops its reply channel (its caller sees an error); the worker goes on.
        let ran = catch_unwind(AssertUnwindSafe(|| match job {
            // Jobs run in between are not batched: gathering would take the running client's.
            Job::Score(first) => {
                let batch = if self.settings.settings.batches() && self.running.is_some() {
                    gather(scorer, first, shared)
                } else {
                    vec![first]
                };
                self.score_jobs(scorer, batch);
            }
            Job::Logprobs(job) => job.run(&shared.cancelled, |input| {
                let mut done = Vec::with_capacity(input.sequences.len());
                for (label, tokens) in &input.sequences {
                    if !done.is_empty() {
                        self.between(scorer);
                    }
                    done.push(
                        scorer
                            .sequence_logprobs(tokens, input.top_k, input.greedy)
                            .map_err(|e| e.at(label.clone()))?,
                    );
                }
                Ok(done)
            }),
        }));
        if ran.is_err() {
            tracing::error!(path = %self.settings.path.display(), "a job panicked");
            scorer.clear_cache();
        }
    }

    /// Between two passes of the running job: the next job of another client, if one waits.
    /// Only once the running job has held the worker for [`QUANTUM`] since it last got it: a job
    /// let in may evict the running one's context, which then costs a second decode, so jobs
    /// shorter than that are never interrupted (16 small concurrent requests would otherwise take
    /// turns group by group and decode their contexts again and again).
    fn between(&mut self, scorer: &mut Scorer<'_>) {
        let Some(running) = &self.running else {
            return;
        };
        if self.since.elapsed() < QUANTUM {
            return;
        }
        // Beside a long context half decoded (pinned), only a job that fits the rest of the window.
        let room = scorer.room_beside_pinned();
        let fits = |job: &Job| job.cells_at_once() <= room;
        if let Some(job) = self.shared.queue.pop_other(running, fits) {
            self.shared.room.notify_waiters();
            tracing::debug!(client = %running, "another client's job runs between two passes");
            let mut inner = Turns {
                running: None,
                shared: self.shared,
                settings: self.settings,
                since: Instant::now(),
            };
            inner.run(scorer, job);
            self.since = Instant::now();
        }
    }

    /// Scores the jobs still wanted, together when there are several (each then a pass of one
    /// layout: [`gather`]). Should the shared pass fail, each job is scored again alone, so one
    /// bad request cannot fail the others.
    fn score_jobs(&mut self, scorer: &mut Scorer<'_>, batch: Vec<ScoreJob>) {
        let shared = self.shared;
        let batch: Vec<ScoreJob> = batch
            .into_iter()
            .filter(|job| job.is_wanted(&shared.cancelled))
            .collect();
        let waited: Vec<Duration> = batch.iter().map(|job| job.queued.elapsed()).collect();
        let together = match batch.len() {
            0 => return,
            1 => None,
            _ => {
                let requests: Option<Vec<_>> = batch
                    .iter()
                    .map(|job| Some((job.input.single()?, job.input.alpha)))
                    .collect();
                requests.and_then(|requests| scorer.score_batch(&requests).ok())
            }
        };
        let mut together = together.map(Vec::into_iter);
        for (job, waited) in batch.into_iter().zip(waited) {
            let result = match together.as_mut().and_then(Iterator::next) {
                Some(scored) => Ok(vec![scored]),
                None => self.run_pass(scorer, &job),
            };
            if matches!(result, Err(EngineError::Cancelled))
                || (result.is_err() && job.is_abandoned())
            {
                shared.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::info!("client gone while its job ran: stopped between candidate groups");
                continue;
            }
            job.send(result, waited);
        }
    }

    /// Runs the layouts of a pass one after another, other clients' jobs between them and between
    /// their candidate groups; stops at the next group once the job's client has left.
    fn run_pass(
        &mut self,
        scorer: &mut Scorer<'_>,
        job: &ScoreJob,
    ) -> Result<Vec<Scored>, EngineError> {
        let pass = &job.input;
        let mut scored = Vec::with_capacity(pass.layouts.len());
        for layout in &pass.layouts {
            if !scored.is_empty() {
                self.between(scorer);
                if job.is_abandoned() {
                    return Err(EngineError::Cancelled);
                }
            }
            let result = scorer.score_between(
                &layout.prepared,
                pass.alpha,
                &mut |scorer| self.between(scorer),
                &|| job.is_abandoned(),
            );
            scored.push(result.map_err(|e| layout.label_error(e))?);
        }
        Ok(scored)
    }
}

type ScoreJob = Queued<Pass, Vec<Scored>>;

/// Takes the score jobs next in the queue's fair order while they fit one pass beside `first`;
/// the first job that does not join stays first in the queue and runs next.
fn gather(scorer: &Scorer<'_>, first: ScoreJob, shared: &Shared) -> Vec<ScoreJob> {
    let mut budget = PassBudget::default();
    let admit = |budget: &mut PassBudget, job: &ScoreJob| {
        job.input
            .single()
            .is_some_and(|prepared| scorer.admit(budget, prepared))
    };
    if !scorer.batches() || !admit(&mut budget, &first) {
        return vec![first];
    }
    let mut batch = vec![first];
    let mut joins = |job: &Job| matches!(job, Job::Score(job) if admit(&mut budget, job));
    // `pop_if` hands out only what `joins` took: a score job.
    while let Some(Job::Score(job)) = shared.queue.pop_if(&mut joins) {
        shared.room.notify_waiters();
        batch.push(job);
    }
    if batch.len() > 1 {
        shared.batched.fetch_add(batch.len(), Ordering::Relaxed);
    }
    batch
}

/// How often an idle RPC model has its workers pinged (a worker killed while idle is found then).
const PING_EVERY: Duration = Duration::from_secs(2);
/// How long a worker's port may take to accept the connection that checks it is there.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait before a lost model is loaded again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two loads of a model whose workers do not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The thread of a model with RPC workers: starts its host process when every worker accepts
/// connections, serves jobs through it, and when a worker is lost (the host ended) answers the
/// job under way and every queued one `rpc_worker_lost`, then starts a new host after a backoff
/// (1 s, doubling to 30 s; back to 1 s once a load succeeds). A load the workers cannot fix (a bad
/// file, a template that does not compile) fails the model, as in one process.
fn run_hosted(id: &str, settings: WorkerSettings, shared: &Shared) {
    let _discard = DiscardOnExit(shared);
    let workers = settings.settings.rpc.clone().unwrap_or_default();
    let start = Start::new(
        settings.path.clone(),
        settings.chat_template.clone(),
        &settings.settings,
    );
    let mut model: Option<Arc<Model>> = None;
    let mut backoff = FIRST_BACKOFF;
    while !shared.queue.is_closed() {
        let down: Vec<String> = workers
            .iter()
            .filter_map(|w| {
                let refused = rpc::probe(w, PROBE_TIMEOUT).err()?;
                Some(rpc::unreachable_message(w, &refused))
            })
            .collect();
        let seen = if down.is_empty() {
            let started = Host::start(&start, &mut |note| shared.set_waiting_on(note), &|| {
                shared.queue.is_closed()
            });
            let (host, ready) = match started {
                Ok(started) => started,
                Err(HostError::Failed(reason)) => {
                    tracing::error!(model = %id, path = %settings.path.display(), %reason, "model not loaded");
                    return shared.set(WorkerState::Failed(reason));
                }
                Err(HostError::Stopped) => break,
                Err(error @ (HostError::Unreachable(_) | HostError::Gone(_))) => {
                    lose(shared, id, &workers, error.to_string(), &mut backoff);
                    continue;
                }
            };
            let vocabulary = match &model {
                Some(model) => Ok(Arc::clone(model)),
                None => Model::load_vocabulary(
                    &settings.path,
                    &settings
                        .settings
                        .model_options(settings.chat_template.clone()),
                    &ready.meta,
                )
                .map(Arc::new),
            };
            let vocabulary = match vocabulary {
                Ok(vocabulary) => vocabulary,
                Err(error) => {
                    tracing::error!(model = %id, %error, "model not loaded");
                    return shared.set(WorkerState::Failed(error.to_string()));
                }
            };
            if let Some(baseline) = ready.baseline {
                vocabulary.set_baseline(baseline);
            }
            model = Some(Arc::clone(&vocabulary));
            let names: Vec<&str> = workers.iter().map(RpcEndpoint::as_str).collect();
            tracing::info!(
                model = %id,
                path = %settings.path.display(),
                n_ctx = ready.n_ctx,
                cpu = %vocabulary.meta().cpu,
                workers = %names.join(","),
                "model ready (in a process of its own: a lost RPC worker cannot end the daemon)"
            );
            shared.set(WorkerState::Ready(Arc::new(LoadedModel {
                tokenizer: tokenizer_info(&vocabulary, &settings),
                model: vocabulary,
                n_ctx: ready.n_ctx,
                rpc: ready.placement,
            })));
            backoff = FIRST_BACKOFF;
            match serve_hosted(host, shared, id, &workers, backoff) {
                Ok(()) => break,
                Err(seen) => seen,
            }
        } else {
            down.join("; ")
        };
        lose(shared, id, &workers, seen, &mut backoff);
    }
    tracing::info!(model = %id, path = %settings.path.display(), "model unloaded");
}

/// The model is lost: says so (state, log), answers what is queued and what comes in
/// `rpc_worker_lost` until the backoff is over, and doubles the backoff.
fn lose(shared: &Shared, id: &str, workers: &[RpcEndpoint], seen: String, backoff: &mut Duration) {
    let lost = lost(id, workers, seen, *backoff);
    tracing::warn!(model = %id, "{lost}");
    shared.set_waiting_on(None);
    shared.set(WorkerState::Lost(lost.clone()));
    let deadline = Instant::now() + *backoff;
    while Instant::now() < deadline && !shared.queue.is_closed() {
        refuse_queued(shared, &lost);
        std::thread::sleep(Duration::from_millis(100));
    }
    refuse_queued(shared, &lost);
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// Serves jobs through `host` until the queue closes (`Ok`) or the host is gone (what was seen):
/// the job under way and those queued are then answered `rpc_worker_lost`.
fn serve_hosted(
    mut host: Host,
    shared: &Shared,
    id: &str,
    workers: &[RpcEndpoint],
    backoff: Duration,
) -> Result<(), String> {
    loop {
        let job = match shared.queue.pop_within(PING_EVERY) {
            Ok((_, job)) => job,
            Err(true) => return Ok(()),
            Err(false) => {
                host.ping().map_err(|e| e.to_string())?;
                continue;
            }
        };
        shared.room.notify_waiters();
        shared.running.fetch_add(1, Ordering::Relaxed);
        let outcome = run_hosted_job(&mut host, job, shared);
        shared.running.fetch_sub(1, Ordering::Relaxed);
        if let Err((job, gone)) = outcome {
            let lost = lost(id, workers, gone.to_string(), backoff);
            refuse(job, &lost);
            refuse_queued(shared, &lost);
            return Err(gone.to_string());
        }
    }
}

/// Runs one job through the host, its layouts or sequences one after another (a client that left
/// stops it between two); gives the job back, unanswered, when the host is gone.
fn run_hosted_job(host: &mut Host, job: Job, shared: &Shared) -> Result<(), (Job, HostError)> {
    match job {
        Job::Score(job) => {
            if !job.is_wanted(&shared.cancelled) {
                return Ok(());
            }
            let waited = job.queued.elapsed();
            let mut scored = Vec::with_capacity(job.input.layouts.len());
            for index in 0..job.input.layouts.len() {
                if job.is_abandoned() {
                    shared.cancelled.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let layout = &job.input.layouts[index];
                match host.score(&layout.prepared, job.input.alpha) {
                    Ok(Ok(values)) => scored.push(values),
                    Ok(Err(error)) => {
                        let error = layout.label_error(error);
                        job.send(Err(error), waited);
                        return Ok(());
                    }
                    Err(gone) => return Err((Job::Score(job), gone)),
                }
            }
            job.send(Ok(scored), waited);
        }
        Job::Logprobs(job) => {
            if !job.is_wanted(&shared.cancelled) {
                return Ok(());
            }
            let waited = job.queued.elapsed();
            let mut done = Vec::with_capacity(job.input.sequences.len());
            for index in 0..job.input.sequences.len() {
                if job.is_abandoned() {
                    shared.cancelled.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let (label, tokens) = &job.input.sequences[index];
                match host.logprobs(tokens, job.input.top_k, job.input.greedy) {
                    Ok(Ok(sequence)) => done.push(sequence),
                    Ok(Err(error)) => {
                        let error = error.at(label.clone());
                        job.send(Err(error), waited);
                        return Ok(());
                    }
                    Err(gone) => return Err((Job::Logprobs(job), gone)),
                }
            }
            job.send(Ok(done), waited);
        }
    }
    Ok(())
}

/// Which of `workers` is lost, as far as can be told now: those that refuse a connection (all of
/// them when each accepts one: the host ended for a reason of its own, or a worker came back).
fn lost(id: &str, workers: &[RpcEndpoint], seen: String, retry: Duration) -> RpcWorkerLost {
    let down: Vec<(String, String)> = workers
        .iter()
        .filter_map(|w| {
            let refused = rpc::probe(w, PROBE_TIMEOUT).err()?;
            Some((w.to_string(), refused))
        })
        .collect();
    let (workers, reason) = match down.first() {
        None => (workers.iter().map(ToString::to_string).collect(), seen),
        Some((_, first)) => {
            let reason = if down.iter().all(|(_, refused)| refused == first) {
                format!("it cannot be reached: {first}; is `endorm rpc-worker` running there?")
            } else {
                let each: Vec<String> = down.iter().map(|(w, e)| format!("{w}: {e}")).collect();
                format!("cannot be reached: {}", each.join("; "))
            };
            let reason = match seen.contains("cannot be reached") {
                true => reason,
                false => format!("{reason}; {seen}"),
            };
            (down.into_iter().map(|(worker, _)| worker).collect(), reason)
        }
    };
    RpcWorkerLost {
        model: id.to_owned(),
        workers,
        reason,
        retry_after: retry.as_secs().max(1),
    }
}

/// Answers a job `rpc_worker_lost`.
fn refuse(job: Job, lost: &RpcWorkerLost) {
    let error = || EngineError::RpcWorkerLost(lost.clone());
    match job {
        Job::Score(job) => {
            let waited = job.queued.elapsed();
            job.send(Err(error()), waited);
        }
        Job::Logprobs(job) => {
            let waited = job.queued.elapsed();
            job.send(Err(error()), waited);
        }
    }
}

/// Answers every queued job `rpc_worker_lost` (they would wait for the reload otherwise).
fn refuse_queued(shared: &Shared, lost: &RpcWorkerLost) {
    let mut refused = false;
    while let Some(job) = shared.queue.pop_if(|_| true) {
        refuse(job, lost);
        refused = true;
    }
    if refused {
        shared.room.notify_waiters();
    }
}

fn tokenizer_info(model: &Model, settings: &WorkerSettings) -> TokenizerInfo {
    let text = |token| Some(model.detokenize(&[token]));
    let chat_template = match &settings.chat_template {
        Some(source) if source.is_empty() => None,
        Some(source) => Some(source.clone()),
        None => model.template_source(),
    };
    TokenizerInfo {
        bos_token: model.bos().and_then(text),
        eos_token: model.end_of_generation().and_then(text),
        chat_template,
    }
}

//! A thread that owns one model's llama.cpp context; typed [`Job`]s reach it through a bounded
//! queue and their outcomes come back on a oneshot channel, awaited by the daemon's handlers.
//!
//! A llama.cpp context is not `Send`, so it is created on the worker thread and never leaves it.
//! The model itself is shared (read-only) with whoever needs its tokenizer. The thread loads the
//! model, creates the context, then runs jobs in the [`FairQueue`]'s order (round-robin between
//! clients, each client's jobs in arrival order), and between the passes of a long job one job of
//! another client per pass; with `batching` on, score jobs next in that order are scored together
//! in one pass while they fit (continuous batching, see [`Scorer::score_batch`]). Dropping the handle closes the queue: the jobs already queued still
//! run, then the thread ends and the model is unloaded.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::job::{Job, Layouts, LogprobsInput, Pending, Queued};
use super::plan::PassBudget;
use super::queue::{ClientId, FairQueue, Refused};
use super::{
    ContextOptions, EngineError, Model, ModelOptions, PreparedRequest, RpcEndpoint, Scored, Scorer,
    SequenceLogprobs,
};
use crate::reward::Alpha;

/// What a worker loads and how it sizes its context. `None` fields take [`ContextOptions::for_model`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSettings {
    /// The GGUF file.
    pub path: PathBuf,
    /// Layers offloaded to the GPU (with `rpc`: to the workers, 0 meaning all).
    pub n_gpu_layers: u32,
    /// ggml RPC workers that hold the offloaded layers.
    pub rpc: Vec<RpcEndpoint>,
    /// A Jinja chat template that replaces the GGUF's; empty: none.
    pub chat_template: Option<String>,
    /// Context window in tokens.
    pub n_ctx: Option<u32>,
    /// Tokens per decode.
    pub n_batch: Option<u32>,
    /// CPU threads.
    pub n_threads: Option<u32>,
    /// Candidates decoded side by side.
    pub max_sequences: Option<u32>,
    /// Recent contexts kept in the prefix cache.
    pub cache_slots: Option<u32>,
    /// Most tokens the prefix cache keeps besides the last request's context.
    pub cache_tokens: Option<u32>,
    /// Score queued requests together in one pass (continuous batching).
    pub batching: bool,
    /// Jobs that may wait while one runs; a further one is refused ([`SubmitError::Full`]).
    pub queue_depth: usize,
}

impl WorkerSettings {
    /// The context options for `model` with these overrides.
    pub fn context_options(&self, model: &Model) -> ContextOptions {
        let mut options = ContextOptions::for_model(model);
        if let Some(n_ctx) = self.n_ctx {
            options.n_ctx = n_ctx;
        }
        if let Some(n_batch) = self.n_batch {
            options.n_batch = n_batch;
        }
        if let Some(n_threads) = self.n_threads {
            options.n_threads = n_threads;
        }
        if let Some(max_sequences) = self.max_sequences {
            options.max_sequences = max_sequences;
        }
        if let Some(cache_slots) = self.cache_slots {
            options.cache_slots = cache_slots;
        }
        if let Some(cache_tokens) = self.cache_tokens {
            options.cache_tokens = cache_tokens;
        }
        options
    }
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
}

/// Why a job was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds `depth` waiting jobs already.
    #[error("the model's queue is full ({depth} requests waiting)")]
    Full {
        /// The queue's capacity.
        depth: usize,
    },
    /// The model is still loading.
    #[error("the model is still loading")]
    Loading,
    /// The model failed to load.
    #[error("the model failed to load: {0}")]
    Failed(String),
    /// The worker has stopped.
    #[error("the model has been unloaded")]
    Stopped,
}

/// What the worker thread and its handle share.
pub(super) struct Shared {
    state: Mutex<WorkerState>,
    queue: FairQueue<Job>,
    running: AtomicUsize,
    batched: AtomicUsize,
    pub(super) cancelled: AtomicUsize,
}

impl Shared {
    fn set(&self, state: WorkerState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
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
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(format!("endorm-{name}"))
            .spawn(move || run(settings, &thread_shared))
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

    /// Queues a score request for `client`.
    pub fn score(
        &self,
        client: &ClientId,
        request: PreparedRequest,
    ) -> Result<Pending<PreparedRequest, Scored>, SubmitError> {
        self.submit(client, request, Job::Score)
    }

    /// Queues layouts to score one after another, each labelled for its error.
    pub fn score_each(
        &self,
        client: &ClientId,
        layouts: Layouts,
    ) -> Result<Pending<Layouts, Vec<Scored>>, SubmitError> {
        self.submit(client, layouts, Job::ScoreEach)
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
struct DiscardOnExit<'a>(&'a FairQueue<Job>);

impl Drop for DiscardOnExit<'_> {
    fn drop(&mut self) {
        self.0.discard();
    }
}

fn run(settings: WorkerSettings, shared: &Shared) {
    let _discard = DiscardOnExit(&shared.queue);
    let options = ModelOptions {
        n_gpu_layers: settings.n_gpu_layers,
        rpc: settings.rpc.clone(),
        chat_template: settings.chat_template.clone(),
        use_mmap: false,
    };
    let model = match Model::load(&settings.path, &options) {
        Ok(model) => Arc::new(model),
        Err(error) => {
            tracing::error!(path = %settings.path.display(), %error, "model not loaded");
            return shared.set(WorkerState::Failed(error.to_string()));
        }
    };
    let context_options = settings.context_options(&model);
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
    };
    tracing::info!(
        path = %settings.path.display(),
        n_ctx = loaded.n_ctx,
        n_threads = context_options.n_threads,
        cpu = %model.meta().cpu,
        "model ready"
    );
    shared.set(WorkerState::Ready(Arc::new(loaded)));
    while let Some((client, job)) = shared.queue.pop() {
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
                let batch = if self.settings.batching && self.running.is_some() {
                    gather(scorer, first, shared)
                } else {
                    vec![first]
                };
                self.score_jobs(scorer, batch);
            }
            Job::ScoreEach(job) => job.run(shared, |layouts| {
                let mut scored = Vec::with_capacity(layouts.len());
                for (label, prepared) in layouts {
                    if !scored.is_empty() {
                        self.between(scorer);
                    }
                    scored.push(
                        scorer
                            .score(prepared, Alpha::ONE)
                            .map_err(|e| e.at(label.clone()))?,
                    );
                }
                Ok(scored)
            }),
            Job::Logprobs(job) => job.run(shared, |input| {
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
        if let Some(job) = self.shared.queue.pop_other(running) {
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

    /// Scores the jobs still wanted, together when there are several. Should the pass fail, each
    /// job is scored again alone, so one bad request cannot fail the others.
    fn score_jobs(&mut self, scorer: &mut Scorer<'_>, batch: Vec<ScoreJob>) {
        let shared = self.shared;
        let batch: Vec<ScoreJob> = batch
            .into_iter()
            .filter(|job| job.is_wanted(shared))
            .collect();
        let waited: Vec<Duration> = batch.iter().map(|job| job.queued.elapsed()).collect();
        let together = match batch.len() {
            0 => return,
            1 => None,
            _ => {
                let requests: Vec<_> = batch
                    .iter()
                    .map(|job| (&job.input.prepared, job.input.alpha))
                    .collect();
                scorer.score_batch(&requests).ok()
            }
        };
        let mut together = together.map(Vec::into_iter);
        for (job, waited) in batch.into_iter().zip(waited) {
            let result = match together.as_mut().and_then(Iterator::next) {
                Some(scored) => Ok(scored),
                None => scorer.score_between(
                    &job.input.prepared,
                    job.input.alpha,
                    &mut |scorer| self.between(scorer),
                    &|| job.is_abandoned(),
                ),
            };
            if result.is_err() && job.is_abandoned() {
                shared.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::info!("client gone while its job ran: stopped between candidate groups");
                continue;
            }
            job.send(result, waited);
        }
    }
}

type ScoreJob = Queued<PreparedRequest, Scored>;

/// Takes the score jobs next in the queue's fair order while they fit one pass beside `first`;
/// the first job that does not join stays first in the queue and runs next.
fn gather(scorer: &Scorer<'_>, first: ScoreJob, shared: &Shared) -> Vec<ScoreJob> {
    let mut budget = PassBudget::default();
    if !scorer.batches() || !scorer.admit(&mut budget, &first.input.prepared) {
        return vec![first];
    }
    let mut batch = vec![first];
    let mut joins = |job: &Job| matches!(job, Job::Score(job) if scorer.admit(&mut budget, &job.input.prepared));
    // `pop_if` hands out only what `joins` took: a score job.
    while let Some(Job::Score(job)) = shared.queue.pop_if(&mut joins) {
        batch.push(job);
    }
    if batch.len() > 1 {
        shared.batched.fetch_add(batch.len(), Ordering::Relaxed);
    }
    batch
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

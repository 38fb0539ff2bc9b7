//! A thread that owns one model's llama.cpp context; jobs reach it through a bounded queue.
//!
//! A llama.cpp context is not `Send`, so it is created on the worker thread and never leaves it.
//! The model itself is shared (read-only) with whoever needs its tokenizer. The thread loads the
//! model, creates the context, then runs jobs one at a time in arrival order. Dropping (or
//! [`Worker::stop`]ping) the handle closes the queue: the jobs already queued still run, then the
//! thread ends and the model is unloaded.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::{ContextOptions, EngineError, Model, ModelOptions, Scorer};

/// A unit of work for a worker: it gets the worker's context and sends its own result back.
pub type Job = Box<dyn FnOnce(&mut Scorer<'_>) + Send + 'static>;

/// What a worker loads and how it sizes its context. `None` fields take [`ContextOptions::for_model`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSettings {
    /// The GGUF file.
    pub path: PathBuf,
    /// Layers offloaded to the GPU.
    pub n_gpu_layers: u32,
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

struct Shared {
    state: Mutex<WorkerState>,
    waiting: AtomicUsize,
    running: AtomicUsize,
}

impl Shared {
    fn set(&self, state: WorkerState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

/// The handle of one worker thread.
pub struct Worker {
    sender: Option<SyncSender<Job>>,
    shared: Arc<Shared>,
    depth: usize,
    thread: Option<JoinHandle<()>>,
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
        let (sender, receiver) = sync_channel::<Job>(depth);
        let shared = Arc::new(Shared {
            state: Mutex::new(WorkerState::Loading),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("endorm-{name}"))
            .spawn(move || run(settings, receiver, &thread_shared))
            .map_err(|e| EngineError::Backend(format!("cannot start a worker thread: {e}")))?;
        Ok(Worker {
            sender: Some(sender),
            shared,
            depth,
            thread: Some(thread),
        })
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
        self.shared.waiting.load(Ordering::Relaxed)
    }

    /// Jobs running now (0 or 1).
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::Relaxed)
    }

    /// The queue's capacity.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Queues `job`, or says at once why it cannot be queued. A job should check first whether
    /// its requester still waits (a client gone before its job starts cancels it).
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        match self.state() {
            WorkerState::Loading => return Err(SubmitError::Loading),
            WorkerState::Failed(reason) => return Err(SubmitError::Failed(reason)),
            WorkerState::Ready(_) => {}
        }
        let sender = self.sender.as_ref().ok_or(SubmitError::Stopped)?;
        self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        let refused = match sender.try_send(job) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(_)) => SubmitError::Full { depth: self.depth },
            Err(TrySendError::Disconnected(_)) => SubmitError::Stopped,
        };
        self.shared.waiting.fetch_sub(1, Ordering::Relaxed);
        Err(refused)
    }

    /// Closes the queue: the jobs already queued still run, then the thread ends. Returns the
    /// thread to join when the caller must wait for that.
    pub fn stop(mut self) -> Option<JoinHandle<()>> {
        self.sender = None;
        self.thread.take()
    }
}

fn run(settings: WorkerSettings, receiver: Receiver<Job>, shared: &Shared) {
    let options = ModelOptions {
        n_gpu_layers: settings.n_gpu_layers,
        chat_template: settings.chat_template.clone(),
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
        "model ready"
    );
    shared.set(WorkerState::Ready(Arc::new(loaded)));
    while let Ok(job) = receiver.recv() {
        shared.waiting.fetch_sub(1, Ordering::Relaxed);
        shared.running.fetch_add(1, Ordering::Relaxed);
        // A panicking job drops its reply channel (its caller sees an error); the worker goes on.
        if catch_unwind(AssertUnwindSafe(|| job(&mut scorer))).is_err() {
            tracing::error!(path = %settings.path.display(), "a job panicked");
        }
        shared.running.fetch_sub(1, Ordering::Relaxed);
    }
    tracing::info!(path = %settings.path.display(), "model unloaded");
}

fn tokenizer_info(model: &Model, settings: &WorkerSettings) -> TokenizerInfo {
    let text = |token| model.detokenize(&[token]).ok();
    let chat_template = match &settings.chat_template {
        Some(source) if source.is_empty() => None,
        Some(source) => Some(source.clone()),
        None => model.llama().meta_val_str("tokenizer.chat_template").ok(),
    };
    TokenizerInfo {
        bos_token: model.bos().and_then(text),
        eos_token: model.end_of_generation().and_then(text),
        chat_template,
    }
}

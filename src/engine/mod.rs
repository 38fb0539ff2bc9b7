//! Everything that touches llama.cpp, behind one facade: no llama-cpp-2 type crosses this module's
//! boundary, and nothing here knows HTTP.
//!
//! * [`Model`] — a loaded GGUF: metadata, tokenizer ([`Token`]), chat template.
//! * [`prepare`] — every token layout: a `/v1/score` request (chat or raw), texts scored from
//!   their first token, judge probes, the benchmark's synthetic request.
//! * [`Scorer`] — one llama.cpp context and its typed operations: [`Scorer::score`] (shared-prefix
//!   batched decode, prefix cache), [`Scorer::score_request`], [`Scorer::sequence_logprobs`],
//!   [`Scorer::probe`]. Used directly by the offline scorer, `eval` and `bench`.
//! * [`Worker`] — a thread that owns a `Scorer` and runs typed jobs (`job.rs`) from a bounded
//!   queue, for the daemon; it batches score jobs queued together (continuous batching).
//! * [`RpcEndpoint`], [`run_worker`] — ggml's RPC backend: a model's layers on `endorm rpc-worker`s
//!   (`rpc.rs`).
//!
//! Inside: `context` alone holds the `LlamaContext` and its batch; `plan` and `cache` are pure
//! arithmetic and bookkeeping, tested without llama.cpp.

mod batch;
mod cache;
mod context;
mod cpu;
mod gguf;
mod job;
mod loadlog;
mod logprobs;
mod model;
mod plan;
pub mod prepare;
mod probe;
mod queue;
mod request;
mod rpc;
mod scorer;
mod template;
mod worker;

use std::path::PathBuf;
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::token::LlamaToken;

pub use context::ContextOptions;
pub(crate) use job::{Done, LogprobsInput, Pending};
pub use logprobs::{RowLogprobs, SequenceLogprobs};
pub use model::{Model, ModelInfo, ModelOptions};
pub use prepare::{Candidate, Prepared};
pub use probe::Probed;
pub use queue::ClientId;
pub use request::{same_vocabulary, Passes, PreparedRequest};
pub use rpc::{run_worker, RpcEndpoint, WorkerOptions};
pub use scorer::{Scored, Scorer};
pub(crate) use worker::{LoadedModel, SubmitError, Worker, WorkerSettings, WorkerState};

/// A token of a model's vocabulary. Tokens come only from the model's tokenizer or from
/// [`Model::token`], which checks the id: llama.cpp aborts the process on an id outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(i32);

impl Token {
    /// The token's id in the vocabulary.
    pub fn id(self) -> i32 {
        self.0
    }

    fn llama(self) -> LlamaToken {
        LlamaToken(self.0)
    }
}

/// Everything that can go wrong between a request and its scores.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be loaded.
    #[error("cannot load model {}: {reason}", path.display())]
    Load {
        /// The GGUF path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// llama.cpp could not start or build a context.
    #[error("llama.cpp: {0}")]
    Backend(String),
    /// The request is malformed or inconsistent.
    #[error("{0}")]
    InvalidInput(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is not in the model's vocabulary (0..{n_vocab})")]
    InvalidToken {
        /// The offending id.
        id: i64,
        /// The vocabulary size.
        n_vocab: u32,
    },
    /// Chat format was asked of a model without a chat template.
    #[error(
        "this model has no chat template: send \"format\": \"raw\", or give the model a \
         `chat_template` in the config"
    )]
    NoChatTemplate,
    /// The model's chat template failed on these messages.
    #[error("the chat template cannot render this conversation: {0}")]
    Template(String),
    /// The input does not fit the context window.
    #[error(
        "{what} needs {needed} tokens but the context holds {n_ctx} (raise n_ctx up to the \
         model's {n_ctx_train}, or shorten the input)"
    )]
    ContextOverflow {
        /// Which part of the input.
        what: String,
        /// Tokens needed.
        needed: usize,
        /// Tokens the context holds.
        n_ctx: usize,
        /// The model's trained context length.
        n_ctx_train: u32,
    },
    /// One item of a request with several (a query, a prompt) failed.
    #[error("{item}: {error}")]
    Item {
        /// Which item, e.g. `query[3]`.
        item: String,
        /// What went wrong with it.
        error: Box<EngineError>,
    },
    /// llama.cpp failed while decoding.
    #[error("llama.cpp decode failed: {0}")]
    Decode(String),
    /// The scores came out non-finite (a model file changed under the daemon, or a bad `alpha`).
    #[error("the scores are not finite numbers: {0}")]
    NotFinite(String),
    /// A bug in endorm's own planning: a layout llama.cpp was never shown.
    #[error("internal error (a bug in endorm, please report it): {0}")]
    Internal(String),
}

impl EngineError {
    /// Whether the caller's input is at fault (and retrying it unchanged cannot help).
    pub fn is_input_error(&self) -> bool {
        match self {
            EngineError::Item { error, .. } => error.is_input_error(),
            EngineError::InvalidInput(_)
            | EngineError::InvalidToken { .. }
            | EngineError::NoChatTemplate
            | EngineError::Template(_)
            | EngineError::ContextOverflow { .. } => true,
            _ => false,
        }
    }

    /// The error without the item it happened on.
    pub fn root(&self) -> &EngineError {
        match self {
            EngineError::Item { error, .. } => error.root(),
            other => other,
        }
    }

    /// Names the item of a request this error happened on.
    pub fn at(self, item: impl Into<String>) -> EngineError {
        EngineError::Item {
            item: item.into(),
            error: Box::new(self),
        }
    }
}

/// The process-wide llama.cpp backend and the name of the CPU kernels it runs, initialised on
/// first use with its logs sent to `tracing`.
struct Backend {
    llama: LlamaBackend,
    cpu: String,
}

fn backend() -> Result<&'static LlamaBackend, EngineError> {
    process_backend().map(|b| &b.llama)
}

/// The CPU kernels that score: the variant a `cpu-dispatch` build chose at start-up, or the CPU
/// a static build was compiled for (`/v1/models` shows it: values depend on the kernels).
pub fn cpu_kernels() -> Result<&'static str, EngineError> {
    process_backend().map(|b| b.cpu.as_str())
}

fn process_backend() -> Result<&'static Backend, EngineError> {
    static BACKEND: OnceLock<Result<Backend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            // Before the backend: a dispatched build has no CPU device until a variant is loaded.
            let cpu = cpu::load()?;
            let llama = LlamaBackend::init().map_err(|e| e.to_string())?;
            Ok(Backend { llama, cpu })
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(e.clone()))
}

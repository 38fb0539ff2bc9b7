//! Everything that touches llama.cpp, behind one facade: no llama-cpp-2 type crosses this module's
//! boundary, and nothing here knows HTTP.
//!
//! * [`ModelSettings`] — how a model is run, resolved once into llama.cpp's load and context
//!   options.
//! * [`Model`] — a loaded GGUF: metadata, tokenizer ([`Token`]), chat template.
//! * [`prepare`] — every token layout: a `/v1/score` request (chat or raw), texts scored from
//!   their first token, judge probes, the benchmark's synthetic request.
//! * [`Scorer`] — one llama.cpp context and its typed operations: [`Scorer::score`] (shared-prefix
//!   batched decode, prefix cache), [`Scorer::score_request`], [`Scorer::sequence_logprobs`],
//!   [`Scorer::probe`]. Used directly by the offline scorer, `eval` and `bench`.
//! * [`Worker`] — a thread that owns a `Scorer` and runs typed jobs (`job.rs`) from a bounded
//!   queue, for the daemon; it batches score jobs queued together (continuous batching).
//! * [`RpcEndpoint`], [`run_rpc_server`] — ggml's RPC backend: a model's layers on `endorm
//!   rpc-worker`s (`rpc.rs`).
//!
//! Inside: `context` alone holds the `LlamaContext` and its batch; `plan` and `cache` are pure
//! arithmetic and bookkeeping, tested without llama.cpp.

mod baseline;
mod batch;
mod cache;
pub mod cancel;
mod context;
mod cpu;
mod device;
mod error;
mod gguf;
mod host;
mod job;
mod loadlog;
mod logprobs;
mod model;
mod pass;
mod plan;
pub mod prepare;
mod probe;
mod queue;
mod request;
mod rpc;
mod scorer;
mod settings;
mod special;
mod template;
mod worker;

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::token::LlamaToken;

pub use context::{ContextOptions, KvType};
pub use device::Placement;
pub use error::{EngineError, RpcWorkerLost};
pub use host::{run_model_host, WorkerLayers};
pub(crate) use job::{Done, LogprobsInput, Pending, SubmitError};
pub use logprobs::{RowLogprobs, SequenceLogprobs};
pub use model::{Model, ModelInfo, ModelOptions};
pub use pass::{Layout, Pass, PassKind};
pub use prepare::{Candidate, Prepared};
pub use probe::Probed;
pub use queue::ClientId;
pub use request::{same_vocabulary, score_with, Passes, PreparedRequest, PreparedRewards};
pub use rpc::{quiet_aborts, run_rpc_server, RpcEndpoint, RpcServerOptions};
pub use scorer::{Scored, Scorer};
pub use settings::ModelSettings;
pub(crate) use worker::{LoadedModel, Worker, WorkerSettings, WorkerState};

/// A token of a model's vocabulary. Tokens come only from the model's tokenizer or from
/// [`Model::token`], which checks the id: llama.cpp aborts the process on an id outside it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
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

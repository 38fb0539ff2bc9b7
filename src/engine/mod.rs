//! Everything that touches llama.cpp: loading models, turning requests into tokens, and the
//! shared-prefix batched decode that feeds [`crate::reward`].

mod cache;
mod model;
mod plan;
mod prepare;
mod request;
mod scorer;
mod template;
pub mod worker;

use std::path::PathBuf;
use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

pub use llama_cpp_2::token::LlamaToken;
pub use model::{Model, ModelMeta, ModelOptions};
pub use plan::PassBudget;
pub use prepare::{prepare, Candidate, Prepared};
pub use request::{score_request, PreparedRequest};
pub use scorer::{ContextOptions, RowLogprobs, Scored, Scorer};
pub use template::ChatTemplate;

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
    /// The request is malformed or inconsistent (HTTP 400).
    #[error("{0}")]
    InvalidInput(String),
    /// A token id outside the vocabulary (HTTP 400).
    #[error("token id {id} is not in the model's vocabulary (0..{n_vocab})")]
    InvalidToken {
        /// The offending id.
        id: i32,
        /// The vocabulary size.
        n_vocab: u32,
    },
    /// Chat format was asked of a model without a chat template (HTTP 400).
    #[error(
        "this model has no chat template: send \"format\": \"raw\", or give the model a \
         `chat_template` in the config"
    )]
    NoChatTemplate,
    /// The model's chat template failed on these messages (HTTP 400).
    #[error("the chat template cannot render this conversation: {0}")]
    Template(String),
    /// The input does not fit the context window (HTTP 422).
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
    /// llama.cpp failed while decoding (HTTP 500).
    #[error("llama.cpp decode failed: {0}")]
    Decode(String),
}

impl EngineError {
    /// Whether the caller's input is at fault (and retrying it unchanged cannot help).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            EngineError::InvalidInput(_)
                | EngineError::InvalidToken { .. }
                | EngineError::NoChatTemplate
                | EngineError::Template(_)
                | EngineError::ContextOverflow { .. }
        )
    }

    /// A stable machine-readable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Load { .. } => "model_load_failed",
            EngineError::Backend(_) => "backend_error",
            EngineError::InvalidInput(_) => "invalid_request",
            EngineError::InvalidToken { .. } => "invalid_token",
            EngineError::NoChatTemplate => "no_chat_template",
            EngineError::Template(_) => "chat_template_error",
            EngineError::ContextOverflow { .. } => "context_length_exceeded",
            EngineError::Decode(_) => "decode_failed",
        }
    }
}

impl From<&EngineError> for crate::api::ErrorBody {
    fn from(error: &EngineError) -> Self {
        let kind = if error.is_input_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        crate::api::ErrorBody::new(kind, error.code(), error.to_string())
    }
}

/// The process-wide llama.cpp backend, initialised on first use with its logs sent to `tracing`.
pub(crate) fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(e.clone()))
}

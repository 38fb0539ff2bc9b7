//! Everything that can go wrong between a request and its scores, and the wire's status and code
//! for each.

use std::path::PathBuf;

use crate::api::ErrorBody;

/// Everything that can go wrong between a request and its scores.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
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
    /// The client left while its request ran: the work stopped between two decodes. Never
    /// answered (nobody waits for it); counted as 499.
    #[error("cancelled: the client left while its request ran")]
    Cancelled,
    /// An RPC worker that holds some of the model's layers stopped answering: the request is lost,
    /// the daemon lives on, and the model is reloaded once its workers answer again.
    #[error("{0}")]
    RpcWorkerLost(RpcWorkerLost),
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

    /// The HTTP status and the stable code of the error body that reports it (API.md): the
    /// daemon answers with them, the offline scorer writes the same body. Every variant is
    /// listed, so a new one needs a decision here.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self.root() {
            EngineError::Load { .. } => (500, "model_load_failed"),
            EngineError::Backend(_) => (500, "backend_error"),
            EngineError::InvalidInput(_) => (400, "invalid_request"),
            EngineError::InvalidToken { .. } => (400, "invalid_token"),
            EngineError::NoChatTemplate => (400, "no_chat_template"),
            EngineError::Template(_) => (400, "chat_template_error"),
            EngineError::ContextOverflow { .. } => (422, "context_length_exceeded"),
            EngineError::Decode(_) => (500, "decode_failed"),
            EngineError::NotFinite(_) => (500, "scores_not_finite"),
            // Nobody waits for it; should one ever be answered, it is the client's 499.
            EngineError::Cancelled => (499, "client_closed_request"),
            EngineError::Internal(_) => (500, "internal_error"),
            // Not the request's fault, and it will pass once the workers answer: retry later.
            EngineError::RpcWorkerLost(_) => (503, "rpc_worker_lost"),
            // `root` never returns an item: the status and code are those of what went wrong.
            EngineError::Item { .. } => (400, "invalid_request"),
        }
    }

    /// Seconds a client should wait before it retries (`Retry-After`), for the errors that pass.
    pub fn retry_after(&self) -> Option<u64> {
        match self.root() {
            EngineError::RpcWorkerLost(lost) => Some(lost.retry_after),
            _ => None,
        }
    }

    /// The error body that reports it ([`EngineError::status_and_code`]).
    pub fn body(&self) -> ErrorBody {
        let (status, code) = self.status_and_code();
        ErrorBody::for_status(status, code, self.to_string())
    }

    /// Names the item of a request this error happened on (a cancellation stays one).
    pub fn at(self, item: impl Into<String>) -> EngineError {
        if let EngineError::Cancelled = self {
            return self;
        }
        EngineError::Item {
            item: item.into(),
            error: Box::new(self),
        }
    }
}

/// Why an RPC model cannot serve now: which of its workers is gone, and when it is tried again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RpcWorkerLost {
    /// The model's id (or file) as the daemon names it.
    pub model: String,
    /// The workers that do not answer; all of the model's when none can be singled out.
    pub workers: Vec<String>,
    /// What was seen: the connection refused, the model's process ended.
    pub reason: String,
    /// Seconds until the model is loaded again.
    pub retry_after: u64,
}

impl std::fmt::Display for RpcWorkerLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let workers = self.workers.join(", ");
        let which = match self.workers.len() {
            1 => format!("the RPC worker {workers}"),
            _ => format!("one of the RPC workers {workers}"),
        };
        write!(
            f,
            "model {}: {which} is lost ({}); the model is loaded again when its workers answer \
             (next try in {} s)",
            self.model, self.reason, self.retry_after
        )
    }
}

//! The typed jobs a [`Worker`](super::Worker) runs: each operation's input, the channel its
//! outcome goes back on, and cancellation when nobody waits any more.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{EngineError, Pass, RpcWorkerLost, Scored, SequenceLogprobs, Token};

/// A typed operation for a worker, with where its outcome goes. Every input was prepared (and its
/// size checked) before it was queued: the worker only decodes.
pub enum Job {
    /// A pass of a request: its layouts one after another. A pass of one layout is batched with
    /// the score jobs queued behind it when batching is on.
    Score(Queued<Pass, Vec<Scored>>),
    /// Log-probabilities along token sequences.
    Logprobs(Queued<LogprobsInput, Vec<SequenceLogprobs>>),
}

impl Job {
    /// The most KV cells the job holds at once: a layout's context with its longest candidate,
    /// or its longest sequence. A job run between the slices of a long context must fit beside it.
    pub(super) fn cells_at_once(&self) -> usize {
        match self {
            Job::Score(job) => (job.input.layouts.iter())
                .map(|layout| {
                    let prepared = &layout.prepared;
                    let longest = prepared.candidates.iter().map(|c| c.tokens.len()).max();
                    prepared.context.len() + longest.unwrap_or(0)
                })
                .max()
                .unwrap_or(0),
            Job::Logprobs(job) => (job.input.sequences.iter())
                .map(|(_, tokens)| tokens.len())
                .max()
                .unwrap_or(0),
        }
    }
}

/// Sequences for [`Job::Logprobs`].
#[derive(Debug, Clone)]
pub struct LogprobsInput {
    /// The sequences, each with a label that names it in an error.
    pub sequences: Vec<(String, Vec<Token>)>,
    /// Alternatives per position; `None`: none.
    pub top_k: Option<usize>,
    /// Append the greedy next token.
    pub greedy: bool,
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
    /// An RPC worker of the model is lost; the model is loaded again when its workers answer.
    #[error("{0}")]
    Lost(RpcWorkerLost),
}

/// A job's input and the channel its outcome goes back on.
pub struct Queued<I, O> {
    pub(super) input: I,
    pub(super) queued: Instant,
    reply: oneshot::Sender<Done<I, O>>,
}

/// What comes back from a job: its input, its result, and how long it waited in the queue.
#[derive(Debug)]
pub struct Done<I, O> {
    /// The input, given back.
    pub input: I,
    /// The result.
    pub result: Result<O, EngineError>,
    /// Time from queueing to the start of its pass.
    pub waited: Duration,
}

/// A queued job's outcome, to wait for (dropping it cancels the job if it has not started).
pub struct Pending<I, O>(oneshot::Receiver<Done<I, O>>);

impl<I, O> Pending<I, O> {
    /// Waits for the outcome. `Err` when the worker stopped (or the job panicked) before answering.
    pub async fn done(self) -> Result<Done<I, O>, SubmitError> {
        self.0.await.map_err(|_| SubmitError::Stopped)
    }
}

impl<I, O> Queued<I, O> {
    pub(super) fn new(input: I) -> (Self, Pending<I, O>) {
        let (reply, receiver) = oneshot::channel();
        let queued = Queued {
            input,
            queued: Instant::now(),
            reply,
        };
        (queued, Pending(receiver))
    }

    /// Whether anyone still waits for the outcome: `false` (its client left) skips the job and
    /// counts it in `cancelled`.
    pub(super) fn is_wanted(&self, cancelled: &AtomicUsize) -> bool {
        let wanted = !self.reply.is_closed();
        if !wanted {
            cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("client gone before its job started: skipped");
        }
        wanted
    }

    /// Whether its client left (checked between the passes of a running job).
    pub(super) fn is_abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    /// Runs `work` on the input if the job is still wanted, and sends the outcome.
    pub(super) fn run(
        self,
        cancelled: &AtomicUsize,
        work: impl FnOnce(&I) -> Result<O, EngineError>,
    ) {
        if !self.is_wanted(cancelled) {
            return;
        }
        let waited = self.queued.elapsed();
        let result = work(&self.input);
        self.send(result, waited);
    }

    pub(super) fn send(self, result: Result<O, EngineError>, waited: Duration) {
        let _ = self.reply.send(Done {
            input: self.input,
            result,
            waited,
        });
    }
}

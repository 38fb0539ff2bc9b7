//! A model whose layers are on RPC workers runs in a process of its own, a *host*
//! (`endorm model-host`), which the daemon's worker thread drives over a pipe.
//!
//! ggml's RPC client cannot survive a lost worker: every failed call ends in `GGML_ABORT`
//! ("Remote RPC server crashed or returned malformed response", ggml-rpc.cpp), which aborts the
//! process that made it. So the daemon never makes one: the host loads the model with the workers,
//! scores what the daemon sends, and when a worker is lost it is the host that ends (with
//! [`rpc::GGML_ABORTED`], one line on standard error), while the daemon answers the request 503
//! `rpc_worker_lost`, keeps serving its other models and starts a new host once the workers answer
//! (`worker.rs`). Between requests the daemon pings the host, which asks each worker for its memory:
//! a worker killed while idle is found within [`PING_EVERY`](super::worker) instead of by the next
//! request.
//!
//! The pipe carries frames: a little-endian `u32` length, then one postcard-encoded message
//! (bit-exact floats, so a hosted model scores exactly as the same code in one process). The host
//! writes its frames to the standard output it was started with and points file descriptor 1 at
//! standard error, so that nothing printed by llama.cpp can mix into them; its logs go to the
//! daemon's standard error.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::rpc::{self, RpcEndpoint};
use super::{
    EngineError, Model, ModelInfo, ModelSettings, Prepared, Scored, Scorer, SequenceLogprobs, Token,
};
use crate::reward::{Alpha, Baseline};

/// The largest frame either side accepts (a request of 65,536 tokens is well under 1 MiB).
const MAX_FRAME: u32 = 1 << 30;
/// How long a worker may keep this daemon's connection waiting before its health says so.
const BUSY_AFTER: Duration = Duration::from_secs(2);
/// How long the daemon waits for the host to answer a ping (each worker's one round trip).
const PING_TIMEOUT: Duration = Duration::from_secs(30);

/// What the daemon hands its host first: the model and how to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Start {
    /// The GGUF file.
    pub path: PathBuf,
    /// A chat template that replaces the GGUF's.
    pub chat_template: Option<String>,
    /// The merged settings, workers included, as JSON ([`ModelSettings`] skips unset fields,
    /// which only a self-describing format reads back).
    pub settings: String,
}

impl Start {
    /// The start of a model at `path` with `settings`.
    pub fn new(path: PathBuf, chat_template: Option<String>, settings: &ModelSettings) -> Self {
        Start {
            path,
            chat_template,
            settings: serde_json::to_string(settings).unwrap_or_default(),
        }
    }
}

/// A request to the host.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Score one layout ([`Scorer::score`]); `alpha` a valid [`Alpha`].
    Score { prepared: Prepared, alpha: f64 },
    /// [`Scorer::sequence_logprobs`].
    Logprobs {
        tokens: Vec<Token>,
        top_k: Option<usize>,
        greedy: bool,
    },
    /// Ask every worker for its memory (ends the host if one is gone).
    Ping,
}

/// What the host says.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    /// It is connecting to a worker (ggml's server takes one client at a time: this may wait).
    Connecting(RpcEndpoint),
    /// The worker took the connection.
    Connected(RpcEndpoint),
    /// A worker did not accept a connection.
    Unreachable(String),
    /// The model could not be loaded, for a reason no worker can fix.
    Failed(EngineError),
    /// Loaded and ready for requests.
    Ready(Ready),
    /// A layout's scores.
    Scored(Result<Scored, EngineError>),
    /// A sequence's log-probabilities.
    Logprobs(Result<SequenceLogprobs, EngineError>),
    /// Every worker answered.
    Pong,
}

/// A hosted model, loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Ready {
    /// The context window.
    pub n_ctx: usize,
    /// The model as loaded with its weights.
    pub meta: ModelInfo,
    /// Its `endo_lc` baseline, measured on the host's context (`None`: it could not be).
    pub baseline: Option<Baseline>,
    /// Where its layers went.
    pub placement: Vec<WorkerLayers>,
}

/// What one RPC worker holds of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLayers {
    /// The worker.
    pub worker: RpcEndpoint,
    /// The layers on its devices as llama.cpp counts them ("offloaded 31/31 layers"): the
    /// repeating layers, and the output layer on the worker that holds it.
    pub layers: u32,
    /// Bytes of weights in its buffers.
    pub weights_bytes: u64,
}

/// Why a host did not start or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum HostError {
    /// The model cannot be loaded, whatever the workers do.
    #[error("{0}")]
    Failed(String),
    /// A worker did not accept a connection.
    #[error("{0}")]
    Unreachable(String),
    /// The host process ended, or could not be started or talked to.
    #[error("{0}")]
    Gone(String),
    /// Whoever waited for it stopped waiting (the model was unloaded).
    #[error("the model was unloaded while it loaded")]
    Stopped,
}

/// The daemon's side of a running host; the process is killed when this is dropped.
pub(super) struct Host {
    child: Child,
    input: BufWriter<ChildStdin>,
    replies: mpsc::Receiver<Reply>,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Host {
    /// Starts a host for `start` and waits until its model is ready. `waiting` hears what the
    /// load waits for (a worker busy with another client) and `None` once it no longer does;
    /// `stop` is asked every half second whether to give up.
    pub fn start(
        start: &Start,
        waiting: &mut dyn FnMut(Option<String>),
        stop: &dyn Fn() -> bool,
    ) -> Result<(Host, Ready), HostError> {
        let gone = |what: &str, e: std::io::Error| HostError::Gone(format!("{what}: {e}"));
        let exe = std::env::current_exe().map_err(|e| gone("cannot find endorm's binary", e))?;
        let mut command = Command::new(exe);
        command
            .arg("model-host")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: between fork and exec only `prctl`, which is async-signal-safe: the host is
            // killed when the thread that started it ends (the model unloaded, the daemon killed).
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| gone("cannot start the model's process", e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(HostError::Gone("the model's process has no pipes".into()));
        };
        let (sender, replies) = mpsc::channel();
        std::thread::Builder::new()
            .name("endorm-host-reader".into())
            .spawn(move || {
                let mut stdout = BufReader::new(stdout);
                while let Ok(Some(reply)) = read_frame::<Reply>(&mut stdout) {
                    if sender.send(reply).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| gone("cannot start a thread", e))?;
        let mut host = Host {
            child,
            input: BufWriter::new(stdin),
            replies,
        };
        write_frame(&mut host.input, start).map_err(|e| host.gone(&e))?;
        let mut connecting: Option<(RpcEndpoint, Instant, bool)> = None;
        loop {
            if stop() {
                return Err(HostError::Stopped);
            }
            let reply = match host.replies.recv_timeout(Duration::from_millis(500)) {
                Ok(reply) => reply,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some((worker, since, told)) = &mut connecting {
                        if !*told && since.elapsed() >= BUSY_AFTER {
                            *told = true;
                            let note = busy_note(worker);
                            tracing::warn!(path = %start.path.display(), "{note}");
                            waiting(Some(note));
                        }
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(host.ended()),
            };
            match reply {
                Reply::Connecting(worker) => connecting = Some((worker, Instant::now(), false)),
                Reply::Connected(worker) => {
                    if connecting.take().is_some_and(|(_, _, told)| told) {
                        tracing::info!(%worker, "the RPC worker took this daemon's connection");
                        waiting(None);
                    }
                }
                Reply::Ready(ready) => {
                    waiting(None);
                    return Ok((host, ready));
                }
                Reply::Unreachable(reason) => return Err(HostError::Unreachable(reason)),
                Reply::Failed(error) => return Err(HostError::Failed(error.to_string())),
                other => {
                    return Err(HostError::Gone(format!(
                        "the model's process answered {other:?} while loading"
                    )))
                }
            }
        }
    }

    /// Scores one layout; the outer error when the host is gone.
    pub fn score(
        &mut self,
        prepared: &Prepared,
        alpha: Alpha,
    ) -> Result<Result<Scored, EngineError>, HostError> {
        let request = Request::Score {
            prepared: prepared.clone(),
            alpha: alpha.get(),
        };
        match self.ask(&request, None)? {
            Reply::Scored(result) => Ok(result),
            other => Err(self.confused(&other)),
        }
    }

    /// Log-probabilities along one sequence; the outer error when the host is gone.
    pub fn logprobs(
        &mut self,
        tokens: &[Token],
        top_k: Option<usize>,
        greedy: bool,
    ) -> Result<Result<SequenceLogprobs, EngineError>, HostError> {
        let request = Request::Logprobs {
            tokens: tokens.to_vec(),
            top_k,
            greedy,
        };
        match self.ask(&request, None)? {
            Reply::Logprobs(result) => Ok(result),
            other => Err(self.confused(&other)),
        }
    }

    /// Whether every worker still answers (a lost one ends the host).
    pub fn ping(&mut self) -> Result<(), HostError> {
        match self.ask(&Request::Ping, Some(PING_TIMEOUT))? {
            Reply::Pong => Ok(()),
            other => Err(self.confused(&other)),
        }
    }

    fn ask(&mut self, request: &Request, timeout: Option<Duration>) -> Result<Reply, HostError> {
        write_frame(&mut self.input, request).map_err(|e| self.gone(&e))?;
        let reply = match timeout {
            Some(timeout) => self.replies.recv_timeout(timeout).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => {
                    HostError::Gone(format!("no answer from the workers within {timeout:?}"))
                }
                mpsc::RecvTimeoutError::Disconnected => self.ended(),
            }),
            None => self.replies.recv().map_err(|_| self.ended()),
        };
        reply
    }

    fn confused(&mut self, reply: &Reply) -> HostError {
        let _ = self.child.kill();
        HostError::Gone(format!(
            "the model's process answered {reply:?} out of turn"
        ))
    }

    fn gone(&mut self, error: &std::io::Error) -> HostError {
        let _ = self.child.kill();
        HostError::Gone(format!("cannot write to the model's process: {error}"))
    }

    /// The host's pipe closed: it ended (or is ending); how.
    fn ended(&mut self) -> HostError {
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
            }
        };
        HostError::Gone(match status {
            Some(status) => format!("the model's process ended: {}", describe(status)),
            None => "the model's process ended".to_owned(),
        })
    }
}

/// What `/health` and the log say while a worker keeps the connection waiting.
fn busy_note(worker: &RpcEndpoint) -> String {
    format!(
        "waiting for the RPC worker {worker}: it accepted the connection but has not answered for \
         {} s or more; ggml's RPC server serves one client at a time, so another endorm (or \
         another model of this one) is probably using it",
        BUSY_AFTER.as_secs()
    )
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(rpc::GGML_ABORTED), _) => "ggml aborted (an RPC call failed)".to_owned(),
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

fn write_frame<T: Serialize>(out: &mut impl Write, message: &T) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(message).map_err(std::io::Error::other)?;
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&len| len <= MAX_FRAME)
        .ok_or_else(|| std::io::Error::other("a message larger than 1 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&bytes)?;
    out.flush()
}

/// The next frame; `None` at the end of the stream.
fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("a frame of {len} bytes")));
    }
    let mut bytes = vec![0; len as usize];
    input.read_exact(&mut bytes)?;
    postcard::from_bytes(&bytes)
        .map(Some)
        .map_err(std::io::Error::other)
}

/// `endorm model-host`: the host's side. Reads [`Start`] and requests on standard input, answers on
/// standard output, until standard input ends (the daemon closed it or died).
pub fn run_model_host() -> Result<(), EngineError> {
    let io = |e: std::io::Error| EngineError::Backend(format!("model host: {e}"));
    rpc::quiet_aborts();
    // SAFETY: duplicating and redirecting this process's own standard descriptors; the duplicate
    // is owned by the `File` made from it and nothing else.
    let frames = unsafe {
        let fd = libc::dup(1);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        std::fs::File::from_raw_fd(fd)
    };
    let mut out = BufWriter::new(frames);
    let mut input = BufReader::new(std::io::stdin().lock());
    let Some(start) = read_frame::<Start>(&mut input).map_err(io)? else {
        return Ok(());
    };
    let mut send = |reply: &Reply| write_frame(&mut out, reply).map_err(io);
    let settings: ModelSettings = serde_json::from_str(&start.settings)
        .map_err(|e| EngineError::Internal(format!("the model's settings: {e}")))?;
    let options = settings.model_options(start.chat_template.clone());
    for worker in &options.rpc {
        send(&Reply::Connecting(worker.clone()))?;
        if let Err(error) = rpc::probe(worker, Duration::from_secs(5)) {
            return send(&Reply::Unreachable(rpc::unreachable_message(
                worker, &error,
            )));
        }
        // Connects (ggml blocks until the worker takes this client) and registers its devices.
        if let Err(reason) = rpc::devices(std::slice::from_ref(worker)) {
            return send(&Reply::Failed(EngineError::Load {
                path: start.path.clone(),
                reason,
            }));
        }
        send(&Reply::Connected(worker.clone()))?;
    }
    let model = match Model::load(&start.path, &options) {
        Ok(model) => model,
        Err(error) => return send(&Reply::Failed(error)),
    };
    let context_options = settings.context_options(model.meta().n_ctx_train);
    let mut scorer = match Scorer::new(&model, context_options) {
        Ok(scorer) => scorer,
        Err(error) => return send(&Reply::Failed(error)),
    };
    let baseline = scorer.baseline_at_load(&start.path);
    send(&Reply::Ready(Ready {
        n_ctx: scorer.n_ctx(),
        meta: model.meta().clone(),
        baseline,
        placement: placement(model.placement_log(), &rpc::registered_devices()),
    }))?;
    while let Some(request) = read_frame::<Request>(&mut input).map_err(io)? {
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            answer(&mut scorer, request)
        }))
        .unwrap_or_else(|_| {
            scorer.clear_cache();
            Reply::Scored(Err(EngineError::Internal(
                "the model's process panicked on this request".into(),
            )))
        });
        send(&reply)?;
    }
    Ok(())
}

fn answer(scorer: &mut Scorer<'_>, request: Request) -> Reply {
    match request {
        Request::Score { prepared, alpha } => Reply::Scored(
            Alpha::new(alpha)
                .ok_or_else(|| EngineError::Internal(format!("alpha {alpha} out of range")))
                .and_then(|alpha| scorer.score(&prepared, alpha)),
        ),
        Request::Logprobs {
            tokens,
            top_k,
            greedy,
        } => Reply::Logprobs(scorer.sequence_logprobs(&tokens, top_k, greedy)),
        Request::Ping => {
            rpc::ping_workers();
            Reply::Pong
        }
    }
}

/// Each worker's share of the model, from llama.cpp's load log: `layer 3 assigned to device RPC1`
/// (debug level) and `RPC0[127.0.0.1:50052] model buffer size = 33.82 MiB`; `devices` maps
/// ggml's device names to their workers.
fn placement(log: &[String], devices: &[(String, RpcEndpoint)]) -> Vec<WorkerLayers> {
    fn entry(workers: &mut Vec<WorkerLayers>, worker: &RpcEndpoint) -> usize {
        match workers.iter().position(|p| &p.worker == worker) {
            Some(index) => index,
            None => {
                workers.push(WorkerLayers {
                    worker: worker.clone(),
                    layers: 0,
                    weights_bytes: 0,
                });
                workers.len() - 1
            }
        }
    }
    let mut workers: Vec<WorkerLayers> = Vec::new();
    for (_, worker) in devices {
        entry(&mut workers, worker);
    }
    for line in log {
        if let Some((_, device)) = line.split_once("assigned to device ") {
            let device = device.split(',').next().unwrap_or_default().trim();
            if let Some((_, worker)) = devices.iter().find(|(name, _)| name == device) {
                let index = entry(&mut workers, worker);
                workers[index].layers += 1;
            }
        } else if let Some((buffer, size)) = line.split_once(" model buffer size =") {
            let inside = buffer
                .rsplit_once('[')
                .and_then(|(_, rest)| rest.strip_suffix(']'));
            let mib = size.trim().trim_end_matches("MiB").trim().parse::<f64>();
            let worker = inside.and_then(|address| {
                devices
                    .iter()
                    .find(|(_, worker)| worker.as_str() == address)
                    .map(|(_, worker)| worker.clone())
            });
            if let (Some(worker), Ok(mib)) = (worker, mib) {
                let index = entry(&mut workers, &worker);
                workers[index].weights_bytes += (mib * 1024.0 * 1024.0).round() as u64;
            }
        }
    }
    workers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_read_from_llama_cpps_load_log() {
        let a: RpcEndpoint = "127.0.0.1:50111".parse().unwrap();
        let b: RpcEndpoint = "127.0.0.1:50112".parse().unwrap();
        let devices = [
            ("RPC0".to_owned(), a.clone()),
            ("RPC1".to_owned(), b.clone()),
        ];
        let log: Vec<String> = [
            "load_tensors: layer   0 assigned to device CPU, is_swa = 0",
            "load_tensors: layer   1 assigned to device RPC0, is_swa = 0",
            "load_tensors: layer   2 assigned to device RPC1, is_swa = 0",
            "load_tensors: layer   3 assigned to device RPC1, is_swa = 0",
            "load_tensors: offloaded 4/4 layers to GPU",
            "load_tensors:          CPU model buffer size =    28.69 MiB",
            "load_tensors: RPC0[127.0.0.1:50111] model buffer size =    33.82 MiB",
            "load_tensors: RPC0[127.0.0.1:50112] model buffer size =    58.28 MiB",
        ]
        .map(str::to_owned)
        .to_vec();
        let placed = placement(&log, &devices);
        assert_eq!(
            placed,
            vec![
                WorkerLayers {
                    worker: a,
                    layers: 1,
                    weights_bytes: 35_462_840,
                },
                WorkerLayers {
                    worker: b,
                    layers: 2,
                    weights_bytes: 61_111_009,
                },
            ]
        );
    }

    #[test]
    fn frames_carry_floats_bit_for_bit_and_end_cleanly() {
        let values = vec![0.1f64, -0.0, f64::NAN, 1e-310, f64::INFINITY];
        let mut pipe = Vec::new();
        write_frame(&mut pipe, &values).unwrap();
        write_frame(&mut pipe, &values).unwrap();
        let mut input = pipe.as_slice();
        for _ in 0..2 {
            let back: Vec<f64> = read_frame(&mut input).unwrap().unwrap();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back), bits(&values));
        }
        assert!(read_frame::<Vec<f64>>(&mut input).unwrap().is_none());
        let cut = &pipe[..pipe.len() / 2 - 1];
        assert!(
            read_frame::<Vec<f64>>(&mut &cut[..]).is_err(),
            "a frame cut short"
        );
    }
}

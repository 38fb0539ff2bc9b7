//! The daemon (`endorm serve`): HTTP/1.1 + JSON over a Unix socket (API.md), and optionally over a
//! loopback TCP port with a bearer token.
//!
//! * [`socket`] — the socket's permissions, stale sockets, a second instance ([`crate::paths`]:
//!   where it lives).
//! * [`registry`] — the served models, each with a worker thread ([`crate::engine::Worker`]).
//! * [`routes`] — one module per family of routes; [`dispatch`] runs their work on a worker;
//!   [`shutdown`] — the daemon's stop and grace period, one handle.
//! * [`reload`] — the config file watch; [`middleware`] — request log, metrics, token.
//! * [`listen`] — the accept loop: connection cap, header/body/idle timeouts, requests in flight
//!   for shutdown (docs/RELIABILITY.md); [`client`] — who a request comes from, for the fair queue.
//!
//! The server never touches llama.cpp: models, tokens and scores come from [`crate::engine`].

mod body;
mod client;
mod dispatch;
mod error;
mod listen;
mod metrics;
mod middleware;
mod registry;
mod reload;
mod routes;
mod shutdown;
pub mod socket;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;

use crate::catalog;
use crate::config::{check_listen, Auth, Config, ConfigError, Overrides};
use crate::engine::WorkerState;
use crate::paths;
use metrics::Metrics;
use middleware::Token;
use registry::Registry;
use shutdown::Shutdown;

/// Why the daemon could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The config file is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The socket cannot be used.
    #[error("socket {}: {reason}", path.display())]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another daemon answers on the socket.
    #[error(
        "another endorm daemon is already serving on {} (stop it first, or pass another --socket)",
        path.display()
    )]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// The TCP token file cannot be read or written.
    #[error("token file {}: {reason}", path.display())]
    Token {
        /// The token file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TCP listener cannot be used.
    #[error("{0}")]
    Listen(String),
    /// The server failed while running.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    /// At start-up not one model could be loaded: a daemon that can only answer 500 is stopped,
    /// with each model's reason and the fix.
    #[error("{0}")]
    NoModel(String),
    /// The grace period after SIGTERM/SIGINT ran out with requests in flight (answered 503 where
    /// they still waited for their turn).
    #[error("stopped with {unfinished} requests unfinished at the end of shutdown_grace_secs")]
    Unfinished {
        /// Requests in flight when the grace period ran out.
        unfinished: usize,
    },
}

/// How `endorm serve` was started.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The config file to read and watch.
    pub config: Option<PathBuf>,
    /// Whether a missing config file is an error (it was named with `--config`).
    pub config_required: bool,
    /// `--model PATH` and the per-model flags, over the config (kept across reloads).
    pub overrides: Overrides,
    /// `--socket`, over `$ENDORM_SOCKET` and the config ([`crate::paths::socket`]).
    pub socket: Option<PathBuf>,
    /// `--listen`, over the config.
    pub listen: Option<SocketAddr>,
    /// `--token` (or `ENDORM_TOKEN`, or the contents of `--token-file`), over the token file.
    pub token: Option<String>,
    /// `--token-file`, where `token` was read from (named in the 401 answer).
    pub token_file: Option<PathBuf>,
    /// Shut down when standard input closes (for a parent process that owns the daemon).
    pub exit_on_eof: bool,
}

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// Served models and limits.
    pub registry: Registry,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The config the daemon started with (for settings read at start only).
    pub started: Config,
    /// The daemon's stop and grace period.
    pub shutdown: Arc<Shutdown>,
}

impl App {
    /// Starts serving `config`'s models (and `--model`'s) with fresh metrics.
    pub fn new(config: Config, overrides: Overrides) -> App {
        App {
            registry: Registry::start(&config, overrides),
            metrics: Arc::new(Metrics::default()),
            started: config,
            shutdown: Arc::new(Shutdown::default()),
        }
    }
}

/// Runs the daemon until SIGINT, SIGTERM (or end of input with `exit_on_eof`): then stops
/// accepting, lets in-flight requests finish (up to `shutdown_grace_secs`), removes the socket.
/// [`ServerError::Unfinished`] when the grace period ran out first (those still waiting got 503).
pub async fn serve(options: ServeOptions) -> Result<(), ServerError> {
    let (config, source) = match &options.config {
        Some(path) if path.exists() || options.config_required => {
            (Config::load(path)?, path.clone())
        }
        _ => (Config::default(), PathBuf::from("<command line>")),
    };
    config
        .validate_with(&options.overrides.settings)
        .map_err(|message| ConfigError::Invalid {
            path: source,
            message,
        })?;
    let socket_path = paths::socket(options.socket.as_deref(), config.server.socket.as_deref())
        .ok_or_else(|| {
            ServerError::Listen("no runtime directory for the socket: pass --socket PATH".into())
        })?;
    let listen = options.listen.or(config.server.listen);
    if let Some(address) = listen {
        check_listen(address, config.server.allow_remote).map_err(ServerError::Listen)?;
    }
    let unix = socket::bind(&socket_path)?;
    let ours = socket::Identity::of(&socket_path);
    // The socket is this daemon's now: a lens address beside it is a stopped daemon's.
    remove_lens_files(&socket_path);
    let result = serve_on(unix, &socket_path, listen, config, options).await;
    remove_lens_files(&socket_path);
    socket::remove_if_ours(&socket_path, ours);
    result
}

/// Removes the files `endorm open` reads and writes beside the socket, if there are any.
fn remove_lens_files(socket_path: &Path) {
    for path in [
        paths::lens_url_file(socket_path),
        paths::lens_open_file(socket_path),
    ] {
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), %error, "cannot remove the lens's address");
            }
            _ => {}
        }
    }
}

/// Logs the lens's address on the TCP listener at `address`, token included, as Jupyter hands out
/// its own, and writes it beside the socket for `endorm open`.
fn announce_lens(socket_path: &Path, address: SocketAddr, token: Option<&Token>) {
    let url = crate::web::url(address, token.map(|t| &*t.token));
    tracing::info!(%url, "the lens: open this address in a browser (`endorm open` does)");
    let path = paths::lens_url_file(socket_path);
    if let Err(error) = socket::write_private(&path, &format!("{url}\n")) {
        tracing::warn!(path = %path.display(), %error, "cannot write the lens's address for `endorm open`");
    }
}

async fn serve_on(
    unix: tokio::net::UnixListener,
    socket_path: &Path,
    listen: Option<SocketAddr>,
    config: Config,
    options: ServeOptions,
) -> Result<(), ServerError> {
    let tcp = match listen {
        Some(address) => {
            let token = match config.server.auth {
                Auth::Token => {
                    let (token, source) = tcp_token(&options, &config)?;
                    Some(Token {
                        token: token.into(),
                        source: source.into(),
                    })
                }
                Auth::None => {
                    tracing::warn!(%address, "[server] auth = \"none\": TCP requests need no token; anyone who can connect can use the daemon");
                    None
                }
            };
            if !address.ip().is_loopback() {
                tracing::warn!(%address, "[server] allow_remote = true: listening on an address other hosts can reach");
            }
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| ServerError::Listen(format!("cannot listen on {address}: {e}")))?;
            Some((listener, token))
        }
        None => None,
    };
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let limits = listen::ConnLimits::of(&config.server);
    // Bound already (connections wait in its backlog): said before the models start loading, so
    // the log reads listening, loading, ready.
    tracing::info!(socket = %socket_path.display(), "listening");
    let app = Arc::new(App::new(config, options.overrides.clone()));
    let _watch = options
        .config
        .as_deref()
        .and_then(|path| reload::watch(path, Arc::clone(&app)));

    let shutdown = Arc::clone(&app.shutdown);
    spawn_signal_handler(Arc::clone(&app), options.config.clone());
    if options.exit_on_eof {
        spawn_eof_watch(Arc::clone(&shutdown));
    }
    let drain = Arc::new(listen::Drain::default());
    let mut loops = vec![tokio::spawn(listen::accept_loop(
        unix,
        router(Arc::clone(&app), None),
        limits,
        Arc::clone(&drain),
        shutdown.stopping(),
        "unix",
    ))];
    if let Some((listener, token)) = tcp {
        let address = listener.local_addr()?;
        tracing::info!(%address, token = token.is_some(), "listening on TCP");
        if app.started.server.web {
            announce_lens(socket_path, address, token.as_ref());
        }
        loops.push(tokio::spawn(listen::accept_loop(
            listener,
            router(Arc::clone(&app), token),
            limits,
            Arc::clone(&drain),
            shutdown.stopping(),
            "tcp",
        )));
    }
    // Stopped by a signal, or by start-up finding nothing it can serve.
    let no_model = tokio::select! {
        () = shutdown.stopped() => None,
        failure = startup_failure(&app) => Some(failure),
    };
    if no_model.is_some() {
        shutdown.stop();
    }
    drain.stop();
    tracing::info!(
        grace_secs = grace.as_secs(),
        in_flight = drain.in_flight(),
        "shutting down: no new connections; finishing the requests in flight"
    );
    let mut connections = Vec::new();
    for accept in loops {
        connections.push(
            accept
                .await
                .map_err(|e| std::io::Error::other(format!("an accept loop failed: {e}")))?,
        );
    }
    let outcome = if tokio::time::timeout(grace, drain.idle()).await.is_ok() {
        Ok(())
    } else {
        let left = drain.in_flight();
        // Requests still waiting for their job answer 503 now; a moment for them to be written.
        shutdown.end_grace();
        let _ = tokio::time::timeout(Duration::from_secs(2), drain.idle()).await;
        let refused = shutdown.refused();
        let cut = drain.in_flight();
        tracing::warn!(
            grace_secs = grace.as_secs(),
            unfinished = left,
            answered_503 = refused,
            closed_without_answer = cut,
            "grace period over: requests still in flight were not served"
        );
        Err(ServerError::Unfinished { unfinished: left })
    };
    // Let the last responses be written, then close whatever is left (idle or half-sent requests).
    for mut tasks in connections {
        let flushed = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(3), flushed).await;
        tasks.abort_all();
    }
    if let Some(failure) = no_model {
        return Err(ServerError::NoModel(failure));
    }
    if outcome.is_ok() {
        tracing::info!("stopped: every request in flight finished");
    }
    outcome
}

/// Resolves, with what to tell the user, once the models of the start have finished loading and not
/// one of them could (a missing file, a corrupt one); pends for ever when one did, or when one waits
/// for an RPC worker that is not reachable yet (it is loaded again with backoff, `Lost`). A model
/// that fails later, on a reload, never stops the daemon: the last good one serves.
async fn startup_failure(app: &App) -> String {
    let failures = loop {
        let snapshot = app.registry.snapshot();
        let states: Vec<_> = snapshot.models.values().map(|e| (e, e.state())).collect();
        if states
            .iter()
            .any(|(_, s)| matches!(s, WorkerState::Loading))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if states
            .iter()
            .any(|(_, s)| matches!(s, WorkerState::Ready(_) | WorkerState::Lost(_)))
        {
            return std::future::pending().await;
        }
        break states
            .into_iter()
            .map(|(entry, state)| {
                let reason = match state {
                    WorkerState::Failed(reason) => reason,
                    _ => String::new(),
                };
                (
                    entry.id().to_owned(),
                    entry.spec.worker.path.clone(),
                    reason,
                )
            })
            .collect::<Vec<_>>();
    };
    let mut message = String::from("no model could be loaded, so there is nothing to serve");
    let mut fixes = Vec::new();
    for (id, path, reason) in &failures {
        message.push_str(&format!("\n  model {id} ({}): {reason}", path.display()));
        if !path.exists() {
            if let Some(entry) = catalog::of_path(path) {
                fixes.push(format!("`{}` installs {}", entry.pull_hint(), entry.name));
            }
        }
    }
    fixes.push("`endorm serve --model PATH` serves another GGUF file".to_owned());
    message.push_str(&format!("\nfix: {}", fixes.join("; ")));
    message
}

/// The TCP token: `--token-file`'s or `--token`/`ENDORM_TOKEN`, else the token file (created if
/// missing); and where a client finds it.
fn tcp_token(options: &ServeOptions, config: &Config) -> Result<(String, String), ServerError> {
    if let Some(token) = options.token.clone().filter(|t| !t.is_empty()) {
        let source = match &options.token_file {
            Some(path) => format!("the token file {}", path.display()),
            None => "the daemon's --token or $ENDORM_TOKEN".to_owned(),
        };
        return Ok((token, source));
    }
    let path = config
        .server
        .token_file
        .clone()
        .or_else(paths::default_token_file)
        .ok_or_else(|| {
            ServerError::Listen("no runtime directory for the token file: pass --token".into())
        })?;
    let token = socket::token_from_file(&path)?;
    tracing::info!(path = %path.display(), "TCP bearer token is in this file");
    Ok((token, format!("the token file {}", path.display())))
}

/// SIGTERM and SIGINT stop the daemon; SIGHUP reloads the config file (as a change to it would),
/// and is otherwise harmless: the daemon keeps serving (systemd's `ExecReload`, `kill -HUP`).
fn spawn_signal_handler(app: Arc<App>, config: Option<PathBuf>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM");
                    break;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT");
                    break;
                }
                _ = hup.recv() => match config.as_deref().filter(|p| p.exists()) {
                    Some(path) => {
                        tracing::info!(path = %path.display(), "SIGHUP: reloading the config");
                        let (app, path) = (Arc::clone(&app), path.to_owned());
                        let _ = tokio::task::spawn_blocking(move || reload::reload(&path, &app)).await;
                    }
                    None => tracing::info!("SIGHUP: no config file to reload; serving on as before"),
                },
            }
        }
        app.shutdown.stop();
    });
}

fn spawn_eof_watch(shutdown: Arc<Shutdown>) {
    let spawned = std::thread::Builder::new()
        .name("endorm-stdin".into())
        .spawn(move || {
            use std::io::Read as _;
            let mut buffer = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buffer), Ok(n) if n > 0) {}
            tracing::info!("standard input closed");
            shutdown.stop();
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot watch standard input");
    }
}

/// Every route of API.md ([`crate::api::openapi::ROUTES`] lists them; a test keeps the two
/// equal), and the lens's page unless `[server] web = false`. `token`: require it for the API
/// (the TCP listener).
pub fn router(app: Arc<App>, token: Option<Token>) -> Router {
    use routes::{completions, info, rerank, reward, score, tokenize};
    let mut router = Router::new()
        .route("/health", get(info::health))
        .route("/v1/models", get(info::models))
        .route("/metrics", get(info::metrics))
        .route("/v1/score", post(score::score))
        .route("/v1/rerank", post(rerank::v1))
        .route("/v2/rerank", post(rerank::v2))
        .route("/rerank", post(rerank::any))
        .route("/info", get(rerank::info))
        .route("/v1/completions", post(completions::completions))
        .route("/get_reward", post(reward::get_reward))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/tokenizer_info", get(tokenize::tokenizer_info))
        .route("/openapi.json", get(info::openapi))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(Arc::clone(&app));
    if let Some(token) = token {
        router = router.layer(from_fn_with_state(token, middleware::require_token));
    }
    // The lens's files are static and reveal nothing: merged after the token's layer, they need
    // none (the API calls the page makes do).
    if app.started.server.web {
        router = router.merge(routes::page::router());
    }
    router
        .layer(axum::middleware::from_fn(body::check_head))
        .layer(from_fn_with_state(app, middleware::log_request))
        .layer(DefaultBodyLimit::disable())
}

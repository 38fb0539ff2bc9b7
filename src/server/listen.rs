//! Accepting connections (the Unix socket and TCP alike): at most `max_connections` open per
//! listener (one more is answered 503 and closed), a request head must arrive within
//! `header_timeout_secs` of its first byte, a kept-alive connection idle for `idle_timeout_secs` is
//! closed, and every request in flight is counted so that shutdown waits for requests, not for
//! connections (docs/RELIABILITY.md). Each connection's client ([`Peer`]) is decided when it is
//! accepted and given to each of its requests.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower_service::Service as _;

use super::client::{next_serial, ConnClient, Peer};
use super::error::ApiError;
use crate::config::ServerConfig;

/// How often a connection checks its timeouts and the shutdown flag.
const TICK: Duration = Duration::from_millis(100);
/// How long a closing connection reads what its client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// The connection limits of `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// From the first byte of a request head to its end.
    pub header: Duration,
    /// Between two requests on a kept-alive connection.
    pub idle: Duration,
    /// Open connections per listener.
    pub max_connections: usize,
}

impl ConnLimits {
    /// The limits of `server`.
    pub fn of(server: &ServerConfig) -> ConnLimits {
        ConnLimits {
            header: Duration::from_secs(server.header_timeout_secs),
            idle: Duration::from_secs(server.idle_timeout_secs),
            max_connections: server.max_connections,
        }
    }
}

/// What every listener shares: requests in flight, and whether the daemon is stopping.
#[derive(Debug, Default)]
pub struct Drain {
    in_flight: AtomicUsize,
    stopping: AtomicBool,
}

impl Drain {
    /// Requests whose head arrived and whose response is not yet produced.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Stops every connection after its current request.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight (polled: shutdown only).
    pub async fn idle(&self) {
        while self.in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One connection's state, for its timeouts.
#[derive(Debug)]
struct ConnState {
    in_flight: AtomicUsize,
    /// When the connection last became idle (opened, or a response produced).
    idle_since: Mutex<Instant>,
    /// When the first byte of the next request head arrived, while no request is in flight.
    head_started: Mutex<Option<Instant>>,
    /// When the connection started closing (lingering to read what the client still sends).
    closing: Mutex<Option<Instant>>,
}

impl ConnState {
    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts a request in flight on its connection and in the [`Drain`] until dropped (its response
/// is produced, or its client left).
struct InFlight {
    conn: Arc<ConnState>,
    drain: Arc<Drain>,
}

impl InFlight {
    fn enter(conn: &Arc<ConnState>, drain: &Arc<Drain>) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        *ConnState::lock(&conn.head_started) = None;
        drain.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            conn: Arc::clone(conn),
            drain: Arc::clone(drain),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *ConnState::lock(&self.conn.idle_since) = Instant::now();
        self.conn.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.drain.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connection's stream, noting when a request head starts arriving.
struct Watched<T> {
    io: T,
    state: Arc<ConnState>,
    lingering: Option<Instant>,
    /// The JSON answer written instead of hyper's empty one, and how much of it is written.
    replacing: Option<(Vec<u8>, usize)>,
    /// Nothing has been read from the connection yet.
    fresh: bool,
}

/// The connection preface of an HTTP/2 client (RFC 9113, 3.4) as it starts.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// The answer to an HTTP/2 client: the server's preface (an empty SETTINGS frame), then GOAWAY
/// with `HTTP_1_1_REQUIRED` (0xd), which tells it to use HTTP/1.1 (curl retries on it).
const H2_GOAWAY: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, no parameters
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes
    0, 0, 0, 0, // last stream id 0
    0, 0, 0, 0xd, // HTTP_1_1_REQUIRED
];

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if std::mem::take(&mut self.fresh) && buf.filled()[before..].starts_with(H2_PREFACE) {
            // hyper would close without a word: say "HTTP/1.1 required" in HTTP/2's own terms
            // (26 bytes go out at once on a fresh socket), and end the connection.
            tracing::info!("an HTTP/2 client: answered GOAWAY HTTP_1_1_REQUIRED");
            let _ = Pin::new(&mut self.io).poll_write(cx, &H2_GOAWAY);
            buf.set_filled(before);
            return Poll::Ready(Ok(()));
        }
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && self.state.in_flight.load(Ordering::SeqCst) == 0
        {
            ConnState::lock(&self.state.head_started).get_or_insert_with(Instant::now);
        }
        polled
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    /// Writes through, except hyper's own answer to a head it could not parse (see
    /// [`protocol_error`]), which is replaced by the same status with the JSON error body.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none()
            && this.state.in_flight.load(Ordering::SeqCst) == 0
            && ConnState::lock(&this.state.head_started).is_some()
        {
            if let Some(answer) = protocol_error(buf) {
                this.replacing = Some((answer, 0));
            }
        }
        let Some((answer, written)) = &mut this.replacing else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        while *written < answer.len() {
            let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        // hyper closes the connection after this answer: nothing else is written.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Closes the sending side, then reads and discards what the client still sends (a body
    /// refused before it was read) until it closes too, for at most [`LINGER`]: closing a socket
    /// with unread data resets the connection, and the client could lose the answer.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.lingering.is_none() {
            std::task::ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.lingering = Some(Instant::now());
            *ConnState::lock(&this.state.closing) = Some(Instant::now());
        }
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {}
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Accepts connections on `listener` until `stop` turns true; returns the connection tasks still
/// running (the caller waits for requests in flight through `drain`, then aborts them).
pub async fn accept_loop<L>(
    mut listener: L,
    router: Router,
    limits: ConnLimits,
    drain: Arc<Drain>,
    mut stop: watch::Receiver<bool>,
    name: &'static str,
) -> JoinSet<()>
where
    L: Listener,
    L::Io: Peer,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        if *stop.borrow_and_update() {
            return tasks;
        }
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = stop.changed() => {
                if changed.is_err() {
                    return tasks;
                }
                continue;
            }
        };
        while tasks.try_join_next().is_some() {}
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => {
                let router = router.clone();
                let drain = Arc::clone(&drain);
                let client = ConnClient(io.client(next_serial()));
                tasks.spawn(async move {
                    connection(io, client, router, limits, drain).await;
                    drop(permit);
                });
            }
            Err(_) => {
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(
                        listener = name,
                        max_connections = limits.max_connections,
                        refused,
                        "too many open connections: new ones are answered 503 and closed"
                    );
                }
                tasks.spawn(refuse(io, limits.max_connections));
            }
        }
    }
}

/// Serves one connection until it closes, times out, or (the daemon stopping) its request is done.
async fn connection<I>(
    io: I,
    client: ConnClient,
    router: Router,
    limits: ConnLimits,
    drain: Arc<Drain>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState {
        in_flight: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
        head_started: Mutex::new(None),
        closing: Mutex::new(None),
    });
    let io = TokioIo::new(Watched {
        io,
        state: Arc::clone(&state),
        lingering: None,
        replacing: None,
        fresh: true,
    });
    let service = {
        let state = Arc::clone(&state);
        let drain = Arc::clone(&drain);
        service_fn(move |mut request: hyper::Request<Incoming>| {
            let guard = InFlight::enter(&state, &drain);
            request.extensions_mut().insert(client.clone());
            let mut router = router.clone();
            async move {
                let response = router.call(request).await;
                drop(guard);
                response
            }
        })
    };
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut tick = tokio::time::interval(TICK);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended");
                }
                return;
            }
            _ = tick.tick() => {
                if state.in_flight.load(Ordering::SeqCst) > 0 {
                    if drain.stopping() && !stopping {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    continue;
                }
                let closing = *ConnState::lock(&state.closing);
                if let Some(since) = closing {
                    if since.elapsed() > LINGER {
                        return;
                    }
                    continue;
                }
                // Between requests: a half-sent head or an idle connection never holds shutdown.
                if drain.stopping() {
                    return;
                }
                let head_started = *ConnState::lock(&state.head_started);
                match head_started {
                    Some(started) if started.elapsed() > limits.header => {
                        tracing::info!(timeout_secs = limits.header.as_secs(), "request head not received in time: connection closed");
                        return;
                    }
                    Some(_) => {}
                    None if ConnState::lock(&state.idle_since).elapsed() > limits.idle => {
                        tracing::debug!("idle connection closed");
                        return;
                    }
                    None => {}
                }
            }
        }
    }
}

/// The response to a connection over `max_connections`: 503 with the JSON error body of API.md.
fn refusal(max_connections: usize) -> Vec<u8> {
    closing_answer(&ApiError::unavailable(
        "too_many_connections",
        format!(
            "too many open connections (max_connections = {max_connections} in the config's \
             [server] section): retry shortly"
        ),
        1,
    ))
}

/// hyper answers a request head it cannot parse itself, before any service sees it, with a
/// bodiless response (`content-length: 0`, no `content-type`) and closes the connection. The
/// router never answers so (every error of its has a JSON body), so such a response written while
/// no request is in flight is hyper's: this gives the same status with the JSON error body.
fn protocol_error(response: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(response)
        .ok()?
        .strip_suffix("\r\n\r\n")?;
    let status: u16 = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let head = head.to_ascii_lowercase();
    if status < 400 || !head.contains("\r\ncontent-length: 0") || head.contains("content-type") {
        return None;
    }
    let status = StatusCode::from_u16(status).ok()?;
    let (code, message) = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers_too_large",
            "the request head is too large: more than 100 headers, or over the read buffer",
        ),
        StatusCode::URI_TOO_LONG => ("uri_too_long", "the request target is too long"),
        _ => (
            "malformed_request",
            "the request head could not be parsed (a malformed request line or header, or two \
             different Content-Length headers)",
        ),
    };
    tracing::info!(status = status.as_u16(), code, "request head refused");
    Some(closing_answer(&ApiError::new(status, code, message)))
}

/// `error` as the bytes of a whole response that closes the connection.
fn closing_answer(error: &ApiError) -> Vec<u8> {
    let body = serde_json::to_string(&error.body).unwrap_or_default();
    let retry = error
        .retry_after
        .map(|secs| format!("retry-after: {secs}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {}\r\ncontent-type: application/json\r\n{retry}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        error.status,
        body.len()
    )
    .into_bytes()
}

/// Answers a connection over the limit and closes it; reads what the client sent for a moment
/// first, so that closing does not reset the connection before the client reads the answer.
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, max_connections: usize) {
    let answer = async {
        let mut head = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(200), io.read(&mut head)).await;
        io.write_all(&refusal(max_connections)).await?;
        io.shutdown().await?;
        let mut rest = [0u8; 4096];
        while io.read(&mut rest).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ClientId;

    #[test]
    fn hypers_bodiless_error_answer_gets_the_json_error_body() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 05:00:00 GMT\r\n\r\n";
        let text = String::from_utf8(protocol_error(hyper).expect("replaced")).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "headers_too_large");
        let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let text = String::from_utf8(protocol_error(bad).expect("replaced")).unwrap();
        assert!(text.contains("\"malformed_request\""), "{text}");
    }

    #[test]
    fn responses_of_the_router_are_written_unchanged() {
        let json = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let with_body = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n{}";
        for response in [&json[..], ok, with_body] {
            assert_eq!(protocol_error(response), None);
        }
    }

    #[tokio::test]
    async fn an_http2_client_is_told_to_use_http11() {
        let (mut client, server) = tokio::io::duplex(4096);
        let served = tokio::spawn(connection(
            server,
            ConnClient(ClientId::Connection(1)),
            Router::new(),
            ConnLimits {
                header: Duration::from_secs(5),
                idle: Duration::from_secs(5),
                max_connections: 1,
            },
            Arc::new(Drain::default()),
        ));
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
            .await
            .expect("the connection ends")
            .expect("read");
        assert_eq!(answer, H2_GOAWAY);
        served.await.expect("served");
    }

    #[test]
    fn the_refusal_is_a_503_with_the_json_error_body() {
        let text = String::from_utf8(refusal(7)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_connections = 7"));
    }
}

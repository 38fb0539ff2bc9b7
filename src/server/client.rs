//! Who a request comes from: the unit a model's queue is fair between ([`ClientId`]).
//!
//! Decided once per connection when it is accepted ([`Peer`]): on the Unix socket the peer
//! process (its pid, from `SO_PEERCRED`), so one process is one client however many connections
//! it opens; on TCP the connection itself, since a peer's address and port name one connection
//! anyway. An `X-Endorm-Client: NAME` header overrides both for its request, for clients that want
//! their connections grouped (several TCP connections of one tool) or split (several tools behind
//! one proxy or process). The name is trusted: it is for cooperating clients, like the rest of the
//! queue's fairness.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};

use super::error::ApiError;
use crate::engine::ClientId;

/// The header that names a request's client.
pub const HEADER: &str = "x-endorm-client";

/// The longest client name accepted, in bytes.
pub const MAX_NAME: usize = 128;

/// The client of a connection, put in each of its requests' extensions by the accept loop.
#[derive(Debug, Clone)]
pub struct ConnClient(pub ClientId);

/// A request's client, for handlers to queue its jobs under.
#[derive(Debug, Clone)]
pub struct Client(pub ClientId);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        of(&parts.headers, &parts.extensions).map(Client)
    }
}

/// The client of a request with these headers and extensions: its `X-Endorm-Client`, else its
/// connection's (also named in the request's log line).
pub fn of(headers: &HeaderMap, extensions: &Extensions) -> Result<ClientId, ApiError> {
    if let Some(value) = headers.get(HEADER) {
        return named(value.to_str().ok());
    }
    // A router called without the accept loop (the unit tests): every request one client.
    let connection = extensions.get::<ConnClient>();
    Ok(connection.map_or(ClientId::Connection(0), |c| c.0.clone()))
}

/// The client an `X-Endorm-Client` value names (`None`: not visible ASCII); 400 when it names none.
fn named(value: Option<&str>) -> Result<ClientId, ApiError> {
    match value.map(str::trim) {
        Some(name)
            if !name.is_empty()
                && name.len() <= MAX_NAME
                && name.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(ClientId::Named(name.into()))
        }
        _ => Err(ApiError::bad_request(
            "invalid_client",
            format!(
                "`X-Endorm-Client` must be a name of 1 to {MAX_NAME} visible ASCII characters; \
                 leave it out to be told apart by your process (Unix socket) or connection (TCP)"
            ),
        )),
    }
}

/// A connection that can say which client it serves.
pub trait Peer {
    /// The client of this connection; `serial` numbers it among all connections.
    fn client(&self, serial: u64) -> ClientId;
}

impl Peer for tokio::net::UnixStream {
    fn client(&self, serial: u64) -> ClientId {
        let pid = self.peer_cred().ok().and_then(|cred| cred.pid());
        match pid.and_then(|pid| u32::try_from(pid).ok()) {
            Some(pid) => ClientId::Process(pid),
            // Where the OS does not tell the pid, each connection is a client of its own.
            None => ClientId::Connection(serial),
        }
    }
}

impl Peer for tokio::net::TcpStream {
    fn client(&self, serial: u64) -> ClientId {
        ClientId::Connection(serial)
    }
}

/// A number for a new connection, unique within the daemon's life (0 is never given).
pub fn next_serial() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    async fn client_of(request: Request<()>) -> Result<ClientId, ApiError> {
        let (mut parts, ()) = request.into_parts();
        Client::from_request_parts(&mut parts, &())
            .await
            .map(|c| c.0)
    }

    #[tokio::test]
    async fn the_header_names_the_client_over_the_connection() {
        let with = |header: Option<&str>| {
            let mut request = Request::builder();
            if let Some(value) = header {
                request = request.header(HEADER, value);
            }
            let mut request = request.body(()).unwrap();
            request
                .extensions_mut()
                .insert(ConnClient(ClientId::Process(42)));
            request
        };
        assert_eq!(client_of(with(None)).await.unwrap(), ClientId::Process(42));
        assert_eq!(
            client_of(with(Some(" editor "))).await.unwrap(),
            ClientId::Named("editor".into())
        );
        // Visible ASCII only, as documented: no inner space or tab (HTTP allows both in a value).
        for bad in ["", "  ", &"x".repeat(MAX_NAME + 1), "my editor", "a\tb"] {
            let error = client_of(with(Some(bad))).await.unwrap_err();
            assert_eq!(error.status.as_u16(), 400, "{bad:?}");
            assert_eq!(error.body.error.code, "invalid_client");
        }
        let mut request = Request::new(());
        let value = axum::http::HeaderValue::from_bytes("é".as_bytes()).unwrap();
        request.headers_mut().insert(HEADER, value);
        assert!(client_of(request).await.is_err());
        assert_eq!(
            client_of(Request::new(())).await.unwrap(),
            ClientId::Connection(0)
        );
    }

    #[tokio::test]
    async fn a_unix_peer_is_its_process_and_a_tcp_peer_its_connection() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let me = ClientId::Process(std::process::id());
        // Two connections of one process are one client.
        assert_eq!(ours.client(1), me);
        assert_eq!(theirs.client(2), me);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (first, second) = (
            tokio::net::TcpStream::connect(address).await.unwrap(),
            tokio::net::TcpStream::connect(address).await.unwrap(),
        );
        assert_ne!(first.client(next_serial()), second.client(next_serial()));
    }
}

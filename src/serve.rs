//! Serving: a TLS listener that handshakes concurrently, for hyper and axum.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A TCP listener that completes TLS handshakes before handing connections
/// out, many at a time and each under a timeout, so that a slow or silent
/// client never stalls `accept`.
///
/// With the `axum` feature it is an [`axum::serve::Listener`]; without axum,
/// call [`accept`](Self::accept) in a loop and hand each stream to hyper.
///
/// # Example
///
/// ```no_run
/// # async fn demo(rotator: certrotate::Rotator) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use certrotate::TlsListener;
///
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// let listener = TlsListener::new(tcp, Arc::new(rotator.server_config()?));
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    timeout: Duration,
    max_pending: usize,
}

impl TlsListener {
    /// Wraps a bound TCP listener; handshakes use `config` (typically from
    /// [`Rotator::server_config`](crate::Rotator::server_config)).
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
            timeout: Duration::from_secs(10),
            max_pending: 1024,
        }
    }

    /// Drops a connection whose handshake takes longer than this (default 10 s).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Stops accepting TCP connections while this many handshakes are in
    /// flight (default 1024).
    #[must_use]
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Waits for the next connection whose TLS handshake succeeded. Failed
    /// and timed-out handshakes are logged at DEBUG and skipped; errors from
    /// the TCP listener itself (such as running out of file descriptors) are
    /// logged and retried after a short pause. Cancel-safe.
    pub async fn accept(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        loop {
            let can_accept = self.handshakes.len() < self.max_pending;
            tokio::select! {
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
                accepted = self.tcp.accept(), if can_accept => match accepted {
                    Ok((stream, peer)) => self.start_handshake(stream, peer),
                    Err(e) if is_per_connection(&e) => {
                        tracing::debug!(target: "certrotate", "accept: {e}");
                    }
                    Err(e) => {
                        tracing::warn!(target: "certrotate", "accept failed, retrying in 50 ms: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    fn start_handshake(&mut self, stream: TcpStream, peer: SocketAddr) {
        let handshake = self.acceptor.accept(stream);
        let timeout = self.timeout;
        self.handshakes.spawn(async move {
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(tls)) => Some((tls, peer)),
                Ok(Err(e)) => {
                    tracing::debug!(target: "certrotate", %peer, "TLS handshake failed: {e}");
                    None
                }
                Err(_) => {
                    tracing::debug!(target: "certrotate", %peer, "TLS handshake timed out after {timeout:?}");
                    None
                }
            }
        });
    }
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local_addr", &self.tcp.local_addr().ok())
            .field("pending_handshakes", &self.handshakes.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Errors that concern one connection, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        TlsListener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        TlsListener::local_addr(self)
    }
}

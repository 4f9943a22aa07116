//! Serving: a TLS listener that handshakes concurrently, for hyper and axum.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
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
/// Handshakes in flight are limited twice: in all (default 1024), and per
/// client address (default 64, a sixteenth; an IPv6 client is its /64, which
/// one host usually has whole). A connection over its client's share is
/// closed at once, so one host opening silent connections in a loop cannot
/// keep `accept` closed for everyone else.
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
    handshakes: JoinSet<(Client, Option<TlsStream<TcpStream>>, SocketAddr)>,
    /// Handshakes in flight per client (only clients with some).
    pending: HashMap<Client, usize>,
    timeout: Duration,
    max_pending: usize,
    max_pending_per_client: Option<usize>,
    #[cfg(feature = "acme")]
    on_demand: Option<crate::OnDemand>,
}

/// A TLS handshake under way.
type Handshake =
    std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<TlsStream<TcpStream>>> + Send>>;

/// Who a connection counts against: its IPv4 address, or its IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Client(IpAddr);

impl Client {
    fn of(peer: SocketAddr) -> Self {
        match peer.ip().to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(prefix.into()))
            }
            v4 => Self(v4),
        }
    }
}

impl TlsListener {
    /// Wraps a bound TCP listener; handshakes use `config` (typically from
    /// [`Rotator::server_config`](crate::Rotator::server_config)).
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
            pending: HashMap::new(),
            timeout: Duration::from_secs(10),
            max_pending: 1024,
            max_pending_per_client: None,
            #[cfg(feature = "acme")]
            on_demand: None,
        }
    }

    /// Obtains certificates on demand for the names clients ask for
    /// ([`OnDemand::accept`](crate::OnDemand::accept)): a handshake for a
    /// new name waits for its certificate, up to the on-demand wait on top
    /// of the [`handshake_timeout`](Self::handshake_timeout). The
    /// listener's `config` must serve the on-demand store (its
    /// [`server_config`](crate::OnDemand::server_config)).
    ///
    /// ```no_run
    /// # async fn demo(on_demand: certrotate::OnDemand) -> Result<(), Box<dyn std::error::Error>> {
    /// let tcp = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
    /// let config = std::sync::Arc::new(on_demand.server_config()?);
    /// let listener = certrotate::TlsListener::new(tcp, config).on_demand(on_demand);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "acme")]
    #[must_use]
    pub fn on_demand(mut self, on_demand: crate::OnDemand) -> Self {
        self.on_demand = Some(on_demand);
        self
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

    /// Closes a new connection at once while its client (an IPv4 address,
    /// or an IPv6 /64) already has this many handshakes in flight (default:
    /// a sixteenth of [`max_pending_handshakes`](Self::max_pending_handshakes),
    /// at least 1). Raise it for clients behind one NAT or proxy address.
    ///
    /// ```no_run
    /// # async fn demo(config: std::sync::Arc<rustls::ServerConfig>) -> std::io::Result<()> {
    /// let tcp = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
    /// let listener = certrotate::TlsListener::new(tcp, config)
    ///     .max_pending_handshakes(4096)
    ///     .max_pending_handshakes_per_client(32);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn max_pending_handshakes_per_client(mut self, n: usize) -> Self {
        self.max_pending_per_client = Some(n.max(1));
        self
    }

    fn per_client_limit(&self) -> usize {
        self.max_pending_per_client
            .unwrap_or((self.max_pending / 16).max(1))
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
                    // Handshake tasks neither panic nor get cancelled.
                    let Ok((client, tls, peer)) = done else { continue };
                    self.finished(client);
                    if let Some(tls) = tls {
                        return (tls, peer);
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
        let client = Client::of(peer);
        let limit = self.per_client_limit();
        let pending = self.pending.entry(client).or_default();
        if *pending >= limit {
            tracing::debug!(target: "certrotate", %peer, "closed: {limit} handshakes from this client in flight already");
            return;
        }
        *pending += 1;
        let (handshake, timeout) = self.handshake(stream);
        self.handshakes.spawn(async move {
            let tls = match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(tls)) => Some(tls),
                Ok(Err(e)) => {
                    tracing::debug!(target: "certrotate", %peer, "TLS handshake failed: {e}");
                    None
                }
                Err(_) => {
                    tracing::debug!(target: "certrotate", %peer, "TLS handshake timed out after {timeout:?}");
                    None
                }
            };
            (client, tls, peer)
        });
    }

    /// The handshake of `stream`, and how long it may take.
    fn handshake(&self, stream: TcpStream) -> (Handshake, Duration) {
        #[cfg(feature = "acme")]
        if let Some(on_demand) = &self.on_demand {
            let (on_demand, config) = (on_demand.clone(), self.acceptor.config().clone());
            let timeout = self.timeout.saturating_add(on_demand.wait());
            return (
                Box::pin(async move { on_demand.accept(stream, config).await }),
                timeout,
            );
        }
        (Box::pin(self.acceptor.accept(stream)), self.timeout)
    }

    /// One handshake of `client` is over.
    fn finished(&mut self, client: Client) {
        if let Some(pending) = self.pending.get_mut(&client) {
            *pending -= 1;
            if *pending == 0 {
                self.pending.remove(&client);
            }
        }
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

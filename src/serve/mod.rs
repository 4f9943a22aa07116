//! Serving: a TLS listener that handshakes concurrently, for hyper and axum.

mod admission;
#[cfg(feature = "health")]
mod health;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::server::Acceptor;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

pub use crate::drain::{MaxConnectionAge, StaleConnection};
#[cfg(feature = "acme")]
pub(crate) use admission::client_groups;
use admission::{Admission, Verdict};
#[cfg(feature = "health")]
pub use health::{HealthService, MAX_PAGE};

/// A TCP listener that completes TLS handshakes before handing connections
/// out, many at a time and each under deadlines, so that slow, silent or
/// flooding clients never stall `accept` or shut others out.
///
/// - **Deadlines**: a client has [`client_hello_timeout`](Self::client_hello_timeout)
///   (default 5 s) to send its ClientHello, and
///   [`handshake_timeout`](Self::handshake_timeout) (default 10 s) for the
///   whole handshake; a silent client holds its place no longer than the
///   first.
/// - **Fair shares**: handshakes in flight are limited in all (default
///   1024) and per client group, nested: an IPv4 address (a sixteenth, 64)
///   and its /24 (four times that); an IPv6 /64 (64), its /56 (128) and
///   its /48 (256). A connection over a share is closed at once.
/// - **Shedding**: when all places are taken, a connection from a client
///   with fewer handshakes in flight than the heaviest client takes the
///   place of that client's newest one, which is closed; `accept` never
///   stops. Behind a proxy, [`client_key`](Self::client_key) tells whom a
///   connection is from.
///
/// With the `axum` feature it is an [`axum::serve::Listener`]; without axum,
/// call [`accept`](Self::accept) in a loop and hand each stream to hyper.
/// The configs this crate builds offer `h2` by ALPN: give axum its `http2`
/// feature (or hyper-util's `auto::Builder`), or offer `http/1.1` alone.
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
    config: Arc<ServerConfig>,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    admission: Admission,
    hello_timeout: Duration,
    timeout: Duration,
    max_pending: usize,
    max_pending_per_client: Option<usize>,
    client_key: Option<ClientKey>,
    #[cfg(feature = "acme")]
    on_demand: Option<Arc<dyn IssuesOnDemand>>,
}

/// Tells whom a connection is from, for the per-client shares.
type ClientKey = Arc<dyn Fn(SocketAddr) -> IpAddr + Send + Sync>;

/// What a [`TlsListener`] and a [`HealthService`] need of certificates
/// issued at the handshake, for the names clients ask for
/// ([`OnDemand`](crate::OnDemand) is the one this crate has): how long a
/// handshake may wait for one, the rest of the handshake once its
/// ClientHello is in, and what was done so far.
#[cfg(feature = "acme")]
pub trait IssuesOnDemand: std::fmt::Debug + Send + Sync + 'static {
    /// How long a handshake may wait for its certificate, on top of the
    /// listener's handshake timeout.
    fn wait(&self) -> Duration;

    /// Makes sure a certificate is served for the name the ClientHello in
    /// `start` asks for (new names count against `client`'s budget), then
    /// completes the handshake with `config`; or refuses it.
    fn complete(
        &self,
        start: tokio_rustls::StartHandshake<TcpStream>,
        config: Arc<ServerConfig>,
        client: IpAddr,
    ) -> crate::util::BoxFuture<'static, io::Result<TlsStream<TcpStream>>>;

    /// What was done so far (counts, no names), for health.
    fn stats(&self) -> crate::health::OnDemandStats;
}

impl TlsListener {
    /// Wraps a bound TCP listener; handshakes use `config` (typically from
    /// [`Rotator::server_config`](crate::Rotator::server_config)).
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self {
            tcp,
            config,
            handshakes: JoinSet::new(),
            admission: Admission::new(1024, 64),
            hello_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_pending: 1024,
            max_pending_per_client: None,
            client_key: None,
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
    pub fn on_demand(mut self, on_demand: impl IssuesOnDemand) -> Self {
        self.on_demand = Some(Arc::new(on_demand));
        self
    }

    /// Drops a connection whose handshake takes longer than this (default 10 s).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Drops a connection that has not sent its whole ClientHello after
    /// this long (default 5 s, and never more than the
    /// [`handshake_timeout`](Self::handshake_timeout)): a silent or
    /// trickling client holds its place no longer, whatever waits after
    /// the ClientHello (an on-demand certificate) may take.
    ///
    /// ```no_run
    /// # async fn demo(config: std::sync::Arc<rustls::ServerConfig>) -> std::io::Result<()> {
    /// let tcp = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
    /// let listener = certrotate::TlsListener::new(tcp, config)
    ///     .client_hello_timeout(std::time::Duration::from_secs(2));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn client_hello_timeout(mut self, timeout: Duration) -> Self {
        self.hello_timeout = timeout;
        self
    }

    /// At most this many handshakes in flight (default 1024); past it, a
    /// newcomer lighter than the heaviest client takes the place of that
    /// client's newest handshake, else it is closed.
    #[must_use]
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self.admission = Admission::new(self.max_pending, self.per_client_limit());
        self
    }

    /// The share of one client (an IPv4 address, or an IPv6 /64) of the
    /// handshakes in flight (default: a sixteenth of
    /// [`max_pending_handshakes`](Self::max_pending_handshakes), at least
    /// 1). The groups around it get more: an IPv4 /24 and an IPv6 /48 four
    /// times as much, an IPv6 /56 twice. Raise it for clients behind one
    /// NAT or proxy address (or tell them apart with
    /// [`client_key`](Self::client_key)).
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
        self.admission = Admission::new(self.max_pending, self.per_client_limit());
        self
    }

    /// Whom a connection is from, for the per-client shares (default: its
    /// peer address). Behind an L4 proxy or load balancer that keeps the
    /// client's address elsewhere (a table the proxy fills, an address
    /// translation you know), map the peer to it; the result is grouped
    /// as any address is (IPv4 /32 and /24, IPv6 /64, /56, /48).
    ///
    /// ```no_run
    /// # async fn demo(config: std::sync::Arc<rustls::ServerConfig>) -> std::io::Result<()> {
    /// use std::net::{IpAddr, Ipv6Addr};
    /// let tcp = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
    /// // A NAT64 gateway: the client's IPv6 address is in the port map.
    /// let listener = certrotate::TlsListener::new(tcp, config)
    ///     .client_key(|peer| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, peer.port(), 0, 0, 0, 1)));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn client_key(
        mut self,
        key: impl Fn(SocketAddr) -> IpAddr + Send + Sync + 'static,
    ) -> Self {
        self.client_key = Some(Arc::new(key));
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

    /// Handshakes in flight now.
    pub fn pending_handshakes(&self) -> usize {
        self.admission.in_flight()
    }

    /// Waits for the next connection whose TLS handshake succeeded. Failed
    /// and timed-out handshakes are logged at DEBUG and skipped; errors from
    /// the TCP listener itself (such as running out of file descriptors) are
    /// logged and retried after a short pause. Cancel-safe.
    pub async fn accept(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        loop {
            tokio::select! {
                // Handshakes that ended give their places back before new
                // connections are weighed against them.
                biased;
                Some(done) = self.handshakes.join_next_with_id(), if !self.handshakes.is_empty() => {
                    // Its place is given back however it ended: done,
                    // failed, shed, or panicked.
                    let (id, tls) = match done {
                        Ok((id, tls)) => (id, tls),
                        Err(error) => (error.id(), None),
                    };
                    self.admission.finished(id);
                    if let Some(tls) = tls {
                        return tls;
                    }
                }
                accepted = self.tcp.accept() => match accepted {
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
        let client = match &self.client_key {
            Some(key) => key(peer),
            None => peer.ip(),
        };
        match self.admission.admit(client) {
            Verdict::Refuse(why) => {
                tracing::debug!(target: "certrotate", %peer, "closed: {why}");
                return;
            }
            Verdict::AdmitShedding(newest) => {
                tracing::debug!(target: "certrotate", %peer, "all handshake places taken: the heaviest client's newest handshake is closed");
                newest.abort();
                // Its place is free now (its end, when joined, is a no-op).
                self.admission.finished(newest.id());
            }
            Verdict::Admit => {}
        }
        let handle = self.handshakes.spawn(self.handshake(stream, peer, client));
        self.admission.started(client, handle);
    }

    /// The handshake of `stream`: its ClientHello within the ClientHello
    /// deadline, the rest within the handshake deadline (plus the on-demand
    /// wait, if on).
    #[cfg_attr(not(feature = "acme"), allow(unused_variables))]
    fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        client: IpAddr,
    ) -> impl std::future::Future<Output = Option<(TlsStream<TcpStream>, SocketAddr)>> + Send + 'static
    {
        let config = self.config.clone();
        #[allow(unused_mut)]
        let mut timeout = self.timeout;
        #[cfg(feature = "acme")]
        let on_demand = self.on_demand.clone();
        #[cfg(feature = "acme")]
        if let Some(on_demand) = &on_demand {
            timeout = timeout.saturating_add(on_demand.wait());
        }
        let hello_timeout = self.hello_timeout.min(self.timeout);
        async move {
            let started = Instant::now();
            let hello = LazyConfigAcceptor::new(Acceptor::default(), stream);
            let start = match tokio::time::timeout(hello_timeout, hello).await {
                Ok(Ok(start)) => start,
                Ok(Err(e)) => {
                    tracing::debug!(target: "certrotate", %peer, "TLS handshake failed: {e}");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(target: "certrotate", %peer, "no ClientHello within {hello_timeout:?}");
                    return None;
                }
            };
            #[cfg(feature = "acme")]
            let rest: Handshake = match on_demand {
                Some(on_demand) => on_demand.complete(start, config, client),
                None => Box::pin(start.into_stream(config)),
            };
            #[cfg(not(feature = "acme"))]
            let rest: Handshake = Box::pin(start.into_stream(config));
            match tokio::time::timeout_at(started + timeout, rest).await {
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
        }
    }
}

/// The rest of a handshake, after its ClientHello.
type Handshake =
    std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<TlsStream<TcpStream>>> + Send>>;

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local_addr", &self.tcp.local_addr().ok())
            .field("pending_handshakes", &self.admission.in_flight())
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

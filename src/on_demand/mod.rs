//! [`OnDemand`]: certificates obtained at the first handshake for names the
//! application allows (Caddy's "on-demand TLS").
//!
//! The first handshake for a name the store does not serve asks the
//! [`Decide`] hook, then, within its limits (budgets per client, per window and per registered
//! domain), loads the name's
//! certificate from the [`Storage`](crate::acme::Storage) or orders one, through
//! a [`Rotator`] of its own over an [`AcmeSource`](crate::AcmeSource) for that name alone,
//! filling a slot named after it in the shared [`CertStore`]. The rotator
//! renews it like any other; the policy checks it like any other. The
//! handshake waits before rustls sees it ([`OnDemand::accept`]): the
//! resolver stays synchronous and lock-free.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::acme::AcmeBuilder;
use crate::events::RotationEvent;
use crate::metrics::OnDemandCount;
use crate::policy::Policy;
use crate::resolver::{RotatingResolver, ACME_TLS_ALPN};
use crate::rotator::{RotateError, Rotator};
use crate::source::{CertSource, SourceError};
use crate::store::CertStore;
use crate::sync::lock;

mod decide;
mod limits;

pub use crate::events::OnDemandError;
pub use crate::health::OnDemandStats;
pub use crate::serve::IssuesOnDemand;
pub use decide::{AllowList, Decide};
use limits::{LimitConfig, Limits};

/// Issues certificates at the first handshake for names the application
/// allows, within abuse limits, and keeps them: in the
/// [`Storage`](crate::acme::Storage) for good, in memory for the most recently
/// used [`cache_size`](OnDemandBuilder::cache_size) names.
///
/// - A name the [`Decide`] hook refuses fails its handshake at once (TLS
///   alert `access_denied`), is never ordered, and the refusal is
///   remembered for a while, so a flood of handshakes for it calls the hook
///   once.
/// - The handshakes for a new allowed name wait for its certificate, up to
///   [`wait`](OnDemandBuilder::wait), then fail cleanly; the order goes on.
///   Concurrent first handshakes for a name share one order; replicas
///   sharing a [`Storage`](crate::acme::Storage) (Redis) share one through its
///   renewal lock.
/// - Limits: orders per window, orders in flight, names pending at once,
///   and a backoff per name after a failed order. A client sending random
///   names under an allowed suffix spends at most the window's orders.
/// - Each certificate passes the [`Policy`] (with the requested name as its
///   server name) before it is served, and is renewed by its own
///   [`Rotator`] while it is in memory; an evicted name is loaded back from
///   storage at its next handshake, without an order (renewed then if
///   due).
///
/// Serve with [`TlsListener::on_demand`](crate::TlsListener::on_demand), or
/// call [`accept`](Self::accept) on each connection.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use certrotate::{AcmeSource, OnDemand, TlsListener};
/// use certrotate::acme::FileStorage;
/// use certrotate::on_demand::AllowList;
///
/// let acme = AcmeSource::template("https://acme-v02.api.letsencrypt.org/directory")
///     .contact("mailto:ops@example.com")
///     .storage(FileStorage::new("/var/lib/myapp/acme"));
/// let on_demand = OnDemand::builder(acme, AllowList::new().suffix("customers.example.com")).build();
/// let tcp = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
/// let listener = TlsListener::new(tcp, Arc::new(on_demand.server_config()?)).on_demand(on_demand);
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct OnDemand {
    inner: Arc<Inner>,
}

struct Inner {
    /// What every name's source is built from, with the name as its domain.
    template: AcmeBuilder,
    policy: Policy,
    decide: Box<dyn Decide>,
    store: CertStore,
    resolver: Arc<RotatingResolver>,
    wait: Duration,
    cache_size: usize,
    max_pending: usize,
    max_waiting: usize,
    limits: Mutex<Limits>,
    names: Mutex<Names>,
    counts: Counts,
}

/// How obtaining a pending name ended, once it has (`None` until then).
type Outcome = watch::Receiver<Option<Result<(), OnDemandError>>>;

/// The names being obtained, and those in memory.
#[derive(Default)]
struct Names {
    entries: HashMap<Arc<str>, Entry>,
    pending: usize,
    /// Ticks at each use, for least-recently-used eviction.
    tick: u64,
    /// Evicted names whose rotators are still stopping (how many): an
    /// attempt they finish may fill the slot again, which goes once they
    /// have stopped unless the name came back.
    evicting: HashMap<Arc<str>, usize>,
}

enum Entry {
    /// Being decided, loaded or ordered: the outcome, once known.
    Pending(Outcome),
    /// Served and renewed by `rotator`; last used at tick `used`.
    Cached { rotator: Rotator, used: u64 },
}

#[derive(Default)]
struct Counts {
    waiting: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    orders: AtomicU64,
    failed_orders: AtomicU64,
    evictions: AtomicU64,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
}

/// Configures [`OnDemand`].
#[must_use]
pub struct OnDemandBuilder {
    template: AcmeBuilder,
    decide: Box<dyn Decide>,
    policy: Policy,
    store: Option<CertStore>,
    wait: Duration,
    cache_size: usize,
    max_pending: usize,
    max_waiting: usize,
    limits: LimitConfig,
}

impl std::fmt::Debug for OnDemandBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemandBuilder")
            .field("template", &self.template)
            .field("wait", &self.wait)
            .field("cache_size", &self.cache_size)
            .field("max_pending", &self.max_pending)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl OnDemand {
    /// On-demand certificates from the CA `acme` is set up for (its
    /// directory, storage, challenge, account; its domains are ignored:
    /// each name gets a certificate of its own), for the names `decide`
    /// allows.
    pub fn builder(acme: AcmeBuilder, decide: impl Decide) -> OnDemandBuilder {
        OnDemandBuilder {
            template: acme,
            decide: Box::new(decide),
            policy: Policy::default(),
            store: None,
            wait: Duration::from_secs(30),
            cache_size: 10_000,
            max_pending: 100,
            max_waiting: 256,
            limits: LimitConfig::default(),
        }
    }
}

impl OnDemandBuilder {
    /// Fills this store (default: a new one), so that names configured
    /// otherwise (a [`Rotator`] for the main domain) are served next to the
    /// on-demand ones. Its names are never ordered.
    pub fn store(mut self, store: CertStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Checks every certificate with this policy, its server name set to
    /// the requested name (default: [`Policy::default`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// How long a handshake waits for a new name's certificate before it
    /// fails (default 30 s).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How many on-demand certificates stay in memory (default 10,000): past
    /// it, the least recently used name is dropped (its certificate stays in
    /// storage, and comes back at its next handshake without an order).
    pub fn cache_size(mut self, names: usize) -> Self {
        self.cache_size = names.max(1);
        self
    }

    /// At most `orders` orders start in any `window` (default 250 in 3
    /// hours, below Let's Encrypt's 300 new orders per account per 3
    /// hours); past it, a name that needs an order is refused until the
    /// window slides (checked once the storage said the name is not there:
    /// loads from storage neither count nor are refused).
    pub fn orders_per_window(mut self, orders: usize, window: Duration) -> Self {
        self.limits.orders = limits::Budget::new(orders, window);
        self
    }

    /// At most `orders` orders start in any `window` for names under one
    /// registered domain, by the public suffix list (default 40 a week,
    /// below Let's Encrypt's 50 certificates per registered domain per
    /// week): random names under one domain cannot spend its CA limit.
    ///
    /// ```
    /// # fn demo(builder: certrotate::on_demand::OnDemandBuilder) -> certrotate::on_demand::OnDemandBuilder {
    /// use std::time::Duration;
    /// builder.orders_per_registered_domain(20, Duration::from_secs(7 * 24 * 3600))
    /// # }
    /// ```
    pub fn orders_per_registered_domain(mut self, orders: usize, window: Duration) -> Self {
        self.limits.orders_per_domain = limits::Budget::new(orders, window);
        self
    }

    /// At most `names` names not in memory are started (asked of the hook,
    /// loaded from storage or ordered) in any `window` (default 600 a
    /// minute): what a flood of random names can cost in hook calls and
    /// storage reads.
    pub fn new_names_per_window(mut self, names: usize, window: Duration) -> Self {
        self.limits.new_names = limits::Budget::new(names, window);
        self
    }

    /// At most `names` names not in memory are started for one client (an
    /// IPv4 address, an IPv6 /64, as [`TlsListener`](crate::TlsListener)
    /// tells it) in any `window` (default 20 in 10 minutes): one client
    /// flooding random names is refused, before the hook and the storage
    /// are asked, while others' names are served.
    pub fn new_names_per_client(mut self, names: usize, window: Duration) -> Self {
        self.limits.new_names_per_client = limits::Budget::new(names, window);
        self
    }

    /// At most this many orders at once (default 5).
    pub fn max_orders_in_flight(mut self, orders: usize) -> Self {
        self.limits.orders_in_flight = orders;
        self
    }

    /// At most this many names being decided, loaded or ordered at once
    /// (default 100); more are refused at once.
    pub fn max_pending_names(mut self, names: usize) -> Self {
        self.max_pending = names;
        self
    }

    /// At most this many handshakes wait for certificates at once (default
    /// 256); more are refused at once. Waiting handshakes hold their
    /// connections (and a place among
    /// [`TlsListener`](crate::TlsListener)'s handshakes in flight, 1024 by
    /// default) for up to [`wait`](Self::wait): the cap keeps clients
    /// asking for new names from filling the listener, which would keep out
    /// everyone else, the CA's validator included.
    pub fn max_waiting_handshakes(mut self, handshakes: usize) -> Self {
        self.max_waiting = handshakes;
        self
    }

    /// After a failed order (or load), a name is not tried again for
    /// `min`, doubling with each failure in a row up to `max` (default
    /// 1 min to 1 h), jittered down by up to half like the rotator's
    /// retries, and no sooner than a rate limit of the CA says; its
    /// handshakes are refused meanwhile.
    pub fn failure_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.limits.backoff_min = min;
        self.limits.backoff_max = max.max(min);
        self
    }

    /// How long a name the hook refused is refused without asking it
    /// again (default 1 min), and how many such names are remembered
    /// (default 10,000; past it, the oldest are forgotten early).
    pub fn refusal_ttl(mut self, ttl: Duration, names: usize) -> Self {
        self.limits.refusal_ttl = ttl;
        self.limits.refusals_kept = names.max(1);
        self
    }

    /// Builds it. Call within a tokio runtime (orders run as tasks).
    pub fn build(self) -> OnDemand {
        let store = self.store.unwrap_or_default();
        OnDemand {
            inner: Arc::new(Inner {
                template: self.template,
                policy: self.policy,
                decide: self.decide,
                resolver: store.resolver(),
                store,
                wait: self.wait,
                cache_size: self.cache_size,
                max_pending: self.max_pending,
                max_waiting: self.max_waiting,
                limits: Mutex::new(Limits::new(self.limits)),
                names: Mutex::default(),
                counts: Counts::default(),
            }),
        }
    }
}

impl std::fmt::Debug for OnDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemand")
            .field("template", &self.inner.template)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl crate::serve::IssuesOnDemand for OnDemand {
    fn wait(&self) -> Duration {
        self.inner.wait
    }

    fn complete(
        &self,
        start: tokio_rustls::StartHandshake<tokio::net::TcpStream>,
        config: Arc<ServerConfig>,
        client: IpAddr,
    ) -> crate::util::BoxFuture<'static, io::Result<TlsStream<tokio::net::TcpStream>>> {
        let on_demand = self.clone();
        Box::pin(async move { on_demand.complete(start, config, Some(client)).await })
    }

    fn stats(&self) -> OnDemandStats {
        OnDemand::stats(self)
    }
}

impl OnDemand {
    /// The store the certificates are served from.
    pub fn store(&self) -> &CertStore {
        &self.inner.store
    }

    /// A rustls `ServerConfig` serving the store, like
    /// [`Rotator::server_config`]: safe default protocol versions, no client
    /// auth, the policy's crypto provider, ALPN `h2` and `http/1.1`, and
    /// `acme-tls/1` when the CA validates with TLS-ALPN-01.
    pub fn server_config(&self) -> Result<ServerConfig, rustls::Error> {
        let tls_alpn_01 =
            self.inner.template.answers_tls_alpn_01() || self.inner.store.answers_tls_alpn_01();
        let resolver = self.inner.store.resolver();
        (self.inner.policy).server_config(resolver, None, tls_alpn_01)
    }

    /// Reads the ClientHello on `io`, makes sure a certificate for the name
    /// it asks for is served ([`prepare`](Self::prepare)), then completes
    /// the handshake with `config` (whose resolver must be the store's). A
    /// refused name gets the TLS alert `access_denied` and an error of kind
    /// [`PermissionDenied`](io::ErrorKind::PermissionDenied) carrying the
    /// [`OnDemandError`]. ACME validators (`acme-tls/1`) and clients that
    /// send no name go straight through.
    ///
    /// The wait for a certificate is bounded ([`OnDemandBuilder::wait`]);
    /// reading the ClientHello and the handshake are not: bound them with
    /// a timeout, as [`TlsListener`](crate::TlsListener) does.
    ///
    /// ```no_run
    /// # async fn demo(on_demand: certrotate::OnDemand) -> std::io::Result<()> {
    /// use std::{sync::Arc, time::Duration};
    /// let config = Arc::new(on_demand.server_config().map_err(std::io::Error::other)?);
    /// let tcp = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
    /// loop {
    ///     let (stream, _) = tcp.accept().await?;
    ///     let (on_demand, config) = (on_demand.clone(), config.clone());
    ///     tokio::spawn(async move {
    ///         let limit = Duration::from_secs(40);
    ///         if let Ok(Ok(tls)) = tokio::time::timeout(limit, on_demand.accept(stream, config)).await {
    ///             // Hand `tls` to hyper.
    /// #           drop(tls);
    ///         }
    ///     });
    /// }
    /// # }
    /// ```
    pub async fn accept<IO>(&self, io: IO, config: Arc<ServerConfig>) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
        self.complete(start, config, None).await
    }

    /// [`accept`](Self::accept) for a connection from `client` (its address,
    /// or whom a proxy says it is from): new names count against the
    /// client's budget ([`new_names_per_client`](OnDemandBuilder::new_names_per_client)).
    pub async fn accept_from<IO>(
        &self,
        io: IO,
        config: Arc<ServerConfig>,
        client: IpAddr,
    ) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
        self.complete(start, config, Some(client)).await
    }

    /// [`accept_from`](Self::accept_from) once the ClientHello is in: for a
    /// listener that bounds reading it with a deadline of its own.
    pub(crate) async fn complete<IO>(
        &self,
        start: tokio_rustls::StartHandshake<IO>,
        config: Arc<ServerConfig>,
        client: Option<IpAddr>,
    ) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = wanted(&start.client_hello());
        let Some(name) = name else {
            return start.into_stream(config).await;
        };
        match self.prepare_for(&name, client).await {
            Ok(()) => start.into_stream(config).await,
            Err(error) => {
                // No certificate resolved: rustls sends `access_denied`.
                let mut refusing = (*config).clone();
                refusing.cert_resolver = Arc::new(Refuse);
                let _ = start.into_stream(Arc::new(refusing)).await;
                Err(io::Error::new(io::ErrorKind::PermissionDenied, error))
            }
        }
    }

    /// Makes sure the store serves a certificate for `name` (as rustls
    /// gives it: lowercase): at once if it does, else after asking the hook
    /// and loading or ordering one, waiting up to
    /// [`wait`](OnDemandBuilder::wait). For servers that read the
    /// ClientHello themselves (rustls's `Acceptor`).
    pub async fn prepare(&self, name: &str) -> Result<(), OnDemandError> {
        self.prepare_for(name, None).await
    }

    /// [`prepare`](Self::prepare) for a handshake from `client`, whose new
    /// names count against its budget (`None`: no client budget).
    pub async fn prepare_for(
        &self,
        name: &str,
        client: Option<IpAddr>,
    ) -> Result<(), OnDemandError> {
        let prepared = self.prepared(name, client).await;
        if let Err(error) = &prepared {
            self.refused(name, error);
        }
        prepared
    }

    async fn prepared(&self, name: &str, client: Option<IpAddr>) -> Result<(), OnDemandError> {
        let inner = &self.inner;
        let (started, stopping) = {
            let mut names = lock(&inner.names);
            names.tick += 1;
            let tick = names.tick;
            // Whether a name is served, only the resolver knows (asked under
            // the lock: a name settles under it); the names here are what
            // this issuer is obtaining, and the rotators it runs.
            let served = inner.resolver.claims(name);
            match (names.entries.get_mut(name), served) {
                (Some(Entry::Pending(outcome)), _) => (Ok((Some(outcome.clone()), None)), None),
                (Some(Entry::Cached { used, .. }), true) => {
                    *used = tick;
                    (Ok((None, None)), None)
                }
                // Served otherwise (an evicted name's slot is gone at once).
                (None, true) => (Ok((None, None)), None),
                // Its slot was removed from the store: obtained again, and
                // its rotator stopped whether or not that may start.
                (Some(Entry::Cached { .. }), false) => {
                    let stopping = self.evict(&mut names, name);
                    let started = self.start(&mut names, name, client);
                    (started.map(|(o, s)| (Some(o), Some(s))), stopping)
                }
                (None, false) => {
                    let started = self.start(&mut names, name, client);
                    (started.map(|(o, s)| (Some(o), Some(s))), None)
                }
            }
        };
        if let Some((name, rotator)) = stopping {
            self.stop(name, rotator);
        }
        let (pending, settling) = started?;
        // Spawned once the names are unlocked: a runtime that is stopping
        // drops the task at once, and its guard settles the name, which
        // locks the names.
        if let Some(settling) = settling {
            tokio::spawn(settling.run());
        }
        match pending {
            None => {
                inner.counts.hits.fetch_add(1, Ordering::Relaxed);
                inner.store.events().on_demand(OnDemandCount::Hit);
                Ok(())
            }
            Some(outcome) => self.wait_for(name, outcome).await,
        }
    }

    /// `name` is not served: refused, or pending from now on, with what
    /// obtains it (to spawn).
    fn start(
        &self,
        names: &mut Names,
        name: &str,
        client: Option<IpAddr>,
    ) -> Result<(Outcome, Settling), OnDemandError> {
        let inner = &self.inner;
        let (tx, rx) = watch::channel(None);
        let name = checked(name)?;
        {
            let now = Instant::now();
            let mut limits = lock(&inner.limits);
            if limits.refused_recently(&name, now) {
                return Err(OnDemandError::NotAllowed(name.to_string()));
            }
            limits.check_backoff(&name, now)?;
            if names.pending >= inner.max_pending {
                return Err(OnDemandError::TooManyPending {
                    limit: inner.max_pending,
                });
            }
            limits.start_name(client, now)?;
        }
        names.pending += 1;
        names
            .entries
            .insert(name.clone(), Entry::Pending(rx.clone()));
        inner.counts.misses.fetch_add(1, Ordering::Relaxed);
        inner.store.events().on_demand(OnDemandCount::Miss);
        let settling = Settling {
            on_demand: self.clone(),
            inherits_slot: names.evicting.contains_key(&name),
            name: Some(name),
            outcome: tx,
        };
        Ok((rx, settling))
    }

    /// Waits (within the limit) for the outcome of obtaining `name`.
    async fn wait_for(&self, name: &str, mut outcome: Outcome) -> Result<(), OnDemandError> {
        let counts = &self.inner.counts;
        let events = self.inner.store.events();
        let limit = self.inner.max_waiting;
        let claimed = counts
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            });
        let Ok(waiting) = claimed.map(|n| n + 1) else {
            return Err(OnDemandError::TooManyWaiting { limit });
        };
        events.on_demand(OnDemandCount::Waiting(waiting));
        // Given back however the wait ends: a handshake cancelled inside it
        // (the listener's timeout, a client gone) included.
        let _place = WaitingPlace(self);
        let wait = self.inner.wait;
        let waited = tokio::time::timeout(wait, outcome.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(done)) => done.clone().expect("waited for it"),
            // The sender went without an outcome: the runtime is stopping.
            Ok(Err(_)) => Err(OnDemandError::Aborted {
                name: name.to_owned(),
            }),
            Err(_) => Err(OnDemandError::TimedOut {
                name: name.to_owned(),
                waited: wait,
            }),
        }
    }

    /// Asks the hook, then loads or orders `name`'s certificate under a
    /// rotator of its own. The places it takes (an order in flight) are
    /// given back however it ends, a panic included.
    async fn obtain(&self, name: &Arc<str>) -> Result<Rotator, OnDemandError> {
        let inner = &self.inner;
        // A hook that hangs must not hold a pending place for ever.
        let allowed = tokio::time::timeout(inner.wait, inner.decide.allow(name)).await;
        match allowed {
            Ok(true) => {}
            Ok(false) => {
                lock(&inner.limits).remember_refusal(name, Instant::now());
                return Err(OnDemandError::NotAllowed(name.to_string()));
            }
            Err(_) => {
                return Err(OnDemandError::TimedOut {
                    name: name.to_string(),
                    waited: inner.wait,
                })
            }
        }
        let source = inner.template.build_for(name);
        // A storage that never answers must not hold the name pending for
        // ever: its look is one ACME step.
        let step = inner.template.step_timeout();
        let Ok(at_hand) = tokio::time::timeout(step, source.at_hand()).await else {
            let reason = format!("the storage did not answer within {step:?}");
            return Err(OnDemandError::Failed {
                name: name.to_string(),
                error: SourceError::unavailable(source.describe(), reason),
            });
        };
        let ordering = !at_hand;
        let order_place = match ordering {
            true => {
                lock(&inner.limits).start_order(name, Instant::now())?;
                Some(OrderPlace(self))
            }
            false => None,
        };
        let started = Rotator::builder(source, inner.policy.for_dns_name(name))
            .store(inner.store.clone())
            .slot(&**name)
            .start()
            .await;
        let counts = &inner.counts;
        {
            // A failed load backs off too: its handshakes would otherwise
            // each read and check the stored certificate again.
            drop(order_place);
            let mut limits = lock(&inner.limits);
            match &started {
                Ok(_) => limits.succeeded(name),
                Err(RotateError::Source(error)) => {
                    limits.failed(name, error.retry_after(), Instant::now())
                }
                Err(_) => limits.failed(name, None, Instant::now()),
            }
        }
        if ordering {
            let ok = started.is_ok();
            let count = if ok {
                &counts.orders
            } else {
                &counts.failed_orders
            };
            count.fetch_add(1, Ordering::Relaxed);
            inner.store.events().on_demand(OnDemandCount::Order { ok });
        } else if started.is_ok() {
            counts.loads.fetch_add(1, Ordering::Relaxed);
            inner.store.events().on_demand(OnDemandCount::Load);
        }
        started.map_err(|error| {
            inner.store.remove(name);
            let name = name.to_string();
            match error {
                RotateError::Source(error) => OnDemandError::Failed { name, error },
                RotateError::Refused(error) => OnDemandError::Refused {
                    name,
                    error: Box::new(error),
                },
                RotateError::Stopped => OnDemandError::Aborted { name },
            }
        })
    }

    /// Records how obtaining `name` ended and tells its waiters; evicts the
    /// least recently used name if memory is full.
    ///
    /// An evicted name's slot goes at once: asked again, the name is
    /// loaded afresh. Its rotator may still be in an attempt, which can
    /// fill the slot again; once it has stopped, the slot goes unless the
    /// name came back. `inherits_slot`: the name came back while its old
    /// rotator was stopping; if obtaining it failed, what that rotator left
    /// in the slot goes now.
    fn settle(
        &self,
        name: Arc<str>,
        obtained: Result<Rotator, OnDemandError>,
        inherits_slot: bool,
        outcome: &watch::Sender<Option<Result<(), OnDemandError>>>,
    ) {
        let inner = &self.inner;
        let mut names = lock(&inner.names);
        names.pending -= 1;
        let told = match obtained {
            Ok(rotator) => {
                names.tick += 1;
                let used = names.tick;
                names.entries.insert(name, Entry::Cached { rotator, used });
                Ok(())
            }
            Err(error) => {
                names.entries.remove(&name);
                if inherits_slot {
                    inner.store.remove(&name);
                }
                Err(error)
            }
        };
        let cached = names.entries.len() - names.pending;
        let evicted = (cached > inner.cache_size)
            .then(|| least_recently_used(&names))
            .flatten()
            .and_then(|victim| self.evict(&mut names, &victim));
        drop(names);
        let _ = outcome.send(Some(told));
        if let Some((victim, rotator)) = evicted {
            self.stop(victim, rotator);
            inner.counts.evictions.fetch_add(1, Ordering::Relaxed);
            inner.store.events().on_demand(OnDemandCount::Eviction);
        }
    }

    /// Takes cached `name` out of memory and its slot out of the store, at
    /// once; its rotator, returned, is to [`stop`](Self::stop) once the
    /// names are unlocked.
    fn evict(&self, names: &mut Names, name: &str) -> Option<(Arc<str>, Rotator)> {
        let (name, rotator) = match names.entries.remove_entry(name)? {
            (name, Entry::Cached { rotator, .. }) => (name, rotator),
            (name, pending) => {
                names.entries.insert(name, pending);
                return None;
            }
        };
        *names.evicting.entry(name.clone()).or_default() += 1;
        self.inner.store.remove(&name);
        Some((name, rotator))
    }

    /// Stops an evicted rotator in a task of its own; what it fills in the
    /// slot while it stops goes after it (see [`stopped`](Self::stopped)).
    fn stop(&self, name: Arc<str>, rotator: Rotator) {
        let on_demand = self.clone();
        tokio::spawn(async move {
            rotator.shutdown().await;
            on_demand.stopped(&name);
        });
    }

    /// An evicted rotator of `name` has stopped: once the last has, what
    /// they left in the slot goes, unless the name came back meanwhile (its
    /// new rotator fills the slot).
    fn stopped(&self, name: &Arc<str>) {
        let mut names = lock(&self.inner.names);
        let Some(stopping) = names.evicting.get_mut(name) else {
            return;
        };
        *stopping -= 1;
        if *stopping == 0 {
            names.evicting.remove(name);
            if !names.entries.contains_key(name) {
                self.inner.store.remove(name);
            }
        }
    }

    /// Tells of a refused handshake for `name`.
    fn refused(&self, name: &str, error: &OnDemandError) {
        *lock(&self.inner.counts.refusals)
            .entry(error.reason())
            .or_default() += 1;
        self.inner
            .store
            .events()
            .emit(RotationEvent::OnDemandRefused {
                name: name.into(),
                error: error.clone(),
            });
    }

    /// What on-demand issuance has done so far.
    pub fn stats(&self) -> OnDemandStats {
        let (cached, pending) = {
            let names = lock(&self.inner.names);
            (names.entries.len() - names.pending, names.pending)
        };
        let counts = &self.inner.counts;
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        OnDemandStats {
            cached,
            pending,
            waiting: counts.waiting.load(Ordering::Relaxed),
            orders_in_flight: lock(&self.inner.limits).in_flight(),
            hits: read(&counts.hits),
            misses: read(&counts.misses),
            loads: read(&counts.loads),
            orders: read(&counts.orders),
            failed_orders: read(&counts.failed_orders),
            evictions: read(&counts.evictions),
            refusals: lock(&counts.refusals).clone(),
        }
    }

    /// Stops renewing every name in memory (the store keeps serving them).
    pub async fn shutdown(&self) {
        let rotators: Vec<Rotator> = lock(&self.inner.names)
            .entries
            .values()
            .filter_map(|entry| match entry {
                Entry::Cached { rotator, .. } => Some(rotator.clone()),
                Entry::Pending(_) => None,
            })
            .collect();
        for rotator in rotators {
            rotator.shutdown().await;
        }
    }
}

/// A handshake's place among those waiting for a certificate, given back
/// when dropped (however the wait ends: cancelled included).
struct WaitingPlace<'a>(&'a OnDemand);

impl Drop for WaitingPlace<'_> {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        let waiting = inner.counts.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
        inner
            .store
            .events()
            .on_demand(OnDemandCount::Waiting(waiting));
    }
}

/// An order's place among those in flight, given back when dropped.
struct OrderPlace<'a>(&'a OnDemand);

impl Drop for OrderPlace<'_> {
    fn drop(&mut self) {
        lock(&self.0.inner.limits).order_done();
    }
}

/// A name being obtained: settled exactly once, as aborted if nothing
/// settled it before it is dropped, so that its pending place is never
/// lost.
struct Settling {
    on_demand: OnDemand,
    /// Asked again while its evicted slot still served.
    inherits_slot: bool,
    /// `None` once settled.
    name: Option<Arc<str>>,
    outcome: watch::Sender<Option<Result<(), OnDemandError>>>,
}

impl Settling {
    /// Obtains the name, in a task of its own so that a panic (in the hook,
    /// say) still settles it; dropped before it could (the runtime
    /// stopping), the guard settles it.
    async fn run(self) {
        let Some(name) = self.name.clone() else {
            return;
        };
        let on_demand = self.on_demand.clone();
        let obtained = tokio::spawn(async move { on_demand.obtain(&name).await }).await;
        self.settle(obtained.ok());
    }

    /// Settles with what obtaining gave (`None`: it panicked).
    fn settle(mut self, obtained: Option<Result<Rotator, OnDemandError>>) {
        if let Some(name) = self.name.take() {
            let obtained = obtained.unwrap_or_else(|| {
                Err(OnDemandError::Aborted {
                    name: name.to_string(),
                })
            });
            self.on_demand
                .settle(name, obtained, self.inherits_slot, &self.outcome);
        }
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let aborted = Err(OnDemandError::Aborted {
                name: name.to_string(),
            });
            self.on_demand
                .settle(name, aborted, self.inherits_slot, &self.outcome);
        }
    }
}

/// The name a ClientHello asks a certificate for on demand: none for ACME
/// validators (their challenge certificate is served as it is) and clients
/// that send no name.
fn wanted(hello: &ClientHello<'_>) -> Option<String> {
    let validating = hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
    (!validating).then(|| hello.server_name().map(str::to_owned))?
}

/// `name`, if a certificate can be ordered for it: a DNS name of at most
/// 253 characters, lowercase, with no wildcard and at least two labels.
fn checked(name: &str) -> Result<Arc<str>, OnDemandError> {
    let invalid = || OnDemandError::InvalidName(name.chars().take(256).collect());
    let plain = name.len() <= 253
        && name.contains('.')
        && !name.ends_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !plain {
        return Err(invalid());
    }
    match rustls::pki_types::ServerName::try_from(name) {
        Ok(rustls::pki_types::ServerName::DnsName(_)) => Ok(name.into()),
        _ => Err(invalid()),
    }
}

/// The cached name used longest ago.
fn least_recently_used(names: &Names) -> Option<Arc<str>> {
    names
        .entries
        .iter()
        .filter_map(|(name, entry)| match entry {
            Entry::Cached { used, .. } => Some((*used, name)),
            Entry::Pending(_) => None,
        })
        .min_by_key(|(used, _)| *used)
        .map(|(_, name)| name.clone())
}

/// Resolves no certificate: rustls then fails the handshake with the alert
/// `access_denied`.
#[derive(Debug)]
struct Refuse;

impl ResolvesServerCert for Refuse {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::StaticSource;
    use crate::{AcmeSource, CertBundle};

    const A: &str = "a.on-demand.example";
    const B: &str = "b.on-demand.example";

    /// An on-demand issuer keeping `cache_size` names in memory, whose hook
    /// allows none (nothing is ordered: names are put in by hand).
    fn on_demand(cache_size: usize) -> OnDemand {
        let acme = AcmeSource::template("https://acme.invalid/directory");
        OnDemand::builder(acme, AllowList::new())
            .cache_size(cache_size)
            .build()
    }

    fn bundle(name: &str) -> CertBundle {
        let ck = rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
        let key = ck.signing_key.serialize_pem();
        CertBundle::from_pem(ck.cert.pem().as_bytes(), key.as_bytes()).unwrap()
    }

    /// Fills `slot` of `on_demand`'s store with a certificate for `name`,
    /// as a rotator would.
    fn fill(on_demand: &OnDemand, slot: &str, name: &str) {
        let valid = Policy::default()
            .validate(&bundle(name), std::time::SystemTime::now())
            .unwrap();
        let renew_at = valid.info.renewal_time();
        on_demand.store().install(slot, valid, renew_at);
    }

    /// Settles `name` as obtained by a rotator of its own, as `obtain` would.
    async fn obtained(on_demand: &OnDemand, name: &str) {
        let rotator = Rotator::builder(StaticSource::new(bundle(name)), Policy::default())
            .store(on_demand.store().clone())
            .slot(name)
            .start()
            .await
            .unwrap();
        let (outcome, _) = watch::channel(None);
        lock(&on_demand.inner.names).pending += 1;
        on_demand.settle(name.into(), Ok(rotator), false, &outcome);
    }

    fn stopping(on_demand: &OnDemand, name: &str) -> Option<usize> {
        lock(&on_demand.inner.names).evicting.get(name).copied()
    }

    /// An evicted name stops being served at once (asked again, it is
    /// obtained afresh, not answered by a slot about to go), and the count
    /// of its stopping rotators goes back to nothing once it has stopped.
    #[tokio::test]
    async fn an_evicted_name_is_unserved_at_once_and_its_rotator_stops() {
        let on_demand = on_demand(1);
        obtained(&on_demand, A).await;
        obtained(&on_demand, B).await;
        assert!(on_demand.store().current(A).is_none());
        assert!(on_demand.store().current(B).is_some());
        assert_eq!(stopping(&on_demand, A), Some(1));
        let error = on_demand.prepare(A).await.unwrap_err();
        assert!(matches!(error, OnDemandError::NotAllowed(_)), "{error}");
        let stats = on_demand.stats();
        assert_eq!((stats.hits, stats.misses, stats.evictions), (0, 1, 1));
        for _ in 0..100 {
            if stopping(&on_demand, A).is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stopping(&on_demand, A), None);
        assert!(on_demand.store().current(A).is_none());
    }

    /// What an evicted rotator left in the slot while stopping goes once
    /// the last one has stopped, unless the name came back.
    #[tokio::test]
    async fn what_stopping_rotators_leave_goes_once_the_last_stops() {
        let on_demand = on_demand(1);
        lock(&on_demand.inner.names).evicting.insert(A.into(), 2);
        fill(&on_demand, A, A);
        on_demand.stopped(&A.into());
        assert!(on_demand.store().current(A).is_some(), "one still stopping");
        on_demand.stopped(&A.into());
        assert!(on_demand.store().current(A).is_none());
        assert_eq!(stopping(&on_demand, A), None);

        // Back (pending) by the time its old rotator stopped: the slot is
        // the new rotator's.
        lock(&on_demand.inner.names).evicting.insert(A.into(), 1);
        fill(&on_demand, A, A);
        let (_, pending) = watch::channel(None);
        let entry = Entry::Pending(pending);
        lock(&on_demand.inner.names).entries.insert(A.into(), entry);
        on_demand.stopped(&A.into());
        assert!(on_demand.store().current(A).is_some());
    }

    /// A name asked again while its old rotator stops, and refused: what
    /// that rotator left in the slot meanwhile goes with the refusal.
    #[tokio::test]
    async fn a_name_refused_while_its_old_rotator_stops_leaves_no_slot() {
        let filled = Arc::new(std::sync::OnceLock::<OnDemand>::new());
        let hook = {
            let filled = filled.clone();
            // The old rotator fills the slot while the hook is asked.
            move |name: String| {
                fill(filled.get().unwrap(), &name, &name);
                async { false }
            }
        };
        let acme = AcmeSource::template("https://acme.invalid/directory");
        let on_demand = OnDemand::builder(acme, hook).build();
        let _ = filled.set(on_demand.clone());
        lock(&on_demand.inner.names).evicting.insert(A.into(), 1);
        let error = on_demand.prepare(A).await.unwrap_err();
        assert!(matches!(error, OnDemandError::NotAllowed(_)), "{error}");
        assert!(on_demand.store().current(A).is_none());
    }

    /// Whether a name is served is the resolver's answer: a name in memory
    /// whose slot was removed from the store is obtained again (here: asked
    /// of the hook, which refuses), and its old rotator stopped.
    #[tokio::test]
    async fn a_cached_name_whose_slot_was_removed_is_obtained_again() {
        let on_demand = on_demand(2);
        obtained(&on_demand, A).await;
        on_demand.prepare(A).await.unwrap();
        assert!(on_demand.store().remove(A));
        let error = on_demand.prepare(A).await.unwrap_err();
        assert!(matches!(error, OnDemandError::NotAllowed(_)), "{error}");
        let stats = on_demand.stats();
        assert_eq!((stats.hits, stats.misses, stats.cached), (1, 1, 0));
        for _ in 0..100 {
            if stopping(&on_demand, A).is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stopping(&on_demand, A), None);
    }

    /// A cached name whose slot was removed, and whose restart is refused
    /// (remembered as refused), still has its old rotator stopped: nothing
    /// keeps renewing a slot no entry accounts for.
    #[tokio::test]
    async fn a_refused_restart_still_stops_the_old_rotator() {
        let on_demand = on_demand(2);
        obtained(&on_demand, A).await;
        let now = Instant::now();
        lock(&on_demand.inner.limits).remember_refusal(&Arc::from(A), now);
        assert!(on_demand.store().remove(A));
        let error = on_demand.prepare(A).await.unwrap_err();
        assert!(matches!(error, OnDemandError::NotAllowed(_)), "{error}");
        for _ in 0..100 {
            if stopping(&on_demand, A).is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stopping(&on_demand, A), None);
        assert!(on_demand.store().current(A).is_none());
    }

    /// A name another slot serves (an operator's wildcard) stays served
    /// while the name's own evicted rotator stops.
    #[tokio::test]
    async fn a_name_served_by_another_slot_is_served_during_its_eviction() {
        let on_demand = on_demand(1);
        fill(&on_demand, "wildcard", "*.on-demand.example");
        lock(&on_demand.inner.names).evicting.insert(A.into(), 1);
        on_demand.prepare(A).await.unwrap();
        assert_eq!(on_demand.stats().hits, 1);
    }

    #[test]
    fn only_plain_dns_names_can_be_ordered() {
        for good in ["a.example", "xn--bcher-kva.example", "a-b.c.example"] {
            assert!(checked(good).is_ok(), "{good}");
        }
        let long = format!("{}.example", "a".repeat(250));
        for bad in [
            "localhost",
            "*.example",
            "A.example",
            "a.example.",
            "a_b.example",
            "127.0.0.1",
            "a..example",
            "-a.example",
            long.as_str(),
        ] {
            assert!(
                matches!(checked(bad), Err(OnDemandError::InvalidName(_))),
                "{bad}"
            );
        }
    }
}

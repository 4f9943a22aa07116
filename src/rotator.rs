//! [`Rotator`]: the task that keeps one store slot fresh from one source.
//!
//! It waits for the first of: the source saying it changed, the serving
//! certificate reaching its renewal time, a manual trigger, a retry after a
//! failure. Then it fetches a candidate, validates it against the policy on a
//! blocking thread (never on a handshake), and swaps it in only if it passed.
//! Failures are retried with capped exponential backoff and jitter while the
//! last good certificate keeps serving.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::bundle::{CertBundle, CertInfo};
use crate::events::{RotationEvent, Trigger};
use crate::health::{AlertLevel, HealthSnapshot};
use crate::mark::HighWaterMark;
use crate::metrics::Outcome;
use crate::policy::{Policy, ValidationError};
use crate::renewal;
use crate::resolver::{RotatingResolver, ACME_TLS_ALPN};
use crate::source::{CertSource, SourceError, SourceWarning};
use crate::store::{CertStore, RollbackError, DEFAULT_SLOT};

/// How long a source may take to read or record its high-water mark.
const MARK_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest the task sleeps before looking at the wall clock again, so a
/// clock step (NTP, suspend) delays a renewal by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(300);

/// Keeps one [`CertStore`] slot fresh from one [`CertSource`].
///
/// The rotation runs as a tokio task until [`shutdown`](Self::shutdown) or
/// until the runtime stops; dropping the handle does not stop it. A
/// `Rotator` is a handle: cloning it is cheap, and every clone steers the
/// same task (hand one to a health endpoint, keep one for shutdown).
///
/// # Example
///
/// ```no_run
/// # async fn demo(bundle: certrotate::CertBundle) -> Result<(), Box<dyn std::error::Error>> {
/// use certrotate::{Policy, Rotator, StaticSource};
///
/// let policy = Policy::builder().server_name("api.example.com").build()?;
/// let rotator = Rotator::builder(StaticSource::new(bundle), policy).start().await?;
/// let tls = std::sync::Arc::new(rotator.server_config()?);
/// // ... serve with `tls` ...
/// rotator.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Rotator {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    store: CertStore,
    slot: Arc<str>,
    policy: Policy,
    /// Whether handshakes must offer ACME's TLS-ALPN-01 protocol.
    tls_alpn_01: bool,
    commands: mpsc::Sender<Command>,
    stop: watch::Sender<bool>,
    /// The task, until a shutdown has waited for it.
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

/// What a successful rotation attempt did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Rotation {
    /// A new certificate went live.
    Rotated {
        /// The certificate serving before, if any.
        old: Option<Arc<CertInfo>>,
        /// The certificate serving now.
        new: Arc<CertInfo>,
    },
    /// The source gave the certificate that is already serving.
    Unchanged(Arc<CertInfo>),
}

/// A rotation attempt failed; the certificate serving before keeps serving.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    /// The source could not produce a candidate.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The candidate failed the policy.
    #[error(transparent)]
    Refused(#[from] ValidationError),
    /// The rotator has been shut down.
    #[error("the rotator has been shut down")]
    Stopped,
}

/// Configures and starts a [`Rotator`].
#[derive(Debug)]
#[must_use]
pub struct RotatorBuilder<S> {
    source: S,
    policy: Policy,
    store: Option<CertStore>,
    slot: String,
    renew_before_fraction: f64,
    jitter: f64,
    retry_min: Duration,
    retry_max: Duration,
    alert_repeat: Duration,
    fetch_timeout: Duration,
    allow_older: bool,
}

impl<S: CertSource> RotatorBuilder<S> {
    /// Rotates a slot of this store (default: a new store of its own). Share
    /// one store between rotators to serve several certificates by SNI.
    pub fn store(mut self, store: CertStore) -> Self {
        self.store = Some(store);
        self
    }

    /// The store slot to fill (default [`DEFAULT_SLOT`]).
    pub fn slot(mut self, slot: impl Into<String>) -> Self {
        self.slot = slot.into();
        self
    }

    /// Renews when this fraction of the certificate's lifetime is left
    /// (default 1/3, as for 90-day certificates renewed 30 days before
    /// expiry), unless the source decides itself
    /// ([`CertSource::renew_at`]). Clamped to `0.01..=0.99`.
    pub fn renew_before_fraction(mut self, fraction: f64) -> Self {
        self.renew_before_fraction = fraction.clamp(0.01, 0.99);
        self
    }

    /// Renews up to this fraction of the renewal window earlier, at random,
    /// so that a fleet does not renew all at once (default 0.1). Clamped to
    /// `0.0..=0.5`. Not applied to a time the source decides.
    pub fn renewal_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 0.5);
        self
    }

    /// Retries a failed attempt after `min`, doubling each time up to `max`,
    /// with jitter (default 1 s to 5 min). While a certificate is serving,
    /// a retry also never waits more than an eighth of its remaining
    /// validity (nor less than `min`): short-lived certificates survive an
    /// outage of a good part of their life.
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min.max(Duration::from_millis(1));
        self.retry_max = max.max(self.retry_min);
        self
    }

    /// While the serving certificate is past its renewal time, repeats its
    /// [`RotationEvent::ExpiryWarning`] (and log line) this often, on top of
    /// one at each escalation of its [`AlertLevel`] (default 1 h, at least
    /// 1 s). A stuck renewal keeps being reported, at a bounded rate.
    pub fn alert_repeat(mut self, every: Duration) -> Self {
        self.alert_repeat = every.max(Duration::from_secs(1));
        self
    }

    /// Gives up on a fetch that takes longer than this (default 10 min): it
    /// fails as [`SourceError::Unavailable`] and is retried with backoff, so
    /// a source that hangs cannot stop the rotator's retries and alerts.
    /// ACME orders finish within their own per-step timeouts; keep this
    /// above the slowest legitimate fetch.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Accepts a certificate older than the newest one served so far, as
    /// the source recorded it (default: refused as a replay, with
    /// [`Refusal::OlderThanServing`](crate::Refusal::OlderThanServing)).
    /// For going back to an older certificate on purpose after a restart;
    /// logged as a warning. While running, prefer
    /// [`Rotator::install_allowing_older`].
    pub fn allow_older(mut self, allow: bool) -> Self {
        if allow {
            tracing::warn!(target: "certrotate", slot = %self.slot, "replay protection is off: certificates older than the newest served are accepted");
        }
        self.allow_older = allow;
        self
    }

    /// Loads and validates the first certificate, then starts rotating.
    ///
    /// Fails if the first candidate cannot be fetched or is refused, so a
    /// server never starts without a good certificate. Must be called within
    /// a tokio runtime.
    pub async fn start(self) -> Result<Rotator, RotateError> {
        let (rotator, mut task) = self.prepare();
        task.attempt(Trigger::Initial, None, false).await?;
        Ok(rotator.run(task))
    }

    /// Starts rotating without waiting for a first certificate: the first
    /// fetch happens in the task and is retried with backoff until it
    /// succeeds. Until then, handshakes on this slot fail.
    pub fn spawn(self) -> Rotator {
        let (rotator, mut task) = self.prepare();
        task.retry_at = Some(Instant::now());
        rotator.run(task)
    }

    /// Installs the certificate the source has at hand, then starts
    /// rotating; the way to start a server whose first certificate may
    /// have to be ordered.
    ///
    /// If the source [has one at hand](CertSource::at_hand) (files, a CA in
    /// the process, a stored ACME certificate after a restart), the first
    /// attempt is made before this returns, so the listener started next
    /// serves it from its first connection. If not (a first ACME order),
    /// it returns at once, like [`spawn`](Self::spawn), and the certificate
    /// arrives from the task. Either way a failure is retried with backoff,
    /// never returned: check [`Rotator::current`] or health.
    ///
    /// ```no_run
    /// # async fn demo(acme: certrotate::AcmeSource, policy: certrotate::Policy) -> std::io::Result<()> {
    /// let rotator = certrotate::Rotator::builder(acme, policy).launch().await;
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
    /// // A restart serves its stored certificate from here on.
    /// # Ok(()) }
    /// ```
    ///
    /// The slot is created when this is called, before the future runs.
    pub fn launch(self) -> impl std::future::Future<Output = Rotator> + Send {
        let (rotator, mut task) = self.prepare();
        async move {
            if task.source.at_hand().await {
                let _ = task.attempt(Trigger::Initial, None, false).await;
            } else {
                task.retry_at = Some(Instant::now());
            }
            rotator.run(task)
        }
    }

    fn prepare(self) -> (Unstarted, Task<S>) {
        let store = self.store.unwrap_or_default();
        let slot: Arc<str> = self.slot.into();
        store.add_slot(&slot);
        self.source.attach(&store);
        let (commands, inbox) = mpsc::channel(16);
        let (stop, stopped) = watch::channel(false);
        let unstarted = Unstarted {
            store: store.clone(),
            slot: slot.clone(),
            policy: self.policy.clone(),
            tls_alpn_01: self.source.answers_tls_alpn_01(),
            commands,
            stop,
        };
        let task = Task {
            source: self.source,
            policy: self.policy,
            store,
            slot,
            renew_before_fraction: self.renew_before_fraction,
            jitter: self.jitter,
            retry_min: self.retry_min,
            retry_max: self.retry_max,
            renew_at: None,
            retry_at: None,
            failures: 0,
            reported: AlertLevel::Ok,
            alert_repeat: self.alert_repeat,
            last_alert: None,
            fetch_timeout: self.fetch_timeout,
            warnings: Vec::new(),
            mark: None,
            allow_older: self.allow_older,
            inbox: Some(inbox),
            stopped,
        };
        (unstarted, task)
    }
}

/// A rotator whose task is not running yet.
struct Unstarted {
    store: CertStore,
    slot: Arc<str>,
    policy: Policy,
    tls_alpn_01: bool,
    commands: mpsc::Sender<Command>,
    stop: watch::Sender<bool>,
}

impl Unstarted {
    fn run<S: CertSource>(self, task: Task<S>) -> Rotator {
        Rotator {
            inner: Arc::new(Handle {
                store: self.store,
                slot: self.slot,
                policy: self.policy,
                tls_alpn_01: self.tls_alpn_01,
                commands: self.commands,
                stop: self.stop,
                task: tokio::sync::Mutex::new(Some(tokio::spawn(task.run()))),
            }),
        }
    }
}

enum Command {
    Rotate(oneshot::Sender<Result<Rotation, RotateError>>),
    Install {
        bundle: CertBundle,
        reply: oneshot::Sender<Result<Rotation, RotateError>>,
    },
}

impl Rotator {
    /// Starts configuring a rotator that takes candidates from `source` and
    /// serves those that pass `policy`.
    pub fn builder<S: CertSource>(source: S, policy: Policy) -> RotatorBuilder<S> {
        RotatorBuilder {
            source,
            policy,
            store: None,
            slot: DEFAULT_SLOT.into(),
            renew_before_fraction: renewal::DEFAULT_FRACTION,
            jitter: 0.1,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            alert_repeat: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(600),
            allow_older: false,
        }
    }

    /// The rustls resolver serving the store this rotator fills.
    pub fn resolver(&self) -> Arc<RotatingResolver> {
        self.inner.store.resolver()
    }

    /// A rustls `ServerConfig` (safe default protocol versions, no client
    /// auth, this rotator's crypto provider) whose certificates follow the
    /// store. ALPN offers `h2` and `http/1.1`, and ACME's `acme-tls/1`
    /// when the source answers TLS-ALPN-01 challenges; change
    /// `alpn_protocols` and other options before wrapping it in an `Arc`.
    pub fn server_config(&self) -> Result<ServerConfig, rustls::Error> {
        self.with_alpn(self.inner.policy.server_config(self.resolver(), None))
    }

    fn with_alpn(
        &self,
        config: Result<ServerConfig, rustls::Error>,
    ) -> Result<ServerConfig, rustls::Error> {
        let mut config = config?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if self.inner.tls_alpn_01 {
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok(config)
    }

    /// Like [`server_config`](Self::server_config), but clients must present
    /// a certificate that verifies against `clients` as it is at each
    /// handshake; sessions are partitioned by its generation, so a session
    /// made under trust that has since changed is not resumed. To use
    /// stateless tickets, set `config.ticketer`, then call
    /// [`TrustStore::partition_sessions`](crate::TrustStore::partition_sessions) on the config again.
    ///
    /// ```no_run
    /// # fn demo(rotator: certrotate::Rotator, ca_pem: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    /// let clients = certrotate::TrustStore::from_pem(ca_pem)?;
    /// let tls = std::sync::Arc::new(rotator.server_config_with_client_auth(&clients)?);
    /// # Ok(()) }
    /// ```
    pub fn server_config_with_client_auth(
        &self,
        clients: &crate::TrustStore,
    ) -> Result<ServerConfig, rustls::Error> {
        let config = self
            .inner
            .policy
            .server_config(self.resolver(), Some(clients));
        self.with_alpn(config)
    }

    /// The store this rotator fills.
    pub fn store(&self) -> &CertStore {
        &self.inner.store
    }

    /// The store slot this rotator fills.
    pub fn slot(&self) -> &str {
        &self.inner.slot
    }

    /// The store's health snapshot.
    pub fn health(&self) -> HealthSnapshot {
        self.inner.store.health()
    }

    /// The certificate serving in this rotator's slot.
    pub fn current(&self) -> Option<Arc<CertInfo>> {
        self.inner.store.current(&self.inner.slot)
    }

    /// Receives every [`RotationEvent`] of the store from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RotationEvent> {
        self.inner.store.subscribe()
    }

    /// Fetches, validates and (if it passes) installs a candidate now, and
    /// says what happened.
    pub async fn rotate_now(&self) -> Result<Rotation, RotateError> {
        self.ask(Command::Rotate).await
    }

    /// Validates and installs `bundle` even if it is older than the
    /// certificate serving: the explicit route around replay protection. All
    /// other checks still apply.
    pub async fn install_allowing_older(
        &self,
        bundle: CertBundle,
    ) -> Result<Rotation, RotateError> {
        self.ask(|reply| Command::Install { bundle, reply }).await
    }

    /// Calls [`rotate_now`](Self::rotate_now) each time the process gets
    /// `SIGHUP`, the conventional "reload your certificates" signal (as in
    /// `kill -HUP <pid>` or `systemctl reload`), until the rotator shuts down.
    /// The outcome of each rotation is in the events and logs as usual.
    ///
    /// Installing the handler replaces `SIGHUP`'s default action
    /// (terminating the process) for the whole process, for good.
    ///
    /// ```no_run
    /// # async fn demo(rotator: certrotate::Rotator) -> std::io::Result<()> {
    /// rotator.rotate_on_sighup()?;
    /// # Ok(()) }
    /// ```
    #[cfg(unix)]
    pub fn rotate_on_sighup(&self) -> std::io::Result<JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};

        let mut hangups = signal(SignalKind::hangup())?;
        let commands = self.inner.commands.clone();
        let slot = self.inner.slot.clone();
        let mut stopped = self.inner.stop.subscribe();
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    hangup = hangups.recv() => if hangup.is_none() { return },
                }
                tracing::info!(target: "certrotate", %slot, "SIGHUP: rotating now");
                if let Err(RotateError::Stopped) = ask(&commands, Command::Rotate).await {
                    return;
                }
            }
        }))
    }

    /// Restores the previous good certificate of this slot at once.
    ///
    /// The store keeps the last [`history`](crate::CertStoreBuilder::history)
    /// good certificates of each slot (default 3: the serving one and two
    /// before it), and skips those that have expired since. Use it when a
    /// certificate that passed every check still turns out wrong in
    /// production (a client that pins the old key, a chain some clients do
    /// not build): it takes effect on the next handshake, emits
    /// [`RotationEvent::RolledBack`], and the next source change or renewal
    /// rotates forward again as usual.
    ///
    /// ```no_run
    /// # fn demo(rotator: certrotate::Rotator) {
    /// match rotator.rollback() {
    ///     Ok(restored) => println!("serving {} again", restored.serial),
    ///     Err(error) => eprintln!("{error}"),
    /// }
    /// # }
    /// ```
    pub fn rollback(&self) -> Result<Arc<CertInfo>, RollbackError> {
        self.inner.store.rollback(&self.inner.slot)
    }

    /// Stops the rotation task and waits for it, from any clone (again
    /// later: at once). The store keeps serving its last certificate.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let mut task = self.inner.task.lock().await;
        if let Some(task) = task.take() {
            let _ = task.await;
        }
    }

    async fn ask(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<Rotation, RotateError>>) -> Command,
    ) -> Result<Rotation, RotateError> {
        ask(&self.inner.commands, command).await
    }
}

/// Sends `command` to the rotation task and waits for its answer.
async fn ask(
    commands: &mpsc::Sender<Command>,
    command: impl FnOnce(oneshot::Sender<Result<Rotation, RotateError>>) -> Command,
) -> Result<Rotation, RotateError> {
    let (reply, answer) = oneshot::channel();
    commands
        .send(command(reply))
        .await
        .map_err(|_| RotateError::Stopped)?;
    answer.await.map_err(|_| RotateError::Stopped)?
}

struct Task<S> {
    source: S,
    policy: Policy,
    store: CertStore,
    slot: Arc<str>,
    renew_before_fraction: f64,
    jitter: f64,
    retry_min: Duration,
    retry_max: Duration,
    /// The serving certificate's renewal time, drawn once per certificate.
    renew_at: Option<(String, SystemTime)>,
    retry_at: Option<Instant>,
    failures: u32,
    reported: AlertLevel,
    alert_repeat: Duration,
    /// When the last expiry warning was emitted.
    last_alert: Option<Instant>,
    fetch_timeout: Duration,
    /// The source's warnings as of its last fetch.
    warnings: Vec<SourceWarning>,
    /// The newest certificate served, as the source recorded it (`None`
    /// until it was asked).
    mark: Option<Option<HighWaterMark>>,
    /// Older certificates than the mark are accepted (logged at start).
    allow_older: bool,
    inbox: Option<mpsc::Receiver<Command>>,
    stopped: watch::Receiver<bool>,
}

impl<S: CertSource> Task<S> {
    async fn run(mut self) {
        loop {
            let now = self.store.clock().now();
            self.check_expiry(now);
            let (wake, due) = self.next_wake(now);
            let command = async {
                match &mut self.inbox {
                    Some(inbox) => inbox.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.stopped.changed() => return,
                command = command => match command {
                    Some(Command::Rotate(reply)) => {
                        let result = self.attempt(Trigger::Manual, None, false).await;
                        let _ = reply.send(result);
                    }
                    Some(Command::Install { bundle, reply }) => {
                        let result = self.attempt(Trigger::Manual, Some(bundle), true).await;
                        let _ = reply.send(result);
                    }
                    // The handle is gone: keep rotating, stop listening.
                    None => self.inbox = None,
                },
                _ = self.source.changed() => {
                    let _ = self.attempt(Trigger::SourceChanged, None, false).await;
                }
                _ = tokio::time::sleep_until(wake) => {
                    if let Some(trigger) = due {
                        let _ = self.attempt(trigger, None, false).await;
                    }
                }
            }
        }
    }

    /// When to wake next, and which attempt is then due (none when waking
    /// only to look at expiry alerts or the clock again).
    fn next_wake(&mut self, now: SystemTime) -> (Instant, Option<Trigger>) {
        let at =
            |t: SystemTime| crate::clock::instant_in(t.duration_since(now).unwrap_or_default());
        let cap = crate::clock::instant_in(MAX_SLEEP);
        let repeat = self.last_alert.map(|t| t + self.alert_repeat);
        let alert = self
            .current()
            .zip(self.renewal_time())
            .and_then(|(c, renew_at)| {
                let change = AlertLevel::next_change(&c, renew_at, now);
                change.map(at).into_iter().chain(repeat).min()
            });
        let (attempt, trigger) = match self.retry_at {
            Some(retry) => (Some(retry), Trigger::Retry),
            None => (self.renewal_time().map(at), Trigger::Schedule),
        };
        match attempt {
            Some(t) if t <= cap && alert.is_none_or(|a| t <= a) => (t, Some(trigger)),
            _ => (alert.unwrap_or(cap).min(cap), None),
        }
    }

    fn current(&self) -> Option<Arc<CertInfo>> {
        self.store.current(&self.slot)
    }

    /// The serving certificate's renewal time, as the source decides it,
    /// else when `renew_before_fraction` of its lifetime is left, minus a
    /// random part of the window (drawn once per certificate). Health's
    /// alert levels are measured against the same time.
    fn renewal_time(&mut self) -> Option<SystemTime> {
        let cert = self.current()?;
        let at = match (self.source.renew_at(&cert), &self.renew_at) {
            (Some(at), _) => at,
            (None, Some((fingerprint, at))) if *fingerprint == cert.fingerprint_sha256 => *at,
            (None, _) => {
                let (fraction, jitter) = (self.renew_before_fraction, self.jitter);
                renewal::at_fraction(&cert, fraction, jitter, fastrand::f64())
            }
        };
        if self.renew_at.as_ref() != Some(&(cert.fingerprint_sha256.clone(), at)) {
            self.renew_at = Some((cert.fingerprint_sha256.clone(), at));
        }
        self.store.set_renew_at(&self.slot, at);
        Some(at)
    }

    /// Emits an expiry warning when the level got worse, and again every
    /// `alert_repeat` while it is not `Ok`.
    fn check_expiry(&mut self, now: SystemTime) {
        let (Some(cert), Some(renew_at)) = (self.current(), self.renewal_time()) else {
            return;
        };
        let level = AlertLevel::at(&cert, now, renew_at);
        self.store.events().serving(&self.slot, &cert, level);
        let repeat_due = self
            .last_alert
            .is_some_and(|t| t + self.alert_repeat <= Instant::now());
        if level > self.reported || (level > AlertLevel::Ok && repeat_due) {
            self.store.events().emit(RotationEvent::ExpiryWarning {
                slot: self.slot.clone(),
                remaining: cert.not_after.duration_since(now).unwrap_or_default(),
                cert,
                level,
            });
            self.last_alert = Some(Instant::now());
        } else if level == AlertLevel::Ok {
            self.last_alert = None;
        }
        self.reported = level;
    }

    /// One rotation attempt; schedules the retry if it failed.
    async fn attempt(
        &mut self,
        trigger: Trigger,
        bundle: Option<CertBundle>,
        allow_older: bool,
    ) -> Result<Rotation, RotateError> {
        let result = self.try_rotate(trigger, bundle, allow_older).await;
        let outcome = match &result {
            Ok(Rotation::Rotated { .. }) => Some(Outcome::Rotated),
            Ok(Rotation::Unchanged(_)) => Some(Outcome::Unchanged),
            Err(RotateError::Refused(error)) => Some(Outcome::Refused(error.reason().code())),
            Err(RotateError::Source(error)) => Some(Outcome::Failed(error.code())),
            Err(RotateError::Stopped) => None,
        };
        if let Some(outcome) = outcome {
            let events = self.store.events();
            events.attempted(&self.slot, self.source.kind(), outcome);
        }
        // Asked after the fetch: the source may have learnt a new time.
        let renewal_due = self
            .renewal_time()
            .is_some_and(|t| t <= self.store.clock().now());
        match &result {
            Ok(Rotation::Rotated { .. }) => self.succeeded(),
            // Nothing newer while renewal is due: look again later, not in a hot loop.
            Ok(Rotation::Unchanged(_)) if renewal_due => self.failed(None),
            Ok(Rotation::Unchanged(_)) => self.succeeded(),
            Err(RotateError::Source(SourceError::RateLimited { retry_after, .. })) => {
                self.failed(Some(*retry_after))
            }
            Err(_) => self.failed(None),
        }
        result
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// Schedules the retry: exponential from `retry_min`, capped at
    /// `retry_max`, no sooner than a source's `retry_after`, and
    /// lifetime-aware above all: never more than an eighth of the serving
    /// certificate's remaining validity (but not under `retry_min`), so a
    /// short-lived certificate gets several attempts before it expires
    /// however long the outage, and retries come sooner as expiry nears.
    fn failed(&mut self, retry_after: Option<Duration>) {
        let exp = self.retry_min.saturating_mul(1u32 << self.failures.min(20));
        let jittered = exp.min(self.retry_max).mul_f64(0.5 + 0.5 * fastrand::f64());
        // A CA or source asking for a longer wait is taken as asking for a day.
        let retry_after = retry_after
            .unwrap_or_default()
            .min(crate::clock::MAX_RETRY_AFTER);
        let mut delay = jittered.max(retry_after);
        if let Some(cert) = self.current() {
            let now = self.store.clock().now();
            let remaining = cert.not_after.duration_since(now).unwrap_or_default();
            delay = delay.min((remaining / 8).max(self.retry_min));
        }
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(crate::clock::instant_in(delay));
        tracing::debug!(target: "certrotate", slot = %self.slot, retry_in = ?delay, failures = self.failures, "rotation will be retried");
    }

    /// Records the source's warnings in health, with an event for each new one.
    fn note_warnings(&mut self) {
        let warnings = self.source.warnings();
        if warnings == self.warnings {
            return;
        }
        self.store.set_warnings(
            &self.slot,
            warnings.iter().map(ToString::to_string).collect(),
        );
        for warning in warnings.iter().filter(|w| !self.warnings.contains(w)) {
            self.store.events().emit(RotationEvent::Warning {
                slot: self.slot.clone(),
                warning: warning.clone(),
            });
        }
        self.warnings = warnings;
    }

    /// The newest certificate served: the serving one, or the source's
    /// record of one newer (read once, at the first attempt).
    async fn newest_served(&mut self, serving: Option<&CertInfo>) -> Option<HighWaterMark> {
        if self.mark.is_none() {
            let recorded = tokio::time::timeout(MARK_TIMEOUT, self.source.high_water_mark())
                .await
                .unwrap_or_default();
            self.mark = Some(recorded);
        }
        let recorded = self.mark.clone().flatten();
        let serving = serving.map(|s| HighWaterMark {
            not_before: s.not_before,
            serial: s.serial.clone(),
        });
        [recorded, serving]
            .into_iter()
            .flatten()
            .max_by_key(|m| m.not_before)
    }

    /// Has the source record `new` if it is the newest certificate served.
    async fn raise_mark(&mut self, new: &CertInfo) {
        let recorded = self.mark.clone().flatten();
        if recorded.is_some_and(|m| m.not_before >= new.not_before) {
            return;
        }
        let mark = HighWaterMark {
            not_before: new.not_before,
            serial: new.serial.clone(),
        };
        self.mark = Some(Some(mark.clone()));
        let recorded = self.source.record_high_water_mark(mark);
        if tokio::time::timeout(MARK_TIMEOUT, recorded).await.is_err() {
            tracing::warn!(target: "certrotate", slot = %self.slot, "the source did not record the newest certificate in time; replay protection is per process until it does");
        }
    }

    async fn try_rotate(
        &mut self,
        trigger: Trigger,
        bundle: Option<CertBundle>,
        allow_older: bool,
    ) -> Result<Rotation, RotateError> {
        let events = self.store.events().clone();
        events.emit(RotationEvent::Attempted {
            slot: self.slot.clone(),
            trigger,
        });
        let candidate = match bundle {
            Some(bundle) => bundle,
            None => {
                let fetched = tokio::time::timeout(self.fetch_timeout, self.source.fetch())
                    .await
                    .unwrap_or_else(|_| {
                        Err(SourceError::unavailable(
                            self.source.describe(),
                            format!(
                                "no answer within {}",
                                crate::clock::human(self.fetch_timeout)
                            ),
                        ))
                    });
                self.note_warnings();
                fetched.inspect_err(|error| {
                    self.store
                        .record_failure(&self.slot, error.code(), error.to_string());
                    events.emit(RotationEvent::SourceFailed {
                        slot: self.slot.clone(),
                        error: error.clone(),
                    });
                })?
            }
        };
        let serving = self.current();
        // Unchanged only if the key is as good as the serving one: the same
        // certificate with a key that does not belong to it (only the key
        // file replaced) is a change, and the policy refuses it.
        if let Some(serving) = serving.as_ref().filter(|s| {
            s.fingerprint_sha256 == candidate.info().fingerprint_sha256 && candidate.key_fits()
        }) {
            self.store.record_success(&self.slot);
            return Ok(Rotation::Unchanged(serving.clone()));
        }
        let policy = self.policy.clone();
        let now = self.store.clock().now();
        let newest = match allow_older || self.allow_older {
            true => None,
            false => self.newest_served(serving.as_deref()).await,
        };
        let verdict = crate::sync::blocking(move || {
            policy.validate_newer_than(&candidate, newest.as_ref(), now)
        })
        .await
        // The runtime is shutting down.
        .map_err(|_| RotateError::Stopped)?;
        match verdict {
            Ok(valid) => {
                let new = valid.info.clone();
                let old = self.store.install(&self.slot, valid);
                self.raise_mark(&new).await;
                Ok(Rotation::Rotated { old, new })
            }
            Err(error) => {
                self.store
                    .record_failure(&self.slot, error.reason().code(), error.to_string());
                events.emit(RotationEvent::Refused {
                    slot: self.slot.clone(),
                    error: Arc::new(error.clone()),
                });
                Err(error.into())
            }
        }
    }
}

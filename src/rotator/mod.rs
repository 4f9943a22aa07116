//! [`Rotator`]: the task that keeps one store slot fresh from one source.
//!
//! It waits for the first of: the source saying it changed, the serving
//! certificate reaching its renewal time, a manual trigger, a retry after a
//! failure. Then it fetches a candidate, validates it against the policy on a
//! blocking thread (never on a handshake), and swaps it in only if it passed.
//! Failures are retried with capped exponential backoff and jitter while the
//! last good certificate keeps serving.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::bundle::{CertBundle, CertInfo};
use crate::danger::Dangerous;
pub use crate::engine::{RotateError, Rotation};
use crate::engine::{Rules, SlotState};
use crate::events::{RotationEvent, Trigger};
use crate::health::HealthSnapshot;
use crate::policy::Policy;
use crate::resolver::RotatingResolver;
use crate::source::{CertSource, Start};
use crate::store::{CertStore, RollbackError, DEFAULT_SLOT};

mod task;
use task::Task;

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
/// use certrotate::{Policy, Rotator};
/// use certrotate::source::StaticSource;
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
    commands: mpsc::Sender<Command>,
    stop: watch::Sender<bool>,
    /// The task, until a shutdown has waited for it.
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Configures and starts a [`Rotator`].
#[derive(Debug)]
#[must_use]
pub struct RotatorBuilder<S> {
    source: S,
    policy: Policy,
    store: Option<CertStore>,
    slot: String,
    rules: Rules,
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
        self.rules.renew_before_fraction = fraction.clamp(0.01, 0.99);
        self
    }

    /// Renews up to this fraction of the renewal window earlier, at random,
    /// so that a fleet does not renew all at once (default 0.1). Clamped to
    /// `0.0..=0.5`. Not applied to a time the source decides.
    pub fn renewal_jitter(mut self, fraction: f64) -> Self {
        self.rules.jitter = fraction.clamp(0.0, 0.5);
        self
    }

    /// Retries a failed attempt after `min`, doubling each time up to `max`,
    /// with jitter (default 1 s to 5 min). While a certificate is serving,
    /// a retry also never waits more than an eighth of its remaining
    /// validity (nor less than `min`): short-lived certificates survive an
    /// outage of a good part of their life.
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.rules.set_retry(min, max);
        self
    }

    /// While the serving certificate is past its renewal time, repeats its
    /// [`RotationEvent::ExpiryWarning`] (and log line) this often, on top of
    /// one at each escalation of its [`AlertLevel`](crate::AlertLevel) (default 1 h, at least
    /// 1 s). A stuck renewal keeps being reported, at a bounded rate.
    pub fn alert_repeat(mut self, every: Duration) -> Self {
        self.rules.alert_repeat = every.max(Duration::from_secs(1));
        self
    }

    /// Gives up on a fetch that takes longer than this (default 10 min): it
    /// fails as [`SourceErrorKind::Unavailable`](crate::source::SourceErrorKind::Unavailable) and is retried with backoff, so
    /// a source that hangs cannot stop the rotator's retries and alerts.
    /// ACME orders finish within their own per-step timeouts; keep this
    /// above the slowest legitimate fetch.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Raises a critical expiry warning when less than `budget` of the
    /// serving certificate's validity is left while renewal keeps failing
    /// (default: none; the critical level then comes with a tenth of the
    /// lifetime left, at least a day). Set it to the longest CA outage you
    /// want to ride out: with 6-day certificates, renewal at two days left
    /// and a 36-hour budget, the alert comes 12 hours into an outage rather
    /// than with 14 hours to go.
    ///
    /// ```
    /// # let source = certrotate::source::StaticSource::empty();
    /// use std::time::Duration;
    /// let rotator = certrotate::Rotator::builder(source, certrotate::Policy::default())
    ///     .outage_budget(Duration::from_secs(36 * 3600));
    /// # drop(rotator);
    /// ```
    pub fn outage_budget(mut self, budget: Duration) -> Self {
        self.rules.outage_budget = Some(budget);
        self
    }

    /// The switches that turn a protection off
    /// ([`Dangerous::allow_older`](crate::danger::Dangerous::allow_older)).
    pub fn dangerous(self) -> Dangerous<Self> {
        Dangerous::new(self)
    }

    /// Loads and validates the first certificate, then starts rotating.
    ///
    /// Fails if the first candidate cannot be fetched or is refused, so a
    /// server never starts without a good certificate. Must be called within
    /// a tokio runtime.
    pub async fn start(self) -> Result<Rotator, RotateError> {
        let (rotator, mut task, _) = self.prepare();
        task.attempt(Trigger::Initial, None, false).await?;
        Ok(rotator.run(task))
    }

    /// Starts rotating without waiting for a first certificate: the first
    /// fetch happens in the task and is retried with backoff until it
    /// succeeds. Until then, handshakes on this slot fail.
    pub fn spawn(self) -> Rotator {
        let (rotator, mut task, _) = self.prepare();
        task.state.retry_at = Some(Instant::now());
        rotator.run(task)
    }

    /// Installs the certificate the source has at hand, then starts
    /// rotating; the way to start a server whose first certificate may
    /// have to be ordered.
    ///
    /// If the source [has one at hand](crate::source::Start) (files, a CA in
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
        let (rotator, mut task, start) = self.prepare();
        async move {
            if start.look().await {
                let _ = task.attempt(Trigger::Initial, None, false).await;
            } else {
                task.state.retry_at = Some(Instant::now());
            }
            rotator.run(task)
        }
    }

    fn prepare(self) -> (Unstarted, Task<S>, Start) {
        let store = self.store.unwrap_or_default();
        let slot: Arc<str> = self.slot.into();
        store.add_slot(&slot);
        if self.allow_older {
            tracing::warn!(target: "certrotate", %slot, "replay protection is off: certificates older than the newest served are accepted");
        }
        let start = self.source.attach(&store);
        let (commands, inbox) = mpsc::channel(16);
        let (stop, stopped) = watch::channel(false);
        let unstarted = Unstarted {
            store: store.clone(),
            slot: slot.clone(),
            policy: self.policy.clone(),
            commands,
            stop,
        };
        let task = Task {
            source: self.source,
            policy: self.policy,
            store,
            slot,
            rules: self.rules,
            state: SlotState::default(),
            next_look: None,
            fetch_timeout: self.fetch_timeout,
            allow_older: self.allow_older,
            inbox: Some(inbox),
            stopped,
        };
        (unstarted, task, start)
    }
}

impl<S: CertSource> Dangerous<RotatorBuilder<S>> {
    /// Accepts a certificate older than the newest one served so far, as
    /// the source recorded it (default: refused as a replay, with
    /// [`Refusal::OlderThanServing`](crate::policy::Refusal::OlderThanServing)).
    /// For going back to an older certificate on purpose after a restart;
    /// logged as a warning when the rotator starts. While running, prefer
    /// [`Rotator::install_allowing_older`].
    pub fn allow_older(self) -> RotatorBuilder<S> {
        let mut builder = self.into_inner();
        builder.allow_older = true;
        builder
    }
}

/// A rotator whose task is not running yet.
struct Unstarted {
    store: CertStore,
    slot: Arc<str>,
    policy: Policy,
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
            rules: Rules::default(),
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
    /// when a source filling the store answers TLS-ALPN-01 challenges; change
    /// `alpn_protocols` and other options before wrapping it in an `Arc`.
    pub fn server_config(&self) -> Result<ServerConfig, rustls::Error> {
        let tls_alpn_01 = self.inner.store.answers_tls_alpn_01();
        (self.inner.policy).server_config(self.resolver(), None, tls_alpn_01)
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
        clients: &crate::mtls::TrustStore,
    ) -> Result<ServerConfig, rustls::Error> {
        let tls_alpn_01 = self.inner.store.answers_tls_alpn_01();
        (self.inner.policy).server_config(self.resolver(), Some(clients), tls_alpn_01)
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
    /// The store keeps the last [`history`](crate::store::CertStoreBuilder::history)
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

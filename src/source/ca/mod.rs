//! [`InternalCa`]: a certificate authority inside the process, issuing
//! short-lived service certificates, with a trust bundle that rolls over to a
//! new CA without breaking any peer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

mod authority;
use authority::{Authority, State};

use super::{CertSource, SourceError};
use crate::bundle::CertBundle;
use crate::clock::{Clock, SystemClock};
use crate::mtls::TrustStore;
use crate::policy::Usage;

/// A certificate authority that issues short-lived leaf certificates, and
/// publishes the [`TrustStore`] that verifies them.
///
/// **Rollover.** [`prepare_rollover`](Self::prepare_rollover) makes the next
/// CA and adds it to the trust bundle before it signs anything, so every
/// verifier learns it first; [`activate`](Self::activate) makes it the
/// signer (every [`CaSource`] issues a new leaf at once); the old CA stays in
/// the bundle until the last leaf it signed has expired, then
/// [`retire_expired`](Self::retire_expired) drops it.
/// [`spawn_rollover`](Self::spawn_rollover) runs that cycle on a schedule.
///
/// Cloning is cheap and every clone is the same CA.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use certrotate::{InternalCa, Policy, Rotator};
/// use certrotate::policy::Usage;
/// use certrotate::source::LeafSpec;
///
/// // Made once and kept in /var/lib/myapp/ca (key file mode 0600).
/// let ca = InternalCa::open("/var/lib/myapp/ca", "myapp internal CA")?;
/// let spec = LeafSpec::new(["api.internal"]).lifetime(Duration::from_secs(3600));
/// let policy = Policy::builder().server_name("api.internal").build()?;
/// let rotator = Rotator::builder(ca.source(spec), policy).start().await?;
/// // Clients must present a certificate from the same CA:
/// let tls = rotator.server_config_with_client_auth(&ca.trust())?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct InternalCa {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    dir: Option<PathBuf>,
    state: Mutex<State>,
    /// What tells the time of issuance, rollover and retirement.
    clock: Mutex<Arc<dyn Clock>>,
    trust: TrustStore,
    /// Bumped at each activation: sources issue from the new CA at once.
    activations: watch::Sender<u64>,
}

/// What [`InternalCa`] could not do.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A CA file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// `"read"`, `"write"` or `"remove"`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: Arc<std::io::Error>,
    },
    /// The CA certificate or key could not be used.
    #[error("the CA certificate or key cannot be used: {0}")]
    Unusable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// A leaf could not be issued.
    #[error("cannot issue a certificate: {0}")]
    Issue(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The trust bundle refused the CA certificates.
    #[error(transparent)]
    Trust(#[from] crate::mtls::TrustError),
    /// Work run off the runtime did not finish (the runtime is shutting
    /// down, or it panicked).
    #[error("the CA's work was interrupted: {0}")]
    Interrupted(#[source] Arc<std::io::Error>),
    /// [`InternalCa::activate`] without a prepared next CA.
    #[error("there is no next CA to activate: call prepare_rollover first")]
    NoNextCa,
}

impl CaError {
    fn unusable(why: impl Into<crate::source_error::BoxError>) -> Self {
        Self::Unusable(Arc::from(why.into()))
    }
}

/// The leaf certificates a [`CaSource`] asks for.
///
/// ```
/// use std::time::Duration;
/// use certrotate::policy::Usage;
/// use certrotate::source::LeafSpec;
///
/// let spec = LeafSpec::new(["orders.internal", "10.0.0.7"])
///     .uri("spiffe://example.org/orders")
///     .lifetime(Duration::from_secs(6 * 3600))
///     .usage(Usage::ServerAndClient);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct LeafSpec {
    names: Vec<String>,
    uris: Vec<String>,
    lifetime: Duration,
    usage: Usage,
    /// How long before issuance it is valid from (default: a tenth of the
    /// lifetime, at most a minute).
    backdate: Option<Duration>,
}

impl LeafSpec {
    /// Leaves for these DNS names and IP addresses (the first is also the
    /// common name), valid 24 hours, for both server and client
    /// authentication.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            names: names.into_iter().map(Into::into).collect(),
            uris: Vec::new(),
            lifetime: Duration::from_secs(24 * 3600),
            usage: Usage::ServerAndClient,
            backdate: None,
        }
    }

    /// Valid from `backdate` before issuance (for a last-resort certificate
    /// that any certificate a CA issues afterwards must be newer than).
    #[cfg_attr(not(feature = "acme"), allow(dead_code))]
    pub(crate) fn backdated(mut self, backdate: Duration) -> Self {
        self.backdate = Some(backdate);
        self
    }

    /// Adds a URI subject alternative name, such as a SPIFFE ID.
    pub fn uri(mut self, uri: impl Into<String>) -> Self {
        self.uris.push(uri.into());
        self
    }

    /// How long each leaf is valid (default 24 h, at least 2 s).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.max(Duration::from_secs(2));
        self
    }

    /// What the leaves are for (default [`Usage::ServerAndClient`]).
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }
}

impl InternalCa {
    /// A new CA that lives in memory only (tests, demos, or a CA that may be
    /// lost with the process).
    pub fn generate(name: &str) -> Result<Self, CaError> {
        let now = SystemClock.now();
        Ok(Self::with(
            name,
            None,
            Authority::generate(name, now)?,
            None,
        ))
    }

    /// The CA kept in `dir` (`ca.crt`, `ca.key`, and `next.crt`/`next.key`
    /// while a rollover is prepared), made and saved there if there is none.
    /// Keys are written with mode 0600, atomically.
    ///
    /// An activation interrupted by a crash (the new `ca.key` written, `ca.crt`
    /// not yet) is completed here from `next.crt`/`next.key`, its journal.
    pub fn open(dir: impl Into<PathBuf>, name: &str) -> Result<Self, CaError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| io("write", &dir, e))?;
        finish_activation(&dir)?;
        let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let active = if cert.exists() {
            Authority::load(&cert, &key)?
        } else {
            let fresh = Authority::generate(name, SystemClock.now())?;
            fresh.save(&dir, "ca")?;
            fresh
        };
        let (next_cert, next_key) = (dir.join("next.crt"), dir.join("next.key"));
        let next = match next_cert.exists() {
            true => Some(Authority::load(&next_cert, &next_key)?),
            false => None,
        };
        Ok(Self::with(name, Some(dir), active, next))
    }

    /// The CA whose certificate and key are in these PEM files (kept in
    /// memory from then on; rollovers are not saved: use
    /// [`open`](Self::open) for that).
    pub fn load(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, CaError> {
        let authority = Authority::load(cert.as_ref(), key.as_ref())?;
        Ok(Self::with("internal CA", None, authority, None))
    }

    /// A CA from its PEM certificate and key (kept in memory; rollovers are
    /// not saved).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let authority = Authority::from_pem(cert_pem, key_pem)?;
        Ok(Self::with("internal CA", None, authority, None))
    }

    fn with(name: &str, dir: Option<PathBuf>, active: Authority, next: Option<Authority>) -> Self {
        let state = State {
            active,
            next,
            retiring: Vec::new(),
        };
        let trust = TrustStore::new(state.bundle()).expect("a CA certificate is a usable root");
        Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                dir,
                state: Mutex::new(state),
                clock: Mutex::new(Arc::new(SystemClock)),
                trust,
                activations: watch::channel(0).0,
            }),
        }
    }

    /// The trust bundle: every CA whose leaves may be in use. Give it to
    /// servers ([`Rotator::server_config_with_client_auth`](crate::Rotator::server_config_with_client_auth))
    /// and clients ([`TrustStore::client_config_with_cert`]); it follows
    /// every rollover.
    pub fn trust(&self) -> TrustStore {
        self.inner.trust.clone()
    }

    /// The trust bundle as PEM, for peers in other processes.
    pub fn trust_pem(&self) -> String {
        self.state().bundle_pem()
    }

    /// Tells the time of issuance, rollover and retirement with `clock`
    /// (default [`SystemClock`]; a [`Rotator`](crate::Rotator) running one
    /// of its sources sets its store's). A new CA's own validity starts from
    /// the system clock.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        *crate::sync::lock(&self.inner.clock) = clock;
        self
    }

    fn now(&self) -> SystemTime {
        crate::sync::lock(&self.inner.clock).now()
    }

    /// Issues a leaf now, with a fresh key, signed by the active CA.
    pub fn issue(&self, spec: &LeafSpec) -> Result<CertBundle, CaError> {
        let now = self.now();
        let mut state = self.state();
        let bundle = state.active.sign(spec, now)?;
        let expiry = bundle.info().not_after;
        let last = &mut state.active.last_leaf_expiry;
        *last = Some(last.map_or(expiry, |l| l.max(expiry)));
        Ok(bundle.with_origin(format!("internal CA {}", self.inner.name)))
    }

    /// A [`CertSource`] that issues a leaf for `spec` at each fetch, and says
    /// it changed when a new CA is activated.
    pub fn source(&self, spec: LeafSpec) -> CaSource {
        CaSource {
            activations: tokio::sync::Mutex::new(self.inner.activations.subscribe()),
            ca: self.clone(),
            spec,
        }
    }

    /// Makes the next CA and publishes it in the trust bundle, before it
    /// signs anything. Does nothing if one is prepared already.
    pub fn prepare_rollover(&self) -> Result<(), CaError> {
        let mut state = self.state();
        if state.next.is_some() {
            return Ok(());
        }
        let next = Authority::generate(&self.inner.name, self.now())?;
        if let Some(dir) = &self.inner.dir {
            next.save(dir, "next")?;
        }
        state.next = Some(next);
        self.inner.trust.replace(state.bundle(), Vec::new())?;
        tracing::info!(target: "certrotate", ca = %self.inner.name, "next CA prepared and trusted");
        Ok(())
    }

    /// Makes the prepared CA the signer. The old one stays trusted until the
    /// last leaf it signed has expired.
    pub fn activate(&self) -> Result<(), CaError> {
        let mut state = self.state();
        let next = state.next.take().ok_or(CaError::NoNextCa)?;
        if let Some(dir) = &self.inner.dir {
            for step in activation_steps(dir, &next) {
                step()?;
            }
        }
        let old = std::mem::replace(&mut state.active, next);
        state.retiring.push(old);
        drop(state);
        self.retire_expired()?;
        self.inner.activations.send_modify(|n| *n += 1);
        tracing::info!(target: "certrotate", ca = %self.inner.name, "next CA activated");
        Ok(())
    }

    /// Drops from the trust bundle the former CAs whose leaves have all
    /// expired. Returns how many were dropped.
    pub fn retire_expired(&self) -> Result<usize, CaError> {
        let now = self.now();
        let mut state = self.state();
        let before = state.retiring.len();
        state
            .retiring
            .retain(|old| old.last_leaf_expiry.is_some_and(|t| t >= now));
        let retired = before - state.retiring.len();
        if retired > 0 {
            self.inner.trust.replace(state.bundle(), Vec::new())?;
            tracing::info!(target: "certrotate", ca = %self.inner.name, retired, "former CA retired");
        }
        Ok(retired)
    }

    /// Rolls over on a schedule: every `every`, a next CA is prepared,
    /// activated `overlap` later, and former CAs are retired as their last
    /// leaves expire. `overlap` must cover the time trust takes to reach
    /// every peer. Stops when the handle is aborted or the runtime ends.
    pub fn spawn_rollover(&self, every: Duration, overlap: Duration) -> JoinHandle<()> {
        let ca = self.clone();
        let overlap = overlap.min(every);
        tokio::spawn(async move {
            let mut prepare_at = crate::clock::instant_in(every.saturating_sub(overlap));
            let mut activate_at = None;
            loop {
                let retire_at = ca.next_retirement();
                tokio::select! {
                    () = tokio::time::sleep_until(prepare_at), if activate_at.is_none() => {
                        report(ca.off_runtime(InternalCa::prepare_rollover).await);
                        activate_at = Some(crate::clock::instant_in(overlap));
                    }
                    () = sleep_until_some(activate_at) => {
                        report(ca.off_runtime(InternalCa::activate).await);
                        activate_at = None;
                        prepare_at = crate::clock::instant_in(every.saturating_sub(overlap));
                    }
                    () = sleep_until_some(retire_at) => {
                        report(ca.off_runtime(|ca| ca.retire_expired().map(drop)).await)
                    }
                }
            }
        })
    }

    /// When the next former CA can be retired.
    fn next_retirement(&self) -> Option<tokio::time::Instant> {
        let now = self.now();
        let state = self.state();
        let earliest = state
            .retiring
            .iter()
            .map(|old| old.last_leaf_expiry.unwrap_or(now))
            .min()?;
        // A second after: X.509 times have whole seconds.
        let wait = earliest
            .duration_since(now)
            .unwrap_or_default()
            .saturating_add(Duration::from_secs(1));
        Some(crate::clock::instant_in(wait))
    }

    /// Runs `work` (key generation, fsync'd writes, under the state lock)
    /// on a blocking thread.
    async fn off_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(&InternalCa) -> Result<T, CaError> + Send + 'static,
    ) -> Result<T, CaError> {
        let ca = self.clone();
        crate::sync::blocking(move || work(&ca))
            .await
            .map_err(|e| CaError::Interrupted(Arc::new(e)))?
    }

    fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.inner.state)
    }
}

impl std::fmt::Debug for InternalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("InternalCa")
            .field("name", &self.inner.name)
            .field("dir", &self.inner.dir)
            .field("next_prepared", &state.next.is_some())
            .field("retiring", &state.retiring.len())
            .finish()
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Activating `next` on disk, one step after another. `next.crt` and
/// `next.key` (written when the rollover was prepared) are the journal:
/// they go last, so a crash between any two steps leaves either the old CA
/// whole or enough for [`finish_activation`] to complete the new one.
fn activation_steps<'a>(
    dir: &'a Path,
    next: &'a Authority,
) -> [Box<dyn FnOnce() -> Result<(), CaError> + 'a>; 4] {
    [
        Box::new(move || next.save(dir, "next")),
        Box::new(move || next.save(dir, "ca")),
        Box::new(move || remove(&dir.join("next.crt"))),
        Box::new(move || remove(&dir.join("next.key"))),
    ]
}

/// Completes an activation a crash interrupted: while the journal
/// (`next.crt` + `next.key`) is there and `ca.key` is already the next key,
/// the next CA is written as `ca` again and the journal removed. A journal
/// whose key is not `ca.key` is a rollover prepared, not activated: kept.
fn finish_activation(dir: &Path) -> Result<(), CaError> {
    let (next_cert, next_key) = (dir.join("next.crt"), dir.join("next.key"));
    let read = |path: &Path| crate::read::small(path).ok();
    match (read(&next_cert), read(&next_key), read(&dir.join("ca.key"))) {
        (Some(cert), Some(key), Some(active_key)) if key == active_key => {
            let (cert, key) = (
                String::from_utf8_lossy(&cert),
                String::from_utf8_lossy(&key),
            );
            let next = Authority::from_pem(&cert, &key)?;
            tracing::warn!(target: "certrotate", dir = %dir.display(), "completing a CA activation that was interrupted");
            for step in activation_steps(dir, &next).into_iter().skip(1) {
                step()?;
            }
            Ok(())
        }
        // Only the key of the journal left: its certificate is `ca.crt`.
        (None, Some(key), Some(active_key)) if key == active_key => remove(&next_key),
        _ => Ok(()),
    }
}

fn remove(path: &Path) -> Result<(), CaError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path, e)),
        _ => Ok(()),
    }
}

fn report(result: Result<(), CaError>) {
    if let Err(error) = result {
        tracing::error!(target: "certrotate", "CA rollover step failed: {error}");
    }
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> CaError {
    CaError::Io {
        action,
        path: path.to_owned(),
        source: Arc::new(source),
    }
}

fn rcgen_error(e: rcgen::Error) -> CaError {
    CaError::Issue(Arc::new(e))
}

/// Leaves from an [`InternalCa`]: a new one, with a fresh key, at every
/// fetch. Renewal is the [`Rotator`](crate::Rotator)'s: by default when a
/// third of the lifetime is left, that is at two thirds of it.
#[derive(Debug)]
pub struct CaSource {
    ca: InternalCa,
    spec: LeafSpec,
    activations: tokio::sync::Mutex<watch::Receiver<u64>>,
}

impl CertSource for CaSource {
    /// Issues on a blocking thread: key generation and signing take
    /// milliseconds, under the CA's lock.
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        let spec = self.spec.clone();
        self.ca
            .off_runtime(move |ca| ca.issue(&spec))
            .await
            .map_err(|e| SourceError::unavailable(self.describe(), e))
    }

    /// Issuance follows the store's clock.
    fn attach(&self, store: &crate::store::CertStore) -> crate::source::Start {
        *crate::sync::lock(&self.ca.inner.clock) = store.clock().clone();
        crate::source::Start::at_hand()
    }

    /// Completes when a new CA has been activated.
    async fn changed(&self) {
        let mut activations = self.activations.lock().await;
        if activations.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn describe(&self) -> String {
        format!("internal CA {}", self.ca.inner.name)
    }

    fn kind(&self) -> &'static str {
        "ca"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that says what it is told.
    #[derive(Debug)]
    struct Fixed(SystemTime);

    impl Clock for Fixed {
        fn now(&self) -> SystemTime {
            self.0
        }
    }

    /// Issuance tells time with the CA's clock, not the system's.
    #[test]
    fn leaves_are_dated_by_the_cas_clock() {
        let tomorrow = SystemTime::now() + Duration::from_secs(86_400);
        let ca = InternalCa::generate("clocked")
            .unwrap()
            .with_clock(Arc::new(Fixed(tomorrow)));
        let spec = LeafSpec::new(["svc.internal"]).lifetime(Duration::from_secs(3600));
        let leaf = ca.issue(&spec).unwrap();
        let not_before = leaf.info().not_before;
        assert!(
            not_before >= tomorrow - Duration::from_secs(61),
            "{not_before:?}"
        );
        assert!(leaf.info().not_after >= tomorrow + Duration::from_secs(3599));
    }

    /// A crash between any two steps of an activation (simulated by running
    /// only the steps before it) leaves a CA that opens, serving either the
    /// old authority whole or the new one whole; never a key that does not
    /// match its certificate.
    #[test]
    fn an_activation_interrupted_at_any_step_opens_whole() {
        for done in 0..=4 {
            let dir = std::env::temp_dir()
                .join(format!("certrotate-ca-crash-{}-{done}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let ca = InternalCa::open(&dir, "crash test").unwrap();
            let old = ca.state().active.cert_pem.clone();
            ca.prepare_rollover().unwrap();
            let next = ca.state().next.as_ref().unwrap().cert_pem.clone();
            {
                let state = ca.state();
                let steps = activation_steps(&dir, state.next.as_ref().unwrap());
                for step in steps.into_iter().take(done) {
                    step().unwrap();
                }
            }
            drop(ca);

            let reopened = InternalCa::open(&dir, "crash test")
                .unwrap_or_else(|e| panic!("crash after {done} steps: {e}"));
            let active = reopened.state().active.cert_pem.clone();
            // Once ca.key is the new key (step 2), the new CA is active.
            let expected = if done >= 2 { &next } else { &old };
            assert_eq!(&active, expected, "crash after {done} steps");
            if done >= 2 {
                assert!(!dir.join("next.crt").exists() && !dir.join("next.key").exists());
                assert!(reopened.state().next.is_none());
            } else {
                // The rollover is still prepared, and can be activated.
                assert_eq!(reopened.state().next.as_ref().unwrap().cert_pem, next);
                reopened.activate().unwrap();
            }
            let leaf = reopened.issue(&LeafSpec::new(["svc.internal"])).unwrap();
            assert!(!leaf.key_mismatches());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// Without the journal step's recovery, the state a crash between the
    /// two renames leaves (new key, old certificate) is refused: that is
    /// what `finish_activation` repairs.
    #[test]
    fn a_new_key_beside_the_old_certificate_is_repaired_from_the_journal() {
        let dir = std::env::temp_dir().join(format!("certrotate-ca-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = InternalCa::open(&dir, "torn").unwrap();
        ca.prepare_rollover().unwrap();
        drop(ca);
        // The torn state: ca.key is the next key, ca.crt still the old cert.
        std::fs::copy(dir.join("next.key"), dir.join("ca.key")).unwrap();
        assert!(matches!(
            Authority::load(&dir.join("ca.crt"), &dir.join("ca.key")),
            Err(CaError::Unusable(_))
        ));
        let next_cert = std::fs::read_to_string(dir.join("next.crt")).unwrap();
        let reopened = InternalCa::open(&dir, "torn").unwrap();
        assert_eq!(reopened.state().active.cert_pem, next_cert);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

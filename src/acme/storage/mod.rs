//! Where ACME state lives ([`Storage`]), and how instances sharing it take
//! turns: the renewal lease ([`Lease`]), held while ordering.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::failure::Failure;
use super::AcmeSource;
use crate::bundle::CertBundle;
use crate::source::SourceError;
use crate::sync::lock;

mod file;
#[cfg(feature = "redis")]
mod redis;

pub use file::FileStorage;
#[cfg(feature = "redis")]
pub use redis::{RedisBuilder, RedisStorage};

/// How often an instance waiting for another's renewal looks at the storage.
const LOCK_POLL: Duration = Duration::from_secs(1);

/// What waiting for the renewal lock gave.
pub(in crate::acme) enum Renewal {
    /// The lock: this instance orders.
    Ours(Lease),
    /// Another instance's new certificate.
    Done(CertBundle),
}

/// Why an attempt failed.
pub(in crate::acme) enum Trouble {
    /// The storage could not be read or locked, so the instances sharing it
    /// cannot take turns: the reason.
    StorageDown(Failure),
    /// Anything else.
    Failed(SourceError),
}

pub use crate::util::BoxFuture;

/// Where ACME state lives: the account, certificates and their keys.
///
/// Values must be stored atomically (a reader sees the old value or the new
/// one, never a mix) and readable by this process only.
///
/// A storage shared by several server instances also coordinates them with
/// a lease lock ([`try_lock`](Self::try_lock)) whose fencing token guards
/// writes ([`store_fenced`](Self::store_fenced)). The defaults do no
/// coordination, which is right for a storage only one process uses.
pub trait Storage: Send + Sync + 'static {
    /// The value stored under `key`, if any.
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, std::io::Result<Option<Vec<u8>>>>;
    /// Stores `value` under `key`, replacing any older value.
    fn store<'a>(&'a self, key: &'a str, value: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>>;

    /// Takes the lock `name` for `lease`, if nobody holds it or its holder's
    /// lease has run out. The [`Lease`]'s fencing token is larger than any
    /// given out before for `name`. `None` while another holder has it.
    ///
    /// The default always succeeds, with token 0: no coordination.
    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, std::io::Result<Option<Lease>>> {
        let _ = lease;
        Box::pin(async move { Ok(Some(Lease::new(name, String::new(), 0))) })
    }

    /// Stores `value` under `key` only while `lease` holds the newest token
    /// of its lock: a holder whose lease ran out and was taken over cannot
    /// overwrite what the new holder wrote (it gets an error of kind
    /// [`PermissionDenied`](std::io::ErrorKind::PermissionDenied)).
    ///
    /// The default stores unconditionally.
    fn store_fenced<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: &'a Lease,
    ) -> BoxFuture<'a, std::io::Result<()>> {
        let _ = lease;
        self.store(key, value)
    }

    /// Counts the changes other instances make to the stored values, for a
    /// storage shared by several: an [`AcmeSource`] fetches when it moves,
    /// and so picks up a certificate another instance obtained at once.
    ///
    /// The default is `None`: nobody else writes.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Keeps `lease` alive for `duration` more: its holder calls it while
    /// it orders (a heartbeat, every third of the lease), so that a lease
    /// can be short (taken over seconds after its holder dies) however long
    /// an order takes. `Ok(false)`: someone else holds the lock now (the
    /// holder's writes are fenced out).
    ///
    /// The default answers `Ok(true)`: no coordination.
    fn renew_lock<'a>(
        &'a self,
        lease: &'a Lease,
        duration: Duration,
    ) -> BoxFuture<'a, std::io::Result<bool>> {
        let _ = (lease, duration);
        Box::pin(async { Ok(true) })
    }

    /// Releases `lease` early (it also ends by itself). Releasing a lease
    /// that was taken over does nothing.
    ///
    /// The default does nothing.
    fn unlock<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, std::io::Result<()>> {
        let _ = lease;
        Box::pin(async { Ok(()) })
    }
}

/// A lease on a named [`Storage`] lock, with its fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    name: String,
    owner: String,
    token: u64,
}

impl Lease {
    /// A lease on `name` held by `owner` (a value unique to this holder,
    /// such as [`new_owner`](Self::new_owner) makes), with fencing token
    /// `token`: for [`Storage`] implementations.
    pub fn new(name: impl Into<String>, owner: impl Into<String>, token: u64) -> Self {
        Self {
            name: name.into(),
            owner: owner.into(),
            token,
        }
    }

    /// A fresh owner for a new lease: `<pid>-<16 random hex digits>`. The
    /// process id tells an operator looking at a lock which process on the
    /// host holds it; the random part keeps owners apart across hosts and
    /// restarts. It comes from the operating system's generator (should
    /// that ever fail, from the time and a fast generator: an owner needs to
    /// be unique, not secret).
    ///
    /// ```
    /// let owner = certrotate::acme::Lease::new_owner();
    /// let pid = owner.split('-').next().unwrap();
    /// assert_eq!(pid, std::process::id().to_string());
    /// ```
    pub fn new_owner() -> String {
        let random = crate::random::secure()
            .map(u64::from_ne_bytes)
            .unwrap_or_else(|_| {
                let now = SystemTime::now().duration_since(UNIX_EPOCH);
                fastrand::u64(..) ^ now.unwrap_or_default().as_nanos() as u64
            });
        format!("{}-{random:016x}", std::process::id())
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who holds it.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fencing token: larger for each new holder of the lock.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The error [`Storage::store_fenced`] returns when this lease was taken
    /// over by a newer holder (kind
    /// [`PermissionDenied`](std::io::ErrorKind::PermissionDenied)): for
    /// [`Storage`] implementations.
    ///
    /// ```
    /// let lease = certrotate::acme::Lease::new("renew-cert", "42-00ff", 7);
    /// let error = lease.fenced_out();
    /// assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
    /// assert!(error.to_string().contains("renew-cert"));
    /// ```
    pub fn fenced_out(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "not written: the lease on {:?} (token {}) was taken over by a newer holder",
                self.name, self.token
            ),
        )
    }
}

/// Where ACME state goes unless the builder says otherwise.
pub(in crate::acme) fn default_storage_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(state) = var("STATE_DIRECTORY") {
        return state.join("acme");
    }
    var("XDG_STATE_HOME")
        .or_else(|| var("HOME").map(|home| home.join(".local/state")))
        .map(|state| state.join("certrotate/acme"))
        .unwrap_or_else(|| PathBuf::from("certrotate-acme"))
}

/// The renewal lock while this instance orders under it: its saves are
/// fenced by it, and it is released however the order ends. Dropped without
/// [`release`](Self::release) (the rotator's fetch timeout dropped the
/// attempt), it lets go in a task of its own, so that neither a stale lease
/// fences later saves nor the other instances wait for it to run out.
///
/// While held, a heartbeat keeps the lease alive (every third of it), so a
/// lease of seconds outlives an order of minutes, and runs out seconds
/// after its holder dies.
pub(in crate::acme) struct Holding {
    source: AcmeSource,
    /// The lease and its heartbeat, until released.
    held: Option<(Lease, tokio::task::JoinHandle<()>)>,
}

impl Holding {
    pub(in crate::acme) fn new(source: &AcmeSource, lease: Lease) -> Self {
        *lock(&source.inner.lease) = Some(lease.clone());
        let heartbeat = tokio::spawn(heartbeat(source.clone(), lease.clone()));
        Self {
            source: source.clone(),
            held: Some((lease, heartbeat)),
        }
    }

    pub(in crate::acme) async fn release(mut self) {
        if let Some((lease, heartbeat)) = self.held.take() {
            let_go(&self.source, lease, heartbeat).await;
        }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let Some((lease, heartbeat)) = self.held.take() else {
            return;
        };
        // Not held any more, whatever the storage says.
        stop_fencing(&self.source, &lease);
        heartbeat.abort();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let source = self.source.clone();
            runtime.spawn(async move { let_go(&source, lease, heartbeat).await });
        }
    }
}

/// Stops the heartbeat, waits until it has stopped (so that no renewal
/// reaches the storage after the unlock, taking the lock back), then
/// releases the lease.
async fn let_go(source: &AcmeSource, lease: Lease, heartbeat: tokio::task::JoinHandle<()>) {
    heartbeat.abort();
    let _ = heartbeat.await;
    unlock(source, &lease).await;
}

/// Keeps `lease` alive until aborted, or until someone else holds the lock:
/// renews every third of the lease, each renewal given a quarter of it, so
/// that one slow answer from the storage does not cost the lease.
async fn heartbeat(source: AcmeSource, lease: Lease) {
    let duration = source.inner.config.lock_lease;
    let mut beat = tokio::time::interval(duration / 3);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    loop {
        beat.tick().await;
        let renewal = source.inner.config.storage.renew_lock(&lease, duration);
        match tokio::time::timeout(duration / 4, renewal).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!(target: "certrotate", lock = %lease.name(), "the renewal lock was taken over while this instance ordered; its saves are fenced out");
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(target: "certrotate", lock = %lease.name(), "could not keep the renewal lock alive (retrying): {error}");
            }
            Err(_) => {
                tracing::warn!(target: "certrotate", lock = %lease.name(), "the storage did not renew the renewal lock in time (retrying)");
            }
        }
    }
}

/// Saves are no longer fenced with `lease` (a newer attempt's lease stays).
fn stop_fencing(source: &AcmeSource, lease: &Lease) {
    let mut held = lock(&source.inner.lease);
    if held.as_ref() == Some(lease) {
        held.take();
    }
}

/// Stops fencing saves with `lease` and releases it.
pub(in crate::acme) async fn unlock(source: &AcmeSource, lease: &Lease) {
    stop_fencing(source, lease);
    if let Err(error) = source.inner.config.storage.unlock(lease).await {
        tracing::warn!(target: "certrotate", "could not release the renewal lock (it expires by itself): {error}");
    }
}

impl AcmeSource {
    /// Takes the storage's renewal lock, or waits until the instance holding
    /// it has stored a certificate that is not due (or its lease has run
    /// out, and the lock is ours). Fails when the storage cannot be reached,
    /// and when the certificate this instance serves nears its end while it
    /// waits (half the time from its renewal time to its expiry is gone): the
    /// wait is then reported in health, and the rotator tries again soon.
    pub(in crate::acme) async fn renewal_lock(&self) -> Result<Renewal, Trouble> {
        let storage = &self.inner.config.storage;
        let name = format!("renew-{}", self.inner.cert_key);
        let since = tokio::time::Instant::now();
        let mut waiting = false;
        loop {
            match storage.try_lock(&name, self.inner.config.lock_lease).await {
                Err(error) => {
                    let failure = Failure::new("cannot take the renewal lock", error);
                    return Err(Trouble::StorageDown(failure));
                }
                Ok(Some(lease)) => return Ok(Renewal::Ours(lease)),
                Ok(None) if !waiting => {
                    tracing::info!(target: "certrotate", lock = %name, "another instance is renewing; waiting for its certificate");
                    waiting = true;
                }
                Ok(None) => {}
            }
            tokio::time::sleep(LOCK_POLL).await;
            let stored = self.stored().await.map_err(Trouble::StorageDown)?;
            if let Some(bundle) = stored.filter(|b| !self.due(b.info(), self.now())) {
                return Ok(Renewal::Done(bundle));
            }
            if let Some(left) = self.nearing_expiry() {
                let waited = crate::clock::human(since.elapsed());
                let left = crate::clock::human(left);
                let why = format!("another instance has held the renewal lock {name:?} for the {waited} this one waited, and the certificate served expires in {left}");
                return Err(Trouble::Failed(SourceError::unavailable(
                    crate::source::CertSource::describe(self),
                    why,
                )));
            }
        }
    }

    /// How long the certificate this instance serves has left, once over
    /// half the time from its renewal time to its expiry is gone.
    fn nearing_expiry(&self) -> Option<Duration> {
        let provided = lock(&self.inner.provided).clone()?;
        let info = provided.info();
        let now = self.now();
        let renew_at = self.renewal_time(info).at;
        let grace = info.not_after.duration_since(renew_at).unwrap_or_default() / 2;
        let left = info.not_after.duration_since(now).unwrap_or_default();
        (now >= crate::clock::saturating_add(renew_at, grace)).then_some(left)
    }

    /// Completes when another instance changed the shared storage; never
    /// for a storage nobody else writes.
    pub(in crate::acme) async fn storage_changed(&self) {
        let mut changes = self.inner.storage_changes.lock().await;
        let changed = match changes.as_mut() {
            Some(changes) => changes.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            drop(changes);
            std::future::pending::<()>().await;
        }
    }
}

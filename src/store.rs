//! [`CertStore`]: the certificates being served, their history, and their health.
//!
//! Writers (rotators, [`CertStore::rollback`]) take a mutex, change the slot
//! they own, and publish a new immutable [`Snapshot`] with one `arc-swap`
//! store. Handshakes only ever load that snapshot: no lock, no allocation.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;
#[cfg(feature = "acme")]
use rustls::sign::CertifiedKey;
use tokio::sync::{broadcast, watch};

use crate::bundle::CertInfo;
use crate::clock::{Clock, SystemClock};
use crate::events::{Events, RotationEvent};
use crate::health::{AlertLevel, CertHealth, Failure, HealthSnapshot, UnservedSlot};
use crate::policy::ValidatedCert;
use crate::renewal;
use crate::resolver::{NameMap, RotatingResolver, Snapshot};

/// The slot a [`Rotator`](crate::Rotator) fills unless told otherwise, and the
/// one served to clients whose SNI matches no certificate.
pub const DEFAULT_SLOT: &str = "default";

/// The certificates a server presents, swappable while it serves.
///
/// A store has named *slots*, each holding the current certificate of one
/// source plus the last few good ones for rollback. Handshakes pick a slot's
/// certificate by SNI: exact DNS name first, then a `*.` wildcard one label
/// up, then the [`DEFAULT_SLOT`] (or, without one, the oldest slot).
///
/// Cloning is cheap and every clone is the same store.
///
/// # Example
///
/// ```
/// # let ck = rcgen::generate_simple_self_signed(vec!["api.example.com".into()]).unwrap();
/// # let (cert_pem, key_pem) = (ck.cert.pem(), ck.signing_key.serialize_pem());
/// use std::time::SystemTime;
/// use certrotate::{CertBundle, CertStore, Policy, DEFAULT_SLOT};
///
/// let store = CertStore::new();
/// let bundle = CertBundle::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
/// let valid = Policy::default().validate(&bundle, SystemTime::now())?;
/// store.install(DEFAULT_SLOT, valid);
/// assert_eq!(store.current(DEFAULT_SLOT).unwrap().dns_names, ["api.example.com"]);
///
/// let provider = Policy::default().crypto_provider().clone();
/// let config = rustls::ServerConfig::builder_with_provider(provider)
///     .with_safe_default_protocol_versions()?
///     .with_no_client_auth()
///     .with_cert_resolver(store.resolver());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct CertStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    snapshot: Arc<ArcSwap<Snapshot>>,
    slots: Mutex<Slots>,
    history: usize,
    events: Events,
    clock: Arc<dyn Clock>,
    /// Counts changes of what is served: installs, rollbacks, removals.
    changes: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Slots {
    by_name: Vec<Slot>,
    challenges: NameMap,
    rotations: u64,
    last_rotation: Option<SystemTime>,
    /// Failures recorded so far: orders them across slots.
    failures: u64,
}

#[derive(Debug)]
struct Slot {
    name: Arc<str>,
    current: Option<ValidatedCert>,
    /// Older good certificates, most recent first.
    previous: VecDeque<ValidatedCert>,
    /// When its serving certificate is due for renewal, as its rotator
    /// decided (`None`: the default rule).
    renew_at: Option<SystemTime>,
    /// Why its latest candidate failed, and when (the store's failure count).
    last_error: Option<(u64, Failure)>,
    warnings: Vec<String>,
}

/// Builds a [`CertStore`].
///
/// ```
/// let store = certrotate::CertStore::builder().history(5).build();
/// ```
#[derive(Debug)]
#[must_use]
pub struct CertStoreBuilder {
    history: usize,
    event_capacity: usize,
    clock: Arc<dyn Clock>,
}

impl CertStoreBuilder {
    /// How many good certificates each slot keeps, the serving one included
    /// (default 3, at least 1).
    pub fn history(mut self, n: usize) -> Self {
        self.history = n.max(1);
        self
    }

    /// How many events a slow subscriber may lag behind before it misses some
    /// (default 256).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n.max(1);
        self
    }

    /// The clock for health and rollback checks (default [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the store, empty.
    pub fn build(self) -> CertStore {
        CertStore {
            inner: Arc::new(Inner {
                snapshot: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
                slots: Mutex::default(),
                history: self.history,
                events: Events::new(self.event_capacity, self.clock.clone()),
                clock: self.clock,
                changes: watch::Sender::new(0),
            }),
        }
    }
}

impl Default for CertStore {
    fn default() -> Self {
        Self::new()
    }
}

impl CertStore {
    /// An empty store keeping 3 certificates per slot.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts building a store.
    pub fn builder() -> CertStoreBuilder {
        CertStoreBuilder {
            history: 3,
            event_capacity: 256,
            clock: Arc::new(SystemClock),
        }
    }

    /// The rustls resolver that serves this store's certificates. Give it to
    /// [`rustls::ConfigBuilder::with_cert_resolver`]; it stays valid across
    /// every rotation, so the `ServerConfig` (and its session cache and
    /// ticketer) never has to be rebuilt.
    pub fn resolver(&self) -> Arc<RotatingResolver> {
        Arc::new(RotatingResolver::new(self.inner.snapshot.clone()))
    }

    /// Makes `cert` the serving certificate of `slot` (creating the slot),
    /// keeping the one it replaces for [`rollback`](Self::rollback). Returns
    /// the replaced certificate.
    pub fn install(&self, slot: &str, cert: ValidatedCert) -> Option<Arc<CertInfo>> {
        let mut slots = self.lock();
        let now = self.inner.clock.now();
        let history = self.inner.history;
        let entry = slots.slot_mut(slot);
        let old = entry.current.replace(cert.clone());
        entry.renew_at = None;
        if let Some(old) = &old {
            entry.previous.push_front(old.clone());
            entry.previous.truncate(history - 1);
        }
        entry.last_error = None;
        let name = entry.name.clone();
        let level = AlertLevel::at(&cert.info, now, entry.renew_at(&cert.info));
        slots.rotations += 1;
        slots.last_rotation = Some(now);
        self.publish(&slots);
        drop(slots);
        self.inner.changes.send_modify(|n| *n += 1);
        let old = old.map(|o| o.info);
        self.inner.events.serving(&name, &cert.info, level);
        self.inner.events.emit(RotationEvent::Rotated {
            slot: name,
            old: old.clone(),
            new: cert.info,
        });
        old
    }

    /// Restores the previous good certificate of `slot` for new handshakes,
    /// at once. Certificates that have expired since are skipped. The
    /// certificate rolled back from is dropped from the history.
    pub fn rollback(&self, slot: &str) -> Result<Arc<CertInfo>, RollbackError> {
        let mut slots = self.lock();
        let now = self.inner.clock.now();
        let entry = slots
            .find_mut(slot)
            .ok_or_else(|| RollbackError::UnknownSlot(slot.to_owned()))?;
        let from = entry
            .current
            .clone()
            .ok_or_else(|| RollbackError::NothingServing(slot.to_owned()))?;
        entry.previous.retain(|c| c.info.not_after > now);
        let to = entry
            .previous
            .pop_front()
            .ok_or_else(|| RollbackError::NoPrevious(slot.to_owned()))?;
        entry.current = Some(to.clone());
        entry.renew_at = None;
        let name = entry.name.clone();
        let level = AlertLevel::at(&to.info, now, entry.renew_at(&to.info));
        self.publish(&slots);
        drop(slots);
        self.inner.changes.send_modify(|n| *n += 1);
        self.inner.events.serving(&name, &to.info, level);
        self.inner.events.emit(RotationEvent::RolledBack {
            slot: name,
            from: from.info,
            to: to.info.clone(),
        });
        Ok(to.info)
    }

    /// Removes `slot` and its certificates; new handshakes no longer see them.
    /// Returns whether the slot existed.
    pub fn remove(&self, slot: &str) -> bool {
        let mut slots = self.lock();
        let Some(at) = slots.by_name.iter().position(|s| &*s.name == slot) else {
            return false;
        };
        let removed = slots.by_name.remove(at);
        self.publish(&slots);
        drop(slots);
        self.inner.changes.send_modify(|n| *n += 1);
        self.inner.events.emit(RotationEvent::Removed {
            slot: removed.name,
            cert: removed.current.map(|c| c.info),
        });
        true
    }

    /// The certificate serving in `slot`, if any.
    pub fn current(&self, slot: &str) -> Option<Arc<CertInfo>> {
        let slots = self.lock();
        slots
            .by_name
            .iter()
            .find(|s| &*s.name == slot)?
            .current
            .as_ref()
            .map(|c| c.info.clone())
    }

    /// The health of every slot, as of the store's clock.
    pub fn health(&self) -> HealthSnapshot {
        let slots = self.lock();
        let now = self.inner.clock.now();
        let mut certificates = Vec::new();
        let mut unserved = Vec::new();
        for slot in &slots.by_name {
            match &slot.current {
                Some(current) => certificates.push(CertHealth::new(
                    &slot.name,
                    &current.info,
                    now,
                    slot.renew_at(&current.info),
                    slot.last_error.clone().map(|(_, f)| f),
                    slot.warnings.clone(),
                )),
                None => unserved.push(UnservedSlot {
                    slot: slot.name.to_string(),
                    last_error: slot.last_error.as_ref().map(|(_, f)| f.message.clone()),
                    last_error_code: slot.last_error.as_ref().map(|(_, f)| f.code),
                    warnings: slot.warnings.clone(),
                }),
            }
        }
        // The latest failure of a slot still failing: one slot's success
        // does not hide another's failure.
        let latest = slots
            .by_name
            .iter()
            .filter_map(|s| s.last_error.as_ref())
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, f)| f);
        HealthSnapshot {
            alert: certificates
                .iter()
                .map(|c| c.alert)
                .max()
                .unwrap_or(AlertLevel::Ok),
            certificates,
            unserved,
            last_rotation: slots.last_rotation,
            rotations: slots.rotations,
            last_error: latest.map(|f| f.message.clone()),
            last_error_code: latest.map(|f| f.code),
        }
    }

    /// Receives every [`RotationEvent`] from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RotationEvent> {
        self.inner.events.subscribe()
    }

    /// Counts the changes of what the store serves.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub(crate) fn events(&self) -> &Events {
        &self.inner.events
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Records why the latest candidate for `slot` failed (health's `last_error`).
    pub(crate) fn record_failure(&self, slot: &str, code: &'static str, message: String) {
        let failure = Failure { code, message };
        let mut slots = self.lock();
        slots.failures += 1;
        let seq = slots.failures;
        slots.slot_mut(slot).last_error = Some((seq, failure));
    }

    /// Clears `slot`'s failure: its latest candidate was accepted (or was the
    /// certificate already serving).
    pub(crate) fn record_success(&self, slot: &str) {
        let mut slots = self.lock();
        slots.slot_mut(slot).last_error = None;
    }

    /// Answers TLS-ALPN-01 validation for `name` with `key` (RFC 8737) until
    /// [`remove_challenge`](Self::remove_challenge).
    #[cfg(feature = "acme")]
    pub(crate) fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        let mut slots = self.lock();
        slots.challenges.insert(name.into(), key);
        self.publish(&slots);
    }

    #[cfg(feature = "acme")]
    pub(crate) fn remove_challenge(&self, name: &str) {
        let mut slots = self.lock();
        if slots.challenges.remove(name).is_some() {
            self.publish(&slots);
        }
    }

    /// Replaces `slot`'s source warnings (shown in health).
    pub(crate) fn set_warnings(&self, slot: &str, warnings: Vec<String>) {
        self.lock().slot_mut(slot).warnings = warnings;
    }

    /// Creates `slot` (empty, unserved) unless it exists: slots are listed
    /// in the order they were created.
    pub(crate) fn add_slot(&self, slot: &str) {
        self.lock().slot_mut(slot);
    }

    /// Sets when `slot`'s serving certificate is due for renewal.
    pub(crate) fn set_renew_at(&self, slot: &str, at: SystemTime) {
        self.lock().slot_mut(slot).renew_at = Some(at);
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // A panic while holding the lock cannot leave `Slots` half-changed in a
        // way that matters more than stopping rotation would.
        crate::sync::lock(&self.inner.slots)
    }

    /// Builds the handshake view from the slots and swaps it in.
    fn publish(&self, slots: &Slots) {
        let mut snapshot = Snapshot {
            challenges: slots.challenges.clone(),
            ..Snapshot::default()
        };
        let serving = slots
            .by_name
            .iter()
            .filter_map(|s| Some((s, s.current.as_ref()?)));
        // Oldest slot first, so that on a name clash the oldest slot wins and
        // adding a slot never steals a name from one already serving.
        for (_, cert) in serving.clone().rev() {
            for name in &cert.info.dns_names {
                match name.strip_prefix("*.") {
                    Some(parent) => snapshot.wildcard.insert(parent.into(), cert.key.clone()),
                    None => snapshot
                        .exact
                        .insert(name.as_str().into(), cert.key.clone()),
                };
            }
        }
        let default = serving.clone().find(|(s, _)| &*s.name == DEFAULT_SLOT);
        snapshot.default = default
            .or_else(|| serving.clone().next())
            .map(|(_, c)| c.key.clone());
        self.inner.snapshot.store(Arc::new(snapshot));
    }
}

impl Slot {
    /// When `cert`, serving here, is due for renewal.
    fn renew_at(&self, cert: &CertInfo) -> SystemTime {
        self.renew_at
            .unwrap_or_else(|| renewal::at_fraction(cert, renewal::DEFAULT_FRACTION, 0.0, 0.0))
    }
}

impl Slots {
    fn find_mut(&mut self, name: &str) -> Option<&mut Slot> {
        self.by_name.iter_mut().find(|s| &*s.name == name)
    }

    fn slot_mut(&mut self, name: &str) -> &mut Slot {
        match self.by_name.iter().position(|s| &*s.name == name) {
            Some(i) => &mut self.by_name[i],
            None => {
                self.by_name.push(Slot {
                    name: name.into(),
                    current: None,
                    previous: VecDeque::new(),
                    renew_at: None,
                    last_error: None,
                    warnings: Vec::new(),
                });
                self.by_name.last_mut().expect("just pushed")
            }
        }
    }
}

/// [`CertStore::rollback`] had nothing to roll back to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RollbackError {
    /// No slot has this name.
    #[error("cannot roll back slot {0:?}: there is no such slot")]
    UnknownSlot(String),
    /// The slot has never served a certificate.
    #[error("cannot roll back slot {0:?}: it has no certificate serving")]
    NothingServing(String),
    /// The slot has no earlier certificate that is still valid.
    #[error("cannot roll back slot {0:?}: no earlier certificate that is still valid is kept")]
    NoPrevious(String),
}

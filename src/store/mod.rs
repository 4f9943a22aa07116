//! [`CertStore`]: the certificates being served, their history, and their health.
//!
//! Writers (rotators, [`CertStore::rollback`]) take a mutex, change the slot
//! they own, and republish only the names it serves (see
//! [`RotatingResolver`] for the handshake path): a
//! change costs the same with ten slots as with a hundred thousand.
//! Handshakes never take the lock.

mod slots;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(feature = "acme")]
use rustls::sign::CertifiedKey;
use tokio::sync::{broadcast, watch};

use crate::bundle::CertInfo;
use crate::clock::{Clock, SystemClock};
use crate::events::{Events, RotationEvent};
use crate::health::{
    AlertCounts, AlertLevel, Failure, HealthSnapshot, UnservedSlot, HEALTH_LIMIT, SOONEST,
};
use crate::policy::ValidatedCert;
use crate::renewal::Renewal;
pub use crate::resolver::{RotatingResolver, ACME_TLS_ALPN};
use slots::{Installed, Slots};

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
/// use certrotate::{CertBundle, CertStore, Policy};
/// use certrotate::store::DEFAULT_SLOT;
///
/// let store = CertStore::new();
/// let bundle = CertBundle::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
/// let valid = Policy::default().validate(&bundle, SystemTime::now())?;
/// let renew_at = valid.info().renewal_time();
/// store.install(DEFAULT_SLOT, valid, renew_at);
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
    slots: Mutex<Slots>,
    history: usize,
    metric_slots: usize,
    events: Events,
    clock: Arc<dyn Clock>,
    /// Counts changes of what is served: installs, rollbacks, removals.
    changes: watch::Sender<u64>,
    /// Whether a source filling it answers ACME TLS-ALPN-01 challenges
    /// from it (so that its handshakes must offer `acme-tls/1`).
    tls_alpn_01: std::sync::atomic::AtomicBool,
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
    metric_slots: usize,
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

    /// Up to how many slots metrics get one series per slot (default 100).
    ///
    /// Past it, per-slot gauges (expiry, remaining time, alert level) are no
    /// longer set for any slot, and counters drop their `slot` label, so a
    /// server of 10⁵ certificates does not make 10⁵ time series by
    /// accident; the totals (`certrotate_certificates` per alert level,
    /// `certrotate_soonest_expiry_timestamp_seconds`) are always there.
    /// [`HealthService`](crate::HealthService)'s Prometheus text follows the
    /// same limit. Series a recorder already holds stay until it drops them.
    ///
    /// ```
    /// // A multi-tenant server: totals only, whatever the number of tenants.
    /// let store = certrotate::CertStore::builder().metric_slots(0).build();
    /// ```
    pub fn metric_slots(mut self, n: usize) -> Self {
        self.metric_slots = n;
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
        let events = Events::new(self.event_capacity, self.clock.clone());
        CertStore {
            inner: Arc::new(Inner {
                slots: Mutex::new(Slots::new(events.clone(), self.metric_slots)),
                history: self.history,
                metric_slots: self.metric_slots,
                events,
                clock: self.clock,
                changes: watch::Sender::new(0),
                tls_alpn_01: std::sync::atomic::AtomicBool::new(false),
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
            metric_slots: 100,
            event_capacity: 256,
            clock: Arc::new(SystemClock),
        }
    }

    /// The rustls resolver that serves this store's certificates. Give it to
    /// [`rustls::ConfigBuilder::with_cert_resolver`]; it stays valid across
    /// every rotation, so the `ServerConfig` (and its session cache and
    /// ticketer) never has to be rebuilt.
    pub fn resolver(&self) -> Arc<RotatingResolver> {
        Arc::new(self.lock().resolver())
    }

    /// Makes `cert` the serving certificate of `slot` (creating the slot),
    /// due for renewal at `renew_at` (health's alert levels are measured
    /// against it; [`CertInfo::renewal_time`] is the default rule), keeping
    /// the one it replaces, with its own renewal time, for
    /// [`rollback`](Self::rollback). Returns the replaced certificate.
    pub fn install(
        &self,
        slot: &str,
        cert: ValidatedCert,
        renew_at: impl Into<Renewal>,
    ) -> Option<Arc<CertInfo>> {
        let mut slots = self.lock();
        let now = self.inner.clock.now();
        let history = self.inner.history;
        let installed = Installed {
            cert: cert.clone(),
            renewal: renew_at.into(),
        };
        let (name, old) = slots.change(slot, |entry| {
            let old = entry.current.replace(installed);
            if let Some(old) = &old {
                entry.previous.push_front(old.clone());
                entry.previous.truncate(history - 1);
            }
            entry.last_error = None;
            (entry.name.clone(), old)
        });
        slots.rotations += 1;
        slots.last_rotation = Some(now);
        let level = slots.note_level(&name, now).expect("it serves `cert`");
        let (totals, soonest) = slots.totals();
        self.inner.events.origin(&name, Some(&cert.info.origin));
        drop(slots);
        self.inner.changes.send_modify(|n| *n += 1);
        let old = old.map(|o| o.cert.info);
        let serving = (&*name, &*cert.info, level);
        self.inner.events.serving(serving, &totals, soonest);
        self.inner.events.emit(RotationEvent::Rotated {
            slot: name,
            old: old.clone(),
            new: cert.info,
        });
        old
    }

    /// Restores the previous good certificate of `slot` for new handshakes,
    /// at once, with the renewal time it had. Certificates that have expired since are skipped. The
    /// certificate rolled back from is dropped from the history.
    pub fn rollback(&self, slot: &str) -> Result<Arc<CertInfo>, RollbackError> {
        let mut slots = self.lock();
        let now = self.inner.clock.now();
        if slots.get(slot).is_none() {
            return Err(RollbackError::UnknownSlot(slot.to_owned()));
        }
        let (name, from, to) = slots.change(slot, |entry| {
            let from = entry
                .current
                .clone()
                .ok_or_else(|| RollbackError::NothingServing(slot.to_owned()))?;
            entry.previous.retain(|c| c.cert.info.not_after > now);
            let to = entry
                .previous
                .pop_front()
                .ok_or_else(|| RollbackError::NoPrevious(slot.to_owned()))?;
            entry.current = Some(to.clone());
            Ok((entry.name.clone(), from.cert, to.cert))
        })?;
        let level = slots.note_level(&name, now).expect("it serves `to`");
        let (totals, soonest) = slots.totals();
        self.inner.events.origin(&name, Some(&to.info.origin));
        drop(slots);
        self.inner.changes.send_modify(|n| *n += 1);
        let serving = (&*name, &*to.info, level);
        self.inner.events.serving(serving, &totals, soonest);
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
        let Some(removed) = slots.remove(slot) else {
            return false;
        };
        let (totals, soonest) = slots.totals();
        self.inner.events.origin(&removed.name, None);
        drop(slots);
        self.inner.events.totals(&totals, soonest);
        self.inner.changes.send_modify(|n| *n += 1);
        self.inner.events.emit(RotationEvent::Removed {
            slot: removed.name,
            cert: removed.current.map(|c| c.cert.info),
        });
        true
    }

    /// The certificate serving in `slot`, if any.
    pub fn current(&self, slot: &str) -> Option<Arc<CertInfo>> {
        let slots = self.lock();
        slots
            .get(slot)?
            .current
            .as_ref()
            .map(|c| c.cert.info.clone())
    }

    /// The health of the store, as of its clock: counts over every slot,
    /// the soonest expiries, and the first [`HEALTH_LIMIT`] slots of each
    /// list (see [`HealthSnapshot`]).
    pub fn health(&self) -> HealthSnapshot {
        self.health_page(0, HEALTH_LIMIT)
    }

    /// [`health`](Self::health) with the serving slots from the
    /// `offset`th on, at most `limit` of them (and at most `limit` unserved
    /// and failing slots). Follow [`HealthSnapshot::next_offset`] to read
    /// them all.
    ///
    /// ```
    /// # let store = certrotate::CertStore::new();
    /// let mut offset = Some(0);
    /// while let Some(at) = offset {
    ///     let page = store.health_page(at, 500);
    ///     for cert in &page.certificates {
    ///         println!("{} {}", cert.slot, cert.alert);
    ///     }
    ///     offset = page.next_offset;
    /// }
    /// ```
    pub fn health_page(&self, offset: usize, limit: usize) -> HealthSnapshot {
        let slots = self.lock();
        let now = self.inner.clock.now();
        // One pass over every slot, in memory order, for what needs them
        // all: the alert counts (levels move with time), the failures and
        // the unserved. Bounded heaps keep the `limit` latest failures and
        // the `limit` oldest unserved slots. The page and the soonest
        // expiries come from the store's ordered indexes.
        let mut alerts = AlertCounts::default();
        let (mut failing, mut failing_count) = (BinaryHeap::new(), 0);
        let (mut unserved, mut unserved_count) = (BinaryHeap::new(), 0);
        let mut latest: Option<&(u64, Failure)> = None;
        for slot in slots.iter() {
            if let Some(error) = &slot.last_error {
                failing_count += 1;
                failing.push(Reverse((error.0, &*slot.name)));
                if failing.len() > limit {
                    failing.pop();
                }
                if latest.is_none_or(|l| l.0 < error.0) {
                    latest = Some(error);
                }
            }
            match slot.level(now) {
                Some(level) => alerts.add(level),
                None => {
                    unserved_count += 1;
                    unserved.push((slot.seq(), &*slot.name));
                    if unserved.len() > limit {
                        unserved.pop();
                    }
                }
            }
        }
        // Most recent failure first.
        let failing = failing
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse((_, name))| name.to_owned())
            .collect();
        let unserved = unserved
            .into_sorted_vec()
            .into_iter()
            .filter_map(|(_, name)| slots.get(name))
            .map(|slot| UnservedSlot {
                slot: slot.name.to_string(),
                last_error: slot.last_error.as_ref().map(|(_, f)| f.message.clone()),
                last_error_code: slot.last_error.as_ref().map(|(_, f)| f.code),
                warnings: slot.warnings.clone(),
            })
            .collect();
        let certificates: Vec<_> = slots
            .serving(offset)
            .take(limit)
            .map(|s| s.health(now))
            .collect();
        let soonest = slots
            .soonest()
            .take(SOONEST)
            .map(|s| s.health(now))
            .collect();
        let served = slots.served();
        let shown = offset.saturating_add(certificates.len());
        HealthSnapshot {
            alert: AlertLevel::ALL
                .into_iter()
                .rfind(|level| alerts.at(*level) > 0)
                .unwrap_or(AlertLevel::Ok),
            served,
            alerts,
            next_offset: (served > shown).then_some(shown),
            certificates,
            soonest,
            soonest_expiry: slots.totals().1,
            unserved,
            unserved_count,
            failing,
            failing_count,
            last_rotation: slots.last_rotation,
            rotations: slots.rotations,
            last_error: latest.map(|(_, f)| f.message.clone()),
            last_error_code: latest.map(|(_, f)| f.code),
        }
    }

    /// Up to how many slots metrics name each slot (see
    /// [`CertStoreBuilder::metric_slots`]).
    #[cfg_attr(not(feature = "health"), allow(dead_code))]
    pub(crate) fn metric_slots(&self) -> usize {
        self.inner.metric_slots
    }

    /// Records the alert level of `slot`'s serving certificate `cert` (its
    /// rotator checks it as time passes) and refreshes its gauges.
    pub(crate) fn report_level(&self, slot: &str, cert: &CertInfo, level: AlertLevel) {
        let mut slots = self.lock();
        // A slot removed meanwhile (its rotator finishing) gets no series.
        if !slots.set_level(slot, level) {
            return;
        }
        let (totals, soonest) = slots.totals();
        drop(slots);
        self.inner
            .events
            .serving((slot, cert, level), &totals, soonest);
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
        slots.entry(slot).last_error = Some((seq, failure));
    }

    /// Clears `slot`'s failure: its latest candidate was accepted (or was the
    /// certificate already serving).
    pub(crate) fn record_success(&self, slot: &str) {
        let mut slots = self.lock();
        slots.entry(slot).last_error = None;
    }

    /// A source filling this store answers TLS-ALPN-01 challenges from it:
    /// the configs serving it offer `acme-tls/1` from now on.
    #[cfg(feature = "acme")]
    pub(crate) fn answer_tls_alpn_01(&self) {
        use std::sync::atomic::Ordering;
        self.inner.tls_alpn_01.store(true, Ordering::Relaxed);
    }

    /// Whether a source filling this store answers TLS-ALPN-01 challenges.
    pub(crate) fn answers_tls_alpn_01(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.inner.tls_alpn_01.load(Ordering::Relaxed)
    }

    /// Answers TLS-ALPN-01 validation for `name` with `key` (RFC 8737) until
    /// [`remove_challenge`](Self::remove_challenge).
    #[cfg(feature = "acme")]
    pub(crate) fn set_challenge(&self, name: &str, key: Arc<CertifiedKey>) {
        self.lock().set_challenge(name, Some(key));
    }

    #[cfg(feature = "acme")]
    pub(crate) fn remove_challenge(&self, name: &str) {
        self.lock().set_challenge(name, None);
    }

    /// Replaces `slot`'s source warnings (shown in health).
    pub(crate) fn set_warnings(&self, slot: &str, warnings: Vec<String>) {
        self.lock().entry(slot).warnings = warnings;
    }

    /// Creates `slot` (empty, unserved) unless it exists: slots are listed
    /// in the order they were created.
    pub(crate) fn add_slot(&self, slot: &str) {
        self.lock().entry(slot);
    }

    /// The certificate serving in `slot`, and when it is due for renewal.
    pub(crate) fn serving(&self, slot: &str) -> Option<(Arc<CertInfo>, Renewal)> {
        let slots = self.lock();
        let current = slots.get(slot)?.current.as_ref()?;
        Some((current.cert.info.clone(), current.renewal))
    }

    /// Makes `slot`'s serving certificate critical from `from` on (renewal
    /// keeps failing with less than the outage budget left), or no longer.
    pub(crate) fn set_outage_critical(&self, slot: &str, from: Option<std::time::SystemTime>) {
        if let Some(slot) = self.lock().get_mut(slot) {
            slot.set_outage_critical(from);
        }
    }

    /// Moves when `slot`'s serving certificate is due for renewal (its
    /// source learnt a new time).
    pub(crate) fn set_renew_at(&self, slot: &str, at: Renewal) {
        if let Some(slot) = self.lock().get_mut(slot) {
            slot.set_renew_at(at);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // A panic while holding the lock cannot leave `Slots` half-changed in a
        // way that matters more than stopping rotation would.
        crate::sync::lock(&self.inner.slots)
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

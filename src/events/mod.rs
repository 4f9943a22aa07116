//! [`RotationEvent`]: what happened, on a broadcast channel and in `tracing`.

#[cfg(feature = "acme")]
mod on_demand;
#[cfg(feature = "acme")]
pub use on_demand::OnDemandError;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use crate::bundle::CertInfo;
use crate::clock::{human, rfc3339, Clock};
use crate::health::{AlertCounts, AlertLevel};
#[cfg(feature = "metrics")]
use crate::metrics;
use crate::metrics::Outcome;
use crate::policy::ValidationError;
use crate::source_error::{SourceError, SourceWarning};

/// Something the rotation machinery did or saw.
///
/// Every event is also logged as a structured `tracing` event (target
/// `certrotate`): rotations, rollbacks and removals at INFO, refusals, source
/// failures and warnings at WARN, expiry warnings at WARN (ERROR once
/// critical or expired).
///
/// # Example
///
/// ```no_run
/// # async fn demo(store: certrotate::CertStore) {
/// use certrotate::RotationEvent;
///
/// let mut events = store.subscribe();
/// while let Ok(event) = events.recv().await {
///     if let RotationEvent::Refused { error, .. } = &event {
///         eprintln!("alert: {error}");
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RotationEvent {
    /// A rotation attempt started.
    Attempted {
        /// The store slot being rotated.
        slot: Arc<str>,
        /// What started it.
        trigger: Trigger,
    },
    /// A new certificate went live.
    Rotated {
        /// The store slot.
        slot: Arc<str>,
        /// The certificate that served before, if any.
        old: Option<Arc<CertInfo>>,
        /// The certificate serving now.
        new: Arc<CertInfo>,
    },
    /// A candidate failed the policy; the old certificate keeps serving.
    Refused {
        /// The store slot.
        slot: Arc<str>,
        /// Which certificate and why.
        error: Arc<ValidationError>,
    },
    /// The previous certificate was restored.
    RolledBack {
        /// The store slot.
        slot: Arc<str>,
        /// The certificate that was serving.
        from: Arc<CertInfo>,
        /// The certificate serving now.
        to: Arc<CertInfo>,
    },
    /// The source could not produce a candidate.
    SourceFailed {
        /// The store slot.
        slot: Arc<str>,
        /// What went wrong.
        error: SourceError,
    },
    /// The source works but something about it is unsafe (a private key
    /// file others can read). Emitted when the warning first appears.
    Warning {
        /// The store slot.
        slot: Arc<str>,
        /// What is wrong.
        warning: SourceWarning,
    },
    /// A slot was removed (its pair left a [`CertDirectory`](crate::CertDirectory),
    /// or [`CertStore::remove`](crate::CertStore::remove) was called); its
    /// names are no longer served.
    Removed {
        /// The store slot.
        slot: Arc<str>,
        /// The certificate it was serving, if any.
        cert: Option<Arc<CertInfo>>,
    },
    /// The serving certificate's expiry [`AlertLevel`] got worse, or is still
    /// not `ok` an [`alert_repeat`](crate::rotator::RotatorBuilder::alert_repeat)
    /// after the last warning. A [`Rotated`](Self::Rotated) event ends it.
    ExpiryWarning {
        /// The store slot.
        slot: Arc<str>,
        /// The certificate serving.
        cert: Arc<CertInfo>,
        /// How bad it is.
        level: AlertLevel,
        /// Time left before it expires.
        remaining: Duration,
    },
    /// A handshake asked for a name [`OnDemand`](crate::OnDemand) did not
    /// serve it a certificate for.
    #[cfg(feature = "acme")]
    OnDemandRefused {
        /// The server name the client asked for.
        name: Arc<str>,
        /// Why.
        error: OnDemandError,
    },
}

/// What started a rotation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// The first load, at start.
    Initial,
    /// The source said it has something new.
    SourceChanged,
    /// The serving certificate reached its renewal time.
    Schedule,
    /// Someone called [`Rotator::rotate_now`](crate::Rotator::rotate_now).
    Manual,
    /// A retry after a failed attempt.
    Retry,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Initial => "initial load",
            Self::SourceChanged => "source changed",
            Self::Schedule => "renewal schedule",
            Self::Manual => "manual trigger",
            Self::Retry => "retry",
        })
    }
}

/// The sending side: logs each event, then broadcasts it.
/// The one place where what happens is told: to subscribers, to `tracing`
/// and to metrics.
#[derive(Debug, Clone)]
pub(crate) struct Events {
    sender: broadcast::Sender<RotationEvent>,
    clock: Arc<dyn Clock>,
    /// Whether metrics name each slot: off while the store has more slots
    /// than its [`metric_slots`](crate::store::CertStoreBuilder::metric_slots).
    per_slot: Arc<AtomicBool>,
    /// The origin each named slot serves from, to zero its series when it
    /// changes (the CA a fallback turned to): as many as named slots.
    #[cfg(feature = "metrics")]
    origins: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

impl Events {
    pub(crate) fn new(capacity: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
            clock,
            per_slot: Arc::new(AtomicBool::new(true)),
            #[cfg(feature = "metrics")]
            origins: Arc::default(),
        }
    }

    /// Turns per-slot metric series on or off (off: each slot's origin
    /// series goes to 0, as for a slot removed).
    pub(crate) fn set_per_slot(&self, on: bool) {
        self.per_slot.store(on, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if !on {
            let origins = std::mem::take(&mut *crate::sync::lock(&self.origins));
            for (slot, origin) in origins {
                metrics::origin(&slot, None, Some(&origin));
            }
        }
    }

    /// `slot` serves from `origin` now (`None`: it was removed). The store
    /// calls it under its slot lock, so that one slot's changes come in
    /// order (a removal cannot be overtaken by the install before it).
    pub(crate) fn origin(&self, slot: &str, origin: Option<&str>) {
        #[cfg(feature = "metrics")]
        {
            let previous = {
                let mut origins = crate::sync::lock(&self.origins);
                match origin {
                    Some(_) if self.label(slot).is_none() => return,
                    Some(new) if origins.get(slot).is_some_and(|o| o == new) => return,
                    Some(new) => origins.insert(slot.to_owned(), new.to_owned()),
                    None => origins.remove(slot),
                }
            };
            if origin.is_some() || previous.is_some() {
                metrics::origin(slot, origin, previous.as_deref());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (slot, origin);
    }

    /// `slot`, as metrics label it: `None` once there are too many slots.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn label<'a>(&self, slot: &'a str) -> Option<&'a str> {
        self.per_slot.load(Ordering::Relaxed).then_some(slot)
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RotationEvent> {
        self.sender.subscribe()
    }

    pub(crate) fn emit(&self, event: RotationEvent) {
        log(&event);
        #[cfg(feature = "metrics")]
        match &event {
            RotationEvent::Rotated { slot, .. } => {
                metrics::installed(self.label(slot), self.clock.now())
            }
            RotationEvent::RolledBack { slot, .. } => metrics::rolled_back(self.label(slot)),
            #[cfg(feature = "acme")]
            RotationEvent::OnDemandRefused { error, .. } => {
                metrics::on_demand(metrics::OnDemandCount::Refused(error.reason()))
            }
            _ => {}
        }
        // No subscriber is fine: events are also in the logs.
        let _ = self.sender.send(event);
    }

    /// `cert` serves in `slot`, at `level`, and the store's serving
    /// certificates are `totals`, the soonest expiring at `soonest`:
    /// refreshes the slot's gauges (while slots are named) and the totals.
    pub(crate) fn serving(
        &self,
        (slot, cert, level): (&str, &CertInfo, AlertLevel),
        totals: &AlertCounts,
        soonest: Option<SystemTime>,
    ) {
        #[cfg(feature = "metrics")]
        {
            if let Some(slot) = self.label(slot) {
                metrics::serving(slot, cert, level.as_number(), self.clock.now());
            }
            metrics::totals(totals, soonest);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (slot, cert, level, totals, soonest, &self.clock);
    }

    /// The store's serving certificates changed without one starting to
    /// serve (a slot was removed): refreshes the totals.
    pub(crate) fn totals(&self, totals: &AlertCounts, soonest: Option<SystemTime>) {
        #[cfg(feature = "metrics")]
        metrics::totals(totals, soonest);
        #[cfg(not(feature = "metrics"))]
        let _ = (totals, soonest);
    }

    /// On-demand issuance did `what`.
    #[cfg(feature = "acme")]
    pub(crate) fn on_demand(&self, what: crate::metrics::OnDemandCount) {
        #[cfg(feature = "metrics")]
        metrics::on_demand(what);
        #[cfg(not(feature = "metrics"))]
        let _ = what;
    }

    /// An order with the ACME CA at `ca` issued (`ok`) or failed.
    #[cfg(feature = "acme")]
    pub(crate) fn acme_order(&self, ca: &str, ok: bool) {
        #[cfg(feature = "metrics")]
        metrics::acme_order(ca, ok);
        #[cfg(not(feature = "metrics"))]
        let _ = (ca, ok);
    }

    /// A rotation attempt on `slot`, from a source of kind `source`, ended
    /// with `outcome` (its events were emitted already).
    pub(crate) fn attempted(&self, slot: &str, source: &'static str, outcome: Outcome) {
        #[cfg(feature = "metrics")]
        metrics::attempted(self.label(slot), source, outcome, self.clock.now());
        #[cfg(not(feature = "metrics"))]
        let _ = (slot, source, outcome);
    }
}

fn log(event: &RotationEvent) {
    match event {
        // Floods of refused names are to be expected: the counts are in
        // the metrics; failures of the CA are not.
        #[cfg(feature = "acme")]
        RotationEvent::OnDemandRefused { name, error } => match error {
            OnDemandError::Failed { .. }
            | OnDemandError::Refused { .. }
            | OnDemandError::TimedOut { .. }
            | OnDemandError::Aborted { .. } => {
                tracing::warn!(target: "certrotate", %name, reason = error.reason(), "on-demand certificate refused: {error}")
            }
            _ => {
                tracing::debug!(target: "certrotate", %name, reason = error.reason(), "on-demand certificate refused: {error}")
            }
        },
        RotationEvent::Attempted { slot, trigger } => {
            tracing::debug!(target: "certrotate", %slot, %trigger, "rotation attempt")
        }
        RotationEvent::Rotated { slot, old, new } => tracing::info!(
            target: "certrotate",
            %slot,
            old_serial = old.as_ref().map(|o| o.serial.as_str()),
            new_serial = %new.serial,
            subject = %new.subject,
            not_after = %rfc3339(new.not_after),
            "certificate rotated"
        ),
        RotationEvent::Refused { slot, error } => tracing::warn!(
            target: "certrotate",
            %slot,
            serial = %error.cert().serial,
            reason = %error.reason(),
            "candidate certificate refused: {error}"
        ),
        RotationEvent::RolledBack { slot, from, to } => tracing::info!(
            target: "certrotate",
            %slot,
            from_serial = %from.serial,
            to_serial = %to.serial,
            "certificate rolled back"
        ),
        RotationEvent::SourceFailed { slot, error } => {
            tracing::warn!(target: "certrotate", %slot, "certificate source failed: {error}")
        }
        RotationEvent::Warning { slot, warning } => {
            tracing::warn!(target: "certrotate", %slot, "{warning}")
        }
        RotationEvent::Removed { slot, cert } => tracing::info!(
            target: "certrotate",
            %slot,
            serial = cert.as_ref().map(|c| c.serial.as_str()),
            "certificate slot removed"
        ),
        RotationEvent::ExpiryWarning {
            slot,
            cert,
            level,
            remaining,
        } => {
            let remaining = human(*remaining);
            match level {
                AlertLevel::Critical | AlertLevel::Expired => tracing::error!(
                    target: "certrotate", %slot, serial = %cert.serial, ?level, %remaining,
                    "serving certificate is {level}: {cert} expires at {}", rfc3339(cert.not_after)
                ),
                _ => tracing::warn!(
                    target: "certrotate", %slot, serial = %cert.serial, ?level, %remaining,
                    "serving certificate is {level}: {cert} expires at {}", rfc3339(cert.not_after)
                ),
            }
        }
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use super::*;

    /// Which CA issued each certificate, as metrics say it: 1 for the
    /// origin a slot serves from, 0 for the one it left, for a slot
    /// removed, and for every slot once slots are no longer named (a
    /// series left at 1 would still list them).
    #[test]
    fn an_origin_series_is_zeroed_when_its_slot_moves_or_goes() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let mut before = String::new();
        ::metrics::with_local_recorder(&recorder, || {
            let events = Events::new(16, Arc::new(crate::clock::SystemClock));
            events.origin("a", Some("first CA"));
            events.origin("a", Some("second CA"));
            events.origin("b", Some("first CA"));
            events.origin("b", None);
            events.origin("c", Some("first CA"));
            before = handle.render();
            events.set_per_slot(false);
            events.origin("d", Some("first CA"));
        });
        let after = handle.render();
        let series = |text: &str, slot: &str, origin: &str, value: u8| {
            let line = format!(
                r#"certrotate_certificate_info{{slot="{slot}",origin="{origin}"}} {value}"#
            );
            text.lines().any(|l| l == line)
        };
        let moved = series(&before, "a", "first CA", 0) && series(&before, "a", "second CA", 1);
        assert!(moved, "{before}");
        assert!(series(&before, "b", "first CA", 0), "removed: {before}");
        assert!(series(&before, "c", "first CA", 1), "{before}");
        for (slot, origin) in [("a", "second CA"), ("c", "first CA")] {
            assert!(series(&after, slot, origin, 0), "no longer named: {after}");
        }
        assert!(!after.contains(r#"slot="d""#), "{after}");
    }
}

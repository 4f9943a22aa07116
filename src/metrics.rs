//! Metric names and help texts, in one table, and their recording through
//! the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`):
//! whichever recorder the application installs (Prometheus, StatsD,
//! OpenTelemetry...) receives them; without one they cost nothing.
//!
//! Only the event emitter ([`Events`](crate::events)) records metrics, and
//! [`HealthService`](crate::HealthService)'s Prometheus text takes its names
//! and help texts from the same table. The metrics are listed in the crate
//! documentation's [Metrics](crate#metrics) table (and the README's).

// Without `metrics`, only the names `HealthService` shows are read.
#![cfg_attr(not(feature = "metrics"), allow(dead_code))]

#[cfg(feature = "metrics")]
use std::time::SystemTime;

#[cfg(feature = "metrics")]
use crate::bundle::CertInfo;

/// One metric: its name and help text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Metric {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
}

pub(crate) const EXPIRY: Metric = Metric {
    name: "certrotate_certificate_expiry_timestamp_seconds",
    help: "Expiry (not_after) of the serving certificate, as Unix time.",
};
pub(crate) const REMAINING: Metric = Metric {
    name: "certrotate_certificate_remaining_seconds",
    help: "Seconds left before the serving certificate expires.",
};
pub(crate) const ALERT_LEVEL: Metric = Metric {
    name: "certrotate_certificate_alert_level",
    help: "Expiry alert level: 0 ok, 1 renew-overdue, 2 critical, 3 expired.",
};
pub(crate) const ORIGIN: Metric = Metric {
    name: "certrotate_certificate_info",
    help: "Where the serving certificate came from (for ACME, the CA that issued it): 1 for the origin a slot serves from; 0 for one it left, a slot removed, and every slot once slots are no longer named.",
};
const ROTATIONS: Metric = Metric {
    name: "certrotate_rotations_total",
    help: "Rotation attempts, by source and result (rotated, unchanged, refused, failed).",
};
const REFUSALS: Metric = Metric {
    name: "certrotate_refusals_total",
    help: "Candidate certificates refused by the policy, by reason.",
};
const SOURCE_ERRORS: Metric = Metric {
    name: "certrotate_source_errors_total",
    help: "Failed fetches from a certificate source, by kind of error.",
};
const ROLLBACKS: Metric = Metric {
    name: "certrotate_rollbacks_total",
    help: "Rollbacks to the previous certificate.",
};
const LAST_ROTATION: Metric = Metric {
    name: "certrotate_last_rotation_timestamp_seconds",
    help: "When a certificate last went live, as Unix time.",
};
const LAST_ATTEMPT: Metric = Metric {
    name: "certrotate_last_attempt_timestamp_seconds",
    help: "When a rotation was last attempted, as Unix time.",
};
pub(crate) const CERTIFICATES: Metric = Metric {
    name: "certrotate_certificates",
    help: "Serving certificates, by alert level (ok, renew-overdue, critical, expired).",
};
pub(crate) const SOONEST_EXPIRY: Metric = Metric {
    name: "certrotate_soonest_expiry_timestamp_seconds",
    help: "Expiry of the serving certificate that expires first, as Unix time.",
};
/// Only in `HealthService`'s text.
#[cfg_attr(not(feature = "health"), allow(dead_code))]
pub(crate) const UNSERVED: Metric = Metric {
    name: "certrotate_unserved_slots",
    help: "Slots with no certificate to serve.",
};
/// Only in `HealthService`'s text.
#[cfg_attr(not(feature = "health"), allow(dead_code))]
pub(crate) const HEALTHY: Metric = Metric {
    name: "certrotate_healthy",
    help: "1 while the health check passes, else 0.",
};

pub(crate) const ON_DEMAND_REFUSALS: Metric = Metric {
    name: "certrotate_on_demand_refusals_total",
    help: "Handshakes refused a certificate on demand, by reason.",
};
pub(crate) const ON_DEMAND_ORDERS: Metric = Metric {
    name: "certrotate_on_demand_orders_total",
    help: "Certificates ordered on demand, by result (issued, failed).",
};
pub(crate) const ON_DEMAND_CACHE: Metric = Metric {
    name: "certrotate_on_demand_cache_total",
    help: "On-demand names looked up (hit, miss), loaded from storage (load), dropped from memory (eviction).",
};
pub(crate) const ACME_ORDERS: Metric = Metric {
    name: "certrotate_acme_orders_total",
    help: "ACME orders, by CA (its directory URL) and result (issued, failed).",
};
pub(crate) const ON_DEMAND_WAITING: Metric = Metric {
    name: "certrotate_on_demand_waiting_handshakes",
    help: "Handshakes waiting for a certificate on demand.",
};

/// Something on-demand issuance did, for its metrics.
#[cfg(feature = "acme")]
#[derive(Debug, Clone, Copy)]
pub(crate) enum OnDemandCount {
    /// A name served already.
    Hit,
    /// A name to obtain.
    Miss,
    /// A certificate loaded from storage.
    Load,
    /// An order ended.
    Order { ok: bool },
    /// A name dropped from memory.
    Eviction,
    /// Handshakes waiting now.
    Waiting(usize),
    /// A handshake refused, with the reason's code.
    Refused(&'static str),
}

/// How a rotation attempt ended, for `certrotate_rotations_total`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Rotated,
    Unchanged,
    /// Refused by the policy, with the refusal's code.
    Refused(&'static str),
    /// The source failed, with the error's code.
    Failed(&'static str),
}

#[cfg(feature = "metrics")]
pub(crate) use recording::*;

#[cfg(feature = "metrics")]
mod recording {
    use std::sync::Once;

    use metrics::{counter, describe_counter, describe_gauge, gauge, Label, Unit};

    use super::*;
    use crate::clock::unix_seconds;
    use crate::health::{AlertCounts, AlertLevel};

    /// The labels of a per-slot series: `slot` (left out once there are too
    /// many slots for one series each), then `extra`.
    fn labels(slot: Option<&str>, extra: &[(&'static str, &'static str)]) -> Vec<Label> {
        slot.map(|slot| Label::new("slot", slot.to_owned()))
            .into_iter()
            .chain(extra.iter().map(|(k, v)| Label::new(*k, *v)))
            .collect()
    }

    /// Gives the recorder each metric's unit and help text, once.
    fn describe() {
        static DESCRIBED: Once = Once::new();
        DESCRIBED.call_once(|| {
            for gauge in [
                EXPIRY,
                REMAINING,
                LAST_ROTATION,
                LAST_ATTEMPT,
                SOONEST_EXPIRY,
            ] {
                describe_gauge!(gauge.name, Unit::Seconds, gauge.help);
            }
            describe_gauge!(ALERT_LEVEL.name, ALERT_LEVEL.help);
            describe_gauge!(ORIGIN.name, ORIGIN.help);
            describe_gauge!(CERTIFICATES.name, CERTIFICATES.help);
            for count in [
                ROTATIONS,
                REFUSALS,
                SOURCE_ERRORS,
                ROLLBACKS,
                ON_DEMAND_REFUSALS,
                ON_DEMAND_ORDERS,
                ON_DEMAND_CACHE,
                ACME_ORDERS,
            ] {
                describe_counter!(count.name, count.help);
            }
            describe_gauge!(ON_DEMAND_WAITING.name, ON_DEMAND_WAITING.help);
        });
    }

    /// The serving certificate of `slot`, at `now`, at alert level `level`
    /// (as a number).
    pub(crate) fn serving(slot: &str, cert: &CertInfo, level: u8, now: SystemTime) {
        describe();
        let slot = slot.to_owned();
        let remaining = cert.not_after.duration_since(now).unwrap_or_default();
        gauge!(EXPIRY.name, "slot" => slot.clone()).set(unix_seconds(cert.not_after) as f64);
        gauge!(REMAINING.name, "slot" => slot.clone()).set(remaining.as_secs_f64());
        gauge!(ALERT_LEVEL.name, "slot" => slot).set(f64::from(level));
    }

    /// `slot` now serves a certificate from `origin` (none: it was
    /// removed), and served one from `previous` before (its series goes
    /// to 0).
    pub(crate) fn origin(slot: &str, origin: Option<&str>, previous: Option<&str>) {
        describe();
        let set = |origin: &str, value: f64| {
            let labels = [("slot", slot.to_owned()), ("origin", origin.to_owned())];
            gauge!(ORIGIN.name, &labels).set(value);
        };
        if let Some(previous) = previous {
            set(previous, 0.0);
        }
        if let Some(origin) = origin {
            set(origin, 1.0);
        }
    }

    /// The serving certificates of the whole store: how many per alert
    /// level, and the soonest expiry.
    pub(crate) fn totals(counts: &AlertCounts, soonest: Option<SystemTime>) {
        describe();
        for level in AlertLevel::ALL {
            gauge!(CERTIFICATES.name, "alert" => level.to_string()).set(counts.at(level) as f64);
        }
        if let Some(soonest) = soonest {
            gauge!(SOONEST_EXPIRY.name).set(unix_seconds(soonest) as f64);
        }
    }

    /// A certificate went live in `slot` (`None`: one of too many slots to
    /// name) at `now`.
    pub(crate) fn installed(slot: Option<&str>, now: SystemTime) {
        describe();
        gauge!(LAST_ROTATION.name, labels(slot, &[])).set(unix_seconds(now) as f64);
    }

    /// `slot` was rolled back.
    pub(crate) fn rolled_back(slot: Option<&str>) {
        describe();
        counter!(ROLLBACKS.name, labels(slot, &[])).increment(1);
    }

    /// A rotation attempt on `slot`, from a source of kind `source`, ended
    /// with `outcome` at `now`.
    pub(crate) fn attempted(
        slot: Option<&str>,
        source: &'static str,
        outcome: Outcome,
        now: SystemTime,
    ) {
        describe();
        gauge!(LAST_ATTEMPT.name, labels(slot, &[])).set(unix_seconds(now) as f64);
        let result = match outcome {
            Outcome::Rotated => "rotated",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused(reason) => {
                counter!(REFUSALS.name, labels(slot, &[("reason", reason)])).increment(1);
                "refused"
            }
            Outcome::Failed(kind) => {
                let extra = [("source", source), ("kind", kind)];
                counter!(SOURCE_ERRORS.name, labels(slot, &extra)).increment(1);
                "failed"
            }
        };
        let extra = [("source", source), ("result", result)];
        counter!(ROTATIONS.name, labels(slot, &extra)).increment(1);
    }

    /// An order with the ACME CA at `ca` issued (`ok`) or failed.
    #[cfg(feature = "acme")]
    pub(crate) fn acme_order(ca: &str, ok: bool) {
        describe();
        let result = if ok { "issued" } else { "failed" };
        counter!(ACME_ORDERS.name, "ca" => ca.to_owned(), "result" => result).increment(1);
    }

    /// What on-demand issuance did.
    #[cfg(feature = "acme")]
    pub(crate) fn on_demand(what: OnDemandCount) {
        describe();
        let cache =
            |event: &'static str| counter!(ON_DEMAND_CACHE.name, "event" => event).increment(1);
        match what {
            OnDemandCount::Hit => cache("hit"),
            OnDemandCount::Miss => cache("miss"),
            OnDemandCount::Load => cache("load"),
            OnDemandCount::Eviction => cache("eviction"),
            OnDemandCount::Order { ok } => {
                let result = if ok { "issued" } else { "failed" };
                counter!(ON_DEMAND_ORDERS.name, "result" => result).increment(1);
            }
            OnDemandCount::Waiting(n) => gauge!(ON_DEMAND_WAITING.name).set(n as f64),
            OnDemandCount::Refused(reason) => {
                counter!(ON_DEMAND_REFUSALS.name, "reason" => reason).increment(1);
            }
        }
    }
}

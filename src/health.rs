//! The health snapshot: what is serving, how long it has left, what went wrong.

#[cfg(feature = "acme")]
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::bundle::CertInfo;

#[cfg(feature = "acme")]
/// What on-demand issuance ([`OnDemand`](crate::OnDemand)) has done so far (counts since it was built),
/// for health pages.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct OnDemandStats {
    /// Names served from memory now.
    pub cached: usize,
    /// Names being decided, loaded or ordered now.
    pub pending: usize,
    /// Handshakes waiting for a certificate now.
    pub waiting: usize,
    /// Orders in flight now.
    pub orders_in_flight: usize,
    /// Handshakes for names in memory (or served by the store otherwise).
    pub hits: u64,
    /// Handshakes that started obtaining a name (a load or an order).
    pub misses: u64,
    /// Certificates loaded from storage, without an order.
    pub loads: u64,
    /// Orders that succeeded.
    pub orders: u64,
    /// Orders that failed.
    pub failed_orders: u64,
    /// Names dropped from memory (they stay in storage).
    pub evictions: u64,
    /// Refused handshakes, by [reason](crate::on_demand::OnDemandError::reason).
    pub refusals: BTreeMap<&'static str, u64>,
}

/// How close a serving certificate is to expiry, given when it should have
/// been renewed (its renewal time: see [`CertSource::renew_at`](crate::CertSource::renew_at)).
///
/// | level | from |
/// |---|---|
/// | `ok` | issuance |
/// | `renew-overdue` | the renewal time has passed and the certificate still serves |
/// | `critical` | less than 10% of the lifetime **or** less than 24 h is left (but never before `renew-overdue`) |
/// | `expired` | `not_after` |
///
/// So a 90-day certificate due for renewal 30 days before expiry is overdue with
/// 30 days left and critical with 9 days left; a 3-second service
/// certificate whose renewal failed is critical at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertLevel {
    /// Before the renewal time.
    Ok,
    /// Past the renewal time, still serving the old certificate.
    RenewOverdue,
    /// Less than 10% of the lifetime or less than 24 h left.
    Critical,
    /// Past `not_after`: clients reject it.
    Expired,
}

/// When a serving certificate's [`AlertLevel`] changes: the rule of
/// [`AlertLevel::at`], worked out once per certificate so that a health
/// check over many slots compares three times per slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LevelTimes {
    overdue: SystemTime,
    critical: SystemTime,
    expired: SystemTime,
}

impl LevelTimes {
    pub(crate) fn of(cert: &CertInfo, renew_at: SystemTime) -> Self {
        let (overdue, critical) = AlertLevel::thresholds(cert, renew_at);
        Self {
            overdue: cert.not_after - overdue,
            critical: cert.not_after - critical,
            expired: cert.not_after,
        }
    }

    /// The level at `now`: overdue from the renewal time, critical once
    /// less than the critical margin is left, expired from `not_after`.
    pub(crate) fn at(&self, now: SystemTime) -> AlertLevel {
        if now >= self.expired {
            AlertLevel::Expired
        } else if now > self.critical {
            AlertLevel::Critical
        } else if now >= self.overdue {
            AlertLevel::RenewOverdue
        } else {
            AlertLevel::Ok
        }
    }
}

/// Critical below this much time left, whatever the lifetime.
const CRITICAL_BELOW: Duration = Duration::from_secs(24 * 3600);

impl AlertLevel {
    /// Every level, from best to worst.
    pub(crate) const ALL: [Self; 4] = [Self::Ok, Self::RenewOverdue, Self::Critical, Self::Expired];

    /// The level of `cert` at `now`, when it is due for renewal at `renew_at`.
    ///
    /// ```
    /// use certrotate::AlertLevel;
    /// # let ck = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
    /// # let bundle = certrotate::CertBundle::from_pem(ck.cert.pem().as_bytes(), ck.signing_key.serialize_pem().as_bytes()).unwrap();
    /// let info = bundle.info();
    /// let renew_at = info.not_after - info.lifetime() / 3;
    /// assert_eq!(AlertLevel::at(info, info.not_before, renew_at), AlertLevel::Ok);
    /// assert_eq!(AlertLevel::at(info, renew_at, renew_at), AlertLevel::RenewOverdue);
    /// assert_eq!(AlertLevel::at(info, info.not_after, renew_at), AlertLevel::Expired);
    /// ```
    pub fn at(cert: &CertInfo, now: SystemTime, renew_at: SystemTime) -> Self {
        LevelTimes::of(cert, renew_at).at(now)
    }

    /// The level as a number for metrics: 0 ok, 1 renew-overdue,
    /// 2 critical, 3 expired.
    ///
    /// ```
    /// assert_eq!(certrotate::AlertLevel::Critical.as_number(), 2);
    /// ```
    pub fn as_number(self) -> u8 {
        self as u8
    }

    /// Time left at which the certificate becomes overdue, and critical.
    fn thresholds(cert: &CertInfo, renew_at: SystemTime) -> (Duration, Duration) {
        let overdue = cert.not_after.duration_since(renew_at).unwrap_or_default();
        let critical = (cert.lifetime() / 10).max(CRITICAL_BELOW).min(overdue);
        (overdue, critical)
    }

    /// When the level next gets worse, if it can.
    pub(crate) fn next_change(
        cert: &CertInfo,
        renew_at: SystemTime,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let times = LevelTimes::of(cert, renew_at);
        [times.overdue, times.critical, times.expired]
            .into_iter()
            .find(|t| *t > now)
    }
}

impl fmt::Display for AlertLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::RenewOverdue => "renew-overdue",
            Self::Critical => "critical",
            Self::Expired => "expired",
        })
    }
}

/// How many slots [`CertStore::health`](crate::CertStore::health) lists
/// in full: the first page of [`HealthSnapshot::certificates`], and at most
/// this many unserved and failing slots.
pub const HEALTH_LIMIT: usize = 100;

/// How many of the soonest expiries a [`HealthSnapshot`] names.
pub const SOONEST: usize = 10;

/// A point-in-time view of a [`CertStore`](crate::CertStore), for health
/// endpoints and dashboards. Serializes to JSON.
///
/// It stays small whatever the number of slots: counts over every slot,
/// the [`SOONEST`] expiries, and lists of at most a page of slots (by
/// default [`HEALTH_LIMIT`]; [`CertStore::health_page`](crate::CertStore::health_page)
/// pages through the rest).
///
/// ```no_run
/// # fn demo(store: certrotate::CertStore) {
/// let health = store.health();
/// println!("{}", serde_json::to_string_pretty(&health).unwrap());
/// println!("{} serving, {} critical", health.served, health.alerts.critical);
/// if let Some(error) = &health.last_error {
///     eprintln!("last candidate refused: {error}");
/// }
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct HealthSnapshot {
    /// Slots serving a certificate, in all.
    pub served: usize,
    /// Serving slots per alert level, in all.
    pub alerts: AlertCounts,
    /// A page of the slots serving a certificate, in the order the slots
    /// were created: all of them when there are at most the page's limit.
    pub certificates: Vec<CertHealth>,
    /// Where the next page of [`certificates`](Self::certificates) starts,
    /// if the page did not reach the last slot.
    pub next_offset: Option<usize>,
    /// When the serving certificate that expires first expires (RFC 3339).
    #[serde(serialize_with = "crate::clock::ser_opt_time")]
    pub soonest_expiry: Option<SystemTime>,
    /// The serving certificates that expire first (at most [`SOONEST`]),
    /// soonest first: what needs attention, wherever it is in the pages.
    pub soonest: Vec<CertHealth>,
    /// Slots with no certificate yet (their first candidate failed, or is
    /// being fetched), with the reason: at most the page's limit, the
    /// oldest slots first.
    pub unserved: Vec<UnservedSlot>,
    /// Slots with no certificate, in all.
    pub unserved_count: usize,
    /// Slots whose latest candidate failed, serving or not, the most recent
    /// failure first: at most the page's limit.
    pub failing: Vec<String>,
    /// Slots whose latest candidate failed, in all.
    pub failing_count: usize,
    /// When a certificate last went live (RFC 3339), if ever.
    #[serde(serialize_with = "crate::clock::ser_opt_time")]
    pub last_rotation: Option<SystemTime>,
    /// Certificates installed since the store was made (initial loads included).
    pub rotations: u64,
    /// The most recent failure of a slot whose latest candidate was refused
    /// or could not be fetched; `None` once every slot's latest candidate
    /// was accepted (one slot's success does not hide another's failure).
    pub last_error: Option<String>,
    /// The machine code of [`last_error`](Self::last_error): a
    /// [`SourceError::code`](crate::SourceError::code) or a
    /// [`Refusal::code`](crate::policy::Refusal::code).
    pub last_error_code: Option<&'static str>,
    /// The worst alert level over all certificates.
    pub alert: AlertLevel,
}

/// Serving certificates per [`AlertLevel`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub struct AlertCounts {
    /// Before their renewal time.
    pub ok: usize,
    /// Past their renewal time.
    pub renew_overdue: usize,
    /// Critical.
    pub critical: usize,
    /// Expired.
    pub expired: usize,
}

impl AlertCounts {
    /// The count at `level`.
    ///
    /// ```
    /// use certrotate::AlertLevel;
    /// use certrotate::health::AlertCounts;
    /// assert_eq!(AlertCounts::default().at(AlertLevel::Critical), 0);
    /// ```
    pub fn at(&self, level: AlertLevel) -> usize {
        match level {
            AlertLevel::Ok => self.ok,
            AlertLevel::RenewOverdue => self.renew_overdue,
            AlertLevel::Critical => self.critical,
            AlertLevel::Expired => self.expired,
        }
    }

    fn at_mut(&mut self, level: AlertLevel) -> &mut usize {
        match level {
            AlertLevel::Ok => &mut self.ok,
            AlertLevel::RenewOverdue => &mut self.renew_overdue,
            AlertLevel::Critical => &mut self.critical,
            AlertLevel::Expired => &mut self.expired,
        }
    }

    pub(crate) fn add(&mut self, level: AlertLevel) {
        *self.at_mut(level) += 1;
    }

    pub(crate) fn remove(&mut self, level: AlertLevel) {
        *self.at_mut(level) -= 1;
    }
}

/// The health of one store slot.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CertHealth {
    /// The store slot.
    pub slot: String,
    /// Serial number of the serving certificate.
    pub serial: String,
    /// Subject of the serving certificate.
    pub subject: String,
    /// DNS names covered.
    pub dns_names: Vec<String>,
    /// IP addresses covered.
    pub ip_addresses: Vec<IpAddr>,
    /// End of validity.
    #[serde(serialize_with = "crate::clock::ser_time")]
    pub not_after: SystemTime,
    /// Seconds left before expiry (0 once expired).
    pub remaining_seconds: u64,
    /// When the certificate is due for renewal: the rotator renews it then,
    /// and it is `renew-overdue` from then on while it still serves.
    #[serde(serialize_with = "crate::clock::ser_time")]
    pub renew_at: SystemTime,
    /// The renewal window the certificate's CA suggested (RFC 9773), in
    /// which [`renew_at`](Self::renew_at) was chosen, if it suggested one.
    pub renewal_window: Option<crate::renewal::RenewalWindow>,
    /// The expiry alert level.
    pub alert: AlertLevel,
    /// SHA-256 fingerprint of the serving leaf.
    pub fingerprint_sha256: String,
    /// Where the serving certificate came from
    /// ([`CertInfo::origin`](crate::bundle::CertInfo::origin)): its file, or
    /// `ACME <directory> for <names>` naming the CA that issued it.
    pub origin: String,
    /// Why the most recent candidate for this slot failed, if it did.
    pub last_error: Option<String>,
    /// The machine code of [`last_error`](Self::last_error).
    pub last_error_code: Option<&'static str>,
    /// What is unsafe about the slot's source (a private key file others can
    /// read), as of its last fetch.
    pub warnings: Vec<String>,
}

/// A store slot that has no certificate to serve.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct UnservedSlot {
    /// The store slot.
    pub slot: String,
    /// Why its latest candidate failed, if one did.
    pub last_error: Option<String>,
    /// The machine code of [`last_error`](Self::last_error).
    pub last_error_code: Option<&'static str>,
    /// What is unsafe about the slot's source.
    pub warnings: Vec<String>,
}

/// Why a candidate failed: a machine code (for public health and metric
/// labels) and the message an operator reads.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl CertHealth {
    pub(crate) fn new(
        slot: &str,
        info: &CertInfo,
        now: SystemTime,
        renewal: crate::renewal::Renewal,
        last_error: Option<Failure>,
        warnings: Vec<String>,
    ) -> Self {
        Self {
            slot: slot.to_owned(),
            serial: info.serial.clone(),
            subject: info.subject.clone(),
            dns_names: info.dns_names.clone(),
            ip_addresses: info.ip_addresses.clone(),
            not_after: info.not_after,
            remaining_seconds: info
                .not_after
                .duration_since(now)
                .unwrap_or(Duration::ZERO)
                .as_secs(),
            renew_at: renewal.at,
            renewal_window: renewal.window,
            alert: AlertLevel::at(info, now, renewal.at),
            fingerprint_sha256: info.fingerprint_sha256.clone(),
            origin: info.origin.clone(),
            last_error_code: last_error.as_ref().map(|f| f.code),
            last_error: last_error.map(|f| f.message),
            warnings,
        }
    }
}

#[cfg(all(test, feature = "ca"))]
mod tests {
    use super::*;

    /// The level as `AlertLevel::at` computed it before the times were
    /// worked out once per certificate.
    fn reference(cert: &CertInfo, now: SystemTime, renew_at: SystemTime) -> AlertLevel {
        let Ok(remaining) = cert.not_after.duration_since(now) else {
            return AlertLevel::Expired;
        };
        let (overdue, critical) = AlertLevel::thresholds(cert, renew_at);
        if remaining.is_zero() {
            AlertLevel::Expired
        } else if remaining < critical {
            AlertLevel::Critical
        } else if remaining <= overdue {
            AlertLevel::RenewOverdue
        } else {
            AlertLevel::Ok
        }
    }

    #[test]
    fn level_times_follow_the_rule_at_every_boundary() {
        let ck = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let bundle = crate::bundle::CertBundle::from_pem(
            ck.cert.pem().as_bytes(),
            ck.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let cert = bundle.info();
        let life = cert.lifetime();
        let nanos = Duration::from_nanos(1);
        for renew_at in [
            cert.not_before,
            cert.not_after - life / 3,
            cert.not_after - life / 100,
            cert.not_after,
        ] {
            let times = LevelTimes::of(cert, renew_at);
            let mut points = vec![times.overdue, times.critical, times.expired];
            points.extend((0..=100).map(|i| cert.not_before + life / 100 * i));
            for point in points {
                for now in [point - nanos, point, point + nanos] {
                    assert_eq!(times.at(now), reference(cert, now, renew_at), "at {now:?}");
                }
            }
        }
    }
}

//! The renewal rule: when a serving certificate should be replaced.
//!
//! One rule serves the rotator's schedule and health's alert levels alike.
//! A source that knows better (ACME, following the CA's renewal
//! information) says so through [`CertSource::renew_at`](crate::CertSource::renew_at);
//! otherwise a certificate is renewed when a fraction of its lifetime is
//! left ([`RotatorBuilder::renew_before_fraction`](crate::RotatorBuilder::renew_before_fraction)),
//! a little earlier at random.

use std::time::SystemTime;

use crate::bundle::CertInfo;

/// Renew when a third of the certificate's lifetime is left, as for 90-day
/// certificates renewed 30 days before expiry.
pub(crate) const DEFAULT_FRACTION: f64 = 1.0 / 3.0;

/// When `fraction` of `cert`'s lifetime is left, moved earlier by up to
/// `jitter` of that window (`early` in `0.0..=1.0` picks how much).
pub(crate) fn at_fraction(cert: &CertInfo, fraction: f64, jitter: f64, early: f64) -> SystemTime {
    let window = cert.lifetime().mul_f64(fraction.clamp(0.0, 1.0));
    let window = window + window.mul_f64((jitter * early).clamp(0.0, 1.0));
    cert.not_after
        .checked_sub(window)
        .unwrap_or(cert.not_before)
        .max(cert.not_before)
}

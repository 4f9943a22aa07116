//! The renewal rule: when a serving certificate should be replaced.
//!
//! One rule serves the rotator's schedule and health's alert levels alike.
//! A source that knows better (ACME, following the CA's renewal
//! information) says so through [`CertSource::renew_at`](crate::CertSource::renew_at);
//! otherwise a certificate is renewed when a fraction of its lifetime is
//! left ([`RotatorBuilder::renew_before_fraction`](crate::RotatorBuilder::renew_before_fraction)),
//! a little earlier at random. A failed attempt is retried after
//! [`retry_delay`].

use std::time::{Duration, SystemTime};

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

/// How long to wait before retrying after `failures` failures in a row:
/// exponential from `min`, capped at `max`, jittered down by up to half, no
/// sooner than a source's `retry_after` (at most a day), and, with a
/// certificate serving that has `remaining` validity left, never more than
/// an eighth of it (but not under `min`), so a short-lived certificate gets
/// several attempts before it expires however long the outage.
pub(crate) fn retry_delay(
    failures: u32,
    (min, max): (Duration, Duration),
    retry_after: Option<Duration>,
    remaining: Option<Duration>,
) -> Duration {
    let exp = min.saturating_mul(1u32 << failures.min(20));
    let jittered = exp.min(max).mul_f64(0.5 + 0.5 * fastrand::f64());
    // A CA or source asking for a longer wait is taken as asking for a day.
    let retry_after = retry_after
        .unwrap_or_default()
        .min(crate::clock::MAX_RETRY_AFTER);
    let delay = jittered.max(retry_after);
    match remaining {
        Some(remaining) => delay.min((remaining / 8).max(min)),
        None => delay,
    }
}

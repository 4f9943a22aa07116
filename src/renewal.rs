//! The renewal rule: when a serving certificate should be replaced.
//!
//! One rule serves the rotator's schedule and health's alert levels alike.
//! A source that knows better (ACME, following the CA's renewal
//! information) says so through [`CertSource::renew_at`](crate::CertSource::renew_at);
//! otherwise a certificate is renewed when a fraction of its lifetime is
//! left ([`RotatorBuilder::renew_before_fraction`](crate::rotator::RotatorBuilder::renew_before_fraction)),
//! a little earlier at random. A failed attempt is retried after
//! [`retry_delay`].

use std::time::{Duration, SystemTime};

use crate::bundle::CertInfo;

/// When a certificate should be replaced, as its source decides
/// ([`CertSource::renew_at`](crate::CertSource::renew_at)): the time, and
/// the window a CA suggested for it (RFC 9773), if one did. A
/// [`SystemTime`] converts into one without a window.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use certrotate::source::{Renewal, RenewalWindow};
///
/// let start = SystemTime::now() + Duration::from_secs(86_400);
/// let window = RenewalWindow { start, end: start + Duration::from_secs(3_600) };
/// let renewal = Renewal::new(start + Duration::from_secs(600)).in_window(window);
/// assert_eq!(renewal.window, Some(window));
/// assert_eq!(Renewal::from(start).window, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Renewal {
    /// When to replace the certificate.
    pub at: SystemTime,
    /// The window its CA suggested, `at` chosen in it (or at once, if it
    /// is past).
    pub window: Option<RenewalWindow>,
}

/// A renewal window a CA suggested (RFC 9773 `suggestedWindow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RenewalWindow {
    /// Its start.
    #[serde(serialize_with = "crate::clock::ser_time")]
    pub start: SystemTime,
    /// Its end.
    #[serde(serialize_with = "crate::clock::ser_time")]
    pub end: SystemTime,
}

impl Renewal {
    /// Renewal at `at`, with no window.
    pub fn new(at: SystemTime) -> Self {
        Self { at, window: None }
    }

    /// The same time, chosen in `window`.
    pub fn in_window(mut self, window: RenewalWindow) -> Self {
        self.window = Some(window);
        self
    }
}

impl From<SystemTime> for Renewal {
    fn from(at: SystemTime) -> Self {
        Self::new(at)
    }
}

/// Renew when a third of the certificate's lifetime is left, as for 90-day
/// certificates renewed 30 days before expiry.
pub(crate) const DEFAULT_FRACTION: f64 = 1.0 / 3.0;

/// Renew up to a tenth of the renewal window earlier, at random, so that a
/// fleet does not renew all at once.
pub(crate) const DEFAULT_JITTER: f64 = 0.1;

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
/// several attempts before it expires however long the outage. Once it has
/// expired, hurrying saves nothing: the backoff holds again (a failing
/// source is not asked every `min` for ever), and so does `retry_after`,
/// up to the range's end (a server with an expired certificate does not
/// wait a day on a CA's word).
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
        Some(remaining) if remaining.is_zero() => delay.min(max),
        Some(remaining) => delay.min((remaining / 8).max(min)),
        None => delay,
    }
}

// The default rule, as users of the store meet it.
impl CertInfo {
    /// When the crate's default rule has it renewed: once a third of its
    /// lifetime is left (a [`Rotator`](crate::Rotator) draws a little
    /// earlier at random, and a source may know better: see
    /// [`CertSource::renew_at`](crate::CertSource::renew_at)).
    ///
    /// ```
    /// # let ck = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
    /// use certrotate::CertBundle;
    ///
    /// let bundle = CertBundle::from_pem(ck.cert.pem().as_bytes(), ck.signing_key.serialize_pem().as_bytes())?;
    /// let info = bundle.info();
    /// let left = info.not_after.duration_since(info.renewal_time())?;
    /// assert_eq!(left.as_secs(), info.lifetime().as_secs() / 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn renewal_time(&self) -> SystemTime {
        at_fraction(self, DEFAULT_FRACTION, 0.0, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A certificate valid for `days` from 2026-01-01.
    fn cert(days: u32) -> CertInfo {
        let start = std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let bundle = crate::bundle::self_signed(start, days * DAY);
        bundle.info().clone()
    }

    #[test]
    fn the_default_rule_renews_when_a_third_is_left() {
        let c = cert(90);
        assert_eq!(c.renewal_time(), c.not_after - 30 * DAY);
        assert_eq!(
            at_fraction(&c, DEFAULT_FRACTION, 0.5, 0.0),
            c.renewal_time()
        );
    }

    #[test]
    fn jitter_moves_renewal_earlier_by_at_most_its_share_of_the_window() {
        let c = cert(90);
        let latest = at_fraction(&c, DEFAULT_FRACTION, DEFAULT_JITTER, 0.0);
        let earliest = at_fraction(&c, DEFAULT_FRACTION, DEFAULT_JITTER, 1.0);
        assert_eq!(latest, c.not_after - 30 * DAY);
        assert_eq!(earliest, c.not_after - 33 * DAY);
        let middle = at_fraction(&c, DEFAULT_FRACTION, DEFAULT_JITTER, 0.5);
        assert!(earliest < middle && middle < latest);
    }

    #[test]
    fn renewal_is_never_before_the_certificate_starts() {
        let c = cert(6);
        assert_eq!(at_fraction(&c, 1.0, 0.5, 1.0), c.not_before);
        assert_eq!(at_fraction(&c, 7.0, 0.0, 0.0), c.not_before);
        assert_eq!(at_fraction(&c, -1.0, 0.0, 0.0), c.not_after);
    }

    #[test]
    fn retries_double_within_the_range_jittered_down_by_half_at_most() {
        let range = (Duration::from_secs(1), Duration::from_secs(300));
        for failures in 0..40 {
            let full = Duration::from_secs(1 << failures.min(20)).min(range.1);
            let delay = retry_delay(failures, range, None, None);
            assert!(delay <= full && delay >= full / 2, "{failures}: {delay:?}");
        }
    }

    #[test]
    fn a_retry_waits_for_retry_after_but_at_most_an_eighth_of_what_is_left() {
        let range = (Duration::from_secs(1), Duration::from_secs(300));
        let hour = Duration::from_secs(3600);
        assert_eq!(retry_delay(0, range, Some(hour), None), hour);
        // A CA asking for a year is taken as asking for a day.
        let year = 365 * DAY;
        assert_eq!(retry_delay(0, range, Some(year), None), DAY);
        // Eight hours left: an hour at most, whatever is asked.
        assert_eq!(retry_delay(0, range, Some(hour * 5), Some(hour * 8)), hour);
        // Nearly expired: never under the range's start.
        let tiny = Duration::from_millis(10);
        assert_eq!(retry_delay(5, range, None, Some(tiny)), range.0);
        // Expired: the backoff again, not the start; the CA's wait up to
        // the range's end.
        assert!(retry_delay(10, range, None, Some(Duration::ZERO)) >= range.1 / 2);
        assert_eq!(
            retry_delay(0, range, Some(hour), Some(Duration::ZERO)),
            range.1
        );
    }
}

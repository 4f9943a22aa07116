//! Where "now" comes from.
//!
//! Expiry, renewal and backoff all depend on wall-clock time. Production code
//! uses [`SystemClock`]; tests plug in their own [`Clock`] (for example one
//! that follows `tokio::time` while it is paused) so that a 90-day schedule is
//! tested in milliseconds.

use std::fmt;
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
///
/// The rotator and the validation policy read the time through this trait,
/// never directly, so that schedules can be tested without sleeping.
///
/// # Example
///
/// A clock frozen at one instant:
///
/// ```
/// use std::time::SystemTime;
/// use certrotate::danger::Clock;
///
/// #[derive(Debug)]
/// struct Frozen(SystemTime);
///
/// impl Clock for Frozen {
///     fn now(&self) -> SystemTime {
///         self.0
///     }
/// }
/// ```
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The real wall clock, [`SystemTime::now`].
///
/// ```
/// use certrotate::danger::{Clock, SystemClock};
/// assert!(SystemClock.now() > std::time::UNIX_EPOCH);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Formats a time as RFC 3339 (`2026-11-28T01:54:59Z`), for messages and JSON.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{t}"))
}

/// Serializes a time as an RFC 3339 string.
pub(crate) fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// Serializes an optional time as an RFC 3339 string or `null`.
pub(crate) fn ser_opt_time<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
}

/// The longest delay outside input can impose on a retry: a CA's
/// `Retry-After` or a source's [`SourceErrorKind::RateLimited`](crate::source::SourceErrorKind::RateLimited)
/// asking for more is taken as this much (and the serving certificate's
/// remaining validity caps retries further: an eighth of it while it is
/// valid, the retry range's end once it has expired).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// As far ahead as any time computed here goes: past it, "never".
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `t + d`, or a time far in the future where that overflows: durations
/// from outside (a lease, a stored renewal time) never panic.
#[cfg(feature = "acme")]
pub(crate) fn saturating_add(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d.min(FAR)).unwrap_or(t)
}

/// The monotonic instant `d` from now, at most a hundred years ahead, so
/// that no duration (from outside or computed) can overflow it.
pub(crate) fn instant_in(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// Formats a duration for people: `2d 3h`, `45m 10s`, `850ms`.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// `time` as seconds since the Unix epoch, negative before it.
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The inverse of [`unix_seconds`].
pub(crate) fn from_unix_seconds(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_and_durations() {
        assert_eq!(rfc3339(from_unix_seconds(0)), "1970-01-01T00:00:00Z");
        assert_eq!(unix_seconds(from_unix_seconds(-5)), -5);
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_secs(2 * 86400 + 3 * 3600)), "2d 3h");
        assert_eq!(human(Duration::from_secs(610)), "10m 10s");
    }
}

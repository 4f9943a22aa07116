//! Metrics through the [`metrics`] facade (feature `metrics`): whichever
//! recorder the application installs (Prometheus, StatsD, OpenTelemetry...)
//! receives them; without one they cost nothing.
//!
//! The metrics are listed in the crate documentation's [Metrics](crate#metrics)
//! table (and the README's).

use std::sync::Once;
use std::time::SystemTime;

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

use crate::bundle::CertInfo;
use crate::clock::unix_seconds;
use crate::health::AlertLevel;
use crate::rotator::{RotateError, Rotation};

pub(crate) const EXPIRY: &str = "certrotate_certificate_expiry_timestamp_seconds";
pub(crate) const REMAINING: &str = "certrotate_certificate_remaining_seconds";
pub(crate) const ALERT_LEVEL: &str = "certrotate_certificate_alert_level";
const ROTATIONS: &str = "certrotate_rotations_total";
const REFUSALS: &str = "certrotate_refusals_total";
const SOURCE_ERRORS: &str = "certrotate_source_errors_total";
const ROLLBACKS: &str = "certrotate_rollbacks_total";
const LAST_ROTATION: &str = "certrotate_last_rotation_timestamp_seconds";
const LAST_ATTEMPT: &str = "certrotate_last_attempt_timestamp_seconds";

/// Gives the recorder each metric's unit and help text, once.
fn describe() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        describe_gauge!(
            EXPIRY,
            Unit::Seconds,
            "Expiry (not_after) of the serving certificate, as Unix time."
        );
        describe_gauge!(
            REMAINING,
            Unit::Seconds,
            "Seconds left before the serving certificate expires."
        );
        describe_gauge!(
            ALERT_LEVEL,
            "Expiry alert level: 0 ok, 1 renew-overdue, 2 critical, 3 expired."
        );
        describe_counter!(
            ROTATIONS,
            "Rotation attempts, by source and result (rotated, unchanged, refused, failed)."
        );
        describe_counter!(
            REFUSALS,
            "Candidate certificates refused by the policy, by reason."
        );
        describe_counter!(
            SOURCE_ERRORS,
            "Failed fetches from a certificate source, by kind of error."
        );
        describe_counter!(ROLLBACKS, "Rollbacks to the previous certificate.");
        describe_gauge!(
            LAST_ROTATION,
            Unit::Seconds,
            "When a certificate last went live, as Unix time."
        );
        describe_gauge!(
            LAST_ATTEMPT,
            Unit::Seconds,
            "When a rotation was last attempted, as Unix time."
        );
    });
}

/// The serving certificate of `slot`, at `now`.
pub(crate) fn serving(slot: &str, cert: &CertInfo, level: AlertLevel, now: SystemTime) {
    describe();
    let slot = slot.to_owned();
    let remaining = cert.not_after.duration_since(now).unwrap_or_default();
    gauge!(EXPIRY, "slot" => slot.clone()).set(unix_seconds(cert.not_after) as f64);
    gauge!(REMAINING, "slot" => slot.clone()).set(remaining.as_secs_f64());
    gauge!(ALERT_LEVEL, "slot" => slot).set(f64::from(level.as_number()));
}

/// A certificate went live in `slot` at `now`.
pub(crate) fn installed(slot: &str, now: SystemTime) {
    describe();
    gauge!(LAST_ROTATION, "slot" => slot.to_owned()).set(unix_seconds(now) as f64);
}

/// `slot` was rolled back.
pub(crate) fn rolled_back(slot: &str) {
    describe();
    counter!(ROLLBACKS, "slot" => slot.to_owned()).increment(1);
}

/// A rotation attempt on `slot`, from a source of kind `source`, ended
/// with `result` at `now`.
pub(crate) fn attempted(
    slot: &str,
    source: &'static str,
    result: &Result<Rotation, RotateError>,
    now: SystemTime,
) {
    describe();
    let slot = slot.to_owned();
    gauge!(LAST_ATTEMPT, "slot" => slot.clone()).set(unix_seconds(now) as f64);
    let outcome = match result {
        Ok(Rotation::Rotated { .. }) => "rotated",
        Ok(Rotation::Unchanged(_)) => "unchanged",
        Err(RotateError::Refused(error)) => {
            counter!(REFUSALS, "slot" => slot.clone(), "reason" => error.reason().code())
                .increment(1);
            "refused"
        }
        Err(RotateError::Source(error)) => {
            let kind = error.code();
            counter!(SOURCE_ERRORS, "slot" => slot.clone(), "source" => source, "kind" => kind)
                .increment(1);
            "failed"
        }
        Err(RotateError::Stopped) => return,
    };
    counter!(ROTATIONS, "slot" => slot, "source" => source, "result" => outcome).increment(1);
}

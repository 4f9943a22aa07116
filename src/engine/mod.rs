//! The rotation rules every slot follows, whoever drives it: a
//! [`Rotator`](crate::Rotator)'s task (one slot, one source) or a
//! [`CertDirectory`](crate::CertDirectory)'s (many pairs, read in batches).
//!
//! A driver does the I/O, for a list of slots at once (a rotator's list
//! is one): it fetches candidates, and reads and records replay marks
//! where they are kept ([`Driver`]). Everything else is decided here, once,
//! in the order of [`attempt`]: what becomes of a candidate (unchanged,
//! refused as older than the mark, installed with its renewal time), what
//! is recorded as the mark and what a mark that cannot be read does
//! ([`marks`]), when a slot is retried, which warnings and alerts it shows,
//! and what events and metrics tell of it.

mod attempt;
mod marks;

pub(crate) use attempt::{attempt, settle, Candidate, Decided, Driver};
#[cfg(feature = "file")]
pub(crate) use marks::Remembered;
pub(crate) use marks::{MarkRead, MarkState};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::bundle::{CertBundle, CertInfo};
use crate::events::{RotationEvent, Trigger};
use crate::health::AlertLevel;
use crate::mark::HighWaterMark;
use crate::metrics::Outcome;
use crate::policy::{Policy, ValidatedCert, ValidationError};
use crate::renewal::{self, Renewal};
use crate::source::{SourceError, SourceWarning};
use crate::store::CertStore;

/// What a successful rotation attempt did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Rotation {
    /// A new certificate went live.
    Rotated {
        /// The certificate serving before, if any.
        old: Option<Arc<CertInfo>>,
        /// The certificate serving now.
        new: Arc<CertInfo>,
    },
    /// The source gave the certificate that is already serving.
    Unchanged(Arc<CertInfo>),
}

/// A rotation attempt failed; the certificate serving before keeps serving.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RotateError {
    /// The source could not produce a candidate.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The candidate failed the policy.
    #[error(transparent)]
    Refused(#[from] ValidationError),
    /// The rotator has been shut down.
    #[error("the rotator has been shut down")]
    Stopped,
}

/// How a slot is renewed, retried and alerted about.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    /// Renew when this fraction of the lifetime is left...
    pub(crate) renew_before_fraction: f64,
    /// ...up to this fraction of that window earlier, at random.
    pub(crate) jitter: f64,
    /// Retry delays: from the first, doubling up to the second.
    pub(crate) retry: (Duration, Duration),
    /// Repeat an expiry warning this often while it lasts.
    pub(crate) alert_repeat: Duration,
    /// Each repeat up to this fraction of `alert_repeat` later, at random.
    pub(crate) alert_spread: f64,
    /// Critical once less than this is left while renewal keeps failing.
    pub(crate) outage_budget: Option<Duration>,
}

impl Rules {
    /// Retries from `min` (at least a millisecond: never a hot loop),
    /// doubling up to `max` (at least `min`).
    pub(crate) fn set_retry(&mut self, min: Duration, max: Duration) {
        let min = min.max(Duration::from_millis(1));
        self.retry = (min, max.max(min));
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            renew_before_fraction: renewal::DEFAULT_FRACTION,
            jitter: renewal::DEFAULT_JITTER,
            retry: (Duration::from_secs(1), Duration::from_secs(300)),
            alert_repeat: Duration::from_secs(3600),
            alert_spread: 0.0,
            outage_budget: None,
        }
    }
}

/// What became of one candidate.
enum Verdict {
    /// It is what serves already (this).
    Unchanged(Arc<CertInfo>),
    /// There was none: the source failed.
    Failed(SourceError),
    /// The policy refused it.
    Refused(ValidationError),
    /// It may serve.
    Valid(ValidatedCert),
}

/// Whether `candidate` is what serves already: the same certificate with a
/// key as good (the same certificate with a key that does not belong to
/// it, only the key file replaced, is a change, which the policy refuses).
fn unchanged(serving: Option<&CertInfo>, candidate: &CertBundle) -> bool {
    serving.is_some_and(|s| {
        s.fingerprint_sha256 == candidate.info().fingerprint_sha256 && candidate.key_fits()
    })
}

/// Judges `candidate` against `policy`, refusing anything older than
/// `newest` (the newest certificate served, from the replay mark or what
/// serves). Blocking: the policy's probe handshake runs here.
fn judge(
    policy: &Policy,
    candidate: &CertBundle,
    newest: Option<&HighWaterMark>,
    now: SystemTime,
) -> Verdict {
    match policy.validate_newer_than(candidate, newest, now) {
        Ok(valid) => Verdict::Valid(valid),
        Err(error) => Verdict::Refused(error),
    }
}

/// Tells that an attempt at `slot` starts.
pub(crate) fn attempting(store: &CertStore, slot: &Arc<str>, trigger: Trigger) {
    store.events().emit(RotationEvent::Attempted {
        slot: slot.clone(),
        trigger,
    });
}

/// What a driver keeps of one slot between attempts.
#[derive(Debug)]
pub(crate) struct SlotState {
    /// Failed attempts in a row.
    failures: u32,
    /// What it knows of its replay mark.
    pub(crate) mark: MarkState,
    /// Looks in a row for a newer certificate while the serving one is due
    /// (their own backoff, kept across rotations to one due already).
    due_looks: u32,
    /// When to attempt again: after a failure, or to read the mark again.
    pub(crate) retry_at: Option<Instant>,
    /// The alert level last reported.
    reported: AlertLevel,
    /// When the expiry warning is next repeated, if one is out.
    next_repeat: Option<Instant>,
    /// The warnings shown in health.
    warnings: Vec<SourceWarning>,
}

impl SlotState {
    /// A slot that knew `remembered` of its mark when last seen.
    #[cfg(feature = "file")]
    pub(crate) fn remembering(remembered: Remembered) -> Self {
        Self {
            mark: MarkState::remembering(remembered),
            ..Self::default()
        }
    }
}

impl Default for SlotState {
    fn default() -> Self {
        Self {
            failures: 0,
            mark: MarkState::default(),
            due_looks: 0,
            retry_at: None,
            reported: AlertLevel::Ok,
            next_repeat: None,
            warnings: Vec::new(),
        }
    }
}

/// One slot under the rules: what its driver calls at each step.
pub(crate) struct Slot<'a> {
    pub(crate) store: &'a CertStore,
    pub(crate) rules: &'a Rules,
    pub(crate) name: &'a Arc<str>,
    /// The kind of its source, for metrics (`file`, `acme`...).
    pub(crate) kind: &'static str,
    pub(crate) state: &'a mut SlotState,
}

impl Slot<'_> {
    /// Carries out `verdict`: installs a valid candidate with its renewal
    /// time (`decided`: the source's, else the rules'), or records why the
    /// attempt failed; tells events and metrics.
    fn conclude(
        &mut self,
        verdict: Verdict,
        decided: impl Fn(&CertInfo) -> Option<Renewal>,
    ) -> Result<Rotation, RotateError> {
        let (store, name) = (self.store, self.name);
        let events = store.events();
        let (result, outcome) = match verdict {
            Verdict::Unchanged(serving) => {
                store.record_success(name);
                (Ok(Rotation::Unchanged(serving)), Outcome::Unchanged)
            }
            Verdict::Valid(valid) => {
                let new = valid.info.clone();
                let renew_at = self.renewal_time_of(&new, decided(&new));
                let old = store.install(name, valid, renew_at);
                (Ok(Rotation::Rotated { old, new }), Outcome::Rotated)
            }
            Verdict::Failed(error) => {
                let outcome = Outcome::Failed(error.code());
                store.record_failure(name, error.code(), error.to_string());
                events.emit(RotationEvent::SourceFailed {
                    slot: name.clone(),
                    error: error.clone(),
                });
                (Err(error.into()), outcome)
            }
            Verdict::Refused(error) => {
                let code = error.reason().code();
                store.record_failure(name, code, error.to_string());
                events.emit(RotationEvent::Refused {
                    slot: name.clone(),
                    error: Arc::new(error.clone()),
                });
                (Err(error.into()), Outcome::Refused(code))
            }
        };
        events.attempted(name, self.kind, outcome);
        result
    }

    /// When `cert`, about to serve, is due for renewal: when its source
    /// decided, else when the rules' fraction of its lifetime is left,
    /// earlier by a random part of the jitter (drawn once, here).
    fn renewal_time_of(&self, cert: &CertInfo, decided: Option<Renewal>) -> Renewal {
        decided.unwrap_or_else(|| {
            let (fraction, jitter) = (self.rules.renew_before_fraction, self.rules.jitter);
            Renewal::new(renewal::at_fraction(
                cert,
                fraction,
                jitter,
                fastrand::f64(),
            ))
        })
    }

    /// The serving certificate and when it is due for renewal, moved to
    /// the time its source decides now (`decided`), if that changed.
    pub(crate) fn renewal(
        &self,
        decided: impl Fn(&CertInfo) -> Option<Renewal>,
    ) -> Option<(Arc<CertInfo>, SystemTime)> {
        let (cert, installed) = self.store.serving(self.name)?;
        match decided(&cert) {
            Some(renewal) if renewal != installed => {
                self.store.set_renew_at(self.name, renewal);
                Some((cert, renewal.at))
            }
            _ => Some((cert, installed.at)),
        }
    }

    /// Whether the serving certificate is due for renewal now (by
    /// `decided`, else by the time it was installed with).
    fn due(&self, decided: impl Fn(&CertInfo) -> Option<Renewal>) -> bool {
        let now = self.store.clock().now();
        self.renewal(decided).is_some_and(|(_, at)| at <= now)
    }

    /// Plans what follows an attempt that gave `result`: after a failure,
    /// a retry. After a success, none, unless the serving certificate is
    /// due for renewal (by `decided`, asked after the attempt: a source may
    /// have learnt a new time): whether the source gave the same
    /// certificate (renewal is not happening: it counts as a failure
    /// toward the outage budget) or one due already (an old pair loaded, a
    /// stored certificate another instance is renewing, a source whose
    /// every certificate is due from the start), a newer one is looked for
    /// again later with a backoff of its own, doubling across attempts and
    /// rotations up to the range's end, expired or not. A validation that
    /// did not finish (`Stopped`: it panicked on the blocking pool) is a
    /// failure like any other.
    fn plan(
        &mut self,
        result: &Result<Rotation, RotateError>,
        decided: impl Fn(&CertInfo) -> Option<Renewal>,
    ) {
        let renewal_due = self.due(decided);
        match result {
            Ok(rotation) => {
                let state = &mut *self.state;
                match rotation {
                    Rotation::Rotated { .. } => state.failures = 0,
                    Rotation::Unchanged(_) if renewal_due => {
                        state.failures = state.failures.saturating_add(1);
                    }
                    Rotation::Unchanged(_) => {}
                }
                match renewal_due {
                    true => self.look_again(),
                    false => {
                        state.failures = 0;
                        state.due_looks = 0;
                        state.retry_at = None;
                    }
                }
            }
            Err(RotateError::Source(error)) => self.retry(error.retry_after(), true),
            Err(_) => self.retry(None, true),
        }
    }

    /// Plans the next look for a newer certificate while the serving one
    /// is due: from the range's start, doubling up to its end.
    fn look_again(&mut self) {
        let looks = self.state.due_looks;
        let delay = renewal::retry_delay(looks, self.rules.retry, None, None);
        self.state.due_looks = looks.saturating_add(1);
        self.state.retry_at = Some(crate::clock::instant_in(delay));
        tracing::debug!(target: "certrotate", slot = %self.name, look_in = ?delay, "renewal due: a newer certificate is looked for again");
    }

    /// After the replay mark was read or recorded: one that could not be is
    /// read again with a backoff of its own, unless an attempt is planned
    /// sooner.
    fn mark_settled(&mut self) {
        let mark = &mut self.state.mark;
        if !mark.unreadable() {
            mark.failures = 0;
            return;
        }
        let delay = renewal::retry_delay(mark.failures, self.rules.retry, None, None);
        mark.failures = mark.failures.saturating_add(1);
        let at = crate::clock::instant_in(delay);
        self.state.retry_at = Some(self.state.retry_at.map_or(at, |t| t.min(at)));
    }

    /// Schedules the retry: exponential within the rules' range, no sooner
    /// than a source's `retry_after`, and, after a failure
    /// (`lifetime_aware`), never more than an eighth of the serving
    /// certificate's remaining validity (but not under the range's start),
    /// so a short-lived certificate gets several attempts before it expires
    /// however long the outage.
    fn retry(&mut self, retry_after: Option<Duration>, lifetime_aware: bool) {
        let now = self.store.clock().now();
        let remaining = self
            .store
            .current(self.name)
            .filter(|_| lifetime_aware)
            .map(|cert| cert.not_after.duration_since(now).unwrap_or_default());
        let failures = self.state.failures;
        let delay = renewal::retry_delay(failures, self.rules.retry, retry_after, remaining);
        self.state.failures = failures.saturating_add(1);
        self.state.retry_at = Some(crate::clock::instant_in(delay));
        tracing::debug!(target: "certrotate", slot = %self.name, retry_in = ?delay, failures = self.state.failures, "rotation will be retried");
    }

    /// Shows the source's `warnings` in health, and the mark's, with an
    /// event for each new one.
    fn warn(&mut self, mut warnings: Vec<SourceWarning>) {
        warnings.extend(self.state.mark.warning());
        if warnings == self.state.warnings {
            return;
        }
        let shown = warnings.iter().map(ToString::to_string).collect();
        self.store.set_warnings(self.name, shown);
        for warning in warnings.iter().filter(|w| !self.state.warnings.contains(w)) {
            self.store.events().emit(RotationEvent::Warning {
                slot: self.name.clone(),
                warning: warning.clone(),
            });
        }
        self.state.warnings = warnings;
    }

    /// Reports the serving certificate's alert level at `now`, with an
    /// expiry warning when it got worse and again every `alert_repeat`
    /// while it is not `Ok`. Returns the level and when to look again
    /// (the next change of level, or the next repeat), if it serves.
    pub(crate) fn check_expiry(
        &mut self,
        now: SystemTime,
        decided: impl Fn(&CertInfo) -> Option<Renewal>,
    ) -> Option<(AlertLevel, Option<SystemTime>)> {
        let (cert, renew_at) = self.renewal(decided)?;
        let mut level = AlertLevel::at(&cert, now, renew_at);
        // While renewal keeps failing, less than the outage budget left is
        // critical: the CA's outage may outlast the certificate.
        let budget_from = self
            .rules
            .outage_budget
            // Two failures in a row at least: one that the next attempt
            // mends is no outage.
            .filter(|_| self.state.failures > 1)
            .map(|budget| {
                cert.not_after
                    .checked_sub(budget)
                    .unwrap_or(cert.not_before)
            });
        // A source's critical warning (a last-resort certificate) is
        // critical from the start.
        let critical = self.state.warnings.iter().any(SourceWarning::is_critical);
        let budget_from = if critical {
            Some(cert.not_before)
        } else {
            budget_from
        };
        if budget_from.is_some_and(|from| now >= from) && level < AlertLevel::Critical {
            level = AlertLevel::Critical;
        }
        self.store.set_outage_critical(self.name, budget_from);
        self.store.report_level(self.name, &cert, level);
        let state = &mut *self.state;
        let repeat_due = state.next_repeat.is_some_and(|t| t <= Instant::now());
        if level > state.reported || (level > AlertLevel::Ok && repeat_due) {
            self.store.events().emit(RotationEvent::ExpiryWarning {
                slot: self.name.clone(),
                remaining: cert.not_after.duration_since(now).unwrap_or_default(),
                cert: cert.clone(),
                level,
            });
            let every = self.rules.alert_repeat;
            let every = every + every.mul_f64(self.rules.alert_spread * fastrand::f64());
            state.next_repeat = Some(Instant::now() + every);
        } else if level == AlertLevel::Ok {
            state.next_repeat = None;
        }
        state.reported = level;
        let change = AlertLevel::next_change(&cert, renew_at, now)
            .into_iter()
            .chain(budget_from.filter(|&from| from > now))
            .min();
        let repeat = state
            .next_repeat
            .map(|t| now + t.saturating_duration_since(Instant::now()));
        Some((level, change.into_iter().chain(repeat).min()))
    }
}

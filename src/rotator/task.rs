//! The rotation task: waits for the source, the renewal time, a trigger or
//! a retry; fetches; validates off the runtime; installs; backs off; alerts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Command, RotateError, Rotation};
use crate::bundle::{CertBundle, CertInfo};
use crate::events::{RotationEvent, Trigger};
use crate::health::AlertLevel;
use crate::mark::{HighWaterMark, MarkUnreadable, Recorded};
use crate::metrics::Outcome;
use crate::policy::Policy;
use crate::renewal;
use crate::source::{CertSource, SourceError, SourceWarning};
use crate::store::CertStore;

/// How long a source may take to read or record its high-water mark.
const MARK_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest the task sleeps before looking at the wall clock again, so a
/// clock step (NTP, suspend) delays a renewal by at most this much.
const MAX_SLEEP: Duration = Duration::from_secs(300);

pub(super) struct Task<S> {
    pub(super) source: S,
    pub(super) policy: Policy,
    pub(super) store: CertStore,
    pub(super) slot: Arc<str>,
    pub(super) renew_before_fraction: f64,
    pub(super) jitter: f64,
    pub(super) retry_min: Duration,
    pub(super) retry_max: Duration,
    /// The serving certificate's renewal time, drawn once per certificate.
    pub(super) renew_at: Option<(String, SystemTime)>,
    pub(super) retry_at: Option<Instant>,
    pub(super) failures: u32,
    pub(super) reported: AlertLevel,
    pub(super) alert_repeat: Duration,
    /// When the last expiry warning was emitted.
    pub(super) last_alert: Option<Instant>,
    pub(super) fetch_timeout: Duration,
    /// The source's warnings as of its last fetch.
    pub(super) warnings: Vec<SourceWarning>,
    /// The newest certificate served, as the source recorded it.
    pub(super) mark: Recorded,
    /// Reads of the mark that failed in a row (their own backoff).
    pub(super) mark_failures: u32,
    /// Older certificates than the mark are accepted (logged at start).
    pub(super) allow_older: bool,
    pub(super) inbox: Option<mpsc::Receiver<Command>>,
    pub(super) stopped: watch::Receiver<bool>,
}

impl<S: CertSource> Task<S> {
    pub(super) async fn run(mut self) {
        loop {
            let now = self.store.clock().now();
            self.check_expiry(now);
            let (wake, due) = self.next_wake(now);
            let command = async {
                match &mut self.inbox {
                    Some(inbox) => inbox.recv().await,
                    None => std::future::pending().await,
                }
            };
            // Shut down by a handle; once every handle is gone, nothing can
            // ask any more, and the rotation goes on (as documented).
            let stop = async {
                if self.stopped.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                biased;
                () = stop => return,
                command = command => match command {
                    Some(Command::Rotate(reply)) => {
                        let result = self.attempt(Trigger::Manual, None, false).await;
                        let _ = reply.send(result);
                    }
                    Some(Command::Install { bundle, reply }) => {
                        let result = self.attempt(Trigger::Manual, Some(bundle), true).await;
                        let _ = reply.send(result);
                    }
                    // The handle is gone: keep rotating, stop listening.
                    None => self.inbox = None,
                },
                _ = self.source.changed() => {
                    let _ = self.attempt(Trigger::SourceChanged, None, false).await;
                }
                _ = tokio::time::sleep_until(wake) => {
                    if let Some(trigger) = due {
                        let _ = self.attempt(trigger, None, false).await;
                    }
                }
            }
        }
    }

    /// When to wake next, and which attempt is then due (none when waking
    /// only to look at expiry alerts or the clock again).
    fn next_wake(&mut self, now: SystemTime) -> (Instant, Option<Trigger>) {
        let at =
            |t: SystemTime| crate::clock::instant_in(t.duration_since(now).unwrap_or_default());
        let cap = crate::clock::instant_in(MAX_SLEEP);
        let repeat = self.last_alert.map(|t| t + self.alert_repeat);
        let alert = self
            .current()
            .zip(self.renewal_time())
            .and_then(|(c, renew_at)| {
                let change = AlertLevel::next_change(&c, renew_at, now);
                change.map(at).into_iter().chain(repeat).min()
            });
        let (attempt, trigger) = match self.retry_at {
            Some(retry) => (Some(retry), Trigger::Retry),
            None => (self.renewal_time().map(at), Trigger::Schedule),
        };
        match attempt {
            Some(t) if t <= cap && alert.is_none_or(|a| t <= a) => (t, Some(trigger)),
            _ => (alert.unwrap_or(cap).min(cap), None),
        }
    }

    fn current(&self) -> Option<Arc<CertInfo>> {
        self.store.current(&self.slot)
    }

    /// The serving certificate's renewal time, as the source decides it,
    /// else when `renew_before_fraction` of its lifetime is left, minus a
    /// random part of the window (drawn once per certificate). Health's
    /// alert levels are measured against the same time.
    fn renewal_time(&mut self) -> Option<SystemTime> {
        let cert = self.current()?;
        let at = match (self.source.renew_at(&cert), &self.renew_at) {
            (Some(at), _) => at,
            (None, Some((fingerprint, at))) if *fingerprint == cert.fingerprint_sha256 => *at,
            (None, _) => {
                let (fraction, jitter) = (self.renew_before_fraction, self.jitter);
                renewal::at_fraction(&cert, fraction, jitter, fastrand::f64())
            }
        };
        self.renew_at = Some((cert.fingerprint_sha256.clone(), at));
        self.store.set_renew_at(&self.slot, at);
        Some(at)
    }

    /// Emits an expiry warning when the level got worse, and again every
    /// `alert_repeat` while it is not `Ok`.
    fn check_expiry(&mut self, now: SystemTime) {
        let (Some(cert), Some(renew_at)) = (self.current(), self.renewal_time()) else {
            return;
        };
        let level = AlertLevel::at(&cert, now, renew_at);
        self.store.report_level(&self.slot, &cert, level);
        let repeat_due = self
            .last_alert
            .is_some_and(|t| t + self.alert_repeat <= Instant::now());
        if level > self.reported || (level > AlertLevel::Ok && repeat_due) {
            self.store.events().emit(RotationEvent::ExpiryWarning {
                slot: self.slot.clone(),
                remaining: cert.not_after.duration_since(now).unwrap_or_default(),
                cert,
                level,
            });
            self.last_alert = Some(Instant::now());
        } else if level == AlertLevel::Ok {
            self.last_alert = None;
        }
        self.reported = level;
    }

    /// One rotation attempt; schedules the retry if it failed.
    pub(super) async fn attempt(
        &mut self,
        trigger: Trigger,
        bundle: Option<CertBundle>,
        allow_older: bool,
    ) -> Result<Rotation, RotateError> {
        let result = self.try_rotate(trigger, bundle, allow_older).await;
        let outcome = match &result {
            Ok(Rotation::Rotated { .. }) => Some(Outcome::Rotated),
            Ok(Rotation::Unchanged(_)) => Some(Outcome::Unchanged),
            Err(RotateError::Refused(error)) => Some(Outcome::Refused(error.reason().code())),
            Err(RotateError::Source(error)) => Some(Outcome::Failed(error.code())),
            Err(RotateError::Stopped) => None,
        };
        if let Some(outcome) = outcome {
            let events = self.store.events();
            events.attempted(&self.slot, self.source.kind(), outcome);
        }
        // Asked after the fetch: the source may have learnt a new time.
        let renewal_due = self
            .renewal_time()
            .is_some_and(|t| t <= self.store.clock().now());
        match &result {
            Ok(Rotation::Rotated { .. }) => self.succeeded(),
            // Nothing newer while renewal is due: look again later, not in a hot loop.
            Ok(Rotation::Unchanged(_)) if renewal_due => self.failed(None),
            Ok(Rotation::Unchanged(_)) => self.succeeded(),
            Err(RotateError::Source(SourceError::RateLimited { retry_after, .. })) => {
                self.failed(Some(*retry_after))
            }
            Err(_) => self.failed(None),
        }
        result
    }

    /// An attempt succeeded: no retry, unless the mark could not be read
    /// (then it is read again after a backoff of its own, and the serving
    /// certificate recorded once it can be).
    fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        if !matches!(self.mark, Recorded::Unreadable(_)) {
            self.mark_failures = 0;
            return;
        }
        let range = (self.retry_min, self.retry_max);
        let delay = renewal::retry_delay(self.mark_failures, range, None, None);
        self.mark_failures = self.mark_failures.saturating_add(1);
        self.retry_at = Some(crate::clock::instant_in(delay));
    }

    /// Schedules the retry: exponential from `retry_min`, capped at
    /// `retry_max`, no sooner than a source's `retry_after`, and
    /// lifetime-aware above all: never more than an eighth of the serving
    /// certificate's remaining validity (but not under `retry_min`), so a
    /// short-lived certificate gets several attempts before it expires
    /// however long the outage, and retries come sooner as expiry nears.
    fn failed(&mut self, retry_after: Option<Duration>) {
        let now = self.store.clock().now();
        let remaining = self
            .current()
            .map(|cert| cert.not_after.duration_since(now).unwrap_or_default());
        let range = (self.retry_min, self.retry_max);
        let delay = renewal::retry_delay(self.failures, range, retry_after, remaining);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(crate::clock::instant_in(delay));
        tracing::debug!(target: "certrotate", slot = %self.slot, retry_in = ?delay, failures = self.failures, "rotation will be retried");
    }

    /// Records the source's warnings in health, with an event for each new one.
    fn note_warnings(&mut self) {
        let mut warnings = self.source.warnings();
        if let Recorded::Unreadable(error) = &self.mark {
            warnings.push(SourceWarning::MarkUnreadable(Box::new(error.clone())));
        }
        if warnings == self.warnings {
            return;
        }
        self.store.set_warnings(
            &self.slot,
            warnings.iter().map(ToString::to_string).collect(),
        );
        for warning in warnings.iter().filter(|w| !self.warnings.contains(w)) {
            self.store.events().emit(RotationEvent::Warning {
                slot: self.slot.clone(),
                warning: warning.clone(),
            });
        }
        self.warnings = warnings;
    }

    /// Asks the source for its mark unless it was read already. A mark
    /// that cannot be read is reported in health, and asked again at the
    /// next attempt.
    async fn read_mark(&mut self) {
        if matches!(self.mark, Recorded::Known(_)) {
            return;
        }
        let read = tokio::time::timeout(MARK_TIMEOUT, self.source.high_water_mark())
            .await
            .unwrap_or_else(|_| {
                let waited = crate::clock::human(MARK_TIMEOUT);
                Err(MarkUnreadable::new(format!("no answer within {waited}")))
            });
        if let Err(error) = &read {
            tracing::warn!(target: "certrotate", slot = %self.slot, %error, "only certificates newer than the one serving are installed until it can be read");
        }
        self.mark.update(read);
        self.note_warnings();
    }

    /// The newest certificate served: the serving one, or the source's
    /// record of one newer (as much of it as could be read).
    async fn newest_served(&mut self, serving: Option<&CertInfo>) -> Option<HighWaterMark> {
        self.read_mark().await;
        HighWaterMark::newest(self.mark.floor(), serving.map(HighWaterMark::of))
    }

    /// Has the source record `new` unless a newer certificate is on
    /// record (the same age is recorded again, for the places the source
    /// keeps that may lag). While the mark cannot be read, the source is
    /// still asked: it records in each place that holds nothing newer and
    /// answers (a place whose value is unusable is replaced, so the mark
    /// heals; one that does not answer is left alone, as it may hold a
    /// newer one), so that a mark is never lowered.
    async fn raise_mark(&mut self, new: &CertInfo) {
        self.read_mark().await;
        if self.mark.floor().is_some_and(|m| m.is_above(new)) {
            return;
        }
        let mark = HighWaterMark::of(new);
        let recorded = self.source.record_high_water_mark(mark.clone());
        if tokio::time::timeout(MARK_TIMEOUT, recorded).await.is_err() {
            tracing::warn!(target: "certrotate", slot = %self.slot, "the source did not record the newest certificate in time; replay protection is per process until it does");
        }
        match self.mark {
            Recorded::Known(_) => self.mark = Recorded::Known(Some(mark)),
            // Healed, perhaps: read again.
            _ => self.read_mark().await,
        }
    }

    async fn try_rotate(
        &mut self,
        trigger: Trigger,
        bundle: Option<CertBundle>,
        allow_older: bool,
    ) -> Result<Rotation, RotateError> {
        let events = self.store.events().clone();
        events.emit(RotationEvent::Attempted {
            slot: self.slot.clone(),
            trigger,
        });
        let candidate = match bundle {
            Some(bundle) => bundle,
            None => {
                let fetched = tokio::time::timeout(self.fetch_timeout, self.source.fetch())
                    .await
                    .unwrap_or_else(|_| {
                        Err(SourceError::unavailable(
                            self.source.describe(),
                            format!(
                                "no answer within {}",
                                crate::clock::human(self.fetch_timeout)
                            ),
                        ))
                    });
                self.note_warnings();
                fetched.inspect_err(|error| {
                    self.store
                        .record_failure(&self.slot, error.code(), error.to_string());
                    events.emit(RotationEvent::SourceFailed {
                        slot: self.slot.clone(),
                        error: error.clone(),
                    });
                })?
            }
        };
        let serving = self.current();
        // Unchanged only if the key is as good as the serving one: the same
        // certificate with a key that does not belong to it (only the key
        // file replaced) is a change, and the policy refuses it.
        if let Some(serving) = serving.as_ref().filter(|s| {
            s.fingerprint_sha256 == candidate.info().fingerprint_sha256 && candidate.key_fits()
        }) {
            // A mark that could not be read is read again, and catches up.
            if matches!(self.mark, Recorded::Unreadable(_)) {
                self.raise_mark(serving).await;
            }
            self.store.record_success(&self.slot);
            return Ok(Rotation::Unchanged(serving.clone()));
        }
        let policy = self.policy.clone();
        let now = self.store.clock().now();
        let newest = match allow_older || self.allow_older {
            true => None,
            false => self.newest_served(serving.as_deref()).await,
        };
        let verdict = crate::sync::blocking(move || {
            policy.validate_newer_than(&candidate, newest.as_ref(), now)
        })
        .await
        // The runtime is shutting down.
        .map_err(|_| RotateError::Stopped)?;
        match verdict {
            Ok(valid) => {
                let new = valid.info.clone();
                let old = self.store.install(&self.slot, valid);
                self.raise_mark(&new).await;
                Ok(Rotation::Rotated { old, new })
            }
            Err(error) => {
                self.store
                    .record_failure(&self.slot, error.reason().code(), error.to_string());
                events.emit(RotationEvent::Refused {
                    slot: self.slot.clone(),
                    error: Arc::new(error.clone()),
                });
                Err(error.into())
            }
        }
    }
}

//! The rotation task: waits for the source, the renewal time, a trigger or
//! a retry; fetches; has the engine judge, install, back off and alert.

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Command, RotateError, Rotation};
use crate::bundle::{CertBundle, CertInfo};
use crate::engine::{self, Rules, Slot, SlotState, Verdict};
use crate::events::Trigger;
use crate::mark::{HighWaterMark, MarkUnreadable, Recorded};
use crate::policy::Policy;
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
    pub(super) slot: std::sync::Arc<str>,
    pub(super) rules: Rules,
    pub(super) state: SlotState,
    /// When the serving certificate's alert level next needs a look.
    pub(super) next_look: Option<SystemTime>,
    pub(super) fetch_timeout: Duration,
    /// The newest certificate served, as the source recorded it.
    pub(super) mark: Recorded,
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
        let alert = self.next_look.map(at);
        let (attempt, trigger) = match self.state.retry_at {
            Some(retry) => (Some(retry), Trigger::Retry),
            None => (self.renewal_time().map(at), Trigger::Schedule),
        };
        match attempt {
            Some(t) if t <= cap && alert.is_none_or(|a| t <= a) => (t, Some(trigger)),
            _ => (alert.unwrap_or(cap).min(cap), None),
        }
    }

    fn current(&self) -> Option<std::sync::Arc<CertInfo>> {
        self.store.current(&self.slot)
    }

    /// The slot under the engine's rules, and the source (which may decide
    /// renewal times).
    fn engine(&mut self) -> (Slot<'_>, &S) {
        let slot = Slot {
            store: &self.store,
            rules: &self.rules,
            name: &self.slot,
            kind: self.source.kind(),
            state: &mut self.state,
        };
        (slot, &self.source)
    }

    /// The serving certificate's renewal time (the source's, if it decides).
    fn renewal_time(&mut self) -> Option<SystemTime> {
        let (slot, source) = self.engine();
        slot.renewal(|cert| source.renew_at(cert)).map(|(_, at)| at)
    }

    /// Reports the alert level, with expiry warnings, and notes when to
    /// look again.
    fn check_expiry(&mut self, now: SystemTime) {
        let (mut slot, source) = self.engine();
        let checked = slot.check_expiry(now, |cert| source.renew_at(cert));
        self.next_look = checked.and_then(|(_, next)| next);
    }

    /// One rotation attempt; plans the retry if it failed.
    pub(super) async fn attempt(
        &mut self,
        trigger: Trigger,
        bundle: Option<CertBundle>,
        allow_older: bool,
    ) -> Result<Rotation, RotateError> {
        let result = self.try_rotate(trigger, bundle, allow_older).await;
        let mark_read = !matches!(self.mark, Recorded::Unreadable(_));
        let (mut slot, source) = self.engine();
        slot.plan(&result, |cert| source.renew_at(cert));
        // A mark that could not be read is read again after its own
        // backoff, and the serving certificate recorded once it can be.
        if result.is_ok() {
            slot.mark_read(mark_read);
        }
        result
    }

    /// Has the engine carry out `verdict`.
    fn conclude(&mut self, verdict: Verdict) -> Result<Rotation, RotateError> {
        let (mut slot, source) = self.engine();
        slot.conclude(verdict, |cert| source.renew_at(cert))
    }

    /// Shows the source's warnings, and the mark's, in health.
    fn note_warnings(&mut self) {
        let mut warnings = self.source.warnings();
        if let Recorded::Unreadable(error) = &self.mark {
            warnings.push(SourceWarning::MarkUnreadable(Box::new(error.clone())));
        }
        let (mut slot, _) = self.engine();
        slot.warn(warnings);
    }

    /// Asks the source for its mark unless it was read already. A mark
    /// that cannot be read is reported in health, and asked again at the
    /// next attempt.
    async fn read_mark(&mut self) {
        if matches!(self.mark, Recorded::Known(_)) {
            return;
        }
        let read = match self.source.replay_marks() {
            None => Ok(None),
            Some(marks) => tokio::time::timeout(MARK_TIMEOUT, marks.read())
                .await
                .unwrap_or_else(|_| {
                    let waited = crate::clock::human(MARK_TIMEOUT);
                    Err(MarkUnreadable::new(format!("no answer within {waited}")))
                }),
        };
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
        let Some(mark) = HighWaterMark::to_record(self.mark.floor().as_ref(), new) else {
            return;
        };
        if let Some(marks) = self.source.replay_marks() {
            let recorded = marks.record(mark.clone());
            if tokio::time::timeout(MARK_TIMEOUT, recorded).await.is_err() {
                tracing::warn!(target: "certrotate", slot = %self.slot, "the source did not record the newest certificate in time; replay protection is per process until it does");
            }
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
        engine::attempting(&self.store, &self.slot, trigger);
        let candidate = match bundle {
            Some(bundle) => bundle,
            None => {
                let fetched = tokio::time::timeout(self.fetch_timeout, self.source.fetch())
                    .await
                    .unwrap_or_else(|_| {
                        let waited = crate::clock::human(self.fetch_timeout);
                        let why = format!("no answer within {waited}");
                        Err(SourceError::unavailable(self.source.describe(), why))
                    });
                self.note_warnings();
                match fetched {
                    Ok(candidate) => candidate,
                    Err(error) => return self.conclude(Verdict::Failed(error)),
                }
            }
        };
        let serving = self.current();
        if let Some(serving) = serving
            .as_ref()
            .filter(|s| engine::unchanged(Some(s), &candidate))
        {
            // A mark that could not be read is read again, and catches up.
            if matches!(self.mark, Recorded::Unreadable(_)) {
                self.raise_mark(serving).await;
            }
            return self.conclude(Verdict::Unchanged(serving.clone()));
        }
        let policy = self.policy.clone();
        let now = self.store.clock().now();
        let newest = match allow_older || self.allow_older {
            true => None,
            false => self.newest_served(serving.as_deref()).await,
        };
        let verdict =
            crate::sync::blocking(move || engine::judge(&policy, &candidate, newest.as_ref(), now))
                .await
                // The runtime is shutting down.
                .map_err(|_| RotateError::Stopped)?;
        let result = self.conclude(verdict);
        if let Ok(Rotation::Rotated { new, .. }) = &result {
            self.raise_mark(new).await;
        }
        result
    }
}

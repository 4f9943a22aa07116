//! The rotation task: waits for the source, the renewal time, a trigger or
//! a retry, then has the engine attempt its one slot; it is the engine's
//! [`Driver`] for it (fetching from the source, reading and recording its
//! replay mark, each within its time).

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use std::sync::Arc;

use super::{Command, RotateError, Rotation};
use crate::bundle::{CertBundle, CertInfo};
use crate::engine::{self, Candidate, Decided, Driver, MarkRead, Rules, Slot, SlotState};
use crate::events::Trigger;
use crate::mark::{HighWaterMark, MarkUnreadable};
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
    pub(super) slot: Arc<str>,
    pub(super) rules: Rules,
    pub(super) state: SlotState,
    /// When the serving certificate's alert level next needs a look.
    pub(super) next_look: Option<SystemTime>,
    pub(super) fetch_timeout: Duration,
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

    /// The serving certificate's renewal time (the source's, if it decides).
    fn renewal_time(&mut self) -> Option<SystemTime> {
        let name = self.slot.clone();
        self.with_slot(&name, |slot, decided| slot.renewal(decided))
            .flatten()
            .map(|(_, at)| at)
    }

    /// Reports the alert level, with expiry warnings, and notes when to
    /// look again.
    fn check_expiry(&mut self, now: SystemTime) {
        let name = self.slot.clone();
        let checked = self.with_slot(&name, |slot, decided| slot.check_expiry(now, decided));
        self.next_look = checked.flatten().and_then(|(_, next)| next);
    }

    /// One rotation attempt, with the candidate `bundle` if given (a
    /// manual install, older than the mark if `allow_older`), else what
    /// the source fetches.
    pub(super) async fn attempt(
        &mut self,
        trigger: Trigger,
        bundle: Option<CertBundle>,
        allow_older: bool,
    ) -> Result<Rotation, RotateError> {
        let slot = self.slot.clone();
        let results = match bundle {
            None => engine::attempt(self, vec![slot], trigger).await,
            Some(bundle) => {
                engine::attempting(&self.store, &slot, trigger);
                engine::settle(self, vec![(slot, Ok(bundle))], allow_older).await
            }
        };
        let mut results = results.into_iter().map(|(_, result)| result);
        results.next().unwrap_or(Err(RotateError::Stopped))
    }
}

impl<S: CertSource> Task<S> {
    /// The source's marks did not answer within [`MARK_TIMEOUT`]: named,
    /// so that the operator knows which place to look at.
    fn no_answer(&self) -> MarkUnreadable {
        let waited = crate::clock::human(MARK_TIMEOUT);
        MarkUnreadable::new(format!(
            "{}: no answer within {waited}",
            self.source.describe()
        ))
    }
}

/// The rotator's I/O: its one slot's source, each call within its time.
impl<S: CertSource> Driver for Task<S> {
    fn store(&self) -> &CertStore {
        &self.store
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn allow_older(&self) -> bool {
        self.allow_older
    }

    /// A source may keep its mark in several places (shared storage and a
    /// state file of the instance's own), one of which may lag.
    fn one_place(&self) -> bool {
        false
    }

    fn with_slot<R>(
        &mut self,
        _: &Arc<str>,
        step: impl FnOnce(&mut Slot<'_>, &Decided<'_>) -> R,
    ) -> Option<R> {
        let source = &self.source;
        let decided = |cert: &CertInfo| source.renew_at(cert);
        let mut slot = Slot {
            store: &self.store,
            rules: &self.rules,
            name: &self.slot,
            kind: source.kind(),
            state: &mut self.state,
        };
        Some(step(&mut slot, &decided))
    }

    fn warnings(&self, _: &Arc<str>) -> Vec<SourceWarning> {
        self.source.warnings()
    }

    async fn fetch(&mut self, names: Vec<Arc<str>>, trigger: Trigger) -> Vec<Candidate> {
        engine::attempting(&self.store, &self.slot, trigger);
        let fetched = tokio::time::timeout(self.fetch_timeout, self.source.fetch())
            .await
            .unwrap_or_else(|_| {
                let waited = crate::clock::human(self.fetch_timeout);
                let why = format!("no answer within {waited}");
                Err(SourceError::unavailable(self.source.describe(), why))
            });
        names
            .into_iter()
            .map(|name| (name, fetched.clone()))
            .collect()
    }

    /// Asks the source for its mark, within [`MARK_TIMEOUT`].
    async fn read_marks(&mut self, names: Vec<Arc<str>>) -> Vec<(Arc<str>, MarkRead)> {
        let read = match self.source.replay_marks() {
            None => Ok(None),
            Some(marks) => tokio::time::timeout(MARK_TIMEOUT, marks.read())
                .await
                .unwrap_or_else(|_| Err(self.no_answer())),
        };
        names.into_iter().map(|name| (name, read.clone())).collect()
    }

    /// Has the source record the mark, within [`MARK_TIMEOUT`].
    async fn record_marks(
        &mut self,
        marks: Vec<(Arc<str>, HighWaterMark)>,
    ) -> Vec<(Arc<str>, Result<(), MarkUnreadable>)> {
        let mut recorded = Vec::with_capacity(marks.len());
        for (name, mark) in marks {
            let result = match self.source.replay_marks() {
                None => Ok(()),
                Some(marks) => tokio::time::timeout(MARK_TIMEOUT, marks.record(mark))
                    .await
                    .unwrap_or_else(|_| Err(self.no_answer().recording())),
            };
            recorded.push((name, result));
        }
        recorded
    }
}

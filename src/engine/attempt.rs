//! One attempt at a list of slots, in the order every driver follows:
//! fetch → replay mark read → judge (off the runtime, on every core) →
//! install or refuse, with the renewal time → mark recorded → retry
//! planned, warnings, events and metrics. A [`Driver`] does the I/O (a
//! rotator for its one slot, a directory for hundreds of pairs at once);
//! the steps between are the engine's, the same for one slot or 10⁵.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use super::{RotateError, Rotation, Slot, Verdict};
use crate::bundle::{CertBundle, CertInfo};
use crate::events::Trigger;
use crate::mark::{HighWaterMark, MarkUnreadable};
use crate::policy::Policy;
use crate::renewal::Renewal;
use crate::source::{SourceError, SourceWarning};
use crate::store::CertStore;

use super::marks::MarkRead;

/// A slot's candidate, as its driver fetched it.
pub(crate) type Candidate = (Arc<str>, Result<CertBundle, SourceError>);

/// When a source decides a certificate is due for renewal (`None`: by the
/// rules' fraction of its lifetime).
pub(crate) type Decided<'a> = dyn Fn(&CertInfo) -> Option<Renewal> + Send + Sync + 'a;

/// What does the I/O for a list of slots: fetching candidates, reading and
/// recording replay marks (each bounded in time by the driver: a source or
/// disk that hangs holds up an attempt, not the task for ever).
pub(crate) trait Driver: Send {
    /// The store its slots serve from.
    fn store(&self) -> &CertStore;

    /// The policy candidates are judged by.
    fn policy(&self) -> &Policy;

    /// Whether certificates older than the mark are accepted (a
    /// [danger](crate::danger) switch).
    fn allow_older(&self) -> bool {
        false
    }

    /// Whether each slot's mark is kept in one place, so that a mark read
    /// is what that place holds (a directory's state file; a source may
    /// keep several places, one of which may lag).
    fn one_place(&self) -> bool;

    /// Runs `step` on slot `name` under the rules, with when its source
    /// decides renewal; `None` if the slot is gone.
    fn with_slot<R>(
        &mut self,
        name: &Arc<str>,
        step: impl FnOnce(&mut Slot<'_>, &Decided<'_>) -> R,
    ) -> Option<R>;

    /// The source's own warnings for slot `name` (the mark's are added).
    fn warnings(&self, name: &Arc<str>) -> Vec<SourceWarning>;

    /// The candidates for `names`, leaving out those with nothing to
    /// attempt; emits [`attempting`](super::attempting) for each one kept.
    fn fetch(
        &mut self,
        names: Vec<Arc<str>>,
        trigger: Trigger,
    ) -> impl Future<Output = Vec<Candidate>> + Send;

    /// Reads the marks of `names`.
    fn read_marks(
        &mut self,
        names: Vec<Arc<str>>,
    ) -> impl Future<Output = Vec<(Arc<str>, MarkRead)>> + Send;

    /// Records `marks` in each place that holds nothing newer and answers
    /// (replacing what is unusable); a place that did not answer, or could
    /// not be written, is an error.
    fn record_marks(
        &mut self,
        marks: Vec<(Arc<str>, HighWaterMark)>,
    ) -> impl Future<Output = Vec<(Arc<str>, Result<(), MarkUnreadable>)>> + Send;

    /// Slot `name`'s attempt is over (a directory plans its alert check).
    fn concluded(&mut self, name: &Arc<str>, result: &Result<Rotation, RotateError>) {
        let _ = (name, result);
    }
}

/// One attempt at `names`: fetches their candidates and
/// [settles](settle) them.
pub(crate) async fn attempt<D: Driver>(
    driver: &mut D,
    names: Vec<Arc<str>>,
    trigger: Trigger,
) -> Vec<(Arc<str>, Result<Rotation, RotateError>)> {
    let candidates = driver.fetch(names, trigger).await;
    settle(driver, candidates, false).await
}

/// What becomes of one slot's candidate before it is judged.
enum Step {
    /// Decided without the policy (unchanged, or the source failed).
    Decided(Verdict),
    /// To be judged against the mark and what serves (if anything).
    Judge(CertBundle, Option<Arc<CertInfo>>),
}

/// Settles `candidates`: each is unchanged, refused or installed; marks
/// not known are read first (a slot with a candidate reads a mark it does
/// not know, unless it is judged without one) and the newest certificate
/// served is recorded after an install or a read
/// ([`MarkState::to_record`](super::marks::MarkState::to_record));
/// retries, warnings and alerts are planned. `allow_older`: this once,
/// a candidate older than the mark is accepted (a manual install).
pub(crate) async fn settle<D: Driver>(
    driver: &mut D,
    candidates: Vec<Candidate>,
    allow_older: bool,
) -> Vec<(Arc<str>, Result<Rotation, RotateError>)> {
    let allow_older = allow_older || driver.allow_older();
    let mut steps = Vec::with_capacity(candidates.len());
    let mut unread = Vec::new();
    for (name, fetched) in candidates {
        let serving = driver.store().current(&name);
        // What the source warned of while fetching shows before the outcome.
        let warnings = driver.warnings(&name);
        let Some(mark_unread) = driver.with_slot(&name, |slot, _| {
            slot.warn(warnings);
            slot.state.mark.unread()
        }) else {
            continue;
        };
        let step = match fetched {
            Err(error) => Step::Decided(Verdict::Failed(error)),
            Ok(bundle) => match serving {
                Some(serving) if super::unchanged(Some(&serving), &bundle) => {
                    Step::Decided(Verdict::Unchanged(serving))
                }
                serving => Step::Judge(bundle, serving),
            },
        };
        // A mark not known is read for a candidate, to judge it (unless
        // older ones are accepted) or to catch up with what serves.
        let judged_without = allow_older && matches!(step, Step::Judge(..));
        if mark_unread && !judged_without && !matches!(step, Step::Decided(Verdict::Failed(_))) {
            unread.push(name.clone());
        }
        steps.push((name, step));
    }
    let mut touched: HashSet<Arc<str>> = HashSet::new();
    read_marks(driver, unread, &mut touched).await;

    let now = driver.store().clock().now();
    let mut work = Vec::new();
    let mut verdicts = Vec::with_capacity(steps.len());
    for (index, (name, step)) in steps.into_iter().enumerate() {
        match step {
            Step::Decided(verdict) => verdicts.push((name, Some(verdict))),
            Step::Judge(bundle, serving) => {
                let newest = match allow_older {
                    true => None,
                    false => driver
                        .with_slot(&name, |slot, _| slot.state.mark.newest(serving.as_deref()))
                        .flatten(),
                };
                work.push((index, bundle, newest));
                verdicts.push((name, None));
            }
        }
    }
    for (index, verdict) in judge_all(driver.policy(), work, now).await {
        verdicts[index].1 = Some(verdict);
    }

    let one_place = driver.one_place();
    let mut results = Vec::with_capacity(verdicts.len());
    let mut records = Vec::new();
    for (name, verdict) in verdicts {
        let read = touched.contains(&name);
        let done = driver.with_slot(&name, |slot, decided| {
            // A validation that did not finish (the runtime is shutting
            // down, or it panicked): nothing installed, retried.
            let result = match verdict {
                Some(verdict) => slot.conclude(verdict, decided),
                None => Err(RotateError::Stopped),
            };
            // The newest certificate served is recorded after an install,
            // and after a read that may have found the places behind (it
            // was installed while they could not be read or recorded in).
            let rotated = match &result {
                Ok(Rotation::Rotated { new, .. }) => Some(new.clone()),
                _ => None,
            };
            if let Some(new) = &rotated {
                slot.state.mark.serves(new);
            }
            let record = (rotated.is_some() || read)
                .then(|| slot.state.mark.to_record(one_place))
                .flatten();
            (result, record)
        });
        let Some((result, record)) = done else {
            continue;
        };
        records.extend(record.map(|mark| (name.clone(), mark)));
        results.push((name, result));
    }
    record_marks(driver, records, &mut touched).await;

    for (name, result) in &results {
        let warnings = driver.warnings(name);
        let read = touched.contains(name);
        driver.with_slot(name, |slot, decided| {
            slot.plan(result, decided);
            if read {
                slot.mark_settled();
            }
            slot.warn(warnings);
        });
        driver.concluded(name, result);
    }
    results
}

/// Reads the marks of `names` and takes in what was read. One that cannot
/// be read shows in health before the outcome (one read well is cleared at
/// the end, after its record: a record that fails again leaves the warning
/// as it was, rather than clearing and raising it at each retry), and is
/// logged once per attempt, however many slots (10⁵ pairs on a dead disk).
async fn read_marks<D: Driver>(driver: &mut D, names: Vec<Arc<str>>, read: &mut HashSet<Arc<str>>) {
    if names.is_empty() {
        return;
    }
    let mut failed = Failures::default();
    for (name, mark) in driver.read_marks(names).await {
        let warnings = mark.is_err().then(|| driver.warnings(&name));
        if let Err(error) = &mark {
            failed.add(&name, error);
        }
        driver.with_slot(&name, |slot, _| {
            slot.state.mark.read(mark);
            if let Some(warnings) = warnings {
                slot.warn(warnings);
            }
        });
        read.insert(name);
    }
    failed.log("only certificates newer than the one serving are installed until it can be read");
}

/// Slots whose mark could not be read or recorded in one attempt, told
/// in one log line.
#[derive(Default)]
struct Failures {
    count: usize,
    first: Option<(Arc<str>, MarkUnreadable)>,
}

impl Failures {
    fn add(&mut self, name: &Arc<str>, error: &MarkUnreadable) {
        self.count += 1;
        self.first
            .get_or_insert_with(|| (name.clone(), error.clone()));
    }

    fn log(self, consequence: &str) {
        let Some((slot, error)) = self.first else {
            return;
        };
        match self.count {
            1 => tracing::warn!(target: "certrotate", %slot, %error, "{consequence}"),
            slots => {
                tracing::warn!(target: "certrotate", slots, first = %slot, %error, "{consequence}")
            }
        }
    }
}

/// Records `marks` and takes in what became of them; the marks of places
/// that could not be read before are read again (a record may have healed
/// them).
async fn record_marks<D: Driver>(
    driver: &mut D,
    marks: Vec<(Arc<str>, HighWaterMark)>,
    touched: &mut HashSet<Arc<str>>,
) {
    if marks.is_empty() {
        return;
    }
    let mut asked: HashMap<Arc<str>, HighWaterMark> = marks.iter().cloned().collect();
    let mut again = Vec::new();
    let mut failed = Failures::default();
    for (name, result) in driver.record_marks(marks).await {
        let Some(mark) = asked.remove(&name) else {
            continue;
        };
        if let Err(error) = &result {
            failed.add(&name, error);
        }
        let unread = driver.with_slot(&name, |slot, _| {
            slot.state.mark.recorded(&mark, result);
            slot.state.mark.unread() && !slot.state.mark.unreadable()
        });
        if unread == Some(true) {
            again.push(name.clone());
        }
        touched.insert(name);
    }
    failed.log("the newest certificate served is not recorded: replay protection is this process's alone until it is");
    read_marks(driver, again, touched).await;
}

/// Judges `work` (each with the mark it must not be older than) on the
/// blocking pool, spread over every core. A lane that did not finish (the
/// runtime is shutting down) gives no verdicts.
async fn judge_all(
    policy: &Policy,
    work: Vec<(usize, CertBundle, Option<HighWaterMark>)>,
    now: SystemTime,
) -> Vec<(usize, Verdict)> {
    let lanes = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_lane = work.len().div_ceil(lanes).max(1);
    let mut running = tokio::task::JoinSet::new();
    let mut work = work.into_iter();
    loop {
        let lane: Vec<_> = work.by_ref().take(per_lane).collect();
        if lane.is_empty() {
            break;
        }
        let policy = policy.clone();
        running.spawn(crate::sync::blocking(move || {
            lane.into_iter()
                .map(|(index, bundle, newest)| {
                    (index, super::judge(&policy, &bundle, newest.as_ref(), now))
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut verdicts = Vec::new();
    while let Some(done) = running.join_next().await {
        if let Ok(Ok(lane)) = done {
            verdicts.extend(lane);
        }
    }
    verdicts
}

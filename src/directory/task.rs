//! The one task that follows a [`CertDirectory`](super::CertDirectory):
//! it lists the directory, hears which entries changed, reads and validates
//! the pairs they belong to (and only those), retries failed pairs, and
//! watches the alert levels of what serves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::engine::{self, Rules, Slot, SlotState, Verdict};
use crate::events::Trigger;
use crate::health::AlertLevel;
use crate::policy::Policy;
use crate::read::OneAtATime;
use crate::source::file::{
    FileOptions, Files, Fingerprint, Loaded, Wake, Wakeups, MAX_BUSY_WINDOWS, READ_TIMEOUT,
};
use crate::source::{SourceError, SourceWarning};
use crate::store::CertStore;
use crate::sync::lock;

use super::layout::{locate, pair_of, scan, stamp};
use super::marks::{self, Lookup, PairMarks};
use super::CertDirectoryBuilder;
use crate::mark::{HighWaterMark, MarkUnreadable, STATE_FILE_TIMEOUT};

/// Pairs read in one turn of the blocking reader: a hung file system holds
/// up at most this many before they are reported and retried.
const READ_BATCH: usize = 512;

/// The longest the task sleeps before looking at the wall clock again.
const MAX_SLEEP: Duration = Duration::from_secs(300);

pub(super) struct DirTask {
    dir: PathBuf,
    describe: String,
    policy: Policy,
    options: FileOptions,
    store: CertStore,
    rules: Rules,
    wakeups: Wakeups,
    pairs: BTreeMap<Arc<str>, Pair>,
    /// Subdirectories watched beside the directory (cert-manager pairs, or
    /// a directory where one may appear).
    subdirs: BTreeSet<PathBuf>,
    /// Whether the watches were set up.
    watching: bool,
    /// When to read a pair again: after a failure, or while it is caught
    /// between its two halves.
    retries: BTreeSet<(Instant, Arc<str>)>,
    /// When a serving pair's alert level next changes.
    checks: BTreeSet<(SystemTime, Arc<str>)>,
    /// The pairs' names, for [`CertDirectory::pairs`](super::CertDirectory::pairs).
    names: Arc<Mutex<BTreeSet<Arc<str>>>>,
    reads: OneAtATime,
    /// The newest certificate each pair served, kept when it leaves.
    marks: PairMarks,
    /// Reads and writes of the state directory, one batch at a time.
    mark_io: OneAtATime,
}

/// What the task keeps of one pair (its certificate is in the store).
struct Pair {
    files: Files,
    /// The files' metadata at the last read: a poll reads again only the
    /// pairs whose metadata changed.
    stamp: u64,
    /// What the last read found.
    seen: Option<Fingerprint>,
    /// What the engine keeps of it (its retry time among them).
    state: SlotState,
    /// Until when a pair caught between its halves is read again before its
    /// error is reported.
    grace_until: Option<Instant>,
    /// What its files' last read warned of.
    file_warning: Option<SourceWarning>,
    /// Why its mark could not be read, if it could not.
    mark_warning: Option<SourceWarning>,
    /// When its alert level is next looked at (its place in `checks`).
    check_at: Option<SystemTime>,
}

/// One pair as a blocking look found it.
struct Look {
    name: Arc<str>,
    /// Its files, their metadata stamp and what reading them found;
    /// `None`: the pair is gone.
    found: Option<(Files, u64, Loaded)>,
    /// Whether a subdirectory of its name exists (to be watched).
    subdir: bool,
}

/// What reading a pair's mark file gave.
type MarkRead = Result<Option<HighWaterMark>, MarkUnreadable>;

impl DirTask {
    /// The task `builder` describes, until `gone` closes.
    pub(super) fn new(builder: CertDirectoryBuilder, gone: watch::Receiver<()>) -> Self {
        let describe = format!("directory {}", builder.dir.display());
        let wakeups = Wakeups::new(&builder.options, gone, || describe.clone());
        if let Some(subscription) = wakeups.subscription() {
            subscription.collect_changes();
        }
        Self {
            dir: builder.dir,
            describe,
            policy: builder.policy,
            options: builder.options,
            store: builder.store.unwrap_or_default(),
            rules: builder.rules,
            wakeups,
            pairs: BTreeMap::new(),
            subdirs: BTreeSet::new(),
            watching: false,
            retries: BTreeSet::new(),
            checks: BTreeSet::new(),
            names: Arc::default(),
            reads: OneAtATime::default(),
            marks: PairMarks::new(builder.state_dir),
            mark_io: OneAtATime::default(),
        }
    }

    /// The store the pairs fill.
    pub(super) fn store(&self) -> &CertStore {
        &self.store
    }

    /// The names of the pairs, kept up to date by the task.
    pub(super) fn names(&self) -> Arc<Mutex<BTreeSet<Arc<str>>>> {
        self.names.clone()
    }

    /// Loads every pair present, waiting out the grace period of those
    /// caught between their halves, so each has been tried on return.
    pub(super) async fn start(&mut self) -> Result<(), SourceError> {
        self.rescan(Trigger::Initial).await?;
        loop {
            let waiting: Vec<Arc<str>> = self
                .pairs
                .iter()
                .filter(|(_, p)| p.grace_until.is_some())
                .map(|(name, _)| name.clone())
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(self.options.settle).await;
            self.refresh(waiting, Trigger::Initial).await;
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            let now = self.store.clock().now();
            let check = self.checks.first().map(|(at, _)| {
                crate::clock::instant_in(at.duration_since(now).unwrap_or_default())
            });
            let retry = self.retries.first().map(|(at, _)| *at);
            let cap = crate::clock::instant_in(MAX_SLEEP);
            let deadline = [check, retry].into_iter().flatten().fold(cap, Instant::min);
            tokio::select! {
                wake = self.wakeups.next_wake() => match wake {
                    None => return,
                    Some(wake) => self.changed(wake).await,
                },
                () = tokio::time::sleep_until(deadline) => {
                    self.retry_due().await;
                    self.check_due().await;
                }
            }
        }
    }

    /// Something changed: once the directory has been quiet for a settle
    /// window (scanning is harmless, so not forever), reads the pairs the
    /// events named, or everything on a poll or a lost event.
    async fn changed(&mut self, wake: Wake) {
        for _ in 0..MAX_BUSY_WINDOWS {
            if !self.wakeups.event_within(self.options.settle).await {
                break;
            }
        }
        // Without events (polling only), every wake is a poll.
        let changes = self.wakeups.subscription().map(|s| s.take_changes());
        match changes {
            Some(changes) if wake == Wake::Event && !changes.rescan => {
                let names: BTreeSet<Arc<str>> = changes
                    .paths
                    .iter()
                    .filter_map(|path| pair_of(&self.dir, path))
                    .collect();
                self.refresh(names.into_iter().collect(), Trigger::SourceChanged)
                    .await;
            }
            _ => {
                if let Err(error) = self.rescan(Trigger::SourceChanged).await {
                    tracing::warn!(target: "certrotate", "{error}; its pairs keep serving");
                }
            }
        }
    }

    async fn retry_due(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some((at, _)) = self.retries.first() {
            if *at > now {
                break;
            }
            let (_, name) = self.retries.pop_first().expect("just seen");
            if let Some(pair) = self.pairs.get_mut(&name) {
                pair.state.retry_at = None;
            }
            due.push(name);
        }
        if !due.is_empty() {
            self.refresh(due, Trigger::Retry).await;
        }
    }

    /// Reports the alert levels due for a look, with expiry warnings; a
    /// pair overdue for renewal is read again (an update whose event was
    /// lost).
    async fn check_due(&mut self) {
        let now = self.store.clock().now();
        let mut overdue = Vec::new();
        while let Some((at, _)) = self.checks.first() {
            if *at > now {
                break;
            }
            let (_, name) = self.checks.pop_first().expect("just seen");
            if let Some(pair) = self.pairs.get_mut(&name) {
                pair.check_at = None;
            }
            if self
                .check(&name, now)
                .is_some_and(|level| level > AlertLevel::Ok)
            {
                overdue.push(name);
            }
        }
        if !overdue.is_empty() {
            self.refresh(overdue, Trigger::Schedule).await;
        }
    }

    /// Has the engine report pair `name`'s alert level at `now` (with an
    /// expiry warning if due), and plans the next look at it.
    fn check(&mut self, name: &Arc<str>, now: SystemTime) -> Option<AlertLevel> {
        let (level, next) = self.with_slot(name, |slot| slot.check_expiry(now, |_| None))??;
        let pair = self.pairs.get_mut(name)?;
        if let Some(old) = pair.check_at.take() {
            self.checks.remove(&(old, name.clone()));
        }
        if let Some(next) = next {
            self.checks.insert((next, name.clone()));
            pair.check_at = Some(next);
        }
        Some(level)
    }

    /// Runs `step` on pair `name` under the engine's rules, then brings the
    /// retry index up to date with the pair's retry time.
    fn with_slot<R>(
        &mut self,
        name: &Arc<str>,
        step: impl FnOnce(&mut Slot<'_>) -> R,
    ) -> Option<R> {
        let pair = self.pairs.get_mut(name)?;
        let before = pair.state.retry_at;
        let mut slot = Slot {
            store: &self.store,
            rules: &self.rules,
            name,
            kind: "file",
            state: &mut pair.state,
        };
        let result = step(&mut slot);
        let after = pair.state.retry_at;
        if before != after {
            if let Some(before) = before {
                self.retries.remove(&(before, name.clone()));
            }
            if let Some(after) = after {
                self.retries.insert((after, name.clone()));
            }
        }
        Some(result)
    }

    /// Lists the directory: pairs that appeared are loaded, pairs that left
    /// are removed, and pairs whose files' metadata changed are read again.
    async fn rescan(&mut self, trigger: Trigger) -> Result<(), SourceError> {
        let dir = self.dir.clone();
        // Listing and stat-ing block (a hung NFS mount): the blocking reader.
        let listed = self.reads.run(READ_TIMEOUT, move || {
            let (found, subdirs) = scan(&dir)?;
            let stamps: Vec<(String, u64)> = found
                .iter()
                .map(|(name, files)| (name.clone(), stamp(files)))
                .collect();
            Ok::<_, std::io::Error>((stamps, subdirs))
        });
        let read_error =
            |source: std::io::Error| SourceError::read(self.describe.clone(), &self.dir, source);
        let (stamps, subdirs) = match listed.await {
            Ok(listed) => listed.map_err(read_error)?,
            Err(stuck) => {
                return Err(stuck.into_source_error(self.describe.clone(), self.dir.clone()))
            }
        };
        if subdirs != self.subdirs || !self.watching {
            self.subdirs = subdirs;
            self.rewatch().await;
        }
        let listed: BTreeSet<&str> = stamps.iter().map(|(name, _)| name.as_str()).collect();
        let gone: Vec<Arc<str>> = self
            .pairs
            .keys()
            .filter(|name| !listed.contains(&***name))
            .cloned()
            .collect();
        for name in gone {
            self.forget(&name);
        }
        let changed = stamps
            .into_iter()
            .filter(|(name, stamp)| {
                self.pairs
                    .get(name.as_str())
                    .is_none_or(|p| p.stamp != *stamp)
            })
            .map(|(name, _)| Arc::from(name))
            .collect();
        self.refresh(changed, trigger).await;
        Ok(())
    }

    /// Watches the directory and its subdirectories (off the runtime:
    /// watching looks the directories up).
    async fn rewatch(&mut self) {
        self.watching = true;
        let Some(subscription) = self.wakeups.subscription() else {
            return;
        };
        let mut dirs: Vec<PathBuf> = self.subdirs.iter().cloned().collect();
        dirs.push(self.dir.clone());
        // The runtime shutting down: nothing left to watch for.
        let _ = crate::sync::blocking(move || subscription.watch_dirs(&dirs)).await;
    }

    /// Reads the pairs `names` (found where they are now), then validates
    /// and installs what changed, on every core.
    async fn refresh(&mut self, names: Vec<Arc<str>>, trigger: Trigger) {
        let mut looks = Vec::with_capacity(names.len());
        for batch in names.chunks(READ_BATCH) {
            looks.extend(self.look(batch.to_vec()).await);
        }
        // New subdirectories are watched (a pair's files may come later).
        let mut rewatch = false;
        for look in &looks {
            let sub = self.dir.join(&*look.name);
            rewatch |= match look.subdir {
                true => self.subdirs.insert(sub),
                false => self.subdirs.remove(&sub),
            };
        }
        if rewatch {
            self.rewatch().await;
        }

        let now_instant = Instant::now();
        let mut candidates = Vec::new();
        for Look { name, found, .. } in looks {
            let Some((files, stamp, loaded)) = found else {
                self.forget(&name);
                continue;
            };
            self.marks.present(&name);
            let pair = self.pairs.entry(name.clone()).or_insert_with(|| {
                lock(&self.names).insert(name.clone());
                // Slots are made in name order (the order looked at), so
                // the first pair by name is the default.
                self.store.add_slot(&name);
                Pair::new(files.clone())
            });
            pair.files = files;
            pair.stamp = stamp;
            // A change that left the content as it was is nothing to do;
            // a due renewal or a retry is an attempt, as a rotator's is.
            let same = pair.seen == Some(loaded.fingerprint);
            if same && trigger == Trigger::SourceChanged {
                continue;
            }
            pair.seen = Some(loaded.fingerprint);
            // Caught between its two halves: read again once it settles,
            // until the grace period ends.
            if !loaded.whole() && loaded.recent {
                let until = *pair
                    .grace_until
                    .get_or_insert(now_instant + self.options.grace);
                if now_instant < until {
                    let at = now_instant + self.options.settle;
                    self.plan_retry(&name, at);
                    continue;
                }
            }
            self.pairs.get_mut(&name).expect("inserted").grace_until = None;
            self.pairs.get_mut(&name).expect("inserted").file_warning = loaded.warning;
            self.note_warnings(&name);
            candidates.push((name, loaded.bundle));
        }
        let verdicts = self.validate(candidates, trigger).await;
        let mut writes = Vec::new();
        for (name, verdict, read) in verdicts {
            if let Some(read) = &read {
                self.mark_loaded(&name, read);
            }
            if let Some((path, mark)) = self.apply(name.clone(), verdict) {
                writes.push((name.clone(), path, mark));
            }
            if let Some(read) = &read {
                let write = self.mark_settled(&name, read.is_ok());
                writes.extend(write.map(|(path, mark)| (name.clone(), path, mark)));
            }
        }
        self.write_marks(writes).await;
    }

    /// Takes in what reading a pair's mark file gave (one that cannot be
    /// read is reported in health).
    fn mark_loaded(&mut self, name: &Arc<str>, read: &MarkRead) {
        self.marks.loaded(name, read);
        if let Some(pair) = self.pairs.get_mut(name) {
            pair.mark_warning = read
                .as_ref()
                .err()
                .cloned()
                .map(|error| SourceWarning::MarkUnreadable(Box::new(error)));
        }
    }

    /// After a read or write of pair `name`'s mark (`ok`: it worked): one
    /// that failed is tried again after a retry delay of its own.
    ///
    /// Returns the mark to write when the certificate the pair serves is
    /// newer than the one read (it was installed while the mark could not be
    /// read, or the file was unusable): the mark catches up.
    fn mark_settled(
        &mut self,
        name: &Arc<str>,
        ok: bool,
    ) -> Option<(std::path::PathBuf, HighWaterMark)> {
        self.with_slot(name, |slot| slot.mark_read(ok))?;
        self.note_warnings(name);
        let serving = self.store.current(name)?;
        self.marks.raise(name, &serving)
    }

    /// Writes the marks that rose to the state directory, within the time a
    /// state file may take per batch. A mark written clears its pair's mark
    /// warning (whatever was unusable in its place is replaced); one that
    /// cannot be written is reported in the pair's health, and read and
    /// written again after a retry delay (it holds in memory meanwhile).
    async fn write_marks(&mut self, writes: Vec<(Arc<str>, std::path::PathBuf, HighWaterMark)>) {
        for batch in writes.chunks(READ_BATCH) {
            let batch = batch.to_vec();
            let names: Vec<Arc<str>> = batch.iter().map(|(name, ..)| name.clone()).collect();
            let written = self.mark_io.run(STATE_FILE_TIMEOUT, move || {
                batch
                    .into_iter()
                    .map(|(name, path, mark)| {
                        let written = marks::write(&path, &mark);
                        (
                            name,
                            written.map_err(|e| format!("cannot write {}: {e}", path.display())),
                        )
                    })
                    .collect::<Vec<_>>()
            });
            let written = written.await.unwrap_or_else(|stuck| {
                let waited = crate::clock::human(stuck.waited);
                let why = format!("the state directory did not answer within {waited}");
                names
                    .into_iter()
                    .map(|name| (name, Err(why.clone())))
                    .collect()
            });
            for (name, result) in written {
                if let Err(error) = &result {
                    tracing::warn!(target: "certrotate", pair = %name, %error, "a pair's mark is not saved: its replay protection is per process until it is");
                    self.marks.unsaved(&name);
                }
                let read = result.map(|()| None).map_err(MarkUnreadable::new);
                self.mark_loaded(&name, &read);
                self.mark_settled(&name, read.is_ok());
            }
        }
    }

    /// Finds and reads `names` on the blocking reader.
    async fn look(&self, names: Vec<Arc<str>>) -> Vec<Look> {
        let (dir, options) = (self.dir.clone(), self.options.clone());
        let asked = names.clone();
        let read = self.reads.run(READ_TIMEOUT, move || {
            names
                .into_iter()
                .map(|name| {
                    let found = locate(&dir, &name).map(|files| {
                        let stamp = stamp(&files);
                        let loaded = files.load(&options);
                        (files, stamp, loaded)
                    });
                    // `is_dir` follows symlinks: a mounted secret may be one.
                    let subdir = dir.join(&*name).is_dir();
                    Look {
                        name,
                        found,
                        subdir,
                    }
                })
                .collect()
        });
        match read.await {
            Ok(looks) => looks,
            Err(stuck) => {
                // A hung file system: the pairs known keep serving and are
                // reported, and read again later.
                asked
                    .into_iter()
                    .filter_map(|name| {
                        let pair = self.pairs.get(&name)?;
                        let cert = pair.files.paths()[0].to_owned();
                        let error = stuck.into_source_error(pair.files.describe(), cert);
                        let found = Some((pair.files.clone(), pair.stamp, Loaded::failed(error)));
                        let subdir = self.subdirs.contains(&self.dir.join(&*name));
                        Some(Look {
                            name,
                            found,
                            subdir,
                        })
                    })
                    .collect()
            }
        }
    }

    /// Emits the attempts, and validates the candidates that differ from
    /// what their slots serve, spread over the blocking pool.
    async fn validate(
        &self,
        candidates: Vec<(Arc<str>, Result<crate::bundle::CertBundle, SourceError>)>,
        trigger: Trigger,
    ) -> Vec<(Arc<str>, Verdict, Option<MarkRead>)> {
        let mut verdicts = Vec::new();
        let mut work = Vec::new();
        for (name, bundle) in candidates {
            engine::attempting(&self.store, &name, trigger);
            let serving = self.store.current(&name);
            let lookup = self.marks.lookup(&name);
            match bundle {
                Err(error) => verdicts.push((name, Verdict::Failed(error), None)),
                Ok(bundle) => {
                    let unchanged = engine::unchanged(serving.as_deref(), &bundle);
                    match (unchanged, lookup) {
                        (true, Lookup::Known(_)) => {
                            let serving = serving.expect("unchanged from one serving");
                            verdicts.push((name, Verdict::Unchanged(serving), None));
                        }
                        (unchanged, lookup) => {
                            let bundle = (!unchanged).then_some(bundle);
                            work.push((name, bundle, serving, lookup));
                        }
                    }
                }
            }
        }
        let unknown: Vec<_> = work
            .iter()
            .filter_map(|(name, _, _, lookup)| match lookup {
                Lookup::Read(path) => Some((name.clone(), path.clone())),
                Lookup::Known(_) => None,
            })
            .collect();
        let mut reads = self.read_marks(unknown).await;
        let work: Vec<_> = work
            .into_iter()
            .map(|(name, bundle, serving, lookup)| {
                let recorded = match lookup {
                    Lookup::Known(mark) => mark,
                    Lookup::Read(_) => reads
                        .get(&name)
                        .and_then(|r| r.as_ref().ok())
                        .cloned()
                        .flatten(),
                };
                (name, bundle, serving, recorded)
            })
            .collect();
        let lanes = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per_lane = work.len().div_ceil(lanes).max(1);
        let now = self.store.clock().now();
        let mut running = tokio::task::JoinSet::new();
        let mut work = work.into_iter();
        loop {
            let lane: Vec<_> = work.by_ref().take(per_lane).collect();
            if lane.is_empty() {
                break;
            }
            let policy = self.policy.clone();
            running.spawn(crate::sync::blocking(move || {
                lane.into_iter()
                    .map(|(name, bundle, serving, recorded)| {
                        // Nothing older than the mark, or (when the mark
                        // cannot be read) than what serves.
                        let mark = serving.as_deref().map(HighWaterMark::of);
                        let newest = HighWaterMark::newest(recorded, mark);
                        let verdict = match (bundle, serving) {
                            (Some(bundle), _) => {
                                engine::judge(&policy, &bundle, newest.as_ref(), now)
                            }
                            (None, Some(serving)) => Verdict::Unchanged(serving),
                            (None, None) => unreachable!("unchanged from one serving"),
                        };
                        (name, verdict)
                    })
                    .collect::<Vec<_>>()
            }));
        }
        while let Some(done) = running.join_next().await {
            // A lane that did not finish (the runtime is shutting down) is
            // dropped: its pairs are read again at the next change.
            if let Ok(Ok(lane)) = done {
                let lane = lane.into_iter().map(|(name, verdict)| {
                    let read = reads.remove(&name);
                    (name, verdict, read)
                });
                verdicts.extend(lane);
            }
        }
        verdicts
    }

    /// Reads the marks of `pairs` from the state directory, a batch at a
    /// time, one batch at once, each within the time a state file may take:
    /// a hung disk holds up one batch (its marks are then unreadable, and
    /// read again later), never the task.
    async fn read_marks(
        &self,
        pairs: Vec<(Arc<str>, std::path::PathBuf)>,
    ) -> std::collections::HashMap<Arc<str>, MarkRead> {
        let mut reads = std::collections::HashMap::with_capacity(pairs.len());
        for batch in pairs.chunks(READ_BATCH) {
            let batch = batch.to_vec();
            let names: Vec<Arc<str>> = batch.iter().map(|(name, _)| name.clone()).collect();
            let read = self.mark_io.run(STATE_FILE_TIMEOUT, move || {
                batch
                    .into_iter()
                    .map(|(name, path)| (name, marks::read(&path)))
                    .collect::<Vec<_>>()
            });
            match read.await {
                Ok(read) => reads.extend(read),
                Err(stuck) => {
                    let waited = crate::clock::human(stuck.waited);
                    let why = format!("the state directory did not answer within {waited}");
                    reads.extend(
                        names
                            .into_iter()
                            .map(|n| (n, Err(MarkUnreadable::new(why.clone())))),
                    );
                }
            }
        }
        reads
    }

    /// Has the engine carry out `verdict` for pair `name` and plan what
    /// follows. Returns the mark to write if it rose.
    fn apply(
        &mut self,
        name: Arc<str>,
        verdict: Verdict,
    ) -> Option<(std::path::PathBuf, HighWaterMark)> {
        let now = self.store.clock().now();
        let result = self.with_slot(&name, |slot| {
            let result = slot.conclude(verdict, |_| None);
            slot.plan(&result, |_| None);
            result
        })?;
        let Ok(engine::Rotation::Rotated { new, .. }) = result else {
            return None;
        };
        self.check(&name, now);
        self.marks.raise(&name, &new)
    }

    /// Reads pair `name` again at `at` (caught between its halves).
    fn plan_retry(&mut self, name: &Arc<str>, at: Instant) {
        self.with_slot(name, |slot| slot.state.retry_at = Some(at));
    }

    /// Records a pair's warnings (its files', its mark's) in health, with
    /// an event for each new one.
    fn note_warnings(&mut self, name: &Arc<str>) {
        let Some(pair) = self.pairs.get_mut(name) else {
            return;
        };
        let warnings: Vec<SourceWarning> = [&pair.file_warning, &pair.mark_warning]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        self.with_slot(name, |slot| slot.warn(warnings));
    }

    /// The pair `name` left the directory: its slot goes.
    fn forget(&mut self, name: &Arc<str>) {
        let Some(pair) = self.pairs.remove(name) else {
            return;
        };
        if let Some(at) = pair.state.retry_at {
            self.retries.remove(&(at, name.clone()));
        }
        if let Some(at) = pair.check_at {
            self.checks.remove(&(at, name.clone()));
        }
        lock(&self.names).remove(name);
        self.store.remove(name);
        self.marks.left(name);
    }
}

impl Pair {
    fn new(files: Files) -> Self {
        Self {
            files,
            stamp: 0,
            seen: None,
            state: SlotState::default(),
            grace_until: None,
            file_warning: None,
            mark_warning: None,
            check_at: None,
        }
    }
}

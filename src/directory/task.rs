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

use crate::bundle::CertInfo;
use crate::engine::{
    self, Candidate, Decided, Driver, MarkRead, Remembered, RotateError, Rotation, Rules, Slot,
    SlotState,
};
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
use super::marks::{self, Departed};
use super::CertDirectoryBuilder;
use crate::mark::{HighWaterMark, MarkUnreadable, STATE_FILE_TIMEOUT};

/// Pairs read in one turn of the blocking reader: a hung file system holds
/// up at most this many before they are reported and retried.
const READ_BATCH: usize = 512;

/// Pairs the engine settles in one attempt: enough to keep every core
/// judging, few enough that what an attempt holds (the candidates' chains
/// and keys, the outcomes) stays small however large the directory.
const SETTLE_BATCH: usize = 4096;

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
    /// Where pairs' marks survive restarts: `<dir>/<pair>.mark`.
    state_dir: Option<PathBuf>,
    /// The newest certificate each pair that left served.
    departed: Departed,
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
            state_dir: builder.state_dir,
            departed: Departed::default(),
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
        let (level, next) =
            self.with_slot(name, |slot, decided| slot.check_expiry(now, decided))??;
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

    /// Reads the pairs `names` (found where they are now), then has the
    /// engine settle what changed, on every core, [`SETTLE_BATCH`] pairs
    /// at a time.
    async fn refresh(&mut self, names: Vec<Arc<str>>, trigger: Trigger) {
        for batch in names.chunks(SETTLE_BATCH) {
            engine::attempt(self, batch.to_vec(), trigger).await;
        }
    }

    /// Runs `each` on the state files of the pairs in `work` (each with
    /// what it needs), a batch at a time, one batch at once, each within
    /// the time a state file may take: a hung disk holds up one batch, and
    /// the rest are not tried (all their marks are then unreadable, and
    /// tried again later), so it never holds up the task for long. Without
    /// a state directory, every pair gets `none`.
    async fn state_files<T, R>(
        &self,
        work: Vec<(Arc<str>, T)>,
        each: fn(&std::path::Path, T) -> Result<R, MarkUnreadable>,
        none: Result<R, MarkUnreadable>,
    ) -> Vec<(Arc<str>, Result<R, MarkUnreadable>)>
    where
        T: Clone + Send + 'static,
        R: Clone + Send + 'static,
    {
        let Some(dir) = self.state_dir.clone() else {
            return work
                .into_iter()
                .map(|(name, _)| (name, none.clone()))
                .collect();
        };
        let mut done = Vec::with_capacity(work.len());
        let mut stuck: Option<MarkUnreadable> = None;
        for batch in work.chunks(READ_BATCH) {
            let asked = batch.iter().map(|(name, _)| name.clone());
            // A batch did not answer: the others would each wait as long
            // for the thread it holds. They are tried again later.
            if let Some(error) = &stuck {
                done.extend(asked.map(|name| (name, Err(error.clone()))));
                continue;
            }
            let asked: Vec<Arc<str>> = asked.collect();
            let (batch, dir) = (batch.to_vec(), dir.clone());
            let ran = self.mark_io.run(STATE_FILE_TIMEOUT, move || {
                let file = |name: &str| marks::file(&dir, name);
                let ran = batch.into_iter().map(|(name, t)| {
                    let result = each(&file(&name), t);
                    (name, result)
                });
                ran.collect::<Vec<_>>()
            });
            match ran.await {
                Ok(ran) => done.extend(ran),
                Err(hung) => {
                    let waited = crate::clock::human(hung.waited);
                    let why = format!("the state directory did not answer within {waited}");
                    let error = MarkUnreadable::new(why);
                    done.extend(asked.into_iter().map(|n| (n, Err(error.clone()))));
                    stuck = Some(error);
                }
            }
        }
        done
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

    /// Reads pair `name` again at `at` (caught between its halves).
    fn plan_retry(&mut self, name: &Arc<str>, at: Instant) {
        self.with_slot(name, |slot, _| slot.state.retry_at = Some(at));
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
        self.departed.left(name, pair.state.mark.remembered());
    }
}

impl Pair {
    /// A pair found, knowing `mark` of its mark from when it was last here.
    fn new(files: Files, mark: Remembered) -> Self {
        Self {
            files,
            stamp: 0,
            seen: None,
            state: SlotState::remembering(mark),
            grace_until: None,
            file_warning: None,
            check_at: None,
        }
    }
}

/// The directory's I/O: its pairs' files, read in batches on the blocking
/// reader, and their marks in the state directory, one file per pair.
impl Driver for DirTask {
    fn store(&self) -> &CertStore {
        &self.store
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A pair's mark is kept in its one state file.
    fn one_place(&self) -> bool {
        true
    }

    /// Runs `step` on pair `name` under the engine's rules (renewal by the
    /// rules' fraction), then brings the retry index up to date with the
    /// pair's retry time.
    fn with_slot<R>(
        &mut self,
        name: &Arc<str>,
        step: impl FnOnce(&mut Slot<'_>, &Decided<'_>) -> R,
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
        let result = step(&mut slot, &|_: &CertInfo| None);
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

    fn warnings(&self, name: &Arc<str>) -> Vec<SourceWarning> {
        let pair = self.pairs.get(name);
        pair.and_then(|p| p.file_warning.clone())
            .into_iter()
            .collect()
    }

    /// Reads the pairs `names` where they are now (a pair gone is
    /// forgotten), and keeps those to attempt: a change that left the
    /// content as it was is nothing to do (a due renewal or a retry is an
    /// attempt, as a rotator's is); a pair caught between its two halves is
    /// read again once it settles, until its grace period ends.
    async fn fetch(&mut self, names: Vec<Arc<str>>, trigger: Trigger) -> Vec<Candidate> {
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
            let pair = self.pairs.entry(name.clone()).or_insert_with(|| {
                lock(&self.names).insert(name.clone());
                // Slots are made in name order (the order looked at), so
                // the first pair by name is the default.
                self.store.add_slot(&name);
                Pair::new(files.clone(), self.departed.back(&name))
            });
            pair.files = files;
            pair.stamp = stamp;
            let same = pair.seen == Some(loaded.fingerprint);
            if same && trigger == Trigger::SourceChanged {
                continue;
            }
            pair.seen = Some(loaded.fingerprint);
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
            pair.grace_until = None;
            pair.file_warning = loaded.warning;
            engine::attempting(&self.store, &name, trigger);
            candidates.push((name, loaded.bundle));
        }
        candidates
    }

    /// Reads the marks of `names` from the state directory. Without a state
    /// directory, no pair has a mark on record.
    async fn read_marks(&mut self, names: Vec<Arc<str>>) -> Vec<(Arc<str>, MarkRead)> {
        let names = names.into_iter().map(|name| (name, ())).collect();
        self.state_files(names, |path, ()| HighWaterMark::read_file(path), Ok(None))
            .await
    }

    /// Records `marks` in the state directory by the one rule for state
    /// files ([`HighWaterMark::record_in_file`]).
    async fn record_marks(
        &mut self,
        marks: Vec<(Arc<str>, HighWaterMark)>,
    ) -> Vec<(Arc<str>, Result<(), MarkUnreadable>)> {
        self.state_files(marks, |path, mark| mark.record_in_file(path), Ok(()))
            .await
    }

    /// A pair that rotated has its alert level looked at from now on.
    fn concluded(&mut self, name: &Arc<str>, result: &Result<Rotation, RotateError>) {
        if let Ok(Rotation::Rotated { .. }) = result {
            let now = self.store.clock().now();
            self.check(name, now);
        }
    }
}

//! One `notify` watcher shared by every file source and directory of the
//! process (one inotify instance, however many sources: the default limit is
//! 128 instances per user), routing events to the sources whose directories
//! they touch.
//!
//! A [`FileSource`] is woken only by events on its own entries (its files,
//! the symlinks on their way, the directories those live in), not by every
//! event in a directory it shares. A [`CertDirectory`] hears everything in
//! its directory (a new pair may appear under any name) and is handed the
//! paths that changed ([`Subscription::take_changes`]), so that it re-reads
//! only the pairs they belong to.
//!
//! Sources watch *directories*, never the files themselves: an atomic rename,
//! an editor's replace-by-new-file and the Kubernetes `..data` symlink swap
//! all change the directory entry, and a watch on the old file would go
//! silent after the first of them.
//!
//! [`CertDirectory`]: crate::CertDirectory
//! [`FileSource`]: super::FileSource

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::sync::lock;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

/// How many changed paths a directory's subscription keeps before it asks
/// for a rescan instead (a flood of new names cannot grow it further).
const MAX_CHANGED: usize = 65_536;

/// How many symlinks are followed from a configured path before giving up
/// (the kernel's own limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// A shared `notify` watcher. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    /// Only ever locked outside the event callback: notify's `watch` waits
    /// for its event thread, which may be inside the callback.
    watcher: Mutex<RecommendedWatcher>,
    routes: Arc<Mutex<Routes>>,
}

#[derive(Default)]
struct Routes {
    /// Watched directory → how many subscriptions want it.
    watched: HashMap<PathBuf, usize>,
    subscribers: Vec<Weak<Subscriber>>,
}

struct Subscriber {
    dirs: Mutex<Vec<PathBuf>>,
    /// The paths whose changes concern it, or `None` for anything in `dirs`.
    entries: Mutex<Option<Vec<PathBuf>>>,
    /// What changed since the owner last asked, for owners that ask.
    changed: Mutex<Option<Changes>>,
    ticks: watch::Sender<u64>,
}

/// The paths events named since the last look, or that everything must be
/// looked at again (the watcher lost events, or too many paths changed).
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) paths: HashSet<PathBuf>,
    pub(crate) rescan: bool,
}

impl Changes {
    fn add(&mut self, paths: &[PathBuf], rescan: bool) {
        if rescan || self.rescan || self.paths.len() + paths.len() > MAX_CHANGED {
            self.rescan = true;
            self.paths = HashSet::new();
            return;
        }
        self.paths.extend(paths.iter().cloned());
    }
}

/// One source's interest in some directories. Dropping it stops the
/// notifications and releases its watches.
pub(crate) struct Subscription {
    hub: Hub,
    me: Arc<Subscriber>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// The process's watcher, started if no source holds it now. Fails when
    /// the platform refuses one, such as when the inotify instance limit is
    /// reached.
    pub(crate) fn shared() -> notify::Result<Self> {
        static SHARED: Mutex<Weak<HubInner>> = Mutex::new(Weak::new());
        let mut shared = lock(&SHARED);
        if let Some(inner) = shared.upgrade() {
            return Ok(Self { inner });
        }
        let hub = Self::new()?;
        *shared = Arc::downgrade(&hub.inner);
        Ok(hub)
    }

    /// Starts a watcher (a thread of notify's).
    fn new() -> notify::Result<Self> {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let for_events = Arc::downgrade(&routes);
        let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            if let Some(routes) = for_events.upgrade() {
                route(&lock(&routes), event);
            }
        })?;
        Ok(Self {
            inner: Arc::new(HubInner {
                watcher: Mutex::new(watcher),
                routes,
            }),
        })
    }

    /// A subscription with no directories yet, and the receiver its
    /// notifications tick.
    pub(crate) fn subscribe(&self) -> (Subscription, watch::Receiver<u64>) {
        let (ticks, receiver) = watch::channel(0);
        let me = Arc::new(Subscriber {
            dirs: Mutex::default(),
            entries: Mutex::default(),
            changed: Mutex::default(),
            ticks,
        });
        let mut routes = lock(&self.inner.routes);
        routes.subscribers.retain(|s| s.strong_count() > 0);
        routes.subscribers.push(Arc::downgrade(&me));
        drop(routes);
        let subscription = Subscription {
            hub: self.clone(),
            me,
        };
        (subscription, receiver)
    }
}

impl Subscription {
    /// Watches the directories that `paths` live in, following symlinks, in
    /// place of those watched before, and hears only of changes to the
    /// entries on the way to them.
    pub(crate) fn follow(&self, paths: &[&Path]) {
        let (mut dirs, mut entries): (Vec<PathBuf>, Vec<PathBuf>) =
            paths.iter().flat_map(|p| dirs_to_watch(p)).unzip();
        entries.sort();
        entries.dedup();
        *lock(&self.me.entries) = Some(entries);
        dirs.sort();
        dirs.dedup();
        self.set_dirs(dirs);
    }

    /// Watches these directories (or, while one is missing, its nearest
    /// existing ancestor) in place of those watched before, and hears of
    /// every change in them.
    pub(crate) fn watch_dirs(&self, dirs: &[PathBuf]) {
        let mut dirs: Vec<PathBuf> = dirs.iter().map(|d| existing(d)).collect();
        dirs.sort();
        dirs.dedup();
        *lock(&self.me.entries) = None;
        self.set_dirs(dirs);
    }

    /// Keeps the paths events name from now on, for [`take_changes`](Self::take_changes).
    pub(crate) fn collect_changes(&self) {
        lock(&self.me.changed).get_or_insert_with(Changes::default);
    }

    /// What changed since the last call (or since [`collect_changes`](Self::collect_changes)).
    pub(crate) fn take_changes(&self) -> Changes {
        match &mut *lock(&self.me.changed) {
            Some(changes) => std::mem::take(changes),
            None => Changes {
                rescan: true,
                ..Changes::default()
            },
        }
    }

    fn set_dirs(&self, dirs: Vec<PathBuf>) {
        let mut watcher = lock(&self.hub.inner.watcher);
        let old = std::mem::replace(&mut *lock(&self.me.dirs), dirs.clone());
        if old == dirs {
            return;
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        {
            let mut routes = lock(&self.hub.inner.routes);
            for dir in &dirs {
                let count = routes.watched.entry(dir.clone()).or_default();
                *count += 1;
                if *count == 1 {
                    add.push(dir.clone());
                }
            }
            for dir in &old {
                if release(&mut routes.watched, dir) {
                    remove.push(dir.clone());
                }
            }
        }
        for dir in remove {
            // The directory may be gone already, and its watch with it.
            let _ = watcher.unwatch(&dir);
        }
        for dir in add {
            if let Err(error) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
                // It vanished since it was looked up: the next event in its
                // parent (also watched, or about to be) brings a new lookup,
                // and polling, if on, covers the rest.
                tracing::debug!(target: "certrotate", dir = %dir.display(), %error, "cannot watch directory");
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.set_dirs(Vec::new());
    }
}

/// Whether dropping one use of `dir` left it unused.
fn release(watched: &mut HashMap<PathBuf, usize>, dir: &Path) -> bool {
    match watched.get_mut(dir) {
        Some(count) if *count > 1 => {
            *count -= 1;
            false
        }
        Some(_) => {
            watched.remove(dir);
            true
        }
        None => false,
    }
}

/// Ticks every subscriber whose entries (or, for a directory's, whose
/// directories) `event` touched.
fn route(routes: &Routes, event: notify::Result<Event>) {
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            // Overflowed queue or similar: anything may have changed.
            tracing::debug!(target: "certrotate", %error, "file watcher error");
            Event::new(EventKind::Any).set_flag(notify::event::Flag::Rescan)
        }
    };
    // Opening and reading files (our own reads included) change nothing.
    if let EventKind::Access(kind) = event.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return;
        }
    }
    let everyone = event.need_rescan() || event.paths.is_empty();
    for subscriber in routes.subscribers.iter().filter_map(Weak::upgrade) {
        let touched = everyone || concerns(&subscriber, &event.paths);
        if touched {
            if let Some(changes) = &mut *lock(&subscriber.changed) {
                changes.add(&event.paths, everyone);
            }
            subscriber.ticks.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Whether a change to `paths` concerns `subscriber`: one of them is one of
/// its entries or on the way to one (a directory above it replaced), or,
/// for a subscriber of whole directories, lies in one of them.
fn concerns(subscriber: &Subscriber, paths: &[PathBuf]) -> bool {
    match &*lock(&subscriber.entries) {
        Some(entries) => paths
            .iter()
            .any(|path| entries.iter().any(|entry| entry.starts_with(path))),
        None => {
            let dirs = lock(&subscriber.dirs);
            paths.iter().any(|path| {
                dirs.iter()
                    .any(|dir| path == dir || path.parent() == Some(dir.as_path()))
            })
        }
    }
}

/// The directories whose entries decide what `path` reads (its own parent,
/// the parent of every symlink on the way to the real file, and the real
/// file's parent), each with the entry in it that matters, named as the
/// watcher names it. A directory that does not exist is replaced by its
/// nearest existing ancestor, whose entry is then the first missing one, so
/// that its re-creation is seen.
fn dirs_to_watch(path: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut dirs = Vec::new();
    let mut hop = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    for _ in 0..MAX_SYMLINK_HOPS {
        dirs.push(watch_point(&hop));
        // A symlinked directory on the way (Kubernetes' `..data`): swapping
        // it changes what the path reads.
        let linked_dirs = hop.ancestors().skip(1).filter(|a| a.is_symlink());
        dirs.extend(linked_dirs.map(watch_point));
        let parent = hop.parent().unwrap_or(Path::new("/")).to_owned();
        match std::fs::read_link(&hop) {
            Ok(target) => hop = parent.join(target),
            Err(_) => break,
        }
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        if let Some(parent) = real.parent() {
            dirs.push((parent.to_owned(), real.clone()));
        }
    }
    dirs
}

/// The directory to watch for `path` (its parent, or the nearest existing
/// ancestor while that is missing), canonical, and the entry in it on the
/// way to `path`.
fn watch_point(path: &Path) -> (PathBuf, PathBuf) {
    let parent = path.parent().unwrap_or(Path::new("/"));
    for ancestor in parent.ancestors() {
        if let Ok(real) = std::fs::canonicalize(ancestor) {
            let below = path
                .strip_prefix(ancestor)
                .ok()
                .and_then(|rest| rest.components().next());
            let entry = below.map_or_else(|| real.clone(), |c| real.join(c));
            return (real, entry);
        }
    }
    (PathBuf::from("/"), path.to_owned())
}

/// `dir` canonicalized, or its nearest existing ancestor if it is missing.
fn existing(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find_map(|d| std::fs::canonicalize(d).ok())
        .unwrap_or_else(|| PathBuf::from("/"))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_layout_watches_the_mount_and_the_real_directory() {
        let mount = std::env::temp_dir().join(format!("certrotate-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&mount);
        std::fs::create_dir_all(mount.join("..2026_01_01")).unwrap();
        std::fs::write(mount.join("..2026_01_01/tls.crt"), "x").unwrap();
        std::os::unix::fs::symlink("..2026_01_01", mount.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/tls.crt", mount.join("tls.crt")).unwrap();

        let (mut dirs, mut entries): (Vec<_>, Vec<_>) =
            dirs_to_watch(&mount.join("tls.crt")).into_iter().unzip();
        dirs.sort();
        dirs.dedup();
        entries.sort();
        entries.dedup();
        let real = std::fs::canonicalize(&mount).unwrap();
        assert_eq!(dirs, [real.clone(), real.join("..2026_01_01")]);
        assert_eq!(
            entries,
            [
                real.join("..2026_01_01/tls.crt"),
                real.join("..data"),
                real.join("tls.crt")
            ]
        );

        // A missing directory is watched through its nearest ancestor.
        assert_eq!(
            dirs_to_watch(&mount.join("gone/deeper/tls.crt")),
            [(real.clone(), real.join("gone"))]
        );
        std::fs::remove_dir_all(&mount).unwrap();
    }

    /// In a directory shared by many pairs, an event on one pair's file
    /// wakes that pair only; the directory's own subscriber hears it all.
    #[test]
    fn an_event_wakes_only_the_sources_it_concerns() {
        let dir = std::env::temp_dir().join(format!("certrotate-route-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let real = std::fs::canonicalize(&dir).unwrap();
        let subscriber = |files: Option<&[&str]>| {
            let me = Subscriber {
                dirs: Mutex::new(vec![real.clone()]),
                entries: Mutex::new(None),
                changed: Mutex::default(),
                ticks: watch::channel(0).0,
            };
            if let Some(files) = files {
                let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
                let entries = paths.iter().flat_map(|p| dirs_to_watch(p)).map(|(_, e)| e);
                *lock(&me.entries) = Some(entries.collect());
            }
            Arc::new(me)
        };
        let a = subscriber(Some(&["a.crt", "a.key"]));
        let b = subscriber(Some(&["b.crt", "b.key"]));
        let whole = subscriber(None);
        let routes = Routes {
            watched: HashMap::new(),
            subscribers: [&a, &b, &whole].map(Arc::downgrade).to_vec(),
        };
        let event = |path: PathBuf| {
            Ok(Event::new(EventKind::Create(notify::event::CreateKind::File)).add_path(path))
        };
        for _ in 0..100 {
            route(&routes, event(real.join("b.crt")));
        }
        route(&routes, event(real.join("unrelated.log")));
        assert_eq!(*a.ticks.borrow(), 0, "a was woken by b's changes");
        assert_eq!(*b.ticks.borrow(), 100);
        assert_eq!(*whole.ticks.borrow(), 101);
        route(&routes, event(real.join("a.key")));
        assert_eq!(*a.ticks.borrow(), 1);
        // The directory itself replaced: everyone on it looks again.
        route(&routes, event(real.clone()));
        assert_eq!((*a.ticks.borrow(), *b.ticks.borrow()), (2, 101));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_flood_of_changed_paths_becomes_one_rescan() {
        let mut changes = Changes::default();
        changes.add(&[PathBuf::from("/d/a.crt")], false);
        assert_eq!(changes.paths.len(), 1);
        let flood: Vec<PathBuf> = (0..MAX_CHANGED)
            .map(|i| PathBuf::from(format!("/d/{i}")))
            .collect();
        changes.add(&flood, false);
        assert!(changes.rescan && changes.paths.is_empty());
        // Stays a rescan, and small, until taken.
        changes.add(&flood[..10], false);
        assert!(changes.rescan && changes.paths.is_empty());
    }
}

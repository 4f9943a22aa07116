//! [`CertDirectory`]: a directory of certificate pairs, one store slot (and
//! so one set of SNI names) per pair, each with its own rotator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::sync::{broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::events::RotationEvent;
use crate::health::HealthSnapshot;
use crate::policy::Policy;
use crate::resolver::RotatingResolver;
use crate::rotator::Rotator;
use crate::source::file::{FileOptions, FileSource, Files, Wakeups, MAX_BUSY_WINDOWS};
use crate::source::SourceError;
use crate::store::CertStore;
use crate::sync::lock;

/// A directory of certificate pairs for a server with many domains.
///
/// Each pair becomes one slot of a [`CertStore`], named after the pair and
/// served to the names its certificate covers:
///
/// - `<name>.crt` + `<name>.key`, or
/// - `<name>/tls.crt` + `<name>/tls.key` (cert-manager secrets mounted side
///   by side).
///
/// Pairs are added, replaced and removed while the server runs, each read
/// like a [`FileSource`] and validated on its own by its own
/// [`Rotator`]: a bad pair is refused (and reported in health and events)
/// without holding back the others. Entries whose name starts with `.` are
/// ignored. Clients without a matching SNI get the pair named `default`, or
/// else the pair added first.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use certrotate::{CertDirectory, Policy};
///
/// let certs = CertDirectory::builder("/etc/tls/sites", Policy::default())
///     .start()
///     .await?;
/// let tls = std::sync::Arc::new(certs.server_config()?);
/// println!("serving {:?}", certs.pairs());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CertDirectory {
    store: CertStore,
    policy: Policy,
    pairs: Arc<Mutex<Vec<String>>>,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

/// Configures and starts a [`CertDirectory`].
#[derive(Debug)]
#[must_use]
pub struct CertDirectoryBuilder {
    dir: PathBuf,
    policy: Policy,
    options: FileOptions,
    store: Option<CertStore>,
    retry: (Duration, Duration),
}

impl CertDirectoryBuilder {
    /// How the directory and its files are watched and read (see
    /// [`FileOptions`]).
    pub fn options(mut self, options: FileOptions) -> Self {
        self.options = options;
        self
    }

    /// Fills slots of this store (default: a new one). Slots are named after
    /// the pairs.
    pub fn store(mut self, store: CertStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Retries a pair that failed after `min`, doubling up to `max` (default
    /// 1 s to 5 min); see [`RotatorBuilder::retry_backoff`](crate::RotatorBuilder::retry_backoff).
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry = (min, max);
        self
    }

    /// Loads every pair in the directory, then follows it.
    ///
    /// Pairs that fail are reported and retried; only a directory that
    /// cannot be read fails the start. Must be called within a tokio runtime.
    pub async fn start(self) -> Result<CertDirectory, SourceError> {
        let store = self.store.unwrap_or_default();
        let (stop, gone) = watch::channel(());
        let describe = format!("directory {}", self.dir.display());
        let wakeups = Wakeups::new(&self.options, gone, || describe.clone());
        let mut task = DirTask {
            dir: self.dir,
            describe,
            policy: self.policy.clone(),
            options: self.options,
            store: store.clone(),
            retry: self.retry,
            wakeups,
            pairs: BTreeMap::new(),
            names: Arc::default(),
        };
        task.sync().await?;
        Ok(CertDirectory {
            store,
            policy: self.policy,
            pairs: task.names.clone(),
            stop,
            task: tokio::spawn(task.run()),
        })
    }
}

impl CertDirectory {
    /// Starts configuring a directory whose pairs must pass `policy`.
    ///
    /// A policy's required [`server_name`](crate::PolicyBuilder::server_name)s
    /// apply to every pair; leave them out to let each certificate's own
    /// names decide.
    pub fn builder(dir: impl Into<PathBuf>, policy: Policy) -> CertDirectoryBuilder {
        CertDirectoryBuilder {
            dir: dir.into(),
            policy,
            options: FileOptions::default(),
            store: None,
            retry: (Duration::from_secs(1), Duration::from_secs(300)),
        }
    }

    /// The names of the pairs found, in order.
    pub fn pairs(&self) -> Vec<String> {
        lock(&self.pairs).clone()
    }

    /// The store the pairs fill.
    pub fn store(&self) -> &CertStore {
        &self.store
    }

    /// The rustls resolver serving every pair by SNI.
    pub fn resolver(&self) -> Arc<RotatingResolver> {
        self.store.resolver()
    }

    /// A rustls `ServerConfig` whose certificates follow the directory; see
    /// [`Rotator::server_config`].
    pub fn server_config(&self) -> Result<ServerConfig, rustls::Error> {
        self.policy.server_config(self.resolver(), None)
    }

    /// The health of every pair.
    pub fn health(&self) -> HealthSnapshot {
        self.store.health()
    }

    /// Receives every [`RotationEvent`] of every pair from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RotationEvent> {
        self.store.subscribe()
    }

    /// Stops following the directory. The store keeps serving what it has.
    pub async fn shutdown(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

struct DirTask {
    dir: PathBuf,
    describe: String,
    policy: Policy,
    options: FileOptions,
    store: CertStore,
    retry: (Duration, Duration),
    wakeups: Wakeups,
    pairs: BTreeMap<String, Pair>,
    names: Arc<Mutex<Vec<String>>>,
}

struct Pair {
    files: Files,
    rotator: Rotator,
}

impl DirTask {
    async fn run(mut self) {
        while self.wakeups.next().await {
            // Wait until the directory has been quiet for a settle window
            // (scanning is harmless, so not forever).
            for _ in 0..MAX_BUSY_WINDOWS {
                if !self.wakeups.event_within(self.options.settle).await {
                    break;
                }
            }
            if let Err(error) = self.sync().await {
                tracing::warn!(target: "certrotate", "{error}; its pairs keep serving");
            }
        }
        for (_, pair) in std::mem::take(&mut self.pairs) {
            pair.rotator.shutdown().await;
        }
    }

    /// Scans the directory and starts, restarts or stops rotators so that
    /// there is one per pair.
    async fn sync(&mut self) -> Result<(), SourceError> {
        // Listing and watching block (a hung NFS mount): a blocking thread.
        let (dir, subscription) = (self.dir.clone(), self.wakeups.subscription());
        let found = crate::sync::blocking(move || {
            let (found, mut watched) = scan(&dir)?;
            if let Some(subscription) = subscription {
                // The directory, and the directories in it, where pairs may
                // be on their way.
                watched.push(dir);
                subscription.watch_dirs(&watched);
            }
            Ok(found)
        })
        .await
        .and_then(|found| found)
        .map_err(|source| SourceError::Read {
            from: self.describe.clone(),
            path: self.dir.clone(),
            source: Arc::new(source),
        })?;

        let gone: Vec<String> = self
            .pairs
            .iter()
            .filter(|(name, pair)| found.get(*name) != Some(&pair.files))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let pair = self.pairs.remove(&name).expect("listed above");
            pair.rotator.shutdown().await;
            self.store.remove(&name);
        }

        let mut starting = JoinSet::new();
        for (name, files) in found {
            if self.pairs.contains_key(&name) {
                continue;
            }
            let source = FileSource::new(files.clone(), self.options.clone());
            let builder = Rotator::builder(source, self.policy.clone())
                .store(self.store.clone())
                .slot(name.clone())
                .retry_backoff(self.retry.0, self.retry.1);
            // Slots are created here, in name order; the first loads run at once.
            let start = builder.launch();
            starting.spawn(async move { (name, files, start.await) });
        }
        // A launch that did not finish (the runtime is shutting down) is
        // tried again at the next scan.
        while let Some(Ok((name, files, rotator))) = starting.join_next().await {
            self.pairs.insert(name, Pair { files, rotator });
        }
        *lock(&self.names) = self.pairs.keys().cloned().collect();
        Ok(())
    }
}

/// The pairs in `dir`, by name, and its subdirectories.
fn scan(dir: &Path) -> std::io::Result<(BTreeMap<String, Files>, Vec<PathBuf>)> {
    let (mut pairs, mut subdirs) = (BTreeMap::new(), Vec::new());
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        // `is_dir` follows symlinks: a mounted secret may be one.
        if path.is_dir() {
            subdirs.push(path.clone());
            let (cert, key) = (path.join("tls.crt"), path.join("tls.key"));
            if cert.exists() || key.exists() {
                pairs
                    .entry(name.to_owned())
                    .or_insert(Files::Pair { cert, key });
            }
        } else if let Some(stem) = name
            .strip_suffix(".crt")
            .or_else(|| name.strip_suffix(".key"))
        {
            // A flat pair wins over a subdirectory of the same name.
            pairs.insert(
                stem.to_owned(),
                Files::Pair {
                    cert: dir.join(format!("{stem}.crt")),
                    key: dir.join(format!("{stem}.key")),
                },
            );
        }
    }
    Ok((pairs, subdirs))
}

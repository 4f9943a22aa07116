//! [`CertDirectory`]: a directory of certificate pairs, one store slot (and
//! so one set of SNI names) per pair, all followed by one task.

mod layout;
mod marks;
mod task;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::engine::Rules;
use crate::events::RotationEvent;
use crate::health::HealthSnapshot;
use crate::policy::Policy;
use crate::resolver::RotatingResolver;
use crate::source::file::FileOptions;
use crate::source::{SourceError, SourceErrorKind};
use crate::store::CertStore;
use crate::sync::lock;
use task::DirTask;

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
/// like a [`FileSource`](crate::FileSource) (settle window, grace for a
/// pair caught between its halves, key-permission warnings) and validated
/// on its own: a bad pair is refused (and reported in health and events)
/// without holding back the others. Entries whose name starts with `.` are
/// ignored. Clients without a matching SNI get the pair named `default`, or
/// else the pair added first.
///
/// # Scale
///
/// One task follows the whole directory, whatever the number of pairs: it
/// watches the directory (and the subdirectories of cert-manager style
/// pairs), never the files one by one, and a change to a pair re-reads and
/// re-validates that pair only, installed in O(its names) (see
/// [`CertStore`]). The first load validates pairs on every core. A poll,
/// if [`FileOptions::watch`] asks for one, lists the directory and reads
/// again only the pairs whose files' metadata changed; a pair past its
/// renewal time is read again on a backoff of its own
/// ([`retry_backoff`](CertDirectoryBuilder::retry_backoff)). 50,000 pairs start
/// in seconds and take a few KiB each; see the README's "Thousands of
/// certificates".
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
    pairs: Arc<Mutex<BTreeSet<Arc<str>>>>,
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
    rules: Rules,
    state_dir: Option<PathBuf>,
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

    /// Reads again a pair that failed, or that serves a certificate past
    /// its renewal time, after `min`, doubling up to `max` (default 1 s to
    /// 5 min, each delay up to half shorter at random), in case its fix or
    /// its renewal went unnoticed: as a rotator fetches again; see
    /// [`RotatorBuilder::retry_backoff`](crate::rotator::RotatorBuilder::retry_backoff).
    ///
    /// A directory of many pairs past their renewal time reads each of them
    /// about eight times in the first `max` after they fall due, then once
    /// every `max / 2` to `max`: 10⁵ overdue pairs at the default, 330 to
    /// 670 pair reads a second. Raise `min` and `max` for a large
    /// directory whose renewals may lag.
    pub fn retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.rules.set_retry(min, max);
        self
    }

    /// Keeps each pair's [`HighWaterMark`](crate::danger::HighWaterMark) in `dir`
    /// (one file `<pair>.mark` each, written 0600 when the pair serves a
    /// newer certificate), so that after a restart a pair put back older
    /// (a revoked, unexpired certificate) is refused as it is while the
    /// directory is followed. Without it, marks are kept in memory, across
    /// a pair's removal, for the life of the process. Keep `dir` outside
    /// the followed directory, on the instance's own disk.
    ///
    /// A mark file that cannot be read or written is reported in the
    /// pair's health and read again after a backoff; meanwhile the pair
    /// installs nothing older than what it serves (or served before it
    /// left), a file that does not answer is not written, and one that
    /// does not parse is replaced by the mark of what serves.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let certs = certrotate::CertDirectory::builder("/etc/tls/sites", certrotate::Policy::default())
    ///     .state_dir("/var/lib/api/tls-marks")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Loads every pair in the directory, then follows it.
    ///
    /// Returns once every pair present has been tried: served, or refused
    /// and reported. Pairs that fail are retried; only a directory that
    /// cannot be read fails the start. Must be called within a tokio runtime.
    ///
    /// A [`FileOptions::state_file`] fails the start with
    /// [`SourceErrorKind::Config`]: it names one file, and a directory keeps a
    /// mark per pair ([`state_dir`](Self::state_dir)).
    pub async fn start(self) -> Result<CertDirectory, SourceError> {
        if self.options.state_file.is_some() {
            return Err(SourceError::new(
                format!("directory {}", self.dir.display()),
                SourceErrorKind::Config("FileOptions::state_file names one file, and a directory keeps a mark per pair: use CertDirectoryBuilder::state_dir".into()),
            ));
        }
        if let Some(state) = &self.state_dir {
            crate::atomic::create_private_dir(state).map_err(|error| {
                SourceError::read(format!("directory {}", self.dir.display()), state, error)
            })?;
        }
        let (stop, gone) = watch::channel(());
        let policy = self.policy.clone();
        let mut task = DirTask::new(self, gone);
        task.start().await?;
        Ok(CertDirectory {
            store: task.store().clone(),
            policy,
            pairs: task.names(),
            stop,
            task: tokio::spawn(task.run()),
        })
    }
}

impl CertDirectory {
    /// Starts configuring a directory whose pairs must pass `policy`.
    ///
    /// A policy's required [`server_name`](crate::policy::PolicyBuilder::server_name)s
    /// apply to every pair; leave them out to let each certificate's own
    /// names decide.
    pub fn builder(dir: impl Into<PathBuf>, policy: Policy) -> CertDirectoryBuilder {
        CertDirectoryBuilder {
            dir: dir.into(),
            policy,
            options: FileOptions::default(),
            store: None,
            // Pairs alerted together (a directory of certificates that
            // expire alike) repeat their warnings spread over a tenth of
            // the period, not all at once.
            rules: Rules {
                alert_spread: 0.1,
                ..Rules::default()
            },
            state_dir: None,
        }
    }

    /// The names of the pairs found, in order.
    pub fn pairs(&self) -> Vec<String> {
        lock(&self.pairs).iter().map(|p| p.to_string()).collect()
    }

    /// The store the pairs fill.
    pub fn store(&self) -> &CertStore {
        &self.store
    }

    /// The rustls resolver serving every pair by SNI.
    pub fn resolver(&self) -> Arc<RotatingResolver> {
        self.store.resolver()
    }

    /// A rustls `ServerConfig` whose certificates follow the directory,
    /// offering `h2` and `http/1.1` by ALPN (and `acme-tls/1` if an ACME
    /// source fills the same store); see
    /// [`Rotator::server_config`](crate::Rotator::server_config).
    pub fn server_config(&self) -> Result<ServerConfig, rustls::Error> {
        let tls_alpn_01 = self.store.answers_tls_alpn_01();
        self.policy
            .server_config(self.resolver(), None, tls_alpn_01)
    }

    /// The health of the pairs (see [`CertStore::health`]).
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

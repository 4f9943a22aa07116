//! [`FileSource`]: a certificate and key on disk, and [`CertDirectory`](crate::CertDirectory): a
//! directory of them, one SNI entry per pair.
//!
//! A change is read in three steps, so that something caught half-written is
//! never mistaken for the new certificate:
//!
//! 1. **Notice.** A watch on the files' *directories* (and on the directory
//!    behind every symlink on the way, which covers Kubernetes' `..data`
//!    swap), and/or a poll that compares content fingerprints.
//! 2. **Settle.** Nothing is read for good until the files have been quiet
//!    for the settle window: no event during it, or the same fingerprint
//!    before and after it (all that polling has; and what a directory whose
//!    other files never stop changing gets every few windows).
//! 3. **Grace.** A settled pair that does not parse, or whose key does not
//!    belong to its certificate, is probably one file into a two-file update:
//!    it is re-read until the grace period ends, and only then handed to the
//!    rotator (whose policy refuses it with its own error).
//!
//! Every fetch re-reads both files; the rotator's policy checks the pair as a
//! whole, so a new certificate with the old key is refused, never served.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::Digest;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{BoxFuture, CertSource, ReplayMarks, SourceError, SourceErrorKind, SourceWarning};
use crate::bundle::CertBundle;
use crate::mark::{HighWaterMark, MarkUnreadable};
use crate::read::{self, OneAtATime};

mod notice;
pub(crate) mod settle;
mod trust;

use crate::sync::lock;
pub(crate) use settle::{spawn_settle, Wake, Wakeups, Watched, MAX_BUSY_WINDOWS};
pub use trust::{TrustFile, TrustFileError};

/// A read that takes longer than this (a hung NFS server) is reported as an
/// error; the rotator carries on and retries, and change detection looks
/// again at the next event or poll.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How changes to the files are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchMode {
    /// File-system events only (inotify, FSEvents, ReadDirectoryChangesW).
    Events,
    /// Read the files every `every` and compare their content fingerprints:
    /// for file systems that send no events (NFS, some container mounts).
    Poll {
        /// Time between two reads.
        every: Duration,
    },
    /// Events, plus a poll as a safety net for events that never come.
    EventsAndPoll {
        /// Time between two reads.
        every: Duration,
    },
}

impl WatchMode {
    fn events(self) -> bool {
        !matches!(self, Self::Poll { .. })
    }

    fn poll(self) -> Option<Duration> {
        match self {
            Self::Events => None,
            Self::Poll { every } | Self::EventsAndPoll { every } => {
                Some(every.max(Duration::from_millis(10)))
            }
        }
    }
}

/// How a [`FileSource`] or [`CertDirectory`](crate::CertDirectory) watches and reads its files.
///
/// ```
/// use std::time::Duration;
/// use certrotate::source::{FileOptions, WatchMode};
///
/// let options = FileOptions::default()
///     .watch(WatchMode::Poll { every: Duration::from_secs(5) }) // NFS
///     .settle(Duration::from_millis(500))
///     .strict_permissions(true);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct FileOptions {
    pub(crate) watch: WatchMode,
    pub(crate) settle: Duration,
    pub(crate) grace: Duration,
    pub(crate) strict_permissions: bool,
    pub(crate) max_file_size: u64,
    pub(crate) state_file: Option<PathBuf>,
}

impl Default for FileOptions {
    /// Events with a poll every 60 s as a safety net, a 250 ms settle window,
    /// a 10 s grace period, permission problems reported but not refused,
    /// files of at most 1 MiB.
    fn default() -> Self {
        Self {
            watch: WatchMode::EventsAndPoll {
                every: Duration::from_secs(60),
            },
            settle: Duration::from_millis(250),
            grace: Duration::from_secs(10),
            strict_permissions: false,
            max_file_size: read::DEFAULT_LIMIT,
            state_file: None,
        }
    }
}

impl FileOptions {
    /// How changes are noticed (default: events, and a poll every 60 s).
    /// When the platform refuses a watcher (the inotify limit is reached),
    /// the source polls every 5 s instead, or at the configured interval, and
    /// says so in a warning log.
    pub fn watch(mut self, mode: WatchMode) -> Self {
        self.watch = mode;
        self
    }

    /// How long the files must stay unchanged before they are read (default
    /// 250 ms).
    pub fn settle(mut self, window: Duration) -> Self {
        self.settle = window;
        self
    }

    /// How long a pair that does not parse or does not match is re-read,
    /// waiting for its other half, before the rotator gets to refuse it
    /// (default 10 s).
    pub fn grace(mut self, period: Duration) -> Self {
        self.grace = period;
        self
    }

    /// Refuse a private key file that users other than its owner can read
    /// or write (default: serve it, with a
    /// [`SourceWarning::KeyFileExposed`] in health and events).
    pub fn strict_permissions(mut self, strict: bool) -> Self {
        self.strict_permissions = strict;
        self
    }

    /// The largest file that is read (default 1 MiB, far above any real
    /// chain, key or trust bundle; raise it for a CA bundle with large
    /// CRLs). A larger file is a [`SourceErrorKind::TooLarge`] and is not read
    /// past the limit, so a symlink to a 64 GiB sparse file costs nothing.
    /// Whatever the limit, only regular files are read: a FIFO, a device or
    /// a directory is a [`SourceErrorKind::NotAFile`], found without blocking.
    ///
    /// ```
    /// let options = certrotate::source::FileOptions::default().max_file_size(8 << 20);
    /// ```
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// Where the source records the newest certificate it had served (its
    /// [`HighWaterMark`](crate::danger::HighWaterMark), one line, written 0600 and
    /// atomically), so that after a restart an older pair put back in the
    /// files is refused as a replay, as a running rotator refuses it
    /// (default: none, and replay protection is per process). Keep it where
    /// whoever writes the certificates cannot write (the service's own state
    /// directory), or it protects nothing. To go back to an older pair on
    /// purpose, use [`Dangerous::allow_older`](crate::danger::Dangerous::allow_older)
    /// or remove the file.
    ///
    /// ```
    /// let options = certrotate::source::FileOptions::default()
    ///     .state_file("/var/lib/api/tls-served.txt");
    /// ```
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }

    /// Reads `path` as the sources do: a regular file (after symlinks;
    /// opened without blocking, so a FIFO cannot hang it), at most
    /// [`max_file_size`](Self::max_file_size) bytes. For tools reading
    /// files an operator names, such as certificates to inspect.
    ///
    /// ```no_run
    /// let pem = certrotate::source::FileOptions::default().read_file("/etc/tls/ca.crt")?;
    /// # Ok::<(), certrotate::SourceError>(())
    /// ```
    pub fn read_file(&self, path: impl AsRef<Path>) -> Result<Vec<u8>, SourceError> {
        let path = path.as_ref();
        let from = || format!("file {}", path.display());
        self.read(from, path).map(|c| c.bytes.to_vec())
    }

    /// Reads `path` as these options say: a regular file, up to the limit.
    pub(crate) fn read(
        &self,
        from: impl FnOnce() -> String,
        path: &Path,
    ) -> Result<read::Contents, SourceError> {
        read::bounded(path, self.max_file_size)
            .map_err(|failure| failure.into_source_error(from(), path))
    }
}

/// Certificates from files written by something else: cert-manager (a
/// Kubernetes secret volume), certbot, Vault Agent, a deployment pipeline,
/// `cp`.
///
/// Either a PEM chain file and a PEM key file, or one file holding both.
/// Changes are noticed by watching the files' directories (and those behind
/// their symlinks), by polling, or both; see [`FileOptions`]. Reads wait for
/// the files to settle, and a pair caught between its two halves is given a
/// grace period, so neither a half-written file nor a new certificate with
/// the old key reaches the policy while an update is still on its way.
///
/// Missing or unreadable files are a [`SourceErrorKind::Read`]: the last good
/// certificate keeps serving, the error is in health and events, and the
/// files are picked up when they come back.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use certrotate::{FileSource, Policy, Rotator};
///
/// // A Kubernetes TLS secret mounted at /etc/tls.
/// let source = FileSource::pair("/etc/tls/tls.crt", "/etc/tls/tls.key");
/// let policy = Policy::builder().server_name("api.example.com").build()?;
/// let rotator = Rotator::builder(source, policy).start().await?;
/// let tls = std::sync::Arc::new(rotator.server_config()?);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileSource {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    files: Files,
    options: FileOptions,
    /// The fingerprint of what the last fetch read.
    last_read: Mutex<Option<Fingerprint>>,
    /// The fingerprint of the reading the settle task handed over, until a
    /// fetch takes it: a fetch that finds it does not wait for more.
    settled: Mutex<Option<Fingerprint>>,
    warnings: Mutex<Vec<SourceWarning>>,
    /// Blocking reads, one at a time (fetches and the settle task share it).
    reads: OneAtATime,
    /// A settled change is waiting to be fetched.
    ready: Notify,
    watching: OnceLock<()>,
    /// Dropped with the source, which ends its settle task.
    alive: watch::Sender<()>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Files {
    Pair { cert: PathBuf, key: PathBuf },
    Combined(PathBuf),
}

pub(crate) type Fingerprint = [u8; 32];

/// The bytes of the files, as read at one moment.
struct Contents {
    /// Zeroized too: in a combined file it holds the key.
    cert: Zeroizing<Vec<u8>>,
    key: Zeroizing<Vec<u8>>,
    /// The key file's permission bits (unix only).
    key_mode: Option<u32>,
}

/// One reading of the files: what a fetch would return now.
pub(crate) struct Loaded {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) bundle: Result<CertBundle, SourceError>,
    pub(crate) warning: Option<SourceWarning>,
    /// Whether the files or their directories changed within the grace
    /// period: only then may the rest of an update still be on its way.
    pub(crate) recent: bool,
}

impl Loaded {
    /// A reading that could not be made.
    pub(crate) fn failed(error: SourceError) -> Self {
        let bundle = Err(error);
        Self {
            fingerprint: settle::fingerprint(&bundle, |_, _| {}),
            bundle,
            warning: None,
            recent: false,
        }
    }

    /// Whether this looks like a whole pair rather than one caught between
    /// its two halves: it parses and the key belongs to the certificate (or
    /// fails for a reason a pending write cannot explain).
    pub(crate) fn whole(&self) -> bool {
        match &self.bundle {
            Ok(bundle) => !bundle.key_mismatches(),
            Err(error)
                if matches!(
                    error.kind(),
                    SourceErrorKind::Bundle(_) | SourceErrorKind::Read { .. }
                ) =>
            {
                false
            }
            Err(_) => true,
        }
    }
}

impl FileSource {
    /// A PEM certificate chain file (leaf first) and a PEM private key file.
    pub fn pair(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self::new(
            Files::Pair {
                cert: cert.into(),
                key: key.into(),
            },
            FileOptions::default(),
        )
    }

    /// One PEM file holding the chain and the private key.
    pub fn combined(path: impl Into<PathBuf>) -> Self {
        Self::new(Files::Combined(path.into()), FileOptions::default())
    }

    /// Watches and reads as `options` say.
    pub fn options(self, options: FileOptions) -> Self {
        Self::new(self.shared.files.clone(), options)
    }

    pub(crate) fn new(files: Files, options: FileOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                files,
                options,
                last_read: Mutex::default(),
                settled: Mutex::default(),
                warnings: Mutex::default(),
                reads: OneAtATime::default(),
                ready: Notify::new(),
                watching: OnceLock::new(),
                alive: watch::channel(()).0,
            }),
        }
    }

    /// Starts the watch-and-settle task on first use, in the caller's runtime.
    fn watch(&self) {
        self.shared
            .watching
            .get_or_init(|| spawn_settle(&self.shared, self.shared.alive.subscribe()));
    }
}

impl CertSource for FileSource {
    /// Reads the files now. A pair that is not whole (see the module docs),
    /// was not seen before, and changed within the grace period is re-read
    /// until the grace period ends, so a fetch on schedule or on demand does
    /// not catch an update half-done. Files that are simply broken (nothing
    /// changed lately) are returned at once.
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        let shared = &self.shared;
        let deadline = crate::clock::instant_in(shared.options.grace);
        loop {
            let loaded = load(shared).await?;
            let done = loaded.whole() || !loaded.recent || shared.seen(&loaded.fingerprint);
            if done || Instant::now() >= deadline {
                *lock(&shared.last_read) = Some(loaded.fingerprint);
                // Handed over: the same content later is a new change again.
                *lock(&shared.settled) = None;
                *lock(&shared.warnings) = loaded.warning.into_iter().collect();
                return loaded.bundle;
            }
            tokio::time::sleep(shared.options.settle).await;
        }
    }

    /// Completes once a settled change that has not been fetched yet is
    /// waiting.
    async fn changed(&self) {
        self.watch();
        loop {
            self.shared.ready.notified().await;
            // A fetch on another trigger may have taken it already.
            if lock(&self.shared.settled).is_some() {
                return;
            }
        }
    }

    fn describe(&self) -> String {
        self.shared.describe()
    }

    fn kind(&self) -> &'static str {
        "file"
    }

    fn warnings(&self) -> Vec<SourceWarning> {
        lock(&self.shared.warnings).clone()
    }

    /// Its [state file](FileOptions::state_file), if it has one.
    fn replay_marks(&self) -> Option<&dyn ReplayMarks> {
        self.shared.options.state_file.is_some().then_some(self)
    }
}

/// The mark in the [state file](FileOptions::state_file). A state file
/// that cannot be read in time or parsed is unreadable (reported, and
/// asked again).
impl ReplayMarks for FileSource {
    fn read(&self) -> BoxFuture<'_, Result<Option<HighWaterMark>, MarkUnreadable>> {
        Box::pin(async move {
            match &self.shared.options.state_file {
                Some(path) => HighWaterMark::load_file(path).await,
                None => Ok(None),
            }
        })
    }

    fn record(&self, mark: HighWaterMark) -> BoxFuture<'_, Result<(), MarkUnreadable>> {
        Box::pin(async move {
            match &self.shared.options.state_file {
                Some(path) => mark.record_file(path).await,
                None => Ok(()),
            }
        })
    }
}

impl Files {
    fn cert(&self) -> &Path {
        match self {
            Self::Pair { cert, .. } | Self::Combined(cert) => cert,
        }
    }

    fn key(&self) -> &Path {
        match self {
            Self::Pair { key, .. } | Self::Combined(key) => key,
        }
    }

    pub(crate) fn paths(&self) -> Vec<&Path> {
        match self {
            Self::Pair { cert, key } => vec![cert, key],
            Self::Combined(path) => vec![path],
        }
    }
}

impl Files {
    pub(crate) fn describe(&self) -> String {
        match self {
            Files::Pair { cert, key } => {
                format!("files {} + {}", cert.display(), key.display())
            }
            Files::Combined(path) => format!("file {}", path.display()),
        }
    }

    /// Reads the files as they are now.
    fn read(&self, options: &FileOptions) -> Result<Contents, SourceError> {
        let read = |path: &Path| {
            options
                .read(|| self.describe(), path)
                .map(|c| (c.bytes, c.metadata))
        };
        let (cert, key, metadata) = match self {
            Files::Pair { cert, key } => {
                let (cert, _) = read(cert)?;
                let (key, metadata) = read(key)?;
                (cert, key, metadata)
            }
            Files::Combined(path) => {
                let (both, metadata) = read(path)?;
                (both.clone(), both, metadata)
            }
        };
        Ok(Contents {
            cert,
            key,
            key_mode: mode(&metadata),
        })
    }

    /// Reads and parses the files, and checks the key file's permissions
    /// (blocking).
    pub(crate) fn load(&self, options: &FileOptions) -> Loaded {
        let contents = self.read(options);
        let fingerprint = fingerprint(&contents);
        let warning = contents
            .as_ref()
            .ok()
            .and_then(|c| c.key_mode)
            .filter(|mode| mode & 0o077 != 0)
            .map(|mode| SourceWarning::KeyFileExposed {
                path: self.key().to_owned(),
                mode,
            });
        let bundle = contents.and_then(|contents| {
            if let Some(warning) = warning.clone().filter(|_| options.strict_permissions) {
                return Err(SourceError::new(
                    self.describe(),
                    SourceErrorKind::Insecure(warning),
                ));
            }
            let bundle = match self {
                Files::Pair { .. } => CertBundle::from_pem(&contents.cert, &contents.key),
                Files::Combined(_) => CertBundle::from_combined_pem(&contents.key),
            };
            bundle
                .map(|b| b.with_origin(self.describe()))
                .map_err(|error| SourceError::bundle(self.describe(), error))
        });
        Loaded {
            fingerprint,
            bundle,
            warning,
            recent: self.changed_within(options.grace),
        }
    }

    /// Whether a file, a symlink on its way, or a directory holding one was
    /// modified less than `window` ago (or in the future: clock skew).
    fn changed_within(&self, window: Duration) -> bool {
        let since = std::time::SystemTime::now() - window;
        self.paths().into_iter().any(|path| {
            let parent = path.parent().unwrap_or(Path::new("/"));
            [
                std::fs::metadata(path),
                std::fs::symlink_metadata(path),
                std::fs::metadata(parent),
            ]
            .into_iter()
            .filter_map(|m| m.ok()?.modified().ok())
            .any(|modified| modified >= since)
        })
    }
}

impl Shared {
    fn describe(&self) -> String {
        self.files.describe()
    }

    fn load(&self) -> Loaded {
        self.files.load(&self.options)
    }

    /// Whether this is what the last fetch read, or what the settle task
    /// handed over for the next one.
    fn seen(&self, fingerprint: &Fingerprint) -> bool {
        lock(&self.last_read).as_ref() == Some(fingerprint)
            || lock(&self.settled).as_ref() == Some(fingerprint)
    }
}

impl Watched for Shared {
    type Reading = Loaded;

    fn options(&self) -> &FileOptions {
        &self.options
    }

    fn reads(&self) -> &OneAtATime {
        &self.reads
    }

    fn paths(&self) -> Vec<&Path> {
        self.files.paths()
    }

    fn describe(&self) -> String {
        Shared::describe(self)
    }

    fn read(&self) -> Loaded {
        self.load()
    }

    fn fingerprint(reading: &Loaded) -> Fingerprint {
        reading.fingerprint
    }

    fn whole(reading: &Loaded) -> bool {
        reading.whole()
    }

    fn seen(&self, fingerprint: &Fingerprint) -> bool {
        Shared::seen(self, fingerprint)
    }

    /// Hands the change over to the rotator's next fetch.
    fn settled(&self, reading: Loaded) {
        *lock(&self.settled) = Some(reading.fingerprint);
        self.ready.notify_one();
    }
}

/// Loads on a blocking thread (file systems can hang), one load at a time,
/// giving up after [`READ_TIMEOUT`].
async fn load(shared: &Arc<Shared>) -> Result<Loaded, SourceError> {
    let reader = shared.clone();
    shared
        .reads
        .run(READ_TIMEOUT, move || reader.load())
        .await
        .map_err(|stuck| stuck.into_source_error(shared.describe(), shared.files.cert().to_owned()))
}

/// Identifies what a read found: the bytes and key mode, or the failure.
fn fingerprint(contents: &Result<Contents, SourceError>) -> Fingerprint {
    settle::fingerprint(contents, |c, hash| {
        hash.update((c.cert.len() as u64).to_le_bytes());
        hash.update(&c.cert);
        hash.update(&*c.key);
        hash.update(c.key_mode.unwrap_or(0).to_le_bytes());
    })
}

#[cfg(unix)]
fn mode(metadata: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    Some(metadata.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn mode(_: &std::fs::Metadata) -> Option<u32> {
    None
}

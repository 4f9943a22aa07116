//! [`SourceError`] and [`SourceWarning`]: what goes wrong with a source.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bundle::BundleError;

/// Something about a source that is unsafe but does not stop it from working.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceWarning {
    /// The private key file can be read or written by users other than its
    /// owner.
    KeyFileExposed {
        /// The key file, as configured.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// State the source keeps (an ACME account or certificate) could not be
    /// saved: it works now, but after a restart it will have to be obtained
    /// again.
    StateNotSaved {
        /// What could not be saved.
        what: String,
        /// Why.
        reason: String,
    },
    /// The record of the newest certificate served (the
    /// [`HighWaterMark`](crate::danger::HighWaterMark)) cannot be read or
    /// written: until it can be read, only certificates newer than the one
    /// serving are installed; until it can be written, replay protection
    /// is this process's alone. Both are tried again with backoff.
    MarkUnreadable(Box<crate::mark::MarkUnreadable>),
    /// Every ACME CA failed and the certificate serving comes from the
    /// internal CA configured as the last resort
    /// ([`AcmeBuilder::last_resort`](crate::acme::AcmeBuilder::last_resort)):
    /// clients that trust only public roots reject it. Critical: the
    /// slot's alert level is `critical` while it serves.
    LastResort {
        /// Why the ACME CAs did not issue.
        reason: String,
    },
    /// The source's credentials (a Vault token) cannot be kept alive:
    /// renewal or login fails. What serves keeps serving until the next
    /// certificate is due.
    AuthFailing {
        /// The auth method, in words.
        method: String,
        /// Why.
        reason: String,
    },
    /// An ACME CA failed to issue at its last turn (another CA may have
    /// issued instead): reported until it issues again.
    CaFailing {
        /// The CA's directory URL.
        directory: String,
        /// Its failure.
        reason: String,
    },
}

impl SourceWarning {
    /// Whether the slot is critical while this lasts (its alert level is
    /// raised to [`Critical`](crate::AlertLevel::Critical)).
    ///
    /// ```
    /// use certrotate::source::SourceWarning;
    /// let warning = SourceWarning::LastResort { reason: "every CA is down".into() };
    /// assert!(warning.is_critical());
    /// ```
    pub fn is_critical(&self) -> bool {
        matches!(self, Self::LastResort { .. })
    }
}

impl fmt::Display for SourceWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyFileExposed { path, mode } => write!(
                f,
                "private key file {} has mode {mode:04o}: users other than its owner can access it (chmod 600 it)",
                path.display()
            ),
            Self::StateNotSaved { what, reason } => write!(
                f,
                "could not save the {what} ({reason}): it is used now, but after a restart it must be obtained again"
            ),
            Self::LastResort { reason } => write!(
                f,
                "serving a certificate from the internal last-resort CA, as every ACME CA failed ({reason})"
            ),
            Self::AuthFailing { method, reason } => {
                write!(f, "the credentials of {method} cannot be renewed: {reason}")
            }
            Self::CaFailing { directory, reason } => {
                write!(f, "the ACME CA {directory} failed at its last turn: {reason}")
            }
            Self::MarkUnreadable(error) if error.is_recording() => write!(
                f,
                "{error}; replay protection is this process's alone until it is (retried with backoff)"
            ),
            Self::MarkUnreadable(error) => write!(
                f,
                "{error}; only certificates newer than the one serving are installed until it can be read (retried with backoff)"
            ),
        }
    }
}

/// A [`CertSource`](crate::CertSource) could not produce a bundle: which
/// source ([`from`](Self::from)) and what went wrong ([`kind`](Self::kind)).
///
/// ```
/// use certrotate::source::SourceErrorKind;
/// use certrotate::SourceError;
///
/// let error = SourceError::empty("pushed certificates");
/// assert_eq!(error.from(), "pushed certificates");
/// assert!(matches!(error.kind(), SourceErrorKind::Empty));
/// assert_eq!(error.to_string(), "pushed certificates has no certificate yet");
/// ```
#[derive(Debug, Clone)]
pub struct SourceError {
    from: String,
    kind: SourceErrorKind,
}

/// What went wrong with a source: the [`kind`](SourceError::kind) of a
/// [`SourceError`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SourceErrorKind {
    /// The source produced bytes that are not a usable bundle.
    #[error("unusable certificate: {0}")]
    Bundle(#[source] BundleError),
    /// The source could not be reached or read. The error itself (an I/O
    /// error, an ACME failure with the CA's problem document...) is kept for
    /// [`Error::source`](std::error::Error::source).
    #[error("unavailable: {0}")]
    Unavailable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The source has no certificate to give yet.
    #[error("no certificate yet")]
    Empty,
    /// The source asked to be called again no sooner than `retry_after`
    /// (an ACME CA's rate limit, or its `Retry-After` on an error). The
    /// rotator waits that long, unless the serving certificate's remaining
    /// validity cannot afford it.
    #[error("rate-limited (retry in {}): {reason}", crate::clock::human(*retry_after))]
    RateLimited {
        /// What the source said.
        reason: String,
        /// How long it asked to wait.
        retry_after: std::time::Duration,
    },
    /// A file could not be read: missing, unreadable, or a read that hung.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The path names a FIFO, a device, a directory or a socket instead of
    /// a regular file (after following symlinks). Nothing was read from it.
    #[error("{} is {found}, not a regular file", path.display())]
    NotAFile {
        /// The path as configured.
        path: PathBuf,
        /// What it is instead, in words: "a FIFO", "a character device"...
        found: &'static str,
    },
    /// The file is larger than the source's size limit
    /// ([`FileOptions::max_file_size`](crate::source::FileOptions::max_file_size)).
    /// Nothing past the limit was read.
    #[error("{} is {size} bytes, over the {} limit", path.display(), crate::read::bytes(*limit))]
    TooLarge {
        /// The path as configured.
        path: PathBuf,
        /// The file's size (or as much as was read, if it grew).
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The source is configured in a way it cannot honour (an option that
    /// would otherwise be ignored): what is wrong, and what to use instead.
    #[error("misconfigured: {0}")]
    Config(String),
    /// The source works but is unsafe, and the configuration says to refuse it.
    #[error("refused: {0}")]
    Insecure(SourceWarning),
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = &self.from;
        match &self.kind {
            SourceErrorKind::Bundle(error) => {
                write!(f, "{from} gave an unusable certificate: {error}")
            }
            SourceErrorKind::Empty => write!(f, "{from} has no certificate yet"),
            SourceErrorKind::Read { .. }
            | SourceErrorKind::NotAFile { .. }
            | SourceErrorKind::TooLarge { .. } => write!(f, "{from}: {}", self.kind),
            kind => write!(f, "{from} is {kind}"),
        }
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// A boxed error: what [`SourceError::unavailable`] and a
/// [`Dns01Solver`](crate::acme::Dns01Solver) take.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl SourceError {
    /// The error `kind` of the source that describes itself as `from`.
    pub fn new(from: impl Into<String>, kind: SourceErrorKind) -> Self {
        Self {
            from: from.into(),
            kind,
        }
    }

    /// The source, as it [describes](crate::CertSource::describe) itself.
    pub fn from(&self) -> &str {
        &self.from
    }

    /// What went wrong.
    pub fn kind(&self) -> &SourceErrorKind {
        &self.kind
    }

    /// A short constant naming the kind of failure, for metric labels and
    /// machine-readable output: `"bundle"`, `"unavailable"`, `"empty"`,
    /// `"rate_limited"`, `"read"`, `"not_a_file"`, `"too_large"`,
    /// `"insecure"`, `"config"`.
    ///
    /// ```
    /// let error = certrotate::SourceError::unavailable("ACME", "connection refused");
    /// assert_eq!(error.code(), "unavailable");
    /// ```
    pub fn code(&self) -> &'static str {
        match self.kind {
            SourceErrorKind::Bundle(_) => "bundle",
            SourceErrorKind::Unavailable(_) => "unavailable",
            SourceErrorKind::Empty => "empty",
            SourceErrorKind::RateLimited { .. } => "rate_limited",
            SourceErrorKind::Read { .. } => "read",
            SourceErrorKind::NotAFile { .. } => "not_a_file",
            SourceErrorKind::TooLarge { .. } => "too_large",
            SourceErrorKind::Insecure(_) => "insecure",
            SourceErrorKind::Config(_) => "config",
        }
    }

    /// How long the source asked to wait before it is called again, if it
    /// is [rate-limited](SourceErrorKind::RateLimited).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.kind {
            SourceErrorKind::RateLimited { retry_after, .. } => Some(retry_after),
            _ => None,
        }
    }

    /// The source's bytes did not parse into a bundle.
    pub fn bundle(from: impl Into<String>, error: BundleError) -> Self {
        Self::new(from, SourceErrorKind::Bundle(error))
    }

    /// The source has no certificate to give yet.
    pub fn empty(from: impl Into<String>) -> Self {
        Self::new(from, SourceErrorKind::Empty)
    }

    /// The source could not be reached or read, because of `reason`: an
    /// error (kept as this error's source) or a message.
    ///
    /// ```
    /// use certrotate::source::SourceErrorKind;
    /// use certrotate::SourceError;
    /// let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// let error = SourceError::unavailable("ACME", io);
    /// let SourceErrorKind::Unavailable(source) = error.kind() else { unreachable!() };
    /// let cause = source.downcast_ref::<std::io::Error>().unwrap();
    /// assert_eq!(cause.kind(), std::io::ErrorKind::ConnectionRefused);
    /// assert!(std::error::Error::source(&error).is_some());
    /// ```
    pub fn unavailable(from: impl Into<String>, reason: impl Into<BoxError>) -> Self {
        Self::new(from, SourceErrorKind::Unavailable(Arc::from(reason.into())))
    }

    /// The source asks to be called again no sooner than `retry_after`,
    /// because of `reason`.
    pub fn rate_limited(
        from: impl Into<String>,
        reason: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> Self {
        Self::new(
            from,
            SourceErrorKind::RateLimited {
                reason: reason.into(),
                retry_after,
            },
        )
    }

    /// `path` could not be read because of `error`.
    pub fn read(from: impl Into<String>, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::new(
            from,
            SourceErrorKind::Read {
                path: path.into(),
                source: Arc::new(error),
            },
        )
    }
}

// What a failed or stuck read of a source's file is, as a source error.
#[cfg(feature = "file")]
impl crate::read::ReadFailure {
    /// The source error for this failure of `from` reading `path`.
    pub(crate) fn into_source_error(self, from: String, path: &std::path::Path) -> SourceError {
        let path = path.to_owned();
        match self {
            Self::Io(error) => SourceError::read(from, path, error),
            Self::NotAFile(found) => {
                SourceError::new(from, SourceErrorKind::NotAFile { path, found })
            }
            Self::TooLarge { size, limit } => {
                SourceError::new(from, SourceErrorKind::TooLarge { path, size, limit })
            }
        }
    }
}

#[cfg(feature = "file")]
impl crate::read::Stuck {
    /// The source error for a read of `path` by `from` that did not finish.
    pub(crate) fn into_source_error(self, from: String, path: PathBuf) -> SourceError {
        SourceError::read(
            from,
            path,
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer within {} (the file system may be hung)",
                    crate::clock::human(self.waited)
                ),
            ),
        )
    }
}

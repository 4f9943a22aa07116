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
    /// [`HighWaterMark`](crate::danger::HighWaterMark)) cannot be read: until it
    /// can, only certificates newer than the one serving are installed, and
    /// no mark is recorded (so none is lowered).
    MarkUnreadable(Box<crate::mark::MarkUnreadable>),
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
            Self::MarkUnreadable(error) => write!(
                f,
                "{error}; only certificates newer than the one serving are installed until it can be read (retried at each attempt)"
            ),
        }
    }
}

/// A [`CertSource`](crate::CertSource) could not produce a bundle.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source produced bytes that are not a usable bundle.
    #[error("{from} gave an unusable certificate: {error}")]
    Bundle {
        /// The source, as it describes itself.
        from: String,
        /// What is wrong with the bytes.
        error: BundleError,
    },
    /// The source could not be reached or read.
    #[error("{from} is unavailable: {source}")]
    Unavailable {
        /// The source, as it describes itself.
        from: String,
        /// Why: the error itself (an I/O error, an ACME failure with the
        /// CA's problem document...), kept for
        /// [`Error::source`](std::error::Error::source).
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The source has no certificate to give yet.
    #[error("{from} has no certificate yet")]
    Empty {
        /// The source, as it describes itself.
        from: String,
    },
    /// The source asked to be called again no sooner than `retry_after`
    /// (an ACME CA's rate limit, or its `Retry-After` on an error). The
    /// rotator waits that long, unless the serving certificate's remaining
    /// validity cannot afford it.
    #[error("{from} is rate-limited (retry in {}): {reason}", crate::clock::human(*retry_after))]
    RateLimited {
        /// The source, as it describes itself.
        from: String,
        /// What the source said.
        reason: String,
        /// How long it asked to wait.
        retry_after: std::time::Duration,
    },
    /// A file could not be read: missing, unreadable, or a read that hung.
    #[error("{from}: cannot read {}: {source}", path.display())]
    Read {
        /// The source, as it describes itself.
        from: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: Arc<std::io::Error>,
    },
    /// The path names a FIFO, a device, a directory or a socket instead of
    /// a regular file (after following symlinks). Nothing was read from it.
    #[error("{from}: {} is {found}, not a regular file", path.display())]
    NotAFile {
        /// The source, as [`CertSource::describe`](crate::CertSource::describe) says.
        from: String,
        /// The path as configured.
        path: PathBuf,
        /// What it is instead, in words: "a FIFO", "a character device"...
        found: &'static str,
    },
    /// The file is larger than the source's size limit
    /// ([`FileOptions::max_file_size`](crate::source::FileOptions::max_file_size)).
    /// Nothing past the limit was read.
    #[error("{from}: {} is {size} bytes, over the {} limit", path.display(), crate::read::bytes(*limit))]
    TooLarge {
        /// The source, as [`CertSource::describe`](crate::CertSource::describe) says.
        from: String,
        /// The path as configured.
        path: PathBuf,
        /// The file's size (or as much as was read, if it grew).
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A trust bundle (CA certificates) could not be used.
    #[error("{from}: {error}")]
    Trust {
        /// The source, as it describes itself.
        from: String,
        /// What is wrong with the bundle.
        error: crate::mtls::TrustError,
    },
    /// The source is configured in a way it cannot honour (an option that
    /// would otherwise be ignored).
    #[error("{from} is misconfigured: {reason}")]
    Config {
        /// The source, as it describes itself.
        from: String,
        /// What is wrong, and what to use instead.
        reason: String,
    },
    /// The source works but is unsafe, and the configuration says to refuse it.
    #[error("{from} is refused: {warning}")]
    Insecure {
        /// The source, as it describes itself.
        from: String,
        /// What is unsafe.
        warning: SourceWarning,
    },
}

/// A boxed error: what [`SourceError::unavailable`] and a
/// [`Dns01Solver`](crate::acme::Dns01Solver) take.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl SourceError {
    /// A short constant naming the kind of failure, for metric labels and
    /// machine-readable output: `"bundle"`, `"unavailable"`, `"empty"`,
    /// `"rate_limited"`, `"read"`, `"trust"`, `"insecure"`, `"config"`.
    ///
    /// ```
    /// let error = certrotate::SourceError::unavailable("ACME", "connection refused");
    /// assert_eq!(error.code(), "unavailable");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Self::Bundle { .. } => "bundle",
            Self::Unavailable { .. } => "unavailable",
            Self::Empty { .. } => "empty",
            Self::RateLimited { .. } => "rate_limited",
            Self::Read { .. } => "read",
            Self::NotAFile { .. } => "not_a_file",
            Self::TooLarge { .. } => "too_large",
            Self::Trust { .. } => "trust",
            Self::Insecure { .. } => "insecure",
            Self::Config { .. } => "config",
        }
    }

    /// The source's bytes did not parse into a bundle.
    pub fn bundle(from: impl Into<String>, error: BundleError) -> Self {
        Self::Bundle {
            from: from.into(),
            error,
        }
    }

    /// The source could not be reached or read, because of `reason`: an
    /// error (kept as this error's source) or a message.
    ///
    /// ```
    /// use certrotate::SourceError;
    /// let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// let error = SourceError::unavailable("ACME", io);
    /// let SourceError::Unavailable { source, .. } = &error else { unreachable!() };
    /// let cause = source.downcast_ref::<std::io::Error>().unwrap();
    /// assert_eq!(cause.kind(), std::io::ErrorKind::ConnectionRefused);
    /// assert!(std::error::Error::source(&error).is_some());
    /// ```
    pub fn unavailable(from: impl Into<String>, reason: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            from: from.into(),
            source: Arc::from(reason.into()),
        }
    }
}

// What a failed or stuck read of a source's file is, as a source error.
#[cfg(feature = "file")]
impl crate::read::ReadFailure {
    /// The source error for this failure of `from` reading `path`.
    pub(crate) fn into_source_error(self, from: String, path: &std::path::Path) -> SourceError {
        let path = path.to_owned();
        match self {
            Self::Io(error) => SourceError::Read {
                from,
                path,
                source: Arc::new(error),
            },
            Self::NotAFile(found) => SourceError::NotAFile { from, path, found },
            Self::TooLarge { size, limit } => SourceError::TooLarge {
                from,
                path,
                size,
                limit,
            },
        }
    }
}

#[cfg(feature = "file")]
impl crate::read::Stuck {
    /// The source error for a read of `path` by `from` that did not finish.
    pub(crate) fn into_source_error(self, from: String, path: PathBuf) -> SourceError {
        SourceError::Read {
            from,
            path,
            source: Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer within {} (the file system may be hung)",
                    crate::clock::human(self.waited)
                ),
            )),
        }
    }
}

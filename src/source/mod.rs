//! Where certificates come from: the [`CertSource`] trait and its implementations.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::bundle::{BundleError, CertBundle};

#[cfg(feature = "acme")]
mod acme;
#[cfg(feature = "ca")]
mod ca;
#[cfg(feature = "file")]
mod file;
mod mark;
#[cfg(feature = "redis")]
mod redis_storage;
mod r#static;

#[cfg(all(fuzzing, feature = "acme"))]
pub use acme::fuzzing as acme_fuzzing;
#[cfg(feature = "acme")]
pub use acme::{
    AcmeBuilder, AcmeSource, BoxFuture, Dns01Solver, FileStorage, Http01Responder, Lease, Storage,
};
#[cfg(feature = "ca")]
pub use ca::{CaError, CaSource, InternalCa, LeafSpec};
#[cfg(feature = "file")]
pub use file::{
    CertDirectory, CertDirectoryBuilder, FileOptions, FileSource, TrustFile, WatchMode,
};
pub use mark::HighWaterMark;
pub use r#static::StaticSource;
#[cfg(feature = "redis")]
pub use redis_storage::{RedisBuilder, RedisStorage};

/// Something that produces certificate bundles: files on disk, an ACME CA,
/// an internal CA, or certificates pushed by hand.
///
/// The [`Rotator`](crate::Rotator) calls [`fetch`](Self::fetch) when the source
/// says it [`changed`](Self::changed), when the serving certificate reaches its
/// renewal time, on [`rotate_now`](crate::Rotator::rotate_now), and to retry
/// after a failure. Whatever `fetch` returns is validated by the policy before
/// it can be served, so a source does not need to check its output.
///
/// # Example
///
/// A source reading one combined PEM file whenever asked:
///
/// ```
/// use certrotate::{CertBundle, CertSource, SourceError};
///
/// struct CombinedFile(std::path::PathBuf);
///
/// impl CertSource for CombinedFile {
///     async fn fetch(&self) -> Result<CertBundle, SourceError> {
///         let pem = tokio::fs::read(&self.0)
///             .await
///             .map_err(|e| SourceError::unavailable(self.describe(), e))?;
///         CertBundle::from_combined_pem(&pem)
///             .map_err(|e| SourceError::bundle(self.describe(), e))
///     }
///
///     fn describe(&self) -> String {
///         format!("file {}", self.0.display())
///     }
/// }
/// ```
pub trait CertSource: Send + Sync + 'static {
    /// Produces the source's current certificate bundle (for a CA source:
    /// issues a new one).
    fn fetch(&self) -> impl Future<Output = Result<CertBundle, SourceError>> + Send;

    /// Completes when the source has something new to fetch. It must be
    /// cancel-safe: a signal that arrives while nobody waits is kept for the
    /// next call. The default never completes (the source is only fetched on
    /// schedule and on demand).
    fn changed(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Whether the source can answer a fetch now from what it keeps at
    /// hand (files on disk, a CA in the process, a stored ACME
    /// certificate), rather than only after a first order from a remote CA.
    ///
    /// [`RotatorBuilder::launch`](crate::RotatorBuilder::launch) waits for the
    /// first certificate only when this says yes, so that a restarted server
    /// serves its stored certificate from the first connection, and a new
    /// one still starts listening (an ACME TLS-ALPN-01 challenge needs the
    /// listener up). The default is `true`: a fetch is expected to be quick.
    fn at_hand(&self) -> impl Future<Output = bool> + Send {
        std::future::ready(true)
    }

    /// The newest certificate this source ever had served, as it recorded
    /// it ([`record_high_water_mark`](Self::record_high_water_mark)) where it
    /// keeps state, so that a restart refuses a replayed older certificate
    /// as a running rotator does. The default keeps none: replay protection
    /// is then per process.
    fn high_water_mark(&self) -> impl Future<Output = Option<HighWaterMark>> + Send {
        std::future::ready(None)
    }

    /// Records the newest certificate served (called after each install
    /// that raises the mark). The default records nothing.
    fn record_high_water_mark(&self, mark: HighWaterMark) -> impl Future<Output = ()> + Send {
        let _ = mark;
        std::future::ready(())
    }

    /// Names the source in messages: `"file /etc/tls/tls.crt"`.
    fn describe(&self) -> String;

    /// The kind of source, a short constant for the `source` label of
    /// metrics: `"file"`, `"acme"`, `"ca"`, `"static"`. The default is
    /// `"custom"`.
    fn kind(&self) -> &'static str {
        "custom"
    }

    /// What is wrong with the source though it still works, as of the last
    /// [`fetch`](Self::fetch): the rotator records these in the health
    /// snapshot and emits a [`RotationEvent::Warning`](crate::RotationEvent::Warning)
    /// when one appears. The default has none.
    fn warnings(&self) -> Vec<SourceWarning> {
        Vec::new()
    }
}

/// A shared source is a source: keep an `Arc` to watch or steer the source
/// while a rotator owns the other.
impl<S: CertSource> CertSource for Arc<S> {
    fn fetch(&self) -> impl Future<Output = Result<CertBundle, SourceError>> + Send {
        S::fetch(self)
    }

    fn changed(&self) -> impl Future<Output = ()> + Send {
        S::changed(self)
    }

    fn at_hand(&self) -> impl Future<Output = bool> + Send {
        S::at_hand(self)
    }

    fn high_water_mark(&self) -> impl Future<Output = Option<HighWaterMark>> + Send {
        S::high_water_mark(self)
    }

    fn record_high_water_mark(&self, mark: HighWaterMark) -> impl Future<Output = ()> + Send {
        S::record_high_water_mark(self, mark)
    }

    fn describe(&self) -> String {
        S::describe(self)
    }

    fn kind(&self) -> &'static str {
        S::kind(self)
    }

    fn warnings(&self) -> Vec<SourceWarning> {
        S::warnings(self)
    }
}

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
        }
    }
}

/// A [`CertSource`] could not produce a bundle.
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
    #[error("{from} is unavailable: {reason}")]
    Unavailable {
        /// The source, as it describes itself.
        from: String,
        /// Why.
        reason: String,
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
        /// The source, as [`CertSource::describe`] says.
        from: String,
        /// The path as configured.
        path: PathBuf,
        /// What it is instead, in words: "a FIFO", "a character device"...
        found: &'static str,
    },
    /// The file is larger than the source's size limit
    /// ([`FileOptions::max_file_size`](crate::FileOptions::max_file_size)).
    /// Nothing past the limit was read.
    #[error("{from}: {} is {size} bytes, over the {} limit", path.display(), crate::read::bytes(*limit))]
    TooLarge {
        /// The source, as [`CertSource::describe`] says.
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
    /// The source works but is unsafe, and the configuration says to refuse it.
    #[error("{from} is refused: {warning}")]
    Insecure {
        /// The source, as it describes itself.
        from: String,
        /// What is unsafe.
        warning: SourceWarning,
    },
}

impl SourceError {
    /// A short constant naming the kind of failure, for metric labels and
    /// machine-readable output: `"bundle"`, `"unavailable"`, `"empty"`,
    /// `"rate_limited"`, `"read"`, `"trust"`, `"insecure"`.
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
        }
    }

    /// The source's bytes did not parse into a bundle.
    pub fn bundle(from: impl Into<String>, error: BundleError) -> Self {
        Self::Bundle {
            from: from.into(),
            error,
        }
    }

    /// The source could not be reached or read.
    pub fn unavailable(from: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            from: from.into(),
            reason: reason.to_string(),
        }
    }
}

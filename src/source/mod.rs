//! Where certificates come from: the [`CertSource`] trait and its implementations.

use std::future::Future;
use std::sync::Arc;

use crate::bundle::{CertBundle, CertInfo};
use crate::mark::{HighWaterMark, MarkUnreadable};
use crate::store::CertStore;

#[cfg(feature = "ca")]
mod ca;
#[cfg(feature = "file")]
pub(crate) mod file;
mod r#static;

pub use crate::renewal::{Renewal, RenewalWindow};
pub use crate::source_error::{BoxError, SourceError, SourceErrorKind, SourceWarning};
pub use crate::util::BoxFuture;
#[cfg(feature = "ca")]
pub use ca::{CaError, CaSource, InternalCa, LeafSpec};
#[cfg(feature = "file")]
pub use file::{FileOptions, FileSource, TrustFile, TrustFileError, WatchMode};
pub use r#static::StaticSource;

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

    /// When `cert`, which this source gave and which now serves, should be
    /// replaced. The rotator fetches then, and health counts the
    /// certificate `renew-overdue` from then on; a fetch before that time
    /// that gives the same certificate is no failure.
    ///
    /// The default, `None`, leaves it to the rotator's rule: when
    /// [`renew_before_fraction`](crate::rotator::RotatorBuilder::renew_before_fraction)
    /// of the lifetime is left, a little earlier at random. A source that
    /// knows better says so: [`AcmeSource`](crate::AcmeSource) follows the
    /// CA's renewal information (RFC 9773), and says which window the CA
    /// suggested (health shows it). The rotator asks again each time it
    /// plans, so the answer may change.
    fn renew_at(&self, cert: &CertInfo) -> Option<Renewal> {
        let _ = cert;
        None
    }

    /// Called by the [`Rotator`](crate::Rotator) that runs this source,
    /// before its first fetch, with the store it fills: a source that must
    /// serve something itself (ACME TLS-ALPN-01 challenge answers) serves it
    /// there (and the configs serving the store then offer its ALPN
    /// protocol), and takes the store's [`Clock`](crate::danger::Clock).
    ///
    /// It says whether the first certificate is at hand ([`Start`]):
    /// [`RotatorBuilder::launch`](crate::rotator::RotatorBuilder::launch)
    /// waits for it only then. The default does nothing and says it is (a
    /// fetch is expected to be quick).
    fn attach(&self, store: &CertStore) -> Start {
        let _ = store;
        Start::at_hand()
    }

    /// Where the source keeps the newest certificate it ever had served
    /// ([`ReplayMarks`]), so that a restart refuses a replayed older
    /// certificate as a running rotator does. The default keeps none:
    /// replay protection is then per process.
    fn replay_marks(&self) -> Option<&dyn ReplayMarks> {
        None
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

    fn renew_at(&self, cert: &CertInfo) -> Option<Renewal> {
        S::renew_at(self, cert)
    }

    fn attach(&self, store: &CertStore) -> Start {
        S::attach(self, store)
    }

    fn replay_marks(&self) -> Option<&dyn ReplayMarks> {
        S::replay_marks(self)
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

/// What a source says when a rotator attaches it
/// ([`CertSource::attach`]): whether its first certificate is at hand, so
/// that [`RotatorBuilder::launch`](crate::rotator::RotatorBuilder::launch)
/// can wait for it (a restarted server then serves its stored certificate
/// from the first connection) or must not (a first ACME order needs the
/// listener up for its TLS-ALPN-01 challenge).
///
/// ```
/// use certrotate::source::Start;
///
/// // Files, a CA in the process: a fetch is quick.
/// let quick = Start::at_hand();
/// // Known only after a look (a stored certificate, say): bound it, as
/// // `launch` waits for it.
/// let look = tokio::fs::try_exists("/var/lib/app/cert.pem");
/// let stored = Start::ask(async move {
///     let within = std::time::Duration::from_secs(5);
///     matches!(tokio::time::timeout(within, look).await, Ok(Ok(true)))
/// });
/// # drop((quick, stored));
/// ```
#[must_use = "a rotator reads it when it launches"]
pub struct Start(Option<BoxFuture<'static, bool>>);

impl Start {
    /// A fetch is answered from what the source keeps (the default).
    pub fn at_hand() -> Self {
        Self(None)
    }

    /// Whether a fetch is answered from what the source keeps is what
    /// `look` says (it runs when a rotator launches, not before, and
    /// `launch` waits for it: bound it).
    pub fn ask(look: impl Future<Output = bool> + Send + 'static) -> Self {
        Self(Some(Box::pin(look)))
    }

    /// Whether the first fetch can be waited for.
    pub(crate) async fn look(self) -> bool {
        match self.0 {
            None => true,
            Some(look) => look.await,
        }
    }
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.0 {
            None => "at hand",
            Some(_) => "to be asked",
        };
        f.debug_tuple("Start").field(&what).finish()
    }
}

/// Where a source keeps the newest certificate it ever had served, its
/// [`HighWaterMark`] (a state file, a fleet's storage), so that a restart
/// refuses a replayed older certificate as a running rotator does
/// ([`CertSource::replay_marks`]).
///
/// ```
/// use certrotate::danger::{HighWaterMark, MarkUnreadable};
/// use certrotate::source::{BoxFuture, ReplayMarks};
/// use std::sync::Mutex;
///
/// /// Marks kept in memory (a test's; a real place survives restarts).
/// struct InMemory(Mutex<Option<HighWaterMark>>);
///
/// impl ReplayMarks for InMemory {
///     fn read(&self) -> BoxFuture<'_, Result<Option<HighWaterMark>, MarkUnreadable>> {
///         let mark = self.0.lock().unwrap().clone();
///         Box::pin(async move { Ok(mark) })
///     }
///
///     fn record(&self, mark: HighWaterMark) -> BoxFuture<'_, Result<(), MarkUnreadable>> {
///         *self.0.lock().unwrap() = Some(mark);
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait ReplayMarks: Send + Sync {
    /// The newest certificate the source ever had served, as
    /// [`record`](Self::record) left it.
    ///
    /// A mark that cannot be read (a state file or storage that does not
    /// answer, a value that does not parse) is an error, never "no mark":
    /// the rotator then installs nothing older than what serves (or than
    /// [`MarkUnreadable::known`]), reports it, and reads again after a
    /// backoff. Bound the reads yourself: the rotator gives up after 10 s,
    /// and then knows nothing of what a part that answered said.
    fn read(&self) -> BoxFuture<'_, Result<Option<HighWaterMark>, MarkUnreadable>>;

    /// Records the newest certificate served: after each install that
    /// raises the mark, and while the mark cannot be read (then record it
    /// in each place that holds nothing newer and answers, and replace a
    /// value that does not parse: a mark is never lowered, and heals).
    ///
    /// `Ok` once every place holds this mark or a newer one. A place that
    /// did not answer, or could not be written, is an error: reported in
    /// health like a mark that cannot be read, and the mark is read and
    /// recorded again after a backoff. So is a record that does not finish
    /// within 10 s.
    fn record(&self, mark: HighWaterMark) -> BoxFuture<'_, Result<(), MarkUnreadable>>;
}

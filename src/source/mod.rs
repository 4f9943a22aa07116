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

    /// Whether the source can answer a fetch now from what it keeps at
    /// hand (files on disk, a CA in the process, a stored ACME
    /// certificate), rather than only after a first order from a remote CA.
    ///
    /// [`RotatorBuilder::launch`](crate::rotator::RotatorBuilder::launch) waits for the
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
    ///
    /// A mark that cannot be read (a state file or storage that does not
    /// answer, a value that does not parse) is an error, never "no mark":
    /// the rotator then installs nothing older than what serves, records no
    /// mark (so that it is never lowered), reports it, and asks again at the
    /// next attempt. Bound the reads yourself: the rotator gives up after
    /// 10 s, and then knows nothing of what a part that answered said.
    fn high_water_mark(
        &self,
    ) -> impl Future<Output = Result<Option<HighWaterMark>, MarkUnreadable>> + Send {
        std::future::ready(Ok(None))
    }

    /// Records the newest certificate served (called after each install
    /// that raises the mark). The default records nothing.
    fn record_high_water_mark(&self, mark: HighWaterMark) -> impl Future<Output = ()> + Send {
        let _ = mark;
        std::future::ready(())
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
    /// protocol), and takes the store's [`Clock`](crate::danger::Clock). The
    /// default does nothing.
    fn attach(&self, store: &CertStore) {
        let _ = store;
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

    fn high_water_mark(
        &self,
    ) -> impl Future<Output = Result<Option<HighWaterMark>, MarkUnreadable>> + Send {
        S::high_water_mark(self)
    }

    fn record_high_water_mark(&self, mark: HighWaterMark) -> impl Future<Output = ()> + Send {
        S::record_high_water_mark(self, mark)
    }

    fn renew_at(&self, cert: &CertInfo) -> Option<Renewal> {
        S::renew_at(self, cert)
    }

    fn attach(&self, store: &CertStore) {
        S::attach(self, store)
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

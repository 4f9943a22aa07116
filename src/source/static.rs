//! [`StaticSource`]: certificates handed over by the application.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{CertSource, SourceError};
use crate::bundle::CertBundle;

/// A source fed by hand: the application [`push`](Self::push)es bundles it got
/// any other way (a secrets manager, a config service, a test), and the
/// rotator validates and serves them.
///
/// Clones share the same state: keep one to push through while the rotator
/// owns another.
///
/// # Example
///
/// ```no_run
/// # async fn demo(first: certrotate::CertBundle, next: certrotate::CertBundle) -> Result<(), Box<dyn std::error::Error>> {
/// use certrotate::{Policy, Rotator};
/// use certrotate::source::StaticSource;
///
/// let source = StaticSource::new(first);
/// let rotator = Rotator::builder(source.clone(), Policy::default()).start().await?;
///
/// source.push(next); // validated and swapped in by the rotator
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct StaticSource {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    latest: Mutex<Option<CertBundle>>,
    changed: Notify,
}

impl StaticSource {
    /// A source that starts with `bundle`.
    pub fn new(bundle: CertBundle) -> Self {
        let source = Self::default();
        *source.latest() = Some(bundle);
        source
    }

    /// A source with nothing yet: fetching fails until the first
    /// [`push`](Self::push).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Hands over a new bundle and wakes the rotator. A bundle pushed before
    /// the previous one was fetched replaces it.
    pub fn push(&self, bundle: CertBundle) {
        *self.latest() = Some(bundle);
        self.inner.changed.notify_one();
    }

    fn latest(&self) -> std::sync::MutexGuard<'_, Option<CertBundle>> {
        self.inner.latest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CertSource for StaticSource {
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        self.latest()
            .clone()
            .ok_or_else(|| SourceError::empty(self.describe()))
    }

    async fn changed(&self) {
        self.inner.changed.notified().await
    }

    fn describe(&self) -> String {
        "static source".into()
    }

    fn kind(&self) -> &'static str {
        "static"
    }
}

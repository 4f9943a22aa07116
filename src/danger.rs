//! Escape hatches: what tests and storage back ends need and ordinary
//! servers should not touch, and the switches that turn a protection off.
//!
//! A [`Clock`] that is not the system's moves every renewal and alert; a
//! [`HighWaterMark`] written by hand can refuse every certificate as a
//! replay, or accept an old one. A builder's `dangerous()` gives a
//! [`Dangerous`] view of it, whose methods each turn one protection off and
//! give the builder back:
//!
//! ```
//! # async fn demo(source: certrotate::source::StaticSource) -> Result<(), certrotate::RotateError> {
//! // Going back to an older certificate on purpose, after a restart.
//! let rotator = certrotate::Rotator::builder(source, certrotate::Policy::default())
//!     .dangerous()
//!     .allow_older()
//!     .start()
//!     .await?;
//! # drop(rotator); Ok(()) }
//! ```

pub use crate::clock::{Clock, SystemClock};
pub use crate::mark::{HighWaterMark, MarkUnreadable};

/// A builder seen through its dangerous switches (from its `dangerous()`
/// method): [`RotatorBuilder`](crate::rotator::RotatorBuilder)'s
/// `allow_older`, and, with the `vault` feature, `VaultBuilder`'s and
/// `VaultTrustBuilder`'s `allow_plain_http`. Each switch gives the builder
/// back.
#[derive(Debug)]
#[must_use = "a switch gives the builder back"]
pub struct Dangerous<B>(B);

impl<B> Dangerous<B> {
    /// `builder`, seen through its dangerous switches.
    pub(crate) fn new(builder: B) -> Self {
        Self(builder)
    }

    /// The builder, with what was switched.
    pub(crate) fn into_inner(self) -> B {
        self.0
    }
}

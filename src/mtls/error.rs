//! [`TrustError`]: why a trust bundle cannot be used.

use std::sync::Arc;

/// A trust bundle could not be used; the trust in force stays. Causes are
/// kept typed, as each error's [`source`](std::error::Error::source).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// No CA certificate was given.
    #[error("the trust bundle holds no CA certificate")]
    Empty,
    /// The PEM input could not be read.
    #[error("the trust bundle is not valid PEM: {0}")]
    Pem(#[source] Arc<rustls::pki_types::pem::Error>),
    /// A certificate cannot serve as a trust anchor.
    #[error("CA certificate #{index} of the trust bundle cannot be used: {error}")]
    Root {
        /// Position in the bundle.
        index: usize,
        /// What webpki said, through rustls.
        #[source]
        error: rustls::Error,
    },
    /// The verifiers could not be built (a CRL that does not parse, for one).
    #[error("the trust bundle cannot be used: {0}")]
    Unusable(#[source] rustls::server::VerifierBuilderError),
}

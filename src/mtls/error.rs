//! [`TrustError`]: why a trust bundle cannot be used.

/// A trust bundle could not be used; the trust in force stays.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// No CA certificate was given.
    #[error("the trust bundle holds no CA certificate")]
    Empty,
    /// The PEM input could not be read.
    #[error("the trust bundle is not valid PEM: {0}")]
    Pem(String),
    /// A certificate cannot serve as a trust anchor.
    #[error("CA certificate #{index} of the trust bundle cannot be used: {reason}")]
    Root {
        /// Position in the bundle.
        index: usize,
        /// What webpki said.
        reason: String,
    },
    /// The verifiers could not be built (a CRL that does not parse, for one).
    #[error("the trust bundle cannot be used: {0}")]
    Unusable(String),
}

//! Why a candidate was refused: [`ValidationError`] names the certificate,
//! [`Refusal`] the check.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::bundle::{CertInfo, KeyAlgorithm};
use crate::clock::{self, human};

/// A candidate certificate was refused by the [`Policy`](crate::Policy); the certificate
/// serving before keeps serving.
///
/// The message names the certificate (subject, serial, origin) and the reason:
///
/// ```text
/// certificate CN=api.example.com (serial 4f:1a, from file /etc/tls/tls.crt) was refused: it does not cover the server name "www.example.com"
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("{cert} was refused: {reason}")]
pub struct ValidationError {
    pub(super) cert: Arc<CertInfo>,
    pub(super) reason: Refusal,
}

impl ValidationError {
    /// The refused certificate.
    pub fn cert(&self) -> &CertInfo {
        &self.cert
    }

    /// Which check failed, and how.
    pub fn reason(&self) -> &Refusal {
        &self.reason
    }
}

/// Which [`Policy`](crate::Policy) check refused a certificate.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The private key could not be loaded by the crypto provider.
    #[error("its private key cannot be used: {0}")]
    KeyUnusable(#[source] rustls::Error),
    /// The leaf parses as X.509 but rustls's verifier (webpki) cannot read
    /// it, for example a subject alternative name extension over 64 KiB.
    #[error("rustls cannot read the certificate: {0}")]
    Unreadable(#[source] rustls::Error),
    /// The private key does not belong to the leaf certificate.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// The certificate's validity has not started.
    #[error("it is not valid until {}", clock::rfc3339(*not_before))]
    NotYetValid {
        /// Start of validity.
        not_before: SystemTime,
    },
    /// The certificate has expired.
    #[error("it expired at {}", clock::rfc3339(*not_after))]
    Expired {
        /// End of validity.
        not_after: SystemTime,
    },
    /// The certificate expires sooner than the policy allows.
    #[error("it expires in {}, less than the required {}", human(*remaining), human(*min_remaining))]
    ExpiresTooSoon {
        /// Time left.
        remaining: Duration,
        /// The policy's minimum.
        min_remaining: Duration,
    },
    /// The certificate has no DNS or IP subject alternative names (nor, for
    /// a client certificate, a URI); peers reject it.
    #[error("it has no DNS, IP or (for a client certificate) URI subject alternative names, which peers require")]
    NoSubjectAltNames,
    /// The certificate carries more names than the policy allows.
    #[error("it carries {count} subject alternative names, over the limit of {limit}")]
    TooManyNames {
        /// How many it carries.
        count: usize,
        /// The policy's [`max_names`](crate::policy::PolicyBuilder::max_names).
        limit: usize,
    },
    /// A configured server name is not covered.
    #[error("it does not cover the server name {name:?}")]
    NameNotCovered {
        /// The configured name that is missing.
        name: String,
    },
    /// The leaf is a CA certificate.
    #[error("it is a CA certificate, not a leaf certificate")]
    CaCertificate,
    /// The leaf's extended key usage does not allow server authentication.
    #[error("its extended key usage does not allow TLS server authentication")]
    NotForServerAuth,
    /// The leaf's extended key usage does not allow client authentication
    /// (for a [`Usage::Client`](crate::policy::Usage::Client) policy).
    #[error("its extended key usage does not allow TLS client authentication")]
    NotForClientAuth,
    /// The key is too weak or of an unsupported kind.
    #[error("its {key} key is not accepted: {reason}")]
    WeakKey {
        /// The key found.
        key: KeyAlgorithm,
        /// What is required.
        reason: String,
    },
    /// A certificate of the chain is not issued by the next one.
    #[error("the chain is out of order at certificate #{index}: {reason}")]
    ChainOutOfOrder {
        /// Position of the certificate whose issuer does not follow it.
        index: usize,
        /// What was found.
        reason: String,
    },
    /// The chain does not verify to the configured trust roots.
    #[error("it does not verify to the configured trust roots for {name:?}: {error}")]
    Untrusted {
        /// The server name verified.
        name: String,
        /// What the verifier (webpki, through rustls) said.
        #[source]
        error: rustls::Error,
    },
    /// The candidate is older than the certificate serving (a replay).
    #[error(
        "it is older than the certificate serving (serial {serving_serial}, valid from {}); \
         installing an older certificate must be asked for explicitly",
        clock::rfc3339(*serving_not_before)
    )]
    OlderThanServing {
        /// Serial of the certificate serving.
        serving_serial: String,
        /// When the serving certificate became valid.
        serving_not_before: SystemTime,
    },
    /// The in-memory probe handshake failed.
    #[error("a probe TLS handshake for {name:?} failed: {reason}")]
    ProbeFailed {
        /// The server name the probe client asked for.
        name: String,
        /// What failed.
        reason: String,
    },
}

impl Refusal {
    /// A short constant naming the check that failed, for metric labels and
    /// machine-readable output: the variant's name in snake case
    /// (`"key_mismatch"`, `"name_not_covered"`, `"expires_too_soon"`...).
    ///
    /// ```
    /// assert_eq!(certrotate::policy::Refusal::KeyMismatch.code(), "key_mismatch");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Self::KeyUnusable(_) => "key_unusable",
            Self::Unreadable(_) => "unreadable",
            Self::KeyMismatch => "key_mismatch",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::Expired { .. } => "expired",
            Self::ExpiresTooSoon { .. } => "expires_too_soon",
            Self::NoSubjectAltNames => "no_subject_alt_names",
            Self::TooManyNames { .. } => "too_many_names",
            Self::NameNotCovered { .. } => "name_not_covered",
            Self::CaCertificate => "ca_certificate",
            Self::NotForServerAuth => "not_for_server_auth",
            Self::NotForClientAuth => "not_for_client_auth",
            Self::WeakKey { .. } => "weak_key",
            Self::ChainOutOfOrder { .. } => "chain_out_of_order",
            Self::Untrusted { .. } => "untrusted",
            Self::OlderThanServing { .. } => "older_than_serving",
            Self::ProbeFailed { .. } => "probe_failed",
        }
    }
}

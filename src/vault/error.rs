//! [`VaultError`]: what went wrong asking Vault or OpenBao, typed.

use std::time::Duration;

/// What went wrong asking Vault (or OpenBao) for a certificate, a token or
/// the issuers. The certificate serving keeps serving; the error is the
/// rotator's `last_error`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// Vault could not be reached (connection refused, TLS, DNS).
    #[error("Vault at {addr} is unreachable: {reason}")]
    Unreachable {
        /// The server's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Vault did not answer within the timeout (a server that hangs).
    #[error("Vault at {addr} did not answer within {}", crate::clock::human(*waited))]
    Timeout {
        /// The server's address.
        addr: String,
        /// How long the request waited.
        waited: Duration,
    },
    /// Vault refused the request: the role does not allow the names, the
    /// TTL, the key type; the token lacks the policy (403)...
    #[error("Vault refused {path} ({status}): {errors}")]
    Refused {
        /// The API path (`pki/sign/web`).
        path: String,
        /// The HTTP status.
        status: u16,
        /// Vault's `errors`, joined.
        errors: String,
    },
    /// The token is expired, revoked or unknown to Vault: a new one is
    /// needed (the token file rewritten, or a new login).
    #[error("the Vault token was refused ({reason}): it expired or was revoked")]
    TokenRejected {
        /// What Vault said.
        reason: String,
    },
    /// The login was refused (a wrong AppRole secret id, a Kubernetes role
    /// that does not bind this service account...): the credentials need
    /// fixing.
    #[error("the Vault login ({method}) was refused: {reason}")]
    LoginRefused {
        /// The auth method, in words.
        method: String,
        /// What Vault said.
        reason: String,
    },
    /// Vault answered something this crate cannot use.
    #[error("Vault's answer to {path} is unusable: {reason}")]
    BadAnswer {
        /// The API path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration cannot work (a file that cannot be read, an
    /// address that is not a URL).
    #[error("Vault source misconfigured: {0}")]
    Config(String),
}

impl VaultError {
    /// Whether Vault said the token is not (or no longer) valid: 403
    /// `permission denied` on a request that needs no more than a valid
    /// token, or `invalid token`/`bad token`.
    pub(super) fn token_rejected(self) -> Self {
        match self {
            Self::Refused { errors, status, .. }
                if status == 403
                    || errors.contains("invalid token")
                    || errors.contains("bad token") =>
            {
                Self::TokenRejected { reason: errors }
            }
            other => other,
        }
    }
}

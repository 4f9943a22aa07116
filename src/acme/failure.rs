//! Why an ACME step failed: [`Failure`], with its cause kept typed, and
//! what the CA's problem documents say (RFC 8555 §6.7), read by their type.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why an ACME step failed: what was being done, and the typed cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {cause}")]
pub(super) struct Failure {
    pub(super) what: Step,
    #[source]
    pub(super) cause: Cause,
}

/// What was being done when an ACME step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// The first request an order signs with the account: its
    /// `unauthorized` means the CA no longer accepts the account.
    CreatingOrder,
    /// Any other step, as it is told in the error.
    Other(Cow<'static, str>),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CreatingOrder => f.write_str("creating the order"),
            Self::Other(what) => f.write_str(what),
        }
    }
}

impl From<&'static str> for Step {
    fn from(what: &'static str) -> Self {
        Self::Other(what.into())
    }
}

impl From<String> for Step {
    fn from(what: String) -> Self {
        Self::Other(what.into())
    }
}

impl From<Cow<'static, str>> for Step {
    fn from(what: Cow<'static, str>) -> Self {
        Self::Other(what)
    }
}

/// The cause of a [`Failure`], kept typed (and `Clone` through `Arc`).
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum Cause {
    /// What instant-acme reported: the CA's problem document, or what
    /// went wrong on the way to it.
    #[error(transparent)]
    Acme(Arc<instant_acme::Error>),
    /// No answer within the step's timeout.
    #[error("no answer within {}", crate::clock::human(*.0))]
    Timeout(Duration),
    /// Anything else: storage, keys, a DNS provider, a certificate.
    #[error(transparent)]
    Other(Arc<dyn std::error::Error + Send + Sync>),
    /// The CA answered, but not so that the order can go on.
    #[error(transparent)]
    Unexpected(#[from] Unexpected),
}

/// What the CA answered that does not let an order go on.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum Unexpected {
    /// The order is not ready after its challenges, and the CA says no
    /// more of why.
    #[error("the order is {0:?}")]
    Order(instant_acme::OrderStatus),
    /// An authorization is neither pending nor valid.
    #[error("the authorization is {0:?}")]
    Authorization(instant_acme::AuthorizationStatus),
    /// The CA does not offer the configured challenge type.
    #[error("the CA offers no {0:?} challenge")]
    NoChallenge(instant_acme::ChallengeType),
    /// An identifier that is not a DNS name (an IP address, say): this
    /// source orders for DNS names only.
    #[error("cannot answer for identifier {0:?}")]
    Identifier(instant_acme::Identifier),
    /// TLS-ALPN-01 answers are served by the store of a rotator running
    /// the source, and none runs it.
    #[error(
        "its answers are served by the store of the rotator running this source, and none runs it"
    )]
    NotAttached,
}

impl Failure {
    pub(super) fn new(what: impl Into<Step>, cause: impl Into<Cause>) -> Self {
        Self {
            what: what.into(),
            cause: cause.into(),
        }
    }

    /// The type of the CA's problem document, without the
    /// `urn:ietf:params:acme:error:` prefix (RFC 8555 §6.7).
    pub(super) fn problem(&self) -> Option<&str> {
        let Cause::Acme(error) = &self.cause else {
            return None;
        };
        let instant_acme::Error::Api(problem) = &**error else {
            return None;
        };
        problem
            .r#type
            .as_deref()?
            .strip_prefix("urn:ietf:params:acme:error:")
    }

    /// Whether the CA refused the request for its nonce (RFC 8555 §6.5):
    /// it was not processed, and may be sent again.
    pub(super) fn bad_nonce(&self) -> bool {
        self.problem() == Some("badNonce")
    }

    /// Whether the certificate an order `replaces` was replaced already
    /// (RFC 9773 §5).
    pub(super) fn already_replaced(&self) -> bool {
        self.problem() == Some("alreadyReplaced")
    }

    /// Whether the CA no longer knows the account (a reset CA) or no
    /// longer accepts it (deactivated): `accountDoesNotExist`, or
    /// `unauthorized` for the order it signs.
    pub(super) fn forgotten_account(&self) -> bool {
        match self.problem() {
            Some("accountDoesNotExist") => true,
            Some("unauthorized") => self.what == Step::CreatingOrder,
            _ => false,
        }
    }
}

impl From<instant_acme::Error> for Cause {
    fn from(error: instant_acme::Error) -> Self {
        Self::Acme(Arc::new(error))
    }
}

impl From<BoxError> for Cause {
    fn from(error: BoxError) -> Self {
        Self::Other(Arc::from(error))
    }
}

impl From<std::io::Error> for Cause {
    fn from(error: std::io::Error) -> Self {
        Self::Other(Arc::new(error))
    }
}

/// Adds what was being done to an error.
pub(super) trait Context<T> {
    fn context(self, what: impl Into<Step>) -> Result<T, Failure>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl Into<Step>) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(what, Cause::Other(Arc::new(e))))
    }
}

use crate::source_error::BoxError;

/// How long a `rateLimited` problem asks to wait: the time in its detail
/// (Let's Encrypt writes "retry after 2026-01-02 03:04:05 UTC"), else a
/// minute.
pub(super) fn rate_limit_wait(failure: &Failure, now: SystemTime) -> Option<Duration> {
    if failure.problem() != Some("rateLimited") {
        return None;
    }
    let Cause::Acme(error) = &failure.cause else {
        return None;
    };
    let instant_acme::Error::Api(problem) = &**error else {
        return None;
    };
    let until = problem.detail.as_deref().and_then(|detail| {
        let at = detail.to_ascii_lowercase().find("retry after ")? + "retry after ".len();
        utc_stamp(detail.get(at..at + 19)?)
    });
    let wait = until.and_then(|until| until.duration_since(now).ok());
    Some(wait.unwrap_or(Duration::from_secs(60)))
}

/// Parses `YYYY-MM-DD HH:MM:SS` as UTC.
pub(super) fn utc_stamp(stamp: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let at = time::PrimitiveDateTime::parse(stamp, format).ok()?;
    Some(at.assume_utc().into())
}

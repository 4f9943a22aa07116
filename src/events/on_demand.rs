//! [`OnDemandError`]: why a handshake was not served a certificate on
//! demand. Its own file, with no imports from the rest of on-demand
//! issuance, so that events can carry it.

use std::time::Duration;

use crate::policy::ValidationError;
use crate::source_error::SourceError;

/// Why a handshake for a name was not served a certificate on demand.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OnDemandError {
    /// The name is not a DNS name a certificate can be ordered for.
    #[error("{0:?} is not a DNS name a certificate can be ordered for")]
    InvalidName(String),
    /// The [`Decide`](crate::on_demand::Decide) hook refused the name (now, or recently).
    #[error("certificates for {0:?} are not allowed")]
    NotAllowed(String),
    /// As many names as allowed are being obtained already.
    #[error("{limit} names are waiting for their certificates already")]
    TooManyPending {
        /// [`OnDemandBuilder::max_pending_names`](crate::on_demand::OnDemandBuilder::max_pending_names).
        limit: usize,
    },
    /// As many handshakes as allowed are waiting for certificates already.
    #[error("{limit} handshakes are waiting for certificates already")]
    TooManyWaiting {
        /// [`OnDemandBuilder::max_waiting_handshakes`](crate::on_demand::OnDemandBuilder::max_waiting_handshakes).
        limit: usize,
    },
    /// The last order for the name failed; it is not ordered again yet.
    #[error("the last order for {name:?} failed; the next may start in {retry_in:?}")]
    BackingOff {
        /// The name.
        name: String,
        /// How long until an order may start.
        retry_in: Duration,
    },
    /// As many orders as allowed started in the last window.
    #[error("{limit} certificates were ordered in the last {window:?} already")]
    RateLimited {
        /// [`OnDemandBuilder::orders_per_window`](crate::on_demand::OnDemandBuilder::orders_per_window)'s count.
        limit: usize,
        /// Its window.
        window: Duration,
    },
    /// As many new names (asked of the hook, loaded or ordered) as allowed
    /// were started in the last window already.
    #[error("{limit} new names were asked for in the last {window:?} already")]
    TooManyNewNames {
        /// [`OnDemandBuilder::new_names_per_window`](crate::on_demand::OnDemandBuilder::new_names_per_window)'s count.
        limit: usize,
        /// Its window.
        window: Duration,
    },
    /// The client asked for as many new names as it may in the window.
    #[error("{client} asked for {limit} new names in the last {window:?} already")]
    ClientBudget {
        /// The client, as the listener groups it (an IPv4 address, an IPv6 /64).
        client: std::net::IpAddr,
        /// [`OnDemandBuilder::new_names_per_client`](crate::on_demand::OnDemandBuilder::new_names_per_client)'s count.
        limit: usize,
        /// Its window.
        window: Duration,
    },
    /// As many certificates as allowed were ordered for the name's
    /// registered domain in the window (a CA's limit per domain).
    #[error("{limit} certificates under {domain} were ordered in the last {window:?} already")]
    DomainBudget {
        /// The registered domain (by the public suffix list).
        domain: String,
        /// [`OnDemandBuilder::orders_per_registered_domain`](crate::on_demand::OnDemandBuilder::orders_per_registered_domain)'s count.
        limit: usize,
        /// Its window.
        window: Duration,
    },
    /// As many orders as allowed are in flight.
    #[error("{limit} orders are in flight already")]
    TooManyOrders {
        /// [`OnDemandBuilder::max_orders_in_flight`](crate::on_demand::OnDemandBuilder::max_orders_in_flight).
        limit: usize,
    },
    /// The certificate could not be loaded or ordered.
    #[error("no certificate could be obtained for {name:?}: {error}")]
    Failed {
        /// The name.
        name: String,
        /// Why.
        #[source]
        error: SourceError,
    },
    /// The policy refused the certificate obtained.
    #[error("the certificate obtained for {name:?} was refused: {error}")]
    Refused {
        /// The name.
        name: String,
        /// Why.
        #[source]
        error: Box<ValidationError>,
    },
    /// Obtaining the certificate stopped before it ended: a panic (in the
    /// hook, say), or the runtime stopping.
    #[error("obtaining a certificate for {name:?} stopped before it ended")]
    Aborted {
        /// The name.
        name: String,
    },
    /// The certificate did not arrive within [`OnDemandBuilder::wait`](crate::on_demand::OnDemandBuilder::wait)
    /// (it may still: the order goes on).
    #[error("no certificate for {name:?} after {waited:?}")]
    TimedOut {
        /// The name.
        name: String,
        /// How long the handshake waited.
        waited: Duration,
    },
}

impl OnDemandError {
    /// A stable code for the reason, as metrics and health label it:
    /// `invalid_name`, `not_allowed`, `too_many_pending`, `too_many_waiting`,
    /// `backing_off`, `too_many_new_names`, `client_budget`,
    /// `domain_budget`, `rate_limited`, `too_many_orders`, `failed`,
    /// `refused`, `aborted` or `timed_out`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidName(_) => "invalid_name",
            Self::NotAllowed(_) => "not_allowed",
            Self::TooManyPending { .. } => "too_many_pending",
            Self::TooManyWaiting { .. } => "too_many_waiting",
            Self::BackingOff { .. } => "backing_off",
            Self::TooManyNewNames { .. } => "too_many_new_names",
            Self::ClientBudget { .. } => "client_budget",
            Self::DomainBudget { .. } => "domain_budget",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooManyOrders { .. } => "too_many_orders",
            Self::Failed { .. } => "failed",
            Self::Refused { .. } => "refused",
            Self::Aborted { .. } => "aborted",
            Self::TimedOut { .. } => "timed_out",
        }
    }
}

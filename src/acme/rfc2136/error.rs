//! [`Rfc2136Error`]: what went wrong publishing or removing a record, naming
//! the server, the zone and the DNS answer.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A DNS response code (RFC 1035 §4.1.1, RFC 2136 §2.2).
///
/// ```
/// use certrotate::acme::rfc2136::Rcode;
/// assert_eq!(Rcode::NOTAUTH.to_string(), "NOTAUTH");
/// assert_eq!(Rcode::from_code(5), Rcode::REFUSED);
/// assert_eq!(Rcode::from_code(4000).to_string(), "RCODE4000");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rcode(u16);

impl Rcode {
    /// The server could not read the request.
    pub const FORMERR: Self = Self(1);
    /// The server failed.
    pub const SERVFAIL: Self = Self(2);
    /// The name does not exist.
    pub const NXDOMAIN: Self = Self(3);
    /// The server does not support the operation.
    pub const NOTIMP: Self = Self(4);
    /// Refused by policy (an update policy that does not grant it, a zone
    /// the server does not serve).
    pub const REFUSED: Self = Self(5);
    /// The server is not authoritative for the zone, or the TSIG signature
    /// was not accepted (RFC 8945 §5.2).
    pub const NOTAUTH: Self = Self(9);
    /// The name is not in the zone.
    pub const NOTZONE: Self = Self(10);

    /// The code with this number.
    pub fn from_code(code: u16) -> Self {
        Self(code)
    }

    /// Its number.
    pub fn code(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Rcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0 => "NOERROR",
            1 => "FORMERR",
            2 => "SERVFAIL",
            3 => "NXDOMAIN",
            4 => "NOTIMP",
            5 => "REFUSED",
            6 => "YXDOMAIN",
            7 => "YXRRSET",
            8 => "NXRRSET",
            9 => "NOTAUTH",
            10 => "NOTZONE",
            code => return write!(f, "RCODE{code}"),
        };
        f.write_str(name)
    }
}

/// Why the server did not accept the TSIG signature (the error field of
/// its TSIG record, RFC 8945 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TsigRefusal {
    /// BADSIG: the MAC does not verify; the secret is not the server's.
    BadSig,
    /// BADKEY: the server knows no key of that name and algorithm.
    BadKey,
    /// BADTIME: the clocks differ by more than the allowed 300 s.
    BadTime,
    /// Another TSIG error code.
    Other(u16),
}

impl TsigRefusal {
    pub(super) fn from_code(code: u16) -> Self {
        match code {
            16 => Self::BadSig,
            17 => Self::BadKey,
            18 => Self::BadTime,
            code => Self::Other(code),
        }
    }
}

impl fmt::Display for TsigRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadSig => f.write_str("BADSIG: the key's secret is not the one the server has"),
            Self::BadKey => {
                f.write_str("BADKEY: the server knows no key of that name and algorithm")
            }
            Self::BadTime => {
                f.write_str("BADTIME: this host's clock and the server's differ by more than 300 s")
            }
            Self::Other(code) => write!(f, "TSIG error {code}"),
        }
    }
}

/// What went wrong publishing or removing a DNS-01 record by RFC 2136.
/// An update the server refused, or that got no answer, wrote nothing
/// that the solver does not remove again.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Rfc2136Error {
    /// The server answered the update with an error: `NOTAUTH` with a
    /// TSIG refusal for a wrong key, `REFUSED` for an update policy that
    /// does not grant it.
    #[error("the DNS server {server} refused the update of zone {zone}: {rcode}{}", tsig.map(|t| format!(" ({t})")).unwrap_or_default())]
    Refused {
        /// The update server.
        server: SocketAddr,
        /// The zone updated.
        zone: String,
        /// Its answer.
        rcode: Rcode,
        /// Why it refused the signature, if that is why.
        tsig: Option<TsigRefusal>,
    },
    /// The server did not answer within the timeout, or could not be
    /// reached.
    #[error("the DNS server {server} did not answer the update of zone {zone}: {reason}")]
    NoAnswer {
        /// The update server.
        server: SocketAddr,
        /// The zone updated.
        zone: String,
        /// What happened instead.
        reason: String,
    },
    /// The server answered, but its answer cannot be trusted: not signed
    /// by the key, not an answer to the request, or not DNS.
    #[error("the DNS server {server} gave an untrustworthy answer to the update of zone {zone}: {reason}")]
    BadAnswer {
        /// The update server.
        server: SocketAddr,
        /// The zone updated.
        zone: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Where the record goes could not be found: the CNAME chain, the
    /// zone (from its SOA) or its name servers.
    #[error("cannot find where {name} goes in DNS: {reason}")]
    Lookup {
        /// The record's name (`_acme-challenge.…`).
        name: String,
        /// Why.
        reason: String,
    },
    /// The record was written but not every authoritative server of its
    /// zone served it within the wait (it was removed again).
    #[error("{name} did not reach every name server of zone {zone} within {}: still missing on {}", crate::clock::human(*waited), lagging.join(", "))]
    NotPropagated {
        /// The record's name.
        name: String,
        /// Its zone.
        zone: String,
        /// How long the solver waited.
        waited: Duration,
        /// The servers that did not serve it (`ns2.example.com (192.0.2.2:53)`).
        lagging: Vec<String>,
    },
}

impl Rfc2136Error {
    /// The zone the error is about, where one was found.
    pub fn zone(&self) -> Option<&str> {
        match self {
            Self::Refused { zone, .. }
            | Self::NoAnswer { zone, .. }
            | Self::BadAnswer { zone, .. }
            | Self::NotPropagated { zone, .. } => Some(zone),
            Self::Lookup { .. } => None,
        }
    }

    /// The update server the error is about, if it is one of its answers.
    pub fn server(&self) -> Option<SocketAddr> {
        match self {
            Self::Refused { server, .. }
            | Self::NoAnswer { server, .. }
            | Self::BadAnswer { server, .. } => Some(*server),
            Self::Lookup { .. } | Self::NotPropagated { .. } => None,
        }
    }

    /// The server's response code, if it answered with an error.
    pub fn rcode(&self) -> Option<Rcode> {
        match self {
            Self::Refused { rcode, .. } => Some(*rcode),
            _ => None,
        }
    }
}

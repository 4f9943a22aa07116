//! [`Policy`]: every check a candidate certificate passes before it is served.
//!
//! The checks run in the rotation task, never on a handshake, in this order:
//! the key is strong enough, loads, and matches the leaf; the leaf is valid now
//! and for at least [`min_remaining`](PolicyBuilder::min_remaining) more; it
//! covers every configured server name; it is not a CA and may authenticate
//! servers; the chain is in order and, when trust roots are
//! configured, verifies to them; it is not older than the certificate serving;
//! and last, a real TLS handshake in memory between a rustls client and a
//! server built from the candidate succeeds for every configured name.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

mod probe;
mod refusal;

pub use refusal::{Refusal, ValidationError};

use crate::bundle::{parse_cert, CertBundle, CertInfo, KeyAlgorithm};
use crate::clock::{self};
use crate::mark::HighWaterMark;

/// The checks a candidate certificate must pass before it can be served.
///
/// Build one with [`Policy::builder`]; [`Policy::default()`] checks the
/// certificate on its own merits (key, dates, its own names, strength, chain,
/// probe handshake) without requiring particular server names.
///
/// # Example
///
/// ```
/// # let ck = rcgen::generate_simple_self_signed(vec!["api.example.com".into()]).unwrap();
/// # let (cert_pem, key_pem) = (ck.cert.pem(), ck.signing_key.serialize_pem());
/// use std::time::{Duration, SystemTime};
/// use certrotate::{CertBundle, Policy};
///
/// let policy = Policy::builder()
///     .server_name("api.example.com")
///     .min_remaining(Duration::from_secs(3600))
///     .build()?;
/// let bundle = CertBundle::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
/// let valid = policy.validate(&bundle, SystemTime::now())?;
/// assert_eq!(valid.info().dns_names, ["api.example.com"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Policy {
    usage: Usage,
    names: Vec<Name>,
    min_remaining: Duration,
    min_rsa_bits: usize,
    max_names: usize,
    roots: Option<Arc<RootCertStore>>,
    /// Built once from `roots`, for the chain check.
    verifier: Option<Arc<WebPkiServerVerifier>>,
    /// Built once from `roots`, for the chain check of client certificates.
    client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("usage", &self.usage)
            .field("names", &self.names)
            .field("min_remaining", &self.min_remaining)
            .field("min_rsa_bits", &self.min_rsa_bits)
            .field("roots", &self.roots.as_ref().map(|r| r.len()))
            .finish_non_exhaustive()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            usage: Usage::Server,
            names: Vec::new(),
            min_remaining: Duration::ZERO,
            min_rsa_bits: 2048,
            max_names: DEFAULT_MAX_NAMES,
            roots: None,
            verifier: None,
            client_verifier: None,
            provider: crate::default_provider(),
        }
    }
}

/// What a certificate is for: the extended key usage it must allow and the
/// checks it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Usage {
    /// A TLS server certificate (the default): serverAuth, names, chain and
    /// trust per name, and a probe handshake.
    #[default]
    Server,
    /// A TLS client certificate (mTLS): clientAuth, and the chain verified
    /// as a client certificate against the trust roots, if configured. There
    /// is no probe handshake; the key is checked against the certificate.
    Client,
    /// Both, as service certificates often are.
    ServerAndClient,
}

impl Usage {
    fn server(self) -> bool {
        matches!(self, Self::Server | Self::ServerAndClient)
    }

    fn client(self) -> bool {
        matches!(self, Self::Client | Self::ServerAndClient)
    }
}

/// A server name the certificate must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(n) => f.write_str(n),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl Name {
    fn covered_by(&self, info: &CertInfo) -> bool {
        match self {
            Self::Ip(ip) => info.ip_addresses.contains(ip),
            Self::Dns(name) => info.dns_names.iter().any(|san| dns_matches(san, name)),
        }
    }

    /// The name a probe client asks for: a wildcard becomes one concrete name under it.
    fn probe_name(&self) -> Option<ServerName<'static>> {
        match self {
            Self::Ip(ip) => Some(ServerName::IpAddress((*ip).into())),
            Self::Dns(name) => {
                let concrete = match name.strip_prefix("*.") {
                    Some(parent) => format!("certrotate-probe.{parent}"),
                    None => name.clone(),
                };
                ServerName::try_from(concrete).ok()
            }
        }
    }
}

/// RFC 6125 matching: exact, or a `*.` wildcard standing for exactly one
/// leftmost label. A configured wildcard is covered only by the same wildcard.
pub(crate) fn dns_matches(san: &str, name: &str) -> bool {
    if san == name {
        return true;
    }
    match (san.strip_prefix("*."), name.split_once('.')) {
        (Some(parent), Some((label, rest))) => {
            !label.is_empty() && label != "*" && rest == parent && parent.contains('.')
        }
        _ => false,
    }
}

/// Builds a [`Policy`].
///
/// ```
/// use std::time::Duration;
/// use certrotate::Policy;
///
/// let policy = Policy::builder()
///     .server_name("api.example.com")
///     .server_name("*.internal.example.com")
///     .server_name("10.0.0.7")
///     .min_remaining(Duration::from_secs(24 * 3600))
///     .build()?;
/// # Ok::<(), certrotate::policy::PolicyConfigError>(())
/// ```
#[derive(Debug, Default)]
#[must_use]
pub struct PolicyBuilder {
    usage: Usage,
    names: Vec<String>,
    min_remaining: Duration,
    min_rsa_bits: Option<usize>,
    max_names: Option<usize>,
    roots: Option<Arc<RootCertStore>>,
    provider: Option<Arc<CryptoProvider>>,
}

/// The most subject alternative names a certificate may carry by default:
/// public CAs issue at most 100 (Let's Encrypt) to a few hundred.
const DEFAULT_MAX_NAMES: usize = 1000;

impl PolicyBuilder {
    /// What the certificate is for (default [`Usage::Server`]).
    pub fn usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// Requires the certificate to cover this name: a DNS name, a `*.`
    /// wildcard, or an IP address. Repeat for several names.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.names.push(name.into());
        self
    }

    /// Requires the certificate to stay valid for at least this long after it
    /// is installed (default: zero, only "valid now").
    pub fn min_remaining(mut self, min: Duration) -> Self {
        self.min_remaining = min;
        self
    }

    /// Requires the chain to verify to these trust roots for every configured
    /// name. Without roots, the probe handshake trusts the chain's own top
    /// certificate.
    pub fn trust_roots(mut self, roots: impl Into<Arc<RootCertStore>>) -> Self {
        self.roots = Some(roots.into());
        self
    }

    /// The smallest RSA modulus accepted, in bits (default 2048; lower values
    /// are raised to 2048).
    pub fn min_rsa_bits(mut self, bits: usize) -> Self {
        self.min_rsa_bits = Some(bits);
        self
    }

    /// The most subject alternative names (DNS, IP, URI) a certificate may
    /// carry (default 1000; public CAs issue at most a few hundred). Each
    /// name becomes an SNI entry, so a certificate from a compromised or
    /// careless issuer with a hundred thousand names is refused with
    /// [`Refusal::TooManyNames`] instead of swelling every lookup table.
    pub fn max_names(mut self, max: usize) -> Self {
        self.max_names = Some(max);
        self
    }

    /// The rustls crypto provider used to load keys and run the probe
    /// (default: the process default, else the one chosen by crate features).
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Checks the configuration and builds the policy.
    pub fn build(self) -> Result<Policy, PolicyConfigError> {
        let names = self
            .names
            .into_iter()
            .map(|raw| {
                let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
                if let Ok(ip) = name.parse::<IpAddr>() {
                    return Ok(Name::Ip(ip));
                }
                let plain = name.strip_prefix("*.").unwrap_or(&name);
                match ServerName::try_from(plain) {
                    Ok(ServerName::DnsName(_)) if !plain.contains('*') => Ok(Name::Dns(name)),
                    _ => Err(PolicyConfigError::InvalidServerName(raw)),
                }
            })
            .collect::<Result<_, _>>()?;
        let provider = self.provider.unwrap_or_else(crate::default_provider);
        let unusable = |e: rustls::server::VerifierBuilderError| {
            PolicyConfigError::UnusableTrustRoots(e.to_string())
        };
        let (verifier, client_verifier) = match &self.roots {
            Some(roots) => (
                Some(
                    WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                        .build()
                        .map_err(unusable)?,
                ),
                Some(
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                        .build()
                        .map_err(unusable)?,
                ),
            ),
            None => (None, None),
        };
        Ok(Policy {
            usage: self.usage,
            client_verifier,
            names,
            min_remaining: self.min_remaining,
            min_rsa_bits: self.min_rsa_bits.unwrap_or(2048).max(2048),
            max_names: self.max_names.unwrap_or(DEFAULT_MAX_NAMES),
            roots: self.roots,
            verifier,
            provider,
        })
    }
}

/// A [`Policy`] could not be built from its configuration.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyConfigError {
    /// A configured server name is neither a DNS name, a `*.` wildcard nor an IP address.
    #[error(
        "{0:?} is not a valid server name (expected a DNS name, a *. wildcard or an IP address)"
    )]
    InvalidServerName(String),
    /// The configured trust roots cannot verify anything (for example, none were given).
    #[error("the configured trust roots cannot be used: {0}")]
    UnusableTrustRoots(String),
}

/// A certificate that passed a [`Policy`], ready to serve.
///
/// Only [`Policy::validate`] makes one, so the store can hold nothing else.
#[derive(Clone)]
pub struct ValidatedCert {
    pub(crate) info: Arc<CertInfo>,
    pub(crate) key: Arc<CertifiedKey>,
}

impl ValidatedCert {
    /// The validated certificate's metadata.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// The rustls key and chain that handshakes will use.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }
}

impl fmt::Debug for ValidatedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidatedCert")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Starts building a policy.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// A `ServerConfig` with this policy's crypto provider, safe default
    /// protocol versions, certificates from `resolver`, and client
    /// certificates required and verified against `clients` (sessions
    /// partitioned by its generation), or no client auth. ALPN offers `h2`
    /// and `http/1.1`, and ACME's `acme-tls/1` if `tls_alpn_01`.
    pub(crate) fn server_config(
        &self,
        resolver: Arc<crate::resolver::RotatingResolver>,
        clients: Option<&crate::mtls::TrustStore>,
        tls_alpn_01: bool,
    ) -> Result<rustls::ServerConfig, rustls::Error> {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = match clients {
            Some(trust) => {
                let mut config = builder
                    .with_client_cert_verifier(trust.client_verifier())
                    .with_cert_resolver(resolver);
                trust.partition_sessions(&mut config);
                config
            }
            None => builder.with_no_client_auth().with_cert_resolver(resolver),
        };
        config.alpn_protocols = crate::resolver::server_alpn(tls_alpn_01);
        Ok(config)
    }

    /// This policy, requiring the certificate to cover `name` (a DNS name
    /// checked already) instead of the names it was built with.
    #[cfg(feature = "acme")]
    pub(crate) fn for_dns_name(&self, name: &str) -> Policy {
        Policy {
            names: vec![Name::Dns(name.to_owned())],
            ..self.clone()
        }
    }

    /// The crypto provider this policy loads keys with.
    pub fn crypto_provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// Runs every check on `candidate` as of `now`, with nothing serving yet.
    pub fn validate(
        &self,
        candidate: &CertBundle,
        now: SystemTime,
    ) -> Result<ValidatedCert, ValidationError> {
        self.validate_replacing(candidate, None, now)
    }

    /// Runs every check on `candidate` as the replacement of `serving`: on top
    /// of [`validate`](Self::validate), a candidate that started being valid
    /// before `serving` did is refused as a replay of an older certificate.
    /// Pass `None` to allow it explicitly.
    pub fn validate_replacing(
        &self,
        candidate: &CertBundle,
        serving: Option<&CertInfo>,
        now: SystemTime,
    ) -> Result<ValidatedCert, ValidationError> {
        let newest = serving.map(HighWaterMark::of);
        self.validate_newer_than(candidate, newest.as_ref(), now)
    }

    /// [`validate_replacing`](Self::validate_replacing) against the newest
    /// certificate served so far, whether it serves now or is only on record.
    pub(crate) fn validate_newer_than(
        &self,
        candidate: &CertBundle,
        newest: Option<&HighWaterMark>,
        now: SystemTime,
    ) -> Result<ValidatedCert, ValidationError> {
        let info = candidate.info_arc();
        let refuse = |reason| ValidationError {
            cert: info.clone(),
            reason,
        };

        // Not absurdly many names (before anything else parses them again).
        let count = info.dns_names.len() + info.ip_addresses.len() + info.uris.len();
        if count > self.max_names {
            return Err(refuse(Refusal::TooManyNames {
                count,
                limit: self.max_names,
            }));
        }

        // The key is strong enough (checked on the certificate first, since
        // providers refuse to load some weak keys at all), loads, and belongs
        // to the leaf.
        self.check_key_strength(&info.key).map_err(refuse)?;
        let signing_key = self
            .provider
            .key_provider
            .load_private_key(candidate.key().clone_key())
            .map_err(|e| refuse(Refusal::KeyUnusable(e)))?;
        let key = CertifiedKey::new(candidate.chain().to_vec(), signing_key);
        match key.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(refuse(Refusal::KeyMismatch)),
            Err(e) => return Err(refuse(Refusal::Unreadable(e))),
        }

        // Dates.
        if now < info.not_before {
            return Err(refuse(Refusal::NotYetValid {
                not_before: info.not_before,
            }));
        }
        let remaining = match info.not_after.duration_since(now) {
            Ok(left) if left > Duration::ZERO => left,
            _ => {
                return Err(refuse(Refusal::Expired {
                    not_after: info.not_after,
                }))
            }
        };
        if remaining < self.min_remaining {
            return Err(refuse(Refusal::ExpiresTooSoon {
                remaining,
                min_remaining: self.min_remaining,
            }));
        }

        // Names (a client certificate may name itself by URI only).
        let no_uri = !self.usage.client() || info.uris.is_empty();
        if info.dns_names.is_empty() && info.ip_addresses.is_empty() && no_uri {
            return Err(refuse(Refusal::NoSubjectAltNames));
        }
        if let Some(name) = self.names.iter().find(|n| !n.covered_by(info)) {
            return Err(refuse(Refusal::NameNotCovered {
                name: name.to_string(),
            }));
        }

        // Usage and strength.
        if info.is_ca {
            return Err(refuse(Refusal::CaCertificate));
        }
        if self.usage.server() && info.server_auth == Some(false) {
            return Err(refuse(Refusal::NotForServerAuth));
        }
        if self.usage.client() && info.client_auth == Some(false) {
            return Err(refuse(Refusal::NotForClientAuth));
        }

        // Chain order, then trust.
        check_chain_order(candidate.chain()).map_err(refuse)?;
        let (leaf, intermediates) = candidate
            .chain()
            .split_first()
            .expect("parsed chain is not empty");
        if let Some(verifier) = self
            .client_verifier
            .as_ref()
            .filter(|_| self.usage.client())
        {
            verifier
                .verify_client_cert(leaf, intermediates, unix_time(now))
                .map_err(|e| {
                    refuse(Refusal::Untrusted {
                        name: "client authentication".into(),
                        error: e,
                    })
                })?;
        }
        let probe_names = if self.usage.server() {
            self.probe_names(info)
        } else {
            Vec::new()
        };
        if let Some(verifier) = self.verifier.as_ref().filter(|_| self.usage.server()) {
            for (label, name) in &probe_names {
                verifier
                    .verify_server_cert(leaf, intermediates, name, &[], unix_time(now))
                    .map_err(|e| {
                        refuse(Refusal::Untrusted {
                            name: label.clone(),
                            error: e,
                        })
                    })?;
            }
        }

        // Replay.
        if let Some(newest) = newest {
            if info.not_before < newest.not_before {
                return Err(refuse(Refusal::OlderThanServing {
                    serving_serial: newest.serial.clone(),
                    serving_not_before: newest.not_before,
                }));
            }
        }

        // Last, a real handshake.
        let key = Arc::new(key);
        for (label, name) in probe_names {
            self.probe(candidate, &key, name, now).map_err(|reason| {
                refuse(Refusal::ProbeFailed {
                    name: label,
                    reason,
                })
            })?;
        }
        Ok(ValidatedCert {
            info: info.clone(),
            key,
        })
    }

    fn check_key_strength(&self, key: &KeyAlgorithm) -> Result<(), Refusal> {
        match key {
            KeyAlgorithm::Rsa { bits } if *bits < self.min_rsa_bits => Err(Refusal::WeakKey {
                key: key.clone(),
                reason: format!("RSA keys must have at least {} bits", self.min_rsa_bits),
            }),
            KeyAlgorithm::Rsa { .. }
            | KeyAlgorithm::EcdsaP256
            | KeyAlgorithm::EcdsaP384
            | KeyAlgorithm::Ed25519 => Ok(()),
            _ => Err(Refusal::WeakKey {
                key: key.clone(),
                reason: "only RSA, ECDSA P-256/P-384 and Ed25519 keys are accepted".into(),
            }),
        }
    }

    /// The names to verify and probe: the configured ones, or else the
    /// certificate's first own name.
    fn probe_names(&self, info: &CertInfo) -> Vec<(String, ServerName<'static>)> {
        let own;
        let names = if self.names.is_empty() {
            own = info
                .dns_names
                .first()
                .map(|n| Name::Dns(n.clone()))
                .or_else(|| info.ip_addresses.first().map(|ip| Name::Ip(*ip)));
            own.as_slice()
        } else {
            &self.names
        };
        names
            .iter()
            .filter_map(|n| Some((n.to_string(), n.probe_name()?)))
            .collect()
    }
}

pub(super) fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(clock::unix_seconds(t).max(0) as u64))
}

/// Each certificate must be issued by the next one.
fn check_chain_order(chain: &[CertificateDer<'static>]) -> Result<(), Refusal> {
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(i, der)| parse_cert(der, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Refusal::ChainOutOfOrder {
            index: 0,
            reason: e.to_string(),
        })?;
    for (index, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            return Err(Refusal::ChainOutOfOrder {
                index,
                reason: format!(
                    "it was issued by \"{}\" but the next certificate is \"{}\"",
                    pair[0].issuer(),
                    pair[1].subject()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::dns_matches;

    #[test]
    fn wildcards_match_one_label() {
        assert!(dns_matches("api.example.com", "api.example.com"));
        assert!(dns_matches("*.example.com", "api.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.com", "example.com"));
        assert!(dns_matches("*.example.com", "*.example.com"));
        assert!(!dns_matches("*.example.com", "*.other.com"));
    }
}

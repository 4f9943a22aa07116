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

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme,
};

use crate::bundle::{parse_cert, CertBundle, CertInfo, KeyAlgorithm};
use crate::clock::{self, human};
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
/// # Ok::<(), certrotate::PolicyConfigError>(())
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
    /// partitioned by its generation), or no client auth.
    pub(crate) fn server_config(
        &self,
        resolver: Arc<crate::RotatingResolver>,
        clients: Option<&crate::TrustStore>,
    ) -> Result<rustls::ServerConfig, rustls::Error> {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?;
        Ok(match clients {
            Some(trust) => {
                let mut config = builder
                    .with_client_cert_verifier(trust.client_verifier())
                    .with_cert_resolver(resolver);
                trust.partition_sessions(&mut config);
                config
            }
            None => builder.with_no_client_auth().with_cert_resolver(resolver),
        })
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
        let newest = serving.map(|s| HighWaterMark {
            not_before: s.not_before,
            serial: s.serial.clone(),
        });
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
            Err(e) => return Err(refuse(Refusal::Unreadable(e.to_string()))),
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

    /// An in-memory TLS handshake between a rustls client and a server that
    /// serves `key`, as a real client would see it.
    fn probe(
        &self,
        candidate: &CertBundle,
        key: &Arc<CertifiedKey>,
        name: ServerName<'static>,
        now: SystemTime,
    ) -> Result<(), String> {
        let provider = self.provider.clone();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(key.clone())));
        let client = ClientConfig::builder_with_details(provider.clone(), Arc::new(FixedTime(now)))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let chain = candidate.chain();
        let top = chain.last().expect("parsed chain is not empty");
        let client = match (&self.roots, chain.len() > 1) {
            (Some(roots), _) => client.with_root_certificates(roots.clone()),
            (None, true) => {
                let mut roots = RootCertStore::empty();
                roots.add(top.clone()).map_err(|e| {
                    format!("the chain's top certificate cannot serve as a trust anchor: {e}")
                })?;
                client.with_root_certificates(roots)
            }
            // A lone leaf (self-signed or from an issuer we were not given):
            // trust exactly that leaf, and still verify the handshake
            // signature made with its key.
            (None, false) => client
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedLeaf {
                    leaf: chain[0].clone(),
                    provider: provider.clone(),
                })),
        }
        .with_no_client_auth();

        let client = ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
        let server = ServerConnection::new(Arc::new(server)).map_err(|e| e.to_string())?;
        let (mut client, mut server) = (Connection::Client(client), Connection::Server(server));
        let mut buf = Vec::with_capacity(16 * 1024);
        while client.is_handshaking() || server.is_handshaking() {
            let sent = pump(&mut client, &mut server, &mut buf)
                .map_err(|e| format!("server side: {e}"))?;
            let answered = pump(&mut server, &mut client, &mut buf)
                .map_err(|e| format!("client rejected the server: {e}"))?;
            if !sent && !answered {
                return Err("the handshake stalled".into());
            }
        }
        Ok(())
    }
}

/// Moves every pending TLS byte from `from` to `to` and lets `to` process
/// them. Says whether anything moved; errors are `to`'s.
fn pump(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) -> Result<bool, String> {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).map_err(|e| e.to_string())?;
    }
    let mut rest = buf.as_slice();
    while !rest.is_empty() {
        to.read_tls(&mut rest).map_err(|e| e.to_string())?;
        to.process_new_packets().map_err(|e| e.to_string())?;
    }
    Ok(!buf.is_empty())
}

fn unix_time(t: SystemTime) -> UnixTime {
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

/// Serves one key, whatever the client asks: the probe's server side.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The probe client's clock: the policy's `now`.
#[derive(Debug)]
struct FixedTime(SystemTime);

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(unix_time(self.0))
    }
}

/// Trusts exactly one leaf certificate, and checks handshake signatures against it.
#[derive(Debug)]
struct PinnedLeaf {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server sent a different certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A candidate certificate was refused by the [`Policy`]; the certificate
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
    cert: Arc<CertInfo>,
    reason: Refusal,
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

/// Which [`Policy`] check refused a certificate.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The private key could not be loaded by the crypto provider.
    #[error("its private key cannot be used: {0}")]
    KeyUnusable(#[source] rustls::Error),
    /// The leaf parses as X.509 but rustls's verifier (webpki) cannot read
    /// it, for example a subject alternative name extension over 64 KiB.
    #[error("rustls cannot read the certificate: {0}")]
    Unreadable(String),
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
        /// The policy's [`max_names`](PolicyBuilder::max_names).
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
    /// (for a [`Usage::Client`] policy).
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
    /// assert_eq!(certrotate::Refusal::KeyMismatch.code(), "key_mismatch");
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

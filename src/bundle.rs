//! [`CertBundle`]: a certificate chain, its private key, and what the leaf says.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use zeroize::Zeroize;

use crate::clock;

/// A certificate chain (leaf first) with the leaf's private key and parsed
/// metadata.
///
/// A bundle is only *parsed*: nothing about it has been checked yet. It goes
/// live only after a [`Policy`](crate::Policy) accepted it. The private key
/// bytes are zeroized when the bundle is dropped and never appear in `Debug`
/// output or logs.
///
/// # Example
///
/// ```
/// # let ck = rcgen::generate_simple_self_signed(vec!["api.example.com".into()]).unwrap();
/// # let (cert_pem, key_pem) = (ck.cert.pem(), ck.signing_key.serialize_pem());
/// use certrotate::CertBundle;
///
/// let bundle = CertBundle::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
/// assert_eq!(bundle.info().dns_names, ["api.example.com"]);
/// # Ok::<(), certrotate::bundle::BundleError>(())
/// ```
pub struct CertBundle {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    info: Arc<CertInfo>,
}

impl CertBundle {
    /// Parses a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, BundleError> {
        let chain = read_pem(chain_pem, "certificate PEM")?;
        let key = read_pem(key_pem, "private key PEM")?;
        if chain.certs.is_empty() && !chain.keys.is_empty() && !key.certs.is_empty() {
            return Err(BundleError::Swapped);
        }
        if !key.certs.is_empty() && key.keys.is_empty() {
            return Err(BundleError::Swapped);
        }
        Self::from_parts(chain.certs, one_key(key.keys, "private key PEM")?)
    }

    /// Parses one PEM document holding the chain and the private key, in any
    /// order (the layout of HAProxy-style combined files).
    pub fn from_combined_pem(pem: &[u8]) -> Result<Self, BundleError> {
        let all = read_pem(pem, "combined PEM")?;
        Self::from_parts(all.certs, one_key(all.keys, "combined PEM")?)
    }

    /// Builds a bundle from DER: the chain (leaf first) and the private key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, BundleError> {
        Self::from_parts(chain, key)
    }

    /// Reads and parses a PEM chain file and a PEM key file.
    ///
    /// Each must be a regular file of at most 1 MiB (a FIFO or device is
    /// refused without blocking). Errors name the file that could not be read. The resulting bundle's
    /// [`origin`](CertInfo::origin) is the certificate file's path.
    pub fn from_pem_files(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, BundleError> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        let read = |path: &Path| {
            crate::read::small(path).map_err(|source| BundleError::Read {
                path: path.display().to_string(),
                source: Arc::new(source),
            })
        };
        let chain = read(cert_path)?;
        let mut key = read(key_path)?;
        let bundle = Self::from_pem(&chain, &key);
        key.zeroize();
        Ok(bundle?.with_origin(format!("file {}", cert_path.display())))
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, BundleError> {
        let info = CertInfo::parse(&chain)?;
        Ok(Self {
            chain,
            key,
            info: Arc::new(info),
        })
    }

    /// Records where this bundle came from (`"file /etc/tls/tls.crt"`,
    /// `"acme order 42"`), so that errors and events can name it.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.info).origin = origin.into();
        self
    }

    /// The parsed metadata of the leaf certificate and its chain.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key of the leaf.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// Whether the private key is known not to belong to the leaf (a key
    /// the default provider cannot load is not known to mismatch: the policy
    /// says what is wrong with it).
    #[cfg(any(feature = "file", feature = "ca"))]
    pub(crate) fn key_mismatches(&self) -> bool {
        self.key_check().is_some_and(|checked| {
            matches!(
                checked,
                Err(rustls::Error::InconsistentKeys(
                    rustls::InconsistentKeys::KeyMismatch
                ))
            )
        })
    }

    /// Whether the private key is known to belong to the leaf: it loads and
    /// is not a mismatch.
    pub(crate) fn key_fits(&self) -> bool {
        self.key_check().is_some_and(|checked| {
            !matches!(
                checked,
                Err(rustls::Error::InconsistentKeys(
                    rustls::InconsistentKeys::KeyMismatch
                ))
            )
        })
    }

    /// The provider's verdict on the pair, if it can load the key.
    fn key_check(&self) -> Option<Result<(), rustls::Error>> {
        let key = crate::default_provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .ok()?;
        Some(rustls::sign::CertifiedKey::new(self.chain.clone(), key).keys_match())
    }

    pub(crate) fn info_arc(&self) -> &Arc<CertInfo> {
        &self.info
    }
}

/// Writing bundles out (feature `ca`).
#[cfg(feature = "ca")]
impl CertBundle {
    /// The chain and the private key as PEM. The key's string is zeroized
    /// when dropped.
    ///
    /// ```
    /// # let ck = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
    /// # let bundle = certrotate::CertBundle::from_pem(ck.cert.pem().as_bytes(), ck.signing_key.serialize_pem().as_bytes()).unwrap();
    /// let (chain, key) = bundle.to_pem();
    /// let again = certrotate::CertBundle::from_pem(chain.as_bytes(), key.as_bytes())?;
    /// assert_eq!(again.info().fingerprint_sha256, bundle.info().fingerprint_sha256);
    /// # Ok::<(), certrotate::bundle::BundleError>(())
    /// ```
    pub fn to_pem(&self) -> (String, zeroize::Zeroizing<String>) {
        let chain = self
            .chain
            .iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())))
            .collect();
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        let mut der = self.key.secret_der().to_vec();
        let key = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new(label, der.clone())));
        der.zeroize();
        (chain, key)
    }

    /// Writes the chain and the key to PEM files, each atomically (a
    /// temporary file flushed to disk, then renamed): the key first, with
    /// mode 0600 from its creation, then the chain (0644). A reader never
    /// sees half a file; a reader watching both may see the new key with the
    /// old chain for a moment, which a [`FileSource`](crate::FileSource)
    /// waits out.
    ///
    /// ```no_run
    /// # fn demo(bundle: certrotate::CertBundle) -> std::io::Result<()> {
    /// bundle.write_pem_files("/etc/tls/tls.crt", "/etc/tls/tls.key")?;
    /// # Ok(()) }
    /// ```
    pub fn write_pem_files(
        &self,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> std::io::Result<()> {
        let (chain, key) = self.to_pem();
        crate::atomic::write(key_path.as_ref(), key.as_bytes(), 0o600)?;
        crate::atomic::write(cert_path.as_ref(), chain.as_bytes(), 0o644)
    }
}

impl Clone for CertBundle {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            info: self.info.clone(),
        }
    }
}

impl Drop for CertBundle {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl fmt::Debug for CertBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertBundle")
            .field("info", &self.info)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// What a certificate says about itself, parsed once when the bundle is
/// loaded. Serializes to JSON with RFC 3339 times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CertInfo {
    /// Serial number as colon-separated hex (`0a:1b:...`).
    pub serial: String,
    /// Subject distinguished name (`CN=api.example.com, O=Example`).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// DNS names from the subject alternative name extension, lowercased.
    pub dns_names: Vec<String>,
    /// IP addresses from the subject alternative name extension.
    pub ip_addresses: Vec<IpAddr>,
    /// Start of validity.
    #[serde(serialize_with = "crate::clock::ser_time")]
    pub not_before: SystemTime,
    /// End of validity.
    #[serde(serialize_with = "crate::clock::ser_time")]
    pub not_after: SystemTime,
    /// SHA-256 of the leaf certificate's DER, as lowercase hex.
    pub fingerprint_sha256: String,
    /// The leaf's public key algorithm and size.
    pub key: KeyAlgorithm,
    /// Whether the leaf says it is a CA (basicConstraints cA=TRUE).
    pub is_ca: bool,
    /// `None` when the leaf has no extended key usage extension; otherwise
    /// whether that extension allows TLS server authentication.
    pub server_auth: Option<bool>,
    /// Whether the extended key usage allows TLS client authentication
    /// (`None`: no EKU extension, which allows any use).
    pub client_auth: Option<bool>,
    /// URI subject alternative names (SPIFFE IDs and the like).
    pub uris: Vec<String>,
    /// The certificates after the leaf, in order: who each one is and who
    /// issued it.
    pub chain: Vec<ChainLink>,
    /// Where the bundle came from, for messages (empty when unknown).
    pub origin: String,
}

/// One certificate of the chain above the leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ChainLink {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
}

/// A public key algorithm, with the size that matters for its strength.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "algorithm", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// RSA with a modulus of `bits` bits.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// ECDSA on another curve (named by its OID).
    EcdsaOther {
        /// The curve's OID, dotted.
        curve: String,
    },
    /// Ed25519.
    Ed25519,
    /// Anything else (named by its OID).
    Other {
        /// The algorithm's OID, dotted.
        oid: String,
    },
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa { bits } => write!(f, "RSA-{bits}"),
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::EcdsaOther { curve } => write!(f, "ECDSA on curve {curve}"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Other { oid } => write!(f, "key algorithm {oid}"),
        }
    }
}

impl CertInfo {
    /// Describes one DER certificate on its own (its `chain` is empty): for
    /// tools that inspect certificates without their key.
    ///
    /// ```
    /// # let ck = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
    /// let info = certrotate::bundle::CertInfo::from_der(ck.cert.der())?;
    /// assert_eq!(info.dns_names, ["a.example"]);
    /// # Ok::<(), certrotate::bundle::BundleError>(())
    /// ```
    pub fn from_der(cert: &CertificateDer<'_>) -> Result<Self, BundleError> {
        Self::parse(&[cert.clone().into_owned()])
    }

    fn parse(chain: &[CertificateDer<'static>]) -> Result<Self, BundleError> {
        let leaf_der = chain.first().ok_or(BundleError::NoCertificate)?;
        let parsed = chain
            .iter()
            .enumerate()
            .map(|(index, der)| parse_cert(der, index))
            .collect::<Result<Vec<_>, _>>()?;
        let leaf = &parsed[0];

        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = leaf.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push(dns.to_ascii_lowercase()),
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            ip_addresses.push(ip);
                        }
                    }
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    _ => {}
                }
            }
        }
        let (server_auth, client_auth) = match leaf.extended_key_usage() {
            Ok(Some(eku)) => (
                Some(eku.value.server_auth || eku.value.any),
                Some(eku.value.client_auth || eku.value.any),
            ),
            _ => (None, None),
        };
        Ok(Self {
            serial: leaf.raw_serial_as_string(),
            subject: leaf.subject().to_string(),
            issuer: leaf.issuer().to_string(),
            dns_names,
            ip_addresses,
            not_before: clock::from_unix_seconds(leaf.validity().not_before.timestamp()),
            not_after: clock::from_unix_seconds(leaf.validity().not_after.timestamp()),
            fingerprint_sha256: crate::util::hex(&Sha256::digest(leaf_der.as_ref())),
            key: key_algorithm(leaf),
            is_ca: leaf.is_ca(),
            server_auth,
            client_auth,
            uris,
            chain: parsed[1..]
                .iter()
                .map(|c| ChainLink {
                    subject: c.subject().to_string(),
                    issuer: c.issuer().to_string(),
                })
                .collect(),
            origin: String::new(),
        })
    }

    /// How long the certificate is valid in total.
    pub fn lifetime(&self) -> std::time::Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// Names a certificate in messages: serial, subject and origin.
impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate {} (serial {}", self.subject, self.serial)?;
        if !self.origin.is_empty() {
            write!(f, ", from {}", self.origin)?;
        }
        f.write_str(")")
    }
}

pub(crate) fn parse_cert<'a>(
    der: &'a CertificateDer<'_>,
    index: usize,
) -> Result<X509Certificate<'a>, BundleError> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(BundleError::Certificate {
            index,
            reason: "trailing bytes after the certificate".into(),
        }),
        Err(e) => Err(BundleError::Certificate {
            index,
            reason: e.to_string(),
        }),
    }
}

fn key_algorithm(cert: &X509Certificate<'_>) -> KeyAlgorithm {
    use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384};
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => KeyAlgorithm::Rsa {
            bits: rsa.key_size(),
        },
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(oid) if oid == OID_EC_P256 => KeyAlgorithm::EcdsaP256,
                Some(oid) if oid == OID_NIST_EC_P384 => KeyAlgorithm::EcdsaP384,
                Some(oid) => KeyAlgorithm::EcdsaOther {
                    curve: oid.to_id_string(),
                },
                None => KeyAlgorithm::EcdsaOther {
                    curve: "unnamed".into(),
                },
            }
        }
        _ if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => {
            KeyAlgorithm::Ed25519
        }
        _ => KeyAlgorithm::Other {
            oid: spki.algorithm.algorithm.to_id_string(),
        },
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// The PEM sections of one input, sorted into certificates and keys.
#[derive(Default)]
struct PemContents {
    certs: Vec<CertificateDer<'static>>,
    keys: Vec<PrivateKeyDer<'static>>,
}

fn read_pem(pem: &[u8], what: &'static str) -> Result<PemContents, BundleError> {
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Err(BundleError::Empty { what });
    }
    let mut out = PemContents::default();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|e| BundleError::Pem {
            what,
            reason: e.to_string(),
        })?;
        match kind {
            SectionKind::Certificate => out.certs.push(der.into()),
            SectionKind::PrivateKey => out.keys.push(PrivatePkcs8KeyDer::from(der).into()),
            SectionKind::RsaPrivateKey => out.keys.push(PrivatePkcs1KeyDer::from(der).into()),
            SectionKind::EcPrivateKey => out.keys.push(PrivateSec1KeyDer::from(der).into()),
            _ => {}
        }
    }
    if out.certs.is_empty() && out.keys.is_empty() {
        return Err(BundleError::NotPem { what });
    }
    Ok(out)
}

fn one_key(
    mut keys: Vec<PrivateKeyDer<'static>>,
    what: &'static str,
) -> Result<PrivateKeyDer<'static>, BundleError> {
    match keys.len() {
        0 => Err(BundleError::NoPrivateKey { what }),
        1 => Ok(keys.remove(0)),
        n => Err(BundleError::SeveralPrivateKeys { what, count: n }),
    }
}

/// Why bytes could not be parsed into a [`CertBundle`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: Arc<std::io::Error>,
    },
    /// The input was empty (or only white space): often a file caught half-written.
    #[error("the {what} is empty")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// The input is not valid PEM.
    #[error("the {what} is not valid PEM: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What the PEM parser said.
        reason: String,
    },
    /// The input holds no PEM certificate or key at all: random bytes, DER,
    /// or some other format.
    #[error("the {what} holds no PEM certificate or private key: is it PEM at all?")]
    NotPem {
        /// Which input.
        what: &'static str,
    },
    /// No certificate was found.
    #[error("no certificate found: the chain is empty")]
    NoCertificate,
    /// No private key was found.
    #[error("no private key (PKCS#8, PKCS#1 or SEC1) found in the {what}")]
    NoPrivateKey {
        /// Which input.
        what: &'static str,
    },
    /// More than one private key was found, so which one belongs to the leaf is unclear.
    #[error("{count} private keys found in the {what}; expected exactly one")]
    SeveralPrivateKeys {
        /// Which input.
        what: &'static str,
        /// How many.
        count: usize,
    },
    /// The key input holds certificates and the certificate input holds the
    /// key: the two were given the wrong way round.
    #[error("the private key input holds a certificate, not a key: were the certificate and key swapped?")]
    Swapped,
    /// A certificate of the chain is not valid X.509 DER.
    #[error("certificate #{index} of the chain (0 is the leaf) is not valid X.509: {reason}")]
    Certificate {
        /// Position in the chain, 0 for the leaf.
        index: usize,
        /// What the X.509 parser said.
        reason: String,
    },
}

impl BundleError {
    /// A short constant naming the kind of error, for machine-readable
    /// output: the variant's name in snake case (`"not_pem"`, `"swapped"`...).
    ///
    /// ```
    /// assert_eq!(certrotate::bundle::BundleError::Swapped.code(), "swapped");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Empty { .. } => "empty",
            Self::Pem { .. } => "pem",
            Self::NotPem { .. } => "not_pem",
            Self::NoCertificate => "no_certificate",
            Self::NoPrivateKey { .. } => "no_private_key",
            Self::SeveralPrivateKeys { .. } => "several_private_keys",
            Self::Swapped => "swapped",
            Self::Certificate { .. } => "certificate",
        }
    }
}

/// A self-signed certificate for `a.example`, valid from `not_before` for
/// `lifetime`, with its key: the unit tests' certificate.
#[cfg(test)]
pub(crate) fn self_signed(
    not_before: std::time::SystemTime,
    lifetime: std::time::Duration,
) -> CertBundle {
    let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
    params.not_before = not_before.into();
    params.not_after = (not_before + lifetime).into();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    CertBundle::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
}

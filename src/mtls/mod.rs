//! Mutual TLS whose trust changes while it serves: [`TrustStore`] (the CA
//! certificates and CRLs clients and servers are checked against), the
//! verifiers that follow it, and session caches partitioned by its
//! generation so that no session outlives the trust it was verified under.

mod error;
mod sessions;
mod verifiers;

pub use error::TrustError;
use sessions::*;
use verifiers::*;

use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, NamedGroup, RootCertStore, SignatureScheme,
};
use tokio::sync::watch;

/// The CA certificates (and CRLs) that peers are verified against, swappable
/// while connections are made.
///
/// Each change is validated first (at least one usable root, every CRL
/// parses, verifiers build) and gets a new *generation*. The verifiers from
/// [`client_verifier`](Self::client_verifier) and
/// [`server_verifier`](Self::server_verifier) follow it at once, and the
/// session caches of [`partition_sessions`](Self::partition_sessions) and
/// [`client_config`](Self::client_config) are keyed by the generation: rustls
/// does not verify a peer again when it resumes a session, so a session made
/// under trust that has since changed must not be resumable.
///
/// Cloning is cheap and every clone is the same store.
///
/// # Example
///
/// ```
/// # let ca = rcgen::generate_simple_self_signed(vec!["ca.internal".into()]).unwrap();
/// # let ca_pem = ca.cert.pem();
/// use certrotate::TrustStore;
///
/// let trust = TrustStore::from_pem(ca_pem.as_bytes())?;
/// assert_eq!(trust.generation(), 1);
/// // Later: a new bundle, validated before it replaces the old one. The
/// // same bundle again changes nothing.
/// trust.replace_pem(ca_pem.as_bytes())?;
/// assert_eq!(trust.generation(), 1);
/// # Ok::<(), certrotate::mtls::TrustError>(())
/// ```
#[derive(Clone)]
pub struct TrustStore {
    inner: Arc<Inner>,
}

struct Inner {
    current: ArcSwap<Trust>,
    /// The generation each recently verified client certificate was
    /// verified under, for the session partition.
    verified: Mutex<Verified>,
    /// Serializes writers, so generations never go backwards.
    write: Mutex<()>,
    changes: watch::Sender<u64>,
    provider: Arc<CryptoProvider>,
}

/// How the CRLs of a [`TrustStore`] apply to a peer's chain.
///
/// A CRL speaks for the CA that issued it, and only for the certificates
/// that CA issued. The default, [`PerIssuer`](Self::PerIssuer), is what
/// mutual TLS deployments with several CAs (or a root and an intermediate)
/// expect: a certificate whose issuer has a CRL is checked against it, and
/// one whose issuer publishes none is accepted. With no CRL at all, nothing
/// is checked for revocation, whatever the policy.
///
/// ```
/// # let ca = rcgen::generate_simple_self_signed(vec!["ca.internal".into()]).unwrap();
/// use certrotate::TrustStore;
/// use certrotate::mtls::RevocationPolicy;
///
/// let trust = TrustStore::from_pem(ca.cert.pem().as_bytes())?;
/// // Every CA in the chain must have published a CRL, or the peer is refused.
/// trust.set_revocation_policy(RevocationPolicy::Strict)?;
/// # Ok::<(), certrotate::mtls::TrustError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RevocationPolicy {
    /// Every certificate of the chain is checked against its issuer's CRL
    /// if there is one; a certificate whose issuer has no CRL is accepted.
    #[default]
    PerIssuer,
    /// Only the peer's own certificate is checked against its issuer's CRL,
    /// if there is one (intermediates are not checked).
    EndEntityOnly,
    /// Every certificate of the chain must be covered by a CRL of its
    /// issuer: a certificate whose revocation status is unknown is refused.
    Strict,
}

/// One generation of trust, with its verifiers built.
struct Trust {
    generation: u64,
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    revocation: RevocationPolicy,
    clients: Arc<dyn ClientCertVerifier>,
    servers: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trust = self.inner.current.load();
        f.debug_struct("TrustStore")
            .field("generation", &trust.generation)
            .field("roots", &trust.roots.len())
            .field("crls", &trust.crls.len())
            .finish()
    }
}

impl TrustStore {
    /// Trusts these CA certificates, checked with the process default crypto
    /// provider (else the one of this crate's features).
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, TrustError> {
        Self::with_provider(roots, crate::default_provider())
    }

    /// Trusts the CA certificates (and CRLs, if any) of a PEM bundle.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TrustError> {
        let (roots, crls) = parse_pem(pem)?;
        let store = Self::new(roots)?;
        if !crls.is_empty() {
            store.replace(store.roots(), crls)?;
        }
        Ok(store)
    }

    /// Trusts these CA certificates, checked with `provider`.
    pub fn with_provider(
        roots: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TrustError> {
        let trust = build(&provider, 1, roots, Vec::new(), RevocationPolicy::default())?;
        Ok(Self {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(trust),
                verified: Mutex::default(),
                write: Mutex::new(()),
                changes: watch::channel(1).0,
                provider,
            }),
        })
    }

    /// Replaces the CA certificates and CRLs, after validating them. Returns
    /// the new generation (the same one if nothing changed).
    pub fn replace(
        &self,
        roots: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<u64, TrustError> {
        self.change(|current| (roots, crls, current.revocation))
    }

    /// Sets how the CRLs apply to a peer's chain (default
    /// [`RevocationPolicy::PerIssuer`]). A new policy is a new generation:
    /// sessions verified under the old one are not resumed.
    pub fn set_revocation_policy(&self, policy: RevocationPolicy) -> Result<u64, TrustError> {
        self.change(|current| (current.roots.clone(), current.crls.clone(), policy))
    }

    /// Builds the trust `next` makes of the one in force and puts it in
    /// force, unless it is the same.
    fn change(
        &self,
        next: impl FnOnce(
            &Trust,
        ) -> (
            Vec<CertificateDer<'static>>,
            Vec<CertificateRevocationListDer<'static>>,
            RevocationPolicy,
        ),
    ) -> Result<u64, TrustError> {
        let _writer = crate::sync::lock(&self.inner.write);
        let current = self.inner.current.load();
        let (roots, crls, revocation) = next(&current);
        if current.roots == roots && current.crls == crls && current.revocation == revocation {
            // The same trust: sessions made under it stay resumable.
            return Ok(current.generation);
        }
        let generation = current.generation + 1;
        let trust = build(&self.inner.provider, generation, roots, crls, revocation)?;
        tracing::info!(
            target: "certrotate",
            generation,
            roots = trust.roots.len(),
            crls = trust.crls.len(),
            "trust bundle replaced"
        );
        self.inner.current.store(Arc::new(trust));
        self.inner.changes.send_replace(generation);
        Ok(generation)
    }

    /// Replaces the trust with a PEM bundle of CA certificates and CRLs.
    pub fn replace_pem(&self, pem: &[u8]) -> Result<u64, TrustError> {
        let (roots, crls) = parse_pem(pem)?;
        self.replace(roots, crls)
    }

    /// Replaces the CRLs, keeping the CA certificates.
    pub fn set_crls(
        &self,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<u64, TrustError> {
        self.change(|current| (current.roots.clone(), crls, current.revocation))
    }

    /// The trusted CA certificates.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.inner.current.load().roots.clone()
    }

    /// The generation in force: 1 at creation, one more per change.
    pub fn generation(&self) -> u64 {
        self.inner.current.load().generation
    }

    /// Receives the generation each time the trust changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// A rustls client-certificate verifier (for a server) that always checks
    /// against the trust in force, CRLs included.
    pub fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(FollowingClientVerifier(self.clone()))
    }

    /// A rustls server-certificate verifier (for a client) that always checks
    /// against the trust in force, CRLs included.
    pub fn server_verifier(&self) -> Arc<dyn ServerCertVerifier> {
        Arc::new(FollowingServerVerifier(self.clone()))
    }

    /// Keys `config`'s session cache and tickets by the trust generation, so
    /// that a session established under earlier trust is never resumed (the
    /// client does a full handshake and is verified again). Sessions made
    /// under the trust in force resume as usual, across certificate
    /// rotations too.
    pub fn partition_sessions(&self, config: &mut rustls::ServerConfig) {
        config.session_storage = Arc::new(PartitionedSessions {
            trust: self.clone(),
            inner: config.session_storage.clone(),
        });
        config.ticketer = Arc::new(PartitionedTickets {
            trust: self.clone(),
            inner: config.ticketer.clone(),
        });
    }

    /// A rustls `ClientConfig` for calls to servers this trust vouches for:
    /// server certificates verified against the trust in force, no client
    /// certificate, and a session cache partitioned by trust generation.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, rustls::Error> {
        self.make_client_config(None)
    }

    /// Like [`client_config`](Self::client_config), presenting the client
    /// certificate `client_cert` resolves (a [`Rotator`](crate::Rotator)'s
    /// [`resolver`](crate::Rotator::resolver) presents its current
    /// certificate, so outgoing mTLS calls follow its rotations).
    ///
    /// ```no_run
    /// # fn demo(client_cert: certrotate::Rotator, trust: certrotate::TrustStore) -> Result<(), rustls::Error> {
    /// let config = std::sync::Arc::new(trust.client_config_with_cert(client_cert.resolver())?);
    /// // hyper-util, reqwest (use_preconfigured_tls) or tokio-rustls take it from here.
    /// # Ok(()) }
    /// ```
    pub fn client_config_with_cert(
        &self,
        client_cert: Arc<dyn rustls::client::ResolvesClientCert>,
    ) -> Result<rustls::ClientConfig, rustls::Error> {
        self.make_client_config(Some(client_cert))
    }

    fn make_client_config(
        &self,
        client_cert: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
    ) -> Result<rustls::ClientConfig, rustls::Error> {
        let builder = rustls::ClientConfig::builder_with_provider(self.inner.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.server_verifier());
        let mut config = match client_cert {
            Some(resolver) => builder.with_client_cert_resolver(resolver),
            None => builder.with_no_client_auth(),
        };
        config.resumption =
            rustls::client::Resumption::store(Arc::new(PartitionedClientSessions {
                trust: self.clone(),
                current: ArcSwap::from_pointee((0, ClientSessionMemoryCache::new(256))),
            }));
        Ok(config)
    }

    fn trust(&self) -> arc_swap::Guard<Arc<Trust>> {
        self.inner.current.load()
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, Verified> {
        crate::sync::lock(&self.inner.verified)
    }

    /// The partition a session belongs to: the generation its client
    /// certificate was verified under (the one in force for a session
    /// without one). `None` for a session that must not be kept: its
    /// certificate's verification is not on record (it was verified under
    /// a trust since replaced, or too long ago).
    ///
    /// rustls stores a session and encrypts its ticket after the client's
    /// Finished, and verifies the certificate earlier, at its Certificate
    /// message: a client that holds Finished back across a trust change
    /// must not get a session of the new generation.
    fn partition_of(&self, session: &[u8]) -> Option<[u8; 8]> {
        // The usual case, cheaply: a certificate verified lately is in it.
        let verified = self.verified();
        let recorded = der_sequences(session).find_map(|der| verified.generation_of(der));
        drop(verified);
        let current = self.generation();
        match recorded {
            Some(generation) => (generation == current).then_some(generation.to_be_bytes()),
            // A certificate whose verification is not on record: not kept.
            None if der_sequences(session).any(is_certificate) => None,
            // No client certificate at all.
            None => Some(current.to_be_bytes()),
        }
    }
}

/// Reads CA certificates and CRLs from PEM.
fn parse_pem(
    pem: &[u8],
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        Vec<CertificateRevocationListDer<'static>>,
    ),
    TrustError,
> {
    let roots = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrustError::Pem(Arc::new(e)))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrustError::Pem(Arc::new(e)))?;
    Ok((roots, crls))
}

/// The trust anchors of a PEM bundle (its CRLs are not read).
#[cfg(any(feature = "acme", feature = "vault"))]
pub(crate) fn root_store_from_pem(pem: &[u8]) -> Result<RootCertStore, TrustError> {
    root_store(&parse_pem(pem)?.0)
}

/// `roots` as trust anchors; at least one.
fn root_store(roots: &[CertificateDer<'static>]) -> Result<RootCertStore, TrustError> {
    if roots.is_empty() {
        return Err(TrustError::Empty);
    }
    let mut store = RootCertStore::empty();
    for (index, root) in roots.iter().enumerate() {
        store
            .add(root.clone())
            .map_err(|error| TrustError::Root { index, error })?;
    }
    Ok(store)
}

fn build(
    provider: &Arc<CryptoProvider>,
    generation: u64,
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    revocation: RevocationPolicy,
) -> Result<Trust, TrustError> {
    if roots.is_empty() {
        return Err(TrustError::Empty);
    }
    let store = Arc::new(root_store(&roots)?);
    let unusable = TrustError::Unusable;
    let mut clients = WebPkiClientVerifier::builder_with_provider(store.clone(), provider.clone())
        .with_crls(crls.clone());
    let mut servers = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
        .with_crls(crls.clone());
    if revocation != RevocationPolicy::Strict {
        clients = clients.allow_unknown_revocation_status();
        servers = servers.allow_unknown_revocation_status();
    }
    if revocation == RevocationPolicy::EndEntityOnly {
        clients = clients.only_check_end_entity_revocation();
        servers = servers.only_check_end_entity_revocation();
    }
    let clients = clients.build().map_err(unusable)?;
    let servers = servers.build().map_err(unusable)?;
    Ok(Trust {
        generation,
        roots,
        crls,
        revocation,
        clients,
        servers,
    })
}

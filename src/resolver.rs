//! [`RotatingResolver`]: the handshake path.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

/// Server name to certificate. foldhash rather than SipHash: the keys are
/// the certificates' own names, never chosen by clients, so flooding is not
/// a concern, and a lookup costs a third as much (see BENCHMARKS.md).
pub(crate) type NameMap = HashMap<Box<str>, Arc<CertifiedKey>, foldhash::fast::RandomState>;

/// What a handshake reads: immutable, replaced whole on every change.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) default: Option<Arc<CertifiedKey>>,
    pub(crate) exact: NameMap,
    /// Keyed by the parent domain: `*.example.com` is stored as `example.com`.
    pub(crate) wildcard: NameMap,
    /// ACME TLS-ALPN-01 challenge certificates, by the name being validated:
    /// served only to clients that offer the `acme-tls/1` protocol.
    pub(crate) challenges: NameMap,
}

/// A rustls certificate resolver that always serves the current certificates
/// of a [`CertStore`](crate::CertStore).
///
/// Resolving is one lock-free `arc-swap` load and at most two hash lookups:
/// no lock, no I/O, no parsing, no allocation. A connection keeps the
/// certificate it resolved for its whole life, so rotation never disturbs a
/// handshake in flight or an established connection.
///
/// Get one from [`CertStore::resolver`](crate::CertStore::resolver) or
/// [`Rotator::resolver`](crate::Rotator::resolver).
pub struct RotatingResolver {
    snapshot: Arc<ArcSwap<Snapshot>>,
}

impl RotatingResolver {
    pub(crate) fn new(snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        Self { snapshot }
    }

    /// The certificate a client asking for `server_name` (lowercase, as
    /// rustls passes it; `None` without SNI) gets right now: the exact name,
    /// else a wildcard one label up, else the default certificate.
    ///
    /// ```
    /// let store = certrotate::CertStore::new();
    /// assert!(store.resolver().lookup(Some("api.example.com")).is_none()); // empty store
    /// ```
    #[inline]
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        Self::lookup_in(&self.snapshot.load(), server_name)
    }

    #[inline]
    fn lookup_in(snapshot: &Snapshot, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            if let Some(key) = snapshot.exact.get(name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = snapshot.wildcard.get(parent) {
                    return Some(key.clone());
                }
            }
        }
        snapshot.default.clone()
    }
}

/// The ALPN protocol of ACME TLS-ALPN-01 validation (RFC 8737). A server
/// answering that challenge must list it in `ServerConfig::alpn_protocols`.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl ResolvesServerCert for RotatingResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.snapshot.load();
        // An ACME validator asks for the challenge certificate of the name
        // being validated, and for nothing else.
        if !snapshot.challenges.is_empty()
            && client_hello
                .alpn()
                .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
        {
            let name = client_hello.server_name()?;
            return snapshot.challenges.get(name).cloned();
        }
        Self::lookup_in(&snapshot, client_hello.server_name())
    }
}

/// As a client certificate resolver (mTLS calls out), the store's default
/// certificate is presented, whatever the server hints.
///
/// ```no_run
/// # fn demo(client_cert: certrotate::Rotator, trust: certrotate::TrustStore) -> Result<(), rustls::Error> {
/// let config = trust.client_config_with_cert(client_cert.resolver())?;
/// # Ok(()) }
/// ```
impl ResolvesClientCert for RotatingResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.lookup(None)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl fmt::Debug for RotatingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.snapshot.load();
        f.debug_struct("RotatingResolver")
            .field("names", &(snapshot.exact.len() + snapshot.wildcard.len()))
            .field("has_default", &snapshot.default.is_some())
            .finish()
    }
}

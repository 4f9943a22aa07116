//! [`RotatingResolver`]: the handshake path, and the sharded view of the
//! store it reads.
//!
//! The view is split into shards by a hash of the server name, each an
//! immutable map behind its own `arc-swap` pointer. A change replaces only
//! the shards holding the names it touches, so one install costs the same
//! with ten names resident as with a million; a handshake loads the view,
//! then one shard (two for a wildcard), and looks the name up: no lock, no
//! allocation. Shards double when they fill (rebuilding them all, which
//! happens ⌈log₂⌉ times in the life of a store), so they hold at most
//! [`SHARD_FILL`] names on average and cloning one stays cheap.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

/// Server name to certificate. foldhash rather than SipHash: the keys are
/// the certificates' own names, never chosen by clients, so flooding is not
/// a concern, and a lookup costs a third as much (see BENCHMARKS.md). Keys
/// are shared with the store's index, so cloning a map copies no text.
pub(crate) type NameMap = HashMap<Arc<str>, Arc<CertifiedKey>, foldhash::fast::RandomState>;

/// Names per shard, on average, before the shards double.
const SHARD_FILL: usize = 128;

/// One shard: the names whose hash falls in it.
#[derive(Debug, Default, Clone)]
struct Shard {
    exact: NameMap,
    /// Keyed by the parent domain: `*.example.com` is stored as `example.com`.
    wildcard: NameMap,
}

/// What a handshake reads. The shards are shared between successive views:
/// a new view is made only when the default, the challenges or the number
/// of shards changes.
#[derive(Debug)]
pub(crate) struct View {
    shards: Arc<[ArcSwap<Shard>]>,
    /// Picks a name's shard (its own seed: not the maps').
    hasher: foldhash::fast::RandomState,
    default: Option<Arc<CertifiedKey>>,
    /// ACME TLS-ALPN-01 challenge certificates, by the name being validated:
    /// served only to clients that offer the `acme-tls/1` protocol.
    challenges: Arc<NameMap>,
}

impl Default for View {
    fn default() -> Self {
        Self {
            shards: Arc::from([ArcSwap::default()]),
            hasher: foldhash::fast::RandomState::default(),
            default: None,
            challenges: Arc::default(),
        }
    }
}

impl View {
    #[inline]
    fn shard(&self, name: &str) -> &ArcSwap<Shard> {
        // The number of shards is a power of two.
        let index = self.hasher.hash_one(name) as usize & (self.shards.len() - 1);
        &self.shards[index]
    }
}

/// Whether a name is served as itself or as a `*.` wildcard one label under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameKind {
    Exact,
    Wildcard,
}

/// The writing side of the view: owned by the store, used under its lock.
#[derive(Debug)]
pub(crate) struct ViewWriter {
    view: Arc<ArcSwap<View>>,
    /// Names in the shards, exact and wildcard.
    names: usize,
}

impl Default for ViewWriter {
    fn default() -> Self {
        Self {
            view: Arc::new(ArcSwap::from_pointee(View::default())),
            names: 0,
        }
    }
}

impl ViewWriter {
    /// A resolver reading this view.
    pub(crate) fn resolver(&self) -> RotatingResolver {
        RotatingResolver {
            view: self.view.clone(),
        }
    }

    /// Sets (or with `None` removes) what each name is served, then swaps
    /// in the changed shards, each cloned once.
    pub(crate) fn apply(&mut self, changes: Vec<(NameKind, Arc<str>, Option<Arc<CertifiedKey>>)>) {
        if changes.is_empty() {
            return;
        }
        let view = self.view.load();
        let mut touched: Vec<(usize, Shard)> = Vec::new();
        for (kind, name, key) in changes {
            let index = view.hasher.hash_one(&*name) as usize & (view.shards.len() - 1);
            let at = match touched.iter().position(|(i, _)| *i == index) {
                Some(at) => at,
                None => {
                    touched.push((index, Shard::clone(&view.shards[index].load())));
                    touched.len() - 1
                }
            };
            let shard = &mut touched[at].1;
            let map = match kind {
                NameKind::Exact => &mut shard.exact,
                NameKind::Wildcard => &mut shard.wildcard,
            };
            match key {
                Some(key) => {
                    if map.insert(name, key).is_none() {
                        self.names += 1;
                    }
                }
                None => {
                    if map.remove(&name).is_some() {
                        self.names -= 1;
                    }
                }
            }
        }
        for (index, shard) in touched {
            view.shards[index].store(Arc::new(shard));
        }
        if self.names > view.shards.len() * SHARD_FILL {
            drop(view);
            self.grow();
        }
    }

    /// Makes `key` the certificate of clients whose name matches nothing.
    pub(crate) fn set_default(&mut self, key: Option<Arc<CertifiedKey>>) {
        let view = self.view.load();
        let same = match (&view.default, &key) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.view.store(Arc::new(View {
                shards: view.shards.clone(),
                hasher: view.hasher.clone(),
                default: key,
                challenges: view.challenges.clone(),
            }));
        }
    }

    /// Replaces the TLS-ALPN-01 challenge certificates.
    #[cfg(feature = "acme")]
    pub(crate) fn set_challenges(&mut self, challenges: NameMap) {
        let view = self.view.load();
        self.view.store(Arc::new(View {
            shards: view.shards.clone(),
            hasher: view.hasher.clone(),
            default: view.default.clone(),
            challenges: Arc::new(challenges),
        }));
    }

    /// Doubles the shards until they are at most [`SHARD_FILL`] full on
    /// average, rehoming every name: O(names), and amortised O(1) per name.
    fn grow(&mut self) {
        let old = self.view.load_full();
        let mut count = old.shards.len();
        while self.names > count * SHARD_FILL {
            count *= 2;
        }
        let mut shards = vec![Shard::default(); count];
        for shard in old.shards.iter() {
            let shard = shard.load();
            for (kind, map) in [
                (NameKind::Exact, &shard.exact),
                (NameKind::Wildcard, &shard.wildcard),
            ] {
                for (name, key) in map {
                    let index = old.hasher.hash_one(&**name) as usize & (count - 1);
                    let target = match kind {
                        NameKind::Exact => &mut shards[index].exact,
                        NameKind::Wildcard => &mut shards[index].wildcard,
                    };
                    target.insert(name.clone(), key.clone());
                }
            }
        }
        self.view.store(Arc::new(View {
            shards: shards.into_iter().map(ArcSwap::from_pointee).collect(),
            hasher: old.hasher.clone(),
            default: old.default.clone(),
            challenges: old.challenges.clone(),
        }));
    }
}

/// A rustls certificate resolver that always serves the current certificates
/// of a [`CertStore`](crate::CertStore).
///
/// Resolving is one lock-free `arc-swap` load of the store's view, then one
/// of the shard holding the name (two for a name under a wildcard) and a
/// hash lookup: no lock, no I/O, no parsing, no allocation, and the same
/// cost with one name resident as with a million. A connection keeps the
/// certificate it resolved for its whole life, so rotation never disturbs a
/// handshake in flight or an established connection.
///
/// Get one from [`CertStore::resolver`](crate::CertStore::resolver) or
/// [`Rotator::resolver`](crate::Rotator::resolver).
pub struct RotatingResolver {
    view: Arc<ArcSwap<View>>,
}

impl RotatingResolver {
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
        Self::lookup_in(&self.view.load(), server_name)
    }

    #[inline]
    fn lookup_in(view: &View, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            if let Some(key) = view.shard(name).load().exact.get(name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = view.shard(parent).load().wildcard.get(parent) {
                    return Some(key.clone());
                }
            }
        }
        view.default.clone()
    }
}

/// The ALPN protocol of ACME TLS-ALPN-01 validation (RFC 8737). A server
/// answering that challenge must list it in `ServerConfig::alpn_protocols`.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl ResolvesServerCert for RotatingResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let view = self.view.load();
        // An ACME validator asks for the challenge certificate of the name
        // being validated, and for nothing else.
        if !view.challenges.is_empty()
            && client_hello
                .alpn()
                .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
        {
            let name = client_hello.server_name()?;
            return view.challenges.get(name).cloned();
        }
        Self::lookup_in(&view, client_hello.server_name())
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
        let view = self.view.load();
        f.debug_struct("RotatingResolver")
            .field("shards", &view.shards.len())
            .field("has_default", &view.default.is_some())
            .finish()
    }
}

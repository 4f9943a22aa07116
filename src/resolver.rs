//! [`RotatingResolver`]: the handshake path, and the sharded view of the
//! store it reads.
//!
//! The view is split into shards by a hash of the server name, each an
//! immutable map, gathered in groups of [`GROUP`] shards: a persistent
//! two-level array behind one `arc-swap` pointer. A change clones only the
//! shards holding the names it touches, the groups holding those, and the
//! array of groups (pointers, one per [`GROUP`] shards), then swaps the view:
//! one install costs the same with ten names resident as with a million. A
//! handshake loads the view once, picks the shard, and looks the name up:
//! no lock, no allocation. Shards double when they fill (rebuilding them
//! all, which happens ⌈log₂⌉ times in the life of a store), so they hold at
//! most [`SHARD_FILL`] names on average and cloning one stays cheap.

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

/// Shards per group.
const GROUP: usize = 64;

/// One shard: the names whose hash falls in it.
#[derive(Debug, Default, Clone)]
struct Shard {
    exact: NameMap,
    /// Keyed by the parent domain: `*.example.com` is stored as `example.com`.
    wildcard: NameMap,
}

/// What a handshake reads: immutable, replaced on every change (sharing
/// every shard and group the change did not touch).
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// `shards / GROUP` groups of `GROUP` shards, or one group of fewer.
    groups: Arc<[Arc<[Arc<Shard>]>]>,
    /// The number of shards: a power of two.
    shards: usize,
    /// Picks a name's shard (its own seed: not the maps').
    hasher: foldhash::fast::RandomState,
    default: Option<Arc<CertifiedKey>>,
    /// ACME TLS-ALPN-01 challenge certificates, by the name being validated:
    /// served only to clients that offer the `acme-tls/1` protocol.
    challenges: Arc<NameMap>,
}

impl Default for View {
    fn default() -> Self {
        Self::with_shards(
            vec![Shard::default()],
            foldhash::fast::RandomState::default(),
        )
    }
}

impl View {
    /// A view of these shards (a power of two of them), nothing else.
    fn with_shards(shards: Vec<Shard>, hasher: foldhash::fast::RandomState) -> Self {
        let count = shards.len();
        let per_group = count.min(GROUP);
        let mut shards = shards.into_iter().map(Arc::new);
        let groups = (0..count / per_group)
            .map(|_| shards.by_ref().take(per_group).collect())
            .collect();
        Self {
            groups,
            shards: count,
            hasher,
            default: None,
            challenges: Arc::default(),
        }
    }

    /// Where `name`'s shard is: (group, index in it).
    #[inline]
    fn place(&self, name: &str) -> (usize, usize) {
        let index = self.hasher.hash_one(name) as usize & (self.shards - 1);
        let per_group = self.shards.min(GROUP);
        (index / per_group, index % per_group)
    }

    #[inline]
    fn shard(&self, name: &str) -> &Shard {
        let (group, index) = self.place(name);
        &self.groups[group][index]
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
    /// in a view with the changed shards, each cloned once.
    pub(crate) fn apply(&mut self, changes: Vec<(NameKind, Arc<str>, Option<Arc<CertifiedKey>>)>) {
        if changes.is_empty() {
            return;
        }
        let old = self.view.load_full();
        let mut touched: Vec<((usize, usize), Shard)> = Vec::new();
        for (kind, name, key) in changes {
            let place = old.place(&name);
            let at = match touched.iter().position(|(p, _)| *p == place) {
                Some(at) => at,
                None => {
                    let shard = Shard::clone(&old.groups[place.0][place.1]);
                    touched.push((place, shard));
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
        if self.names > old.shards * SHARD_FILL {
            // Rehomed from the shards as changed.
            let mut shards: Vec<Shard> = Vec::with_capacity(old.shards);
            for group in old.groups.iter() {
                shards.extend(group.iter().map(|s| Shard::clone(s)));
            }
            for ((group, index), shard) in touched {
                shards[group * old.shards.min(GROUP) + index] = shard;
            }
            self.grow(&old, shards);
            return;
        }
        let mut groups: Vec<Arc<[Arc<Shard>]>> = old.groups.to_vec();
        let mut copied: Vec<(usize, Vec<Arc<Shard>>)> = Vec::new();
        for ((group, index), shard) in touched {
            let at = match copied.iter().position(|(g, _)| *g == group) {
                Some(at) => at,
                None => {
                    copied.push((group, groups[group].to_vec()));
                    copied.len() - 1
                }
            };
            copied[at].1[index] = Arc::new(shard);
        }
        for (group, shards) in copied {
            groups[group] = shards.into();
        }
        self.view.store(Arc::new(View {
            groups: groups.into(),
            ..View::clone(&old)
        }));
    }

    /// Makes `key` the certificate of clients whose name matches nothing.
    pub(crate) fn set_default(&mut self, key: Option<Arc<CertifiedKey>>) {
        let old = self.view.load();
        let same = match (&old.default, &key) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.view.store(Arc::new(View {
                default: key,
                ..View::clone(&old)
            }));
        }
    }

    /// Replaces the TLS-ALPN-01 challenge certificates.
    #[cfg(feature = "acme")]
    pub(crate) fn set_challenges(&mut self, challenges: NameMap) {
        let old = self.view.load();
        self.view.store(Arc::new(View {
            challenges: Arc::new(challenges),
            ..View::clone(&old)
        }));
    }

    /// Doubles the shards until they are at most [`SHARD_FILL`] full on
    /// average, rehoming every name: O(names), and amortised O(1) per name.
    fn grow(&mut self, old: &View, shards: Vec<Shard>) {
        let mut count = old.shards;
        while self.names > count * SHARD_FILL {
            count *= 2;
        }
        let mut grown = vec![Shard::default(); count];
        for shard in shards {
            for (kind, map) in [
                (NameKind::Exact, shard.exact),
                (NameKind::Wildcard, shard.wildcard),
            ] {
                for (name, key) in map {
                    let index = old.hasher.hash_one(&*name) as usize & (count - 1);
                    let target = match kind {
                        NameKind::Exact => &mut grown[index].exact,
                        NameKind::Wildcard => &mut grown[index].wildcard,
                    };
                    target.insert(name, key);
                }
            }
        }
        self.view.store(Arc::new(View {
            default: old.default.clone(),
            challenges: old.challenges.clone(),
            ..View::with_shards(grown, old.hasher.clone())
        }));
    }
}

/// A rustls certificate resolver that always serves the current certificates
/// of a [`CertStore`](crate::CertStore).
///
/// Resolving is one lock-free `arc-swap` load of the store's view, then a
/// hash lookup in the shard holding the name (and one in the shard of its
/// parent, for a wildcard): no lock, no I/O, no parsing, no allocation, and
/// the same cost with one name resident as with a million. A connection keeps the
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

    /// Whether a certificate of the store claims `name`, exactly or as a
    /// wildcard one label up (the default certificate does not count).
    #[cfg(feature = "acme")]
    pub(crate) fn claims(&self, name: &str) -> bool {
        let view = self.view.load();
        view.shard(name).exact.contains_key(name)
            || name
                .split_once('.')
                .is_some_and(|(_, parent)| view.shard(parent).wildcard.contains_key(parent))
    }

    #[inline]
    fn lookup_in(view: &View, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            if let Some(key) = view.shard(name).exact.get(name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = view.shard(parent).wildcard.get(parent) {
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

/// The ALPN protocols the crate's `ServerConfig`s offer: `h2` and
/// `http/1.1`, and [`ACME_TLS_ALPN`] when TLS-ALPN-01 challenges are
/// answered from the store.
pub(crate) fn server_alpn(tls_alpn_01: bool) -> Vec<Vec<u8>> {
    let mut protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if tls_alpn_01 {
        protocols.push(ACME_TLS_ALPN.to_vec());
    }
    protocols
}

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
            .field("shards", &view.shards)
            .field("has_default", &view.default.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        let ck = rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der());
        let provider = crate::default_provider();
        let signing = provider.key_provider.load_private_key(der.unwrap());
        Arc::new(CertifiedKey::new(
            vec![ck.cert.der().clone()],
            signing.unwrap(),
        ))
    }

    fn set(writer: &mut ViewWriter, kind: NameKind, name: &str, key: Option<&Arc<CertifiedKey>>) {
        writer.apply(vec![(kind, name.into(), key.cloned())]);
    }

    fn same(a: Option<Arc<CertifiedKey>>, b: &Arc<CertifiedKey>) -> bool {
        a.is_some_and(|a| Arc::ptr_eq(&a, b))
    }

    #[test]
    fn exact_then_a_wildcard_one_label_up_then_the_default() {
        let (exact, wild, default) = (key("a.example"), key("*.example"), key("d.example"));
        let mut writer = ViewWriter::default();
        let resolver = writer.resolver();
        assert!(resolver.lookup(Some("a.example")).is_none());
        set(&mut writer, NameKind::Wildcard, "example", Some(&wild));
        set(&mut writer, NameKind::Exact, "a.example", Some(&exact));
        writer.set_default(Some(default.clone()));
        assert!(same(resolver.lookup(Some("a.example")), &exact));
        assert!(same(resolver.lookup(Some("b.example")), &wild));
        // A wildcard covers one label, not two.
        assert!(same(resolver.lookup(Some("x.b.example")), &default));
        assert!(same(resolver.lookup(None), &default));
        set(&mut writer, NameKind::Exact, "a.example", None);
        assert!(same(resolver.lookup(Some("a.example")), &wild));
    }

    #[cfg(feature = "acme")]
    #[test]
    fn a_name_is_claimed_by_a_certificate_not_by_the_default() {
        let (exact, wild) = (key("a.example"), key("*.example"));
        let mut writer = ViewWriter::default();
        let resolver = writer.resolver();
        writer.set_default(Some(exact.clone()));
        assert!(!resolver.claims("a.example"));
        set(&mut writer, NameKind::Exact, "a.example", Some(&exact));
        set(&mut writer, NameKind::Wildcard, "w.example", Some(&wild));
        assert!(resolver.claims("a.example"));
        assert!(resolver.claims("x.w.example"));
        assert!(!resolver.claims("y.x.w.example"));
    }

    #[test]
    fn growing_rehomes_every_name_and_removal_forgets_them() {
        let one = key("n.example");
        let mut writer = ViewWriter::default();
        let resolver = writer.resolver();
        let names: Vec<String> = (0..5_000).map(|i| format!("n{i}.example")).collect();
        for chunk in names.chunks(700) {
            let changes = chunk
                .iter()
                .map(|n| (NameKind::Exact, Arc::from(n.as_str()), Some(one.clone())))
                .collect();
            writer.apply(changes);
        }
        assert!(writer.view.load().shards * SHARD_FILL >= names.len());
        assert!(names.iter().all(|n| same(resolver.lookup(Some(n)), &one)));
        let gone = names.iter().step_by(2);
        writer.apply(
            gone.map(|n| (NameKind::Exact, Arc::from(n.as_str()), None))
                .collect(),
        );
        for (i, name) in names.iter().enumerate() {
            assert_eq!(resolver.lookup(Some(name)).is_some(), i % 2 == 1, "{name}");
        }
    }

    #[test]
    fn the_offered_protocols() {
        assert_eq!(server_alpn(false), [&b"h2"[..], b"http/1.1"]);
        assert_eq!(server_alpn(true), [&b"h2"[..], b"http/1.1", ACME_TLS_ALPN]);
    }
}

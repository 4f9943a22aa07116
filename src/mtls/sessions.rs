//! Sessions partitioned by the trust generation they were verified under,
//! so that a session made under trust that has since changed is not
//! resumed.

use std::fmt;
use std::sync::Arc;

use super::*;

/// Every stretch of an encoded rustls session that is framed like a DER
/// SEQUENCE long enough to be a certificate (0x30, then a long-form length
/// of one or two bytes, within the session). rustls keeps the client's
/// certificate chain in the session verbatim, so the end-entity certificate
/// is one of them.
pub(super) fn der_sequences(session: &[u8]) -> impl Iterator<Item = &[u8]> {
    (0..session.len()).filter_map(move |start| {
        let rest = &session[start..];
        let (header, len) = match rest {
            [0x30, 0x81, len, ..] => (3, usize::from(*len)),
            [0x30, 0x82, high, low, ..] => (4, usize::from(*high) << 8 | usize::from(*low)),
            _ => return None,
        };
        rest.get(..header + len)
    })
}

pub(super) fn is_certificate(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok()
}

/// The generation in force as a key prefix.
pub(super) fn tag(trust: &TrustStore) -> [u8; 8] {
    trust.generation().to_be_bytes()
}

pub(super) fn tagged(tag: [u8; 8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&tag);
    out.extend_from_slice(key);
    out
}

/// A server session cache whose keys carry the trust generation.
#[derive(Debug)]
pub(super) struct PartitionedSessions {
    pub(super) trust: TrustStore,
    pub(super) inner: Arc<dyn StoresServerSessions>,
}

impl StoresServerSessions for PartitionedSessions {
    /// Kept in the partition of the generation its client was verified
    /// under; not kept if that is not the one in force.
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        match self.trust.partition_of(&value) {
            Some(partition) => self.inner.put(tagged(partition, &key), value),
            None => false,
        }
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(&tagged(tag(&self.trust), key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(&tagged(tag(&self.trust), key))
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// A ticketer whose tickets carry the trust generation inside their
/// encryption, and are refused under another.
#[derive(Debug)]
pub(super) struct PartitionedTickets {
    pub(super) trust: TrustStore,
    pub(super) inner: Arc<dyn ProducesTickets>,
}

impl ProducesTickets for PartitionedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    /// Tagged with the generation its client was verified under; no ticket
    /// if that is not the one in force.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let partition = self.trust.partition_of(plain)?;
        self.inner.encrypt(&tagged(partition, plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher)?;
        let rest = plain.strip_prefix(&tag(&self.trust)[..])?;
        Some(rest.to_vec())
    }
}

/// A client session cache emptied whenever the trust generation changes.
pub(super) struct PartitionedClientSessions {
    pub(super) trust: TrustStore,
    pub(super) current: ArcSwap<(u64, ClientSessionMemoryCache)>,
}

impl fmt::Debug for PartitionedClientSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionedClientSessions")
            .field("generation", &self.current.load().0)
            .finish()
    }
}

impl PartitionedClientSessions {
    /// The cache of the trust in force.
    fn cache(&self) -> Arc<(u64, ClientSessionMemoryCache)> {
        let generation = self.trust.generation();
        let current = self.current.load_full();
        if current.0 == generation {
            return current;
        }
        let fresh = Arc::new((generation, ClientSessionMemoryCache::new(256)));
        self.current.store(fresh.clone());
        fresh
    }
}

impl ClientSessionStore for PartitionedClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.cache().1.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.cache().1.kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.cache().1.set_tls12_session(server_name, value)
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.cache().1.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache().1.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.cache().1.insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.cache().1.take_tls13_ticket(server_name)
    }
}

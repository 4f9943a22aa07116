//! Server names as the resolver sees them (wildcards, IDNA, odd bytes): the
//! lookup never panics, and for every name a TLS client can send, the
//! resolver and the policy agree: a certificate is served for a name only if
//! the policy says it covers it, and the default only when none does.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use certrotate::{CertBundle, CertStore, Policy};
use certrotate::store::RotatingResolver;
use certrotate::store::DEFAULT_SLOT;
use libfuzzer_sys::fuzz_target;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::ServerName;

/// Slots and the names their certificates carry.
const SLOTS: &[(&str, &[&str])] = &[
    (DEFAULT_SLOT, &["default.example"]),
    ("exact", &["api.example.com", "10.0.0.1"]),
    ("wild", &["*.example.com"]),
    ("idna", &["xn--bcher-kva.example", "*.xn--bcher-kva.example"]),
    ("deep", &["*.a.b.example.org", "a.b.example.org"]),
];

struct Fixture {
    resolver: std::sync::Arc<RotatingResolver>,
    /// Each slot's leaf (DER) and names.
    leaves: Vec<(Vec<u8>, &'static [&'static str])>,
    _store: CertStore,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = Issuer::new(params, ca_key);
        let store = CertStore::new();
        let mut leaves = Vec::new();
        for (slot, names) in SLOTS {
            let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            let bundle = CertBundle::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
            let valid = Policy::default().validate(&bundle, SystemTime::now()).unwrap();
            let renew_at = valid.info().renewal_time();
            store.install(slot, valid, renew_at);
            leaves.push((cert.der().to_vec(), *names));
        }
        Fixture { resolver: store.resolver(), leaves, _store: store }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let Ok(name) = std::str::from_utf8(data) else { return };
    // Any string: an answer, never a panic.
    let _ = fixture.resolver.lookup(Some(name));

    // The names a client can send, as rustls hands them over (lowercase).
    let Ok(ServerName::DnsName(dns)) = ServerName::try_from(name) else { return };
    let name = dns.as_ref().to_ascii_lowercase();
    let served = fixture.resolver.lookup(Some(&name)).expect("the default slot serves");
    let served = fixture
        .leaves
        .iter()
        .position(|(der, _)| der[..] == served.cert[0][..])
        .expect("a certificate of the store");
    let covering: Vec<usize> = (0..fixture.leaves.len())
        .filter(|&i| fixture.leaves[i].1.iter().any(|san| certrotate::fuzzing::dns_matches(san, &name)))
        .collect();
    if covering.is_empty() {
        assert_eq!(served, 0, "{name:?} is covered by no certificate but got {:?}", SLOTS[served]);
    } else {
        assert!(covering.contains(&served), "{name:?} got {:?}, covered by {covering:?}", SLOTS[served]);
    }
});

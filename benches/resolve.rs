//! `resolve()` cost: certrotate's lock-free lookup against what rustls's own
//! static resolver does per handshake.
//!
//! rustls's `with_single_cert` resolver (`AlwaysResolvesChain`) answers every
//! handshake with `Some(Arc::clone(&key))`; that clone is the baseline.
//! `ClientHello` cannot be built outside rustls, so both sides are measured
//! on what they do with it: the baseline ignores it, certrotate looks up the
//! SNI name (`RotatingResolver::lookup`, which `resolve` calls directly).

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use certrotate::store::DEFAULT_SLOT;
use certrotate::{CertBundle, CertStore, Policy};
use criterion::{criterion_group, criterion_main, Criterion};

/// A store serving `names` DNS names plus `*.wild.example.com`, in slots of
/// at most 500 names per certificate (webpki refuses certificates whose
/// SAN extension is larger than 64 KiB).
fn store_with_names(names: usize) -> CertStore {
    let store = CertStore::new();
    let all: Vec<String> = (0..names)
        .map(|i| format!("host-{i}.example.com"))
        .collect();
    for (slot, chunk) in all.chunks(500).enumerate() {
        let mut sans = chunk.to_vec();
        if slot == 0 {
            sans.push("*.wild.example.com".into());
        }
        let ck = rcgen::generate_simple_self_signed(sans).unwrap();
        let bundle = CertBundle::from_pem(
            ck.cert.pem().as_bytes(),
            ck.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let valid = Policy::default()
            .validate(&bundle, SystemTime::now())
            .unwrap();
        let name = if slot == 0 {
            DEFAULT_SLOT.to_owned()
        } else {
            format!("slot-{slot}")
        };
        let renew_at = valid.info().renewal_time();
        store.install(&name, valid, renew_at);
    }
    store
}

fn resolve(c: &mut Criterion) {
    let mut group = c.benchmark_group("resolve");
    for names in [1usize, 10_000] {
        let store = store_with_names(names);
        let resolver = store.resolver();
        let key = resolver.lookup(None).unwrap();
        let hit = format!("host-{}.example.com", names / 2);
        group.bench_function(format!("static-arc-clone/{names}"), |b| {
            b.iter(|| Some(Arc::clone(black_box(&key))))
        });
        group.bench_function(format!("certrotate-exact/{names}"), |b| {
            b.iter(|| resolver.lookup(black_box(Some(hit.as_str()))))
        });
        group.bench_function(format!("certrotate-wildcard/{names}"), |b| {
            b.iter(|| resolver.lookup(black_box(Some("api.wild.example.com"))))
        });
        group.bench_function(format!("certrotate-no-sni/{names}"), |b| {
            b.iter(|| resolver.lookup(black_box(None)))
        });
    }
    group.finish();
}

criterion_group!(benches, resolve);
criterion_main!(benches);

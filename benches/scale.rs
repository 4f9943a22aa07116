//! Scale: what one change and one lookup cost with many certificates
//! resident, and the memory each one takes. The baseline tool for the
//! O(1)-change store (issue 16): run it before and after a change to the
//! store, on the same machine, and compare the medians.
//!
//! For each size N (one name per certificate, ECDSA P-256, one CA):
//!
//! - **load**: N certificates validated (`Policy::validate`, probe
//!   handshake included) and installed in their own slots, timed as a whole;
//! - **install**: the median of 200 replacements of one slot's certificate
//!   with N resident (`CertStore::install`);
//! - **resolve**: the median over 10⁶ lookups of an exact name, a name under
//!   a wildcard certificate, and a name nothing covers (`RotatingResolver::lookup`);
//! - **memory**: the growth of the process's resident set from before the
//!   certificates were made to after they were installed (certificates,
//!   keys, maps; what issuing left behind is reused, not counted twice), per
//!   certificate, beside the leaf's DER size.
//!
//! `cargo bench --bench scale [-- N...]` (default 1000 10000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use certrotate::{CertStore, Policy, ValidatedCert};
use common::{Ca, Leaf};

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    println!("| certificates | load (s) | install p50 | resolve exact p50 | resolve wildcard p50 | resolve miss p50 | RSS per certificate | DER per certificate |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        measure(n);
    }
}

fn measure(n: usize) {
    let ca = Ca::new();
    let policy = Policy::default();
    let now = std::time::SystemTime::now();
    let issue = |name: &str| -> ValidatedCert {
        let bundle = ca.issue(Leaf::default().names(&[name])).bundle;
        policy.validate(&bundle, now).expect("a good certificate")
    };
    let store = CertStore::new();
    let rss_before = rss();
    let started = Instant::now();
    let certs: Vec<ValidatedCert> = (0..n).map(|i| issue(&format!("h{i}.scale.test"))).collect();
    let der: usize = certs
        .iter()
        .map(|c| c.certified_key().cert[0].len())
        .sum::<usize>()
        / n.max(1);
    for (i, cert) in certs.into_iter().enumerate() {
        store.install(&format!("s{i}"), cert);
    }
    store.install("wildcard", issue("*.wild.scale.test"));
    let load = started.elapsed();
    let per_cert = rss().saturating_sub(rss_before) / n.max(1) as u64;

    let replacements: Vec<ValidatedCert> = (0..200).map(|_| issue("h0.scale.test")).collect();
    let mut installs: Vec<Duration> = replacements
        .into_iter()
        .map(|cert| {
            let t = Instant::now();
            black_box(store.install("s0", cert));
            t.elapsed()
        })
        .collect();

    let resolver = store.resolver();
    let lookups = |name: &str| {
        let mut samples: Vec<Duration> = (0..100)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..10_000 {
                    black_box(resolver.lookup(black_box(Some(name))));
                }
                t.elapsed() / 10_000
            })
            .collect();
        median(&mut samples)
    };
    let exact = lookups(&format!("h{}.scale.test", n / 2));
    let wildcard = lookups("api.wild.scale.test");
    let miss = lookups("nothing.example");
    println!(
        "| {n} | {:.1} | {:.3} ms | {} ns | {} ns | {} ns | {:.1} KiB | {:.1} KiB |",
        load.as_secs_f64(),
        median(&mut installs).as_secs_f64() * 1e3,
        exact.as_nanos(),
        wildcard.as_nanos(),
        miss.as_nanos(),
        per_cert as f64 / 1024.0,
        der as f64 / 1024.0,
    );
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The process's resident set, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

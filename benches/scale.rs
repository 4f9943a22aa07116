//! Scale: what loading, one change and one lookup cost with many
//! certificates resident, and the memory each one takes.
//!
//! **Certificates** (`N` = 10³, 10⁴, 10⁵ by default), one DNS name each,
//! ECDSA P-256, one CA, one slot per certificate, in one store:
//!
//! - **load**: the N certificates (issued beforehand) validated
//!   (`Policy::validate`, probe handshake included) and installed, timed as
//!   a whole, and per certificate (flat per certificate = linear);
//! - **install**: the median and the 99th percentile of 200 replacements of
//!   one slot's certificate with N resident (`CertStore::install`);
//! - **memory**: the growth of the process's resident set from a tenth of
//!   the way to the end (certificates, keys, maps, one certificate of
//!   history), per certificate, beside the leaf's DER size;
//! - **health**: the median of 20 `CertStore::health()` calls (the summary
//!   and the first page, computed over every slot under the store's lock).
//!
//! **Names** (then, in the largest store): certificates of 89 names and one
//! wildcard are added until 10⁶ names are resident; install is measured
//! again, and `RotatingResolver::lookup` for an exact name, a name under a
//! wildcard and a name nothing covers, against rustls's static resolver
//! (`Some(Arc::clone(&key))`) in the same loop shape. Each lookup figure is
//! the median over 100 samples of 4,096 lookups cycling through 4,096
//! different names, so the maps are not all in cache.
//!
//! `cargo bench --bench scale [-- N...] [-- --names M]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use std::collections::HashMap;

use certrotate::policy::ValidatedCert;
use certrotate::{CertBundle, CertStore, Policy};
use common::{Ca, Leaf};
use rustls::sign::CertifiedKey;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names = args
        .iter()
        .position(|a| a == "--names")
        .and_then(|at| args.get(at + 1)?.parse().ok())
        .unwrap_or(1_000_000usize);
    let mut sizes: Vec<usize> = args
        .iter()
        .take_while(|a| *a != "--names")
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![1_000, 10_000, 100_000];
    }
    let ca = Ca::new();
    let policy = Policy::default();
    println!("| certificates | load | load per certificate | install p50 | install p99 | RSS per certificate | leaf DER | health() |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut last = None;
    for n in sizes {
        last = Some((measure(&ca, &policy, n), n));
    }
    if let Some((store, n)) = last {
        println!();
        resolve_at(&ca, &policy, &store, n, names);
    }
}

fn issue(ca: &Ca, names: &[&str]) -> CertBundle {
    ca.issue(Leaf::default().names(names)).bundle
}

fn validate(policy: &Policy, bundle: &CertBundle) -> ValidatedCert {
    policy
        .validate(bundle, SystemTime::now())
        .expect("a good certificate")
}

fn measure(ca: &Ca, policy: &Policy, n: usize) -> CertStore {
    let store = CertStore::builder().history(2).build();
    // Issued one at a time and dropped once installed, so what issuing
    // leaves behind is reused; memory is counted from a tenth of the way,
    // past the allocations made once per process (the probe's config, the
    // first shards).
    let (mut load, mut der, mut rss_from) = (Duration::ZERO, 0, 0);
    let warm = n / 10;
    for i in 0..n {
        if i == warm {
            rss_from = rss();
        }
        let bundle = issue(ca, &[&format!("h{i}.scale.test")]);
        der += bundle.chain()[0].len();
        let started = Instant::now();
        let valid = validate(policy, &bundle);
        let renew_at = valid.info().renewal_time();
        store.install(&format!("s{i}"), valid, renew_at);
        load += started.elapsed();
    }
    let per_cert = rss().saturating_sub(rss_from) / (n - warm).max(1) as u64;
    let (p50, p99) = installs(ca, policy, &store);
    let mut health: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            black_box(store.health());
            t.elapsed()
        })
        .collect();
    health.sort();
    println!(
        "| {n} | {:.1} s | {:.0} µs | {:.1} µs | {:.1} µs | {:.2} KiB | {:.2} KiB | {:.2} ms |",
        load.as_secs_f64(),
        load.as_secs_f64() * 1e6 / n.max(1) as f64,
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        per_cert as f64 / 1024.0,
        der as f64 / n.max(1) as f64 / 1024.0,
        health[health.len() / 2].as_secs_f64() * 1e3,
    );
    store
}

/// The median and 99th percentile of 200 replacements of slot `s0`.
fn installs(ca: &Ca, policy: &Policy, store: &CertStore) -> (Duration, Duration) {
    let replacements: Vec<ValidatedCert> = (0..200)
        .map(|_| validate(policy, &issue(ca, &["h0.scale.test"])))
        .collect();
    let mut times: Vec<Duration> = replacements
        .into_iter()
        .map(|cert| {
            let t = Instant::now();
            let renew_at = cert.info().renewal_time();
            black_box(store.install("s0", cert, renew_at));
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

type Key = Arc<CertifiedKey>;

/// The lookup of the store before issue 16: one flat map per kind, no
/// shards (rebuilt whole on every change, which is what made it quadratic).
#[derive(Default)]
struct Flat {
    exact: HashMap<Box<str>, Key, foldhash::fast::RandomState>,
    wildcard: HashMap<Box<str>, Key, foldhash::fast::RandomState>,
}

impl Flat {
    fn lookup(&self, name: &str) -> Option<Key> {
        if let Some(key) = self.exact.get(name) {
            return Some(key.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

fn resolve_at(ca: &Ca, policy: &Policy, store: &CertStore, certs: usize, names: usize) {
    // Certificates of 89 exact names and one wildcard each; the flat maps
    // of the old design get the same names and keys.
    let extra = names.saturating_sub(certs).div_ceil(90);
    let resolver = store.resolver();
    let mut flat = Flat::default();
    for i in 0..certs {
        let name = format!("h{i}.scale.test");
        flat.exact.insert(
            name.as_str().into(),
            resolver.lookup(Some(&name)).expect("served"),
        );
    }
    let started = Instant::now();
    for i in 0..extra {
        let mut list: Vec<String> = (0..89).map(|j| format!("n{j}.c{i}.scale.test")).collect();
        list.push(format!("*.w{i}.scale.test"));
        let refs: Vec<&str> = list.iter().map(String::as_str).collect();
        let cert = validate(policy, &issue(ca, &refs));
        let key = cert.certified_key().clone();
        for name in &list {
            match name.strip_prefix("*.") {
                Some(parent) => flat.wildcard.insert(parent.into(), key.clone()),
                None => flat.exact.insert(name.as_str().into(), key.clone()),
            };
        }
        let renew_at = cert.info().renewal_time();
        store.install(&format!("m{i}"), cert, renew_at);
    }
    let resident = certs + extra * 90;
    eprintln!(
        "added {extra} certificates of 90 names in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (p50, p99) = installs(ca, policy, store);

    let static_key = resolver.lookup(Some("h0.scale.test")).expect("served");
    let spread = |f: &dyn Fn(usize) -> String| -> Vec<String> { (0..4096).map(f).collect() };
    let hot = |name: &str| spread(&|_| name.to_owned());
    let some = extra.max(1);
    let sets = [
        (
            "exact, one name",
            hot(&format!("n0.c{}.scale.test", some / 2)),
        ),
        (
            "wildcard, one name",
            hot(&format!("api.w{}.scale.test", some / 2)),
        ),
        ("miss, one name", hot("x.nothing.example")),
        (
            "exact, 4096 names",
            spread(&|i| format!("n{}.c{}.scale.test", i % 89, i * 7919 % some)),
        ),
        (
            "wildcard, 4096 names",
            spread(&|i| format!("api.w{}.scale.test", i * 7919 % some)),
        ),
        (
            "miss, 4096 names",
            spread(&|i| format!("x{i}.nothing.example")),
        ),
    ];
    let time = |lookup: &dyn Fn(&str) -> Option<Key>, names: &[String]| {
        let mut samples: Vec<Duration> = (0..100)
            .map(|_| {
                let t = Instant::now();
                for name in names {
                    black_box(lookup(black_box(name)));
                }
                t.elapsed() / names.len() as u32
            })
            .collect();
        samples.sort();
        samples[samples.len() / 2]
    };
    let by_static = |_: &str| Some(Arc::clone(&static_key));
    let by_store = |name: &str| resolver.lookup(Some(name));
    let by_flat = |name: &str| flat.lookup(name);
    println!(
        "{resident} names resident in {} certificates: install p50 {:.1} µs, p99 {:.1} µs",
        certs + extra,
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    println!();
    println!("| lookup | static resolver | certrotate | delta | flat map (old design) |");
    println!("|---|---:|---:|---:|---:|");
    for (label, names) in &sets {
        assert!(
            label.starts_with("miss") || extra == 0 || resolver.lookup(Some(&names[1])).is_some(),
            "{label}: names must be served"
        );
        // Interleaved rounds; the median of each.
        let (mut s, mut c, mut f) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            s.push(time(&by_static, names));
            c.push(time(&by_store, names));
            f.push(time(&by_flat, names));
        }
        let [s, c, f] = [s, c, f].map(|mut v| {
            v.sort();
            v[2].as_nanos() as i64
        });
        println!("| {label} | {s} ns | {c} ns | {:+} ns | {f} ns |", c - s);
    }
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

//! What the benches share: a CA and a leaf under it, medians, and the
//! table of interleaved rates.

// Each bench uses its own part of this module.
#![allow(dead_code)]

use certrotate::CertBundle;
use rustls::RootCertStore;

/// A CA, and a P-256 leaf for `name` under it.
pub fn leaf_and_roots(name: &str) -> (CertBundle, RootCertStore) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let chain = format!("{}{}", leaf.pem(), ca_cert.pem());
    let bundle = CertBundle::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    (bundle, roots)
}

/// The order in which round `round` runs `variants` variants: shuffled,
/// the same for every run of the bench, so that no variant always runs
/// first (A/B interleaving).
pub fn round_order(round: u64, variants: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..variants).collect();
    fastrand::Rng::with_seed(round).shuffle(&mut order);
    order
}

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Prints, under `heading`, a markdown table of each variant's median rate
/// and the median of its per-round ratios against the first variant's.
pub fn ratio_table(heading: &str, first_column: &str, names: &[String], rates: &[Vec<f64>]) {
    println!("\n### {heading}\n");
    println!(
        "| {first_column} | median handshakes/s | median ratio vs {} |",
        names[0]
    );
    println!("|---|---:|---:|");
    for (i, name) in names.iter().enumerate() {
        let mut ratios: Vec<f64> = rates[i].iter().zip(&rates[0]).map(|(a, b)| a / b).collect();
        println!(
            "| {name} | {:.0} | {:.3} |",
            median(&mut rates[i].clone()),
            median(&mut ratios)
        );
    }
}

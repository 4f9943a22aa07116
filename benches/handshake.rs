//! Full in-memory TLS 1.3 handshakes, interleaved A/B/C in one run:
//!
//! - `static`: rustls's own `with_single_cert` resolver (the baseline);
//! - `certrotate`: a `ServerConfig` whose resolver is certrotate's store;
//! - `config-swap`: an `ArcSwap<ServerConfig>` loaded per connection and
//!   rebuilt on rotation (how axum-server's `RustlsConfig` reloads).
//!
//! Then the handshake rate while certrotate rotates every 1 ms / 10 ms / 1 s
//! against no rotation, and the resumption hit rate across rotations against
//! the whole-config swap.
//!
//! This is a custom harness rather than criterion because the figures that
//! matter are ratios on a noisy shared machine: every round runs each variant
//! in a shuffled order and the report gives per-variant medians and the
//! median of the per-round ratios.
//!
//! `cargo bench --bench handshake -- --callgrind VARIANT KEY N` runs N
//! handshakes of one variant and nothing else, for `benches/callgrind.sh`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use certrotate::policy::ValidatedCert;
use certrotate::store::DEFAULT_SLOT;
use certrotate::{CertBundle, CertStore, Policy};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, Connection, HandshakeKind, RootCertStore, ServerConfig,
    ServerConnection,
};

#[path = "support/mod.rs"]
mod support;
use support::ratio_table;

const ROUNDS: usize = 15;
const PER_ROUND: usize = 200;
const ROTATION_ROUNDS: u64 = 15;

#[derive(Clone, Copy, Debug)]
enum Key {
    P256,
    Rsa2048,
}

struct Fixture {
    /// Pre-validated certificates to rotate through (same key type).
    certs: Vec<ValidatedCert>,
    bundles: Vec<CertBundle>,
    client: Arc<ClientConfig>,
    /// A client presenting a certificate of the CA, and the CA as trust.
    mtls_client: Arc<ClientConfig>,
    trust: certrotate::TrustStore,
}

impl Fixture {
    /// A client with a session store of its own.
    fn resuming_client(&self) -> Arc<ClientConfig> {
        resuming(&self.client)
    }

    /// The mTLS client, with a session store of its own.
    fn resuming_mtls_client(&self) -> Arc<ClientConfig> {
        resuming(&self.mtls_client)
    }
}

fn resuming(client: &ClientConfig) -> Arc<ClientConfig> {
    let mut client = client.clone();
    client.resumption = Resumption::in_memory_sessions(64);
    Arc::new(client)
}

fn fixture(key: Key, count: usize) -> Fixture {
    let alg = match key {
        Key::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Key::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
    };
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let policy = Policy::builder().server_name("localhost").build().unwrap();
    let mut certs = Vec::new();
    let mut bundles = Vec::new();
    for _ in 0..count {
        // RSA key generation's cost varies run to run; callgrind runs pass a
        // fixed key so that their instruction counts can be subtracted.
        let key = match (key, std::env::var("CERTROTATE_BENCH_RSA_KEY")) {
            (Key::Rsa2048, Ok(path)) => {
                rcgen::KeyPair::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
            }
            _ => rcgen::KeyPair::generate_for(alg).unwrap(),
        };
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let bundle =
            CertBundle::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        certs.push(policy.validate(&bundle, SystemTime::now()).unwrap());
        bundles.push(bundle);
    }
    let client_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut client_params = rcgen::CertificateParams::new(vec!["client.internal".into()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    let mut mtls_client = ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(
            vec![client_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(client_key.serialize_der()).unwrap(),
        )
        .unwrap();
    mtls_client.resumption = Resumption::disabled();
    let mut client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = Resumption::disabled();
    Fixture {
        certs,
        bundles,
        client: Arc::new(client),
        mtls_client: Arc::new(mtls_client),
        trust: certrotate::TrustStore::new(vec![ca_cert.der().clone()]).unwrap(),
    }
}

fn static_config(bundle: &CertBundle) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(bundle.chain().to_vec(), bundle.key().clone_key())
            .unwrap(),
    )
}

fn rotating_config(store: &CertStore) -> Arc<ServerConfig> {
    Arc::new(
        ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(store.resolver()),
    )
}

/// One complete handshake, with the server's session tickets delivered.
fn handshake(server: Arc<ServerConfig>, client: &Arc<ClientConfig>) -> HandshakeKind {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = Connection::Client(ClientConnection::new(client.clone(), name).unwrap());
    let mut s = Connection::Server(ServerConnection::new(server).unwrap());
    let mut buf = Vec::with_capacity(8192);
    while c.is_handshaking() || s.is_handshaking() || s.wants_write() {
        pump(&mut c, &mut s, &mut buf);
        pump(&mut s, &mut c, &mut buf);
    }
    match c {
        Connection::Client(c) => c.handshake_kind().unwrap(),
        Connection::Server(_) => unreachable!(),
    }
}

fn pump(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).unwrap();
    }
    let mut rest = buf.as_slice();
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets().unwrap();
    }
}

/// A way of serving: gives the config for the next connection.
type Variant = (&'static str, Box<dyn Fn() -> Arc<ServerConfig>>);

/// The three ways of serving.
fn variants(f: &Fixture) -> Vec<Variant> {
    let fixed = static_config(&f.bundles[0]);
    let store = CertStore::new();
    let renew_at = f.certs[0].info().renewal_time();
    store.install(DEFAULT_SLOT, f.certs[0].clone(), renew_at);
    let rotating = rotating_config(&store);
    let swap = Arc::new(ArcSwap::new(static_config(&f.bundles[0])));
    vec![
        ("static", Box::new(move || fixed.clone())),
        (
            "certrotate",
            Box::new(move || {
                let _keep = &store;
                rotating.clone()
            }),
        ),
        ("config-swap", Box::new(move || swap.load_full())),
    ]
}

/// Handshakes per second of each variant with `client`: `ROUNDS` rounds of
/// `PER_ROUND` handshakes each, the variants in a shuffled order per round.
fn interleaved(variants: &[Variant], client: &Arc<ClientConfig>) -> Vec<Vec<f64>> {
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..ROUNDS {
        let order = support::round_order(round as u64, variants.len());
        for i in order {
            let start = Instant::now();
            for _ in 0..PER_ROUND {
                black_box(handshake(variants[i].1(), client));
            }
            rates[i].push(PER_ROUND as f64 / start.elapsed().as_secs_f64());
        }
    }
    rates
}

/// [`ratio_table`] for `variants`, headed `title` and the rounds.
fn variants_table(title: &str, first_column: &str, variants: &[Variant], rates: &[Vec<f64>]) {
    let heading = format!("{title} ({ROUNDS} interleaved rounds of {PER_ROUND})");
    let names: Vec<String> = variants.iter().map(|(name, _)| name.to_string()).collect();
    ratio_table(&heading, first_column, &names, rates);
}

/// Interleaved rounds of full handshakes; prints a markdown table.
fn full_handshakes(key: Key) {
    let f = fixture(key, 1);
    let variants = variants(&f);
    let rates = interleaved(&variants, &f.client);
    let title = format!("Full TLS 1.3 handshakes, {key:?}");
    variants_table(&title, "variant", &variants, &rates);
}

/// Full mutual-TLS handshakes (P-256): rustls's own `WebPkiClientVerifier`
/// with its default session cache, against a `TrustStore` (the verifier
/// that follows it, sessions partitioned by the generation each client was
/// verified under). Same interleaved method as [`full_handshakes`].
fn mtls_handshakes() {
    let f = fixture(Key::P256, 1);
    let store = CertStore::new();
    let renew_at = f.certs[0].info().renewal_time();
    store.install(DEFAULT_SLOT, f.certs[0].clone(), renew_at);
    let roots = Arc::new({
        let mut roots = RootCertStore::empty();
        roots.add(f.trust.roots()[0].clone()).unwrap();
        roots
    });
    let plain = Arc::new(
        ServerConfig::builder()
            .with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(roots)
                    .build()
                    .unwrap(),
            )
            .with_cert_resolver(store.resolver()),
    );
    let mut partitioned = ServerConfig::builder()
        .with_client_cert_verifier(f.trust.client_verifier())
        .with_cert_resolver(store.resolver());
    f.trust.partition_sessions(&mut partitioned);
    let partitioned = Arc::new(partitioned);
    let variants: Vec<Variant> = vec![
        (
            "rustls WebPkiClientVerifier",
            Box::new(move || plain.clone()),
        ),
        (
            "certrotate TrustStore (partitioned)",
            Box::new(move || partitioned.clone()),
        ),
    ];
    let rates = interleaved(&variants, &f.mtls_client);
    let title = "Full mutual-TLS 1.3 handshakes, P256";
    variants_table(title, "server verifier", &variants, &rates);
}

/// Handshake rate while another thread rotates the store every `period`.
fn rate_while_rotating(
    f: &Fixture,
    store: &CertStore,
    config: &Arc<ServerConfig>,
    period: Option<Duration>,
    for_how_long: Duration,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let rotator = period.map(|period| {
        let (store, certs, stop) = (store.clone(), f.certs.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(period);
                n += 1;
                let renew_at = certs[n % certs.len()].info().renewal_time();
                store.install(DEFAULT_SLOT, certs[n % certs.len()].clone(), renew_at);
            }
            n
        })
    });
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < for_how_long {
        black_box(handshake(config.clone(), &f.client));
        done += 1;
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(r) = rotator {
        r.join().unwrap();
    }
    rate
}

fn rotation_rates() {
    let f = fixture(Key::P256, 8);
    let store = CertStore::new();
    let renew_at = f.certs[0].info().renewal_time();
    store.install(DEFAULT_SLOT, f.certs[0].clone(), renew_at);
    let config = rotating_config(&store);
    let periods = [
        None,
        Some(Duration::from_millis(1)),
        Some(Duration::from_millis(10)),
        Some(Duration::from_secs(1)),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); periods.len()];
    for round in 0..ROTATION_ROUNDS {
        let order = support::round_order(round, periods.len());
        for i in order {
            rates[i].push(rate_while_rotating(
                &f,
                &store,
                &config,
                periods[i],
                Duration::from_millis(400),
            ));
        }
    }
    let heading =
        format!("Handshake rate while rotating (ECDSA P-256, {ROTATION_ROUNDS} interleaved rounds of 0.4 s)");
    let names: Vec<String> = periods
        .iter()
        .map(|period| period.map_or("never".to_owned(), |p| format!("{p:?}")))
        .collect();
    ratio_table(&heading, "rotation every", &names, &rates);
}

/// Share of handshakes that resume, with a rotation every 10 handshakes.
fn resumption_across_rotations() {
    let f = fixture(Key::P256, 8);
    let store = CertStore::new();
    let renew_at = f.certs[0].info().renewal_time();
    store.install(DEFAULT_SLOT, f.certs[0].clone(), renew_at);
    let rotating = rotating_config(&store);
    let swap = ArcSwap::new(static_config(&f.bundles[0]));
    const N: usize = 2000;
    // Mutual TLS, sessions partitioned by trust generation (which
    // certificate rotations do not change).
    let mut mtls = ServerConfig::builder()
        .with_client_cert_verifier(f.trust.client_verifier())
        .with_cert_resolver(store.resolver());
    f.trust.partition_sessions(&mut mtls);
    let mtls = Arc::new(mtls);
    let (ours_client, theirs_client) = (f.resuming_client(), f.resuming_client());
    let mtls_client = f.resuming_mtls_client();
    let (mut ours, mut theirs, mut partitioned) = (0, 0, 0);
    for n in 0..N {
        if n % 10 == 9 {
            let renew_at = f.certs[n % f.certs.len()].info().renewal_time();
            store.install(DEFAULT_SLOT, f.certs[n % f.certs.len()].clone(), renew_at);
            swap.store(static_config(&f.bundles[n % f.bundles.len()]));
        }
        ours += (handshake(rotating.clone(), &ours_client) == HandshakeKind::Resumed) as usize;
        theirs += (handshake(swap.load_full(), &theirs_client) == HandshakeKind::Resumed) as usize;
        partitioned += (handshake(mtls.clone(), &mtls_client) == HandshakeKind::Resumed) as usize;
    }
    println!("\n### Resumption across rotations ({N} handshakes each, a rotation every 10)\n");
    println!("| variant | resumed |");
    println!("|---|---:|");
    println!(
        "| certrotate (resolver swap) | {:.1}% |",
        100.0 * ours as f64 / N as f64
    );
    println!(
        "| config-swap (new ServerConfig) | {:.1}% |",
        100.0 * theirs as f64 / N as f64
    );
    println!(
        "| certrotate, mTLS with sessions partitioned by trust | {:.1}% |",
        100.0 * partitioned as f64 / N as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [flag, variant, key, n] = args.as_slice() {
        if flag == "--callgrind" {
            let key = if key == "rsa" {
                Key::Rsa2048
            } else {
                Key::P256
            };
            let f = fixture(key, 1);
            let variants = variants(&f);
            let (_, config) = variants
                .iter()
                .find(|(name, _)| name == variant)
                .expect("static, certrotate or config-swap");
            for _ in 0..n.parse::<usize>().unwrap() {
                black_box(handshake(config(), &f.client));
            }
            return;
        }
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for the list of tests
    }
    println!(
        "## Handshakes ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    full_handshakes(Key::P256);
    full_handshakes(Key::Rsa2048);
    rotation_rates();
    mtls_handshakes();
    resumption_across_rotations();
}

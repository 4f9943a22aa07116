//! Falling back across ACME CAs, against two real Pebbles (each with its own
//! roots) validating the same server.

#![cfg(feature = "acme")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use certrotate::acme::AcmeCa;
use certrotate::store::ACME_TLS_ALPN;
use certrotate::{AcmeSource, CertStore, Policy, Rotator, TrustStore};
use common::pebble::{first_certificate, Config, Pebble};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const NAME: &str = "fallback.certrotate.test";

fn policy() -> Policy {
    Policy::builder().server_name(NAME).build().unwrap()
}

/// The ports both Pebbles validate on, bound before they start (a port
/// found free and bound later was taken meanwhile in CI).
struct Ports {
    tls: std::net::TcpListener,
    http: std::net::TcpListener,
}

impl Ports {
    fn bind() -> Self {
        let bind = || {
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            tcp.set_nonblocking(true).unwrap();
            tcp
        };
        Self {
            tls: bind(),
            http: bind(),
        }
    }

    fn port(tcp: &std::net::TcpListener) -> u16 {
        tcp.local_addr().unwrap().port()
    }

    /// The TLS-ALPN-01 port, to serve on.
    fn tls(self) -> tokio::net::TcpListener {
        tokio::net::TcpListener::from_std(self.tls).unwrap()
    }

    /// Serves `config` (echoing) on the TLS-ALPN-01 port.
    fn serve_tls(self, config: rustls::ServerConfig) -> common::Server {
        Self::serve_on(self.tls, config)
    }

    /// Serves `config` (echoing) on `tcp`.
    fn serve_on(tcp: std::net::TcpListener, config: rustls::ServerConfig) -> common::Server {
        let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
        common::serve_listener(certrotate::TlsListener::new(tcp, Arc::new(config)))
    }
}

/// Two Pebbles validating on the same TLS-ALPN-01 and HTTP-01 ports
/// (bound already), issuing certificates of `validity`.
fn two_pebbles(validity: Duration) -> (Pebble, Pebble, Ports) {
    let ports = Ports::bind();
    let config = Config {
        validity,
        tls_port: Ports::port(&ports.tls),
        http_port: Ports::port(&ports.http),
        ..Config::default()
    };
    let first = Pebble::start(config.clone());
    let second = Pebble::start(config);
    (first, second, ports)
}

/// `first`, then `second` as its fallback, kept in `storage`.
fn source(
    first: &Pebble,
    second: &Pebble,
    storage: &certrotate::acme::FileStorage,
) -> certrotate::acme::AcmeBuilder {
    AcmeSource::builder(&first.directory, [NAME])
        .directory_root(&first.https_root)
        .fallback(AcmeCa::new(&second.directory).directory_root(&second.https_root))
        .storage(storage.clone())
        .timeout(Duration::from_secs(2))
}

/// Adds the roots `pebble` issues under now to `trust`.
fn trust_also(trust: &TrustStore, pebble: &Pebble) {
    let mut roots = trust.roots();
    for cert in CertificateDer::pem_slice_iter(pebble.issuing_root().as_bytes()) {
        roots.push(cert.unwrap());
    }
    trust.replace(roots, Vec::new()).unwrap();
}

/// The binary's one global metrics recorder, installed by the first test
/// that asks (series are told apart by the Pebbles' own directory URLs).
#[cfg(feature = "metrics")]
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .unwrap()
    })
}

/// Whether the metrics say `slot` serves from `origin` (1) or no longer
/// does (0).
#[cfg(feature = "metrics")]
fn origin_metric(slot: &str, origin: &str, value: u8) -> bool {
    let line = format!(r#"certrotate_certificate_info{{slot="{slot}",origin="{origin}"}} {value}"#);
    prometheus().render().lines().any(|l| l == line)
}

/// Waits up to `within` for `rotator`'s health to satisfy `check`.
async fn until_health(
    rotator: &Rotator,
    within: Duration,
    what: &str,
    check: impl Fn(&certrotate::HealthSnapshot) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let health = rotator.health();
        if check(&health) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {health:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first CA killed: the next certificate comes from the second before
/// expiry, under load, with no failed handshake, and the first's failure is
/// reported while the second issues; a restart meanwhile serves the stored
/// certificate at once; the first back (empty, new roots): preferred again,
/// its failure no longer reported; both down: the last certificate keeps
/// serving and both failures are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fallback_ca_issues_while_the_first_is_down_and_the_first_is_preferred_again() {
    #[cfg(feature = "metrics")]
    prometheus();
    let (mut first, mut second, ports) = two_pebbles(Duration::from_secs(30));
    let storage = first.storage();
    let rotator = Rotator::builder(source(&first, &second, &storage).build(), policy())
        .store(CertStore::new())
        .retry_backoff(Duration::from_millis(500), Duration::from_secs(2))
        .spawn();
    let mut config = rotator.server_config().unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    let server = ports.serve_tls(config);
    let issued_by = |pebble: &Pebble| format!("ACME {} for {NAME}", pebble.directory);

    let one = first_certificate(&rotator).await;
    assert_eq!(one.origin, issued_by(&first));
    assert_eq!(
        second.issued(),
        0,
        "the fallback was asked though the first CA works"
    );
    let trust = TrustStore::from_pem(first.issuing_root().as_bytes()).unwrap();
    trust_also(&trust, &second);
    let mut clients = trust.client_config().unwrap();
    clients.resumption = rustls::client::Resumption::disabled();
    let load = common::load(&Arc::new(clients), server.addr, NAME, 2);
    let mut events = rotator.subscribe();

    // The first CA down: the renewal comes from the second, in time.
    first.kill();
    let two = common::rotation_from(&mut events, &one, Duration::from_secs(30)).await;
    assert!(
        std::time::SystemTime::now() < one.not_after,
        "renewed after expiry"
    );
    assert_eq!(two.origin, issued_by(&second));
    let health = rotator.health();
    assert_eq!(health.certificates[0].origin, issued_by(&second));
    // The metrics say which CA issued the certificate served.
    #[cfg(feature = "metrics")]
    {
        let slot = &health.certificates[0].slot;
        assert!(
            origin_metric(slot, &issued_by(&second), 1)
                && origin_metric(slot, &issued_by(&first), 0),
            "{}",
            prometheus().render()
        );
    }
    assert!(
        health.certificates[0]
            .warnings
            .iter()
            .any(|w| w.contains(&first.directory) && w.contains("failed")),
        "the first CA's failure is not reported: {health:#?}"
    );

    // A restart while the first CA is down serves the stored certificate
    // from the first connection, whichever CA issued it.
    let restarted = Rotator::builder(source(&first, &second, &storage).build(), policy())
        .launch()
        .await;
    let served = restarted.current().expect("the stored certificate at once");
    assert_eq!(served.fingerprint_sha256, two.fingerprint_sha256);
    assert_eq!(
        restarted.health().certificates[0].origin,
        issued_by(&second)
    );
    restarted.shutdown().await;

    // The first CA back, empty, with new roots: preferred again.
    first.restart_empty();
    trust_also(&trust, &first);
    let three = common::rotation_from(&mut events, &two, Duration::from_secs(30)).await;
    assert!(
        std::time::SystemTime::now() < two.not_after,
        "renewed after expiry"
    );
    assert_eq!(three.origin, issued_by(&first));
    until_health(
        &rotator,
        Duration::from_secs(5),
        "the recovered CA still reported",
        |h| h.certificates[0].warnings.is_empty(),
    )
    .await;

    // Both down: the last certificate keeps serving, both failures reported.
    first.kill();
    second.kill();
    let renew_at = rotator.health().certificates[0].renew_at;
    let both = |h: &certrotate::HealthSnapshot| {
        let error = h.certificates[0].last_error.clone().unwrap_or_default();
        error.contains(&first.directory) && error.contains(&second.directory)
    };
    let wait = renew_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    until_health(
        &rotator,
        wait + Duration::from_secs(8),
        "both failures",
        both,
    )
    .await;
    assert!(std::time::SystemTime::now() < three.not_after);
    assert_eq!(
        rotator.current().unwrap().fingerprint_sha256,
        three.fingerprint_sha256
    );
    let handshakes = load.finish().await;
    println!("{handshakes} handshakes, none failed");
    rotator.shutdown().await;
}

/// On demand, the same four phases: the first CA killed, a served name's
/// next certificate comes from the second before expiry, under load with
/// no failed handshake, the first's failure reported, and a new name is
/// issued there too; a restart meanwhile (a new issuer on the same
/// storage) serves the stored certificate at once, without an order; the
/// first back (empty, new roots): preferred again for renewals and new
/// names; both down: the names served keep serving, their renewal's
/// failure and a new name's refusal name both CAs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_names_fall_back_and_come_back() {
    let validity = Duration::from_secs(30);
    let (mut first, mut second, ports) = two_pebbles(validity);
    let storage = first.storage();
    let cas = [&first, &second].map(|p| (p.directory.clone(), p.https_root.clone()));
    let issuer = |storage: &certrotate::acme::FileStorage| {
        let template = AcmeSource::template(&cas[0].0)
            .directory_root(&cas[0].1)
            .fallback(AcmeCa::new(&cas[1].0).directory_root(&cas[1].1))
            .storage(storage.clone())
            .timeout(Duration::from_secs(2));
        let allowed = certrotate::on_demand::AllowList::new().suffix(NAME);
        certrotate::OnDemand::builder(template, allowed)
            .wait(Duration::from_secs(20))
            .build()
    };
    let on_demand = issuer(&storage);
    let tcp = ports.tls();
    let addr = tcp.local_addr().unwrap();
    let config = Arc::new(on_demand.server_config().unwrap());
    let listener = certrotate::TlsListener::new(tcp, config).on_demand(on_demand.clone());
    let _server = common::serve_listener(listener);
    let issued_by = |pebble: &Pebble, name: &str| format!("ACME {} for {name}", pebble.directory);
    let served = |on_demand: &certrotate::OnDemand, name: &str| {
        let health = on_demand.store().health();
        let cert = health.certificates.into_iter().find(|c| c.slot == name);
        cert.expect("the name is served")
    };
    let renewed = |name: String, from: String| {
        let on_demand = on_demand.clone();
        async move {
            let deadline = tokio::time::Instant::now() + validity;
            loop {
                let cert = served(&on_demand, &name);
                if cert.serial != from {
                    assert!(std::time::SystemTime::now() < cert.not_after);
                    return cert;
                }
                assert!(tokio::time::Instant::now() < deadline, "{cert:#?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    let name = format!("a.{NAME}");
    on_demand.prepare(&name).await.unwrap();
    let one = served(&on_demand, &name);
    assert_eq!(one.origin, issued_by(&first, &name));
    let trust = TrustStore::from_pem(first.issuing_root().as_bytes()).unwrap();
    trust_also(&trust, &second);
    let mut clients = trust.client_config().unwrap();
    clients.resumption = rustls::client::Resumption::disabled();
    let load = common::load(&Arc::new(clients), addr, &name, 2);

    // The first CA down: the renewal and a new name from the second.
    first.kill();
    let two = renewed(name.clone(), one.serial.clone()).await;
    assert_eq!(two.origin, issued_by(&second, &name));
    assert!(
        two.warnings
            .iter()
            .any(|w| w.contains(&first.directory) && w.contains("failed")),
        "the first CA's failure is not reported: {two:#?}"
    );
    let new = format!("b.{NAME}");
    on_demand.prepare(&new).await.unwrap();
    assert_eq!(served(&on_demand, &new).origin, issued_by(&second, &new));

    // A restart while the first CA is down: the stored certificate at
    // once, no order anywhere.
    let orders = second.orders();
    let restarted = issuer(&storage);
    restarted.prepare(&name).await.unwrap();
    assert_eq!(served(&restarted, &name).serial, two.serial);
    assert_eq!(served(&restarted, &name).origin, issued_by(&second, &name));
    assert_eq!(restarted.stats().loads, 1);
    assert_eq!(second.orders(), orders, "ordered instead of loaded");
    restarted.shutdown().await;

    // The first CA back, empty, with new roots: preferred again.
    first.restart_empty();
    trust_also(&trust, &first);
    let three = renewed(name.clone(), two.serial.clone()).await;
    assert_eq!(three.origin, issued_by(&first, &name));
    let newer = format!("c.{NAME}");
    on_demand.prepare(&newer).await.unwrap();
    assert_eq!(served(&on_demand, &newer).origin, issued_by(&first, &newer));

    // Both down: the names served keep serving; both CAs named.
    first.kill();
    second.kill();
    let refused = on_demand.prepare(&format!("d.{NAME}")).await.unwrap_err();
    let why = format!("{refused:?}");
    assert!(
        why.contains(&first.directory) && why.contains(&second.directory),
        "{why}"
    );
    let deadline = tokio::time::Instant::now() + validity;
    loop {
        let cert = served(&on_demand, &name);
        let error = cert.last_error.clone().unwrap_or_default();
        if error.contains(&first.directory) && error.contains(&second.directory) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{cert:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served(&on_demand, &name).serial, three.serial);
    assert!(std::time::SystemTime::now() < three.not_after);
    let handshakes = load.finish().await;
    println!("{handshakes} handshakes, none failed");
    on_demand.shutdown().await;
}

/// A fleet of replicas on Redis, the same four phases: the first CA
/// killed, the next renewal is one order for the whole fleet at the
/// second, served by every replica before expiry (one under load, no
/// failed handshake), the first's failure reported by the replica that
/// ordered; a replica started meanwhile serves the stored certificate at
/// once, without an order; the first back (empty, new roots): the next
/// renewal is one order there; both down: every replica keeps serving and
/// reports both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_orders_once_from_the_fallback() {
    use certrotate::acme::{Http01Responder, RedisStorage};
    use common::redis::{Redis, KEY};

    let validity = Duration::from_secs(30);
    let (mut first, mut second, ports) = two_pebbles(validity);
    // The replicas' HTTP-01 answers, as a load balancer would route them.
    let responder = Http01Responder::new();
    let (http, tls) = (ports.http, ports.tls);
    let http = tokio::net::TcpListener::from_std(http).unwrap();
    let app: axum::Router = responder.router();
    let http = tokio::spawn(async move { axum::serve(http, app).await });
    let redis = Redis::start();
    let cas = [&first, &second].map(|p| (p.directory.clone(), p.https_root.clone()));
    let replica = || async {
        let storage = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
        AcmeSource::builder(&cas[0].0, [NAME])
            .directory_root(&cas[0].1)
            .fallback(AcmeCa::new(&cas[1].0).directory_root(&cas[1].1))
            .storage(storage)
            .http_01(&responder)
            .timeout(Duration::from_secs(2))
            .build()
    };
    let issued_by = |pebble: &Pebble| format!("ACME {} for {NAME}", pebble.directory);

    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Rotator::builder(replica().await, policy()).spawn());
    }
    let mut served = Vec::new();
    for rotator in &replicas {
        served.push(first_certificate(rotator).await);
    }
    let one = served[0].clone();
    assert!(served.iter().all(|c| c.serial == one.serial), "{served:?}");
    assert_eq!(one.origin, issued_by(&first));
    assert_eq!(first.orders(), 1);
    // One replica under load, trusting both CAs.
    let server = Ports::serve_on(tls, replicas[0].server_config().unwrap());
    let trust = TrustStore::from_pem(first.issuing_root().as_bytes()).unwrap();
    trust_also(&trust, &second);
    let mut clients = trust.client_config().unwrap();
    clients.resumption = rustls::client::Resumption::disabled();
    let load = common::load(&Arc::new(clients), server.addr, NAME, 2);

    // The first CA down: one order at the second, served by all.
    first.kill();
    let two = fleet_renewed(&replicas, &one, validity).await;
    assert_eq!(two.origin, issued_by(&second));
    assert_eq!((second.orders(), second.issued()), (1, 1));
    let reported = replicas.iter().any(|r| {
        r.health().certificates[0]
            .warnings
            .iter()
            .any(|w| w.contains(&first.directory) && w.contains("failed"))
    });
    assert!(reported, "no replica reports the first CA's failure");

    // A replica started while the first CA is down: the stored
    // certificate at once, no order.
    let started = Rotator::builder(replica().await, policy()).launch().await;
    let at_once = started.current().expect("the stored certificate at once");
    assert_eq!(at_once.serial, two.serial);
    assert_eq!(second.orders(), 1, "ordered instead of loaded");
    started.shutdown().await;

    // The first back, empty, with new roots: one order there (its log
    // goes on across the restart).
    let issued = first.issued();
    first.restart_empty();
    trust_also(&trust, &first);
    let three = fleet_renewed(&replicas, &two, validity).await;
    assert_eq!(three.origin, issued_by(&first));
    assert_eq!(first.issued(), issued + 1);

    // Both down: every replica keeps serving, and reports both.
    first.kill();
    second.kill();
    let deadline = tokio::time::Instant::now() + validity;
    for rotator in &replicas {
        loop {
            let error = rotator.health().certificates[0].last_error.clone();
            let error = error.unwrap_or_default();
            if error.contains(&first.directory) && error.contains(&second.directory) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(rotator.current().unwrap().serial, three.serial);
    }
    assert!(std::time::SystemTime::now() < three.not_after);
    let handshakes = load.finish().await;
    println!("{handshakes} handshakes, none failed");
    for rotator in replicas {
        rotator.shutdown().await;
    }
    http.abort();
}

/// Waits until every replica serves one certificate newer than `from`,
/// before `from` expires, and returns it.
async fn fleet_renewed(
    replicas: &[Rotator],
    from: &certrotate::bundle::CertInfo,
    within: Duration,
) -> certrotate::bundle::CertInfo {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now: Vec<_> = replicas.iter().map(|r| r.current().unwrap()).collect();
        if now
            .iter()
            .all(|c| c.serial != from.serial && c.serial == now[0].serial)
        {
            assert!(
                std::time::SystemTime::now() < from.not_after,
                "renewed after expiry"
            );
            return (*now[0]).clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A first CA whose policy refuses the name (`rejectedIdentifier`) is
/// skipped for the next, which requires external account binding: the
/// fallback's own EAB key registers its account and it issues at once; the
/// first CA's refusal is reported, in health and (with the `metrics`
/// feature) in the orders counted per CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_refusing_the_name_falls_back_to_one_with_its_own_account_binding() {
    #[cfg(feature = "metrics")]
    let prometheus = prometheus();
    let ports = Ports::bind();
    let config = Config {
        validity: Duration::from_secs(3600),
        tls_port: Ports::port(&ports.tls),
        http_port: Ports::port(&ports.http),
        ..Config::default()
    };
    let hmac = b"fallback-eab-hmac-key-of-32-byte".to_vec();
    let first = Pebble::start(Config {
        blocklist: vec![NAME.into()],
        ..config.clone()
    });
    let second = Pebble::start(Config {
        eab: Some(("kid-fallback".into(), hmac.clone())),
        ..config
    });
    let source = AcmeSource::builder(&first.directory, [NAME])
        .directory_root(&first.https_root)
        .fallback(
            AcmeCa::new(&second.directory)
                .directory_root(&second.https_root)
                .external_account("kid-fallback", &hmac),
        )
        .storage(first.storage())
        .timeout(Duration::from_secs(2))
        .build();
    let rotator = Rotator::builder(source, policy()).spawn();
    let mut config = rotator.server_config().unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    let _server = ports.serve_tls(config);

    let cert = first_certificate(&rotator).await;
    assert_eq!(cert.origin, format!("ACME {} for {NAME}", second.directory));
    assert_eq!(first.issued(), 0);
    let health = rotator.health();
    assert!(
        health.certificates[0]
            .warnings
            .iter()
            .any(|w| w.contains(&first.directory) && w.contains("rejectedIdentifier")),
        "the first CA's refusal is not reported: {health:#?}"
    );
    #[cfg(feature = "metrics")]
    {
        let rendered = prometheus.render();
        for line in [
            format!(
                r#"certrotate_acme_orders_total{{ca="{}",result="failed"}} 1"#,
                first.directory
            ),
            format!(
                r#"certrotate_acme_orders_total{{ca="{}",result="issued"}} 1"#,
                second.directory
            ),
        ] {
            assert!(
                rendered.lines().any(|l| l == line),
                "no {line} in\n{rendered}"
            );
        }
    }
    rotator.shutdown().await;
}

/// Each CA orders with its own profile: the first down, the fallback's
/// order names the fallback's profile (seen by a proxy in front of it;
/// Pebble 2.4 has no profiles and ignores the field).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_ca_orders_with_its_own_profile() {
    use common::pebble::{Ari, FlakyProxy};

    let (mut first, second, ports) = two_pebbles(Duration::from_secs(3600));
    let far = std::time::SystemTime::now() + Duration::from_secs(86_400);
    let ari = Arc::new(Ari::new((far, far), 3600));
    let proxy = FlakyProxy::with_ari(&second, ari.clone()).await;
    let source = AcmeSource::builder(&first.directory, [NAME])
        .directory_root(&first.https_root)
        .profile("classic")
        .fallback(
            AcmeCa::new(&proxy.directory)
                .directory_root(&second.https_root)
                .profile("shortlived"),
        )
        .storage(first.storage())
        .timeout(Duration::from_secs(2))
        .build();
    first.kill();
    let rotator = Rotator::builder(source, policy()).spawn();
    let mut config = rotator.server_config().unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    let _server = ports.serve_tls(config);
    let cert = first_certificate(&rotator).await;
    assert_eq!(cert.origin, format!("ACME {} for {NAME}", proxy.directory));
    assert_eq!(*ari.profiles.lock().unwrap(), ["shortlived"]);
    rotator.shutdown().await;
}

/// A first CA that refuses orders for a rate limit is skipped: the
/// fallback issues at once, and the renewal after does not ask the first
/// again while it asked to be left alone (its failure still reported).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limited_first_ca_is_skipped_while_it_asks_to_wait() {
    use common::pebble::{Fault, FlakyProxy};

    let (first, second, ports) = two_pebbles(Duration::from_secs(20));
    let limited = FlakyProxy::start(&first, "order-plz", Fault::RateLimited, usize::MAX).await;
    let source = AcmeSource::builder(&limited.directory, [NAME])
        .directory_root(&first.https_root)
        .fallback(AcmeCa::new(&second.directory).directory_root(&second.https_root))
        .storage(first.storage())
        .timeout(Duration::from_secs(2))
        .build();
    let rotator = Rotator::builder(source, policy())
        .retry_backoff(Duration::from_millis(500), Duration::from_secs(2))
        .spawn();
    let mut config = rotator.server_config().unwrap();
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let _server = ports.serve_tls(config);
    let mut events = rotator.subscribe();

    let one = first_certificate(&rotator).await;
    assert_eq!(one.origin, format!("ACME {} for {NAME}", second.directory));
    let asked = limited.spoiled.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(asked, 1);
    let two = common::rotation_from(&mut events, &one, Duration::from_secs(25)).await;
    assert_eq!(two.origin, one.origin);
    assert_eq!(
        limited.spoiled.load(std::sync::atomic::Ordering::SeqCst),
        asked,
        "the rate-limited CA was asked again before its wait was over"
    );
    let warnings = &rotator.health().certificates[0].warnings;
    assert!(
        warnings.iter().any(|w| w.contains("too many new orders")),
        "{warnings:?}"
    );
    rotator.shutdown().await;
}

/// A first CA that hangs is given up at the step timeout, and the fallback
/// issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_first_ca_is_given_up_at_the_step_timeout() {
    let (first, second, ports) = two_pebbles(Duration::from_secs(3600));
    first.freeze(true);
    let rotator =
        Rotator::builder(source(&first, &second, &first.storage()).build(), policy()).spawn();
    let mut config = rotator.server_config().unwrap();
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let _server = ports.serve_tls(config);
    let started = std::time::Instant::now();
    let cert = first_certificate(&rotator).await;
    println!("issued by the fallback after {:?}", started.elapsed());
    assert_eq!(cert.origin, format!("ACME {} for {NAME}", second.directory));
    let warnings = &rotator.health().certificates[0].warnings;
    assert!(
        warnings.iter().any(|w| w.contains("no answer within")),
        "{warnings:?}"
    );
    first.freeze(false);
    rotator.shutdown().await;
}

/// Every ACME CA down and an internal CA as the last resort: its
/// certificate serves, the slot is critical while it does, and the stored
/// high-water mark is left alone (the fleet would otherwise refuse the
/// stored ACME certificate as older).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_internal_last_resort_serves_critically_when_every_ca_is_down() {
    let (mut first, mut second, ports) = two_pebbles(Duration::from_secs(30));
    let internal = certrotate::InternalCa::generate("last resort").unwrap();

    // A restart in the outage with a stored certificate due for renewal
    // (10 s of 30 left) but not nearly expired serves it, not the last
    // resort.
    let kept = first.storage();
    let rotator = Rotator::builder(source(&first, &second, &kept).build(), policy()).spawn();
    let mut config = rotator.server_config().unwrap();
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let server = ports.serve_tls(config);
    let stored = first_certificate(&rotator).await;
    rotator.shutdown().await;
    drop(server);
    first.kill();
    second.kill();
    let due = stored.not_after - Duration::from_secs(10);
    tokio::time::sleep(
        due.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    let restarted = source(&first, &second, &kept)
        .last_resort(internal.clone())
        .build();
    let restarted = Rotator::builder(restarted, policy()).launch().await;
    let served = restarted.current().expect("the stored certificate");
    assert_eq!(served.serial, stored.serial);
    restarted.shutdown().await;

    // Nothing stored: the last resort.
    let state = common::TempDir::new("last-resort");
    let storage = certrotate::acme::FileStorage::new(state.path());
    let source = source(&first, &second, &storage)
        .last_resort(internal.clone())
        .build();
    let rotator = Rotator::builder(source, policy())
        .retry_backoff(Duration::from_millis(200), Duration::from_secs(1))
        .spawn();
    let cert = first_certificate(&rotator).await;
    assert_eq!(cert.origin, format!("internal last-resort CA for {NAME}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let health = rotator.health();
        let warned = health.certificates[0]
            .warnings
            .iter()
            .any(|w| w.contains("last-resort"));
        if warned && health.alert == certrotate::AlertLevel::Critical {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{health:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Served, not stored; no mark recorded for it; not issued again while
    // the ACME CAs stay down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rotator.current().unwrap().serial, cert.serial);
    let kept: Vec<_> = std::fs::read_dir(state.path())
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        kept.iter()
            .all(|k| !k.starts_with("cert-") && !k.starts_with("served-")),
        "{kept:?}"
    );
    rotator.shutdown().await;
}

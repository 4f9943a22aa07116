//! AcmeSource against a real ACME server (Pebble), over real sockets.

#![cfg(feature = "acme")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use certrotate::acme::{FileStorage, Http01Responder};
use certrotate::store::ACME_TLS_ALPN;
use certrotate::{AcmeSource, CertStore, Policy, Rotator};
use common::pebble::challtestsrv::ChallTestSrv;
use common::pebble::{client, first_certificate, Config, Fault, Pebble};
use common::TempDir;
use rustls::pki_types::pem::PemObject;

const NAME: &str = "a.certrotate.test";

/// A source for NAME from `pebble`, with its own storage.
fn builder(pebble: &Pebble) -> certrotate::acme::AcmeBuilder {
    AcmeSource::builder(&pebble.directory, [NAME])
        .directory_root(&pebble.https_root)
        .storage(pebble.storage())
}

fn policy() -> Policy {
    Policy::builder().server_name(NAME).build().unwrap()
}

/// A server on Pebble's TLS-ALPN-01 port answering challenges from `store`.
async fn tls_alpn_server(pebble: &Pebble, rotator: &Rotator) -> common::Server {
    let mut config = rotator.server_config().unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    let tcp = pebble.listen(pebble.config.tls_port).await;
    common::serve_listener(certrotate::TlsListener::new(tcp, Arc::new(config)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn obtains_with_tls_alpn_01_and_reuses_it_after_a_restart() {
    let pebble = Pebble::start(Config::default());
    let storage = TempDir::new("acme-storage");
    let store = CertStore::new();
    let source = || {
        AcmeSource::builder(&pebble.directory, [NAME])
            .directory_root(&pebble.https_root)
            .storage(FileStorage::new(storage.path()))
            .tls_alpn_01()
            .build()
    };
    // Nothing stored yet: nothing at hand, the first order is needed.
    assert!(!source().at_hand().await);
    let rotator = Rotator::builder(source(), policy())
        .store(store.clone())
        .launch()
        .await;
    let server = tls_alpn_server(&pebble, &rotator).await;
    let cert = first_certificate(&rotator).await;
    let seen = common::serial_seen(&client(&pebble), server.addr, NAME)
        .await
        .unwrap();
    assert_eq!(seen, cert.serial);

    // The account and certificate are on disk, readable by us only.
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(storage.path()).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", entry.file_name());
    }
    rotator.shutdown().await;
    drop(server);

    // A restart serves the stored certificate at once, without a new order.
    let store = CertStore::new();
    let again = AcmeSource::builder(&pebble.directory, [NAME])
        .directory_root(&pebble.https_root)
        .storage(FileStorage::new(storage.path()))
        .tls_alpn_01()
        .build();
    assert!(again.at_hand().await);
    let rotator = Rotator::builder(again, policy())
        .store(store)
        .start()
        .await
        .unwrap();
    assert_eq!(rotator.current().unwrap().serial, cert.serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn obtains_with_http_01() {
    let pebble = Pebble::start(Config::default());
    let responder = Http01Responder::new();
    let http = pebble.listen(pebble.config.http_port).await;
    let app: axum::Router = responder.router();
    let http = tokio::spawn(async move { axum::serve(http, app).await });
    let source = builder(&pebble).http_01(&responder).build();
    let rotator = Rotator::builder(source, policy()).spawn();
    let cert = first_certificate(&rotator).await;
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let seen = common::serial_seen(&client(&pebble), server.addr, NAME)
        .await
        .unwrap();
    assert_eq!(seen, cert.serial);
    http.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn obtains_with_dns_01() {
    let pebble = Pebble::start(Config::default());
    let source = builder(&pebble)
        .dns_01(ChallTestSrv(pebble.dns_management))
        .build();
    let rotator = Rotator::builder(source, policy()).spawn();
    let cert = first_certificate(&rotator).await;
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let seen = common::serial_seen(&client(&pebble), server.addr, NAME)
        .await
        .unwrap();
    assert_eq!(seen, cert.serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renews_again_and_again_under_load() {
    let pebble = Pebble::start(Config {
        validity: Duration::from_secs(24),
        ..Config::default()
    });
    let store = CertStore::new();
    let source = builder(&pebble).tls_alpn_01().build();
    let rotator = Rotator::builder(source, policy())
        .store(store.clone())
        .spawn();
    let server = tls_alpn_server(&pebble, &rotator).await;
    let first = first_certificate(&rotator).await;
    let mut events = rotator.subscribe();
    let load = common::load(&client(&pebble), server.addr, NAME, 2);

    // Three renewals, each before the certificate it replaces expires.
    common::renewals_before_expiry(&mut events, first, 3, Duration::from_secs(40)).await;
    let handshakes = load.finish().await;
    assert!(handshakes > 100, "{handshakes} handshakes");
}

/// A TLS-ALPN-01 setup on `pebble`: the rotator (retrying fast) and its server.
async fn serving(pebble: &Pebble, timeout: Duration) -> (Rotator, common::Server) {
    let store = CertStore::new();
    let source = builder(pebble).tls_alpn_01().timeout(timeout).build();
    let rotator = Rotator::builder(source, policy())
        .store(store)
        .retry_backoff(Duration::from_millis(500), Duration::from_secs(2))
        .spawn();
    let server = tls_alpn_server(pebble, &rotator).await;
    first_certificate(&rotator).await;
    (rotator, server)
}

/// Which challenge a nonce-storm test answers.
enum Answer {
    TlsAlpn01,
    Http01,
    Dns01,
}

/// Pebble rejecting 60% of good nonces (`badNonce`): the certificate is in
/// service within 30 s with each kind of challenge, from one order (a
/// refused request is sent again with the fresh nonce; an interrupted order
/// is resumed, not placed again). Prints the orders Pebble counted.
async fn issues_under_a_nonce_storm(answer: Answer) {
    let pebble = Pebble::start(Config {
        nonce_reject: 60,
        ..Config::default()
    });
    let store = CertStore::new();
    let mut http = None;
    let source = match answer {
        Answer::TlsAlpn01 => builder(&pebble).tls_alpn_01(),
        Answer::Http01 => {
            let responder = Http01Responder::new();
            let tcp = pebble.listen(pebble.config.http_port).await;
            let app: axum::Router = responder.router();
            http = Some(tokio::spawn(async move { axum::serve(tcp, app).await }));
            builder(&pebble).http_01(&responder)
        }
        Answer::Dns01 => builder(&pebble).dns_01(ChallTestSrv(pebble.dns_management)),
    };
    let started = tokio::time::Instant::now();
    let rotator = Rotator::builder(source.timeout(Duration::from_secs(10)).build(), policy())
        .store(store)
        .retry_backoff(Duration::from_millis(500), Duration::from_secs(2))
        .spawn();
    let server = tls_alpn_server(&pebble, &rotator).await;
    let within = Duration::from_secs(30);
    let cert = loop {
        if let Some(cert) = rotator.current() {
            break cert;
        }
        assert!(
            started.elapsed() < within,
            "no certificate within {within:?} ({} orders): {:?}",
            pebble.orders(),
            rotator.health().last_error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    let seen = common::serial_seen(&client(&pebble), server.addr, NAME)
        .await
        .unwrap();
    assert_eq!(seen, cert.serial);
    let (orders, posts) = (pebble.orders(), pebble.logged("POST /"));
    println!(
        "nonce storm: certificate in service after {took:?}, {orders} order(s), {posts} POST requests"
    );
    assert_eq!(
        pebble.logged("Configured to reject 60% of good nonces"),
        1,
        "the storm is not on"
    );
    assert_eq!(orders, 1, "an order was placed again instead of finished");
    if let Some(http) = http {
        http.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nonce_storm_does_not_stop_tls_alpn_01() {
    issues_under_a_nonce_storm(Answer::TlsAlpn01).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nonce_storm_does_not_stop_http_01() {
    issues_under_a_nonce_storm(Answer::Http01).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nonce_storm_does_not_stop_dns_01() {
    issues_under_a_nonce_storm(Answer::Dns01).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_ca_at_renewal_time_is_reported_and_survived() {
    let pebble = Pebble::start(Config {
        validity: Duration::from_secs(30),
        ..Config::default()
    });
    let (rotator, server) = serving(&pebble, Duration::from_secs(1)).await;
    let first = rotator.current().unwrap();
    let load = common::load(&client(&pebble), server.addr, NAME, 2);
    let mut events = rotator.subscribe();

    // Frozen from before the renewal time (18 s into 30) for 8 s.
    let renew_in = first.not_after - first.lifetime() / 2;
    tokio::time::sleep(
        renew_in
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    pebble.freeze(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut reported = false;
    while tokio::time::Instant::now() < deadline {
        reported |= rotator
            .health()
            .last_error
            .is_some_and(|e| e.contains("no answer within"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pebble.freeze(false);
    assert!(reported, "the hanging CA never showed in health");
    assert_eq!(
        rotator.current().unwrap().serial,
        first.serial,
        "nothing new while frozen"
    );

    let renewed = common::rotation_from(&mut events, &first, Duration::from_secs(20)).await;
    assert!(std::time::SystemTime::now() < first.not_after);
    assert_ne!(renewed.serial, first.serial);
    assert_eq!(rotator.health().last_error, None);
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_restarted_empty_is_rejoined_before_expiry() {
    let mut pebble = Pebble::start(Config {
        validity: Duration::from_secs(40),
        ..Config::default()
    });
    let (rotator, server) = serving(&pebble, Duration::from_secs(2)).await;
    let first = rotator.current().unwrap();
    // Clients trust whatever roots the test tells them, through a TrustStore.
    let trust = certrotate::TrustStore::from_pem(pebble.issuing_root().as_bytes()).unwrap();
    let mut clients = trust.client_config().unwrap();
    clients.resumption = rustls::client::Resumption::disabled();
    let load = common::load(&Arc::new(clients), server.addr, NAME, 2);
    let mut events = rotator.subscribe();

    // Killed just before the renewal time, restarted empty: new roots, and
    // the account is gone.
    let renew_at = first.not_after - first.lifetime() / 2;
    tokio::time::sleep(
        renew_at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    pebble.restart_empty();
    let old_root = trust.roots();
    let new_root = pebble.issuing_root();
    let mut both = old_root.clone();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(new_root.as_bytes()) {
        both.push(cert.unwrap());
    }
    trust.replace(both, Vec::new()).unwrap();

    let renewed = common::rotation_from(&mut events, &first, Duration::from_secs(25)).await;
    assert!(
        std::time::SystemTime::now() < first.not_after,
        "renewed only after expiry"
    );
    assert_ne!(renewed.issuer, first.issuer, "not from the restarted CA");
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_challenge_that_fails_validation_is_reported() {
    let pebble = Pebble::start(Config::default());
    // HTTP-01, but nothing listens on Pebble's HTTP port.
    pebble.release();
    let source = builder(&pebble)
        .http_01(&Http01Responder::new())
        .timeout(Duration::from_secs(10))
        .build();
    let rotator = Rotator::builder(source, policy())
        .retry_backoff(Duration::from_secs(5), Duration::from_secs(10))
        .spawn();
    let mut events = rotator.subscribe();
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Ok(certrotate::RotationEvent::SourceFailed { error, .. })) => break error,
            Ok(_) => continue,
            Err(_) => panic!("no failure reported"),
        }
    };
    // The CA's typed reason (whether it came with the answer to the
    // challenge or with the order turning invalid), not the wording.
    assert_eq!(error.acme_problem(), Some("connection"), "{error}");
    assert!(rotator.current().is_none());
    assert_eq!(rotator.health().last_error, Some(error.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn external_account_binding_is_required_and_works() {
    let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37)).collect();
    let pebble = Pebble::start(Config {
        eab: Some(("kid-1".into(), key.clone())),
        ..Config::default()
    });
    let store = CertStore::new();
    // Without the binding, the CA refuses the account.
    let unbound = builder(&pebble).tls_alpn_01().build();
    let error = Rotator::builder(unbound, policy())
        .store(store.clone())
        .start()
        .await
        .unwrap_err();
    let certrotate::RotateError::Source(source) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(
        source.acme_problem(),
        Some("externalAccountRequired"),
        "{error}"
    );

    let bound = builder(&pebble)
        .external_account("kid-1", &key)
        .tls_alpn_01()
        .build();
    let rotator = Rotator::builder(bound, policy()).store(store).spawn();
    let server = tls_alpn_server(&pebble, &rotator).await;
    let cert = first_certificate(&rotator).await;
    let seen = common::serial_seen(&client(&pebble), server.addr, NAME)
        .await
        .unwrap();
    assert_eq!(seen, cert.serial);
}

/// A storage on a full disk that can also fail to read: stores fail with
/// ENOSPC; loads fail with EIO while `unreadable` is set, else find nothing.
#[derive(Clone, Default)]
struct Faulty {
    unreadable: Arc<std::sync::atomic::AtomicBool>,
}

impl certrotate::acme::Storage for Faulty {
    fn load<'a>(
        &'a self,
        _: &'a str,
    ) -> certrotate::acme::BoxFuture<'a, std::io::Result<Option<Vec<u8>>>> {
        let unreadable = self.unreadable.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            match unreadable {
                true => Err(std::io::Error::from_raw_os_error(5)),
                false => Ok(None),
            }
        })
    }

    fn store<'a>(
        &'a self,
        _: &'a str,
        _: &'a [u8],
    ) -> certrotate::acme::BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async { Err(std::io::Error::from_raw_os_error(28)) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_that_cannot_be_saved_is_reported_and_the_certificate_served() {
    let pebble = Pebble::start(Config::default());
    let store = CertStore::new();
    let storage = Faulty::default();
    let source = builder(&pebble)
        .storage(storage.clone())
        .tls_alpn_01()
        .build();
    let rotator = Rotator::builder(source, policy()).store(store).spawn();
    let mut events = rotator.subscribe();
    let server = tls_alpn_server(&pebble, &rotator).await;

    // The disk is full: the certificate is served all the same (throwing it
    // away would spend the CA's rate limits again), and that it is not saved
    // is a warning, in health and as an event.
    let cert = first_certificate(&rotator).await;
    let seen = common::serial_seen(&client(&pebble), server.addr, NAME)
        .await
        .unwrap();
    assert_eq!(seen, cert.serial);
    let warnings = &rotator.health().certificates[0].warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("could not save the ACME certificate (No space left on device")),
        "{warnings:?}"
    );
    let mut warned = false;
    while let Ok(event) = events.try_recv() {
        warned |= matches!(event, certrotate::RotationEvent::Warning { .. });
    }
    assert!(warned, "a warning event");

    // The storage cannot be read: no order is placed blindly; the attempt
    // fails, says why, and the certificate keeps serving.
    storage
        .unreadable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let error = rotator.rotate_now().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("cannot read the stored certificate"),
        "{error}"
    );
    assert_eq!(rotator.current().unwrap().serial, cert.serial);
    rotator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_orders_alone_when_storage_is_down_only_if_told_and_near_expiry() {
    // One-hour certificates; a storage that cannot be read once the first
    // one is served.
    let pebble = Pebble::start(Config::default());
    for (window, alone) in [
        (Duration::from_secs(2 * 3600), true),
        (Duration::from_secs(60), false),
    ] {
        let storage = Faulty::default();
        let source = builder(&pebble)
            .storage(storage.clone())
            .dns_01(ChallTestSrv(pebble.dns_management))
            .order_alone_when_storage_is_down(window)
            .build();
        let rotator = Rotator::builder(source, policy()).spawn();
        let first = first_certificate(&rotator).await;
        storage
            .unreadable
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let issued = pebble.issued();
        let rotation = rotator.rotate_now().await;
        match alone {
            // Expiring within the window: ordered without the lock.
            true => {
                let Ok(certrotate::rotator::Rotation::Rotated { new, .. }) = rotation else {
                    panic!("not renewed alone: {rotation:?}");
                };
                assert_ne!(new.serial, first.serial);
                assert_eq!(pebble.issued(), issued + 1);
            }
            // Not yet: the storage being down is the error, nothing ordered.
            false => {
                let error = rotation.unwrap_err().to_string();
                assert!(
                    error.contains("cannot read the stored certificate"),
                    "{error}"
                );
                assert_eq!(pebble.issued(), issued);
                assert_eq!(rotator.current().unwrap().serial, first.serial);
            }
        }
        rotator.shutdown().await;
    }
}

/// An order interrupted by a transient error (here the CA answering its
/// finalization with 503 twice) is resumed from its URL on the next attempt:
/// one order, and its authorization validated once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_interrupted_by_a_5xx_is_resumed_not_placed_again() {
    let pebble = Pebble::start(Config::default());
    let proxy =
        common::pebble::FlakyProxy::start(&pebble, "finalize-order", Fault::Unavailable, 2).await;
    let store = CertStore::new();
    let source = AcmeSource::builder(&proxy.directory, [NAME])
        .directory_root(&pebble.https_root)
        .storage(pebble.storage())
        .tls_alpn_01()
        .build();
    let rotator = Rotator::builder(source, policy())
        .store(store)
        .retry_backoff(Duration::from_millis(200), Duration::from_secs(1))
        .spawn();
    let _server = tls_alpn_server(&pebble, &rotator).await;
    first_certificate(&rotator).await;
    assert_eq!(proxy.spoiled.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(pebble.orders(), 1, "the order was placed again");
    assert_eq!(
        pebble.logged("set VALID by completed challenge"),
        1,
        "the authorization was validated again"
    );
}

/// Whether the server at `addr` hands out a TLS-ALPN-01 challenge
/// certificate for NAME (asked as an ACME validator asks, with openssl).
async fn challenge_served(addr: std::net::SocketAddr) -> bool {
    let output = tokio::process::Command::new("openssl")
        .args(["s_client", "-alpn", "acme-tls/1", "-servername", NAME])
        .arg("-connect")
        .arg(addr.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl is installed");
    String::from_utf8_lossy(&output.stdout).contains("BEGIN CERTIFICATE")
}

/// The rotator's fetch timeout firing mid-order (the CA hangs on the
/// finalization) ends the attempt: its challenge answer is taken down and
/// the renewal lock let go at once; the next attempt resumes the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetch_timeout_mid_order_cleans_up_and_the_order_resumes() {
    let pebble = Pebble::start(Config::default());
    let proxy = common::pebble::FlakyProxy::start(
        &pebble,
        "finalize-order",
        Fault::Hang(Duration::from_secs(5)),
        1,
    )
    .await;
    let state = TempDir::new("acme-timeout");
    let store = CertStore::new();
    let source = AcmeSource::builder(&proxy.directory, [NAME])
        .directory_root(&pebble.https_root)
        .storage(FileStorage::new(state.path()))
        .tls_alpn_01()
        .build();
    let rotator = Rotator::builder(source, policy())
        .store(store)
        .fetch_timeout(Duration::from_secs(2))
        .retry_backoff(Duration::from_secs(3), Duration::from_secs(3))
        .spawn();
    let mut events = rotator.subscribe();
    let server = tls_alpn_server(&pebble, &rotator).await;
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Ok(certrotate::RotationEvent::SourceFailed { error, .. })) => break error,
            Ok(_) => continue,
            Err(_) => panic!("the fetch timeout never fired"),
        }
    };
    assert!(error.to_string().contains("no answer within"), "{error}");
    // Within a moment (the cleanup runs in a task of its own): no challenge
    // certificate served, no lease left in the storage.
    let leases = || {
        std::fs::read_dir(state.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".lease")
            })
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while (challenge_served(server.addr).await || leases() > 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !challenge_served(server.addr).await,
        "the challenge answer was left up"
    );
    assert_eq!(leases(), 0, "the renewal lock was left held");
    assert!(rotator.current().is_none());

    let cert = first_certificate(&rotator).await;
    assert_eq!(pebble.orders(), 1, "the order was placed again");
    let seen = common::serial_seen(&client(&pebble), server.addr, NAME)
        .await
        .unwrap();
    assert_eq!(seen, cert.serial);
}

/// Runs `ahead` of the real time.
#[derive(Debug)]
struct Ahead(Duration);

impl certrotate::danger::Clock for Ahead {
    fn now(&self) -> std::time::SystemTime {
        std::time::SystemTime::now() + self.0
    }
}

/// A restart whose stored certificate is due for renewal, while the CA is
/// down: the stored certificate serves (it is valid for minutes still)
/// while the renewal is retried, instead of nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_serves_its_due_certificate_while_the_ca_is_down() {
    let pebble = Pebble::start(Config::default());
    // One renewal an hour among the sources of this builder: the second
    // restart below waits for its turn.
    let template = AcmeSource::builder(&pebble.directory, [NAME])
        .directory_root(&pebble.https_root)
        .storage(pebble.storage())
        .timeout(Duration::from_secs(1))
        .renewals_per_window(1, Duration::from_secs(3600))
        .tls_alpn_01();
    let source = || template.clone().build();
    let rotator = Rotator::builder(source(), policy()).spawn();
    let server = tls_alpn_server(&pebble, &rotator).await;
    let stored = first_certificate(&rotator).await;
    rotator.shutdown().await;
    drop(server);

    pebble.freeze(true);
    // 56 minutes into the hour the certificate lasts: past the emergency
    // point, whatever the CA advised, and still valid.
    // The first restart's renewal fails; the second's must wait its turn
    // (renewals paced in a mass revocation): both serve what is stored.
    for restart in ["failing", "waiting its turn"] {
        let store = CertStore::builder()
            .clock(Arc::new(Ahead(Duration::from_secs(56 * 60))))
            .build();
        let restarted = Rotator::builder(source(), policy())
            .store(store)
            .launch()
            .await;
        let serving = restarted.current().map(|c| c.serial.clone());
        assert_eq!(
            serving,
            Some(stored.serial.clone()),
            "renewal {restart}: {:?}",
            restarted.health().last_error
        );
        restarted.shutdown().await;
    }
    pebble.freeze(false);
}

/// The configs serving a store offer `acme-tls/1` once any source filling
/// it answers TLS-ALPN-01 from it, whichever rotator's config the server
/// uses: a server listening with the config of its file-backed rotator
/// still lets the CA validate the ACME one sharing its store.
#[tokio::test]
async fn every_config_of_a_store_an_acme_source_answers_from_offers_acme_tls() {
    let store = CertStore::new();
    let bundle = common::Ca::new().nth(0);
    let files = Rotator::builder(
        certrotate::source::StaticSource::new(bundle),
        Policy::default(),
    )
    .store(store.clone())
    .start()
    .await
    .unwrap();
    let offers = |rotator: &Rotator| {
        let config = rotator.server_config().unwrap();
        config.alpn_protocols.iter().any(|p| p == ACME_TLS_ALPN)
    };
    assert!(!offers(&files));
    let state = TempDir::new("acme-alpn");
    let acme = AcmeSource::builder("https://acme.invalid/directory", [NAME])
        .storage(FileStorage::new(state.path()))
        .tls_alpn_01()
        .build();
    let ordering = Rotator::builder(acme, Policy::default())
        .store(store.clone())
        .slot("acme")
        .spawn();
    assert!(offers(&files));
    assert!(offers(&ordering));
    ordering.shutdown().await;
    files.shutdown().await;
}

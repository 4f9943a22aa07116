//! AcmeSource against a real ACME server (Pebble), over real sockets.

#![cfg(feature = "acme")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use certrotate::{
    AcmeSource, CertStore, FileStorage, Http01Responder, Policy, Rotator, ACME_TLS_ALPN,
};
use common::pebble::{ChallTestSrv, Config, Pebble};
use common::TempDir;

const NAME: &str = "a.certrotate.test";

/// A client trusting what Pebble issues.
fn client(pebble: &Pebble) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = pebble.issuing_root();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

use rustls::pki_types::pem::PemObject;

fn policy() -> Policy {
    Policy::builder().server_name(NAME).build().unwrap()
}

/// Waits for the rotator's first certificate.
async fn first_certificate(rotator: &Rotator) -> Arc<certrotate::CertInfo> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(cert) = rotator.current() {
            return cert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate: {:?}",
            rotator.health().last_error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server on Pebble's TLS-ALPN-01 port answering challenges from `store`.
async fn tls_alpn_server(pebble: &Pebble, rotator: &Rotator) -> common::Server {
    let mut config = rotator.server_config().unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    common::serve_at(pebble.config.tls_port, Arc::new(config)).await
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
            .tls_alpn_01(&store)
            .build()
    };
    let rotator = Rotator::builder(source(), policy())
        .store(store.clone())
        .spawn();
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
        .tls_alpn_01(&store)
        .build();
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
    let http = tokio::net::TcpListener::bind(("127.0.0.1", pebble.config.http_port))
        .await
        .unwrap();
    let app: axum::Router = responder.router();
    let http = tokio::spawn(async move { axum::serve(http, app).await });
    let source = AcmeSource::builder(&pebble.directory, [NAME])
        .directory_root(&pebble.https_root)
        .http_01(&responder)
        .build();
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
    let source = AcmeSource::builder(&pebble.directory, [NAME])
        .directory_root(&pebble.https_root)
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
    let source = AcmeSource::builder(&pebble.directory, [NAME])
        .directory_root(&pebble.https_root)
        .tls_alpn_01(&store)
        .build();
    let rotator = Rotator::builder(source, policy())
        .store(store.clone())
        .spawn();
    let server = tls_alpn_server(&pebble, &rotator).await;
    let first = first_certificate(&rotator).await;
    let mut events = rotator.subscribe();
    let load = common::load(&client(&pebble), server.addr, NAME, 2);

    // Three renewals, each before the certificate it replaces expires.
    let mut serving = first;
    for renewal in 1..=3 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        let new = loop {
            let event = tokio::time::timeout_at(deadline, events.recv()).await;
            match event.unwrap_or_else(|_| panic!("renewal {renewal} did not come")) {
                Ok(certrotate::RotationEvent::Rotated { new, .. }) => break new,
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        };
        assert!(
            std::time::SystemTime::now() < serving.not_after,
            "renewal {renewal} came after expiry"
        );
        assert_ne!(new.serial, serving.serial);
        serving = new;
    }
    let handshakes = load.finish().await;
    assert!(handshakes > 100, "{handshakes} handshakes");
}

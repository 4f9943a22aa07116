//! Mutual TLS with rotating trust, over real sockets: short-lived leaves from
//! the internal CA under load, CA rollover, a CA removed from the trust
//! bundle, a CRL, and the CA's files on disk.

#![cfg(feature = "ca")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use certrotate::policy::Usage;
use certrotate::source::LeafSpec;
use certrotate::source::StaticSource;
use certrotate::{InternalCa, Policy, Rotator, TrustStore};
use common::{Ca, Leaf, HOST};
use rcgen::ExtendedKeyUsagePurpose;

/// A rotator of server certificates and one of client certificates, both
/// from `ca`, and an mTLS server with a client trusting the CA's bundle.
struct Mesh {
    server_cert: Rotator,
    client_cert: Rotator,
    server: common::Server,
    client: Arc<rustls::ClientConfig>,
}

async fn mesh(ca: &InternalCa, lifetime: Duration) -> Mesh {
    let server_spec = LeafSpec::new([HOST])
        .lifetime(lifetime)
        .usage(Usage::Server);
    let client_spec = LeafSpec::new(["client.internal"])
        .uri("spiffe://test.internal/client")
        .lifetime(lifetime)
        .usage(Usage::Client);
    let server_policy = Policy::builder().server_name(HOST).build().unwrap();
    let client_policy = Policy::builder().usage(Usage::Client).build().unwrap();
    let server_cert = Rotator::builder(ca.source(server_spec), server_policy)
        .start()
        .await
        .unwrap();
    let client_cert = Rotator::builder(ca.source(client_spec), client_policy)
        .start()
        .await
        .unwrap();
    let config = server_cert
        .server_config_with_client_auth(&ca.trust())
        .unwrap();
    let server = common::serve(Arc::new(config)).await;
    let client = Arc::new(
        ca.trust()
            .client_config_with_cert(client_cert.resolver())
            .unwrap(),
    );
    Mesh {
        server_cert,
        client_cert,
        server,
        client,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaves_of_a_few_seconds_rotate_under_mtls_load() {
    let ca = InternalCa::generate("test internal CA").unwrap();
    let lifetime = Duration::from_secs(3);
    let m = mesh(&ca, lifetime).await;
    let load = common::load(&m.client, m.server.addr, HOST, 2);
    // Four lifetimes: both certificates are renewed at 2/3 of theirs.
    tokio::time::sleep(lifetime * 4).await;
    let requests = load.finish().await;
    let (served, presented) = (
        m.server_cert.health().rotations,
        m.client_cert.health().rotations,
    );
    assert!(served >= 4, "server certificate rotated {served} times");
    assert!(
        presented >= 4,
        "client certificate rotated {presented} times"
    );
    assert!(requests > 100, "{requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ca_rollover_under_load_then_the_old_ca_is_refused() {
    // The first CA comes from outside, so the test can still sign with it
    // after the rollover.
    let first = Ca::new_named("first CA");
    let ca_params = first_ca_pem(&first);
    let ca = InternalCa::from_pem(&ca_params.0, &ca_params.1).unwrap();
    let m = mesh(&ca, Duration::from_secs(3)).await;
    let load = common::load(&m.client, m.server.addr, HOST, 2);
    let generation = ca.trust().generation();

    tokio::time::sleep(Duration::from_millis(500)).await;
    ca.prepare_rollover().unwrap();
    assert_eq!(ca.trust().generation(), generation + 1);
    assert_eq!(ca.trust().roots().len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;

    ca.activate().unwrap();
    // Both sides are issued new leaves from the new CA at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while [&m.server_cert, &m.client_cert]
        .iter()
        .any(|r| r.current().unwrap().issuer == "CN=first CA")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "leaves not reissued by the new CA"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Until retirement, a client certificate from the first CA still works.
    let outsider = client_config_with(&ca.trust(), &first);
    assert!(common::serial_seen(&outsider, m.server.addr, HOST)
        .await
        .is_ok());

    // The first CA's last leaf expires within its 3 s lifetime.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ca.retire_expired().unwrap() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first CA was not retired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ca.trust().roots().len(), 1);
    let requests = load.finish().await;
    assert!(requests > 50, "{requests} requests");

    // After retirement, a client certificate from the first CA is refused.
    let outsider = client_config_with(&ca.trust(), &first);
    let refused = common::serial_seen(&outsider, m.server.addr, HOST).await;
    assert!(
        refused.is_err(),
        "a certificate from the retired CA was accepted"
    );
}

fn first_ca_pem(ca: &Ca) -> (String, String) {
    (ca.pem.clone(), ca.key_pem())
}

/// A client presenting a fresh clientAuth leaf of `ca`, verifying servers
/// against `trust`.
fn client_config_with(trust: &TrustStore, ca: &Ca) -> Arc<rustls::ClientConfig> {
    let leaf = ca.issue(Leaf {
        names: vec!["outsider.internal".into()],
        eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
        ..Leaf::default()
    });
    let (chain, key) = common::der_pair(&leaf);
    let mut config = common::client_builder()
        .dangerous()
        .with_custom_certificate_verifier(trust.server_verifier())
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A server (certificate from `server_ca`) requiring client certificates
/// verified against `trust`; with `tickets`, TLS 1.3 resumption uses
/// stateless tickets instead of the session cache.
async fn mtls_server(
    server_ca: &Ca,
    trust: &TrustStore,
    tickets: bool,
) -> (Rotator, common::Server) {
    let rotator = Rotator::builder(
        StaticSource::new(server_ca.nth(0)),
        Policy::builder().server_name(HOST).build().unwrap(),
    )
    .start()
    .await
    .unwrap();
    let mut config = rotator.server_config_with_client_auth(trust).unwrap();
    if tickets {
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        // Partition the ticketer just set.
        trust.partition_sessions(&mut config);
    }
    let server = common::serve(Arc::new(config)).await;
    (rotator, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_ca_refuses_its_clients_new_and_resumed_at_once() {
    removing_a_ca_refuses(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_ca_refuses_resumption_by_ticket_too() {
    removing_a_ca_refuses(true).await;
}

async fn removing_a_ca_refuses(tickets: bool) {
    let (server_ca, kept, removed) = (
        Ca::new(),
        Ca::new_named("kept CA"),
        Ca::new_named("removed CA"),
    );
    let trust = TrustStore::new(vec![kept.der.clone(), removed.der.clone()]).unwrap();
    let (_rotator, server) = mtls_server(&server_ca, &trust, tickets).await;
    let doomed = common::resuming_client(&server_ca, &common::client_leaf(&removed, 1));
    let fine = common::resuming_client(&server_ca, &common::client_leaf(&kept, 2));

    // Both connect, and resume (the control).
    for client in [&doomed, &fine] {
        assert_eq!(common::request(client, server.addr).await, Ok(false));
        assert_eq!(common::request(client, server.addr).await, Ok(true));
    }

    trust.replace(vec![kept.der.clone()], Vec::new()).unwrap();

    // The removed CA's client holds a resumable session: it is not resumed,
    // and the full handshake refuses its certificate.
    let refused = common::request(&doomed, server.addr).await;
    assert!(
        refused.is_err(),
        "a client of the removed CA got in: {refused:?}"
    );
    let fresh = common::resuming_client(&server_ca, &common::client_leaf(&removed, 3));
    assert!(common::request(&fresh, server.addr).await.is_err());
    // The kept CA's client is not resumed either (new trust, new sessions),
    // but gets in.
    assert_eq!(common::request(&fine, server.addr).await, Ok(false));
    assert_eq!(common::request(&fine, server.addr).await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_revokes_a_client_certificate_without_a_restart() {
    let (server_ca, clients) = (Ca::new(), Ca::new_named("client CA"));
    let trust = TrustStore::new(vec![clients.der.clone()]).unwrap();
    let (_rotator, server) = mtls_server(&server_ca, &trust, false).await;
    let (revoked, kept) = (
        common::client_leaf(&clients, 0x51),
        common::client_leaf(&clients, 0x52),
    );
    let revoked = common::resuming_client(&server_ca, &revoked);
    let kept = common::resuming_client(&server_ca, &kept);
    assert!(common::request(&revoked, server.addr).await.is_ok());
    assert!(common::request(&kept, server.addr).await.is_ok());

    trust.set_crls(vec![clients.crl(&[0x51])]).unwrap();

    let refused = common::request(&revoked, server.addr).await;
    assert!(refused.is_err(), "a revoked certificate got in");
    assert!(common::request(&kept, server.addr).await.is_ok());
}

#[test]
fn the_ca_key_is_written_0600_and_reloaded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::TempDir::new("ca-files");
    let mode = |name: &str| {
        std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    let ca = InternalCa::open(dir.path(), "persisted CA").unwrap();
    assert_eq!(mode("ca.key"), 0o600);
    let pem = ca.trust_pem();

    // Reopening finds the same CA, and so does loading its files.
    let again = InternalCa::open(dir.path(), "persisted CA").unwrap();
    assert_eq!(again.trust_pem(), pem);
    let loaded = InternalCa::load(dir.join("ca.crt"), dir.join("ca.key")).unwrap();
    assert_eq!(loaded.trust_pem(), pem);
    // A key that is not the CA's is refused.
    let stranger = Ca::new();
    std::fs::write(dir.join("stranger.key"), stranger.key_pem()).unwrap();
    let error = InternalCa::load(dir.join("ca.crt"), dir.join("stranger.key")).unwrap_err();
    assert!(error.to_string().contains("does not belong"), "{error}");

    // A prepared rollover is saved the same way, and becomes ca.* on activation.
    ca.prepare_rollover().unwrap();
    assert_eq!(mode("next.key"), 0o600);
    let next = std::fs::read_to_string(dir.join("next.crt")).unwrap();
    ca.activate().unwrap();
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), next);
    assert!(!dir.join("next.key").exists());
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

//! AcmeSource against a second real ACME CA besides Pebble: OpenBao's PKI
//! ACME endpoint, with external account binding, validating DNS-01
//! records that the RFC 2136 solver writes into a real BIND 9.

#![cfg(all(feature = "vault", feature = "rfc2136"))]

mod common;

use std::time::Duration;

use certrotate::acme::rfc2136::{Rfc2136Solver, TsigKey};
use certrotate::{AcmeSource, CertStore, Policy, Rotator};
use common::bao::Bao;
use common::dns::{Bind, Zone};

const NAME: &str = "api.svc.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issues_from_openbao_acme_with_eab_by_dns_01() {
    let bind = Bind::primary(vec![Zone::new("svc.test", false)]);
    let bao = Bao::start_tls(Duration::from_secs(3600));
    let base = format!("{}/v1/pki", bao.addr);
    // ACME on the mount (its response headers passed through), validating
    // through BIND, an external account required.
    bao.cli(&[
        "secrets",
        "tune",
        "-passthrough-request-headers=If-Modified-Since",
        "-allowed-response-headers=Last-Modified",
        "-allowed-response-headers=Location",
        "-allowed-response-headers=Replay-Nonce",
        "-allowed-response-headers=Link",
        "pki",
    ]);
    bao.cli(&[
        "write",
        "pki/config/cluster",
        &format!("path={base}"),
        &format!("aia_path={base}"),
    ]);
    bao.cli(&[
        "write",
        "pki/config/acme",
        "enabled=true",
        "eab_policy=always-required",
        "default_directory_policy=role:svc",
        &format!("dns_resolver={}", bind.addr),
    ]);
    let eab = bao.cli(&["write", "-f", "-format=json", "pki/acme/new-eab"]);
    let eab: serde_json::Value = serde_json::from_str(&eab).unwrap();
    let (kid, key) = (
        eab["data"]["id"].as_str().unwrap(),
        eab["data"]["key"].as_str().unwrap(),
    );
    let hmac = common::pebble::base64url_decode(key);

    let solver = Rfc2136Solver::builder(bind.addr, TsigKey::from_file(&bind.key_file).unwrap())
        .timeout(Duration::from_secs(2))
        .build();
    let storage = common::TempDir::new("acme-openbao");
    let source = AcmeSource::builder(format!("{base}/acme/directory"), [NAME])
        .directory_root(bao.ca.as_ref().unwrap())
        .external_account(kid, &hmac)
        .storage(certrotate::acme::FileStorage::new(storage.path()))
        .dns_01(solver)
        .build();
    let policy = Policy::builder().server_name(NAME).build().unwrap();
    let rotator = Rotator::builder(source, policy)
        .store(CertStore::new())
        .retry_backoff(Duration::from_millis(500), Duration::from_secs(2))
        .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let cert = loop {
        if let Some(cert) = rotator.current() {
            break cert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate from OpenBao: {:?}",
            rotator.health().last_error
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(cert.dns_names, [NAME]);
    assert!(bind.txt_records("svc.test").is_empty(), "records left");
}

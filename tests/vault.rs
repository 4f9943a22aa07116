//! VaultSource and VaultTrust against a real OpenBao (`bao server -dev`).

#![cfg(feature = "vault")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use certrotate::vault::{AppRole, TokenFile, VaultSource, VaultTrust};
use certrotate::{CertStore, Policy, Rotator};
use common::bao::Bao;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const NAME: &str = "api.svc.test";

fn source(bao: &Bao, token_file: &std::path::Path) -> VaultSource {
    VaultSource::builder(&bao.addr, "pki", "svc", [NAME])
        .auth(TokenFile::new(token_file))
        .dangerous()
        .allow_plain_http()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn rotator(source: VaultSource) -> Rotator {
    let policy = Policy::builder().server_name(NAME).build().unwrap();
    Rotator::builder(source, policy)
        .store(CertStore::new())
        .retry_backoff(Duration::from_millis(500), Duration::from_secs(2))
        .start()
        .await
        .unwrap()
}

/// A client trusting `bao`'s issuers (as PEM, from the root token).
fn client(bao: &Bao, identity: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for issuer in bao.cli(&["list", "-format=json", "pki/issuers"]).split('"') {
        if issuer.len() == 36 {
            let json = bao.cli(&["read", "-format=json", &format!("pki/issuer/{issuer}")]);
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            let pem = value["data"]["certificate"].as_str().unwrap();
            roots
                .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                .unwrap();
        }
    }
    let builder = common::client_builder().with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => {
            let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Issued, then renewed twice by the schedule while clients handshake
/// without pause: no failed handshake; `rotate_now` reissues at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issues_and_renews_under_load() {
    let bao = Bao::start(Duration::from_secs(20));
    let (token_file, _) = bao.token_file(None);
    let rotator = rotator(source(&bao, &token_file)).await;
    let first = rotator.current().unwrap();
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let mut events = rotator.subscribe();
    let load = common::load(&client(&bao, None), server.addr, NAME, 2);
    let serving =
        common::renewals_before_expiry(&mut events, first, 2, Duration::from_secs(30)).await;
    let handshakes = load.finish().await;
    assert!(handshakes > 50, "{handshakes} handshakes");
    rotator.rotate_now().await.unwrap();
    assert_ne!(rotator.current().unwrap().serial, serving.serial);
}

/// A periodic token of 4 s, kept alive across several periods by the
/// source's renewal alone: it still signs afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_token_is_kept_alive() {
    let bao = Bao::start(Duration::from_secs(3600));
    let (token_file, token) = bao.token_file(Some(Duration::from_secs(4)));
    let rotator = rotator(source(&bao, &token_file)).await;
    tokio::time::sleep(Duration::from_secs(14)).await;
    let lookup = bao.cli(&["token", "lookup", "-format=json", &token]);
    assert!(lookup.contains("\"period\""), "{lookup}");
    rotator.rotate_now().await.unwrap();
    assert_eq!(rotator.health().last_error, None);
}

/// A revoked token: the next renewal fails, reported as such, and the
/// certificate keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_reported() {
    let bao = Bao::start(Duration::from_secs(3600));
    let (token_file, token) = bao.token_file(None);
    let rotator = rotator(source(&bao, &token_file)).await;
    let serving = rotator.current().unwrap();
    bao.cli(&["token", "revoke", &token]);
    assert!(rotator.rotate_now().await.is_err());
    let error = rotator.health().last_error.unwrap_or_default();
    assert!(error.contains("expired or was revoked"), "{error}");
    assert_eq!(rotator.current().unwrap().serial, serving.serial);
}

/// The role stops allowing the name: a typed refusal, the old certificate
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_stops_allowing_the_name_is_refused_cleanly() {
    let bao = Bao::start(Duration::from_secs(3600));
    let (token_file, _) = bao.token_file(None);
    let rotator = rotator(source(&bao, &token_file)).await;
    let serving = rotator.current().unwrap();
    bao.allow("other.test", Duration::from_secs(3600));
    assert!(rotator.rotate_now().await.is_err());
    let error = rotator.health().last_error.unwrap_or_default();
    assert!(
        error.contains("Vault refused pki/sign/svc (400)"),
        "{error}"
    );
    assert_eq!(rotator.current().unwrap().serial, serving.serial);
}

/// OpenBao stopped (SIGSTOP) across a renewal: the request is given up
/// within the source's timeout, reported, the certificate keeps serving;
/// once it answers again, the next renewal goes through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_given_up_and_renewal_resumes() {
    let bao = Bao::start(Duration::from_secs(3600));
    let (token_file, _) = bao.token_file(None);
    let rotator = rotator(source(&bao, &token_file)).await;
    let serving = rotator.current().unwrap();
    bao.freeze(true);
    let started = tokio::time::Instant::now();
    assert!(rotator.rotate_now().await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let error = rotator.health().last_error.unwrap_or_default();
    assert!(error.contains("did not answer within 2s"), "{error}");
    assert_eq!(rotator.current().unwrap().serial, serving.serial);
    bao.freeze(false);
    rotator.rotate_now().await.unwrap();
    assert_ne!(rotator.current().unwrap().serial, serving.serial);
}

/// A new root made default in OpenBao while the old one stays: clients of
/// the old and of the new issuer are both accepted, the trust following
/// the mount's issuers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_rotation_keeps_clients_of_both() {
    let bao = Bao::start(Duration::from_secs(3600));
    let (token_file, _) = bao.token_file(None);
    let rotator = rotator(source(&bao, &token_file)).await;
    let trust = VaultTrust::builder(&bao.addr, "pki", TokenFile::new(&token_file))
        .dangerous()
        .allow_plain_http()
        .every(Duration::from_secs(3600))
        .follow()
        .await
        .unwrap();
    let config = rotator
        .server_config_with_client_auth(trust.store())
        .unwrap();
    let server = common::serve(Arc::new(config)).await;
    let old_client = bao.issue_client("pki");
    assert!(
        common::serial_seen(&client(&bao, Some(old_client.clone())), server.addr, NAME)
            .await
            .is_ok()
    );

    bao.cli(&[
        "write",
        "pki/root/generate/internal",
        "common_name=test root 2",
        "issuer_name=root-2",
        "ttl=8760h",
    ]);
    bao.cli(&["write", "pki/config/issuers", "default=root-2"]);
    let new_client = bao.issue_client("pki");
    // Not trusted until the trust follows the mount.
    assert!(
        common::serial_seen(&client(&bao, Some(new_client.clone())), server.addr, NAME)
            .await
            .is_err()
    );
    trust.refresh().await.unwrap();
    for (which, identity) in [("old", old_client), ("new", new_client)] {
        let seen = common::serial_seen(&client(&bao, Some(identity)), server.addr, NAME).await;
        assert!(seen.is_ok(), "{which} issuer's client: {seen:?}");
    }
}

/// AppRole: a role id, and a secret id read from a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_with_approle() {
    let bao = Bao::start(Duration::from_secs(3600));
    bao.cli(&["auth", "enable", "approle"]);
    bao.cli(&[
        "write",
        "auth/approle/role/svc",
        "token_policies=certs",
        "token_ttl=1m",
    ]);
    let role_id = bao.cli(&["read", "-field=role_id", "auth/approle/role/svc/role-id"]);
    let secret_id = bao.cli(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/svc/secret-id",
    ]);
    let secret_file = bao.dir.join("secret-id");
    std::fs::write(&secret_file, format!("{}\n", secret_id.trim())).unwrap();
    let source = VaultSource::builder(&bao.addr, "pki", "svc", [NAME])
        .auth(AppRole::new(role_id.trim(), &secret_file))
        .dangerous()
        .allow_plain_http()
        .build()
        .unwrap();
    let rotator = rotator(source).await;
    let first = rotator.current().unwrap();
    rotator.rotate_now().await.unwrap();
    assert_ne!(rotator.current().unwrap().serial, first.serial);
}

/// OpenBao killed: reported at once (nothing listens), the certificate
/// keeps serving; back (empty, with a new token written to the token
/// file, as an agent does): the next renewal goes through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_reported_and_renewal_resumes_when_it_is_back() {
    let mut bao = Bao::start(Duration::from_secs(3600));
    let (token_file, _) = bao.token_file(None);
    let rotator = rotator(source(&bao, &token_file)).await;
    let serving = rotator.current().unwrap();
    bao.kill();
    assert!(rotator.rotate_now().await.is_err());
    let error = rotator.health().last_error.unwrap_or_default();
    assert!(error.contains("unreachable"), "{error}");
    assert_eq!(rotator.current().unwrap().serial, serving.serial);

    let bao = bao.restart_empty(Duration::from_secs(3600));
    let (new_token_file, _) = bao.token_file(None);
    std::fs::copy(&new_token_file, &token_file).unwrap();
    rotator.rotate_now().await.unwrap();
    assert_ne!(rotator.current().unwrap().serial, serving.serial);
}

/// `key_made_by_vault`: `<mount>/issue/<role>`, the key from the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_with_a_key_made_by_vault() {
    let bao = Bao::start(Duration::from_secs(3600));
    let source = VaultSource::builder(&bao.addr, "pki", "svc", [NAME])
        .auth(TokenFile::new(root_token_file(&bao)))
        .dangerous()
        .allow_plain_http()
        .key_made_by_vault()
        .build()
        .unwrap();
    let rotator = rotator(source).await;
    assert_eq!(rotator.current().unwrap().dns_names, [NAME]);
}

/// A token file holding the root token (the test policy grants `sign`
/// only).
fn root_token_file(bao: &Bao) -> std::path::PathBuf {
    let path = bao.dir.join("root-token");
    std::fs::write(&path, "root").unwrap();
    path
}

/// An intermediate mount whose issuer was set with its parent in the
/// bundle (OpenBao then imports the parent as an issuer, without its key):
/// the trust of the intermediate mount accepts its own clients, not those
/// the parent signs for other mounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_parent_is_not_trusted() {
    let bao = Bao::start(Duration::from_secs(3600));
    let (token_file, _) = bao.token_file(None);
    bao.cli(&["secrets", "enable", "-path=pki_int", "pki"]);
    let csr = bao.cli(&[
        "write",
        "-field=csr",
        "pki_int/intermediate/generate/internal",
        "common_name=test intermediate",
    ]);
    let csr_file = bao.dir.join("int.csr");
    std::fs::write(&csr_file, csr).unwrap();
    let signed = bao.cli(&[
        "write",
        "-field=certificate",
        "pki/root/sign-intermediate",
        &format!("csr=@{}", csr_file.display()),
        "format=pem_bundle",
        "ttl=4380h",
    ]);
    let bundle = bao.dir.join("int-bundle.pem");
    let root = bao.cli(&["read", "-field=certificate", "pki/issuer/default"]);
    std::fs::write(&bundle, format!("{}\n{}\n", signed.trim(), root.trim())).unwrap();
    bao.cli(&[
        "write",
        "pki_int/intermediate/set-signed",
        &format!("certificate=@{}", bundle.display()),
    ]);
    bao.cli(&[
        "write",
        "pki_int/roles/svc",
        "allowed_domains=svc.test",
        "allow_subdomains=true",
        "key_type=any",
    ]);
    let rotator = rotator(source(&bao, &token_file)).await;
    let trust = VaultTrust::builder(&bao.addr, "pki_int", TokenFile::new(root_token_file(&bao)))
        .dangerous()
        .allow_plain_http()
        .follow()
        .await
        .unwrap();
    assert_eq!(trust.store().roots().len(), 1, "the parent is trusted");
    let config = rotator
        .server_config_with_client_auth(trust.store())
        .unwrap();
    let server = common::serve(Arc::new(config)).await;
    let own = common::serial_seen(
        &client(&bao, Some(bao.issue_client("pki_int"))),
        server.addr,
        NAME,
    )
    .await;
    assert!(own.is_ok(), "the mount's own client: {own:?}");
    let other = common::serial_seen(
        &client(&bao, Some(bao.issue_client("pki"))),
        server.addr,
        NAME,
    )
    .await;
    assert!(other.is_err(), "a client of another mount was accepted");
}

/// The role's TTL capped under what the policy requires (Vault signs for
/// less, with a warning): the certificate is refused by the policy with a
/// typed error, and the one serving keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_capped_under_the_policy_is_refused_cleanly() {
    let bao = Bao::start(Duration::from_secs(3600));
    let (token_file, _) = bao.token_file(None);
    let source = VaultSource::builder(&bao.addr, "pki", "svc", [NAME])
        .auth(TokenFile::new(&token_file))
        .dangerous()
        .allow_plain_http()
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap();
    let policy = Policy::builder()
        .server_name(NAME)
        .min_remaining(Duration::from_secs(600))
        .build()
        .unwrap();
    let rotator = Rotator::builder(source, policy)
        .store(CertStore::new())
        .start()
        .await
        .unwrap();
    let serving = rotator.current().unwrap();
    bao.allow("svc.test", Duration::from_secs(60));
    let refused = rotator.rotate_now().await.unwrap_err();
    assert!(
        matches!(refused, certrotate::RotateError::Refused(_)),
        "{refused}"
    );
    assert_eq!(rotator.current().unwrap().serial, serving.serial);
}

/// A wrong AppRole secret id: the login is refused, reported as the
/// credentials' fault (not as a Vault that is down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_reported_as_such() {
    let bao = Bao::start(Duration::from_secs(3600));
    bao.cli(&["auth", "enable", "approle"]);
    bao.cli(&["write", "auth/approle/role/svc", "token_policies=certs"]);
    let role_id = bao.cli(&["read", "-field=role_id", "auth/approle/role/svc/role-id"]);
    let secret_file = bao.dir.join("wrong-secret-id");
    std::fs::write(&secret_file, "not-the-secret-id\n").unwrap();
    let source = VaultSource::builder(&bao.addr, "pki", "svc", [NAME])
        .auth(AppRole::new(role_id.trim(), &secret_file))
        .dangerous()
        .allow_plain_http()
        .build()
        .unwrap();
    let policy = Policy::builder().server_name(NAME).build().unwrap();
    let rotator = Rotator::builder(source, policy).spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let error = loop {
        if let Some(error) = rotator.health().last_error {
            break error;
        }
        assert!(tokio::time::Instant::now() < deadline, "no error reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("login (AppRole"), "{error}");
    assert!(error.contains("was refused"), "{error}");
}

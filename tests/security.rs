//! Security claims of SECURITY.md that are not about files or trust, each
//! test named after the claim it proves: nonces that never repeat, secrets
//! that never reach a message, and a health endpoint that tells strangers
//! nothing they could use.

mod common;

use certrotate::source::StaticSource;
use certrotate::{CertStore, HealthService, Policy, Rotator};
use common::{Ca, Leaf};

/// The health endpoint answers strangers with the status, alert levels,
/// expiry and error codes only; the detailed one (an internal port) keeps
/// names, serials, paths and messages.
#[cfg(feature = "health")]
#[tokio::test]
async fn public_health_tells_no_names_paths_hosts_or_messages() {
    use http_body_util::BodyExt;
    use tower_service::Service;

    let ca = Ca::new();
    let secret_name = "payroll.internal.example";
    let issued = ca.issue(Leaf::default().names(&[secret_name]));
    let store = CertStore::new();
    let source = StaticSource::new(issued.bundle.clone());
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store.clone())
        .start()
        .await
        .unwrap();
    // A refused candidate, whose message names the certificate.
    let mismatched = certrotate::CertBundle::from_pem(
        ca.nth(5).to_pem().0.as_bytes(),
        issued.key_pem.as_bytes(),
    )
    .unwrap();
    source.push(mismatched);
    rotator.rotate_now().await.unwrap_err();
    // A slot whose files are missing: its error names a path.
    let path = "/nonexistent/secret-dir/tls.crt";
    let _unserved = Rotator::builder(
        StaticSource::new(issued.bundle.clone()),
        Policy::builder()
            .server_name("other.example")
            .build()
            .unwrap(),
    )
    .store(store.clone())
    .slot(path)
    .spawn();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let get = |mut service: HealthService, query: &'static str| async move {
        let request = http::Request::get(format!("/healthz{query}"))
            .body(())
            .unwrap();
        let response = service.call(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    for query in ["", "?format=prometheus"] {
        let (status, public) = get(HealthService::new(store.clone()), query).await;
        assert_eq!(status, 200, "{public}");
        for secret in [
            secret_name,
            path,
            "secret-dir",
            &issued.bundle.info().serial,
            &issued.bundle.info().fingerprint_sha256,
            "does not match",
        ] {
            assert!(
                !public.contains(secret),
                "public health{query} tells {secret:?}:\n{public}"
            );
        }
        let (_, detailed) = get(HealthService::detailed(store.clone()), query).await;
        let expected = match query {
            "" => secret_name,
            _ => "slot=\"default\"",
        };
        assert!(detailed.contains(expected), "{detailed}");
    }
    let (_, public) = get(HealthService::new(store.clone()), "").await;
    let json: serde_json::Value = serde_json::from_str(&public).unwrap();
    assert_eq!(json["alert"], "ok");
    assert_eq!(json["certificates"][0]["last_error_code"], "key_mismatch");
    assert!(
        json["certificates"][0]["remaining_seconds"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(json["unserved"][0], "name_not_covered");
    rotator.shutdown().await;
}

/// AES-256-GCM nonces come from the operating system's generator: two
/// stores made with `fastrand` reseeded identically before each (as any
/// crate in the process may do) still use different nonces.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_nonces_never_repeat_even_when_fastrand_is_reseeded() {
    use certrotate::acme::{RedisStorage, Storage};
    let redis = common::redis::Redis::start();
    let storage = RedisStorage::connect(&redis.url(), common::redis::KEY)
        .await
        .unwrap();
    let mut nonces = Vec::new();
    for (key, value) in [("a", &b"first value"[..]), ("b", b"other value")] {
        fastrand::seed(7);
        storage.store(key, value).await.unwrap();
        // `cr1`, 20 digits of version, then the nonce.
        let sealed = redis.bytes(&format!("certrotate:{key}"));
        nonces.push(sealed[23..35].to_vec());
    }
    assert_ne!(nonces[0], nonces[1], "a nonce was reused");
    assert_eq!(storage.load("a").await.unwrap().unwrap(), b"first value");
}

/// No form of Redis credentials the redis crate accepts reaches an error
/// message or a `Debug` print: `user:password@`, and `?pass=` / `?user=` on
/// a unix socket URL.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_credentials_never_reach_a_message() {
    let _ = rustls::crypto::CryptoProvider::install_default((*common::provider()).clone());
    let port = common::pebble::free_port();
    for url in [
        format!("redis://admin:hunter2-secret@127.0.0.1:{port}/3"),
        format!("rediss://admin:hunter2-secret@127.0.0.1:{port}/3"),
        "redis+unix:///nonexistent/redis.sock?db=2&user=admin&pass=hunter2-secret".to_owned(),
        "unix:///nonexistent/redis.sock?pass=hunter2-secret".to_owned(),
    ] {
        let builder = certrotate::acme::RedisStorage::builder(&url, common::redis::KEY);
        let debug = format!("{builder:?}");
        let error = builder.connect().await.unwrap_err().to_string();
        for seen in [&debug, &error] {
            assert!(!seen.contains("hunter2"), "{url}: {seen}");
            assert!(!seen.contains("admin"), "{url}: {seen}");
        }
        assert!(
            error.contains("127.0.0.1") || error.contains("/nonexistent/redis.sock"),
            "the server is named: {error}"
        );
    }
}

/// ACME state lives in a directory only its owner can enter: `FileStorage`
/// creates it (and any missing parent) with mode 0700, and its files 0600.
#[cfg(all(unix, feature = "acme"))]
#[tokio::test]
async fn acme_state_directories_are_created_0700_and_files_0600() {
    use certrotate::acme::{FileStorage, Storage};
    use std::os::unix::fs::PermissionsExt;
    let dir = common::TempDir::new("security-state");
    let state = dir.join("var/lib/acme");
    let storage = FileStorage::new(&state);
    storage.store("account.json", b"{}").await.unwrap();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "the state directory");
    assert_eq!(mode(&dir.join("var/lib")), 0o700, "a parent it created");
    assert_eq!(mode(&state.join("account.json")), 0o600);
}

/// A value put back into Redis by someone without the encryption key (a
/// restored backup, a replay) is read, not refused, by the storage: a
/// storage counter cannot tell an attack from Redis restarted empty, so
/// what is older is judged by the certificate's own dates (the high-water
/// mark; `security_replay.rs`). Its version cannot be forged: it is bound
/// into the AEAD's associated data.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_value_put_back_is_read_and_its_version_cannot_be_forged() {
    use certrotate::acme::{RedisStorage, Storage};
    let redis = common::redis::Redis::start();
    let storage = RedisStorage::connect(&redis.url(), common::redis::KEY)
        .await
        .unwrap();
    storage.store("cert", b"first").await.unwrap();
    let old = redis.bytes("certrotate:cert");
    storage.store("cert", b"second").await.unwrap();
    assert_eq!(storage.load("cert").await.unwrap().unwrap(), b"second");

    redis.set_bytes("certrotate:cert", &old);
    assert_eq!(storage.load("cert").await.unwrap().unwrap(), b"first");

    // Raising the old value's version does not decrypt.
    let mut forged = old.clone();
    forged[3..23].copy_from_slice(b"00000000000000000099");
    redis.set_bytes("certrotate:cert", &forged);
    let error = storage.load("cert").await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("cannot be decrypted"), "{error}");
}

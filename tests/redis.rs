//! `RedisStorage` against a real `redis-server` (Debian's, started here on a
//! free port of 127.0.0.1): encryption at rest, the fenced lease lock, and
//! Redis going away and coming back.

mod common;

use std::process::Command;
use std::time::Duration;

use certrotate::acme::{RedisStorage, Storage};
use common::redis::Redis;

use common::redis::KEY;

#[tokio::test]
async fn values_are_encrypted_at_rest_and_bound_to_their_key() {
    let redis = Redis::start();
    let storage = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    let secret = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n";
    storage.store("cert", secret).await.unwrap();
    assert_eq!(storage.load("cert").await.unwrap().unwrap(), secret);
    assert_eq!(storage.load("missing").await.unwrap(), None);

    // What Redis holds reveals nothing of the key.
    let raw = redis.raw("certrotate:cert");
    assert!(raw.len() > secret.len());
    for needle in [&b"PRIVATE KEY"[..], b"MIGHAgEA", b"BEGIN"] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "plaintext in Redis"
        );
    }

    // Without the right key, nothing is read; a value moved to another key
    // does not decrypt either.
    let other = RedisStorage::connect(&redis.url(), [7; 32]).await.unwrap();
    let error = other.load("cert").await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("cannot be decrypted"), "{error}");
    let copy = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "COPY",
            "certrotate:cert",
            "certrotate:account",
        ])
        .output()
        .unwrap();
    assert!(copy.status.success());
    assert!(storage.load("account").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_lock_is_exclusive_expires_and_fences_stale_holders() {
    let redis = Redis::start();
    let a = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    let b = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    common::storage::lease_lock_semantics(&a, &b).await;
    common::storage::heartbeat_semantics(&a, &b).await;
    common::storage::one_winner_per_round(vec![std::sync::Arc::new(a), std::sync::Arc::new(b)])
        .await;
}

/// What the storage's bookkeeping may lose or an attacker without the key
/// may plant never stops the fleet: a value with a planted huge version,
/// Redis emptied (a restart without persistence) under replicas that read
/// higher versions before, a value that does not decrypt. Each next write
/// is stored and read by every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_or_planted_versions_never_stop_writes_or_reads() {
    let redis = Redis::start();
    let a = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    let b = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    for value in [&b"one"[..], b"two", b"three"] {
        a.store("cert", value).await.unwrap();
        assert_eq!(b.load("cert").await.unwrap().unwrap(), value);
    }

    // A huge version planted in front of garbage: not trusted, replaced.
    let mut planted = b"cr199999999999999999999".to_vec();
    planted.extend_from_slice(&[0x5a; 48]);
    redis.set_bytes("certrotate:cert", &planted);
    let error = b.load("cert").await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    a.store("cert", b"four").await.unwrap();
    assert_eq!(b.load("cert").await.unwrap().unwrap(), b"four");
    assert_ne!(redis.bytes("certrotate:cert"), planted);

    // Redis emptied; a replica that never saw the old versions writes
    // version 1, and those that saw higher ones read it.
    redis.flush();
    let fresh = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    fresh.store("cert", b"after the restart").await.unwrap();
    for replica in [&a, &b] {
        let read = replica.load("cert").await.unwrap().unwrap();
        assert_eq!(read, b"after the restart");
    }

    // A value that does not decrypt is replaced by the next fenced writer.
    redis.set_bytes("certrotate:cert", b"not a sealed value at all, just bytes");
    let lease = b
        .try_lock("renew", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    b.store_fenced("cert", b"fenced", &lease).await.unwrap();
    assert_eq!(a.load("cert").await.unwrap().unwrap(), b"fenced");
}

/// Values in the format of before versions (sealed with the Redis key alone
/// as associated data) are read by a storage that never saw a versioned
/// value of the key, refused once it did, and refused from the first read
/// with `refuse_unversioned`.
#[tokio::test]
async fn unversioned_values_are_refused_once_a_versioned_one_was_seen() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let redis = Redis::start();
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&KEY).unwrap();
    let nonce = [9u8; 12];
    let sealed = cipher
        .encrypt(
            aes_gcm::Nonce::from_slice(&nonce),
            Payload {
                msg: b"legacy",
                aad: b"certrotate:cert",
            },
        )
        .unwrap();
    let legacy = [&nonce[..], &sealed].concat();
    redis.set_bytes("certrotate:cert", &legacy);

    let cold = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    assert_eq!(cold.load("cert").await.unwrap().unwrap(), b"legacy");
    let strict = RedisStorage::builder(&redis.url(), KEY)
        .refuse_unversioned(true)
        .connect()
        .await
        .unwrap();
    let error = strict.load("cert").await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("has no version"), "{error}");

    cold.store("cert", b"versioned").await.unwrap();
    redis.set_bytes("certrotate:cert", &legacy);
    let error = cold.load("cert").await.unwrap_err();
    assert!(error.to_string().contains("has no version"), "{error}");
}

/// A holder whose lock Redis lost (restarted empty) takes it back with its
/// heartbeat and may still write (no newer holder exists); once another
/// instance took the lock, the old holder is fenced out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_lost_with_redis_is_taken_back_unless_someone_else_took_it() {
    let redis = Redis::start();
    let a = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    let b = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    let lease = Duration::from_secs(5);
    let held = a.try_lock("renew", lease).await.unwrap().unwrap();
    redis.flush();
    assert!(a.renew_lock(&held, lease).await.unwrap(), "taken back");
    assert!(b.try_lock("renew", lease).await.unwrap().is_none());
    a.store_fenced("cert", b"from a", &held).await.unwrap();
    assert_eq!(b.load("cert").await.unwrap().unwrap(), b"from a");

    redis.flush();
    let taken = b.try_lock("renew", lease).await.unwrap().unwrap();
    assert!(!a.renew_lock(&held, lease).await.unwrap(), "taken over");
    let error = a.store_fenced("cert", b"stale", &held).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
    b.store_fenced("cert", b"from b", &taken).await.unwrap();
}

/// Keys planted by someone with write access to Redis (not the encryption
/// key) cannot wedge the lock or the values: a fence that is not a number,
/// a lock without an expiry, a value key of another type; and a fence
/// deleted with the lock does not let a stale holder write, nor does a
/// released lock get taken back by a late heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_keys_cannot_wedge_the_lock_or_the_values() {
    let redis = Redis::start();
    let a = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    let b = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    let lease = Duration::from_millis(300);

    redis.command(&["SET", "certrotate:fence:renew", "not a number"]);
    let held = a.try_lock("renew", lease).await.unwrap().expect("taken");
    a.store_fenced("cert", b"fenced", &held).await.unwrap();
    a.unlock(&held).await.unwrap();
    redis.command(&["LPUSH", "certrotate:fence:renew", "a list"]);
    let held = a.try_lock("renew", lease).await.unwrap().expect("taken");
    a.unlock(&held).await.unwrap();

    redis.command(&["SET", "certrotate:lock:renew", "forever"]);
    let held = b.try_lock("renew", lease).await.unwrap();
    b.unlock(&held.expect("a lock without expiry"))
        .await
        .unwrap();
    redis.command(&[
        "SET",
        "certrotate:lock:renew",
        "a year",
        "PX",
        "31536000000",
    ]);
    let held = b.try_lock("renew", lease).await.unwrap();
    assert!(held.is_some(), "a lock for a year");

    redis.command(&["DEL", "certrotate:cert"]);
    redis.command(&["LPUSH", "certrotate:cert", "a list"]);
    let error = b.load("cert").await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    a.store("cert", b"replaced").await.unwrap();
    assert_eq!(b.load("cert").await.unwrap().unwrap(), b"replaced");

    // A stale holder, once the fence and the lock are deleted: fenced out.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let stale = a.try_lock("order", lease).await.unwrap().unwrap();
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let _newer = b.try_lock("order", lease).await.unwrap().unwrap();
    redis.command(&["DEL", "certrotate:fence:order", "certrotate:lock:order"]);
    let error = a.store_fenced("cert", b"stale", &stale).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);

    // Taken over and released since: a late renewal does not take it back.
    let first = a.try_lock("late", lease).await.unwrap().unwrap();
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let second = b.try_lock("late", lease).await.unwrap().unwrap();
    b.unlock(&second).await.unwrap();
    assert!(!a.renew_lock(&first, lease).await.unwrap());
    assert!(b.try_lock("late", lease).await.unwrap().is_some());
}

#[tokio::test]
async fn redis_down_is_an_error_and_coming_back_is_picked_up() {
    let redis = Redis::start();
    let (port, url) = (redis.port, redis.url());
    let storage = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    storage.store("cert", b"kept").await.unwrap();
    drop(redis);

    let started = tokio::time::Instant::now();
    let error = storage.load("cert").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "failed after {:?}",
        started.elapsed()
    );
    assert!(
        error.to_string().starts_with(&format!("Redis at {url}: ")),
        "{error}"
    );
    assert!(storage
        .try_lock("order", Duration::from_secs(1))
        .await
        .is_err());

    // Back, empty (no persistence): the same storage reconnects by itself.
    let _redis = Redis::start_at(port);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match storage.store("cert", b"again").await {
            Ok(()) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "never reconnected: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(storage.load("cert").await.unwrap().unwrap(), b"again");
}

#[tokio::test]
async fn tls_with_a_private_ca_and_an_acl_user() {
    // An application with both provider features on installs one; the
    // redis crate's TLS needs it.
    let _ = rustls::crypto::CryptoProvider::install_default((*common::provider()).clone());
    let ca = common::Ca::new();
    let leaf = ca.issue(common::Leaf::default().names(&["127.0.0.1"]));
    let redis = Redis::start_tls(&ca.pem, &leaf.cert_pem, &leaf.key_pem, "fleet", "s3cret");
    let url = |password: &str| format!("rediss://fleet:{password}@127.0.0.1:{}/0", redis.port);

    let storage = RedisStorage::builder(&url("s3cret"), KEY)
        .root_certificates(ca.pem.as_bytes())
        .connect()
        .await
        .unwrap();
    storage.store("cert", b"over TLS").await.unwrap();
    assert_eq!(
        storage.load("cert").await.unwrap().as_deref(),
        Some(&b"over TLS"[..])
    );
    let lease = storage
        .try_lock("renew", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the lock (Lua scripts) works for this user");
    storage
        .store_fenced("cert", b"fenced", &lease)
        .await
        .unwrap();

    // Without the private root, the server does not verify; a wrong
    // password is refused. The password never shows.
    let untrusted = RedisStorage::connect(&url("s3cret"), KEY)
        .await
        .unwrap_err();
    let refused = RedisStorage::builder(&url("wrong"), KEY)
        .root_certificates(ca.pem.as_bytes())
        .connect()
        .await
        .unwrap_err();
    for (error, says) in [
        (untrusted, "certificate"),
        (refused, "authentication failed"),
    ] {
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("Redis at rediss://127.0.0.1:{}/0: ", redis.port)),
            "{message}"
        );
        assert!(message.contains(says), "{message}");
        assert!(
            !message.contains("s3cret") && !message.contains("wrong"),
            "{message}"
        );
    }
}

//! No key bytes, ever, in logs, events, health or metrics: a whole life of
//! rotations, refusals (a wrong key among them), rollbacks and source
//! failures is traced at TRACE level, and none of the private keys involved
//! shows up anywhere, in any encoding.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use certrotate::source::StaticSource;
use certrotate::{CertBundle, Policy, Rotator};
use common::{Ca, Leaf, HOST};

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures everything traced on this thread, at TRACE level, while
    /// the guard lives.
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }
}

/// Recognizable pieces of a key: its PEM lines, and its DER in hex.
fn fragments(bundle: &CertBundle) -> Vec<String> {
    let (_, key_pem) = bundle.to_pem();
    let mut fragments: Vec<String> = key_pem
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(|line| line[..16].to_owned())
        .collect();
    let der = bundle.key().secret_der();
    let hex = |bytes: &[u8], sep: &str| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(sep)
    };
    // The secret scalar sits past the PKCS#8 header: take a slice of it.
    let secret = &der[der.len() / 2..der.len() / 2 + 12];
    fragments.extend([
        hex(secret, ""),
        hex(secret, ":"),
        hex(secret, ", "),
        format!("{secret:?}")[1..30].to_owned(),
    ]);
    fragments
}

#[tokio::test(flavor = "current_thread")]
async fn no_key_material_in_logs_events_health_or_debug_output() {
    let (captured, _guard) = Captured::start();

    let ca = Ca::new();
    let first = ca.nth(0);
    let second = ca.nth(10);
    let other = ca.issue(Leaf::default());
    // The right certificate with someone else's key: refused, key mismatch.
    let mismatched =
        CertBundle::from_pem(ca.nth(20).to_pem().0.as_bytes(), other.key_pem.as_bytes()).unwrap();
    let source = StaticSource::new(first.clone());
    let rotator = Rotator::builder(
        source.clone(),
        Policy::builder().server_name(HOST).build().unwrap(),
    )
    .start()
    .await
    .unwrap();
    let mut events = rotator.subscribe();
    common::push_and_rotate(&rotator, &source, second.clone()).await;
    source.push(mismatched.clone());
    rotator.rotate_now().await.unwrap_err();
    rotator.rollback().unwrap();
    let mut seen = String::new();
    while let Ok(event) = events.try_recv() {
        seen += &format!("{event:?}\n");
    }
    seen += &serde_json::to_string(&rotator.health()).unwrap();
    seen += &format!(
        "{:?} {:?} {:?} {:?}",
        first,
        mismatched,
        rotator,
        rotator.resolver()
    );
    seen += &String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        seen.contains("does not match"),
        "the refusal was logged:\n{seen}"
    );
    assert!(seen.contains("<redacted>"));

    for bundle in [&first, &second, &mismatched] {
        for fragment in fragments(bundle) {
            assert!(
                !seen.contains(&fragment),
                "key material {fragment:?} leaked"
            );
        }
    }
    rotator.shutdown().await;
}

/// The paths that hold key bytes in plain buffers (a combined PEM file, the
/// ACME storage's certificate and account) put none of them in a message:
/// a combined file with a wrong key, and a stored ACME certificate whose key
/// is cut short, traced at TRACE level.
#[cfg(all(unix, feature = "file", feature = "acme"))]
#[tokio::test(flavor = "current_thread")]
async fn no_key_material_from_combined_files_or_acme_storage() {
    use certrotate::acme::{FileStorage, Storage};
    use certrotate::{AcmeSource, CertSource, FileSource};

    let (captured, _guard) = Captured::start();

    let ca = Ca::new();
    let (good, other) = (ca.issue(Leaf::default()), ca.issue(Leaf::default()));
    let dir = common::TempDir::new("secrets-combined");
    let combined = dir.join("both.pem");
    std::fs::write(&combined, format!("{}{}", good.cert_pem, good.key_pem)).unwrap();
    let source = FileSource::combined(&combined).options(common::file_options());
    let rotator = Rotator::builder(source, Policy::builder().server_name(HOST).build().unwrap())
        .start()
        .await
        .unwrap();
    let mut seen = String::new();
    // The certificate with someone else's key, in one file.
    std::fs::write(&combined, format!("{}{}", good.cert_pem, other.key_pem)).unwrap();
    seen += &format!("{:?}\n", rotator.rotate_now().await);
    seen += &serde_json::to_string(&rotator.health()).unwrap();

    // ACME storage holding a certificate whose key is cut short, and the CA
    // out of reach: the stored value is read, parsed and refused.
    let storage = FileStorage::new(dir.join("acme"));
    let cut = &other.key_pem[..other.key_pem.len() / 2];
    let directory = "https://127.0.0.1:9/directory";
    let acme = AcmeSource::builder(directory, ["a.example"])
        .storage(storage.clone())
        .timeout(std::time::Duration::from_secs(1))
        .build();
    let (cert_key, account_key, _) = common::acme_keys(directory, "a.example");
    let corrupt = format!("{}{cut}", good.cert_pem);
    storage.store(&cert_key, corrupt.as_bytes()).await.unwrap();
    storage
        .store(&account_key, corrupt.as_bytes())
        .await
        .unwrap();
    let fetched = acme.fetch().await;
    assert!(fetched.is_err());
    seen += &format!("{fetched:?}\n");
    seen += &format!("{:?} {:?}\n", acme, storage);
    seen += &String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();

    assert!(
        seen.contains("does not match"),
        "the refusal was logged:\n{seen}"
    );
    assert!(
        seen.contains("stored ACME certificate is unusable"),
        "the stored certificate was read:\n{seen}"
    );
    for bundle in [&good.bundle, &other.bundle] {
        for fragment in fragments(bundle) {
            assert!(
                !seen.contains(&fragment),
                "key material {fragment:?} leaked:\n{seen}"
            );
        }
    }
    rotator.shutdown().await;
}

/// A whole ACME order against Pebble (the CSR key made, finalized, the
/// certificate and its key saved), and a key stored in and loaded from
/// Redis, traced at TRACE level: no fragment of either key in any message.
#[cfg(all(unix, feature = "redis"))]
#[tokio::test(flavor = "current_thread")]
async fn no_key_material_from_an_acme_order_or_redis() {
    use certrotate::acme::{FileStorage, RedisStorage, Storage};
    use certrotate::{AcmeSource, CertStore};
    use common::pebble::{Config, Pebble};

    let (captured, _guard) = Captured::start();

    let pebble = Pebble::start(Config::default());
    let state = common::TempDir::new("secrets-acme");
    let storage = FileStorage::new(state.path());
    let store = CertStore::new();
    let name = "secrets.certrotate.test";
    let source = AcmeSource::builder(&pebble.directory, [name])
        .directory_root(&pebble.https_root)
        .storage(storage.clone())
        .dns_01(common::pebble::challtestsrv::ChallTestSrv(
            pebble.dns_management,
        ))
        .build();
    let policy = Policy::builder().server_name(name).build().unwrap();
    let rotator = Rotator::builder(source, policy).store(store).spawn();
    let served = common::pebble::first_certificate(&rotator).await;
    let (cert_key, account_key, _) = common::acme_keys(&pebble.directory, name);
    let stored = storage.load(&cert_key).await.unwrap().unwrap();
    let issued = CertBundle::from_combined_pem(&stored).unwrap();
    assert_eq!(issued.info().serial, served.serial);
    let account = storage.load(&account_key).await.unwrap().unwrap();
    let account: serde_json::Value = serde_json::from_slice(&account).unwrap();
    let account_secret = account["key_pkcs8"]
        .as_str()
        .map(|key| key[key.len() / 2..key.len() / 2 + 24].to_owned())
        .expect("the account's key in its JSON");

    let redis = common::redis::Redis::start();
    let redis_storage = RedisStorage::connect(&redis.url(), common::redis::KEY)
        .await
        .unwrap();
    redis_storage.store("cert", &stored).await.unwrap();
    assert_eq!(redis_storage.load("cert").await.unwrap().unwrap(), stored);

    let mut seen = format!("{rotator:?} {redis_storage:?}\n");
    seen += &serde_json::to_string(&rotator.health()).unwrap();
    seen += &String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        seen.contains("ACME certificate issued"),
        "the order was traced"
    );
    for fragment in fragments(&issued) {
        assert!(
            !seen.contains(&fragment),
            "key material {fragment:?} leaked"
        );
    }
    assert!(!seen.contains(&account_secret), "the account key leaked");
    rotator.shutdown().await;
}

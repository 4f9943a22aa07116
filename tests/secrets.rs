//! No key bytes, ever, in logs, events, health or metrics: a whole life of
//! rotations, refusals (a wrong key among them), rollbacks and source
//! failures is traced at TRACE level, and none of the private keys involved
//! shows up anywhere, in any encoding.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use certrotate::{CertBundle, Policy, Rotator, StaticSource};
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
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

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

//! The `file_reload` example's command line is a contract: run the built
//! example as a user would and talk to it with curl.

#![cfg(all(unix, feature = "file"))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use common::{Ca, Issued, Leaf, TempDir};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The example binary `cargo test` built next to this test.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test` (which builds the examples) or `cargo build --examples`",
        path.display()
    );
    path
}

fn write_atomic(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn leaf(ca: &Ca, names: &[&str], age: u64) -> Issued {
    ca.issue(
        Leaf::default()
            .names(names)
            .valid_from(SystemTime::now() - Duration::from_secs(age)),
    )
}

/// GET `url` with curl, trusting `ca_file`; `localhost` is 127.0.0.1.
async fn curl(ca_file: &Path, port: u16, url: &str) -> String {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(ca_file)
        .arg(url)
        .output()
        .await
        .expect("curl is installed");
    assert!(
        output.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn health(ca_file: &Path, port: u16) -> serde_json::Value {
    let body = curl(ca_file, port, &format!("https://localhost:{port}/certs")).await;
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_reload_serves_rotates_and_reports() {
    let (dir, ca) = (TempDir::new("example"), Ca::new());
    let (cert, key, ca_file) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.pem"));
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let first = leaf(&ca, &["localhost", "127.0.0.1"], 3600);
    write_atomic(&cert, &first.cert_pem);
    write_atomic(&key, &first.key_pem);

    let mut child = tokio::process::Command::new(example("file_reload"))
        .args(["--listen", "127.0.0.1:0", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["--name", "localhost"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the example printed nothing")
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let port: u16 = addr.strip_prefix("127.0.0.1:").unwrap().parse().unwrap();
    assert_ne!(port, 0);

    assert_eq!(
        curl(&ca_file, port, &format!("https://localhost:{port}/")).await,
        "ok\n"
    );
    // A client connecting by IP address sends no SNI and gets the default certificate.
    assert_eq!(
        curl(&ca_file, port, &format!("https://127.0.0.1:{port}/")).await,
        "ok\n"
    );
    let report = health(&ca_file, port).await;
    assert_eq!(report["last_error"], serde_json::Value::Null);
    assert_eq!(
        report["certificates"][0]["serial"],
        first.bundle.info().serial
    );

    // A certificate for the wrong host is refused and reported; the old one serves.
    let wrong = leaf(&ca, &["elsewhere.example"], 1800);
    write_atomic(&cert, &wrong.cert_pem);
    write_atomic(&key, &wrong.key_pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report = health(&ca_file, port).await;
        if report["last_error"].is_string() {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error reported: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = report["last_error"].as_str().unwrap();
    assert!(error.contains("localhost"), "{error}");
    assert_eq!(
        report["certificates"][0]["serial"],
        first.bundle.info().serial
    );

    // A good one is served, and the error clears.
    let next = leaf(&ca, &["localhost", "127.0.0.1"], 60);
    write_atomic(&cert, &next.cert_pem);
    write_atomic(&key, &next.key_pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let report = health(&ca_file, port).await;
        if report["certificates"][0]["serial"] == next.bundle.info().serial {
            assert_eq!(report["last_error"], serde_json::Value::Null);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not rotated: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
}

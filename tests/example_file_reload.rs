//! The `file_reload` example's command line is a contract: run the built
//! example as a user would and talk to it with curl.

#![cfg(all(unix, feature = "file"))]

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::write_atomic;
use common::{Ca, Issued, Leaf, TempDir};

fn leaf(ca: &Ca, names: &[&str], age: u64) -> Issued {
    ca.issue(
        Leaf::default()
            .names(names)
            .valid_from(SystemTime::now() - Duration::from_secs(age)),
    )
}

/// GET `url` with curl, trusting `ca_file` (and presenting a client
/// certificate, if given); `localhost` is 127.0.0.1.
async fn try_curl(
    ca_file: &Path,
    port: u16,
    url: &str,
    client: Option<(&Path, &Path)>,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "5"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(ca_file);
    if let Some((cert, key)) = client {
        command.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let output = command.arg(url).output().await.expect("curl is installed");
    match output.status.success() {
        true => Ok(String::from_utf8(output.stdout).unwrap()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

async fn curl(ca_file: &Path, port: u16, url: &str) -> String {
    try_curl(ca_file, port, url, None)
        .await
        .unwrap_or_else(|e| panic!("curl {url} failed: {e}"))
}

/// The detailed health, from the admin port.
async fn health(admin: u16) -> serde_json::Value {
    serde_json::from_str(&common::get_plain(admin, "/certs").await.unwrap()).unwrap()
}

/// Runs the example with `args` and an admin port: the child, its port,
/// its admin port.
async fn run(args: &[&std::ffi::OsStr]) -> (tokio::process::Child, u16, u16) {
    common::run_example_with_admin("file_reload", args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_reload_serves_rotates_and_reports() {
    let (dir, ca) = (TempDir::new("example"), Ca::new());
    let (cert, key, ca_file) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.pem"));
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let first = leaf(&ca, &["localhost", "127.0.0.1"], 3600);
    write_atomic(&cert, &first.cert_pem);
    write_atomic(&key, &first.key_pem);

    let (mut child, port, admin) = run(&[
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--cert".as_ref(),
        cert.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
        "--name".as_ref(),
        "localhost".as_ref(),
    ])
    .await;

    assert_eq!(
        curl(&ca_file, port, &format!("https://localhost:{port}/")).await,
        "ok\n"
    );
    // A client connecting by IP address sends no SNI and gets the default certificate.
    assert_eq!(
        curl(&ca_file, port, &format!("https://127.0.0.1:{port}/")).await,
        "ok\n"
    );
    let report = health(admin).await;
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
        let report = health(admin).await;
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
        let report = health(admin).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_reload_with_client_ca_requires_and_follows_client_certificates() {
    let (dir, ca) = (TempDir::new("example-mtls"), Ca::new());
    let (cert, key, ca_file) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.pem"));
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let server = leaf(&ca, &["localhost"], 3600);
    write_atomic(&cert, &server.cert_pem);
    write_atomic(&key, &server.key_pem);
    // Two client CAs, a client of each.
    let (one, two) = (
        Ca::new_named("client CA one"),
        Ca::new_named("client CA two"),
    );
    let client_ca = dir.join("client-ca.pem");
    write_atomic(&client_ca, &one.pem);
    let write_client = |ca: &Ca, name: &str| {
        let issued = common::client_leaf(ca, 7);
        let (c, k) = (
            dir.join(&format!("{name}.crt")),
            dir.join(&format!("{name}.key")),
        );
        std::fs::write(&c, &issued.cert_pem).unwrap();
        std::fs::write(&k, &issued.key_pem).unwrap();
        (c, k)
    };
    let (c1, c2) = (write_client(&one, "client1"), write_client(&two, "client2"));
    let c1 = Some((c1.0.as_path(), c1.1.as_path()));
    let c2 = Some((c2.0.as_path(), c2.1.as_path()));

    let (mut child, port, admin) = run(&[
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--cert".as_ref(),
        cert.as_os_str(),
        "--key".as_ref(),
        key.as_os_str(),
        "--client-ca".as_ref(),
        client_ca.as_os_str(),
    ])
    .await;
    let url = format!("https://localhost:{port}/");
    assert!(
        try_curl(&ca_file, port, &url, None).await.is_err(),
        "no client certificate, yet served"
    );
    assert_eq!(try_curl(&ca_file, port, &url, c1).await.unwrap(), "ok\n");
    assert!(try_curl(&ca_file, port, &url, c2).await.is_err());
    let report: serde_json::Value =
        serde_json::from_str(&common::get_plain(admin, "/certs").await.unwrap()).unwrap();
    assert_eq!(report["client_ca"]["generation"], 1);
    assert_eq!(report["client_ca"]["last_error"], serde_json::Value::Null);

    // The client CA file is replaced: the other client gets in, the first not.
    write_atomic(&client_ca, &two.pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while try_curl(&ca_file, port, &url, c2).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new client CA was not taken up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(try_curl(&ca_file, port, &url, c1).await.is_err());

    // An empty file is refused; the trust in force stays.
    write_atomic(&client_ca, "");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let report = loop {
        let body = common::get_plain(admin, "/certs").await.unwrap();
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        if report["client_ca"]["last_error"].is_string() {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error reported: {report}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report["client_ca"]["generation"], 2);
    assert_eq!(try_curl(&ca_file, port, &url, c2).await.unwrap(), "ok\n");
    child.kill().await.unwrap();
}

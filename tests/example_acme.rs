//! The `acme` example's command line is a contract: run the built example
//! against Pebble as a user would, and talk to it with curl.

#![cfg(feature = "acme")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::pebble::{Config, Pebble};
use common::TempDir;

const NAME: &str = "shop.certrotate.test";

/// Polls until the example serves `/`, then returns its detailed /certs
/// report (from its admin port).
async fn until_serving(root: &Path, port: u16, admin: u16, within: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if common::pebble::get(root, NAME, port, "/").await.as_deref() == Ok("ok\n") {
            let body = common::get_plain(admin, "/certs").await.unwrap();
            return serde_json::from_str(&body).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing served within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A TLS handshake with the example on `port`, as soon as called: the
/// serial of the certificate it served.
async fn handshake(root_pem: &str, port: u16) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = common::client_builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(common::serial_of(
        &tls.get_ref().1.peer_certificates().unwrap()[0],
    ))
}

fn args<'a>(pebble: &'a Pebble, storage: &'a Path, rest: &[&'a str]) -> Vec<std::ffi::OsString> {
    let mut args = args_for(pebble, storage, &["--domain", NAME]);
    args.extend(rest.iter().map(Into::into));
    args
}

/// The example's arguments for `pebble` and `storage`, then `rest`.
fn args_for(pebble: &Pebble, storage: &Path, rest: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--directory".into(),
        pebble.directory.clone().into(),
        "--directory-root".into(),
        pebble.https_root.clone().into(),
        "--storage".into(),
        storage.into(),
    ];
    args.extend(rest.iter().map(Into::into));
    args
}

/// Runs the example with `args` and an admin port: the child, its port,
/// its admin port.
async fn run(args: &[std::ffi::OsString]) -> (tokio::process::Child, u16, u16) {
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    common::run_example_with_admin("acme", &refs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_example_obtains_with_tls_alpn_01_and_restarts_from_storage() {
    let pebble = Pebble::start(Config::default());
    // The example binds the validation ports itself.
    pebble.release();
    let (dir, storage) = (
        TempDir::new("example-acme"),
        TempDir::new("example-acme-storage"),
    );
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root()).unwrap();
    let listen = format!("127.0.0.1:{}", pebble.config.tls_port);
    let args = args(
        &pebble,
        storage.path(),
        &["--listen", &listen, "--challenge", "tls-alpn-01"],
    );

    let (mut child, port, admin) = run(&args).await;
    assert_eq!(port, pebble.config.tls_port);
    let report = until_serving(&root, port, admin, Duration::from_secs(60)).await;
    assert_eq!(report["last_error"], serde_json::Value::Null);
    let serial = report["certificates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    child.kill().await.unwrap();
    child.wait().await.unwrap();

    let trust = pebble.issuing_root();
    // Restarted with the same storage: the stored certificate from the
    // first connection after `listening on` (a race lost about one run in
    // two when the example listened before loading it), again and again.
    for restart in 0..5 {
        let (mut child, port, admin) = run(&args).await;
        let first = handshake(&trust, port).await;
        assert_eq!(
            first.as_deref(),
            Ok(serial.as_str()),
            "restart {restart}: first handshake"
        );
        let report = until_serving(&root, port, admin, Duration::from_secs(5)).await;
        assert_eq!(report["certificates"][0]["serial"], serial.as_str());
        assert_eq!(report["rotations"], 1);
        child.kill().await.unwrap();
        child.wait().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_example_obtains_with_http_01() {
    let pebble = Pebble::start(Config::default());
    // The example binds the validation ports itself.
    pebble.release();
    let (dir, storage) = (
        TempDir::new("example-acme-http"),
        TempDir::new("example-acme-http-storage"),
    );
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root()).unwrap();
    let http = format!("127.0.0.1:{}", pebble.config.http_port);
    let args = args(
        &pebble,
        storage.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--challenge",
            "http-01",
            "--http-listen",
            &http,
        ],
    );
    let (mut child, port, admin) = run(&args).await;
    let report = until_serving(&root, port, admin, Duration::from_secs(60)).await;
    assert_eq!(report["last_error"], serde_json::Value::Null);
    child.kill().await.unwrap();
}

/// On-demand mode, no `--domain`: names under the suffix get certificates
/// at their first request, others are refused, `/certs` lists them, and a
/// restart serves them from storage without a new order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_example_issues_on_demand_and_restarts_from_storage() {
    let pebble = Pebble::start(Config::default());
    // The example binds the validation ports itself.
    pebble.release();
    let (dir, storage) = (
        TempDir::new("example-acme-on-demand"),
        TempDir::new("example-acme-on-demand-storage"),
    );
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root()).unwrap();
    let listen = format!("127.0.0.1:{}", pebble.config.tls_port);
    let args = args_for(
        &pebble,
        storage.path(),
        &[
            "--on-demand",
            "customers.test",
            "--on-demand",
            "tenants.test",
            "--listen",
            &listen,
            "--challenge",
            "tls-alpn-01",
        ],
    );
    let names = ["a.customers.test", "b.tenants.test", "c.d.customers.test"];
    let (mut child, port, admin) = run(&args).await;
    for name in names {
        let answer = common::pebble::get(&root, name, port, "/").await;
        assert_eq!(answer.as_deref(), Ok("ok\n"), "{name}");
    }
    let refused = common::pebble::get(&root, "a.elsewhere.test", port, "/").await;
    assert!(refused.is_err(), "{refused:?}");
    let refused = common::pebble::get(&root, "customers.test", port, "/").await;
    assert!(refused.is_err(), "the suffix itself: {refused:?}");
    assert_eq!(pebble.orders(), 3);

    // The public port's summary names nothing; the admin port's lists them.
    let public = common::pebble::get(&root, names[0], port, "/certs")
        .await
        .unwrap();
    assert!(!public.contains("customers.test"), "{public}");
    let body = common::get_plain(admin, "/certs").await.unwrap();
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut listed: Vec<&str> = report["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["dns_names"][0].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        ["a.customers.test", "b.tenants.test", "c.d.customers.test"]
    );
    assert_eq!(report["on_demand"]["orders"], 3);
    assert_eq!(report["on_demand"]["refusals"]["not_allowed"], 2);
    assert_eq!(
        report["on_demand"]["refusals"]["invalid_name"],
        serde_json::Value::Null
    );
    child.kill().await.unwrap();
    child.wait().await.unwrap();

    // Restarted on the same storage: the same names, no new order.
    let (mut child, port, _) = run(&args).await;
    for name in names {
        let answer = common::pebble::get(&root, name, port, "/").await;
        assert_eq!(answer.as_deref(), Ok("ok\n"), "{name}");
    }
    assert_eq!(pebble.orders(), 3);
    child.kill().await.unwrap();
    child.wait().await.unwrap();
}

/// `--directory` given twice: the CAs are tried in that order. The first
/// down, the second issues; the detailed /certs names the issuing CA and
/// the first CA's failure, and the public /certs says by their order
/// that the first fails and the second issued (without names, URLs or the
/// failure's text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_example_falls_back_to_the_next_directory() {
    let mut first = Pebble::start(Config::default());
    let second = Pebble::start(Config {
        tls_port: first.config.tls_port,
        ..Config::default()
    });
    first.kill();
    first.release();
    let (dir, storage) = (
        TempDir::new("example-acme-fallback"),
        TempDir::new("example-acme-fallback-storage"),
    );
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, second.issuing_root()).unwrap();
    let listen = format!("127.0.0.1:{}", first.config.tls_port);
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for pebble in [&first, &second] {
        args.extend(["--directory".into(), pebble.directory.clone().into()]);
        args.extend(["--directory-root".into(), pebble.https_root.clone().into()]);
    }
    for arg in [
        "--storage",
        storage.path().to_str().unwrap(),
        "--domain",
        NAME,
    ] {
        args.push(arg.into());
    }
    for arg in ["--listen", &listen, "--challenge", "tls-alpn-01"] {
        args.push(arg.into());
    }

    let (mut child, _, admin) = run(&args).await;
    let report = until_serving(&root, first.config.tls_port, admin, Duration::from_secs(60)).await;
    let issued_by = format!("ACME {} for {NAME}", second.directory);
    assert_eq!(report["certificates"][0]["origin"], issued_by.as_str());
    let cas = report["cas"].as_array().unwrap();
    assert_eq!(cas.len(), 2);
    assert_eq!(cas[0]["directory"], first.directory.as_str());
    assert!(cas[0]["last_failure"].is_string(), "{report:#}");
    assert!(cas[0]["failed"].as_u64().unwrap() >= 1);
    assert_eq!(cas[1]["last_failure"], serde_json::Value::Null);
    assert_eq!(cas[1]["issued"], 1);
    // The public summary says the same of the CAs by their order, without
    // names, URLs or the failure's text.
    let public = common::pebble::get(&root, NAME, first.config.tls_port, "/certs")
        .await
        .unwrap();
    assert!(!public.contains(NAME), "{public}");
    assert!(!public.contains(&first.directory), "{public}");
    let public: serde_json::Value = serde_json::from_str(&public).unwrap();
    let cas = public["cas"].as_array().unwrap();
    assert_eq!(
        (&cas[0]["ca"], &cas[0]["failing"]),
        (&0.into(), &true.into()),
        "{public:#}"
    );
    assert!(cas[0]["failing_since"].is_u64(), "{public:#}");
    assert!(cas[0]["failed"].as_u64().unwrap() >= 1);
    assert!(cas[0].get("last_failure").is_none(), "{public:#}");
    let second_ca = (&cas[1]["ca"], &cas[1]["failing"], &cas[1]["issued"]);
    assert_eq!(
        second_ca,
        (&1.into(), &false.into(), &1.into()),
        "{public:#}"
    );
    child.kill().await.unwrap();
    child.wait().await.unwrap();
}

/// DNS-01 by RFC 2136 as the example's command line says: a real BIND 9
/// takes the TXT records (TSIG-signed), Pebble validates against it, and
/// nothing is left in the zone. With a wrong secret, `/certs` says why.
#[cfg(feature = "rfc2136")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_example_obtains_with_dns_01_by_rfc2136() {
    use common::dns::{Bind, Zone};
    let bind = Bind::primary(vec![Zone::new("certrotate.test", false)]);
    let pebble = Pebble::start(Config {
        dns_server: Some(bind.addr),
        ..Config::default()
    });
    let (dir, storage) = (
        TempDir::new("example-acme-rfc2136"),
        TempDir::new("example-acme-rfc2136-storage"),
    );
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, pebble.issuing_root()).unwrap();
    let server = bind.addr.to_string();
    let key_file = bind.key_file.to_str().unwrap();
    let dns_01 = |key_file| {
        [
            "--listen",
            "127.0.0.1:0",
            "--challenge",
            "dns-01",
            "--rfc2136",
            &server,
            "--tsig-key",
            key_file,
        ]
        .map(str::to_owned)
    };
    let rest = dns_01(key_file);
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let (mut child, port, admin) = run(&args(&pebble, storage.path(), &rest)).await;
    let report = until_serving(&root, port, admin, Duration::from_secs(60)).await;
    assert_eq!(report["last_error"], serde_json::Value::Null);
    child.kill().await.unwrap();
    child.wait().await.unwrap();
    assert_eq!(bind.txt_records("certrotate.test"), Vec::<String>::new());

    // The right key's name with another secret.
    let wrong = dir.join("wrong.key");
    let text = std::fs::read_to_string(&bind.key_file).unwrap();
    let secret = text.split('"').nth(3).unwrap();
    std::fs::write(
        &wrong,
        text.replace(secret, "d3Jvbmcgc2VjcmV0IG9mIDMyIGJ5dGVzIGxvbmchISE="),
    )
    .unwrap();
    let serial = bind.serial("certrotate.test");
    let other = TempDir::new("example-acme-rfc2136-wrong");
    let rest = dns_01(wrong.to_str().unwrap());
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let (mut child, _, admin) = run(&args(&pebble, other.path(), &rest)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let error = loop {
        let body = common::get_plain(admin, "/certs").await.unwrap();
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(error) = report["last_error"].as_str() {
            break error.to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no error: {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for part in [server.as_str(), "zone certrotate.test", "NOTAUTH", "BADSIG"] {
        assert!(error.contains(part), "{part:?} not in {error}");
    }
    assert_eq!(
        bind.serial("certrotate.test"),
        serial,
        "something was written"
    );
    child.kill().await.unwrap();
    child.wait().await.unwrap();
}

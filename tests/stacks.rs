//! Every server stack across rotations, with real clients: the `grpc`
//! (tonic, mutual TLS), `actix`, `axum_server`, `tokio_rustls` and
//! `reqwest_mtls` examples
//! run as a user runs them, their certificates living 2 s (a rotation about
//! every 1.3 s), while a client keeps calling: no call may fail, and the
//! client must see each new certificate. Then h2load, an outside judge,
//! drives HTTP/2 over fresh connections at the axum demo while its
//! certificate rotates every 100 ms.

#![cfg(feature = "ca")]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::sync::mpsc::UnboundedReceiver;

/// How long each stack runs: about ten rotations.
const RUN: Duration = Duration::from_secs(14);

/// Runs example `name` for RUN (it stops by itself, `--for`) with `args`;
/// its standard output.
async fn run_for(name: &str, args: &[&str]) -> String {
    let mut all = vec!["--listen", "127.0.0.1:0", "--lifetime", "2", "--for", "14"];
    all.extend(args);
    common::example_output(name, &all, RUN + Duration::from_secs(45)).await
}

/// The serials on the lines starting with `prefix`, in order.
fn serials<'a>(stdout: &'a str, prefix: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .collect()
}

/// Checks a run with a client of its own: no failed call, at least five
/// rotations of what `served` prints, and every certificate but the last
/// (which may have come as the run ended) seen by `seen`.
fn check_rotations_seen(stdout: &str, served: &str, seen: &str) {
    let done = stdout.lines().last().unwrap();
    assert!(
        done.starts_with("done: ") && done.ends_with(" ok, 0 failed"),
        "{done}\n{stdout}"
    );
    let served = serials(stdout, served);
    let seen: BTreeSet<&str> = serials(stdout, seen).into_iter().collect();
    assert!(
        served.len() >= 6,
        "{} certificates:\n{stdout}",
        served.len()
    );
    for serial in &served[..served.len() - 1] {
        assert!(seen.contains(serial), "{serial} never seen:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_grpc_with_mutual_tls_across_rotations() {
    let stdout = run_for("grpc", &["--mtls"]).await;
    check_rotations_seen(&stdout, "server: serving ", "client: saw server ");
    let client_certs = serials(&stdout, "client certificate: serving ");
    assert!(client_certs.len() >= 6, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_with_a_rotating_client_certificate_across_rotations() {
    let stdout = run_for("reqwest_mtls", &[]).await;
    check_rotations_seen(&stdout, "server: serving ", "client: saw server ");
    // The client's certificate rotates too, and the server sees each.
    check_rotations_seen(
        &stdout,
        "client certificate: serving ",
        "server: saw client ",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_web_across_rotations() {
    server_across_rotations("actix", Call::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_server_across_rotations() {
    server_across_rotations("axum_server", Call::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_rustls_across_rotations() {
    server_across_rotations("tokio_rustls", Call::Line).await;
}

/// How a test calls a server.
#[derive(Clone, Copy)]
enum Call {
    /// `GET /` with hyper, HTTP/2 and HTTP/1.1 in turn.
    Http,
    /// Read the line it says (`ok`).
    Line,
}

/// Runs server example `name`, and a client calling it over a new
/// connection each time, for RUN.
async fn server_across_rotations(name: &str, call: Call) {
    let dir = common::TempDir::new(name);
    let ca = dir.join("ca.pem");
    let args: Vec<std::ffi::OsString> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--lifetime".into(),
        "2".into(),
        "--ca-out".into(),
        ca.clone().into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (mut child, port, mut lines) = common::run_example_lines(name, &refs).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let clients = match call {
        Call::Http => [client(&ca, b"h2"), client(&ca, b"http/1.1")],
        Call::Line => [client(&ca, b""), client(&ca, b"")],
    };

    let (mut calls, mut failed, mut seen) = (0, Vec::new(), BTreeSet::new());
    let deadline = tokio::time::Instant::now() + RUN;
    while tokio::time::Instant::now() < deadline {
        let client = &clients[calls % 2];
        let called = async {
            match call {
                Call::Http => get(client, addr).await,
                Call::Line => line(client, addr).await,
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), called).await {
            Ok(Ok(serial)) => {
                seen.insert(serial);
            }
            Ok(Err(e)) => failed.push(e),
            Err(_) => failed.push("no answer within 10 s".into()),
        }
        calls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().await.unwrap();
    let served = printed(&mut lines, "server: serving ");
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed: {failed:?}",
        failed.len()
    );
    assert!(
        served.len() >= 6,
        "{} certificates: {served:?}",
        served.len()
    );
    for serial in &served[..served.len() - 1] {
        assert!(seen.contains(serial), "{serial} never seen; saw {seen:?}");
    }
}

/// The serials of the lines starting with `prefix` among those received.
fn printed(lines: &mut UnboundedReceiver<String>, prefix: &str) -> Vec<String> {
    let mut serials = Vec::new();
    while let Ok(line) = lines.try_recv() {
        if let Some(serial) = line.strip_prefix(prefix) {
            serials.push(serial.to_owned());
        }
    }
    serials
}

/// A client trusting the CA in `pem`, offering ALPN `protocol` (if any),
/// never resuming (each call is served a certificate).
fn client(pem: &Path, protocol: &[u8]) -> Arc<rustls::ClientConfig> {
    let trust = certrotate::TrustStore::from_pem(&std::fs::read(pem).unwrap()).unwrap();
    let mut config = trust.client_config().unwrap();
    if !protocol.is_empty() {
        config.alpn_protocols = vec![protocol.to_vec()];
    }
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Reads what the server says over a new connection: `ok`, and the serial
/// of the certificate it presented.
async fn line(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let serial = common::serial_of(&tls.get_ref().1.peer_certificates().unwrap()[0]);
    let mut said = String::new();
    tls.read_to_string(&mut said)
        .await
        .map_err(|e| e.to_string())?;
    match said.as_str() {
        "ok\n" => Ok(serial),
        other => Err(format!("said {other:?}")),
    }
}

/// `GET /` over a new connection: `ok`, and the serial of the certificate
/// the server presented.
async fn get(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let serial = common::serial_of(&tls.get_ref().1.peer_certificates().unwrap()[0]);
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let request = match h2 {
        true => hyper::Request::get("https://localhost/"),
        false => hyper::Request::get("/").header("host", "localhost"),
    };
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    let response = if h2 {
        let executor = hyper_util::rt::TokioExecutor::new();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(executor, io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    }
    .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    match (status.as_u16(), &body.to_bytes()[..]) {
        (200, b"ok\n") => Ok(serial),
        (status, body) => Err(format!("{status} {:?}", String::from_utf8_lossy(body))),
    }
}

/// h2load (nghttp2) against the axum demo (`hot_reload`), rotating every
/// 100 ms and not at all, in alternating runs of 50 fresh connections of
/// 20 requests each: every request must succeed over HTTP/2. The rates are
/// printed for BENCHMARKS.md; nothing is asserted about them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_over_fresh_connections_while_rotating_every_100_ms() {
    let (_rotating, rotating, mut rotations) = hot_reload("0.1").await;
    let (_still, still, _) = hot_reload("3600").await;
    let (mut rates, mut requests) = ([Vec::new(), Vec::new()], [0, 0]);
    let started = std::time::Instant::now();
    for _ in 0..15 {
        for (i, port) in [rotating, still].into_iter().enumerate() {
            let (done, rate) = h2load(port).await;
            requests[i] += done;
            rates[i].push(rate);
        }
    }
    let elapsed = started.elapsed();
    let mut rotated = 0;
    while let Ok(line) = rotations.try_recv() {
        rotated += usize::from(line.starts_with("rotated: "));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (rotating_rate, still_rate) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "h2load: rotating every 100 ms {rotating_rate:.0} req/s, not rotating {still_rate:.0} req/s \
         (medians of 15 alternating runs, {} + {} requests, {rotated} rotations, in {elapsed:.1?})",
        requests[0], requests[1]
    );
    assert_eq!(requests, [15_000, 15_000]);
    assert!(rotated >= 10, "{rotated} rotations");
}

/// Starts the axum demo rotating every `every` seconds; its port, and the
/// lines it prints from then on.
async fn hot_reload(every: &str) -> (tokio::process::Child, u16, UnboundedReceiver<String>) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(common::example("hot_reload"))
        .args(["--listen", "127.0.0.1:0", "--every", every])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the demo printed nothing")
        .unwrap()
        .unwrap();
    // `listening on https://127.0.0.1:PORT; certificate ...`
    let port = first
        .strip_prefix("listening on https://127.0.0.1:")
        .and_then(|rest| rest.split(';').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = sender.send(line);
        }
    });
    (child, port, receiver)
}

/// One h2load run at `port`: 1,000 requests over 50 new connections (under
/// the 64 handshakes in flight `TlsListener` allows one client); checks
/// that every request succeeded over h2, and returns (requests, req/s).
async fn h2load(port: u16) -> (u64, f64) {
    let output = tokio::process::Command::new("h2load")
        .args(["-n", "1000", "-c", "50", "-m", "10"])
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .await
        .expect("h2load is installed (Debian package nghttp2-client; .ci/run installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(
        text.contains("requests: 1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed, 0 errored, 0 timeout"),
        "{text}"
    );
    assert!(text.contains("status codes: 1000 2xx"), "{text}");
    let rate = text
        .lines()
        .find_map(|line| line.strip_prefix("finished in "))
        .and_then(|rest| rest.split(", ").nth(1))
        .and_then(|rate| rate.strip_suffix(" req/s"))
        .and_then(|rate| rate.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {text}"));
    (1000, rate)
}

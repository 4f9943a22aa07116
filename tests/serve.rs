//! `TlsListener` with `axum::serve`: real clients (curl and tokio-rustls) are
//! served while silent clients hold connections open, and handshakes that
//! never finish are cut by the timeout.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use certrotate::{Policy, Rotator, StaticSource, TlsListener};
use common::{Ca, HOST};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_do_not_stall_accept() {
    let ca = Ca::new();
    let rotator = Rotator::builder(
        StaticSource::new(ca.nth(0)),
        Policy::builder().server_name(HOST).build().unwrap(),
    )
    .start()
    .await
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut config = rotator.server_config().unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener =
        TlsListener::new(tcp, Arc::new(config)).handshake_timeout(Duration::from_millis(500));
    let app = axum::Router::new().route("/", get(|| async { "ok" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Ten clients connect and say nothing.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }

    // A real client is served anyway.
    let dir = std::env::temp_dir().join(format!("certrotate-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let url = format!("https://{HOST}:{}/", addr.port());
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5", "--cacert"])
        .arg(&ca_file)
        .arg(&url)
        .output()
        .await
        .expect("curl is installed");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"ok");

    // The silent clients are dropped once their handshake times out.
    for mut stream in silent {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent client was not cut off: {read:?}"
        );
    }
    server.abort();
}

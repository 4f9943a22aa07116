//! `TlsListener` with `axum::serve`: real clients (curl and tokio-rustls) are
//! served while silent clients hold connections open, and handshakes that
//! never finish are cut by the timeout.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use certrotate::source::StaticSource;
use certrotate::{Policy, Rotator, TlsListener};
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

/// One address flooding the listener with silent connections (far more
/// than the global limit of handshakes in flight) cannot keep `accept`
/// closed for another: the other client's handshake completes while every
/// silent connection is still open, long before any handshake times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flooding_address_cannot_lock_out_another() {
    let ca = Ca::new();
    let first = ca.nth(0);
    let rotator = Rotator::builder(
        StaticSource::new(first.clone()),
        Policy::builder().server_name(HOST).build().unwrap(),
    )
    .start()
    .await
    .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut listener = TlsListener::new(tcp, Arc::new(rotator.server_config().unwrap()))
        .handshake_timeout(Duration::from_secs(60))
        .max_pending_handshakes(32)
        .max_pending_handshakes_per_client(4);
    let served = tokio::spawn(async move {
        let mut peers = Vec::new();
        loop {
            let (_tls, peer) = listener.accept().await;
            peers.push(peer);
            if peer.ip() == std::net::Ipv4Addr::LOCALHOST {
                return peers;
            }
        }
    });

    // 127.0.0.2 opens 200 connections, a few at a time, and says nothing.
    let mut silent = Vec::new();
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        match tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await {
            Ok(Ok(stream)) => silent.push(stream),
            // The backlog is full: the flood reached its goal without the limit.
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 127.0.0.1 is served while the flood holds its connections open.
    let client = common::client_config(&ca);
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .unwrap();
        common::serial_of(&tls.get_ref().1.peer_certificates().unwrap()[0])
    };
    let seen = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("locked out by another address's flood");
    assert_eq!(seen, first.info().serial);
    let peers = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .unwrap()
        .unwrap();
    assert!(peers
        .iter()
        .all(|p| p.ip() == std::net::Ipv4Addr::LOCALHOST));
    drop(silent);
}

//! What `TlsListener` costs a handshake over real loopback sockets: the
//! ClientHello read under its own deadline, the admission of each
//! connection against its nested client groups, and the join of its task,
//! against the loop a user would write without it (`TcpListener::accept`,
//! a task per connection running `TlsAcceptor::accept`). Full TLS 1.3
//! handshakes with P-256, resumption off, one client connecting after
//! another; interleaved rounds (shuffled order per round), medians and the
//! median of per-round ratios.

use std::sync::Arc;
use std::time::Instant;

use certrotate::source::StaticSource;
use certrotate::{Policy, Rotator, TlsListener};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[path = "support/mod.rs"]
mod support;
use support::{leaf_and_roots, ratio_table};

const ROUNDS: usize = 15;
const PER_ROUND: usize = 200;
const NAME: &str = "api.example";

/// Handshakes `n` times with the server at `addr`, one after another.
async fn handshakes(client: &TlsConnector, addr: std::net::SocketAddr, n: usize) {
    for _ in 0..n {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(NAME).unwrap();
        let tls = client.connect(name, tcp).await.unwrap();
        std::hint::black_box(tls);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (bundle, roots) = leaf_and_roots(NAME);
        let rotator = Rotator::builder(StaticSource::new(bundle), Policy::default())
            .start()
            .await
            .unwrap();
        let config = Arc::new(rotator.server_config().unwrap());
        let mut client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = rustls::client::Resumption::disabled();
        let client = TlsConnector::from(Arc::new(client));

        // A plain accept loop: a task per connection.
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(config.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = plain.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        std::hint::black_box(tls);
                    }
                });
            }
        });
        // TlsListener with its defaults.
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener_addr = tcp.local_addr().unwrap();
        let mut listener = TlsListener::new(tcp, config.clone());
        tokio::spawn(async move {
            loop {
                let (tls, _) = listener.accept().await;
                std::hint::black_box(tls);
            }
        });

        let variants = [
            ("tls-acceptor loop", plain_addr),
            ("TlsListener", listener_addr),
        ];
        handshakes(&client, plain_addr, 50).await;
        handshakes(&client, listener_addr, 50).await;
        let mut rates = vec![Vec::new(); variants.len()];
        for round in 0..ROUNDS {
            let order = support::round_order(round as u64, variants.len());
            for i in order {
                let start = Instant::now();
                handshakes(&client, variants[i].1, PER_ROUND).await;
                rates[i].push(PER_ROUND as f64 / start.elapsed().as_secs_f64());
            }
        }
        let heading =
            format!("Handshakes over loopback TCP ({ROUNDS} interleaved rounds of {PER_ROUND})");
        let names: Vec<String> = variants.iter().map(|(name, _)| name.to_string()).collect();
        ratio_table(&heading, "accepted by", &names, &rates);
    });
}

//! A reqwest client whose client certificate rotates, calling a server that
//! requires one: service-to-service mutual TLS with short-lived
//! certificates from an internal CA, on both ends. Needs no setup.
//!
//! ```text
//! cargo run --example reqwest_mtls -- [--listen 127.0.0.1:8443] [--lifetime 30] [--ca-out ca.pem] [--for SECONDS]
//! ```
//!
//! The client is an ordinary `reqwest::Client`, given the crate's client
//! config (`tls_backend_preconfigured`, `use_preconfigured_tls` before
//! reqwest 0.13): its certificate follows its rotator, its trust the CA.
//! Connections are not kept here (HTTP/1.1, no pool), so that every call
//! shows the current certificates: the server answers each call with the serial of the client
//! certificate it verified, and the client reads the server's from
//! `TlsInfo`. Prints `listening on https://HOST:PORT`, `server: serving
//! SERIAL` and `client certificate: serving SERIAL` at each rotation,
//! `client: saw server SERIAL` and `server: saw client SERIAL` when they
//! change, and `done: N ok, M failed` at the end (`--for`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use certrotate::TlsListener;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[path = "support/stack.rs"]
mod stack;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = stack::Args::parse("reqwest_mtls");
    let (ca, rotator) = stack::dev_ca(&args).await?;

    // The server: requires a client certificate from the CA, and answers
    // with its serial.
    let tls = rotator.server_config_with_client_auth(&ca.trust())?;
    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = tcp.local_addr()?;
    let mut listener = TlsListener::new(tcp, Arc::new(tls));
    tokio::spawn(async move {
        loop {
            let (tls, _) = listener.accept().await;
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let client = Bytes::from(leaf.map(|c| stack::serial(c)).unwrap_or_default());
            let service = hyper::service::service_fn(move |_| {
                let client = client.clone();
                async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(client))) }
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    println!("listening on https://{addr}");
    stack::print_rotations("server", &rotator);

    // The client: reqwest with the crate's client config.
    let cert = stack::client_cert(&ca, &args).await?;
    stack::print_rotations("client certificate", &cert);
    let mut tls = ca.trust().client_config_with_cert(cert.resolver())?;
    // HTTP/1.1 without pooling: a connection per call, to show every
    // certificate. A real client keeps reqwest's pool (and HTTP/2): its
    // connections then move to new certificates as they are replaced, which
    // a server can hasten with `MaxConnectionAge`.
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    // And full handshakes: a resumed session shows the certificates it was
    // first made with.
    tls.resumption = rustls::client::Resumption::disabled();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("https://localhost:{}/", addr.port());

    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let calls = async {
        let (mut server_seen, mut client_seen) = (String::new(), String::new());
        loop {
            match call(&client, &url).await {
                Ok((server, client)) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    if server != server_seen {
                        println!("client: saw server {server}");
                        server_seen = server;
                    }
                    if client != client_seen {
                        println!("server: saw client {client}");
                        client_seen = client;
                    }
                }
                Err(error) => {
                    eprintln!("call failed: {error}");
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    stack::run_calls(args.run_for, calls, (&ok, &failed)).await;
    Ok(())
}

/// One call: the serial of the server's certificate, and of the client's
/// as the server saw it.
async fn call(client: &reqwest::Client, url: &str) -> Result<(String, String), reqwest::Error> {
    let response = client.get(url).send().await?.error_for_status()?;
    let server = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(stack::serial)
        .unwrap_or_default();
    Ok((server, response.text().await?))
}

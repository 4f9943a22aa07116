//! A tonic gRPC server with certrotate's rotating certificate, and a tonic
//! client calling it in a loop; with `--mtls`, clients must present a
//! certificate from the same internal CA, which rotates too: the common
//! service-to-service setup without a mesh. Needs no setup.
//!
//! ```text
//! cargo run --example grpc -- [--listen 127.0.0.1:8443] [--lifetime 30] [--ca-out ca.pem] [--for SECONDS] [--mtls]
//! ```
//!
//! The service is gRPC health checking (`grpc.health.v1.Health`, from
//! `tonic-health`, whose code is generated ahead of time): a real gRPC
//! service with no proto to compile here. A build script is not an option
//! for an example (cargo runs a package's build script for every user of
//! the library), and `protoc` is not on every machine; your own
//! `tonic-build` service plugs in where `HealthServer` does.
//!
//! The server hands tonic the connections `TlsListener` accepted
//! (`serve_with_incoming`), so handshakes run concurrently under a timeout
//! and certificates follow the rotator. The client opens a connection per
//! call (to see every new server certificate) and prints `client: saw
//! server SERIAL` when it changes; the server prints `server: serving
//! SERIAL`, and with `--mtls` `client certificate: serving SERIAL`. Every 5
//! seconds, and at the end (`--for`), `calls: N ok, M failed` (the last as
//! `done: N ok, M failed`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use certrotate::TlsListener;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Service;
use tonic::transport::{Endpoint, Server, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[path = "support/stack.rs"]
mod stack;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = stack::Args::parse("grpc");
    let (ca, rotator) = stack::dev_ca(&args).await?;

    // The server: TLS from the rotator (client certificates from the CA
    // with --mtls), connections from TlsListener, handed to tonic.
    let tls = match args.mtls {
        true => rotator.server_config_with_client_auth(&ca.trust())?,
        false => rotator.server_config()?,
    };
    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = tcp.local_addr()?;
    let mut listener = TlsListener::new(tcp, Arc::new(tls));
    let (connections, incoming) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tls, _) = listener.accept().await;
            if connections.send(Ok::<_, io::Error>(tls)).await.is_err() {
                break;
            }
        }
    });
    let (health, service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(ReceiverStream::new(incoming)),
    );
    println!("listening on https://{addr}");
    stack::print_rotations("server", &rotator);

    // The client: trusts the CA; with --mtls, presents a rotating certificate.
    let mut client = match args.mtls {
        true => {
            let cert = stack::client_cert(&ca, &args).await?;
            stack::print_rotations("client certificate", &cert);
            ca.trust().client_config_with_cert(cert.resolver())?
        }
        false => ca.trust().client_config()?,
    };
    client.alpn_protocols = vec![b"h2".to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    let connector = Connector {
        tls: tokio_rustls::TlsConnector::from(Arc::new(client)),
        addr,
        seen: Arc::default(),
    };
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counts = (ok.clone(), failed.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            let (ok, failed) = (
                counts.0.load(Ordering::Relaxed),
                counts.1.load(Ordering::Relaxed),
            );
            println!("calls: {ok} ok, {failed} failed");
        }
    });
    let calls = async {
        let mut printed = String::new();
        loop {
            match call(&connector).await {
                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    eprintln!("call failed: {error}");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            let seen = connector.seen.lock().expect("not poisoned").clone();
            if seen != printed {
                println!("client: saw server {seen}");
                printed = seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    stack::run_calls(args.run_for, calls, (&ok, &failed)).await;
    Ok(())
}

/// One unary call over a new connection: the server must say it serves.
async fn call(connector: &Connector) -> Result<(), Box<dyn std::error::Error>> {
    // The connector does TLS itself: the URI only names the authority.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(connector.clone())
        .await?;
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let reply = HealthClient::new(channel)
        .check(request)
        .await?
        .into_inner();
    match reply.status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("status {other:?}").into()),
    }
}

/// Connects tonic's channel over TLS to the server, and notes the serial of
/// the certificate each connection was served.
#[derive(Clone)]
struct Connector {
    tls: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    seen: Arc<Mutex<String>>,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.addr).await?;
            let name = ServerName::try_from("localhost").expect("a valid name");
            let tls = this.tls.connect(name, tcp).await?;
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            *this.seen.lock().expect("not poisoned") =
                leaf.map(|c| stack::serial(c)).unwrap_or_default();
            Ok(TokioIo::new(tls))
        })
    }
}

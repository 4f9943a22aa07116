//! Service-to-service mTLS on short-lived certificates, all in one process:
//! an internal CA issues 30-second leaves to an axum server and to a client,
//! rolls over to a new CA every few minutes, and the client keeps calling the
//! server. Every rotation, every trust change and the running request count
//! are printed; the count of failed requests should stay at zero.
//!
//! ```text
//! cargo run --release --example mtls -- [--listen 127.0.0.1:0] [--lifetime 30] [--rollover 180] [--for SECONDS]
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use certrotate::policy::Usage;
use certrotate::source::LeafSpec;
use certrotate::{InternalCa, Policy, RotationEvent, Rotator, TlsListener};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

struct Args {
    listen: SocketAddr,
    lifetime: Duration,
    rollover: Duration,
    run_for: Option<Duration>,
}

fn parse_args() -> Result<Args, String> {
    let usage =
        "usage: mtls [--listen ADDR] [--lifetime SECONDS] [--rollover SECONDS] [--for SECONDS]";
    let mut args = Args {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        lifetime: Duration::from_secs(30),
        rollover: Duration::from_secs(180),
        run_for: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let value = argv.next().ok_or(format!("{arg} needs a value; {usage}"))?;
        let seconds = || {
            value
                .parse::<f64>()
                .map(Duration::from_secs_f64)
                .map_err(|e| format!("{arg}: {e}"))
        };
        match arg.as_str() {
            "--listen" => args.listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--lifetime" => args.lifetime = seconds()?,
            "--rollover" => args.rollover = seconds()?,
            "--for" => args.run_for = Some(seconds()?),
            _ => return Err(format!("unknown argument {arg}; {usage}")),
        }
    }
    Ok(args)
}

/// Prints what a rotator does, under `who`.
fn print_rotations(who: &'static str, rotator: &Rotator) {
    let mut events = rotator.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                RotationEvent::Rotated { new, .. } => {
                    println!(
                        "{who}: now {} from {} (serial {})",
                        new.subject, new.issuer, new.serial
                    )
                }
                RotationEvent::Refused { error, .. } => println!("{who}: refused: {error}"),
                RotationEvent::SourceFailed { error, .. } => {
                    println!("{who}: source failed: {error}")
                }
                _ => {}
            }
        }
    });
}

/// One call: a new TLS connection (so every call sees the current
/// certificates and trust), `GET /`, status 200.
async fn call(connector: &tokio_rustls::TlsConnector, addr: SocketAddr) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("a valid name");
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    match status.is_success() {
        true => Ok(()),
        false => Err(format!("status {status}")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };

    // The CA, and a leaf for each side from it.
    let ca = InternalCa::generate("certrotate demo internal CA")?;
    let server_spec = LeafSpec::new(["localhost"])
        .lifetime(args.lifetime)
        .usage(Usage::Server);
    let client_spec = LeafSpec::new(["client.demo"])
        .uri("spiffe://demo.internal/client")
        .lifetime(args.lifetime)
        .usage(Usage::Client);
    let server_cert = Rotator::builder(
        ca.source(server_spec),
        Policy::builder().server_name("localhost").build()?,
    )
    .start()
    .await?;
    let client_cert = Rotator::builder(
        ca.source(client_spec),
        Policy::builder().usage(Usage::Client).build()?,
    )
    .start()
    .await?;
    print_rotations("server certificate", &server_cert);
    print_rotations("client certificate", &client_cert);
    let mut trust_changes = ca.trust().subscribe();
    tokio::spawn(async move {
        while trust_changes.changed().await.is_ok() {
            let generation = *trust_changes.borrow_and_update();
            println!("trust bundle: generation {generation}");
        }
    });
    // Overlap: a third of the period, at least two leaf lifetimes.
    let overlap = (args.rollover / 3)
        .max(args.lifetime * 2)
        .min(args.rollover);
    let _rollover = ca.spawn_rollover(args.rollover, overlap);

    // The server: client certificates required, verified against the CA's trust.
    let tls = server_cert.server_config_with_client_auth(&ca.trust())?;
    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = tcp.local_addr()?;
    let app = Router::new().route("/", get(|| async { "ok\n" }));
    tokio::spawn(async move { axum::serve(TlsListener::new(tcp, Arc::new(tls)), app).await });
    println!(
        "listening on https://{addr}; leaves live {:?}, CA rollover every {:?}",
        args.lifetime, args.rollover
    );

    // The client: its certificate follows its rotator, its trust the CA.
    let mut client = ca.trust().client_config_with_cert(client_cert.resolver())?;
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counts = (ok.clone(), failed.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let (ok, failed) = (
                counts.0.load(Ordering::Relaxed),
                counts.1.load(Ordering::Relaxed),
            );
            println!("requests: {ok} ok, {failed} failed");
        }
    });
    let calls = async {
        loop {
            match call(&connector, addr).await {
                Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    eprintln!("request failed: {error}");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let stop = async {
        match args.run_for {
            Some(limit) => tokio::time::sleep(limit).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::select! {
        () = calls => {}
        () = stop => {}
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("done: {ok} requests ok, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

//! An axum server that gets its certificate from an ACME CA (Let's Encrypt,
//! Pebble, any RFC 8555 CA) and renews it by itself.
//!
//! ```text
//! cargo run --release --example acme -- --directory URL [--directory-root PEM] --domain NAME [--domain NAME]... \
//!     --listen ADDR --challenge tls-alpn-01|http-01 [--http-listen ADDR] --storage DIR
//! ```
//!
//! - `--directory-root`: a root certificate to trust for the ACME server's
//!   own HTTPS (Pebble uses a private one).
//! - `--challenge tls-alpn-01`: the CA validates on port 443 of the names,
//!   which must reach `--listen`; `http-01`: on port 80, which must reach
//!   `--http-listen`.
//! - `--storage`: where the account and certificates are kept (0600). A
//!   restart serves the stored certificate at once and orders a new one only
//!   when renewal is due.
//!
//! Until the first certificate arrives, handshakes fail (there is nothing
//! to serve); then `GET /` answers `ok` and `GET /certs` shows the health
//! snapshot as JSON, with `last_error` (string, or null).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use certrotate::{
    AcmeSource, CertStore, FileStorage, Http01Responder, Policy, RotationEvent, Rotator,
    TlsListener, ACME_TLS_ALPN,
};

const USAGE: &str = "usage: acme --directory URL [--directory-root PEM] --domain NAME [--domain NAME]... \
                     --listen ADDR --challenge tls-alpn-01|http-01 [--http-listen ADDR] --storage DIR";

#[derive(PartialEq)]
enum Challenge {
    TlsAlpn01,
    Http01,
}

struct Args {
    directory: String,
    directory_root: Option<PathBuf>,
    domains: Vec<String>,
    listen: SocketAddr,
    challenge: Challenge,
    http_listen: Option<SocketAddr>,
    storage: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let (mut directory, mut directory_root, mut domains) = (None, None, Vec::new());
    let (mut listen, mut challenge, mut http_listen, mut storage) = (None, None, None, None);
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let value = argv.next().ok_or(format!("{arg} needs a value; {USAGE}"))?;
        let addr = |v: &str| v.parse::<SocketAddr>().map_err(|e| format!("{arg}: {e}"));
        match arg.as_str() {
            "--directory" => directory = Some(value),
            "--directory-root" => directory_root = Some(PathBuf::from(value)),
            "--domain" => domains.push(value),
            "--listen" => listen = Some(addr(&value)?),
            "--http-listen" => http_listen = Some(addr(&value)?),
            "--storage" => storage = Some(PathBuf::from(value)),
            "--challenge" => {
                challenge = Some(match value.as_str() {
                    "tls-alpn-01" => Challenge::TlsAlpn01,
                    "http-01" => Challenge::Http01,
                    other => return Err(format!("unknown challenge {other:?}; {USAGE}")),
                })
            }
            _ => return Err(format!("unknown argument {arg}; {USAGE}")),
        }
    }
    let missing = |what| format!("{what} is required; {USAGE}");
    let args = Args {
        directory: directory.ok_or_else(|| missing("--directory"))?,
        directory_root,
        listen: listen.ok_or_else(|| missing("--listen"))?,
        challenge: challenge.ok_or_else(|| missing("--challenge"))?,
        http_listen,
        storage: storage.ok_or_else(|| missing("--storage"))?,
        domains,
    };
    if args.domains.is_empty() {
        return Err(missing("--domain"));
    }
    if args.challenge == Challenge::Http01 && args.http_listen.is_none() {
        return Err(format!("http-01 needs --http-listen; {USAGE}"));
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "certrotate=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };

    let store = CertStore::new();
    let mut acme = AcmeSource::builder(&args.directory, args.domains.clone())
        .storage(FileStorage::new(&args.storage));
    if let Some(root) = &args.directory_root {
        acme = acme.directory_root(root);
    }
    let http01 = Http01Responder::new();
    acme = match args.challenge {
        Challenge::TlsAlpn01 => acme.tls_alpn_01(&store),
        Challenge::Http01 => acme.http_01(&http01),
    };
    // Port 80: HTTP-01 answers (and nothing else).
    if let Some(http_listen) = args.http_listen {
        let tcp = tokio::net::TcpListener::bind(http_listen).await?;
        let app: Router = http01.router();
        tokio::spawn(async move { axum::serve(tcp, app).await });
    }
    let mut policy = Policy::builder();
    for domain in &args.domains {
        policy = policy.server_name(domain);
    }
    // Spawned, not started: the first certificate may take a while, and the
    // TLS-ALPN-01 challenge needs the server to be up.
    let rotator = Arc::new(
        Rotator::builder(acme.build(), policy.build()?)
            .store(store)
            .spawn(),
    );
    let mut events = rotator.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let RotationEvent::Rotated { new, .. } = event {
                eprintln!("now serving {new}, valid until {:?}", new.not_after);
            }
        }
    });

    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    let bound = tcp.local_addr()?;
    let mut tls = rotator.server_config()?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    let health = rotator.clone();
    let app = Router::new()
        .route("/", get(|| async { "ok\n" }))
        .route("/certs", get(move || async move { Json(health.health()) }));
    println!("listening on https://{bound}");
    axum::serve(TlsListener::new(tcp, Arc::new(tls)), app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

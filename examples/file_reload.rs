//! An axum server whose certificate follows a pair of files on disk: the
//! example to copy to put an existing server on file-based rotation.
//!
//! ```text
//! cargo run --release --example file_reload -- --listen ADDR --cert PATH --key PATH [--name NAME]... [--client-ca PATH] [--poll SECONDS] [--admin ADDR]
//! ```
//!
//! - `--name` (repeatable): server names the certificate must cover; a new
//!   certificate that does not is refused and the old one keeps serving.
//! - `--client-ca`: require client certificates (mTLS) that chain to a CA
//!   in this PEM bundle. The bundle is watched like the certificate files;
//!   each new version is validated first (an unreadable or empty one is
//!   refused and the trust in force stays), and sessions made under a
//!   replaced trust are not resumed.
//! - `--poll`: read the files every SECONDS instead of waiting for
//!   file-system events (NFS and other mounts that send none).
//!
//! Replace the files any way you like (`mv` over them, `cp`, a Kubernetes
//! secret update, certbot): the new pair is validated, then served.
//! `GET /` answers `ok`; `GET /certs` the public health summary (counts and
//! codes: no names or paths). With `--admin ADDR` (a loopback address; it
//! then prints `admin on http://ADDR` after its first line), `GET /certs`
//! there (plain HTTP) shows the health snapshot as JSON, with `last_error`
//! saying why the latest candidate was refused (or `null`), and with
//! `--client-ca`, `client_ca` (its trust `generation` and `last_error`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use certrotate::source::{FileOptions, TrustFile, WatchMode};
use certrotate::{FileSource, HealthService, Policy, RotationEvent, Rotator, TlsListener};

const USAGE: &str = "usage: file_reload --listen ADDR --cert PATH --key PATH [--name NAME]... \
                     [--client-ca PATH] [--poll SECONDS] [--admin ADDR]";

#[path = "support/admin.rs"]
mod admin;

struct Args {
    listen: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    names: Vec<String>,
    client_ca: Option<PathBuf>,
    poll: Option<Duration>,
    admin: Option<SocketAddr>,
}

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut cert, mut key, mut names) = (None, None, None, vec![]);
    let (mut client_ca, mut poll, mut admin) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value; {USAGE}"));
        match arg.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--cert" => cert = Some(PathBuf::from(value()?)),
            "--key" => key = Some(PathBuf::from(value()?)),
            "--name" => names.push(value()?),
            "--client-ca" => client_ca = Some(PathBuf::from(value()?)),
            "--admin" => admin = Some(admin::parse(&value()?)?),
            "--poll" => {
                let seconds: f64 = value()?.parse().map_err(|e| format!("--poll: {e}"))?;
                poll = Some(Duration::from_secs_f64(seconds));
            }
            _ => return Err(format!("unknown argument {arg}; {USAGE}")),
        }
    }
    let missing = |what| format!("{what} is required; {USAGE}");
    Ok(Args {
        listen: listen.ok_or_else(|| missing("--listen"))?,
        cert: cert.ok_or_else(|| missing("--cert"))?,
        key: key.ok_or_else(|| missing("--key"))?,
        names,
        client_ca,
        poll,
        admin,
    })
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

    let mut policy = Policy::builder();
    for name in &args.names {
        policy = policy.server_name(name);
    }
    let mut options = FileOptions::default();
    if let Some(every) = args.poll {
        options = options.watch(WatchMode::Poll { every });
    }
    let source = FileSource::pair(&args.cert, &args.key).options(options.clone());
    // Refuses to start without a good certificate: better than serving a bad one.
    let rotator = Rotator::builder(source, policy.build()?).start().await?;

    let mut events = rotator.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let RotationEvent::Rotated { new, .. } = event {
                eprintln!("now serving {new}");
            }
        }
    });

    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    let bound = tcp.local_addr()?;
    // With --client-ca: the trust clients are checked against, kept fresh
    // from the file for as long as `client_ca` lives.
    let client_ca = match &args.client_ca {
        Some(path) => Some(Arc::new(TrustFile::open(path, options).await?)),
        None => None,
    };
    // ALPN offers h2 and http/1.1: axum serves h2 with its `http2` feature
    // (on here); without it, set `tls.alpn_protocols` to http/1.1 alone.
    let tls = match &client_ca {
        Some(client_ca) => rotator.server_config_with_client_auth(&client_ca.trust())?,
        None => rotator.server_config()?,
    };
    let listener = TlsListener::new(tcp, Arc::new(tls));
    let health = rotator.clone();
    let public = HealthService::new(rotator.store().clone());
    let report = move || {
        let mut report = serde_json::to_value(health.health()).expect("health serializes");
        if let Some(client_ca) = &client_ca {
            report["client_ca"] = serde_json::json!({
                "generation": client_ca.trust().generation(),
                "last_error": client_ca.last_error(),
            });
        }
        Json(report)
    };
    let app = Router::new()
        .route("/", get(|| async { "ok\n" }))
        .route_service("/certs", public);

    // The listener accepts from here on (the kernel queues connections until
    // axum takes them).
    println!("listening on https://{bound}");
    if let Some(addr) = args.admin {
        let detailed = Router::new().route("/certs", get(move || async move { report() }));
        admin::serve(addr, detailed).await?;
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

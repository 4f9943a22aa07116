//! An axum server for many domains: every certificate pair in a directory,
//! served by SNI, followed as pairs are added, replaced and removed. The
//! example to copy for a multi-tenant server or an ingress-like proxy.
//!
//! ```text
//! cargo run --release --example directory -- --listen ADDR --dir DIR [--settle-ms N] [--admin ADDR]
//! ```
//!
//! - `--dir`: serves each `<name>.crt` + `<name>.key`, and each
//!   cert-manager style `<name>/tls.crt` + `<name>/tls.key`, to the names
//!   its certificate covers. A bad pair is refused on its own and reported;
//!   the others serve.
//! - `--settle-ms`: how long a pair's files must be quiet before they are
//!   read (default 250).
//!
//! It prints `listening on https://HOST:PORT` once every pair present at
//! start has been tried (served or refused). `GET /` answers `ok`;
//! `GET /certs` the public health summary (counts and codes: no names).
//! With `--admin ADDR` (a loopback address; it then prints `admin on
//! http://ADDR`), `GET /certs` there (plain HTTP) answers the detailed
//! summary as JSON: `served` (how many pairs serve), `unserved` (the pairs
//! that do not, with why, at most 100; their count is `unserved_count`),
//! `last_error` (the latest failure of a pair still failing, or `null`),
//! counts per alert level and the soonest expiries.
//! `GET /certs?offset=N&limit=M` there pages through every pair.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::{Json, Router};
use certrotate::health::HEALTH_LIMIT;
use certrotate::serve::MAX_PAGE;
use certrotate::source::FileOptions;
use certrotate::{CertDirectory, HealthService, Policy, TlsListener};

const USAGE: &str = "usage: directory --listen ADDR --dir DIR [--settle-ms N] [--admin ADDR]";

#[path = "support/admin.rs"]
mod admin;

struct Args {
    listen: SocketAddr,
    dir: PathBuf,
    settle: Duration,
    admin: Option<SocketAddr>,
}

fn parse_args() -> Result<Args, String> {
    let (mut listen, mut dir, mut settle) = (None, None, Duration::from_millis(250));
    let mut admin = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value; {USAGE}"));
        match arg.as_str() {
            "--listen" => listen = Some(value()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--admin" => admin = Some(admin::parse(&value()?)?),
            "--settle-ms" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--settle-ms: {e}"))?;
                settle = Duration::from_millis(ms);
            }
            _ => return Err(format!("unknown argument {arg}; {USAGE}")),
        }
    }
    let missing = |what| format!("{what} is required; {USAGE}");
    Ok(Args {
        listen: listen.ok_or_else(|| missing("--listen"))?,
        dir: dir.ok_or_else(|| missing("--dir"))?,
        settle,
        admin,
    })
}

/// `?offset=N&limit=M` on `/certs`.
#[derive(serde::Deserialize)]
struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "certrotate=warn".into()),
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

    // Each certificate must cover its own names only: no required name.
    let options = FileOptions::default().settle(args.settle);
    let certs = CertDirectory::builder(&args.dir, Policy::default())
        .options(options)
        .start()
        .await?;
    let health = certs.store().clone();
    eprintln!(
        "{} pairs: {} serving",
        certs.pairs().len(),
        health.health().served
    );

    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    let bound = tcp.local_addr()?;
    // ALPN offers h2 and http/1.1: axum serves h2 with its `http2` feature
    // (on here); without it, set `tls.alpn_protocols` to http/1.1 alone.
    let tls = certs.server_config()?;
    let listener = TlsListener::new(tcp, Arc::new(tls));
    let app = Router::new()
        .route("/", get(|| async { "ok\n" }))
        .route_service("/certs", HealthService::new(health.clone()));

    // Every pair present at start has been tried: served or refused.
    println!("listening on https://{bound}");
    if let Some(addr) = args.admin {
        let detailed = Router::new().route(
            "/certs",
            get(move |Query(page): Query<Page>| async move {
                let limit = page.limit.unwrap_or(HEALTH_LIMIT).min(MAX_PAGE);
                Json(health.health_page(page.offset.unwrap_or(0), limit))
            }),
        );
        admin::serve(addr, detailed).await?;
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    certs.shutdown().await;
    Ok(())
}

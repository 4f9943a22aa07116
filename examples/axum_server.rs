//! axum served by axum-server, with certrotate's rotating certificate.
//! axum-server's own `RustlsConfig::reload_from_*` rebuild the whole
//! `ServerConfig` and check nothing; built once from a rotator instead, the
//! config's certificate follows the rotator: validated before it serves,
//! rolled back, reported in health, with sessions kept across rotations.
//! Needs no setup: a development CA issues short-lived certificates.
//!
//! ```text
//! cargo run --example axum_server -- [--listen 127.0.0.1:8443] [--lifetime 30] [--ca-out ca.pem]
//! ```
//!
//! Prints `listening on https://HOST:PORT`, then `server: serving SERIAL`
//! at each certificate. `GET /` answers `ok`; `GET /certs` the public
//! health summary as JSON (counts and codes, no names).

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use certrotate::HealthService;

#[path = "support/stack.rs"]
mod stack;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = stack::Args::parse("axum_server");
    let (_ca, rotator) = stack::dev_ca(&args).await?;

    // The one line that matters: axum-server's config, from the rotator.
    let tls = RustlsConfig::from_config(Arc::new(rotator.server_config()?));

    let app = Router::new()
        .route("/", get(|| async { "ok\n" }))
        .route_service("/certs", HealthService::new(rotator.store().clone()));
    let tcp = std::net::TcpListener::bind(args.listen)?;
    tcp.set_nonblocking(true)?;
    println!("listening on https://{}", tcp.local_addr()?);
    stack::print_rotations("server", &rotator);
    axum_server::from_tcp_rustls(tcp, tls)?
        .serve(app.into_make_service())
        .await?;
    Ok(())
}

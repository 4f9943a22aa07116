//! Operating a rotating server: Prometheus metrics, a health check for the
//! load balancer, `SIGHUP` to rotate now, and long-lived connections moved
//! to the new certificate after a maximum age. Needs no setup: an internal
//! CA issues short-lived certificates.
//!
//! ```text
//! cargo run --example operations --features metrics -- [--listen 127.0.0.1:8443] [--lifetime 30] [--max-age 10]
//! ```
//!
//! - `GET /metrics`: Prometheus text (`metrics-exporter-prometheus`);
//! - `GET /healthz`: the health snapshot as JSON, 200 or 503;
//! - `kill -HUP <pid>`: a new certificate now.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use certrotate::serve::MaxConnectionAge;
use certrotate::source::LeafSpec;
use certrotate::{HealthService, InternalCa, Policy, Rotator, TlsListener};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:8443".parse()?;
    let mut lifetime = Duration::from_secs(30);
    let mut max_age = Duration::from_secs(10);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?.parse()?,
            "--lifetime" => lifetime = Duration::from_secs_f64(value()?.parse()?),
            "--max-age" => max_age = Duration::from_secs_f64(value()?.parse()?),
            _ => {
                return Err(format!(
                    "unknown argument {arg}; usage: operations [--listen ADDR] [--lifetime SECONDS] [--max-age SECONDS]"
                )
                .into())
            }
        }
    }

    // Metrics: any `metrics` exporter works; this one renders Prometheus text.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let ca = InternalCa::generate("certrotate operations demo CA")?;
    let dir = std::env::temp_dir().join(format!("certrotate-operations-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.trust_pem())?;
    let leaf = LeafSpec::new(["localhost", "127.0.0.1"]).lifetime(lifetime);
    let policy = Policy::builder().server_name("localhost").build()?;
    let rotator = Rotator::builder(ca.source(leaf), policy)
        .alert_repeat(Duration::from_secs(60))
        .start()
        .await?;
    rotator.rotate_on_sighup()?;

    let app = Router::new()
        .route("/", get(|| async { "ok\n" }))
        .route("/metrics", get(move || async move { prometheus.render() }))
        .route_service("/healthz", HealthService::new(rotator.store().clone()));

    let tcp = tokio::net::TcpListener::bind(listen).await?;
    let bound = tcp.local_addr()?;
    // ALPN: h2 and http/1.1, as the rotator's configs offer.
    let tls = rotator.server_config()?;
    let mut listener = TlsListener::new(tcp, Arc::new(tls));
    let max_age = MaxConnectionAge::new(rotator.store(), max_age);
    let (pid, port, ca_path) = (std::process::id(), bound.port(), ca_path.display());
    println!("listening on https://{bound}");
    println!("pid {pid}: `kill -HUP {pid}` rotates now");
    println!("try:  curl --cacert {ca_path} https://localhost:{port}/metrics");
    println!("      curl --cacert {ca_path} https://localhost:{port}/healthz");

    let serve = async {
        loop {
            let (tls, _peer) = listener.accept().await;
            // Closes the connection gracefully once it has outlived a rotation.
            let stale = max_age.connection();
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let http = auto::Builder::new(TokioExecutor::new());
                let connection = http.serve_connection(TokioIo::new(tls), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => return,
                    () = stale => connection.as_mut().graceful_shutdown(),
                }
                let _ = connection.await;
            });
        }
    };
    tokio::select! {
        () = serve => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    rotator.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

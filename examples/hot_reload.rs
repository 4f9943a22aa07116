//! The demo: an axum server on https whose certificate rotates every few
//! seconds, issued by a throw-away development CA. Needs no setup.
//!
//! ```text
//! cargo run --example hot_reload -- [--listen 127.0.0.1:8443] [--every 10]
//! ```
//!
//! `GET /` answers `ok`; `GET /certs` the public health summary as JSON
//! (counts and codes: what a public port may tell; see `HealthService`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::routing::get;
use axum::Router;
use certrotate::{
    CertBundle, CertSource, HealthService, Policy, RotationEvent, Rotator, SourceError, TlsListener,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A development CA that issues a fresh short-lived certificate at every fetch.
struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    lifetime: Duration,
}

impl DevCa {
    /// Makes the CA and writes its certificate to `dir/ca.pem` for clients.
    fn create(
        dir: &std::path::Path,
        lifetime: Duration,
    ) -> Result<(Self, PathBuf), Box<dyn std::error::Error>> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "certrotate demo CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, cert.pem())?;
        Ok((
            Self {
                issuer: Issuer::new(params, key),
                lifetime,
            },
            ca_path,
        ))
    }
}

impl CertSource for DevCa {
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        let issue = || -> Result<CertBundle, certrotate::source::BoxError> {
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
            params
                .distinguished_name
                .push(DnType::CommonName, "localhost");
            let now = SystemTime::now();
            params.not_before = (now - Duration::from_secs(1)).into();
            params.not_after = (now + self.lifetime).into();
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &self.issuer)?;
            Ok(CertBundle::from_pem(
                cert.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
            )?)
        };
        issue().map_err(|e| SourceError::unavailable(self.describe(), e))
    }

    fn describe(&self) -> String {
        "demo CA".into()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:8443".parse()?;
    let mut every = Duration::from_secs(10);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?.parse()?,
            "--every" => every = Duration::from_secs_f64(value()?.parse()?),
            _ => {
                return Err(format!(
                    "unknown argument {arg}; usage: hot_reload [--listen ADDR] [--every SECONDS]"
                )
                .into())
            }
        }
    }

    let dir = std::env::temp_dir().join(format!("certrotate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Short-lived on purpose: three rotation periods, but at least 10 s
    // (certificate times are whole seconds).
    let (ca, ca_path) = DevCa::create(&dir, (every * 3).max(Duration::from_secs(10)))?;
    let policy = Policy::builder()
        .server_name("localhost")
        .server_name("127.0.0.1")
        .build()?;
    let rotator = Rotator::builder(ca, policy).start().await?;

    let mut events = rotator.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                RotationEvent::Rotated { old, new, .. } => println!(
                    "rotated: serial {} -> {} (expires in {}s)",
                    old.map_or("none".into(), |o| o.serial.clone()),
                    new.serial,
                    new.not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .as_secs(),
                ),
                RotationEvent::Refused { error, .. } => println!("refused: {error}"),
                RotationEvent::SourceFailed { error, .. } => println!("source failed: {error}"),
                _ => {}
            }
        }
    });
    let ticker = rotator.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let _ = ticker.rotate_now().await; // outcomes are printed from the events
        }
    });

    let tcp = tokio::net::TcpListener::bind(listen).await?;
    let bound = tcp.local_addr()?;
    let port = bound.port();
    // ALPN h2 and http/1.1 (the rotator's default).
    let tls = rotator.server_config()?;
    let listener = TlsListener::new(tcp, Arc::new(tls));
    let app = Router::new()
        .route("/", get(|| async { "ok\n" }))
        .route_service("/certs", HealthService::new(rotator.store().clone()));

    let first = rotator.current().ok_or("no certificate after start")?;
    println!(
        "listening on https://{bound}; certificate {} rotates every {every:?}",
        first.serial
    );
    println!(
        "try:  curl --cacert {} https://localhost:{port}/",
        ca_path.display()
    );
    println!(
        "      curl --cacert {} https://localhost:{port}/certs",
        ca_path.display()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

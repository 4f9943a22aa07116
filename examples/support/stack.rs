//! What the server-stack examples (`grpc`, `actix`, `axum_server`,
//! `reqwest_mtls`) share: their command line, the development CA that makes
//! them need no setup, and the lines they print.
//!
//! ```text
//! [--listen ADDR] [--lifetime SECONDS] [--ca-out PEM] [--for SECONDS] [--mtls]
//! ```
//!
//! - `--listen`: where to serve (default `127.0.0.1:8443`).
//! - `--lifetime`: how long each certificate lives (default 30 s); the
//!   rotator renews it with a third left, so it rotates about every two
//!   thirds of that.
//! - `--ca-out`: where to write the development CA's certificate, for
//!   clients to trust (default: `ca.pem` in a new temporary directory; the
//!   path is printed).
//! - `--for`: stop after this long (examples with a client of their own
//!   then print `done: N ok, M failed`).
//! - `--mtls` (where the example has it): clients must present a
//!   certificate from the development CA, which rotates too.

// Each example uses its own part of this module.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use certrotate::policy::Usage;
use certrotate::source::LeafSpec;
use certrotate::{InternalCa, Policy, RotationEvent, Rotator};

pub struct Args {
    pub listen: SocketAddr,
    pub lifetime: Duration,
    pub ca_out: Option<PathBuf>,
    pub run_for: Option<Duration>,
    pub mtls: bool,
}

impl Args {
    /// Reads the command line of example `name`; exits with its usage on a
    /// mistake.
    pub fn parse(name: &str) -> Self {
        let usage = format!(
            "usage: {name} [--listen ADDR] [--lifetime SECONDS] [--ca-out PEM] [--for SECONDS] [--mtls]"
        );
        match Self::try_parse() {
            Ok(args) => args,
            Err(error) => {
                eprintln!("{error}; {usage}");
                std::process::exit(2);
            }
        }
    }

    fn try_parse() -> Result<Self, String> {
        let mut args = Self {
            listen: "127.0.0.1:8443".parse().expect("a socket address"),
            lifetime: Duration::from_secs(30),
            ca_out: None,
            run_for: None,
            mtls: false,
        };
        let mut argv = std::env::args().skip(1);
        while let Some(arg) = argv.next() {
            if arg == "--mtls" {
                args.mtls = true;
                continue;
            }
            let value = argv.next().ok_or(format!("{arg} needs a value"))?;
            let seconds = || {
                value
                    .parse::<f64>()
                    .map(Duration::from_secs_f64)
                    .map_err(|e| format!("{arg}: {e}"))
            };
            match arg.as_str() {
                "--listen" => args.listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
                "--lifetime" => args.lifetime = seconds()?,
                "--ca-out" => args.ca_out = Some(PathBuf::from(value)),
                "--for" => args.run_for = Some(seconds()?),
                _ => return Err(format!("unknown argument {arg}")),
            }
        }
        Ok(args)
    }
}

/// A development CA (its certificate written where `args` says, for
/// clients), and a rotator keeping a server certificate for `localhost`
/// and 127.0.0.1 from it, short-lived as `args` says.
pub async fn dev_ca(args: &Args) -> Result<(InternalCa, Rotator), Box<dyn std::error::Error>> {
    let ca = InternalCa::generate("certrotate example CA")?;
    let path = match &args.ca_out {
        Some(path) => path.clone(),
        None => {
            let dir = std::env::temp_dir().join(format!("certrotate-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            dir.join("ca.pem")
        }
    };
    std::fs::write(&path, ca.trust_pem())?;
    eprintln!("trust the development CA in {}", path.display());
    let spec = LeafSpec::new(["localhost", "127.0.0.1"])
        .lifetime(args.lifetime)
        .usage(Usage::Server);
    let policy = Policy::builder()
        .server_name("localhost")
        .server_name("127.0.0.1")
        .build()?;
    let rotator = Rotator::builder(ca.source(spec), policy).start().await?;
    Ok((ca, rotator))
}

/// A rotator keeping a client certificate (for mutual TLS) from `ca`.
pub async fn client_cert(
    ca: &InternalCa,
    args: &Args,
) -> Result<Rotator, Box<dyn std::error::Error>> {
    let spec = LeafSpec::new(["client.example"])
        .lifetime(args.lifetime)
        .usage(Usage::Client);
    let policy = Policy::builder().usage(Usage::Client).build()?;
    Ok(Rotator::builder(ca.source(spec), policy).start().await?)
}

/// Prints `WHO: serving SERIAL` for the certificate `rotator` serves now,
/// then at every rotation.
pub fn print_rotations(who: &'static str, rotator: &Rotator) {
    if let Some(cert) = rotator.current() {
        println!("{who}: serving {}", cert.serial);
    }
    let mut events = rotator.subscribe();
    let slot = rotator.slot().to_owned();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                RotationEvent::Rotated { slot: s, new, .. } if *s == *slot => {
                    println!("{who}: serving {}", new.serial)
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

/// The serial of a certificate (DER), as certrotate prints it.
pub fn serial(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert.raw_serial_as_string())
        .unwrap_or_default()
}

/// Runs `calls` for `run_for` (for ever without it), then prints `done: N
/// ok, M failed` from the counts.
pub async fn run_calls(
    run_for: Option<Duration>,
    calls: impl Future<Output = ()>,
    (ok, failed): (&AtomicU64, &AtomicU64),
) {
    match run_for {
        Some(run_for) => {
            let _ = tokio::time::timeout(run_for, calls).await;
        }
        None => calls.await,
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("done: {ok} ok, {failed} failed");
}

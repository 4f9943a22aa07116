//! An axum server whose certificate comes from Vault's or OpenBao's PKI
//! secrets engine (`<mount>/sign/<role>`, the key made here), renewed by
//! itself; with `--client-trust`, clients must present a certificate from
//! an issuer of the same mount (followed as issuers rotate).
//!
//! ```text
//! cargo run --release --example vault -- \
//!     --addr URL --token-file FILE --mount NAME --role NAME --name NAME --listen ADDR \
//!     [--ca-file PEM] [--client-trust]
//! ```
//!
//! Standard output says `listening on https://ADDR`, then `serving SERIAL`
//! at each new certificate. `GET /` answers `ok`; `GET /certs` the health
//! snapshot as JSON, with `last_error` (a string, or null).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use certrotate::vault::{TokenFile, VaultSource, VaultTrust};
use certrotate::{Policy, Rotator, TlsListener};

#[path = "support/serving.rs"]
mod serving;

const USAGE: &str =
    "usage: vault --addr URL --token-file FILE --mount NAME --role NAME --name NAME \
                     --listen ADDR [--ca-file PEM] [--client-trust]";

struct Args {
    addr: String,
    token_file: PathBuf,
    mount: String,
    role: String,
    name: String,
    listen: SocketAddr,
    ca_file: Option<PathBuf>,
    client_trust: bool,
}

fn parse_args() -> Result<Args, String> {
    let (mut addr, mut token_file, mut mount, mut role) = (None, None, None, None);
    let (mut name, mut listen, mut ca_file, mut client_trust) = (None, None, None, false);
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        if arg == "--client-trust" {
            client_trust = true;
            continue;
        }
        let value = argv.next().ok_or(format!("{arg} needs a value; {USAGE}"))?;
        match arg.as_str() {
            "--addr" => addr = Some(value),
            "--token-file" => token_file = Some(PathBuf::from(value)),
            "--mount" => mount = Some(value),
            "--role" => role = Some(value),
            "--name" => name = Some(value),
            "--listen" => listen = Some(value.parse().map_err(|e| format!("{arg}: {e}"))?),
            "--ca-file" => ca_file = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument {arg}; {USAGE}")),
        }
    }
    let missing = |what| format!("{what} is required; {USAGE}");
    Ok(Args {
        addr: addr.ok_or_else(|| missing("--addr"))?,
        token_file: token_file.ok_or_else(|| missing("--token-file"))?,
        mount: mount.ok_or_else(|| missing("--mount"))?,
        role: role.ok_or_else(|| missing("--role"))?,
        name: name.ok_or_else(|| missing("--name"))?,
        listen: listen.ok_or_else(|| missing("--listen"))?,
        ca_file,
        client_trust,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    let ca_pem = match &args.ca_file {
        Some(path) => Some(std::fs::read(path)?),
        None => None,
    };
    // Plain HTTP only to a Vault on this host (a dev server).
    let local = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|prefix| args.addr.starts_with(prefix));
    let mut source = VaultSource::builder(&args.addr, &args.mount, &args.role, [&args.name])
        .auth(TokenFile::new(&args.token_file));
    if let Some(pem) = &ca_pem {
        source = source.ca_pem(pem.clone());
    }
    if local {
        source = source.dangerous().allow_plain_http();
    }
    let policy = Policy::builder().server_name(&args.name).build()?;
    // Launched: the listener is up at once, and a Vault that is down is
    // reported in /certs (and retried) rather than holding the start back.
    let rotator = Rotator::builder(source.build()?, policy)
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(10))
        .launch()
        .await;
    // With --client-trust: the mount's issuers, followed while it serves.
    let trust = match args.client_trust {
        true => {
            let mut trust =
                VaultTrust::builder(&args.addr, &args.mount, TokenFile::new(&args.token_file))
                    .every(Duration::from_secs(5));
            if let Some(pem) = &ca_pem {
                trust = trust.ca_pem(pem.clone());
            }
            if local {
                trust = trust.dangerous().allow_plain_http();
            }
            Some(trust.follow().await?)
        }
        false => None,
    };
    let tls = match &trust {
        Some(trust) => rotator.server_config_with_client_auth(trust.store())?,
        None => rotator.server_config()?,
    };
    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    let bound = tcp.local_addr()?;
    let health = rotator.clone();
    let app = Router::new().route("/", get(|| async { "ok\n" })).route(
        "/certs",
        get(move || {
            let health = health.clone();
            async move { Json(health.health()) }
        }),
    );
    println!("listening on https://{bound}");
    // Each certificate served, the one already there first.
    serving::print(rotator.clone());
    axum::serve(TlsListener::new(tcp, Arc::new(tls)), app).await?;
    Ok(())
}

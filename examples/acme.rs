//! An axum server that gets its certificate from an ACME CA (Let's Encrypt,
//! Pebble, any RFC 8555 CA) and renews it by itself; alone, or as one
//! replica of a fleet sharing its certificate through Redis.
//!
//! ```text
//! cargo run --release --example acme [--features redis] -- \
//!     (--directory URL)... [--directory-root PEM]... [--on-demand SUFFIX]... [--domain NAME]... --listen ADDR \
//!     --challenge tls-alpn-01|http-01|dns-01 [--http-listen ADDR] \
//!     [--rfc2136 HOST:PORT --tsig-key FILE | --challtestsrv ADDR] \
//!     (--storage DIR | --redis URL --redis-key-file FILE [--redis-root PEM]) [--lock-lease SECONDS] \
//!     [--admin ADDR]
//! ```
//!
//! - `--directory`: the ACME CA; given more than once, the CAs are tried
//!   in that order at each attempt (a CA that is down, hangs, is
//!   rate-limited or refuses the names is skipped for the next).
//! - `--directory-root`: a root certificate to trust for the ACME servers'
//!   own HTTPS (Pebble uses a private one): once for every CA, or once per
//!   `--directory`, in the same order.
//! - `--challenge tls-alpn-01`: the CA validates on port 443 of the names,
//!   which must reach `--listen`; `http-01`: on port 80, which must reach
//!   `--http-listen`; `dns-01`: through TXT records, written by RFC 2136
//!   dynamic updates to the DNS server `--rfc2136` (BIND, Knot,
//!   PowerDNS...), signed with the TSIG key in the BIND key file
//!   `--tsig-key` (what `tsig-keygen` writes); or in Pebble's test DNS
//!   server (`--challtestsrv`, its management address). For another DNS
//!   provider, implement `certrotate::acme::Dns01Solver`.
//! - `--domain`: a name of the server's own certificate (ordered at
//!   start); `--on-demand SUFFIX`: order a certificate at the first
//!   handshake for any name that ends in `.SUFFIX` (on-demand TLS, within
//!   the default abuse limits: 20 new names per client per 10 minutes, 250
//!   orders per 3 hours, 5 at once). At least one of the two.
//! - `--storage`: where the account and certificates are kept (0600). A
//!   restart serves the stored certificate at once and orders a new one only
//!   when renewal is due.
//! - `--redis` (feature `redis`): keep them in Redis instead, encrypted with
//!   the key in `--redis-key-file` (64 hex digits, e.g. from `openssl rand
//!   -hex 32`); `--redis-root`: the roots of a `rediss://` server behind a
//!   private CA. Run several replicas on one Redis: one of them orders (it
//!   holds the renewal lock, kept alive while it lives and taken over
//!   `--lock-lease` seconds after it dies, 10 by default), the others pick
//!   its certificate up. Replicas behind one name
//!   need a challenge any of them can answer: DNS-01.
//!
//! Until the first certificate arrives, handshakes fail (there is nothing
//! to serve); then `GET /` answers `ok` and `GET /certs` the public health
//! summary (counts and codes: no names), with `cas` (each CA by its place
//! in the `--directory` order, `ca`: `failing`, `failing_since` in Unix
//! seconds, `issued`, `failed`; not its URL nor the failure's text). With
//! `--admin ADDR` (a loopback
//! address), `GET /certs` there (plain HTTP) shows the detailed health
//! snapshot as JSON, with `last_error` (string, or null), every name's
//! certificate among `certificates` (its `origin` names the CA that issued
//! it), `cas` (each CA in order: `directory`, `last_failure` while it fails,
//! `failing_since`, `issued`, `failed`), and with `--on-demand`, `on_demand`
//! (what on-demand issuance did: orders, refusals by reason...). Standard
//! output says `listening on https://ADDR`, with `--admin` then `admin on
//! http://ADDR`, then `serving SERIAL` at each new certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use certrotate::acme::rfc2136::{Rfc2136Solver, TsigKey};
use certrotate::acme::{AcmeBuilder, AcmeCa, FileStorage, Http01Responder};
use certrotate::on_demand::AllowList;
use certrotate::{AcmeSource, CertStore, HealthService, OnDemand, Policy, Rotator, TlsListener};

#[path = "support/admin.rs"]
mod admin;
#[path = "support/challtestsrv.rs"]
mod challtestsrv;
#[path = "support/serving.rs"]
mod serving;

const USAGE: &str =
    "usage: acme (--directory URL)... [--directory-root PEM]... [--on-demand SUFFIX]... [--domain NAME]... \
                     --listen ADDR --challenge tls-alpn-01|http-01|dns-01 [--http-listen ADDR] \
                     [--rfc2136 HOST:PORT --tsig-key FILE | --challtestsrv ADDR] (--storage DIR | --redis URL --redis-key-file FILE [--redis-root PEM]) \
                     [--lock-lease SECONDS] [--admin ADDR]";

enum Challenge {
    TlsAlpn01,
    Http01(SocketAddr),
    /// Through Pebble's test DNS server, at its management address.
    Dns01ChallTestSrv(SocketAddr),
    /// By RFC 2136 updates to this server, signed with this key.
    Dns01Rfc2136(SocketAddr, TsigKey),
}

// Without the `redis` feature, `--redis` is parsed and then refused.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
enum Storage {
    Files(PathBuf),
    Redis {
        url: String,
        key_file: PathBuf,
        root: Option<PathBuf>,
    },
}

struct Args {
    /// The CAs in order, each with the root of its HTTPS if one is given.
    directories: Vec<(String, Option<PathBuf>)>,
    domains: Vec<String>,
    on_demand: Vec<String>,
    listen: SocketAddr,
    challenge: Challenge,
    storage: Storage,
    lock_lease: Option<Duration>,
    admin: Option<SocketAddr>,
}

fn parse_args() -> Result<Args, String> {
    let (mut directories, mut roots, mut domains) = (Vec::new(), Vec::new(), Vec::new());
    let mut on_demand = Vec::new();
    let (mut listen, mut challenge, mut http_listen, mut challtestsrv) = (None, None, None, None);
    let (mut storage, mut redis, mut redis_key_file, mut lock_lease) = (None, None, None, None);
    let (mut redis_root, mut admin, mut rfc2136, mut tsig_key) = (None, None, None, None);
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let value = argv.next().ok_or(format!("{arg} needs a value; {USAGE}"))?;
        let addr = |v: &str| v.parse::<SocketAddr>().map_err(|e| format!("{arg}: {e}"));
        match arg.as_str() {
            "--directory" => directories.push(value),
            "--directory-root" => roots.push(PathBuf::from(value)),
            "--domain" => domains.push(value),
            "--on-demand" => on_demand.push(value),
            "--listen" => listen = Some(addr(&value)?),
            "--http-listen" => http_listen = Some(addr(&value)?),
            "--challtestsrv" => challtestsrv = Some(addr(&value)?),
            "--rfc2136" => {
                use std::net::ToSocketAddrs;
                let mut found = value.to_socket_addrs().map_err(|e| format!("{arg}: {e}"))?;
                rfc2136 = Some(
                    found
                        .next()
                        .ok_or(format!("{arg}: {value} has no address"))?,
                );
            }
            "--tsig-key" => {
                tsig_key = Some(TsigKey::from_file(&value).map_err(|e| format!("{arg}: {e}"))?);
            }
            "--storage" => storage = Some(PathBuf::from(value)),
            "--redis" => redis = Some(value),
            "--redis-key-file" => redis_key_file = Some(PathBuf::from(value)),
            "--redis-root" => redis_root = Some(PathBuf::from(value)),
            "--lock-lease" => {
                let seconds = value.parse().map_err(|e| format!("{arg}: {e}"))?;
                lock_lease = Some(Duration::from_secs(seconds));
            }
            "--challenge" => challenge = Some(value),
            "--admin" => admin = Some(admin::parse(&value)?),
            _ => return Err(format!("unknown argument {arg}; {USAGE}")),
        }
    }
    let missing = |what| format!("{what} is required; {USAGE}");
    let challenge = match challenge.as_deref() {
        Some("tls-alpn-01") => Challenge::TlsAlpn01,
        Some("http-01") => Challenge::Http01(http_listen.ok_or_else(|| missing("--http-listen"))?),
        Some("dns-01") => match (rfc2136, tsig_key, challtestsrv) {
            (Some(server), Some(key), None) => Challenge::Dns01Rfc2136(server, key),
            (None, None, Some(management)) => Challenge::Dns01ChallTestSrv(management),
            (Some(_), None, None) => return Err(missing("--tsig-key")),
            (None, Some(_), None) => return Err(missing("--rfc2136")),
            (None, None, None) => {
                return Err(missing("--rfc2136 and --tsig-key (or --challtestsrv)"))
            }
            _ => return Err(format!("--rfc2136 excludes --challtestsrv; {USAGE}")),
        },
        Some(other) => return Err(format!("unknown challenge {other:?}; {USAGE}")),
        None => return Err(missing("--challenge")),
    };
    let storage = match (storage, redis, redis_key_file) {
        (Some(dir), None, None) if redis_root.is_none() => Storage::Files(dir),
        (None, Some(url), Some(key_file)) => Storage::Redis {
            url,
            key_file,
            root: redis_root,
        },
        (None, Some(_), None) => return Err(missing("--redis-key-file")),
        (None, None, _) => return Err(missing("--storage or --redis")),
        _ => {
            return Err(format!(
                "--storage excludes --redis, --redis-key-file and --redis-root; {USAGE}"
            ))
        }
    };
    if directories.is_empty() {
        return Err(missing("--directory"));
    }
    let roots: Vec<Option<PathBuf>> = match roots.len() {
        0 => vec![None; directories.len()],
        1 => vec![roots.pop(); directories.len()],
        n if n == directories.len() => roots.into_iter().map(Some).collect(),
        _ => {
            return Err(format!(
                "--directory-root is given once for every CA or once per --directory; {USAGE}"
            ))
        }
    };
    let args = Args {
        directories: directories.into_iter().zip(roots).collect(),
        listen: listen.ok_or_else(|| missing("--listen"))?,
        challenge,
        storage,
        lock_lease,
        domains,
        on_demand,
        admin,
    };
    if args.domains.is_empty() && args.on_demand.is_empty() {
        return Err(missing("--domain or --on-demand"));
    }
    Ok(args)
}

/// The builder with the storage of `args`.
async fn with_storage(acme: AcmeBuilder, storage: &Storage) -> Result<AcmeBuilder, String> {
    match storage {
        Storage::Files(dir) => Ok(acme.storage(FileStorage::new(dir))),
        #[cfg(feature = "redis")]
        Storage::Redis {
            url,
            key_file,
            root,
        } => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
            };
            let key = hex_key(read(key_file)?.trim())
                .ok_or_else(|| format!("{}: not 64 hex digits", key_file.display()))?;
            let mut redis = certrotate::acme::RedisStorage::builder(url, key);
            if let Some(root) = root {
                redis = redis.root_certificates(read(root)?);
            }
            let redis = redis.connect().await.map_err(|e| e.to_string())?;
            Ok(acme.storage(redis))
        }
        #[cfg(not(feature = "redis"))]
        Storage::Redis { .. } => {
            Err("--redis needs the example built with --features redis".into())
        }
    }
}

#[cfg(feature = "redis")]
fn hex_key(text: &str) -> Option<[u8; 32]> {
    let mut key = [0; 32];
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(key)
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

    let (first, first_root) = &args.directories[0];
    let mut acme = AcmeSource::builder(first, args.domains.clone());
    if let Some(root) = first_root {
        acme = acme.directory_root(root);
    }
    for (directory, root) in &args.directories[1..] {
        let mut ca = AcmeCa::new(directory);
        if let Some(root) = root {
            ca = ca.directory_root(root);
        }
        acme = acme.fallback(ca);
    }
    acme = match with_storage(acme, &args.storage).await {
        Ok(acme) => acme,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(1);
        }
    };
    if let Some(lease) = args.lock_lease {
        acme = acme.lock_lease(lease);
    }
    acme = match args.challenge {
        Challenge::TlsAlpn01 => acme.tls_alpn_01(),
        // Port 80: HTTP-01 answers (and nothing else).
        Challenge::Http01(http_listen) => {
            let http01 = Http01Responder::new();
            let tcp = tokio::net::TcpListener::bind(http_listen).await?;
            let app: Router = http01.router();
            tokio::spawn(async move { axum::serve(tcp, app).await });
            acme.http_01(&http01)
        }
        Challenge::Dns01ChallTestSrv(management) => {
            acme.dns_01(challtestsrv::ChallTestSrv(management))
        }
        Challenge::Dns01Rfc2136(server, key) => {
            acme.dns_01(Rfc2136Solver::builder(server, key).build())
        }
    };
    let acme_view = acme.clone().build();
    // One store for the names of its own and those ordered on demand.
    let store = CertStore::new();
    // Launched, not started: a stored certificate (a restart) is served
    // from the first connection, but a first order must not hold the
    // listener back (the TLS-ALPN-01 challenge needs the server up).
    let rotator = match args.domains.is_empty() {
        true => None,
        false => {
            let mut policy = Policy::builder();
            for domain in &args.domains {
                policy = policy.server_name(domain);
            }
            let rotator = Rotator::builder(acme.clone().build(), policy.build()?)
                .store(store.clone())
                .launch()
                .await;
            Some(rotator)
        }
    };
    let on_demand = match args.on_demand.is_empty() {
        true => None,
        false => {
            let allowed = args
                .on_demand
                .iter()
                .fold(AllowList::new(), AllowList::suffix);
            Some(
                OnDemand::builder(acme, allowed)
                    .store(store.clone())
                    .build(),
            )
        }
    };
    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    let bound = tcp.local_addr()?;
    // ALPN: h2, http/1.1, and acme-tls/1 for TLS-ALPN-01.
    let tls = match (&on_demand, &rotator) {
        (Some(on_demand), _) => on_demand.server_config()?,
        (None, Some(rotator)) => rotator.server_config()?,
        (None, None) => unreachable!("checked with the arguments"),
    };
    let public = match &on_demand {
        Some(on_demand) => HealthService::new(store.clone()).on_demand(on_demand.clone()),
        None => HealthService::new(store.clone()),
    };
    let view = acme_view.clone();
    let app = Router::new().route("/", get(|| async { "ok\n" })).route(
        "/certs",
        get(move |request| public_certs(public.clone(), view.clone(), request)),
    );
    println!("listening on https://{bound}");
    if let Some(addr) = args.admin {
        // Every source built from one builder shares what is known of its
        // CAs: this one only reads it.
        let cas = acme_view;
        let health = (store.clone(), on_demand.clone());
        let detailed = Router::new().route(
            "/certs",
            get(move || async move {
                let (store, on_demand) = &health;
                let mut snapshot = serde_json::to_value(store.health()).unwrap_or_default();
                snapshot["cas"] = serde_json::to_value(cas.ca_health()).unwrap_or_default();
                if let Some(on_demand) = on_demand {
                    snapshot["on_demand"] =
                        serde_json::to_value(on_demand.stats()).unwrap_or_default();
                }
                Json(snapshot)
            }),
        );
        admin::serve(addr, detailed).await?;
    }
    // Then each certificate of its own served, the one already there first.
    if let Some(rotator) = rotator {
        serving::print(rotator);
    }
    let mut listener = TlsListener::new(tcp, Arc::new(tls));
    if let Some(on_demand) = on_demand {
        listener = listener.on_demand(on_demand);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The public `/certs`: the health summary (no names, paths, hosts or
/// messages), with what is known of each CA, by its place in the
/// `--directory` order: whether it fails and since when, what it issued
/// and what failed (not its URL, nor the failure's text, which may name
/// names). Prometheus text and `HEAD` pass as they are.
async fn public_certs(
    mut health: HealthService,
    acme: AcmeSource,
    request: axum::extract::Request,
) -> axum::response::Response {
    use http_body_util::BodyExt;

    let Ok(response) = tower_service::Service::call(&mut health, request).await;
    let (parts, body) = response.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes());
    let json = parts.headers.get(axum::http::header::CONTENT_TYPE)
        == Some(&axum::http::HeaderValue::from_static("application/json"));
    let summary = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let Some(mut summary) = summary.filter(|_| json) else {
        return axum::response::Response::from_parts(parts, body.into());
    };
    let seconds = |t: std::time::SystemTime| {
        let since = t.duration_since(std::time::UNIX_EPOCH);
        since.unwrap_or_default().as_secs()
    };
    summary["cas"] = acme
        .ca_health()
        .iter()
        .enumerate()
        .map(|(place, ca)| {
            serde_json::json!({
                "ca": place,
                "failing": ca.last_failure.is_some(),
                "failing_since": ca.failing_since.map(seconds),
                "issued": ca.issued,
                "failed": ca.failed,
            })
        })
        .collect();
    let body = serde_json::to_vec_pretty(&summary).unwrap_or_default();
    axum::response::Response::from_parts(parts, body.into())
}

//! `certrotate`: the library's checks on the command line, for CI/CD gates,
//! monitoring jobs and staging CAs.
//!
//! Exit codes:
//!
//! | command | 0 | 1 | 2 | 3 |
//! |---|---|---|---|---|
//! | `check` | the pair would be accepted | it would be refused (or cannot be read) | usage error | |
//! | `inspect` | every file described | a file unreadable or without a certificate | usage error | |
//! | `probe` | served chain verified, outside the warning window | within the warning window | usage error | cannot connect, handshake or verification failed, expired |
//! | `ca` | done | the CA or files could not be written | usage error | |

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use certrotate::bundle::CertInfo;
use certrotate::policy::Usage;
use certrotate::source::LeafSpec;
use certrotate::{CertBundle, InternalCa, Policy};
use clap::{Parser, Subcommand, ValueEnum};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "certrotate",
    version,
    about = "Checks, inspects and probes TLS certificates with certrotate's own policy."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the library's policy on a certificate and key, offline. Exit 0 when
    /// they would be accepted, 1 when refused, 2 on usage errors.
    Check {
        /// The certificate chain (PEM, leaf first).
        #[arg(long)]
        cert: PathBuf,
        /// The private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// A name (DNS name or IP address) the certificate must cover; repeatable.
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// PEM trust roots the chain must verify to.
        #[arg(long, value_name = "FILE")]
        roots: Option<PathBuf>,
        /// Least validity left, e.g. `7d`, `12h`.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        min_valid: Option<Duration>,
        /// What the certificate is for.
        #[arg(long, value_enum, default_value_t = UsageArg::Server)]
        usage: UsageArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Describes the certificates in PEM files: subject, names, issuer,
    /// validity, time left, key, fingerprint.
    Inspect {
        /// PEM files holding certificates.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Connects to a TLS server and reports the chain it serves. Exit 0 when
    /// it verifies and has more than the warning window left, 1 within the
    /// window, 3 when it cannot be reached or does not verify.
    Probe {
        /// Where to connect.
        #[arg(value_name = "HOST:PORT")]
        address: String,
        /// The server name to ask for (default: HOST).
        #[arg(long, value_name = "NAME")]
        servername: Option<String>,
        /// PEM trust roots (default: the platform's).
        #[arg(long, value_name = "FILE")]
        roots: Option<PathBuf>,
        /// Warn when fewer days than this are left (at most 36500).
        #[arg(long, value_name = "DAYS", default_value_t = 14, value_parser = clap::value_parser!(u64).range(0..=36_500))]
        warn_days: u64,
        /// Give up after this long, e.g. `5s`.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "10s")]
        timeout: Duration,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A CA for development, tests and staging (certrotate's internal CA).
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Creates the CA in DIR (`ca.crt`, `ca.key` with mode 0600), or keeps
    /// the one already there, and prints its certificate's path.
    Init {
        /// Where the CA lives.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "certrotate development CA")]
        name: String,
    },
    /// Issues a leaf from the CA in DIR, with a fresh key.
    Issue {
        /// Where the CA lives (see `ca init`).
        #[arg(long)]
        dir: PathBuf,
        /// A DNS name or IP address to certify; repeatable.
        #[arg(long = "name", value_name = "NAME", required = true)]
        names: Vec<String>,
        /// How long it is valid, e.g. `24h`, `30d`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
        validity: Duration,
        /// What it is for.
        #[arg(long, value_enum, default_value_t = UsageArg::Server)]
        usage: UsageArg,
        /// Where to write the chain (PEM).
        #[arg(long, value_name = "FILE")]
        cert_out: PathBuf,
        /// Where to write the private key (PEM, mode 0600).
        #[arg(long, value_name = "FILE")]
        key_out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum UsageArg {
    Server,
    Client,
    Both,
}

impl From<UsageArg> for Usage {
    fn from(usage: UsageArg) -> Self {
        match usage {
            UsageArg::Server => Usage::Server,
            UsageArg::Client => Usage::Client,
            UsageArg::Both => Usage::ServerAndClient,
        }
    }
}

/// A usage error: exit 2.
struct UsageError(String);

const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;
const USAGE: u8 = 2;
const UNREACHABLE: u8 = 3;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout, as clap prints them.
        Err(error) if !error.use_stderr() => error.exit(),
        // Errors are one line: clap's first, without the usage block.
        Err(error) => {
            let text = error.to_string();
            let line = text.lines().next().unwrap_or_default();
            eprintln!("certrotate: {}", line.trim_start_matches("error: "));
            return ExitCode::from(USAGE);
        }
    };
    let outcome = match cli.command {
        Command::Check {
            cert,
            key,
            names,
            roots,
            min_valid,
            usage,
            json,
        } => check(
            &cert,
            &key,
            &names,
            roots.as_deref(),
            min_valid,
            usage,
            json,
        ),
        Command::Inspect { files, json } => Ok(inspect(&files, json)),
        Command::Probe {
            address,
            servername,
            roots,
            warn_days,
            timeout,
            json,
        } => probe(
            &address,
            servername,
            roots.as_deref(),
            warn_days,
            timeout,
            json,
        ),
        Command::Ca(command) => ca(command),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(UsageError(message)) => {
            eprintln!("certrotate: {message}");
            ExitCode::from(USAGE)
        }
    }
}

fn check(
    cert: &Path,
    key: &Path,
    names: &[String],
    roots: Option<&Path>,
    min_valid: Option<Duration>,
    usage: UsageArg,
    json: bool,
) -> Result<u8, UsageError> {
    let roots = roots.map(read_roots).transpose()?;
    let policy = |names: &[String], min_valid: Option<Duration>, roots: Option<&RootCertStore>| {
        let mut builder = Policy::builder().usage(usage.into());
        for name in names {
            builder = builder.server_name(name);
        }
        if let Some(roots) = roots {
            builder = builder.trust_roots(roots.clone());
        }
        if let Some(min) = min_valid {
            builder = builder.min_remaining(min);
        }
        builder.build().map_err(|e| UsageError(e.to_string()))
    };
    // The verdict is the library's, with every option at once. The policy
    // stops at the first failed check, so when it refuses, each option is
    // also checked on its own to list every reason, not only the first.
    let mut policies = vec![policy(names, min_valid, roots.as_ref())?];
    policies.push(policy(&[], min_valid, None)?);
    policies.push(policy(&[], None, roots.as_ref())?);
    for name in names {
        policies.push(policy(std::slice::from_ref(name), None, None)?);
    }
    let (info, refusals) = match CertBundle::from_pem_files(cert, key) {
        Err(error) => (None, vec![(error.code(), error.to_string())]),
        Ok(bundle) => {
            let now = SystemTime::now();
            let mut refusals: Vec<(&str, String)> = Vec::new();
            for policy in &policies {
                if let Err(error) = policy.validate(&bundle, now) {
                    let refusal = (error.reason().code(), error.to_string());
                    if !refusals.contains(&refusal) {
                        refusals.push(refusal);
                    }
                }
                if refusals.is_empty() {
                    break;
                }
            }
            (Some(bundle.info().clone()), refusals)
        }
    };
    if json {
        let refusals: Vec<_> = refusals
            .iter()
            .map(|(code, message)| json!({ "code": code, "message": message }))
            .collect();
        print_json(&json!({
            "accepted": refusals.is_empty(),
            "certificate": info,
            "refusals": refusals,
        }));
    } else if refusals.is_empty() {
        let info = info.expect("accepted certificates were parsed");
        let accepted = format!("{info}, {}", validity(&info, SystemTime::now()));
        println!("accepted: {}", shown(&accepted));
    } else {
        for (_, message) in &refusals {
            println!("refused: {}", shown(message));
        }
    }
    Ok(if refusals.is_empty() {
        ACCEPTED
    } else {
        REFUSED
    })
}

fn inspect(files: &[PathBuf], json: bool) -> u8 {
    let now = SystemTime::now();
    let mut described = Vec::new();
    let mut failed = false;
    for file in files {
        match certificates_in(file) {
            Ok(certs) => {
                for (index, info) in certs.into_iter().enumerate() {
                    described.push((file, index, info));
                }
            }
            Err(message) => {
                failed = true;
                eprintln!("certrotate: {message}");
            }
        }
    }
    if json {
        let entries: Vec<_> = described
            .iter()
            .map(|(file, index, info)| {
                json!({
                    "file": file,
                    "index": index,
                    "certificate": info,
                    "remaining_seconds": remaining(info, now).as_secs(),
                    "expired": info.not_after <= now,
                })
            })
            .collect();
        print_json(&json!(entries));
    } else {
        for (file, index, info) in &described {
            println!("{} #{index}", file.display());
            describe(info, now);
        }
    }
    if failed {
        REFUSED
    } else {
        ACCEPTED
    }
}

/// Reads a PEM file given on the command line as the library reads every
/// file (see `src/read.rs`): without blocking on a FIFO or device, a
/// regular file only, at most 1 MiB.
/// Reads a PEM file named on the command line under the library's rules
/// (a regular file, opened without blocking, at most 1 MiB).
fn read_pem(path: &Path) -> Result<Vec<u8>, certrotate::SourceError> {
    certrotate::source::FileOptions::default().read_file(path)
}

fn certificates_in(file: &Path) -> Result<Vec<CertInfo>, String> {
    let pem = read_pem(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut infos = Vec::new();
    for (index, der) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let der = der.map_err(|e| format!("{} is not valid PEM: {e}", file.display()))?;
        let info = CertInfo::from_der(&der)
            .map_err(|e| format!("certificate #{index} of {}: {e}", file.display()))?;
        infos.push(info);
    }
    match infos.is_empty() {
        true => Err(format!("{} holds no PEM certificate", file.display())),
        false => Ok(infos),
    }
}

fn describe(info: &CertInfo, now: SystemTime) {
    let names: Vec<String> = info
        .dns_names
        .iter()
        .cloned()
        .chain(info.ip_addresses.iter().map(ToString::to_string))
        .chain(info.uris.iter().cloned())
        .collect();
    println!("  subject:  {}", shown(&info.subject));
    println!(
        "  names:    {}",
        if names.is_empty() {
            "(none)".into()
        } else {
            shown(&names.join(", ")).into_owned()
        }
    );
    println!("  issuer:   {}", shown(&info.issuer));
    println!("  serial:   {}", info.serial);
    println!("  validity: {}", validity(info, now));
    println!("  key:      {}", info.key);
    println!("  sha256:   {}", info.fingerprint_sha256);
    if info.is_ca {
        println!("  CA:       yes");
    }
}

fn remaining(info: &CertInfo, now: SystemTime) -> Duration {
    info.not_after.duration_since(now).unwrap_or_default()
}

/// "valid 2026-01-01T00:00:00Z to 2026-04-01T00:00:00Z, 89d 23h left"
fn validity(info: &CertInfo, now: SystemTime) -> String {
    let state = match info.not_after.duration_since(now) {
        _ if now < info.not_before => "not valid yet".to_owned(),
        Ok(left) if !left.is_zero() => format!("{} left", days_hours(left)),
        _ => format!(
            "expired {} ago",
            days_hours(now.duration_since(info.not_after).unwrap_or_default())
        ),
    };
    format!(
        "valid {} to {}, {state}",
        humantime::format_rfc3339_seconds(info.not_before),
        humantime::format_rfc3339_seconds(info.not_after)
    )
}

fn days_hours(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=3599 => format!("{}m", secs / 60),
        3600..=86399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

fn probe(
    address: &str,
    servername: Option<String>,
    roots: Option<&Path>,
    warn_days: u64,
    timeout: Duration,
    json: bool,
) -> Result<u8, UsageError> {
    let (host, _) = address
        .rsplit_once(':')
        .ok_or_else(|| UsageError(format!("{address:?} is not HOST:PORT")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = servername.unwrap_or_else(|| host.to_owned());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| UsageError(format!("{name:?} is not a valid server name")))?;
    // The library's provider: the process default, else its feature's.
    let provider = certrotate::Policy::default().crypto_provider().clone();
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        Some(path) => rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(read_roots(path)?),
            provider.clone(),
        )
        .build()
        .map_err(|e| UsageError(format!("{}: {e}", path.display())))?,
        None => Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| UsageError(format!("the platform's trust roots: {e}")))?,
        ),
    };
    let recording = Arc::new(Recording {
        inner: verifier,
        chain: Mutex::default(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UsageError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(recording.clone())
        .with_no_client_auth();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError(e.to_string()))?;
    let handshake = runtime.block_on(async {
        // Resolving is part of the attempt: a DNS server that does not
        // answer is bounded by the timeout too.
        let connect = async {
            let addr = tokio::net::lookup_host(address)
                .await
                .map_err(|e| format!("cannot resolve {address}: {e}"))?
                .next()
                .ok_or_else(|| format!("{address} resolves to no address"))?;
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot connect to {address}: {e}"))?;
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {address} as {name:?} failed: {e}"))
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(format!(
                "no TLS handshake with {address} within {timeout:?}"
            )),
        }
    });
    let chain = std::mem::take(&mut *recording.chain.lock().unwrap_or_else(|p| p.into_inner()));
    let infos: Vec<CertInfo> = chain
        .iter()
        .filter_map(|der| CertInfo::from_der(der).ok())
        .collect();
    let now = SystemTime::now();
    let left = infos.first().map(|leaf| remaining(leaf, now));
    let warn = Duration::from_secs(warn_days.saturating_mul(86_400));
    let (code, verdict) = match (&handshake, left) {
        (Err(error), _) => (UNREACHABLE, error.clone()),
        (Ok(()), Some(left)) if left < warn => (
            REFUSED,
            format!(
                "the certificate expires in {}, within the {warn_days}-day warning window",
                days_hours(left)
            ),
        ),
        (Ok(()), _) => (ACCEPTED, "ok".to_owned()),
    };
    if json {
        print_json(&json!({
            "address": address,
            "servername": name,
            "ok": code == ACCEPTED,
            "verdict": verdict,
            "remaining_seconds": left.map(|l| l.as_secs()),
            "chain": infos,
        }));
    } else {
        for (index, info) in infos.iter().enumerate() {
            println!("{} ({}) #{index}", shown(address), shown(&name));
            describe(info, now);
        }
        println!(
            "{}: {}",
            if code == ACCEPTED { "ok" } else { "problem" },
            shown(&verdict)
        );
    }
    Ok(code)
}

/// Verifies with `inner`, and keeps the chain it was shown.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(leaf).chain(intermediates);
        *self.chain.lock().unwrap_or_else(|p| p.into_inner()) =
            chain.map(|c| c.clone().into_owned()).collect();
        self.inner
            .verify_server_cert(leaf, intermediates, name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn ca(command: CaCommand) -> Result<u8, UsageError> {
    let failed = |message: String| {
        eprintln!("certrotate: {message}");
        Ok(REFUSED)
    };
    match command {
        CaCommand::Init { dir, name } => match InternalCa::open(&dir, &name) {
            Ok(_) => {
                println!("{}", dir.join("ca.crt").display());
                Ok(ACCEPTED)
            }
            Err(error) => failed(error.to_string()),
        },
        CaCommand::Issue {
            dir,
            names,
            validity,
            usage,
            cert_out,
            key_out,
        } => {
            if !dir.join("ca.crt").exists() {
                return failed(format!(
                    "there is no CA in {} (run `certrotate ca init --dir {}` first)",
                    dir.display(),
                    dir.display()
                ));
            }
            let ca = match InternalCa::open(&dir, "certrotate development CA") {
                Ok(ca) => ca,
                Err(error) => return failed(error.to_string()),
            };
            let spec = LeafSpec::new(names).lifetime(validity).usage(usage.into());
            let bundle = match ca.issue(&spec) {
                Ok(bundle) => bundle,
                Err(error) => return failed(error.to_string()),
            };
            if let Err(error) = bundle.write_pem_files(&cert_out, &key_out) {
                return failed(format!(
                    "cannot write {} and {}: {error}",
                    cert_out.display(),
                    key_out.display()
                ));
            }
            let info = bundle.info();
            println!("issued {info}, {}", self::validity(info, SystemTime::now()));
            Ok(ACCEPTED)
        }
    }
}

/// The CA certificates of the PEM file at `path`, checked by the library
/// as a `TrustStore` checks them.
fn read_roots(path: &Path) -> Result<RootCertStore, UsageError> {
    let fail = |reason: String| UsageError(format!("trust roots {}: {reason}", path.display()));
    let pem = read_pem(path).map_err(|e| fail(e.to_string()))?;
    let trust = certrotate::TrustStore::from_pem(&pem).map_err(|e| fail(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    // Every one was accepted as a trust anchor already.
    roots.add_parsable_certificates(trust.roots());
    Ok(roots)
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `text` as a terminal may show it: control characters (escape sequences)
/// and bidirectional overrides, which a certificate from a probed server
/// may carry to rewrite the screen or reorder what it says, are escaped.
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return text.into();
    }
    text.chars()
        .map(|c| match unsafe_char(c) {
            true => c.escape_unicode().to_string(),
            false => c.to_string(),
        })
        .collect::<String>()
        .into()
}

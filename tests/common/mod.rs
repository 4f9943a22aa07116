//! Test fixtures: a dev CA issuing leaves of every shape, a TLS server on
//! 127.0.0.1 and a client that reports the certificate it saw.
#![allow(dead_code)] // each test binary uses a different part

#[cfg(feature = "vault")]
pub mod bao;
#[cfg(feature = "rfc2136")]
pub mod dns;
#[cfg(feature = "acme")]
pub mod pebble;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "acme")]
pub mod storage;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certrotate::danger::Clock;
use certrotate::{CertBundle, TlsListener};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub const HOST: &str = "localhost";

/// A certificate authority for tests.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    pub pem: String,
}

/// How to shape a leaf.
#[derive(Clone)]
pub struct Leaf {
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub alg: &'static SignatureAlgorithm,
    pub is_ca: bool,
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    pub serial: Option<u64>,
}

impl Default for Leaf {
    fn default() -> Self {
        let now = SystemTime::now();
        Self {
            names: vec![HOST.into()],
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(24 * 3600),
            alg: &rcgen::PKCS_ECDSA_P256_SHA256,
            is_ca: false,
            eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
            serial: None,
        }
    }
}

impl Leaf {
    pub fn valid_from(mut self, not_before: SystemTime) -> Self {
        self.not_before = not_before;
        self
    }
    pub fn lifetime(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
    pub fn names(mut self, names: &[&str]) -> Self {
        self.names = names.iter().map(|n| n.to_string()).collect();
        self
    }
    pub fn alg(mut self, alg: &'static SignatureAlgorithm) -> Self {
        self.alg = alg;
        self
    }
}

/// A leaf's PEM files as strings, plus the bundle made from them.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub bundle: CertBundle,
}

impl Ca {
    pub fn new() -> Self {
        Self::new_named("certrotate test CA")
    }

    pub fn new_named(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = (SystemTime::now() - Duration::from_secs(365 * 86400)).into();
        params.not_after = (SystemTime::now() + Duration::from_secs(365 * 86400)).into();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = (SystemTime::now() - Duration::from_secs(30 * 86400)).into();
        params.not_after = (SystemTime::now() + Duration::from_secs(300 * 86400)).into();
        params.serial_number = Some(rand_serial().into());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Self {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        roots
    }

    pub fn issue(&self, leaf: Leaf) -> Issued {
        let mut params = CertificateParams::new(leaf.names.clone()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            leaf.names.first().cloned().unwrap_or_default(),
        );
        params.not_before = leaf.not_before.into();
        params.not_after = leaf.not_after.into();
        params.extended_key_usages = leaf.eku.clone();
        params.serial_number = Some(leaf.serial.unwrap_or_else(rand_serial).into());
        // As public CAs do; ARI (RFC 9773) names a certificate by it.
        params.use_authority_key_identifier_extension = true;
        if leaf.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let key = KeyPair::generate_for(leaf.alg).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let bundle = CertBundle::from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        Issued {
            cert_pem,
            key_pem,
            bundle,
        }
    }

    /// A CRL signed by this CA revoking these serial numbers.
    pub fn crl(&self, revoked: &[u64]) -> rustls::pki_types::CertificateRevocationListDer<'static> {
        let now = SystemTime::now();
        let params = rcgen::CertificateRevocationListParams {
            this_update: (now - Duration::from_secs(60)).into(),
            next_update: (now + Duration::from_secs(3600)).into(),
            crl_number: rcgen::SerialNumber::from(rand_serial()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| rcgen::RevokedCertParams {
                    serial_number: (*serial).into(),
                    revocation_time: now.into(),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().der().clone()
    }

    /// This CA's certificate and key as PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A leaf valid from `offset` seconds after an hour ago: later offsets make newer certificates.
    pub fn nth(&self, offset: u64) -> CertBundle {
        let start = SystemTime::now() - Duration::from_secs(3600) + Duration::from_secs(offset);
        self.issue(Leaf::default().valid_from(start)).bundle
    }
}

pub fn rand_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        & 0xffff_ffff_0000)
        | n
}

/// A TLS server on 127.0.0.1 (a free port) answering each connection with
/// an echo of one line, until the returned handle is aborted or dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(config: Arc<rustls::ServerConfig>) -> Server {
    let tcp = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    serve_listener(TlsListener::new(tcp, config))
}

/// Echoes what each connection `listener` accepts sends.
pub fn serve_listener(mut listener: TlsListener) -> Server {
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut tls, _) = listener.accept().await;
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Server { addr, task }
}

/// A client trusting `ca` that never resumes sessions: a resumed TLS 1.3
/// session carries no certificate, and these clients report the certificate
/// each handshake was served.
pub fn client_config(ca: &Ca) -> Arc<rustls::ClientConfig> {
    let mut config = client_builder()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A rotator started on `first`, serving over TLS on 127.0.0.1, with a
/// source to push through and a client that trusts `ca`.
pub struct Serving {
    pub source: certrotate::source::StaticSource,
    pub rotator: certrotate::Rotator,
    pub server: Server,
    pub client: Arc<rustls::ClientConfig>,
}

pub async fn serving(ca: &Ca, policy: certrotate::Policy, first: CertBundle) -> Serving {
    let source = certrotate::source::StaticSource::new(first);
    let rotator = certrotate::Rotator::builder(source.clone(), policy)
        .start()
        .await
        .unwrap();
    let server = serve(Arc::new(rotator.server_config().unwrap())).await;
    Serving {
        source,
        rotator,
        server,
        client: client_config(ca),
    }
}

/// Pushes `bundle` into `source` and has `rotator` install it now (or finds
/// that the source's change signal already did).
pub async fn push_and_rotate(
    rotator: &certrotate::Rotator,
    source: &certrotate::source::StaticSource,
    bundle: CertBundle,
) {
    let serial = bundle.info().serial.clone();
    source.push(bundle);
    match rotator.rotate_now().await {
        Ok(certrotate::rotator::Rotation::Rotated { new, .. })
        | Ok(certrotate::rotator::Rotation::Unchanged(new))
            if new.serial == serial => {}
        other => panic!("rotation to {serial} failed: {other:?}"),
    }
}

/// Handshakes with `addr` as `name` and returns the serial of the leaf it saw.
pub async fn serial_seen(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // Read back one echo so that the server side finished too.
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no peer certificate")?;
    Ok(serial_of(leaf))
}

/// Waits (up to `within`) for the rotation that replaces `serving`, and
/// returns the new certificate. Events about `serving` itself are skipped:
/// its own install is published before its event is sent, so a receiver
/// subscribed as soon as it serves may still see that event.
pub async fn rotation_from(
    events: &mut tokio::sync::broadcast::Receiver<certrotate::RotationEvent>,
    serving: &certrotate::bundle::CertInfo,
    within: Duration,
) -> Arc<certrotate::bundle::CertInfo> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(certrotate::RotationEvent::Rotated { new, .. }))
                if new.fingerprint_sha256 != serving.fingerprint_sha256 =>
            {
                return new
            }
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("events lost: {e}"),
            Err(_) => panic!("nothing replaced {} within {within:?}", serving.serial),
        }
    }
}

/// Waits for `count` renewals after `first`, each within `within` and
/// before the certificate it replaces expired: the last certificate.
pub async fn renewals_before_expiry(
    events: &mut tokio::sync::broadcast::Receiver<certrotate::RotationEvent>,
    first: Arc<certrotate::bundle::CertInfo>,
    count: usize,
    within: Duration,
) -> Arc<certrotate::bundle::CertInfo> {
    let mut serving = first;
    for renewal in 1..=count {
        let new = rotation_from(events, &serving, within).await;
        assert!(
            std::time::SystemTime::now() < serving.not_after,
            "renewal {renewal} came after expiry"
        );
        assert_ne!(new.serial, serving.serial);
        serving = new;
    }
    serving
}

pub fn serial_of(der: &CertificateDer<'_>) -> String {
    let bundle_info = x509_parser::parse_x509_certificate(der.as_ref()).unwrap().1;
    bundle_info.raw_serial_as_string()
}

/// Wall-clock time that follows `tokio::time`, so that a paused runtime
/// moves it forward: tests of schedules that span days run in milliseconds.
#[derive(Debug)]
pub struct TokioClock {
    start_wall: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start_wall: SystemTime::now(),
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.start_wall + self.start.elapsed()
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::AtomicU64;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("certrotate-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed RSA-1024 certificate for `localhost` and its key, as PEM.
/// Made by openssl: rcgen and aws-lc refuse to make keys this weak.
pub fn rsa_1024_pem() -> (String, String) {
    let dir = TempDir::new("rsa1024");
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:1024", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    (
        std::fs::read_to_string(cert).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

/// Handshakes running back to back against a server until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>,
}

/// Starts `workers` clients handshaking with `addr` as `name` in a loop,
/// each exchanging a ping with the echo server there.
pub fn load(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
    workers: usize,
) -> Load {
    start_load(config, addr, name, workers, false)
}

/// [`load`] against an HTTPS server: each connection is one `GET /` that
/// must answer 200.
pub fn load_https(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
    workers: usize,
) -> Load {
    start_load(config, addr, name, workers, true)
}

fn start_load(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
    workers: usize,
    https: bool,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let workers = (0..workers)
        .map(|_| {
            let (config, name, stop) = (config.clone(), name.to_owned(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let exchange = async {
                        match https {
                            true => get_over_tls(&config, addr, &name).await,
                            false => serial_seen(&config, addr, &name).await.map(drop),
                        }
                    };
                    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
                        Ok(Ok(())) => ok += 1,
                        Ok(Err(e)) => failed.push(e),
                        Err(_) => failed.push("no answer within 10 s".to_owned()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    Load { stop, workers }
}

/// One `GET /` over a new TLS connection to `addr` as `name`; Ok on 200.
async fn get_over_tls(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = TlsConnector::from(config.clone())
        .connect(server, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.ends_with(b"\r\n\r\nok\n") {
        match tls.read(&mut buf).await.map_err(|e| e.to_string())? {
            0 => break,
            n => response.extend_from_slice(&buf[..n]),
        }
    }
    let response = String::from_utf8_lossy(&response);
    match response.starts_with("HTTP/1.1 200") {
        true => Ok(()),
        false => Err(format!("answered {:?}", response.lines().next())),
    }
}

impl Load {
    /// Stops the clients without looking at their results (their server
    /// was killed on purpose).
    pub fn abandon(self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops the clients and checks that every handshake succeeded. Returns
    /// how many there were.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for worker in self.workers {
            let (ok, failed) = worker.await.unwrap();
            assert!(
                failed.is_empty(),
                "{} failed handshakes: {:?}",
                failed.len(),
                &failed[..failed.len().min(5)]
            );
            total += ok;
        }
        assert!(total > 0, "the load made no handshake");
        total
    }
}

/// Handshakes until the server presents `serial` to `name`, for at most `within`.
pub async fn until_served(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
    serial: &str,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = serial_seen(config, addr, name).await;
        if seen.as_deref() == Ok(serial) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{serial} not served to {name} within {within:?}; last saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A clientAuth leaf of `ca` with this serial.
pub fn client_leaf(ca: &Ca, serial: u64) -> Issued {
    ca.issue(Leaf {
        names: vec!["client.internal".into()],
        eku: vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        serial: Some(serial),
        ..Leaf::default()
    })
}

pub fn der_pair(
    issued: &Issued,
) -> (
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    (
        issued.bundle.chain().to_vec(),
        issued.bundle.key().clone_key(),
    )
}

/// A client of `server_ca`'s servers presenting `client`, keeping sessions
/// to resume (a plain rustls session cache: servers alone must refuse what
/// they should).
pub fn resuming_client(server_ca: &Ca, client: &Issued) -> Arc<rustls::ClientConfig> {
    let (chain, key) = der_pair(client);
    Arc::new(
        client_builder()
            .with_root_certificates(server_ca.roots())
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// One request to `HOST`: handshake, echo. Says whether the session was resumed.
pub async fn request(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<bool, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(HOST).unwrap();
    let mut tls = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
}

/// The example binary `cargo test` built next to this test.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo test` (which builds the examples) or `cargo build --examples`",
        path.display()
    );
    path
}

/// Runs example `name` with `args` until it stops by itself (within
/// `within`), and returns its standard output, which must start with
/// `listening on https://127.0.0.1:`; the example must succeed.
pub async fn example_output(name: &str, args: &[&str], within: Duration) -> String {
    let run = tokio::process::Command::new(example(name))
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(within, run)
        .await
        .expect("the example did not stop")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with("listening on https://127.0.0.1:"),
        "{stdout}"
    );
    stdout
}

/// Runs example `name` with `args` until the returned child is dropped, and
/// returns the port it says it listens on.
pub async fn run_example(name: &str, args: &[&std::ffi::OsStr]) -> (tokio::process::Child, u16) {
    let (child, port, _) = run_example_lines(name, args).await;
    (child, port)
}

/// [`run_example`], and the lines the example prints after the first.
pub async fn run_example_lines(
    name: &str,
    args: &[&std::ffi::OsStr],
) -> (
    tokio::process::Child,
    u16,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut child = tokio::process::Command::new(example(name))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the example printed nothing")
        .unwrap();
    let Some(line) = line else {
        let status = child.wait().await.unwrap();
        panic!("the example {name} exited ({status}) before saying where it listens");
    };
    // Keep reading even when nobody listens: an example whose stdout is
    // closed fails at its next line (EPIPE), which is not what is under test.
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = sender.send(line);
        }
    });
    let addr = line
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let port: u16 = addr.strip_prefix("127.0.0.1:").unwrap().parse().unwrap();
    assert_ne!(port, 0);
    (child, port, receiver)
}

/// [`run_example`] with `--admin 127.0.0.1:0` after `args`: the child, its
/// port, and its admin port (the detailed health, plain HTTP).
pub async fn run_example_with_admin(
    name: &str,
    args: &[&std::ffi::OsStr],
) -> (tokio::process::Child, u16, u16) {
    let mut args = args.to_vec();
    args.extend([
        std::ffi::OsStr::new("--admin"),
        std::ffi::OsStr::new("127.0.0.1:0"),
    ]);
    let (child, port, mut lines) = run_example_lines(name, &args).await;
    let admin = admin_port(&mut lines).await;
    (child, port, admin)
}

/// The port of the admin address an example prints after its first line
/// when given `--admin 127.0.0.1:0` (`admin on http://127.0.0.1:PORT`).
pub async fn admin_port(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> u16 {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
        .await
        .expect("no admin line")
        .expect("the example exited");
    line.strip_prefix("admin on http://127.0.0.1:")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
}

/// GET `path` from 127.0.0.1:`port` over plain HTTP/1.0 (an example's admin
/// port): the body.
pub async fn get_plain(port: u16, path: &str) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    let (_, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    Ok(body.to_owned())
}

/// How long a change may take to show in tests (generous: CI machines are shared).
pub const WITHIN: Duration = Duration::from_secs(10);

/// Quick settle and grace for tests; events only, so that polling cannot
/// hide a missed event.
#[cfg(feature = "file")]
pub fn file_options() -> certrotate::source::FileOptions {
    certrotate::source::FileOptions::default()
        .watch(certrotate::source::WatchMode::Events)
        .settle(Duration::from_millis(50))
        .grace(Duration::from_millis(500))
}

/// Writes `contents` to a temporary file beside `path`, then renames it over
/// `path`, as `mv`, cert-manager and most deployment tools do. The file gets
/// mode 0600 (a key file's proper mode).
#[cfg(unix)]
pub fn write_atomic(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The storage keys an `AcmeSource` for `domain` at `directory` uses, as
/// `AcmeBuilder::build` names them: (certificate, account, high-water mark).
#[cfg(feature = "acme")]
pub fn acme_keys(directory: &str, domain: &str) -> (String, String, String) {
    let hex = |text: &str| {
        use sha2::Digest;
        sha2::Sha256::digest(text)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let id = hex(&format!("{directory}|{domain}"));
    (
        format!("cert-{}.pem", &id[..16]),
        format!("account-{}.json", &hex(directory)[..16]),
        format!("served-{}.txt", &id[..16]),
    )
}

/// The crypto provider the tests build rustls configs with: the process
/// default if one is installed, else the crate's (aws-lc-rs unless only ring
/// is on). rustls cannot pick one itself when both provider features are on
/// (`--all-features`).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    if let Some(provider) = rustls::crypto::CryptoProvider::get_default() {
        return provider.clone();
    }
    #[cfg(feature = "aws-lc-rs")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "aws-lc-rs"))]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// `rustls::ClientConfig::builder()` with [`provider`].
pub fn client_builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
}

/// `rustls::ServerConfig::builder()` with [`provider`].
pub fn server_builder() -> rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier> {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
}

/// Stops (SIGSTOP) or resumes (SIGCONT) a server the tests started: one
/// that hangs.
pub fn freeze(child: &std::process::Child, frozen: bool) {
    let signal = if frozen { "-STOP" } else { "-CONT" };
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Stops a server the tests started, resumed first if it is frozen (a
/// stopped process dies on SIGKILL too, but its sockets linger until it
/// is reaped).
pub fn stop(child: &mut std::process::Child) {
    if let Ok(None) = child.try_wait() {
        freeze(child, false);
    }
    let _ = child.kill();
    let _ = child.wait();
}

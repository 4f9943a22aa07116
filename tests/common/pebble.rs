//! A real ACME server for tests: Pebble and pebble-challtestsrv (Debian
//! package `pebble`), on 127.0.0.1 ports found at run time, stopped on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Ca, Leaf, TempDir};

/// The DNS-01 solver, shared with the `acme` example.
#[path = "../../examples/support/challtestsrv.rs"]
pub mod challtestsrv;

/// A free port on 127.0.0.1 (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to run Pebble.
#[derive(Clone)]
pub struct Config {
    /// Where Pebble's validation authority connects for TLS-ALPN-01; 0:
    /// a port [`Pebble::start`] binds and holds for the test
    /// ([`Pebble::listen`]), so that nothing else takes it meanwhile.
    pub tls_port: u16,
    /// Where it connects for HTTP-01 (0 as for `tls_port`).
    pub http_port: u16,
    /// Validity of the certificates it issues.
    pub validity: Duration,
    /// Share of good nonces it rejects (`PEBBLE_WFE_NONCEREJECT`).
    pub nonce_reject: u8,
    /// External account binding required, with this key id and HMAC key.
    pub eab: Option<(String, Vec<u8>)>,
    /// The DNS server Pebble resolves names (and DNS-01 records) with,
    /// instead of its pebble-challtestsrv.
    pub dns_server: Option<SocketAddr>,
    /// Names (and their subdomains) it refuses to issue for
    /// (`rejectedIdentifier`), as a CA's policy may.
    pub blocklist: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            tls_port: 0,
            http_port: 0,
            validity: Duration::from_secs(3600),
            nonce_reject: 0,
            eab: None,
            dns_server: None,
            blocklist: Vec::new(),
        }
    }
}

/// Pebble and its DNS server, running.
pub struct Pebble {
    pub dir: TempDir,
    pub config: Config,
    /// The directory URL.
    pub directory: String,
    /// The root of Pebble's own HTTPS certificate (for `directory_root`).
    pub https_root: PathBuf,
    pub dns_management: SocketAddr,
    pebble: Child,
    challtestsrv: Child,
    /// The validation ports bound at start, until the test takes them.
    held: std::sync::Mutex<Vec<TcpListener>>,
    pebble_port: u16,
    management_port: u16,
    dns_port: u16,
}

impl Pebble {
    /// Starts Pebble and its DNS server on free ports. A port found free
    /// can be taken before Pebble binds it (by another test's outgoing
    /// connection, say): then Pebble exits, and it is started again on
    /// other ports.
    pub fn start(mut config: Config) -> Self {
        let mut held = Vec::new();
        for port in [&mut config.tls_port, &mut config.http_port] {
            if *port == 0 {
                let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
                *port = tcp.local_addr().unwrap().port();
                held.push(tcp);
            }
        }
        let mut tries = 0;
        loop {
            tries += 1;
            let mut pebble = Self::spawn_all(config.clone());
            match pebble.until_up() {
                Ok(()) => {
                    pebble.held = std::sync::Mutex::new(held);
                    return pebble;
                }
                Err(why) if tries < 3 => eprintln!("starting pebble again: {why}"),
                Err(why) => panic!("{why}"),
            }
        }
    }

    fn spawn_all(config: Config) -> Self {
        let dir = TempDir::new("pebble");
        // Pebble's HTTPS: a leaf under a throwaway CA (rustls refuses a
        // self-signed CA certificate as a server certificate).
        let ca = Ca::new_named("pebble test HTTPS CA");
        let leaf = ca.issue(Leaf::default().names(&["localhost", "127.0.0.1"]));
        let https_root = dir.join("https-root.pem");
        std::fs::write(&https_root, &ca.pem).unwrap();
        std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();

        let (pebble_port, management_port) = (free_port(), free_port());
        let (dns_port, dns_management_port) = (free_port(), free_port());
        std::fs::write(
            dir.join("pebble.json"),
            format!(
                r#"{{"pebble": {{
                    "listenAddress": "127.0.0.1:{pebble_port}",
                    "managementListenAddress": "127.0.0.1:{management_port}",
                    "certificate": "{cert}",
                    "privateKey": "{key}",
                    "httpPort": {http},
                    "tlsPort": {tls},
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": {eab_required},
                    "externalAccountMACKeys": {{{eab_keys}}},
                    "domainBlocklist": {blocklist:?},
                    "certificateValidityPeriod": {validity}
                }}}}"#,
                cert = dir.join("cert.pem").display(),
                key = dir.join("key.pem").display(),
                http = config.http_port,
                tls = config.tls_port,
                validity = config.validity.as_secs(),
                eab_required = config.eab.is_some(),
                blocklist = config.blocklist,
                eab_keys = config
                    .eab
                    .as_ref()
                    .map(|(kid, key)| format!("{kid:?}: {:?}", base64url(key)))
                    .unwrap_or_default(),
            ),
        )
        .unwrap();
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-management", &format!("127.0.0.1:{dns_management_port}")])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "pebble-challtestsrv is installed (Debian package pebble; .ci/run installs it)",
            );
        let pebble = Self::spawn_pebble(&dir, &config, dns_port);
        let pebble = Self {
            directory: format!("https://127.0.0.1:{pebble_port}/dir"),
            https_root,
            dns_management: SocketAddr::from(([127, 0, 0, 1], dns_management_port)),
            dir,
            config,
            pebble,
            challtestsrv,
            held: Default::default(),
            pebble_port,
            management_port,
            dns_port,
        };
        pebble
    }

    fn spawn_pebble(dir: &TempDir, config: &Config, dns_port: u16) -> Child {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("pebble.log"))
            .unwrap();
        let dns_server = config
            .dns_server
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], dns_port)));
        Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &dns_server.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", config.nonce_reject.to_string())
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble is installed (Debian package pebble; .ci/run installs it)")
    }

    fn wait_until_up(&mut self) {
        if let Err(why) = self.until_up() {
            panic!("{why}");
        }
    }

    /// Waits for Pebble and its DNS server to listen; an error if either
    /// exited (a port taken meanwhile) or 20 s went by.
    fn until_up(&mut self) -> Result<(), String> {
        for port in [
            self.pebble_port,
            self.management_port,
            self.dns_management.port(),
        ] {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                for child in [&mut self.pebble, &mut self.challtestsrv] {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!(
                            "pebble exited ({status}) before listening on {port}"
                        ));
                    }
                }
                if std::time::Instant::now() >= deadline {
                    return Err(format!("pebble did not come up on {port}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// A listener on validation port `port` (`config.tls_port` or
    /// `http_port`): the one held since start, else one bound now (a
    /// server dropped just before lets go of the port a moment later).
    pub async fn listen(&self, port: u16) -> tokio::net::TcpListener {
        let held = {
            let mut held = self.held.lock().unwrap();
            let at = held
                .iter()
                .position(|tcp| tcp.local_addr().unwrap().port() == port);
            at.map(|at| held.swap_remove(at))
        };
        if let Some(tcp) = held {
            tcp.set_nonblocking(true).unwrap();
            return tokio::net::TcpListener::from_std(tcp).unwrap();
        }
        let mut tries = 0;
        loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(tcp) => return tcp,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("port {port}: {e}"),
            }
        }
    }

    /// Lets go of the held validation ports, for a process of its own (an
    /// example) to bind.
    pub fn release(&self) {
        self.held.lock().unwrap().clear();
    }

    /// The root that signs Pebble's certificates (it changes when Pebble restarts).
    pub fn issuing_root(&self) -> String {
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--cacert"])
            .arg(&self.https_root)
            .arg(format!(
                "https://127.0.0.1:{}/roots/0",
                self.management_port
            ))
            .output()
            .expect("curl is installed");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// A storage of ACME state for a test against this Pebble, removed with it.
    pub fn storage(&self) -> certrotate::acme::FileStorage {
        certrotate::acme::FileStorage::new(
            self.dir.join(&format!("state-{}", super::rand_serial())),
        )
    }

    /// Kills Pebble (its DNS server stays): a CA that is down, until
    /// [`restart_empty`](Self::restart_empty).
    pub fn kill(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
    }

    /// Kills Pebble and starts a new, empty one on the same ports: new
    /// roots, no accounts, no orders.
    pub fn restart_empty(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
        self.pebble = Self::spawn_pebble(&self.dir, &self.config, self.dns_port);
        self.wait_until_up();
    }

    /// How many certificates Pebble issued (across restarts), from its
    /// log: one per completed order.
    pub fn issued(&self) -> usize {
        self.logged("Issued certificate serial")
    }

    /// How many orders were placed with Pebble, from its log.
    pub fn orders(&self) -> usize {
        self.logged("Added order")
    }

    /// How many lines of Pebble's log contain `what`.
    pub fn logged(&self, what: &str) -> usize {
        std::fs::read_to_string(self.dir.join("pebble.log"))
            .unwrap()
            .matches(what)
            .count()
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) Pebble: a CA that hangs.
    pub fn freeze(&self, frozen: bool) {
        super::freeze(&self.pebble, frozen);
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.challtestsrv] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Decodes unpadded base64url (a JWS payload).
pub fn base64url_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (mut out, mut bits, mut n) = (Vec::new(), 0u32, 0u32);
    for c in text.bytes() {
        let Some(value) = ALPHABET.iter().position(|&a| a == c) else {
            continue;
        };
        n = (n << 6 | value as u32) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
        }
    }
    out
}

/// Unpadded base64url, as Pebble reads its MAC keys.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// A client trusting what `pebble` issues, never resuming (so that each
/// handshake shows the certificate served).
pub fn client(pebble: &Pebble) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let pem = pebble.issuing_root();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = super::client_builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    std::sync::Arc::new(config)
}

/// Waits (up to a minute) for the rotator's first certificate.
pub async fn first_certificate(
    rotator: &certrotate::Rotator,
) -> std::sync::Arc<certrotate::bundle::CertInfo> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(cert) = rotator.current() {
            return cert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate: {:?}",
            rotator.health().last_error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `path` from `name` at 127.0.0.1:`port` with curl, trusting `root`.
pub async fn get(root: &Path, name: &str, port: u16, path: &str) -> Result<String, String> {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5"])
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1"), "--cacert"])
        .arg(root)
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .await
        .expect("curl is installed");
    match output.status.success() {
        true => Ok(String::from_utf8(output.stdout).unwrap()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// What [`FlakyProxy`] does to a request it is told to spoil.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answers 503 with an ACME `serverInternal` problem, as a CA under
    /// maintenance does.
    Unavailable,
    /// Holds the request this long, then closes the connection without
    /// forwarding it: a CA that hangs.
    Hang(Duration),
    /// Answers 429 with an ACME `rateLimited` problem and `Retry-After:
    /// 600`, as a CA refusing more orders does.
    RateLimited,
}

type Body = http_body_util::Full<hyper::body::Bytes>;
type Upstream = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Body,
>;

/// An HTTPS proxy in front of Pebble (on 127.0.0.1, a free port) that
/// spoils the first `times` requests whose path contains `path`, and passes
/// everything else through. Pebble builds its URLs from the Host header, so
/// a client that starts at [`directory`](Self::directory) keeps talking to
/// the proxy.
pub struct FlakyProxy {
    /// The directory URL through the proxy.
    pub directory: String,
    /// How many requests were spoiled.
    pub spoiled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renewal information (RFC 9773) that a [`FlakyProxy`] serves in front of
/// Pebble (which has none): the window and `Retry-After` the test sets,
/// and what clients did with it.
pub struct Ari {
    /// The suggested window.
    pub window: std::sync::Mutex<(std::time::SystemTime, std::time::SystemTime)>,
    /// The `Retry-After` of each answer, in seconds.
    pub retry_after: std::sync::atomic::AtomicU64,
    /// When each renewal-information request came.
    pub polls: std::sync::Mutex<Vec<std::time::Instant>>,
    /// The `replaces` of each new order (empty when it had none).
    pub replaces: std::sync::Mutex<Vec<String>>,
    /// The `profile` of each new order (empty when it had none).
    pub profiles: std::sync::Mutex<Vec<String>>,
    /// When each new order came.
    pub orders: std::sync::Mutex<Vec<std::time::Instant>>,
}

impl Ari {
    pub fn new(window: (std::time::SystemTime, std::time::SystemTime), retry_after: u64) -> Self {
        Self {
            window: std::sync::Mutex::new(window),
            retry_after: retry_after.into(),
            polls: Default::default(),
            replaces: Default::default(),
            profiles: Default::default(),
            orders: Default::default(),
        }
    }

    /// The answer to a renewal-information request.
    fn answer(&self) -> std::io::Result<hyper::Response<Body>> {
        let rfc3339 = |t: std::time::SystemTime| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        };
        self.polls.lock().unwrap().push(std::time::Instant::now());
        let (start, end) = *self.window.lock().unwrap();
        let body = format!(
            r#"{{"suggestedWindow":{{"start":"{}","end":"{}"}}}}"#,
            rfc3339(start),
            rfc3339(end)
        );
        let retry_after = self.retry_after.load(std::sync::atomic::Ordering::SeqCst);
        hyper::Response::builder()
            .header("content-type", "application/json")
            .header("retry-after", retry_after.to_string())
            .body(Body::from(body))
            .map_err(std::io::Error::other)
    }

    /// Notes the `replaces` and `profile` of a new order's JWS body, and
    /// returns the first.
    fn note_order(&self, body: &[u8]) -> String {
        let jws: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let payload = jws["payload"]
            .as_str()
            .map(base64url_decode)
            .unwrap_or_default();
        let order: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
        let replaces = order["replaces"].as_str().unwrap_or_default().to_owned();
        let profile = order["profile"].as_str().unwrap_or_default().to_owned();
        self.profiles.lock().unwrap().push(profile);
        self.replaces.lock().unwrap().push(replaces.clone());
        self.orders.lock().unwrap().push(std::time::Instant::now());
        replaces
    }
}

/// How the proxy treats requests.
struct Rules {
    upstream: String,
    client: Upstream,
    path: &'static str,
    fault: Fault,
    times: usize,
    spoiled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Renewal information to serve, at `<proxy>/renewal-info`.
    ari: Option<(std::sync::Arc<Ari>, u16)>,
}

impl FlakyProxy {
    pub async fn start(pebble: &Pebble, path: &'static str, fault: Fault, times: usize) -> Self {
        Self::start_with(pebble, path, fault, times, None).await
    }

    /// A proxy that spoils nothing and serves the renewal information `ari`.
    pub async fn with_ari(pebble: &Pebble, ari: std::sync::Arc<Ari>) -> Self {
        Self::start_with(pebble, "", Fault::Unavailable, 0, Some(ari)).await
    }

    async fn start_with(
        pebble: &Pebble,
        path: &'static str,
        fault: Fault,
        times: usize,
        ari: Option<std::sync::Arc<Ari>>,
    ) -> Self {
        use rustls::pki_types::pem::PemObject;
        use std::sync::Arc;

        let certs = rustls::pki_types::CertificateDer::pem_file_iter(pebble.dir.join("cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_file(pebble.dir.join("key.pem")).unwrap();
        let server = super::server_builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&pebble.https_root).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let client_tls = super::client_builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_tls)
            .https_only()
            .enable_http1()
            .build();
        let spoiled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let rules = Arc::new(Rules {
            upstream: pebble.directory.trim_end_matches("/dir").to_owned(),
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build(https),
            path,
            fault,
            times,
            spoiled: spoiled.clone(),
            ari: ari.map(|ari| (ari, port)),
        });

        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    continue;
                };
                let (acceptor, rules) = (acceptor.clone(), rules.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let rules = rules.clone();
                        async move { rules.handle(request).await }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self {
            directory: format!("https://127.0.0.1:{port}/dir"),
            spoiled,
            task,
        }
    }
}

impl Rules {
    async fn handle(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> std::io::Result<hyper::Response<Body>> {
        use http_body_util::BodyExt;
        use std::io::Error;
        use std::sync::atomic::Ordering;

        let spoil = request.uri().path().contains(self.path)
            && self
                .spoiled
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < self.times).then_some(n + 1)
                })
                .is_ok();
        if spoil {
            match self.fault {
                Fault::Unavailable => {
                    let problem = r#"{"type":"urn:ietf:params:acme:error:serverInternal","detail":"down for maintenance","status":503}"#;
                    return hyper::Response::builder()
                        .status(503)
                        .header("content-type", "application/problem+json")
                        .body(Body::from(problem))
                        .map_err(Error::other);
                }
                Fault::RateLimited => {
                    let problem = r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders recently","status":429}"#;
                    return hyper::Response::builder()
                        .status(429)
                        .header("content-type", "application/problem+json")
                        .header("retry-after", "600")
                        .body(Body::from(problem))
                        .map_err(Error::other);
                }
                Fault::Hang(time) => {
                    tokio::time::sleep(time).await;
                    // An error closes the connection, unanswered.
                    return Err(Error::other("hung up"));
                }
            }
        }
        let (mut parts, body) = request.into_parts();
        let body = body.collect().await.map_err(Error::other)?.to_bytes();
        // The order's `replaces`, which a CA with ARI echoes (Pebble drops it).
        let mut replaces = String::new();
        if let Some((ari, _)) = &self.ari {
            if parts.uri.path().starts_with("/renewal-info/") {
                return ari.answer();
            }
            if parts.uri.path().contains("order-plz") {
                replaces = ari.note_order(&body);
            }
        }
        let is_directory = parts.uri.path() == "/dir";
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("{}{path}", self.upstream)
            .parse()
            .map_err(Error::other)?;
        let response = self
            .client
            .request(hyper::Request::from_parts(parts, Body::new(body)))
            .await
            .map_err(Error::other)?;
        let (mut parts, body) = response.into_parts();
        let mut body = body.collect().await.map_err(Error::other)?.to_bytes();
        if let (Some((_, port)), true) = (&self.ari, is_directory) {
            let mut directory: serde_json::Value =
                serde_json::from_slice(&body).map_err(Error::other)?;
            directory["renewalInfo"] = format!("https://127.0.0.1:{port}/renewal-info").into();
            body = serde_json::to_vec(&directory).unwrap().into();
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
        }
        if !replaces.is_empty() {
            let mut order: serde_json::Value =
                serde_json::from_slice(&body).map_err(Error::other)?;
            order["replaces"] = replaces.into();
            body = serde_json::to_vec(&order).unwrap().into();
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
        }
        Ok(hyper::Response::from_parts(parts, Body::new(body)))
    }
}

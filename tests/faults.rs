//! Fault injection: each test names the fault, what must keep working, and
//! what must be reported.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use certrotate::danger::{Clock, HighWaterMark, MarkUnreadable};
use certrotate::source::{BoxFuture, ReplayMarks, StaticSource};
use certrotate::{
    AlertLevel, CertBundle, CertSource, FileSource, Policy, RotateError, RotationEvent, Rotator,
    SourceError, TlsListener,
};
use common::{client_config, serial_seen, Ca, Leaf, TempDir, TokioClock, HOST, WITHIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const DAY: Duration = Duration::from_secs(86_400);

// ---------------------------------------------------------------------------
// A source that fails in every way, for longer than the renewal window.

/// Serves one good certificate, then fails in turn with an I/O error, a
/// fetch that never answers, and garbage bytes.
struct Failing {
    first: CertBundle,
    fetches: AtomicU32,
    started: Mutex<Vec<Instant>>,
}

impl CertSource for Failing {
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        self.started.lock().unwrap().push(Instant::now());
        match self.fetches.fetch_add(1, Ordering::SeqCst) {
            0 => Ok(self.first.clone()),
            n if n % 3 == 1 => Err(SourceError::read(
                self.describe(),
                "/etc/tls/tls.crt",
                std::io::Error::from_raw_os_error(5), // EIO
            )),
            n if n % 3 == 2 => std::future::pending().await,
            _ => Err(SourceError::bundle(
                self.describe(),
                CertBundle::from_combined_pem(b"\x00\x01 garbage").unwrap_err(),
            )),
        }
    }

    fn describe(&self) -> String {
        "failing source".into()
    }
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_source_failure_past_the_renewal_window() {
    let clock = TokioClock::new();
    let now = clock.now();
    let ca = Ca::new();
    let first = ca
        .issue(Leaf::default().lifetime(now - Duration::from_secs(60), now + 90 * DAY))
        .bundle;
    let store = certrotate::CertStore::builder()
        .clock(clock.clone())
        .build();
    let source = Arc::new(Failing {
        first: first.clone(),
        fetches: AtomicU32::new(0),
        started: Mutex::new(Vec::new()),
    });
    let (retry_max, timeout) = (Duration::from_secs(6 * 3600), Duration::from_secs(30));
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store.clone())
        .retry_backoff(Duration::from_secs(60), retry_max)
        .fetch_timeout(timeout)
        .start()
        .await
        .unwrap();
    let resolver = rotator.resolver();
    let mut events = rotator.subscribe();
    let (mut levels, mut kinds) = (Vec::new(), HashSet::new());
    // Until a day after expiry: 30 days past the renewal time.
    while clock.now() < first.info().not_after + DAY {
        match tokio::time::timeout(DAY, events.recv()).await {
            Ok(Ok(RotationEvent::ExpiryWarning { level, .. })) => levels.push(level),
            Ok(Ok(RotationEvent::SourceFailed { error, .. })) => {
                kinds.insert(error.code());
            }
            Ok(Ok(RotationEvent::Rotated { .. })) => panic!("nothing good was fetched"),
            _ => {}
        }
        // The last good certificate serves all along.
        let served = resolver.lookup(Some(HOST)).unwrap();
        assert_eq!(served.cert[0], first.chain()[0]);
    }
    levels.dedup();
    assert_eq!(
        levels,
        [
            AlertLevel::RenewOverdue,
            AlertLevel::Critical,
            AlertLevel::Expired
        ]
    );
    // I/O error, timeout (reported as unavailable) and garbage.
    assert_eq!(kinds, HashSet::from(["read", "unavailable", "bundle"]));
    let health = rotator.health();
    assert_eq!(health.alert, AlertLevel::Expired);
    assert!(health.last_error.is_some());
    // Retries never waited longer than the cap (plus a hung fetch's timeout).
    let started = source.started.lock().unwrap().clone();
    let failures = &started[1..];
    assert!(failures.len() > 100, "{} attempts", failures.len());
    for pair in failures.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap <= retry_max + timeout, "a retry waited {gap:?}");
    }
    rotator.shutdown().await;
}

// ---------------------------------------------------------------------------
// The wall clock jumps.

/// Wall-clock time that follows paused tokio time, plus jumps.
#[derive(Debug)]
struct JumpingClock {
    base: Arc<TokioClock>,
    offset: Mutex<(Duration, bool)>,
}

impl Clock for JumpingClock {
    fn now(&self) -> SystemTime {
        let (by, forward) = *self.offset.lock().unwrap();
        match forward {
            true => self.base.now() + by,
            false => self.base.now() - by,
        }
    }
}

/// Issues a fresh 90-day certificate as of the clock at each fetch.
struct Issuing {
    ca: Ca,
    clock: Arc<JumpingClock>,
    fetches: Arc<AtomicUsize>,
}

impl CertSource for Issuing {
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let now = self.clock.now();
        let leaf = Leaf::default().lifetime(now - Duration::from_secs(60), now + 90 * DAY);
        Ok(self.ca.issue(leaf).bundle)
    }

    fn describe(&self) -> String {
        "issuing source".into()
    }
}

#[tokio::test(start_paused = true)]
async fn the_clock_jumps_forward_past_expiry_and_back() {
    let clock = Arc::new(JumpingClock {
        base: TokioClock::new(),
        offset: Mutex::new((Duration::ZERO, true)),
    });
    let store = certrotate::CertStore::builder()
        .clock(clock.clone())
        .build();
    let fetches = Arc::new(AtomicUsize::new(0));
    let source = Issuing {
        ca: Ca::new(),
        clock: clock.clone(),
        fetches: fetches.clone(),
    };
    let rotator = Rotator::builder(source, Policy::default())
        .store(store)
        .start()
        .await
        .unwrap();
    let before = rotator.current().unwrap();
    let mut events = rotator.subscribe();

    // Suspend and resume 100 days later: the certificate has expired. It is
    // noticed within the rotator's longest sleep (5 minutes), reported, and
    // renewed.
    *clock.offset.lock().unwrap() = (100 * DAY, true);
    let jumped = Instant::now();
    let mut expired_reported = false;
    let renewed = loop {
        match events.recv().await.unwrap() {
            RotationEvent::ExpiryWarning {
                level: AlertLevel::Expired,
                ..
            } => expired_reported = true,
            RotationEvent::Rotated { new, .. } => break new,
            _ => {}
        }
    };
    assert!(
        jumped.elapsed() <= Duration::from_secs(300),
        "noticed after {:?}",
        jumped.elapsed()
    );
    assert!(expired_reported, "the expired certificate was reported");
    assert!(
        renewed.not_before > before.not_after,
        "renewed with a certificate valid now"
    );
    assert_eq!(rotator.health().alert, AlertLevel::Ok);

    // NTP steps the clock back 30 days: the serving certificate is not
    // valid yet by the new clock, yet it keeps serving (it is what clients
    // with correct clocks accept); nothing loops, nothing panics; a fresh
    // certificate from the source now looks older than the serving one and
    // is refused by the no-replay rule until asked for explicitly.
    *clock.offset.lock().unwrap() = (70 * DAY, true);
    let fetched = fetches.load(Ordering::SeqCst);
    tokio::time::sleep(DAY).await;
    assert_eq!(fetches.load(Ordering::SeqCst), fetched, "no attempt storm");
    assert_eq!(rotator.current().unwrap().serial, renewed.serial);
    assert_eq!(rotator.health().alert, AlertLevel::Ok);
    match rotator.rotate_now().await {
        Err(RotateError::Refused(error)) => assert_eq!(error.reason().code(), "older_than_serving"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rotator.current().unwrap().serial, renewed.serial);
    rotator.shutdown().await;
}

// ---------------------------------------------------------------------------
// A replay mark whose record does not answer.

/// One certificate, and its mark kept in a place whose writes hang while
/// `hang` is set.
struct HangingRecords {
    bundle: CertBundle,
    held: Mutex<Option<HighWaterMark>>,
    hang: AtomicBool,
}

struct Marked(Arc<HangingRecords>);

impl CertSource for Marked {
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        Ok(self.0.bundle.clone())
    }

    fn describe(&self) -> String {
        "marked source".into()
    }

    fn replay_marks(&self) -> Option<&dyn ReplayMarks> {
        Some(self)
    }
}

impl ReplayMarks for Marked {
    fn read(&self) -> BoxFuture<'_, Result<Option<HighWaterMark>, MarkUnreadable>> {
        Box::pin(async move { Ok(self.0.held.lock().unwrap().clone()) })
    }

    fn record(&self, mark: HighWaterMark) -> BoxFuture<'_, Result<(), MarkUnreadable>> {
        Box::pin(async move {
            if self.0.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            *self.0.held.lock().unwrap() = Some(mark);
            Ok(())
        })
    }
}

/// A mark whose record does not answer is not taken as recorded: the
/// condition is in health, and the mark is read and recorded again on a
/// backoff of its own until it lands (the rotator once took a record that
/// timed out as done, and the mark never reached its place).
#[tokio::test(start_paused = true)]
async fn a_mark_whose_record_does_not_answer_is_recorded_again() {
    let bundle = Ca::new().issue(Leaf::default()).bundle;
    let marks = Arc::new(HangingRecords {
        bundle: bundle.clone(),
        held: Mutex::new(None),
        hang: AtomicBool::new(true),
    });
    let rotator = Rotator::builder(Marked(marks.clone()), Policy::default())
        .retry_backoff(Duration::from_millis(200), Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let warned = || {
        let health = rotator.health();
        let warnings = &health.certificates[0].warnings;
        // It names the source whose place did not answer.
        let told = |w: &String| w.contains("cannot be recorded") && w.contains("marked source");
        warnings.iter().any(told)
    };
    assert_eq!(rotator.current().unwrap().serial, bundle.info().serial);
    assert!(warned(), "{:?}", rotator.health());
    assert_eq!(*marks.held.lock().unwrap(), None);

    marks.hang.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let held = marks.held.lock().unwrap().clone();
    assert_eq!(held.map(|m| m.serial), Some(bundle.info().serial.clone()));
    assert!(!warned(), "{:?}", rotator.health());
    rotator.shutdown().await;
}

// ---------------------------------------------------------------------------
// Cold start with stale files.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_with_expired_files() {
    let dir = TempDir::new("faults-cold");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let ca = Ca::new();
    let now = SystemTime::now();
    let stale = ca.issue(Leaf::default().lifetime(now - 10 * DAY, now - DAY));
    common::write_atomic(&key, &stale.key_pem);
    common::write_atomic(&cert, &stale.cert_pem);
    let policy = || Policy::builder().server_name(HOST).build().unwrap();

    // Configured to refuse: `start()` fails, naming the file and the reason.
    let source = FileSource::pair(&cert, &key).options(common::file_options());
    match Rotator::builder(source, policy()).start().await {
        Err(RotateError::Refused(error)) => {
            assert_eq!(error.reason().code(), "expired");
            assert!(error.to_string().contains("tls.crt"), "{error}");
        }
        other => panic!("{other:?}"),
    }

    // Configured to start anyway: `spawn()` serves nothing yet, says why
    // everywhere (health, events, logs), and serves as soon as good files
    // arrive.
    let source = FileSource::pair(&cert, &key).options(common::file_options());
    // Subscribed before the rotator starts: its first attempt may come
    // before `spawn()` returns (the refusal was missed that way in CI).
    let store = certrotate::CertStore::new();
    let mut events = store.subscribe();
    let rotator = Rotator::builder(source, policy()).store(store).spawn();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut listener = TlsListener::new(tcp, Arc::new(rotator.server_config().unwrap()));
    let server = tokio::spawn(async move {
        loop {
            let (mut tls, _) = listener.accept().await;
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if tls.read_exact(&mut buf).await.is_ok() {
                    let _ = tls.write_all(&buf).await;
                }
            });
        }
    });
    let deadline = Instant::now() + WITHIN;
    let unserved = loop {
        let health = rotator.health();
        if let Some(slot) = health.unserved.first().filter(|s| s.last_error.is_some()) {
            break slot.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the stale files were not reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(unserved.last_error_code, Some("expired"), "{unserved:?}");
    assert!(rotator.health().certificates.is_empty());
    let client = client_config(&ca);
    assert!(
        serial_seen(&client, addr, HOST).await.is_err(),
        "nothing is served"
    );

    let fresh = ca.issue(Leaf::default());
    common::write_atomic(&key, &fresh.key_pem);
    common::write_atomic(&cert, &fresh.cert_pem);
    let serial = fresh.bundle.info().serial.clone();
    common::until_served(&client, addr, HOST, &serial, WITHIN).await;
    let mut refused = false;
    while let Ok(event) = events.try_recv() {
        refused |= matches!(event, RotationEvent::Refused { .. });
    }
    assert!(refused, "the refusal was an event");
    server.abort();
    rotator.shutdown().await;
}

// ---------------------------------------------------------------------------
// Disk full and read-only directories while writing keys and ACME state.

fn certrotate_cli(
    dir: &std::path::Path,
    fsize_limit: Option<u64>,
    args: &[&str],
) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_certrotate");
    let mut command = match fsize_limit {
        // A file size limit fails writes past it (EFBIG) as a full disk
        // would (ENOSPC), half-way through; SIGXFSZ is ignored so that the
        // write returns the error instead of killing the process.
        Some(limit) => {
            let mut sh = std::process::Command::new("sh");
            sh.arg("-c")
                .arg(format!(
                    "trap '' XFSZ; exec prlimit --fsize={limit} \"$0\" \"$@\""
                ))
                .arg(bin);
            sh
        }
        None => std::process::Command::new(bin),
    };
    command.args(args).current_dir(dir).output().unwrap()
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_full_disk_while_writing_keys_leaves_the_old_files_whole() {
    let dir = TempDir::new("faults-full");
    let issue = [
        "ca",
        "issue",
        "--dir",
        "ca",
        "--name",
        HOST,
        "--cert-out",
        "tls.crt",
        "--key-out",
        "tls.key",
    ];
    assert!(
        certrotate_cli(dir.path(), None, &["ca", "init", "--dir", "ca"])
            .status
            .success()
    );
    assert!(certrotate_cli(dir.path(), None, &issue).status.success());
    let (cert, key) = (
        std::fs::read(dir.join("tls.crt")).unwrap(),
        std::fs::read(dir.join("tls.key")).unwrap(),
    );

    // The disk fills up 100 bytes into each file.
    let full = certrotate_cli(dir.path(), Some(100), &issue);
    assert_eq!(full.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(
        stderr.starts_with("certrotate: cannot write tls.crt and tls.key: File too large"),
        "{stderr}"
    );
    // Nothing half-written is ever read back: the old pair is whole, and no
    // temporary file is left behind.
    assert_eq!(std::fs::read(dir.join("tls.crt")).unwrap(), cert);
    assert_eq!(std::fs::read(dir.join("tls.key")).unwrap(), key);
    CertBundle::from_pem_files(dir.join("tls.crt"), dir.join("tls.key")).unwrap();
    assert_eq!(listing(dir.path()), ["ca", "tls.crt", "tls.key"]);

    // A new CA on a full disk: refused, and the next try starts clean.
    let full = certrotate_cli(dir.path(), Some(100), &["ca", "init", "--dir", "ca2"]);
    assert_eq!(full.status.code(), Some(1));
    assert!(listing(&dir.join("ca2"))
        .iter()
        .all(|name| !name.contains("tmp")));
    assert!(
        certrotate_cli(dir.path(), None, &["ca", "init", "--dir", "ca2"])
            .status
            .success()
    );
    let issue2 = [
        "ca",
        "issue",
        "--dir",
        "ca2",
        "--name",
        HOST,
        "--cert-out",
        "b.crt",
        "--key-out",
        "b.key",
    ];
    assert!(certrotate_cli(dir.path(), None, &issue2).status.success());
}

/// A directory that cannot be written: a read-only tmpfs when running as
/// root (permissions do not stop root), else mode 0555.
struct ReadOnly {
    dir: TempDir,
    mounted: bool,
}

impl ReadOnly {
    /// Makes `dir` read-only after `prepare` has written into it.
    fn new(prepare: impl FnOnce(&std::path::Path)) -> Self {
        let dir = TempDir::new("faults-ro");
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .unwrap()
            .stdout
            == b"0\n";
        if root {
            let mount = |args: &[&str]| {
                let status = std::process::Command::new("mount")
                    .args(args)
                    .arg(dir.path())
                    .status()
                    .unwrap();
                assert!(
                    status.success(),
                    "mount {args:?} failed (needed as root to make a read-only directory)"
                );
            };
            mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"]);
            prepare(dir.path());
            mount(&["-o", "remount,ro"]);
        } else {
            prepare(dir.path());
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        Self { dir, mounted: root }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg(self.dir.path())
                .status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ =
                std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[tokio::test]
async fn acme_state_in_a_read_only_directory_is_not_half_written() {
    use certrotate::acme::{FileStorage, Storage};
    let ro = ReadOnly::new(|dir| {
        std::fs::write(dir.join("account"), b"{\"old\": true}").unwrap();
    });
    let storage = FileStorage::new(ro.dir.path());
    let error = storage
        .store("account", b"{\"new\": true}")
        .await
        .unwrap_err();
    assert!(
        matches!(error.raw_os_error(), Some(30) | Some(13)), // EROFS, EACCES
        "{error}"
    );
    assert_eq!(
        storage.load("account").await.unwrap().unwrap(),
        b"{\"old\": true}"
    );
    assert_eq!(listing(ro.dir.path()), ["account"]);
}

// ---------------------------------------------------------------------------
// Races.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_rotations_rollbacks_and_updates_only_ever_serve_good_bundles() {
    const TASKS: usize = 8;
    const OPERATIONS: usize = 300;
    let ca = Arc::new(Ca::new());
    let good: Vec<CertBundle> = (0..40).map(|i| ca.nth(i * 10)).collect();
    let good_leaves: Arc<HashSet<Vec<u8>>> =
        Arc::new(good.iter().map(|b| b.chain()[0].to_vec()).collect());
    let now = SystemTime::now();
    let bad = [
        ca.issue(Leaf::default().lifetime(now - 3 * DAY, now - DAY))
            .bundle,
        ca.issue(Leaf::default().names(&["other.example"])).bundle,
    ];
    let source = StaticSource::new(good[0].clone());
    let rotator = Arc::new(
        Rotator::builder(
            source.clone(),
            Policy::builder().server_name(HOST).build().unwrap(),
        )
        .start()
        .await
        .unwrap(),
    );

    // A watcher checks what the handshake path serves, as fast as it can.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (resolver, good_leaves, stop) = (rotator.resolver(), good_leaves.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut checks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let served = resolver.lookup(Some(HOST)).expect("always a certificate");
                assert!(
                    good_leaves.contains(&served.cert[0].to_vec()),
                    "served a bundle never accepted"
                );
                checks += 1;
            }
            checks
        })
    };
    let mut tasks = Vec::new();
    for seed in 0..TASKS {
        let (rotator, source, good, bad) =
            (rotator.clone(), source.clone(), good.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed as u64);
            for _ in 0..OPERATIONS {
                match rng.u8(0..5) {
                    0 => source.push(good[rng.usize(..good.len())].clone()),
                    1 => source.push(bad[rng.usize(..bad.len())].clone()),
                    2 => {
                        let _ = rotator.rotate_now().await;
                    }
                    3 => {
                        let _ = rotator.rollback();
                    }
                    _ => {
                        let _ = rotator
                            .install_allowing_older(good[rng.usize(..good.len())].clone())
                            .await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let checks = watcher.await.unwrap();
    assert!(checks > 1000, "only {checks} checks");
    // At rest, the store, its health and the handshake path agree.
    let current = rotator.current().unwrap();
    let served = rotator.resolver().lookup(Some(HOST)).unwrap();
    assert!(good_leaves.contains(&served.cert[0].to_vec()));
    assert_eq!(
        certrotate::bundle::CertInfo::from_der(&served.cert[0])
            .unwrap()
            .serial,
        current.serial
    );
    assert_eq!(rotator.health().certificates[0].serial, current.serial);
}

// ---------------------------------------------------------------------------
// Hostile clients.

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_garbage_clients_neither_stall_accept_nor_grow_memory() {
    let ca = Ca::new();
    let rotator = Rotator::builder(StaticSource::new(ca.nth(0)), Policy::default())
        .start()
        .await
        .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut listener = TlsListener::new(tcp, Arc::new(rotator.server_config().unwrap()))
        .handshake_timeout(Duration::from_millis(500))
        .max_pending_handshakes(64);
    let served = Arc::new(AtomicUsize::new(0));
    let server = {
        let served = served.clone();
        tokio::spawn(async move {
            loop {
                let (mut tls, _) = listener.accept().await;
                served.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4];
                    if tls.read_exact(&mut buf).await.is_ok() {
                        let _ = tls.write_all(&buf).await;
                    }
                });
            }
        })
    };
    let client = client_config(&ca);
    serial_seen(&client, addr, HOST).await.unwrap();
    let before = resident_kib();

    // Waves of 100 silent and 100 garbage clients, five times, while a real
    // client keeps handshaking.
    let good = tokio::spawn({
        let client = client.clone();
        async move {
            let (mut ok, mut failed) = (0, Vec::new());
            let until = Instant::now() + Duration::from_secs(6);
            while Instant::now() < until {
                match serial_seen(&client, addr, HOST).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }
    });
    for wave in 0..5u64 {
        let mut clients = Vec::new();
        for i in 0..200u64 {
            clients.push(tokio::spawn(async move {
                // From another address than the real client's, as an
                // attacker's would be (one address is held to its share).
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                let mut tcp = socket.connect(addr).await.unwrap();
                if i % 2 == 0 {
                    let mut rng = fastrand::Rng::with_seed(wave * 1000 + i);
                    let junk: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
                    let _ = tcp.write_all(&junk).await;
                }
                // The server hangs up: at once on garbage, after the
                // handshake timeout on silence.
                let mut buf = [0u8; 256];
                let started = Instant::now();
                loop {
                    match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                        Ok(Ok(_)) => continue, // a TLS alert
                        Err(_) => panic!("a hostile client was never cut off"),
                    }
                }
            }));
        }
        for client in clients {
            assert!(client.await.unwrap() < Duration::from_secs(5));
        }
    }
    let (ok, failed) = good.await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 10, "{ok} real handshakes");
    let grown = resident_kib().saturating_sub(before);
    assert!(grown < 32 * 1024, "resident memory grew by {grown} KiB");
    server.abort();
}

//! Hostile files: what an attacker (or a broken deployment tool) can put
//! where the certificate or key is expected. For each, the server keeps
//! serving its last good certificate, health names the file and the reason,
//! memory does not grow with the file, change detection keeps working, and
//! the next good pair is picked up.
//!
//! The whole test process runs under an 8 GiB address-space limit, so a
//! regression that reads a 64 GiB file or `/dev/zero` fails here instead of
//! taking the machine down.

#![cfg(all(target_os = "linux", feature = "file"))]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use certrotate::source::FileOptions;
use certrotate::{FileSource, Policy, RotationEvent, Rotator};
use common::{file_options, write_atomic, Ca, Issued, Leaf, TempDir, HOST, WITHIN};
use tokio::sync::broadcast;

/// More than any test here needs, far less than reading a hostile file
/// whole would take.
const ADDRESS_SPACE_LIMIT: u64 = 8 << 30;

/// How much the process's peak resident memory may grow while a hostile
/// file is in place.
const MAX_GROWTH: u64 = 64 << 20;

fn limit_address_space() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let limit = libc::rlimit {
            rlim_cur: ADDRESS_SPACE_LIMIT,
            rlim_max: ADDRESS_SPACE_LIMIT,
        };
        // SAFETY: setrlimit only reads the struct passed to it.
        let set = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
        assert_eq!(set, 0, "cannot limit the address space");
    });
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// The process's peak RSS since the last reset, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

struct Setup {
    dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: Ca,
    first: Issued,
    rotator: Rotator,
    server: common::Server,
    client: Arc<rustls::ClientConfig>,
    events: broadcast::Receiver<RotationEvent>,
}

async fn setup(tag: &str, options: FileOptions) -> Setup {
    limit_address_space();
    let dir = TempDir::new(tag);
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let ca = Ca::new();
    let first = ca.issue(Leaf::default());
    write_atomic(&cert, &first.cert_pem);
    write_atomic(&key, &first.key_pem);
    let policy = Policy::builder().server_name(HOST).build().unwrap();
    let rotator = Rotator::builder(FileSource::pair(&cert, &key).options(options), policy)
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .start()
        .await
        .unwrap();
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let client = common::client_config(&ca);
    let events = rotator.subscribe();
    Setup {
        dir,
        cert,
        key,
        ca,
        first,
        rotator,
        server,
        client,
        events,
    }
}

impl Setup {
    /// Waits for the failure the hostile file causes and returns its
    /// machine code and message (a source error or a refusal).
    async fn failure(&mut self) -> (&'static str, String) {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(RotationEvent::SourceFailed { error, .. })) => {
                    return (error.code(), error.to_string())
                }
                Ok(Ok(RotationEvent::Refused { error, .. })) => {
                    return (error.reason().code(), error.to_string())
                }
                Ok(Ok(RotationEvent::Rotated { new, .. })) => {
                    panic!("a hostile file was installed: {new:?}")
                }
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => panic!("events lost: {e}"),
                Err(_) => panic!("the hostile file was never reported"),
            }
        }
    }

    /// The old certificate is what clients get.
    async fn still_serves_first(&self) {
        let seen = common::serial_seen(&self.client, self.server.addr, HOST)
            .await
            .unwrap();
        assert_eq!(seen, self.first.bundle.info().serial);
    }

    /// A good pair written now is picked up and served.
    async fn recovers(&mut self) {
        let next = self.ca.issue(Leaf::default());
        if self.cert.is_dir() {
            std::fs::remove_dir(&self.cert).unwrap();
        }
        write_atomic(&self.key, &next.key_pem);
        write_atomic(&self.cert, &next.cert_pem);
        let serving = self.rotator.current().unwrap();
        let new = common::rotation_from(&mut self.events, &serving, WITHIN).await;
        assert_eq!(new.serial, next.bundle.info().serial);
        let seen = common::serial_seen(&self.client, self.server.addr, HOST)
            .await
            .unwrap();
        assert_eq!(seen, next.bundle.info().serial);
        assert_eq!(self.rotator.health().last_error, None);
    }

    /// Puts `hostile` in place of the certificate (by rename, as a
    /// deployment tool would), then checks everything the module docs
    /// promise: the failure is typed and in health, the old certificate
    /// serves, memory stayed flat, and the next good pair is picked up.
    async fn survives(&mut self, hostile: &Path, code: &str, says: &[&str]) {
        reset_peak_rss();
        let before = rss();
        std::fs::rename(hostile, &self.cert).unwrap();
        let (seen_code, message) = self.failure().await;
        assert_eq!(seen_code, code, "{message}");
        for words in says {
            assert!(
                message.contains(words),
                "{message:?} does not say {words:?}"
            );
        }
        let health = self.rotator.health();
        let in_health = health.certificates[0]
            .last_error
            .clone()
            .unwrap_or_default();
        assert!(in_health.contains(says[0]), "health says {in_health:?}");
        self.still_serves_first().await;
        let growth = peak_rss().saturating_sub(before);
        assert!(growth < MAX_GROWTH, "peak RSS grew by {} MiB", growth >> 20);
        self.recovers().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_to_dev_zero_is_refused_without_reading_it() {
    let mut s = setup("hostile-zero", file_options()).await;
    let link = s.dir.join("zero.link");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    s.survives(
        &link,
        "not_a_file",
        &["tls.crt", "is a character device, not a regular file"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_file_over_the_limit_is_refused_without_reading_it() {
    let mut s = setup("hostile-sparse", file_options()).await;
    let sparse = s.dir.join("sparse.tmp");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    s.survives(
        &sparse,
        "too_large",
        &["tls.crt", "is 68719476736 bytes, over the 1 MiB limit"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_just_over_a_configured_limit_is_refused() {
    let mut s = setup("hostile-limit", file_options().max_file_size(4096)).await;
    let big = s.dir.join("big.tmp");
    // A real certificate, padded past the limit with PEM-ignored text.
    let padded = format!("{}{}", s.first.cert_pem, "# padding\n".repeat(500));
    std::fs::write(&big, padded).unwrap();
    s.survives(&big, "too_large", &["tls.crt", "over the 4 KiB limit"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_does_not_hang_reads_or_change_detection() {
    let mut s = setup("hostile-fifo", file_options()).await;
    let fifo = s.dir.join("fifo.tmp");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    s.survives(
        &fifo,
        "not_a_file",
        &["tls.crt", "is a FIFO, not a regular file"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_in_place_of_the_certificate_is_refused() {
    let mut s = setup("hostile-dir", file_options()).await;
    let dir = s.dir.join("dir.tmp");
    std::fs::create_dir(&dir).unwrap();
    // A directory cannot be renamed over a file: the file goes first.
    std::fs::remove_file(&s.cert).unwrap();
    s.survives(
        &dir,
        "not_a_file",
        &["tls.crt", "is a directory, not a regular file"],
    )
    .await;
}

/// Only the key replaced, by one that does not belong to the serving
/// certificate: a change, refused as a key mismatch, not "unchanged".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_alone_is_refused_as_a_key_mismatch() {
    let mut s = setup("hostile-key", file_options()).await;
    let other = s.ca.issue(Leaf::default());
    let wrong = s.dir.join("wrong.key.tmp");
    write_atomic(&wrong, &other.key_pem);
    // The grace period may re-read it for a while first: it looks like half
    // of an update.
    reset_peak_rss();
    std::fs::rename(&wrong, &s.key).unwrap();
    let (code, message) = s.failure().await;
    assert_eq!(code, "key_mismatch", "{message}");
    let health = s.rotator.health();
    assert_eq!(health.certificates[0].last_error_code, Some("key_mismatch"));
    // A manual rotation says so too, instead of "unchanged".
    let again = s.rotator.rotate_now().await;
    assert!(
        matches!(&again, Err(certrotate::RotateError::Refused(e)) if e.reason().code() == "key_mismatch"),
        "{again:?}"
    );
    s.still_serves_first().await;
    s.recovers().await;
}

/// A certificate that names a few thousand hosts is refused by the policy's
/// name limit, parsed in bounded memory, and the old one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_with_thousands_of_names_is_refused() {
    let mut s = setup("hostile-names", file_options()).await;
    let mut names: Vec<String> = (0..5000).map(|i| format!("host{i}.example.net")).collect();
    names.push(HOST.to_owned());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let many = s.ca.issue(Leaf::default().names(&names));
    write_atomic(&s.dir.join("many.key.tmp"), &many.key_pem);
    write_atomic(&s.dir.join("many.crt.tmp"), &many.cert_pem);
    reset_peak_rss();
    let before = rss();
    std::fs::rename(s.dir.join("many.key.tmp"), &s.key).unwrap();
    std::fs::rename(s.dir.join("many.crt.tmp"), &s.cert).unwrap();
    let (code, message) = s.failure().await;
    assert_eq!(code, "too_many_names", "{message}");
    assert!(
        message.contains("5001 subject alternative names"),
        "{message}"
    );
    let in_health = s.rotator.health().certificates[0].last_error.clone();
    assert!(
        in_health
            .as_deref()
            .is_some_and(|e| e.contains("over the limit of 1000")),
        "health says {in_health:?}"
    );
    s.still_serves_first().await;
    assert!(peak_rss().saturating_sub(before) < MAX_GROWTH);
    s.recovers().await;
}

/// A source that answers every fetch with a rate limit asking for an
/// absurd wait (a hostile CA's `Retry-After`).
#[derive(Debug, Clone)]
struct AskingForever {
    first: Option<certrotate::CertBundle>,
    fetched: Arc<std::sync::atomic::AtomicBool>,
}

impl certrotate::CertSource for AskingForever {
    async fn fetch(&self) -> Result<certrotate::CertBundle, certrotate::SourceError> {
        if let Some(first) = self
            .first
            .clone()
            .filter(|_| !self.fetched.swap(true, std::sync::atomic::Ordering::SeqCst))
        {
            return Ok(first);
        }
        Err(certrotate::SourceError::rate_limited(
            "a hostile CA",
            "come back never",
            Duration::MAX,
        ))
    }

    fn describe(&self) -> String {
        "a hostile CA".into()
    }
}

/// `Duration::MAX` as a retry delay neither panics in `start()` nor kills
/// a spawned rotator: the wait is clamped, and the rotator keeps answering.
#[tokio::test]
async fn a_huge_retry_after_neither_panics_nor_stops_the_rotator() {
    let policy = || Policy::builder().server_name(HOST).build().unwrap();
    let hostile = AskingForever {
        first: None,
        fetched: Arc::default(),
    };
    let started = Rotator::builder(hostile.clone(), policy()).start().await;
    assert!(matches!(
        started,
        Err(certrotate::RotateError::Source(error)) if error.retry_after() == Some(Duration::MAX)
    ));

    let spawned = Rotator::builder(hostile, policy()).spawn();
    for _ in 0..3 {
        let answer = spawned.rotate_now().await;
        assert!(
            matches!(&answer, Err(certrotate::RotateError::Source(_))),
            "the rotator died: {answer:?}"
        );
    }

    // Serving: the retry comes within an eighth of the remaining validity,
    // whatever the CA asked for.
    let ca = Ca::new();
    let serving = AskingForever {
        first: Some(ca.issue(Leaf::default()).bundle),
        fetched: Arc::default(),
    };
    let rotator = Rotator::builder(serving, policy()).start().await.unwrap();
    assert!(rotator.rotate_now().await.is_err());
    assert!(rotator.health().last_error.is_some());
    rotator.shutdown().await;
}

//! FileSource over real sockets, with certificates written to disk the ways
//! real tools write them, under a handshake load that must never fail.

#![cfg(all(unix, feature = "file"))]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certrotate::bundle::BundleError;
use certrotate::policy::Refusal;
use certrotate::source::SourceErrorKind;
use certrotate::source::{FileOptions, SourceWarning, WatchMode};
use certrotate::{FileSource, Policy, RotationEvent, Rotator, SourceError};
use common::{file_options, write_atomic, WITHIN};
use common::{Ca, Issued, Leaf, TempDir, HOST};
use tokio::sync::broadcast;

fn write_pair(cert: &Path, key: &Path, issued: &Issued) {
    write_atomic(cert, &issued.cert_pem);
    write_atomic(key, &issued.key_pem);
}

struct Setup {
    _dir: TempDir,
    ca: Ca,
    rotator: Rotator,
    server: common::Server,
    client: Arc<rustls::ClientConfig>,
    events: broadcast::Receiver<RotationEvent>,
}

/// Starts a rotator on `source` (whose files hold `first`), a server, and a
/// client trusting `ca`.
async fn setup(dir: TempDir, ca: Ca, source: FileSource, first: &Issued) -> Setup {
    let policy = Policy::builder().server_name(HOST).build().unwrap();
    let rotator = Rotator::builder(source, policy)
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .start()
        .await
        .unwrap();
    assert_eq!(
        rotator.current().unwrap().serial,
        first.bundle.info().serial
    );
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let client = common::client_config(&ca);
    let events = rotator.subscribe();
    Setup {
        _dir: dir,
        ca,
        rotator,
        server,
        client,
        events,
    }
}

/// A pair in `dir/tls.crt` + `dir/tls.key`, served.
async fn serving_pair(options: FileOptions) -> (Setup, PathBuf, PathBuf) {
    let (dir, ca) = (TempDir::new("file"), Ca::new());
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let first = ca.issue(Leaf::default().valid_from(ago(3600)));
    write_pair(&cert, &key, &first);
    let source = FileSource::pair(&cert, &key).options(options);
    (setup(dir, ca, source, &first).await, cert, key)
}

fn ago(seconds: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(seconds)
}

/// A new leaf, newer than any issued before it in the test.
fn newer(ca: &Ca, step: u64) -> Issued {
    ca.issue(Leaf::default().valid_from(ago(3600 - step)))
}

impl Setup {
    async fn until_served(&self, issued: &Issued) {
        let serial = &issued.bundle.info().serial;
        common::until_served(&self.client, self.server.addr, HOST, serial, WITHIN).await;
    }

    fn load(&self) -> common::Load {
        common::load(&self.client, self.server.addr, HOST, 2)
    }

    /// No candidate has been refused or failed to load since the setup: a
    /// half-written pair never reached the policy.
    fn assert_no_failure(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            if let RotationEvent::Refused { error, .. } = &event {
                panic!("a candidate was refused: {error}");
            }
            if let RotationEvent::SourceFailed { error, .. } = &event {
                panic!("the source failed: {error}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn atomic_rename_of_cert_then_key() {
    let (mut s, cert, key) = serving_pair(file_options()).await;
    let load = s.load();
    for step in 1..=3 {
        let next = newer(&s.ca, step);
        write_atomic(&cert, &next.cert_pem);
        // Longer than the settle window: the new cert with the old key is
        // read, recognised as half a pair, and waited out.
        tokio::time::sleep(Duration::from_millis(200)).await;
        write_atomic(&key, &next.key_pem);
        s.until_served(&next).await;
    }
    load.finish().await;
    s.assert_no_failure();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn truncate_and_write_in_two_steps_with_the_key_later() {
    let (mut s, cert, key) = serving_pair(file_options().grace(Duration::from_secs(3))).await;
    let load = s.load();
    let next = newer(&s.ca, 1);
    // In place, like `cat new.crt > tls.crt` from a slow writer: truncate,
    // half, a pause, the rest; the key follows a second later.
    for (path, pem) in [(&cert, &next.cert_pem), (&key, &next.key_pem)] {
        let mut file = std::fs::File::create(path).unwrap();
        let (head, tail) = pem.split_at(pem.len() / 2);
        file.write_all(head.as_bytes()).unwrap();
        file.sync_all().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        file.write_all(tail.as_bytes()).unwrap();
        drop(file);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    s.until_served(&next).await;
    load.finish().await;
    s.assert_no_failure();
}

/// A Kubernetes secret volume as the kubelet writes it: the files are
/// symlinks through `..data` to a timestamped directory, and an update
/// writes a new directory and renames a new `..data` link over the old one.
struct SecretVolume {
    mount: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(mount: &Path, first: &Issued) -> Self {
        let mut volume = Self {
            mount: mount.to_owned(),
            generation: 0,
        };
        volume.update(first);
        std::os::unix::fs::symlink("..data/tls.crt", mount.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", mount.join("tls.key")).unwrap();
        volume
    }

    fn update(&mut self, issued: &Issued) {
        self.generation += 1;
        let old = format!("..2026_11_28_00_00_{:02}.{}", self.generation - 1, 100);
        let new = format!("..2026_11_28_00_00_{:02}.{}", self.generation, 100);
        let dir = self.mount.join(&new);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &issued.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &issued.key_pem).unwrap();
        std::fs::set_permissions(dir.join("tls.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::symlink(&new, self.mount.join("..data_tmp")).unwrap();
        std::fs::rename(self.mount.join("..data_tmp"), self.mount.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(self.mount.join(old));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubernetes_secret_volume_rotates_again_and_again() {
    let (dir, ca) = (TempDir::new("k8s"), Ca::new());
    let first = ca.issue(Leaf::default().valid_from(ago(3600)));
    let mut volume = SecretVolume::new(dir.path(), &first);
    let source = FileSource::pair(dir.join("tls.crt"), dir.join("tls.key")).options(file_options());
    let mut s = setup(dir, ca, source, &first).await;
    let load = s.load();
    for step in 1..=4 {
        let next = newer(&s.ca, step);
        volume.update(&next);
        s.until_served(&next).await;
    }
    load.finish().await;
    s.assert_no_failure();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_files_keep_the_old_certificate_until_they_come_back() {
    let (mut s, cert, key) = serving_pair(file_options()).await;
    let load = s.load();
    let serving = s.rotator.current().unwrap();
    std::fs::remove_file(&cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    match failure(&mut s.events).await {
        Failure::Source(error) if error.code() == "read" => {
            let SourceErrorKind::Read { path, source } = error.kind() else {
                unreachable!()
            };
            assert_eq!(path, &cert);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    let health = s.rotator.health();
    assert!(health.last_error.unwrap().contains("cannot read"));
    assert_eq!(health.certificates[0].serial, serving.serial);
    assert_eq!(s.rotator.current().unwrap().serial, serving.serial);

    let next = newer(&s.ca, 1);
    write_pair(&cert, &key, &next);
    s.until_served(&next).await;
    assert_eq!(s.rotator.health().last_error, None);

    // A directory where the certificate should be: not a regular file.
    std::fs::remove_file(&cert).unwrap();
    std::fs::create_dir(&cert).unwrap();
    match failure(&mut s.events).await {
        Failure::Source(error) if error.code() == "not_a_file" => {
            let SourceErrorKind::NotAFile { path, found } = error.kind() else {
                unreachable!()
            };
            assert_eq!(path, &cert);
            assert_eq!(*found, "a directory");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.rotator.current().unwrap().serial,
        next.bundle.info().serial
    );
    std::fs::remove_dir(&cert).unwrap();
    let last = newer(&s.ca, 2);
    write_pair(&cert, &key, &last);
    s.until_served(&last).await;
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polling_sees_changes_without_events() {
    let poll = WatchMode::Poll {
        every: Duration::from_millis(100),
    };
    let (mut s, cert, key) = serving_pair(file_options().watch(poll)).await;
    let load = s.load();
    for step in 1..=2 {
        let next = newer(&s.ca, step);
        write_pair(&cert, &key, &next);
        s.until_served(&next).await;
    }
    // Same size, same modification time is no excuse: the content is compared.
    let next = newer(&s.ca, 3);
    let mtime = std::fs::metadata(&cert).unwrap().modified().unwrap();
    write_pair(&cert, &key, &next);
    for path in [&cert, &key] {
        std::fs::File::options()
            .append(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
    s.until_served(&next).await;
    load.finish().await;
    s.assert_no_failure();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn combined_pem_file_rotates() {
    let (dir, ca) = (TempDir::new("combined"), Ca::new());
    let path = dir.join("server.pem");
    let combined = |i: &Issued| format!("{}{}", i.key_pem, i.cert_pem);
    let first = ca.issue(Leaf::default().valid_from(ago(3600)));
    write_atomic(&path, &combined(&first));
    let source = FileSource::combined(&path).options(file_options());
    let mut s = setup(dir, ca, source, &first).await;
    let load = s.load();
    let next = newer(&s.ca, 1);
    write_atomic(&path, &combined(&next));
    s.until_served(&next).await;
    load.finish().await;
    s.assert_no_failure();
}

#[derive(Debug)]
enum Failure {
    Refused(Refusal),
    Source(SourceError),
}

/// The next refusal or source failure.
async fn failure(events: &mut broadcast::Receiver<RotationEvent>) -> Failure {
    let next = async {
        loop {
            match events.recv().await.unwrap() {
                RotationEvent::Refused { error, .. } => {
                    return Failure::Refused(error.reason().clone())
                }
                RotationEvent::SourceFailed { error, .. } => return Failure::Source(error),
                _ => {}
            }
        }
    };
    tokio::time::timeout(WITHIN, next)
        .await
        .expect("no failure reported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_are_refused_each_with_its_own_error() {
    let (mut s, cert, key) = serving_pair(file_options()).await;
    let load = s.load();
    let good = s.rotator.current().unwrap();
    let good_files = (
        std::fs::read_to_string(&cert).unwrap(),
        std::fs::read_to_string(&key).unwrap(),
    );
    let ca = &s.ca;
    let issue = |leaf: Leaf| ca.issue(leaf);
    let fresh = || Leaf::default().valid_from(ago(60));
    let now = SystemTime::now();
    let (rsa_cert, rsa_key) = common::rsa_1024_pem();
    let (a, b) = (issue(fresh()), issue(fresh()));
    let expired = issue(Leaf::default().lifetime(ago(7200), ago(60)));
    let not_yet = issue(Leaf::default().lifetime(
        now + Duration::from_secs(3600),
        now + Duration::from_secs(7200),
    ));
    let wrong_host = issue(fresh().names(&["other.example"]));
    let mut ca_leaf = fresh();
    ca_leaf.is_ca = true;
    let ca_leaf = issue(ca_leaf);
    let random: String = (0..2048).map(|_| fastrand::alphanumeric()).collect();

    type Check = fn(&Failure) -> bool;
    let cases: Vec<(&str, String, String, Check)> = vec![
        (
            "mismatched key",
            a.cert_pem.clone(),
            b.key_pem.clone(),
            |f| matches!(f, Failure::Refused(Refusal::KeyMismatch)),
        ),
        (
            "expired",
            expired.cert_pem.clone(),
            expired.key_pem.clone(),
            |f| matches!(f, Failure::Refused(Refusal::Expired { .. })),
        ),
        (
            "not yet valid",
            not_yet.cert_pem.clone(),
            not_yet.key_pem.clone(),
            |f| matches!(f, Failure::Refused(Refusal::NotYetValid { .. })),
        ),
        (
            "wrong host",
            wrong_host.cert_pem.clone(),
            wrong_host.key_pem.clone(),
            |f| matches!(f, Failure::Refused(Refusal::NameNotCovered { name }) if name == HOST),
        ),
        ("RSA-1024", rsa_cert, rsa_key, |f| {
            matches!(f, Failure::Refused(Refusal::WeakKey { .. }))
        }),
        (
            "CA certificate as leaf",
            ca_leaf.cert_pem.clone(),
            ca_leaf.key_pem.clone(),
            |f| matches!(f, Failure::Refused(Refusal::CaCertificate)),
        ),
        (
            "truncated PEM",
            a.cert_pem[..a.cert_pem.len() / 2].to_owned(),
            a.key_pem.clone(),
            |f| {
                matches!(
                    f,
                    Failure::Source(error) if matches!(error.kind(), SourceErrorKind::Bundle(BundleError::Pem { .. }))
                )
            },
        ),
        ("random bytes", random.clone(), random, |f| {
            matches!(
                f,
                Failure::Source(error) if matches!(error.kind(), SourceErrorKind::Bundle(BundleError::NotPem { .. }))
            )
        }),
        ("empty files", String::new(), String::new(), |f| {
            matches!(
                f,
                Failure::Source(error) if matches!(error.kind(), SourceErrorKind::Bundle(BundleError::Empty { .. }))
            )
        }),
        (
            "key and cert swapped",
            a.key_pem.clone(),
            a.cert_pem.clone(),
            |f| {
                matches!(
                    f,
                    Failure::Source(error) if matches!(error.kind(), SourceErrorKind::Bundle(BundleError::Swapped))
                )
            },
        ),
    ];

    for (what, cert_pem, key_pem, check) in cases {
        // Start from the good pair, with nothing pending.
        write_atomic(&cert, &good_files.0);
        write_atomic(&key, &good_files.1);
        let deadline = tokio::time::Instant::now() + WITHIN;
        while s.rotator.health().last_error.is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the good pair is not back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s.events = s.rotator.subscribe();

        write_atomic(&cert, &cert_pem);
        write_atomic(&key, &key_pem);
        let failure = failure(&mut s.events).await;
        assert!(check(&failure), "{what}: unexpected {failure:?}");
        let health = s.rotator.health();
        assert!(
            health.last_error.is_some(),
            "{what}: no last_error in health"
        );
        assert_eq!(health.certificates[0].serial, good.serial, "{what}");
        let seen = common::serial_seen(&s.client, s.server.addr, HOST)
            .await
            .unwrap();
        assert_eq!(
            seen, good.serial,
            "{what}: the old certificate is not serving"
        );
    }
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_readable_by_others_is_reported_and_refused_when_strict() {
    let (mut s, cert, key) = serving_pair(file_options()).await;
    let next = newer(&s.ca, 1);
    write_atomic(&cert, &next.cert_pem);
    write_atomic(&key, &next.key_pem);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    s.until_served(&next).await;
    let warning = loop {
        match s.events.recv().await.unwrap() {
            RotationEvent::Warning { warning, .. } => break warning,
            _ => continue,
        }
    };
    assert_eq!(
        warning,
        SourceWarning::KeyFileExposed {
            path: key.clone(),
            mode: 0o644
        }
    );
    let health = s.rotator.health();
    assert!(
        health.certificates[0].warnings[0].contains("mode 0644"),
        "{health:?}"
    );

    // Fixing the mode clears the warning.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !s.rotator.health().certificates[0].warnings.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "warning not cleared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Strict: the same files are refused at start.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let strict = FileSource::pair(&cert, &key).options(file_options().strict_permissions(true));
    let error = Rotator::builder(strict, Policy::default())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            certrotate::RotateError::Source(error) if matches!(error.kind(), SourceErrorKind::Insecure(_))
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("mode 0640"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_removed_and_recreated_is_followed() {
    let (dir, ca) = (TempDir::new("recreated"), Ca::new());
    let tls = dir.join("tls");
    std::fs::create_dir(&tls).unwrap();
    let (cert, key) = (tls.join("tls.crt"), tls.join("tls.key"));
    let first = ca.issue(Leaf::default().valid_from(ago(3600)));
    write_pair(&cert, &key, &first);
    let source = FileSource::pair(&cert, &key).options(file_options());
    let mut s = setup(dir, ca, source, &first).await;
    let load = s.load();
    for step in 1..=2 {
        std::fs::remove_dir_all(&tls).unwrap();
        assert!(matches!(
            failure(&mut s.events).await,
            Failure::Source(error) if error.code() == "read"
        ));
        std::fs::create_dir(&tls).unwrap();
        let next = newer(&s.ca, step);
        write_pair(&cert, &key, &next);
        s.until_served(&next).await;
    }
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_that_is_never_quiet_still_rotates() {
    let (mut s, cert, key) = serving_pair(file_options()).await;
    let load = s.load();
    // Another program writes beside the certificate every 10 ms.
    let noise = cert.with_file_name("app.log");
    let writer = tokio::spawn(async move {
        for i in 0u64.. {
            std::fs::write(&noise, i.to_string()).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    for step in 1..=2 {
        let next = newer(&s.ca, step);
        write_pair(&cert, &key, &next);
        s.until_served(&next).await;
    }
    writer.abort();
    load.finish().await;
    s.assert_no_failure();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_broken_long_ago_are_refused_at_once() {
    let (dir, ca) = (TempDir::new("stale"), Ca::new());
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let (a, b) = (ca.issue(Leaf::default()), ca.issue(Leaf::default()));
    write_pair(&cert, &key, &a);
    write_atomic(&key, &b.key_pem);
    // Nothing has changed for an hour: no other half is on its way.
    for path in [&cert, &key, &dir.path().to_owned()] {
        std::fs::File::open(path)
            .unwrap()
            .set_modified(ago(3600))
            .unwrap();
    }
    // A grace period this long would hang the start if it applied.
    let source =
        FileSource::pair(&cert, &key).options(file_options().grace(Duration::from_secs(3600)));
    let start = Rotator::builder(source, Policy::default()).start();
    let error = tokio::time::timeout(WITHIN, start)
        .await
        .expect("the grace period was applied to files that changed long ago")
        .unwrap_err();
    assert!(
        matches!(&error, certrotate::RotateError::Refused(e) if matches!(e.reason(), Refusal::KeyMismatch)),
        "{error:?}"
    );
}

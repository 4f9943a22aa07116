//! Replay protection survives a restart: a source that keeps state records
//! the newest certificate it had served, and a rotator started later refuses
//! an older one put back in its place (unless told to allow it). Without a
//! state location, protection is per process, as SECURITY.md says.

mod common;

use std::time::{Duration, SystemTime};

use certrotate::policy::Refusal;
use certrotate::{Policy, RotateError, Rotator};
use common::{Ca, Issued, Leaf};

/// An older and a newer certificate of `ca` for `name`.
fn older_and_newer(ca: &Ca, name: &str) -> (Issued, Issued) {
    let now = SystemTime::now();
    let leaf = |age: u64| {
        ca.issue(
            Leaf::default()
                .names(&[name])
                .valid_from(now - Duration::from_secs(age)),
        )
    };
    (leaf(7200), leaf(600))
}

fn is_replay(started: &Result<Rotator, RotateError>, newest: &Issued) -> bool {
    match started {
        Err(RotateError::Refused(error)) => matches!(
            error.reason(),
            Refusal::OlderThanServing { serving_serial, .. }
                if *serving_serial == newest.bundle.info().serial
        ),
        _ => false,
    }
}

#[cfg(all(unix, feature = "file"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_source_with_a_state_file_refuses_an_older_pair_after_a_restart() {
    use certrotate::FileSource;
    let dir = common::TempDir::new("replay-files");
    let (cert, key, state) = (
        dir.join("tls.crt"),
        dir.join("tls.key"),
        dir.join("served.txt"),
    );
    let ca = Ca::new();
    let (older, newer) = older_and_newer(&ca, common::HOST);
    let policy = || Policy::builder().server_name(common::HOST).build().unwrap();
    let source = |state_file: bool| {
        let options = common::file_options();
        let options = match state_file {
            true => options.state_file(&state),
            false => options,
        };
        FileSource::pair(&cert, &key).options(options)
    };
    let put = |issued: &Issued| {
        common::write_atomic(&key, &issued.key_pem);
        common::write_atomic(&cert, &issued.cert_pem);
    };

    put(&newer);
    let first = Rotator::builder(source(true), policy())
        .start()
        .await
        .unwrap();
    first.shutdown().await;
    let recorded = std::fs::read_to_string(&state).unwrap();
    assert!(recorded.contains(&newer.bundle.info().serial), "{recorded}");

    // Someone puts the older (say, compromised) pair back, and the server
    // restarts: refused, naming the newest served.
    put(&older);
    let replayed = Rotator::builder(source(true), policy()).start().await;
    assert!(is_replay(&replayed, &newer), "{replayed:?}");

    // Going back on purpose is explicit.
    let allowed = Rotator::builder(source(true), policy())
        .dangerous()
        .allow_older()
        .start()
        .await
        .unwrap();
    assert_eq!(
        allowed.current().unwrap().serial,
        older.bundle.info().serial
    );
    allowed.shutdown().await;

    // Without a state file, protection is per process: a restart accepts it.
    let per_process = Rotator::builder(source(false), policy()).start().await;
    assert!(per_process.is_ok(), "{per_process:?}");
}

#[cfg(feature = "acme")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acme_source_refuses_a_restored_older_certificate_after_a_restart() {
    use certrotate::acme::{FileStorage, Storage};
    use certrotate::AcmeSource;
    let dir = common::TempDir::new("replay-acme");
    let storage = FileStorage::new(dir.join("state"));
    // The CA is out of reach: whatever is served comes from the storage.
    let directory = "https://127.0.0.1:9/directory";
    let name = "a.example";
    let (cert_key, _, served_key) = common::acme_keys(directory, name);
    let ca = Ca::new();
    let (older, newer) = older_and_newer(&ca, name);
    let source = || {
        AcmeSource::builder(directory, [name])
            .storage(storage.clone())
            .timeout(Duration::from_secs(1))
            .build()
    };
    let policy = || Policy::builder().server_name(name).build().unwrap();
    let store = |issued: &Issued| {
        let combined = format!("{}{}", issued.cert_pem, issued.key_pem);
        let storage = storage.clone();
        let key = cert_key.clone();
        async move { storage.store(&key, combined.as_bytes()).await.unwrap() }
    };

    store(&newer).await;
    let first = Rotator::builder(source(), policy()).start().await.unwrap();
    assert_eq!(first.current().unwrap().serial, newer.bundle.info().serial);
    first.shutdown().await;
    let recorded = storage.load(&served_key).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&recorded).contains(&newer.bundle.info().serial));

    // The older certificate restored into the storage (a backup, a replay).
    store(&older).await;
    let replayed = Rotator::builder(source(), policy()).start().await;
    assert!(is_replay(&replayed, &newer), "{replayed:?}");

    // The whole storage put back, mark included: the storage alone cannot
    // tell (protection per process, as SECURITY.md says), a state file of
    // the instance's own can.
    let local = dir.join("local-served.txt");
    let with_local = || {
        AcmeSource::builder(directory, [name])
            .storage(storage.clone())
            .timeout(Duration::from_secs(1))
            .state_file(&local)
            .build()
    };
    store(&newer).await;
    let running = Rotator::builder(with_local(), policy())
        .dangerous()
        .allow_older()
        .start()
        .await
        .unwrap();
    running.shutdown().await;
    store(&older).await;
    let old_mark = mark_of(&older);
    storage
        .store(&served_key, old_mark.as_bytes())
        .await
        .unwrap();
    let storage_only = Rotator::builder(source(), policy()).start().await;
    assert!(storage_only.is_ok(), "{storage_only:?}");
    storage_only.unwrap().shutdown().await;
    storage
        .store(&served_key, old_mark.as_bytes())
        .await
        .unwrap();
    let replayed = Rotator::builder(with_local(), policy()).start().await;
    assert!(is_replay(&replayed, &newer), "{replayed:?}");
}

/// The mark text of `issued`, as sources keep it.
fn mark_of(issued: &Issued) -> String {
    let info = issued.bundle.info();
    let secs = info
        .not_before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("{secs} {}\n", info.serial)
}

/// A mark that cannot be read (the shared storage hangs, its value does not
/// parse) fails closed without failing down: a first certificate is still
/// served, nothing older than what serves is installed, the condition is in
/// health, the mark is never lowered (a place that does not answer is not
/// written; one whose value does not parse is replaced by a newer mark),
/// and the instance's own state file is read on its own, so that it still
/// refuses an older certificate while the storage hangs.
#[cfg(feature = "acme")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_mark_fails_closed_without_failing_down() {
    use certrotate::acme::{FileStorage, Storage};
    let dir = common::TempDir::new("replay-unreadable");
    let directory = "https://127.0.0.1:9/directory";
    let name = "a.example";
    let (cert_key, _, served_key) = common::acme_keys(directory, name);
    let hang = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hanging = {
        let hang = hang.clone();
        move || hang.load(std::sync::atomic::Ordering::SeqCst)
    };
    let storage = common::storage::HangingReads::new(
        FileStorage::new(dir.join("state")),
        &served_key,
        hanging,
    );
    let ca = Ca::new();
    let (older, newer) = older_and_newer(&ca, name);
    let local = dir.join("local-served.txt");
    let source = |state_file: bool| {
        let builder = certrotate::AcmeSource::builder(directory, [name])
            .storage(storage.clone())
            .timeout(Duration::from_secs(1));
        match state_file {
            true => builder.state_file(&local).build(),
            false => builder.build(),
        }
    };
    let policy = || Policy::builder().server_name(name).build().unwrap();
    let combined = |issued: &Issued| format!("{}{}", issued.cert_pem, issued.key_pem);
    let mark_warning = |rotator: &Rotator| {
        let health = rotator.health();
        let warnings = &health.certificates[0].warnings;
        warnings
            .iter()
            .any(|w| w.contains("cannot be read") && w.contains(&served_key))
    };

    // The newer one was served before (its mark is in the storage); the
    // older one is what the storage offers now, and the mark read hangs.
    storage
        .store(&served_key, mark_of(&newer).as_bytes())
        .await
        .unwrap();
    storage
        .store(&cert_key, combined(&older).as_bytes())
        .await
        .unwrap();
    hang.store(true, std::sync::atomic::Ordering::SeqCst);

    // With a state file of its own holding the newer mark: refused, though
    // the storage hangs.
    std::fs::write(&local, mark_of(&newer)).unwrap();
    let refused = Rotator::builder(source(true), policy()).start().await;
    assert!(is_replay(&refused, &newer), "{refused:?}");

    // Without one: nothing serves yet, so the older one serves (not
    // failing down), the condition is reported, and the mark stays.
    let rotator = Rotator::builder(source(false), policy())
        .retry_backoff(Duration::from_millis(200), Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    assert_eq!(
        rotator.current().unwrap().serial,
        older.bundle.info().serial
    );
    assert!(mark_warning(&rotator), "{:?}", rotator.health());
    let stored = storage.inner.load(&served_key).await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(stored).unwrap(),
        mark_of(&newer),
        "lowered"
    );

    // The storage answers again: without any new certificate, the mark is
    // read again on a retry, the warning goes, and the mark stays.
    hang.store(false, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while mark_warning(&rotator) {
        assert!(tokio::time::Instant::now() < deadline, "never read again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = storage.inner.load(&served_key).await.unwrap().unwrap();
    assert_eq!(String::from_utf8(stored).unwrap(), mark_of(&newer));
    rotator.shutdown().await;

    // A value that does not parse, at a restart: the first certificate is
    // served, and its mark replaces the unusable value (the mark heals
    // rather than staying broken; what it held is unknowable).
    storage.store(&served_key, b"garbage").await.unwrap();
    let rotator = Rotator::builder(source(false), policy())
        .start()
        .await
        .unwrap();
    assert_eq!(
        rotator.current().unwrap().serial,
        older.bundle.info().serial
    );
    let stored = storage.inner.load(&served_key).await.unwrap().unwrap();
    assert_eq!(String::from_utf8(stored).unwrap(), mark_of(&older));
    assert!(!mark_warning(&rotator), "{:?}", rotator.health());

    // A certificate newer than anything served is installed, and its mark
    // replaces the unusable value (the mark heals; the warning goes).
    let newest = ca.issue(
        Leaf::default()
            .names(&[name])
            .valid_from(SystemTime::now() - Duration::from_secs(60)),
    );
    storage
        .store(&cert_key, combined(&newest).as_bytes())
        .await
        .unwrap();
    rotator.rotate_now().await.unwrap();
    assert_eq!(
        rotator.current().unwrap().serial,
        newest.bundle.info().serial
    );
    let stored = storage.inner.load(&served_key).await.unwrap().unwrap();
    assert_eq!(String::from_utf8(stored).unwrap(), mark_of(&newest));
    rotator.shutdown().await;
}

//! CertDirectory: a directory of pairs served by SNI, pairs coming and going
//! while handshakes run, a bad pair next to good ones.

#![cfg(all(unix, feature = "file"))]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certrotate::source::WatchMode;
use certrotate::{CertDirectory, Policy, RotationEvent};
use common::{file_options, WITHIN};
use common::{Ca, Issued, Leaf, TempDir};

fn write_pair(cert: &Path, key: &Path, issued: &Issued) {
    for (path, pem, mode) in [
        (cert, &issued.cert_pem, 0o644),
        (key, &issued.key_pem, 0o600),
    ] {
        let tmp = path.with_extension("tmp-write");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

fn leaf(ca: &Ca, name: &str, age: u64) -> Issued {
    let start = SystemTime::now() - Duration::from_secs(age);
    ca.issue(Leaf::default().names(&[name]).valid_from(start))
}

fn serial(issued: &Issued) -> &str {
    &issued.bundle.info().serial
}

async fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(dir: &TempDir) -> CertDirectory {
    start_with(dir, file_options()).await
}

/// [`start`] with `options`.
async fn start_with(dir: &TempDir, options: certrotate::source::FileOptions) -> CertDirectory {
    builder(dir, options).start().await.unwrap()
}

/// [`start`] keeping the pairs' marks in `marks`.
async fn start_with_marks(dir: &TempDir, marks: &Path) -> CertDirectory {
    builder(dir, file_options())
        .state_dir(marks)
        .start()
        .await
        .unwrap()
}

/// The tests' directory on `dir`, with `options`, retrying from 100 ms.
fn builder(
    dir: &TempDir,
    options: certrotate::source::FileOptions,
) -> certrotate::directory::CertDirectoryBuilder {
    CertDirectory::builder(dir.path(), Policy::default())
        .options(options)
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(400))
}

/// Whether pair `slot`'s last attempt was refused as older than the newest
/// certificate it served (whether something serves or not).
fn refused_as_older(certs: &CertDirectory, slot: &str) -> bool {
    let health = certs.health();
    let cert = health.certificates.iter().find(|c| c.slot == slot);
    let failed = cert.and_then(|c| c.last_error_code);
    let unserved = health.unserved.iter().find(|u| u.slot == slot);
    failed.or(unserved.and_then(|u| u.last_error_code)) == Some("older_than_serving")
}

/// A TLS server on the directory's certificates, and a client trusting `ca`.
async fn serve(certs: &CertDirectory, ca: &Ca) -> (common::Server, Arc<rustls::ClientConfig>) {
    let config = certs.server_config().unwrap();
    // ALPN as a rotator's config has it: nothing to set by hand.
    assert_eq!(config.alpn_protocols, [&b"h2"[..], b"http/1.1"]);
    let server = common::serve(Arc::new(config)).await;
    (server, common::client_config(ca))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pairs_are_added_replaced_and_removed_while_serving() {
    let (dir, ca) = (TempDir::new("dir"), Ca::new());
    let a = leaf(&ca, "a.example", 3600);
    write_pair(&dir.join("a.crt"), &dir.join("a.key"), &a);
    let b = leaf(&ca, "b.example", 3600);
    std::fs::create_dir(dir.join("b")).unwrap();
    write_pair(&dir.join("b/tls.crt"), &dir.join("b/tls.key"), &b);
    let expired = ca.issue(Leaf::default().names(&["bad.example"]).lifetime(
        SystemTime::now() - Duration::from_secs(7200),
        SystemTime::now() - Duration::from_secs(60),
    ));
    write_pair(&dir.join("bad.crt"), &dir.join("bad.key"), &expired);
    // Not pairs: hidden entries and other files.
    std::fs::write(dir.join(".hidden.crt"), "x").unwrap();
    std::fs::write(dir.join("README"), "x").unwrap();

    let certs = start(&dir).await;
    let mut events = certs.subscribe();
    assert_eq!(certs.pairs(), ["a", "b", "bad"]);

    // The bad pair is refused on its own; the good ones serve by SNI.
    let health = certs.health();
    let served: Vec<_> = health
        .certificates
        .iter()
        .map(|c| c.slot.as_str())
        .collect();
    assert_eq!(served, ["a", "b"]);
    assert_eq!(health.unserved.len(), 1);
    assert_eq!(health.unserved[0].slot, "bad");
    assert_eq!(
        health.unserved[0].last_error_code,
        Some("expired"),
        "{health:?}"
    );

    let (server, client) = serve(&certs, &ca).await;
    let seen = |name: &'static str| {
        let client = client.clone();
        async move {
            common::serial_seen(&client, server.addr, name)
                .await
                .unwrap()
        }
    };
    assert_eq!(seen("a.example").await, serial(&a));
    assert_eq!(seen("b.example").await, serial(&b));
    let load_a = common::load(&client, server.addr, "a.example", 1);
    let load_b = common::load(&client, server.addr, "b.example", 1);

    // Add a pair.
    let c = leaf(&ca, "c.example", 3600);
    write_pair(&dir.join("c.crt"), &dir.join("c.key"), &c);
    common::until_served(&client, server.addr, "c.example", serial(&c), WITHIN).await;
    assert_eq!(certs.pairs(), ["a", "b", "bad", "c"]);

    // Add one cert-manager style: the directory first, the files later.
    std::fs::create_dir(dir.join("d")).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = leaf(&ca, "d.example", 3600);
    write_pair(&dir.join("d/tls.crt"), &dir.join("d/tls.key"), &d);
    common::until_served(&client, server.addr, "d.example", serial(&d), WITHIN).await;

    // Replace one.
    let a2 = leaf(&ca, "a.example", 1800);
    write_pair(&dir.join("a.crt"), &dir.join("a.key"), &a2);
    common::until_served(&client, server.addr, "a.example", serial(&a2), WITHIN).await;

    // Fix the bad one.
    let fixed = leaf(&ca, "bad.example", 60);
    write_pair(&dir.join("bad.crt"), &dir.join("bad.key"), &fixed);
    common::until_served(&client, server.addr, "bad.example", serial(&fixed), WITHIN).await;
    assert!(certs.health().unserved.is_empty());

    // Remove one (cert-manager style directory).
    load_b.finish().await;
    std::fs::remove_dir_all(dir.join("b")).unwrap();
    until("removal of b", || {
        (certs.pairs() == ["a", "bad", "c", "d"]).then_some(())
    })
    .await;
    let removed = until("the Removed event", || loop {
        match events.try_recv() {
            Ok(RotationEvent::Removed { slot, cert }) => break Some((slot, cert)),
            Ok(_) => continue,
            Err(_) => break None,
        }
    })
    .await;
    assert_eq!(&*removed.0, "b");
    assert_eq!(removed.1.unwrap().serial, serial(&b));
    // Its name is no longer served: the client gets the first pair's
    // certificate, which does not cover b.example.
    let error = common::serial_seen(&client, server.addr, "b.example")
        .await
        .unwrap_err();
    assert!(
        error.contains("not valid for name \"b.example\""),
        "{error}"
    );
    assert!(certs.health().certificates.iter().all(|c| c.slot != "b"));

    load_a.finish().await;
    certs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_written_pair_waits_and_a_broken_one_does_not_block_the_others() {
    let (dir, ca) = (TempDir::new("dir-bad"), Ca::new());
    let good = leaf(&ca, "good.example", 3600);
    write_pair(&dir.join("good.crt"), &dir.join("good.key"), &good);
    // A cert whose key never comes.
    let lonely = leaf(&ca, "lonely.example", 3600);
    std::fs::write(dir.join("lonely.crt"), &lonely.cert_pem).unwrap();

    let certs = start(&dir).await;
    let (server, client) = serve(&certs, &ca).await;
    let load = common::load(&client, server.addr, "good.example", 2);

    let health = certs.health();
    assert_eq!(health.certificates.len(), 1);
    let error = health.unserved[0].last_error.clone().unwrap();
    assert!(error.contains("lonely.key"), "{error}");

    // The good pair keeps rotating next to the broken one.
    let good2 = leaf(&ca, "good.example", 1800);
    write_pair(&dir.join("good.crt"), &dir.join("good.key"), &good2);
    common::until_served(&client, server.addr, "good.example", serial(&good2), WITHIN).await;

    // The missing key arrives: the pair is served.
    write_pair(&dir.join("lonely.crt"), &dir.join("lonely.key"), &lonely);
    common::until_served(
        &client,
        server.addr,
        "lonely.example",
        serial(&lonely),
        WITHIN,
    )
    .await;
    load.finish().await;
    certs.shutdown().await;
}

/// Without file-system events (NFS), a poll lists the directory and stats
/// the files: a replaced pair is read again, an added one loaded, a removed
/// one dropped, and a pair whose files did not change is not attempted
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poll_reads_only_the_pairs_whose_files_changed() {
    let (dir, ca) = (TempDir::new("dir-poll"), Ca::new());
    let (a, b) = (leaf(&ca, "a.example", 3600), leaf(&ca, "b.example", 3600));
    write_pair(&dir.join("a.crt"), &dir.join("a.key"), &a);
    write_pair(&dir.join("b.crt"), &dir.join("b.key"), &b);
    let options = file_options().watch(certrotate::source::WatchMode::Poll {
        every: Duration::from_millis(100),
    });
    let certs = CertDirectory::builder(dir.path(), Policy::default())
        .options(options)
        .start()
        .await
        .unwrap();
    let mut events = certs.subscribe();
    let (server, client) = serve(&certs, &ca).await;

    let a2 = leaf(&ca, "a.example", 1800);
    write_pair(&dir.join("a.crt"), &dir.join("a.key"), &a2);
    common::until_served(&client, server.addr, "a.example", serial(&a2), WITHIN).await;
    let c = leaf(&ca, "c.example", 3600);
    write_pair(&dir.join("c.crt"), &dir.join("c.key"), &c);
    common::until_served(&client, server.addr, "c.example", serial(&c), WITHIN).await;
    std::fs::remove_file(dir.join("a.crt")).unwrap();
    std::fs::remove_file(dir.join("a.key")).unwrap();
    until("removal of a", || {
        (certs.pairs() == ["b", "c"]).then_some(())
    })
    .await;
    // Several polls later, b (never touched) was not read again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut attempted = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let RotationEvent::Attempted { slot, .. } = event {
            attempted.push(slot.to_string());
        }
    }
    assert!(!attempted.is_empty());
    assert!(attempted.iter().all(|s| s != "b"), "{attempted:?}");
    certs.shutdown().await;
}

/// A pair deleted and put back older (a revoked, unexpired certificate) is
/// refused: its mark outlives its slot, and with a state directory the
/// restart too. Without one, a restart starts anew (per process, as
/// SECURITY.md says). `FileOptions::state_file` on a directory is an error,
/// not ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_deleted_and_put_back_older_is_refused_across_removal_and_restart() {
    let (dir, ca, state) = (TempDir::new("dir"), Ca::new(), TempDir::new("marks"));
    let (older, newer) = (leaf(&ca, "a.example", 7200), leaf(&ca, "a.example", 600));
    let (cert, key) = (dir.join("a.crt"), dir.join("a.key"));
    let marks = state.join("marks");
    let start_with_state = || start_with_marks(&dir, &marks);

    write_pair(&cert, &key, &newer);
    let certs = start_with_state().await;
    assert_eq!(certs.store().current("a").unwrap().serial, serial(&newer));

    // Deleted: the slot goes. Put back older: refused, nothing served.
    std::fs::remove_file(&cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    until("the pair's removal", || {
        certs.store().current("a").is_none().then_some(())
    })
    .await;
    write_pair(&cert, &key, &older);
    until("the refusal", || {
        refused_as_older(&certs, "a").then_some(())
    })
    .await;
    assert!(certs.store().current("a").is_none());
    certs.shutdown().await;

    // Restarted on the older pair: refused from the first load.
    let certs = start_with_state().await;
    assert!(certs.store().current("a").is_none());
    assert!(refused_as_older(&certs, "a"), "{:?}", certs.health());
    // A newer one is served, and raises the mark.
    let newest = leaf(&ca, "a.example", 60);
    write_pair(&cert, &key, &newest);
    until("the newest", || {
        let current = certs.store().current("a")?;
        (current.serial == serial(&newest)).then_some(())
    })
    .await;
    certs.shutdown().await;
    let mark = std::fs::read_to_string(state.join("marks/a.mark")).unwrap();
    assert!(mark.contains(serial(&newest)), "{mark}");

    // Without a state directory, a restart has no memory of it.
    write_pair(&cert, &key, &older);
    let certs = start(&dir).await;
    assert_eq!(certs.store().current("a").unwrap().serial, serial(&older));
    certs.shutdown().await;

    // A state file names one file: an error for a directory.
    let error = CertDirectory::builder(dir.path(), Policy::default())
        .options(file_options().state_file(state.join("one.txt")))
        .start()
        .await
        .unwrap_err();
    assert_eq!(error.code(), "config");
}

/// A pair's mark file that is unusable (garbage, a directory in its place)
/// is reported in the pair's health; the pair still serves (nothing to
/// fail down to), and garbage is replaced by the mark of what serves, so
/// that the mark heals and the warning goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_pair_mark_is_reported_and_replaced_by_what_serves() {
    let (dir, ca, state) = (TempDir::new("dir"), Ca::new(), TempDir::new("marks"));
    let a = leaf(&ca, "a.example", 600);
    write_pair(&dir.join("a.crt"), &dir.join("a.key"), &a);
    let b = leaf(&ca, "b.example", 600);
    write_pair(&dir.join("b.crt"), &dir.join("b.key"), &b);
    let marks = state.join("marks");
    std::fs::create_dir_all(marks.join("b.mark")).unwrap();
    std::fs::write(marks.join("a.mark"), "garbage\n").unwrap();

    let certs = start_with_marks(&dir, &marks).await;
    assert_eq!(certs.store().current("a").unwrap().serial, serial(&a));
    assert_eq!(certs.store().current("b").unwrap().serial, serial(&b));
    let warned = |slot: &str| {
        let health = certs.health();
        let cert = health.certificates.iter().find(|c| c.slot == slot).unwrap();
        let mark = |w: &String| w.contains("cannot be read") || w.contains("cannot be recorded");
        cert.warnings.iter().any(mark)
    };
    // Garbage: replaced at once by the mark of what serves.
    let mark = std::fs::read_to_string(marks.join("a.mark")).unwrap();
    assert!(mark.contains(serial(&a)), "{mark}");
    assert!(!warned("a"), "{:?}", certs.health());
    // A directory in its place cannot be replaced: reported, and retried.
    assert!(warned("b"), "{:?}", certs.health());
    std::fs::remove_dir(marks.join("b.mark")).unwrap();
    until("b's mark written on a retry", || {
        let mark = std::fs::read_to_string(marks.join("b.mark")).ok()?;
        mark.contains(serial(&b)).then_some(())
    })
    .await;
    until("b's warning cleared", || (!warned("b")).then_some(())).await;
    certs.shutdown().await;
}

/// A state directory that cannot be read or written (here: a file where
/// it was) fails closed without failing down, as a rotator's unreadable
/// mark does: a new pair is served (nothing to fail down to) and the
/// condition is in its health; nothing older than what is known is
/// installed (what serves, and the mark a pair had when it left); once the
/// state directory is back, the marks are read again on a retry, the
/// serving pairs' marks recorded, and the warnings go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_that_cannot_be_read_fails_closed_and_heals() {
    let (dir, ca, state) = (TempDir::new("dir"), Ca::new(), TempDir::new("marks"));
    let marks = state.join("marks");
    let a = leaf(&ca, "a.example", 600);
    write_pair(&dir.join("a.crt"), &dir.join("a.key"), &a);
    let certs = start_with_marks(&dir, &marks).await;
    let warned = |slot: &str| {
        let health = certs.health();
        let cert = health.certificates.iter().find(|c| c.slot == slot);
        cert.is_some_and(|c| c.warnings.iter().any(|w| w.contains("cannot be read")))
    };
    let mark = |slot: &str| std::fs::read_to_string(marks.join(format!("{slot}.mark"))).ok();
    assert!(mark("a").unwrap().contains(serial(&a)));

    // The state directory goes; a file stands in its place.
    std::fs::rename(&marks, state.join("away")).unwrap();
    std::fs::write(&marks, "not a directory\n").unwrap();

    // A new pair: served, reported, its mark not written.
    let b = leaf(&ca, "b.example", 600);
    write_pair(&dir.join("b.crt"), &dir.join("b.key"), &b);
    until("b served", || {
        let current = certs.store().current("b")?;
        (current.serial == serial(&b)).then_some(())
    })
    .await;
    until("b's warning", || warned("b").then_some(())).await;
    // Older than what serves: refused.
    let b_older = leaf(&ca, "b.example", 7200);
    write_pair(&dir.join("b.crt"), &dir.join("b.key"), &b_older);
    until("b's older pair refused", || {
        refused_as_older(&certs, "b").then_some(())
    })
    .await;
    assert_eq!(certs.store().current("b").unwrap().serial, serial(&b));
    // A pair that left and came back older, its file unreadable: refused
    // by the mark it had when it left.
    std::fs::remove_file(dir.join("a.crt")).unwrap();
    std::fs::remove_file(dir.join("a.key")).unwrap();
    until("a's removal", || {
        certs.store().current("a").is_none().then_some(())
    })
    .await;
    let a_older = leaf(&ca, "a.example", 7200);
    write_pair(&dir.join("a.crt"), &dir.join("a.key"), &a_older);
    until("a's older pair refused", || {
        refused_as_older(&certs, "a").then_some(())
    })
    .await;
    assert!(certs.store().current("a").is_none());

    // The state directory is back: b's mark is read again on a retry and
    // recorded; its warning goes. a's file still holds its mark.
    std::fs::remove_file(&marks).unwrap();
    std::fs::rename(state.join("away"), &marks).unwrap();
    until("b's mark recorded", || {
        mark("b")?.contains(serial(&b)).then_some(())
    })
    .await;
    until("b's warning cleared", || (!warned("b")).then_some(())).await;
    assert!(mark("a").unwrap().contains(serial(&a)));
    certs.shutdown().await;
}

/// Each newer certificate a pair serves is written to its mark file, not
/// only the first (a review found the file left at the first after it was
/// known up to date once, so a restart served the replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_newer_pair_is_written_to_its_mark_file() {
    let (dir, ca, state) = (TempDir::new("dir"), Ca::new(), TempDir::new("marks"));
    let marks = state.join("marks");
    let (cert, key) = (dir.join("a.crt"), dir.join("a.key"));
    let mark = || std::fs::read_to_string(marks.join("a.mark")).unwrap_or_default();
    write_pair(&cert, &key, &leaf(&ca, "a.example", 7200));
    let certs = start_with_marks(&dir, &marks).await;
    for age in [3600, 600] {
        let newer = leaf(&ca, "a.example", age);
        write_pair(&cert, &key, &newer);
        until("the newer pair's mark written", || {
            mark().contains(serial(&newer)).then_some(())
        })
        .await;
    }
    certs.shutdown().await;
}

/// A pair refused by the mark its file holds, deleted, and put back while
/// the state directory cannot be read, is still refused: the directory
/// remembers the mark it read, not only what it served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_put_back_while_its_mark_cannot_be_read_is_refused_by_the_mark_read_before() {
    let (dir, ca, state) = (TempDir::new("dir"), Ca::new(), TempDir::new("marks"));
    let marks = state.join("marks");
    let (cert, key) = (dir.join("a.crt"), dir.join("a.key"));
    let (older, newer) = (leaf(&ca, "a.example", 7200), leaf(&ca, "a.example", 600));
    // Served before a restart: the newer one.
    write_pair(&cert, &key, &newer);
    start_with_marks(&dir, &marks).await.shutdown().await;
    // Restarted on the older one: refused by the file.
    write_pair(&cert, &key, &older);
    let certs = start_with_marks(&dir, &marks).await;
    assert!(refused_as_older(&certs, "a"), "{:?}", certs.health());
    // Deleted; the state directory goes; put back: still refused.
    std::fs::remove_file(&cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    until("a's removal", || certs.pairs().is_empty().then_some(())).await;
    std::fs::rename(&marks, state.join("away")).unwrap();
    std::fs::write(&marks, "not a directory\n").unwrap();
    write_pair(&cert, &key, &older);
    until("the older pair refused again", || {
        (certs.pairs() == ["a"] && refused_as_older(&certs, "a")).then_some(())
    })
    .await;
    assert!(certs.store().current("a").is_none());
    certs.shutdown().await;
}

/// A pair's mark that could not be saved is saved when it can be, even
/// if the pair left meanwhile and came back older (nothing serves then):
/// the mark it had in memory is what is recorded, so a restart still
/// refuses the older pair (before, the mark stayed behind in the file and
/// the restart served the replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_not_saved_is_saved_when_the_pair_comes_back_older() {
    let (dir, ca, state) = (TempDir::new("dir"), Ca::new(), TempDir::new("marks"));
    let marks = state.join("marks");
    let (cert, key) = (dir.join("a.crt"), dir.join("a.key"));
    let (older, newer) = (leaf(&ca, "a.example", 7200), leaf(&ca, "a.example", 600));
    write_pair(&cert, &key, &older);
    let certs = start_with_marks(&dir, &marks).await;
    let mark = || std::fs::read_to_string(marks.join("a.mark")).unwrap();
    assert!(mark().contains(serial(&older)));

    // The state directory cannot be written while the newer pair arrives.
    std::fs::rename(&marks, state.join("away")).unwrap();
    std::fs::write(&marks, "not a directory\n").unwrap();
    write_pair(&cert, &key, &newer);
    until("the newer pair served", || {
        let current = certs.store().current("a")?;
        (current.serial == serial(&newer)).then_some(())
    })
    .await;
    // It leaves; the state directory comes back, still holding the older
    // mark; the older pair is put back: refused by the mark in memory,
    // which is saved though nothing serves.
    std::fs::remove_file(&cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    until("a's removal", || {
        certs.store().current("a").is_none().then_some(())
    })
    .await;
    std::fs::remove_file(&marks).unwrap();
    std::fs::rename(state.join("away"), &marks).unwrap();
    assert!(mark().contains(serial(&older)));
    write_pair(&cert, &key, &older);
    until("the older pair refused", || {
        refused_as_older(&certs, "a").then_some(())
    })
    .await;
    until("the newer mark saved", || {
        mark().contains(serial(&newer)).then_some(())
    })
    .await;
    certs.shutdown().await;

    // Restarted on the older pair: still refused.
    let certs = start_with_marks(&dir, &marks).await;
    assert!(certs.store().current("a").is_none());
    assert!(refused_as_older(&certs, "a"), "{:?}", certs.health());
    certs.shutdown().await;
}

/// A pair past its renewal time is looked for again as a rotator's
/// source is: on retries with backoff (from 100 ms doubling to 400 ms in
/// these tests), not in a hot loop, so a renewal whose file event never
/// came (no watch at all here) still goes live; once the pair is renewed,
/// the retries stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_pair_is_looked_for_again_with_backoff_as_a_rotators_source_is() {
    let (dir, ca) = (TempDir::new("dir-overdue"), Ca::new());
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    // Ten days left of ninety: past its renewal time (a third left).
    let overdue = ca.issue(
        Leaf::default()
            .names(&["a.example"])
            .lifetime(now - 80 * day, now + 10 * day),
    );
    write_pair(&dir.join("a.crt"), &dir.join("a.key"), &overdue);
    // No events, and a poll that never comes within the test.
    let options = file_options().watch(WatchMode::Poll {
        every: Duration::from_secs(3600),
    });
    let certs = start_with(&dir, options).await;
    let mut events = certs.subscribe();
    let serving = || certs.health().certificates[0].serial.clone();
    assert_eq!(serving(), serial(&overdue));
    // Unchanged while due: looked for again, with backoff.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reads = attempts(&mut events);
    assert!(
        (1..=15).contains(&reads),
        "{reads} reads of an unchanged overdue pair in 1.5 s, retrying from 100 ms"
    );
    // Renewed without an event: found on a retry.
    let renewed = leaf(&ca, "a.example", 0);
    write_pair(&dir.join("a.crt"), &dir.join("a.key"), &renewed);
    until("the renewed pair served", || {
        (serving() == serial(&renewed)).then_some(())
    })
    .await;
    // Not due any more: no more reads.
    tokio::time::sleep(Duration::from_millis(200)).await;
    attempts(&mut events);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(attempts(&mut events), 0, "reads of a renewed pair");
    certs.shutdown().await;
}

/// The attempts `events` told of since last asked.
fn attempts(events: &mut tokio::sync::broadcast::Receiver<RotationEvent>) -> usize {
    std::iter::from_fn(|| events.try_recv().ok())
        .filter(|event| matches!(event, RotationEvent::Attempted { .. }))
        .count()
}

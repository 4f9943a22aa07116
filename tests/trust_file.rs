//! A client-CA bundle on disk (TrustFile) behind an mTLS server: swapped by
//! rename and by the Kubernetes `..data` dance, bad versions refused with
//! the last good trust kept, and resumption that follows trust, not
//! certificates.

#![cfg(all(unix, feature = "file"))]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use certrotate::source::TrustFile;
use certrotate::{FileSource, Policy, Rotator};
use common::{client_leaf, request, resuming_client, Ca, TempDir, HOST};
use common::{file_options, write_atomic, WITHIN};

/// Polls `probe` until it holds.
async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Setup {
    dir: TempDir,
    server_ca: Ca,
    client_ca: TrustFile,
    rotator: Rotator,
    server: common::Server,
}

/// An mTLS server whose certificate comes from `dir/tls.*` and whose client
/// trust comes from `ca_path` (written with `first` by the caller).
async fn setup(dir: TempDir, ca_path: &Path) -> Setup {
    let server_ca = Ca::new_named("server CA");
    let issued = server_ca.issue(common::Leaf::default());
    write_atomic(&dir.join("tls.crt"), &issued.cert_pem);
    write_atomic(&dir.join("tls.key"), &issued.key_pem);
    let source = FileSource::pair(dir.join("tls.crt"), dir.join("tls.key")).options(file_options());
    let policy = Policy::builder().server_name(HOST).build().unwrap();
    let rotator = Rotator::builder(source, policy).start().await.unwrap();
    let client_ca = TrustFile::open(ca_path, file_options()).await.unwrap();
    let config = rotator
        .server_config_with_client_auth(&client_ca.trust())
        .unwrap();
    let server = common::serve(Arc::new(config)).await;
    Setup {
        dir,
        server_ca,
        client_ca,
        rotator,
        server,
    }
}

impl Setup {
    fn client(&self, ca: &Ca, serial: u64) -> Arc<rustls::ClientConfig> {
        resuming_client(&self.server_ca, &client_leaf(ca, serial))
    }

    /// Waits until `ok` gets in and `refused` does not.
    async fn until_trusted(
        &self,
        ok: &Arc<rustls::ClientConfig>,
        refused: &Arc<rustls::ClientConfig>,
    ) {
        let addr = self.server.addr;
        eventually("the new trust", async || {
            request(ok, addr).await.is_ok() && request(refused, addr).await.is_err()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_ca_swapped_by_rename_then_kubernetes_layout() {
    let (one, two) = (
        Ca::new_named("client CA one"),
        Ca::new_named("client CA two"),
    );
    let dir = TempDir::new("trust");
    let ca_file = dir.join("client-ca.pem");
    write_atomic(&ca_file, &one.pem);
    let s = setup(dir, &ca_file).await;
    let (c1, c2) = (s.client(&one, 1), s.client(&two, 2));
    s.until_trusted(&c1, &c2).await;

    // mv over the file.
    write_atomic(&ca_file, &two.pem);
    s.until_trusted(&c2, &c1).await;
    assert_eq!(s.client_ca.last_error(), None);

    // A Kubernetes ConfigMap/Secret mount, swapped three times.
    let mount = s.dir.join("mount");
    std::fs::create_dir(&mount).unwrap();
    let swap = |generation: u32, pem: &str| {
        let data = mount.join(format!("..2026_{generation}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("ca.crt"), pem).unwrap();
        std::os::unix::fs::symlink(format!("..2026_{generation}"), mount.join("..data_tmp"))
            .unwrap();
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
        if generation > 0 {
            std::fs::remove_dir_all(mount.join(format!("..2026_{}", generation - 1))).unwrap();
        }
    };
    swap(0, &one.pem);
    std::os::unix::fs::symlink("..data/ca.crt", mount.join("ca.crt")).unwrap();
    let k8s = TrustFile::open(mount.join("ca.crt"), file_options())
        .await
        .unwrap();
    let config = s
        .rotator
        .server_config_with_client_auth(&k8s.trust())
        .unwrap();
    let server = common::serve(Arc::new(config)).await;
    for (generation, (ok, refused)) in [(&c2, &c1), (&c1, &c2), (&c2, &c1)].into_iter().enumerate()
    {
        let pem = if std::ptr::eq(ok, &c2) {
            &two.pem
        } else {
            &one.pem
        };
        swap(generation as u32 + 1, pem);
        eventually("the swapped trust", async || {
            request(ok, server.addr).await.is_ok() && request(refused, server.addr).await.is_err()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_bundles_are_refused_and_the_last_good_trust_stays() {
    let one = Ca::new_named("client CA one");
    let dir = TempDir::new("trust-bad");
    let ca_file = dir.join("client-ca.pem");
    write_atomic(&ca_file, &one.pem);
    let s = setup(dir, &ca_file).await;
    let c1 = s.client(&one, 1);
    assert_eq!(request(&c1, s.server.addr).await, Ok(false));
    let generation = s.client_ca.trust().generation();

    type Spoil<'a> = &'a dyn Fn(&Path);
    let cases: [(&str, Spoil, &str); 5] = [
        ("empty", &|p| write_atomic(p, ""), "no CA certificate"),
        (
            "not PEM",
            &|p| write_atomic(p, "this is not a certificate\n"),
            "no CA certificate",
        ),
        (
            "not a CA certificate",
            &|p| {
                write_atomic(
                    p,
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                )
            },
            "cannot be used",
        ),
        (
            "a directory",
            &|p| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            },
            "is a directory, not a regular file",
        ),
        (
            "over the size limit",
            &|p| {
                let big = std::fs::File::create(p.with_extension("big")).unwrap();
                big.set_len(2 << 20).unwrap();
                std::fs::rename(p.with_extension("big"), p).unwrap();
            },
            "over the 1 MiB limit",
        ),
    ];
    for (what, spoil, expected) in cases {
        spoil(&ca_file);
        let client_ca = &s.client_ca;
        eventually(what, async || client_ca.last_error().is_some()).await;
        let error = s.client_ca.last_error().unwrap();
        assert!(error.contains(expected), "{what}: {error}");
        assert_eq!(s.client_ca.trust().generation(), generation, "{what}");
        assert!(
            request(&c1, s.server.addr).await.is_ok(),
            "{what}: the old trust is gone"
        );
        // Back to good.
        if ca_file.is_dir() {
            std::fs::remove_dir(&ca_file).unwrap();
        }
        write_atomic(&ca_file, &one.pem);
        eventually("recovery", async || client_ca.last_error().is_none()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resumption_survives_a_certificate_rotation_but_not_a_trust_change() {
    let (one, other) = (Ca::new_named("client CA one"), Ca::new_named("another CA"));
    let dir = TempDir::new("trust-resume");
    let ca_file = dir.join("client-ca.pem");
    write_atomic(&ca_file, &one.pem);
    let s = setup(dir, &ca_file).await;
    let c1 = s.client(&one, 1);
    assert_eq!(request(&c1, s.server.addr).await, Ok(false));
    assert_eq!(request(&c1, s.server.addr).await, Ok(true));

    // The server certificate rotates; the trust does not: sessions resume.
    let newer = std::time::SystemTime::now() - Duration::from_secs(60);
    let fresh = s.server_ca.issue(common::Leaf::default().valid_from(newer));
    write_atomic(&s.dir.join("tls.crt"), &fresh.cert_pem);
    write_atomic(&s.dir.join("tls.key"), &fresh.key_pem);
    let rotator = &s.rotator;
    let serial = fresh.bundle.info().serial.clone();
    eventually("the server rotation", async || {
        rotator.current().unwrap().serial == serial
    })
    .await;
    assert_eq!(
        request(&c1, s.server.addr).await,
        Ok(true),
        "a session did not survive a certificate rotation"
    );

    // The trust changes (a CA is added; c1 is still trusted): no resumption
    // across it, a full handshake instead, then resumption under the new trust.
    let generation = s.client_ca.trust().generation();
    write_atomic(&ca_file, &format!("{}{}", one.pem, other.pem));
    let trust = s.client_ca.trust();
    eventually("the new trust", async || trust.generation() > generation).await;
    assert_eq!(
        request(&c1, s.server.addr).await,
        Ok(false),
        "a session outlived its trust"
    );
    assert_eq!(request(&c1, s.server.addr).await, Ok(true));
}

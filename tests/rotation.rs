//! Rotation over real sockets: under load, across established connections,
//! with resumption, rollback and SNI.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use certrotate::source::StaticSource;
use certrotate::{CertStore, Policy, RotationEvent, Rotator};
use common::{Ca, Leaf, HOST};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

fn policy() -> Policy {
    Policy::builder().server_name(HOST).build().unwrap()
}

/// When each certificate went live: (serial, swap began, swap finished).
type Timeline = Arc<Mutex<Vec<(String, Instant, Instant)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_handshakes_while_rotating_every_5ms() {
    const HANDSHAKES: usize = 5_000;
    const CLIENTS: usize = 32;
    let ca = Arc::new(Ca::new());
    let first = ca.nth(0);
    let source = StaticSource::new(first.clone());
    let rotator = Arc::new(
        Rotator::builder(source.clone(), policy())
            .start()
            .await
            .unwrap(),
    );
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let timeline: Timeline = Arc::new(Mutex::new(vec![(
        first.info().serial.clone(),
        Instant::now(),
        Instant::now(),
    )]));

    // Rotate every 5 ms until the clients are done.
    let done = Arc::new(tokio::sync::Notify::new());
    let rotating = {
        let (ca, rotator, timeline, done) =
            (ca.clone(), rotator.clone(), timeline.clone(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0;
            loop {
                tokio::select! {
                    _ = done.notified() => return n,
                    _ = tick.tick() => {}
                }
                n += 1;
                let next = ca.nth(n);
                let serial = next.info().serial.clone();
                let began = Instant::now();
                common::push_and_rotate(&rotator, &source, next).await;
                timeline
                    .lock()
                    .unwrap()
                    .push((serial, began, Instant::now()));
            }
        })
    };

    let client = common::client_config(&ca);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, addr) = (client.clone(), server.addr);
        clients.spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..HANDSHAKES / CLIENTS + 1 {
                let start = Instant::now();
                let serial = common::serial_seen(&client, addr, HOST).await;
                seen.push((serial, start, Instant::now()));
            }
            seen
        });
    }
    let mut seen = Vec::new();
    while let Some(result) = clients.join_next().await {
        seen.extend(result.unwrap());
    }
    done.notify_one();
    let rotations = rotating.await.unwrap();

    let failed: Vec<_> = seen
        .iter()
        .filter_map(|(r, _, _)| r.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed handshakes, first: {}",
        failed.len(),
        failed[0]
    );
    assert!(seen.len() >= HANDSHAKES);
    assert!(rotations >= 20, "only {rotations} rotations happened");

    // Each handshake saw a certificate that was serving at some moment
    // between the handshake's start and end.
    let timeline = timeline.lock().unwrap();
    let mut distinct = std::collections::HashSet::new();
    for (serial, start, end) in &seen {
        let serial = serial.as_ref().unwrap();
        distinct.insert(serial.clone());
        let i = timeline
            .iter()
            .position(|(s, _, _)| s == serial)
            .expect("served certificate was installed");
        let live_from = timeline[i].1;
        let live_until = timeline.get(i + 1).map(|next| next.2);
        assert!(live_from <= *end, "saw {serial} before it was installed");
        assert!(
            live_until.is_none_or(|until| until >= *start),
            "saw {serial} after it was replaced"
        );
    }
    assert!(
        distinct.len() > 10,
        "handshakes saw only {} certificates",
        distinct.len()
    );
    println!(
        "{} handshakes, {rotations} rotations, {} certificates seen",
        seen.len(),
        distinct.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_established_connection_survives_100_rotations() {
    let ca = Ca::new();
    let first = ca.nth(0);
    let common::Serving {
        source,
        rotator,
        server,
        client,
    } = common::serving(&ca, policy(), first.clone()).await;

    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut tls = TlsConnector::from(client.clone())
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap();
    for n in 1..=100 {
        common::push_and_rotate(&rotator, &source, ca.nth(n)).await;
        let message = format!("message {n}");
        tls.write_all(message.as_bytes()).await.unwrap();
        let mut buf = vec![0; message.len()];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, message.as_bytes());
    }
    let (_, conn) = tls.get_ref();
    assert_eq!(
        common::serial_of(&conn.peer_certificates().unwrap()[0]),
        first.info().serial
    );
    let newest = rotator.current().unwrap().serial.clone();
    assert_ne!(newest, first.info().serial);
    assert_eq!(
        common::serial_seen(&client, server.addr, HOST)
            .await
            .unwrap(),
        newest
    );
    assert_eq!(rotator.health().rotations, 101);
}

#[tokio::test]
async fn tls13_resumption_survives_a_rotation() {
    let ca = Ca::new();
    let source = StaticSource::new(ca.nth(0));
    let rotator = Rotator::builder(source.clone(), policy())
        .start()
        .await
        .unwrap();
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let client = Arc::new(
        common::client_builder()
            .with_root_certificates(ca.roots())
            .with_no_client_auth(),
    );

    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut tls = TlsConnector::from(client.clone())
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap();
        // An echo round trip lets the client read the session tickets.
        tls.write_all(b"hi").await.unwrap();
        let mut buf = [0; 2];
        tls.read_exact(&mut buf).await.unwrap();
        let (_, conn) = tls.get_ref();
        (
            conn.handshake_kind().unwrap(),
            conn.protocol_version().unwrap(),
        )
    };
    assert_eq!(
        connect().await,
        (
            rustls::HandshakeKind::Full,
            rustls::ProtocolVersion::TLSv1_3
        )
    );
    common::push_and_rotate(&rotator, &source, ca.nth(10)).await;
    assert_eq!(connect().await.0, rustls::HandshakeKind::Resumed);
}

#[tokio::test]
async fn rollback_restores_the_previous_certificate_at_once() {
    let ca = Ca::new();
    let (a, b) = (ca.nth(0), ca.nth(10));
    let common::Serving {
        source,
        rotator,
        server,
        client,
    } = common::serving(&ca, policy(), a.clone()).await;
    common::push_and_rotate(&rotator, &source, b.clone()).await;
    assert_eq!(
        common::serial_seen(&client, server.addr, HOST)
            .await
            .unwrap(),
        b.info().serial
    );

    let mut events = rotator.subscribe();
    let restored = rotator.rollback().unwrap();
    assert_eq!(restored.serial, a.info().serial);
    assert_eq!(
        common::serial_seen(&client, server.addr, HOST)
            .await
            .unwrap(),
        a.info().serial
    );
    match events.recv().await.unwrap() {
        RotationEvent::RolledBack { from, to, .. } => {
            assert_eq!(
                (from.serial.as_str(), to.serial.as_str()),
                (b.info().serial.as_str(), a.info().serial.as_str())
            );
        }
        other => panic!("{other:?}"),
    }
    // Nothing older is kept: a second rollback says so.
    let err = rotator.rollback().unwrap_err();
    assert!(err.to_string().contains("no earlier certificate"), "{err}");
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_default() {
    let ca = Ca::new();
    let store = CertStore::new();
    let api = ca
        .issue(Leaf::default().names(&["api.example.com", HOST]))
        .bundle;
    let wild = ca
        .issue(Leaf::default().names(&["*.svc.example.com"]))
        .bundle;
    let any = Policy::default();
    let a = Rotator::builder(StaticSource::new(api.clone()), any.clone())
        .store(store.clone())
        .start()
        .await
        .unwrap();
    let _b = Rotator::builder(StaticSource::new(wild.clone()), any)
        .store(store.clone())
        .slot("svc")
        .start()
        .await
        .unwrap();
    let server = common::serve(Arc::new(a.server_config().unwrap())).await;
    let client = common::client_config(&ca);

    let resolver = store.resolver();
    let serial = |name: Option<&str>| common::serial_of(&resolver.lookup(name).unwrap().cert[0]);
    assert_eq!(serial(Some("api.example.com")), api.info().serial);
    assert_eq!(serial(Some("x.svc.example.com")), wild.info().serial);
    assert_eq!(
        serial(Some("a.b.svc.example.com")),
        api.info().serial,
        "wildcards cover one label"
    );
    assert_eq!(
        serial(Some("unknown.example.com")),
        api.info().serial,
        "default slot"
    );
    assert_eq!(serial(None), api.info().serial);

    assert_eq!(
        common::serial_seen(&client, server.addr, "x.svc.example.com")
            .await
            .unwrap(),
        wild.info().serial
    );
    assert_eq!(
        common::serial_seen(&client, server.addr, "api.example.com")
            .await
            .unwrap(),
        api.info().serial
    );
    assert_eq!(store.health().certificates.len(), 2);

    assert!(store.remove("svc"));
    assert_eq!(serial(Some("x.svc.example.com")), api.info().serial);
}

#[tokio::test]
async fn start_fails_without_a_good_first_certificate() {
    let ca = Ca::new();
    let now = SystemTime::now();
    let expired = ca.issue(
        Leaf::default().lifetime(now - Duration::from_secs(100), now - Duration::from_secs(1)),
    );
    let err = Rotator::builder(StaticSource::new(expired.bundle), policy())
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, certrotate::RotateError::Refused(e) if e.reason().code() == "expired"),
        "{err}"
    );
    let err = Rotator::builder(StaticSource::empty(), policy())
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "static source has no certificate yet");
}

/// A source that takes a while to answer, and says whether it has its
/// certificate at hand (a stored one) or must order it first.
#[derive(Clone)]
struct Slow {
    bundle: certrotate::CertBundle,
    at_hand: bool,
    delay: Duration,
}

impl certrotate::CertSource for Slow {
    async fn fetch(&self) -> Result<certrotate::CertBundle, certrotate::SourceError> {
        tokio::time::sleep(self.delay).await;
        Ok(self.bundle.clone())
    }

    fn attach(&self, _: &certrotate::CertStore) -> certrotate::source::Start {
        let at_hand = self.at_hand;
        certrotate::source::Start::ask(async move { at_hand })
    }

    fn describe(&self) -> String {
        "a slow source".into()
    }
}

/// `launch` installs a certificate at hand before it returns, however long
/// the fetch takes, so the listener started next serves it from its first
/// connection; one that must be ordered does not hold the listener back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_serves_what_is_at_hand_from_the_first_connection() {
    let ca = Ca::new();
    let stored = Slow {
        bundle: ca.nth(0),
        at_hand: true,
        delay: Duration::from_millis(300),
    };
    let rotator = Rotator::builder(stored.clone(), policy()).launch().await;
    assert_eq!(
        rotator.current().map(|c| c.serial.clone()),
        Some(stored.bundle.info().serial.clone())
    );
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let seen = common::serial_seen(&common::client_config(&ca), server.addr, HOST)
        .await
        .unwrap();
    assert_eq!(seen, stored.bundle.info().serial);

    // Nothing at hand: launch returns at once, the certificate follows.
    let ordered = Slow {
        at_hand: false,
        delay: Duration::from_secs(1),
        ..stored
    };
    let rotator = Rotator::builder(ordered, policy()).launch().await;
    assert!(rotator.current().is_none(), "launch waited for the order");
    let cert = common::rotation_from(
        &mut rotator.subscribe(),
        &ca.nth(1).info().clone(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(cert.serial, rotator.current().unwrap().serial);
}

/// In a store of several slots, one slot's success does not hide another's
/// failure: health's `last_error` stays until the failing slot is fixed.
#[tokio::test]
async fn one_slots_success_does_not_hide_anothers_failure() {
    let ca = Ca::new();
    let store = CertStore::new();
    let (a, b) = (StaticSource::new(ca.nth(0)), StaticSource::new(ca.nth(1)));
    let start = |source: &StaticSource, slot: &str| {
        Rotator::builder(source.clone(), policy())
            .store(store.clone())
            .slot(slot)
            .start()
    };
    let (rotator_a, rotator_b) = (start(&a, "a").await.unwrap(), start(&b, "b").await.unwrap());

    // Slot a gets a certificate for another name: refused.
    a.push(
        ca.issue(Leaf::default().names(&["elsewhere.example"]))
            .bundle,
    );
    rotator_a.rotate_now().await.unwrap_err();
    assert!(store.health().last_error.is_some());
    // Slot b rotates fine afterwards: a's failure is still reported.
    common::push_and_rotate(&rotator_b, &b, ca.nth(2)).await;
    let health = store.health();
    assert!(
        health
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("does not cover")),
        "{:?}",
        health.last_error
    );
    assert_eq!(health.last_error_code, Some("name_not_covered"));
    // Fixed: nothing left to report.
    common::push_and_rotate(&rotator_a, &a, ca.nth(3)).await;
    assert_eq!(store.health().last_error, None);
}

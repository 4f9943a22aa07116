//! DNS-01 by RFC 2136 dynamic updates, against a real BIND 9 (started on
//! 127.0.0.1, authoritative for the test zones, taking TXT updates signed
//! with a TSIG key only) and a real Pebble validating against it.

#![cfg(feature = "rfc2136")]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certrotate::acme::rfc2136::{
    Rcode, Rfc2136Error, Rfc2136Solver, TsigAlgorithm, TsigKey, TsigRefusal,
};
use certrotate::acme::Dns01Solver;
use certrotate::{AcmeSource, CertStore, Policy, Rotator};
use common::dns::{Bind, Zone};
use common::pebble::{client, first_certificate, Config, Pebble};

/// The zones of every test: `example.test` (the names, updatable),
/// `challenges.test` (where delegated records go, updatable) and
/// `delegated.test` (read-only: its `_acme-challenge.api` is a CNAME into
/// `challenges.test`). With a secondary, `example.test` has two name
/// servers.
fn zones(secondary: bool) -> Vec<Zone> {
    vec![
        Zone::new("example.test", secondary).record("@ A 127.0.0.1"),
        Zone::new("challenges.test", false),
        Zone::new("delegated.test", false)
            .record("api A 127.0.0.1")
            .record("_acme-challenge.api CNAME api.challenges.test.")
            .read_only(),
    ]
}

fn key(bind: &Bind) -> TsigKey {
    TsigKey::from_file(&bind.key_file).unwrap()
}

/// A solver writing to `primary`, with short waits for tests.
fn solver(primary: &Bind) -> certrotate::acme::rfc2136::Rfc2136Builder {
    Rfc2136Solver::builder(primary.addr, key(primary))
        .timeout(Duration::from_secs(2))
        .propagation_timeout(Duration::from_secs(40))
}

/// Pebble, resolving every name through `dns`.
fn pebble(dns: SocketAddr, validity: Duration) -> Pebble {
    Pebble::start(Config {
        dns_server: Some(dns),
        validity,
        ..Config::default()
    })
}

fn acme(pebble: &Pebble, names: &[&str], solver: Rfc2136Solver) -> AcmeSource {
    AcmeSource::builder(&pebble.directory, names.iter().copied())
        .directory_root(&pebble.https_root)
        .storage(pebble.storage())
        .dns_01(solver)
        .build()
}

fn rotator(source: AcmeSource, name: &str) -> Rotator {
    let policy = Policy::builder().server_name(name).build().unwrap();
    Rotator::builder(source, policy)
        .store(CertStore::new())
        .retry_backoff(Duration::from_millis(500), Duration::from_secs(2))
        .spawn()
}

/// Waits until no TXT record is left in any test zone of `bind` (a removal
/// that failed is tried again in the background): panics with what is left
/// after `within`.
async fn until_clean(bind: &Bind, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left: Vec<String> = ["example.test", "challenges.test", "delegated.test"]
            .into_iter()
            .flat_map(|zone| bind.txt_records(zone))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "records left in the zones: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn rfc2136_error(error: &certrotate::source::BoxError) -> &Rfc2136Error {
    error
        .downcast_ref::<Rfc2136Error>()
        .unwrap_or_else(|| panic!("not an RFC 2136 error: {error}"))
}

/// Two values at one name (an apex and its wildcard): each is added and
/// removed alone, the other untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_values_at_one_name_are_added_and_removed_one_by_one() {
    let primary = Bind::primary(zones(false));
    let solver = solver(&primary).build();
    let name = "_acme-challenge.example.test";
    solver.present("example.test", "first-value").await.unwrap();
    solver
        .present("example.test", "second-value")
        .await
        .unwrap();
    assert_eq!(primary.txt(name), ["first-value", "second-value"]);
    solver.cleanup("example.test", "first-value").await.unwrap();
    assert_eq!(primary.txt(name), ["second-value"]);
    solver
        .cleanup("example.test", "second-value")
        .await
        .unwrap();
    until_clean(&primary, Duration::ZERO).await;
}

/// The same value presented again before the first cleanup (an attempt
/// dropped by the fetch timeout, the next resuming the order): the late
/// cleanup of the first leaves the record to the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_cleanup_leaves_the_record_to_the_next_attempt() {
    let primary = Bind::primary(zones(false));
    let solver = solver(&primary).build();
    let name = "_acme-challenge.example.test";
    solver.present("example.test", "v").await.unwrap();
    solver.present("example.test", "v").await.unwrap();
    solver.cleanup("example.test", "v").await.unwrap();
    assert_eq!(
        primary.txt(name),
        ["v"],
        "removed while the next attempt needs it"
    );
    solver.cleanup("example.test", "v").await.unwrap();
    until_clean(&primary, Duration::ZERO).await;
}

/// A name server with an address this host cannot reach (an IPv6 one on
/// an IPv4-only host; here a discard-only prefix, which a host with an
/// IPv6 default route learns is unreachable only after seconds, past the
/// solver's timeout) besides one it can: the record is checked where it
/// can be, and the order is not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_address_of_a_name_server_is_not_waited_for() {
    let mut zones = zones(false);
    zones[0] = Zone::new("example.test", false).record("ns1 AAAA 100::1");
    let primary = Bind::primary(zones);
    let solver = solver(&primary)
        .timeout(Duration::from_millis(500))
        .propagation_timeout(Duration::from_secs(5))
        .build();
    solver.present("example.test", "v").await.unwrap();
    solver.cleanup("example.test", "v").await.unwrap();
    until_clean(&primary, Duration::ZERO).await;
}

/// A name server with a second address that takes the connection and
/// never answers (an instance hung, or reloading the zone) is waited for,
/// not passed on its first address alone: the CA's resolver may ask the
/// hung one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_connects_and_hangs_is_waited_for() {
    let mut zones = zones(false);
    zones[0] = Zone::new("example.test", false).record("ns1 A 127.0.0.2");
    let primary = Bind::primary(zones);
    let hung = tokio::net::TcpListener::bind(("127.0.0.2", primary.addr.port()))
        .await
        .unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((connection, _)) = hung.accept().await {
            open.push(connection);
        }
    });
    let solver = solver(&primary)
        .timeout(Duration::from_millis(500))
        .propagation_timeout(Duration::from_secs(3))
        .build();
    let error = solver.present("example.test", "v").await.unwrap_err();
    match rfc2136_error(&error) {
        Rfc2136Error::NotPropagated { lagging, .. } => {
            assert!(lagging[0].contains("127.0.0.2"), "{lagging:?}");
        }
        other => panic!("{other}"),
    }
    held.abort();
    solver.cleanup("example.test", "v").await.unwrap();
    until_clean(&primary, Duration::ZERO).await;
}

/// Concurrent orders for different names (and two values at one of them)
/// on one solver: every record served at once, every one removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_for_different_names() {
    let primary = Bind::primary(zones(false));
    let solver = solver(&primary).build();
    let records = [
        ("example.test", "apex"),
        ("example.test", "wildcard"),
        ("a.example.test", "a"),
        ("b.example.test", "b"),
        ("api.delegated.test", "delegated"),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for (domain, value) in records {
        let solver = solver.clone();
        tasks.spawn(async move {
            solver
                .present(domain, value)
                .await
                .map_err(|e| e.to_string())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(
        primary.txt("_acme-challenge.example.test"),
        ["apex", "wildcard"]
    );
    assert_eq!(primary.txt("_acme-challenge.a.example.test"), ["a"]);
    assert_eq!(primary.txt("_acme-challenge.b.example.test"), ["b"]);
    assert_eq!(primary.txt("api.challenges.test"), ["delegated"]);
    for (domain, value) in records {
        let solver = solver.clone();
        tasks.spawn(async move {
            solver
                .cleanup(domain, value)
                .await
                .map_err(|e| e.to_string())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    until_clean(&primary, Duration::ZERO).await;
}

/// One certificate for the apex and its wildcard: two authorizations, two
/// TXT values at `_acme-challenge.example.test` at once; nothing left after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issues_for_an_apex_and_its_wildcard() {
    let primary = Bind::primary(zones(false));
    let pebble = pebble(primary.addr, Duration::from_secs(3600));
    let names = ["example.test", "*.example.test"];
    let rotator = rotator(
        acme(&pebble, &names, solver(&primary).build()),
        "example.test",
    );
    let cert = first_certificate(&rotator).await;
    let mut dns_names = cert.dns_names.clone();
    dns_names.sort();
    assert_eq!(dns_names, ["*.example.test", "example.test"]);
    until_clean(&primary, Duration::from_secs(10)).await;
}

/// `_acme-challenge.api.delegated.test` is a CNAME into another zone, and
/// the key may not write in `delegated.test`: the record goes where the
/// CNAME points, in the zone its SOA names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_where_a_cname_delegates() {
    let primary = Bind::primary(zones(false));
    // Pebble asks a resolver, which follows the CNAME into the other zone.
    let resolver = Bind::resolver(&primary);
    let pebble = pebble(resolver.addr, Duration::from_secs(3600));
    let before = primary.serial("delegated.test");
    let rotator = rotator(
        acme(&pebble, &["api.delegated.test"], solver(&primary).build()),
        "api.delegated.test",
    );
    let cert = first_certificate(&rotator).await;
    assert_eq!(cert.dns_names, ["api.delegated.test"]);
    // Written (and removed) in challenges.test; delegated.test untouched.
    assert!(
        primary.serial("challenges.test") >= 3,
        "nothing was written where the CNAME points"
    );
    assert_eq!(primary.serial("delegated.test"), before);
    until_clean(&primary, Duration::from_secs(10)).await;
}

/// A secondary that learns of changes only at its refresh (every 10 s):
/// the solver waits until it serves the record, so Pebble, which asks the
/// secondary, validates at the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waits_for_a_lagging_secondary() {
    let primary = Bind::primary(zones(true));
    let secondary = Bind::secondary(&primary, &["example.test"], Duration::from_secs(10));
    let pebble = pebble(secondary.addr, Duration::from_secs(3600));
    let solver = solver(&primary)
        .name_server("ns2.example.test", secondary.addr)
        .build();
    let rotator = rotator(acme(&pebble, &["example.test"], solver), "example.test");
    let started = std::time::Instant::now();
    let cert = first_certificate(&rotator).await;
    assert_eq!(cert.dns_names, ["example.test"]);
    // One order, validated once: no failed attempt raced the secondary.
    assert_eq!(
        pebble.orders(),
        1,
        "an attempt failed: {:?}",
        rotator.health().last_error
    );
    eprintln!(
        "issued in {:?} through a lagging secondary",
        started.elapsed()
    );
    until_clean(&primary, Duration::from_secs(10)).await;
}

/// A secondary that never catches up (stopped): `present` gives up after
/// the propagation timeout naming it, and cleanup removes the record.
/// A `present` cancelled while it waits is cleaned up the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_that_never_serves_it_is_named() {
    let primary = Bind::primary(zones(true));
    let secondary = Bind::secondary(&primary, &["example.test"], Duration::from_secs(3600));
    secondary.freeze(true);
    let solver = solver(&primary)
        .name_server("ns2.example.test", secondary.addr)
        .timeout(Duration::from_millis(500))
        .propagation_timeout(Duration::from_secs(3))
        .build();
    let error = solver.present("example.test", "v").await.unwrap_err();
    match rfc2136_error(&error) {
        Rfc2136Error::NotPropagated { zone, lagging, .. } => {
            assert_eq!(zone, "example.test");
            assert_eq!(lagging.len(), 1, "{lagging:?}");
            assert!(lagging[0].contains("ns2.example.test"), "{lagging:?}");
        }
        other => panic!("{other}"),
    }
    solver.cleanup("example.test", "v").await.unwrap();
    until_clean(&primary, Duration::ZERO).await;

    // Cancelled while it waits for the secondary: the record is written,
    // and the cleanup that follows removes it.
    let cancelled = tokio::time::timeout(
        Duration::from_secs(1),
        solver.present("example.test", "cancelled"),
    )
    .await;
    assert!(cancelled.is_err(), "present returned: {cancelled:?}");
    assert_eq!(primary.txt("_acme-challenge.example.test"), ["cancelled"]);
    solver.cleanup("example.test", "cancelled").await.unwrap();
    until_clean(&primary, Duration::ZERO).await;
}

/// Three renewals by DNS-01 while clients handshake without pause: no
/// failed handshake, nothing left in the zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renews_under_load() {
    let primary = Bind::primary(zones(false));
    let pebble = pebble(primary.addr, Duration::from_secs(24));
    let rotator = rotator(
        acme(&pebble, &["example.test"], solver(&primary).build()),
        "example.test",
    );
    let first = first_certificate(&rotator).await;
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let mut events = rotator.subscribe();
    let load = common::load(&client(&pebble), server.addr, "example.test", 2);
    common::renewals_before_expiry(&mut events, first, 3, Duration::from_secs(40)).await;
    let handshakes = load.finish().await;
    assert!(handshakes > 50, "{handshakes} handshakes");
    until_clean(&primary, Duration::from_secs(10)).await;
}

/// The update server hangs (SIGSTOP) when a renewal is due: the update is
/// given up after the timeout, reported naming the server and the zone,
/// the certificate keeps serving; once it answers again the renewal goes
/// through and the record that could not be removed meanwhile is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_dns_server_during_a_renewal() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("certrotate=debug")
        .with_test_writer()
        .try_init();
    let primary = Bind::primary(zones(true));
    // Lookups go to the secondary, as to a resolver apart from the primary.
    let secondary = Bind::secondary(&primary, &["example.test"], Duration::from_secs(1));
    let pebble = pebble(primary.addr, Duration::from_secs(60));
    let solver = solver(&primary)
        .resolver(secondary.addr)
        .name_server("ns2.example.test", secondary.addr)
        .build();
    let rotator = rotator(acme(&pebble, &["example.test"], solver), "example.test");
    let first = first_certificate(&rotator).await;
    primary.freeze(true);

    // The renewal (due at 40% of the lifetime left) fails on the update.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let error = loop {
        let health = rotator.health();
        let error = health.certificates[0]
            .last_error
            .clone()
            .unwrap_or_default();
        if error.contains("did not answer") {
            break error;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failure reported: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(error.contains(&primary.addr.to_string()), "{error}");
    assert!(error.contains("zone example.test"), "{error}");
    assert_eq!(rotator.current().unwrap().serial, first.serial);

    primary.freeze(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while rotator.current().unwrap().serial == first.serial {
        let error = rotator.health().last_error;
        assert!(
            tokio::time::Instant::now() < deadline,
            "not renewed: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(std::time::SystemTime::now() < first.not_after);
    until_clean(&primary, Duration::from_secs(60)).await;
}

/// A wrong secret, a key the server does not know, and a zone whose policy
/// grants nothing: each refused, typed, naming server, zone and rcode, and
/// nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_typed_and_write_nothing() {
    let primary = Bind::primary(zones(false));
    let serial = primary.serial("example.test");
    let right = key(&primary);
    let cases = [
        (
            TsigKey::new("certrotate", TsigAlgorithm::HmacSha256, vec![7; 32]).unwrap(),
            "example.test",
            "example.test",
            Some(TsigRefusal::BadSig),
        ),
        (
            TsigKey::new("nobody", TsigAlgorithm::HmacSha512, vec![7; 64]).unwrap(),
            "example.test",
            "example.test",
            Some(TsigRefusal::BadKey),
        ),
        (right, "other.delegated.test", "delegated.test", None),
    ];
    for (key, domain, expected_zone, tsig) in cases {
        let solver = Rfc2136Solver::builder(primary.addr, key).build();
        let error = solver.present(domain, "v").await.unwrap_err();
        match rfc2136_error(&error) {
            Rfc2136Error::Refused {
                server,
                zone,
                rcode,
                tsig: refusal,
            } => {
                assert_eq!(*server, primary.addr);
                assert_eq!(zone, expected_zone);
                let expected = if tsig.is_some() {
                    Rcode::NOTAUTH
                } else {
                    Rcode::REFUSED
                };
                assert_eq!(*rcode, expected, "{error}");
                assert_eq!(*refusal, tsig, "{error}");
            }
            other => panic!("{other}"),
        }
        solver.cleanup(domain, "v").await.unwrap();
    }
    assert_eq!(
        primary.serial("example.test"),
        serial,
        "something was written"
    );
    until_clean(&primary, Duration::ZERO).await;
}

/// End to end with a wrong secret: the order fails, `last_error` says why
/// (server, zone, NOTAUTH, BADSIG), and the zone is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_secret_is_in_last_error() {
    let primary = Bind::primary(zones(false));
    let pebble = pebble(primary.addr, Duration::from_secs(3600));
    let serial = primary.serial("example.test");
    let wrong = TsigKey::new("certrotate", TsigAlgorithm::HmacSha256, vec![7; 32]).unwrap();
    let solver = Rfc2136Solver::builder(primary.addr, wrong).build();
    let rotator = rotator(acme(&pebble, &["example.test"], solver), "example.test");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let error = loop {
        if let Some(error) = rotator.health().last_error {
            break error;
        }
        assert!(tokio::time::Instant::now() < deadline, "no error reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for part in [
        primary.addr.to_string().as_str(),
        "zone example.test",
        "NOTAUTH",
        "BADSIG",
    ] {
        assert!(error.contains(part), "{part:?} not in {error}");
    }
    assert!(rotator.current().is_none());
    assert_eq!(primary.serial("example.test"), serial);
}

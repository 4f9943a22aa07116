//! On-demand issuance against a real ACME server (Pebble): names ordered at
//! their first handshake, one order per name, refusals, abuse limits, the
//! storage as the cache behind memory, renewal, and a CA that stops.

#![cfg(feature = "acme")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use certrotate::acme::FileStorage;
use certrotate::on_demand::{AllowList, OnDemandBuilder};
use certrotate::{AcmeSource, OnDemand, TlsListener};
use common::pebble::{client, Config, Pebble};
use common::TempDir;

const SUFFIX: &str = "on-demand.test";

/// On-demand certificates from `pebble` for names under SUFFIX, kept in
/// `storage`; waiting up to 20 s. Every client of these tests is 127.0.0.1,
/// so its budget of new names is raised out of the way.
fn on_demand(pebble: &Pebble, storage: &TempDir) -> OnDemandBuilder {
    let acme = template(pebble, storage).timeout(Duration::from_secs(10));
    OnDemand::builder(acme, AllowList::new().suffix(SUFFIX))
        .wait(Duration::from_secs(20))
        .new_names_per_client(1000, Duration::from_secs(60))
}

/// The ACME template of these tests: `pebble`, TLS-ALPN-01, `storage`.
fn template(pebble: &Pebble, storage: &TempDir) -> certrotate::acme::AcmeBuilder {
    AcmeSource::template(&pebble.directory)
        .directory_root(&pebble.https_root)
        .storage(FileStorage::new(storage.path()))
        .tls_alpn_01()
}

/// The allow list of SUFFIX as a hook that counts how often it is asked.
fn counted_allow_list() -> (Arc<AtomicUsize>, impl certrotate::on_demand::Decide) {
    let asked = Arc::new(AtomicUsize::new(0));
    let allowed = AllowList::new().suffix(SUFFIX);
    let hook = {
        let asked = asked.clone();
        move |name: String| {
            asked.fetch_add(1, Ordering::Relaxed);
            let allowed = allowed.allows(&name);
            async move { allowed }
        }
    };
    (asked, hook)
}

/// Serves `on_demand` on Pebble's TLS-ALPN-01 port (so that Pebble
/// validates against it), echoing what clients send.
async fn serve(pebble: &Pebble, on_demand: &OnDemand) -> common::Server {
    let tcp = pebble.listen(pebble.config.tls_port).await;
    let config = Arc::new(on_demand.server_config().unwrap());
    // The clients and Pebble's validator all come from 127.0.0.1: the
    // default share per client (64 handshakes in flight) would close some
    // of the validator's connections while 20 first handshakes wait, and
    // fail their orders.
    let listener = TlsListener::new(tcp, config)
        .max_pending_handshakes_per_client(1000)
        .on_demand(on_demand.clone());
    common::serve_listener(listener)
}

fn name(i: usize) -> String {
    format!("n{i}.{SUFFIX}")
}

/// Handshakes as `name`; the serial of the certificate served (the client
/// checks it is valid for `name` under Pebble's root).
async fn seen(
    trust: &Arc<rustls::ClientConfig>,
    server: &common::Server,
    name: &str,
) -> Result<String, String> {
    common::serial_seen(trust, server.addr, name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_names_get_twenty_orders_and_thirty_handshakes_for_one_share_one() {
    let pebble = Pebble::start(Config::default());
    let storage = TempDir::new("on-demand");
    let on_demand = on_demand(&pebble, &storage)
        .max_orders_in_flight(20)
        .orders_per_window(100, Duration::from_secs(60))
        .build();
    let server = serve(&pebble, &on_demand).await;
    let trust = client(&pebble);

    // 20 different names at once: each first handshake is served its own.
    let mut events = on_demand.store().subscribe();
    let serials = all_at_once(&trust, &server, (0..20).map(name)).await;
    for (i, serial) in serials.iter().enumerate() {
        assert!(
            serial.is_ok(),
            "{}: {serial:?} {:?}; {:?}",
            name(i),
            on_demand.stats(),
            refusals(&mut events)
        );
    }
    assert_eq!(pebble.orders(), 20);
    assert_eq!(on_demand.stats().orders, 20);
    // Served from memory from now on.
    assert_eq!(seen(&trust, &server, &name(3)).await, serials[3]);
    assert_eq!(pebble.orders(), 20);

    // 30 concurrent first handshakes for one new name: one order.
    let fresh = format!("fresh.{SUFFIX}");
    let serials = all_at_once(&trust, &server, vec![fresh; 30]).await;
    let first = serials[0].clone().unwrap_or_default();
    assert!(
        serials.iter().all(|s| s.as_ref() == Ok(&first)),
        "{serials:?} {:?}",
        on_demand.stats()
    );
    assert_eq!(pebble.orders(), 21);
    let stats = on_demand.stats();
    assert_eq!((stats.orders, stats.cached, stats.pending), (21, 21, 0));
    assert!(stats.refusals.is_empty(), "{:?}", stats.refusals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_outside_the_allow_list_fails_at_once_and_asks_the_hook_once() {
    let pebble = Pebble::start(Config::default());
    let storage = TempDir::new("on-demand");
    let (asked, hook) = counted_allow_list();
    let on_demand = OnDemand::builder(template(&pebble, &storage), hook).build();
    let server = serve(&pebble, &on_demand).await;
    let trust = client(&pebble);
    let mut events = on_demand.store().subscribe();

    let started = std::time::Instant::now();
    let refused = seen(&trust, &server, "api.elsewhere.test").await;
    let took = started.elapsed();
    let error = refused.unwrap_err();
    assert!(error.contains("AccessDenied"), "{error}");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    match events.recv().await.unwrap() {
        certrotate::RotationEvent::OnDemandRefused { name, error } => {
            assert_eq!(&*name, "api.elsewhere.test");
            assert_eq!(error.reason(), "not_allowed");
        }
        other => panic!("{other:?}"),
    }

    // 1,000 more, 50 at a time: the refusal is remembered.
    for _ in 0..20 {
        let batch = vec!["api.elsewhere.test".to_owned(); 50];
        let seen = all_at_once(&trust, &server, batch).await;
        assert!(seen.iter().all(Result::is_err));
    }
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    assert_eq!(on_demand.stats().refusals["not_allowed"], 1001);
    // Names no certificate can be ordered for never reach the hook.
    assert!(seen(&trust, &server, "localhost").await.is_err());
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    assert_eq!(pebble.orders(), 0);
    assert!(on_demand.store().health().certificates.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_names_stop_at_the_order_cap_and_a_real_name_gets_through_after_the_window() {
    let pebble = Pebble::start(Config::default());
    let storage = TempDir::new("on-demand");
    let window = Duration::from_secs(6);
    let on_demand = on_demand(&pebble, &storage)
        .orders_per_window(3, window)
        .max_orders_in_flight(3)
        .build();
    let server = serve(&pebble, &on_demand).await;
    let trust = client(&pebble);

    // 200 random names under the allowed suffix, 50 at a time.
    let window_start = std::time::Instant::now();
    let mut served = 0;
    for batch in 0..4 {
        let names = (0..50).map(|i| format!("r{batch}-{i}-{:x}.{SUFFIX}", fastrand::u64(..)));
        served += all_at_once(&trust, &server, names)
            .await
            .iter()
            .filter(|r| r.is_ok())
            .count();
    }
    assert!(served <= 3, "{served} served");
    assert_eq!(pebble.orders(), 3);
    let stats = on_demand.stats();
    let refused: u64 = stats.refusals.values().sum();
    assert_eq!(refused, 200 - served as u64, "{:?}", stats.refusals);
    assert!(
        stats.refusals.contains_key("rate_limited"),
        "{:?}",
        stats.refusals
    );

    // Once the window has slid past those orders, a real name gets its own.
    let legit = format!("shop.{SUFFIX}");
    tokio::time::sleep(window.saturating_sub(window_start.elapsed())).await;
    let mut outcome = seen(&trust, &server, &legit).await;
    // The orders of the window may have ended a little after it started.
    for _ in 0..20 {
        if outcome.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        outcome = seen(&trust, &server, &legit).await;
    }
    outcome.unwrap();
    assert_eq!(pebble.orders(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_serves_evicted_names_and_restarts_without_new_orders() {
    let pebble = Pebble::start(Config::default());
    let storage = TempDir::new("on-demand");
    let first = on_demand(&pebble, &storage)
        .cache_size(5)
        .max_orders_in_flight(20)
        .build();
    let server = serve(&pebble, &first).await;
    let trust = client(&pebble);
    let mut serials = Vec::new();
    for i in 0..20 {
        serials.push(seen(&trust, &server, &name(i)).await.unwrap());
    }
    assert_eq!(pebble.orders(), 20);
    let stats = first.stats();
    assert_eq!((stats.cached, stats.evictions), (5, 15));
    assert_eq!(first.store().health().served, 5);

    // Evicted names come back from storage, the same certificates, no order.
    for (i, serial) in serials.iter().enumerate() {
        assert_eq!(&seen(&trust, &server, &name(i)).await.unwrap(), serial);
    }
    assert_eq!(pebble.orders(), 20);
    let stats = first.stats();
    assert!(stats.loads >= 15, "{stats:?}");
    assert_eq!(stats.cached, 5);

    // A restart (a new store, the same storage): every name from storage.
    first.shutdown().await;
    drop(server);
    let second = on_demand(&pebble, &storage).build();
    let server = serve(&pebble, &second).await;
    let trust = client(&pebble);
    for (i, serial) in serials.iter().enumerate() {
        assert_eq!(&seen(&trust, &server, &name(i)).await.unwrap(), serial);
    }
    assert_eq!(pebble.orders(), 20);
    assert_eq!(second.stats().loads, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn short_lived_on_demand_certificates_are_renewed_under_load() {
    let pebble = Pebble::start(Config {
        validity: Duration::from_secs(24),
        ..Config::default()
    });
    let storage = TempDir::new("on-demand");
    let on_demand = on_demand(&pebble, &storage).build();
    let server = serve(&pebble, &on_demand).await;
    let trust = client(&pebble);
    let names: Vec<String> = (0..3).map(name).collect();
    let mut first = Vec::new();
    for name in &names {
        first.push(seen(&trust, &server, name).await.unwrap());
    }
    let mut events = on_demand.store().subscribe();
    let loads: Vec<_> = names
        .iter()
        .map(|name| common::load(&trust, server.addr, name, 2))
        .collect();

    // Each name renewed twice, while clients keep handshaking.
    let mut renewed = std::collections::HashMap::<String, usize>::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while renewed.len() < names.len() || renewed.values().any(|n| *n < 2) {
        let event = tokio::time::timeout_at(deadline, events.recv()).await;
        let event = event.expect("renewals within a minute").unwrap();
        if let certrotate::RotationEvent::Rotated {
            slot, old: Some(_), ..
        } = event
        {
            *renewed.entry(slot.to_string()).or_default() += 1;
        }
    }
    for load in loads {
        let handshakes = load.finish().await;
        assert!(handshakes > 20, "{handshakes} handshakes");
    }
    for (name, first) in names.iter().zip(&first) {
        assert_ne!(&seen(&trust, &server, name).await.unwrap(), first);
    }
    assert_eq!(
        on_demand.stats().orders,
        3,
        "renewals are not on-demand orders"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_name_while_the_ca_is_down_fails_within_the_wait_and_succeeds_after() {
    let pebble = Pebble::start(Config::default());
    let storage = TempDir::new("on-demand");
    let wait = Duration::from_secs(3);
    let acme = AcmeSource::template(&pebble.directory)
        .directory_root(&pebble.https_root)
        .storage(FileStorage::new(storage.path()))
        .timeout(Duration::from_secs(2))
        .tls_alpn_01();
    let on_demand = OnDemand::builder(acme, AllowList::new().suffix(SUFFIX))
        .wait(wait)
        .failure_backoff(Duration::from_secs(1), Duration::from_secs(2))
        .build();
    let server = serve(&pebble, &on_demand).await;
    let trust = client(&pebble);
    let old = seen(&trust, &server, &name(0)).await.unwrap();

    pebble.freeze(true);
    let started = std::time::Instant::now();
    let down = seen(&trust, &server, &name(1)).await;
    let took = started.elapsed();
    assert!(down.is_err(), "{down:?}");
    assert!(
        took < wait + Duration::from_secs(2),
        "failed after {took:?}"
    );
    // The name served before keeps being served.
    assert_eq!(seen(&trust, &server, &name(0)).await.unwrap(), old);
    assert_eq!(on_demand.store().current(&name(1)), None);

    pebble.freeze(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match seen(&trust, &server, &name(1)).await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stats = on_demand.stats();
    assert!(stats.failed_orders >= 1, "{stats:?}");
    // The order failed (its step timed out) within the handshake's wait.
    assert!(stats.refusals.contains_key("failed"), "{stats:?}");
}

/// Handshakes as each of `names` at once; the serials seen, in order.
async fn all_at_once(
    trust: &Arc<rustls::ClientConfig>,
    server: &common::Server,
    names: impl IntoIterator<Item = String>,
) -> Vec<Result<String, String>> {
    let (config, addr) = (trust.clone(), server.addr);
    let tasks: Vec<_> = names
        .into_iter()
        .map(|name| {
            let config = config.clone();
            tokio::spawn(async move { common::serial_seen(&config, addr, &name).await })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen
}

/// A hook that panics refuses that handshake, and leaves nothing pending
/// behind: the next handshake asks it again.
#[tokio::test]
async fn a_panicking_hook_refuses_and_leaves_nothing_pending() {
    let asked = Arc::new(AtomicUsize::new(0));
    let hook = {
        let asked = asked.clone();
        move |name: String| {
            asked.fetch_add(1, Ordering::Relaxed);
            async move { panic!("the database is gone ({name})") }
        }
    };
    let acme = AcmeSource::template("https://acme.invalid/directory");
    let on_demand = OnDemand::builder(acme, hook).build();
    for _ in 0..2 {
        let error = on_demand.prepare(&name(0)).await.unwrap_err();
        assert_eq!(error.reason(), "aborted", "{error}");
        assert_eq!(on_demand.stats().pending, 0);
    }
    assert_eq!(asked.load(Ordering::Relaxed), 2);
}

/// What on-demand issuance does reaches the metrics recorder: orders,
/// refusals by reason, cache hits and misses, waiting handshakes.
#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_metrics_reach_the_recorder() {
    // The binary's one global recorder: other tests add to its counts.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let pebble = Pebble::start(Config::default());
    let storage = TempDir::new("on-demand");
    let on_demand = on_demand(&pebble, &storage).build();
    let server = serve(&pebble, &on_demand).await;
    let trust = client(&pebble);
    seen(&trust, &server, &name(0)).await.unwrap();
    seen(&trust, &server, &name(0)).await.unwrap();
    assert!(seen(&trust, &server, "www.elsewhere.test").await.is_err());

    let rendered = prometheus.render();
    for line in [
        "certrotate_on_demand_orders_total{result=\"issued\"}",
        "certrotate_on_demand_refusals_total{reason=\"not_allowed\"}",
        "certrotate_on_demand_cache_total{event=\"miss\"}",
        "certrotate_on_demand_cache_total{event=\"hit\"}",
        "certrotate_on_demand_waiting_handshakes",
    ] {
        assert!(rendered.contains(line), "{line} missing:\n{rendered}");
    }
}

/// The reasons of the refusals among the events received so far.
fn refusals(
    events: &mut tokio::sync::broadcast::Receiver<certrotate::RotationEvent>,
) -> Vec<String> {
    let mut refusals = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let certrotate::RotationEvent::OnDemandRefused { error, .. } = event {
            refusals.push(error.to_string());
        }
    }
    refusals
}

/// Past `max_waiting_handshakes`, a handshake for a name being obtained is
/// refused at once instead of holding its connection too.
#[tokio::test]
async fn waiting_handshakes_are_capped() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let hook = {
        let gate = gate.clone();
        move |_: String| {
            let gate = gate.clone();
            async move {
                let _ = gate.acquire().await;
                false
            }
        }
    };
    let acme = AcmeSource::template("https://acme.invalid/directory");
    let on_demand = OnDemand::builder(acme, hook)
        .max_waiting_handshakes(2)
        .build();
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let on_demand = on_demand.clone();
            tokio::spawn(async move { on_demand.prepare(&name(0)).await })
        })
        .collect();
    while on_demand.stats().waiting < 2 {
        tokio::task::yield_now().await;
    }
    let third = tokio::time::timeout(Duration::from_secs(1), on_demand.prepare(&name(0)))
        .await
        .expect("refused at once, not waiting")
        .unwrap_err();
    assert_eq!(third.reason(), "too_many_waiting", "{third}");
    gate.add_permits(1);
    for waiter in waiting {
        let refused = waiter.await.unwrap().unwrap_err();
        assert_eq!(refused.reason(), "not_allowed", "{refused}");
    }
    assert_eq!(on_demand.stats().waiting, 0);
}

/// Every on-demand certificate passes the policy before it is served: one
/// Pebble issues (valid an hour) fails a policy asking for two hours left,
/// and nothing is served for the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_policy_checks_every_on_demand_certificate() {
    let pebble = Pebble::start(Config::default());
    let storage = TempDir::new("on-demand");
    let policy = certrotate::Policy::builder()
        .min_remaining(Duration::from_secs(2 * 3600))
        .build()
        .unwrap();
    let on_demand = on_demand(&pebble, &storage).policy(policy).build();
    let server = serve(&pebble, &on_demand).await;
    let trust = client(&pebble);
    let mut events = on_demand.store().subscribe();
    let refused = seen(&trust, &server, &name(0)).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(pebble.issued(), 1);
    assert_eq!(on_demand.store().current(&name(0)), None);
    let reasons = refusals(&mut events);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("was refused"), "{reasons:?}");
    assert_eq!(on_demand.stats().refusals["refused"], 1);
}

/// `HealthService::on_demand`: an on-demand server serving nothing yet is
/// healthy, and its JSON and Prometheus text say what on-demand issuance
/// did (counts, no names).
#[cfg(feature = "health")]
#[tokio::test]
async fn health_reports_on_demand_and_an_empty_store_is_healthy() {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use tower_service::Service;

    async fn get(service: &mut certrotate::HealthService, uri: &str) -> (u16, String) {
        let request = http::Request::get(uri)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = service.call(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    let acme = AcmeSource::template("https://acme.invalid/directory");
    let on_demand = OnDemand::builder(acme, AllowList::new().suffix(SUFFIX)).build();
    assert!(on_demand.prepare("www.elsewhere.test").await.is_err());
    let store = on_demand.store().clone();
    let health_store = store.clone();

    let mut plain = certrotate::HealthService::new(store.clone());
    assert_eq!(get(&mut plain, "/").await.0, 503, "nothing serves");
    let mut health = certrotate::HealthService::new(store).on_demand(on_demand);
    let (status, body) = get(&mut health, "/").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["on_demand"]["refusals"]["not_allowed"], 1, "{body}");
    assert!(
        !body.contains("elsewhere"),
        "no names in public health: {body}"
    );
    let (_, text) = get(&mut health, "/?format=prometheus").await;
    assert!(
        text.contains("certrotate_on_demand_refusals_total{reason=\"not_allowed\"} 1"),
        "{text}"
    );
    for line in [
        "certrotate_on_demand_orders_total{result=\"issued\"} 0",
        "certrotate_on_demand_cache_total{event=\"miss\"} 1",
        "certrotate_on_demand_cache_total{event=\"hit\"} 0",
        "certrotate_on_demand_waiting_handshakes 0",
        "# TYPE certrotate_on_demand_refusals_total counter",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }

    // A main certificate in the same store that cannot be had (a source
    // with nothing): unhealthy, on-demand or not.
    let main = certrotate::Rotator::builder(
        certrotate::source::StaticSource::empty(),
        certrotate::Policy::default(),
    )
    .store(health_store.clone())
    .retry_backoff(Duration::from_secs(60), Duration::from_secs(60))
    .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while health_store.health().unserved_count == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = get(&mut health, "/").await;
    assert_eq!(status, 503, "a dead main certificate: {body}");
    main.shutdown().await;
}

/// A storage that never answers cannot hold a name pending for ever: the
/// look for a stored certificate is bounded by the ACME step timeout, the
/// handshake is refused naming the storage, and nothing stays pending.
#[tokio::test]
async fn a_storage_that_hangs_fails_the_name_within_the_step_timeout() {
    struct Hanging;
    impl certrotate::acme::Storage for Hanging {
        fn load<'a>(
            &'a self,
            _: &'a str,
        ) -> certrotate::acme::BoxFuture<'a, std::io::Result<Option<Vec<u8>>>> {
            Box::pin(std::future::pending())
        }
        fn store<'a>(
            &'a self,
            _: &'a str,
            _: &'a [u8],
        ) -> certrotate::acme::BoxFuture<'a, std::io::Result<()>> {
            Box::pin(std::future::pending())
        }
    }
    let acme = AcmeSource::template("https://acme.invalid/directory")
        .storage(Hanging)
        .timeout(Duration::from_millis(300));
    let on_demand = OnDemand::builder(acme, AllowList::new().suffix(SUFFIX))
        .wait(Duration::from_secs(5))
        .build();
    let started = std::time::Instant::now();
    let error = on_demand.prepare(&name(0)).await.unwrap_err();
    assert_eq!(error.reason(), "failed", "{error}");
    assert!(error.to_string().contains("storage"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(on_demand.stats().pending, 0);
}

/// Handshakes as `name` from the local address `from`; the serial seen.
async fn seen_from(
    trust: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    from: [u8; 4],
    name: String,
) -> Result<String, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(std::net::SocketAddr::from((from, 0)))
        .map_err(|e| e.to_string())?;
    let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
    let tls = tokio_rustls::TlsConnector::from(trust)
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = &tls.get_ref().1.peer_certificates().ok_or("none")?[0];
    Ok(common::serial_of(leaf))
}

/// One address floods random names under the allowed suffix while another
/// asks for a real name: the flood stops at its client's budget, refused
/// before the hook or the storage is asked (the hook hears the budget's
/// worth), and the real name is ordered and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_flooding_random_names_cannot_keep_another_s_name_out() {
    let pebble = Pebble::start(Config::default());
    let storage = TempDir::new("on-demand");
    let (asked, hook) = counted_allow_list();
    let acme = template(&pebble, &storage).timeout(Duration::from_secs(10));
    let on_demand = OnDemand::builder(acme, hook)
        .wait(Duration::from_secs(20))
        .new_names_per_client(3, Duration::from_secs(600))
        .build();
    let server = serve(&pebble, &on_demand).await;
    let trust = client(&pebble);

    let flood: Vec<_> = (0..30)
        .map(|i| {
            let name = format!("r{}-{i}.{SUFFIX}", fastrand::u32(..));
            tokio::spawn(seen_from(trust.clone(), server.addr, [127, 0, 0, 2], name))
        })
        .collect();
    let mut flooded = Vec::new();
    for handshake in flood {
        flooded.push(handshake.await.unwrap());
    }
    let real = seen_from(
        trust.clone(),
        server.addr,
        [127, 0, 0, 1],
        format!("www.{SUFFIX}"),
    )
    .await;
    assert!(real.is_ok(), "{real:?} {:?}", on_demand.stats());

    let served = flooded.iter().filter(|r| r.is_ok()).count();
    assert!(served <= 3, "{served} random names served: {flooded:?}");
    let stats = on_demand.stats();
    assert!(
        stats.refusals.get("client_budget").copied().unwrap_or(0) >= 27,
        "{stats:?}"
    );
    assert!(
        asked.load(Ordering::Relaxed) <= 4,
        "the hook was asked {asked:?} times"
    );
    assert!(pebble.orders() <= 4);
}

//! ACME Renewal Information (RFC 9773), proven end to end: Pebble (which has
//! none) behind a proxy that adds `renewalInfo` with the window and
//! `Retry-After` the test sets.

#![cfg(feature = "acme")]

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certrotate::store::ACME_TLS_ALPN;
use certrotate::{AcmeSource, Policy, Rotator};
use common::pebble::{first_certificate, Ari, Config, FlakyProxy, Pebble};

const NAME: &str = "ari.certrotate.test";
const MINUTE: Duration = Duration::from_secs(60);

/// Pebble (issuing for an hour) validating TLS-ALPN-01 on a port bound
/// before it starts (one found free and bound later can be taken
/// meanwhile), and that port.
fn pebble_validating_on_a_bound_port() -> (Pebble, tokio::net::TcpListener) {
    let tls = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tls.set_nonblocking(true).unwrap();
    let pebble = Pebble::start(Config {
        validity: Duration::from_secs(3600),
        tls_port: tls.local_addr().unwrap().port(),
        ..Config::default()
    });
    (pebble, tokio::net::TcpListener::from_std(tls).unwrap())
}

/// A window in the future is followed instead of the lifetime rule (the
/// time chosen inside it, shown in health with the window); the CA is asked
/// again as its `Retry-After` says, not more often; a window moved into the
/// past (a revocation drill) renews at once, the new order saying which
/// certificate it replaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cas_window_is_followed_polled_and_a_past_one_renews_at_once() {
    let (pebble, tls) = pebble_validating_on_a_bound_port();
    let now = SystemTime::now();
    // Without the CA's word: renewed with 40% of the hour left, at 36 min.
    let window = (now + 50 * MINUTE, now + 55 * MINUTE);
    let ari = Arc::new(Ari::new(window, 2));
    let proxy = FlakyProxy::with_ari(&pebble, ari.clone()).await;
    let source = AcmeSource::builder(&proxy.directory, [NAME])
        .directory_root(&pebble.https_root)
        .storage(pebble.storage())
        .renewal_info_interval(Duration::from_secs(1), Duration::from_secs(60))
        .build();
    let rotator =
        Rotator::builder(source, Policy::builder().server_name(NAME).build().unwrap()).spawn();
    let mut config = rotator.server_config().unwrap();
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let _server = common::serve_listener(certrotate::TlsListener::new(tls, Arc::new(config)));
    let first = first_certificate(&rotator).await;
    let mut events = rotator.subscribe();

    // The window and the time chosen in it are in health.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let health = loop {
        let health = rotator.health().certificates[0].clone();
        if health.renewal_window.is_some() {
            break health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no window in health: {health:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let shown = health.renewal_window.unwrap();
    let whole_seconds = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        (whole_seconds(shown.start), whole_seconds(shown.end)),
        (whole_seconds(window.0), whole_seconds(window.1))
    );
    assert!(
        health.renew_at >= shown.start && health.renew_at <= shown.end,
        "{health:#?}"
    );

    // Asked again every 2 s, as the CA says: over 7 s, three or four times.
    let before = ari.polls.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let polls = ari.polls.lock().unwrap().clone();
    let asked = polls.len() - before;
    assert!((3..=4).contains(&asked), "asked {asked} times in 7 s");
    for pair in polls[before..].windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(1900),
            "{polls:?}"
        );
    }
    assert_eq!(rotator.current().unwrap().serial, first.serial);

    // A revocation drill: the window moves into the past; renewed at once.
    *ari.window.lock().unwrap() = (now - 2 * MINUTE, now - MINUTE);
    let moved = tokio::time::Instant::now();
    let renewed = tokio::select! {
        renewed = common::rotation_from(&mut events, &first, Duration::from_secs(20)) => renewed,
        () = tokio::time::sleep(Duration::from_secs(19)) => panic!(
            "not renewed: {:#?} {:?} polls {}",
            rotator.health(),
            ari.replaces.lock().unwrap(),
            ari.polls.lock().unwrap().len()
        ),
    };
    println!("renewed {:?} after the window moved", moved.elapsed());
    assert_ne!(renewed.serial, first.serial);
    let replaces = ari.replaces.lock().unwrap().clone();
    assert_eq!(replaces.len(), 2, "{replaces:?}");
    assert_eq!(replaces[0], "", "the first order replaced nothing");
    // RFC 9773 §4.1: base64url(the authority key identifier) "."
    // base64url(the serial's DER bytes), of the certificate replaced.
    let (key_id, serial) = replaces[1]
        .split_once('.')
        .expect("the renewal did not say what it replaces");
    assert!(!common::pebble::base64url_decode(key_id).is_empty());
    let serial: Vec<String> = common::pebble::base64url_decode(serial)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        serial.join(":"),
        first.serial,
        "replaces another certificate"
    );
    rotator.shutdown().await;
}

/// The renewal-information requests that reach `ari` during `span`: how
/// many, and the most in any second.
async fn polls_for(ari: &Ari, span: Duration) -> (usize, usize) {
    let before = ari.polls.lock().unwrap().len();
    tokio::time::sleep(span).await;
    let polls = ari.polls.lock().unwrap()[before..].to_vec();
    let most = most_in(&polls, Duration::from_secs(1));
    println!(
        "{} polls in {span:?}, at most {most} in a second",
        polls.len()
    );
    (polls.len(), most)
}

/// The most events of `times` in any span of `window`.
fn most_in(times: &[std::time::Instant], window: Duration) -> usize {
    let mut times = times.to_vec();
    times.sort();
    let (mut most, mut first) = (0, 0);
    for (last, at) in times.iter().enumerate() {
        while *at - times[first] >= window {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

/// Many certificates (100 on-demand names here; the pace itself is proven
/// with 10,000 in its unit tests): renewal information asked every second
/// by each (Retry-After 1 s) stays within `renewal_info_rate`, and a
/// window moved into the past for all of them renews them at
/// `renewals_per_window`, not all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_certificates_poll_and_renew_within_their_pace() {
    const NAMES: usize = 100;
    let (pebble, tls) = pebble_validating_on_a_bound_port();
    let now = SystemTime::now();
    let ari = Arc::new(Ari::new((now + 50 * MINUTE, now + 55 * MINUTE), 1));
    let proxy = FlakyProxy::with_ari(&pebble, ari.clone()).await;
    let template = AcmeSource::template(&proxy.directory)
        .directory_root(&pebble.https_root)
        .storage(pebble.storage())
        .renewal_info_interval(Duration::from_secs(1), Duration::from_secs(60))
        .renewal_info_rate(10)
        .renewals_per_window(10, Duration::from_secs(1));
    let suffix = "many.ari.certrotate.test";
    let on_demand = certrotate::OnDemand::builder(
        template,
        certrotate::on_demand::AllowList::new().suffix(suffix),
    )
    .max_orders_in_flight(20)
    .orders_per_window(1000, Duration::from_secs(3600))
    .new_names_per_window(1000, Duration::from_secs(3600))
    .max_pending_names(1000)
    .orders_per_registered_domain(1000, Duration::from_secs(3600))
    .wait(Duration::from_secs(60))
    .build();
    let tcp = tls;
    let config = Arc::new(on_demand.server_config().unwrap());
    let listener = certrotate::TlsListener::new(tcp, config)
        .max_pending_handshakes_per_client(1000)
        .on_demand(on_demand.clone());
    let _server = common::serve_listener(listener);
    let names: Vec<String> = (0..NAMES).map(|i| format!("n{i}.{suffix}")).collect();
    // Twenty at a time, the orders allowed in flight.
    for batch in names.chunks(20) {
        let prepared: Vec<_> = batch
            .iter()
            .map(|name| {
                let (on_demand, name) = (on_demand.clone(), name.clone());
                tokio::spawn(async move { on_demand.prepare(&name).await })
            })
            .collect();
        for prepared in prepared {
            prepared.await.unwrap().unwrap();
        }
    }
    let first_orders = ari.orders.lock().unwrap().len();
    assert_eq!(first_orders, NAMES);

    // Each asks every second; together 10 a second (counted as they reach
    // the CA, so a little arrival jitter is allowed; unpaced they would be
    // 500 in 5 s).
    let (polls, most) = polls_for(&ari, Duration::from_secs(5)).await;
    assert!(
        (30..=60).contains(&polls) && most <= 20,
        "{polls} polls, {most} in a second"
    );

    // A mass revocation: every window in the past. Renewed at 10 a second.
    let started = std::time::Instant::now();
    *ari.window.lock().unwrap() = (now - 2 * MINUTE, now - MINUTE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while ari.orders.lock().unwrap().len() < 2 * NAMES {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {NAMES} renewed",
            ari.orders.lock().unwrap().len() - NAMES
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let renewals = ari.orders.lock().unwrap()[NAMES..].to_vec();
    let most = most_in(&renewals, Duration::from_secs(1));
    let took = started.elapsed();
    println!("{NAMES} renewals in {took:?}, at most {most} in a second");
    // 100 at 10 a second take 9 s at least (unpaced: about 2 s).
    assert!(
        took >= Duration::from_secs(9) && most <= 20,
        "{most} in a second, {took:?}"
    );
    on_demand.shutdown().await;
}

/// 10,000 certificates resident (loaded back from storage, as after a
/// restart of a server that holds them): renewal information is asked
/// within `renewal_info_rate`, and an emergency window for all of them
/// (a mass revocation) orders at `renewals_per_window`, not 10,000 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_resident_certificates_poll_and_renew_within_their_pace() {
    const NAMES: usize = 10_000;
    const POLLS_PER_SECOND: usize = 100;
    const RENEWALS_PER_SECOND: usize = 20;
    let (pebble, tls) = pebble_validating_on_a_bound_port();
    let now = SystemTime::now();
    let ari = Arc::new(Ari::new((now + 50 * MINUTE, now + 55 * MINUTE), 1));
    let proxy = FlakyProxy::with_ari(&pebble, ari.clone()).await;
    let suffix = "resident.ari.certrotate.test";
    let names: Vec<String> = (0..NAMES).map(|i| format!("n{i}.{suffix}")).collect();

    // Ninety-day certificates a day old, where the source keeps them.
    let dir = common::TempDir::new("ari-resident");
    let ca = common::Ca::new();
    let started = std::time::Instant::now();
    for name in &names {
        let issued = ca.issue(common::Leaf::default().names(&[name]).lifetime(
            now - 86_400 * Duration::from_secs(1),
            now + 89 * 86_400 * Duration::from_secs(1),
        ));
        let combined = format!("{}{}{}", issued.cert_pem, ca.pem, issued.key_pem);
        std::fs::write(dir.join(&stored_key(&proxy.directory, name)), combined).unwrap();
    }
    println!("{NAMES} certificates made in {:?}", started.elapsed());

    let template = AcmeSource::template(&proxy.directory)
        .directory_root(&pebble.https_root)
        .storage(certrotate::acme::FileStorage::new(dir.path()))
        .renewal_info_interval(Duration::from_secs(1), Duration::from_secs(60))
        .renewal_info_rate(POLLS_PER_SECOND as u32)
        .renewals_per_window(RENEWALS_PER_SECOND as u32, Duration::from_secs(1));
    let many = 2 * NAMES;
    let hour = Duration::from_secs(3600);
    let on_demand = certrotate::OnDemand::builder(
        template,
        certrotate::on_demand::AllowList::new().suffix(suffix),
    )
    .cache_size(many)
    .max_pending_names(many)
    .new_names_per_window(many, hour)
    .orders_per_window(many, hour)
    .orders_per_registered_domain(many, hour)
    .max_orders_in_flight(50)
    .max_waiting_handshakes(1000)
    .wait(Duration::from_secs(60))
    .build();
    let config = Arc::new(on_demand.server_config().unwrap());
    let listener = certrotate::TlsListener::new(tls, config).on_demand(on_demand.clone());
    let _server = common::serve_listener(listener);
    let started = std::time::Instant::now();
    for batch in names.chunks(500) {
        let mut loaded = tokio::task::JoinSet::new();
        for name in batch {
            let (on_demand, name) = (on_demand.clone(), name.clone());
            loaded.spawn(async move { on_demand.prepare(&name).await });
        }
        while let Some(prepared) = loaded.join_next().await {
            prepared.unwrap().unwrap();
        }
    }
    println!("{NAMES} certificates loaded in {:?}", started.elapsed());
    let stats = on_demand.stats();
    assert_eq!((stats.cached, stats.loads), (NAMES, NAMES as u64));
    assert!(ari.orders.lock().unwrap().is_empty(), "loaded, not ordered");

    // Each wants to ask every second (Retry-After 1 s): 10,000 a second,
    // held to 100 a second. Counted as they reach the proxy, which shares
    // a busy machine: a starved proxy takes a backlog in at once (CI saw
    // 825 and 898 in one second), so the bound is on the total since
    // loading began, which arrivals cannot exceed whatever their lag (the
    // rate in every second is proven on paused time in acme/pace.rs).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (polls, most) = polls_for(&ari, Duration::from_secs(5)).await;
    let (total, elapsed) = (ari.polls.lock().unwrap().len(), started.elapsed());
    println!("{total} polls in {elapsed:?} since loading began");
    assert!(
        polls >= POLLS_PER_SECOND && total <= (elapsed.as_secs() as usize + 2) * POLLS_PER_SECOND,
        "{polls} polls in 5 s ({most} in a second), {total} in {elapsed:?}"
    );

    // A mass revocation: every window in the past. Orders start at once,
    // 20 a second, each replacing a resident certificate (counted as they
    // reach the CA: some arrival jitter). Ten thousand at once before the
    // pace; not one within 8 s before new advice woke the rotator (it
    // slept until its next look, 60 s); 39 in a second before the pace
    // held for turns taken late, and 701 polls in a second on a busy CI
    // machine.
    *ari.window.lock().unwrap() = (now - 2 * MINUTE, now - MINUTE);
    let moved = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let orders = ari.orders.lock().unwrap().clone();
    let watched = moved.elapsed();
    let most = most_in(&orders, Duration::from_secs(1));
    println!(
        "{} orders in {watched:?}, at most {most} in a second",
        orders.len()
    );
    assert!(
        orders.len() >= RENEWALS_PER_SECOND
            && orders.len() <= (watched.as_secs() as usize + 2) * RENEWALS_PER_SECOND,
        "{} orders in {watched:?}, {most} in a second",
        orders.len()
    );
    let replaces = ari.replaces.lock().unwrap().clone();
    assert!(replaces.iter().all(|r| !r.is_empty()), "{replaces:?}");
    on_demand.shutdown().await;
}

/// The storage key an ACME source keeps the certificate for `name` under
/// (`AcmeBuilder::build`: the first CA's directory and the names).
fn stored_key(directory: &str, name: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{directory}|{name}"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cert-{}.pem", &hex[..16])
}

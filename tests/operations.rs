//! Operations over a scripted certificate life, on an injected clock: every
//! metric (through a real Prometheus exporter) and the health endpoint
//! (served by axum on 127.0.0.1) move as documented at each step.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use certrotate::danger::Clock;
use certrotate::{
    AlertLevel, CertBundle, CertSource, CertStore, HealthService, Policy, RotationEvent, Rotator,
    SourceError,
};
use common::{Ca, Leaf, HOST};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const DAY: Duration = Duration::from_secs(86_400);

#[derive(Debug)]
struct ManualClock(Mutex<SystemTime>);

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

impl ManualClock {
    fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap() = t;
    }
}

/// Gives whatever the test put in it last.
#[derive(Clone)]
struct Scripted(Arc<Mutex<Result<CertBundle, SourceError>>>);

impl Scripted {
    fn give(&self, next: Result<CertBundle, SourceError>) {
        *self.0.lock().unwrap() = next;
    }
}

impl CertSource for Scripted {
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        self.0.lock().unwrap().clone()
    }
    fn describe(&self) -> String {
        "scripted source".into()
    }
    fn kind(&self) -> &'static str {
        "scripted"
    }
}

/// The value of the series `name` whose labels include `labels`, in the
/// exporter's rendering.
fn metric(prometheus: &PrometheusHandle, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    prometheus.render().lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let matches = (rest.is_empty() || rest.starts_with('{'))
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().unwrap())
    })
}

/// A 90-day certificate valid from `offset` seconds after `start`.
fn ninety_days(ca: &Ca, start: SystemTime, offset: u64) -> CertBundle {
    let from = start - Duration::from_secs(3600) + Duration::from_secs(offset);
    ca.issue(Leaf::default().lifetime(from, from + 90 * DAY))
        .bundle
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as f64
}

/// Waits until the gauges of the slot show `level` (the rotator refreshes
/// them when its loop comes round).
async fn until_level(prometheus: &PrometheusHandle, level: AlertLevel) {
    let want = f64::from(level.as_number());
    for _ in 0..500 {
        if metric(
            prometheus,
            "certrotate_certificate_alert_level",
            &[("slot", "default")],
        ) == Some(want)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("alert level never became {level}:\n{}", prometheus.render());
}

/// GETs the health endpoint: (status, content type, body).
async fn health(url: &str, accept: &str) -> (u16, String, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::get(url)
        .header("accept", accept)
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_follow_a_certificate_through_its_life() {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| metric(&prometheus, name, labels);
    let slot = ("slot", "default");
    let ca = Ca::new();
    let t0 = SystemTime::now();
    let clock = Arc::new(ManualClock(Mutex::new(t0)));
    let store = CertStore::builder().clock(clock.clone()).build();
    let first = ninety_days(&ca, t0, 0);
    let source = Scripted(Arc::new(Mutex::new(Ok(first.clone()))));
    let policy = Policy::builder().server_name(HOST).build().unwrap();
    let rotator = Rotator::builder(source.clone(), policy)
        .store(store.clone())
        // No retry in the background during the test: each step is explicit.
        .retry_backoff(Duration::from_secs(600), Duration::from_secs(600))
        .start()
        .await
        .unwrap();
    let mut events = rotator.subscribe();

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/healthz", tcp.local_addr().unwrap());
    let app = axum::Router::new().route_service("/healthz", HealthService::detailed(store.clone()));
    let server = tokio::spawn(async move { axum::serve(tcp, app).await });

    // 1. The first certificate.
    let rotated = [slot, ("source", "scripted"), ("result", "rotated")];
    assert_eq!(value("certrotate_rotations_total", &rotated), Some(1.0));
    assert_eq!(
        value("certrotate_certificate_expiry_timestamp_seconds", &[slot]),
        Some(unix(first.info().not_after))
    );
    let remaining = value("certrotate_certificate_remaining_seconds", &[slot]).unwrap();
    assert!(
        (remaining
            - first
                .info()
                .not_after
                .duration_since(t0)
                .unwrap()
                .as_secs_f64())
        .abs()
            < 1.0
    );
    assert_eq!(
        value("certrotate_certificate_alert_level", &[slot]),
        Some(0.0)
    );
    assert_eq!(
        value("certrotate_last_rotation_timestamp_seconds", &[slot]),
        Some(unix(t0).floor())
    );
    assert_eq!(
        value("certrotate_last_attempt_timestamp_seconds", &[slot]),
        Some(unix(t0).floor())
    );
    let (status, content_type, body) = health(&url, "*/*").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["alert"], "ok");
    assert_eq!(
        json["certificates"][0]["serial"],
        first.info().serial.as_str()
    );

    // 2. A rotation.
    let second = ninety_days(&ca, t0, 60);
    source.give(Ok(second.clone()));
    rotator.rotate_now().await.unwrap();
    assert_eq!(value("certrotate_rotations_total", &rotated), Some(2.0));
    assert_eq!(
        value("certrotate_certificate_expiry_timestamp_seconds", &[slot]),
        Some(unix(second.info().not_after))
    );

    // 3. A refusal: the old certificate keeps serving.
    source.give(Ok(ca
        .issue(Leaf::default().names(&["other.example"]))
        .bundle));
    rotator.rotate_now().await.unwrap_err();
    let refused = [slot, ("source", "scripted"), ("result", "refused")];
    assert_eq!(value("certrotate_rotations_total", &refused), Some(1.0));
    assert_eq!(
        value(
            "certrotate_refusals_total",
            &[slot, ("reason", "name_not_covered")]
        ),
        Some(1.0)
    );
    assert_eq!(value("certrotate_rotations_total", &rotated), Some(2.0));

    // 4. A rollback to the first certificate.
    rotator.rollback().unwrap();
    assert_eq!(value("certrotate_rollbacks_total", &[slot]), Some(1.0));
    assert_eq!(
        value("certrotate_certificate_expiry_timestamp_seconds", &[slot]),
        Some(unix(first.info().not_after))
    );

    // 5. The source fails, and keeps failing.
    source.give(Err(SourceError::unavailable(
        "scripted source",
        "CA is down",
    )));
    rotator.rotate_now().await.unwrap_err();
    let failed = [slot, ("source", "scripted"), ("result", "failed")];
    assert_eq!(value("certrotate_rotations_total", &failed), Some(1.0));
    assert_eq!(
        value(
            "certrotate_source_errors_total",
            &[slot, ("source", "scripted"), ("kind", "unavailable")]
        ),
        Some(1.0)
    );

    // 6. Approaching expiry: overdue with 20 days left (renewal at 30), the
    // check still passes; critical with 5 days left (under 10% of 90 days),
    // the check fails.
    let not_after = first.info().not_after;
    for (at, level, status) in [
        (not_after - 20 * DAY, AlertLevel::RenewOverdue, 200),
        (not_after - 5 * DAY, AlertLevel::Critical, 503),
        (not_after + Duration::from_secs(1), AlertLevel::Expired, 503),
    ] {
        clock.set(at);
        let _ = rotator.rotate_now().await;
        until_level(&prometheus, level).await;
        let remaining = value("certrotate_certificate_remaining_seconds", &[slot]).unwrap();
        let expected = not_after
            .duration_since(at)
            .unwrap_or_default()
            .as_secs_f64();
        assert!(
            (remaining - expected).abs() < 1.0,
            "{remaining} != {expected}"
        );
        assert_eq!(health(&url, "*/*").await.0, status, "at {level}");
        loop {
            if let RotationEvent::ExpiryWarning { level: warned, .. } = events.recv().await.unwrap()
            {
                assert_eq!(warned, level);
                break;
            }
        }
    }
    let (status, content_type, text) = health(&url, "text/plain;version=0.0.4").await;
    assert_eq!(status, 503);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        text.contains("certrotate_certificate_alert_level{slot=\"default\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("certrotate_certificate_remaining_seconds{slot=\"default\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("certrotate_healthy 0\n"), "{text}");
    assert_eq!(
        value(
            "certrotate_source_errors_total",
            &[slot, ("kind", "unavailable")]
        ),
        Some(4.0)
    );

    // 7. A good certificate arrives: everything is back to normal.
    let now = clock.now();
    let fresh = ca
        .issue(Leaf::default().lifetime(now - Duration::from_secs(60), now + 90 * DAY))
        .bundle;
    source.give(Ok(fresh.clone()));
    rotator.rotate_now().await.unwrap();
    assert_eq!(
        value("certrotate_certificate_alert_level", &[slot]),
        Some(0.0)
    );
    assert_eq!(value("certrotate_rotations_total", &rotated), Some(3.0));
    assert_eq!(
        value("certrotate_last_rotation_timestamp_seconds", &[slot]),
        Some(unix(now).floor())
    );
    let (status, _, text) = health(&url, "*/*").await;
    assert_eq!(status, 200, "{text}");
    let (status, content_type, text) = health(&format!("{url}?format=prometheus"), "*/*").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"));
    assert!(text.contains("certrotate_healthy 1\n"), "{text}");

    server.abort();
    rotator.shutdown().await;
}

#[tokio::test]
async fn health_is_503_while_nothing_serves_and_405_for_writes() {
    let store = CertStore::new();
    let service = HealthService::new(store.clone());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/healthz", tcp.local_addr().unwrap());
    let app = axum::Router::new().route_service("/healthz", service);
    let server = tokio::spawn(async move { axum::serve(tcp, app).await });
    assert_eq!(health(&url, "*/*").await.0, 503);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let post = hyper::Request::post(&url).body(Empty::new()).unwrap();
    assert_eq!(client.request(post).await.unwrap().status().as_u16(), 405);
    server.abort();
}

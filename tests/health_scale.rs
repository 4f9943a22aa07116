//! Health and metrics with many slots: counts over all of them, the soonest
//! renewals wherever they are, pages that list every slot once, and no
//! per-slot series past the store's `metric_slots`.

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use certrotate::policy::ValidatedCert;
use certrotate::{AlertLevel, CertStore, HealthService, Policy};
use common::{Ca, Leaf};
use http_body_util::{BodyExt, Full};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower_service::Service;

const DAY: Duration = Duration::from_secs(86_400);

fn cert(ca: &Ca, from: SystemTime, to: SystemTime) -> ValidatedCert {
    let bundle = ca.issue(Leaf::default().lifetime(from, to)).bundle;
    Policy::default()
        .validate(&bundle, SystemTime::now())
        .expect("a good certificate")
}

async fn get(service: &mut HealthService, uri: &str) -> String {
    let request = http::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response: Result<_, Infallible> = service.call(request).await;
    let body = response.unwrap().into_body().collect().await.unwrap();
    String::from_utf8(body.to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn a_thousand_slots_are_summed_up_paged_and_not_named_in_metrics() {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let (ca, now) = (Ca::new(), SystemTime::now());
    let fresh = cert(&ca, now - DAY, now + 89 * DAY);
    // Renewal is due with a third of the lifetime left: 20 of 90 days left
    // is overdue; 2 hours left is critical.
    let overdue = cert(&ca, now - 70 * DAY, now + 20 * DAY);
    let critical = cert(&ca, now - DAY, now + Duration::from_secs(7200));
    let store = CertStore::builder().metric_slots(50).build();
    for i in 0..1000 {
        let cert = match i {
            700 => critical.clone(),
            300 => overdue.clone(),
            _ => fresh.clone(),
        };
        let renew_at = cert.info().renewal_time();
        store.install(&format!("s{i:04}"), cert, renew_at);
    }

    let health = store.health();
    assert_eq!(health.served, 1000);
    assert_eq!(
        (
            health.alerts.ok,
            health.alerts.renew_overdue,
            health.alerts.critical
        ),
        (998, 1, 1)
    );
    assert_eq!(health.alert, AlertLevel::Critical);
    assert_eq!(health.certificates.len(), certrotate::health::HEALTH_LIMIT);
    assert_eq!(health.next_offset, Some(certrotate::health::HEALTH_LIMIT));
    // The two that need attention come first, though neither is on page one.
    let soonest: Vec<&str> = health.soonest.iter().map(|c| c.slot.as_str()).collect();
    assert_eq!(&soonest[..2], ["s0700", "s0300"]);
    assert_eq!(soonest.len(), certrotate::health::SOONEST);
    assert_eq!(health.soonest_expiry, Some(critical.info().not_after));

    // Pages list every slot once, in creation order.
    let (mut seen, mut offset) = (Vec::new(), Some(0));
    while let Some(at) = offset {
        let page = store.health_page(at, 300);
        assert!(page.certificates.len() <= 300);
        seen.extend(page.certificates.into_iter().map(|c| c.slot));
        offset = page.next_offset;
    }
    let expected: Vec<String> = (0..1000).map(|i| format!("s{i:04}")).collect();
    assert_eq!(seen, expected);

    // Over HTTP: one page, whatever the store holds, and `limit` is capped.
    let mut detailed = HealthService::detailed(store.clone());
    let json: serde_json::Value = serde_json::from_str(&get(&mut detailed, "/").await).unwrap();
    assert_eq!(json["served"], 1000);
    assert_eq!(json["alerts"]["critical"], 1);
    assert_eq!(json["certificates"].as_array().unwrap().len(), 100);
    let page = get(&mut detailed, "/?offset=990&limit=100").await;
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["certificates"].as_array().unwrap().len(), 10);
    assert_eq!(page["certificates"][0]["slot"], "s0990");
    assert!(page["next_offset"].is_null());
    let huge = get(&mut detailed, "/?limit=100000").await;
    let huge: serde_json::Value = serde_json::from_str(&huge).unwrap();
    assert_eq!(
        huge["certificates"].as_array().unwrap().len(),
        certrotate::serve::MAX_PAGE
    );
    let mut public = HealthService::new(store.clone());
    let json: serde_json::Value = serde_json::from_str(&get(&mut public, "/").await).unwrap();
    assert_eq!(json["served"], 1000);
    assert!(
        !json.to_string().contains("s0700"),
        "public health names no slot"
    );

    // Prometheus text: totals, no series per slot past metric_slots.
    let text = get(&mut detailed, "/?format=prometheus").await;
    assert!(
        text.contains("certrotate_certificates{alert=\"ok\"} 998"),
        "{text}"
    );
    assert!(
        text.contains("certrotate_certificates{alert=\"critical\"} 1"),
        "{text}"
    );
    assert!(!text.contains("slot="), "{text}");

    // The recorder: the slots installed while there were at most 50 have
    // their series; none of the others does, and the totals are there.
    let rendered = prometheus.render();
    let named: HashSet<&str> = rendered
        .lines()
        .filter(|l| l.starts_with("certrotate_certificate_expiry_timestamp_seconds{"))
        .filter_map(|l| l.split("slot=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(named.len(), 50, "{rendered}");
    assert!(named.contains("s0049") && !named.contains("s0050"));
    assert!(
        rendered.contains("certrotate_certificates{alert=\"ok\"} 998"),
        "{rendered}"
    );
    assert!(rendered.contains("certrotate_soonest_expiry_timestamp_seconds"));

    // Back under the limit: HealthService names the slots again.
    for i in 10..1000 {
        assert!(store.remove(&format!("s{i:04}")));
    }
    let text = get(&mut detailed, "/?format=prometheus").await;
    assert_eq!(
        text.matches("certrotate_certificate_alert_level{slot=")
            .count(),
        10
    );
    assert!(
        text.contains("certrotate_certificates{alert=\"ok\"} 10"),
        "{text}"
    );
    assert!(prometheus
        .render()
        .contains("certrotate_certificates{alert=\"critical\"} 0"));
}

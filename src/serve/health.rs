//! [`HealthService`]: the health snapshot over HTTP, as a tower `Service`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use serde::Serialize;

use crate::clock::unix_seconds;
use crate::health::{AlertCounts, AlertLevel, CertHealth, HealthSnapshot, HEALTH_LIMIT};
use crate::metrics::{self, Metric};
use crate::store::CertStore;

const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// Answers health checks and scrapes for a [`CertStore`]: its
/// [`HealthSnapshot`] as JSON, or its certificates as Prometheus text, with
/// a status a load balancer can act on.
///
/// - **Status**: `200 OK` while every serving certificate is below the
///   [`unhealthy_at`](Self::unhealthy_at) level (default
///   [`AlertLevel::Critical`]), `503 Service Unavailable` once one reaches
///   it, or while no certificate is serving at all. Slots without a
///   certificate next to serving ones are listed in the body but do not
///   fail the check: a server that still serves most of its names should not
///   be taken out of rotation for one bad pair.
/// - **Format**: Prometheus text exposition when the request has
///   `?format=prometheus` or accepts `text/plain` or OpenMetrics (as
///   Prometheus scrapers do), JSON otherwise (`?format=json` forces it).
///   `HEAD` answers the status alone; other methods get `405`.
///
/// - **Detail**: [`new`](Self::new) answers for strangers (a public router,
///   a load balancer): the status, the alert level, and per slot (numbered,
///   not named) the expiry, the alert level and the error *code* — no file
///   paths, hosts, OS errors, serials or names. [`detailed`](Self::detailed)
///   answers the whole [`HealthSnapshot`], for an internal port.
/// - **Size**: the JSON is a [`HealthSnapshot`]: counts over every slot, the
///   soonest expiries, and one page of slots (`?offset=N&limit=M`, default
///   the first [`HEALTH_LIMIT`], at most [`MAX_PAGE`] per request), so a
///   store of 10⁵ certificates answers in a few kilobytes.
///
/// The Prometheus text holds `certrotate_certificates` per alert level,
/// `certrotate_soonest_expiry_timestamp_seconds`, `certrotate_healthy` (1
/// or 0) and `certrotate_unserved_slots`, and, while the store has at most
/// [`metric_slots`](crate::store::CertStoreBuilder::metric_slots) slots, the
/// per-certificate gauges of the [metrics table](crate#metrics) (expiry,
/// remaining seconds, alert level, computed at the request); the counters
/// come from the `metrics` feature.
///
/// # Example
///
/// One line in an axum router:
///
/// ```no_run
/// # fn demo(rotator: certrotate::Rotator) {
/// use certrotate::{AlertLevel, HealthService};
///
/// let app: axum::Router = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "hello" }))
///     // Public: status, alert levels, expiry, error codes.
///     .route_service("/healthz", HealthService::new(rotator.store().clone()))
///     // 503 as soon as a renewal is overdue, not only once it is critical:
///     .route_service(
///         "/readyz",
///         HealthService::new(rotator.store().clone()).unhealthy_at(AlertLevel::RenewOverdue),
///     );
/// // Internal port: everything, names, serials, paths and messages included.
/// let admin: axum::Router = axum::Router::new()
///     .route_service("/health", HealthService::detailed(rotator.store().clone()));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HealthService {
    store: CertStore,
    unhealthy_at: AlertLevel,
    detailed: bool,
    #[cfg(feature = "acme")]
    on_demand: Option<std::sync::Arc<dyn super::IssuesOnDemand>>,
}

/// The most slots one request lists: `?limit=` above it is cut to it.
pub const MAX_PAGE: usize = 1000;

/// What [`HealthService::new`] tells anyone who asks.
#[derive(Serialize)]
struct PublicHealth {
    healthy: bool,
    alert: AlertLevel,
    served: usize,
    alerts: AlertCounts,
    /// A page of the serving slots, in order: numbered, not named.
    certificates: Vec<PublicCert>,
    next_offset: Option<usize>,
    /// The soonest expiries, without names.
    soonest: Vec<PublicCert>,
    /// Error codes of the slots with nothing to serve (one page).
    unserved: Vec<Option<&'static str>>,
    unserved_count: usize,
    failing_count: usize,
    last_error_code: Option<&'static str>,
}

/// A snapshot and what on-demand issuance did (counts only: no names).
#[derive(Serialize)]
struct WithOnDemand<'a, T: Serialize> {
    #[serde(flatten)]
    health: &'a T,
    #[cfg(feature = "acme")]
    #[serde(skip_serializing_if = "Option::is_none")]
    on_demand: Option<crate::health::OnDemandStats>,
}

#[derive(Serialize)]
struct PublicCert {
    alert: AlertLevel,
    #[serde(serialize_with = "crate::clock::ser_time")]
    not_after: std::time::SystemTime,
    remaining_seconds: u64,
    last_error_code: Option<&'static str>,
}

impl PublicHealth {
    fn of(health: &HealthSnapshot, healthy: bool) -> Self {
        let public = |certs: &[CertHealth]| {
            certs
                .iter()
                .map(|c| PublicCert {
                    alert: c.alert,
                    not_after: c.not_after,
                    remaining_seconds: c.remaining_seconds,
                    last_error_code: c.last_error_code,
                })
                .collect()
        };
        Self {
            healthy,
            alert: health.alert,
            served: health.served,
            alerts: health.alerts,
            certificates: public(&health.certificates),
            next_offset: health.next_offset,
            soonest: public(&health.soonest),
            unserved: health.unserved.iter().map(|u| u.last_error_code).collect(),
            unserved_count: health.unserved_count,
            failing_count: health.failing_count,
            last_error_code: health.last_error_code,
        }
    }
}

impl HealthService {
    /// Serves the health of `store` as strangers may see it (no names,
    /// paths, hosts or messages); unhealthy from [`AlertLevel::Critical`].
    pub fn new(store: CertStore) -> Self {
        Self {
            store,
            unhealthy_at: AlertLevel::Critical,
            detailed: false,
            #[cfg(feature = "acme")]
            on_demand: None,
        }
    }

    /// Serves the whole [`HealthSnapshot`] of `store`, names, serials, file
    /// paths and error messages included: for an internal port only.
    pub fn detailed(store: CertStore) -> Self {
        Self {
            detailed: true,
            ..Self::new(store)
        }
    }

    /// Answers `503` once a serving certificate reaches `level` (default
    /// [`AlertLevel::Critical`]). `AlertLevel::Ok` makes every answer `503`.
    #[must_use]
    pub fn unhealthy_at(mut self, level: AlertLevel) -> Self {
        self.unhealthy_at = level;
        self
    }

    /// Adds what `on_demand` did (its [`stats`](crate::OnDemand::stats):
    /// counts, no names) to the JSON as `on_demand`, and to the Prometheus
    /// text; and, since an on-demand server may rightly serve nothing until
    /// its first client, no longer fails the check while nothing serves.
    ///
    /// ```no_run
    /// # fn demo(on_demand: certrotate::OnDemand) {
    /// let health = certrotate::HealthService::new(on_demand.store().clone()).on_demand(on_demand);
    /// # }
    /// ```
    #[cfg(feature = "acme")]
    #[must_use]
    pub fn on_demand(mut self, on_demand: impl super::IssuesOnDemand) -> Self {
        self.on_demand = Some(std::sync::Arc::new(on_demand));
        self
    }

    /// What on-demand issuance did, if this service reports it.
    #[cfg(feature = "acme")]
    fn on_demand_stats(&self) -> Option<crate::health::OnDemandStats> {
        self.on_demand.as_ref().map(|on_demand| on_demand.stats())
    }

    /// Whether `health` passes the check. With on-demand issuance, serving
    /// nothing yet is healthy, but a slot of its own that serves nothing
    /// (the main certificate beside the on-demand names) is not.
    fn healthy(&self, health: &HealthSnapshot) -> bool {
        #[cfg(feature = "acme")]
        if let Some(on_demand) = &self.on_demand {
            // The on-demand slots that serve nothing are the names pending
            // (a name that failed leaves the store), however many there are.
            let pending = on_demand.stats().pending;
            let others = health.unserved_count.saturating_sub(pending);
            return others == 0 && health.alert < self.unhealthy_at;
        }
        health.served > 0 && health.alert < self.unhealthy_at
    }

    /// `health` as Prometheus text, with what on-demand issuance did.
    fn prometheus(&self, health: &HealthSnapshot, healthy: bool) -> String {
        let text = prometheus_text(health, healthy, self.detailed);
        #[cfg(feature = "acme")]
        let text = match self.on_demand_stats() {
            Some(stats) => text + &on_demand_text(&stats),
            None => text,
        };
        text
    }

    /// `health` as JSON, with what on-demand issuance did.
    fn json<T: Serialize>(&self, health: &T) -> String {
        json(&WithOnDemand {
            health,
            #[cfg(feature = "acme")]
            on_demand: self.on_demand_stats(),
        })
    }

    fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = Response::new(Full::new(Bytes::from_static(b"use GET or HEAD\n")));
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            return response;
        }
        let prometheus = wants_prometheus(request);
        let health = match prometheus {
            // Every slot, if there are few enough to name; else the totals.
            true => self.store.health_page(0, self.store.metric_slots()),
            false => {
                let (offset, limit) = page(request);
                self.store.health_page(offset, limit)
            }
        };
        let healthy = self.healthy(&health);
        let (content_type, body) = match (prometheus, self.detailed) {
            (true, _) => (PROMETHEUS, self.prometheus(&health, healthy)),
            (false, true) => (JSON, self.json(&health)),
            (false, false) => (JSON, self.json(&PublicHealth::of(&health, healthy))),
        };
        let body = match request.method() == Method::HEAD {
            true => Bytes::new(),
            false => Bytes::from(body),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = match healthy {
            true => StatusCode::OK,
            false => StatusCode::SERVICE_UNAVAILABLE,
        };
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

impl<B> tower_service::Service<Request<B>> for HealthService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&request)))
    }
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

/// `?offset=N&limit=M`: the page asked for (limit at most [`MAX_PAGE`]).
fn page<B>(request: &Request<B>) -> (usize, usize) {
    let (mut offset, mut limit) = (0, HEALTH_LIMIT);
    for pair in request.uri().query().unwrap_or_default().split('&') {
        let number = |value: &str| value.parse::<usize>().ok();
        match pair.split_once('=') {
            Some(("offset", value)) => offset = number(value).unwrap_or(offset),
            Some(("limit", value)) => limit = number(value).unwrap_or(limit),
            _ => {}
        }
    }
    (offset, limit.min(MAX_PAGE))
}

fn wants_prometheus<B>(request: &Request<B>) -> bool {
    let query = request.uri().query().unwrap_or_default();
    for pair in query.split('&') {
        match pair {
            "format=prometheus" => return true,
            "format=json" => return false,
            _ => {}
        }
    }
    request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/plain") || v.contains("application/openmetrics-text"))
}

/// A per-certificate gauge and its value.
type Gauge = (Metric, fn(&CertHealth) -> f64);

/// The snapshot in the Prometheus text exposition format (version 0.0.4).
/// Slots are labelled by name when `detailed`, else by number.
fn prometheus_text(health: &HealthSnapshot, healthy: bool, detailed: bool) -> String {
    let mut out = String::new();
    let gauges: [Gauge; 3] = [
        (metrics::EXPIRY, |c| unix_seconds(c.not_after) as f64),
        (metrics::REMAINING, |c| c.remaining_seconds as f64),
        (metrics::ALERT_LEVEL, |c| f64::from(c.alert.as_number())),
    ];
    let header = |out: &mut String, Metric { name, help }: Metric| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    };
    header(&mut out, metrics::CERTIFICATES);
    for level in AlertLevel::ALL {
        let (name, count) = (metrics::CERTIFICATES.name, health.alerts.at(level));
        let _ = writeln!(out, "{name}{{alert=\"{level}\"}} {count}");
    }
    if let Some(soonest) = health.soonest_expiry {
        header(&mut out, metrics::SOONEST_EXPIRY);
        let name = metrics::SOONEST_EXPIRY.name;
        let _ = writeln!(out, "{name} {}", unix_seconds(soonest));
    }
    // Per slot only if the page holds every serving slot.
    let per_slot = match health.next_offset {
        None => &health.certificates[..],
        Some(_) => &[],
    };
    for (metric, value) in gauges.into_iter().filter(|_| !per_slot.is_empty()) {
        header(&mut out, metric);
        for (index, cert) in per_slot.iter().enumerate() {
            let slot = match detailed {
                true => label(&cert.slot),
                false => index.to_string(),
            };
            let _ = writeln!(out, "{}{{slot=\"{slot}\"}} {}", metric.name, value(cert));
        }
    }
    header(&mut out, metrics::UNSERVED);
    let _ = writeln!(out, "{} {}", metrics::UNSERVED.name, health.unserved_count);
    header(&mut out, metrics::HEALTHY);
    let _ = writeln!(out, "{} {}", metrics::HEALTHY.name, u8::from(healthy));
    out
}

/// What on-demand issuance did, as the recorder's metrics of the same
/// names would show it.
#[cfg(feature = "acme")]
fn on_demand_text(stats: &crate::health::OnDemandStats) -> String {
    let mut out = String::new();
    let refusals: Vec<(&str, u64)> = stats.refusals.iter().map(|(r, n)| (*r, *n)).collect();
    counters(&mut out, metrics::ON_DEMAND_REFUSALS, "reason", &refusals);
    let orders = [("issued", stats.orders), ("failed", stats.failed_orders)];
    counters(&mut out, metrics::ON_DEMAND_ORDERS, "result", &orders);
    let cache = [
        ("hit", stats.hits),
        ("miss", stats.misses),
        ("load", stats.loads),
        ("eviction", stats.evictions),
    ];
    counters(&mut out, metrics::ON_DEMAND_CACHE, "event", &cache);
    let Metric { name, help } = metrics::ON_DEMAND_WAITING;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {}", stats.waiting);
    out
}

/// A counter with one label: a line per value.
#[cfg(feature = "acme")]
fn counters(out: &mut String, Metric { name, help }: Metric, label: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, count) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

//! # certrotate
//!
//! Rotates the TLS certificates of a rustls server while it serves: each new
//! certificate is fetched from a [`CertSource`], proven good by a [`Policy`]
//! (key matches, dates, names, chain, strength, and a real probe handshake),
//! swapped in without dropping a connection, kept for [`rollback`](Rotator::rollback),
//! and reported through [`RotationEvent`]s, `tracing` and a [`HealthSnapshot`].
//!
//! The handshake path, [`RotatingResolver`](store::RotatingResolver), is one lock-free `arc-swap` load
//! and a hash lookup; everything slow happens in the [`Rotator`]'s task.
//!
//! ## Quick start
//!
//! With the `axum` feature (`certrotate = { version = "0.1", features =
//! ["axum"] }`), and axum's `http2` feature (the configs offer `h2` by
//! ALPN):
//!
//! ```no_run
//! use std::sync::Arc;
//! use certrotate::{FileSource, Policy, Rotator, TlsListener};
//!
//! # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
//! // Rotations and refused candidates (with the reason) go to `tracing`.
//! tracing_subscriber::fmt::init();
//! // A Kubernetes TLS secret, certbot output, anything that writes PEM files.
//! let source = FileSource::pair("/etc/tls/tls.crt", "/etc/tls/tls.key");
//! let policy = Policy::builder().server_name("api.example.com").build()?;
//! let rotator = Rotator::builder(source, policy).start().await?;
//!
//! // From now on, new files are validated and swapped in, or refused (the
//! // old certificate keeps serving and `rotator.health()` says why).
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! let listener = TlsListener::new(tcp, Arc::new(rotator.server_config()?));
//! let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Certificates obtained any other way can be pushed through a
//! [`StaticSource`](source::StaticSource), or come from your own [`CertSource`].
//!
//! ## Feature flags
//!
//! The defaults (a crypto provider and files) pull no HTTP client and no
//! server framework; the rest is opt-in.
//!
//! - `aws-lc-rs` (default): rustls's aws-lc-rs crypto provider.
//! - `ring`: rustls's ring crypto provider (used when `aws-lc-rs` is off).
//! - `file` (default): [`FileSource`] and [`CertDirectory`], certificates
//!   from files watched with `notify`.
//! - `axum`: [`TlsListener`] implements `axum::serve::Listener`.
//! - `ca`: [`InternalCa`], short-lived certificates from a CA in
//!   the process, with CA rollover (adds `rcgen`).
//! - `acme`: [`AcmeSource`], certificates from Let's Encrypt or any
//!   RFC 8555 CA, and [`OnDemand`], certificates ordered at the first
//!   handshake for names the application allows (adds `instant-acme`); needs neither `axum` nor `ca`
//!   ([`Http01Responder`](acme::Http01Responder) is a tower `Service`; with `axum`, also a `Router`).
//! - `redis`: [`RedisStorage`](acme::RedisStorage), ACME state shared by
//!   a fleet through Redis (encrypted, with a fenced renewal lock; adds
//!   `redis` and `aes-gcm`; implies `acme`).
//! - `rfc2136`: [`Rfc2136Solver`](acme::rfc2136::Rfc2136Solver), DNS-01 by
//!   RFC 2136 dynamic updates signed with TSIG (adds `hickory-proto`;
//!   implies `acme`).
//! - `vault`: [`VaultSource`](vault::VaultSource) and
//!   [`VaultTrust`](vault::VaultTrust), certificates and client trust from
//!   a Vault or OpenBao PKI mount.
//! - `health`: [`HealthService`], the health snapshot over HTTP as
//!   a tower `Service`.
//! - `metrics`: the metrics below, through the `metrics` facade.
//! - `cli`: the `certrotate` command-line tool (`check`, `inspect`, `probe`,
//!   `ca`).
//!
//! ## Operations
//!
//! - **Alerts**: each serving certificate has an [`AlertLevel`] (ok,
//!   renew-overdue, critical, expired); each escalation is a
//!   [`RotationEvent::ExpiryWarning`] and a `tracing` warning (error once
//!   critical), repeated every [`alert_repeat`](rotator::RotatorBuilder::alert_repeat)
//!   while it lasts.
//! - **Health**: [`HealthService`] answers JSON or Prometheus text, `503`
//!   once a certificate is critical.
//! - **Triggers**: [`Rotator::rotate_on_sighup`], [`Rotator::rotate_now`],
//!   [`Rotator::rollback`].
//! - **Old connections**: [`MaxConnectionAge`](serve::MaxConnectionAge) closes connections that
//!   outlived a rotation gracefully, after a maximum age.
//!
//! ## Metrics
//!
//! With the `metrics` feature, whichever `metrics` recorder the application
//! installs (Prometheus, StatsD, OpenTelemetry...) receives:
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `certrotate_certificate_expiry_timestamp_seconds` | gauge | `slot` | `not_after` of the serving certificate, Unix time |
//! | `certrotate_certificate_remaining_seconds` | gauge | `slot` | seconds left before it expires (refreshed at least every 5 minutes; `expiry - time()` in PromQL is exact) |
//! | `certrotate_certificate_alert_level` | gauge | `slot` | 0 ok, 1 renew-overdue, 2 critical, 3 expired |
//! | `certrotate_rotations_total` | counter | `slot`, `source`, `result` | rotation attempts; `source` is the source's kind (`file`, `acme`, `ca`, `static`...), `result` is `rotated`, `unchanged`, `refused` or `failed` |
//! | `certrotate_refusals_total` | counter | `slot`, `reason` | candidates refused by the policy, by `Refusal::code()` (`key_mismatch`, `name_not_covered`, `expired`...) |
//! | `certrotate_source_errors_total` | counter | `slot`, `source`, `kind` | failed fetches, by `SourceError::code()` (`unavailable`, `read`, `rate_limited`...) |
//! | `certrotate_rollbacks_total` | counter | `slot` | rollbacks to the previous certificate |
//! | `certrotate_last_rotation_timestamp_seconds` | gauge | `slot` | when a certificate last went live, Unix time |
//! | `certrotate_last_attempt_timestamp_seconds` | gauge | `slot` | when a rotation was last attempted, Unix time |
//! | `certrotate_certificates` | gauge | `alert` | serving certificates per alert level (`ok`, `renew-overdue`, `critical`, `expired`), over the whole store |
//! | `certrotate_soonest_expiry_timestamp_seconds` | gauge | | `not_after` of the serving certificate that expires first, Unix time |
//! | `certrotate_on_demand_refusals_total` | counter | `reason` | handshakes refused a certificate on demand, by `OnDemandError::reason()` (`not_allowed`, `rate_limited`, `too_many_orders`, `too_many_pending`, `too_many_waiting`, `backing_off`, `invalid_name`, `failed`, `refused`, `timed_out`, `aborted`) |
//! | `certrotate_on_demand_orders_total` | counter | `result` | orders on demand: `issued` or `failed` |
//! | `certrotate_on_demand_cache_total` | counter | `event` | on-demand names: `hit` (served already), `miss` (to obtain), `load` (from storage, no order), `eviction` (dropped from memory) |
//! | `certrotate_on_demand_waiting_handshakes` | gauge | | handshakes waiting for an on-demand certificate |
//! | `certrotate_acme_orders_total` | counter | `ca`, `result` | ACME orders by CA (its directory URL) and `result` (`issued`, `failed`): a first CA failing while a fallback issues shows here |
//!
//! Per-slot series stop past the store's `metric_slots` (default 100, see
//! [`CertStoreBuilder::metric_slots`](store::CertStoreBuilder::metric_slots)): above it no slot gets per-slot gauges
//! and counters drop the `slot` label, so 10⁵ certificates do not make 10⁵
//! series; the two totals above are always recorded.
//!
//! A removed slot's gauges keep their last value; exporters drop idle
//! series (`metrics-exporter-prometheus`: `idle_timeout`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
compile_error!("certrotate needs a crypto provider: enable the `aws-lc-rs` or the `ring` feature");

#[cfg(feature = "acme")]
pub mod acme;
#[cfg(any(feature = "ca", feature = "acme", feature = "file"))]
mod atomic;
pub mod bundle;
mod clock;
pub mod danger;
#[cfg(feature = "file")]
pub mod directory;
mod drain;
mod engine;
pub mod events;
pub mod health;
mod mark;
mod metrics;
pub mod mtls;
#[cfg(feature = "acme")]
pub mod on_demand;
pub mod policy;
#[cfg(feature = "acme")]
mod random;
mod read;
mod renewal;
mod resolver;
pub mod rotator;
pub mod serve;
pub mod source;
mod source_error;
pub mod store;
mod sync;
mod util;
#[cfg(feature = "vault")]
#[cfg_attr(docsrs, doc(cfg(feature = "vault")))]
pub mod vault;

// The everyday types; the rest is in the modules above, by domain.
#[cfg(feature = "acme")]
pub use acme::AcmeSource;
pub use bundle::CertBundle;
#[cfg(feature = "file")]
pub use directory::CertDirectory;
pub use events::RotationEvent;
pub use health::{AlertLevel, HealthSnapshot};
pub use mtls::TrustStore;
#[cfg(feature = "acme")]
pub use on_demand::OnDemand;
pub use policy::Policy;
pub use rotator::{RotateError, Rotator};
#[cfg(feature = "health")]
pub use serve::HealthService;
pub use serve::TlsListener;
#[cfg(feature = "file")]
pub use source::FileSource;
#[cfg(feature = "ca")]
pub use source::InternalCa;
pub use source::{CertSource, SourceError};
pub use store::CertStore;

/// The rustls this crate is built against: its `ServerConfig`,
/// `ClientConfig` and key types are what the API takes and gives.
pub use rustls;
/// The tokio-rustls this crate is built against (`TlsAcceptor`,
/// `LazyConfigAcceptor`), for serving with its configs directly.
pub use tokio_rustls;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// Internals the fuzz targets reach (`--cfg fuzzing`, set by cargo-fuzz);
/// not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// Whether the certificate name `san` (maybe a wildcard) covers `name`.
    pub fn dns_matches(san: &str, name: &str) -> bool {
        crate::policy::dns_matches(san, name)
    }

    #[cfg(feature = "acme")]
    pub use crate::acme::fuzzing as acme;
}

/// The README's code compiles: it is tested as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The process-wide default crypto provider if one is installed, else the one
/// chosen by this crate's features.
fn default_provider() -> Arc<CryptoProvider> {
    if let Some(provider) = CryptoProvider::get_default() {
        return provider.clone();
    }
    #[cfg(feature = "aws-lc-rs")]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

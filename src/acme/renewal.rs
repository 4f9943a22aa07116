//! When to renew: the CA's renewal information (RFC 9773), shared through
//! the storage, else fractions of the lifetime. The one rule the rotator's
//! schedule and health follow ([`CertSource::renew_at`](crate::CertSource::renew_at)).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::CertificateIdentifier;

use super::AcmeSource;
use crate::bundle::{CertBundle, CertInfo};
use crate::renewal;
use crate::sync::lock;

/// Renew regardless of the CA's advice when this fraction of the lifetime is
/// left.
const EMERGENCY_FRACTION: f64 = 0.1;

/// Without advice from the CA, renew when this fraction of the lifetime is
/// left: a little early, so that a CA outage at renewal time leaves most of
/// the remaining 40% for retries.
const DEFAULT_RENEW_FRACTION: f64 = 0.4;

/// The CA's advice for one certificate: renew at `at`, a random time in the
/// window it suggested.
#[derive(Debug, Clone)]
pub(super) struct Advice {
    pub(super) fingerprint: String,
    pub(super) at: SystemTime,
    /// Whether `changed()` has woken the rotator for it.
    pub(super) fired: bool,
}

impl AcmeSource {
    /// Completes at the renewal time the CA advised (once per advice).
    pub(super) async fn advised_time(&self) {
        loop {
            let at = lock(&self.inner.advice)
                .as_ref()
                .filter(|a| !a.fired)
                .map(|a| a.at);
            let Some(at) = at else {
                // Advice comes with the next fetch; look again later.
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            };
            tokio::time::sleep(at.duration_since(self.now()).unwrap_or_default()).await;
            let mut advice = lock(&self.inner.advice);
            if let Some(advice) = advice.as_mut().filter(|a| a.at == at && !a.fired) {
                advice.fired = true;
                return;
            }
        }
    }

    /// When `cert` should be replaced: at the time the CA advised, else
    /// with 40% of its lifetime left; with 10% left whatever the advice.
    pub(super) fn renewal_time(&self, cert: &CertInfo) -> SystemTime {
        let left = |fraction| renewal::at_fraction(cert, fraction, 0.0, 0.0);
        let planned = match &*lock(&self.inner.advice) {
            Some(advice) if advice.fingerprint == cert.fingerprint_sha256 => advice.at,
            _ => left(DEFAULT_RENEW_FRACTION),
        };
        planned.min(left(EMERGENCY_FRACTION))
    }

    /// Whether `cert` should be replaced now.
    pub(super) fn due(&self, cert: &CertInfo, now: SystemTime) -> bool {
        now >= self.renewal_time(cert)
    }

    /// Asks the CA when to renew `cert` (RFC 9773), and remembers a random
    /// time in the suggested window. The time is shared through the storage:
    /// an instance that finds one stored for `cert` takes it instead of
    /// asking, so that a fleet asks the CA once per certificate and agrees
    /// on when to renew.
    pub(super) async fn advise(&self, cert: &CertBundle) {
        let fingerprint = &cert.info().fingerprint_sha256;
        let at = match self.shared_renewal_time(fingerprint).await {
            Some(at) => at,
            None => {
                let Some(at) = self.ask_renewal_time(cert).await else {
                    return;
                };
                tracing::info!(target: "certrotate", serial = %cert.info().serial, at = %crate::clock::rfc3339(at), "the CA advises renewal (ARI)");
                let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let shared = format!("{fingerprint} {seconds}");
                self.save(
                    &self.inner.renewal_key,
                    shared.as_bytes(),
                    "ARI renewal time",
                )
                .await;
                at
            }
        };
        *lock(&self.inner.advice) = Some(Advice {
            fingerprint: fingerprint.clone(),
            at,
            fired: false,
        });
    }

    /// The renewal time stored for the certificate with `fingerprint`.
    pub(super) async fn shared_renewal_time(&self, fingerprint: &str) -> Option<SystemTime> {
        let stored = self
            .inner
            .config
            .storage
            .load(&self.inner.renewal_key)
            .await
            .ok()??;
        let (stored_for, seconds) = std::str::from_utf8(&stored).ok()?.split_once(' ')?;
        let seconds = seconds.trim().parse().ok()?;
        // Whatever is stored (a hostile or corrupt value) cannot overflow.
        (stored_for == fingerprint)
            .then(|| crate::clock::saturating_add(UNIX_EPOCH, Duration::from_secs(seconds)))
    }

    /// A random time in the renewal window the CA suggests for `cert`, to
    /// the second; none if the CA has no renewal information.
    pub(super) async fn ask_renewal_time(&self, cert: &CertBundle) -> Option<SystemTime> {
        // Asked of the CA that issued it: another knows nothing of it.
        let ca = self.issuer(cert.info())?;
        let account = self.account(ca, false).await.ok()?;
        let id = CertificateIdentifier::try_from(&cert.chain()[0]).ok()?;
        let (info, _) = tokio::time::timeout(self.inner.config.timeout, account.renewal_info(&id))
            .await
            .ok()?
            .ok()?;
        let (start, end): (SystemTime, SystemTime) = (
            info.suggested_window.start.into(),
            info.suggested_window.end.into(),
        );
        let span = end.duration_since(start).unwrap_or_default();
        let at = crate::clock::saturating_add(start, span.mul_f64(fastrand::f64()));
        let seconds = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(crate::clock::saturating_add(
            UNIX_EPOCH,
            Duration::from_secs(seconds),
        ))
    }
}

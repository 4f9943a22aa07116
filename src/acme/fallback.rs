//! Falling back across CAs: each attempt tries the configured CAs in order
//! ([`AcmeBuilder::fallback`](super::AcmeBuilder::fallback)), skips one that
//! asked to be left alone, and remembers every CA's last failure so that an
//! operator learns the first CA is down while a later one still issues.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::failure::Failure;
use super::AcmeSource;
use crate::bundle::{CertBundle, CertInfo};
use crate::source::{CertSource, SourceError, SourceWarning};
use crate::sync::lock;

/// The line that names, in a stored certificate, the CA that issued it
/// (text outside the PEM sections, which PEM readers skip).
const ISSUER_LINE: &str = "certrotate-acme-ca: ";

/// The longest rest a rate-limited CA gets before it is asked again: its
/// wait may be days, but the CAs after it may fail meanwhile.
const LONGEST_REST: Duration = Duration::from_secs(3600);

/// How long before its issuance a last-resort certificate is valid from.
#[cfg(feature = "ca")]
const LAST_RESORT_BACKDATE: Duration = Duration::from_secs(2 * 3600);

/// The longest failure reason kept (a CA's problem detail can be long).
const LONGEST_REASON: usize = 1024;

/// One CA as one source met it: its rest after a rate limit (for this
/// source's names alone: most CA limits are per name), and its failure.
#[derive(Debug, Clone, Default)]
pub(super) struct Turn {
    /// Not asked again before then: it said it is rate-limited.
    resting_until: Option<SystemTime>,
    /// Its last failure for this source, until it issues again.
    failure: Option<String>,
}

impl Turn {
    /// Until when the CA rests, if it does at `now`. A rest longer than
    /// the longest (the clock went back) is over.
    fn resting(&self, now: SystemTime) -> Option<SystemTime> {
        self.resting_until
            .filter(|&t| t.duration_since(now).is_ok_and(|left| left <= LONGEST_REST))
            .filter(|&t| t > now)
    }
}

/// What is known of one CA, between attempts, by all the sources built
/// from one builder (for [`AcmeSource::ca_health`]).
#[derive(Debug, Default)]
pub(super) struct CaState {
    /// Its last failure, until it issues again.
    failure: Option<String>,
    /// Since when it has been failing.
    failing_since: Option<SystemTime>,
    /// Orders it issued and failed.
    issued: u64,
    failed: u64,
}

impl CaState {
    /// The CA issued: it is no longer failing.
    fn issued(&mut self) {
        self.issued += 1;
        (self.failure, self.failing_since) = (None, None);
    }

    /// The CA failed at `now`, for `reason`.
    fn failed(&mut self, reason: &str, now: SystemTime) {
        self.failed += 1;
        self.failing_since.get_or_insert(now);
        self.failure = Some(reason.to_owned());
    }
}

/// `failure` as kept: at most [`LONGEST_REASON`] bytes.
fn reason(failure: &Failure) -> String {
    let mut reason = failure.to_string();
    if reason.len() > LONGEST_REASON {
        let mut end = LONGEST_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// How one ACME CA of an [`AcmeSource`] has fared: whether it failed at
/// its last turn, and how often it issued and failed. Shared by the sources
/// built from one [`AcmeBuilder`](super::AcmeBuilder) (on-demand names
/// included).
///
/// ```
/// use certrotate::acme::AcmeCa;
/// use certrotate::AcmeSource;
///
/// let source = AcmeSource::builder("https://a.example/dir", ["api.example.com"])
///     .fallback(AcmeCa::new("https://b.example/dir"))
///     .build();
/// let cas = source.ca_health();
/// assert_eq!(cas[1].directory, "https://b.example/dir");
/// assert_eq!((cas[1].issued, cas[1].failed, cas[1].last_failure.as_deref()), (0, 0, None));
/// ```
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct CaHealth {
    /// The CA's directory URL.
    pub directory: String,
    /// Why it failed at its last turn, while it has not issued since.
    pub last_failure: Option<String>,
    /// Since when it has been failing (its first failure since it last
    /// issued).
    #[serde(serialize_with = "crate::clock::ser_opt_time")]
    pub failing_since: Option<SystemTime>,
    /// Certificates it issued since the process started.
    pub issued: u64,
    /// Orders that failed with it since the process started.
    pub failed: u64,
}

/// Every CA failed this attempt: each one's reason, in order.
#[derive(Debug)]
pub(super) struct EveryCaFailed(Vec<(String, Tried)>);

/// How one CA's turn in an attempt ended.
#[derive(Debug)]
enum Tried {
    Failed(Failure),
    /// Skipped: it asked not to be asked again before then.
    Resting(SystemTime),
}

impl fmt::Display for EveryCaFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "every CA failed")?;
        for (directory, tried) in &self.0 {
            match tried {
                Tried::Failed(failure) => write!(f, "; {directory}: {failure}")?,
                Tried::Resting(until) => write!(
                    f,
                    "; {directory}: rate-limited, not asked again before {}",
                    crate::clock::rfc3339(*until)
                )?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for EveryCaFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.first_failure()
            .map(|f| f as &(dyn std::error::Error + 'static))
    }
}

impl EveryCaFailed {
    /// The failure of the first CA that was asked.
    pub(super) fn first_failure(&self) -> Option<&Failure> {
        self.0.iter().find_map(|(_, tried)| match tried {
            Tried::Failed(failure) => Some(failure),
            Tried::Resting(_) => None,
        })
    }
}

impl crate::source_error::SourceError {
    /// The type of the ACME CA's problem document (RFC 8555 §6.7) behind
    /// this error, without the `urn:ietf:params:acme:error:` prefix:
    /// `"connection"` (the CA could not reach the challenge answer),
    /// `"rateLimited"`, `"unauthorized"`... `None` for an error that is not
    /// a CA's answer. Match on this rather than on the message.
    ///
    /// ```
    /// let error = certrotate::SourceError::unavailable("ACME", "connection refused");
    /// assert_eq!(error.acme_problem(), None);
    /// ```
    pub fn acme_problem(&self) -> Option<&str> {
        let crate::source_error::SourceErrorKind::Unavailable(source) = self.kind() else {
            return None;
        };
        match source.downcast_ref::<Failure>() {
            Some(failure) => failure.problem(),
            // With fallback CAs: the first CA's.
            None => source
                .downcast_ref::<EveryCaFailed>()?
                .first_failure()?
                .problem(),
        }
    }
}

impl AcmeSource {
    /// Orders a new certificate from the first CA that issues one, with
    /// what the CAs said about rate limits in the error, and takes the
    /// issuing CA's renewal advice for it.
    pub(super) async fn ordered(
        &self,
        replacing: Option<&CertBundle>,
    ) -> Result<CertBundle, SourceError> {
        let cas = &self.inner.config.cas;
        let mut failed = Vec::new();
        // The soonest a CA may be asked again, while every one asks to wait.
        let mut every_wait: Option<Duration> = Some(Duration::MAX);
        for (ca, config) in cas.iter().enumerate() {
            let now = self.now();
            let resting = lock(&self.inner.turns)[ca].resting(now);
            if let Some(until) = resting {
                let wait = until.duration_since(now).unwrap_or_default();
                every_wait = every_wait.map(|w| w.min(wait));
                tracing::info!(target: "certrotate", ca = %config.directory, "skipping a rate-limited CA this attempt");
                failed.push((config.directory.clone(), Tried::Resting(until)));
                continue;
            }
            // Only what the CA says during this attempt counts.
            lock(&self.inner.rate_limited).take();
            // `replaces` names a certificate of the CA ordered from.
            let replacing = replacing.filter(|r| self.issuer(r.info()) == Some(ca));
            let ordered = self.order(ca, replacing).await;
            let rate_limited = lock(&self.inner.rate_limited).take();
            match ordered {
                Ok(bundle) => {
                    lock(&config.state).issued();
                    lock(&self.inner.turns)[ca] = Turn::default();
                    // What the CA advises is for this one now.
                    *lock(&self.inner.provided) = Some(bundle.clone());
                    if ca > 0 {
                        tracing::warn!(target: "certrotate", ca = %config.directory, serial = %bundle.info().serial, "issued by a fallback CA: the CAs before it failed");
                    }
                    self.count_order(ca, true);
                    // In the background: its turn to ask may be a while.
                    let (source, issued) = (self.clone(), bundle.clone());
                    tokio::spawn(async move { source.advise(&issued).await });
                    return Ok(bundle);
                }
                Err(failure) => {
                    tracing::warn!(target: "certrotate", ca = %config.directory, reason = %failure, "the CA failed to issue");
                    self.count_order(ca, false);
                    let reason = reason(&failure);
                    lock(&config.state).failed(&reason, now);
                    lock(&self.inner.turns)[ca] = Turn {
                        resting_until: rate_limited
                            .map(|wait| crate::clock::saturating_add(now, wait.min(LONGEST_REST))),
                        failure: Some(reason),
                    };
                    every_wait = every_wait.zip(rate_limited).map(|(w, r)| w.min(r));
                    failed.push((config.directory.clone(), Tried::Failed(failure)));
                }
            }
        }
        let error = self.every_ca_failed(failed, every_wait);
        #[cfg(feature = "ca")]
        if let Some(bundle) = self.last_resort(&error, replacing) {
            return Ok(bundle);
        }
        Err(error)
    }

    /// A certificate from the internal last-resort CA, if one is configured
    /// and needed: nothing served, or what serves past its emergency point.
    #[cfg(feature = "ca")]
    fn last_resort(&self, error: &SourceError, stored: Option<&CertBundle>) -> Option<CertBundle> {
        let ca = self.inner.config.last_resort.as_ref()?;
        let now = self.now();
        // Not while something better serves or is stored (a restart in an
        // outage serves its stored certificate).
        let provided = lock(&self.inner.provided).clone();
        let usable = |cert: &CertBundle| !self.past_emergency(cert.info(), now);
        if provided.as_ref().is_some_and(usable) || stored.is_some_and(usable) {
            return None;
        }
        // Valid from two hours back: a certificate a CA issues afterwards is
        // newer (Let's Encrypt backdates an hour), so replay protection
        // never refuses it for this one.
        let spec = crate::source::LeafSpec::new(self.inner.config.domains.clone())
            .backdated(LAST_RESORT_BACKDATE);
        match ca.issue(&spec) {
            Ok(bundle) => {
                tracing::error!(target: "certrotate", names = %self.inner.config.domains.join(", "), "every ACME CA failed: serving a certificate from the internal last-resort CA ({error})");
                *lock(&self.inner.last_resort) = Some(error.to_string());
                Some(bundle.with_origin(self.last_resort_origin()))
            }
            Err(issue) => {
                tracing::error!(target: "certrotate", "the internal last-resort CA failed too: {issue}");
                None
            }
        }
    }

    /// What a last-resort certificate says of where it came from.
    pub(super) fn last_resort_origin(&self) -> String {
        format!(
            "internal last-resort CA for {}",
            self.inner.config.domains.join(", ")
        )
    }

    /// Whether `cert` came from the last-resort CA.
    pub(super) fn is_last_resort(&self, cert: &CertInfo) -> bool {
        cert.origin == self.last_resort_origin()
    }

    /// The error of an attempt in which no CA issued: rate-limited if
    /// every CA asked to wait (for the shortest of their waits); with one
    /// CA, its own failure as it was before there were fallbacks.
    fn every_ca_failed(
        &self,
        mut failed: Vec<(String, Tried)>,
        every_wait: Option<Duration>,
    ) -> SourceError {
        let from = self.describe();
        let one = (failed.len() == 1).then(|| failed.pop()).flatten();
        match (one, every_wait) {
            (Some((_, Tried::Failed(failure))), Some(wait)) => {
                SourceError::rate_limited(from, failure.to_string(), wait)
            }
            (Some((_, Tried::Failed(failure))), None) => SourceError::unavailable(from, failure),
            (Some(resting), wait) => {
                let every = EveryCaFailed(vec![resting]);
                SourceError::rate_limited(from, every.to_string(), wait.unwrap_or_default())
            }
            (None, Some(wait)) => {
                SourceError::rate_limited(from, EveryCaFailed(failed).to_string(), wait)
            }
            (None, None) => SourceError::unavailable(from, EveryCaFailed(failed)),
        }
    }

    /// Counts an order with CA `ca` in the metrics of the store this
    /// source is attached to.
    fn count_order(&self, ca: usize, ok: bool) {
        if let Some(store) = &*lock(&self.inner.attached) {
            store
                .events()
                .acme_order(&self.inner.config.cas[ca].directory, ok);
        }
    }

    /// Each CA's last failure, while it has not issued since: reported
    /// also when a later CA issued, so that the first being down is known
    /// before the last is down too.
    pub(super) fn ca_warnings(&self) -> Vec<SourceWarning> {
        let serving_last_resort = lock(&self.inner.provided)
            .as_ref()
            .is_some_and(|p| self.is_last_resort(p.info()));
        let last_resort = lock(&self.inner.last_resort)
            .clone()
            .filter(|_| serving_last_resort)
            .map(|reason| SourceWarning::LastResort { reason });
        let turns = lock(&self.inner.turns).clone();
        let failing = self
            .inner
            .config
            .cas
            .iter()
            .zip(turns)
            .filter_map(|(ca, turn)| {
                Some(SourceWarning::CaFailing {
                    directory: ca.directory.clone(),
                    reason: turn.failure?,
                })
            });
        last_resort.into_iter().chain(failing).collect()
    }

    /// How each CA has fared, in the order they are tried.
    pub fn ca_health(&self) -> Vec<CaHealth> {
        self.inner
            .config
            .cas
            .iter()
            .map(|ca| {
                let state = lock(&ca.state);
                CaHealth {
                    directory: ca.directory.clone(),
                    last_failure: state.failure.clone(),
                    failing_since: state.failing_since,
                    issued: state.issued,
                    failed: state.failed,
                }
            })
            .collect()
    }

    /// What a certificate from CA `ca` says of where it came from.
    pub(super) fn origin(&self, ca: &str) -> String {
        format!("ACME {ca} for {}", self.inner.config.domains.join(", "))
    }

    /// Which of the configured CAs issued `cert`, as its origin says.
    pub(super) fn issuer(&self, cert: &CertInfo) -> Option<usize> {
        let cas = &self.inner.config.cas;
        (0..cas.len()).find(|&i| cert.origin == self.origin(&cas[i].directory))
    }

    /// What is stored for a certificate CA `ca` issued: the line naming
    /// the CA, then the chain and key.
    pub(super) fn stored_form(&self, ca: usize, combined: &str) -> zeroize::Zeroizing<String> {
        let directory = &self.inner.config.cas[ca].directory;
        zeroize::Zeroizing::new(format!("{ISSUER_LINE}{directory}\n{combined}"))
    }

    /// The origin of a stored certificate: the configured CA its first
    /// line names; a CA no longer configured (or whatever else a storage
    /// holds there) is not named, so that what a storage says cannot add
    /// origins (metric labels, health text) beyond the configured CAs and
    /// one more; no line: the first CA (stored before there were
    /// fallbacks).
    pub(super) fn stored_origin(&self, pem: &[u8]) -> String {
        let first = pem.split(|&b| b == b'\n').next().unwrap_or_default();
        let Some(named) = first.strip_prefix(ISSUER_LINE.as_bytes()) else {
            return self.origin(&self.inner.config.cas[0].directory);
        };
        let named = named.trim_ascii();
        let cas = &self.inner.config.cas;
        match cas.iter().find(|ca| ca.directory.as_bytes() == named) {
            Some(ca) => self.origin(&ca.directory),
            None => self.origin("(a CA no longer configured)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::AcmeSource;

    use super::super::AcmeCa;

    fn source() -> AcmeSource {
        AcmeSource::builder("https://a.invalid/dir", ["a.example"])
            .fallback(AcmeCa::new("https://b.invalid/dir"))
            .build()
    }

    /// A rest longer than the longest a CA gets (the clock went back after
    /// it was set) is over: the CA is not skipped for days.
    #[test]
    fn a_rest_from_before_a_clock_jump_is_over() {
        let now = std::time::SystemTime::now();
        let turn = |left: std::time::Duration| super::Turn {
            resting_until: Some(now + left),
            failure: None,
        };
        let minute = std::time::Duration::from_secs(60);
        assert_eq!(turn(minute).resting(now), Some(now + minute));
        assert_eq!(turn(3 * 24 * 60 * minute).resting(now), None);
        assert_eq!(turn(minute).resting(now + 2 * minute), None);
    }

    /// The issuing CA survives storage; a value stored before there were
    /// fallbacks is the first CA's; a CA no longer configured, or what a
    /// hostile storage names, is not named (one origin for all of them).
    #[test]
    fn the_issuer_is_read_back_from_what_is_stored() {
        let source = source();
        let stored = source.stored_form(1, "-----BEGIN CERTIFICATE-----\n");
        assert_eq!(
            source.stored_origin(stored.as_bytes()),
            "ACME https://b.invalid/dir for a.example"
        );
        assert_eq!(
            source.stored_origin(b"-----BEGIN CERTIFICATE-----\n"),
            "ACME https://a.invalid/dir for a.example"
        );
        let unlisted = "ACME (a CA no longer configured) for a.example";
        for named in [
            &b"certrotate-acme-ca: https://evil\x1b[2J/dir\n"[..],
            b"certrotate-acme-ca: https://c.invalid/dir\n",
            b"certrotate-acme-ca: https://c.invalid/dir?1\n",
        ] {
            assert_eq!(source.stored_origin(named), unlisted);
        }
    }
}

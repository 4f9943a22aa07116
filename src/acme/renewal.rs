//! When to renew: the CA's renewal information (RFC 9773), polled as the CA
//! asks and shared through the storage, else fractions of the lifetime. The
//! one rule the rotator's schedule and health follow
//! ([`CertSource::renew_at`](crate::CertSource::renew_at)).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::CertificateIdentifier;
use rustls::pki_types::CertificateDer;

use super::AcmeSource;
use crate::bundle::{CertBundle, CertInfo};
use crate::renewal::{self, Renewal, RenewalWindow};
use crate::sync::lock;

/// Renew regardless of the CA's advice when this fraction of the lifetime is
/// left.
const EMERGENCY_FRACTION: f64 = 0.1;

/// Without advice from the CA, renew when this fraction of the lifetime is
/// left: a little early, so that a CA outage at renewal time leaves most of
/// the remaining 40% for retries.
const DEFAULT_RENEW_FRACTION: f64 = 0.4;

/// How long to wait before looking again when the CA's advice is being
/// asked elsewhere, or is to come with the next fetch (new advice ends the
/// wait at once).
const LOOK_AGAIN: Duration = Duration::from_secs(60);

/// How long to wait before asking again when the CA could not be asked
/// (RFC 9773 §4.3.3 suggests a few hours; clamped like a `Retry-After`).
const POLL_AFTER_FAILURE: Duration = Duration::from_secs(3600);

/// The CA's advice for one certificate: renew at `at`, a random time in the
/// window it suggested, and ask again at `next_poll`.
#[derive(Debug, Clone)]
pub(super) struct Advice {
    pub(super) fingerprint: String,
    /// The certificate, to ask about it again, and the number of the CA
    /// that issued it (the one to ask).
    pub(super) leaf: CertificateDer<'static>,
    pub(super) ca: usize,
    pub(super) at: SystemTime,
    /// The window `at` was chosen in (none for a time stored by an older
    /// version).
    pub(super) window: Option<RenewalWindow>,
    /// When to ask the CA again (its `Retry-After`, clamped).
    pub(super) next_poll: SystemTime,
    /// Whether `changed()` has woken the rotator for it.
    pub(super) fired: bool,
    /// Whether the rotator has looked at it since it came: it wakes once
    /// for new advice, so health shows the window and time at once.
    pub(super) seen: bool,
}

/// What the CA answered about one certificate.
struct Answer {
    window: RenewalWindow,
    retry_after: Duration,
}

impl AcmeSource {
    /// Completes at the renewal time the CA advised (once per advice),
    /// asking the CA again whenever it said to (its `Retry-After`), so that
    /// a window it moves (a revocation ahead) is followed.
    pub(super) async fn advised_time(&self) {
        loop {
            let next = {
                let mut advice = lock(&self.inner.advice);
                if let Some(new) = advice.as_mut().filter(|a| !a.seen) {
                    // New advice: the rotator plans with it now.
                    new.seen = true;
                    return;
                }
                advice
                    .as_ref()
                    .map(|a| (a.next_poll, (!a.fired).then_some(a.at)))
            };
            // The certificate served, if the CA was not asked about it yet
            // (or its answer is due again): asked now, in its turn.
            let provided = lock(&self.inner.provided).clone();
            if let Some(cert) = provided.filter(|p| !self.advised(p.info())) {
                self.advise(&cert).await;
                if !self.advised(cert.info()) {
                    // Being asked by another attempt (a fetch asks in the
                    // background): its answer, or a look again later.
                    self.sleep_unless_advised(LOOK_AGAIN).await;
                }
                continue;
            }
            let Some((mut poll, at)) = next else {
                // Advice comes with the next fetch; look again later.
                self.sleep_unless_advised(LOOK_AGAIN).await;
                continue;
            };
            // A poll further off than the longest interval (the clock went
            // back) happens now.
            let longest = self.inner.config.renewal_info_interval.1;
            if poll
                .duration_since(self.now())
                .is_ok_and(|wait| wait > longest)
            {
                poll = self.now();
            }
            // What comes first is done when its time comes, as the timer
            // (not the wall clock, which may differ a little) says.
            let fire = at.filter(|&at| at <= poll);
            let wake = fire.unwrap_or(poll);
            let wait = wake.duration_since(self.now()).unwrap_or_default();
            if self.sleep_unless_advised(wait).await {
                continue;
            }
            if let Some(at) = fire {
                let mut advice = lock(&self.inner.advice);
                if let Some(advice) = advice.as_mut().filter(|a| a.at == at && !a.fired) {
                    advice.fired = true;
                    return;
                }
                continue;
            }
            self.poll().await;
        }
    }

    /// Sleeps for `wait`, or until new advice comes (`true`): a revocation
    /// learnt by an ask in the background renews at once, not when this
    /// sleep would have ended.
    async fn sleep_unless_advised(&self, wait: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(wait) => false,
            () = self.inner.advice_came.notified() => true,
        }
    }

    /// Asks the CA again about the advised certificate, in its turn among
    /// the sources of this builder.
    async fn poll(&self) {
        // The next poll moves first: a poll cut short (the rotator woken
        // by something else) is not repeated at once.
        let later = crate::clock::saturating_add(self.now(), self.poll_interval(None));
        let Some((fingerprint, leaf, ca)) = lock(&self.inner.advice).as_mut().map(|a| {
            a.next_poll = later;
            (a.fingerprint.clone(), a.leaf.clone(), a.ca)
        }) else {
            return;
        };
        let pace = &self.inner.config.renewal_info_pace;
        if !pace.turn_within(self.poll_interval(None)).await {
            return;
        }
        if let Some(answer) = self.ask(ca, &leaf).await {
            self.take(&fingerprint, (ca, &leaf), answer, self.now())
                .await;
        }
    }

    /// Takes the CA's answer for the certificate `fingerprint`: a new time
    /// only if the window moved (a time once chosen in a window stays), and
    /// when to ask again; shared through the storage if the time is new.
    async fn take(
        &self,
        fingerprint: &str,
        (ca, leaf): (usize, &CertificateDer<'static>),
        answer: Answer,
        now: SystemTime,
    ) {
        let next_poll =
            crate::clock::saturating_add(now, self.poll_interval(Some(answer.retry_after)));
        let moved = {
            let mut advice = lock(&self.inner.advice);
            // An answer about a certificate no longer served (a late one
            // for the replaced certificate) does not replace the advice.
            let served = lock(&self.inner.provided)
                .as_ref()
                .map(|p| p.info().fingerprint_sha256.clone());
            let current = advice.as_ref().map(|a| a.fingerprint.clone());
            if current.is_some_and(|c| c != fingerprint) && served.is_some_and(|s| s != fingerprint)
            {
                return;
            }
            let kept = advice
                .as_ref()
                .filter(|a| a.fingerprint == fingerprint && a.window == Some(answer.window));
            match kept {
                Some(_) => {
                    if let Some(advice) = advice.as_mut() {
                        advice.next_poll = next_poll;
                    }
                    None
                }
                None => {
                    let at = pick(answer.window);
                    *advice = Some(Advice {
                        fingerprint: fingerprint.to_owned(),
                        leaf: leaf.clone(),
                        ca,
                        at,
                        window: Some(answer.window),
                        next_poll,
                        fired: false,
                        seen: false,
                    });
                    Some(at)
                }
            }
        };
        if let Some(at) = moved {
            self.inner.advice_came.notify_one();
            tracing::info!(target: "certrotate", %fingerprint, at = %crate::clock::rfc3339(at), start = %crate::clock::rfc3339(answer.window.start), end = %crate::clock::rfc3339(answer.window.end), "the CA advises renewal (ARI)");
            let shared = format!(
                "{fingerprint} {} {} {}",
                seconds(at),
                seconds(answer.window.start),
                seconds(answer.window.end)
            );
            self.save(
                &self.inner.renewal_key,
                shared.as_bytes(),
                "ARI renewal time",
            )
            .await;
        }
    }

    /// How long to wait before asking again: the CA's `Retry-After` (or an
    /// hour if it could not be asked) within the configured bounds.
    fn poll_interval(&self, retry_after: Option<Duration>) -> Duration {
        let (min, max) = self.inner.config.renewal_info_interval;
        retry_after.unwrap_or(POLL_AFTER_FAILURE).clamp(min, max)
    }

    /// When `cert` should be replaced: at the time the CA advised, else
    /// with 40% of its lifetime left; with 10% left whatever the advice.
    pub(super) fn renewal_time(&self, cert: &CertInfo) -> Renewal {
        // A last-resort certificate is replaced as soon as a CA issues.
        if self.is_last_resort(cert) {
            return Renewal::new(cert.not_before);
        }
        let left = |fraction| renewal::at_fraction(cert, fraction, 0.0, 0.0);
        let emergency = left(EMERGENCY_FRACTION);
        match &*lock(&self.inner.advice) {
            Some(advice) if advice.fingerprint == cert.fingerprint_sha256 => {
                let planned = Renewal::new(advice.at.min(emergency));
                match advice.window {
                    Some(window) => planned.in_window(window),
                    None => planned,
                }
            }
            _ => Renewal::new(left(DEFAULT_RENEW_FRACTION).min(emergency)),
        }
    }

    /// Whether less than a tenth of `cert`'s lifetime is left at `now`.
    #[cfg_attr(not(feature = "ca"), allow(dead_code))]
    pub(super) fn past_emergency(&self, cert: &CertInfo, now: SystemTime) -> bool {
        now >= renewal::at_fraction(cert, EMERGENCY_FRACTION, 0.0, 0.0)
    }

    /// Whether the CA's advice on `cert` is known, or was asked for lately
    /// without an answer (not asked again before the next poll's time).
    pub(super) fn advised(&self, cert: &CertInfo) -> bool {
        let fingerprint = &cert.fingerprint_sha256;
        let now = self.now();
        lock(&self.inner.advice)
            .as_ref()
            .is_some_and(|a| a.fingerprint == *fingerprint)
            || lock(&self.inner.unadvised)
                .as_ref()
                .is_some_and(|(f, until)| f == fingerprint && *until > now)
    }

    /// Whether `cert` should be replaced now.
    pub(super) fn due(&self, cert: &CertInfo, now: SystemTime) -> bool {
        now >= self.renewal_time(cert).at
    }

    /// Takes the CA's advice on when to renew `cert` (RFC 9773): the time
    /// stored for it by an instance that asked (a fleet asks the CA once
    /// per certificate and agrees on when to renew), else the CA's answer.
    /// Either way the CA is asked again when it said to.
    pub(super) async fn advise(&self, cert: &CertBundle) {
        // One at a time per source: attempts that come while one asks do
        // not queue more.
        use std::sync::atomic::{AtomicBool, Ordering};
        if self.inner.advising.swap(true, Ordering::AcqRel) {
            return;
        }
        /// Lets the next one ask, however this one ends (a fetch that
        /// times out drops it mid-way).
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.inner.advising);
        self.advise_alone(cert).await;
    }

    async fn advise_alone(&self, cert: &CertBundle) {
        let fingerprint = &cert.info().fingerprint_sha256;
        // Asked of the CA that issued it: another knows nothing of it.
        let Some(ca) = self.issuer(cert.info()) else {
            return;
        };
        let leaf = cert.chain()[0].clone();
        let now = self.now();
        if let Some((at, window)) = self.shared_renewal_time(fingerprint).await {
            *lock(&self.inner.advice) = Some(Advice {
                fingerprint: fingerprint.clone(),
                leaf,
                ca,
                at,
                window,
                // Polled by this instance too, in its turn.
                next_poll: crate::clock::saturating_add(now, self.poll_interval(None)),
                fired: false,
                seen: false,
            });
            self.inner.advice_came.notify_one();
            return;
        }
        // In its turn, if that comes within a step; else (or without an
        // answer) the lifetime rule holds until the next poll's time.
        let pace = &self.inner.config.renewal_info_pace;
        let answer = match pace.turn_within(self.inner.config.timeout).await {
            true => self.ask(ca, &leaf).await,
            false => None,
        };
        match answer {
            Some(answer) => self.take(fingerprint, (ca, &leaf), answer, now).await,
            None => {
                let until = crate::clock::saturating_add(now, self.poll_interval(None));
                *lock(&self.inner.unadvised) = Some((fingerprint.clone(), until));
            }
        }
    }

    /// The renewal time (and window) stored for the certificate with
    /// `fingerprint`.
    pub(super) async fn shared_renewal_time(
        &self,
        fingerprint: &str,
    ) -> Option<(SystemTime, Option<RenewalWindow>)> {
        let stored = self
            .inner
            .config
            .storage
            .load(&self.inner.renewal_key)
            .await
            .ok()??;
        let text = std::str::from_utf8(&stored).ok()?;
        let mut fields = text.split_whitespace();
        if fields.next()? != fingerprint {
            return None;
        }
        // Whatever is stored (a hostile or corrupt value) cannot overflow.
        let mut time = || -> Option<SystemTime> {
            let seconds = fields.next()?.parse().ok()?;
            Some(crate::clock::saturating_add(
                UNIX_EPOCH,
                Duration::from_secs(seconds),
            ))
        };
        let at = time()?;
        let window = time()
            .zip(time())
            .filter(|(start, end)| start <= end)
            .map(|(start, end)| RenewalWindow { start, end });
        Some((at, window))
    }

    /// The window CA number `ca` suggests for the certificate `leaf` and
    /// when to ask again; none if the CA has no renewal information or did
    /// not answer within the step timeout.
    async fn ask(&self, ca: usize, leaf: &CertificateDer<'static>) -> Option<Answer> {
        let account = self.account(ca, false).await.ok()?;
        let id = CertificateIdentifier::try_from(leaf).ok()?;
        let asked = tokio::time::timeout(self.inner.config.timeout, account.renewal_info(&id));
        let (info, retry_after) = asked.await.ok()?.ok()?;
        let window = RenewalWindow {
            start: info.suggested_window.start.into(),
            end: info.suggested_window.end.into(),
        };
        (window.start <= window.end).then_some(Answer {
            window,
            retry_after,
        })
    }
}

/// A uniformly random time in `window`, to the second (RFC 9773 §4.2; in
/// the past if the window is, which renews at once).
fn pick(window: RenewalWindow) -> SystemTime {
    let span = window.end.duration_since(window.start).unwrap_or_default();
    let at = crate::clock::saturating_add(window.start, span.mul_f64(fastrand::f64()));
    crate::clock::saturating_add(UNIX_EPOCH, Duration::from_secs(seconds(at)))
}

fn seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9773 §4.2: a time chosen uniformly at random in the window, so
    /// that the certificates one window was given for are not all renewed
    /// in its first second. Each quarter of the window gets about a
    /// quarter of 2,000 picks (a rule that always chose the start, the
    /// middle or the end would put them all in one).
    #[test]
    fn a_time_is_picked_uniformly_inside_the_window() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let window = RenewalWindow {
            start,
            end: start + Duration::from_secs(4_000),
        };
        let mut quarters = [0; 4];
        for _ in 0..2_000 {
            let at = pick(window);
            let offset = at.duration_since(start).unwrap().as_secs();
            assert!(at <= window.end, "{offset} s past the start");
            quarters[(offset / 1_000).min(3) as usize] += 1;
        }
        assert!(
            quarters.iter().all(|n| (400..=600).contains(n)),
            "{quarters:?}"
        );
    }

    /// A window already past (a revocation drill) gives a time in it:
    /// renewal at once, never later.
    #[test]
    fn a_past_window_gives_a_past_time() {
        let now = SystemTime::now();
        let window = RenewalWindow {
            start: now - Duration::from_secs(120),
            end: now - Duration::from_secs(60),
        };
        for _ in 0..100 {
            assert!(pick(window) < now);
        }
    }
}

//! Renewal schedule, retry backoff and expiry alerts, on paused tokio time:
//! months of certificate life run in milliseconds.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use certrotate::danger::Clock;
use certrotate::{
    AlertLevel, CertBundle, CertSource, CertStore, Policy, RotationEvent, Rotator, SourceError,
};
use common::{Ca, Leaf, TokioClock};
use tokio::time::Instant;

const DAY: Duration = Duration::from_secs(86_400);

/// Issues a fresh certificate (90 days unless told) at every fetch, or
/// fails while told to.
struct IssuingSource {
    ca: Ca,
    lifetime: Mutex<Duration>,
    clock: Arc<TokioClock>,
    failing: AtomicBool,
    /// While failing, fail with a rate limit asking for this wait.
    rate_limit: Mutex<Option<Duration>>,
    fetches: Mutex<Vec<Instant>>,
}

impl CertSource for IssuingSource {
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        self.fetches.lock().unwrap().push(Instant::now());
        if self.failing.load(Ordering::SeqCst) {
            if let Some(retry_after) = *self.rate_limit.lock().unwrap() {
                return Err(SourceError::rate_limited(
                    self.describe(),
                    "too many certificates",
                    retry_after,
                ));
            }
            return Err(SourceError::unavailable(self.describe(), "CA is down"));
        }
        let now = self.clock.now();
        Ok(self
            .ca
            .issue(Leaf::default().lifetime(
                now - Duration::from_secs(60),
                now + *self.lifetime.lock().unwrap(),
            ))
            .bundle)
    }

    fn describe(&self) -> String {
        "test CA".into()
    }
}

fn setup() -> (Arc<IssuingSource>, Arc<TokioClock>, CertStore) {
    let clock = TokioClock::new();
    let source = Arc::new(IssuingSource {
        ca: Ca::new(),
        lifetime: Mutex::new(90 * DAY),
        clock: clock.clone(),
        failing: AtomicBool::new(false),
        rate_limit: Mutex::new(None),
        fetches: Mutex::new(Vec::new()),
    });
    let store = CertStore::builder().clock(clock.clone()).build();
    (source, clock, store)
}

#[tokio::test(start_paused = true)]
async fn renews_when_a_third_of_the_lifetime_is_left() {
    let (source, clock, store) = setup();
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store.clone())
        .renewal_jitter(0.1)
        .start()
        .await
        .unwrap();
    let first = rotator.current().unwrap();
    let mut events = rotator.subscribe();
    for _ in 0..3 {
        let serving = rotator.current().unwrap();
        let new = loop {
            if let RotationEvent::Rotated { new, .. } = events.recv().await.unwrap() {
                break new;
            }
        };
        // 90-day certificates renew with 30 days left, up to 10% of that (3 days) earlier.
        let left = serving.not_after.duration_since(clock.now()).unwrap();
        assert!(
            left >= 30 * DAY - Duration::from_secs(1),
            "renewed too late: {left:?} left"
        );
        assert!(
            left <= 33 * DAY + Duration::from_secs(1),
            "renewed too early: {left:?} left"
        );
        assert_ne!(new.serial, serving.serial);
    }
    assert_eq!(rotator.health().rotations, 4);
    assert!(clock.now().duration_since(first.not_before).unwrap() > 170 * DAY);
    assert_eq!(
        source.fetches.lock().unwrap().len(),
        4,
        "one fetch per renewal, no extra"
    );
}

/// Dropping every handle does not stop the rotation (as `Rotator`
/// documents): a rotator built and let go, like a client certificate's in a
/// block, keeps renewing.
#[tokio::test(start_paused = true)]
async fn dropping_every_handle_keeps_the_rotation_going() {
    let (source, _clock, store) = setup();
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store.clone())
        .start()
        .await
        .unwrap();
    let mut events = store.subscribe();
    drop(rotator);
    for _ in 0..2 {
        let renewed = tokio::time::timeout(120 * DAY, async {
            loop {
                if let RotationEvent::Rotated { .. } = events.recv().await.unwrap() {
                    return;
                }
            }
        });
        renewed.await.expect("still renewing");
    }
    assert_eq!(source.fetches.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_up_to_the_cap() {
    let (source, _clock, store) = setup();
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store.clone())
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let serving = rotator.current().unwrap();
    source.failing.store(true, Ordering::SeqCst);
    let err = rotator.rotate_now().await.unwrap_err();
    assert_eq!(err.to_string(), "test CA is unavailable: CA is down");
    assert_eq!(
        rotator.health().last_error.as_deref(),
        Some("test CA is unavailable: CA is down")
    );

    // Let ten retries happen.
    while source.fetches.lock().unwrap().len() < 13 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let fetches = source.fetches.lock().unwrap().clone();
    // fetches[0] is the initial load, [1] the failed rotate_now; then the retries.
    let delays: Vec<Duration> = fetches[1..].windows(2).map(|w| w[1] - w[0]).collect();
    for (n, delay) in delays.iter().enumerate() {
        let ceiling = Duration::from_secs(1 << n.min(10)).min(Duration::from_secs(60));
        assert!(
            *delay <= ceiling + Duration::from_millis(1),
            "retry {n} after {delay:?}, ceiling {ceiling:?}"
        );
        assert!(
            *delay >= ceiling / 2,
            "retry {n} after {delay:?}, too soon for {ceiling:?}"
        );
    }
    assert!(
        delays.last().unwrap() >= &Duration::from_secs(30),
        "the cap is reached"
    );
    assert_eq!(
        rotator.current().unwrap().serial,
        serving.serial,
        "the old certificate keeps serving"
    );

    // Recovery: the next retry succeeds and clears the error.
    source.failing.store(false, Ordering::SeqCst);
    let mut events = rotator.subscribe();
    loop {
        if let RotationEvent::Rotated { .. } = events.recv().await.unwrap() {
            break;
        }
    }
    assert_eq!(rotator.health().last_error, None);
}

#[tokio::test(start_paused = true)]
async fn alerts_escalate_while_renewal_keeps_failing() {
    let (source, clock, store) = setup();
    let repeat = Duration::from_secs(6 * 3600);
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store.clone())
        .retry_backoff(Duration::from_secs(60), Duration::from_secs(6 * 3600))
        .alert_repeat(repeat)
        .start()
        .await
        .unwrap();
    source.failing.store(true, Ordering::SeqCst);
    let cert = rotator.current().unwrap();
    let mut events = rotator.subscribe();
    let mut warnings: Vec<(AlertLevel, SystemTime)> = Vec::new();
    while warnings.len() < 3 || warnings[warnings.len() - 3].0 != AlertLevel::Expired {
        if let RotationEvent::ExpiryWarning { level, .. } = events.recv().await.unwrap() {
            warnings.push((level, clock.now()));
            assert_eq!(rotator.health().alert, level);
        }
    }
    let mut levels: Vec<_> = warnings.iter().map(|(level, _)| *level).collect();
    levels.dedup();
    assert_eq!(
        levels,
        [
            AlertLevel::RenewOverdue,
            AlertLevel::Critical,
            AlertLevel::Expired
        ]
    );
    // Repeated while it lasts, never more often than `alert_repeat` for one level.
    for pair in warnings.windows(2).filter(|w| w[0].0 == w[1].0) {
        let gap = pair[1].1.duration_since(pair[0].1).unwrap();
        assert!(
            gap >= repeat && gap < repeat + Duration::from_secs(301),
            "{gap:?}"
        );
    }
    let overdue = warnings
        .iter()
        .filter(|w| w.0 == AlertLevel::RenewOverdue)
        .count();
    assert!(
        overdue > 10,
        "30 days overdue is reported again and again: {overdue}"
    );
    assert!(clock.now() >= cert.not_after);
    assert_eq!(
        rotator.current().unwrap().serial,
        cert.serial,
        "nothing was swapped in"
    );
    assert!(rotator.health().last_error.is_some());
}

#[tokio::test(start_paused = true)]
async fn spawn_retries_until_the_first_certificate_arrives() {
    let (source, _clock, store) = setup();
    source.failing.store(true, Ordering::SeqCst);
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store)
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(10))
        .spawn();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(rotator.current().is_none());
    assert!(source.fetches.lock().unwrap().len() >= 3);
    source.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(rotator.current().is_some());
    rotator.shutdown().await;
}

#[test]
fn alert_levels_follow_the_renewal_window() {
    let ca = Ca::new();
    let start = SystemTime::now();
    let info = ca
        .issue(Leaf::default().lifetime(start, start + 90 * DAY))
        .bundle
        .info()
        .clone();
    // Due for renewal with a third of the lifetime left.
    let renew_at = info.not_after - info.lifetime() / 3;
    let at = |days: u32| AlertLevel::at(&info, start + days * DAY, renew_at);
    assert_eq!(at(0), AlertLevel::Ok);
    assert_eq!(at(59), AlertLevel::Ok);
    assert_eq!(at(61), AlertLevel::RenewOverdue);
    assert_eq!(at(80), AlertLevel::RenewOverdue);
    assert_eq!(at(82), AlertLevel::Critical);
    assert_eq!(at(89), AlertLevel::Critical);
    assert_eq!(at(90), AlertLevel::Expired);

    // A one-day certificate has less than 24 h left from issuance: once its
    // renewal is overdue, it is critical.
    let end = start + DAY;
    let info = ca
        .issue(Leaf::default().lifetime(start, end))
        .bundle
        .info()
        .clone();
    let renew_at = info.not_after - info.lifetime() / 3;
    let hours = |h: u32| AlertLevel::at(&info, start + h * Duration::from_secs(3600), renew_at);
    assert_eq!(hours(15), AlertLevel::Ok);
    assert_eq!(hours(17), AlertLevel::Critical);
}

#[tokio::test(start_paused = true)]
async fn retries_come_sooner_as_expiry_nears() {
    let (source, clock, store) = setup();
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store.clone())
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(6 * 3600))
        .start()
        .await
        .unwrap();
    let not_after = rotator.current().unwrap().not_after;
    source.failing.store(true, Ordering::SeqCst);
    // Past renewal time, until expiry: every retry waits at most an eighth
    // of what is left then.
    while clock.now() < not_after {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    let fetches = source.fetches.lock().unwrap().clone();
    let start = Instant::now()
        - clock
            .now()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
    let _ = start;
    let wall = |at: Instant| clock.now() - Instant::now().duration_since(at);
    let mut checked = 0;
    for pair in fetches.windows(2) {
        let left = not_after.duration_since(wall(pair[0])).unwrap_or_default();
        if left > 30 * DAY {
            continue; // not a retry: the wait for the renewal time
        }
        if left.is_zero() {
            break;
        }
        let gap = pair[1] - pair[0];
        assert!(
            gap <= (left / 8).max(Duration::from_secs(1)) + Duration::from_secs(1),
            "a retry waited {gap:?} with {left:?} left"
        );
        checked += 1;
    }
    // The cap alone (6 h) would allow about 120 attempts in 30 days; the
    // lifetime rule makes many more as the end nears.
    assert!(checked > 150, "{checked} retries before expiry");
    let last = fetches
        .iter()
        .rev()
        .find(|t| wall(**t) < not_after)
        .unwrap();
    let before_end = not_after.duration_since(wall(*last)).unwrap();
    assert!(
        before_end < Duration::from_secs(120),
        "last attempt {before_end:?} before expiry"
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limits_are_respected_until_the_lifetime_cannot_afford_them() {
    let (source, clock, store) = setup();
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store.clone())
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(300))
        .start()
        .await
        .unwrap();
    let not_after = rotator.current().unwrap().not_after;
    let wait = Duration::from_secs(2 * 3600);
    *source.rate_limit.lock().unwrap() = Some(wait);
    source.failing.store(true, Ordering::SeqCst);
    while clock.now() < not_after {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    let fetches = source.fetches.lock().unwrap().clone();
    let wall = |at: Instant| clock.now() - Instant::now().duration_since(at);
    let (mut respected, mut shortened) = (0, 0);
    for pair in fetches.windows(2) {
        let left = not_after.duration_since(wall(pair[0])).unwrap_or_default();
        let gap = pair[1] - pair[0];
        if left > 30 * DAY || left.is_zero() {
            continue; // the wait for the renewal time, or after expiry
        }
        if left > Duration::from_secs(16 * 3600) + wait {
            assert!(
                gap >= wait,
                "a retry came after {gap:?} despite the rate limit, {left:?} left"
            );
            respected += 1;
        } else if left < Duration::from_secs(8 * 3600) {
            assert!(gap < wait, "a retry waited {gap:?} with only {left:?} left");
            shortened += 1;
        }
    }
    assert!(
        respected > 10 && shortened > 3,
        "{respected} respected, {shortened} shortened"
    );
}

/// Gives the same certificate until its own renewal time, 20% of the
/// lifetime before expiry (later than the rotator's third), as an ACME
/// source following a CA's renewal window does.
struct DecidingSource {
    issuing: Arc<IssuingSource>,
    issued: Mutex<Option<CertBundle>>,
}

impl DecidingSource {
    fn renewal(cert: &certrotate::bundle::CertInfo) -> SystemTime {
        cert.not_after - cert.lifetime() / 5
    }
}

impl CertSource for DecidingSource {
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        let now = self.issuing.clock.now();
        let kept = self.issued.lock().unwrap().clone();
        if let Some(kept) = kept.filter(|b| now < Self::renewal(b.info())) {
            self.issuing.fetches.lock().unwrap().push(Instant::now());
            return Ok(kept);
        }
        let new = self.issuing.fetch().await?;
        *self.issued.lock().unwrap() = Some(new.clone());
        Ok(new)
    }

    fn renew_at(&self, cert: &certrotate::bundle::CertInfo) -> Option<certrotate::source::Renewal> {
        Some(Self::renewal(cert).into())
    }

    fn describe(&self) -> String {
        "deciding CA".into()
    }
}

/// One renewal rule: a source's own renewal time, later than the rotator's
/// third (even with the widest jitter), is not "overdue": no warning, no
/// failure, no backoff retries; renewal comes at the source's time.
#[tokio::test(start_paused = true)]
async fn a_sources_later_renewal_time_is_not_overdue() {
    let (issuing, clock, store) = setup();
    let source = Arc::new(DecidingSource {
        issuing: issuing.clone(),
        issued: Mutex::new(None),
    });
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store.clone())
        .renewal_jitter(0.5)
        .retry_backoff(Duration::from_secs(60), Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let first = rotator.current().unwrap();
    let mut events = rotator.subscribe();
    // Past the rotator's own schedule (a third left, up to half of that
    // window earlier: from day 45 on), before the source's (day 72).
    let day = |n: u32| first.not_before + n * DAY;
    tokio::time::sleep(day(65).duration_since(clock.now()).unwrap()).await;
    let health = rotator.health();
    assert_eq!(health.alert, AlertLevel::Ok);
    assert_eq!(
        health.certificates[0].renew_at,
        DecidingSource::renewal(&first)
    );
    // Asked early, the source gives what serves: no failure.
    assert!(matches!(
        rotator.rotate_now().await.unwrap(),
        certrotate::rotator::Rotation::Unchanged(_)
    ));
    assert_eq!(rotator.health().last_error, None);
    tokio::time::sleep(day(71).duration_since(clock.now()).unwrap()).await;
    assert_eq!(
        issuing.fetches.lock().unwrap().len(),
        2,
        "the first fetch and the manual one: no retries"
    );
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, RotationEvent::ExpiryWarning { .. }),
            "{event:?}"
        );
    }
    // At the source's time, it renews.
    let renewed = loop {
        match events.recv().await.unwrap() {
            RotationEvent::Rotated { new, .. } => break new,
            RotationEvent::ExpiryWarning { .. } => panic!("warned before renewing"),
            _ => {}
        }
    };
    assert_ne!(renewed.serial, first.serial);
    let at = clock.now();
    assert!(
        at >= DecidingSource::renewal(&first) && at < day(73),
        "{at:?}"
    );
    assert_eq!(rotator.health().alert, AlertLevel::Ok);
}

/// The level is right from the instant a rotator installs: a certificate
/// its rule has due already (ten days into a 90-day life, renewed when 99%
/// is left) is `renew-overdue` at once, not `ok` by the default rule until
/// the rotator's task looks again.
#[tokio::test]
async fn the_level_is_the_rotator_s_from_the_instant_it_installs() {
    let now = SystemTime::now();
    let old = Ca::new()
        .issue(Leaf::default().lifetime(now - 10 * DAY, now + 80 * DAY))
        .bundle;
    let rotator = Rotator::builder(
        certrotate::source::StaticSource::new(old),
        Policy::default(),
    )
    .renew_before_fraction(0.99)
    .start()
    .await
    .unwrap();
    // No yield since the install: the rotator's task has not run.
    let health = rotator.health();
    assert_eq!(health.certificates[0].alert, AlertLevel::RenewOverdue);
    assert!(health.certificates[0].renew_at < now);
    rotator.shutdown().await;
}

/// A validation that panics (here: the policy's crypto provider has no
/// randomness) is a failure like any other: retried with backoff, never in
/// a hot loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_that_panics_is_retried_with_backoff() {
    #[derive(Debug)]
    struct NoRandomness;
    impl rustls::crypto::SecureRandom for NoRandomness {
        fn fill(&self, _: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
            panic!("no randomness (a test)")
        }
    }
    static NO_RANDOMNESS: NoRandomness = NoRandomness;
    struct Counting(certrotate::CertBundle, std::sync::atomic::AtomicUsize);
    impl CertSource for Counting {
        async fn fetch(&self) -> Result<CertBundle, SourceError> {
            self.1.fetch_add(1, Ordering::SeqCst);
            Ok(self.0.clone())
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.secure_random = &NO_RANDOMNESS;
    let policy = Policy::builder()
        .crypto_provider(Arc::new(provider))
        .build()
        .unwrap();
    let source = Arc::new(Counting(Ca::new().nth(0), Default::default()));
    let rotator = Rotator::builder(source.clone(), policy).spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fetches = source.1.load(Ordering::SeqCst);
    assert!((1..5).contains(&fetches), "{fetches} fetches in 500 ms");
    rotator.shutdown().await;
}

/// The short-lived era: 6-day, 45-day and 90-day certificates are each
/// renewed with a third of their lifetime left (jitter off), not at a
/// fixed number of days.
#[tokio::test(start_paused = true)]
async fn renewal_stays_a_fraction_of_short_lifetimes() {
    for lifetime in [6 * DAY, 45 * DAY, 90 * DAY] {
        let (source, clock, store) = setup();
        *source.lifetime.lock().unwrap() = lifetime;
        let rotator = Rotator::builder(source.clone(), Policy::default())
            .store(store)
            .renewal_jitter(0.0)
            .start()
            .await
            .unwrap();
        let serving = rotator.current().unwrap();
        let mut events = rotator.subscribe();
        loop {
            if let RotationEvent::Rotated { .. } = events.recv().await.unwrap() {
                break;
            }
        }
        let left = serving.not_after.duration_since(clock.now()).unwrap();
        let third = (lifetime + Duration::from_secs(60)) / 3;
        assert!(
            left <= third && left + Duration::from_secs(2) >= third,
            "{lifetime:?}: renewed with {left:?} left"
        );
    }
}

/// With an outage budget, the critical alert comes when less than the
/// budget is left while renewal keeps failing (36 h into 6-day
/// certificates, not the default 14.4 h); a budget wider than the renewal
/// window raises nothing while renewal works.
#[tokio::test(start_paused = true)]
async fn an_outage_budget_alerts_while_renewal_keeps_failing() {
    let budget = Duration::from_secs(36 * 3600);
    let critical_left = |failing: bool, budget: Duration| async move {
        let (source, clock, store) = setup();
        *source.lifetime.lock().unwrap() = 6 * DAY;
        let rotator = Rotator::builder(source.clone(), Policy::default())
            .store(store)
            .renewal_jitter(0.0)
            .retry_backoff(Duration::from_secs(60), Duration::from_secs(3600))
            .outage_budget(budget)
            .start()
            .await
            .unwrap();
        source.failing.store(failing, Ordering::SeqCst);
        let cert = rotator.current().unwrap();
        let mut events = rotator.subscribe();
        let found = tokio::time::timeout(7 * DAY, async {
            loop {
                match events.recv().await.unwrap() {
                    RotationEvent::ExpiryWarning {
                        level: AlertLevel::Critical,
                        ..
                    } => {
                        assert_eq!(rotator.health().alert, AlertLevel::Critical);
                        return cert.not_after.duration_since(clock.now()).unwrap();
                    }
                    RotationEvent::Rotated { .. } if !failing => return Duration::ZERO,
                    _ => {}
                }
            }
        })
        .await;
        found.ok()
    };
    let left = critical_left(true, budget)
        .await
        .expect("no critical alert");
    assert!(
        left <= budget && left + Duration::from_secs(2) >= budget,
        "critical with {left:?} left"
    );
    // Renewal working, a budget wider than the renewal window: renewed,
    // nothing critical first.
    assert_eq!(critical_left(false, 3 * DAY).await, Some(Duration::ZERO));
    // One failure that the next attempt mends is no outage either.
    let (source, _clock, store) = setup();
    *source.lifetime.lock().unwrap() = 6 * DAY;
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store)
        .renewal_jitter(0.0)
        .retry_backoff(Duration::from_secs(60), Duration::from_secs(3600))
        .outage_budget(3 * DAY)
        .start()
        .await
        .unwrap();
    let mut events = rotator.subscribe();
    source.failing.store(true, Ordering::SeqCst);
    loop {
        match events.recv().await.unwrap() {
            RotationEvent::SourceFailed { .. } => break,
            RotationEvent::ExpiryWarning {
                level: AlertLevel::Critical,
                ..
            } => panic!("critical before any failure"),
            _ => {}
        }
    }
    source.failing.store(false, Ordering::SeqCst);
    loop {
        match events.recv().await.unwrap() {
            RotationEvent::Rotated { .. } => break,
            RotationEvent::ExpiryWarning {
                level: AlertLevel::Critical,
                ..
            } => panic!("critical after one failure the retry mended"),
            _ => {}
        }
    }
}

/// A source whose every certificate is due from the start (a Vault role
/// whose TTL is shorter than its backdating, say) is asked again with a
/// growing backoff, not at the retry range's start after each rotation
/// for ever (nor at once, as before the backoff).
#[tokio::test(start_paused = true)]
async fn a_source_whose_certificates_are_due_from_the_start_is_asked_with_growing_backoff() {
    let (source, _clock, store) = setup();
    // Issued a minute back for 20 s more: a third of the lifetime is left
    // from the start.
    *source.lifetime.lock().unwrap() = Duration::from_secs(20);
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .store(store)
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    // 1 s doubling, each up to half shorter: the first, then at most seven
    // more in a minute (0.5 + 1 + 2 + 4 + 8 + 16 + 32 s); at the start of
    // the range after each rotation, 60 to 120.
    let fetches = source.fetches.lock().unwrap().len();
    assert!(fetches <= 8, "{fetches} fetches in a minute");
    assert!(rotator.health().certificates[0].last_error.is_none());
}

//! The abuse limits of on-demand issuance: orders per window and in flight,
//! a backoff per name after a failed order, and the refusals remembered so
//! that a flood of handshakes for a refused name does not reach the hook.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::OnDemandError;
use crate::renewal;

/// How the limits are set (see the builder's methods).
#[derive(Debug, Clone)]
pub(super) struct LimitConfig {
    pub(super) orders_per_window: usize,
    pub(super) window: Duration,
    pub(super) orders_in_flight: usize,
    pub(super) backoff_min: Duration,
    pub(super) backoff_max: Duration,
    pub(super) refusal_ttl: Duration,
    pub(super) refusals_kept: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            orders_per_window: 20,
            window: Duration::from_secs(60),
            orders_in_flight: 5,
            backoff_min: Duration::from_secs(60),
            backoff_max: Duration::from_secs(3600),
            refusal_ttl: Duration::from_secs(60),
            refusals_kept: 10_000,
        }
    }
}

/// A name whose last order failed.
#[derive(Debug)]
struct Backoff {
    /// No order before this.
    until: Instant,
    /// Failures in a row (the next backoff doubles).
    failures: u32,
}

#[derive(Debug)]
pub(super) struct Limits {
    config: LimitConfig,
    /// When each order of the current window started, oldest first.
    started: VecDeque<Instant>,
    in_flight: usize,
    backoff: HashMap<Arc<str>, Backoff>,
    /// Refused names, until when; and the same in the order they expire.
    refused: HashMap<Arc<str>, Instant>,
    expiring: VecDeque<(Instant, Arc<str>)>,
}

impl Limits {
    pub(super) fn new(config: LimitConfig) -> Self {
        Self {
            config,
            started: VecDeque::new(),
            in_flight: 0,
            backoff: HashMap::new(),
            refused: HashMap::new(),
            expiring: VecDeque::new(),
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether `name` was refused by the hook less than the refusal TTL ago.
    pub(super) fn refused_recently(&mut self, name: &str, now: Instant) -> bool {
        self.forget_refusals(now);
        self.refused.contains_key(name)
    }

    /// Remembers that the hook refused `name`. At most `refusals_kept`
    /// names are remembered: past that, the oldest are forgotten early.
    pub(super) fn remember_refusal(&mut self, name: &Arc<str>, now: Instant) {
        let until = now + self.config.refusal_ttl;
        self.refused.insert(name.clone(), until);
        self.expiring.push_back((until, name.clone()));
        while self.refused.len() > self.config.refusals_kept {
            self.forget_oldest_refusal();
        }
    }

    fn forget_refusals(&mut self, now: Instant) {
        while self
            .expiring
            .front()
            .is_some_and(|(until, _)| *until <= now)
        {
            self.forget_oldest_refusal();
        }
    }

    fn forget_oldest_refusal(&mut self) {
        if let Some((until, name)) = self.expiring.pop_front() {
            // A name refused again later has a later entry of its own.
            if self.refused.get(&name) == Some(&until) {
                self.refused.remove(&name);
            }
        }
    }

    /// Refuses an order for `name` while it backs off after a failure.
    pub(super) fn check_backoff(&self, name: &str, now: Instant) -> Result<(), OnDemandError> {
        match self.backoff.get(name) {
            Some(backoff) if backoff.until > now => Err(OnDemandError::BackingOff {
                name: name.to_owned(),
                retry_in: backoff.until - now,
            }),
            _ => Ok(()),
        }
    }

    /// Counts an order about to start, or says which limit refuses it.
    pub(super) fn start_order(&mut self, now: Instant) -> Result<(), OnDemandError> {
        let window = self.config.window;
        while self
            .started
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.started.pop_front();
        }
        if self.in_flight >= self.config.orders_in_flight {
            return Err(OnDemandError::TooManyOrders {
                limit: self.config.orders_in_flight,
            });
        }
        if self.started.len() >= self.config.orders_per_window {
            return Err(OnDemandError::RateLimited {
                limit: self.config.orders_per_window,
                window,
            });
        }
        self.started.push_back(now);
        self.in_flight += 1;
        Ok(())
    }

    /// An order ended.
    pub(super) fn order_done(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Obtaining `name` succeeded: its failures are forgotten.
    pub(super) fn succeeded(&mut self, name: &str) {
        self.backoff.remove(name);
    }

    /// Obtaining `name` failed: it backs off by the crate's retry rule
    /// ([`renewal::retry_delay`]: doubling from the minimum with each failure
    /// in a row, up to the maximum, jittered), and no less than the CA asked
    /// (`retry_after`, from a rate limit).
    pub(super) fn failed(&mut self, name: &Arc<str>, retry_after: Option<Duration>, now: Instant) {
        let range = (self.config.backoff_min, self.config.backoff_max);
        // Failures older than the longest backoff are forgotten; without
        // this, names that failed once (random ones, at most an order each)
        // would pile up.
        if self.backoff.len() >= 1024 {
            self.backoff.retain(|_, b| b.until + range.1 > now);
        }
        let failures = self.backoff.get(name).map_or(0, |b| b.failures);
        let delay = renewal::retry_delay(failures, range, retry_after, None);
        self.backoff.insert(
            name.clone(),
            Backoff {
                until: now + delay,
                failures: failures.saturating_add(1),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::new(LimitConfig {
            orders_per_window: 3,
            window: Duration::from_secs(10),
            orders_in_flight: 2,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
            refusal_ttl: Duration::from_secs(5),
            refusals_kept: 2,
        })
    }

    #[test]
    fn orders_stop_at_the_window_cap_and_in_flight_cap() {
        let mut limits = limits();
        let now = Instant::now();
        limits.start_order(now).unwrap();
        limits.start_order(now).unwrap();
        let third = limits.start_order(now);
        assert!(matches!(
            third,
            Err(OnDemandError::TooManyOrders { limit: 2 })
        ));
        limits.order_done();
        limits.order_done();
        limits.start_order(now).unwrap();
        limits.order_done();
        let fourth = limits.start_order(now + Duration::from_secs(9));
        assert!(matches!(
            fourth,
            Err(OnDemandError::RateLimited { limit: 3, .. })
        ));
        // The window slides.
        limits.start_order(now + Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn failures_back_a_name_off_doubling_up_to_the_maximum() {
        let mut limits = limits();
        let now = Instant::now();
        let name: Arc<str> = "a.example".into();
        let mut waits = Vec::new();
        for _ in 0..4 {
            limits.failed(&name, None, now);
            let Err(OnDemandError::BackingOff { retry_in, .. }) = limits.check_backoff(&name, now)
            else {
                panic!("not backing off")
            };
            waits.push(retry_in);
        }
        // Jittered down by up to half.
        for (wait, full) in waits.iter().zip([1, 2, 4, 4]) {
            let full = Duration::from_secs(full);
            assert!(*wait <= full && *wait >= full / 2, "{waits:?}");
        }
        assert!(limits.check_backoff("b.example", now).is_ok());
        assert!(limits
            .check_backoff(&name, now + Duration::from_secs(4))
            .is_ok());
        // A CA asking for longer (a rate limit) is heard.
        limits.failed(&name, Some(Duration::from_secs(30)), now);
        assert!(limits
            .check_backoff(&name, now + Duration::from_secs(29))
            .is_err());
        limits.succeeded(&name);
        assert!(limits.check_backoff(&name, now).is_ok());
    }

    #[test]
    fn refusals_are_remembered_for_their_ttl_and_bounded_in_number() {
        let mut limits = limits();
        let now = Instant::now();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        limits.remember_refusal(&a, now);
        assert!(limits.refused_recently("a", now + Duration::from_secs(4)));
        assert!(!limits.refused_recently("a", now + Duration::from_secs(5)));
        limits.remember_refusal(&a, now);
        limits.remember_refusal(&b, now);
        limits.remember_refusal(&c, now);
        // Two kept: the oldest went first.
        assert!(!limits.refused_recently("a", now));
        assert!(limits.refused_recently("b", now) && limits.refused_recently("c", now));
        assert!(limits.refused.len() <= 2 && limits.expiring.len() <= 2);
    }
}

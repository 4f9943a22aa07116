//! The abuse limits of on-demand issuance: budgets of new names (in all,
//! and per client), checked before the hook and the storage are asked, so
//! that a refused name costs nothing; budgets of orders (in all, and per
//! registered domain), checked when an order is about to start, so that a
//! spent budget never keeps a stored certificate from loading; orders in
//! flight; a backoff per name after a failed
//! order; and the refusals remembered so that a flood of handshakes for a
//! refused name does not reach the hook.
//!
//! The defaults sit below Let's Encrypt's published limits (300 new orders
//! per account per 3 hours, 50 certificates per registered domain per
//! week), so that random names cannot spend the CA's limits for everyone.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::OnDemandError;
use crate::renewal;

/// How many events a window of time allows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    pub(super) limit: usize,
    pub(super) window: Duration,
}

impl Budget {
    pub(super) const fn new(limit: usize, window: Duration) -> Self {
        Self { limit, window }
    }
}

/// How many keys (clients, registered domains) a keyed budget remembers.
const KEYS_KEPT: usize = 65_536;

/// How the limits are set (see the builder's methods).
#[derive(Debug, Clone)]
pub(super) struct LimitConfig {
    pub(super) orders: Budget,
    pub(super) orders_per_domain: Budget,
    pub(super) new_names: Budget,
    pub(super) new_names_per_client: Budget,
    pub(super) orders_in_flight: usize,
    pub(super) backoff_min: Duration,
    pub(super) backoff_max: Duration,
    pub(super) refusal_ttl: Duration,
    pub(super) refusals_kept: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        Self {
            orders: Budget::new(250, Duration::from_secs(3 * HOUR)),
            orders_per_domain: Budget::new(40, Duration::from_secs(7 * 24 * HOUR)),
            new_names: Budget::new(600, Duration::from_secs(60)),
            new_names_per_client: Budget::new(20, Duration::from_secs(600)),
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

/// When the events of a window happened, oldest first.
#[derive(Debug, Default)]
struct Window(VecDeque<Instant>);

impl Window {
    /// Whether `budget` is spent as of `now` (forgetting older events).
    fn spent(&mut self, budget: Budget, now: Instant) -> bool {
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) >= budget.window)
        {
            self.0.pop_front();
        }
        self.0.len() >= budget.limit
    }

    fn spend(&mut self, now: Instant) {
        self.0.push_back(now);
    }

    fn last(&self) -> Option<Instant> {
        self.0.back().copied()
    }
}

/// A window per key, for at most [`KEYS_KEPT`] keys: past that, keys whose
/// window is empty are forgotten, then the key used longest ago.
#[derive(Debug)]
struct Keyed<K>(HashMap<K, Window>);

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn spent(&mut self, key: &K, budget: Budget, now: Instant) -> bool {
        self.0.get_mut(key).is_some_and(|w| w.spent(budget, now))
    }

    fn spend(&mut self, key: K, budget: Budget, now: Instant) {
        if self.0.len() >= KEYS_KEPT && !self.0.contains_key(&key) {
            self.0.retain(|_, w| {
                w.last()
                    .is_some_and(|t| now.duration_since(t) < budget.window)
            });
            if self.0.len() >= KEYS_KEPT {
                let oldest = self
                    .0
                    .iter()
                    .min_by_key(|(_, w)| w.last())
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.0.remove(&oldest);
                }
            }
        }
        self.0.entry(key).or_default().spend(now);
    }
}

#[derive(Debug)]
pub(super) struct Limits {
    config: LimitConfig,
    /// When each order of the current window started, oldest first.
    started: Window,
    orders_per_domain: Keyed<String>,
    new_names: Window,
    /// Per client group (prefix, length): an IPv4 address and its /24, an
    /// IPv6 /64, /56 and /48, each with its multiple of the budget.
    new_names_per_client: Keyed<(IpAddr, u8)>,
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
            started: Window::default(),
            orders_per_domain: Keyed(HashMap::new()),
            new_names: Window::default(),
            new_names_per_client: Keyed(HashMap::new()),
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
        let until = later(now, self.config.refusal_ttl);
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

    /// Counts a name about to be obtained (asked of the hook, loaded or
    /// ordered) for `client`, or says which budget refuses it: new names in
    /// all, new names from this client and from each group it is in (an
    /// IPv4 /24, an IPv6 /56 and /48, with larger budgets, as the
    /// listener's shares). Checked before anything is asked, so a refused
    /// name costs nothing. The order budgets are checked when an order is
    /// about to start, so a name already in storage is always loaded.
    pub(super) fn start_name(
        &mut self,
        client: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), OnDemandError> {
        let config = &self.config;
        if self.new_names.spent(config.new_names, now) {
            let Budget { limit, window } = config.new_names;
            return Err(OnDemandError::TooManyNewNames { limit, window });
        }
        let groups = client.map(crate::serve::client_groups).unwrap_or_default();
        let per_client = config.new_names_per_client;
        for (group, share) in &groups {
            let budget = Budget::new(per_client.limit.saturating_mul(*share), per_client.window);
            if self.new_names_per_client.spent(group, budget, now) {
                return Err(OnDemandError::ClientBudget {
                    client: group.0,
                    limit: budget.limit,
                    window: budget.window,
                });
            }
        }
        self.new_names.spend(now);
        for (group, _) in groups {
            self.new_names_per_client.spend(group, per_client, now);
        }
        Ok(())
    }

    /// Whether an order for `name` would fit the order budgets.
    fn check_orders(&mut self, name: &str, now: Instant) -> Result<(), OnDemandError> {
        let config = &self.config;
        if self.started.spent(config.orders, now) {
            let Budget { limit, window } = config.orders;
            return Err(OnDemandError::RateLimited { limit, window });
        }
        let domain = registered_domain(name);
        if self
            .orders_per_domain
            .spent(&domain, config.orders_per_domain, now)
        {
            let Budget { limit, window } = config.orders_per_domain;
            return Err(OnDemandError::DomainBudget {
                domain,
                limit,
                window,
            });
        }
        Ok(())
    }

    /// Counts an order for `name` about to start, or says which limit
    /// refuses it.
    pub(super) fn start_order(&mut self, name: &str, now: Instant) -> Result<(), OnDemandError> {
        if self.in_flight >= self.config.orders_in_flight {
            return Err(OnDemandError::TooManyOrders {
                limit: self.config.orders_in_flight,
            });
        }
        self.check_orders(name, now)?;
        self.started.spend(now);
        let budget = self.config.orders_per_domain;
        self.orders_per_domain
            .spend(registered_domain(name), budget, now);
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
            self.backoff.retain(|_, b| later(b.until, range.1) > now);
        }
        let failures = self.backoff.get(name).map_or(0, |b| b.failures);
        let delay = renewal::retry_delay(failures, range, retry_after, None);
        self.backoff.insert(
            name.clone(),
            Backoff {
                until: later(now, delay),
                failures: failures.saturating_add(1),
            },
        );
    }
}

/// `now` plus `delay`, or a century from now for a delay that would not
/// fit (`Duration::MAX` is a configuration, not a panic).
fn later(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// The domain a name was registered under (one label below its public
/// suffix, by the public suffix list): what a CA's per-domain limits
/// count. A name the list cannot place counts as itself.
pub(super) fn registered_domain(name: &str) -> String {
    psl::domain_str(name).unwrap_or(name).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::new(LimitConfig {
            orders: Budget::new(3, Duration::from_secs(10)),
            orders_per_domain: Budget::new(2, Duration::from_secs(10)),
            new_names: Budget::new(4, Duration::from_secs(10)),
            new_names_per_client: Budget::new(2, Duration::from_secs(10)),
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
        limits.start_order("a.example", now).unwrap();
        limits.start_order("a.example", now).unwrap();
        let third = limits.start_order("a.example", now);
        assert!(matches!(
            third,
            Err(OnDemandError::TooManyOrders { limit: 2 })
        ));
        limits.order_done();
        limits.order_done();
        limits.start_order("x.example.com", now).unwrap();
        limits.order_done();
        let fourth = limits.start_order("b.example.org", now + Duration::from_secs(9));
        assert!(matches!(
            fourth,
            Err(OnDemandError::RateLimited { limit: 3, .. })
        ));
        // The window slides.
        limits
            .start_order("c.example.net", now + Duration::from_secs(10))
            .unwrap();
    }

    #[test]
    fn budgets_of_new_names_per_client_and_of_orders_per_registered_domain() {
        let mut limits = limits();
        let now = Instant::now();
        let (one, two): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        limits.start_name(Some(one), now).unwrap();
        limits.start_name(Some(one), now).unwrap();
        let third = limits.start_name(Some(one), now);
        assert!(matches!(
            third,
            Err(OnDemandError::ClientBudget { limit: 2, .. })
        ));
        // Another client has a budget of its own; the global one runs out.
        limits.start_name(Some(two), now).unwrap();
        limits.start_name(None, now).unwrap();
        let fifth = limits.start_name(Some(two), now);
        assert!(matches!(
            fifth,
            Err(OnDemandError::TooManyNewNames { limit: 4, .. })
        ));
        // Orders count per registered domain (by the public suffix list).
        assert_eq!(registered_domain("a.shop.example.co.uk"), "example.co.uk");
        limits.start_order("a.shop.example.co.uk", now).unwrap();
        limits.order_done();
        limits.start_order("x.example.co.uk", now).unwrap();
        limits.order_done();
        let third = limits.start_order("y.example.co.uk", now);
        assert!(
            matches!(third, Err(OnDemandError::DomainBudget { ref domain, .. }) if domain == "example.co.uk")
        );
        // A spent domain is refused before anything is asked, even a load.
        let later = now + Duration::from_secs(10);
        let name = limits.start_name(Some(two), later);
        assert!(name.is_ok(), "the window slid: {name:?}");
    }

    #[test]
    fn an_ipv6_client_rotating_its_64s_is_held_to_its_48_s_budget() {
        let mut config = limits().config;
        config.new_names = Budget::new(1000, Duration::from_secs(10));
        let mut limits = Limits::new(config);
        let now = Instant::now();
        // Two names per /64 (the per-client budget); the /48 allows four
        // times that: the fifth /64 in it is refused.
        for subnet in 0..4u16 {
            let client = IpAddr::from([0x2001, 0xdb8, 7, subnet << 8, 0, 0, 0, 1]);
            limits.start_name(Some(client), now).unwrap();
            limits.start_name(Some(client), now).unwrap();
        }
        let fifth = IpAddr::from([0x2001, 0xdb8, 7, 0x0400, 0, 0, 0, 1]);
        let refused = limits.start_name(Some(fifth), now);
        assert!(
            matches!(refused, Err(OnDemandError::ClientBudget { limit: 8, .. })),
            "{refused:?}"
        );
        // Another /48 has its own.
        let other = IpAddr::from([0x2001, 0xdb8, 8, 0, 0, 0, 0, 1]);
        limits.start_name(Some(other), now).unwrap();
    }

    #[test]
    fn durations_too_long_to_add_do_not_panic() {
        let mut config = limits().config;
        config.refusal_ttl = Duration::MAX;
        config.backoff_min = Duration::MAX;
        config.backoff_max = Duration::MAX;
        let mut limits = Limits::new(config);
        let now = Instant::now();
        let name: Arc<str> = "a.example".into();
        limits.remember_refusal(&name, now);
        assert!(limits.refused_recently("a.example", now));
        limits.failed(&name, None, now);
        assert!(limits.check_backoff("a.example", now).is_err());
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

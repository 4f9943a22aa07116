//! The store's slots and the index from DNS names to the slots claiming
//! them: what a change needs to find, in O(1), the shards it touches.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;

use super::DEFAULT_SLOT;
use crate::events::Events;
use crate::health::{AlertCounts, AlertLevel, CertHealth, Failure, LevelTimes};
use crate::policy::ValidatedCert;
use crate::renewal::Renewal;
#[cfg(feature = "acme")]
use crate::resolver::NameMap;
use crate::resolver::{NameKind, RotatingResolver, ViewWriter};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Every slot, and the handshake view they make.
#[derive(Debug)]
pub(super) struct Slots {
    by_name: Map<Arc<str>, Slot>,
    /// Slots by creation number: the order health lists them in.
    order: BTreeMap<u64, Arc<str>>,
    /// Creation numbers of the slots serving a certificate: the oldest is
    /// the default when there is no [`DEFAULT_SLOT`].
    serving: BTreeSet<u64>,
    /// Each DNS name served (as the certificates spell it, `*.` included),
    /// and the slots whose certificates claim it: the oldest one wins, so
    /// adding a slot never steals a name from one already serving.
    claims: Map<Arc<str>, Claimants>,
    created: u64,
    view: ViewWriter,
    /// Serving slots per alert level, as last reported for each.
    levels: AlertCounts,
    /// Expiry and creation number of every serving certificate.
    expiries: BTreeSet<(SystemTime, u64)>,
    /// Told whether metrics may name each slot: while there are at most
    /// `metric_slots` slots.
    events: Events,
    metric_slots: usize,
    #[cfg(feature = "acme")]
    challenges: NameMap,
    pub(super) rotations: u64,
    pub(super) last_rotation: Option<SystemTime>,
    /// Failures recorded so far: orders them across slots.
    pub(super) failures: u64,
}

/// One slot: its serving certificate, history and health.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) name: Arc<str>,
    /// Creation number.
    seq: u64,
    pub(super) current: Option<Installed>,
    /// Older good certificates, most recent first.
    pub(super) previous: VecDeque<Installed>,
    /// Why its latest candidate failed, and when (the store's failure count).
    pub(super) last_error: Option<(u64, Failure)>,
    pub(super) warnings: Vec<String>,
    /// Its alert level, as last reported.
    level: Option<AlertLevel>,
    /// When its serving certificate's level changes (kept here so that a
    /// health check need not read every certificate).
    times: Option<LevelTimes>,
    /// From when it is critical because renewal keeps failing with less
    /// than the outage budget left.
    outage_critical: Option<SystemTime>,
}

/// A certificate installed in a slot, with when it is due for renewal: the
/// time travels with it (into the history and back on a rollback), so its
/// alert level is right from the instant it serves.
#[derive(Clone, Debug)]
pub(super) struct Installed {
    pub(super) cert: ValidatedCert,
    pub(super) renewal: Renewal,
}

/// The slots claiming one name, oldest first: nearly always one.
#[derive(Debug)]
enum Claimants {
    One(u64),
    Many(Vec<u64>),
}

impl Slot {
    /// Its health, if it serves a certificate.
    pub(super) fn health(&self, now: SystemTime) -> CertHealth {
        let current = self.current.as_ref().expect("a serving slot");
        let mut health = CertHealth::new(
            &self.name,
            &current.cert.info,
            now,
            current.renewal,
            self.last_error.clone().map(|(_, f)| f),
            self.warnings.clone(),
        );
        health.alert = self.level(now).unwrap_or(health.alert);
        health
    }

    /// Its alert level at `now`, if it serves.
    pub(super) fn level(&self, now: SystemTime) -> Option<AlertLevel> {
        let level = self.times?.at(now);
        match self.outage_critical {
            Some(from) if now >= from => Some(level.max(AlertLevel::Critical)),
            _ => Some(level),
        }
    }

    /// Makes it critical from `from` on (renewal keeps failing and the
    /// outage budget runs out then), or no longer.
    pub(super) fn set_outage_critical(&mut self, from: Option<SystemTime>) {
        self.outage_critical = from;
    }

    /// Sets when its serving certificate is due for renewal (its source
    /// learnt a new time); nothing if it serves none.
    pub(super) fn set_renew_at(&mut self, at: Renewal) {
        if let Some(current) = &mut self.current {
            current.renewal = at;
        }
        self.retime();
    }

    /// Works out the level times again, after its certificate or its
    /// renewal time changed.
    fn retime(&mut self) {
        self.outage_critical = None;
        self.times = self
            .current
            .as_ref()
            .map(|c| LevelTimes::of(&c.cert.info, c.renewal.at));
    }

    /// Its creation number: slots are listed in this order.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }
}

impl Slots {
    pub(super) fn new(events: Events, metric_slots: usize) -> Self {
        Self {
            by_name: Map::default(),
            order: BTreeMap::new(),
            serving: BTreeSet::new(),
            claims: Map::default(),
            created: 0,
            view: ViewWriter::default(),
            levels: AlertCounts::default(),
            expiries: BTreeSet::new(),
            events,
            metric_slots,
            #[cfg(feature = "acme")]
            challenges: NameMap::default(),
            rotations: 0,
            last_rotation: None,
            failures: 0,
        }
    }

    pub(super) fn resolver(&self) -> RotatingResolver {
        self.view.resolver()
    }

    pub(super) fn get(&self, name: &str) -> Option<&Slot> {
        self.by_name.get(name)
    }

    /// Slot `name`, to change anything but what it serves (that goes
    /// through [`change`](Self::change)).
    pub(super) fn get_mut(&mut self, name: &str) -> Option<&mut Slot> {
        self.by_name.get_mut(name)
    }

    /// Every slot, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.by_name.values()
    }

    /// How many slots serve a certificate.
    pub(super) fn served(&self) -> usize {
        self.serving.len()
    }

    /// The serving slots in the order they were created, from the `skip`th.
    pub(super) fn serving(&self, skip: usize) -> impl Iterator<Item = &Slot> + '_ {
        self.serving
            .iter()
            .skip(skip)
            .map(|seq| &self.by_name[&self.order[seq]])
    }

    /// The serving slots whose certificates expire first, soonest first.
    pub(super) fn soonest(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.expiries
            .iter()
            .map(|(_, seq)| &self.by_name[&self.order[seq]])
    }

    /// Slot `name`, created empty (and unserved) if it does not exist.
    ///
    /// What it serves must be changed through [`change`](Self::change).
    pub(super) fn entry(&mut self, name: &str) -> &mut Slot {
        if !self.by_name.contains_key(name) {
            let name: Arc<str> = name.into();
            self.created += 1;
            self.order.insert(self.created, name.clone());
            let slot = Slot {
                name: name.clone(),
                seq: self.created,
                current: None,
                previous: VecDeque::new(),
                last_error: None,
                warnings: Vec::new(),
                level: None,
                outage_critical: None,
                times: None,
            };
            self.by_name.insert(name, slot);
            self.count_changed();
        }
        self.by_name.get_mut(name).expect("present or just made")
    }

    /// Runs `change` on slot `name` (creating it), then brings the handshake
    /// view up to date with what the slot serves: O(its names).
    pub(super) fn change<R>(&mut self, name: &str, change: impl FnOnce(&mut Slot) -> R) -> R {
        let slot = self.entry(name);
        let (seq, before) = (slot.seq, slot.current.as_ref().map(|c| c.cert.clone()));
        let result = change(slot);
        slot.retime();
        let after = slot.current.as_ref().map(|c| c.cert.clone());
        self.reindex(seq, before.as_ref(), after.as_ref());
        result
    }

    /// Removes slot `name`; its names go to the next slots claiming them.
    pub(super) fn remove(&mut self, name: &str) -> Option<Slot> {
        let slot = self.by_name.remove(name)?;
        self.order.remove(&slot.seq);
        self.count_changed();
        if let Some(level) = slot.level {
            self.levels.remove(level);
        }
        self.reindex(slot.seq, slot.current.as_ref().map(|c| &c.cert), None);
        Some(slot)
    }

    /// Records the alert level of slot `name`'s serving certificate at
    /// `now`, and returns it (`None`: nothing serves).
    pub(super) fn note_level(&mut self, name: &str, now: SystemTime) -> Option<AlertLevel> {
        let level = self.by_name.get(name)?.level(now)?;
        self.set_level(name, level);
        Some(level)
    }

    /// Records the alert level of slot `name`'s serving certificate; `false`
    /// if there is no such slot (removed meanwhile).
    pub(super) fn set_level(&mut self, name: &str, level: AlertLevel) -> bool {
        let Some(slot) = self.by_name.get_mut(name) else {
            return false;
        };
        if let Some(old) = slot.level.replace(level) {
            self.levels.remove(old);
        }
        self.levels.add(level);
        true
    }

    /// Serving certificates per alert level (as last reported), and the
    /// soonest expiry.
    pub(super) fn totals(&self) -> (AlertCounts, Option<SystemTime>) {
        let soonest = self.expiries.first().map(|(at, _)| *at);
        (self.levels, soonest)
    }

    fn count_changed(&self) {
        self.events
            .set_per_slot(self.by_name.len() <= self.metric_slots);
    }

    /// Answers TLS-ALPN-01 validation for `name` with `key` (`None`: stops).
    #[cfg(feature = "acme")]
    pub(super) fn set_challenge(&mut self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let changed = match key {
            Some(key) => {
                self.challenges.insert(name.into(), key);
                true
            }
            None => self.challenges.remove(name).is_some(),
        };
        if changed {
            self.view.set_challenges(self.challenges.clone());
        }
    }

    /// Slot `seq` served `before` and now serves `after`: moves its claims
    /// and republishes the names concerned and the default.
    fn reindex(&mut self, seq: u64, before: Option<&ValidatedCert>, after: Option<&ValidatedCert>) {
        let key = |c: Option<&Installed>| c.map(|c| c.cert.key.clone());
        if let (Some(b), Some(a)) = (before, after) {
            if Arc::ptr_eq(&b.key, &a.key) {
                return;
            }
        }
        let mut names: Vec<Arc<str>> = Vec::new();
        for name in before.iter().flat_map(|c| &c.info.dns_names) {
            if let Some(name) = self.unclaim(name, seq) {
                names.push(name);
            }
        }
        for name in after.iter().flat_map(|c| &c.info.dns_names) {
            names.push(self.claim(name, seq));
        }
        match after {
            Some(_) => self.serving.insert(seq),
            None => self.serving.remove(&seq),
        };
        if let Some(before) = before {
            self.expiries.remove(&(before.info.not_after, seq));
        }
        if let Some(after) = after {
            self.expiries.insert((after.info.not_after, seq));
        }
        names.sort_unstable();
        names.dedup();
        let changes = names
            .into_iter()
            .map(|name| {
                let winner = self.winner(&name);
                match name.strip_prefix("*.") {
                    Some(parent) => (NameKind::Wildcard, Arc::from(parent), winner),
                    None => (NameKind::Exact, name, winner),
                }
            })
            .collect();
        self.view.apply(changes);
        let default = self
            .by_name
            .get(DEFAULT_SLOT)
            .and_then(|s| key(s.current.as_ref()))
            .or_else(|| {
                let oldest = self.serving.first()?;
                key(self.by_name[&self.order[oldest]].current.as_ref())
            });
        self.view.set_default(default);
    }

    /// Adds slot `seq` to the claimants of `name`; returns the shared name.
    fn claim(&mut self, name: &str, seq: u64) -> Arc<str> {
        if let Some((shared, _)) = self.claims.get_key_value(name) {
            let shared = shared.clone();
            let claimants = self.claims.get_mut(name).expect("just found");
            let mut list = match claimants {
                Claimants::One(one) if *one == seq => return shared,
                Claimants::One(one) => vec![*one],
                Claimants::Many(list) => std::mem::take(list),
            };
            if let Err(at) = list.binary_search(&seq) {
                list.insert(at, seq);
            }
            *claimants = Claimants::Many(list);
            return shared;
        }
        let name: Arc<str> = name.into();
        self.claims.insert(name.clone(), Claimants::One(seq));
        name
    }

    /// Takes slot `seq` off the claimants of `name`; returns the shared
    /// name if it was there.
    fn unclaim(&mut self, name: &str, seq: u64) -> Option<Arc<str>> {
        let shared = self.claims.get_key_value(name)?.0.clone();
        let claimants = self.claims.get_mut(name).expect("just found");
        match claimants {
            Claimants::One(one) if *one == seq => {
                self.claims.remove(name);
            }
            Claimants::One(_) => return None,
            Claimants::Many(list) => {
                let at = list.binary_search(&seq).ok()?;
                list.remove(at);
                if let [one] = list[..] {
                    *claimants = Claimants::One(one);
                }
            }
        }
        Some(shared)
    }

    /// The certificate serving `name` now: the oldest claimant's.
    fn winner(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let oldest = match self.claims.get(name)? {
            Claimants::One(one) => *one,
            Claimants::Many(list) => *list.first()?,
        };
        let slot = &self.by_name[&self.order[&oldest]];
        slot.current.as_ref().map(|c| c.cert.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::CertBundle;
    use crate::policy::Policy;

    fn cert(names: &[&str]) -> Installed {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let ck = rcgen::generate_simple_self_signed(names).unwrap();
        let key = ck.signing_key.serialize_pem();
        let bundle = CertBundle::from_pem(ck.cert.pem().as_bytes(), key.as_bytes()).unwrap();
        let cert = Policy::default()
            .validate(&bundle, SystemTime::now())
            .unwrap();
        let renewal = cert.info.renewal_time().into();
        Installed { cert, renewal }
    }

    fn slots() -> Slots {
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
        Slots::new(Events::new(16, clock), 100)
    }

    fn serve(slots: &mut Slots, slot: &str, cert: &Installed) {
        slots.change(slot, |s| s.current = Some(cert.clone()));
    }

    fn winner_is(slots: &Slots, name: &str, cert: &Installed) -> bool {
        slots
            .winner(name)
            .is_some_and(|k| Arc::ptr_eq(&k, &cert.cert.key))
    }

    #[test]
    fn the_oldest_slot_claiming_a_name_wins_and_hands_it_on_when_it_goes() {
        let (first, second) = (cert(&["a.example", "b.example"]), cert(&["a.example"]));
        let mut slots = slots();
        serve(&mut slots, "first", &first);
        serve(&mut slots, "second", &second);
        // Adding a slot never steals a name from one already serving.
        assert!(winner_is(&slots, "a.example", &first));
        // A slot that changes keeps its age.
        let renewed = cert(&["a.example", "b.example"]);
        serve(&mut slots, "first", &renewed);
        assert!(winner_is(&slots, "a.example", &renewed));
        slots.remove("first");
        assert!(winner_is(&slots, "a.example", &second));
        assert!(slots.winner("b.example").is_none());
        assert_eq!(slots.served(), 1);
    }

    #[test]
    fn a_slot_that_stops_claiming_a_name_lets_it_go() {
        let (both, one) = (cert(&["a.example", "b.example"]), cert(&["a.example"]));
        let mut slots = slots();
        serve(&mut slots, "s", &both);
        serve(&mut slots, "s", &one);
        assert!(winner_is(&slots, "a.example", &one));
        assert!(slots.winner("b.example").is_none());
        assert_eq!(slots.claims.len(), 1);
    }
}

//! The records a solver wrote, or may have written, until they are
//! removed: who still needs each one, whether an add may have reached the
//! server, and the turn that keeps an add and a delete of one record from
//! crossing.
//!
//! `cleanup` is called once for every `present` that started, so a record
//! is held by each `present` from its first step to its `cleanup`: a late
//! cleanup of an attempt that was dropped does not remove the record that
//! the next attempt (resuming the order, with the same value) needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lookup::Target;
use crate::sync::lock;

/// A record by the domain it proves and its value.
pub(super) type RecordKey = (String, String);

pub(super) fn record_key(domain: &str, value: &str) -> RecordKey {
    (
        domain.trim_end_matches('.').to_ascii_lowercase(),
        value.to_owned(),
    )
}

/// Held while an update of one record is on its way.
pub(super) type Turn = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub(super) struct Ledger {
    entries: Mutex<HashMap<RecordKey, Entry>>,
}

#[derive(Default)]
struct Entry {
    /// Where it goes now, once looked up.
    target: Option<Target>,
    /// Every place an add may have reached since the server last confirmed
    /// its removal there (more than one if the CNAME chain moved).
    places: Vec<Target>,
    /// `present`s started and not cleaned up yet.
    holders: usize,
    turn: Turn,
}

impl Ledger {
    /// A `present` starts: the record is held until its `cleanup`.
    pub(super) fn hold(&self, key: &RecordKey) {
        lock(&self.entries).entry(key.clone()).or_default().holders += 1;
    }

    /// The record goes to `target` now.
    pub(super) fn aim(&self, key: &RecordKey, target: &Target) {
        lock(&self.entries).entry(key.clone()).or_default().target = Some(target.clone());
    }

    pub(super) fn turn(&self, key: &RecordKey) -> Turn {
        lock(&self.entries)
            .entry(key.clone())
            .or_default()
            .turn
            .clone()
    }

    /// An add to where the record goes now is about to be sent (with the
    /// turn held): whether one may have reached that place before, to
    /// restore if this one is refused.
    pub(super) fn writing(&self, key: &RecordKey) -> bool {
        let mut entries = lock(&self.entries);
        let entry = entries.entry(key.clone()).or_default();
        let Some(target) = entry.target.clone() else {
            return false;
        };
        let before = entry.places.contains(&target);
        if !before {
            entry.places.push(target);
        }
        before
    }

    /// The add was refused without being applied: that place is as it was.
    pub(super) fn not_written(&self, key: &RecordKey, before: bool) {
        if let Some(entry) = lock(&self.entries).get_mut(key) {
            if !before {
                let target = entry.target.clone();
                entry.places.retain(|place| Some(place) != target.as_ref());
            }
        }
    }

    /// A `cleanup` ends its `present`'s hold: where to delete the record,
    /// if no one else holds it and it may be there.
    pub(super) fn release(&self, key: &RecordKey) -> Option<(Vec<Target>, Turn)> {
        let mut entries = lock(&self.entries);
        let entry = entries.get_mut(key)?;
        entry.holders = entry.holders.saturating_sub(1);
        if entry.holders > 0 {
            return None;
        }
        if entry.places.is_empty() {
            entries.remove(key);
            return None;
        }
        Some((entry.places.clone(), entry.turn.clone()))
    }

    /// Whether the record should still be deleted at `place` (checked with
    /// the turn held): no `present` holds it again, and it may be there.
    pub(super) fn removable(&self, key: &RecordKey, place: &Target) -> bool {
        lock(&self.entries)
            .get(key)
            .is_some_and(|entry| entry.holders == 0 && entry.places.contains(place))
    }

    /// The server confirmed the delete at `place` (with the turn held), or
    /// it is given up: forgotten there, and altogether once no place is
    /// left and no `present` holds it.
    pub(super) fn removed(&self, key: &RecordKey, place: &Target) {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get_mut(key) {
            entry.places.retain(|known| known != place);
            if entry.places.is_empty() && entry.holders == 0 {
                entries.remove(key);
            }
        }
    }

    /// How many records it keeps (for tests of its bounds).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::Name;

    use super::*;

    fn target(name: &str) -> Target {
        Target {
            name: Name::from_ascii(name).unwrap(),
            zone: Name::from_ascii("example.test.").unwrap(),
        }
    }

    /// Two `present`s of one value (an attempt dropped, the next resuming
    /// the order): the first one's late cleanup leaves the record to the
    /// second; the second's removes it.
    #[test]
    fn a_late_cleanup_leaves_the_record_to_the_next_present() {
        let ledger = Ledger::default();
        let key = record_key("example.test", "v");
        let place = target("_acme-challenge.example.test.");
        for _ in 0..2 {
            ledger.hold(&key);
            ledger.aim(&key, &place);
            ledger.writing(&key);
        }
        assert!(ledger.release(&key).is_none(), "the first cleanup deletes");
        assert!(!ledger.removable(&key, &place));
        let (places, _) = ledger.release(&key).expect("the last cleanup deletes");
        assert_eq!(places, std::slice::from_ref(&place));
        assert!(ledger.removable(&key, &place));
        ledger.removed(&key, &place);
        assert_eq!(ledger.len(), 0);
    }

    /// A `present` that failed before writing, or whose add was refused:
    /// its cleanup sends nothing and forgets it.
    #[test]
    fn nothing_written_nothing_removed() {
        let ledger = Ledger::default();
        let key = record_key("example.test", "v");
        ledger.hold(&key);
        assert!(ledger.release(&key).is_none());
        assert_eq!(ledger.len(), 0);

        ledger.hold(&key);
        ledger.aim(&key, &target("_acme-challenge.example.test."));
        let before = ledger.writing(&key);
        ledger.not_written(&key, before);
        assert!(ledger.release(&key).is_none());
        assert_eq!(ledger.len(), 0);
    }

    /// A refused add does not hide a record an earlier add may have left.
    #[test]
    fn a_refused_add_keeps_an_earlier_write() {
        let ledger = Ledger::default();
        let key = record_key("example.test", "v");
        ledger.hold(&key);
        ledger.aim(&key, &target("_acme-challenge.example.test."));
        ledger.writing(&key);
        assert!(ledger.release(&key).is_some()); // its delete failed: retried
        ledger.hold(&key);
        let before = ledger.writing(&key);
        ledger.not_written(&key, before);
        assert!(
            ledger.release(&key).is_some(),
            "the earlier record is forgotten"
        );
    }

    /// The CNAME chain moved between two writes: both places are removed,
    /// each on its own; removing one does not forget the other.
    #[test]
    fn every_place_written_is_removed() {
        let ledger = Ledger::default();
        let key = record_key("example.test", "v");
        let (old, new) = (target("a.challenges.test."), target("b.challenges.test."));
        ledger.hold(&key);
        ledger.aim(&key, &old);
        ledger.writing(&key);
        ledger.hold(&key);
        ledger.aim(&key, &new);
        ledger.writing(&key);
        assert!(ledger.release(&key).is_none());
        let (places, _) = ledger.release(&key).unwrap();
        assert_eq!(places, [old.clone(), new.clone()]);
        ledger.removed(&key, &old);
        assert!(ledger.removable(&key, &new), "the new place is forgotten");
        ledger.removed(&key, &new);
        assert_eq!(ledger.len(), 0);
    }
}

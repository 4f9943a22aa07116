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
    /// Where it goes, once looked up.
    target: Option<Target>,
    /// `present`s started and not cleaned up yet.
    holders: usize,
    /// Whether an add may have reached the server since the last delete
    /// that the server confirmed.
    maybe_written: bool,
    turn: Turn,
}

impl Ledger {
    /// A `present` starts: the record is held until its `cleanup`.
    pub(super) fn hold(&self, key: &RecordKey) {
        lock(&self.entries).entry(key.clone()).or_default().holders += 1;
    }

    /// The record goes to `target`. If it may have been written elsewhere
    /// before (the CNAME chain changed), that place, to remove it there.
    pub(super) fn aim(&self, key: &RecordKey, target: &Target) -> Option<Target> {
        let mut entries = lock(&self.entries);
        let entry = entries.entry(key.clone()).or_default();
        let before = entry.target.replace(target.clone());
        before.filter(|before| entry.maybe_written && before.name != target.name)
    }

    pub(super) fn turn(&self, key: &RecordKey) -> Turn {
        lock(&self.entries)
            .entry(key.clone())
            .or_default()
            .turn
            .clone()
    }

    /// An add is about to be sent (with the turn held): whether one may
    /// have reached the server before, to restore if this one is refused.
    pub(super) fn writing(&self, key: &RecordKey) -> bool {
        let mut entries = lock(&self.entries);
        let entry = entries.entry(key.clone()).or_default();
        std::mem::replace(&mut entry.maybe_written, true)
    }

    /// The add was refused without being applied: the record is as it was.
    pub(super) fn not_written(&self, key: &RecordKey, before: bool) {
        if let Some(entry) = lock(&self.entries).get_mut(key) {
            entry.maybe_written = before;
        }
    }

    /// A `cleanup` ends its `present`'s hold: where to delete the record, if
    /// no one else holds it and it may be there.
    pub(super) fn release(&self, key: &RecordKey) -> Option<(Target, Turn)> {
        let mut entries = lock(&self.entries);
        let entry = entries.get_mut(key)?;
        entry.holders = entry.holders.saturating_sub(1);
        let (holders, written) = (entry.holders, entry.maybe_written);
        match (holders, written, entry.target.clone()) {
            (0, true, Some(target)) => Some((target, entry.turn.clone())),
            (0, _, _) => {
                entries.remove(key);
                None
            }
            _ => None,
        }
    }

    /// Whether the record should still be deleted (checked with the turn
    /// held): no `present` holds it again, and it may be there.
    pub(super) fn removable(&self, key: &RecordKey) -> bool {
        lock(&self.entries)
            .get(key)
            .is_some_and(|entry| entry.holders == 0 && entry.maybe_written)
    }

    /// The server confirmed the delete (or refused it for good): forgotten
    /// unless a `present` holds it again.
    pub(super) fn removed(&self, key: &RecordKey) {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get_mut(key) {
            entry.maybe_written = false;
            if entry.holders == 0 {
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
        assert!(!ledger.removable(&key));
        let (to, _) = ledger.release(&key).expect("the last cleanup deletes");
        assert_eq!(to.name, place.name);
        assert!(ledger.removable(&key));
        ledger.removed(&key);
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

    /// The CNAME chain moved while a record may be at the old place.
    #[test]
    fn a_new_place_gives_the_old_one_to_remove() {
        let ledger = Ledger::default();
        let key = record_key("example.test", "v");
        let (old, new) = (target("a.challenges.test."), target("b.challenges.test."));
        ledger.hold(&key);
        assert!(ledger.aim(&key, &old).is_none());
        ledger.writing(&key);
        ledger.hold(&key);
        assert_eq!(ledger.aim(&key, &new).map(|t| t.name), Some(old.name));
        assert!(ledger.aim(&key, &new).is_none());
    }
}

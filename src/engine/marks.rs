//! What a slot knows of its replay mark, and the rules for it, whoever
//! keeps the mark (a source's places, a directory's state files): what a
//! candidate is judged against, what is recorded and when, and what a mark
//! that cannot be read or recorded does (it fails closed without failing
//! down: nothing older than what is known is installed, it is reported in
//! health, read again on a backoff of its own, and recorded once it can be).
//!
//! Only the mark of a certificate this process served is ever recorded:
//! what was read (a mark another instance recorded, or one a broken file
//! says) is judged against, never spread to other places.

use crate::bundle::CertInfo;
use crate::mark::{HighWaterMark, MarkUnreadable};
use crate::source::SourceWarning;

/// What reading a slot's mark gave.
pub(crate) type MarkRead = Result<Option<HighWaterMark>, MarkUnreadable>;

/// What the places that keep a slot's mark were last known to hold.
#[derive(Debug, Clone, Default)]
enum Held {
    /// Not read yet, or to be read again (after a record that may have
    /// healed a place that could not be read).
    #[default]
    Unknown,
    /// Read, or recorded since; `floor`: they hold exactly the floor
    /// (false again once the floor rises).
    Known { floor: bool },
    /// They could not be read, or recorded in (tried again after a
    /// backoff).
    Unreadable(Box<MarkUnreadable>),
}

/// What a driver keeps of a slot's mark while the slot is gone (a pair
/// away from its directory): the newest mark known for sure, and whether
/// it is the slot's own, served in this process (then it is recorded when
/// the slot comes back and its places lag).
#[cfg(feature = "file")]
#[derive(Debug, Clone, Default)]
pub(crate) struct Remembered {
    floor: Option<HighWaterMark>,
    served: bool,
}

/// What a slot knows of its replay mark.
#[derive(Debug, Default)]
pub(crate) struct MarkState {
    held: Held,
    /// The newest mark known for sure: read (wholly or in part), or
    /// served. Never lowered: a storage that restarted empty makes no older
    /// certificate acceptable.
    floor: Option<HighWaterMark>,
    /// Whether the floor is the mark of a certificate this process served
    /// in the slot (or remembered for it by its driver): only then is it
    /// recorded. (A newer mark read is another's, or a broken file's.)
    served: bool,
    /// Failed reads or records in a row (their own backoff).
    pub(super) failures: u32,
}

impl MarkState {
    /// A slot that knew `remembered` before (a pair that left a directory
    /// and came back): its places are read again.
    #[cfg(feature = "file")]
    pub(crate) fn remembering(remembered: Remembered) -> Self {
        Self {
            floor: remembered.floor,
            served: remembered.served,
            ..Self::default()
        }
    }

    /// What a driver remembers of a slot that goes.
    #[cfg(feature = "file")]
    pub(crate) fn remembered(&self) -> Remembered {
        Remembered {
            floor: self.floor.clone(),
            served: self.served,
        }
    }

    /// Whether the places must be read before judging against the mark.
    pub(super) fn unread(&self) -> bool {
        !matches!(self.held, Held::Known { .. })
    }

    /// Whether the places could not be read (or recorded in) last time.
    pub(super) fn unreadable(&self) -> bool {
        matches!(self.held, Held::Unreadable(_))
    }

    /// What a candidate must not be older than: the mark known for sure, or
    /// the certificate `serving` if it is newer (so that a mark that cannot
    /// be read lets in nothing older than what serves).
    pub(super) fn newest(&self, serving: Option<&CertInfo>) -> Option<HighWaterMark> {
        HighWaterMark::newest(self.floor.clone(), serving.map(HighWaterMark::of))
    }

    /// `cert` serves now (installed, perhaps older on purpose: then the
    /// floor stays as it is).
    pub(super) fn serves(&mut self, cert: &CertInfo) {
        let mark = HighWaterMark::of(cert);
        if self
            .floor
            .as_ref()
            .is_some_and(|floor| floor.is_above(&mark))
        {
            return;
        }
        if self.floor.as_ref() != Some(&mark) {
            self.floor = Some(mark);
            // The places hold an older one now, if they were up to date.
            if let Held::Known { floor } = &mut self.held {
                *floor = false;
            }
        }
        self.served = true;
    }

    /// Takes in what a read gave: a failed read keeps what was known for
    /// sure, and tells it.
    pub(super) fn read(&mut self, read: MarkRead) {
        match read {
            Ok(mark) => {
                self.raise(mark.as_ref());
                let floor = mark.is_some() && mark == self.floor;
                self.held = Held::Known { floor };
            }
            Err(mut error) => {
                self.raise(error.known.as_ref());
                error.known = self.floor.clone();
                self.held = Held::Unreadable(Box::new(error));
            }
        }
    }

    /// Raises the floor to `read` if it is newer: a mark not served here.
    fn raise(&mut self, read: Option<&HighWaterMark>) {
        let Some(read) = read else {
            return;
        };
        if self.floor.as_ref().is_none_or(|floor| read.is_above(floor)) {
            self.floor = Some(read.clone());
            self.served = false;
        }
    }

    /// The mark to record, if any: the newest certificate served, unless a
    /// newer one is known (a mark is never lowered; the same age is
    /// recorded again, so that a place that lags catches up). A slot whose
    /// mark is kept in `one_place` records nothing there when that place
    /// holds exactly this mark already (10⁵ pairs loaded at start are not
    /// all written again), nor while it does not answer (one that answered
    /// with something unusable is replaced).
    pub(super) fn to_record(&self, one_place: bool) -> Option<HighWaterMark> {
        let served = self.floor.as_ref().filter(|_| self.served)?;
        let held = match &self.held {
            Held::Known { floor } => *floor,
            Held::Unreadable(error) => !error.is_corrupt(),
            Held::Unknown => false,
        };
        match one_place && held {
            true => None,
            false => Some(served.clone()),
        }
    }

    /// Takes in what recording `mark` (from [`to_record`](Self::to_record))
    /// gave. Recorded where the places were known: they hold it now.
    /// Recorded while they could not be read: they are read again (what was
    /// unusable is replaced; one that did not answer was left alone). Not
    /// recorded: reported, and read and recorded again after a backoff.
    pub(super) fn recorded(&mut self, mark: &HighWaterMark, result: Result<(), MarkUnreadable>) {
        self.held = match (result, &self.held) {
            (Ok(()), Held::Known { .. }) => Held::Known {
                floor: self.floor.as_ref() == Some(mark),
            },
            (Ok(()), _) => Held::Unknown,
            (Err(mut error), _) => {
                error.known = self.floor.clone();
                Held::Unreadable(Box::new(error))
            }
        };
    }

    /// The warning shown in health while the mark cannot be read.
    pub(super) fn warning(&self) -> Option<SourceWarning> {
        match &self.held {
            Held::Unreadable(error) => Some(SourceWarning::MarkUnreadable(error.clone())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    /// A certificate that became valid `days` days ago.
    fn issued(days: u64) -> CertInfo {
        let start = SystemTime::now() - Duration::from_secs(days * 86_400);
        let bundle = crate::bundle::self_signed(start, Duration::from_secs(90 * 86_400));
        bundle.info().clone()
    }

    fn mark(cert: &CertInfo) -> HighWaterMark {
        HighWaterMark::of(cert)
    }

    /// A storage that restarted empty lowers nothing: the floor read
    /// before holds, and what serves is recorded again.
    #[test]
    fn a_storage_that_restarted_empty_lowers_nothing() {
        let (old, now) = (issued(10), issued(1));
        let mut state = MarkState::default();
        state.serves(&now);
        state.read(Ok(Some(mark(&now))));
        state.read(Ok(None));
        assert_eq!(state.newest(None), Some(mark(&now)));
        assert_eq!(state.newest(Some(&old)), Some(mark(&now)));
        assert_eq!(state.to_record(true), Some(mark(&now)));
    }

    /// Only what this process served is recorded: a mark read (another
    /// instance's, or a far-future one a broken file says) is judged
    /// against, never spread; and a newer one read stops the record.
    #[test]
    fn only_what_was_served_is_recorded_and_never_over_a_newer_mark() {
        let (old, now) = (issued(10), issued(1));
        let mut state = MarkState::default();
        state.read(Ok(Some(mark(&now))));
        assert_eq!(state.to_record(false), None);
        state.serves(&old);
        assert_eq!(state.to_record(false), None);
        assert_eq!(state.newest(Some(&old)), Some(mark(&now)));
        // Older on purpose (allow_older): the newest served stays.
        let mut state = MarkState::default();
        state.serves(&now);
        state.serves(&old);
        assert_eq!(state.to_record(false), Some(mark(&now)));
    }

    /// While the places cannot be read, what was known and what serves
    /// hold the line, the warning names it, and one place that does not
    /// answer is not written (one that answered with garbage is).
    #[test]
    fn an_unreadable_mark_keeps_what_was_known_and_is_read_again() {
        let (old, now) = (issued(10), issued(1));
        let mut state = MarkState::default();
        state.read(Ok(Some(mark(&old))));
        state.read(Err(MarkUnreadable::new("no answer")));
        assert!(state.unread() && state.unreadable());
        assert_eq!(state.newest(Some(&now)), Some(mark(&now)));
        let Some(SourceWarning::MarkUnreadable(error)) = state.warning() else {
            panic!("no warning");
        };
        assert_eq!(error.known, Some(mark(&old)));
        state.serves(&now);
        assert_eq!(state.to_record(true), None, "one place that did not answer");
        assert_eq!(state.to_record(false), Some(mark(&now)));
        state.read(Err(MarkUnreadable::corrupt("garbage")));
        assert_eq!(state.to_record(true), Some(mark(&now)));
        // Recorded while unreadable: read again, not assumed healed.
        state.recorded(&mark(&now), Ok(()));
        assert!(state.unread() && !state.unreadable());
    }

    /// One place known to hold exactly the mark: nothing to write. Many
    /// places (one may lag), or a place not read: recorded again.
    #[test]
    fn a_mark_one_place_holds_already_is_not_recorded_again() {
        let now = issued(1);
        let mut state = MarkState::default();
        state.serves(&now);
        assert_eq!(state.to_record(true), Some(mark(&now)));
        state.read(Ok(Some(mark(&now))));
        assert_eq!(state.to_record(true), None);
        assert_eq!(state.to_record(false), Some(mark(&now)));
    }

    /// A record that failed is reported and read and recorded again; one
    /// that worked where the places were known leaves them known. A slot
    /// remembered by its driver records what it served when the place
    /// lags (nothing need serve now).
    #[test]
    fn a_failed_record_is_reported_and_recorded_again() {
        let (old, now) = (issued(10), issued(1));
        let mut state = MarkState::default();
        state.read(Ok(Some(mark(&old))));
        state.serves(&now);
        state.recorded(&mark(&now), Err(MarkUnreadable::new("disk full")));
        assert!(state.unreadable());
        assert!(state.warning().is_some());
        state.read(Ok(Some(mark(&old))));
        assert_eq!(state.newest(None), Some(mark(&now)));
        assert_eq!(state.to_record(true), Some(mark(&now)));
        state.recorded(&mark(&now), Ok(()));
        assert!(!state.unread());
        assert_eq!(state.to_record(true), None);

        let mut back = MarkState::remembering(state.remembered());
        back.read(Ok(Some(mark(&old))));
        assert_eq!(back.to_record(true), Some(mark(&now)));
    }

    /// Once a newer certificate serves, the place that held the older one
    /// is written again (one place known up to date is so no longer).
    #[test]
    fn each_newer_certificate_served_is_recorded() {
        let (old, now) = (issued(10), issued(1));
        let mut state = MarkState::default();
        state.read(Ok(None));
        state.serves(&old);
        assert_eq!(state.to_record(true), Some(mark(&old)));
        state.recorded(&mark(&old), Ok(()));
        assert_eq!(state.to_record(true), None);
        state.serves(&now);
        assert_eq!(state.to_record(true), Some(mark(&now)));
    }

    /// A slot that comes back remembers the mark it read (judged against,
    /// never recorded) apart from the one it served (recorded).
    #[test]
    fn a_slot_that_comes_back_remembers_what_it_read_and_what_it_served() {
        let (old, now) = (issued(10), issued(1));
        let mut state = MarkState::default();
        state.read(Ok(Some(mark(&now))));
        state.serves(&old);
        let back = MarkState::remembering(state.remembered());
        assert_eq!(back.newest(None), Some(mark(&now)));
        assert_eq!(back.to_record(false), None);
    }
}

//! What a slot knows of its replay mark, and the rules for it, whoever
//! keeps the mark (a source's places, a directory's state files): what a
//! candidate is judged against, what is recorded and when, and what a mark
//! that cannot be read or recorded does (it fails closed without failing
//! down: nothing older than what is known is installed, it is reported in
//! health, read again on a backoff of its own, and recorded once it can be).

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
    /// Read, or recorded since; `floor`: they hold exactly the floor.
    Known { floor: bool },
    /// They could not be read (asked again after a backoff).
    Unreadable(Box<MarkUnreadable>),
}

/// What a slot knows of its replay mark.
#[derive(Debug, Default)]
pub(crate) struct MarkState {
    held: Held,
    /// The newest mark known for sure: read (wholly or in part), recorded,
    /// or remembered by the driver. Never lowered: a storage that restarted
    /// empty makes no older certificate acceptable.
    floor: Option<HighWaterMark>,
    /// Failed reads or records in a row (their own backoff).
    pub(super) failures: u32,
}

impl MarkState {
    /// A slot whose newest mark was `floor` when last seen (a pair that
    /// left a directory and came back): its places are read again.
    #[cfg(feature = "file")]
    pub(crate) fn remembering(floor: Option<HighWaterMark>) -> Self {
        Self {
            floor,
            ..Self::default()
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
    /// be read lets in nothing older than what serves). What a driver
    /// remembers of a slot that goes.
    pub(crate) fn newest(&self, serving: Option<&CertInfo>) -> Option<HighWaterMark> {
        HighWaterMark::newest(self.floor.clone(), serving.map(HighWaterMark::of))
    }

    /// Takes in what a read gave: a failed read keeps what was known for
    /// sure, and tells it.
    pub(super) fn read(&mut self, read: MarkRead) {
        match read {
            Ok(mark) => {
                self.floor = HighWaterMark::newest(self.floor.take(), mark.clone());
                let floor = mark.is_some() && mark == self.floor;
                self.held = Held::Known { floor };
            }
            Err(mut error) => {
                self.floor = HighWaterMark::newest(self.floor.take(), error.known.clone());
                error.known = self.floor.clone();
                self.held = Held::Unreadable(Box::new(error));
            }
        }
    }

    /// The mark to record now that `cert` serves, if any, by the one rule
    /// ([`HighWaterMark::to_record`]): never lowered, the same age again so
    /// that a place that lags catches up; except that a slot whose mark is
    /// kept in `one_place` known to hold exactly this mark has nothing to
    /// record (10⁵ pairs loaded at start are not all written again).
    pub(super) fn to_record(&self, cert: &CertInfo, one_place: bool) -> Option<HighWaterMark> {
        let mark = HighWaterMark::to_record(self.floor.as_ref(), cert)?;
        let held = matches!(self.held, Held::Known { floor: true });
        match one_place && held && self.floor.as_ref() == Some(&mark) {
            true => None,
            false => Some(mark),
        }
    }

    /// Takes in what recording `mark` (from [`to_record`](Self::to_record))
    /// gave. Recorded where the places were known: they hold it now.
    /// Recorded while they could not be read: they are read again (what was
    /// unusable is replaced; one that did not answer was left alone). Not
    /// recorded: reported, and read and recorded again after a backoff.
    pub(super) fn recorded(&mut self, mark: HighWaterMark, result: Result<(), MarkUnreadable>) {
        let rose = self
            .floor
            .as_ref()
            .is_none_or(|floor| !floor.is_above_mark(&mark));
        if rose {
            self.floor = Some(mark);
        }
        self.held = match (result, &self.held) {
            (Ok(()), Held::Known { .. }) => Held::Known { floor: rose },
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
    /// before holds, and the next record puts it back.
    #[test]
    fn a_storage_that_restarted_empty_lowers_nothing() {
        let (old, now) = (issued(10), issued(1));
        let mut state = MarkState::default();
        state.read(Ok(Some(mark(&now))));
        state.read(Ok(None));
        assert_eq!(state.newest(None), Some(mark(&now)));
        assert_eq!(state.newest(Some(&old)), Some(mark(&now)));
        assert_eq!(state.to_record(&now, true), Some(mark(&now)));
    }

    /// While the places cannot be read, what was known and what serves
    /// hold the line, the warning names it and the next attempt reads.
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
        // Recorded while unreadable: read again, not assumed healed.
        state.recorded(mark(&now), Ok(()));
        assert!(state.unread() && !state.unreadable());
        assert_eq!(state.newest(None), Some(mark(&now)));
    }

    /// One place known to hold exactly the mark: nothing to write. Many
    /// places (one may lag), or a place not read: recorded again.
    #[test]
    fn a_mark_one_place_holds_already_is_not_recorded_again() {
        let now = issued(1);
        let mut state = MarkState::default();
        assert_eq!(state.to_record(&now, true), Some(mark(&now)));
        state.read(Ok(Some(mark(&now))));
        assert_eq!(state.to_record(&now, true), None);
        assert_eq!(state.to_record(&now, false), Some(mark(&now)));
        let older = issued(5);
        assert_eq!(state.to_record(&older, false), None);
    }

    /// A record that failed is reported and read again; one that worked
    /// where the places were known leaves them known.
    #[test]
    fn a_failed_record_is_reported_and_read_again() {
        let (old, now) = (issued(10), issued(1));
        let mut state = MarkState::default();
        state.read(Ok(Some(mark(&old))));
        state.recorded(mark(&now), Err(MarkUnreadable::new("disk full")));
        assert!(state.unreadable());
        assert!(state.warning().is_some());
        state.read(Ok(Some(mark(&old))));
        assert_eq!(state.newest(None), Some(mark(&now)));
        state.recorded(mark(&now), Ok(()));
        assert!(!state.unread());
        assert_eq!(state.to_record(&now, true), None);
    }

    /// Never lowered; the same age recorded again (a place that lags
    /// catches up); anything newer, or a first mark, recorded.
    #[test]
    fn a_mark_is_recorded_unless_a_newer_one_is() {
        let (old, now) = (issued(10), issued(1));
        let floor = HighWaterMark::of(&now);
        assert_eq!(HighWaterMark::to_record(Some(&floor), &old), None);
        assert_eq!(
            HighWaterMark::to_record(Some(&floor), &now),
            Some(floor.clone())
        );
        let newer = HighWaterMark::of(&old);
        assert_eq!(
            HighWaterMark::to_record(Some(&newer), &now),
            Some(floor.clone())
        );
        assert_eq!(HighWaterMark::to_record(None, &old), Some(newer));
    }
}

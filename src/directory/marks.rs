//! Replay protection per pair: the newest certificate each pair ever
//! served, kept when the pair leaves the directory (so that a pair deleted
//! and put back older is refused) and, with a state directory, across
//! restarts (one small file per pair, written when its mark rises).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::CertInfo;
use crate::mark::{HighWaterMark, MarkUnreadable};

/// How many pairs that left the directory keep their mark in memory (the
/// oldest departures are forgotten first; the state directory keeps all).
const REMOVED_KEPT: usize = 100_000;

/// Pair names longer than this (in bytes) name their mark file by a hash,
/// so that `<name>.mark` never exceeds a file system's name limit.
const LONGEST_NAME: usize = 200;

/// The marks of a directory's pairs.
#[derive(Debug, Default)]
pub(super) struct PairMarks {
    /// Where marks survive restarts: `<dir>/<pair>.mark`.
    dir: Option<PathBuf>,
    /// The marks known: a pair is here once its mark was read from the
    /// state directory (`None`: no file) or once it served.
    known: HashMap<Arc<str>, Option<HighWaterMark>>,
    /// Departures, oldest first, each with its number: a name is forgotten
    /// when its latest departure leaves the queue while it is still away.
    removed: VecDeque<(Arc<str>, u64)>,
    /// The pairs away from the directory now, with their latest departure.
    departed: HashMap<Arc<str>, u64>,
    /// Departures so far.
    departures: u64,
    /// The pairs whose mark file did not answer: nothing is recorded for
    /// them (it may hold a newer mark) until it does. (One that answered
    /// with something unusable is replaced by the next mark.)
    unreadable: HashSet<Arc<str>>,
}

impl PairMarks {
    pub(super) fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            ..Self::default()
        }
    }

    /// What is known of `name`'s mark, and where to read it if nothing is
    /// (on the blocking pool, with [`read`]).
    pub(super) fn lookup(&self, name: &str) -> Lookup {
        match (self.known.get(name), &self.dir) {
            (Some(mark), _) => Lookup::Known(mark.clone()),
            (None, Some(dir)) => Lookup::Read(file(dir, name)),
            (None, None) => Lookup::Known(None),
        }
    }

    /// `name` is in the directory (again).
    pub(super) fn present(&mut self, name: &Arc<str>) {
        self.departed.remove(name);
    }

    /// Takes in what reading `name`'s mark file gave.
    pub(super) fn loaded(
        &mut self,
        name: &Arc<str>,
        read: &Result<Option<HighWaterMark>, MarkUnreadable>,
    ) {
        match read {
            Ok(mark) => {
                self.unreadable.remove(name);
                self.known.entry(name.clone()).or_insert(mark.clone());
            }
            // Unusable: replaced by the next mark recorded.
            Err(error) if error.is_corrupt() => {
                self.unreadable.remove(name);
            }
            Err(_) => {
                self.unreadable.insert(name.clone());
            }
        }
    }

    /// `cert` serves for `name`: the new mark and the file to write it to,
    /// if it rose. Nothing while the mark file does not answer.
    pub(super) fn raise(
        &mut self,
        name: &Arc<str>,
        cert: &CertInfo,
    ) -> Option<(PathBuf, HighWaterMark)> {
        if self.unreadable.contains(name) {
            return None;
        }
        let mark = self.known.entry(name.clone()).or_default();
        let new = HighWaterMark::to_record(mark.as_ref(), cert)?;
        // One place, known to hold it already: nothing to write.
        if mark.as_ref() == Some(&new) {
            return None;
        }
        *mark = Some(new.clone());
        Some((file(self.dir.as_deref()?, name), new))
    }

    /// `name`'s mark could not be written: it is read (and written) again
    /// at the next look, as if unknown. (What serves keeps the floor.)
    pub(super) fn unsaved(&mut self, name: &Arc<str>) {
        self.known.remove(name);
    }

    /// `name` left the directory: its mark stays. In memory, the marks of
    /// the [`REMOVED_KEPT`] latest departures stay; older ones are
    /// forgotten (the state directory keeps every one).
    pub(super) fn left(&mut self, name: &Arc<str>) {
        self.unreadable.remove(name);
        self.departures += 1;
        self.departed.insert(name.clone(), self.departures);
        self.removed.push_back((name.clone(), self.departures));
        while self.removed.len() > REMOVED_KEPT {
            let Some((oldest, number)) = self.removed.pop_front() else {
                break;
            };
            if self.departed.get(&oldest) == Some(&number) {
                self.departed.remove(&oldest);
                self.known.remove(&oldest);
            }
        }
    }
}

/// What is known of a pair's mark.
pub(super) enum Lookup {
    Known(Option<HighWaterMark>),
    /// To be read from this file.
    Read(PathBuf),
}

/// Reads a pair's mark file (blocking). A file that does not parse, or is
/// not a small regular file, is unusable (replaced by the next mark); one
/// that cannot be read is unreadable.
pub(super) fn read(path: &Path) -> Result<Option<HighWaterMark>, MarkUnreadable> {
    let why = |why: String| format!("state file {}: {why}", path.display());
    match crate::read::small(path) {
        Ok(text) => String::from_utf8_lossy(&text)
            .parse()
            .map(Some)
            .map_err(|error| MarkUnreadable::corrupt(why(error))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            Err(MarkUnreadable::corrupt(why(error.to_string())))
        }
        Err(error) => Err(MarkUnreadable::new(why(error.to_string()))),
    }
}

/// Writes a pair's mark file (blocking; 0600, atomically).
pub(super) fn write(path: &Path, mark: &HighWaterMark) -> std::io::Result<()> {
    crate::atomic::write(path, format!("{mark}\n").as_bytes(), 0o600)
}

/// The mark file of pair `name`. A pair's name is one directory entry's
/// name that does not start with `.`, so it is one path component; a long
/// one is shortened, with a hash of the whole to keep names apart.
fn file(dir: &Path, name: &str) -> PathBuf {
    if name.len() <= LONGEST_NAME {
        return dir.join(format!("{name}.mark"));
    }
    use sha2::Digest;
    let hash = sha2::Sha256::digest(name.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let mut cut = 64;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    dir.join(format!("{}-{hex}.mark", &name[..cut]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_get_short_distinct_files() {
        let dir = Path::new("/state");
        assert_eq!(file(dir, "a"), Path::new("/state/a.mark"));
        let long = |c: char| std::iter::repeat_n(c, 250).collect::<String>();
        let (a, b) = (file(dir, &long('é')), file(dir, &format!("{}x", long('é'))));
        assert_ne!(a, b);
        for path in [a, b] {
            assert!(path.file_name().unwrap().len() < 255, "{path:?}");
        }
    }
}

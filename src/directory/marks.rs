//! Where a directory keeps its pairs' replay marks (the rules are the
//! engine's): in memory when a pair leaves the directory (so that a pair
//! deleted and put back older is refused) and, with a state directory,
//! across restarts (one small file per pair, written when its mark rises).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::Remembered;

/// How many pairs that left the directory keep their mark in memory (the
/// oldest departures are forgotten first; the state directory keeps all).
const REMOVED_KEPT: usize = 100_000;

/// Pair names longer than this (in bytes) name their mark file by a hash,
/// so that `<name>.mark` never exceeds a file system's name limit.
const LONGEST_NAME: usize = 200;

/// The marks of the pairs that left the directory, so that a pair deleted
/// and put back older is refused: the [`REMOVED_KEPT`] latest departures
/// (the oldest are forgotten first; a state directory keeps every one).
#[derive(Debug, Default)]
pub(super) struct Departed {
    /// The pairs away now: their latest departure's number, and their mark.
    marks: HashMap<Arc<str>, (u64, Remembered)>,
    /// Departures, oldest first, each with its number: a name is forgotten
    /// when its latest departure leaves the queue while it is still away.
    order: VecDeque<(Arc<str>, u64)>,
    /// Departures so far.
    count: u64,
}

impl Departed {
    /// `name` left the directory, knowing `mark`.
    pub(super) fn left(&mut self, name: &Arc<str>, mark: Remembered) {
        self.count += 1;
        self.marks.insert(name.clone(), (self.count, mark));
        self.order.push_back((name.clone(), self.count));
        while self.order.len() > REMOVED_KEPT {
            let Some((oldest, number)) = self.order.pop_front() else {
                break;
            };
            if self.marks.get(&oldest).is_some_and(|(n, _)| *n == number) {
                self.marks.remove(&oldest);
            }
        }
    }

    /// `name` is in the directory again: what it knew when it left.
    pub(super) fn back(&mut self, name: &str) -> Remembered {
        self.marks
            .remove(name)
            .map(|(_, mark)| mark)
            .unwrap_or_default()
    }
}

/// The mark file of pair `name`. A pair's name is one directory entry's
/// name that does not start with `.`, so it is one path component; a long
/// one is shortened, with a hash of the whole to keep names apart.
pub(super) fn file(dir: &Path, name: &str) -> PathBuf {
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

//! Where a directory's pairs are on disk: the two layouts, which pair a
//! changed path belongs to, and the metadata a poll compares.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::source::file::Files;

/// The pair a changed path belongs to: `<name>.crt`, `<name>.key` or the
/// subdirectory `<name>` (or an entry in it).
pub(super) fn pair_of(dir: &Path, path: &Path) -> Option<Arc<str>> {
    let (parent, name) = (path.parent()?, path.file_name()?.to_str()?);
    let name = if parent == dir {
        name.strip_suffix(".crt")
            .or_else(|| name.strip_suffix(".key"))
            .unwrap_or(name)
    } else if parent.parent() == Some(dir) {
        parent.file_name()?.to_str()?
    } else {
        return None;
    };
    (!name.starts_with('.') && !name.is_empty()).then(|| Arc::from(name))
}

/// Where pair `name` is now: a flat `<name>.crt` + `<name>.key` (either
/// present), else `<name>/tls.crt` + `<name>/tls.key` (either present).
pub(super) fn locate(dir: &Path, name: &str) -> Option<Files> {
    let flat = Files::Pair {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    let sub = dir.join(name);
    let nested = Files::Pair {
        cert: sub.join("tls.crt"),
        key: sub.join("tls.key"),
    };
    [flat, nested]
        .into_iter()
        .find(|files| files.paths().iter().any(|p| p.exists()))
}

/// The pairs in `dir`, by name, and its subdirectories: every entry names
/// a pair (as [`pair_of`] says), found where [`locate`] looks.
pub(super) fn scan(dir: &Path) -> std::io::Result<(BTreeMap<String, Files>, BTreeSet<PathBuf>)> {
    let (mut names, mut subdirs) = (BTreeSet::new(), BTreeSet::new());
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = pair_of(dir, &path) else {
            continue;
        };
        // `is_dir` follows symlinks: a mounted secret may be one.
        if path.is_dir() {
            subdirs.insert(path);
        }
        names.insert(name);
    }
    let pairs = names
        .into_iter()
        .filter_map(|name| Some((name.to_string(), locate(dir, &name)?)))
        .collect();
    Ok((pairs, subdirs))
}

/// The files' metadata (size, times, inode; following symlinks, which a
/// Kubernetes secret swap changes), hashed: what a poll compares.
pub(super) fn stamp(files: &Files) -> u64 {
    let mut hash = std::hash::DefaultHasher::new();
    for path in files.paths() {
        match std::fs::metadata(path) {
            Ok(meta) => {
                meta.len().hash(&mut hash);
                meta.modified().ok().hash(&mut hash);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::MetadataExt;
                    (meta.ino(), meta.dev(), meta.ctime(), meta.ctime_nsec()).hash(&mut hash);
                }
            }
            Err(error) => error.kind().hash(&mut hash),
        }
    }
    // Never 0, the stamp of a pair not read yet.
    hash.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_path_names_its_pair() {
        let dir = Path::new("/sites");
        let of = |path: &str| pair_of(dir, Path::new(path)).map(|n| n.to_string());
        assert_eq!(of("/sites/a.crt").as_deref(), Some("a"));
        assert_eq!(of("/sites/a.key").as_deref(), Some("a"));
        // A cert-manager directory, an entry in it, its `..data` swap.
        assert_eq!(of("/sites/b").as_deref(), Some("b"));
        assert_eq!(of("/sites/b/tls.crt").as_deref(), Some("b"));
        assert_eq!(of("/sites/b/..data").as_deref(), Some("b"));
        // Hidden entries (temporary files of atomic writes), and paths
        // outside the directory, name no pair.
        assert_eq!(of("/sites/.a.crt.tmp"), None);
        assert_eq!(of("/sites/.b/tls.crt"), None);
        assert_eq!(of("/elsewhere/a.crt"), None);
        assert_eq!(of("/sites/b/c/tls.crt"), None);
    }

    #[test]
    fn a_scan_finds_both_layouts_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("certrotate-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["both", "nested", "empty", ".hidden"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for file in [
            "flat.crt",
            "flat.key",
            "both.crt",
            "both.key",
            "both/tls.crt",
            "nested/tls.crt",
            "README",
            ".tmp.crt",
            ".hidden/tls.crt",
        ] {
            std::fs::write(dir.join(file), "x").unwrap();
        }
        let (pairs, subdirs) = scan(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let paths = |name: &str| {
            pairs[name]
                .paths()
                .iter()
                .map(|p| p.to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs.keys().collect::<Vec<_>>(), ["both", "flat", "nested"]);
        // A flat pair wins over a subdirectory of the same name.
        assert_eq!(paths("both"), [dir.join("both.crt"), dir.join("both.key")]);
        assert_eq!(
            paths("nested"),
            [dir.join("nested/tls.crt"), dir.join("nested/tls.key")]
        );
        let subdirs: Vec<_> = subdirs
            .iter()
            .map(|d| d.strip_prefix(&dir).unwrap())
            .collect();
        assert_eq!(
            subdirs,
            [Path::new("both"), Path::new("empty"), Path::new("nested")]
        );
    }
}

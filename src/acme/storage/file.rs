//! [`FileStorage`]: ACME state in a directory, with a lease lock for
//! instances sharing it (a volume mounted by several replicas).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{BoxFuture, Lease, Storage};

/// [`Storage`] in a directory: one file per key, written 0600 and atomically
/// (temporary file, fsync, rename, fsync of the directory).
///
/// Instances sharing the directory (a volume mounted by several replicas)
/// take turns through a lease lock whose end each judges by its own clock:
/// keep their clocks within a fraction of
/// [`lock_lease`](crate::acme::AcmeBuilder::lock_lease) of each other (NTP does;
/// 10 s by default), or a replica ahead may take a live holder's lock (the
/// holder's writes are then fenced out, and the certificate ordered twice).
/// A lease ending further away than three leases is taken over.
///
/// ```
/// let storage = certrotate::acme::FileStorage::new("/var/lib/myapp/acme");
/// ```
#[derive(Debug, Clone)]
pub struct FileStorage {
    dir: PathBuf,
}

impl FileStorage {
    /// Keeps state in `dir` (created with mode 0700 when first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl Storage for FileStorage {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, std::io::Result<Option<Vec<u8>>>> {
        let path = self.dir.join(key);
        Box::pin(async move {
            // Moved out of its zeroizing buffer, not copied: the caller
            // keeps it zeroizing.
            let read = crate::sync::blocking(move || {
                crate::read::small(&path).map(|mut bytes| std::mem::take(&mut *bytes))
            })
            .await?;
            match read {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn store<'a>(&'a self, key: &'a str, value: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>> {
        let (dir, value) = (self.dir.clone(), zeroize::Zeroizing::new(value.to_vec()));
        let path = self.dir.join(key);
        Box::pin(async move {
            crate::sync::blocking(move || {
                crate::atomic::create_private_dir(&dir)?;
                crate::atomic::write(&path, &value, 0o600)
            })
            .await?
        })
    }

    /// A lease file (`<name>.lease`: holder and end of lease) and a fence
    /// file (`<name>.fence`: the newest token), changed only under an OS
    /// lock on the lock's mutex file (`.<name>.mutex`), so that instances sharing the directory on one
    /// machine or a shared volume take the lock in turn.
    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, io::Result<Option<Lease>>> {
        let name = name.to_owned();
        let owner = Lease::new_owner();
        Box::pin(self.exclusive(name.clone(), move |dir| {
            // Held, unless the lease ran out, or ends further away than
            // three leases (no holder writes that: planted, or a clock that
            // jumped).
            let now = SystemTime::now();
            let planted = crate::clock::saturating_add(now, lease * 3);
            let held = holder(dir, &name).is_some_and(|(_, until)| until > now && until <= planted);
            if held {
                return Ok(None);
            }
            // Above the last token, and at least the clock in microseconds:
            // a fence file lost or unusable does not hand out an old token.
            let micros = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            let micros = u64::try_from(micros.as_micros()).unwrap_or(u64::MAX);
            let token = fence(dir, &name).unwrap_or(0).saturating_add(1).max(micros);
            crate::atomic::write(
                &dir.join(format!("{name}.fence")),
                token.to_string().as_bytes(),
                0o600,
            )?;
            write_lease(dir, &name, &owner, lease)?;
            Ok(Some(Lease::new(name, owner, token)))
        }))
    }

    /// Extends the lease file while it names `lease`'s holder (a lease
    /// released, or taken by someone else, is not taken back) and `lease`
    /// holds the newest token.
    fn renew_lock<'a>(
        &'a self,
        lease: &'a Lease,
        duration: Duration,
    ) -> BoxFuture<'a, io::Result<bool>> {
        let lease = lease.clone();
        Box::pin(self.exclusive(lease.name().to_owned(), move |dir| {
            let ours = holder(dir, lease.name()).is_some_and(|(owner, _)| owner == lease.owner());
            if !ours || fence(dir, lease.name())? != lease.token() {
                return Ok(false);
            }
            write_lease(dir, lease.name(), lease.owner(), duration)?;
            Ok(true)
        }))
    }

    fn store_fenced<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: &'a Lease,
    ) -> BoxFuture<'a, io::Result<()>> {
        let (key, value, lease) = (key.to_owned(), value.to_vec(), lease.clone());
        Box::pin(self.exclusive(lease.name().to_owned(), move |dir| {
            if fence(dir, lease.name())? != lease.token() {
                return Err(lease.fenced_out());
            }
            crate::atomic::write(&dir.join(key), &value, 0o600)
        }))
    }

    fn unlock<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, io::Result<()>> {
        let lease = lease.clone();
        Box::pin(self.exclusive(lease.name().to_owned(), move |dir| {
            if holder(dir, lease.name()).is_some_and(|(owner, _)| owner == lease.owner()) {
                std::fs::remove_file(dir.join(format!("{}.lease", lease.name())))?;
            }
            Ok(())
        }))
    }
}

/// How long an instance waits for another to leave the lock's mutex (held
/// for the microseconds it takes to read and write two small files).
const MUTEX_WAIT: Duration = Duration::from_secs(10);

impl FileStorage {
    /// Runs `f` on a blocking thread, holding the mutex of lock `name`: an
    /// OS lock (`flock`) on the file `.<name>.mutex`, so that instances
    /// sharing the directory take turns.
    ///
    /// The kernel releases the lock when its holder dies, so nothing is
    /// ever judged abandoned by its age: clock skew between a file server
    /// and a replica, or a slow `fsync`, cannot let two holders in. On NFS,
    /// Linux maps `flock` to the server's byte-range locks (NLM for v3,
    /// built in for v4), which hold across clients; a volume mounted with
    /// `nolock` (or `local_lock=flock`) has locks that only hold on one
    /// machine, and must not be shared by replicas on several.
    async fn exclusive<T: Send + 'static>(
        &self,
        name: String,
        f: impl FnOnce(&Path) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (dir, mutex) = (self.dir.clone(), self.dir.join(format!(".{name}.mutex")));
        crate::sync::blocking(move || {
            crate::atomic::create_private_dir(&dir)?;
            let mut options = std::fs::OpenOptions::new();
            options.read(true).write(true).create(true).truncate(false);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let file = options.open(&mutex)?;
            let deadline = Instant::now() + MUTEX_WAIT;
            loop {
                match file.try_lock() {
                    Ok(()) => break,
                    Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(std::fs::TryLockError::WouldBlock) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "{} stayed locked for {}",
                                mutex.display(),
                                crate::clock::human(MUTEX_WAIT)
                            ),
                        ))
                    }
                    Err(std::fs::TryLockError::Error(e)) => return Err(e),
                }
            }
            let result = f(&dir);
            // Closing the file releases the lock; the file stays for the next.
            drop(file);
            result
        })
        .await?
    }
}

/// The newest fencing token given out for lock `name` (0: none yet).
fn fence(dir: &Path, name: &str) -> io::Result<u64> {
    match crate::read::small(&dir.join(format!("{name}.fence"))) {
        Ok(text) => String::from_utf8_lossy(&text).trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}.fence is not a number"),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Writes the lease file of lock `name`: held by `owner` for `lease` from now.
fn write_lease(dir: &Path, name: &str, owner: &str, lease: Duration) -> io::Result<()> {
    let until = crate::clock::saturating_add(SystemTime::now(), lease);
    let millis = until
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    crate::atomic::write(
        &dir.join(format!("{name}.lease")),
        format!("{owner} {millis}").as_bytes(),
        0o600,
    )
}

/// The holder of lock `name` and when its lease ends, if the lease file is
/// there and readable.
fn holder(dir: &Path, name: &str) -> Option<(String, SystemTime)> {
    let text = crate::read::small(&dir.join(format!("{name}.lease"))).ok()?;
    let text = String::from_utf8(text.to_vec()).ok()?;
    let (owner, until) = text.trim().split_once(' ')?;
    let until = SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(until.parse().ok()?))?;
    Some((owner.to_owned(), until))
}

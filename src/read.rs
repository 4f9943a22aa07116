//! Reading files that come from outside: the one place every certificate,
//! key, trust bundle, CRL, ACME state and CA file is read.
//!
//! A file is opened without blocking (a FIFO or a device cannot hang the
//! open), must be a regular file (checked on the opened handle, after
//! symlinks are followed, so Kubernetes' `..data` links keep working), and is
//! read up to a size limit: a symlink to `/dev/zero` or a 64 GiB sparse file
//! costs one `fstat`, not the process's memory.
//!
//! Reads that may block (a hung network file system) run on a blocking
//! thread through [`OneAtATime`]: one thread per reader at most, however
//! often the caller retries, and never longer than its caller waits.

use std::fmt;
use std::io::Read;
use std::path::Path;

#[cfg(feature = "file")]
use std::sync::Arc;
#[cfg(feature = "file")]
use std::time::Duration;
use zeroize::Zeroizing;

/// The default size limit of a file read from outside: far above any real
/// certificate chain, key or trust bundle (a chain of ten 4096-bit
/// certificates is under 20 KiB).
pub(crate) const DEFAULT_LIMIT: u64 = 1 << 20;

/// Why a file could not be read.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// Opening or reading failed.
    Io(std::io::Error),
    /// The path names something other than a regular file.
    NotAFile(&'static str),
    /// The file is larger than the limit.
    TooLarge { size: u64, limit: u64 },
}

/// A file's content and the metadata of the handle it was read from. The
/// bytes may be a private key: they are zeroized when dropped.
pub(crate) struct Contents {
    pub(crate) bytes: Zeroizing<Vec<u8>>,
    #[cfg_attr(not(feature = "file"), allow(dead_code))]
    pub(crate) metadata: std::fs::Metadata,
}

/// Reads the regular file at `path` (following symlinks), up to `limit`
/// bytes, without blocking on a FIFO or device.
pub(crate) fn bounded(path: &Path, limit: u64) -> Result<Contents, ReadFailure> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
    );
    let file = options.open(path).map_err(ReadFailure::Io)?;
    let metadata = file.metadata().map_err(ReadFailure::Io)?;
    if !metadata.is_file() {
        return Err(ReadFailure::NotAFile(kind(&metadata.file_type())));
    }
    if metadata.len() > limit {
        return Err(ReadFailure::TooLarge {
            size: metadata.len(),
            limit,
        });
    }
    // The file may grow between the fstat and the read: read one byte past
    // the limit to tell.
    // Sized up front, so that no reallocation leaves a copy behind.
    let mut bytes = Zeroizing::new(Vec::with_capacity(metadata.len() as usize + 1));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadFailure::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadFailure::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(Contents { bytes, metadata })
}

/// [`bounded`] with the default limit, for callers that only need the bytes
/// and an `io::Error` (ACME storage, CA files, `CertBundle::from_pem_files`).
pub(crate) fn small(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    bounded(path, DEFAULT_LIMIT)
        .map(|c| c.bytes)
        .map_err(std::io::Error::from)
}

/// What a file type is, in words.
fn kind(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

impl fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => error.fmt(f),
            Self::NotAFile(kind) => write!(f, "it is {kind}, not a regular file"),
            Self::TooLarge { size, limit } => {
                write!(f, "it is {size} bytes, over the {} limit", bytes(*limit))
            }
        }
    }
}

impl From<ReadFailure> for std::io::Error {
    fn from(failure: ReadFailure) -> Self {
        match failure {
            ReadFailure::Io(error) => error,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

/// A size in words: `1 MiB`, `64 KiB`, `1500 bytes`.
pub(crate) fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Runs blocking reads on a blocking thread, one at a time: a read that
/// hangs (a dead NFS server) holds one thread, and later calls wait for it
/// (up to their timeout) instead of starting another.
#[cfg(feature = "file")]
#[derive(Debug, Clone, Default)]
pub(crate) struct OneAtATime {
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// A blocking read did not finish in time.
#[cfg(feature = "file")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stuck {
    pub(crate) waited: Duration,
}

#[cfg(feature = "file")]
impl OneAtATime {
    /// Runs `read` on a blocking thread once no earlier read is running,
    /// waiting at most `timeout` in all.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stuck> {
        let turn = self.turn.clone();
        let work = async move {
            let held = turn.lock_owned().await;
            tokio::task::spawn_blocking(move || {
                let result = read();
                drop(held);
                result
            })
            .await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(result)) => Ok(result),
            // The read panicked: reported like a hang, the caller retries.
            Ok(Err(_)) | Err(_) => Err(Stuck { waited: timeout }),
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_only_up_to_the_limit() {
        let dir = std::env::temp_dir().join(format!("certrotate-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, vec![b'x'; 100]).unwrap();
        assert_eq!(bounded(&file, 100).unwrap().bytes.len(), 100);
        assert!(matches!(
            bounded(&file, 99),
            Err(ReadFailure::TooLarge {
                size: 100,
                limit: 99
            })
        ));
        assert!(matches!(
            bounded(&dir, 100),
            Err(ReadFailure::NotAFile("a directory"))
        ));
        assert!(matches!(
            bounded(Path::new("/dev/zero"), 100),
            Err(ReadFailure::NotAFile("a character device"))
        ));
        let message = bounded(&file, 99).err().unwrap().to_string();
        assert_eq!(message, "it is 100 bytes, over the 99 bytes limit");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A read that hangs (a dead NFS server) holds one blocking thread:
    /// later calls wait for their turn and give up, they do not start more.
    #[cfg(feature = "file")]
    #[tokio::test]
    async fn a_hung_read_holds_one_thread_however_often_it_is_retried() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let reads = OneAtATime::default();
        let started = Arc::new(AtomicUsize::new(0));
        let (release, hung) = std::sync::mpsc::channel::<()>();
        let hung = Arc::new(std::sync::Mutex::new(hung));
        for _ in 0..5 {
            let (started, hung) = (started.clone(), hung.clone());
            let result = reads
                .run(Duration::from_millis(20), move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    let _ = hung.lock().unwrap().recv();
                })
                .await;
            assert!(result.is_err());
        }
        assert_eq!(started.load(Ordering::SeqCst), 1, "a thread per retry");
        // The file system answers again: the hung read ends, then one
        // of the waiting ones (they were given up) and the next call run.
        drop(release);
        let answered = reads.run(Duration::from_secs(10), || "read").await;
        assert_eq!(answered.unwrap(), "read");
    }
}

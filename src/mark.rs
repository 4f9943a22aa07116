//! [`HighWaterMark`]: the newest certificate a slot ever served, kept by
//! sources that keep state so that replay protection survives a restart;
//! [`MarkUnreadable`]: a mark that could not be read; and the one rule
//! for keeping a mark in a state file.
//!
//! "Older" is always decided by the certificates' own dates, never by a
//! storage's bookkeeping: a storage that lost everything must not make a
//! replica refuse a newer certificate.

use std::fmt;
#[cfg(any(feature = "file", feature = "acme"))]
use std::path::Path;
#[cfg(any(feature = "file", feature = "acme"))]
use std::time::Duration;

use crate::bundle::CertInfo;

/// How long a state file of the instance's own may take to read or write
/// (a hung network file system): it is then reported as unreadable.
#[cfg(any(feature = "file", feature = "acme"))]
pub(crate) const STATE_FILE_TIMEOUT: Duration = Duration::from_secs(5);

/// The newest certificate a slot ever served: when it became valid, and
/// its serial. A candidate that became valid earlier is a replay, refused
/// unless installing an older certificate is asked for explicitly.
///
/// Sources keep it where they keep state, in this text form:
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use certrotate::danger::HighWaterMark;
///
/// let mark = HighWaterMark {
///     not_before: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
///     serial: "01:ab".into(),
/// };
/// assert_eq!(mark.to_string(), "1800000000 01:ab");
/// assert_eq!("1800000000 01:ab".parse::<HighWaterMark>(), Ok(mark));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HighWaterMark {
    /// When the certificate became valid.
    pub not_before: std::time::SystemTime,
    /// Its serial number, as [`CertInfo::serial`](crate::bundle::CertInfo::serial) writes it.
    pub serial: String,
}

impl HighWaterMark {
    /// The mark of `cert`.
    pub(crate) fn of(cert: &CertInfo) -> Self {
        Self {
            not_before: cert.not_before,
            serial: cert.serial.clone(),
        }
    }

    /// The newer of two marks, by the certificates' own issuance.
    pub(crate) fn newest(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.not_before > a.not_before { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// Whether the certificate this marks was issued after the one `other`
    /// marks (so recording `other` would lower the mark).
    pub(crate) fn is_above(&self, other: &Self) -> bool {
        self.not_before > other.not_before
    }
}

impl fmt::Display for HighWaterMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = crate::clock::unix_seconds(self.not_before);
        write!(f, "{secs} {}", self.serial)
    }
}

impl std::str::FromStr for HighWaterMark {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (secs, serial) = text
            .trim()
            .split_once(' ')
            .ok_or("expected `<unix seconds> <serial>`")?;
        let secs: u64 = secs
            .parse()
            .map_err(|_| format!("{secs:?} is not a time"))?;
        let not_before = std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::from_secs(secs))
            .ok_or("the time is out of range")?;
        Ok(Self {
            not_before,
            serial: serial.to_owned(),
        })
    }
}

/// A source's [`HighWaterMark`] could not be read (wholly), or recorded: a
/// state file or storage that does not answer or cannot be written, a value
/// that does not parse or decrypt.
///
/// The rotator then fails closed without failing down: it installs nothing
/// older than what serves now (or than `known`), keeps serving, reports the
/// condition in health (a [`SourceWarning`](crate::source::SourceWarning)),
/// and reads again after a backoff of its own. It still asks for the mark
/// of what it serves to be recorded, in each place that holds nothing
/// newer and answers, so that a mark is never lowered, and heals.
///
/// ```
/// let error = certrotate::danger::MarkUnreadable::new("Redis at redis://10.0.0.5:6379/0: timed out");
/// assert!(error.known.is_none());
/// assert!(error.to_string().contains("timed out"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MarkUnreadable {
    /// The newest mark among the places that could be read (a state file of
    /// the instance's own, when the shared storage hangs), if any.
    pub known: Option<HighWaterMark>,
    /// Why, in words.
    pub reason: String,
    /// Whether the place answered with something unusable (a value that
    /// does not parse or decrypt), which recording a mark may replace; a
    /// place that did not answer is left alone, as it may hold a newer one.
    corrupt: bool,
    /// Whether it was the record that failed (the places may read well).
    recording: bool,
}

impl fmt::Display for MarkUnreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.recording {
            false => f.write_str("the record of the newest certificate served cannot be read")?,
            true => f.write_str("the newest certificate served cannot be recorded")?,
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for MarkUnreadable {}

impl MarkUnreadable {
    /// Nothing could be read, because of `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            known: None,
            reason: reason.into(),
            corrupt: false,
            recording: false,
        }
    }

    /// The same error, told as a write that failed (the place may read
    /// well).
    pub(crate) fn recording(self) -> Self {
        Self {
            recording: true,
            ..self
        }
    }

    /// Whether it was the record that failed.
    pub(crate) fn is_recording(&self) -> bool {
        self.recording
    }

    /// The place answered with something unusable, because of `reason`.
    #[cfg(any(feature = "file", feature = "acme"))]
    pub(crate) fn corrupt(reason: impl Into<String>) -> Self {
        Self {
            corrupt: true,
            ..Self::new(reason)
        }
    }

    /// Whether recording a mark may replace what is there: nothing newer
    /// can be lost (it answered, and what it holds is unusable).
    pub(crate) fn is_corrupt(&self) -> bool {
        self.corrupt
    }
}

#[cfg(any(feature = "file", feature = "acme"))]
impl HighWaterMark {
    /// Reads the mark a state file holds, within [`STATE_FILE_TIMEOUT`]. A
    /// missing file is no mark; one that cannot be read in time or parsed
    /// is unreadable.
    pub(crate) async fn load_file(path: &Path) -> Result<Option<Self>, MarkUnreadable> {
        let owned = path.to_owned();
        let read = crate::sync::blocking(move || Self::read_file(&owned));
        match tokio::time::timeout(STATE_FILE_TIMEOUT, read).await {
            Ok(Ok(read)) => read,
            // Timed out, or the runtime is shutting down.
            _ => Err(no_answer(path)),
        }
    }

    /// Records the mark in a state file unless the file holds a newer one
    /// or does not answer ([`record_in_file`](Self::record_in_file)), within
    /// [`STATE_FILE_TIMEOUT`].
    pub(crate) async fn record_file(&self, path: &Path) -> Result<(), MarkUnreadable> {
        let (owned, mark) = (path.to_owned(), self.clone());
        let record = crate::sync::blocking(move || mark.record_in_file(&owned));
        match tokio::time::timeout(STATE_FILE_TIMEOUT, record).await {
            Ok(Ok(recorded)) => recorded,
            // Timed out, or the runtime is shutting down.
            _ => Err(no_answer(path)),
        }
    }

    /// Reads the mark a state file holds (blocking). A missing file is no
    /// mark; one that does not parse, or is not a small regular file, is
    /// unusable (replaced by the next mark); one that cannot be read is
    /// unreadable.
    pub(crate) fn read_file(path: &Path) -> Result<Option<Self>, MarkUnreadable> {
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

    /// Records the mark in a state file (blocking), the one rule for every
    /// state file: unless it holds a mark as new or newer (then it is
    /// recorded already), or cannot be read (it may hold a newer one); a
    /// file that does not parse is replaced. Written 0600, atomically.
    pub(crate) fn record_in_file(&self, path: &Path) -> Result<(), MarkUnreadable> {
        match Self::read_file(path) {
            Ok(Some(held)) if held.not_before >= self.not_before => return Ok(()),
            Ok(_) => {}
            Err(error) if error.is_corrupt() => {}
            Err(error) => return Err(error),
        }
        crate::atomic::write(path, format!("{self}\n").as_bytes(), 0o600).map_err(|error| {
            MarkUnreadable::new(format!("state file {}: {error}", path.display())).recording()
        })
    }
}

/// A state file that did not answer within [`STATE_FILE_TIMEOUT`].
#[cfg(any(feature = "file", feature = "acme"))]
pub(crate) fn no_answer(path: &Path) -> MarkUnreadable {
    let waited = crate::clock::human(STATE_FILE_TIMEOUT);
    MarkUnreadable::new(format!(
        "state file {}: no answer within {waited}",
        path.display()
    ))
}

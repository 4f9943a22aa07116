//! [`HighWaterMark`]: the newest certificate a slot ever served, kept by
//! sources that keep state so that replay protection survives a restart.

use std::fmt;
#[cfg(any(feature = "file", feature = "acme"))]
use std::path::Path;

/// The newest certificate a slot ever served: when it became valid, and
/// its serial. A candidate that became valid earlier is a replay, refused
/// unless installing an older certificate is asked for explicitly.
///
/// Sources keep it where they keep state, in this text form:
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use certrotate::HighWaterMark;
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
    /// Its serial number, as [`CertInfo::serial`](crate::CertInfo::serial) writes it.
    pub serial: String,
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

#[cfg(any(feature = "file", feature = "acme"))]
impl HighWaterMark {
    /// Reads the mark a state file holds. A missing file is no mark; one
    /// that cannot be read or parsed is reported (naming `from`) and taken
    /// as no mark.
    pub(crate) async fn load_file(path: &Path, from: &str) -> Option<Self> {
        let path = path.to_owned();
        let read = crate::sync::blocking(move || {
            let text = crate::read::small(&path)?;
            String::from_utf8_lossy(&text)
                .parse::<Self>()
                .map_err(std::io::Error::other)
        });
        match read.await.and_then(|read| read) {
            Ok(mark) => Some(mark),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                tracing::warn!(target: "certrotate", source = %from, %error, "the state file cannot be read: replay protection starts anew");
                None
            }
        }
    }

    /// Writes the mark to a state file (0600, atomically); a failure is
    /// reported, naming `from`.
    pub(crate) async fn save_file(&self, path: &Path, from: &str) {
        let (path, text) = (path.to_owned(), format!("{self}\n"));
        let written =
            crate::sync::blocking(move || crate::atomic::write(&path, text.as_bytes(), 0o600));
        if let Err(error) = written.await.and_then(|written| written) {
            tracing::warn!(target: "certrotate", source = %from, %error, "cannot write the state file: replay protection is per process until it can");
        }
    }
}

//! [`TrustFile`]: a PEM bundle of CA certificates (and CRLs) on disk that
//! feeds a [`TrustStore`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::Digest;
use tokio::sync::watch;

use super::{settle, spawn_settle, FileOptions, Fingerprint, Watched, READ_TIMEOUT};
use crate::mtls::{TrustError, TrustStore};
use crate::read::OneAtATime;
use crate::source::SourceError;
use crate::sync::lock;

/// A CA bundle file (PEM certificates, optionally CRLs) watched like a
/// [`FileSource`](crate::FileSource) — directory events, symlinks and the
/// Kubernetes `..data` swap, polling, settle and grace — whose every new
/// version is validated, then made the trust of a [`TrustStore`].
///
/// A version that cannot be used (unreadable, empty, not PEM, a certificate
/// that is no trust anchor) is refused: the trust in force stays, and
/// [`last_error`](Self::last_error) says why until a good version arrives.
/// The file is watched while the `TrustFile` lives.
///
/// # Example
///
/// ```no_run
/// # async fn demo(rotator: certrotate::Rotator) -> Result<(), Box<dyn std::error::Error>> {
/// use certrotate::source::{FileOptions, TrustFile};
///
/// let client_ca = TrustFile::open("/etc/tls/client-ca.pem", FileOptions::default()).await?;
/// let tls = rotator.server_config_with_client_auth(&client_ca.trust())?;
/// // Keep `client_ca` alive while serving.
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TrustFile {
    shared: Arc<Shared>,
    /// Dropped with the `TrustFile`, which ends its settle task.
    _alive: watch::Sender<()>,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    options: FileOptions,
    trust: TrustStore,
    /// The fingerprint of the last version taken up (used or refused).
    applied: Mutex<Fingerprint>,
    last_error: Mutex<Option<String>>,
    reads: OneAtATime,
}

/// Why a version of a [`TrustFile`] cannot be used.
///
/// ```
/// use certrotate::source::{FileOptions, TrustFile, TrustFileError};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let dir = std::env::temp_dir().join(format!("trust-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("ca.pem");
/// std::fs::write(&path, "not a bundle").unwrap();
/// let error = TrustFile::open(&path, FileOptions::default()).await.unwrap_err();
/// assert!(matches!(error, TrustFileError::Unusable { .. }), "{error}");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TrustFileError {
    /// The file could not be read: missing, unreadable, not a regular
    /// file, over the size limit, or a read that hung.
    #[error(transparent)]
    Read(#[from] SourceError),
    /// The file was read, but its bundle cannot be used as trust.
    #[error("CA bundle {}: {error}", path.display())]
    Unusable {
        /// The bundle file, as configured.
        path: PathBuf,
        /// What is wrong with the bundle.
        #[source]
        error: TrustError,
    },
}

/// One reading of the bundle file.
struct Reading {
    fingerprint: Fingerprint,
    parsed: Result<Vec<u8>, SourceError>,
}

impl TrustFile {
    /// Reads (off the runtime), validates and starts watching the bundle at
    /// `path`. Fails if the first version cannot be used.
    pub async fn open(
        path: impl Into<PathBuf>,
        options: FileOptions,
    ) -> Result<Self, TrustFileError> {
        let path = path.into();
        let from = describe(&path);
        let reads = OneAtATime::default();
        let (first_path, first_options) = (path.clone(), options.clone());
        let first = reads
            .run(READ_TIMEOUT, move || read(&first_path, &first_options))
            .await
            .map_err(|stuck| stuck.into_source_error(from.clone(), path.clone()))?;
        let pem = first.parsed?;
        let trust = TrustStore::from_pem(&pem).map_err(|error| TrustFileError::Unusable {
            path: path.clone(),
            error,
        })?;
        let shared = Arc::new(Shared {
            path,
            options,
            trust,
            applied: Mutex::new(first.fingerprint),
            last_error: Mutex::default(),
            reads,
        });
        let (alive, gone) = watch::channel(());
        spawn_settle(&shared, gone);
        Ok(Self {
            shared,
            _alive: alive,
        })
    }

    /// The trust store this file feeds.
    pub fn trust(&self) -> TrustStore {
        self.shared.trust.clone()
    }

    /// Why the latest version of the file was refused, until a good one is
    /// taken up.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }
}

fn describe(path: &Path) -> String {
    format!("CA bundle {}", path.display())
}

fn read(path: &Path, options: &FileOptions) -> Reading {
    // CA certificates and CRLs: nothing secret to zeroize.
    let parsed = options
        .read(|| describe(path), path)
        .map(|c| c.bytes.to_vec());
    Reading {
        fingerprint: settle::fingerprint(&parsed, |bytes, hash| hash.update(bytes)),
        parsed,
    }
}

impl Watched for Shared {
    type Reading = Reading;

    fn options(&self) -> &FileOptions {
        &self.options
    }

    fn reads(&self) -> &OneAtATime {
        &self.reads
    }

    fn paths(&self) -> Vec<&Path> {
        vec![&self.path]
    }

    fn describe(&self) -> String {
        describe(&self.path)
    }

    fn read(&self) -> Reading {
        read(&self.path, &self.options)
    }

    fn fingerprint(reading: &Reading) -> Fingerprint {
        reading.fingerprint
    }

    /// A bundle caught half-written ends in the middle of a PEM section,
    /// which the PEM reader reports.
    fn whole(reading: &Reading) -> bool {
        use rustls::pki_types::pem::{PemObject, SectionKind};
        reading.parsed.as_ref().is_ok_and(|pem| {
            let mut sections = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem).peekable();
            sections.peek().is_some() && sections.all(|section| section.is_ok())
        })
    }

    fn seen(&self, fingerprint: &Fingerprint) -> bool {
        *lock(&self.applied) == *fingerprint
    }

    fn settled(&self, reading: Reading) {
        *lock(&self.applied) = reading.fingerprint;
        let applied = reading
            .parsed
            .map_err(TrustFileError::Read)
            .and_then(|pem| {
                self.trust
                    .replace_pem(&pem)
                    .map_err(|error| TrustFileError::Unusable {
                        path: self.path.clone(),
                        error,
                    })
            });
        let mut last_error = lock(&self.last_error);
        match applied {
            Ok(_) => *last_error = None,
            Err(error) => {
                tracing::warn!(target: "certrotate", "new CA bundle refused, the trust in force stays: {error}");
                *last_error = Some(error.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(pem: &str) -> bool {
        let reading = Reading {
            fingerprint: [0; 32],
            parsed: Ok(pem.as_bytes().to_vec()),
        };
        <Shared as Watched>::whole(&reading)
    }

    /// A bundle caught between two writes is not taken up; a complete one is.
    #[test]
    fn only_a_bundle_whose_sections_all_end_is_whole() {
        let section = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(whole(section));
        assert!(whole(&format!("{section}{section}")));
        assert!(!whole(""));
        assert!(!whole("-----BEGIN CERTIFICATE-----\nAAAA\n"));
        assert!(!whole(&format!("{section}-----BEGIN CERTIFICATE-----\nAA")));
    }
}

//! [`VaultTrust`]: the issuers of a PKI mount, followed into a
//! [`TrustStore`] for client verification.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::Method;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::auth::{self, Token, VaultAuth};
use super::client::Client;
use super::error::VaultError;
use crate::mtls::TrustStore;

/// The most issuers of a mount trusted at once.
const MAX_ISSUERS: usize = 64;

/// The issuers of a PKI mount (`LIST <mount>/issuers`, each one's
/// certificate), followed into a [`TrustStore`]: every issuer of the mount
/// is trusted, so a new issuer made default while the old one is still
/// valid is accepted beside it (no failed handshake during a CA rotation),
/// and an issuer deleted from the mount stops being trusted at the next
/// poll. Each change is a new trust generation, so sessions stay
/// partitioned by trust as with any [`TrustStore`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use certrotate::vault::{TokenFile, VaultTrust};
///
/// let trust = VaultTrust::follow(
///     "https://vault.internal:8200",
///     "pki",
///     TokenFile::new("/run/secrets/vault-token"),
///     None,
///     Duration::from_secs(300),
/// )
/// .await?;
/// // rotator.server_config_with_client_auth(trust.store())
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct VaultTrust {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    auth: Arc<dyn VaultAuth>,
    mount: String,
    store: TrustStore,
    token: std::sync::Mutex<Option<Token>>,
}

impl std::fmt::Debug for VaultTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultTrust")
            .field("addr", &self.inner.client.addr())
            .field("mount", &self.inner.mount)
            .finish_non_exhaustive()
    }
}

impl VaultTrust {
    /// Reads the issuers of `mount` on the Vault at `addr` now (an error if
    /// it cannot: there is nothing to trust yet), then again every `every`
    /// while the returned value lives. `ca_pem`: the roots of Vault's own
    /// HTTPS, if not the platform's.
    pub async fn follow(
        addr: &str,
        mount: &str,
        auth: impl VaultAuth,
        ca_pem: Option<&[u8]>,
        every: Duration,
    ) -> Result<Self, VaultError> {
        let roots = match ca_pem {
            Some(pem) => Some(
                crate::mtls::root_store_from_pem(pem)
                    .map_err(|e| VaultError::Config(format!("the CA PEM: {e}")))?,
            ),
            None => None,
        };
        let client = Client::new(addr, roots, super::TIMEOUT)?;
        let mount = mount.trim_matches('/').to_owned();
        let auth: Arc<dyn VaultAuth> = Arc::new(auth);
        let token = auth::login(&client, &*auth).await?;
        let first = issuers(&client, &mount, &token).await?;
        let store = TrustStore::new(first)
            .map_err(|e| VaultError::Config(format!("the issuers of {mount}: {e}")))?;
        let trust = Self {
            inner: Arc::new(Inner {
                client,
                auth,
                mount,
                store,
                token: std::sync::Mutex::new(Some(token)),
            }),
        };
        trust.poll(every.max(Duration::from_secs(1)));
        Ok(trust)
    }

    /// The trust store, for
    /// [`server_config_with_client_auth`](crate::Rotator::server_config_with_client_auth).
    pub fn store(&self) -> &TrustStore {
        &self.inner.store
    }

    /// Reads the issuers again now, and trusts them if they changed.
    pub async fn refresh(&self) -> Result<(), VaultError> {
        let current = crate::sync::lock(&self.inner.token).clone();
        let token = match current {
            Some(token) => token,
            None => auth::login(&self.inner.client, &*self.inner.auth).await?,
        };
        let found = match issuers(&self.inner.client, &self.inner.mount, &token).await {
            Err(VaultError::TokenRejected { .. })
            | Err(VaultError::Refused { status: 403, .. }) => {
                // Expired or revoked: log in again, once.
                let token = auth::login(&self.inner.client, &*self.inner.auth).await?;
                let found = issuers(&self.inner.client, &self.inner.mount, &token).await?;
                *crate::sync::lock(&self.inner.token) = Some(token);
                found
            }
            other => other?,
        };
        if found != self.inner.store.roots() {
            self.inner
                .store
                .replace(found, Vec::new())
                .map_err(|e| VaultError::BadAnswer {
                    path: format!("{}/issuers", self.inner.mount),
                    reason: e.to_string(),
                })?;
            tracing::info!(target: "certrotate", mount = %self.inner.mount, "the issuers of the Vault mount changed; client trust follows");
        }
        Ok(())
    }

    fn poll(&self, every: Duration) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(error) = (VaultTrust { inner }).refresh().await {
                    tracing::warn!(target: "certrotate", "the Vault issuers could not be read; the trust in force stays: {error}");
                }
            }
        });
    }
}

/// The certificates of every issuer of `mount`, in a stable order.
async fn issuers(
    client: &Client,
    mount: &str,
    token: &Token,
) -> Result<Vec<CertificateDer<'static>>, VaultError> {
    let list = Method::from_bytes(b"LIST").expect("a valid method");
    let path = format!("{mount}/issuers");
    let answer = client.call(list, &path, Some(token.secret()), None).await?;
    let mut keys: Vec<String> = answer["data"]["keys"]
        .as_array()
        .ok_or_else(|| VaultError::BadAnswer {
            path: path.clone(),
            reason: "no data.keys".into(),
        })?
        .iter()
        .filter_map(|key| key.as_str())
        .filter(|key| key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_owned)
        .take(MAX_ISSUERS)
        .collect();
    keys.sort();
    let mut roots = Vec::new();
    for key in keys {
        let path = format!("{mount}/issuer/{key}/json");
        let answer = client.call(Method::GET, &path, None, None).await?;
        let pem = answer["data"]["certificate"]
            .as_str()
            .ok_or_else(|| VaultError::BadAnswer {
                path: path.clone(),
                reason: "no data.certificate".into(),
            })?;
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| VaultError::BadAnswer {
                path: path.clone(),
                reason: format!("the certificate: {e}"),
            })?;
        roots.push(der);
    }
    if roots.is_empty() {
        return Err(VaultError::BadAnswer {
            path: format!("{mount}/issuers"),
            reason: "the mount has no issuer".into(),
        });
    }
    Ok(roots)
}

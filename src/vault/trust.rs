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
use crate::danger::Dangerous;
use crate::mtls::TrustStore;

/// The most issuers of a mount trusted at once.
const MAX_ISSUERS: usize = 64;

/// The issuers of a PKI mount, followed into a [`TrustStore`]: every issuer
/// of the mount that can issue (it holds its key, is not revoked or
/// expired, and its usage includes issuing certificates) is trusted, so a
/// new issuer made default while the old one is still valid is accepted
/// beside it (no failed handshake during a CA rotation), while a parent CA
/// imported with an intermediate's bundle (which would accept certificates
/// of other mounts) is not. An issuer revoked or deleted stops being
/// trusted at the next poll. Each change is a new trust generation, so
/// sessions stay partitioned by trust as with any [`TrustStore`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use certrotate::vault::{TokenFile, VaultTrust};
///
/// let trust = VaultTrust::builder("https://vault.internal:8200", "pki", TokenFile::new("/run/secrets/vault-token"))
///     .every(Duration::from_secs(300))
///     .follow()
///     .await?;
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

/// Configures a [`VaultTrust`].
#[must_use]
pub struct VaultTrustBuilder {
    addr: String,
    mount: String,
    auth: Arc<dyn VaultAuth>,
    ca_pem: Option<Vec<u8>>,
    every: Duration,
    plain_http: bool,
    timeout: Duration,
}

impl VaultTrust {
    /// The issuers of `mount` on the Vault at `addr`, read with a token
    /// from `auth`.
    pub fn builder(addr: &str, mount: &str, auth: impl VaultAuth) -> VaultTrustBuilder {
        VaultTrustBuilder {
            addr: addr.to_owned(),
            mount: mount.trim_matches('/').to_owned(),
            auth: Arc::new(auth),
            ca_pem: None,
            every: Duration::from_secs(300),
            plain_http: false,
            timeout: super::client::TIMEOUT,
        }
    }
}

impl VaultTrustBuilder {
    /// Trusts the CA certificates in this PEM for Vault's own HTTPS.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// How often the issuers are read again (default 5 min, at least 1 s).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every.max(Duration::from_secs(1));
        self
    }

    /// The switches that turn a protection off
    /// ([`Dangerous::allow_plain_http`](crate::danger::Dangerous::allow_plain_http)).
    pub fn dangerous(self) -> Dangerous<Self> {
        Dangerous::new(self)
    }

    /// How long one request may take (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Reads the issuers now (an error if it cannot: there is nothing to
    /// trust yet), then again at each interval while the value lives.
    pub async fn follow(self) -> Result<VaultTrust, VaultError> {
        let client = Client::new(
            &self.addr,
            self.ca_pem.as_deref(),
            self.plain_http,
            self.timeout,
        )?;
        let token = auth::login(&client, &*self.auth).await?;
        let first = issuers(&client, &self.mount, &token).await?;
        let store = TrustStore::new(first)
            .map_err(|e| VaultError::Config(format!("the issuers of {}: {e}", self.mount)))?;
        let trust = VaultTrust {
            inner: Arc::new(Inner {
                client,
                auth: self.auth,
                mount: self.mount,
                store,
                token: std::sync::Mutex::new(Some(token)),
            }),
        };
        trust.poll(self.every);
        Ok(trust)
    }
}

impl Dangerous<VaultTrustBuilder> {
    /// Allows an `http://` address: anyone on the path could then put a CA
    /// of theirs into client trust. For a Vault on the same host or a test.
    pub fn allow_plain_http(self) -> VaultTrustBuilder {
        let mut builder = self.into_inner();
        builder.plain_http = true;
        builder
    }
}

impl VaultTrust {
    /// The trust store, for
    /// [`server_config_with_client_auth`](crate::Rotator::server_config_with_client_auth).
    pub fn store(&self) -> &TrustStore {
        &self.inner.store
    }

    /// Reads the issuers again now, and trusts them if they changed.
    pub async fn refresh(&self) -> Result<(), VaultError> {
        let token = self.token().await?;
        let found = issuers(&self.inner.client, &self.inner.mount, &token).await?;
        // As sets: a new default issuer alone changes the order, not trust.
        let sorted = |roots: Vec<CertificateDer<'static>>| {
            let mut roots: Vec<Vec<u8>> = roots.iter().map(|der| der.to_vec()).collect();
            roots.sort();
            roots
        };
        if sorted(found.clone()) != sorted(self.inner.store.roots()) {
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

    /// The token to read with: the current one renewed (a periodic token
    /// lives as long as it is polled within its period), or, if Vault says
    /// it is no longer valid, a new login.
    async fn token(&self) -> Result<Token, VaultError> {
        let current = crate::sync::lock(&self.inner.token).clone();
        let token = match current {
            Some(token) if token.renewable() => {
                match auth::renew(&self.inner.client, &token).await {
                    Ok(renewed) => renewed,
                    Err(VaultError::TokenRejected { .. }) => {
                        auth::login(&self.inner.client, &*self.inner.auth).await?
                    }
                    // Vault down or slow: the token may still be valid.
                    Err(_) => token,
                }
            }
            Some(token) => token,
            None => auth::login(&self.inner.client, &*self.inner.auth).await?,
        };
        *crate::sync::lock(&self.inner.token) = Some(token.clone());
        Ok(token)
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

/// The certificates of every issuer of `mount` that can issue, the
/// default first, in a stable order.
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
        .collect();
    keys.sort();
    // The default issuer first, so that the bound never drops it.
    let default = client
        .call(
            Method::GET,
            &format!("{mount}/config/issuers"),
            Some(token.secret()),
            None,
        )
        .await
        .ok()
        .and_then(|config| config["data"]["default"].as_str().map(str::to_owned));
    if let Some(default) = default {
        if let Some(at) = keys.iter().position(|key| *key == default) {
            let default = keys.remove(at);
            keys.insert(0, default);
        }
    }
    let mut roots = Vec::new();
    for key in keys {
        if roots.len() == MAX_ISSUERS {
            tracing::warn!(target: "certrotate", %mount, "the mount has more than {MAX_ISSUERS} issuers that can issue; only the default and the first others are trusted (tidy expired issuers)");
            break;
        }
        let path = format!("{mount}/issuer/{key}");
        let answer = client
            .call(Method::GET, &path, Some(token.secret()), None)
            .await?;
        let data = &answer["data"];
        // An issuer without its key (a parent imported with an
        // intermediate's bundle), revoked, or not for issuing: not trusted.
        let holds_key = data["key_id"].as_str().is_some_and(|id| !id.is_empty());
        let revoked = data["revoked"].as_bool().unwrap_or(false);
        let issues = data["usage"]
            .as_str()
            .is_some_and(|usage| usage.split(',').any(|u| u.trim() == "issuing-certificates"));
        if !holds_key || revoked || !issues {
            continue;
        }
        let pem = data["certificate"]
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
        if expired(&der) {
            continue;
        }
        roots.push(der);
    }
    if roots.is_empty() {
        return Err(VaultError::BadAnswer {
            path: format!("{mount}/issuers"),
            reason: "the mount has no issuer that can issue".into(),
        });
    }
    Ok(roots)
}

/// Whether a certificate is past its validity (or unreadable).
fn expired(der: &CertificateDer<'_>) -> bool {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => !cert.validity().is_valid(),
        Err(_) => true,
    }
}

//! Certificates and client trust from HashiCorp Vault's or OpenBao's PKI
//! secrets engine (feature `vault`).
//!
//! [`VaultSource`] has each certificate signed by `<mount>/sign/<role>`
//! from a certificate request made here, so the private key never leaves
//! the process (`<mount>/issue/<role>` would send it over the network and
//! into Vault's audit trail; the role's policy is the same). Renewal
//! follows the crate's one rule; every certificate goes through the
//! [`Policy`](crate::Policy) and the probe handshake like any other, and a
//! refusal (the role no longer allows the name, a TTL capped under the
//! policy's minimum) keeps the serving certificate.
//!
//! The token comes from a [`VaultAuth`]: [`TokenFile`], [`AppRole`] or
//! your own; a renewable (periodic) token is renewed before it expires,
//! and a login is done again when Vault refuses it.
//!
//! [`VaultTrust`] follows the mount's issuers into a
//! [`TrustStore`](crate::mtls::TrustStore) for client verification: a new
//! issuer made default while the old one is still valid is trusted beside
//! it, so clients of both are accepted during the overlap.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use certrotate::vault::{TokenFile, VaultSource};
//! use certrotate::{Policy, Rotator};
//!
//! let source = VaultSource::builder("https://vault.internal:8200", "pki", "web", ["api.internal"])
//!     .auth(TokenFile::new("/run/secrets/vault-token"))
//!     .build()?;
//! let policy = Policy::builder().server_name("api.internal").build()?;
//! let rotator = Rotator::builder(source, policy).start().await?;
//! # Ok(()) }
//! ```

mod auth;
mod client;
mod error;
mod trust;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::Method;

pub use crate::util::BoxFuture;
pub use auth::{AppRole, Login, Token, TokenFile, VaultAuth};
pub use error::VaultError;
pub use trust::{VaultTrust, VaultTrustBuilder};

use crate::bundle::CertBundle;
use crate::danger::Dangerous;
use crate::source::{CertSource, SourceError, SourceWarning};
use crate::sync::lock;
use client::Client;

/// Certificates signed by a Vault (or OpenBao) PKI role. See the
/// [module](self).
#[derive(Clone)]
pub struct VaultSource {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    auth: Arc<dyn VaultAuth>,
    mount: String,
    role: String,
    names: Vec<String>,
    ttl: Option<Duration>,
    /// Whether Vault makes the key (`issue`) rather than this process
    /// (`sign`).
    key_in_vault: bool,
    /// The token in use, if logged in.
    token: Mutex<Option<Token>>,
    /// Why the token could not be kept alive, while it cannot.
    auth_failing: Mutex<Option<String>>,
    /// Whether the task that renews the token runs.
    keeping: std::sync::atomic::AtomicBool,
    /// Wakes that task when a login replaced the token.
    replaced: Arc<tokio::sync::Notify>,
}

/// Configures a [`VaultSource`].
#[must_use]
pub struct VaultBuilder {
    addr: String,
    mount: String,
    role: String,
    names: Vec<String>,
    auth: Option<Arc<dyn VaultAuth>>,
    ca_pem: Option<Vec<u8>>,
    plain_http: bool,
    ttl: Option<Duration>,
    key_in_vault: bool,
    timeout: Duration,
}

impl std::fmt::Debug for VaultSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSource")
            .field("addr", &self.inner.client.addr())
            .field("mount", &self.inner.mount)
            .field("role", &self.inner.role)
            .field("names", &self.inner.names)
            .finish_non_exhaustive()
    }
}

impl VaultSource {
    /// Certificates for `names` (the first is the common name) from the
    /// role `role` of the PKI engine mounted at `mount`, on the Vault at
    /// `addr` (`https://vault:8200`).
    pub fn builder<I, S>(
        addr: impl Into<String>,
        mount: impl Into<String>,
        role: impl Into<String>,
        names: I,
    ) -> VaultBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        VaultBuilder {
            addr: addr.into(),
            mount: mount.into().trim_matches('/').to_owned(),
            role: role.into(),
            names: names.into_iter().map(Into::into).collect(),
            auth: None,
            ca_pem: None,
            plain_http: false,
            ttl: None,
            key_in_vault: false,
            timeout: client::TIMEOUT,
        }
    }
}

impl VaultBuilder {
    /// How to get a token (required).
    pub fn auth(mut self, auth: impl VaultAuth) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// Trusts the CA certificates in this PEM for Vault's own HTTPS,
    /// instead of the platform's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// The switches that turn a protection off
    /// ([`Dangerous::allow_plain_http`](crate::danger::Dangerous::allow_plain_http)).
    pub fn dangerous(self) -> Dangerous<Self> {
        Dangerous::new(self)
    }

    /// The TTL to ask for (default: the role's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Has Vault make the key pair (`<mount>/issue/<role>`) instead of
    /// signing a request for a key made here (`<mount>/sign/<role>`, the
    /// default). Off by default because the key then crosses the network
    /// and passes through Vault (its audit devices log responses unless
    /// told to hash them); use it where the role is only granted `issue`.
    pub fn key_made_by_vault(mut self) -> Self {
        self.key_in_vault = true;
        self
    }

    /// How long one request may take (default 10 s): a Vault that hangs
    /// is given up after it, reported, and asked again at the next retry.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The source.
    pub fn build(self) -> Result<VaultSource, VaultError> {
        let auth = self
            .auth
            .ok_or_else(|| VaultError::Config("no auth method: call .auth(..)".into()))?;
        if self.names.is_empty() {
            return Err(VaultError::Config("no names to certify".into()));
        }
        let client = Client::new(
            &self.addr,
            self.ca_pem.as_deref(),
            self.plain_http,
            self.timeout,
        )?;
        Ok(VaultSource {
            inner: Arc::new(Inner {
                client,
                auth,
                mount: self.mount,
                role: self.role,
                names: self.names,
                ttl: self.ttl,
                key_in_vault: self.key_in_vault,
                token: Mutex::new(None),
                auth_failing: Mutex::new(None),
                keeping: std::sync::atomic::AtomicBool::new(false),
                replaced: Arc::default(),
            }),
        })
    }
}

impl Dangerous<VaultBuilder> {
    /// Allows an `http://` address (the token then crosses the network in
    /// clear): for a Vault on the same host, or a test.
    pub fn allow_plain_http(self) -> VaultBuilder {
        let mut builder = self.into_inner();
        builder.plain_http = true;
        builder
    }
}

impl VaultSource {
    /// The token to use: the current one, or a new login.
    async fn token(&self) -> Result<Token, VaultError> {
        if let Some(token) = lock(&self.inner.token).clone() {
            return Ok(token);
        }
        let token = match auth::login(&self.inner.client, &*self.inner.auth).await {
            Ok(token) => token,
            Err(error) => {
                self.note_auth(&error);
                return Err(error);
            }
        };
        *lock(&self.inner.token) = Some(token.clone());
        *lock(&self.inner.auth_failing) = None;
        self.inner.replaced.notify_one();
        self.keep_alive();
        Ok(token)
    }

    /// Notes an error of the credentials themselves (not of a Vault that is
    /// down) as the reason they cannot be kept alive.
    fn note_auth(&self, error: &VaultError) {
        if matches!(
            error,
            VaultError::TokenRejected { .. }
                | VaultError::LoginRefused { .. }
                | VaultError::Config(_)
        ) {
            *lock(&self.inner.auth_failing) = Some(error.to_string());
        }
    }

    /// Starts the task that renews the token at half its TTL (or logs in
    /// again, for one that cannot be renewed), while the source lives.
    fn keep_alive(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.keeping.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.keeping.store(false, Ordering::SeqCst);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let replaced = self.inner.replaced.clone();
        runtime.spawn(async move {
            let mut renewed = true;
            loop {
                let wait = {
                    let Some(inner) = weak.upgrade() else { return };
                    let ttl = lock(&inner.token).as_ref().and_then(Token::ttl);
                    let failing = lock(&inner.auth_failing).is_some() || !renewed;
                    match (ttl, failing) {
                        // Failing (the credentials, or a Vault that is
                        // down while the token runs out): again soon.
                        (_, true) => Duration::from_secs(5),
                        (Some(ttl), false) => (ttl / 2).max(Duration::from_secs(1)),
                        (None, false) => Duration::from_secs(3600),
                    }
                    .min(Duration::from_secs(3600))
                };
                // A new token (a login) has a TTL of its own: planned anew.
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = replaced.notified() => continue,
                }
                let Some(inner) = weak.upgrade() else { return };
                renewed = VaultSource { inner }.refresh().await;
            }
        });
    }

    /// Renews the token (or logs in again), noting the outcome: whether
    /// it worked.
    async fn refresh(&self) -> bool {
        let current = lock(&self.inner.token).clone();
        let renewed = match &current {
            Some(token) if token.renewable() => auth::renew(&self.inner.client, token).await,
            Some(token) if token.ttl().is_none() => return true,
            _ => auth::login(&self.inner.client, &*self.inner.auth).await,
        };
        match renewed {
            Ok(token) => {
                *lock(&self.inner.token) = Some(token);
                *lock(&self.inner.auth_failing) = None;
                true
            }
            Err(error) => {
                tracing::warn!(target: "certrotate", "the Vault token could not be renewed: {error}");
                if let VaultError::TokenRejected { .. } = error {
                    // Revoked or expired: the next use logs in again.
                    *lock(&self.inner.token) = None;
                }
                self.note_auth(&error);
                false
            }
        }
    }

    /// A certificate signed by the role, for a key made here.
    async fn sign(&self) -> Result<CertBundle, VaultError> {
        let token = self.token().await?;
        match self.sign_with(&token).await {
            // Revoked, expired, or a Vault that lost its state: a login
            // (the token file read again) may give one that works now.
            Err(VaultError::TokenRejected { .. }) => {
                let fresh = self.token().await?;
                self.sign_with(&fresh).await
            }
            other => other,
        }
    }

    /// A certificate request for the names, signed by `key`.
    fn request(&self, key: &rcgen::KeyPair) -> Result<String, VaultError> {
        let mut params = rcgen::CertificateParams::new(self.inner.names.clone())
            .map_err(|e| VaultError::Config(format!("the names: {e}")))?;
        // The role reads the common name from the request.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, self.inner.names[0].as_str());
        params
            .serialize_request(key)
            .and_then(|csr| csr.pem())
            .map_err(|e| VaultError::Config(format!("making the request: {e}")))
    }

    /// A certificate signed with `token`.
    async fn sign_with(&self, token: &Token) -> Result<CertBundle, VaultError> {
        let (ips, dns): (Vec<&String>, Vec<&String>) = self
            .inner
            .names
            .iter()
            .partition(|name| name.parse::<std::net::IpAddr>().is_ok());
        let join = |names: &[&String]| {
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut body = serde_json::json!({
            "common_name": self.inner.names[0],
            "alt_names": join(&dns),
            "ip_sans": join(&ips),
            "format": "pem",
        });
        if let Some(ttl) = self.inner.ttl {
            body["ttl"] = format!("{}s", ttl.as_secs()).into();
        }
        let (path, key) = match self.inner.key_in_vault {
            false => {
                let key = rcgen::KeyPair::generate()
                    .map_err(|e| VaultError::Config(format!("making a key: {e}")))?;
                body["csr"] = self.request(&key)?.into();
                let path = format!("{}/sign/{}", self.inner.mount, self.inner.role);
                (path, Some(key))
            }
            true => {
                body["key_type"] = "ec".into();
                body["key_bits"] = 256.into();
                body["private_key_format"] = "pkcs8".into();
                (
                    format!("{}/issue/{}", self.inner.mount, self.inner.role),
                    None,
                )
            }
        };
        let answer = self
            .inner
            .client
            .call(Method::POST, &path, Some(token.secret()), Some(body))
            .await;
        let answer = match answer {
            Err(VaultError::Refused {
                status: 403,
                errors,
                ..
            }) if errors.contains("permission denied") => {
                // A token that expired or was revoked answers 403 too: find
                // out which, and log in again next time if it is the token.
                let login = auth::Login::new(&self.inner.client);
                if let Err(rejected @ VaultError::TokenRejected { .. }) =
                    login.look_up(token.secret()).await
                {
                    *lock(&self.inner.token) = None;
                    *lock(&self.inner.auth_failing) = Some(rejected.to_string());
                    return Err(rejected);
                }
                return Err(VaultError::Refused {
                    path,
                    status: 403,
                    errors,
                });
            }
            other => other?,
        };
        for warning in answer["warnings"].as_array().into_iter().flatten() {
            tracing::warn!(target: "certrotate", path = %path, "Vault: {}", warning.as_str().unwrap_or_default());
        }
        let data = &answer["data"];
        let unusable = |reason: &str| VaultError::BadAnswer {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let mut chain = data["certificate"]
            .as_str()
            .ok_or_else(|| unusable("no data.certificate"))?
            .trim()
            .to_owned();
        let cas: Vec<&str> = match data["ca_chain"].as_array() {
            Some(cas) => cas.iter().filter_map(|ca| ca.as_str()).collect(),
            None => data["issuing_ca"].as_str().into_iter().collect(),
        };
        if data["certificate"]
            .as_str()
            .unwrap_or_default()
            .matches("-----BEGIN")
            .count()
            != 1
        {
            return Err(unusable("data.certificate is not one certificate"));
        }
        if cas.len() > 8 {
            return Err(unusable("ca_chain has more than 8 certificates"));
        }
        for ca in cas {
            if ca.matches("-----BEGIN").count() != 1 {
                return Err(unusable("a ca_chain entry is not one certificate"));
            }
            chain.push('\n');
            chain.push_str(ca.trim());
        }
        chain.push('\n');
        let key_pem = zeroize::Zeroizing::new(match key {
            Some(key) => key.serialize_pem(),
            None => data["private_key"]
                .as_str()
                .ok_or_else(|| unusable("no data.private_key"))?
                .to_owned(),
        });
        // The key's match is checked by the bundle; the names here (the
        // policy checks them again, if it is told the names).
        let bundle = CertBundle::from_pem(chain.as_bytes(), key_pem.as_bytes())
            .map_err(|e| unusable(&format!("the certificate: {e}")))?;
        let info = bundle.info();
        if let Some(missing) =
            self.inner
                .names
                .iter()
                .find(|name| match name.parse::<std::net::IpAddr>() {
                    Ok(ip) => !info.ip_addresses.contains(&ip),
                    Err(_) => !info
                        .dns_names
                        .iter()
                        .any(|dns| dns.eq_ignore_ascii_case(name)),
                })
        {
            return Err(unusable(&format!("the certificate is not for {missing}")));
        }
        Ok(bundle)
    }
}

impl CertSource for VaultSource {
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        self.sign()
            .await
            .map_err(|error| SourceError::unavailable(self.describe(), error))
    }

    fn describe(&self) -> String {
        format!(
            "Vault {} {}/sign/{} for {}",
            self.inner.client.addr(),
            self.inner.mount,
            self.inner.role,
            self.inner.names.join(", ")
        )
    }

    fn kind(&self) -> &'static str {
        "vault"
    }

    fn warnings(&self) -> Vec<SourceWarning> {
        lock(&self.inner.auth_failing)
            .clone()
            .map(|reason| SourceWarning::AuthFailing {
                method: self.inner.auth.describe(),
                reason,
            })
            .into_iter()
            .collect()
    }
}

//! Getting a Vault token, and keeping it alive: [`VaultAuth`] logs in
//! ([`TokenFile`], [`AppRole`], or your own: Kubernetes, JWT...); the
//! session renews a renewable token before it expires, and logs in again
//! when it cannot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use zeroize::Zeroizing;

use super::client::Client;
use super::error::VaultError;
use crate::util::BoxFuture;

/// A Vault token, as a login gives it.
#[derive(Clone)]
pub struct Token {
    secret: Zeroizing<String>,
    ttl: Option<Duration>,
    renewable: bool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("ttl", &self.ttl)
            .field("renewable", &self.renewable)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A token valid for `ttl` (`None`: it does not expire, a root token),
    /// renewable (`auth/token/renew-self`) or not.
    pub fn new(secret: impl Into<String>, ttl: Option<Duration>, renewable: bool) -> Self {
        Self {
            secret: Zeroizing::new(secret.into()),
            ttl,
            renewable,
        }
    }

    pub(super) fn secret(&self) -> &str {
        &self.secret
    }

    pub(super) fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    pub(super) fn renewable(&self) -> bool {
        self.renewable
    }

    /// The token of an `auth` block (a login's answer).
    fn from_auth(auth: &serde_json::Value, path: &str) -> Result<Self, VaultError> {
        let secret = auth["client_token"]
            .as_str()
            .ok_or_else(|| VaultError::BadAnswer {
                path: path.to_owned(),
                reason: "no auth.client_token".into(),
            })?;
        let ttl = auth["lease_duration"].as_u64().filter(|ttl| *ttl > 0);
        Ok(Self::new(
            secret,
            ttl.map(Duration::from_secs),
            auth["renewable"].as_bool().unwrap_or(false),
        ))
    }
}

/// What a [`VaultAuth`] may ask of Vault to log in.
pub struct Login<'a> {
    client: &'a Client,
}

impl<'a> Login<'a> {
    pub(super) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// `POST /v1/<path>` with `body`, without a token (a login): Vault's
    /// JSON answer.
    pub async fn write(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, VaultError> {
        self.client.call(Method::POST, path, None, Some(body)).await
    }

    /// The token a login answer (`{"auth": {"client_token": ...}}`) gives.
    pub fn token_of(&self, answer: &serde_json::Value, path: &str) -> Result<Token, VaultError> {
        Token::from_auth(&answer["auth"], path)
    }

    /// What Vault says of `token` (`auth/token/lookup-self`): the same
    /// token with its TTL and whether it is renewable.
    pub async fn look_up(&self, token: &str) -> Result<Token, VaultError> {
        let path = "auth/token/lookup-self";
        let answer = self
            .client
            .call(Method::GET, path, Some(token), None)
            .await
            .map_err(VaultError::token_rejected)?;
        let data = &answer["data"];
        let ttl = data["ttl"].as_u64().filter(|ttl| *ttl > 0);
        Ok(Token::new(
            token,
            ttl.map(Duration::from_secs),
            data["renewable"].as_bool().unwrap_or(false),
        ))
    }
}

/// How the source gets a Vault token: [`TokenFile`], [`AppRole`], or your
/// own (Kubernetes, JWT, cloud IAM logins are one `write` each).
///
/// ```
/// use certrotate::vault::{Login, Token, VaultAuth, VaultError};
/// use certrotate::vault::BoxFuture;
///
/// /// The Kubernetes auth method, with the pod's service account token.
/// struct Kubernetes { role: String }
///
/// impl VaultAuth for Kubernetes {
///     fn login<'a>(&'a self, vault: &'a Login<'a>) -> BoxFuture<'a, Result<Token, VaultError>> {
///         Box::pin(async move {
///             let jwt = std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/token")
///                 .map_err(|e| VaultError::Config(e.to_string()))?;
///             let path = "auth/kubernetes/login";
///             let answer = vault.write(path, serde_json::json!({"role": self.role, "jwt": jwt})).await?;
///             vault.token_of(&answer, path)
///         })
///     }
///
///     fn describe(&self) -> String {
///         format!("Kubernetes role {}", self.role)
///     }
/// }
/// ```
pub trait VaultAuth: Send + Sync + 'static {
    /// Logs in: a new token. Called at the start, when the token cannot be
    /// renewed any more, and after Vault refused it.
    fn login<'a>(&'a self, vault: &'a Login<'a>) -> BoxFuture<'a, Result<Token, VaultError>>;

    /// The method, for messages (`token file /run/vault-token`).
    fn describe(&self) -> String;
}

/// A token read from a file (as Vault Agent or an operator writes it); read
/// again at each login, so a rewritten file is picked up. A periodic or
/// renewable token is renewed before it expires.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// The token in the file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl VaultAuth for TokenFile {
    fn login<'a>(&'a self, vault: &'a Login<'a>) -> BoxFuture<'a, Result<Token, VaultError>> {
        Box::pin(async move {
            let token = read_secret(&self.path).await?;
            vault.look_up(&token).await
        })
    }

    fn describe(&self) -> String {
        format!("token file {}", self.path.display())
    }
}

/// The AppRole auth method: a role id, and a secret id read from a file at
/// each login (`auth/<mount>/login`, mount `approle` by default).
#[derive(Debug, Clone)]
pub struct AppRole {
    role_id: String,
    secret_id_file: PathBuf,
    mount: String,
}

impl AppRole {
    /// Logs in as `role_id` with the secret id in `secret_id_file`.
    pub fn new(role_id: impl Into<String>, secret_id_file: impl Into<PathBuf>) -> Self {
        Self {
            role_id: role_id.into(),
            secret_id_file: secret_id_file.into(),
            mount: "approle".into(),
        }
    }

    /// The auth method's mount, if not `approle`.
    pub fn mount(mut self, mount: impl Into<String>) -> Self {
        self.mount = mount.into();
        self
    }
}

impl VaultAuth for AppRole {
    fn login<'a>(&'a self, vault: &'a Login<'a>) -> BoxFuture<'a, Result<Token, VaultError>> {
        Box::pin(async move {
            let secret_id = read_secret(&self.secret_id_file).await?;
            let path = format!("auth/{}/login", self.mount);
            let body = serde_json::json!({"role_id": self.role_id, "secret_id": *secret_id});
            let answer = vault.write(&path, body).await?;
            vault.token_of(&answer, &path)
        })
    }

    fn describe(&self) -> String {
        format!("AppRole {} ({})", self.role_id, self.mount)
    }
}

/// A small secret file's first line, off the runtime. A FIFO or device
/// at the path is refused without blocking.
async fn read_secret(path: &Path) -> Result<Zeroizing<String>, VaultError> {
    let owned = path.to_owned();
    let unreadable = |e: &dyn std::fmt::Display| {
        VaultError::Config(format!("cannot read {}: {e}", path.display()))
    };
    let bytes = tokio::task::spawn_blocking(move || crate::read::small(&owned))
        .await
        .map_err(|e| unreadable(&e))?
        .map_err(|e| unreadable(&e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| unreadable(&e))?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(VaultError::Config(format!("{} is empty", path.display())));
    }
    Ok(Zeroizing::new(line.to_owned()))
}

/// Renews `token` (`auth/token/renew-self`): the token with its new TTL.
pub(super) async fn renew(client: &Client, token: &Token) -> Result<Token, VaultError> {
    let path = "auth/token/renew-self";
    let answer = client
        .call(
            Method::POST,
            path,
            Some(token.secret()),
            Some(serde_json::json!({})),
        )
        .await
        .map_err(VaultError::token_rejected)?;
    Token::from_auth(&answer["auth"], path)
}

/// Logs in with `auth`, within the client's timeout (a secret file on a
/// hung file system, or a login that hangs, fails like a request).
pub(super) async fn login(client: &Client, auth: &dyn VaultAuth) -> Result<Token, VaultError> {
    let timeout = client.timeout();
    let login = tokio::time::timeout(timeout, auth.login(&Login::new(client)))
        .await
        .map_err(|_| VaultError::Timeout {
            addr: client.addr().to_owned(),
            waited: timeout,
        })?;
    // A 4xx to a login is the credentials', not a Vault that is down.
    login.map_err(|error| match error {
        VaultError::Refused { status, errors, .. } if (400..500).contains(&status) => {
            VaultError::LoginRefused {
                method: auth.describe(),
                reason: errors,
            }
        }
        other => other,
    })
}

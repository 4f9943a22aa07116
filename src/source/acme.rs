//! [`AcmeSource`]: certificates from Let's Encrypt or any RFC 8555 CA, through
//! `instant-acme`, kept in a [`Storage`] and renewed on the CA's schedule.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeStatus,
    ChallengeType, ExternalAccountKey, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use sha2::{Digest, Sha256};

use super::{CertSource, SourceError, SourceWarning};
use crate::clock::Clock;
use crate::mark::HighWaterMark;
use crate::renewal;

mod file_storage;
use crate::bundle::{CertBundle, CertInfo};
use crate::store::CertStore;
use crate::sync::lock;
pub use file_storage::FileStorage;

/// How long one ACME step (a request, or polling an order) may take, by default.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Renew regardless of the CA's advice when this fraction of the lifetime is
/// left.
const EMERGENCY_FRACTION: f64 = 0.1;

/// Without advice from the CA, renew when this fraction of the lifetime is
/// left (a little more than the rotator's default third, so that the
/// rotator's schedule, jitter included, always finds the certificate due).
const DEFAULT_RENEW_FRACTION: f64 = 0.4;

/// How often an instance waiting for another's renewal looks at the storage.
const LOCK_POLL: Duration = Duration::from_secs(1);

/// How many more times one request the CA refuses with `badNonce` is sent,
/// on top of instant-acme's own three: RFC 8555 §6.5 says to retry with the
/// fresh nonce the refusal carries, and a CA under load refuses several in a
/// row (at 60% refused, 51 tries fail together once in 10¹¹).
const BAD_NONCE_RETRIES: u32 = 16;

/// Runs `$call` as one step of talking to the CA ([`AcmeSource::step`]),
/// sending it again while the CA refuses it with `badNonce`. The expression
/// is evaluated anew for each try, so it must be safe to repeat: a request
/// refused for its nonce was not processed.
macro_rules! step {
    ($source:expr, $what:expr, $call:expr) => {{
        let mut refused = 0;
        loop {
            match $source.step($what, $call).await {
                Err(failure) if failure.bad_nonce() && refused < BAD_NONCE_RETRIES => {
                    refused += 1;
                    tracing::debug!(target: "certrotate", step = $what, refused, "the CA refused the nonce; sending again with a fresh one");
                }
                other => break other,
            }
        }
    }};
}

/// What waiting for the renewal lock gave.
enum Renewal {
    /// The lock: this instance orders.
    Ours(Lease),
    /// Another instance's new certificate.
    Done(CertBundle),
}

/// Why an attempt failed.
enum Trouble {
    /// The storage could not be read or locked, so the instances sharing it
    /// cannot take turns: the reason.
    StorageDown(String),
    /// Anything else.
    Failed(SourceError),
}

/// A boxed future, for the object-safe traits of this module.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where ACME state lives: the account, certificates and their keys.
///
/// Values must be stored atomically (a reader sees the old value or the new
/// one, never a mix) and readable by this process only.
///
/// A storage shared by several server instances also coordinates them with
/// a lease lock ([`try_lock`](Self::try_lock)) whose fencing token guards
/// writes ([`store_fenced`](Self::store_fenced)). The defaults do no
/// coordination, which is right for a storage only one process uses.
pub trait Storage: Send + Sync + 'static {
    /// The value stored under `key`, if any.
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, std::io::Result<Option<Vec<u8>>>>;
    /// Stores `value` under `key`, replacing any older value.
    fn store<'a>(&'a self, key: &'a str, value: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>>;

    /// Takes the lock `name` for `lease`, if nobody holds it or its holder's
    /// lease has run out. The [`Lease`]'s fencing token is larger than any
    /// given out before for `name`. `None` while another holder has it.
    ///
    /// The default always succeeds, with token 0: no coordination.
    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, std::io::Result<Option<Lease>>> {
        let _ = lease;
        Box::pin(async move { Ok(Some(Lease::new(name, String::new(), 0))) })
    }

    /// Stores `value` under `key` only while `lease` holds the newest token
    /// of its lock: a holder whose lease ran out and was taken over cannot
    /// overwrite what the new holder wrote (it gets an error of kind
    /// [`PermissionDenied`](std::io::ErrorKind::PermissionDenied)).
    ///
    /// The default stores unconditionally.
    fn store_fenced<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: &'a Lease,
    ) -> BoxFuture<'a, std::io::Result<()>> {
        let _ = lease;
        self.store(key, value)
    }

    /// Counts the changes other instances make to the stored values, for a
    /// storage shared by several: an [`AcmeSource`] fetches when it moves,
    /// and so picks up a certificate another instance obtained at once.
    ///
    /// The default is `None`: nobody else writes.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// Releases `lease` early (it also ends by itself). Releasing a lease
    /// that was taken over does nothing.
    ///
    /// The default does nothing.
    fn unlock<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, std::io::Result<()>> {
        let _ = lease;
        Box::pin(async { Ok(()) })
    }
}

/// A lease on a named [`Storage`] lock, with its fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    name: String,
    owner: String,
    token: u64,
}

impl Lease {
    /// A lease on `name` held by `owner` (a value unique to this holder,
    /// such as [`new_owner`](Self::new_owner) makes), with fencing token
    /// `token`: for [`Storage`] implementations.
    pub fn new(name: impl Into<String>, owner: impl Into<String>, token: u64) -> Self {
        Self {
            name: name.into(),
            owner: owner.into(),
            token,
        }
    }

    /// A fresh owner for a new lease: `<pid>-<16 random hex digits>`. The
    /// process id tells an operator looking at a lock which process on the
    /// host holds it; the random part keeps owners apart across hosts and
    /// restarts. It comes from the operating system's generator (should
    /// that ever fail, from the time and a fast generator: an owner needs to
    /// be unique, not secret).
    ///
    /// ```
    /// let owner = certrotate::Lease::new_owner();
    /// let pid = owner.split('-').next().unwrap();
    /// assert_eq!(pid, std::process::id().to_string());
    /// ```
    pub fn new_owner() -> String {
        let random = crate::random::secure()
            .map(u64::from_ne_bytes)
            .unwrap_or_else(|_| {
                let now = SystemTime::now().duration_since(UNIX_EPOCH);
                fastrand::u64(..) ^ now.unwrap_or_default().as_nanos() as u64
            });
        format!("{}-{random:016x}", std::process::id())
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who holds it.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fencing token: larger for each new holder of the lock.
    pub fn token(&self) -> u64 {
        self.token
    }
}

/// Publishes DNS-01 challenge records with your DNS provider.
///
/// `present` must return once the TXT record `_acme-challenge.<domain>` with
/// `value` is visible to the CA (wait for propagation there); `cleanup`
/// removes it.
pub trait Dns01Solver: Send + Sync + 'static {
    /// Publishes the TXT record.
    fn present<'a>(
        &'a self,
        domain: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
    /// Removes it.
    fn cleanup<'a>(
        &'a self,
        domain: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// Answers HTTP-01 challenges: serve [`router`](Self::router) (or the
/// responder itself, a tower `Service` through axum) on port 80.
///
/// ```no_run
/// # async fn demo(http01: certrotate::Http01Responder) -> std::io::Result<()> {
/// let tcp = tokio::net::TcpListener::bind("0.0.0.0:80").await?;
/// axum::serve(tcp, http01.router()).await
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Http01Responder {
    tokens: Arc<Mutex<HashMap<String, String>>>,
}

impl Http01Responder {
    /// A responder with no challenge pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// An axum router answering `GET /.well-known/acme-challenge/{token}`
    /// (404 for unknown tokens). Merge it into your HTTP app.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        let tokens = self.tokens.clone();
        axum::Router::new().route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(
                move |axum::extract::Path(token): axum::extract::Path<String>| {
                    let answer = lock(&tokens).get(&token).cloned();
                    async move {
                        match answer {
                            Some(key_authorization) => Ok(key_authorization),
                            None => Err(axum::http::StatusCode::NOT_FOUND),
                        }
                    }
                },
            ),
        )
    }

    fn insert(&self, token: &str, key_authorization: &str) {
        lock(&self.tokens).insert(token.to_owned(), key_authorization.to_owned());
    }

    fn remove(&self, token: &str) {
        lock(&self.tokens).remove(token);
    }
}

/// How the CA checks that we control the names.
#[derive(Clone)]
enum Challenge {
    /// Answered by the resolver of the store the source is attached to.
    TlsAlpn01,
    Http01(Http01Responder),
    Dns01(Arc<dyn Dns01Solver>),
}

/// Configures an [`AcmeSource`].
#[must_use]
pub struct AcmeBuilder {
    directory: String,
    domains: Vec<String>,
    challenge: Challenge,
    storage: Arc<dyn Storage>,
    contact: Vec<String>,
    root: Option<PathBuf>,
    eab: Option<(String, Vec<u8>)>,
    profile: Option<String>,
    timeout: Duration,
    lock_lease: Duration,
    order_alone_within: Option<Duration>,
    state_file: Option<PathBuf>,
}

impl fmt::Debug for AcmeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeBuilder")
            .field("directory", &self.directory)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

impl AcmeBuilder {
    /// Answers TLS-ALPN-01 challenges (the default) from the resolver of
    /// the store the [`Rotator`](crate::Rotator) running this source fills;
    /// [`Rotator::server_config`](crate::Rotator::server_config) then offers
    /// [`ACME_TLS_ALPN`](crate::ACME_TLS_ALPN). The server must be reachable
    /// on port 443 of the names.
    pub fn tls_alpn_01(mut self) -> Self {
        self.challenge = Challenge::TlsAlpn01;
        self
    }

    /// Answers HTTP-01 challenges through `responder` (served on port 80).
    pub fn http_01(mut self, responder: &Http01Responder) -> Self {
        self.challenge = Challenge::Http01(responder.clone());
        self
    }

    /// Answers DNS-01 challenges through your DNS provider (the only way to
    /// get wildcard certificates).
    pub fn dns_01(mut self, solver: impl Dns01Solver) -> Self {
        self.challenge = Challenge::Dns01(Arc::new(solver));
        self
    }

    /// Where the account and certificates are kept (default: a
    /// [`FileStorage`] in `$STATE_DIRECTORY/acme` under systemd, else
    /// `$XDG_STATE_HOME/certrotate/acme`, else
    /// `~/.local/state/certrotate/acme`, else `./certrotate-acme`).
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Arc::new(storage);
        self
    }

    /// Contact URLs for the account (`mailto:ops@example.com`).
    pub fn contact(mut self, contact: impl Into<String>) -> Self {
        self.contact.push(contact.into());
        self
    }

    /// Trusts this PEM root for the ACME server's own HTTPS (Pebble, a
    /// private CA).
    pub fn directory_root(mut self, pem: impl Into<PathBuf>) -> Self {
        self.root = Some(pem.into());
        self
    }

    /// External account binding (ZeroSSL, Google, some private CAs): the key
    /// id and the HMAC key the CA gave you.
    pub fn external_account(mut self, key_id: impl Into<String>, hmac_key: &[u8]) -> Self {
        self.eab = Some((key_id.into(), hmac_key.to_vec()));
        self
    }

    /// Asks for this certificate profile (`"shortlived"`, `"tlsserver"`),
    /// where the CA offers profiles.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// How long each step of talking to the CA (a request, validation,
    /// issuance) may take before it counts as a failure (default 30 s): a
    /// CA that hangs is reported and retried like one that is down.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long an instance may hold the renewal lock of a shared
    /// [`Storage`] (default 5 min) before another takes over, for instance
    /// when the holder was killed mid-order. Keep it above the time an order
    /// takes (a few [`timeout`](Self::timeout)s).
    pub fn lock_lease(mut self, lease: Duration) -> Self {
        self.lock_lease = lease.max(Duration::from_secs(1));
        self
    }

    /// A file of this instance's own where it also records the newest
    /// certificate it served (default: none). The mark in the storage
    /// stops a certificate restored there on its own; one on the instance's
    /// own disk also stops a whole shared storage put back to an older
    /// state (a Redis writer restoring a certificate with its old mark)
    /// from being served after this instance restarts.
    ///
    /// ```
    /// # let acme = certrotate::AcmeSource::builder("https://ca.example/dir", ["a.example"]);
    /// let acme = acme.state_file("/var/lib/api/acme-served.txt");
    /// ```
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }

    /// Lets this instance order on its own, without the renewal lock, when
    /// the [`Storage`] cannot be read or locked and the certificate it last
    /// provided expires within `window` (or it has none).
    ///
    /// Off by default: the instances of a fleet whose storage is down keep
    /// serving, report the error and retry, because instances ordering each
    /// on their own spend the CA's rate limits and serve different
    /// certificates. Turn it on where an expired certificate costs more.
    /// What is ordered this way is served at once; saving it is attempted,
    /// and reported as [`SourceWarning::StateNotSaved`] when it fails. The
    /// account must be known already (this instance loaded or made it
    /// earlier).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use certrotate::AcmeSource;
    /// let source = AcmeSource::builder("https://acme.example/dir", ["api.example.com"])
    ///     // Alone only in the last two days of a 90-day certificate.
    ///     .order_alone_when_storage_is_down(Duration::from_secs(2 * 86_400))
    ///     .build();
    /// ```
    pub fn order_alone_when_storage_is_down(mut self, window: Duration) -> Self {
        self.order_alone_within = Some(window);
        self
    }

    /// Builds the source.
    pub fn build(self) -> AcmeSource {
        let mut names = self.domains.clone();
        names.sort();
        let directory = hex(&Sha256::digest(&self.directory));
        let id = hex(&Sha256::digest(format!(
            "{}|{}",
            self.directory,
            names.join(",")
        )));
        let storage_changes = tokio::sync::Mutex::new(self.storage.changes());
        AcmeSource {
            inner: Arc::new(Inner {
                account_key: format!("account-{}.json", &directory[..16]),
                cert_key: format!("cert-{}.pem", &id[..16]),
                renewal_key: format!("renewal-{}.txt", &id[..16]),
                served_key: format!("served-{}.txt", &id[..16]),
                config: self,
                account: tokio::sync::Mutex::new(None),
                advice: Mutex::new(None),
                unsaved: Mutex::default(),
                lease: Mutex::default(),
                storage_changes,
                rate_limited: Arc::default(),
                provided: Mutex::default(),
                pending: Mutex::default(),
                attached: Mutex::default(),
            }),
        }
    }
}

/// Certificates from an ACME CA (Let's Encrypt, ZeroSSL, Pebble, a private
/// RFC 8555 CA).
///
/// A fetch serves the stored certificate while it is not due for renewal,
/// else orders a new one (a fresh key each time), stores it and returns it;
/// the rotator's policy checks it before it is served. The account is made
/// once and kept in the [`Storage`]; if the CA no longer knows it (a reset
/// staging CA), a new one is made.
///
/// **Renewal** follows ACME Renewal Information (RFC 9773) when the CA
/// offers it (a random time in the suggested window; the new order says
/// which certificate it `replaces`), else comes when 40% of the lifetime is
/// left, and regardless of advice when 10% is left. Failures are retried by
/// the rotator with a backoff that shrinks as expiry nears.
///
/// # Example
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use certrotate::{AcmeSource, FileStorage, Policy, Rotator};
///
/// let acme = AcmeSource::builder("https://acme-staging-v02.api.letsencrypt.org/directory", ["api.example.com"])
///     .contact("mailto:ops@example.com")
///     .storage(FileStorage::new("/var/lib/myapp/acme"))
///     .build();
/// let policy = Policy::builder().server_name("api.example.com").build()?;
/// let rotator = Rotator::builder(acme, policy).spawn();
/// // Serves TLS-ALPN-01 answers; ALPN includes `acme-tls/1`.
/// let tls = std::sync::Arc::new(rotator.server_config()?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AcmeSource {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the builder was told.
    config: AcmeBuilder,
    account_key: String,
    cert_key: String,
    /// Where the renewal time is shared: `<fingerprint> <unix seconds>`.
    renewal_key: String,
    /// Where the newest certificate served is recorded (replay protection).
    served_key: String,
    account: tokio::sync::Mutex<Option<Account>>,
    /// When to renew the stored certificate, from the CA's renewal
    /// information (RFC 9773).
    advice: Mutex<Option<Advice>>,
    /// How long the CA last asked to wait (a rate limit, or Retry-After on
    /// an error response).
    rate_limited: Arc<Mutex<Option<Duration>>>,
    /// State that could not be saved, as of the last attempt to save it.
    unsaved: Mutex<Vec<SourceWarning>>,
    /// The renewal lock, while this instance holds it: saves are fenced by it.
    lease: Mutex<Option<Lease>>,
    /// Changes other instances made to the storage, if it is shared.
    storage_changes: tokio::sync::Mutex<Option<tokio::sync::watch::Receiver<u64>>>,
    /// The certificate the last successful fetch returned.
    provided: Mutex<Option<CertBundle>>,
    /// The order in progress, for the next attempt to resume.
    pending: Mutex<Option<PendingOrder>>,
    /// The store of the rotator running this source: TLS-ALPN-01 answers
    /// are served from it, and its clock tells the time.
    attached: Mutex<Option<CertStore>>,
}

impl fmt::Debug for AcmeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeSource")
            .field("directory", &self.inner.config.directory)
            .field("domains", &self.inner.config.domains)
            .finish_non_exhaustive()
    }
}

/// The CA's advice for one certificate: renew at `at`, a random time in the
/// window it suggested.
#[derive(Debug, Clone)]
struct Advice {
    fingerprint: String,
    at: SystemTime,
    /// Whether `changed()` has woken the rotator for it.
    fired: bool,
}

/// Why an ACME step failed: what was being done, and the typed cause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {cause}")]
struct Failure {
    what: Cow<'static, str>,
    #[source]
    cause: Cause,
}

/// The cause of a [`Failure`], kept typed (and `Clone` through `Arc`).
#[derive(Debug, Clone, thiserror::Error)]
enum Cause {
    /// What instant-acme reported: the CA's problem document, or what
    /// went wrong on the way to it.
    #[error(transparent)]
    Acme(Arc<instant_acme::Error>),
    /// No answer within the step's timeout.
    #[error("no answer within {}", crate::clock::human(*.0))]
    Timeout(Duration),
    /// Anything else: storage, keys, a DNS provider, a certificate.
    #[error(transparent)]
    Other(Arc<dyn std::error::Error + Send + Sync>),
    /// The CA answered, but not so that the order can go on.
    #[error("{0}")]
    Unexpected(String),
}

/// The step whose `unauthorized` means the CA no longer accepts the
/// account: the first request an order signs with it.
const CREATING_ORDER: &str = "creating the order";

impl Failure {
    fn new(what: impl Into<Cow<'static, str>>, cause: impl Into<Cause>) -> Self {
        Self {
            what: what.into(),
            cause: cause.into(),
        }
    }

    /// The CA's answer does not let the order go on.
    fn unexpected(what: impl Into<Cow<'static, str>>, why: impl Into<String>) -> Self {
        Self::new(what, Cause::Unexpected(why.into()))
    }

    /// The type of the CA's problem document, without the
    /// `urn:ietf:params:acme:error:` prefix (RFC 8555 §6.7).
    fn problem(&self) -> Option<&str> {
        let Cause::Acme(error) = &self.cause else {
            return None;
        };
        let instant_acme::Error::Api(problem) = &**error else {
            return None;
        };
        problem
            .r#type
            .as_deref()?
            .strip_prefix("urn:ietf:params:acme:error:")
    }

    /// Whether the CA refused the request for its nonce (RFC 8555 §6.5):
    /// it was not processed, and may be sent again.
    fn bad_nonce(&self) -> bool {
        self.problem() == Some("badNonce")
    }

    /// Whether the certificate an order `replaces` was replaced already
    /// (RFC 9773 §5).
    fn already_replaced(&self) -> bool {
        self.problem() == Some("alreadyReplaced")
    }

    /// Whether the CA no longer knows the account (a reset CA) or no
    /// longer accepts it (deactivated): `accountDoesNotExist`, or
    /// `unauthorized` for the order it signs.
    fn forgotten_account(&self) -> bool {
        match self.problem() {
            Some("accountDoesNotExist") => true,
            Some("unauthorized") => self.what == CREATING_ORDER,
            _ => false,
        }
    }
}

impl From<instant_acme::Error> for Cause {
    fn from(error: instant_acme::Error) -> Self {
        Self::Acme(Arc::new(error))
    }
}

impl From<BoxError> for Cause {
    fn from(error: BoxError) -> Self {
        Self::Other(Arc::from(error))
    }
}

impl From<std::io::Error> for Cause {
    fn from(error: std::io::Error) -> Self {
        Self::Other(Arc::new(error))
    }
}

/// Adds what was being done to an error.
trait Context<T> {
    fn context(self, what: impl Into<Cow<'static, str>>) -> Result<T, Failure>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl Into<Cow<'static, str>>) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(what, Cause::Other(Arc::new(e))))
    }
}

/// A boxed error, as a [`Dns01Solver`] returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An order placed with the CA and not finished yet: the next attempt
/// resumes it from its URL instead of starting over, so that the
/// authorizations it won are not validated again (nor the CA's rate limits
/// spent) after a transient error.
struct PendingOrder {
    /// The order's URL, as the CA gave it.
    url: String,
    /// The key of the certificate request, once the order was finalized.
    key_pem: Option<zeroize::Zeroizing<String>>,
}

impl AcmeSource {
    /// Runs one step of talking to the CA under the timeout, and remembers
    /// a rate limit's wait for the rotator.
    async fn step<T, E: Into<Cause>>(
        &self,
        what: &'static str,
        future: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Failure> {
        let timeout = self.inner.config.timeout;
        match tokio::time::timeout(timeout, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let failure = Failure::new(what, e);
                if let Some(wait) = rate_limit_wait(&failure, self.now()) {
                    *lock(&self.inner.rate_limited) = Some(wait);
                }
                Err(failure)
            }
            Err(_) => Err(Failure::new(what, Cause::Timeout(timeout))),
        }
    }

    /// Certificates for `domains` (the first is the common name) from the
    /// ACME directory at `directory`, answering TLS-ALPN-01 challenges by
    /// default ([`AcmeBuilder::tls_alpn_01`]).
    pub fn builder<I, S>(directory: impl Into<String>, domains: I) -> AcmeBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AcmeBuilder {
            directory: directory.into(),
            domains: domains.into_iter().map(Into::into).collect(),
            challenge: Challenge::TlsAlpn01,
            storage: Arc::new(FileStorage::new(default_storage_dir())),
            contact: Vec::new(),
            root: None,
            eab: None,
            profile: None,
            timeout: STEP_TIMEOUT,
            lock_lease: Duration::from_secs(300),
            order_alone_within: None,
            state_file: None,
        }
    }

    /// The certificate kept in storage. A storage that cannot be read fails
    /// the attempt (ordering anyway would spend the CA's rate limits on what
    /// may well be stored); a stored certificate that does not parse is
    /// ignored, with a warning, and replaced.
    async fn stored(&self) -> Result<Option<CertBundle>, Failure> {
        let Some(pem) = self
            .inner
            .config
            .storage
            .load(&self.inner.cert_key)
            .await
            .context("cannot read the stored certificate")?
        else {
            return Ok(None);
        };
        // The certificate's private key is in it.
        let pem = zeroize::Zeroizing::new(pem);
        match CertBundle::from_combined_pem(&pem) {
            Ok(bundle) => Ok(Some(bundle.with_origin(self.describe()))),
            Err(error) => {
                tracing::warn!(target: "certrotate", key = %self.inner.cert_key, "the stored ACME certificate is unusable, ordering a new one: {error}");
                Ok(None)
            }
        }
    }

    /// Saves `value` under `key`. A failure does not fail the attempt (what
    /// was obtained is served; throwing it away would spend the CA's rate
    /// limits again): it is logged and reported as a source warning until a
    /// later save of the same state succeeds.
    async fn save(&self, key: &str, value: &[u8], what: &str) {
        let storage = &self.inner.config.storage;
        let lease = lock(&self.inner.lease).clone();
        let saved = match &lease {
            Some(lease) => storage.store_fenced(key, value, lease).await,
            None => storage.store(key, value).await,
        };
        let mut unsaved = lock(&self.inner.unsaved);
        unsaved.retain(|w| !matches!(w, SourceWarning::StateNotSaved { what: w, .. } if w == what));
        if let Err(error) = saved {
            tracing::error!(target: "certrotate", %key, "could not save the {what}: {error}");
            unsaved.push(SourceWarning::StateNotSaved {
                what: what.to_owned(),
                reason: error.to_string(),
            });
        }
    }

    /// Takes the storage's renewal lock, or waits until the instance holding
    /// it has stored a certificate that is not due (or its lease has run
    /// out, and the lock is ours). Fails when the storage cannot be reached.
    async fn renewal_lock(&self) -> Result<Renewal, Trouble> {
        let storage = &self.inner.config.storage;
        let name = format!("renew-{}", self.inner.cert_key);
        let mut waiting = false;
        loop {
            match storage.try_lock(&name, self.inner.config.lock_lease).await {
                Err(error) => {
                    return Err(Trouble::StorageDown(format!(
                        "cannot take the renewal lock: {error}"
                    )))
                }
                Ok(Some(lease)) => return Ok(Renewal::Ours(lease)),
                Ok(None) if !waiting => {
                    tracing::info!(target: "certrotate", lock = %name, "another instance is renewing; waiting for its certificate");
                    waiting = true;
                }
                Ok(None) => {}
            }
            tokio::time::sleep(LOCK_POLL).await;
            let stored = self
                .stored()
                .await
                .map_err(|failure| Trouble::StorageDown(failure.to_string()))?;
            if let Some(bundle) = stored.filter(|b| !self.due(b.info(), self.now())) {
                return Ok(Renewal::Done(bundle));
            }
        }
    }

    /// Completes at the renewal time the CA advised (once per advice).
    async fn advised_time(&self) {
        loop {
            let at = lock(&self.inner.advice)
                .as_ref()
                .filter(|a| !a.fired)
                .map(|a| a.at);
            let Some(at) = at else {
                // Advice comes with the next fetch; look again later.
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            };
            tokio::time::sleep(at.duration_since(self.now()).unwrap_or_default()).await;
            let mut advice = lock(&self.inner.advice);
            if let Some(advice) = advice.as_mut().filter(|a| a.at == at && !a.fired) {
                advice.fired = true;
                return;
            }
        }
    }

    /// Completes when another instance changed the shared storage; never
    /// for a storage nobody else writes.
    async fn storage_changed(&self) {
        let mut changes = self.inner.storage_changes.lock().await;
        let changed = match changes.as_mut() {
            Some(changes) => changes.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            drop(changes);
            std::future::pending::<()>().await;
        }
    }

    /// The time, as the clock of the store this source is attached to
    /// tells it.
    fn now(&self) -> SystemTime {
        self.clock().now()
    }

    fn clock(&self) -> Arc<dyn Clock> {
        match &*lock(&self.inner.attached) {
            Some(store) => store.clock().clone(),
            None => Arc::new(crate::clock::SystemClock),
        }
    }

    /// When `cert` should be replaced: at the time the CA advised, else
    /// with 40% of its lifetime left; with 10% left whatever the advice.
    fn renewal_time(&self, cert: &CertInfo) -> SystemTime {
        let left = |fraction| renewal::at_fraction(cert, fraction, 0.0, 0.0);
        let planned = match &*lock(&self.inner.advice) {
            Some(advice) if advice.fingerprint == cert.fingerprint_sha256 => advice.at,
            _ => left(DEFAULT_RENEW_FRACTION),
        };
        planned.min(left(EMERGENCY_FRACTION))
    }

    /// Whether `cert` should be replaced now.
    fn due(&self, cert: &CertInfo, now: SystemTime) -> bool {
        now >= self.renewal_time(cert)
    }

    /// The account: loaded from storage, or made (and stored).
    async fn account(&self, fresh: bool) -> Result<Account, Failure> {
        let mut cached = self.inner.account.lock().await;
        if let (Some(account), false) = (&*cached, fresh) {
            return Ok(account.clone());
        }
        let http = NotingClient::new(
            self.inner.config.root.as_deref(),
            self.inner.rate_limited.clone(),
            self.clock(),
        )
        .await?;
        let builder = || Account::builder_with_http(Box::new(http.clone()));
        let stored = match fresh {
            true => None,
            false => self
                .inner
                .config
                .storage
                .load(&self.inner.account_key)
                .await
                .context("reading the stored ACME account")?,
        };
        let account = match stored {
            Some(json) => {
                // The account's private key is in it.
                let json = zeroize::Zeroizing::new(json);
                let credentials: AccountCredentials =
                    serde_json::from_slice(&json).context("reading the stored ACME account")?;
                // A GET of the directory: no nonce to refuse.
                self.step(
                    "loading the ACME account",
                    builder().from_credentials(credentials),
                )
                .await?
            }
            None => {
                let contact: Vec<&str> = self
                    .inner
                    .config
                    .contact
                    .iter()
                    .map(String::as_str)
                    .collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let eab = self
                    .inner
                    .config
                    .eab
                    .as_ref()
                    .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
                let (account, credentials) = step!(
                    self,
                    "creating the ACME account",
                    builder().create(&new, self.inner.config.directory.clone(), eab.as_ref())
                )?;
                let json = serde_json::to_vec(&credentials).context("saving the ACME account")?;
                let json = zeroize::Zeroizing::new(json);
                self.save(&self.inner.account_key, &json, "ACME account")
                    .await;
                tracing::info!(target: "certrotate", directory = %self.inner.config.directory, "ACME account created");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// The stored certificate if it is not due; otherwise the renewal lock,
    /// and an order (or the certificate of the instance that held the lock).
    async fn obtain(&self) -> Result<CertBundle, Trouble> {
        let stored = self
            .stored()
            .await
            .map_err(|failure| Trouble::StorageDown(failure.to_string()))?;
        if let Some(bundle) = &stored {
            let advised = lock(&self.inner.advice)
                .as_ref()
                .is_some_and(|a| a.fingerprint == bundle.info().fingerprint_sha256);
            // The CA's advice can only matter now if the certificate looks
            // due without it; otherwise it is asked for in the background,
            // so that a restart serves the stored certificate at once even
            // when the CA is slow or down.
            let due = self.due(bundle.info(), self.now());
            if !advised && due {
                self.advise(bundle).await;
            } else if !advised {
                let (source, bundle) = (self.clone(), bundle.clone());
                tokio::spawn(async move { source.advise(&bundle).await });
            }
            if !self.due(bundle.info(), self.now()) {
                return Ok(bundle.clone());
            }
        }
        // One instance of a fleet orders; the others wait for its result.
        let lease = match self.renewal_lock().await? {
            Renewal::Done(bundle) => return Ok(bundle),
            Renewal::Ours(lease) => lease,
        };
        // Another instance may have finished just before the lock was ours.
        let stored = match self.stored().await {
            Ok(Some(bundle)) if !self.due(bundle.info(), self.now()) => {
                let _ = self.inner.config.storage.unlock(&lease).await;
                return Ok(bundle);
            }
            Ok(newer) => newer.or(stored),
            Err(_) => stored,
        };
        let holding = Holding::new(self, lease);
        let ordered = self.ordered(stored.as_ref()).await;
        holding.release().await;
        ordered.map_err(Trouble::Failed)
    }

    /// Whether the storage being down lets this instance order on its own
    /// ([`AcmeBuilder::order_alone_when_storage_is_down`]).
    fn may_order_alone(&self) -> bool {
        let Some(window) = self.inner.config.order_alone_within else {
            return false;
        };
        lock(&self.inner.provided)
            .as_ref()
            .is_none_or(|b| b.info().not_after < crate::clock::saturating_add(self.now(), window))
    }

    /// Orders a new certificate, with what the CA said about rate limits in
    /// the error, and takes the CA's renewal advice for it.
    async fn ordered(&self, replacing: Option<&CertBundle>) -> Result<CertBundle, SourceError> {
        // Only what the CA says during this attempt counts.
        lock(&self.inner.rate_limited).take();
        let ordered = self.order(replacing).await;
        let rate_limited = lock(&self.inner.rate_limited).take();
        let bundle = ordered.map_err(|failure| match rate_limited {
            Some(retry_after) => SourceError::RateLimited {
                from: self.describe(),
                reason: failure.to_string(),
                retry_after,
            },
            None => SourceError::unavailable(self.describe(), failure),
        })?;
        self.advise(&bundle).await;
        Ok(bundle)
    }

    /// Orders, validates, finalizes and downloads a new certificate.
    async fn order(&self, replacing: Option<&CertBundle>) -> Result<CertBundle, Failure> {
        let account = self.account(false).await?;
        match self.order_with(&account, replacing).await {
            // The CA forgot the account (a reset CA, a deactivated account):
            // make a new one and try once more.
            Err(failure) if failure.forgotten_account() => {
                tracing::warn!(target: "certrotate", reason = %failure, "the ACME CA no longer knows the account; creating a new one");
                let account = self.account(true).await?;
                self.order_with(&account, None).await
            }
            other => other,
        }
    }

    async fn order_with(
        &self,
        account: &Account,
        replacing: Option<&CertBundle>,
    ) -> Result<CertBundle, Failure> {
        let mut order = match self.resume(account).await {
            Some(order) => order,
            None => self.new_order(account, replacing).await?,
        };
        // Whatever ends this attempt (an answer, an error, or the rotator's
        // fetch timeout dropping it), the challenge answers are taken down.
        let mut cleanup = Cleanup::default();
        let result = match self.answer_challenges(&mut order, &mut cleanup).await {
            Ok(()) => self.finish(&mut order).await,
            Err(e) => Err(e),
        };
        cleanup.run().await;
        match &result {
            Ok(_) => *lock(&self.inner.pending) = None,
            Err(reason) => {
                tracing::info!(target: "certrotate", order = %order.url(), %reason, "the ACME order did not finish; the next attempt resumes it");
            }
        }
        result
    }

    /// The order an earlier attempt left unfinished, as the CA has it now,
    /// if it can still be finished: not invalid, and if it was finalized
    /// already, the key of its certificate request is known.
    async fn resume(&self, account: &Account) -> Option<instant_acme::Order> {
        let url = lock(&self.inner.pending).as_ref()?.url.clone();
        let resumed = step!(self, "resuming the order", account.order(url.clone()));
        let finalized = lock(&self.inner.pending)
            .as_ref()
            .is_some_and(|p| p.key_pem.is_some());
        match resumed {
            Ok(mut order) => {
                let status = order.state().status;
                let usable = match status {
                    OrderStatus::Pending | OrderStatus::Ready => true,
                    OrderStatus::Processing | OrderStatus::Valid => finalized,
                    _ => false,
                };
                if usable {
                    tracing::info!(target: "certrotate", order = %url, ?status, "resuming the ACME order");
                    return Some(order);
                }
                tracing::info!(target: "certrotate", order = %url, ?status, "the unfinished ACME order cannot be finished; placing a new one");
            }
            Err(reason) => {
                tracing::info!(target: "certrotate", order = %url, %reason, "the unfinished ACME order cannot be resumed; placing a new one");
            }
        }
        *lock(&self.inner.pending) = None;
        None
    }

    /// Places a new order, and remembers it for the attempts after this one.
    async fn new_order(
        &self,
        account: &Account,
        replacing: Option<&CertBundle>,
    ) -> Result<instant_acme::Order, Failure> {
        let identifiers: Vec<Identifier> = self
            .inner
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let replaces = replacing.and_then(|b| CertificateIdentifier::try_from(&b.chain()[0]).ok());
        let new_order = |replacing: bool| {
            let mut new = NewOrder::new(&identifiers);
            if let Some(profile) = &self.inner.config.profile {
                new = new.profile(profile);
            }
            match (&replaces, replacing) {
                (Some(id), true) => new.replaces(id.clone()),
                _ => new,
            }
        };
        // `replaces` only where the CA gave renewal advice (it has ARI).
        let ari = lock(&self.inner.advice).is_some();
        let order = match step!(self, CREATING_ORDER, account.new_order(&new_order(ari))) {
            // The old certificate was replaced already (by another replica,
            // or an order lost in a crash): order without `replaces`.
            Err(failure) if failure.already_replaced() => {
                step!(self, CREATING_ORDER, account.new_order(&new_order(false)))?
            }
            other => other?,
        };
        *lock(&self.inner.pending) = Some(PendingOrder {
            url: order.url().to_owned(),
            key_pem: None,
        });
        Ok(order)
    }

    /// Answers the challenge of every authorization still pending, and
    /// tells the CA to validate those it has not started on. An answer is
    /// installed again on a resumed order (the attempt before took its own
    /// down), but the CA is not asked twice.
    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        cleanup: &mut Cleanup,
    ) -> Result<(), Failure> {
        let mut refused = 0;
        // Fetching an authorization the CA refuses for its nonce starts the
        // walk over (those fetched already are not fetched again).
        'walk: loop {
            let mut authorizations = order.authorizations();
            loop {
                let next = self
                    .step("fetching an authorization", async {
                        authorizations.next().await.transpose()
                    })
                    .await;
                let mut authorization = match next {
                    Ok(Some(authorization)) => authorization,
                    Ok(None) => return Ok(()),
                    Err(failure) if failure.bad_nonce() && refused < BAD_NONCE_RETRIES => {
                        refused += 1;
                        continue 'walk;
                    }
                    Err(failure) => return Err(failure),
                };
                match authorization.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        let why = format!("the authorization is {other:?}");
                        return Err(Failure::unexpected("validating the names", why));
                    }
                }
                let kind = match &self.inner.config.challenge {
                    Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                    Challenge::Http01(_) => ChallengeType::Http01,
                    Challenge::Dns01(_) => ChallengeType::Dns01,
                };
                let mut challenge = authorization.challenge(kind.clone()).ok_or_else(|| {
                    let why = format!("the CA offers no {kind:?} challenge");
                    Failure::unexpected("validating the names", why)
                })?;
                let domain = match challenge.identifier().identifier {
                    Identifier::Dns(name) => name.clone(),
                    other => {
                        let why = format!("cannot answer for identifier {other:?}");
                        return Err(Failure::unexpected("validating the names", why));
                    }
                };
                if cleanup.answered(&challenge.url) {
                    continue;
                }
                let key_authorization = challenge.key_authorization();
                match &self.inner.config.challenge {
                    Challenge::TlsAlpn01 => {
                        let store = lock(&self.inner.attached).clone().ok_or_else(|| {
                            Failure::unexpected("answering TLS-ALPN-01", "its answers are served by the store of the rotator running this source, and none runs it")
                        })?;
                        let key = alpn_certificate(&domain, key_authorization.digest().as_ref())?;
                        store.set_challenge(&domain, key);
                        cleanup.push(&challenge.url, Undo::TlsAlpn01(store.clone(), domain));
                    }
                    Challenge::Http01(responder) => {
                        responder.insert(&challenge.token, key_authorization.as_str());
                        let undo = Undo::Http01(responder.clone(), challenge.token.clone());
                        cleanup.push(&challenge.url, undo);
                    }
                    Challenge::Dns01(solver) => {
                        let value = key_authorization.dns_value();
                        self.step(
                            "publishing the DNS-01 record",
                            solver.present(&domain, &value),
                        )
                        .await?;
                        cleanup.push(&challenge.url, Undo::Dns01(solver.clone(), domain, value));
                    }
                }
                if challenge.status == ChallengeStatus::Pending {
                    step!(self, "answering the challenge", challenge.set_ready())?;
                }
            }
        }
    }

    /// Waits for the CA to validate, finalizes (unless a resumed order was
    /// finalized already), and downloads the certificate.
    async fn finish(&self, order: &mut instant_acme::Order) -> Result<CertBundle, Failure> {
        let retries = RetryPolicy::default().timeout(self.inner.config.timeout);
        let known_key = lock(&self.inner.pending)
            .as_ref()
            .and_then(|p| p.key_pem.clone());
        let key_pem = match (order.state().status, known_key) {
            (OrderStatus::Processing | OrderStatus::Valid, Some(key_pem)) => key_pem,
            _ => {
                let status = step!(
                    self,
                    "validating the challenges",
                    order.poll_ready(&retries)
                )?;
                if status != OrderStatus::Ready {
                    *lock(&self.inner.pending) = None;
                    let why = format!("the order is {status:?}");
                    return Err(Failure::unexpected("validating the challenges", why));
                }
                let key_pem =
                    zeroize::Zeroizing::new(step!(self, "finalizing the order", order.finalize())?);
                if let Some(pending) = lock(&self.inner.pending).as_mut() {
                    pending.key_pem = Some(key_pem.clone());
                }
                key_pem
            }
        };
        let chain_pem = step!(
            self,
            "downloading the certificate",
            order.poll_certificate(&retries)
        )?;
        let combined = zeroize::Zeroizing::new(format!("{chain_pem}{}", *key_pem));
        let bundle = CertBundle::from_combined_pem(combined.as_bytes())
            .context("reading the certificate the CA issued")?;
        self.save(
            &self.inner.cert_key,
            combined.as_bytes(),
            "ACME certificate",
        )
        .await;
        tracing::info!(target: "certrotate", serial = %bundle.info().serial, "ACME certificate issued");
        Ok(bundle.with_origin(self.describe()))
    }

    /// Asks the CA when to renew `cert` (RFC 9773), and remembers a random
    /// time in the suggested window. The time is shared through the storage:
    /// an instance that finds one stored for `cert` takes it instead of
    /// asking, so that a fleet asks the CA once per certificate and agrees
    /// on when to renew.
    async fn advise(&self, cert: &CertBundle) {
        let fingerprint = &cert.info().fingerprint_sha256;
        let at = match self.shared_renewal_time(fingerprint).await {
            Some(at) => at,
            None => {
                let Some(at) = self.ask_renewal_time(cert).await else {
                    return;
                };
                tracing::info!(target: "certrotate", serial = %cert.info().serial, at = %crate::clock::rfc3339(at), "the CA advises renewal (ARI)");
                let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let shared = format!("{fingerprint} {seconds}");
                self.save(
                    &self.inner.renewal_key,
                    shared.as_bytes(),
                    "ARI renewal time",
                )
                .await;
                at
            }
        };
        *lock(&self.inner.advice) = Some(Advice {
            fingerprint: fingerprint.clone(),
            at,
            fired: false,
        });
    }

    /// The renewal time stored for the certificate with `fingerprint`.
    async fn shared_renewal_time(&self, fingerprint: &str) -> Option<SystemTime> {
        let stored = self
            .inner
            .config
            .storage
            .load(&self.inner.renewal_key)
            .await
            .ok()??;
        let (stored_for, seconds) = std::str::from_utf8(&stored).ok()?.split_once(' ')?;
        let seconds = seconds.trim().parse().ok()?;
        // Whatever is stored (a hostile or corrupt value) cannot overflow.
        (stored_for == fingerprint)
            .then(|| crate::clock::saturating_add(UNIX_EPOCH, Duration::from_secs(seconds)))
    }

    /// A random time in the renewal window the CA suggests for `cert`, to
    /// the second; none if the CA has no renewal information.
    async fn ask_renewal_time(&self, cert: &CertBundle) -> Option<SystemTime> {
        let account = self.account(false).await.ok()?;
        let id = CertificateIdentifier::try_from(&cert.chain()[0]).ok()?;
        let (info, _) = tokio::time::timeout(self.inner.config.timeout, account.renewal_info(&id))
            .await
            .ok()?
            .ok()?;
        let (start, end): (SystemTime, SystemTime) = (
            info.suggested_window.start.into(),
            info.suggested_window.end.into(),
        );
        let span = end.duration_since(start).unwrap_or_default();
        let at = crate::clock::saturating_add(start, span.mul_f64(fastrand::f64()));
        let seconds = at.duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(crate::clock::saturating_add(
            UNIX_EPOCH,
            Duration::from_secs(seconds),
        ))
    }
}

/// instant-acme's HTTP client (hyper + rustls, the platform's roots or the
/// configured one), noting the `Retry-After` of error responses, which
/// instant-acme's errors do not carry, so that the rotator can honour it.
#[derive(Clone)]
struct NotingClient {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        instant_acme::BodyWrapper<bytes::Bytes>,
    >,
    retry_after: Arc<Mutex<Option<Duration>>>,
    clock: Arc<dyn Clock>,
}

impl NotingClient {
    /// A client trusting the CA certificates of the PEM file `root` (read
    /// off the runtime), else the platform's.
    async fn new(
        root: Option<&std::path::Path>,
        retry_after: Arc<Mutex<Option<Duration>>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Failure> {
        const WHAT: &str = "setting up the connection to the CA";
        let builder = rustls::ClientConfig::builder_with_provider(crate::default_provider())
            .with_safe_default_protocol_versions()
            .context(WHAT)?;
        let tls = match root {
            Some(path) => {
                let what = format!("reading the CA's root certificates {}", path.display());
                let path = path.to_owned();
                let pem = crate::sync::blocking(move || crate::read::small(&path))
                    .await
                    .and_then(|read| read)
                    .context(what.clone())?;
                let roots = crate::mtls::root_store_from_pem(&pem).context(what)?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => rustls_platform_verifier::BuilderVerifierExt::with_platform_verifier(builder)
                .context(WHAT)?
                .with_no_client_auth(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(Self {
            inner,
            retry_after,
            clock,
        })
    }
}

impl instant_acme::HttpClient for NotingClient {
    fn request(
        &self,
        request: axum::http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> BoxFuture<'static, Result<instant_acme::BytesResponse, instant_acme::Error>> {
        let response = instant_acme::HttpClient::request(&self.inner, request);
        let noted = self.retry_after.clone();
        let now = self.clock.now();
        Box::pin(async move {
            let response = response.await?;
            if response.parts.status.is_client_error() || response.parts.status.is_server_error() {
                if let Some(wait) = retry_after(&response.parts.headers, now) {
                    *lock(&noted) = Some(wait);
                }
            }
            Ok(response)
        })
    }
}

/// A `Retry-After` header's wait: seconds, or an HTTP date.
fn retry_after(headers: &axum::http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(axum::http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// Where ACME state goes unless the builder says otherwise.
fn default_storage_dir() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(state) = var("STATE_DIRECTORY") {
        return state.join("acme");
    }
    var("XDG_STATE_HOME")
        .or_else(|| var("HOME").map(|home| home.join(".local/state")))
        .map(|state| state.join("certrotate/acme"))
        .unwrap_or_else(|| PathBuf::from("certrotate-acme"))
}

/// How long a `rateLimited` problem asks to wait: the time in its detail
/// (Let's Encrypt writes "retry after 2026-01-02 03:04:05 UTC"), else a
/// minute.
fn rate_limit_wait(failure: &Failure, now: SystemTime) -> Option<Duration> {
    if failure.problem() != Some("rateLimited") {
        return None;
    }
    let Cause::Acme(error) = &failure.cause else {
        return None;
    };
    let instant_acme::Error::Api(problem) = &**error else {
        return None;
    };
    let until = problem.detail.as_deref().and_then(|detail| {
        let at = detail.to_ascii_lowercase().find("retry after ")? + "retry after ".len();
        utc_stamp(detail.get(at..at + 19)?)
    });
    let wait = until.and_then(|until| until.duration_since(now).ok());
    Some(wait.unwrap_or(Duration::from_secs(60)))
}

/// Parses `YYYY-MM-DD HH:MM:SS` as UTC.
fn utc_stamp(stamp: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let at = time::PrimitiveDateTime::parse(stamp, format).ok()?;
    Some(at.assume_utc().into())
}

/// The renewal lock while this instance orders under it: its saves are
/// fenced by it, and it is released however the order ends. Dropped without
/// [`release`](Self::release) (the rotator's fetch timeout dropped the
/// attempt), it lets go in a task of its own, so that neither a stale lease
/// fences later saves nor the other instances wait for it to run out.
struct Holding {
    source: AcmeSource,
    lease: Option<Lease>,
}

impl Holding {
    fn new(source: &AcmeSource, lease: Lease) -> Self {
        *lock(&source.inner.lease) = Some(lease.clone());
        Self {
            source: source.clone(),
            lease: Some(lease),
        }
    }

    async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            unlock(&self.source, &lease).await;
        }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        // Not held any more, whatever the storage says.
        lock(&self.source.inner.lease).take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let source = self.source.clone();
            runtime.spawn(async move { unlock(&source, &lease).await });
        }
    }
}

/// Stops fencing saves with `lease` and releases it.
async fn unlock(source: &AcmeSource, lease: &Lease) {
    lock(&source.inner.lease).take();
    if let Err(error) = source.inner.config.storage.unlock(lease).await {
        tracing::warn!(target: "certrotate", "could not release the renewal lock (it expires by itself): {error}");
    }
}

/// What an attempt must take down when it ends: the answers it installed,
/// by challenge URL. Dropped without [`run`](Self::run) (the rotator's fetch
/// timeout dropped the attempt), it takes them down in a task of its own.
#[derive(Default)]
struct Cleanup {
    undos: Vec<(String, Undo)>,
}

impl Cleanup {
    fn push(&mut self, challenge: &str, undo: Undo) {
        self.undos.push((challenge.to_owned(), undo));
    }

    /// Whether this attempt answered the challenge at `url` already.
    fn answered(&self, url: &str) -> bool {
        self.undos.iter().any(|(answered, _)| answered == url)
    }

    async fn run(mut self) {
        for (_, undo) in std::mem::take(&mut self.undos) {
            undo.run().await;
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let undos = std::mem::take(&mut self.undos);
        if undos.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left: nothing can serve the answers either.
            return;
        };
        tracing::debug!(target: "certrotate", "an ACME attempt was dropped mid-order; taking its challenge answers down");
        runtime.spawn(async move {
            for (_, undo) in undos {
                undo.run().await;
            }
        });
    }
}

enum Undo {
    TlsAlpn01(CertStore, String),
    Http01(Http01Responder, String),
    Dns01(Arc<dyn Dns01Solver>, String, String),
}

impl Undo {
    async fn run(self) {
        match self {
            Self::TlsAlpn01(store, domain) => store.remove_challenge(&domain),
            Self::Http01(responder, token) => responder.remove(&token),
            Self::Dns01(solver, domain, value) => {
                if let Err(e) = solver.cleanup(&domain, &value).await {
                    tracing::warn!(target: "certrotate", %domain, "DNS-01 cleanup failed: {e}");
                }
            }
        }
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge: the
/// name being validated, and the key authorization's digest in the
/// `acmeIdentifier` extension (RFC 8737).
fn alpn_certificate(
    domain: &str,
    digest: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, Failure> {
    const WHAT: &str = "making the TLS-ALPN-01 certificate";
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).context(WHAT)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().context(WHAT)?;
    let cert = params.self_signed(&key).context(WHAT)?;
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| Failure::unexpected(WHAT, e))?;
    let signing = crate::default_provider()
        .key_provider
        .load_private_key(der)
        .context(WHAT)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

impl CertSource for AcmeSource {
    fn renew_at(&self, cert: &CertInfo) -> Option<SystemTime> {
        Some(self.renewal_time(cert))
    }

    fn attach(&self, store: &CertStore) {
        *lock(&self.inner.attached) = Some(store.clone());
    }

    fn answers_tls_alpn_01(&self) -> bool {
        matches!(self.inner.config.challenge, Challenge::TlsAlpn01)
    }

    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        let fetched = match self.obtain().await {
            Ok(bundle) => Ok(bundle),
            Err(Trouble::Failed(error)) => Err(error),
            Err(Trouble::StorageDown(reason)) if self.may_order_alone() => {
                tracing::warn!(target: "certrotate", %reason, "the storage cannot be reached and the certificate expires soon: ordering without the renewal lock");
                let provided = lock(&self.inner.provided).clone();
                self.ordered(provided.as_ref()).await
            }
            Err(Trouble::StorageDown(reason)) => {
                Err(SourceError::unavailable(self.describe(), reason))
            }
        };
        if let Ok(bundle) = &fetched {
            *lock(&self.inner.provided) = Some(bundle.clone());
        }
        fetched
    }

    /// Completes at the renewal time the CA advised (once per advice), so
    /// that renewal follows ARI even when it comes before the rotator's own
    /// schedule; and when another instance sharing the storage stored a
    /// certificate, so that it is picked up at once.
    async fn changed(&self) {
        tokio::select! {
            () = self.advised_time() => {}
            () = self.storage_changed() => {}
        }
    }

    /// The newer of the mark kept in the storage (`served-<id>.txt`) and
    /// the one in the [state file](AcmeBuilder::state_file), if any.
    async fn high_water_mark(&self) -> Option<HighWaterMark> {
        let stored = match self.inner.config.storage.load(&self.inner.served_key).await {
            Ok(Some(text)) => String::from_utf8_lossy(&text).parse().ok(),
            _ => None,
        };
        let local = match &self.inner.config.state_file {
            Some(path) => HighWaterMark::load_file(path, &self.describe()).await,
            None => None,
        };
        [stored, local]
            .into_iter()
            .flatten()
            .max_by_key(|m| m.not_before)
    }

    async fn record_high_water_mark(&self, mark: HighWaterMark) {
        if let Some(path) = &self.inner.config.state_file {
            mark.save_file(path, &self.describe()).await;
        }
        let text = format!("{mark}\n");
        self.save(&self.inner.served_key, text.as_bytes(), "high-water mark")
            .await;
    }

    /// A stored certificate that has not expired is at hand.
    async fn at_hand(&self) -> bool {
        matches!(self.stored().await, Ok(Some(bundle)) if bundle.info().not_after > self.now())
    }

    fn describe(&self) -> String {
        format!(
            "ACME {} for {}",
            self.inner.config.directory,
            self.inner.config.domains.join(", ")
        )
    }

    fn kind(&self) -> &'static str {
        "acme"
    }

    fn warnings(&self) -> Vec<SourceWarning> {
        lock(&self.inner.unsaved).clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The parsers of what an ACME CA (or the storage) sends, for the fuzz
/// targets (`--cfg fuzzing`, set by cargo-fuzz).
#[cfg(fuzzing)]
pub mod fuzzing {
    use std::time::Duration;

    /// A `Retry-After` header value.
    pub fn retry_after(value: &[u8]) -> Option<Duration> {
        let value = axum::http::HeaderValue::from_bytes(value).ok()?;
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(axum::http::header::RETRY_AFTER, value);
        super::retry_after(&headers, std::time::SystemTime::now())
    }

    /// An ACME problem document (JSON) as the rate-limit and account
    /// recognizers read it.
    pub fn problem(json: &[u8]) -> Option<Duration> {
        let problem: instant_acme::Problem = serde_json::from_slice(json).ok()?;
        let failure = super::Failure::new(super::CREATING_ORDER, instant_acme::Error::Api(problem));
        let _ = (failure.forgotten_account(), failure.bad_nonce());
        super::rate_limit_wait(&failure, std::time::SystemTime::now())
    }

    /// Stored account credentials, as read back from a `Storage`.
    pub fn account(json: &[u8]) -> bool {
        serde_json::from_slice::<instant_acme::AccountCredentials>(json).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> AcmeSource {
        AcmeSource::builder("https://acme.invalid/directory", ["a.example"]).build()
    }

    fn cert(lifetime: Duration, age: Duration) -> CertBundle {
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        let start = SystemTime::now() - age;
        params.not_before = start.into();
        params.not_after = (start + lifetime).into();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        CertBundle::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
    }

    fn advise(source: &AcmeSource, cert: &CertBundle, at: SystemTime) {
        *lock(&source.inner.advice) = Some(Advice {
            fingerprint: cert.info().fingerprint_sha256.clone(),
            at,
            fired: false,
        });
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn without_advice_renewal_is_due_with_forty_percent_left() {
        let source = source();
        let now = SystemTime::now();
        assert!(!source.due(cert(90 * DAY, 50 * DAY).info(), now));
        assert!(source.due(cert(90 * DAY, 56 * DAY).info(), now));
    }

    #[test]
    fn advice_decides_but_not_past_the_emergency_point() {
        let source = source();
        let now = SystemTime::now();
        let young = cert(90 * DAY, 10 * DAY);
        advise(&source, &young, now - DAY); // an early renewal (say, before a revocation)
        assert!(source.due(young.info(), now));
        advise(&source, &young, now + DAY);
        assert!(!source.due(young.info(), now));
        // Advice for another certificate does not count.
        assert!(source.due(cert(90 * DAY, 60 * DAY).info(), now));
        // Advice far in the future cannot hold back an emergency.
        let dying = cert(90 * DAY, 85 * DAY);
        advise(&source, &dying, now + 30 * DAY);
        assert!(source.due(dying.info(), now));
    }

    /// A failure of `step` with the CA's problem document.
    fn problem(step: &'static str, r#type: &str, detail: &str) -> Failure {
        let problem = serde_json::json!({"type": r#type, "detail": detail});
        let error = instant_acme::Error::Api(serde_json::from_value(problem).unwrap());
        Failure::new(step, error)
    }

    #[test]
    fn rate_limits_say_how_long_to_wait() {
        let problem = |r#type: &str, detail: &str| problem(CREATING_ORDER, r#type, detail);
        let now = SystemTime::now();
        let in_an_hour = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let stamp = format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            in_an_hour.year(),
            u8::from(in_an_hour.month()),
            in_an_hour.day(),
            in_an_hour.hour(),
            in_an_hour.minute(),
            in_an_hour.second()
        );
        let limited = problem(
            "urn:ietf:params:acme:error:rateLimited",
            &format!("too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after {stamp} UTC: see https://letsencrypt.org/docs/rate-limits/"),
        );
        let wait = rate_limit_wait(&limited, now).unwrap();
        assert!(
            wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
        let vague = problem("urn:ietf:params:acme:error:rateLimited", "slow down");
        assert_eq!(rate_limit_wait(&vague, now), Some(Duration::from_secs(60)));
        let other = problem("urn:ietf:params:acme:error:badNonce", "bad nonce");
        assert_eq!(rate_limit_wait(&other, now), None);
    }

    /// Problems are told apart by their type, whatever the CA's wording
    /// (here German, with none of the English words the type names).
    #[test]
    fn a_forgotten_or_deactivated_account_is_recognised() {
        let error = |r#type: &str| format!("urn:ietf:params:acme:error:{type}");
        let unknown = problem(
            CREATING_ORDER,
            &error("accountDoesNotExist"),
            "Zu diesem Schlüssel gibt es kein Konto",
        );
        assert!(unknown.forgotten_account());
        let deactivated = problem(
            CREATING_ORDER,
            &error("unauthorized"),
            "Das Konto ist deaktiviert",
        );
        assert!(deactivated.forgotten_account());
        // `unauthorized` elsewhere (a name the CA will not validate) is not
        // about the account.
        let validating = problem("validating the names", &error("unauthorized"), "Nein");
        assert!(!validating.forgotten_account());
        let limited = problem(
            CREATING_ORDER,
            &error("rateLimited"),
            "Zu viele Konten (account) nicht autorisiert (unauthorized)",
        );
        assert!(!limited.forgotten_account());
        assert!(!limited.bad_nonce() && !limited.already_replaced());
    }

    #[test]
    fn nonce_and_replacement_problems_are_recognised_by_type() {
        let error = |r#type: &str| format!("urn:ietf:params:acme:error:{type}");
        let nonce = problem(CREATING_ORDER, &error("badNonce"), "Ungültige Einmalnummer");
        assert!(nonce.bad_nonce() && !nonce.already_replaced());
        let replaced = problem(CREATING_ORDER, &error("alreadyReplaced"), "Schon ersetzt");
        assert!(replaced.already_replaced() && !replaced.bad_nonce());
        // The English words in the text alone mean nothing.
        let worded = problem(
            CREATING_ORDER,
            &error("malformed"),
            "badNonce alreadyReplaced accountDoesNotExist rateLimited",
        );
        assert!(!worded.bad_nonce() && !worded.already_replaced());
        assert!(!worded.forgotten_account());
        assert_eq!(rate_limit_wait(&worded, SystemTime::now()), None);
        // The cause is kept, typed, as the error's source.
        let source = std::error::Error::source(&worded).unwrap();
        assert!(source.to_string().contains("badNonce alreadyReplaced"));
    }

    #[test]
    fn a_rate_limit_in_another_language_waits_a_minute() {
        let limited = problem(
            CREATING_ORDER,
            "urn:ietf:params:acme:error:rateLimited",
            "Zu viele Zertifikate, bitte später erneut versuchen",
        );
        let wait = rate_limit_wait(&limited, SystemTime::now());
        assert_eq!(wait, Some(Duration::from_secs(60)));
    }

    #[test]
    fn retry_after_headers_are_read_as_seconds_or_dates() {
        let headers = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(axum::http::header::RETRY_AFTER, value.parse().unwrap());
            headers
        };
        assert_eq!(
            retry_after(&headers("120"), SystemTime::now()),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(600));
        let wait = retry_after(&headers(&later), SystemTime::now()).unwrap();
        assert!(
            wait > Duration::from_secs(590) && wait <= Duration::from_secs(600),
            "{wait:?}"
        );
        assert_eq!(retry_after(&headers("soon"), SystemTime::now()), None);
        assert_eq!(
            retry_after(&axum::http::HeaderMap::new(), SystemTime::now()),
            None
        );
    }

    #[tokio::test]
    async fn a_renewal_time_in_storage_is_taken_for_its_certificate_only() {
        let dir = std::env::temp_dir().join(format!("certrotate-renewal-{}", fastrand::u64(..)));
        let storage = FileStorage::new(&dir);
        // The CA cannot be reached: whatever advice there is comes from storage.
        let source = AcmeSource::builder("https://acme.invalid/directory", ["a.example"])
            .storage(storage.clone())
            .build();
        let (shared, other) = (cert(DAY, Duration::ZERO), cert(DAY, Duration::ZERO));
        let at = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let stored = format!("{} 2000000000", shared.info().fingerprint_sha256);
        storage
            .store(&source.inner.renewal_key, stored.as_bytes())
            .await
            .unwrap();

        source.advise(&other).await;
        assert!(
            lock(&source.inner.advice).is_none(),
            "another certificate's time"
        );
        source.advise(&shared).await;
        let advice = lock(&source.inner.advice).as_ref().map(|a| a.at);
        assert_eq!(advice, Some(at));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A hostile or corrupt renewal time in storage (u64::MAX seconds)
    /// neither panics nor fires: it is far in the future, and the
    /// emergency point still renews the certificate.
    #[tokio::test]
    async fn a_huge_renewal_time_in_storage_does_not_panic() {
        let dir = std::env::temp_dir().join(format!("certrotate-renewal-{}", fastrand::u64(..)));
        let storage = FileStorage::new(&dir);
        let source = AcmeSource::builder("https://acme.invalid/directory", ["a.example"])
            .storage(storage.clone())
            .build();
        let bundle = cert(DAY, Duration::ZERO);
        let stored = format!("{} {}", bundle.info().fingerprint_sha256, u64::MAX);
        storage
            .store(&source.inner.renewal_key, stored.as_bytes())
            .await
            .unwrap();
        source.advise(&bundle).await;
        let at = lock(&source.inner.advice).as_ref().map(|a| a.at).unwrap();
        assert!(at > SystemTime::now() + Duration::from_secs(10 * 365 * 86400));
        assert!(!source.due(bundle.info(), SystemTime::now()));
        let late = bundle.info().not_after - Duration::from_secs(60);
        assert!(
            source.due(bundle.info(), late),
            "the emergency point still holds"
        );
        // Its wait for the advised time does not overflow either.
        let waited = tokio::time::timeout(Duration::from_millis(50), source.changed()).await;
        assert!(waited.is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn changed_fires_once_at_the_advised_time() {
        let source = source();
        advise(
            &source,
            &cert(DAY, Duration::ZERO),
            SystemTime::now() + Duration::from_secs(3600),
        );
        let started = tokio::time::Instant::now();
        source.changed().await;
        assert!(started.elapsed() >= Duration::from_secs(3599));
        // Once: the next call waits for new advice.
        let again = tokio::time::timeout(Duration::from_secs(7200), source.changed()).await;
        assert!(again.is_err());
    }
}

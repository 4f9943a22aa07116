//! [`AcmeSource`]: certificates from Let's Encrypt or any RFC 8555 CA, through
//! `instant-acme`, kept in a [`Storage`] and renewed on the CA's schedule.
//!
//! The flow of a fetch: `order` (take the renewal lock in `storage`, place or
//! resume the order), `challenge` (answer and clean up), `renewal` (when the
//! next one is due, from ARI), over `http` (the client that notes
//! `Retry-After`); `failure` keeps each step's error typed.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};

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
                Err(failure) if failure.bad_nonce() && refused < $crate::acme::BAD_NONCE_RETRIES => {
                    refused += 1;
                    tracing::debug!(target: "certrotate", step = %$what, refused, "the CA refused the nonce; sending again with a fresh one");
                }
                other => break other,
            }
        }
    }};
}

mod builder;
mod challenge;
mod failure;
mod fallback;
mod http;
mod order;
mod pace;
mod renewal;
#[cfg(feature = "rfc2136")]
#[cfg_attr(docsrs, doc(cfg(feature = "rfc2136")))]
pub mod rfc2136;
mod storage;

use builder::Challenge;
pub use builder::{AcmeBuilder, AcmeCa};
pub use challenge::{Dns01Solver, Http01Responder};
use failure::{Context, Failure};
pub use fallback::CaHealth;
use http::NotingClient;
use order::PendingOrder;
use renewal::Advice;
use storage::default_storage_dir;
use storage::Trouble;
pub use storage::{BoxFuture, FileStorage, Lease, Storage};
#[cfg(feature = "redis")]
pub use storage::{RedisBuilder, RedisStorage};

use crate::bundle::{CertBundle, CertInfo};
use crate::clock::Clock;
use crate::mark::{HighWaterMark, MarkUnreadable};
use crate::source::{CertSource, ReplayMarks, SourceError, SourceWarning, Start};
use crate::store::CertStore;
use crate::sync::lock;

/// How long one ACME step (a request, or polling an order) may take, by default.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

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
/// use certrotate::{AcmeSource, Policy, Rotator};
/// use certrotate::acme::FileStorage;
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
    /// Where each CA's account is kept, in the order of the CAs.
    account_keys: Vec<String>,
    cert_key: String,
    /// Where the renewal time is shared: `<fingerprint> <unix seconds>`.
    renewal_key: String,
    /// Where the newest certificate served is recorded (replay protection).
    served_key: String,
    /// When to renew the stored certificate, from the CA's renewal
    /// information (RFC 9773).
    advice: Mutex<Option<Advice>>,
    /// Told when new advice comes, wherever it was asked (a fetch asks in
    /// the background): the rotator plans with it at once.
    advice_came: tokio::sync::Notify,
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
    /// Whether this source is asking the CA for renewal advice now.
    advising: std::sync::atomic::AtomicBool,
    /// A certificate the CA was asked about without an answer, and until
    /// when it is not asked again.
    unadvised: Mutex<Option<(String, SystemTime)>>,
    /// Each CA's rest and last failure as this source met them, in the
    /// order of the CAs.
    turns: Mutex<Vec<fallback::Turn>>,
    /// Why the last-resort CA was last turned to.
    last_resort: Mutex<Option<String>>,
    /// This source's turn to renew, once reserved and until taken, and
    /// whether it came and found the rate used up (then kept first in line).
    renewal_turn: Mutex<Option<(tokio::time::Instant, bool)>>,
    /// The order in progress, for the next attempt to resume.
    pending: Mutex<Option<PendingOrder>>,
    /// The store of the rotator running this source: TLS-ALPN-01 answers
    /// are served from it, and its clock tells the time.
    attached: Mutex<Option<CertStore>>,
}

impl fmt::Debug for AcmeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeSource")
            .field("cas", &self.inner.config.cas)
            .field("domains", &self.inner.config.domains)
            .finish_non_exhaustive()
    }
}

impl AcmeSource {
    /// Whether a certificate is at hand: one in the storage that has not
    /// expired (a restart, or another instance of a fleet, stored it), so
    /// that a fetch gives it without an order. What a rotator's
    /// [`launch`](crate::rotator::RotatorBuilder::launch) waits on.
    pub async fn at_hand(&self) -> bool {
        matches!(self.stored().await, Ok(Some(bundle)) if bundle.info().not_after > self.now())
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
            cas: vec![AcmeCa::new(directory)],
            domains: domains.into_iter().map(Into::into).collect(),
            challenge: Challenge::TlsAlpn01,
            storage: Arc::new(FileStorage::new(default_storage_dir())),
            contact: Vec::new(),
            timeout: STEP_TIMEOUT,
            lock_lease: Duration::from_secs(10),
            order_alone_within: None,
            state_file: None,
            renewal_info_interval: (Duration::from_secs(60), Duration::from_secs(86_400)),
            renewal_info_pace: Arc::new(pace::Pace::new(10, Duration::from_secs(1))),
            renewal_pace: Arc::new(pace::Pace::new(60, Duration::from_secs(60))),
            #[cfg(feature = "ca")]
            last_resort: None,
        }
    }

    /// A builder with no domains yet: the template [`OnDemand`](crate::OnDemand) builds each
    /// name's source from (setting the name as its one domain).
    ///
    /// ```
    /// let acme = certrotate::AcmeSource::template("https://acme-v02.api.letsencrypt.org/directory")
    ///     .contact("mailto:ops@example.com");
    /// let on_demand = certrotate::OnDemand::builder(acme, certrotate::on_demand::AllowList::new().suffix("example.com")).build();
    /// ```
    pub fn template(directory: impl Into<String>) -> AcmeBuilder {
        Self::builder(directory, Vec::<String>::new())
    }

    /// The certificate kept in storage. A storage that cannot be read fails
    /// the attempt (ordering anyway would spend the CA's rate limits on what
    /// may well be stored); a stored certificate that does not parse is
    /// ignored, with a warning, and replaced.
    async fn stored(&self) -> Result<Option<CertBundle>, Failure> {
        let loaded = self.inner.config.storage.load(&self.inner.cert_key).await;
        let loaded = unusable_is_none(loaded, &self.inner.cert_key, "ACME certificate");
        let Some(pem) = loaded.context("cannot read the stored certificate")? else {
            return Ok(None);
        };
        // The certificate's private key is in it.
        let pem = zeroize::Zeroizing::new(pem);
        match CertBundle::from_combined_pem(&pem) {
            Ok(bundle) => Ok(Some(bundle.with_origin(self.stored_origin(&pem)))),
            Err(error) => {
                tracing::warn!(target: "certrotate", key = %self.inner.cert_key, "the stored ACME certificate is unusable, ordering a new one: {error}");
                Ok(None)
            }
        }
    }

    /// The mark kept in the storage, read within the time a mark may take.
    async fn stored_mark(&self) -> Result<Option<HighWaterMark>, MarkUnreadable> {
        let key = &self.inner.served_key;
        let load = self.inner.config.storage.load(key);
        let why = |why: String| format!("the stored {key}: {why}");
        let text = match tokio::time::timeout(crate::mark::STATE_FILE_TIMEOUT, load).await {
            Err(_) => {
                let waited = crate::clock::human(crate::mark::STATE_FILE_TIMEOUT);
                return Err(MarkUnreadable::new(why(format!(
                    "no answer within {waited}"
                ))));
            }
            // It does not decrypt, or the storage refuses it.
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
                return Err(MarkUnreadable::corrupt(why(error.to_string())));
            }
            Ok(Err(error)) => return Err(MarkUnreadable::new(why(error.to_string()))),
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(text))) => text,
        };
        String::from_utf8_lossy(&text)
            .parse()
            .map(Some)
            .map_err(|error| MarkUnreadable::corrupt(why(error)))
    }

    /// Saves `value` under `key`. A failure does not fail the attempt (what
    /// was obtained is served; throwing it away would spend the CA's rate
    /// limits again): it is logged and reported as a source warning until a
    /// later save of the same state succeeds.
    async fn save(&self, key: &str, value: &[u8], what: &str) {
        let saved = self.store_state(key, value).await;
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

    /// Stores `value` under `key`, fenced by the lease if one is held.
    async fn store_state(&self, key: &str, value: &[u8]) -> std::io::Result<()> {
        let storage = &self.inner.config.storage;
        let lease = lock(&self.inner.lease).clone();
        match &lease {
            Some(lease) => storage.store_fenced(key, value, lease).await,
            None => storage.store(key, value).await,
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

    /// The account at CA number `ca`: loaded from storage, or made (and
    /// stored).
    async fn account(&self, ca: usize, fresh: bool) -> Result<Account, Failure> {
        let (config, key) = (&self.inner.config.cas[ca], &self.inner.account_keys[ca]);
        let mut cached = config.account.lock().await;
        if let (Some(account), false) = (&*cached, fresh) {
            return Ok(account.clone());
        }
        let http = NotingClient::new(
            config.root.as_deref(),
            self.inner.rate_limited.clone(),
            self.clock(),
        )
        .await?;
        let builder = || Account::builder_with_http(Box::new(http.clone()));
        let stored = match fresh {
            true => None,
            false => {
                let loaded = self.inner.config.storage.load(key).await;
                unusable_is_none(loaded, key, "ACME account")
                    .context("reading the stored ACME account")?
            }
        };
        // The account's private key is in it.
        let stored = stored.map(zeroize::Zeroizing::new);
        let credentials = stored.as_ref().and_then(|json| {
            serde_json::from_slice::<AccountCredentials>(json)
                .inspect_err(|error| {
                    tracing::warn!(target: "certrotate", %key, "the stored ACME account is unusable, making a new one: {error}");
                })
                .ok()
        });
        let account = match credentials {
            Some(credentials) => {
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
                let eab = config
                    .eab
                    .as_ref()
                    .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
                let (account, credentials) = step!(
                    self,
                    "creating the ACME account",
                    builder().create(&new, config.directory.clone(), eab.as_ref())
                )?;
                let json = serde_json::to_vec(&credentials).context("saving the ACME account")?;
                let json = zeroize::Zeroizing::new(json);
                self.save(key, &json, "ACME account").await;
                tracing::info!(target: "certrotate", directory = %config.directory, "ACME account created");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }
}

impl CertSource for AcmeSource {
    fn renew_at(&self, cert: &CertInfo) -> Option<crate::renewal::Renewal> {
        Some(self.renewal_time(cert))
    }

    /// Answers TLS-ALPN-01 challenges from `store` (if that is its
    /// challenge), whose configs then offer `acme-tls/1`.
    ///
    /// Its first certificate is at hand when a stored one has not expired
    /// ([`at_hand`](AcmeSource::at_hand)).
    fn attach(&self, store: &CertStore) -> Start {
        if matches!(self.inner.config.challenge, Challenge::TlsAlpn01) {
            store.answer_tls_alpn_01();
        }
        *lock(&self.inner.attached) = Some(store.clone());
        let this = self.clone();
        Start::ask(async move { this.at_hand().await })
    }

    /// The storage, and the [state file](AcmeBuilder::state_file) if any.
    fn replay_marks(&self) -> Option<&dyn ReplayMarks> {
        Some(self)
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

    /// `ACME <first CA's directory> for <names>`, and how many fallback
    /// CAs there are.
    fn describe(&self) -> String {
        let cas = &self.inner.config.cas;
        match cas.len() {
            1 => self.origin(&cas[0].directory),
            n => format!(
                "{} (and {} fallback CA{})",
                self.origin(&cas[0].directory),
                n - 1,
                if n == 2 { "" } else { "s" }
            ),
        }
    }

    fn kind(&self) -> &'static str {
        "acme"
    }

    /// State that could not be saved, and each CA that failed at its
    /// last turn.
    fn warnings(&self) -> Vec<SourceWarning> {
        let mut warnings = lock(&self.inner.unsaved).clone();
        warnings.extend(self.ca_warnings());
        warnings
    }
}

/// Marks kept in the storage (`served-<id>.txt`, shared by a fleet) and in
/// the [state file](AcmeBuilder::state_file), if any.
impl ReplayMarks for AcmeSource {
    /// The newer of the mark kept in the storage (`served-<id>.txt`) and
    /// the one in the [state file](AcmeBuilder::state_file), if any. Both
    /// are read at once, each with a timeout of its own: a storage that
    /// hangs does not hide what the instance's own file says (it comes as
    /// [`MarkUnreadable::known`]).
    fn read(&self) -> BoxFuture<'_, Result<Option<HighWaterMark>, MarkUnreadable>> {
        Box::pin(async move {
            let local = async {
                match &self.inner.config.state_file {
                    Some(path) => HighWaterMark::load_file(path).await,
                    None => Ok(None),
                }
            };
            let (stored, local) = tokio::join!(self.stored_mark(), local);
            match (stored, local) {
                (Ok(stored), Ok(local)) => Ok(HighWaterMark::newest(stored, local)),
                (Err(mut error), Ok(known)) | (Ok(known), Err(mut error)) => {
                    error.known = HighWaterMark::newest(known, error.known.take());
                    Err(error)
                }
                (Err(stored), Err(local)) => Err(MarkUnreadable::new(format!(
                    "{}; {}",
                    stored.reason, local.reason
                ))),
            }
        })
    }

    /// Records `mark` in the state file and in the storage, at once, each
    /// unless it holds a newer one (another instance got further) or does
    /// not answer: a mark is never lowered. A value there that does not
    /// parse or decrypt is replaced. A place that did not answer, or could
    /// not be written, is the error (both, if both).
    fn record(&self, mark: HighWaterMark) -> BoxFuture<'_, Result<(), MarkUnreadable>> {
        Box::pin(async move {
            // A last-resort certificate is this instance's alone: recorded, it
            // would make the fleet (and this instance after a restart) refuse
            // the stored ACME certificate as older.
            let last_resort = lock(&self.inner.provided)
                .as_ref()
                .is_some_and(|p| self.is_last_resort(p.info()) && p.info().serial == mark.serial);
            if last_resort {
                return Ok(());
            }
            let local = async {
                match &self.inner.config.state_file {
                    Some(path) => mark.record_file(path).await,
                    None => Ok(()),
                }
            };
            let shared = async {
                match self.stored_mark().await {
                    Ok(Some(stored)) if stored.not_before >= mark.not_before => return Ok(()),
                    Ok(_) => {}
                    Err(error) if error.is_corrupt() => {}
                    Err(error) => return Err(error),
                }
                let key = &self.inner.served_key;
                let text = format!("{mark}\n");
                let stored = self.store_state(key, text.as_bytes()).await;
                stored.map_err(|error| {
                    MarkUnreadable::new(format!("the stored {key}: {error}")).recording()
                })
            };
            match tokio::join!(local, shared) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(error), Ok(())) | (Ok(()), Err(error)) => Err(error),
                (Err(local), Err(shared)) => Err(MarkUnreadable::new(format!(
                    "{}; {}",
                    shared.reason, local.reason
                ))),
            }
        })
    }
}

/// A stored value that the storage refuses (it does not decrypt, a
/// version is missing: [`InvalidData`](std::io::ErrorKind::InvalidData)) is
/// no value: reported, and replaced by the next write. Other errors (the
/// storage does not answer) stay errors.
fn unusable_is_none(
    loaded: std::io::Result<Option<Vec<u8>>>,
    key: &str,
    what: &str,
) -> std::io::Result<Option<Vec<u8>>> {
    match loaded {
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            tracing::warn!(target: "certrotate", %key, "the stored {what} is refused, and will be replaced: {error}");
            Ok(None)
        }
        loaded => loaded,
    }
}

/// The parsers of what an ACME CA (or the storage) sends, for the fuzz
/// targets (`--cfg fuzzing`, set by cargo-fuzz).
#[cfg(fuzzing)]
pub mod fuzzing {
    use std::time::Duration;

    /// A `Retry-After` header value.
    pub fn retry_after(value: &[u8]) -> Option<Duration> {
        let value = ::http::HeaderValue::from_bytes(value).ok()?;
        let mut headers = ::http::HeaderMap::new();
        headers.insert(::http::header::RETRY_AFTER, value);
        super::http::retry_after(&headers, std::time::SystemTime::now())
    }

    /// An ACME problem document (JSON) as the rate-limit and account
    /// recognizers read it.
    pub fn problem(json: &[u8]) -> Option<Duration> {
        let problem: instant_acme::Problem = serde_json::from_slice(json).ok()?;
        let failure = super::Failure::new(
            super::failure::Step::CreatingOrder,
            instant_acme::Error::Api(problem),
        );
        let _ = (failure.forgotten_account(), failure.bad_nonce());
        super::failure::rate_limit_wait(&failure, std::time::SystemTime::now())
    }

    /// Stored account credentials, as read back from a `Storage`.
    pub fn account(json: &[u8]) -> bool {
        serde_json::from_slice::<instant_acme::AccountCredentials>(json).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::failure::{rate_limit_wait, Step};
    use super::http::retry_after;
    use super::*;
    use std::time::UNIX_EPOCH;

    fn source() -> AcmeSource {
        AcmeSource::builder("https://acme.invalid/directory", ["a.example"]).build()
    }

    fn cert(lifetime: Duration, age: Duration) -> CertBundle {
        crate::bundle::self_signed(SystemTime::now() - age, lifetime)
            .with_origin("ACME https://acme.invalid/directory for a.example")
    }

    fn advise(source: &AcmeSource, cert: &CertBundle, at: SystemTime) {
        *lock(&source.inner.advice) = Some(Advice {
            fingerprint: cert.info().fingerprint_sha256.clone(),
            leaf: cert.chain()[0].clone(),
            ca: 0,
            at,
            window: None,
            next_poll: SystemTime::now() + 365 * DAY,
            fired: false,
            seen: true,
        });
    }

    const DAY: Duration = Duration::from_secs(86_400);

    /// Let's Encrypt's lifetimes: `shortlived` (160 hours), `tlsserver`
    /// (45 days) and `classic` (90 days, then 64 and 45). Each is renewed
    /// with 40% of it left, a fraction and not a fixed time: a rule of "30
    /// days before expiry" would renew a 6-day certificate at once, again
    /// and again.
    #[test]
    fn without_advice_renewal_is_due_with_forty_percent_left() {
        let source = source();
        let now = SystemTime::now();
        for lifetime in [
            160 * 3600 * Duration::from_secs(1),
            6 * DAY,
            45 * DAY,
            90 * DAY,
        ] {
            let renewal = lifetime.mul_f64(0.6);
            let young = cert(lifetime, renewal - lifetime / 100);
            assert!(!source.due(young.info(), now), "{lifetime:?}");
            let old = cert(lifetime, renewal + lifetime / 100);
            assert!(source.due(old.info(), now), "{lifetime:?}");
        }
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
    fn problem(step: impl Into<Step>, r#type: &str, detail: &str) -> Failure {
        let problem = serde_json::json!({"type": r#type, "detail": detail});
        let error = instant_acme::Error::Api(serde_json::from_value(problem).unwrap());
        Failure::new(step, error)
    }

    #[test]
    fn rate_limits_say_how_long_to_wait() {
        let problem = |r#type: &str, detail: &str| problem(Step::CreatingOrder, r#type, detail);
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
            Step::CreatingOrder,
            &error("accountDoesNotExist"),
            "Zu diesem Schlüssel gibt es kein Konto",
        );
        assert!(unknown.forgotten_account());
        let deactivated = problem(
            Step::CreatingOrder,
            &error("unauthorized"),
            "Das Konto ist deaktiviert",
        );
        assert!(deactivated.forgotten_account());
        // `unauthorized` elsewhere (a name the CA will not validate) is not
        // about the account.
        let validating = problem("validating the names", &error("unauthorized"), "Nein");
        assert!(!validating.forgotten_account());
        let limited = problem(
            Step::CreatingOrder,
            &error("rateLimited"),
            "Zu viele Konten (account) nicht autorisiert (unauthorized)",
        );
        assert!(!limited.forgotten_account());
        assert!(!limited.bad_nonce() && !limited.already_replaced());
    }

    #[test]
    fn nonce_and_replacement_problems_are_recognised_by_type() {
        let error = |r#type: &str| format!("urn:ietf:params:acme:error:{type}");
        let nonce = problem(
            Step::CreatingOrder,
            &error("badNonce"),
            "Ungültige Einmalnummer",
        );
        assert!(nonce.bad_nonce() && !nonce.already_replaced());
        let replaced = problem(
            Step::CreatingOrder,
            &error("alreadyReplaced"),
            "Schon ersetzt",
        );
        assert!(replaced.already_replaced() && !replaced.bad_nonce());
        // The English words in the text alone mean nothing.
        let worded = problem(
            Step::CreatingOrder,
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
            Step::CreatingOrder,
            "urn:ietf:params:acme:error:rateLimited",
            "Zu viele Zertifikate, bitte später erneut versuchen",
        );
        let wait = rate_limit_wait(&limited, SystemTime::now());
        assert_eq!(wait, Some(Duration::from_secs(60)));
    }

    #[test]
    fn retry_after_headers_are_read_as_seconds_or_dates() {
        let headers = |value: &str| {
            let mut headers = ::http::HeaderMap::new();
            headers.insert(::http::header::RETRY_AFTER, value.parse().unwrap());
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
            retry_after(&::http::HeaderMap::new(), SystemTime::now()),
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
        // New advice wakes the rotator once, to plan with it; then its wait
        // for the advised time does not overflow either.
        let woken = tokio::time::timeout(Duration::from_millis(50), source.changed()).await;
        assert!(woken.is_ok(), "new advice did not wake the rotator");
        let waited = tokio::time::timeout(Duration::from_millis(50), source.changed()).await;
        assert!(waited.is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Asking for advice cut short (a fetch that timed out) lets the next
    /// attempt ask: the source is not left thinking someone is asking.
    #[tokio::test]
    async fn advice_asked_and_dropped_midway_can_be_asked_again() {
        // A CA that takes connections and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let directory = format!("https://{}/dir", silent.local_addr().unwrap());
        let dir = std::env::temp_dir().join(format!("certrotate-advise-{}", fastrand::u64(..)));
        let source = AcmeSource::builder(&directory, ["a.example"])
            .storage(FileStorage::new(&dir))
            .build();
        let cert = cert(DAY, Duration::ZERO).with_origin(source.origin(&directory));
        let asked = tokio::time::timeout(Duration::from_millis(200), source.advise(&cert)).await;
        assert!(asked.is_err(), "the silent CA answered");
        assert!(!source
            .inner
            .advising
            .load(std::sync::atomic::Ordering::Acquire));
        let _ = std::fs::remove_dir_all(dir);
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

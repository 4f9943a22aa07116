//! [`AcmeBuilder`]: how an [`AcmeSource`] is configured.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::challenge::{Dns01Solver, Http01Responder};
use super::pace::Pace;
use super::storage::Storage;
use super::{AcmeSource, Inner};

/// How the CA checks that we control the names.
#[derive(Clone)]
pub(super) enum Challenge {
    /// Answered by the resolver of the store the source is attached to.
    TlsAlpn01,
    Http01(Http01Responder),
    Dns01(Arc<dyn Dns01Solver>),
}

/// One ACME CA an [`AcmeSource`] may order from: its directory URL, and
/// what ordering there needs (the root of its HTTPS, external account
/// binding, a profile). The first is given to
/// [`AcmeSource::builder`]; others are [fallbacks](AcmeBuilder::fallback),
/// tried in order when the ones before them fail.
///
/// ```
/// use certrotate::acme::AcmeCa;
///
/// let zerossl = AcmeCa::new("https://acme.zerossl.com/v2/DV90")
///     .external_account("kid-from-zerossl", b"hmac-key-from-zerossl");
/// # let _ = zerossl;
/// ```
#[derive(Clone)]
#[must_use]
pub struct AcmeCa {
    pub(super) directory: String,
    pub(super) root: Option<PathBuf>,
    pub(super) eab: Option<(String, Vec<u8>)>,
    pub(super) profile: Option<String>,
    /// The account at this CA, shared with the other sources built from
    /// the same template (on-demand names), so that their first orders
    /// make one.
    pub(super) account: SharedAccount,
    /// How the CA has fared, shared the same way (for
    /// [`AcmeSource::ca_health`]); a rate limit rests the CA only for the
    /// source that met it (most CA limits are per name).
    pub(super) state: Arc<Mutex<super::fallback::CaState>>,
}

/// The ACME account once loaded or made, shared by the sources of one
/// account.
pub(super) type SharedAccount = Arc<tokio::sync::Mutex<Option<instant_acme::Account>>>;

impl fmt::Debug for AcmeCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the HMAC key.
        f.debug_struct("AcmeCa")
            .field("directory", &self.directory)
            .field("root", &self.root)
            .field("external_account", &self.eab.as_ref().map(|(kid, _)| kid))
            .field("profile", &self.profile)
            .finish()
    }
}

impl AcmeCa {
    /// The CA whose ACME directory is at `directory`, trusted through the
    /// platform's roots, without external account binding or profile.
    pub fn new(directory: impl Into<String>) -> Self {
        Self {
            directory: directory.into(),
            root: None,
            eab: None,
            profile: None,
            account: SharedAccount::default(),
            state: Arc::default(),
        }
    }

    /// Trusts this PEM root for the CA's own HTTPS (Pebble, a private CA).
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

    /// Asks this CA for this certificate profile (`"shortlived"`,
    /// `"tlsserver"`), where it offers profiles.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// The directory URL.
    pub fn directory(&self) -> &str {
        &self.directory
    }
}

/// Configures an [`AcmeSource`]. Cloning it copies the configuration (the
/// storage, solvers and accounts are shared).
#[derive(Clone)]
#[must_use]
pub struct AcmeBuilder {
    /// The CAs in order of preference; never empty.
    pub(super) cas: Vec<AcmeCa>,
    pub(super) domains: Vec<String>,
    pub(super) challenge: Challenge,
    pub(super) storage: Arc<dyn Storage>,
    pub(super) contact: Vec<String>,
    pub(super) timeout: Duration,
    pub(super) lock_lease: Duration,
    pub(super) order_alone_within: Option<Duration>,
    pub(super) state_file: Option<PathBuf>,
    /// The bounds a CA's `Retry-After` for renewal information is held to.
    pub(super) renewal_info_interval: (Duration, Duration),
    /// Turns to ask for renewal information, shared by the sources built.
    pub(super) renewal_info_pace: Arc<Pace>,
    /// Turns to renew, shared by the sources built.
    pub(super) renewal_pace: Arc<Pace>,
    /// The internal CA behind every ACME CA.
    #[cfg(feature = "ca")]
    pub(super) last_resort: Option<crate::source::InternalCa>,
}

impl fmt::Debug for AcmeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeBuilder")
            .field("cas", &self.cas)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

impl AcmeBuilder {
    /// Orders from `ca` when every CA before it fails (down, hanging past
    /// the [step timeout](Self::timeout), rate-limited, refusing the names).
    /// Each attempt starts again with the first CA, so the preferred one
    /// is used again as soon as it works. Certificates are stored under the
    /// same keys whichever CA issued them, so a restart or another replica
    /// serves them as they are.
    ///
    /// ```
    /// use certrotate::acme::AcmeCa;
    /// use certrotate::AcmeSource;
    ///
    /// let source = AcmeSource::builder("https://acme-v02.api.letsencrypt.org/directory", ["api.example.com"])
    ///     .fallback(AcmeCa::new("https://acme.zerossl.com/v2/DV90").external_account("kid", b"hmac"))
    ///     .build();
    /// # let _ = source;
    /// ```
    pub fn fallback(mut self, ca: AcmeCa) -> Self {
        self.cas.push(ca);
        self
    }

    /// Answers TLS-ALPN-01 challenges (the default) from the resolver of
    /// the store the [`Rotator`](crate::Rotator) running this source fills;
    /// [`Rotator::server_config`](crate::Rotator::server_config) then offers
    /// [`ACME_TLS_ALPN`](crate::store::ACME_TLS_ALPN). The server must be reachable
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
    /// [`FileStorage`](crate::acme::FileStorage) in `$STATE_DIRECTORY/acme` under systemd, else
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

    /// Trusts this PEM root for the first CA's own HTTPS (Pebble, a
    /// private CA); see [`AcmeCa::directory_root`] for the others.
    pub fn directory_root(mut self, pem: impl Into<PathBuf>) -> Self {
        self.cas[0].root = Some(pem.into());
        self
    }

    /// External account binding at the first CA (ZeroSSL, Google, some
    /// private CAs): the key id and the HMAC key the CA gave you; see
    /// [`AcmeCa::external_account`] for the others.
    pub fn external_account(mut self, key_id: impl Into<String>, hmac_key: &[u8]) -> Self {
        self.cas[0].eab = Some((key_id.into(), hmac_key.to_vec()));
        self
    }

    /// Asks the first CA for this certificate profile (`"shortlived"`,
    /// `"tlsserver"`), where it offers profiles; see [`AcmeCa::profile`]
    /// for the others.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.cas[0].profile = Some(profile.into());
        self
    }

    /// How long each step of talking to the CA (a request, validation,
    /// issuance) may take before it counts as a failure (default 30 s): a
    /// CA that hangs is reported and retried like one that is down.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How soon after the holder of the renewal lock of a shared
    /// [`Storage`] dies (killed mid-order) another instance takes over
    /// (default 10 s, at least 3 s). The holder keeps its lease alive while it
    /// lives (a heartbeat every third of it), so an order may take far
    /// longer; only a holder that cannot reach the storage for a whole lease
    /// loses the lock, and then its writes are fenced out.
    pub fn lock_lease(mut self, lease: Duration) -> Self {
        self.lock_lease = lease.max(Duration::from_secs(3));
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
    /// and reported as [`SourceWarning::StateNotSaved`](crate::source::SourceWarning::StateNotSaved) when it fails. The
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

    /// Behind every ACME CA, this internal CA (off by default): when every
    /// ACME CA fails and nothing is served, or what is served is past its
    /// emergency point (a tenth of its lifetime left), a certificate for
    /// the names is issued here (valid 24 hours), served, and never stored.
    /// While it serves, the slot is critical
    /// ([`SourceWarning::LastResort`](crate::source::SourceWarning::LastResort)),
    /// and the ACME CAs are tried again with the rotator's backoff. Only
    /// clients that trust this CA accept it: for internal services, not
    /// for browsers.
    ///
    /// ```
    /// # fn demo() -> Result<(), certrotate::source::CaError> {
    /// let internal = certrotate::InternalCa::generate("api fallback CA")?;
    /// let source = certrotate::AcmeSource::builder("https://acme.example/dir", ["api.internal"])
    ///     .last_resort(internal)
    ///     .build();
    /// # let _ = source; Ok(()) }
    /// ```
    #[cfg(feature = "ca")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ca")))]
    pub fn last_resort(mut self, ca: crate::source::InternalCa) -> Self {
        self.last_resort = Some(ca);
        self
    }

    /// How often each certificate's renewal information (RFC 9773) is asked
    /// for again: when the CA's `Retry-After` says, but no sooner than
    /// `min` and no later than `max` (default 1 minute and 24 hours). A CA
    /// that moves a window into the past (ahead of a revocation) is
    /// followed within `max` at worst.
    pub fn renewal_info_interval(mut self, min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        self.renewal_info_interval = (min, max.max(min));
        self
    }

    /// At most this many renewal-information requests per second from all
    /// the sources this builder builds (default 10): 10,000 certificates
    /// ask within about 17 minutes, never all at once.
    pub fn renewal_info_rate(mut self, per_second: u32) -> Self {
        self.renewal_info_pace = Arc::new(Pace::new(per_second, Duration::from_secs(1)));
        self
    }

    /// At most `orders` renewals per `window` from all the sources this
    /// builder builds (default 60 per minute): when the CA moves every
    /// window into the past at once (a mass revocation), 10,000
    /// certificates are renewed at that pace instead of all at once, each
    /// waiting its turn as a rate limit (the rotator comes back then). Set
    /// it within your CA's limits. A first order for a name is not paced.
    /// The pace holds for the orders sent, not only as planned: a rotator
    /// that comes back later than its turn (its retry backoff is longer)
    /// orders when the rate allows then.
    pub fn renewals_per_window(mut self, orders: u32, window: Duration) -> Self {
        self.renewal_pace = Arc::new(Pace::new(orders, window));
        self
    }

    /// A source for `name` alone, as this template has it otherwise (the
    /// one place on-demand issuance makes its sources).
    pub(crate) fn build_for(&self, name: &str) -> AcmeSource {
        let mut template = self.clone();
        template.domains = vec![name.to_owned()];
        template.build()
    }

    /// Whether the sources it builds answer TLS-ALPN-01 (so that a
    /// server must offer `acme-tls/1`).
    pub(crate) fn answers_tls_alpn_01(&self) -> bool {
        matches!(self.challenge, Challenge::TlsAlpn01)
    }

    /// How long one step of talking to the CA (or the storage) may take.
    pub(crate) fn step_timeout(&self) -> Duration {
        self.timeout
    }

    /// Builds the source.
    pub fn build(self) -> AcmeSource {
        let mut names = self.domains.clone();
        names.sort();
        // The keys of what is kept follow the first CA (as before there
        // were fallbacks), whichever CA issues: adding or removing a
        // fallback keeps the stored certificate, changing the first CA
        // (staging to production) does not serve the old one.
        let id = crate::util::hex(&Sha256::digest(format!(
            "{}|{}",
            self.cas[0].directory,
            names.join(",")
        )));
        let account_keys = self
            .cas
            .iter()
            .map(|ca| {
                let directory = crate::util::hex(&Sha256::digest(&ca.directory));
                format!("account-{}.json", &directory[..16])
            })
            .collect();
        let storage_changes = tokio::sync::Mutex::new(self.storage.changes());
        let cas_count = self.cas.len();
        AcmeSource {
            inner: Arc::new(Inner {
                account_keys,
                cert_key: format!("cert-{}.pem", &id[..16]),
                renewal_key: format!("renewal-{}.txt", &id[..16]),
                served_key: format!("served-{}.txt", &id[..16]),
                config: self,
                advice: Mutex::new(None),
                advice_came: tokio::sync::Notify::new(),
                unsaved: Mutex::default(),
                lease: Mutex::default(),
                storage_changes,
                rate_limited: Arc::default(),
                provided: Mutex::default(),
                pending: Mutex::default(),
                renewal_turn: Mutex::default(),
                last_resort: Mutex::default(),
                advising: Default::default(),
                unadvised: Mutex::default(),
                turns: Mutex::new(vec![Default::default(); cas_count]),
                attached: Mutex::default(),
            }),
        }
    }
}

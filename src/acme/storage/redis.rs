//! [`RedisStorage`]: ACME state shared by a fleet through Redis, encrypted at
//! rest, with a lease lock whose fencing token guards writes.

use std::fmt;
use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use zeroize::Zeroizing;

use super::{BoxFuture, Lease, Storage};

/// How long one Redis command may take before it fails (Redis down, or a
/// network partition): the rotator then retries, serving what it has.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes the lock if free and hands out the next fencing token: above the
/// last one, and at least Redis's clock in microseconds, so that tokens keep
/// growing when Redis restarts empty (a counter alone would start again at
/// 1 and hand a new holder the token of the one before). Nothing planted
/// can wedge it: a lock key without an expiry, or with one further away
/// than three leases (no holder sets either), is taken over, and a fence
/// that is not a number below 2^52 counts as none.
/// Fences are compared as the decimal strings they are stored as.
const LOCK: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 or ttl > 3 * tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
local raw = redis.pcall('GET', KEYS[2])
local fence = 0
if type(raw) == 'string' then
  fence = tonumber(raw) or 0
end
if fence < 0 or fence > 4503599627370496 then
  fence = 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local token = math.max(math.floor(fence) + 1, now)
redis.call('SET', KEYS[2], string.format('%.0f', token))
return token";

/// Writes a value in place of the one the writer read (compare and set:
/// the writer chose the version from that value's authenticated content;
/// a value that is not a string counts as none), and, when a fence is
/// given (KEYS[2] not empty), only while the caller's token is the newest
/// handed out or, if Redis lost the fence, while the caller holds the lock
/// (KEYS[4], ARGV[5]); then announces the change. Returns 1 written, 0
/// fenced out, 2 the value changed since it was read (read again, retry).
const STORE_IF_UNCHANGED: &str = r"
if KEYS[2] ~= '' then
  local fence = redis.pcall('GET', KEYS[2])
  if type(fence) == 'string' then
    if fence ~= ARGV[2] then
      return 0
    end
  elseif redis.pcall('GET', KEYS[4]) ~= ARGV[5] then
    return 0
  end
end
local current = redis.pcall('GET', KEYS[1])
if type(current) ~= 'string' then
  current = ''
end
if current ~= ARGV[4] then
  return 2
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1";

/// Keeps a lease alive while its holder lives: extends it if the caller
/// still holds it; takes it back if nobody does and the fence is still the
/// caller's token, or gone (Redis lost it: restarted empty); fails if
/// someone else took it, or held it since. Returns 1 held, 0 lost.
const RENEW: &str = r"
local holder = redis.pcall('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if type(holder) ~= 'string' then
  local fence = redis.pcall('GET', KEYS[2])
  if type(fence) ~= 'string' or fence == ARGV[3] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
  end
end
return 0";

/// How many times a write is tried again when another writer changed the
/// value between its read and its write.
const WRITE_RACES: usize = 8;

/// The format mark of versioned values: `cr1`, the version in 20 ASCII
/// digits, the nonce, the ciphertext. The version is authenticated (it is
/// associated data of the ciphertext); nothing reads it before decrypting.
const VERSIONED: &[u8] = b"cr1";

/// Releases the lock only if the caller still holds it.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// [`Storage`] in Redis, shared by every replica of a server: the ACME
/// account and certificates are ordered once and used by all.
///
/// - **Encrypted at rest**: every value is sealed with AES-256-GCM under a
///   key you provide (keep it in your secret manager, never in Redis), bound
///   to its Redis key so that values cannot be swapped between keys. A reader
///   of Redis without the key learns nothing of the private keys.
/// - **Lease lock with fencing**: [`try_lock`](Storage::try_lock) is
///   `SET NX PX` plus an `INCR`ed fencing token;
///   [`store_fenced`](Storage::store_fenced) writes only while the token is
///   the newest, so a replica that stalled past its lease cannot overwrite a
///   newer result.
/// - **Connections**: `redis://` or `rediss://` (TLS, with rustls) URLs,
///   with ACL credentials in the URL (`rediss://user:password@host:6380/0`);
///   a private CA's roots and client certificates through
///   [`builder`](Self::builder).
///   Reconnects on its own; each command fails after 5 s if Redis is down,
///   and the rotator serves what it has while it retries.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let key: [u8; 32] = *b"0123456789abcdef0123456789abcdef"; // from your secret manager
/// let storage = certrotate::acme::RedisStorage::connect("redis://127.0.0.1:6379/0", key).await?;
/// let acme = certrotate::AcmeSource::builder(
///     "https://acme-v02.api.letsencrypt.org/directory",
///     ["api.example.com"],
/// )
/// .storage(storage)
/// .build();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStorage {
    redis: ConnectionManager,
    cipher: Aes256Gcm,
    prefix: String,
    /// Counts the writes announced on the change channel.
    changes: Arc<watch::Sender<u64>>,
    /// The server, without credentials, for messages.
    server: Arc<str>,
    /// The newest version read or written of each key: the next write
    /// goes above it, and a lower one read later is reported.
    versions: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// Whether values written before versions existed are refused.
    refuse_unversioned: bool,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("prefix", &self.prefix)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Configures a [`RedisStorage`]: made by [`RedisStorage::builder`].
#[must_use]
pub struct RedisBuilder {
    url: String,
    key: Zeroizing<[u8; 32]>,
    prefix: String,
    tls: Option<redis::TlsCertificates>,
    refuse_unversioned: bool,
}

impl fmt::Debug for RedisBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBuilder")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl RedisBuilder {
    /// Redis keys start with `prefix` (default `certrotate:`), so that
    /// several deployments can share one Redis. With Redis Cluster, make it
    /// a hash tag such as `{certrotate}:`: the lock, fence and value keys
    /// must share a slot.
    pub fn prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// Trusts the roots in `pem` (instead of the system's) for the server
    /// certificate of a `rediss://` URL: for Redis behind a private CA.
    pub fn root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_mut().root_cert = Some(pem.into());
        self
    }

    /// Presents this client certificate chain and key (PEM) to a
    /// `rediss://` server that requires one (`tls-auth-clients yes`).
    pub fn client_certificate(
        mut self,
        chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_mut().client_tls = Some(redis::ClientTlsConfig {
            client_cert: chain_pem.into(),
            client_key: key_pem.into(),
        });
        self
    }

    /// Refuses values in the format of before versions, which carry none
    /// (default: accepted until a versioned value of the same key was seen,
    /// refused from then on). Turn it on once every
    /// replica runs a version that writes versions: a value put back from
    /// before then is then refused from the first read.
    pub fn refuse_unversioned(mut self, refuse: bool) -> Self {
        self.refuse_unversioned = refuse;
        self
    }

    fn tls_mut(&mut self) -> &mut redis::TlsCertificates {
        self.tls.get_or_insert(redis::TlsCertificates {
            client_tls: None,
            root_cert: None,
        })
    }

    /// Connects (within 10 s), and follows the change channel from then on.
    ///
    /// Over TLS (`rediss://`), the redis crate builds its rustls config with
    /// the process-wide crypto provider. When both of this crate's provider
    /// features are on, rustls cannot pick one by itself: install one first
    /// (`rustls::crypto::CryptoProvider::install_default`), or this fails
    /// with [`io::ErrorKind::InvalidInput`] (rather than panicking in the
    /// redis crate).
    pub async fn connect(self) -> io::Result<RedisStorage> {
        let server: Arc<str> = redacted(&self.url).into();
        if needs_provider(&self.url) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("Redis at {server}: TLS needs a process-wide rustls crypto provider when both the aws-lc-rs and ring features are on; install one with rustls::crypto::CryptoProvider::install_default"),
            ));
        }
        let failed = |error| to_io(&server, error);
        let client = match self.tls {
            Some(tls) => redis::Client::build_with_tls(self.url.as_str(), tls),
            None => redis::Client::open(self.url.as_str()),
        }
        .map_err(failed)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1);
        let redis = tokio::time::timeout(
            COMMAND_TIMEOUT * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from Redis at {server}"),
            )
        })?
        .map_err(failed)?;
        let changes = Arc::new(watch::Sender::new(0));
        let channel = format!("{}changed", self.prefix);
        tokio::spawn(follow(client, channel, Arc::downgrade(&changes)));
        Ok(RedisStorage {
            redis,
            cipher: Aes256Gcm::new_from_slice(&self.key[..]).expect("a 32-byte key"),
            prefix: self.prefix,
            changes,
            server,
            versions: Arc::default(),
            refuse_unversioned: self.refuse_unversioned,
        })
    }
}

impl RedisStorage {
    /// Connects to the Redis at `url`; values are encrypted with `key`, and
    /// Redis keys start with `certrotate:`. For a private CA's `rediss://`,
    /// client certificates or another prefix, see [`builder`](Self::builder).
    pub async fn connect(url: &str, key: [u8; 32]) -> io::Result<Self> {
        Self::builder(url, key).connect().await
    }

    /// Configures the connection to the Redis at `url`, whose values are
    /// encrypted with `key`.
    ///
    /// ```no_run
    /// # async fn demo(key: [u8; 32]) -> Result<(), Box<dyn std::error::Error>> {
    /// let storage = certrotate::acme::RedisStorage::builder("rediss://certrotate:secret@redis.internal:6380/0", key)
    ///     .root_certificates(std::fs::read("/etc/redis-tls/ca.pem")?)
    ///     .prefix("{certrotate}:")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: &str, key: [u8; 32]) -> RedisBuilder {
        RedisBuilder {
            url: url.to_owned(),
            key: Zeroizing::new(key),
            prefix: "certrotate:".to_owned(),
            tls: None,
            refuse_unversioned: false,
        }
    }

    /// The Redis key of a storage key.
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The channel on which every write is announced.
    fn channel(&self) -> String {
        format!("{}changed", self.prefix)
    }

    /// `cr1` ‖ version ‖ nonce ‖ AES-256-GCM(value), with the Redis key
    /// and the version as associated data: neither can be changed without
    /// the key.
    fn seal(&self, redis_key: &str, version: u64, value: &[u8]) -> io::Result<Vec<u8>> {
        // A random 96-bit nonce from the OS generator: the fleet shares one
        // key, and a repeated nonce would leak the XOR of two values.
        let nonce: [u8; 12] = crate::random::secure()
            .map_err(|_| io::Error::other("the system's random generator failed"))?;
        let version = format!("{version:020}");
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &associated(redis_key, Some(&version)),
                },
            )
            .map_err(|_| io::Error::other("encryption failed"))?;
        Ok([VERSIONED, version.as_bytes(), &nonce[..], &sealed].concat())
    }

    /// What `sealed` holds, authenticated: a versioned value and its
    /// version, or a value written before versions existed.
    fn open(&self, redis_key: &str, sealed: &[u8]) -> io::Result<Opened> {
        let undecryptable = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the value of {redis_key} cannot be decrypted with this key (wrong key, or not written by certrotate)"),
            )
        };
        let decrypt = |nonce: &[u8], ciphertext: &[u8], version: Option<&str>| {
            self.cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &associated(redis_key, version),
                    },
                )
                .ok()
        };
        if let Some(rest) = sealed.strip_prefix(VERSIONED).filter(|r| r.len() >= 32) {
            let (version, rest) = rest.split_at(20);
            let (nonce, ciphertext) = rest.split_at(12);
            let text = std::str::from_utf8(version).ok();
            // The version is read only once the ciphertext proved it.
            let opened = text.and_then(|v| Some((decrypt(nonce, ciphertext, Some(v))?, v)));
            if let Some((value, version)) = opened {
                let version = version.parse().map_err(|_| undecryptable())?;
                return Ok(Opened::Versioned(value, version));
            }
        }
        // Written before versions: the Redis key alone as associated data.
        if sealed.len() < 12 {
            return Err(undecryptable());
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let value = decrypt(nonce, ciphertext, None).ok_or_else(undecryptable)?;
        Ok(Opened::Unversioned(value))
    }

    /// The bytes Redis holds under `redis_key`. A key of another type
    /// than a string (planted: no writer makes one) is
    /// [`InvalidData`](io::ErrorKind::InvalidData), so that it is reported
    /// and replaced.
    async fn raw(&self, redis_key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.redis.clone().get(redis_key).await {
            Ok(value) => Ok(value),
            Err(error) if error.code() == Some("WRONGTYPE") => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{redis_key} holds something other than a value written by certrotate"),
            )),
            Err(error) => Err(to_io(&self.server, error)),
        }
    }

    /// Takes note of a value read: an unversioned one is refused when the
    /// builder says so or a versioned value of the key was seen before; a
    /// version lower than one seen before is reported (Redis lost its data,
    /// or a value was put back), never refused: what is older is for the
    /// certificate's own dates to tell, not for a counter a restart resets.
    fn note_read(&self, redis_key: &str, opened: Opened) -> io::Result<Vec<u8>> {
        let mut versions = crate::sync::lock(&self.versions);
        match opened {
            Opened::Versioned(value, version) => {
                let seen = versions.insert(redis_key.to_owned(), version);
                if let Some(seen) = seen.filter(|seen| *seen > version) {
                    tracing::warn!(target: "certrotate", key = %redis_key, version, seen, "a stored value is older than one read before (Redis restarted empty, or a value was put back); certificates are judged by their own dates");
                }
                Ok(value)
            }
            Opened::Unversioned(value) => {
                let refused = if self.refuse_unversioned {
                    Some("the storage refuses values without a version")
                } else if versions.contains_key(redis_key) {
                    Some("a versioned value of this key was read or written before: an older one was put back")
                } else {
                    None
                };
                match refused {
                    Some(why) => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the value of {redis_key} has no version, refused: {why}"),
                    )),
                    None => Ok(value),
                }
            }
        }
    }

    /// Writes `value` under `key`, fenced by `lease` if given, with the
    /// version after the one in place (as its authenticated content says,
    /// and after any this storage saw): read, seal, then write only if the
    /// value in place is still the one read, else read again. A value in
    /// place that does not decrypt is replaced, and reported.
    async fn write(&self, key: &str, value: &[u8], lease: Option<&Lease>) -> io::Result<()> {
        let redis_key = self.key(key);
        let lock_key = |kind: &str| {
            lease.map_or_else(String::new, |l| self.key(&format!("{kind}:{}", l.name())))
        };
        let (fence, lock) = (lock_key("fence"), lock_key("lock"));
        let mut redis = self.redis.clone();
        for _ in 0..WRITE_RACES {
            let current = match self.raw(&redis_key).await {
                Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                    tracing::warn!(target: "certrotate", key = %redis_key, "replacing a stored value: {error}");
                    None
                }
                current => current?,
            };
            let in_place = match current.as_deref().map(|c| self.open(&redis_key, c)) {
                None | Some(Ok(Opened::Unversioned(_))) => 0,
                Some(Ok(Opened::Versioned(_, version))) => version,
                Some(Err(error)) => {
                    tracing::warn!(target: "certrotate", key = %redis_key, "replacing a stored value: {error}");
                    0
                }
            };
            let seen = crate::sync::lock(&self.versions)
                .get(&redis_key)
                .copied()
                .unwrap_or(0);
            let version = in_place.max(seen).checked_add(1).ok_or_else(|| {
                io::Error::other(format!("the version of {redis_key} is at its maximum"))
            })?;
            let sealed = self.seal(&redis_key, version, value)?;
            let written: u8 = Script::new(STORE_IF_UNCHANGED)
                .key(&redis_key)
                .key(&fence)
                .key(self.channel())
                .key(&lock)
                .arg(sealed)
                .arg(lease.map_or(0, Lease::token))
                .arg(key)
                .arg(current.unwrap_or_default())
                .arg(lease.map_or("", Lease::owner))
                .invoke_async(&mut redis)
                .await
                .map_err(|e| to_io(&self.server, e))?;
            match (written, lease) {
                (1, _) => {
                    crate::sync::lock(&self.versions).insert(redis_key, version);
                    return Ok(());
                }
                (0, Some(lease)) => return Err(lease.fenced_out()),
                // Another writer changed the value since it was read.
                _ => {}
            }
        }
        Err(io::Error::other(format!(
            "not written: the value of {redis_key} changed under {WRITE_RACES} attempts in a row"
        )))
    }
}

/// A value read from Redis, authenticated.
enum Opened {
    /// A value and its version.
    Versioned(Vec<u8>, u64),
    /// A value written before versions existed.
    Unversioned(Vec<u8>),
}

/// The associated data of a value: its Redis key, and its version.
fn associated(redis_key: &str, version: Option<&str>) -> Vec<u8> {
    match version {
        Some(version) => [redis_key.as_bytes(), b"#", version.as_bytes()].concat(),
        None => redis_key.as_bytes().to_vec(),
    }
}

impl Storage for RedisStorage {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let redis_key = self.key(key);
            let Some(sealed) = self.raw(&redis_key).await? else {
                return Ok(None);
            };
            let opened = self.open(&redis_key, &sealed)?;
            self.note_read(&redis_key, opened).map(Some)
        })
    }

    fn store<'a>(&'a self, key: &'a str, value: &'a [u8]) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(self.write(key, value, None))
    }

    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, io::Result<Option<Lease>>> {
        Box::pin(async move {
            let owner = Lease::new_owner();
            let token: u64 = Script::new(LOCK)
                .key(self.key(&format!("lock:{name}")))
                .key(self.key(&format!("fence:{name}")))
                .arg(&owner)
                .arg(lease.as_millis().max(1) as u64)
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(|e| to_io(&self.server, e))?;
            Ok((token > 0).then(|| Lease::new(name, owner, token)))
        })
    }

    fn store_fenced<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: &'a Lease,
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(self.write(key, value, Some(lease)))
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    fn renew_lock<'a>(
        &'a self,
        lease: &'a Lease,
        duration: Duration,
    ) -> BoxFuture<'a, io::Result<bool>> {
        Box::pin(async move {
            let held: u8 = Script::new(RENEW)
                .key(self.key(&format!("lock:{}", lease.name())))
                .key(self.key(&format!("fence:{}", lease.name())))
                .arg(lease.owner())
                .arg(duration.as_millis().max(1) as u64)
                .arg(lease.token())
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(|e| to_io(&self.server, e))?;
            Ok(held == 1)
        })
    }

    fn unlock<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            Script::new(UNLOCK)
                .key(self.key(&format!("lock:{}", lease.name())))
                .arg(lease.owner())
                .invoke_async::<u8>(&mut self.redis.clone())
                .await
                .map(drop)
                .map_err(|e| to_io(&self.server, e))
        })
    }
}

/// Follows the change channel while the storage lives: each message bumps
/// the counter. A lost subscription is retried every second; once it is
/// back, the counter is bumped too, as writes may have been missed.
async fn follow(client: redis::Client, channel: String, changes: Weak<watch::Sender<u64>>) {
    let mut reconnected = false;
    loop {
        if let Ok(mut pubsub) = client.get_async_pubsub().await {
            if pubsub.subscribe(&channel).await.is_ok() {
                let Some(alive) = changes.upgrade() else {
                    return;
                };
                if reconnected {
                    alive.send_modify(|n| *n += 1);
                }
                drop(alive);
                let mut messages = pubsub.on_message();
                while messages.next().await.is_some() {
                    let Some(alive) = changes.upgrade() else {
                        return;
                    };
                    alive.send_modify(|n| *n += 1);
                }
            }
        }
        if changes.strong_count() == 0 {
            return;
        }
        reconnected = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The error of a command to `server`, as I/O: timeouts and connection
/// failures keep their kind.
fn to_io(server: &str, error: redis::RedisError) -> io::Error {
    let kind = if error.is_timeout() {
        io::ErrorKind::TimedOut
    } else if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal()
    {
        io::ErrorKind::ConnectionRefused
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, format!("Redis at {server}: {error}"))
}

/// Whether connecting to `url` would need rustls to pick a process-wide
/// crypto provider it cannot pick (both provider features on, none
/// installed).
fn needs_provider(url: &str) -> bool {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    let tls = url
        .into_connection_info()
        .is_ok_and(|info| matches!(info.addr(), ConnectionAddr::TcpTls { .. }));
    tls && cfg!(all(feature = "aws-lc-rs", feature = "ring"))
        && rustls::crypto::CryptoProvider::get_default().is_none()
}

/// `url` as messages may show it: the scheme, the host and port (or the
/// socket path) and the database, read by the redis crate's own parser, so
/// that no form of credentials it accepts (`user:password@`, `?pass=`,
/// `?user=`) can appear in an error, a log line or health.
fn redacted(url: &str) -> String {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    let Ok(info) = url.into_connection_info() else {
        return "an unparsable Redis URL".to_owned();
    };
    let db = info.redis_settings().db();
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
        ConnectionAddr::Unix(path) => format!("redis+unix://{}?db={db}", path.display()),
        _ => format!("a Redis server (db {db})"),
    }
}

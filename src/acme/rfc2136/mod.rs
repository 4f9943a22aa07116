//! DNS-01 through RFC 2136 dynamic updates signed with TSIG (RFC 8945): the
//! one protocol BIND, Knot, PowerDNS, Windows DNS and most appliances all
//! speak. Feature `rfc2136`.
//!
//! [`Rfc2136Solver`] publishes each challenge value as one TXT record
//! (added and deleted alone, never the whole set, so an apex and its
//! wildcard, or concurrent orders, share a name safely), where
//! `_acme-challenge.NAME` leads: CNAMEs are followed, and the zone is the
//! one the SOA names. It returns once every authoritative server of that
//! zone (its NS set) serves the record, so a lagging secondary is waited
//! for; and it removes the record however the order ends.
//!
//! The flow of a record: `lookup` (CNAMEs, the zone, its name servers),
//! `exchange` (one signed update or one query over TCP, within a
//! deadline), then the check on each name server. The wire format and
//! TSIG are [hickory-proto]'s.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use certrotate::acme::rfc2136::{Rfc2136Solver, TsigKey};
//! use certrotate::AcmeSource;
//!
//! // The key file `tsig-keygen -a hmac-sha256 certrotate` writes, which the
//! // zone's update policy grants: `grant certrotate zonesub TXT;`.
//! let key = TsigKey::from_file("/etc/certrotate/tsig.key")?;
//! let solver = Rfc2136Solver::builder("192.0.2.53:53".parse()?, key).build();
//! let acme = AcmeSource::builder(
//!     "https://acme-v02.api.letsencrypt.org/directory",
//!     ["example.com", "*.example.com"],
//! )
//! .dns_01(solver)
//! .build();
//! # Ok(()) }
//! ```
//!
//! [hickory-proto]: https://docs.rs/hickory-proto

mod error;
mod exchange;
mod key;
mod lookup;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{update_message, Message, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, TSigner};

pub use error::{Rcode, Rfc2136Error, TsigRefusal};
pub use key::{KeyFileError, TsigAlgorithm, TsigKey};

use super::challenge::Dns01Solver;
use super::BoxFuture;
use crate::source::BoxError;
use crate::sync::lock;
use exchange::{exchange, Trouble};
use lookup::{serves, NameServer, Resolvers, Target};

/// How often the name servers are asked again while a record propagates.
const POLL: Duration = Duration::from_secs(1);
/// How long a removal that failed is tried again, in the background.
const CLEANUP_RETRY_FOR: Duration = Duration::from_secs(3600);
/// The most removals tried again in the background at once.
const MAX_RETRIED: usize = 1024;

/// A [`Dns01Solver`] that writes the challenge records with RFC 2136
/// dynamic updates, signed with a TSIG key. See the [module](self).
#[derive(Clone)]
pub struct Rfc2136Solver {
    inner: Arc<Inner>,
}

struct Inner {
    server: SocketAddr,
    key: TsigKey,
    signer: TSigner,
    resolvers: Resolvers,
    ttl: u32,
    timeout: Duration,
    propagation_timeout: Duration,
    /// Each record added (or being added), by domain and value, until it
    /// is removed.
    written: Mutex<HashMap<RecordKey, Written>>,
    /// The number of the next `present`.
    generations: AtomicU64,
    /// Removals being tried again in the background.
    retrying: AtomicUsize,
}

impl std::fmt::Debug for Rfc2136Solver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Solver")
            .field("server", &self.inner.server)
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

/// A record by the domain it proves and its value.
type RecordKey = (String, String);

fn record_key(domain: &str, value: &str) -> RecordKey {
    (
        domain.trim_end_matches('.').to_ascii_lowercase(),
        value.to_owned(),
    )
}

/// A record added (or being added), until it is removed.
#[derive(Clone)]
struct Written {
    target: Target,
    /// Which `present` wrote it last: a removal tried again in the
    /// background stops once a newer one (a resumed order sends the same
    /// value again) owns the record.
    generation: u64,
    /// Held while an update of this record is on its way, so that an add
    /// and a delete of it never cross.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Configures an [`Rfc2136Solver`].
#[derive(Debug)]
#[must_use]
pub struct Rfc2136Builder {
    server: SocketAddr,
    key: TsigKey,
    resolvers: Option<Vec<SocketAddr>>,
    pinned: HashMap<String, SocketAddr>,
    ttl: u32,
    timeout: Duration,
    propagation_timeout: Duration,
}

impl Rfc2136Solver {
    /// A solver sending updates to `server` (the zone's primary, or any
    /// server that accepts updates for it), signed with `key`.
    pub fn builder(server: SocketAddr, key: TsigKey) -> Rfc2136Builder {
        Rfc2136Builder {
            server,
            key,
            resolvers: None,
            pinned: HashMap::new(),
            ttl: 60,
            timeout: Duration::from_secs(5),
            propagation_timeout: Duration::from_secs(120),
        }
    }
}

impl Rfc2136Builder {
    /// Asks `resolver` where records go (CNAMEs, SOA, NS, addresses);
    /// given more than once, each in turn until one answers. By default the
    /// update server is asked first (it is authoritative for the zone, and
    /// has no stale cache), then the name servers of `/etc/resolv.conf`.
    ///
    /// ```
    /// # use certrotate::acme::rfc2136::{Rfc2136Solver, TsigAlgorithm, TsigKey};
    /// # let key = TsigKey::new("k", TsigAlgorithm::HmacSha256, vec![1; 32]).unwrap();
    /// let solver = Rfc2136Solver::builder("192.0.2.53:53".parse().unwrap(), key)
    ///     .resolver("192.0.2.1:53".parse().unwrap())
    ///     .build();
    /// ```
    pub fn resolver(mut self, resolver: SocketAddr) -> Self {
        self.resolvers.get_or_insert_with(Vec::new).push(resolver);
        self
    }

    /// Reaches the name server `host` of a zone's NS set at `addr`, instead
    /// of its addresses in DNS on the update server's port: for a server
    /// that this host reaches by another address (split horizon, a private
    /// network), or a test.
    pub fn name_server(mut self, host: &str, addr: SocketAddr) -> Self {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.pinned.insert(host, addr);
        self
    }

    /// The TTL of the records written (default 60 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
        self
    }

    /// How long one exchange with a DNS server may take (default 5 s): an
    /// update that gets no answer within it fails, and is removed again.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long to wait for every authoritative server to serve a record
    /// (default 2 min). The ACME step that publishes it is given this
    /// long, and a bit more.
    pub fn propagation_timeout(mut self, timeout: Duration) -> Self {
        self.propagation_timeout = timeout;
        self
    }

    /// The solver.
    pub fn build(self) -> Rfc2136Solver {
        let servers = self.resolvers.unwrap_or_else(|| {
            let mut servers = vec![self.server];
            servers.extend(system_resolvers());
            servers
        });
        let signer = self.key.signer();
        Rfc2136Solver {
            inner: Arc::new(Inner {
                server: self.server,
                resolvers: Resolvers {
                    servers,
                    timeout: self.timeout,
                    pinned: self.pinned,
                    port: self.server.port(),
                },
                key: self.key,
                signer,
                ttl: self.ttl,
                timeout: self.timeout,
                propagation_timeout: self.propagation_timeout,
                written: Mutex::new(HashMap::new()),
                generations: AtomicU64::new(0),
                retrying: AtomicUsize::new(0),
            }),
        }
    }
}

/// The name servers of `/etc/resolv.conf`, on port 53.
fn system_resolvers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The name `_acme-challenge.<domain>`, fully qualified.
fn challenge_name(domain: &str) -> Result<Name, Rfc2136Error> {
    let text = format!("_acme-challenge.{}.", domain.trim_end_matches('.'));
    Name::from_ascii(&text).map_err(|e| Rfc2136Error::Lookup {
        name: text,
        reason: e.to_string(),
    })
}

impl Rfc2136Solver {
    /// Adds the record, then waits until every name server of its zone
    /// serves it.
    async fn publish(&self, domain: &str, value: &str) -> Result<(), Rfc2136Error> {
        let name = challenge_name(domain)?;
        let target = self.target(&name).await?;
        let key = record_key(domain, value);
        // Known before the update is sent: cleanup removes it even if this
        // is cancelled while the update is on its way.
        let generation = self.inner.generations.fetch_add(1, Ordering::SeqCst);
        let turn = {
            let mut written = lock(&self.inner.written);
            let entry = written.entry(key.clone()).or_insert_with(|| Written {
                target: target.clone(),
                generation,
                turn: Arc::default(),
            });
            entry.target = target.clone();
            entry.generation = generation;
            entry.turn.clone()
        };
        let added = {
            let _turn = turn.lock().await;
            self.update(&target, value, Change::Add).await
        };
        if let Err(error) = added {
            if let Rfc2136Error::Refused { .. } = error {
                // Refused: nothing was written, nothing to remove.
                self.forget(&key, generation);
            }
            return Err(error);
        }
        let servers = self
            .inner
            .resolvers
            .name_servers(&target.zone)
            .await
            .map_err(|reason| Rfc2136Error::Lookup {
                name: target.name.to_string(),
                reason,
            })?;
        self.until_served(&target, value, servers).await
    }

    /// Removes the record `present` added for `domain` and `value`, if any;
    /// if the server cannot be reached, tries again in the background.
    async fn remove(&self, domain: &str, value: &str) -> Result<(), Rfc2136Error> {
        let key = record_key(domain, value);
        let Some(written) = lock(&self.inner.written).get(&key).cloned() else {
            // `present` failed or was cancelled before the record's place
            // was known: nothing was sent.
            return Ok(());
        };
        match self.delete(&key, &written).await {
            Ok(_) => Ok(()),
            Err(error @ Rfc2136Error::Refused { .. }) => {
                // Asking again gets the same refusal.
                self.forget(&key, written.generation);
                Err(error)
            }
            Err(error) => {
                self.retry_removal(key, written);
                Err(error)
            }
        }
    }

    /// Deletes the record `written`, unless a newer `present` wrote it
    /// again since (a resumed order sends the same value): whether it did.
    async fn delete(&self, key: &RecordKey, written: &Written) -> Result<bool, Rfc2136Error> {
        let _turn = written.turn.lock().await;
        let current = lock(&self.inner.written)
            .get(key)
            .is_some_and(|now| now.generation == written.generation);
        if !current {
            return Ok(false);
        }
        self.update(&written.target, &key.1, Change::Delete).await?;
        self.forget(key, written.generation);
        Ok(true)
    }

    /// Forgets the record written by the `present` of `generation`, unless
    /// a newer one wrote it again.
    fn forget(&self, key: &RecordKey, generation: u64) {
        let mut written = lock(&self.inner.written);
        if written.get(key).is_some_and(|w| w.generation == generation) {
            written.remove(key);
        }
    }

    /// Tries a removal that failed again in the background, with a
    /// backoff, for up to an hour (a server that was down comes back).
    fn retry_removal(&self, key: RecordKey, written: Written) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (name, zone) = (written.target.name.clone(), written.target.zone.clone());
        if self.inner.retrying.fetch_add(1, Ordering::SeqCst) >= MAX_RETRIED {
            self.inner.retrying.fetch_sub(1, Ordering::SeqCst);
            self.forget(&key, written.generation);
            tracing::error!(target: "certrotate", %name, %zone, "too many DNS-01 records wait for removal; this one is left in the zone");
            return;
        }
        let solver = self.clone();
        runtime.spawn(async move {
            let started = tokio::time::Instant::now();
            let mut wait = Duration::from_secs(1);
            loop {
                tokio::time::sleep(wait).await;
                match solver.delete(&key, &written).await {
                    Ok(true) => {
                        tracing::info!(target: "certrotate", %name, %zone, "a DNS-01 record that could not be removed before is removed");
                        break;
                    }
                    // Written again since: its new owner removes it.
                    Ok(false) => break,
                    Err(error) if started.elapsed() >= CLEANUP_RETRY_FOR => {
                        tracing::error!(target: "certrotate", %name, %zone, "a DNS-01 record could not be removed within an hour; it is left in the zone: {error}");
                        solver.forget(&key, written.generation);
                        break;
                    }
                    Err(_) => wait = (wait * 2).min(Duration::from_secs(60)),
                }
            }
            solver.inner.retrying.fetch_sub(1, Ordering::SeqCst);
        });
    }

    async fn target(&self, name: &Name) -> Result<Target, Rfc2136Error> {
        self.inner
            .resolvers
            .target(name)
            .await
            .map_err(|reason| Rfc2136Error::Lookup {
                name: name.to_string(),
                reason,
            })
    }

    /// Sends one signed update adding or deleting the single TXT record
    /// `value` at the target.
    async fn update(
        &self,
        target: &Target,
        value: &str,
        change: Change,
    ) -> Result<(), Rfc2136Error> {
        let mut record = Record::from_rdata(
            target.name.clone(),
            self.inner.ttl,
            RData::TXT(TXT::new(vec![value.to_owned()])),
        );
        record.dns_class = hickory_proto::rr::DNSClass::IN;
        let rrset = RecordSet::from(record);
        let zone = target.zone.clone();
        let message: Message = match change {
            Change::Add => update_message::append(rrset, zone, false, false),
            Change::Delete => update_message::delete_by_rdata(rrset, zone, false),
        };
        let server = self.inner.server;
        let zone = zone_text(&target.zone);
        let (answer, refusal) = exchange(
            server,
            message,
            Some(&self.inner.signer),
            self.inner.timeout,
        )
        .await
        .map_err(|trouble| match trouble {
            Trouble::NoAnswer(reason) => Rfc2136Error::NoAnswer {
                server,
                zone: zone.clone(),
                reason,
            },
            Trouble::BadAnswer(reason) => Rfc2136Error::BadAnswer {
                server,
                zone: zone.clone(),
                reason,
            },
        })?;
        if answer.response_code == ResponseCode::NoError && refusal.is_none() {
            return Ok(());
        }
        let rcode = Rcode::from_code(u16::from(answer.response_code));
        Err(Rfc2136Error::Refused {
            server,
            zone,
            rcode,
            tsig: refusal,
        })
    }

    /// Waits until each of `servers` serves the record, asking the ones
    /// that do not yet every second.
    async fn until_served(
        &self,
        target: &Target,
        value: &str,
        mut lagging: Vec<NameServer>,
    ) -> Result<(), Rfc2136Error> {
        let deadline = tokio::time::Instant::now() + self.inner.propagation_timeout;
        loop {
            let mut still = Vec::new();
            for server in lagging {
                if !serves(server.addr, &target.name, value, self.inner.timeout).await {
                    still.push(server);
                }
            }
            lagging = still;
            if lagging.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() + POLL > deadline {
                return Err(Rfc2136Error::NotPropagated {
                    name: target.name.to_string(),
                    zone: zone_text(&target.zone),
                    waited: self.inner.propagation_timeout,
                    lagging: lagging.iter().map(ToString::to_string).collect(),
                });
            }
            tracing::debug!(target: "certrotate", name = %target.name, lagging = lagging.len(), "waiting for the DNS-01 record to reach every name server");
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A zone's name as errors show it, without the final dot.
fn zone_text(zone: &Name) -> String {
    zone.to_string().trim_end_matches('.').to_owned()
}

#[derive(Clone, Copy)]
enum Change {
    Add,
    Delete,
}

impl Dns01Solver for Rfc2136Solver {
    fn present<'a>(
        &'a self,
        domain: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move { Ok(self.publish(domain, value).await?) })
    }

    fn cleanup<'a>(
        &'a self,
        domain: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move { Ok(self.remove(domain, value).await?) })
    }

    fn present_timeout(&self) -> Option<Duration> {
        // The lookups, the update, and the wait, each exchange bounded.
        Some(self.inner.propagation_timeout + 8 * self.inner.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_names_are_fully_qualified() {
        let name = challenge_name("Example.COM").unwrap();
        assert!(name.is_fqdn());
        assert_eq!(
            name,
            Name::from_ascii("_acme-challenge.example.com.").unwrap()
        );
        assert!(challenge_name("a..b").is_err());
    }

    #[test]
    fn system_resolvers_read_resolv_conf_lines() {
        // Whatever this machine's file says, each is on port 53.
        assert!(system_resolvers().iter().all(|addr| addr.port() == 53));
    }
}

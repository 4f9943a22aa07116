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
mod records;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{update_message, Message, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, TSigner};

pub use error::{Rcode, Rfc2136Error, TsigRefusal};
pub use key::{KeyFileError, TsigAlgorithm, TsigKey};

use super::challenge::Dns01Solver;
use super::BoxFuture;
use crate::source::BoxError;
use exchange::{exchange, Trouble};
use lookup::{NameServer, Resolvers, Seen, Target};
use records::{record_key, Ledger, RecordKey, Turn};

/// How often the name servers are asked again while a record propagates.
const POLL: Duration = Duration::from_secs(1);
/// How long a removal that failed is tried again, in the background.
const CLEANUP_RETRY_FOR: Duration = Duration::from_secs(3600);
/// The most removals tried again in the background at once.
const MAX_RETRIED: usize = 1024;
/// How many exchange timeouts the lookups before and after the update may
/// take together, each (CNAMEs and SOA; NS and addresses).
const LOOKUP_EXCHANGES: u32 = 6;

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
    /// The records written, or that may have been, until removed.
    records: Ledger,
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
                records: Ledger::default(),
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
        // A link-local address needs its interface, which a socket address
        // from text cannot carry: left out.
        .filter_map(|rest| rest.trim().parse().ok())
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
    /// serves it. Held from the first step, so that its `cleanup` removes
    /// whatever it may have written, however it ends.
    async fn publish(&self, domain: &str, value: &str) -> Result<(), Rfc2136Error> {
        let key = record_key(domain, value);
        self.inner.records.hold(&key);
        let name = challenge_name(domain)?;
        let lookups = self.inner.timeout.saturating_mul(LOOKUP_EXCHANGES);
        let target = self
            .within(lookups, &name, self.inner.resolvers.target(&name))
            .await?;
        self.inner.records.aim(&key, &target);
        let turn = self.inner.records.turn(&key);
        {
            let _turn = turn.lock().await;
            let before = self.inner.records.writing(&key);
            if let Err(failed) = self.update(&target, value, Change::Add).await {
                if failed.not_applied {
                    self.inner.records.not_written(&key, before);
                }
                return Err(failed.error);
            }
        }
        let servers = self
            .within(
                lookups,
                &target.name,
                self.inner.resolvers.name_servers(&target.zone),
            )
            .await?;
        self.until_served(&target, value, servers).await
    }

    /// A lookup for `name` within `budget`.
    async fn within<T>(
        &self,
        budget: Duration,
        name: &Name,
        lookup: impl std::future::Future<Output = Result<T, String>>,
    ) -> Result<T, Rfc2136Error> {
        let failed = |reason| Rfc2136Error::Lookup {
            name: name.to_string(),
            reason,
        };
        match tokio::time::timeout(budget, lookup).await {
            Ok(found) => found.map_err(failed),
            Err(_) => Err(failed(format!(
                "no answer within {}",
                crate::clock::human(budget)
            ))),
        }
    }

    /// Ends the hold of one `present`: the last one removes the record
    /// wherever it may be; a removal that fails (or is cancelled on its
    /// way) is tried again in the background.
    async fn remove(&self, domain: &str, value: &str) -> Result<(), Rfc2136Error> {
        let key = record_key(domain, value);
        let Some((places, turn)) = self.inner.records.release(&key) else {
            // Someone else holds it, or nothing was written.
            return Ok(());
        };
        let mut first_error = None;
        for place in places {
            let mut pending = Pending {
                solver: self,
                key: Some((key.clone(), place.clone(), turn.clone())),
            };
            let deleted = self.delete(&key, &place, &turn).await;
            let armed = pending.key.take();
            if let (Err(error), Some((key, place, turn))) = (deleted, armed) {
                // Even a refusal: the record is there, and a server that
                // refuses now (a frozen zone, a clock off) may not later.
                self.remove_in_background(key, place, turn);
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes the record at `place` with the record's turn held, unless a
    /// `present` holds it again.
    async fn delete(
        &self,
        key: &RecordKey,
        place: &Target,
        turn: &Turn,
    ) -> Result<(), Rfc2136Error> {
        let _turn = turn.lock().await;
        if !self.inner.records.removable(key, place) {
            return Ok(());
        }
        self.update(place, &key.1, Change::Delete)
            .await
            .map_err(|failed| failed.error)?;
        self.inner.records.removed(key, place);
        Ok(())
    }

    /// Tries a removal that failed again in the background, with a
    /// backoff, for up to an hour (a server that was down comes back),
    /// until it is done or a `present` holds the record again.
    fn remove_in_background(&self, key: RecordKey, place: Target, turn: Turn) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (name, zone) = (place.name.clone(), place.zone.clone());
        if self.inner.retrying.fetch_add(1, Ordering::SeqCst) >= MAX_RETRIED {
            self.inner.retrying.fetch_sub(1, Ordering::SeqCst);
            self.give_up(&key, &place, &turn);
            tracing::error!(target: "certrotate", %name, %zone, "too many DNS-01 records wait for removal; this one is left in the zone");
            return;
        }
        let solver = self.clone();
        runtime.spawn(async move {
            let started = tokio::time::Instant::now();
            let mut wait = Duration::from_secs(1);
            loop {
                tokio::time::sleep(wait).await;
                match solver.delete(&key, &place, &turn).await {
                    Ok(()) => {
                        tracing::info!(target: "certrotate", %name, %zone, "a DNS-01 record that could not be removed before is removed (or needed again)");
                        break;
                    }
                    Err(error) if started.elapsed() >= CLEANUP_RETRY_FOR => {
                        tracing::error!(target: "certrotate", %name, %zone, "a DNS-01 record could not be removed within an hour; it is left in the zone: {error}");
                        solver.give_up(&key, &place, &turn);
                        break;
                    }
                    Err(_) => wait = (wait * 2).min(Duration::from_secs(60)),
                }
            }
            solver.inner.retrying.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Forgets a place whose removal is given up, unless a `present` holds
    /// the record again (or holds the turn: it is tried later).
    fn give_up(&self, key: &RecordKey, place: &Target, turn: &Turn) {
        if let Ok(_turn) = turn.try_lock() {
            if self.inner.records.removable(key, place) {
                self.inner.records.removed(key, place);
            }
        }
    }

    /// Sends one signed update adding or deleting the single TXT record
    /// `value` at the target.
    async fn update(&self, target: &Target, value: &str, change: Change) -> Result<(), Failed> {
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
        let signer = Some(&self.inner.signer);
        let answer = match exchange(server, message, signer, self.inner.timeout).await {
            Ok(answer) => answer,
            Err(
                Trouble::NoAnswer(reason)
                | Trouble::NoConnection(reason)
                | Trouble::Unreachable(reason),
            ) => {
                let error = Rfc2136Error::NoAnswer {
                    server,
                    zone,
                    reason,
                };
                return Err(Failed::unknown(error));
            }
            Err(Trouble::BadAnswer(reason)) => {
                let error = Rfc2136Error::BadAnswer {
                    server,
                    zone,
                    reason,
                };
                return Err(Failed::unknown(error));
            }
        };
        let code = answer.message.response_code;
        if code == ResponseCode::NoError && answer.refusal.is_none() {
            return Ok(());
        }
        let rcode = Rcode::from_code(u16::from(code));
        // Not applied for sure: a refusal the key signed, or one of the
        // key itself (which the server cannot sign). A server failure, or
        // an unsigned refusal anyone could have sent, may have applied it.
        let refused = [
            Rcode::REFUSED,
            Rcode::NOTAUTH,
            Rcode::NOTZONE,
            Rcode::FORMERR,
            Rcode::NOTIMP,
        ]
        .contains(&rcode);
        let of_the_key = matches!(
            answer.refusal,
            Some(TsigRefusal::BadSig | TsigRefusal::BadKey | TsigRefusal::BadTime)
        );
        Err(Failed {
            not_applied: refused && (answer.verified || of_the_key),
            error: Rfc2136Error::Refused {
                server,
                zone,
                rcode,
                tsig: answer.refusal,
            },
        })
    }

    /// Waits until each of `servers` serves the record, asking those that
    /// do not yet, all at once, every second. A server serves it when an
    /// address of it does and none answers without it (an address that
    /// takes no connection, IPv6 on a host without an IPv6 route, is not
    /// waited for when another serves; one that connects and does not
    /// answer is, and so is a server that serves it nowhere).
    async fn until_served(
        &self,
        target: &Target,
        value: &str,
        mut lagging: Vec<NameServer>,
    ) -> Result<(), Rfc2136Error> {
        let started = tokio::time::Instant::now();
        let deadline = started.checked_add(self.inner.propagation_timeout);
        loop {
            let mut asked = tokio::task::JoinSet::new();
            for (index, server) in lagging.iter().enumerate() {
                for &addr in &server.addrs {
                    let (name, value) = (target.name.clone(), value.to_owned());
                    let timeout = self.inner.timeout;
                    asked.spawn(async move {
                        (index, lookup::seen(addr, &name, &value, timeout).await)
                    });
                }
            }
            let mut seen = vec![(false, false); lagging.len()];
            while let Some(joined) = asked.join_next().await {
                let Ok((index, answer)) = joined else {
                    continue;
                };
                match answer {
                    Seen::Serves => seen[index].0 = true,
                    Seen::Lacks => seen[index].1 = true,
                    Seen::Silent => {}
                }
            }
            let mut seen = seen.into_iter();
            lagging.retain(|_| !matches!(seen.next(), Some((true, false))));
            if lagging.is_empty() {
                return Ok(());
            }
            if deadline.is_some_and(|deadline| tokio::time::Instant::now() + POLL > deadline) {
                return Err(Rfc2136Error::NotPropagated {
                    name: target.name.to_string(),
                    zone: zone_text(&target.zone),
                    waited: started.elapsed(),
                    lagging: lagging.iter().map(ToString::to_string).collect(),
                });
            }
            tracing::debug!(target: "certrotate", name = %target.name, lagging = lagging.len(), "waiting for the DNS-01 record to reach every name server");
            tokio::time::sleep(POLL).await;
        }
    }
}

/// An update that failed, and whether it was surely not applied (so that
/// there is nothing to remove, or no point in asking again).
struct Failed {
    error: Rfc2136Error,
    not_applied: bool,
}

impl Failed {
    /// No answer, or none to trust: it may have been applied.
    fn unknown(error: Rfc2136Error) -> Self {
        Self {
            error,
            not_applied: false,
        }
    }
}

/// A removal on its way: dropped before it finished (the attempt that
/// cleans up was cancelled), it is tried again in the background.
struct Pending<'a> {
    solver: &'a Rfc2136Solver,
    key: Option<(RecordKey, Target, Turn)>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some((key, place, turn)) = self.key.take() {
            self.solver.remove_in_background(key, place, turn);
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
        // Two lookup budgets, the update, the wait and its last round.
        let exchanges = self.inner.timeout.saturating_mul(2 * LOOKUP_EXCHANGES + 3);
        Some(self.inner.propagation_timeout.saturating_add(exchanges))
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

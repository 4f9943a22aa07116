//! Where a challenge record goes: the CNAME chain from
//! `_acme-challenge.NAME` followed to its end, the zone of that name read
//! from its SOA (never guessed from the labels), and the zone's name
//! servers with their addresses, to check the record on each.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::exchange::{exchange, Trouble};

/// The longest CNAME chain followed (resolvers stop at 8 to 16).
const MAX_CNAMES: usize = 12;
/// The most name servers of a zone checked, and addresses of each.
const MAX_SERVERS: usize = 16;
const MAX_ADDRESSES: usize = 4;

/// Where one record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// The record's name, at the end of the CNAME chain.
    pub(super) name: Name,
    /// Its zone, as its SOA names it.
    pub(super) zone: Name,
}

/// An authoritative server of a zone, to check a record on.
#[derive(Debug, Clone)]
pub(super) struct NameServer {
    /// Its name in the zone's NS set.
    pub(super) host: String,
    /// Where it is reached (its addresses, or where it is pinned).
    pub(super) addrs: Vec<SocketAddr>,
}

impl std::fmt::Display for NameServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        write!(f, "{} ({})", self.host, addrs.join(", "))
    }
}

/// Asks the resolvers, in order, until one gives an answer it can stand
/// by: authoritative, or from a recursive resolver, `NOERROR` or
/// `NXDOMAIN`. A server that refuses (an authoritative server asked about
/// a zone it does not serve), fails or does not answer passes the question
/// on to the next.
#[derive(Debug, Clone)]
pub(super) struct Resolvers {
    pub(super) servers: Vec<SocketAddr>,
    pub(super) timeout: Duration,
    /// Where to reach the name servers named here (by lower-case name
    /// without the final dot) instead of their addresses in DNS.
    pub(super) pinned: HashMap<String, SocketAddr>,
    /// The port name servers found in DNS are asked on.
    pub(super) port: u16,
}

impl Resolvers {
    async fn ask(&self, name: &Name, kind: RecordType) -> Result<Message, String> {
        let mut failures = Vec::new();
        for &server in &self.servers {
            let mut request = Message::query();
            request.metadata.recursion_desired = true;
            request.add_query(Query::query(name.clone(), kind));
            match exchange(server, request, None, self.timeout).await {
                Ok(answer) => {
                    let answer = answer.message;
                    let usable = matches!(
                        answer.response_code,
                        ResponseCode::NoError | ResponseCode::NXDomain
                    ) && (answer.authoritative || answer.recursion_available);
                    if usable {
                        return Ok(answer);
                    }
                    failures.push(format!("{server}: {}", answer.response_code));
                }
                Err(trouble) => failures.push(format!("{server}: {trouble:?}")),
            }
        }
        Err(format!(
            "no server answered {kind} {name} ({})",
            failures.join("; ")
        ))
    }

    /// Where the record `_acme-challenge.<domain>` goes.
    pub(super) async fn target(&self, name: &Name) -> Result<Target, String> {
        let name = self.follow_cnames(name).await?;
        let answer = self.ask(&name, RecordType::SOA).await?;
        // The SOA of the name itself (it is a zone's apex), else the one in
        // the authority section of the negative answer: the zone's.
        let zone = answer
            .answers
            .iter()
            .chain(answer.authorities.iter())
            .find(|record| record.record_type() == RecordType::SOA)
            .map(|record| record.name.clone())
            .ok_or_else(|| format!("no SOA in the answer for {name}"))?;
        if zone.is_root() {
            return Err(format!("no zone below the root holds {name}"));
        }
        if !zone.zone_of(&name) {
            return Err(format!("the SOA found ({zone}) is not above {name}"));
        }
        Ok(Target { name, zone })
    }

    /// The end of the CNAME chain that starts at `name`.
    async fn follow_cnames(&self, name: &Name) -> Result<Name, String> {
        let mut seen = vec![name.clone()];
        let mut current = name.clone();
        loop {
            let answer = self.ask(&current, RecordType::TXT).await?;
            // The answer may carry the whole chain, or only its first step.
            let mut moved = false;
            while let Some(next) = answer.answers.iter().find_map(|record| match &record.data {
                RData::CNAME(target) if record.name == current => Some(target.0.clone()),
                _ => None,
            }) {
                if seen.contains(&next) || seen.len() > MAX_CNAMES {
                    return Err(format!("the CNAME chain from {name} loops or is too long"));
                }
                seen.push(next.clone());
                current = next;
                moved = true;
            }
            if !moved {
                return Ok(current);
            }
        }
    }

    /// The authoritative servers of `zone`: its NS set, each at every
    /// address it has (or where it is pinned).
    pub(super) async fn name_servers(&self, zone: &Name) -> Result<Vec<NameServer>, String> {
        let answer = self.ask(zone, RecordType::NS).await?;
        let hosts: Vec<Name> = answer
            .answers
            .iter()
            .filter(|record| record.name == *zone)
            .filter_map(|record| match &record.data {
                RData::NS(ns) => Some(ns.0.clone()),
                _ => None,
            })
            .take(MAX_SERVERS)
            .collect();
        if hosts.is_empty() {
            return Err(format!("zone {zone} has no NS records"));
        }
        let mut servers = Vec::new();
        for host in hosts {
            let key = host.to_ascii().trim_end_matches('.').to_ascii_lowercase();
            if let Some(&addr) = self.pinned.get(&key) {
                let addrs = vec![addr];
                servers.push(NameServer { host: key, addrs });
                continue;
            }
            let mut addresses = glue(&answer, &host);
            if addresses.is_empty() {
                for kind in [RecordType::A, RecordType::AAAA] {
                    if let Ok(found) = self.ask(&host, kind).await {
                        addresses.extend(glue(&found, &host));
                    }
                }
            }
            if addresses.is_empty() {
                tracing::warn!(target: "certrotate", zone = %zone, host = %key, "a name server of the zone has no address; the record is not checked there");
                continue;
            }
            addresses.sort();
            addresses.dedup();
            // Both families, as far as the bound goes.
            let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) =
                addresses.into_iter().partition(IpAddr::is_ipv4);
            let half = MAX_ADDRESSES / 2;
            let mut addresses: Vec<IpAddr> = v4.iter().take(half).copied().collect();
            addresses.extend(v6.iter().take(MAX_ADDRESSES - addresses.len()));
            addresses.extend(v4.iter().skip(half).take(MAX_ADDRESSES - addresses.len()));
            let addrs = addresses
                .into_iter()
                .map(|ip| SocketAddr::new(ip, self.port))
                .collect();
            servers.push(NameServer { host: key, addrs });
        }
        if servers.is_empty() {
            return Err(format!("no name server of zone {zone} has an address"));
        }
        Ok(servers)
    }
}

/// The addresses of `host` in `answer` (its answer or additional section).
fn glue(answer: &Message, host: &Name) -> Vec<IpAddr> {
    answer
        .answers
        .iter()
        .chain(answer.additionals.iter())
        .filter(|record| record.name == *host)
        .filter_map(|record| record.data.ip_addr())
        .collect()
}

/// What an authoritative server says of a record.
pub(super) enum Seen {
    /// It serves the record, with authority.
    Serves,
    /// It answers without the record (or without authority: a secondary
    /// that has not loaded the zone yet), answers what cannot be read, or
    /// takes the connection and does not answer.
    Lacks,
    /// No connection: it cannot be reached from here (no route, nothing
    /// listening, no connection in time). Another address of the same
    /// server may serve it; a server none of whose addresses serves the
    /// record is waited for.
    Silent,
}

/// What `server` says of `value` in the TXT records at `name`, asked
/// directly (no recursion).
pub(super) async fn seen(server: SocketAddr, name: &Name, value: &str, timeout: Duration) -> Seen {
    let mut request = Message::query();
    request.metadata.recursion_desired = false;
    request.add_query(Query::query(name.clone(), RecordType::TXT));
    let answer = match exchange(server, request, None, timeout).await {
        Ok(answer) => answer,
        // An address that cannot be reached, at once or within the timeout
        // (an IPv6 one on a host whose router says "no route" only after
        // seconds), says nothing of the record.
        Err(Trouble::Unreachable(_) | Trouble::NoConnection(_)) => return Seen::Silent,
        // One that is up and does not answer (hung, reloading the zone,
        // closing the connection), or answers garbage, is waited for: the
        // CA's resolver may ask it.
        Err(Trouble::NoAnswer(_) | Trouble::BadAnswer(_)) => return Seen::Lacks,
    };
    let answer = answer.message;
    let serves = answer.authoritative
        && answer.response_code == ResponseCode::NoError
        && answer.answers.iter().any(|record| {
            record.name == *name && matches!(&record.data, RData::TXT(txt) if txt_is(txt, value))
        });
    match serves {
        true => Seen::Serves,
        false => Seen::Lacks,
    }
}

/// Whether a TXT record holds exactly `value` (one string, or strings that
/// join to it).
pub(super) fn txt_is(txt: &hickory_proto::rr::rdata::TXT, value: &str) -> bool {
    let joined: Vec<u8> = txt
        .txt_data
        .iter()
        .flat_map(|part| part.iter().copied())
        .collect();
    joined == value.as_bytes()
}

//! Which handshakes a [`TlsListener`](super::TlsListener) takes on: nested
//! shares per client group, and shedding when full.
//!
//! A connection counts against every group its address is in, finest
//! first: an IPv4 address and its /24; an IPv6 /64 (what one host usually
//! has), its /56 and its /48. Each group has a share of the handshakes in
//! flight (a multiple of the per-client share), so that one host, one
//! subnet or one customer's allocation cannot take them all. When all are
//! taken, a newcomer that would not be heavier than the heaviest client
//! takes the place of that client's newest handshake (which is closed): a
//! flood from many addresses cannot keep a well-behaved client out.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use tokio::task::{AbortHandle, Id};

/// An address prefix handshakes count against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Group {
    prefix: IpAddr,
    bits: u8,
}

/// The groups `ip` is in (prefix, length), finest first, each with its
/// share as a multiple of one client's: the listener's shares and
/// on-demand's budgets per client count them alike.
#[cfg(feature = "acme")]
pub(crate) fn client_groups(ip: IpAddr) -> Vec<((IpAddr, u8), usize)> {
    groups(ip)
        .into_iter()
        .map(|(group, share)| ((group.prefix, group.bits), share))
        .collect()
}

/// The groups `ip` is in, finest first, each with its share as a multiple of
/// the per-client share.
fn groups(ip: IpAddr) -> Vec<(Group, usize)> {
    let group = |prefix: IpAddr, bits| Group { prefix, bits };
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            vec![
                (group(IpAddr::V4(v4), 32), 1),
                (group(IpAddr::V4((bits & !0xff).into()), 24), 4),
            ]
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let masked = |keep: u32| IpAddr::V6((bits & !(u128::MAX >> keep)).into());
            vec![
                (group(masked(64), 64), 1),
                (group(masked(56), 56), 2),
                (group(masked(48), 48), 4),
            ]
        }
    }
}

/// What to do with a new connection.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Take it on.
    Admit,
    /// Take it on, and close this handshake of the heaviest client.
    AdmitShedding(AbortHandle),
    /// Close it at once, for this reason.
    Refuse(String),
}

/// The handshakes in flight, by group.
#[derive(Debug)]
pub(super) struct Admission {
    max: usize,
    per_client: usize,
    in_flight: usize,
    /// Handshakes in flight per group (groups with none are not kept).
    counts: HashMap<Group, usize>,
    /// Per client (finest group), its handshakes in flight with the order
    /// they started in, oldest first.
    clients: HashMap<Group, Vec<(u64, AbortHandle)>>,
    /// Clients by handshakes in flight, then by how long they have held
    /// their oldest place (the longest first among equals): the last is
    /// the one to shed from. Ties never fall on an address's rank.
    load: BTreeSet<(usize, Reverse<u64>, Group)>,
    /// Handshakes started so far.
    started: u64,
    /// The address each handshake counts against.
    tasks: HashMap<Id, IpAddr>,
}

impl Admission {
    pub(super) fn new(max: usize, per_client: usize) -> Self {
        Self {
            max,
            per_client,
            in_flight: 0,
            counts: HashMap::new(),
            clients: HashMap::new(),
            load: BTreeSet::new(),
            started: 0,
            tasks: HashMap::new(),
        }
    }

    /// Handshakes in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a connection from `ip` may start a handshake.
    pub(super) fn admit(&self, ip: IpAddr) -> Verdict {
        let groups = groups(ip);
        for (group, share) in &groups {
            let limit = self.per_client.saturating_mul(*share).min(self.max);
            if self.counts.get(group).copied().unwrap_or(0) >= limit {
                return Verdict::Refuse(format!(
                    "{limit} handshakes from {}/{} in flight already",
                    group.prefix, group.bits
                ));
            }
        }
        if self.in_flight < self.max {
            return Verdict::Admit;
        }
        let mine = self.clients.get(&groups[0].0).map_or(0, Vec::len) + 1;
        // Shed only for a newcomer no heavier than the heaviest would be.
        let heaviest = self.load.last().filter(|(load, ..)| *load >= mine);
        match heaviest.and_then(|(.., client)| self.clients.get(client)?.last()) {
            Some((_, newest)) => Verdict::AdmitShedding(newest.clone()),
            None => Verdict::Refuse(format!("{} handshakes in flight already", self.max)),
        }
    }

    /// A handshake of `ip` started, as the task `handle` runs.
    pub(super) fn started(&mut self, ip: IpAddr, handle: AbortHandle) {
        let groups = groups(ip);
        for (group, _) in &groups {
            *self.counts.entry(*group).or_default() += 1;
        }
        let client = groups[0].0;
        self.started += 1;
        let handles = self.clients.entry(client).or_default();
        if let Some(key) = load_key(client, handles) {
            self.load.remove(&key);
        }
        self.tasks.insert(handle.id(), ip);
        handles.push((self.started, handle));
        self.load.extend(load_key(client, handles));
        self.in_flight += 1;
    }

    /// The handshake task `id` ended (done, failed, panicked or closed).
    pub(super) fn finished(&mut self, id: Id) {
        let Some(ip) = self.tasks.remove(&id) else {
            return;
        };
        let groups = groups(ip);
        for (group, _) in &groups {
            if let Some(count) = self.counts.get_mut(group) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(group);
                }
            }
        }
        let client = groups[0].0;
        if let Some(handles) = self.clients.get_mut(&client) {
            if let Some(key) = load_key(client, handles) {
                self.load.remove(&key);
            }
            handles.retain(|(_, h)| h.id() != id);
            match load_key(client, handles) {
                Some(key) => {
                    self.load.insert(key);
                }
                None => {
                    self.clients.remove(&client);
                }
            }
        }
        self.in_flight -= 1;
    }
}

/// Where `client`, with `handles` in flight, ranks for shedding.
fn load_key(client: Group, handles: &[(u64, AbortHandle)]) -> Option<(usize, Reverse<u64>, Group)> {
    let (oldest, _) = handles.first()?;
    Some((handles.len(), Reverse(*oldest), client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_fall_in_nested_groups() {
        let v4 = groups("192.0.2.77".parse().unwrap());
        assert_eq!(v4[0].0.prefix, "192.0.2.77".parse::<IpAddr>().unwrap());
        assert_eq!(v4[1].0.prefix, "192.0.2.0".parse::<IpAddr>().unwrap());
        let v6 = groups("2001:db8:aa:bbcc:1:2:3:4".parse().unwrap());
        let prefixes: Vec<String> = v6
            .iter()
            .map(|(g, _)| format!("{}/{}", g.prefix, g.bits))
            .collect();
        assert_eq!(
            prefixes,
            [
                "2001:db8:aa:bbcc::/64",
                "2001:db8:aa:bb00::/56",
                "2001:db8:aa::/48"
            ]
        );
        // An IPv4-mapped IPv6 address is its IPv4 address.
        let mapped = groups("::ffff:192.0.2.77".parse().unwrap());
        assert_eq!(mapped[0].0, v4[0].0);
    }

    #[tokio::test]
    async fn when_full_the_client_holding_a_place_longest_is_shed_whatever_its_address() {
        let pending = || tokio::spawn(std::future::pending::<()>()).abort_handle();
        let mut admission = Admission::new(2, 1);
        let (early, late): (IpAddr, IpAddr) =
            ("2001:db8::1".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let first = pending();
        admission.started(early, first.clone());
        admission.started(late, pending());
        // Both hold one place; a newcomer sheds the one that held it longest
        // (not the one whose address sorts last).
        let Verdict::AdmitShedding(shed) = admission.admit("192.0.2.9".parse().unwrap()) else {
            panic!("not shed");
        };
        assert_eq!(shed.id(), first.id());
        admission.finished(shed.id());
        assert_eq!(admission.in_flight(), 1);
        // A client at its share is refused, however full.
        assert!(matches!(admission.admit(late), Verdict::Refuse(_)));
    }
}

//! The store's name index against a plain model: after every install,
//! rollback and removal (random, seeded), every name resolves to what the
//! documented rule says — the oldest serving slot claiming the exact name,
//! else the oldest claiming `*.` one label up, else the `default` slot, else
//! the oldest serving slot. Enough names to make the sharded view grow
//! several times while the slots change under it.

mod common;

use std::collections::BTreeMap;
use std::time::SystemTime;

use certrotate::policy::ValidatedCert;
use certrotate::{CertStore, Policy};
use common::{Ca, Leaf};

/// A small deterministic generator (xorshift): the test is repeatable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The model: slots in creation order, each with the names it serves and
/// the leaf's DER, plus the good certificates kept for rollback.
/// A certificate as the model sees it: its names and its leaf's DER.
type Cert = (Vec<String>, Vec<u8>);

#[derive(Default)]
struct Model {
    /// Slot, serving certificate, older ones (most recent first).
    slots: Vec<(String, Option<Cert>, Vec<Cert>)>,
}

impl Model {
    fn serving(&self) -> impl Iterator<Item = (&str, &Vec<String>, &Vec<u8>)> {
        self.slots
            .iter()
            .filter_map(|(slot, cur, _)| cur.as_ref().map(|(n, d)| (slot.as_str(), n, d)))
    }

    fn expect(&self, sni: &str) -> Option<Vec<u8>> {
        let covers = |pattern: &str| {
            self.serving()
                .find(|(_, names, _)| names.iter().any(|n| n == pattern))
                .map(|(_, _, der)| der.clone())
        };
        covers(sni)
            .or_else(|| covers(&format!("*.{}", sni.split_once('.')?.1)))
            .or_else(|| {
                self.serving()
                    .find(|(slot, _, _)| *slot == "default")
                    .or_else(|| self.serving().next())
                    .map(|(_, _, der)| der.clone())
            })
    }
}

#[test]
fn every_name_resolves_by_the_rule_through_random_changes() {
    let ca = Ca::new();
    let policy = Policy::default();
    let now = SystemTime::now();
    // 600 exact names and 40 wildcards over 40 parents; a certificate has
    // 1 to 60 of them, so slots often claim the same names.
    let exact: Vec<String> = (0..600).map(|i| format!("h{i}.p{}.test", i % 40)).collect();
    let wild: Vec<String> = (0..40).map(|i| format!("*.p{i}.test")).collect();
    let mut rng = Rng(0x5eed_cafe);
    let issue = |rng: &mut Rng| -> (Vec<String>, ValidatedCert) {
        let count = 1 + rng.below(60);
        let mut names: Vec<String> = (0..count)
            .map(|_| match rng.below(10) {
                0 => wild[rng.below(wild.len())].clone(),
                _ => exact[rng.below(exact.len())].clone(),
            })
            .collect();
        names.sort();
        names.dedup();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let bundle = ca.issue(Leaf::default().names(&refs)).bundle;
        (
            names,
            policy.validate(&bundle, now).expect("a good certificate"),
        )
    };
    let slot_names: Vec<String> = (0..40)
        .map(|i| match i {
            7 => "default".to_owned(),
            _ => format!("s{i}"),
        })
        .collect();

    let store = CertStore::builder().history(2).build();
    let resolver = store.resolver();
    let mut model = Model::default();
    let mut probes: Vec<String> = exact.clone();
    probes.extend((0..40).map(|i| format!("other.p{i}.test")));
    probes.push("nothing.example".into());

    for step in 0..400 {
        let slot = &slot_names[rng.below(slot_names.len())];
        let at = model.slots.iter().position(|(s, _, _)| s == slot);
        match rng.below(10) {
            0 | 1 => {
                assert_eq!(
                    store.remove(slot),
                    at.is_some(),
                    "step {step}: remove {slot}"
                );
                if let Some(at) = at {
                    model.slots.remove(at);
                }
            }
            2 => {
                let done = store.rollback(slot).is_ok();
                let entry = at.map(|at| &mut model.slots[at]);
                let expected = entry
                    .as_ref()
                    .is_some_and(|(_, cur, prev)| cur.is_some() && !prev.is_empty());
                assert_eq!(done, expected, "step {step}: rollback {slot}");
                if let Some((_, cur, prev)) = entry.filter(|_| done) {
                    *cur = Some(prev.remove(0));
                }
            }
            _ => {
                let (names, cert) = issue(&mut rng);
                let der = cert.certified_key().cert[0].to_vec();
                let renew_at = cert.info().renewal_time();
                store.install(slot, cert, renew_at);
                let at = at.unwrap_or_else(|| {
                    model.slots.push((slot.clone(), None, Vec::new()));
                    model.slots.len() - 1
                });
                let (_, cur, prev) = &mut model.slots[at];
                if let Some(old) = cur.replace((names, der)) {
                    prev.insert(0, old);
                    prev.truncate(1);
                }
            }
        }
        let wrong: BTreeMap<&str, (Option<usize>, Option<usize>)> = probes
            .iter()
            .filter_map(|sni| {
                let got = resolver.lookup(Some(sni)).map(|k| k.cert[0].to_vec());
                let want = model.expect(sni);
                let index = |der: &Option<Vec<u8>>| {
                    der.as_ref()
                        .and_then(|d| model.serving().position(|(_, _, x)| x == d))
                };
                (got != want).then(|| (sni.as_str(), (index(&got), index(&want))))
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "step {step}: (got, want) serving slot index {wrong:?}"
        );
        let got = resolver.lookup(None).map(|k| k.cert[0].to_vec());
        assert_eq!(got, model.expect(""), "step {step}: no SNI");
    }
}

/// The renewal time travels with the certificate: the alert level is the
/// one its installer decided from the first instant it serves, and a
/// rollback brings back the older certificate with its own time (not the
/// default rule's).
#[test]
fn alert_levels_follow_the_renewal_time_installed_and_rolled_back() {
    let ca = Ca::new();
    let policy = Policy::default();
    let now = SystemTime::now();
    let level = |store: &CertStore| store.health().certificates[0].alert;
    let store = CertStore::new();
    let day = std::time::Duration::from_secs(86_400);
    let issue = |from: SystemTime| {
        ca.issue(Leaf::default().lifetime(from, from + 90 * day))
            .bundle
    };
    let hour = std::time::Duration::from_secs(3600);

    // Young by the default rule, but due for renewal already (its source
    // said so: a CA's renewal window moved into the past).
    let first = policy.validate(&issue(now - 2 * hour), now).unwrap();
    let overdue = first.info().not_before + std::time::Duration::from_secs(60);
    store.install("s", first, overdue);
    assert_eq!(level(&store), certrotate::AlertLevel::RenewOverdue);

    let second = policy.validate(&issue(now - hour), now).unwrap();
    let renew_at = second.info().renewal_time();
    store.install("s", second, renew_at);
    assert_eq!(level(&store), certrotate::AlertLevel::Ok);
    assert_eq!(store.health().certificates[0].renew_at, renew_at);

    store.rollback("s").unwrap();
    assert_eq!(level(&store), certrotate::AlertLevel::RenewOverdue);
    assert_eq!(store.health().certificates[0].renew_at, overdue);
}

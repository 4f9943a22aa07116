//! A fleet: replicas sharing one Redis (a real redis-server) order once from
//! one ACME CA (a real Pebble) and all serve the result.
//!
//! The replicas are separate processes running the `acme` example with
//! `--redis`, as a user deploys them; one in-process check covers the
//! library on its own. Each replica is under load from a client of its own
//! for the whole test, and no handshake may fail.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certrotate::acme::RedisStorage;
use certrotate::{AcmeSource, Policy, Rotator};
use common::pebble::challtestsrv::ChallTestSrv;
use common::pebble::{client, first_certificate, Config, Pebble};
use common::redis::{Redis, KEY};
use common::{Load, TempDir};
use tokio::time::Instant;

const NAME: &str = "fleet.certrotate.test";

/// How far apart the replicas may start serving a new certificate.
const SPREAD: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_in_one_process_starting_together_share_one_order() {
    let pebble = Pebble::start(Config::default());
    let redis = Redis::start();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let storage = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
        let source = AcmeSource::builder(&pebble.directory, [NAME])
            .directory_root(&pebble.https_root)
            .storage(storage)
            .dns_01(ChallTestSrv(pebble.dns_management))
            .build();
        let policy = Policy::builder().server_name(NAME).build().unwrap();
        replicas.push(Rotator::builder(source, policy).spawn());
    }
    let mut serials = Vec::new();
    for rotator in &replicas {
        serials.push(first_certificate(rotator).await.serial.clone());
    }
    assert!(serials.iter().all(|s| *s == serials[0]), "{serials:?}");
    assert_eq!((pebble.orders(), pebble.issued()), (1, 1));
    // The CA's renewal advice is shared too, so that the replicas agree on
    // when to renew.
    assert_eq!(redis.keys("certrotate:renewal-*").len(), 1);
    for rotator in replicas {
        rotator.shutdown().await;
    }
}

/// On demand: the first handshakes for one new name, one at each of three
/// replicas at once, share one order through the storage's renewal lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_on_demand_replicas_share_one_order_for_a_new_name() {
    let pebble = Pebble::start(Config::default());
    let redis = Redis::start();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let storage = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
        let acme = AcmeSource::template(&pebble.directory)
            .directory_root(&pebble.https_root)
            .storage(storage)
            .dns_01(ChallTestSrv(pebble.dns_management));
        let allowed = certrotate::on_demand::AllowList::new().suffix("fleet.certrotate.test");
        let on_demand = certrotate::OnDemand::builder(acme, allowed).build();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = Arc::new(on_demand.server_config().unwrap());
        let listener = certrotate::TlsListener::new(tcp, config).on_demand(on_demand);
        servers.push(common::serve_listener(listener));
    }
    let trust = client(&pebble);
    let name = "customer.fleet.certrotate.test";
    let handshakes: Vec<_> = servers
        .iter()
        .map(|server| {
            let (trust, addr) = (trust.clone(), server.addr);
            tokio::spawn(async move { common::serial_seen(&trust, addr, name).await })
        })
        .collect();
    let mut serials = Vec::new();
    for handshake in handshakes {
        serials.push(handshake.await.unwrap().unwrap());
    }
    assert!(serials.iter().all(|s| *s == serials[0]), "{serials:?}");
    assert_eq!((pebble.orders(), pebble.issued()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replica_processes_renew_with_one_order_per_cycle_and_no_failed_handshake() {
    let fleet = Fleet::start(Duration::from_secs(30), 3, None).await;
    let mut serials = vec![fleet.next_certificate(&[], Duration::from_secs(60)).await];
    assert_eq!(fleet.pebble.issued(), 1, "one first order");
    let fleet = fleet.under_load();

    for cycle in 1..=3 {
        let serial = fleet
            .next_certificate(&serials, Duration::from_secs(45))
            .await;
        serials.push(serial);
        assert_eq!(fleet.pebble.issued(), 1 + cycle, "cycle {cycle}");
    }
    assert_eq!(fleet.pebble.orders(), 4, "an order that was not completed");
    fleet.finish().await;
}

/// With default settings: the holder keeps its lease alive while it lives
/// (however long the order takes, the CA hanging here), and once it is
/// killed, the lease runs out within seconds and another replica renews
/// well before expiry (the lease used to be 5 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_killed_mid_order_is_taken_over_when_its_lease_ends() {
    let fleet = Fleet::start(Duration::from_secs(60), 3, None).await;
    let first = fleet.next_certificate(&[], Duration::from_secs(60)).await;
    let expiry = fleet.expiry().await;
    let mut fleet = fleet.under_load();

    // The CA hangs from now on: whoever takes the renewal lock at the
    // renewal time hangs mid-order, holding it.
    fleet.pebble.freeze(true);
    let deadline = Instant::now() + Duration::from_secs(40);
    let holder = loop {
        if let Some(holder) = fleet.redis.lock_holder() {
            break holder;
        }
        assert!(Instant::now() < deadline, "nobody took the renewal lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid: u32 = holder.split('-').next().unwrap().parse().unwrap();
    // Hung mid-order past several leases, the holder still holds it.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        fleet.redis.lock_holder().as_deref(),
        Some(holder.as_str()),
        "a living holder lost its lease"
    );
    let killed = fleet.kill(pid).await;
    assert_eq!(
        fleet.redis.lock_holder().as_deref(),
        Some(holder.as_str()),
        "the lock outlives its holder"
    );
    fleet.pebble.freeze(false);

    // The other two: one takes the lock once the lease ends, orders, and
    // both serve the result, before the first certificate expires.
    fleet
        .next_certificate(&[first], Duration::from_secs(30))
        .await;
    assert!(Instant::now() < expiry, "renewed after expiry");
    assert_eq!(
        fleet.pebble.issued(),
        2,
        "replica {killed} was killed; still one certificate for the cycle"
    );
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_across_the_renewal_time_then_back() {
    let fleet = Fleet::start(Duration::from_secs(45), 3, None).await;
    let first = fleet.next_certificate(&[], Duration::from_secs(60)).await;
    let mut fleet = fleet.under_load();

    // Down until every replica has failed a renewal attempt on it (the
    // renewal time is 60% into the lifetime) and said so.
    fleet.redis.stop();
    let deadline = Instant::now() + Duration::from_secs(35);
    let down = format!("Redis at {}: Connection refused", fleet.redis.url());
    let mut reported = vec![false; fleet.replicas.len()];
    while !reported.iter().all(|r| *r) {
        let mut health = Vec::new();
        for (replica, reported) in fleet.replicas.iter().zip(&mut reported) {
            health.push(fleet.health(replica).await);
            *reported |= health.last().unwrap()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(&down));
        }
        assert!(
            Instant::now() < deadline,
            "Redis being down was not reported by every replica: {reported:?} {health:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fleet.pebble.issued(), 1, "a replica ordered on its own");
    assert!(fleet.replicas.iter().all(|r| r.served_last() == first));

    fleet.redis.restart();
    fleet
        .next_certificate(&[first], Duration::from_secs(20))
        .await;
    assert_eq!(fleet.pebble.issued(), 2);
    for replica in &fleet.replicas {
        assert_eq!(
            fleet.health(replica).await["last_error"],
            serde_json::Value::Null
        );
    }
    fleet.finish().await;
}

/// Redis (no persistence, the common cache setup) killed across the renewal
/// time and restarted empty, five replicas under load, after a renewal (so
/// that every replica read the certificate's value at version 2, and the
/// value written after the restart is version 1): one replica orders the
/// next certificate, every replica reads and serves it before the one
/// before expires, one issuance, no failed handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_through_redis_restarted_empty_across_the_renewal_time() {
    let fleet = Fleet::start(Duration::from_secs(40), 5, None).await;
    let first = fleet.next_certificate(&[], Duration::from_secs(60)).await;
    let mut fleet = fleet.under_load();
    let second = fleet
        .next_certificate(std::slice::from_ref(&first), Duration::from_secs(40))
        .await;
    let expiry = fleet.expiry().await;
    assert_eq!(fleet.pebble.issued(), 2);

    // Down from before the renewal time (60% into the lifetime, 24 s) until
    // past it, then back empty.
    tokio::time::sleep(Duration::from_secs(14)).await;
    fleet.redis.stop();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(fleet.replicas.iter().all(|r| r.served_last() == second));
    fleet.redis.restart_empty();

    fleet
        .next_certificate(&[first, second], Duration::from_secs(12))
        .await;
    assert!(Instant::now() < expiry, "renewed after expiry");
    assert_eq!(fleet.pebble.issued(), 3, "one issuance for the cycle");
    fleet.finish().await;
}

/// Pebble, Redis, and replicas of the `acme` example sharing them.
struct Fleet {
    pebble: Pebble,
    redis: Redis,
    replicas: Vec<Replica>,
    _dir: TempDir,
}

struct Replica {
    child: tokio::process::Child,
    /// Its admin port: the detailed health.
    admin: u16,
    addr: SocketAddr,
    /// Each certificate served (serial, when it was first served), in order.
    served: Arc<Mutex<Vec<(String, Instant)>>>,
    load: Option<Load>,
}

impl Replica {
    fn served_last(&self) -> String {
        let served = self.served.lock().unwrap();
        served.last().map(|s| s.0.clone()).unwrap_or_default()
    }
}

impl Fleet {
    /// `n` replicas against a new Pebble issuing certificates valid for
    /// `validity`, and a new Redis; renewal lock leases of `lease` seconds.
    async fn start(validity: Duration, n: usize, lease: Option<u64>) -> Self {
        let pebble = Pebble::start(Config {
            validity,
            ..Config::default()
        });
        let redis = Redis::start();
        let dir = TempDir::new("fleet");
        let key_file = dir.join("redis.key");
        let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&key_file, hex + "\n").unwrap();

        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut arg = |name: &str, value: std::ffi::OsString| {
            args.push(name.into());
            args.push(value);
        };
        arg("--directory", pebble.directory.clone().into());
        arg("--directory-root", pebble.https_root.clone().into());
        arg("--domain", NAME.into());
        arg("--listen", "127.0.0.1:0".into());
        arg("--challenge", "dns-01".into());
        arg("--challtestsrv", pebble.dns_management.to_string().into());
        arg("--redis", redis.url().into());
        arg("--redis-key-file", key_file.into());
        arg("--admin", "127.0.0.1:0".into());
        if let Some(lease) = lease {
            arg("--lock-lease", lease.to_string().into());
        }
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let mut replicas = Vec::new();
        for _ in 0..n {
            let (child, port, mut lines) = common::run_example_lines("acme", &args).await;
            let admin = common::admin_port(&mut lines).await;
            let served = Arc::new(Mutex::new(Vec::new()));
            let record = served.clone();
            tokio::spawn(async move {
                while let Some(line) = lines.recv().await {
                    if let Some(serial) = line.strip_prefix("serving ") {
                        let mut served = record.lock().unwrap();
                        served.push((serial.to_owned(), Instant::now()));
                    }
                }
            });
            replicas.push(Replica {
                child,
                admin,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                served,
                load: None,
            });
        }
        Self {
            pebble,
            redis,
            replicas,
            _dir: dir,
        }
    }

    /// Starts a client handshaking with each replica in a loop.
    fn under_load(mut self) -> Self {
        let client = client(&self.pebble);
        for replica in &mut self.replicas {
            replica.load = Some(common::load_https(&client, replica.addr, NAME, 1));
        }
        self
    }

    /// Waits until every replica serves a certificate not in `known`, checks
    /// that it is the same one everywhere, first served within SPREAD on
    /// all, and returns its serial.
    async fn next_certificate(&self, known: &[String], within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let new: Vec<Option<(String, Instant)>> = self
                .replicas
                .iter()
                .map(|r| {
                    let served = r.served.lock().unwrap();
                    served.iter().find(|s| !known.contains(&s.0)).cloned()
                })
                .collect();
            if let Some(new) = new.iter().cloned().collect::<Option<Vec<_>>>() {
                let serial = new[0].0.clone();
                assert!(new.iter().all(|n| n.0 == serial), "{new:?}");
                let first = new.iter().map(|n| n.1).min().unwrap();
                let last = new.iter().map(|n| n.1).max().unwrap();
                assert!(last - first < SPREAD, "served {:?} apart", last - first);
                return serial;
            }
            assert!(
                Instant::now() < deadline,
                "not every replica served something new within {within:?}: {new:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// When the certificate the first replica serves expires, as its
    /// health tells (to the second).
    async fn expiry(&self) -> Instant {
        let health = self.health(&self.replicas[0]).await;
        let left = health["certificates"][0]["remaining_seconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{health}"));
        Instant::now() + Duration::from_secs(left)
    }

    /// Kills (SIGKILL) the replica with process id `pid`; returns its index.
    async fn kill(&mut self, pid: u32) -> usize {
        let index = self
            .replicas
            .iter()
            .position(|r| r.child.id() == Some(pid))
            .unwrap_or_else(|| panic!("the lock holder {pid} is not a replica"));
        let mut replica = self.replicas.remove(index);
        replica.child.kill().await.unwrap();
        if let Some(load) = replica.load.take() {
            load.abandon();
        }
        index
    }

    /// A replica's detailed health report (`/certs` on its admin port).
    async fn health(&self, replica: &Replica) -> serde_json::Value {
        let body = common::get_plain(replica.admin, "/certs").await.unwrap();
        serde_json::from_str(&body).unwrap()
    }

    /// Checks that no handshake failed on any replica, and stops them.
    async fn finish(self) {
        for mut replica in self.replicas {
            let handshakes = replica.load.take().unwrap().finish().await;
            assert!(handshakes > 20, "{handshakes} handshakes");
        }
    }
}

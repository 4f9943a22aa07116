//! A fleet: replicas sharing one `RedisStorage` (a real redis-server) order
//! once from one ACME CA (a real Pebble) and all serve the result.

mod common;

use std::sync::Arc;
use std::time::Duration;

use certrotate::{AcmeSource, Policy, RedisStorage, Rotator};
use common::pebble::{client, first_certificate, ChallTestSrv, Config, Pebble};
use common::redis::{Redis, KEY};

const NAME: &str = "fleet.certrotate.test";

async fn replica(pebble: &Pebble, redis: &Redis) -> Rotator {
    replica_with(pebble, redis, Duration::from_secs(300)).await
}

async fn replica_with(pebble: &Pebble, redis: &Redis, lease: Duration) -> Rotator {
    let storage = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    let source = AcmeSource::builder(&pebble.directory, [NAME])
        .directory_root(&pebble.https_root)
        .storage(storage)
        // DNS-01: any replica can answer for the fleet.
        .dns_01(ChallTestSrv(pebble.dns_management))
        .lock_lease(lease)
        .build();
    let policy = Policy::builder().server_name(NAME).build().unwrap();
    Rotator::builder(source, policy).spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_starting_together_share_one_order() {
    let pebble = Pebble::start(Config::default());
    let redis = Redis::start();
    let replicas = vec![
        replica(&pebble, &redis).await,
        replica(&pebble, &redis).await,
        replica(&pebble, &redis).await,
    ];
    let mut serials = Vec::new();
    for rotator in &replicas {
        serials.push(first_certificate(rotator).await.serial.clone());
    }
    // Each order yields a new serial: one serial is one order.
    assert!(serials.iter().all(|s| *s == serials[0]), "{serials:?}");
    for rotator in replicas {
        rotator.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_renew_with_one_order_per_cycle_and_no_failed_handshake() {
    let pebble = Pebble::start(Config {
        validity: Duration::from_secs(30),
        ..Config::default()
    });
    let redis = Redis::start();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let rotator = replica(&pebble, &redis).await;
        let cert = first_certificate(&rotator).await;
        let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
        let load = common::load(&client(&pebble), server.addr, NAME, 1);
        replicas.push((rotator, server, load, cert));
    }
    let first = replicas[0].3.serial.clone();
    assert!(
        replicas.iter().all(|r| r.3.serial == first),
        "one first order"
    );

    // Three renewal cycles: each time every replica moves to the same new
    // certificate, within seconds of the others.
    let mut serials = vec![first];
    let mut events: Vec<_> = replicas.iter().map(|r| r.0.subscribe()).collect();
    for cycle in 1..=3 {
        let mut seen = Vec::new();
        for events in &mut events {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
            let new = loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Ok(certrotate::RotationEvent::Rotated { new, .. })) => break new,
                    Ok(_) => continue,
                    Err(_) => panic!("cycle {cycle}: a replica did not renew"),
                }
            };
            seen.push((new.serial.clone(), tokio::time::Instant::now()));
        }
        assert!(
            seen.iter().all(|s| s.0 == seen[0].0),
            "cycle {cycle}: {seen:?}"
        );
        let spread =
            seen.iter().map(|s| s.1).max().unwrap() - seen.iter().map(|s| s.1).min().unwrap();
        assert!(
            spread < Duration::from_secs(5),
            "cycle {cycle}: spread {spread:?}"
        );
        assert!(!serials.contains(&seen[0].0));
        serials.push(seen[0].0.clone());
    }
    for (rotator, server, load, _) in replicas {
        let handshakes = load.finish().await;
        assert!(handshakes > 50, "{handshakes} handshakes");
        drop(server);
        rotator.shutdown().await;
    }
}

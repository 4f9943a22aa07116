//! A fleet: replicas sharing one `RedisStorage` (a real redis-server) order
//! once from one ACME CA (a real Pebble) and all serve the result.

mod common;

use std::sync::Arc;
use std::time::Duration;

use certrotate::{AcmeSource, Policy, RedisStorage, Rotator};
use common::pebble::{ChallTestSrv, Config, Pebble};
use common::redis::{Redis, KEY};

const NAME: &str = "fleet.certrotate.test";

async fn replica(pebble: &Pebble, redis: &Redis) -> Rotator {
    let storage = RedisStorage::connect(&redis.url(), KEY).await.unwrap();
    let source = AcmeSource::builder(&pebble.directory, [NAME])
        .directory_root(&pebble.https_root)
        .storage(storage)
        // DNS-01: any replica can answer for the fleet.
        .dns_01(ChallTestSrv(pebble.dns_management))
        .build();
    let policy = Policy::builder().server_name(NAME).build().unwrap();
    Rotator::builder(source, policy).spawn()
}

async fn first_certificate(rotator: &Rotator) -> Arc<certrotate::CertInfo> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(cert) = rotator.current() {
            return cert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate: {:?}",
            rotator.health().last_error
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

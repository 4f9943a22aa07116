//! File-change-to-served latency: from the rename that completes a new pair
//! on disk to the first handshake that is served the new certificate.
//!
//! Three FileSources run side by side, each behind its own TLS server on
//! 127.0.0.1, and are rotated in turn (interleaved, so that machine noise
//! hits all of them alike):
//!
//! - `events, settle 250 ms`: the defaults;
//! - `events, settle 50 ms`;
//! - `poll 1 s, settle 250 ms`: no file-system events at all.
//!
//! Each rotation writes the certificate and then the key with atomic
//! renames, then handshakes back to back (fresh connections, no resumption)
//! until the new serial is served. Each change comes after a random pause of
//! up to 1 s, so that it falls anywhere in the poll period. Prints p50 / p90
//! / p99 / max per variant.
//!
//! `cargo bench --bench file_latency [-- ROTATIONS]` (default 60).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use certrotate::source::{FileOptions, WatchMode};
use certrotate::{FileSource, Policy, Rotator};
use common::{write_atomic, Ca, Issued, Leaf, TempDir, HOST};

struct Variant {
    name: &'static str,
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
    _rotator: Rotator,
    server: common::Server,
    latencies: Vec<Duration>,
}

async fn variant(name: &'static str, first: &Issued, options: FileOptions) -> Variant {
    let dir = TempDir::new("bench");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    write_atomic(&cert, &first.cert_pem);
    write_atomic(&key, &first.key_pem);
    let source = FileSource::pair(&cert, &key).options(options);
    let policy = Policy::builder().server_name(HOST).build().unwrap();
    let rotator = Rotator::builder(source, policy).start().await.unwrap();
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    // Let the watch start before the first measured change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Variant {
        name,
        _dir: dir,
        cert,
        key,
        _rotator: rotator,
        server,
        latencies: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rotations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60);
    let ca = Ca::new();
    let client = common::client_config(&ca);
    let start = SystemTime::now() - Duration::from_secs(3600);
    let leaves: Vec<Issued> = (0..=rotations as u64)
        .map(|i| ca.issue(Leaf::default().valid_from(start + Duration::from_secs(i))))
        .collect();

    let defaults = FileOptions::default().watch(WatchMode::Events);
    let mut variants = vec![
        variant("events, settle 250 ms", &leaves[0], defaults.clone()).await,
        variant(
            "events, settle 50 ms",
            &leaves[0],
            defaults.settle(Duration::from_millis(50)),
        )
        .await,
        variant(
            "poll 1 s, settle 250 ms",
            &leaves[0],
            FileOptions::default().watch(WatchMode::Poll {
                every: Duration::from_secs(1),
            }),
        )
        .await,
    ];

    eprintln!("{rotations} rotations per variant, interleaved");
    for (i, next) in leaves.iter().enumerate().skip(1) {
        for v in &mut variants {
            // A random phase, so that changes do not line up with the poll.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
            write_atomic(&v.cert, &next.cert_pem);
            write_atomic(&v.key, &next.key_pem);
            let changed = Instant::now();
            let serial = &next.bundle.info().serial;
            loop {
                let seen = common::serial_seen(&client, v.server.addr, HOST).await;
                if seen.as_deref() == Ok(serial.as_str()) {
                    break;
                }
                assert!(
                    changed.elapsed() < Duration::from_secs(30),
                    "{}: not rotated",
                    v.name
                );
            }
            v.latencies.push(changed.elapsed());
        }
        if i % 10 == 0 {
            eprintln!("  {i}/{rotations}");
        }
    }

    println!("| variant | rotations | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    for v in &mut variants {
        v.latencies.sort();
        let l = &v.latencies;
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            v.name,
            l.len(),
            ms(percentile(l, 50.0)),
            ms(percentile(l, 90.0)),
            ms(percentile(l, 99.0)),
            ms(*l.last().unwrap()),
        );
    }
}

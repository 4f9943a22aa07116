//! Soak: continuous handshakes while the certificate rotates every 100 ms
//! and a candidate is refused every second, for 10 minutes. Reports failed
//! handshakes, and resident memory and open file descriptors sampled every
//! 10 s: after warm-up they must stay flat (old certificates are freed,
//! connections closed).
//!
//! `cargo bench --bench soak [-- SECONDS]` (default 600). Traffic stays on
//! 127.0.0.1.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use certrotate::source::StaticSource;
use certrotate::{Policy, Rotator};
use common::{Ca, Leaf, HOST};

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(600);
    let ca = Ca::new();
    // Each certificate starts a second after the previous one, so that none
    // is refused as a replay.
    let start = SystemTime::now() - Duration::from_secs(2 * 3600);
    let leaf = |i: u64| {
        ca.issue(Leaf::default().valid_from(start + Duration::from_secs(i)))
            .bundle
    };
    let source = StaticSource::new(leaf(0));
    let policy = Policy::builder().server_name(HOST).build().unwrap();
    let rotator = Rotator::builder(source.clone(), policy)
        .start()
        .await
        .unwrap();
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let load = common::load(&common::client_config(&ca), server.addr, HOST, 4);

    let began = Instant::now();
    let (mut rotations, mut refusals) = (0u64, 0u64);
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut i = 0u64;
    eprintln!("soak for {seconds} s");
    println!("| t (s) | rotations | refusals | resident (MiB) | open fds |");
    println!("|---:|---:|---:|---:|---:|");
    while began.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        i += 1;
        if i.is_multiple_of(10) {
            // A candidate for the wrong host: refused, the current one stays.
            source.push(ca.issue(Leaf::default().names(&["other.example"])).bundle);
            assert!(rotator.rotate_now().await.is_err());
            refusals += 1;
        }
        common::push_and_rotate(&rotator, &source, leaf(i)).await;
        rotations += 1;
        if i.is_multiple_of(100) {
            let sample = (began.elapsed().as_secs(), resident_kib(), open_fds());
            println!(
                "| {} | {rotations} | {refusals} | {:.1} | {} |",
                sample.0,
                sample.1 as f64 / 1024.0,
                sample.2
            );
            samples.push(sample);
        }
    }
    let handshakes = load.finish().await;
    // Flatness: after a one-minute warm-up, the spread of the samples.
    let warm: Vec<_> = samples.iter().filter(|s| s.0 >= 60).collect();
    let (rss_min, rss_max) = (
        warm.iter().map(|s| s.1).min().unwrap_or(0),
        warm.iter().map(|s| s.1).max().unwrap_or(0),
    );
    let (fd_min, fd_max) = (
        warm.iter().map(|s| s.2).min().unwrap_or(0),
        warm.iter().map(|s| s.2).max().unwrap_or(0),
    );
    println!();
    println!(
        "{handshakes} handshakes, 0 failed ({:.0}/s); {rotations} rotations, {refusals} refusals",
        handshakes as f64 / began.elapsed().as_secs_f64()
    );
    println!(
        "after warm-up: resident {:.1}–{:.1} MiB, open fds {fd_min}–{fd_max}",
        rss_min as f64 / 1024.0,
        rss_max as f64 / 1024.0
    );
}

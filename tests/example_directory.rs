//! The `directory` example at scale, run as a user would: 50,000 pairs
//! (`CERTROTATE_DIRECTORY_PAIRS` to change it), most flat, some
//! cert-manager style, one expired. Checks that every pair present is tried
//! before the example says where it listens, that the whole process stays
//! under 10 KiB of resident memory per pair (checked from 20,000 pairs up),
//! that it watches directories
//! (one inotify watch each), not files, and that a change, an addition and
//! a removal each touch one pair. Start time and change latency are printed
//! (for BENCHMARKS.md), not asserted. The example runs under a 8 GiB
//! address-space limit.

#![cfg(all(target_os = "linux", feature = "file"))]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{Ca, Issued, Leaf, TempDir};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Pairs in cert-manager layout (`<name>/tls.crt`), beside the flat ones.
const NESTED: usize = 10;

fn write_pair(dir: &Path, name: &str, issued: &Issued) {
    common::write_atomic(&dir.join(format!("{name}.crt")), &issued.cert_pem);
    common::write_atomic(&dir.join(format!("{name}.key")), &issued.key_pem);
}

/// Starts the example on `dir` (under the address-space limit): the child,
/// where it listens, how long it took to say so, and its admin port.
async fn start(dir: &Path) -> (tokio::process::Child, SocketAddr, Duration, u16) {
    let started = Instant::now();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 8388608 && exec \"$0\" \"$@\"")
        .arg(common::example("directory"))
        .args(["--listen", "127.0.0.1:0", "--settle-ms", "100"])
        .args(["--admin", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
        .await
        .expect("the example said nothing")
        .unwrap()
        .expect("the example exited before it listened");
    let addr = line
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let took = started.elapsed();
    let admin = lines
        .next_line()
        .await
        .unwrap()
        .and_then(|line| {
            line.strip_prefix("admin on http://127.0.0.1:")?
                .parse()
                .ok()
        })
        .expect("an admin line");
    (child, addr, took, admin)
}

fn issue(ca: &Ca, name: &str) -> Issued {
    let from = SystemTime::now() - Duration::from_secs(3600);
    ca.issue(
        Leaf::default()
            .names(&[&format!("{name}.dir.test")])
            .valid_from(from),
    )
}

/// The resident set of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

/// The inotify watches process `pid` holds.
fn inotify_watches(pid: u32) -> usize {
    let mut watches = 0;
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let info = std::fs::read_to_string(fd.unwrap().path()).unwrap_or_default();
        watches += info
            .lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .count();
    }
    watches
}

/// GET `path` with curl, as `p0.dir.test`.
async fn get(port: u16, ca_file: &Path, path: &str) -> Vec<u8> {
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(["--resolve", &format!("p0.dir.test:{port}:127.0.0.1")])
        .arg("--cacert")
        .arg(ca_file)
        .arg(format!("https://p0.dir.test:{port}{path}"))
        .output()
        .await
        .expect("curl is installed");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The detailed health, from the admin port.
async fn health(admin: u16) -> serde_json::Value {
    serde_json::from_str(&common::get_plain(admin, "/certs").await.unwrap()).unwrap()
}

/// The serial of the certificate a handshake for `name` gets (the server
/// speaks HTTP: nothing is sent after the handshake).
async fn serial_seen(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> Result<String, String> {
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        Ok(common::serial_of(leaf.ok_or("no peer certificate")?))
    };
    tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .map_err(|_| "no handshake within 10 s".to_owned())?
}

/// Waits until `name` is served with `serial`; how long it took.
async fn until_served(
    client: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
    serial: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        let seen = serial_seen(client, addr, name).await;
        if seen.as_deref() == Ok(serial) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} not served with {serial}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_pairs_start_watch_the_directory_and_change_one_by_one() {
    let pairs: usize = std::env::var("CERTROTATE_DIRECTORY_PAIRS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    let (dir, ca) = (TempDir::new("example-dir"), Ca::new());
    let ca_file = dir.join("ca.pem");
    let certs = dir.join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let made = Instant::now();
    std::thread::scope(|scope| {
        let lanes = 2;
        for lane in 0..lanes {
            let (ca, certs) = (&ca, &certs);
            scope.spawn(move || {
                for i in (lane..pairs - NESTED - 1).step_by(lanes) {
                    write_pair(certs, &format!("p{i}"), &issue(ca, &format!("p{i}")));
                }
            });
        }
    });
    for j in 0..NESTED {
        let sub = certs.join(format!("s{j}"));
        std::fs::create_dir(&sub).unwrap();
        let issued = issue(&ca, &format!("s{j}"));
        std::fs::write(sub.join("tls.crt"), &issued.cert_pem).unwrap();
        std::fs::write(sub.join("tls.key"), &issued.key_pem).unwrap();
    }
    let expired = ca.issue(Leaf::default().names(&["bad.dir.test"]).lifetime(
        SystemTime::now() - Duration::from_secs(7200),
        SystemTime::now() - Duration::from_secs(60),
    ));
    write_pair(&certs, "bad", &expired);
    eprintln!(
        "{pairs} pairs written in {:.1} s",
        made.elapsed().as_secs_f64()
    );

    // What the process takes with no pair at all, to tell the pairs' share.
    let empty = TempDir::new("example-dir-empty");
    let (mut child, _, _, _) = start(empty.path()).await;
    let baseline = rss(child.id().unwrap());
    child.kill().await.unwrap();

    let (mut child, addr, start, admin) = start(&certs).await;
    let pid = child.id().unwrap();

    assert_eq!(get(addr.port(), &ca_file, "/").await, b"ok\n");
    // The public port's summary names no pair.
    let public = String::from_utf8(get(addr.port(), &ca_file, "/certs").await).unwrap();
    assert!(!public.contains("dir.test"), "{public}");
    // Every pair was tried before the line: all served but the expired one.
    let report = health(admin).await;
    assert_eq!(report["served"], pairs - 1, "{report}");
    assert_eq!(report["unserved_count"], 1);
    assert_eq!(report["unserved"][0]["slot"], "bad");
    let last_error = report["last_error"].as_str().unwrap();
    assert!(last_error.contains("expired"), "{last_error}");
    assert!(report["certificates"].as_array().unwrap().len() <= 100);
    let rotations = report["rotations"].as_u64().unwrap();
    assert_eq!(rotations, pairs as u64 - 1);

    // The whole process under 10 KiB per pair. (With fewer pairs than
    // the default, what every process takes outweighs them: only shown.)
    let resident = rss(pid);
    let (per_pair, beyond) = (
        resident / pairs as u64,
        resident.saturating_sub(baseline) / pairs as u64,
    );
    assert!(
        pairs < 20_000 || per_pair < 10 * 1024,
        "{per_pair} bytes resident per pair, {beyond} beyond the empty process's {baseline}"
    );
    // The directory and each subdirectory: not one watch per file.
    assert_eq!(inotify_watches(pid), 1 + NESTED);

    let client = common::client_config(&ca);
    for name in ["p0", &format!("p{}", pairs / 2), "s3"] {
        let seen = serial_seen(&client, addr, &format!("{name}.dir.test")).await;
        assert!(seen.is_ok(), "{name}: {seen:?}");
    }

    // Changes, one pair at a time: each is served, and only it is installed.
    let mut latencies = Vec::new();
    for (round, k) in (0..pairs - NESTED - 1)
        .step_by(pairs / 10)
        .take(10)
        .enumerate()
    {
        let name = format!("p{k}");
        let new = issue(&ca, &name);
        let serial = new.bundle.info().serial.clone();
        write_pair(&certs, &name, &new);
        latencies.push(until_served(&client, addr, &format!("{name}.dir.test"), &serial).await);
        let report = health(admin).await;
        assert_eq!(
            report["rotations"],
            rotations + round as u64 + 1,
            "{report}"
        );
    }
    latencies.sort();

    // An added pair is served; a removed one stops being served.
    let added = issue(&ca, "added");
    let written = Instant::now();
    write_pair(&certs, "added", &added);
    let serial = added.bundle.info().serial.clone();
    until_served(&client, addr, "added.dir.test", &serial).await;
    let add = written.elapsed();
    let removed_at = Instant::now();
    std::fs::remove_file(certs.join("p1.crt")).unwrap();
    std::fs::remove_file(certs.join("p1.key")).unwrap();
    loop {
        // Served the default certificate instead, which does not cover it.
        if serial_seen(&client, addr, "p1.dir.test").await.is_err() {
            break;
        }
        assert!(
            removed_at.elapsed() < Duration::from_secs(60),
            "p1 still served"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let remove = removed_at.elapsed();
    let report = health(admin).await;
    assert_eq!(report["served"], pairs - 1);

    eprintln!(
        "{pairs} pairs: listening after {:.1} s, {:.1} KiB resident per pair ({:.1} KiB beyond \
         the empty process), {} inotify watches; change served after p50 {} ms (max {} ms, \
         settle 100 ms), add {} ms, remove {} ms",
        start.as_secs_f64(),
        per_pair as f64 / 1024.0,
        beyond as f64 / 1024.0,
        inotify_watches(pid),
        latencies[latencies.len() / 2].as_millis(),
        latencies.last().unwrap().as_millis(),
        add.as_millis(),
        remove.as_millis(),
    );
    child.kill().await.unwrap();
}

//! Clients cannot starve the listener or on-demand issuance: every place a
//! client can hold is given back on every path (cancellation included), a
//! silent client holds its place no longer than the ClientHello deadline,
//! and floods from many addresses (IPv4 /24s, IPv6 prefixes) cannot keep a
//! well-behaved client out. All on 127.0.0.0/8, bounded in count and time.

#![cfg(feature = "acme")]

mod common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use certrotate::source::StaticSource;
use certrotate::{AcmeSource, OnDemand, Policy, Rotator, TlsListener};
use common::{Ca, HOST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bytes of a ClientHello for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let config = common::client_config(&Ca::new());
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    hello
}

/// An on-demand handshake cancelled after each of its first polls in turn
/// (so at every await point it reaches: the ClientHello, the wait for a
/// pending name) gives back its waiting place every time; the pending name
/// is settled once its hook gives up. Before the drop guards, a handshake
/// cancelled inside the wait left the waiting count one higher for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_cancelled_at_every_await_point_give_every_place_back() {
    // A hook that never answers: the name stays pending until the wait.
    let hook = |_: String| std::future::pending::<bool>();
    let acme = AcmeSource::template("https://127.0.0.1:9/directory");
    let on_demand = OnDemand::builder(acme, hook)
        .wait(Duration::from_millis(1500))
        .build();
    let config = Arc::new(on_demand.server_config().unwrap());
    let hello = client_hello("pending.example");

    let mut reached_the_wait = false;
    for polls in 1..=12 {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(&hello).await.unwrap();
        let mut handshake = Box::pin(on_demand.accept(server, config.clone()));
        for _ in 0..polls {
            std::future::poll_fn(|cx| {
                let _ = std::future::Future::poll(handshake.as_mut(), cx);
                Poll::Ready(())
            })
            .await;
            tokio::task::yield_now().await;
        }
        reached_the_wait |= on_demand.stats().waiting > 0;
        drop(handshake);
        assert_eq!(
            on_demand.stats().waiting,
            0,
            "cancelled after {polls} polls"
        );
    }
    assert!(
        reached_the_wait,
        "no handshake was cancelled inside the wait"
    );

    // The pending name settles when its hook times out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while on_demand.stats().pending > 0 {
        assert!(tokio::time::Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = on_demand.stats();
    assert_eq!(
        (stats.waiting, stats.pending, stats.orders_in_flight),
        (0, 0, 0)
    );
}

/// A rotator serving `cert` for HOST.
async fn rotator_for(cert: &certrotate::CertBundle) -> Rotator {
    Rotator::builder(
        StaticSource::new(cert.clone()),
        Policy::builder().server_name(HOST).build().unwrap(),
    )
    .start()
    .await
    .unwrap()
}

/// A listener for `cert`, with `configure` applied.
async fn listener(
    cert: &certrotate::CertBundle,
    configure: impl FnOnce(TlsListener) -> TlsListener,
) -> TlsListener {
    let rotator = rotator_for(cert).await;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    configure(TlsListener::new(
        tcp,
        Arc::new(rotator.server_config().unwrap()),
    ))
}

/// Runs `listener` (accepting, and keeping what it accepts open) until
/// `work` ends.
async fn serving<T>(
    mut listener: TlsListener,
    work: impl std::future::Future<Output = T>,
) -> (T, TlsListener) {
    let mut work = std::pin::pin!(work);
    let mut accepted = Vec::new();
    let done = loop {
        tokio::select! {
            done = &mut work => break done,
            tls = listener.accept() => accepted.push(tls),
        }
    };
    (done, listener)
}

/// A silent TCP connection to `addr` from `from`.
async fn silent(from: IpAddr, addr: SocketAddr) -> Option<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .ok()?
        .ok()
}

/// A full handshake from 127.0.0.1, within `within`.
async fn handshake(ca: &Ca, addr: SocketAddr, within: Duration) -> Result<String, String> {
    let client = common::client_config(ca);
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(common::serial_of(
            &tls.get_ref().1.peer_certificates().unwrap()[0],
        ))
    };
    tokio::time::timeout(within, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Whether `stream` was closed by the server within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A client that connects and says nothing is closed at the ClientHello
/// deadline, long before the handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_holds_its_place_no_longer_than_the_client_hello_deadline() {
    let cert = Ca::new().nth(0);
    let listener = listener(&cert, |l| {
        l.handshake_timeout(Duration::from_secs(60))
            .client_hello_timeout(Duration::from_millis(300))
    })
    .await;
    let addr = listener.local_addr().unwrap();
    let (closed, listener) = serving(listener, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Half a ClientHello, then nothing.
        let hello = client_hello(HOST);
        stream.write_all(&hello[..hello.len() / 2]).await.unwrap();
        closed_within(&mut stream, Duration::from_secs(3)).await
    })
    .await;
    assert!(
        closed,
        "a trickling client kept its place past the deadline"
    );
    let (_, listener) = serving(listener, tokio::time::sleep(Duration::from_millis(100))).await;
    assert_eq!(listener.pending_handshakes(), 0);
}

/// Silent connections from 48 addresses in 48 different /24s of
/// 127.0.0.0/8 (each within its own share) fill every place; a
/// well-behaved client still completes its handshakes, each shedding the
/// newest handshake of the heaviest client; once the flood is gone, every
/// place is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_many_addresses_cannot_keep_a_well_behaved_client_out() {
    let (ca, cert) = {
        let ca = Ca::new();
        let cert = ca.nth(0);
        (ca, cert)
    };
    let listener = listener(&cert, |l| {
        l.handshake_timeout(Duration::from_secs(60))
            .client_hello_timeout(Duration::from_secs(60))
            .max_pending_handshakes(64)
            .max_pending_handshakes_per_client(4)
    })
    .await;
    let addr = listener.local_addr().unwrap();
    let ((flood, served), listener) = serving(listener, async {
        let mut flood = Vec::new();
        for i in 0..48u8 {
            for _ in 0..4 {
                if let Some(stream) = silent(IpAddr::from([127, 10 + i, 1, 2]), addr).await {
                    flood.push(stream);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut served = Vec::new();
        for _ in 0..5 {
            served.push(handshake(&ca, addr, Duration::from_secs(5)).await);
        }
        (flood, served)
    })
    .await;
    assert_eq!(flood.len(), 48 * 4, "the flood could not connect");
    for seen in &served {
        assert_eq!(
            seen.as_deref(),
            Ok(cert.info().serial.as_str()),
            "{served:?}"
        );
    }
    let (_, listener) = serving(listener, tokio::time::sleep(Duration::from_millis(200))).await;
    // The flood holds the places the well-behaved client did not take back.
    let held = listener.pending_handshakes();
    assert!((59..=64).contains(&held), "{held} places held");
    drop(flood);
    let (_, listener) = serving(listener, tokio::time::sleep(Duration::from_millis(300))).await;
    assert_eq!(listener.pending_handshakes(), 0, "places not given back");
}

/// Through the grouping function, the flood's addresses are IPv6
/// addresses in one /48 (in different /64s and /56s): together they get
/// the /48's share (four clients' worth), not a share each; the rest of the
/// places stay for others, and a client of another /48 is served without
/// shedding anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_prefixes_share_their_group_s_places() {
    let ca = Ca::new();
    let key = |peer: SocketAddr| match peer.ip() {
        IpAddr::V4(v4) if v4.octets()[1] >= 10 => {
            let [_, a, b, _] = v4.octets();
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                7,
                u16::from_be_bytes([a, b]),
                0,
                0,
                0,
                1,
            ))
        }
        _ => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1)),
    };
    let cert = ca.nth(0);
    let listener = listener(&cert, |l| {
        l.handshake_timeout(Duration::from_secs(60))
            .client_hello_timeout(Duration::from_secs(60))
            .max_pending_handshakes(64)
            .max_pending_handshakes_per_client(4)
            .client_key(key)
    })
    .await;
    let addr = listener.local_addr().unwrap();
    let ((flood, served), listener) = serving(listener, async {
        let mut flood = Vec::new();
        for i in 0..16u8 {
            for _ in 0..4 {
                if let Some(stream) = silent(IpAddr::from([127, 10 + i, i, 3]), addr).await {
                    flood.push(stream);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let served = handshake(&ca, addr, Duration::from_secs(5)).await;
        (flood, served)
    })
    .await;
    let (_, listener) = serving(listener, tokio::time::sleep(Duration::from_millis(200))).await;
    // The /48 holds 16 places (4 x 4); the other 48 connections were closed.
    assert_eq!(listener.pending_handshakes(), 16);
    assert_eq!(served.as_deref(), Ok(cert.info().serial.as_str()));
    drop(flood);
}

/// An attempt cut by the rotator's fetch timeout right after it took the
/// renewal lease (while it looks at the storage once more) lets go of the
/// lease at once: the next instance does not wait out the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_right_after_taking_the_lease_lets_go_of_it() {
    use certrotate::acme::Storage;
    let dir = common::TempDir::new("abuse-lease");
    let directory = "https://127.0.0.1:9/directory";
    let name = "a.example";
    let (cert_key, _, _) = common::acme_keys(directory, name);
    let lock = format!("renew-{cert_key}");
    let inner = certrotate::acme::FileStorage::new(dir.path());
    // Reads of the certificate hang while a renewal lease is held: the
    // attempt that took the lease is cut by the fetch timeout right after.
    let lease_file = dir.path().join(format!("{lock}.lease"));
    let leased = move || lease_file.exists();
    let storage = common::storage::HangingReads::new(inner.clone(), &cert_key, leased);
    let source = AcmeSource::builder(directory, [name])
        .storage(storage)
        .timeout(Duration::from_secs(1))
        .build();
    let rotator = Rotator::builder(source, Policy::builder().server_name(name).build().unwrap())
        .fetch_timeout(Duration::from_secs(1))
        .retry_backoff(Duration::from_secs(60), Duration::from_secs(60))
        .spawn();
    // The attempt takes the lease, hangs, and is cut after a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !dir.path().join(format!("{lock}.lease")).exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease was never taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let next = inner
        .try_lock(&lock, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(next.is_some(), "the cut attempt still holds the lease");
    rotator.shutdown().await;
}

/// A resolver that panics for one name: a handshake task that panics.
#[derive(Debug)]
struct PanicsFor(Arc<certrotate::store::RotatingResolver>);

impl rustls::server::ResolvesServerCert for PanicsFor {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        assert_ne!(hello.server_name(), Some("boom.example"), "a resolver bug");
        self.0.resolve(hello)
    }
}

/// A handshake task that panics gives its client's place back: with one
/// place per client, the same client is served right after (before, the
/// place stayed taken and every later connection of the client was closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handshake_gives_its_client_s_place_back() {
    let ca = Ca::new();
    let cert = ca.nth(0);
    let rotator = rotator_for(&cert).await;
    let mut config = rotator.server_config().unwrap();
    config.cert_resolver = Arc::new(PanicsFor(rotator.resolver()));
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listener = TlsListener::new(tcp, Arc::new(config))
        .max_pending_handshakes(16)
        .max_pending_handshakes_per_client(1);
    let addr = listener.local_addr().unwrap();
    let (served, listener) = serving(listener, async {
        let client = common::client_config(&ca);
        for _ in 0..3 {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("boom.example").unwrap();
            let failed = tokio_rustls::TlsConnector::from(client.clone())
                .connect(name, tcp)
                .await;
            assert!(failed.is_err());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        handshake(&ca, addr, Duration::from_secs(5)).await
    })
    .await;
    assert_eq!(served.as_deref(), Ok(cert.info().serial.as_str()));
    let (_, listener) = serving(listener, tokio::time::sleep(Duration::from_millis(100))).await;
    assert_eq!(listener.pending_handshakes(), 0);
}

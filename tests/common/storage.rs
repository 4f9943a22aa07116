//! What every shared `Storage` must do with its lease lock, checked the same
//! way for each backend.

use std::sync::Arc;
use std::time::Duration;

use certrotate::acme::{BoxFuture, FileStorage, Lease, Storage};

/// Two instances `a` and `b` of one storage: the lock is exclusive, expires
/// with its lease, its tokens grow, a stale holder is fenced out, and only
/// the holder's unlock releases it.
pub async fn lease_lock_semantics(a: &dyn Storage, b: &dyn Storage) {
    let lease = Duration::from_millis(300);
    let first = a.try_lock("order", lease).await.unwrap().expect("free");
    assert!(
        b.try_lock("order", lease).await.unwrap().is_none(),
        "held by a"
    );
    a.store_fenced("cert", b"from a", &first).await.unwrap();

    // A stalls past its lease; B takes over with a larger token.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let second = b.try_lock("order", lease).await.unwrap().expect("expired");
    assert!(second.token() > first.token());
    b.store_fenced("cert", b"from b", &second).await.unwrap();
    // A wakes up and tries to write its stale result: fenced out.
    let error = a.store_fenced("cert", b"stale", &first).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
    assert_eq!(a.load("cert").await.unwrap().unwrap(), b"from b");
    // A's unlock does not release B's lock; B's does.
    a.unlock(&first).await.unwrap();
    assert!(a.try_lock("order", lease).await.unwrap().is_none());
    b.unlock(&second).await.unwrap();
    let third = a.try_lock("order", lease).await.unwrap().expect("released");
    assert!(third.token() > second.token());
    a.unlock(&third).await.unwrap();
}

/// A holder keeps its lease alive past its length with `renew_lock` (the
/// heartbeat of an order), and it runs out a lease after the holder stops;
/// a holder taken over cannot renew.
pub async fn heartbeat_semantics(a: &dyn Storage, b: &dyn Storage) {
    let lease = Duration::from_millis(600);
    let held = a.try_lock("beat", lease).await.unwrap().expect("free");
    for _ in 0..6 {
        tokio::time::sleep(lease / 3).await;
        assert!(a.renew_lock(&held, lease).await.unwrap(), "still held");
        assert!(
            b.try_lock("beat", lease).await.unwrap().is_none(),
            "taken while its holder renews"
        );
    }
    // The holder dies: its lease runs out, and it is taken over at once.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let next = b.try_lock("beat", lease).await.unwrap().expect("ran out");
    assert!(!a.renew_lock(&held, lease).await.unwrap(), "taken over");
    b.unlock(&next).await.unwrap();
}

/// Many tasks race for the lock at once, round after round: exactly one wins
/// each round.
pub async fn one_winner_per_round(instances: Vec<std::sync::Arc<dyn Storage>>) {
    for round in 0..20 {
        let mut racers = Vec::new();
        for (i, storage) in instances.iter().cycle().take(8).enumerate() {
            let storage = storage.clone();
            racers.push(tokio::spawn(async move {
                let name = format!("race-{round}");
                (
                    i,
                    storage
                        .try_lock(&name, Duration::from_secs(60))
                        .await
                        .unwrap(),
                )
            }));
        }
        let mut winners = 0;
        for racer in racers {
            winners += usize::from(racer.await.unwrap().1.is_some());
        }
        assert_eq!(winners, 1, "round {round}");
    }
}

/// A `FileStorage` whose reads of one key hang while `hangs()` says so at
/// the read: a storage that stops answering, at a moment the test chooses.
/// The lease lock works as the `FileStorage`'s.
#[derive(Clone)]
pub struct HangingReads {
    pub inner: FileStorage,
    key: String,
    hangs: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl HangingReads {
    pub fn new(
        inner: FileStorage,
        key: &str,
        hangs: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            key: key.to_owned(),
            hangs: Arc::new(hangs),
        }
    }
}

impl Storage for HangingReads {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, std::io::Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            if key == self.key && (self.hangs)() {
                std::future::pending::<()>().await;
            }
            self.inner.load(key).await
        })
    }

    fn store<'a>(&'a self, key: &'a str, value: &'a [u8]) -> BoxFuture<'a, std::io::Result<()>> {
        self.inner.store(key, value)
    }

    fn try_lock<'a>(
        &'a self,
        name: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, std::io::Result<Option<Lease>>> {
        self.inner.try_lock(name, lease)
    }

    fn store_fenced<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        lease: &'a Lease,
    ) -> BoxFuture<'a, std::io::Result<()>> {
        self.inner.store_fenced(key, value, lease)
    }

    fn renew_lock<'a>(
        &'a self,
        lease: &'a Lease,
        duration: Duration,
    ) -> BoxFuture<'a, std::io::Result<bool>> {
        self.inner.renew_lock(lease, duration)
    }

    fn unlock<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, std::io::Result<()>> {
        self.inner.unlock(lease)
    }
}

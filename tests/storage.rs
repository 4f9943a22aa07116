//! `FileStorage` shared by several instances (a volume mounted by several
//! replicas): the same lease-lock semantics as any shared storage.

#![cfg(feature = "acme")]

mod common;

use std::sync::Arc;

use certrotate::acme::FileStorage;
use common::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_storage_lease_lock_is_exclusive_expires_and_fences_stale_holders() {
    let dir = TempDir::new("storage-lock");
    let (a, b) = (FileStorage::new(dir.path()), FileStorage::new(dir.path()));
    common::storage::lease_lock_semantics(&a, &b).await;
    common::storage::heartbeat_semantics(&a, &b).await;
    common::storage::one_winner_per_round(vec![Arc::new(a), Arc::new(b)]).await;
}

/// A mutex file that looks old (clock skew between a file server and a
/// replica, a slow fsync) while another process holds it is not taken for
/// abandoned: nobody gets in beside the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_storage_never_admits_a_second_holder_of_an_old_looking_mutex() {
    use certrotate::acme::Storage;
    let dir = TempDir::new("storage-skew");
    let storage = FileStorage::new(dir.path());
    // Another replica inside the mutex, whose file's mtime is an hour old.
    let mutex = dir.path().join(".renewal.mutex");
    let held = std::fs::File::create(&mutex).unwrap();
    held.lock().unwrap();
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    held.set_modified(hour_ago).unwrap();
    let entered = storage
        .try_lock("renewal", std::time::Duration::from_secs(60))
        .await;
    assert!(
        entered.is_err(),
        "got in beside the holder of the mutex: {entered:?}"
    );
    assert!(!dir.path().join("renewal.lease").exists());
    // Once the holder lets go (or dies: the kernel lets go), it gets in.
    drop(held);
    let lease = storage
        .try_lock("renewal", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(lease.is_some());
}

/// A lease file that ends further away than three leases (planted, or a
/// clock that jumped) and a fence file that does not parse do not wedge the
/// lock: it is taken, with a token above any before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_lease_or_fence_file_does_not_wedge_the_lock() {
    use certrotate::acme::Storage;
    use std::time::Duration;
    let dir = TempDir::new("storage-planted");
    let storage = FileStorage::new(dir.path());
    let lease = Duration::from_secs(10);
    let first = storage.try_lock("renew", lease).await.unwrap().unwrap();
    storage.unlock(&first).await.unwrap();
    std::fs::write(dir.join("renew.lease"), "someone 99999999999999").unwrap();
    std::fs::write(dir.join("renew.fence"), "not a number").unwrap();
    let taken = storage
        .try_lock("renew", lease)
        .await
        .unwrap()
        .expect("taken over");
    assert!(taken.token() > first.token());
    storage
        .store_fenced("cert", b"fenced", &taken)
        .await
        .unwrap();
    assert!(storage.renew_lock(&taken, lease).await.unwrap());
}

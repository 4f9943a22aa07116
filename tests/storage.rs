//! `FileStorage` shared by several instances (a volume mounted by several
//! replicas): the same lease-lock semantics as any shared storage.

#![cfg(feature = "acme")]

mod common;

use std::sync::Arc;

use certrotate::FileStorage;
use common::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_storage_lease_lock_is_exclusive_expires_and_fences_stale_holders() {
    let dir = TempDir::new("storage-lock");
    let (a, b) = (FileStorage::new(dir.path()), FileStorage::new(dir.path()));
    common::storage::lease_lock_semantics(&a, &b).await;
    common::storage::one_winner_per_round(vec![Arc::new(a), Arc::new(b)]).await;
    // Nothing but state is left behind: no mutex file.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".mutex"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

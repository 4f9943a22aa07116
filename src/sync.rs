//! Locks that outlive a panic, and blocking work kept off the runtime.
//!
//! A thread that panicked while holding one of the crate's mutexes left its
//! data consistent (every critical section here is a plain read or
//! replace), so the next user takes the lock as it is instead of
//! propagating the poison to a handshake or a rotation.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `work` on tokio's blocking pool. A panic in it, or a runtime
/// shutting down under it, is an error, not a panic of the caller.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| std::io::Error::other(format!("blocking work did not finish: {e}")))
}

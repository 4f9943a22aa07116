//! Locks that outlive a panic. A thread that panicked while holding one of
//! the crate's mutexes left its data consistent (every critical section
//! here is a plain read or replace), so the next user takes the lock as it
//! is instead of propagating the poison to a handshake or a rotation.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, poisoned or not.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

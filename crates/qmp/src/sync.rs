//! Locking that survives a panic elsewhere.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking the data even when another thread panicked while holding it: every
/// mutex in these crates guards data that stays consistent between statements (a queue, a
/// slot, a buffer), so a poisoned lock must not turn one panic into many.
///
/// ```
/// let counter = std::sync::Mutex::new(1);
/// *qmp::sync::lock_unpoisoned(&counter) += 1;
/// assert_eq!(*counter.lock().unwrap(), 2);
/// ```
pub fn lock_unpoisoned<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

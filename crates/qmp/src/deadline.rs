//! Deadlines that saturate: a timeout too large to be added to the clock (such as
//! [`Duration::MAX`]) means "never", instead of a panic on `Instant + Duration` overflow.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A point in time to stop waiting, or never.
///
/// ```
/// use std::time::Duration;
/// use qmp::Deadline;
///
/// assert!(Deadline::after(Duration::MAX).is_never());
/// assert!(Deadline::after(Duration::from_secs(1)).remaining().unwrap() <= Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Option<Instant>,
}

impl Deadline {
    /// `timeout` from now; never when that instant cannot be represented.
    pub fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now().checked_add(timeout),
        }
    }

    /// A deadline that never passes.
    pub const fn never() -> Deadline {
        Deadline { at: None }
    }

    /// True if this deadline never passes.
    pub fn is_never(&self) -> bool {
        self.at.is_none()
    }

    /// The instant, unless never.
    pub fn instant(&self) -> Option<Instant> {
        self.at
    }

    /// Time left (zero once passed); `None` when never.
    pub fn remaining(&self) -> Option<Duration> {
        self.at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Time left, with never as [`Duration::MAX`].
    pub fn remaining_or_max(&self) -> Duration {
        self.remaining().unwrap_or(Duration::MAX)
    }

    /// True once the deadline has passed.
    pub fn has_passed(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    /// Sleeps until the deadline (forever when never).
    pub async fn sleep_until(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Runs `future` until the deadline; `Err(Elapsed)` when it passes first.
    ///
    /// # Errors
    ///
    /// [`Elapsed`] when the deadline passes before `future` completes.
    pub async fn timeout<F: Future>(&self, future: F) -> Result<F::Output, Elapsed> {
        match self.at {
            Some(at) => tokio::time::timeout_at(at, future)
                .await
                .map_err(|_| Elapsed(())),
            None => Ok(future.await),
        }
    }
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(());

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn huge_timeouts_are_never() {
        let d = Deadline::after(Duration::MAX);
        assert!(d.is_never());
        assert_eq!(d.remaining(), None);
        assert_eq!(d.timeout(async { 7 }).await, Ok(7));
        let short = Deadline::after(Duration::from_millis(1));
        assert!(short.timeout(std::future::pending::<()>()).await.is_err());
        assert!(short.has_passed());
        assert_eq!(short.remaining(), Some(Duration::ZERO));
    }
}

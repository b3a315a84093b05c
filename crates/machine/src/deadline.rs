//! Deadlines that saturate: `now + d` for any `d`, `Duration::MAX` included, never panics.
//! An `Instant` (about a hundred years away for "never"), because the machine's waits
//! compare and race instants; `qmp::Deadline` keeps "never" as its own state instead.

use std::time::Duration;

use tokio::time::Instant;

/// About a hundred years: "never", for a deadline.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `now + d`, or about a hundred years from now when that does not fit.
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now.checked_add(FAR_FUTURE).unwrap_or(now))
}

/// As [`deadline_after`], for `std::time::Instant`.
pub(crate) fn std_deadline_after(d: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now.checked_add(FAR_FUTURE).unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate() {
        assert!(deadline_after(Duration::MAX) > Instant::now() + Duration::from_secs(3600));
        assert!(deadline_after(Duration::from_secs_f64(1e19)) > Instant::now());
        assert!(std_deadline_after(Duration::MAX) > std::time::Instant::now());
        let d = deadline_after(Duration::from_secs(1));
        assert!(d <= Instant::now() + Duration::from_secs(1));
    }
}

//! How actors come back after failing: one backoff curve and one restart
//! budget, used by the root for its children, by each pool for each of its
//! renderers, and by the consumer for its broker connection.

use std::time::{Duration, Instant};

use ractor::{ActorCell, SupervisionEvent};

/// Restarts of one child allowed within [`RestartBudget::WINDOW`] before its
/// supervisor gives up on it.
pub(crate) const MAX_RESTARTS: usize = 10;

/// The wait before try number `failures` (1 for the first): `first`, doubling
/// each time, never more than `max`.
pub(crate) fn backoff(failures: u32, first: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(max)
}

/// Counts the recent restarts of one child and spaces them out.
#[derive(Debug, Default)]
pub(crate) struct RestartBudget {
    recent: Vec<Instant>,
}

impl RestartBudget {
    pub const WINDOW: Duration = Duration::from_secs(60);
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    /// The wait before the next restart (100 ms doubling up to 10 s), or `None`
    /// when the child failed more than [`MAX_RESTARTS`] times within the window.
    pub fn next_backoff(&mut self, now: Instant) -> Option<Duration> {
        self.recent
            .retain(|at| now.duration_since(*at) < Self::WINDOW);
        self.recent.push(now);
        if self.recent.len() > MAX_RESTARTS {
            return None;
        }
        let failures = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        Some(backoff(failures, Self::FIRST, Self::MAX))
    }
}

/// The child that ended and why, for a supervision event that says one did.
pub(crate) fn ended(event: SupervisionEvent) -> Option<(ActorCell, String)> {
    match event {
        SupervisionEvent::ActorFailed(cell, err) => Some((cell, err.to_string())),
        SupervisionEvent::ActorTerminated(cell, _, reason) => {
            Some((cell, reason.unwrap_or_else(|| "stopped".into())))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_first_and_doubles_to_max() {
        let (first, max) = (Duration::from_millis(200), Duration::from_secs(5));
        assert_eq!(backoff(1, first, max), first);
        assert_eq!(backoff(2, first, max), Duration::from_millis(400));
        assert_eq!(backoff(5, first, max), Duration::from_millis(3200));
        assert_eq!(backoff(6, first, max), max);
        assert_eq!(backoff(u32::MAX, first, max), max);
    }

    #[test]
    fn budget_doubles_then_runs_out() {
        let mut budget = RestartBudget::default();
        let now = Instant::now();
        assert_eq!(budget.next_backoff(now), Some(Duration::from_millis(100)));
        assert_eq!(budget.next_backoff(now), Some(Duration::from_millis(200)));
        for _ in 2..MAX_RESTARTS {
            assert!(budget.next_backoff(now).is_some());
        }
        assert_eq!(budget.next_backoff(now), None);
        // Restarts older than the window no longer count.
        let mut budget = RestartBudget::default();
        budget.next_backoff(now);
        let later = now + RestartBudget::WINDOW + Duration::from_secs(1);
        assert_eq!(budget.next_backoff(later), Some(Duration::from_millis(100)));
    }
}

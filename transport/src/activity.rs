//! Deadlines for connections that do nothing: the first request must arrive within
//! `first_request` of accept (this covers a silent client, one that sends `PRI` and stops
//! during protocol detection, and an HTTP/2 client that sends its preface and never opens a
//! stream), and a connection with no request in flight for `idle` is closed gracefully
//! (keep-alive idle).
//!
//! Per request this costs two relaxed atomic increments on a per-connection counter pair (no
//! timer, no clock read); the one timer per connection is re-armed once per period, not per
//! request. So the idle close comes between `idle` and twice `idle` after the last request
//! ended, which is what a keep-alive bound needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a connection may do nothing.
#[derive(Debug, Clone, Copy)]
pub struct IdleLimits {
    /// From accept to the first request's head.
    pub first_request: Duration,
    /// With no request in flight (keep-alive idle).
    pub idle: Duration,
}

/// Requests started and finished on one connection.
#[derive(Debug, Default)]
pub struct Activity {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Activity {
    /// A request's head has arrived.
    #[inline]
    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A request has been answered (its response head produced).
    #[inline]
    pub fn finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests started so far, and whether none is in flight.
    pub(crate) fn snapshot(&self) -> (u64, bool) {
        let started = self.started.load(Ordering::Relaxed);
        let finished = self.finished.load(Ordering::Relaxed);
        (started, finished >= started)
    }
}

impl AsRef<Activity> for Activity {
    fn as_ref(&self) -> &Activity {
        self
    }
}

/// What the watchdog decides at a check.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Something happened, or a request is in flight: check again after `idle`.
    Busy,
    /// No first request within the deadline: drop the connection.
    NeverSpoke,
    /// Nothing for a whole period: close gracefully.
    Idle,
}

/// Tracks one connection between checks.
#[derive(Debug)]
pub(crate) struct Watchdog {
    seen: Option<u64>,
}

impl Watchdog {
    pub fn new() -> Self {
        Self { seen: None }
    }

    /// Judges the connection at a check.
    pub fn check(&mut self, activity: &Activity) -> Verdict {
        let (started, quiet) = activity.snapshot();
        let verdict = match self.seen {
            None if started == 0 => Verdict::NeverSpoke,
            Some(seen) if seen == started && quiet => Verdict::Idle,
            _ => Verdict::Busy,
        };
        self.seen = Some(started);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_judged_by_what_happened_between_checks() {
        let activity = Activity::default();
        assert_eq!(Watchdog::new().check(&activity), Verdict::NeverSpoke);

        let mut watchdog = Watchdog::new();
        activity.started();
        assert_eq!(watchdog.check(&activity), Verdict::Busy);
        // Still in flight a period later (a slow upstream): not idle.
        assert_eq!(watchdog.check(&activity), Verdict::Busy);
        activity.finished();
        // Answered, and nothing new since the last check: idle.
        assert_eq!(watchdog.check(&activity), Verdict::Idle);
        activity.started();
        activity.finished();
        assert_eq!(watchdog.check(&activity), Verdict::Busy);
        assert_eq!(watchdog.check(&activity), Verdict::Idle);
    }
}

//! Staleness without trusting clocks (DESIGN.md, "Sync").
//!
//! The sync client pings with its own monotonic send time t0; the pong carries the control
//! plane's head revision H. Once the replica has applied H, the gateway is known to be current
//! as of t0, and staleness is now − t0 of the latest such proof. Before the first proof the
//! gateway is stale. Only the gateway's own monotonic clock (tokio's, so tests can pause it)
//! is ever compared with itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keygate_proto::Revision;
use tokio::time::Instant;

use crate::config::StalePolicy;

/// The latest time the replica is known to have been current, shared by the sync task (which
/// proves it) and requests (which read it).
pub struct Freshness {
    origin: Instant,
    /// Nanoseconds after `origin` of the latest proof, plus one; 0 = never proven.
    proven_at: AtomicU64,
    bound: Duration,
    policy: StalePolicy,
}

impl Freshness {
    /// Never proven yet, so stale.
    pub fn new(bound: Duration, policy: StalePolicy) -> Self {
        Self {
            origin: Instant::now(),
            proven_at: AtomicU64::new(0),
            bound,
            policy,
        }
    }

    /// The monotonic clock as nanoseconds since this was created (what pings carry).
    pub fn now_nanos(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Time since this was created.
    pub fn uptime(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Records that the replica was current at `sent_nanos` (a ping's send time). Never moves
    /// the proof backwards.
    pub fn prove_current_at(&self, sent_nanos: u64) {
        self.proven_at
            .fetch_max(sent_nanos.saturating_add(1), Ordering::AcqRel);
    }

    /// Time since the replica was last known current; `None` before the first proof.
    pub fn staleness(&self) -> Option<Duration> {
        let proven_at = self.proven_at.load(Ordering::Acquire);
        if proven_at == 0 {
            return None;
        }
        Some(Duration::from_nanos(
            self.now_nanos().saturating_sub(proven_at - 1),
        ))
    }

    /// Whether the replica is past the propagation bound (or was never proven current).
    #[inline]
    pub fn is_stale(&self) -> bool {
        self.staleness()
            .is_none_or(|staleness| staleness > self.bound)
    }

    /// Whether requests must be refused with STALE right now.
    #[inline]
    pub fn refuses_requests(&self) -> bool {
        self.policy == StalePolicy::FailClosed && self.is_stale()
    }

    /// The configured propagation bound.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// What the gateway does past the bound.
    pub fn policy(&self) -> StalePolicy {
        self.policy
    }
}

/// Pongs whose head revision the replica has not reached yet: each becomes a proof once it
/// does. Kept across reconnects: a head revision seen at t0 stays a valid lower bound, as long
/// as the replica stays on the same log; the sync client clears them when it switches to
/// another log, whose revisions are unrelated.
#[derive(Debug, Default)]
pub(crate) struct PendingProofs {
    /// (head revision, ping send time), oldest first.
    waiting: Vec<(Revision, u64)>,
}

/// Pongs remembered at most; dropping the oldest only delays a proof, never fakes one.
const MAX_PENDING_PROOFS: usize = 64;

impl PendingProofs {
    /// Handles a pong: proves freshness at once if `applied` already covers `head`.
    pub fn on_pong(
        &mut self,
        freshness: &Freshness,
        head: Revision,
        sent_nanos: u64,
        applied: Revision,
    ) {
        if applied >= head {
            freshness.prove_current_at(sent_nanos);
            return;
        }
        self.defer(head, sent_nanos);
    }

    /// Remembers a pong without comparing it with the applied revision: for a pong of a log
    /// whose snapshot is still arriving, whose head only a revision of that log may reach.
    pub fn defer(&mut self, head: Revision, sent_nanos: u64) {
        if self.waiting.len() == MAX_PENDING_PROOFS {
            self.waiting.remove(0);
        }
        self.waiting.push((head, sent_nanos));
    }

    /// Forgets every pong waiting for its head: they are of a log the replica is leaving.
    pub fn clear(&mut self) {
        self.waiting.clear();
    }

    /// Turns every pong whose head is now applied into a proof.
    pub fn on_applied(&mut self, freshness: &Freshness, applied: Revision) {
        let mut latest = None;
        self.waiting.retain(|&(head, sent)| {
            if head <= applied {
                latest = latest.max(Some(sent));
                false
            } else {
                true
            }
        });
        if let Some(sent) = latest {
            freshness.prove_current_at(sent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stale_until_proven_then_stale_again_past_the_bound() {
        let freshness = Freshness::new(Duration::from_secs(60), StalePolicy::FailClosed);
        assert!(freshness.is_stale());
        assert!(freshness.refuses_requests());
        assert_eq!(freshness.staleness(), None);

        let t0 = freshness.now_nanos();
        tokio::time::advance(Duration::from_secs(1)).await;
        freshness.prove_current_at(t0);
        assert_eq!(freshness.staleness(), Some(Duration::from_secs(1)));
        assert!(!freshness.is_stale());

        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(freshness.is_stale());
        // An older proof never replaces a newer one.
        freshness.prove_current_at(0);
        assert_eq!(freshness.staleness(), Some(Duration::from_secs(61)));
        let now = freshness.now_nanos();
        freshness.prove_current_at(now);
        assert!(!freshness.is_stale());
    }

    #[tokio::test(start_paused = true)]
    async fn serve_policy_reports_but_does_not_refuse() {
        let freshness = Freshness::new(Duration::from_secs(1), StalePolicy::Serve);
        assert!(freshness.is_stale());
        assert!(!freshness.refuses_requests());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pong_proves_freshness_only_once_its_head_is_applied() {
        let freshness = Freshness::new(Duration::from_secs(60), StalePolicy::FailClosed);
        let mut pending = PendingProofs::default();
        let t0 = freshness.now_nanos();
        tokio::time::advance(Duration::from_secs(2)).await;
        let t1 = freshness.now_nanos();
        pending.on_pong(&freshness, Revision(5), t0, Revision(3));
        pending.on_pong(&freshness, Revision(7), t1, Revision(3));
        assert_eq!(freshness.staleness(), None);
        pending.on_applied(&freshness, Revision(6));
        assert_eq!(
            freshness.staleness(),
            Some(Duration::from_secs(2)),
            "proven as of t0"
        );
        pending.on_applied(&freshness, Revision(7));
        assert_eq!(
            freshness.staleness(),
            Some(Duration::ZERO),
            "proven as of t1"
        );
        pending.on_pong(&freshness, Revision(7), freshness.now_nanos(), Revision(7));
        assert!(pending.waiting.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_pong_waits_for_its_head_and_cleared_pongs_prove_nothing() {
        let freshness = Freshness::new(Duration::from_secs(60), StalePolicy::FailClosed);
        let mut pending = PendingProofs::default();
        let t0 = freshness.now_nanos();
        // Head 0 would already be "applied" by any replica; deferred, it still waits.
        pending.defer(Revision(0), t0);
        pending.on_pong(&freshness, Revision(9), t0, Revision(3));
        assert_eq!(freshness.staleness(), None);
        pending.on_applied(&freshness, Revision(0));
        assert_eq!(freshness.staleness(), Some(Duration::ZERO));

        let fresh = Freshness::new(Duration::from_secs(60), StalePolicy::FailClosed);
        pending.on_pong(&fresh, Revision(9), fresh.now_nanos(), Revision(3));
        pending.clear();
        pending.on_applied(&fresh, Revision(100));
        assert_eq!(
            fresh.staleness(),
            None,
            "a cleared pong never becomes a proof"
        );
    }
}

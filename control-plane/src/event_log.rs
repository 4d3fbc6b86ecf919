//! The live end of the event log: the head revision, broadcast to every sync stream through a
//! `watch` channel, and a bounded ring of the most recent events, so that a stream following the
//! head reads new events from memory instead of the database.
//!
//! The store feeds it through [`CommitObserver`] right after each commit and before the next
//! one, so the ring always holds contiguous revisions ending at the head.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use keygate_proto::{Event, Revision};
use tokio::sync::watch;

use crate::metrics;
use crate::store::CommitObserver;

/// Events kept in memory: enough for every stream that is merely behind by a burst.
pub const DEFAULT_RING_CAPACITY: usize = 8192;

/// Head revision and recent events.
pub struct EventLog {
    head: watch::Sender<Revision>,
    ring: Mutex<Ring>,
}

struct Ring {
    capacity: usize,
    /// Contiguous revisions, oldest first, each with the instant it was committed (for the
    /// propagation histogram: a monotonic clock, not the wall clock).
    events: VecDeque<(Event, Instant)>,
}

impl EventLog {
    /// An empty log at revision 0; call [`EventLog::resume`] with the store's head before any
    /// stream starts.
    pub fn new(capacity: usize) -> Self {
        Self {
            head: watch::Sender::new(Revision::ZERO),
            ring: Mutex::new(Ring {
                capacity: capacity.max(1),
                events: VecDeque::new(),
            }),
        }
    }

    /// Starts from the head found in the store (events before it are read from the store).
    pub fn resume(&self, head: Revision) {
        lock(&self.ring).events.clear();
        self.head.send_replace(head);
        metrics::head_revision(head);
    }

    /// The last committed revision.
    pub fn head(&self) -> Revision {
        *self.head.borrow()
    }

    /// A receiver that wakes whenever the head moves.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.head.subscribe()
    }

    /// Up to `limit` events after `after` from memory, or `None` when the ring no longer (or
    /// not yet) holds `after + 1` and the caller must read the store. Empty when `after` is at
    /// or past the newest event in memory.
    pub fn events_after(&self, after: Revision, limit: usize) -> Option<Vec<Event>> {
        let ring = lock(&self.ring);
        let (first, last) = match (ring.events.front(), ring.events.back()) {
            (Some((first, _)), Some((last, _))) => (first.revision, last.revision),
            _ => return None,
        };
        if after >= last {
            return Some(Vec::new());
        }
        if after.next() < first {
            return None;
        }
        let skip = usize::try_from(after.0 + 1 - first.0).ok()?;
        Some(
            ring.events
                .iter()
                .skip(skip)
                .take(limit)
                .map(|(event, _)| event.clone())
                .collect(),
        )
    }

    /// When `revision` was committed, if it is still in memory.
    pub fn committed_at(&self, revision: Revision) -> Option<Instant> {
        let ring = lock(&self.ring);
        let first = ring.events.front()?.0.revision;
        let index = usize::try_from(revision.0.checked_sub(first.0)?).ok()?;
        ring.events.get(index).map(|(_, at)| *at)
    }
}

impl CommitObserver for EventLog {
    fn committed(&self, events: &[Event]) {
        let Some(last) = events.last() else { return };
        let now = Instant::now();
        {
            let mut ring = lock(&self.ring);
            for event in events {
                // A revision that does not follow the ring's last one means events committed
                // elsewhere (e.g. before `resume`); start over rather than keep a gap in memory.
                if ring
                    .events
                    .back()
                    .is_some_and(|(back, _)| back.revision.next() != event.revision)
                {
                    ring.events.clear();
                }
                if ring.events.len() == ring.capacity {
                    ring.events.pop_front();
                }
                ring.events.push_back((event.clone(), now));
            }
        }
        // The ring is filled before the head moves, so a stream woken by the new head finds
        // the events in memory.
        self.head.send_replace(last.revision);
        metrics::events_committed(events.len());
        metrics::head_revision(last.revision);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use keygate_proto::{Change, KeyHash, KeyId};

    fn event(revision: u64) -> Event {
        Event {
            revision: Revision(revision),
            committed_unix_ms: 0,
            change: Change::KeyDeleted {
                id: KeyId::generate(),
                hash: KeyHash([0; 32]),
            },
        }
    }

    fn revisions(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.revision.0).collect()
    }

    #[test]
    fn ring_serves_contiguous_ranges_and_says_when_it_cannot() {
        let log = EventLog::new(4);
        log.resume(Revision(10));
        assert_eq!(log.events_after(Revision(10), 10), None, "empty ring");
        log.committed(&[event(11), event(12)]);
        log.committed(&[event(13), event(14), event(15)]);
        assert_eq!(log.head(), Revision(15));
        // Capacity 4: revision 11 fell out.
        assert_eq!(log.events_after(Revision(10), 10), None);
        assert_eq!(
            revisions(&log.events_after(Revision(11), 10).unwrap()),
            [12, 13, 14, 15]
        );
        assert_eq!(
            revisions(&log.events_after(Revision(12), 2).unwrap()),
            [13, 14]
        );
        assert_eq!(log.events_after(Revision(15), 10), Some(vec![]));
        assert!(log.committed_at(Revision(14)).is_some());
        assert!(log.committed_at(Revision(11)).is_none());
        assert!(log.committed_at(Revision(16)).is_none());
    }

    #[test]
    fn subscribers_wake_on_new_head() {
        let log = EventLog::new(8);
        let mut receiver = log.subscribe();
        log.committed(&[event(1)]);
        assert!(receiver.has_changed().unwrap());
        assert_eq!(*receiver.borrow_and_update(), Revision(1));
    }
}

//! WebAuthn ceremonies in progress: the state between a `…/begin` and its `…/finish`, held in
//! memory under a random ceremony id. Each is taken exactly once (a replayed finish finds
//! nothing), expires after a few minutes, and the map is bounded, so unfinished ceremonies
//! cannot grow without limit.
//!
//! In memory, not in the store: a challenge is worth nothing after a restart, and keeping it
//! here means a finish never waits on the database to learn that it is a replay. (Several
//! control-plane replicas behind one load balancer would need sticky sessions for the HTTP
//! listener.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ids;

/// How long a ceremony may take from begin to finish.
pub const CEREMONY_TTL: Duration = Duration::from_secs(5 * 60);
/// Most ceremonies in progress at once.
pub const MAX_CEREMONIES: usize = 10_000;

/// What [`Ceremonies::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken<T> {
    Found(T),
    /// Never issued, already finished, or forgotten.
    Unknown,
    /// Issued, but too long ago. (It is gone now as well.)
    Expired,
}

/// The begin-to-finish state is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many sign-in ceremonies in progress; try again in a minute")]
pub struct Full;

struct Pending<T> {
    value: T,
    expires_at: Instant,
}

/// Ceremonies in progress, by id.
pub struct Ceremonies<T> {
    pending: Mutex<HashMap<String, Pending<T>>>,
    ttl: Duration,
    capacity: usize,
}

impl<T> Ceremonies<T> {
    /// A map whose entries live `ttl` and of which at most `capacity` are kept.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            ttl,
            capacity,
        }
    }

    /// Keeps `value` under a fresh random id, which it returns.
    pub fn insert(&self, value: T) -> Result<String, Full> {
        self.insert_at(value, Instant::now())
    }

    /// Removes and returns the ceremony `id`: a second call finds nothing.
    pub fn take(&self, id: &str) -> Taken<T> {
        self.take_at(id, Instant::now())
    }

    fn insert_at(&self, value: T, now: Instant) -> Result<String, Full> {
        let mut pending = self.lock();
        if pending.len() >= self.capacity {
            pending.retain(|_, entry| entry.expires_at > now);
            if pending.len() >= self.capacity {
                return Err(Full);
            }
        }
        let id = ids::random_id("cer");
        pending.insert(
            id.clone(),
            Pending {
                value,
                expires_at: now + self.ttl,
            },
        );
        Ok(id)
    }

    fn take_at(&self, id: &str, now: Instant) -> Taken<T> {
        match self.lock().remove(id) {
            Some(entry) if entry.expires_at > now => Taken::Found(entry.value),
            Some(_) => Taken::Expired,
            None => Taken::Unknown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending<T>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ceremony_is_taken_exactly_once() {
        let ceremonies = Ceremonies::new(CEREMONY_TTL, 10);
        let id = ceremonies.insert("state").unwrap();
        assert!(id.starts_with("cer_"));
        assert_eq!(ceremonies.take(&id), Taken::Found("state"));
        assert_eq!(ceremonies.take(&id), Taken::Unknown, "replayed finish");
        assert_eq!(ceremonies.take("cer_forged"), Taken::Unknown);
    }

    #[test]
    fn ceremonies_expire() {
        let ceremonies = Ceremonies::new(Duration::from_secs(300), 10);
        let start = Instant::now();
        let id = ceremonies.insert_at(1, start).unwrap();
        assert_eq!(
            ceremonies.take_at(&id, start + Duration::from_secs(300)),
            Taken::Expired
        );
        assert_eq!(ceremonies.take_at(&id, start), Taken::Unknown, "gone");
        let id = ceremonies.insert_at(2, start).unwrap();
        assert_eq!(
            ceremonies.take_at(&id, start + Duration::from_secs(299)),
            Taken::Found(2)
        );
    }

    #[test]
    fn the_map_is_bounded_and_makes_room_from_expired_entries() {
        let ceremonies = Ceremonies::new(Duration::from_secs(10), 2);
        let start = Instant::now();
        let first = ceremonies.insert_at('a', start).unwrap();
        ceremonies.insert_at('b', start).unwrap();
        assert_eq!(ceremonies.insert_at('c', start), Err(Full));
        // Once the first two have expired, there is room again.
        let later = start + Duration::from_secs(11);
        ceremonies.insert_at('d', later).unwrap();
        assert_eq!(ceremonies.take_at(&first, later), Taken::Unknown);
    }
}

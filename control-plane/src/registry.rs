//! The registry of gateways: who is connected, where, and which revision each has applied.
//! Serves `keygate gateways` and the `--wait` of revocations.
//!
//! A gateway id has at most one live stream: when a gateway reconnects before its old stream
//! has noticed the disconnect, the newer stream wins and the older one is told to end. A
//! gateway that stays disconnected longer than the configured timeout is forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use keygate_proto::Revision;
use keygate_proto::time::now_unix_ms;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// What a gateway says about itself in its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayHello {
    pub id: String,
    pub region: String,
    pub address: String,
    pub version: String,
    pub applied: Revision,
}

/// One gateway as `keygate gateways` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatus {
    pub id: String,
    pub region: String,
    pub address: String,
    pub version: String,
    pub applied: Revision,
    /// Last message of any kind from the gateway.
    pub last_seen_unix_ms: i64,
    /// When its current (or last) stream opened.
    pub connected_unix_ms: i64,
    pub connected: bool,
}

/// One sync stream's membership in the registry.
#[derive(Debug, Clone)]
pub struct Session {
    pub gateway_id: String,
    number: u64,
    /// Cancelled when the stream must end: shutdown, replacement, or the stream's own end.
    pub stop: CancellationToken,
    replaced: Arc<AtomicBool>,
}

impl Session {
    /// Whether a newer stream with the same gateway id took over.
    pub fn was_replaced(&self) -> bool {
        self.replaced.load(Ordering::Acquire)
    }
}

struct Entry {
    status: GatewayStatus,
    session: Session,
    disconnected_at: Option<Instant>,
}

/// Connected and recently connected gateways.
pub struct Registry {
    gateways: Mutex<HashMap<String, Entry>>,
    timeout: Duration,
    sessions: AtomicU64,
}

impl Registry {
    /// An empty registry that forgets gateways disconnected for longer than `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            gateways: Mutex::new(HashMap::new()),
            timeout,
            sessions: AtomicU64::new(0),
        }
    }

    /// Registers a new stream. `shutdown` ends it along with the server. An older stream with
    /// the same gateway id is told to end.
    pub fn connect(&self, hello: GatewayHello, shutdown: &CancellationToken) -> Session {
        let now = now_unix_ms();
        let session = Session {
            gateway_id: hello.id.clone(),
            number: self.sessions.fetch_add(1, Ordering::Relaxed),
            stop: shutdown.child_token(),
            replaced: Arc::new(AtomicBool::new(false)),
        };
        let entry = Entry {
            status: GatewayStatus {
                id: hello.id,
                region: hello.region,
                address: hello.address,
                version: hello.version,
                applied: hello.applied,
                last_seen_unix_ms: now,
                connected_unix_ms: now,
                connected: true,
            },
            session: session.clone(),
            disconnected_at: None,
        };
        let mut gateways = self.lock();
        if let Some(old) = gateways.insert(session.gateway_id.clone(), entry)
            && old.disconnected_at.is_none()
        {
            old.session.replaced.store(true, Ordering::Release);
            old.session.stop.cancel();
        }
        self.publish_count(&gateways);
        session
    }

    /// Notes a message of any kind from the gateway.
    pub fn seen(&self, session: &Session) {
        self.update(session, |status| status.last_seen_unix_ms = now_unix_ms());
    }

    /// Records an ack. Returns the revision the gateway had applied before, or `None` when
    /// this stream is no longer the gateway's current one.
    pub fn ack(&self, session: &Session, revision: Revision) -> Option<Revision> {
        self.update(session, |status| {
            status.last_seen_unix_ms = now_unix_ms();
            // Not a max: after a snapshot from a restored store a gateway may legitimately
            // report a lower revision than before.
            std::mem::replace(&mut status.applied, revision)
        })
    }

    /// Marks the stream's gateway disconnected, unless a newer stream has taken its place.
    pub fn disconnect(&self, session: &Session) {
        let mut gateways = self.lock();
        if let Some(entry) = gateways.get_mut(&session.gateway_id)
            && entry.session.number == session.number
        {
            entry.status.connected = false;
            entry.disconnected_at = Some(Instant::now());
        }
        self.publish_count(&gateways);
    }

    /// Forgets gateways disconnected for longer than the timeout.
    pub fn prune(&self) {
        let mut gateways = self.lock();
        let timeout = self.timeout;
        gateways.retain(|_, entry| {
            entry
                .disconnected_at
                .is_none_or(|since| since.elapsed() < timeout)
        });
    }

    /// Every known gateway, ordered by id.
    pub fn list(&self) -> Vec<GatewayStatus> {
        self.prune();
        let mut list: Vec<GatewayStatus> = self
            .lock()
            .values()
            .map(|entry| entry.status.clone())
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    fn update<T>(
        &self,
        session: &Session,
        change: impl FnOnce(&mut GatewayStatus) -> T,
    ) -> Option<T> {
        let mut gateways = self.lock();
        let entry = gateways.get_mut(&session.gateway_id)?;
        (entry.session.number == session.number).then(|| change(&mut entry.status))
    }

    fn publish_count(&self, gateways: &HashMap<String, Entry>) {
        metrics::connected_gateways(gateways.values().filter(|e| e.status.connected).count());
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.gateways.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hello(id: &str, applied: u64) -> GatewayHello {
        GatewayHello {
            id: id.into(),
            region: "eu".into(),
            address: "10.0.0.1:8080".into(),
            version: "0.1.0".into(),
            applied: Revision(applied),
        }
    }

    #[test]
    fn newer_stream_with_the_same_id_wins() {
        let registry = Registry::new(Duration::from_secs(60));
        let shutdown = CancellationToken::new();
        let first = registry.connect(hello("gw-1", 3), &shutdown);
        let second = registry.connect(hello("gw-1", 5), &shutdown);
        assert!(first.stop.is_cancelled() && first.was_replaced());
        assert!(!second.stop.is_cancelled());
        // The old stream's late ack and disconnect do not touch the new one's entry.
        assert_eq!(registry.ack(&first, Revision(9)), None);
        registry.disconnect(&first);
        let list = registry.list();
        assert_eq!(list.len(), 1);
        assert!(list[0].connected);
        assert_eq!(list[0].applied, Revision(5));
        assert_eq!(registry.ack(&second, Revision(7)), Some(Revision(5)));
        assert_eq!(registry.list()[0].applied, Revision(7));
    }

    #[test]
    fn disconnected_gateways_are_dropped_after_the_timeout() {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(Duration::ZERO);
        let session = registry.connect(hello("gw-1", 0), &shutdown);
        assert_eq!(
            registry.list().len(),
            1,
            "connected gateways are never pruned"
        );
        registry.disconnect(&session);
        // Zero timeout: gone at once.
        assert!(registry.list().is_empty());

        let registry = Registry::new(Duration::from_secs(60));
        let session = registry.connect(hello("gw-2", 0), &shutdown);
        registry.disconnect(&session);
        let list = registry.list();
        assert_eq!(list.len(), 1);
        assert!(!list[0].connected);
    }

    #[test]
    fn shutdown_stops_every_session() {
        let shutdown = CancellationToken::new();
        let registry = Registry::new(Duration::from_secs(60));
        let a = registry.connect(hello("a", 0), &shutdown);
        let b = registry.connect(hello("b", 0), &shutdown);
        shutdown.cancel();
        assert!(a.stop.is_cancelled() && b.stop.is_cancelled());
        assert!(!a.was_replaced());
    }
}

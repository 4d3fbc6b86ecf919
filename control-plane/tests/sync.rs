//! The Sync service end to end: a real tonic client against `ControlPlane::bind` on
//! 127.0.0.1:0.

#![allow(clippy::unwrap_used)]

mod support;

use keygate_proto::pb::control_message::Msg;
use keygate_proto::pb::gateway_message::Msg as Out;
use keygate_proto::pb::{self, event::Kind};
use keygate_proto::{ApiKey, KeyHash};
use support::{ADMIN_TOKEN, Admin, DEADLINE, GATEWAY_TOKEN, Gateway, TestControlPlane, with_token};
use tonic::Code;

fn hash_of(plaintext: &str) -> Vec<u8> {
    ApiKey::parse(plaintext).unwrap().hash().0.to_vec()
}

#[tokio::test]
async fn a_new_gateway_gets_a_snapshot_then_live_events() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    let a = admin.create("alice").await;
    let b = admin.create("bob").await;

    let mut gateway = cp.gateway("gw-1", 0).await;
    match gateway.expect().await {
        Msg::SnapshotBegin(begin) => assert_eq!((begin.revision, begin.key_count), (2, 2)),
        other => panic!("expected SnapshotBegin, got {other:?}"),
    }
    let mut hashes = Vec::new();
    loop {
        match gateway.expect().await {
            Msg::SnapshotChunk(chunk) => hashes.extend(chunk.keys.into_iter().map(|k| k.key_hash)),
            Msg::SnapshotEnd(end) => {
                assert_eq!(end.revision, 2);
                break;
            }
            other => panic!("unexpected {other:?} inside a snapshot"),
        }
    }
    hashes.sort();
    let mut expected = vec![hash_of(&a.key), hash_of(&b.key)];
    expected.sort();
    assert_eq!(
        hashes, expected,
        "the snapshot carries exactly the two keys, by hash"
    );

    let c = admin.create("carol").await;
    let events = gateway.events_until(c.revision).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].revision, 3);
    match &events[0].kind {
        Some(Kind::KeyUpserted(key)) => {
            assert_eq!(key.key_hash, hash_of(&c.key));
            assert_eq!(key.key_id, c.key_id);
            assert_eq!(key.owner, "carol");
            assert!(key.enabled);
        }
        other => panic!("expected an upsert, got {other:?}"),
    }
}

#[tokio::test]
async fn a_returning_gateway_gets_only_the_events_after_its_revision() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    let first = admin.create("alice").await;
    admin.create("alice").await;
    let request = admin.request(pb::SetKeyEnabledRequest {
        key_id: first.key_id.clone(),
        enabled: false,
    });
    admin.client.set_key_enabled(request).await.unwrap();

    let mut gateway = cp.gateway("gw-1", 1).await;
    // No snapshot: the first message is the batch with revisions 2 and 3.
    let events = gateway.events_until(3).await;
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, [2, 3]);
    match &events[1].kind {
        Some(Kind::KeyUpserted(key)) => assert!(!key.enabled && key.key_id == first.key_id),
        other => panic!("expected the disable, got {other:?}"),
    }

    let request = admin.request(pb::DeleteKeyRequest {
        key_id: first.key_id.clone(),
    });
    let deleted = admin.client.delete_key(request).await.unwrap().into_inner();
    let events = gateway.events_until(deleted.revision).await;
    assert_eq!(events.len(), 1);
    match &events[0].kind {
        Some(Kind::KeyDeleted(gone)) => {
            assert_eq!(gone.key_id, first.key_id);
            assert_eq!(gone.key_hash, hash_of(&first.key));
        }
        other => panic!("expected a delete, got {other:?}"),
    }
}

#[tokio::test]
async fn a_gateway_ahead_of_the_log_gets_a_snapshot() {
    let cp = TestControlPlane::start().await;
    cp.admin().await.create("alice").await;
    let mut gateway = cp.gateway("gw-restored", 99).await;
    assert!(matches!(gateway.expect().await, Msg::SnapshotBegin(b) if b.revision == 1));
}

#[tokio::test]
async fn a_bulk_revocation_streams_in_order_without_gaps() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    let mut gateway = cp.gateway("gw-1", 0).await;
    // Empty store: an empty snapshot at revision 0.
    assert!(
        matches!(gateway.expect().await, Msg::SnapshotBegin(b) if b.revision == 0 && b.key_count == 0)
    );
    assert!(matches!(gateway.expect().await, Msg::SnapshotEnd(e) if e.revision == 0));

    for _ in 0..1200 {
        admin.create("bulk").await;
    }
    let request = admin.request(pb::RevokeOwnerRequest {
        owner: "bulk".into(),
    });
    let revoked = admin
        .client
        .revoke_owner(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revision, 2400);
    assert_eq!(revoked.deleted_key_ids.len(), 1200);

    let mut next = 1;
    while next <= 2400 {
        match gateway.expect().await {
            Msg::Events(batch) => {
                assert!(batch.events.len() <= 1000);
                for event in batch.events {
                    assert_eq!(event.revision, next, "no gap, no duplicate");
                    next += 1;
                }
            }
            other => panic!("expected events, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn pings_get_pongs_with_the_head_and_acks_reach_the_registry() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    admin.create("alice").await;
    admin.create("alice").await;
    let mut gateway = cp.gateway("gw-ping", 2).await;

    gateway.send(Out::Ack(pb::Ack { revision: 2 })).await;
    gateway
        .send(Out::Ping(pb::Ping {
            nonce: 7,
            sent_at_nanos: 123_456_789,
            staleness_ms: None,
        }))
        .await;
    match gateway.expect().await {
        Msg::Pong(pong) => {
            assert_eq!(pong.nonce, 7);
            assert_eq!(pong.sent_at_nanos, 123_456_789);
            assert_eq!(pong.head_revision, 2);
        }
        other => panic!("expected a pong, got {other:?}"),
    }

    // The reader handles messages in order, so the ack before the ping is recorded by now.
    let request = admin.request(pb::ListGatewaysRequest {});
    let list = admin
        .client
        .list_gateways(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.head_revision, 2);
    assert_eq!(list.gateways.len(), 1);
    let gw = &list.gateways[0];
    assert_eq!(gw.gateway_id, "gw-ping");
    assert_eq!(gw.region, "test");
    assert_eq!(gw.address, "127.0.0.1:8080");
    assert_eq!((gw.applied_revision, gw.lag_revisions), (2, 0));
    assert!(gw.connected);

    // A new revision makes it lag by one until it acks.
    admin.create("alice").await;
    gateway.events_until(3).await;
    let request = admin.request(pb::ListGatewaysRequest {});
    let list = admin
        .client
        .list_gateways(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.gateways[0].lag_revisions, 1);
}

#[tokio::test]
async fn wrong_or_missing_gateway_tokens_are_refused() {
    let cp = TestControlPlane::start().await;
    let missing = cp.open_stream(None).await.err().unwrap();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(missing.message(), "missing bearer token");
    for (wrong, message) in [
        (
            "not-the-gateway-token",
            "invalid gateway token (unknown or revoked)",
        ),
        (
            ADMIN_TOKEN,
            "this is an operator token: the Sync service takes a gateway token",
        ),
    ] {
        let status = cp.open_stream(Some(wrong)).await.err().unwrap();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), message);
    }
    let mut client = cp.sync_client().await;
    let lookup = pb::LookupKeyRequest {
        key_hash: vec![0; 32],
    };
    let status = client
        .lookup_key(with_token(lookup, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_stream_that_does_not_start_with_hello_is_refused() {
    let cp = TestControlPlane::start().await;
    let mut gateway = cp.open_stream(Some(GATEWAY_TOKEN)).await.unwrap();
    gateway
        .send(Out::Ping(pb::Ping {
            nonce: 1,
            sent_at_nanos: 1,
            staleness_ms: Some(3),
        }))
        .await;
    let status = gateway.next().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("must be Hello"),
        "{}",
        status.message()
    );

    let mut gateway = cp.open_stream(Some(GATEWAY_TOKEN)).await.unwrap();
    gateway.hello("", 0).await;
    let status = gateway.next().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("gateway_id"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_newer_stream_with_the_same_id_replaces_the_older() {
    let cp = TestControlPlane::start().await;
    let mut old = cp.gateway("gw-1", 0).await;
    assert!(matches!(old.expect().await, Msg::SnapshotBegin(_)));
    assert!(matches!(old.expect().await, Msg::SnapshotEnd(_)));
    let mut new = cp.gateway("gw-1", 0).await;
    assert!(matches!(new.expect().await, Msg::SnapshotBegin(_)));
    let status = old.next().await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
}

#[tokio::test]
async fn lookups_find_keys_by_hash() {
    let cp = TestControlPlane::start().await;
    let issued = cp.admin().await.create("alice").await;
    let mut client = cp.sync_client().await;

    let request = pb::LookupKeyRequest {
        key_hash: hash_of(&issued.key),
    };
    let found = client
        .lookup_key(with_token(request, Some(GATEWAY_TOKEN)))
        .await
        .unwrap()
        .into_inner();
    let key = found.key.unwrap();
    assert_eq!(key.key_id, issued.key_id);
    assert_eq!((found.key_revision, found.head_revision), (1, 1));

    let request = pb::LookupKeyRequest {
        key_hash: KeyHash([9; 32]).0.to_vec(),
    };
    let absent = client
        .lookup_key(with_token(request, Some(GATEWAY_TOKEN)))
        .await
        .unwrap()
        .into_inner();
    assert!(absent.key.is_none());
    assert_eq!((absent.key_revision, absent.head_revision), (0, 1));

    let request = pb::LookupKeyRequest {
        key_hash: vec![1, 2, 3],
    };
    let status = client
        .lookup_key(with_token(request, Some(GATEWAY_TOKEN)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("32 bytes"));
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_serve_returns() {
    let mut cp = TestControlPlane::start().await;
    let mut gateway = cp.gateway("gw-1", 0).await;
    assert!(matches!(gateway.expect().await, Msg::SnapshotBegin(_)));
    assert!(matches!(gateway.expect().await, Msg::SnapshotEnd(_)));

    // `shutdown` fails the test unless serve returns within the deadline, well below the
    // drain timeout that would otherwise cut the stream off.
    let started = std::time::Instant::now();
    cp.shutdown().await.unwrap();
    assert!(
        started.elapsed() < DEADLINE / 2,
        "took {:?}",
        started.elapsed()
    );
    match gateway.next().await {
        Err(status) => assert_eq!(status.code(), Code::Unavailable),
        Ok(None) => {}
        Ok(Some(other)) => panic!("unexpected {other:?} after shutdown"),
    }
}

/// A control plane over the database of `dir` (the layout of `support::config`), serving until
/// the returned sender is dropped: for tests that prepare or copy the database file themselves.
struct OnDatabase {
    grpc_addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OnDatabase {
    async fn start(dir: &tempfile::TempDir) -> Self {
        let control_plane =
            keygate_control_plane::ControlPlane::bind(support::config(dir), support::prometheus())
                .await
                .unwrap();
        let grpc_addr = control_plane.grpc_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(control_plane.serve(async {
            let _ = stopped.await;
        }));
        Self {
            grpc_addr,
            _stop: stop,
        }
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn admin(&self) -> Admin {
        Admin {
            client: pb::admin_client::AdminClient::new(self.channel().await),
            token: Some(ADMIN_TOKEN.into()),
            actor: None,
        }
    }

    /// A gateway stream that has said hello with `log_id` and `applied`.
    async fn gateway(&self, id: &str, log_id: &str, applied: u64) -> Gateway {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let request = with_token(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Some(GATEWAY_TOKEN),
        );
        let inbound = pb::sync_client::SyncClient::new(self.channel().await)
            .stream(request)
            .await
            .unwrap()
            .into_inner();
        let gateway = Gateway { tx, inbound };
        gateway
            .send(Out::Hello(pb::Hello {
                gateway_id: id.into(),
                applied_revision: applied,
                log_id: log_id.into(),
                ..pb::Hello::default()
            }))
            .await;
        gateway
    }
}

fn database(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("data/keygate.db")
}

/// Reads a snapshot to its end; returns its SnapshotBegin.
async fn snapshot(gateway: &mut Gateway) -> pb::SnapshotBegin {
    let begin = match gateway.expect().await {
        Msg::SnapshotBegin(begin) => begin,
        other => panic!("expected a snapshot, got {other:?}"),
    };
    loop {
        match gateway.expect().await {
            Msg::SnapshotChunk(_) => {}
            Msg::SnapshotEnd(end) => {
                assert_eq!(end.revision, begin.revision);
                return begin;
            }
            other => panic!("unexpected {other:?} inside a snapshot"),
        }
    }
}

/// Pings and returns the pong, skipping anything streamed before it.
async fn ping(gateway: &mut Gateway, nonce: u64) -> pb::Pong {
    gateway
        .send(Out::Ping(pb::Ping {
            nonce,
            sent_at_nanos: nonce,
            staleness_ms: None,
        }))
        .await;
    loop {
        if let Msg::Pong(pong) = gateway.expect().await {
            assert_eq!(pong.nonce, nonce);
            return pong;
        }
    }
}

/// The revisions of the events streamed until `revision`.
async fn revisions_until(gateway: &mut Gateway, revision: u64) -> Vec<u64> {
    let events = gateway.events_until(revision).await;
    events.iter().map(|event| event.revision).collect()
}

/// Log identity (DESIGN.md, "Storage and a highly available control plane"): a restored backup
/// keeps its log id and says it holds less than the gateway applied (which the gateway then
/// refuses: proxy/tests/sync.rs), a store of its own sends a snapshot of its own log whatever
/// the revisions, and a gateway that names no log is resumed by revision as before log ids.
#[tokio::test]
async fn the_log_id_decides_between_events_and_a_snapshot() {
    let dir_a = tempfile::tempdir().unwrap();
    let a = OnDatabase::start(&dir_a).await;
    let mut admin = a.admin().await;
    for _ in 0..3 {
        admin.create("alice").await;
    }
    // A backup of A's database at revision 3, taken while A runs (a consistent copy).
    let dir_b = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir_b.path().join("data")).unwrap();
    rusqlite::Connection::open(database(&dir_a))
        .unwrap()
        .execute("VACUUM INTO ?1", [database(&dir_b).to_str().unwrap()])
        .unwrap();
    let deleted = admin.create("carol").await;
    let request = admin.request(pb::DeleteKeyRequest {
        key_id: deleted.key_id.clone(),
    });
    let head = admin
        .client
        .delete_key(request)
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(head, 5);

    // A gateway syncs from A: the snapshot and the pongs name A's log.
    let mut gateway = a.gateway("gw-1", "", 0).await;
    let begin = snapshot(&mut gateway).await;
    let log_a = begin.log_id;
    assert!(!log_a.is_empty(), "the snapshot names its log");
    assert_eq!(begin.revision, 5);
    let pong = ping(&mut gateway, 1).await;
    assert_eq!(
        (pong.log_id.as_str(), pong.head_revision),
        (log_a.as_str(), 5)
    );
    // Same log, applied below the head: the events after it, no snapshot.
    let mut resumed = a.gateway("gw-2", &log_a, 3).await;
    assert_eq!(revisions_until(&mut resumed, 5).await, [4, 5]);

    // B is the restored backup: the same log, head 3. To the gateway at 5 it says so (in its
    // snapshot and pongs) instead of streaming anything as if from 5 on.
    let b = OnDatabase::start(&dir_b).await;
    let mut gateway = b.gateway("gw-1", &log_a, 5).await;
    let begin = snapshot(&mut gateway).await;
    assert_eq!((begin.log_id.as_str(), begin.revision), (log_a.as_str(), 3));
    let pong = ping(&mut gateway, 2).await;
    assert_eq!(
        (pong.log_id.as_str(), pong.head_revision),
        (log_a.as_str(), 3)
    );
    // A gateway of the same log at or below B's head resumes from B by events.
    let mut behind = b.gateway("gw-3", &log_a, 2).await;
    assert_eq!(revisions_until(&mut behind, 3).await, [3]);

    // C is a store of its own: another log. A gateway of A's log gets a snapshot of C's log,
    // though its revision is one C has too; a gateway that names no log resumes as before.
    let dir_c = tempfile::tempdir().unwrap();
    let c = OnDatabase::start(&dir_c).await;
    let mut admin_c = c.admin().await;
    for _ in 0..3 {
        admin_c.create("dave").await;
    }
    let mut gateway = c.gateway("gw-1", &log_a, 2).await;
    let begin = snapshot(&mut gateway).await;
    assert!(!begin.log_id.is_empty());
    assert_ne!(begin.log_id, log_a, "each store makes its own log id");
    assert_eq!((begin.revision, begin.key_count), (3, 3));
    let pong = ping(&mut gateway, 3).await;
    assert_eq!((pong.log_id, pong.head_revision), (begin.log_id, 3));
    let mut unnamed = c.gateway("gw-old", "", 2).await;
    assert_eq!(revisions_until(&mut unnamed, 3).await, [3]);
}

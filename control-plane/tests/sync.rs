//! The Sync service end to end: a real tonic client against `ControlPlane::bind` on
//! 127.0.0.1:0.

#![allow(clippy::unwrap_used)]

mod support;

use keygate_proto::pb::control_message::Msg;
use keygate_proto::pb::gateway_message::Msg as Out;
use keygate_proto::pb::{self, event::Kind};
use keygate_proto::{ApiKey, KeyHash};
use support::{ADMIN_TOKEN, DEADLINE, GATEWAY_TOKEN, TestControlPlane, with_token};
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
    for wrong in ["not-the-gateway-token", ADMIN_TOKEN] {
        let status = cp.open_stream(Some(wrong)).await.err().unwrap();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "invalid gateway token");
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

//! Session signing keys through the Admin and Sync services (DESIGN.md, "Operator access"):
//! listing and revoking over gRPC, and what gateways receive — every signing key carries the
//! session lifetime it signs with, in snapshots and in events; a revoked key arrives marked
//! revoked, after its replacement, and stays in snapshots. A control plane starting with
//! another `session_lifetime` rotates the key once, so connected gateways hear the new
//! lifetime; one starting with the same lifetime changes nothing.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use keygate_proto::pb::control_message::Msg;
use keygate_proto::pb::{self, event::Kind};
use support::{Admin, Gateway, TestControlPlane};
use tonic::Code;

/// The default `session_lifetime` (12 h), which the test control plane keeps.
const LIFETIME_MS: i64 = 12 * 3_600_000;

/// The signing keys of the snapshot a new gateway receives, by key id.
async fn snapshot_keys(gateway: &mut Gateway) -> Vec<pb::SigningKey> {
    assert!(matches!(gateway.expect().await, Msg::SnapshotBegin(_)));
    let mut keys = Vec::new();
    loop {
        match gateway.expect().await {
            Msg::SnapshotChunk(chunk) => keys.extend(chunk.signing_keys),
            Msg::SnapshotEnd(_) => break,
            other => panic!("unexpected {other:?} inside a snapshot"),
        }
    }
    keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    keys
}

async fn list(admin: &mut Admin) -> Vec<pb::SigningKeyInfo> {
    let request = admin.request(pb::ListSigningKeysRequest {});
    admin
        .client
        .list_signing_keys(request)
        .await
        .unwrap()
        .into_inner()
        .keys
}

/// The log's head revision, as a replica reads it.
async fn head(admin: &mut Admin) -> u64 {
    let request = admin.request(pb::ListGatewaysRequest {});
    admin
        .client
        .list_gateways(request)
        .await
        .unwrap()
        .into_inner()
        .head_revision
}

/// `(actor, target, revision)` of every signing-key rotation in the audit, newest first.
async fn rotations(admin: &mut Admin) -> Vec<(String, String, u64)> {
    let request = admin.request(pb::ListAuditRequest { limit: 1000 });
    admin
        .client
        .list_audit(request)
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .filter(|entry| entry.action == "signing_key.rotate")
        .map(|entry| (entry.actor, entry.target, entry.revision))
        .collect()
}

async fn create_user(admin: &mut Admin, user_id: &str) {
    let request = admin.request(pb::CreateUserRequest {
        user_id: user_id.into(),
    });
    admin.client.create_user(request).await.unwrap();
}

/// `(key id, verify until, lifetime)` of the signing keys in `events`.
fn announced_lifetimes(events: &[pb::Event]) -> Vec<(String, Option<i64>, Option<i64>)> {
    events
        .iter()
        .map(|event| match &event.kind {
            Some(Kind::SigningKey(key)) => (
                key.key_id.clone(),
                key.verify_until_unix_ms,
                key.max_session_lifetime_ms,
            ),
            other => panic!("{other:?}"),
        })
        .collect()
}

async fn revoke(admin: &mut Admin, key_id: &str) -> Result<pb::RevokeSigningKeyResponse, Code> {
    let request = admin.request(pb::RevokeSigningKeyRequest {
        key_id: key_id.into(),
    });
    admin
        .client
        .revoke_signing_key(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| status.code())
}

#[tokio::test]
async fn revoking_the_current_key_replaces_it_and_gateways_learn_both_with_the_lifetime() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    assert!(
        list(&mut admin).await.is_empty(),
        "no key before the first user"
    );
    // The first user brings the first signing key.
    let request = admin.request(pb::CreateUserRequest {
        user_id: "alice".into(),
    });
    admin.client.create_user(request).await.unwrap();
    let keys = list(&mut admin).await;
    assert_eq!(keys.len(), 1);
    let first = keys[0].key_id.clone();
    assert!(keys[0].current);
    assert_eq!(
        (keys[0].verify_until_unix_ms, keys[0].revoked_unix_ms),
        (None, None)
    );

    // A gateway's snapshot carries the key with the lifetime.
    let mut gateway = cp.gateway("gw-1", 0).await;
    let snapshot = snapshot_keys(&mut gateway).await;
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].key_id, first);
    assert_eq!(snapshot[0].max_session_lifetime_ms, Some(LIFETIME_MS));
    assert!(!snapshot[0].revoked);

    // Bad input and unknown keys change nothing.
    assert_eq!(
        revoke(&mut admin, "").await.unwrap_err(),
        Code::InvalidArgument
    );
    assert_eq!(
        revoke(&mut admin, "sk_nope").await.unwrap_err(),
        Code::NotFound
    );

    let revoked = revoke(&mut admin, &first).await.unwrap();
    assert_eq!(revoked.key_id, first);
    assert!(!revoked.already_revoked);
    assert_ne!(revoked.current_key_id, first);
    assert!(revoked.kept_until_unix_ms > 0);
    // The new key first, then the revocation; each with the lifetime it signs (signed).
    let events = gateway.events_until(revoked.revision).await;
    let announced: Vec<(String, bool, Option<i64>)> = events
        .iter()
        .map(|event| match &event.kind {
            Some(Kind::SigningKey(key)) => {
                (key.key_id.clone(), key.revoked, key.max_session_lifetime_ms)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        announced,
        [
            (revoked.current_key_id.clone(), false, Some(LIFETIME_MS)),
            (first.clone(), true, Some(LIFETIME_MS)),
        ]
    );

    // Listed as such; a gateway that connects now gets the revoked key in its snapshot.
    let keys = list(&mut admin).await;
    let states: Vec<(String, bool, bool)> = keys
        .iter()
        .map(|key| {
            (
                key.key_id.clone(),
                key.current,
                key.revoked_unix_ms.is_some(),
            )
        })
        .collect();
    assert!(states.contains(&(revoked.current_key_id.clone(), true, false)));
    assert!(states.contains(&(first.clone(), false, true)));
    assert_eq!(states.len(), 2);
    let mut late = cp.gateway("gw-2", 0).await;
    let snapshot = snapshot_keys(&mut late).await;
    let in_snapshot: Vec<(String, bool, Option<i64>, Option<i64>)> = snapshot
        .iter()
        .map(|key| {
            (
                key.key_id.clone(),
                key.revoked,
                key.verify_until_unix_ms,
                key.max_session_lifetime_ms,
            )
        })
        .collect();
    assert!(in_snapshot.contains(&(
        first.clone(),
        true,
        Some(revoked.kept_until_unix_ms),
        Some(LIFETIME_MS)
    )));
    assert!(in_snapshot.contains(&(
        revoked.current_key_id.clone(),
        false,
        None,
        Some(LIFETIME_MS)
    )));
    assert_eq!(in_snapshot.len(), 2);

    // Revoking it again is no change: the head comes back to wait on.
    let again = revoke(&mut admin, &first).await.unwrap();
    assert!(again.already_revoked);
    assert_eq!(again.revision, revoked.revision);
    assert_eq!(again.current_key_id, revoked.current_key_id);
}

/// One PostgreSQL database, replicas configured with different session lifetimes. A replica
/// starting with the lifetime of the current key changes nothing; one starting with another
/// rotates the key once (audited as `system`), and a gateway that stays connected to another
/// replica hears it as ordinary events: the new key with the new lifetime, then the old one
/// retired with the lifetime it signed. Replicas do not answer each other's rotations: each
/// checks once, at its start, so the last to start sets the lifetime.
#[tokio::test]
async fn a_new_session_lifetime_rotates_the_key_once_at_start_and_connected_gateways_hear_it() {
    const HOUR: Duration = Duration::from_secs(3600);
    const HOUR_MS: i64 = 3_600_000;
    let server = keygate_test_postgres::TestPostgres::start().unwrap();
    let url = server.create_database("key_lifetime").unwrap();
    let one_hour = |config: &mut keygate_control_plane::ControlPlaneConfig| {
        config.session_lifetime = HOUR;
    };
    let mut short = TestControlPlane::start_configured(Some(&url), one_hour).await;
    let mut admin = short.admin().await;
    create_user(&mut admin, "alice").await;
    let keys = list(&mut admin).await;
    assert_eq!(keys.len(), 1);
    let first = keys[0].key_id.clone();
    let mut gateway = short.gateway("gw-1", 0).await;
    let snapshot = snapshot_keys(&mut gateway).await;
    let in_snapshot: Vec<(String, Option<i64>)> = snapshot
        .iter()
        .map(|key| (key.key_id.clone(), key.max_session_lifetime_ms))
        .collect();
    assert_eq!(in_snapshot, [(first.clone(), Some(HOUR_MS))]);
    let start_head = head(&mut admin).await;

    // Another replica with the same lifetime: nothing changes.
    let mut same = TestControlPlane::start_configured(Some(&url), one_hour).await;
    let mut same_admin = same.admin().await;
    assert_eq!(head(&mut same_admin).await, start_head);
    assert_eq!(list(&mut same_admin).await, keys);
    assert!(rotations(&mut same_admin).await.is_empty());
    same.shutdown().await.unwrap();

    // A replica with the default 12 h: one rotation, heard by the gateway on `short`.
    let mut long = TestControlPlane::start_on(Some(&url)).await;
    let mut long_admin = long.admin().await;
    let rotated_head = head(&mut long_admin).await;
    assert_eq!(rotated_head, start_head + 2, "one rotation: two events");
    let keys = list(&mut long_admin).await;
    let current = keys.iter().find(|key| key.current).unwrap().key_id.clone();
    assert_ne!(current, first);
    assert_eq!(keys.len(), 2);
    assert_eq!(
        rotations(&mut long_admin).await,
        [("system".to_owned(), current.clone(), rotated_head)]
    );
    let events = gateway.events_until(rotated_head).await;
    let announced = announced_lifetimes(&events);
    assert_eq!(announced.len(), 2, "{announced:?}");
    assert_eq!(announced[0], (current.clone(), None, Some(LIFETIME_MS)));
    assert_eq!((&announced[1].0, announced[1].2), (&first, Some(HOUR_MS)));
    assert!(announced[1].1.is_some(), "the old key is retired");

    // `short`, still running with one hour, does not rotate back: it signs with the 12 h key
    // (cutting its sessions to its own hour). Restarted, it is the last to start and rotates
    // once more, to one hour; `long` does not answer.
    short.shutdown().await.unwrap();
    let short = TestControlPlane::start_configured(Some(&url), one_hour).await;
    let mut admin = short.admin().await;
    let final_head = head(&mut admin).await;
    assert_eq!(final_head, rotated_head + 2);
    let keys = list(&mut admin).await;
    let last = keys.iter().find(|key| key.current).unwrap().key_id.clone();
    assert_eq!(keys.len(), 3);
    assert_eq!(
        rotations(&mut admin).await,
        [
            ("system".to_owned(), last.clone(), final_head),
            ("system".to_owned(), current.clone(), rotated_head)
        ]
    );
    let mut resumed = long.gateway("gw-2", rotated_head).await;
    let announced = announced_lifetimes(&resumed.events_until(final_head).await);
    assert_eq!(announced[0], (last, None, Some(HOUR_MS)));
    assert_eq!(
        (&announced[1].0, announced[1].2),
        (&current, Some(LIFETIME_MS))
    );
    assert_eq!(head(&mut long_admin).await, final_head);
    long.shutdown().await.unwrap();
}

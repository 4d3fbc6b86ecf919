//! End to end: a real control plane, two gateways and an echo upstream on 127.0.0.1:0, walking
//! every step an operator and an API caller take with API keys.

#![allow(clippy::unwrap_used)]

mod support;

use keygate_proto::pb;
use support::{Cluster, eventually, expect_verdict, get_with_key, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_works_at_once_at_every_gateway_and_identity_headers_cannot_be_spoofed() {
    let cluster = Cluster::start(2).await;
    let issued = cluster.create_key("alice").await;
    assert!(issued.key.starts_with("kg_"));

    // No waiting for the sync stream: a miss for a well-formed key is looked up.
    for gateway in &cluster.gateways {
        let auth = format!("Bearer {}", issued.key);
        let reply = send(
            "GET",
            &gateway.url("/orders?id=7"),
            &[
                ("authorization", auth.as_bytes()),
                ("x-keygate-owner", b"mallory"),
                ("x-keygate-key-id", b"key_forged"),
                ("x-keygate-user-id", b"root"),
            ],
            b"",
        )
        .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let seen = reply.json();
        assert_eq!(seen["path"], "/orders");
        assert_eq!(seen["headers"]["x-keygate-owner"], "alice");
        assert_eq!(seen["headers"]["x-keygate-key-id"], issued.key_id.as_str());
        assert!(
            seen["headers"].get("x-keygate-user-id").is_none(),
            "spoofed header forwarded"
        );
        assert!(
            seen["headers"].get("authorization").is_none(),
            "credential forwarded"
        );
    }

    // X-API-Key works too, and is not forwarded either.
    let reply = send(
        "GET",
        &cluster.gateways[1].url("/x"),
        &[("x-api-key", issued.key.as_bytes())],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.json()["headers"].get("x-api-key").is_none());

    // No credential at all.
    let reply = send("GET", &cluster.gateways[0].url("/x"), &[], b"").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.code(), "MISSING");
    assert!(reply.json()["requestId"].is_string());
    assert!(reply.headers.contains_key("www-authenticate"));

    // The no-auth route forwards without a credential.
    let reply = send("GET", &cluster.gateways[0].url("/public/info"), &[], b"").await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_enable_and_delete_reach_every_gateway() {
    let cluster = Cluster::start(2).await;
    let issued = cluster.create_key("alice").await;
    let mut admin = cluster.admin().await;
    for gateway in &cluster.gateways {
        expect_verdict(&gateway.url("/"), &issued.key, 200, None).await;
    }

    let change = admin
        .set_key_enabled(pb::SetKeyEnabledRequest {
            key_id: issued.key_id.clone(),
            enabled: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(change.revision > issued.revision);
    for gateway in &cluster.gateways {
        expect_verdict(&gateway.url("/"), &issued.key, 403, Some("DISABLED")).await;
    }

    admin
        .set_key_enabled(pb::SetKeyEnabledRequest {
            key_id: issued.key_id.clone(),
            enabled: true,
        })
        .await
        .unwrap();
    for gateway in &cluster.gateways {
        expect_verdict(&gateway.url("/"), &issued.key, 200, None).await;
    }

    admin
        .delete_key(pb::DeleteKeyRequest {
            key_id: issued.key_id.clone(),
        })
        .await
        .unwrap();
    for gateway in &cluster.gateways {
        expect_verdict(&gateway.url("/"), &issued.key, 401, Some("NOT_FOUND")).await;
    }
    let gone = admin
        .get_key(pb::GetKeyRequest {
            key_id: issued.key_id.clone(),
        })
        .await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reroll_with_grace_keeps_the_old_key_until_the_grace_ends() {
    let cluster = Cluster::start(2).await;
    let old = cluster.create_key("alice").await;
    let mut admin = cluster.admin().await;
    let new = admin
        .reroll_key(pb::RerollKeyRequest {
            key_id: old.key_id.clone(),
            grace_ms: 2_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(new.key, old.key);
    assert_ne!(new.key_id, old.key_id);
    let old_record = admin
        .get_key(pb::GetKeyRequest {
            key_id: old.key_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let expires = old_record.expires_unix_ms.expect("old key got an expiry");
    assert!(
        expires > keygate_proto::time::now_unix_ms(),
        "grace already over"
    );

    for gateway in &cluster.gateways {
        // The new key works at once; the old one still works inside the grace.
        expect_verdict(&gateway.url("/"), &new.key, 200, None).await;
        let reply = get_with_key(&gateway.url("/"), &old.key).await;
        if keygate_proto::time::now_unix_ms() < expires - 200 {
            assert_eq!(reply.status, 200, "old key refused inside its grace");
        }
    }
    for gateway in &cluster.gateways {
        expect_verdict(&gateway.url("/"), &old.key, 401, Some("EXPIRED")).await;
        expect_verdict(&gateway.url("/"), &new.key, 200, None).await;
    }

    // Grace 0 revokes the old key at once.
    let newer = admin
        .reroll_key(pb::RerollKeyRequest {
            key_id: new.key_id.clone(),
            grace_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for gateway in &cluster.gateways {
        expect_verdict(&gateway.url("/"), &new.key, 401, Some("EXPIRED")).await;
        expect_verdict(&gateway.url("/"), &newer.key, 200, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_owner_deletes_only_that_owners_keys() {
    let cluster = Cluster::start(2).await;
    let mut bobs = Vec::new();
    for _ in 0..3 {
        bobs.push(cluster.create_key("bob").await);
    }
    let alices = cluster.create_key("alice").await;
    let mut admin = cluster.admin().await;
    let revoked = admin
        .revoke_owner(pb::RevokeOwnerRequest {
            owner: "bob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut deleted = revoked.deleted_key_ids.clone();
    deleted.sort();
    let mut expected: Vec<_> = bobs.iter().map(|k| k.key_id.clone()).collect();
    expected.sort();
    assert_eq!(deleted, expected);
    for gateway in &cluster.gateways {
        for bob in &bobs {
            expect_verdict(&gateway.url("/"), &bob.key, 401, Some("NOT_FOUND")).await;
        }
        expect_verdict(&gateway.url("/"), &alices.key, 200, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_with_a_cursor_and_audit_records_every_change() {
    let cluster = Cluster::start(1).await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(cluster.create_key("carol").await.key_id);
    }
    cluster.create_key("dave").await;
    let mut admin = cluster.admin().await;

    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .list_keys(pb::ListKeysRequest {
                owner: "carol".into(),
                limit: 2,
                cursor: cursor.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.keys.len() <= 2);
        for key in &page.keys {
            assert_eq!(key.owner, "carol");
            assert!(!key.start.is_empty());
            seen.push(key.key_id.clone());
        }
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
        assert!(pages < 10, "pagination does not end");
    }
    seen.sort();
    created.sort();
    assert_eq!(seen, created, "every key exactly once");
    assert!(pages >= 3);

    admin
        .set_key_enabled(pb::SetKeyEnabledRequest {
            key_id: created[0].clone(),
            enabled: false,
        })
        .await
        .unwrap();
    admin
        .delete_key(pb::DeleteKeyRequest {
            key_id: created[1].clone(),
        })
        .await
        .unwrap();
    let audit = admin
        .list_audit(pb::ListAuditRequest { limit: 100 })
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<_> = audit
        .entries
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        actions[0],
        ("key.delete", created[1].as_str()),
        "newest first: {actions:?}"
    );
    assert_eq!(actions[1], ("key.disable", created[0].as_str()));
    assert_eq!(
        audit
            .entries
            .iter()
            .filter(|e| e.action == "key.create")
            .count(),
        6
    );
    assert!(
        audit
            .entries
            .iter()
            .all(|e| e.revision > 0 && !e.actor.is_empty() && e.at_unix_ms > 0)
    );
    assert!(audit.entries[0].revision > audit.entries[1].revision);
    let garbage = admin
        .list_keys(pb::ListKeysRequest {
            owner: String::new(),
            limit: 2,
            cursor: "%%%not-a-cursor".into(),
        })
        .await;
    assert_eq!(garbage.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_keeps_gateways_serving_and_they_resume_without_a_snapshot() {
    let mut cluster = Cluster::start(2).await;
    let kept = cluster.create_key("alice").await;
    let doomed = cluster.create_key("alice").await;
    cluster.wait_applied(doomed.revision).await;
    let snapshots: Vec<_> = cluster
        .gateways
        .iter()
        .map(|g| g.status.snapshots_applied())
        .collect();

    cluster.stop_control_plane().await;
    for gateway in &cluster.gateways {
        let status = gateway.status.clone();
        eventually("gateway notices the control plane is gone", || {
            let status = status.clone();
            async move { !status.connected() }
        })
        .await;
        // Still serving from the replica.
        expect_verdict(&gateway.url("/"), &kept.key, 200, None).await;
    }

    cluster.start_control_plane().await;
    let mut admin = cluster.admin().await;
    // Keys survived the restart (SQLite file).
    admin
        .get_key(pb::GetKeyRequest {
            key_id: kept.key_id.clone(),
        })
        .await
        .unwrap();
    let change = admin
        .set_key_enabled(pb::SetKeyEnabledRequest {
            key_id: doomed.key_id.clone(),
            enabled: false,
        })
        .await
        .unwrap()
        .into_inner();
    cluster.wait_applied(change.revision).await;
    for (gateway, before) in cluster.gateways.iter().zip(snapshots) {
        expect_verdict(&gateway.url("/"), &doomed.key, 403, Some("DISABLED")).await;
        expect_verdict(&gateway.url("/"), &kept.key, 200, None).await;
        assert_eq!(
            gateway.status.snapshots_applied(),
            before,
            "reconnect took a full snapshot"
        );
        assert!(gateway.status.connected());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_later_gets_everything_from_a_snapshot() {
    let mut cluster = Cluster::start(1).await;
    let live = cluster.create_key("alice").await;
    let disabled = cluster.create_key("alice").await;
    let deleted = cluster.create_key("alice").await;
    let mut admin = cluster.admin().await;
    admin
        .set_key_enabled(pb::SetKeyEnabledRequest {
            key_id: disabled.key_id.clone(),
            enabled: false,
        })
        .await
        .unwrap();
    let last = admin
        .delete_key(pb::DeleteKeyRequest {
            key_id: deleted.key_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    let late = cluster.add_gateway().await;
    assert_eq!(late.status.snapshots_applied(), 1);
    assert!(late.status.applied_revision() >= last.revision);
    assert_eq!(late.status.replica_len(), 2);
    let url = late.url("/");
    expect_verdict(&url, &live.key, 200, None).await;
    expect_verdict(&url, &disabled.key, 403, Some("DISABLED")).await;
    expect_verdict(&url, &deleted.key, 401, Some("NOT_FOUND")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_endpoint_health_readiness_and_metrics() {
    let cluster = Cluster::start(1).await;
    let issued = cluster
        .admin()
        .await
        .create_key(pb::CreateKeyRequest {
            owner: "erin".into(),
            meta: [("plan".to_owned(), "pro".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let gateway = &cluster.gateways[0];
    let body = serde_json::json!({"key": issued.key}).to_string();
    let reply = send(
        "POST",
        &gateway.url("/_keygate/v1/verify"),
        &[("content-type", b"application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let verdict = reply.json();
    assert_eq!(verdict["valid"], true);
    assert_eq!(verdict["code"], "VALID");
    assert_eq!(verdict["keyId"], issued.key_id.as_str());
    assert_eq!(verdict["owner"], "erin");
    assert_eq!(verdict["meta"]["plan"], "pro");

    let reply = send(
        "POST",
        &gateway.url("/_keygate/v1/verify"),
        &[],
        br#"{"key":"kg_nope"}"#,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["valid"], false);
    assert_eq!(reply.json()["code"], "MALFORMED");

    let reply = send(
        "POST",
        &gateway.url("/_keygate/v1/verify"),
        &[],
        b"{not json",
    )
    .await;
    assert_eq!(reply.status, 400);

    let admin = format!("http://{}", gateway.admin_addr);
    assert_eq!(
        send("GET", &format!("{admin}/healthz"), &[], b"")
            .await
            .status,
        200
    );
    assert_eq!(
        send("GET", &format!("{admin}/readyz"), &[], b"")
            .await
            .status,
        200
    );
    let metrics = send("GET", &format!("{admin}/metrics"), &[], b"").await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("keygate_verifications_total"), "{text}");
    assert!(text.contains("keygate_replica_revision"), "{text}");

    let cp = format!("http://{}", cluster.http_addr);
    assert_eq!(
        send("GET", &format!("{cp}/healthz"), &[], b"").await.status,
        200
    );
    let metrics = send("GET", &format!("{cp}/metrics"), &[], b"").await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("keygate_cp_head_revision"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_first_requests_for_a_new_key_all_succeed() {
    let cluster = Cluster::start(1).await;
    let issued = cluster.create_key("frank").await;
    let url = cluster.gateways[0].url("/burst");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let url = url.clone();
        let key = issued.key.clone();
        tasks.push(tokio::spawn(async move {
            get_with_key(&url, &key).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    // An unknown well-formed key is refused, and asking again stays refused.
    let unknown = keygate_proto::ApiKey::generate(&keygate_proto::KeyPrefix::default());
    for _ in 0..3 {
        let reply = get_with_key(&url, &unknown).await;
        assert_eq!((reply.status, reply.code().as_str()), (401, "NOT_FOUND"));
    }
}

//! The Admin service and the HTTP listener end to end, against `ControlPlane::bind` on
//! 127.0.0.1:0.

#![allow(clippy::unwrap_used)]

mod support;

use keygate_control_plane::{ControlPlane, ControlPlaneConfig, ControlPlaneError};
use keygate_proto::pb;
use support::{GATEWAY_TOKEN, TestControlPlane, config, prometheus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

#[tokio::test]
async fn wrong_or_missing_admin_tokens_are_refused() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    for (token, message) in [
        (None, "missing bearer token"),
        (
            Some("not-the-admin-token-at-all"),
            "invalid operator token (unknown or revoked)",
        ),
        (
            Some(GATEWAY_TOKEN),
            "this is a gateway token: the Admin service takes an operator token",
        ),
    ] {
        admin.token = token.map(str::to_owned);
        let request = admin.request(pb::CreateKeyRequest {
            owner: "alice".into(),
            ..pb::CreateKeyRequest::default()
        });
        let status = admin.client.create_key(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), message);
        let request = admin.request(pb::ListGatewaysRequest {});
        assert_eq!(
            admin
                .client
                .list_gateways(request)
                .await
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
    }
    // Nothing was created by the refused calls.
    admin.token = Some(support::ADMIN_TOKEN.into());
    let request = admin.request(pb::ListKeysRequest::default());
    assert!(
        admin
            .client
            .list_keys(request)
            .await
            .unwrap()
            .into_inner()
            .keys
            .is_empty()
    );
}

#[tokio::test]
async fn bad_key_ids_are_invalid_arguments() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    for bad in [
        "",
        "key_",
        "nonsense",
        "key_!!!!!!!!!!!!!!!!!!!!!!",
        "key_zzzzzzzzzzzzzzzzzzzzzz",
    ] {
        let get = admin.request(pb::GetKeyRequest { key_id: bad.into() });
        let status = admin.client.get_key(get).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(status.message().contains("key"), "{}", status.message());

        let disable = admin.request(pb::SetKeyEnabledRequest {
            key_id: bad.into(),
            enabled: false,
        });
        assert_eq!(
            admin
                .client
                .set_key_enabled(disable)
                .await
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        let delete = admin.request(pb::DeleteKeyRequest { key_id: bad.into() });
        assert_eq!(
            admin.client.delete_key(delete).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        let reroll = admin.request(pb::RerollKeyRequest {
            key_id: bad.into(),
            grace_ms: 0,
        });
        assert_eq!(
            admin.client.reroll_key(reroll).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    let unknown = "key_0000000000000000000000";
    let get = admin.request(pb::GetKeyRequest {
        key_id: unknown.into(),
    });
    let status = admin.client.get_key(get).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(unknown));
    let delete = admin.request(pb::DeleteKeyRequest {
        key_id: unknown.into(),
    });
    assert_eq!(
        admin.client.delete_key(delete).await.unwrap_err().code(),
        Code::NotFound
    );

    let create = admin.request(pb::CreateKeyRequest {
        owner: "alice".into(),
        prefix: "no-dashes".into(),
        ..pb::CreateKeyRequest::default()
    });
    let status = admin.client.create_key(create).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("prefix"));
    let revoke = admin.request(pb::RevokeOwnerRequest {
        owner: String::new(),
    });
    assert_eq!(
        admin.client.revoke_owner(revoke).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn key_lifecycle_through_the_admin_service() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    // A claimed actor is ignored: the audit names the token (the bootstrap one: "admin").
    admin.actor = Some("alice@example.com".into());
    let create = admin.request(pb::CreateKeyRequest {
        owner: "acme".into(),
        prefix: "acme".into(),
        name: "billing".into(),
        meta: [("plan".to_owned(), "pro".to_owned())].into(),
        ..pb::CreateKeyRequest::default()
    });
    let issued = admin.client.create_key(create).await.unwrap().into_inner();
    assert!(issued.key.starts_with("acme_"));
    assert_eq!(issued.revision, 1);
    let record = issued.record.clone().unwrap();
    assert_eq!(record.key_id, issued.key_id);
    assert!(issued.key.starts_with(&record.start));
    assert_eq!(record.start.len(), "acme_".len() + 4);

    // The plaintext never comes back.
    let get = admin.request(pb::GetKeyRequest {
        key_id: issued.key_id.clone(),
    });
    let key = admin.client.get_key(get).await.unwrap().into_inner();
    assert_eq!(key, record);
    let list = admin.request(pb::ListKeysRequest {
        owner: "acme".into(),
        ..Default::default()
    });
    let listed = admin.client.list_keys(list).await.unwrap().into_inner();
    assert_eq!(listed.keys, std::slice::from_ref(&record));
    assert!(listed.next_cursor.is_empty());
    let bad_cursor = admin.request(pb::ListKeysRequest {
        cursor: "%%%".into(),
        ..Default::default()
    });
    assert_eq!(
        admin.client.list_keys(bad_cursor).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let disable = || {
        admin.request(pb::SetKeyEnabledRequest {
            key_id: issued.key_id.clone(),
            enabled: false,
        })
    };
    let first = disable();
    let second = disable();
    let changed = admin
        .client
        .set_key_enabled(first)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.revision, 2);
    assert!(!changed.key.unwrap().enabled);
    let again = admin
        .client
        .set_key_enabled(second)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revision, 2, "no new event for a no-op");

    let reroll = admin.request(pb::RerollKeyRequest {
        key_id: issued.key_id.clone(),
        grace_ms: 0,
    });
    let rerolled = admin.client.reroll_key(reroll).await.unwrap().into_inner();
    assert!(rerolled.key.starts_with("acme_"));
    assert_eq!(rerolled.revision, 4);
    assert!(
        !rerolled.record.unwrap().enabled,
        "a reroll keeps the enabled state"
    );

    let delete = admin.request(pb::DeleteKeyRequest {
        key_id: issued.key_id.clone(),
    });
    let deleted = admin.client.delete_key(delete).await.unwrap().into_inner();
    assert_eq!((deleted.revision, deleted.key), (5, None));
    let get = admin.request(pb::GetKeyRequest {
        key_id: issued.key_id.clone(),
    });
    assert_eq!(
        admin.client.get_key(get).await.unwrap_err().code(),
        Code::NotFound
    );

    let audit = admin.request(pb::ListAuditRequest { limit: 0 });
    let entries = admin
        .client
        .list_audit(audit)
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "key.delete",
            "key.reroll",
            "key.disable",
            "key.disable",
            "key.create"
        ]
    );
    assert!(entries.iter().all(|e| e.actor == "admin"));
    assert!(entries.iter().all(|e| !e.detail_json.contains(&issued.key)));
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(support::DEADLINE, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn http_serves_health_metrics_and_json_404s() {
    let cp = TestControlPlane::start().await;
    cp.admin().await.create("alice").await;
    let (status, body) = http_get(cp.http_addr, "/healthz").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        health,
        serde_json::json!({ "status": "ok", "headRevision": 1 })
    );

    let (status, _) = http_get(cp.http_addr, "/metrics").await;
    assert_eq!(status, 200);

    let (status, body) = http_get(cp.http_addr, "/nope").await;
    assert_eq!(status, 404);
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn bind_fails_fast_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the error says which database, without its password.
    let postgres = ControlPlaneConfig {
        database: "postgres://keygate:secret@127.0.0.1:1/keygate".into(),
        ..config(&dir)
    };
    let error = ControlPlane::bind(postgres, prometheus())
        .await
        .err()
        .unwrap();
    assert!(matches!(error, ControlPlaneError::Store(_)), "{error}");
    let message = keygate_proto::error_chain(&error);
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("secret"), "{message}");

    let no_token = ControlPlaneConfig {
        admin_token: String::new(),
        ..config(&dir)
    };
    let error = ControlPlane::bind(no_token, prometheus())
        .await
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "invalid configuration: admin_token is required"
    );

    // A port already taken names the listener and the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = ControlPlaneConfig {
        http_listen: taken.local_addr().unwrap(),
        ..config(&dir)
    };
    let error = ControlPlane::bind(busy, prometheus()).await.err().unwrap();
    assert!(
        error
            .to_string()
            .starts_with("could not listen for HTTP on"),
        "{error}"
    );
}

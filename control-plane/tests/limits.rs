//! Limits per key end to end on the control plane (DESIGN.md, "Limits and permissions per
//! key"): a real tonic client against `ControlPlane::bind` on 127.0.0.1:0. Gateways lease
//! credits and return them over their sync stream, hear what the other gateways used, and
//! operators see both with `GetKey`; identities reach gateways in snapshots and events.

#![allow(clippy::unwrap_used)]

mod support;

use keygate_proto::pb;
use keygate_proto::pb::control_message::Msg;
use keygate_proto::pb::event::Kind;
use keygate_proto::pb::gateway_message::Msg as Out;
use support::{Admin, Gateway, TestControlPlane, eventually_async};
use tonic::Code;

/// The longest rate-limit window: a test never sees one end.
const WINDOW_MS: u64 = 30 * 24 * 3600 * 1000;

fn requests_limit(limit: u64) -> pb::RateLimit {
    pb::RateLimit {
        name: "requests".into(),
        limit,
        window_ms: WINDOW_MS,
    }
}

/// Reads a snapshot to its end; returns the identities it carried.
async fn snapshot(gateway: &mut Gateway) -> Vec<pb::Identity> {
    assert!(matches!(gateway.expect().await, Msg::SnapshotBegin(_)));
    let mut identities = Vec::new();
    loop {
        match gateway.expect().await {
            Msg::SnapshotChunk(chunk) => identities.extend(chunk.identities),
            Msg::SnapshotEnd(_) => return identities,
            other => panic!("expected a snapshot chunk, got {other:?}"),
        }
    }
}

async fn get_key(admin: &mut Admin, key_id: &str) -> pb::Key {
    let request = admin.request(pb::GetKeyRequest {
        key_id: key_id.into(),
    });
    admin.client.get_key(request).await.unwrap().into_inner()
}

fn usage(holder: &str, start: i64, used: u64) -> Out {
    Out::Usage(pb::UsageReport {
        windows: vec![pb::WindowUsage {
            holder: holder.into(),
            limit: "requests".into(),
            window_start_unix_ms: start,
            used,
        }],
    })
}

#[tokio::test]
async fn gateways_lease_credits_and_hear_what_the_others_used_of_rate_limits() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    let create = admin.request(pb::CreateIdentityRequest {
        identity_id: "acme".into(),
        ratelimits: vec![requests_limit(50)],
        ..pb::CreateIdentityRequest::default()
    });
    admin.client.create_identity(create).await.unwrap();
    let create = admin.request(pb::CreateKeyRequest {
        owner: "alice".into(),
        ratelimits: vec![requests_limit(1000)],
        credits: Some(100),
        permissions: vec!["orders.write".into(), "orders.read".into()],
        identity: "acme".into(),
        ..pb::CreateKeyRequest::default()
    });
    let issued = admin.client.create_key(create).await.unwrap().into_inner();
    let key = issued.record.unwrap();
    assert_eq!(key.permissions, ["orders.read", "orders.write"]);
    assert_eq!(key.identity, "acme");
    assert_eq!(key.credits.as_ref().map(|c| c.remaining), Some(100));
    let holder = format!("key:{}", issued.key_id);

    let mut a = cp.gateway("gw-a", 0).await;
    let identities = snapshot(&mut a).await;
    assert_eq!(identities.len(), 1);
    assert_eq!(identities[0].identity_id, "acme");
    assert_eq!(identities[0].ratelimits, [requests_limit(50)]);
    let mut b = cp.gateway("gw-b", 0).await;
    snapshot(&mut b).await;

    // A lease comes back on the stream, echoing the request; it is the asking gateway's.
    a.send(Out::LeaseRequest(pb::LeaseRequest {
        holder: holder.clone(),
        wanted: 10,
        request_id: 41,
    }))
    .await;
    let grant = match a.expect().await {
        Msg::Lease(grant) => grant,
        other => panic!("expected a lease grant, got {other:?}"),
    };
    assert_eq!((grant.request_id, grant.granted), (41, 10));
    assert!(!grant.exhausted);
    assert!(grant.lease_id.starts_with("lease_"), "{}", grant.lease_id);
    assert_eq!(grant.holder, holder);
    let credits = get_key(&mut admin, &issued.key_id).await.credits.unwrap();
    assert_eq!((credits.remaining, credits.leased), (90, 10));
    // The gateway spent 6 and returns the rest.
    a.send(Out::LeaseReturn(pb::LeaseReturn {
        lease_id: grant.lease_id,
        holder: holder.clone(),
        unspent: 4,
    }))
    .await;
    eventually_async(|| {
        let mut admin = Admin {
            client: admin.client.clone(),
            token: admin.token.clone(),
            actor: None,
        };
        let key_id = issued.key_id.clone();
        async move {
            let credits = get_key(&mut admin, &key_id).await.credits.unwrap();
            (credits.remaining, credits.leased) == (94, 0)
        }
    })
    .await;

    // Each gateway hears what the other used in the window, and how many gateways are live.
    let now = keygate_proto::time::now_unix_ms();
    let start = now - now.rem_euclid(WINDOW_MS as i64);
    a.send(usage(&holder, start, 3)).await;
    b.send(usage(&holder, start, 5)).await;
    for (gateway, others) in [(&mut a, 5), (&mut b, 3)] {
        match gateway.expect().await {
            Msg::Usage(update) => {
                assert_eq!(update.live_gateways, 2);
                assert_eq!(
                    update.windows,
                    [pb::WindowUsage {
                        holder: holder.clone(),
                        limit: "requests".into(),
                        window_start_unix_ms: start,
                        used: others,
                    }]
                );
            }
            other => panic!("expected a usage update, got {other:?}"),
        }
    }
    let shown = get_key(&mut admin, &issued.key_id).await;
    assert_eq!(
        shown.usage,
        [pb::LimitUsage {
            limit: "requests".into(),
            window_start_unix_ms: start,
            used: 8,
        }]
    );

    // Identity changes flow to gateways as events.
    let update = admin.request(pb::UpdateIdentityRequest {
        identity_id: "acme".into(),
        credits: Some(500),
        ..pb::UpdateIdentityRequest::default()
    });
    let changed = admin
        .client
        .update_identity(update)
        .await
        .unwrap()
        .into_inner();
    let events = a.events_until(changed.revision).await;
    assert!(
        events.iter().any(|event| matches!(
            &event.kind,
            Some(Kind::IdentityUpserted(identity)) if identity.identity_id == "acme" && identity.credits
        )),
        "{events:?}"
    );
}

#[tokio::test]
async fn changes_to_limits_are_checked_and_identities_in_use_are_kept() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;

    let refill = || {
        Some(pb::Refill {
            amount: 10,
            interval_ms: 60_000,
            next_unix_ms: 0,
        })
    };
    let request = admin.request(pb::CreateKeyRequest {
        owner: "alice".into(),
        refill: refill(),
        ..pb::CreateKeyRequest::default()
    });
    let refused = admin.client.create_key(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("refill needs credits"),
        "{refused:?}"
    );
    let request = admin.request(pb::CreateKeyRequest {
        owner: "alice".into(),
        permissions: vec!["orders.*".into()],
        ..pb::CreateKeyRequest::default()
    });
    let refused = admin.client.create_key(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    let plain = admin.create("alice").await;
    let request = admin.request(pb::UpdateKeyRequest {
        key_id: plain.key_id.clone(),
        refill: refill(),
        ..pb::UpdateKeyRequest::default()
    });
    let refused = admin.client.update_key(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("no credits"), "{refused:?}");

    // Credits, a refill and an identity (created on the way) at once.
    let request = admin.request(pb::UpdateKeyRequest {
        key_id: plain.key_id.clone(),
        credits: Some(25),
        refill: refill(),
        identity: Some("acme".into()),
        set_ratelimits: true,
        ratelimits: vec![requests_limit(9)],
        ..pb::UpdateKeyRequest::default()
    });
    let changed = admin.client.update_key(request).await.unwrap().into_inner();
    let key = changed.key.unwrap();
    assert_eq!(key.identity, "acme");
    assert_eq!(key.ratelimits, [requests_limit(9)]);
    let credits = key.credits.unwrap();
    assert_eq!(credits.remaining, 25);
    let refill_shown = credits.refill.unwrap();
    assert_eq!(
        (refill_shown.amount, refill_shown.interval_ms),
        (10, 60_000)
    );
    assert!(refill_shown.next_unix_ms > 0);

    let request = admin.request(pb::DeleteIdentityRequest {
        identity_id: "acme".into(),
    });
    let refused = admin.client.delete_identity(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("1 key(s)"), "{refused:?}");

    // Identities page like keys.
    for id in ["beta", "gamma"] {
        let request = admin.request(pb::CreateIdentityRequest {
            identity_id: id.into(),
            ..pb::CreateIdentityRequest::default()
        });
        admin.client.create_identity(request).await.unwrap();
    }
    let request = admin.request(pb::CreateIdentityRequest {
        identity_id: "beta".into(),
        ..pb::CreateIdentityRequest::default()
    });
    let refused = admin.client.create_identity(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let request = admin.request(pb::ListIdentitiesRequest {
            limit: 2,
            cursor: cursor.clone(),
        });
        let page = admin
            .client
            .list_identities(request)
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.identities.into_iter().map(|i| i.identity_id));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(seen, ["acme", "beta", "gamma"]);

    let request = admin.request(pb::DeleteIdentityRequest {
        identity_id: "gamma".into(),
    });
    admin.client.delete_identity(request).await.unwrap();
    let request = admin.request(pb::GetIdentityRequest {
        identity_id: "gamma".into(),
    });
    let missing = admin.client.get_identity(request).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

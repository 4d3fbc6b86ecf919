//! Operator access end to end, against `ControlPlane::bind` on 127.0.0.1:0: scoped operator
//! tokens (every Admin RPC × every scope), revocation, the audit actor, and per-gateway tokens
//! on the Sync service (bound ids, one live stream, acks, revocation, lookups).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use keygate_proto::pb;
use keygate_proto::pb::admin_client::AdminClient;
use keygate_proto::pb::control_message::Msg as In;
use keygate_proto::pb::gateway_message::Msg as Out;
use support::{ADMIN_TOKEN, GATEWAY_TOKEN, TestControlPlane, with_token};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Creates a named token with the bootstrap token; returns the secret.
async fn create_token(
    cp: &TestControlPlane,
    name: &str,
    scopes: &[&str],
    gateway_id: &str,
) -> String {
    let mut admin = cp.admin().await;
    let request = admin.request(pb::CreateTokenRequest {
        name: name.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        gateway_id: gateway_id.into(),
    });
    let issued = admin
        .client
        .create_token(request)
        .await
        .unwrap()
        .into_inner();
    assert!(issued.token.starts_with("kgo_"), "{}", issued.token);
    issued.token
}

/// Every Admin RPC, once per distinct scope rule (SetKeyEnabled: enabling and disabling).
#[derive(Debug, Clone, Copy)]
enum Rpc {
    CreateKey,
    GetKey,
    ListKeys,
    EnableKey,
    DisableKey,
    DeleteKey,
    RerollKey,
    RevokeOwner,
    UpdateKey,
    CreateIdentity,
    UpdateIdentity,
    GetIdentity,
    ListIdentities,
    DeleteIdentity,
    ListGateways,
    ListAudit,
    WaitForRevision,
    CreateUser,
    SetUserEnabled,
    CreateEnrollment,
    ListPasskeys,
    ListPolicyViolations,
    RenamePasskey,
    RevokePasskey,
    RevokeSessions,
    RotateSigningKey,
    ListSigningKeys,
    RevokeSigningKey,
    ListEnrollments,
    RevokeEnrollment,
    CreateToken,
    ListTokens,
    RevokeToken,
}

/// The scopes that allow each RPC besides `admin` (which allows everything), written out here
/// rather than taken from the implementation: DESIGN.md's "Operator access" and the issue's
/// table. The first column is the RPC's name in admin.proto.
const ALLOWED: &[(&str, Rpc, &[&str])] = &[
    ("CreateKey", Rpc::CreateKey, &["keys:write", "keys:create"]),
    ("GetKey", Rpc::GetKey, &["keys:read"]),
    ("ListKeys", Rpc::ListKeys, &["keys:read"]),
    ("SetKeyEnabled", Rpc::EnableKey, &["keys:write"]),
    (
        "SetKeyEnabled",
        Rpc::DisableKey,
        &["keys:write", "keys:disable"],
    ),
    ("DeleteKey", Rpc::DeleteKey, &["keys:write"]),
    ("RerollKey", Rpc::RerollKey, &["keys:write"]),
    ("RevokeOwner", Rpc::RevokeOwner, &["keys:write"]),
    ("UpdateKey", Rpc::UpdateKey, &["keys:write"]),
    ("CreateIdentity", Rpc::CreateIdentity, &["keys:write"]),
    ("UpdateIdentity", Rpc::UpdateIdentity, &["keys:write"]),
    ("GetIdentity", Rpc::GetIdentity, &["keys:read"]),
    ("ListIdentities", Rpc::ListIdentities, &["keys:read"]),
    ("DeleteIdentity", Rpc::DeleteIdentity, &["keys:write"]),
    ("ListGateways", Rpc::ListGateways, &["gateways:read"]),
    ("ListAudit", Rpc::ListAudit, &["audit:read"]),
    (
        "WaitForRevision",
        Rpc::WaitForRevision,
        &[
            "gateways:read",
            "keys:write",
            "keys:create",
            "keys:disable",
            "passkeys:write",
            "users:write",
        ],
    ),
    ("CreateUser", Rpc::CreateUser, &["users:write"]),
    ("SetUserEnabled", Rpc::SetUserEnabled, &["users:write"]),
    (
        "CreateEnrollment",
        Rpc::CreateEnrollment,
        &["passkeys:write"],
    ),
    ("ListPasskeys", Rpc::ListPasskeys, &["passkeys:read"]),
    (
        "ListPasskeys",
        Rpc::ListPolicyViolations,
        &["passkeys:read"],
    ),
    ("RenamePasskey", Rpc::RenamePasskey, &["passkeys:write"]),
    ("RevokePasskey", Rpc::RevokePasskey, &["passkeys:write"]),
    ("RevokeSessions", Rpc::RevokeSessions, &["passkeys:write"]),
    ("RotateSigningKey", Rpc::RotateSigningKey, &[]),
    ("ListSigningKeys", Rpc::ListSigningKeys, &[]),
    ("RevokeSigningKey", Rpc::RevokeSigningKey, &[]),
    ("ListEnrollments", Rpc::ListEnrollments, &["passkeys:read"]),
    (
        "RevokeEnrollment",
        Rpc::RevokeEnrollment,
        &["passkeys:write"],
    ),
    ("CreateToken", Rpc::CreateToken, &[]),
    ("ListTokens", Rpc::ListTokens, &[]),
    ("RevokeToken", Rpc::RevokeToken, &[]),
];

/// Every scope there is.
const SCOPES: [&str; 10] = [
    "keys:read",
    "keys:write",
    "keys:create",
    "keys:disable",
    "passkeys:read",
    "passkeys:write",
    "users:write",
    "gateways:read",
    "audit:read",
    "admin",
];

/// A well-formed id that names nothing.
const NO_KEY: &str = "key_0000000000000000000000";

/// Calls `rpc` with `token`, with arguments that make sense for it (an existing key and user
/// where that is cheap, ids of nothing elsewhere: an allowed call may well be NOT_FOUND).
async fn call(
    client: &mut AdminClient<Channel>,
    rpc: Rpc,
    token: &str,
    key_id: &str,
    user_name: &str,
) -> Result<(), Status> {
    let t = Some(token);
    match rpc {
        Rpc::CreateKey => client
            .create_key(with_token(
                pb::CreateKeyRequest {
                    owner: "acme".into(),
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::GetKey => client
            .get_key(with_token(
                pb::GetKeyRequest {
                    key_id: key_id.into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::ListKeys => client
            .list_keys(with_token(pb::ListKeysRequest::default(), t))
            .await
            .map(drop),
        Rpc::EnableKey | Rpc::DisableKey => client
            .set_key_enabled(with_token(
                pb::SetKeyEnabledRequest {
                    key_id: key_id.into(),
                    enabled: matches!(rpc, Rpc::EnableKey),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::DeleteKey => client
            .delete_key(with_token(
                pb::DeleteKeyRequest {
                    key_id: NO_KEY.into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::RerollKey => client
            .reroll_key(with_token(
                pb::RerollKeyRequest {
                    key_id: NO_KEY.into(),
                    grace_ms: 0,
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::RevokeOwner => client
            .revoke_owner(with_token(
                pb::RevokeOwnerRequest {
                    owner: "nobody".into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::UpdateKey => client
            .update_key(with_token(
                pb::UpdateKeyRequest {
                    key_id: NO_KEY.into(),
                    credits: Some(1),
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::CreateIdentity => client
            .create_identity(with_token(
                pb::CreateIdentityRequest {
                    identity_id: user_name.into(),
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::UpdateIdentity => client
            .update_identity(with_token(
                pb::UpdateIdentityRequest {
                    identity_id: "nobody".into(),
                    credits: Some(1),
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::GetIdentity => client
            .get_identity(with_token(
                pb::GetIdentityRequest {
                    identity_id: "nobody".into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::ListIdentities => client
            .list_identities(with_token(pb::ListIdentitiesRequest::default(), t))
            .await
            .map(drop),
        Rpc::DeleteIdentity => client
            .delete_identity(with_token(
                pb::DeleteIdentityRequest {
                    identity_id: "nobody".into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::ListGateways => client
            .list_gateways(with_token(pb::ListGatewaysRequest {}, t))
            .await
            .map(drop),
        Rpc::ListAudit => client
            .list_audit(with_token(pb::ListAuditRequest { limit: 1 }, t))
            .await
            .map(drop),
        Rpc::WaitForRevision => client
            .wait_for_revision(with_token(
                pb::WaitForRevisionRequest {
                    revision: 0,
                    timeout_ms: 1,
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::CreateUser => client
            .create_user(with_token(
                pb::CreateUserRequest {
                    user_id: user_name.into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::SetUserEnabled => client
            .set_user_enabled(with_token(
                pb::SetUserEnabledRequest {
                    user_id: "alice".into(),
                    enabled: true,
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::CreateEnrollment => client
            .create_enrollment(with_token(
                pb::CreateEnrollmentRequest {
                    user_id: "alice".into(),
                    expires_in_ms: 0,
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::ListPasskeys => client
            .list_passkeys(with_token(
                pb::ListPasskeysRequest {
                    user_id: "alice".into(),
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::ListPolicyViolations => client
            .list_passkeys(with_token(
                pb::ListPasskeysRequest {
                    policy_violations: true,
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::RenamePasskey => client
            .rename_passkey(with_token(
                pb::RenamePasskeyRequest {
                    user_id: "alice".into(),
                    passkey_id: "pk_0000000000000000000000".into(),
                    name: "renamed".into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::RevokePasskey => client
            .revoke_passkey(with_token(
                pb::RevokePasskeyRequest {
                    user_id: "alice".into(),
                    passkey_id: "pk_0000000000000000000000".into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::RevokeSessions => client
            .revoke_sessions(with_token(
                pb::RevokeSessionsRequest {
                    user_id: "alice".into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::RotateSigningKey => client
            .rotate_signing_key(with_token(pb::RotateSigningKeyRequest {}, t))
            .await
            .map(drop),
        Rpc::ListSigningKeys => client
            .list_signing_keys(with_token(pb::ListSigningKeysRequest {}, t))
            .await
            .map(drop),
        Rpc::RevokeSigningKey => client
            .revoke_signing_key(with_token(
                pb::RevokeSigningKeyRequest {
                    key_id: "sk_0000000000000000000000".into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::ListEnrollments => client
            .list_enrollments(with_token(
                pb::ListEnrollmentsRequest {
                    user_id: "alice".into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::RevokeEnrollment => client
            .revoke_enrollment(with_token(
                pb::RevokeEnrollmentRequest {
                    enrollment_id: "enr_0000000000000000000000".into(),
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::CreateToken => client
            .create_token(with_token(
                pb::CreateTokenRequest {
                    name: "Not A Name".into(),
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        Rpc::ListTokens => client
            .list_tokens(with_token(pb::ListTokensRequest {}, t))
            .await
            .map(drop),
        Rpc::RevokeToken => client
            .revoke_token(with_token(
                pb::RevokeTokenRequest {
                    name: "nobody".into(),
                },
                t,
            ))
            .await
            .map(drop),
    }
}

#[tokio::test]
async fn the_table_covers_every_admin_rpc() {
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proto/keygate/v1/admin.proto"
    ))
    .unwrap();
    let declared: BTreeSet<&str> = proto
        .lines()
        .filter_map(|line| line.trim().strip_prefix("rpc "))
        .filter_map(|rest| rest.split('(').next())
        .collect();
    let tabled: BTreeSet<&str> = ALLOWED.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(tabled, declared, "a row for every RPC in admin.proto");
}

#[tokio::test]
async fn every_scope_allows_exactly_its_commands() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    let key = admin.create("acme").await;
    let request = admin.request(pb::CreateUserRequest {
        user_id: "alice".into(),
    });
    admin.client.create_user(request).await.unwrap();

    let mut client = admin.client.clone();
    for scope in SCOPES {
        let name = format!("only-{}", scope.replace(':', "-"));
        let token = create_token(&cp, &name, &[scope], "").await;
        for (rpc_name, rpc, allowed) in ALLOWED {
            let user = format!("user-of-{name}");
            let outcome = call(&mut client, *rpc, &token, &key.key_id, &user).await;
            let inside = scope == "admin" || allowed.contains(&scope);
            match outcome {
                Err(status) if !inside => {
                    assert_eq!(
                        status.code(),
                        Code::PermissionDenied,
                        "{scope} calling {rpc:?}: {status:?}"
                    );
                    let message = status.message();
                    assert!(message.contains(&format!("{name:?}")), "{message}");
                    let needed: &[&str] = if allowed.is_empty() {
                        &["admin"]
                    } else {
                        allowed
                    };
                    for needed in needed {
                        assert!(
                            message.contains(needed),
                            "{scope} calling {rpc_name} ({rpc:?}): {message:?} should name {needed}"
                        );
                    }
                }
                Ok(()) if !inside => panic!("{scope} may call {rpc:?}, which it must not"),
                Err(status) => assert!(
                    !matches!(
                        status.code(),
                        Code::PermissionDenied | Code::Unauthenticated
                    ),
                    "{scope} calling {rpc:?} was refused: {status:?}"
                ),
                Ok(()) => {}
            }
        }
    }
}

#[tokio::test]
async fn a_revoked_token_fails_at_once_and_the_audit_names_the_token_never_a_claim() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    let token = create_token(&cp, "ci", &["keys:create", "audit:read"], "").await;

    // The token is shown once: listing names it, never shows it.
    let request = admin.request(pb::ListTokensRequest {});
    let listed = admin
        .client
        .list_tokens(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    let ci = &listed.tokens[0];
    assert_eq!(
        (
            ci.name.as_str(),
            ci.scopes.as_slice(),
            ci.created_by.as_str()
        ),
        (
            "ci",
            &["keys:create".to_owned(), "audit:read".to_owned()][..],
            "admin"
        )
    );
    assert!(ci.gateway_id.is_empty());
    assert!(!format!("{listed:?}").contains(&token));

    // The ci token creates a key while claiming to be someone else: the audit says "ci".
    let mut ci_client = support::Admin {
        client: admin.client.clone(),
        token: Some(token.clone()),
        actor: Some("alice@example.com".into()),
    };
    let issued = ci_client.create("acme").await;
    let request = ci_client.request(pb::ListAuditRequest { limit: 10 });
    let entries = ci_client
        .client
        .list_audit(request)
        .await
        .unwrap()
        .into_inner()
        .entries;
    let rows: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("ci", "key.create", issued.key_id.as_str()),
            ("admin", "token.create", "ci"),
        ]
    );
    assert!(entries.iter().all(|e| !e.detail_json.contains(&token)));

    let request = admin.request(pb::RevokeTokenRequest { name: "ci".into() });
    let revoked = admin
        .client
        .revoke_token(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.name, "ci");
    assert!(revoked.disconnected_gateways.is_empty());

    // The very next call fails.
    let request = ci_client.request(pb::ListAuditRequest { limit: 1 });
    let status = ci_client.client.list_audit(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "invalid operator token (unknown or revoked)"
    );
    let request = admin.request(pb::RevokeTokenRequest { name: "ci".into() });
    let again = admin.client.revoke_token(request).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    let request = admin.request(pb::ListAuditRequest { limit: 1 });
    let last = &admin
        .client
        .list_audit(request)
        .await
        .unwrap()
        .into_inner()
        .entries[0];
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.target.as_str()
        ),
        ("admin", "token.revoke", "ci")
    );
}

#[tokio::test]
async fn bad_token_requests_are_refused_with_what_to_fix() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    create_token(&cp, "ci", &["keys:create"], "").await;
    for (name, scopes, gateway_id, code, message) in [
        (
            "ci",
            vec!["keys:read"],
            "",
            Code::AlreadyExists,
            "revoke it first",
        ),
        (
            "admin",
            vec!["keys:read"],
            "",
            Code::InvalidArgument,
            "reserved",
        ),
        (
            "CI",
            vec!["keys:read"],
            "",
            Code::InvalidArgument,
            "invalid token name",
        ),
        (
            "x",
            vec!["keys:nuke"],
            "",
            Code::InvalidArgument,
            "valid scopes: keys:read",
        ),
        ("x", vec![], "", Code::InvalidArgument, "at least one scope"),
        (
            "x",
            vec!["admin"],
            "gw-a",
            Code::InvalidArgument,
            "no scopes",
        ),
    ] {
        let request = admin.request(pb::CreateTokenRequest {
            name: name.into(),
            scopes: scopes.into_iter().map(str::to_owned).collect(),
            gateway_id: gateway_id.into(),
        });
        let status = admin.client.create_token(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(status.message().contains(message), "{status:?}");
    }
    let request = admin.request(pb::ListTokensRequest {});
    let listed = admin
        .client
        .list_tokens(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1, "nothing half-made");
}

/// Reads until the snapshot has ended.
async fn snapshot(gateway: &mut support::Gateway) {
    loop {
        if let In::SnapshotEnd(_) = gateway.expect().await {
            return;
        }
    }
}

async fn gateways(cp: &TestControlPlane) -> Vec<pb::Gateway> {
    let mut admin = cp.admin().await;
    let request = admin.request(pb::ListGatewaysRequest {});
    admin
        .client
        .list_gateways(request)
        .await
        .unwrap()
        .into_inner()
        .gateways
}

#[tokio::test]
async fn a_gateway_token_is_one_gateways_for_one_live_stream_and_acks_only_for_it() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    admin.create("acme").await;
    let gw_a = create_token(&cp, "gw-a", &[], "gw-a").await;
    let operator = create_token(&cp, "ci", &["admin"], "").await;

    // Claiming another gateway id with gw-a's token is refused, and leaves no trace.
    let mut rogue = cp.open_stream(Some(&gw_a)).await.unwrap();
    rogue.hello("gw-b", 0).await;
    let refused = rogue.next().await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "the gateway token \"gw-a\" is bound to gateway \"gw-a\", but the Hello claims \"gw-b\""
    );
    assert!(gateways(&cp).await.is_empty());

    // The real gw-a connects and acks; the registry says which credential it used.
    let mut real = cp.open_stream(Some(&gw_a)).await.unwrap();
    real.hello("gw-a", 0).await;
    snapshot(&mut real).await;
    real.send(Out::Ack(pb::Ack { revision: 1 })).await;
    support::eventually_async(|| async {
        let listed = gateways(&cp).await;
        listed.len() == 1 && listed[0].applied_revision == 1
    })
    .await;
    let listed = gateways(&cp).await;
    assert_eq!(
        (listed[0].gateway_id.as_str(), listed[0].credential.as_str()),
        ("gw-a", "token:gw-a")
    );

    // A second stream with the token, while the first is live, is refused; the first stays.
    let mut second = cp.open_stream(Some(&gw_a)).await.unwrap();
    second.hello("gw-a", 1).await;
    let refused = second.next().await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(
        refused.message().contains("already uses token:gw-a"),
        "{}",
        refused.message()
    );
    real.send(Out::Ping(pb::Ping {
        nonce: 7,
        sent_at_nanos: 1,
        staleness_ms: Some(1),
    }))
    .await;
    assert!(matches!(real.expect().await, In::Pong(pong) if pong.nonce == 7));

    // The shared token still says hello as anyone; its acks count for the id it named.
    let shared = cp.gateway("gw-b", 1).await;
    shared.send(Out::Ack(pb::Ack { revision: 1 })).await;
    support::eventually_async(|| async {
        gateways(&cp)
            .await
            .iter()
            .any(|g| g.gateway_id == "gw-b" && g.credential == "shared")
    })
    .await;

    // Lookups need a gateway credential too.
    let mut sync = cp.sync_client().await;
    let lookup = || pb::LookupKeyRequest {
        key_hash: vec![0; 32],
    };
    sync.lookup_key(with_token(lookup(), Some(&gw_a)))
        .await
        .unwrap();
    for token in [operator.as_str(), ADMIN_TOKEN] {
        let status = sync
            .lookup_key(with_token(lookup(), Some(token)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // And a gateway token is no operator token.
    let request = with_token(pb::ListGatewaysRequest {}, Some(&gw_a));
    let status = admin.client.list_gateways(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Revoking the token ends its stream at once, saying why, and no new one opens.
    let request = admin.request(pb::RevokeTokenRequest {
        name: "gw-a".into(),
    });
    let revoked = admin
        .client
        .revoke_token(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.disconnected_gateways, ["gw-a"]);
    let ended = loop {
        match real.next().await {
            Ok(Some(_)) => {}
            other => break other,
        }
    };
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{status:?}");
    let status = cp.open_stream(Some(&gw_a)).await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = sync
        .lookup_key(with_token(lookup(), Some(&gw_a)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    drop(shared);
}

#[tokio::test]
async fn past_the_failure_limit_an_address_is_refused_even_with_a_good_token() {
    let cp = TestControlPlane::start().await;
    let mut admin = cp.admin().await;
    admin.token = Some("not-anyones-token-0123".into());
    let list = |admin: &support::Admin| admin.request(pb::ListGatewaysRequest {});
    for _ in 0..20 {
        let status = admin.client.list_gateways(list(&admin)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let status = admin.client.list_gateways(list(&admin)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .starts_with("too many failed authentications from this address; retry in "),
        "{status:?}"
    );
    // Now even the right token is refused from this address, unread, on both services.
    admin.token = Some(ADMIN_TOKEN.into());
    let status = admin.client.list_gateways(list(&admin)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let status = cp.open_stream(Some(GATEWAY_TOKEN)).await.err().unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted);
}

/// Two replicas on one PostgreSQL database: a gateway token live on one replica is refused on
/// the other, and revoking it through the other ends the stream within seconds (new calls
/// with it fail at once on both).
#[tokio::test]
async fn a_gateway_token_is_one_live_stream_and_revoked_across_replicas() {
    let server = keygate_test_postgres::TestPostgres::start().unwrap();
    let url = server.create_database("operator_access").unwrap();
    let here = TestControlPlane::start_on(Some(&url)).await;
    let there = TestControlPlane::start_on(Some(&url)).await;
    let token = create_token(&here, "gw-a", &[], "gw-a").await;

    // The real gw-a syncs through `there` and pings, as gateways do, every 200 ms.
    let mut real = there.open_stream(Some(&token)).await.unwrap();
    real.hello("gw-a", 0).await;
    snapshot(&mut real).await;
    let pinger = {
        let tx = real.tx.clone();
        tokio::spawn(async move {
            for nonce in 0.. {
                let ping = pb::GatewayMessage {
                    msg: Some(Out::Ping(pb::Ping {
                        nonce,
                        sent_at_nanos: 1,
                        staleness_ms: Some(1),
                    })),
                };
                if tx.send(ping).await.is_err() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    // Once `here` has read `there`'s registry, a second stream with the token is refused.
    support::eventually_async(|| async {
        gateways(&here)
            .await
            .iter()
            .any(|g| g.gateway_id == "gw-a" && g.connected && g.credential == "token:gw-a")
    })
    .await;
    let mut rogue = here.open_stream(Some(&token)).await.unwrap();
    rogue.hello("gw-a", 0).await;
    let refused = rogue.next().await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(
        refused.message().contains("on control-plane replica cp_"),
        "{}",
        refused.message()
    );

    // Revoked through `here`, which has no stream of it: `there` ends its stream.
    let mut admin = here.admin().await;
    let request = admin.request(pb::RevokeTokenRequest {
        name: "gw-a".into(),
    });
    let revoked = admin
        .client
        .revoke_token(request)
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.disconnected_gateways.is_empty());
    let status = there.open_stream(Some(&token)).await.err().unwrap();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "new calls fail at once"
    );
    let ended = loop {
        match real.next().await {
            Ok(Some(_)) => {}
            other => break other,
        }
    };
    let status = ended.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    pinger.abort();
}

//! End to end with passkeys: a real control plane, two gateways and the echo upstream on
//! 127.0.0.1:0, and software authenticators performing real WebAuthn registration and
//! authentication ceremonies against the control plane's HTTP API. The sessions they get are
//! then used through both gateways, revoked in every way an operator or a user can, and seen
//! refused (401 REVOKED) at both, while other users' sessions go on working.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime};

use keygate_proto::pb;
use serde_json::{Value, json};
use support::passkeys::{Device, Session, b64, get_with_session};
use support::{Cluster, ConfigureControlPlane, eventually, send};

/// No rate limits: these tests make many requests from 127.0.0.1 quickly.
fn unlimited() -> Option<ConfigureControlPlane> {
    Some(Box::new(|config| {
        config.passkey_rate_per_address = 0;
        config.passkey_rate_per_user = 0;
    }))
}

async fn cluster(gateways: usize) -> Cluster {
    Cluster::start_configured(gateways, unlimited()).await
}

/// No rate limits, and sessions lasting `lifetime`.
fn with_session_lifetime(lifetime: Duration) -> Option<ConfigureControlPlane> {
    Some(Box::new(move |config| {
        config.passkey_rate_per_address = 0;
        config.passkey_rate_per_user = 0;
        config.session_lifetime = lifetime;
    }))
}

/// The control plane's head revision.
async fn head_revision(cluster: &Cluster) -> u64 {
    cluster
        .admin()
        .await
        .list_gateways(pb::ListGatewaysRequest {})
        .await
        .unwrap()
        .into_inner()
        .head_revision
}

async fn signing_keys(cluster: &Cluster) -> Vec<pb::SigningKeyInfo> {
    cluster
        .admin()
        .await
        .list_signing_keys(pb::ListSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
}

/// Waits (through the admin API) until every gateway has applied `revision`.
async fn wait_everywhere(cluster: &Cluster, revision: u64) {
    let waited = cluster
        .admin()
        .await
        .wait_for_revision(pb::WaitForRevisionRequest {
            revision,
            timeout_ms: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(waited.complete, "not applied everywhere: {waited:?}");
}

/// Asserts what every gateway answers for `session` on a `key_or_session` route.
async fn expect_at_gateways(cluster: &Cluster, session: &Session, status: u16, code: &str) {
    for gateway in &cluster.gateways {
        let reply = get_with_session(&gateway.url("/orders"), session).await;
        assert_eq!(
            reply.status,
            status,
            "gateway {}: {}",
            gateway.addr,
            String::from_utf8_lossy(&reply.body)
        );
        if status == 200 {
            let seen = reply.json();
            assert_eq!(
                seen["headers"]["x-keygate-user-id"],
                session.user_id.as_str()
            );
            let session_id = seen["headers"]["x-keygate-session-id"].as_str().unwrap();
            assert!(session_id.starts_with("ses_"), "{session_id}");
            assert!(
                seen["headers"].get("authorization").is_none(),
                "the session token was forwarded"
            );
        } else {
            assert_eq!(reply.code(), code);
        }
    }
}

fn passkey_ids(listing: &Value) -> Vec<String> {
    listing["passkeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn operator_passkeys(cluster: &Cluster, user_id: &str) -> Vec<pb::Passkey> {
    cluster
        .admin()
        .await
        .list_passkeys(pb::ListPasskeysRequest {
            user_id: user_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .passkeys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_sign_in_use_the_session_everywhere_and_revoke_the_passkey() {
    let cluster = cluster(2).await;
    let origin = cluster.passkey_origin();
    let laptop = Device::new(&origin);
    let phone = Device::new(&origin);

    // Enrollment signs alice in; the cookie is what the contract says.
    let token = cluster.user_with_enrollment("alice").await;
    let enrolled = cluster.enroll(&laptop, &token, "Work laptop").await;
    assert_eq!(enrolled.user_id, "alice");
    assert!(enrolled.passkey_id.starts_with("pk_"));
    assert!(enrolled.token.starts_with("v4.public."));
    let cookie = &enrolled.cookie;
    assert!(cookie.starts_with(&format!("keygate_session={}", enrolled.token)));
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "no Secure cookie on http://localhost"
    );
    assert_eq!(laptop.credential_count(), 1);

    let bob_device = Device::new(&origin);
    let bob_token = cluster.user_with_enrollment("bob").await;
    let bob = cluster.enroll(&bob_device, &bob_token, "").await;

    // Sign in later with the passkey, no user id typed (discoverable).
    let signed_in = cluster.login(&laptop).await;
    assert_eq!(signed_in.user_id, "alice");
    assert_eq!(signed_in.passkey_id, enrolled.passkey_id);
    assert_ne!(signed_in.token, enrolled.token);
    // And with a user id.
    let finish = cluster.login_attempt(&laptop, Some("alice")).await;
    let named = cluster.post_json("/v1/login/finish", &finish).await;
    assert_eq!(
        named.status,
        200,
        "{}",
        String::from_utf8_lossy(&named.body)
    );

    // Add a second passkey on the phone, then list.
    let added = cluster.add_passkey(&signed_in, &phone, "Phone").await;
    assert_eq!(added["name"], "Phone");
    let listing = cluster.my_passkeys(&signed_in).await;
    assert_eq!(listing.status, 200);
    let listing = listing.json();
    assert_eq!(listing["userId"], "alice");
    assert_eq!(listing["currentPasskeyId"], enrolled.passkey_id.as_str());
    let names: Vec<&str> = listing["passkeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Work laptop", "Phone"]);
    assert!(listing["passkeys"][0]["lastUsed"].is_string());
    assert!(listing["passkeys"][1]["lastUsed"].is_null());

    // The operator sees the same passkeys with what Auth0 shows.
    let passkeys = operator_passkeys(&cluster, "alice").await;
    assert_eq!(passkeys.len(), 2);
    assert_eq!(passkeys[0].passkey_id, enrolled.passkey_id);
    assert_eq!(passkeys[0].name, "Work laptop");
    assert!(passkeys[0].last_used_unix_ms.is_some());
    assert!(["single_device", "multi_device"].contains(&passkeys[0].device_type.as_str()));

    // The sessions work at both gateways at once, by bearer and by cookie.
    expect_at_gateways(&cluster, &signed_in, 200, "").await;
    expect_at_gateways(&cluster, &enrolled, 200, "").await;
    let cookie_header = format!("keygate_session={}", signed_in.token);
    let reply = send(
        "GET",
        &cluster.gateways[1].url("/orders"),
        &[("cookie", cookie_header.as_bytes())],
        b"",
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["headers"]["x-keygate-user-id"], "alice");

    // The operator revokes the laptop's passkey: every session it minted is refused at both
    // gateways as soon as they have applied the revocation; bob's session is untouched.
    let revoked = cluster
        .admin()
        .await
        .revoke_passkey(pb::RevokePasskeyRequest {
            user_id: "alice".into(),
            passkey_id: enrolled.passkey_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    wait_everywhere(&cluster, revoked.revision).await;
    expect_at_gateways(&cluster, &signed_in, 401, "REVOKED").await;
    expect_at_gateways(&cluster, &enrolled, 401, "REVOKED").await;
    expect_at_gateways(&cluster, &bob, 200, "").await;
    let refused = cluster.my_passkeys(&signed_in).await;
    assert_eq!((refused.status, refused.code().as_str()), (401, "REVOKED"));
    // The revoked passkey no longer signs in.
    let finish = cluster.login_attempt(&laptop, None).await;
    let reply = cluster.post_json("/v1/login/finish", &finish).await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (401, "AUTHENTICATION_FAILED")
    );

    // The phone's passkey still works, and a re-enrolled device works again everywhere.
    let from_phone = cluster.login(&phone).await;
    expect_at_gateways(&cluster, &from_phone, 200, "").await;
    let new_laptop = Device::new(&origin);
    let token = cluster.enrollment_token("alice").await;
    let reenrolled = cluster.enroll(&new_laptop, &token, "New laptop").await;
    expect_at_gateways(&cluster, &reenrolled, 200, "").await;
    assert_eq!(operator_passkeys(&cluster, "alice").await.len(), 2);

    // Everything is in the audit log, and no token or link is.
    let audit = cluster
        .admin()
        .await
        .list_audit(pb::ListAuditRequest { limit: 1000 })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "user.create",
        "enrollment.create",
        "passkey.register",
        "session.create",
        "passkey.revoke",
        "signing_key.create",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
    for entry in &audit {
        for secret in [&signed_in.token, &enrolled.token, &token] {
            assert!(
                !entry.detail_json.contains(secret.as_str()),
                "secret in audit"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_everywhere_and_disabling_a_user_reach_every_gateway() {
    let cluster = cluster(2).await;
    let origin = cluster.passkey_origin();
    let alice_device = Device::new(&origin);
    let bob_device = Device::new(&origin);
    let token = cluster.user_with_enrollment("alice").await;
    let alice = cluster.enroll(&alice_device, &token, "laptop").await;
    let token = cluster.user_with_enrollment("bob").await;
    let bob = cluster.enroll(&bob_device, &token, "laptop").await;
    expect_at_gateways(&cluster, &alice, 200, "").await;

    // Sign out everywhere: alice's sessions are refused; a new sign-in works.
    let revoked = cluster
        .admin()
        .await
        .revoke_sessions(pb::RevokeSessionsRequest {
            user_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked_before_unix_ms > 0);
    wait_everywhere(&cluster, revoked.revision).await;
    expect_at_gateways(&cluster, &alice, 401, "REVOKED").await;
    expect_at_gateways(&cluster, &bob, 200, "").await;
    let again = cluster.login(&alice_device).await;
    expect_at_gateways(&cluster, &again, 200, "").await;

    // Disable: refused everywhere, and no sign-in; enabling brings no old session back.
    let mut admin = cluster.admin().await;
    let disabled = admin
        .set_user_enabled(pb::SetUserEnabledRequest {
            user_id: "alice".into(),
            enabled: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(disabled.changed);
    wait_everywhere(&cluster, disabled.revision).await;
    expect_at_gateways(&cluster, &again, 401, "REVOKED").await;
    expect_at_gateways(&cluster, &bob, 200, "").await;
    let finish = cluster.login_attempt(&alice_device, None).await;
    let reply = cluster.post_json("/v1/login/finish", &finish).await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (403, "USER_DISABLED")
    );
    let enabled = admin
        .set_user_enabled(pb::SetUserEnabledRequest {
            user_id: "alice".into(),
            enabled: true,
        })
        .await
        .unwrap()
        .into_inner();
    wait_everywhere(&cluster, enabled.revision).await;
    expect_at_gateways(&cluster, &again, 401, "REVOKED").await;
    let after = cluster.login(&alice_device).await;
    expect_at_gateways(&cluster, &after, 200, "").await;

    // A gateway started now learns all of it from its snapshot.
    cluster_add_gateway_and_check(cluster, &again, &after, &bob).await;
}

async fn cluster_add_gateway_and_check(
    mut cluster: Cluster,
    revoked: &Session,
    live: &Session,
    bob: &Session,
) {
    cluster.add_gateway().await;
    let newest = cluster.gateways.last().unwrap();
    let reply = get_with_session(&newest.url("/orders"), revoked).await;
    assert_eq!((reply.status, reply.code().as_str()), (401, "REVOKED"));
    for session in [live, bob] {
        let reply = get_with_session(&newest.url("/orders"), session).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_manage_only_their_own_passkeys_and_cannot_remove_the_last() {
    let cluster = cluster(1).await;
    let origin = cluster.passkey_origin();
    let (laptop, phone, bob_device) = (
        Device::new(&origin),
        Device::new(&origin),
        Device::new(&origin),
    );
    let token = cluster.user_with_enrollment("alice").await;
    let alice = cluster.enroll(&laptop, &token, "laptop").await;
    let phone_passkey = cluster.add_passkey(&alice, &phone, "phone").await;
    let phone_id = phone_passkey["id"].as_str().unwrap().to_owned();
    let token = cluster.user_with_enrollment("bob").await;
    let bob = cluster.enroll(&bob_device, &token, "bob's").await;

    // Bob cannot see or remove alice's passkeys.
    let bobs = cluster.my_passkeys(&bob).await.json();
    assert_eq!(passkey_ids(&bobs), [bob.passkey_id.as_str()]);
    for id in [&phone_id, &alice.passkey_id] {
        let reply = cluster
            .as_user(&bob, "DELETE", &format!("/v1/me/passkeys/{id}"), None)
            .await;
        assert_eq!((reply.status, reply.code().as_str()), (404, "NOT_FOUND"));
    }
    let alices = cluster.my_passkeys(&alice).await.json();
    assert_eq!(
        passkey_ids(&alices),
        [alice.passkey_id.as_str(), phone_id.as_str()]
    );
    // Nor finish a ceremony begun by alice's session.
    let begun = cluster
        .as_user(&alice, "POST", "/v1/me/passkeys/begin", Some(&json!({})))
        .await
        .json();
    let credential = bob_device.create(&begun["publicKey"]).await;
    let stolen = cluster
        .as_user(
            &bob,
            "POST",
            "/v1/me/passkeys/finish",
            Some(&json!({ "ceremonyId": begun["ceremonyId"], "credential": credential })),
        )
        .await;
    assert_eq!(
        (stolen.status, stolen.code().as_str()),
        (400, "CEREMONY_UNKNOWN")
    );
    assert_eq!(operator_passkeys(&cluster, "alice").await.len(), 2);
    assert_eq!(operator_passkeys(&cluster, "bob").await.len(), 1);

    // Alice removes the phone's passkey, then is refused removing her last one.
    let removed = cluster
        .as_user(
            &alice,
            "DELETE",
            &format!("/v1/me/passkeys/{phone_id}"),
            None,
        )
        .await;
    assert_eq!(
        removed.status,
        200,
        "{}",
        String::from_utf8_lossy(&removed.body)
    );
    assert_eq!(removed.json()["signedOut"], false);
    let last = cluster
        .as_user(
            &alice,
            "DELETE",
            &format!("/v1/me/passkeys/{}", alice.passkey_id),
            None,
        )
        .await;
    assert_eq!((last.status, last.code().as_str()), (409, "LAST_PASSKEY"));
    let message = last.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("only passkey"), "{message}");
    assert_eq!(
        passkey_ids(&cluster.my_passkeys(&alice).await.json()),
        [alice.passkey_id.as_str()]
    );

    // Removing the passkey a session was minted with ends that session.
    let second = cluster.add_passkey(&alice, &phone, "phone again").await;
    let from_phone = cluster.login(&phone).await;
    assert_eq!(from_phone.passkey_id, second["id"].as_str().unwrap());
    let removed = cluster
        .as_user(
            &from_phone,
            "DELETE",
            &format!("/v1/me/passkeys/{}", from_phone.passkey_id),
            None,
        )
        .await;
    assert_eq!(removed.json()["signedOut"], true);
    assert!(
        removed.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = cluster.my_passkeys(&from_phone).await;
    assert_eq!((after.status, after.code().as_str()), (401, "REVOKED"));

    // Sign out: the session is refused, at the control plane and at the gateway.
    let out = cluster.as_user(&alice, "POST", "/v1/logout", None).await;
    assert_eq!(out.status, 200, "{}", String::from_utf8_lossy(&out.body));
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let revision = out.json()["revision"].as_u64().unwrap();
    let after = cluster.my_passkeys(&alice).await;
    assert_eq!((after.status, after.code().as_str()), (401, "REVOKED"));
    wait_everywhere(&cluster, revision).await;
    expect_at_gateways(&cluster, &alice, 401, "REVOKED").await;
    expect_at_gateways(&cluster, &bob, 200, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ceremonies_are_refused_with_their_code_and_change_nothing() {
    let cluster = cluster(0).await;
    let origin = cluster.passkey_origin();
    let device = Device::new(&origin);
    let token = cluster.user_with_enrollment("alice").await;

    // Wrong origin: a page on another port made the credential.
    let begun = cluster
        .post_json("/v1/enroll/begin", &json!({ "token": token }))
        .await
        .json();
    let elsewhere = url::Url::parse("http://localhost:1").unwrap();
    let credential = device.create_on(&elsewhere, &begun["publicKey"]).await;
    let reply = cluster
        .post_json(
            "/v1/enroll/finish",
            &json!({ "ceremonyId": begun["ceremonyId"], "credential": credential }),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (400, "ORIGIN_MISMATCH")
    );
    assert!(operator_passkeys(&cluster, "alice").await.is_empty());

    // A malformed credential leaves the ceremony open; the link still works afterwards.
    let begun = cluster
        .post_json(
            "/v1/enroll/begin",
            &json!({ "token": token, "name": "laptop" }),
        )
        .await
        .json();
    let reply = cluster
        .post_json(
            "/v1/enroll/finish",
            &json!({ "ceremonyId": begun["ceremonyId"], "credential": {"id": 7} }),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (400, "MALFORMED_CREDENTIAL")
    );
    let credential = device.create(&begun["publicKey"]).await;
    let finish = json!({ "ceremonyId": begun["ceremonyId"], "credential": credential });
    let reply = cluster.post_json("/v1/enroll/finish", &finish).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // Replayed finish: the ceremony is gone, and nothing more is registered.
    let reply = cluster.post_json("/v1/enroll/finish", &finish).await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (400, "CEREMONY_UNKNOWN")
    );
    assert_eq!(operator_passkeys(&cluster, "alice").await.len(), 1);
    // The link was used.
    let reply = cluster
        .post_json("/v1/enroll/begin", &json!({ "token": token }))
        .await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (410, "ENROLLMENT_USED")
    );
    let reply = cluster
        .post_json("/v1/enroll/begin", &json!({ "token": "not-a-real-token" }))
        .await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (404, "ENROLLMENT_NOT_FOUND")
    );

    // Replayed sign-in: the second finish of the same ceremony is refused.
    let finish = cluster.login_attempt(&device, None).await;
    let first = cluster.post_json("/v1/login/finish", &finish).await;
    assert_eq!(first.status, 200);
    let replay = cluster.post_json("/v1/login/finish", &finish).await;
    assert_eq!(
        (replay.status, replay.code().as_str()),
        (400, "CEREMONY_UNKNOWN")
    );

    // Tampered assertions: a flipped signature byte, a changed authenticator-data byte.
    for field in ["signature", "authenticatorData"] {
        let mut finish = cluster.login_attempt(&device, None).await;
        let original = finish["credential"]["response"][field]
            .as_str()
            .unwrap()
            .to_owned();
        let mut bytes = base64_decode(&original);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        finish["credential"]["response"][field] = b64(&bytes).into();
        let reply = cluster.post_json("/v1/login/finish", &finish).await;
        assert_eq!(
            reply.status,
            401,
            "{field}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.code(), "AUTHENTICATION_FAILED", "{field}");
    }
    // A ceremony answered for another ceremony's challenge.
    let other = cluster.login_attempt(&device, None).await;
    let mut mixed = cluster.login_attempt(&device, None).await;
    mixed["credential"] = other["credential"].clone();
    let reply = cluster.post_json("/v1/login/finish", &mixed).await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (400, "CHALLENGE_MISMATCH")
    );

    // An expired enrollment link.
    let mut admin = cluster.admin().await;
    let short = admin
        .create_enrollment(pb::CreateEnrollmentRequest {
            user_id: "alice".into(),
            expires_in_ms: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let short_token = short.link.split_once("#enroll=").unwrap().1.to_owned();
    eventually("the short link expires", || {
        let token = short_token.clone();
        let cluster = &cluster;
        async move {
            let reply = cluster
                .post_json("/v1/enroll/begin", &json!({ "token": token }))
                .await;
            reply.status == 410 && reply.code() == "ENROLLMENT_EXPIRED"
        }
    })
    .await;
    assert_eq!(operator_passkeys(&cluster, "alice").await.len(), 1);

    // Bodies: malformed JSON, a wrong shape, too large; unknown endpoint; wrong method.
    let reply = send(
        "POST",
        &cluster.http_url("/v1/login/begin"),
        &[],
        b"{not json",
    )
    .await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (400, "MALFORMED_JSON")
    );
    let reply = cluster
        .post_json("/v1/enroll/begin", &json!({ "name": "no token" }))
        .await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (400, "INVALID_REQUEST")
    );
    let reply = cluster
        .post_json(
            "/v1/enroll/begin",
            &json!({ "token": "x", "name": "n".repeat(65) }),
        )
        .await;
    assert_eq!((reply.status, reply.code().as_str()), (400, "INVALID_NAME"));
    let huge = vec![b' '; 70 * 1024];
    let reply = send("POST", &cluster.http_url("/v1/login/begin"), &[], &huge).await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (413, "BODY_TOO_LARGE")
    );
    let reply = send("GET", &cluster.http_url("/v1/nope"), &[], b"").await;
    assert_eq!((reply.status, reply.code().as_str()), (404, "NOT_FOUND"));
    let reply = send("GET", &cluster.http_url("/v1/login/begin"), &[], b"").await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (405, "METHOD_NOT_ALLOWED")
    );
    // Another site's page cannot act with the user's cookie.
    let reply = send(
        "POST",
        &cluster.http_url("/v1/login/begin"),
        &[("origin", b"https://evil.example")],
        b"{}",
    )
    .await;
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (403, "ORIGIN_MISMATCH")
    );

    // Sessions: none, forged, unsigned garbage.
    let reply = send("GET", &cluster.http_url("/v1/me/passkeys"), &[], b"").await;
    assert_eq!((reply.status, reply.code().as_str()), (401, "MISSING"));
    let session = support::passkeys::Session {
        user_id: "alice".into(),
        passkey_id: String::new(),
        token: forged_token(&first.json()["sessionToken"]),
        cookie: String::new(),
    };
    let reply = cluster.my_passkeys(&session).await;
    assert_eq!((reply.status, reply.code().as_str()), (401, "MALFORMED"));
    let reply = send(
        "GET",
        &cluster.http_url("/v1/me/passkeys"),
        &[("cookie", b"keygate_session=v4.public.garbage")],
        b"",
    )
    .await;
    assert_eq!((reply.status, reply.code().as_str()), (401, "MALFORMED"));
    assert_eq!(operator_passkeys(&cluster, "alice").await.len(), 1);
}

/// The token with one character of its claims changed (its signature no longer matches).
fn forged_token(token: &Value) -> String {
    let token = token.as_str().unwrap();
    let (body, footer) = token["v4.public.".len()..].split_once('.').unwrap();
    let mut bytes = base64_decode(body);
    bytes[10] ^= 0x01;
    format!("v4.public.{}.{footer}", b64(&bytes))
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_sessions_working_until_the_retired_key_expires() {
    let mut cluster = cluster(1).await;
    let device = Device::new(&cluster.passkey_origin());
    let token = cluster.user_with_enrollment("alice").await;
    // A 12-hour session, signed with the first key.
    let before = cluster.enroll(&device, &token, "laptop").await;
    let kid = |session: &Session| {
        keygate_proto::session::parse(&session.token)
            .unwrap()
            .key_id()
            .to_owned()
    };

    // The operator shortens the session lifetime to 8 s and restarts the control plane, which
    // rotates the signing key for the new lifetime: the old key now verifies for 8 s only,
    // although the session it signed would last 12 hours. (8 s, not less: the checks below
    // must run inside that window on two busy cores, where a sign-in alone writes its
    // ceremony and its session to the store.)
    cluster.stop_control_plane().await;
    cluster.configure_control_plane = with_session_lifetime(Duration::from_secs(8));
    cluster.start_control_plane().await;
    let keys = signing_keys(&cluster).await;
    let current = keys.iter().find(|key| key.current).unwrap().key_id.clone();
    assert_ne!(current, kid(&before));
    let retired = keys.iter().find(|key| key.key_id == kid(&before)).unwrap();
    assert!(retired.verify_until_unix_ms.is_some(), "{retired:?}");
    // The control plane has just restarted: its registry may not list the gateway yet, and a
    // wait over no gateways is complete at once. The gateway's own revision is the proof.
    cluster.wait_applied(head_revision(&cluster).await).await;

    // Old and new sessions both work, at the control plane and at the gateway.
    let after = cluster.login(&device).await;
    assert_eq!(kid(&after), current);
    for session in [&before, &after] {
        assert_eq!(cluster.my_passkeys(session).await.status, 200);
        expect_at_gateways(&cluster, session, 200, "").await;
    }
    // Once the retired key's verify-until has passed, its sessions are refused everywhere.
    eventually("the retired key's session is refused", || {
        let cluster = &cluster;
        let before = before.clone();
        async move {
            let reply = cluster.my_passkeys(&before).await;
            reply.status == 401 && reply.code() == "REVOKED"
        }
    })
    .await;
    let reply = get_with_session(&cluster.gateways[0].url("/orders"), &before).await;
    assert_eq!((reply.status, reply.code().as_str()), (401, "REVOKED"));
    // The new key's session is unaffected (until its own 8 s run out).
    let fresh = cluster.login(&device).await;
    expect_at_gateways(&cluster, &fresh, 200, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passkey_endpoints_are_rate_limited_per_address_and_per_user() {
    let cluster = Cluster::start_configured(
        0,
        Some(Box::new(|config| {
            config.passkey_rate_per_address = 5;
            config.passkey_rate_per_user = 1000;
        })),
    )
    .await;
    for _ in 0..5 {
        let reply = cluster.post_json("/v1/login/begin", &json!({})).await;
        assert_eq!(reply.status, 200);
    }
    let reply = cluster.post_json("/v1/login/begin", &json!({})).await;
    assert_eq!((reply.status, reply.code().as_str()), (429, "RATE_LIMITED"));
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    // Health and metrics are not limited.
    let health = send("GET", &cluster.http_url("/healthz"), &[], b"").await;
    assert_eq!(health.status, 200);

    let per_user = Cluster::start_configured(
        0,
        Some(Box::new(|config| {
            config.passkey_rate_per_address = 0;
            config.passkey_rate_per_user = 2;
        })),
    )
    .await;
    // Naming a user at sign-in never spends the user's bucket: anyone could, and lock them out.
    for _ in 0..5 {
        let reply = per_user
            .post_json("/v1/login/begin", &json!({ "userId": "carol" }))
            .await;
        assert_eq!(reply.status, 200);
    }
    // What carol does as carol is counted: her enrollment (she holds the link) and her
    // signed-in calls.
    let device = Device::new(&per_user.passkey_origin());
    let token = per_user.user_with_enrollment("carol").await;
    let carol = per_user.enroll(&device, &token, "laptop").await;
    assert_eq!(per_user.my_passkeys(&carol).await.status, 200);
    let reply = per_user.my_passkeys(&carol).await;
    assert_eq!((reply.status, reply.code().as_str()), (429, "RATE_LIMITED"));
    // Signing in spends nothing of hers either; another user has their own bucket.
    let dave_device = Device::new(&per_user.passkey_origin());
    let token = per_user.user_with_enrollment("dave").await;
    let dave = per_user.enroll(&dave_device, &token, "phone").await;
    assert_eq!(per_user.my_passkeys(&dave).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_service_page_is_served() {
    let cluster = cluster(0).await;
    let page = send("GET", &cluster.http_url("/"), &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = String::from_utf8_lossy(&page.body);
    for id in [
        "enroll-button",
        "signin-button",
        "passkey-list",
        "add-button",
        "signout-button",
    ] {
        assert!(html.contains(&format!("data-testid=\"{id}\"")), "{id}");
    }
    assert!(html.contains(r#"<script type="module" src="/app.js"></script>"#));
    // The entry module and the modules it imports, as JavaScript (a module script served as
    // anything else does not run).
    for (path, holds) in [
        ("/app.js", "from \"./ceremonies.js\""),
        ("/ceremonies.js", "navigator.credentials.create"),
        ("/signals.js", "signalAllAcceptedCredentials"),
    ] {
        let script = send("GET", &cluster.http_url(path), &[], b"").await;
        assert_eq!(script.status, 200, "{path}");
        assert!(
            script.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript"),
            "{path}"
        );
        assert!(
            String::from_utf8_lossy(&script.body).contains(holds),
            "{path}"
        );
    }
}

/// Raising `session_lifetime` reaches a gateway that stays connected: the restarted control
/// plane rotates its signing key for the new lifetime, the gateway resumes from its revision
/// (no snapshot) and hears the new key with its lifetime, and a new, longer session is accepted
/// there at once — not refused as too long for the lifetime the gateway had been sent. A
/// restart with the same lifetime then changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_session_lifetime_reaches_gateways_that_stay_connected() {
    const HOUR: Duration = Duration::from_secs(3600);
    let mut cluster = Cluster::start_configured(1, with_session_lifetime(HOUR)).await;
    let device = Device::new(&cluster.passkey_origin());
    let token = cluster.user_with_enrollment("alice").await;
    let short = cluster.enroll(&device, &token, "laptop").await;
    expect_at_gateways(&cluster, &short, 200, "").await;
    let gateway = cluster.gateways[0].status.clone();
    let snapshots = gateway.snapshots_applied();
    let keys_before = signing_keys(&cluster).await;
    assert_eq!(keys_before.len(), 1);

    cluster.stop_control_plane().await;
    cluster.configure_control_plane = with_session_lifetime(12 * HOUR);
    cluster.start_control_plane().await;
    let head = head_revision(&cluster).await;
    cluster.wait_applied(head).await;
    assert_eq!(
        gateway.snapshots_applied(),
        snapshots,
        "the gateway resumed from its revision"
    );

    // A new session lasts 12 hours, and the gateway accepts it; the one-hour session of the
    // retired key goes on working too.
    let finish = cluster.login_attempt(&device, None).await;
    let reply = cluster.post_json("/v1/login/finish", &finish).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    let expires = humantime::parse_rfc3339(body["expires"].as_str().unwrap()).unwrap();
    let lasts = expires.duration_since(SystemTime::now()).unwrap();
    assert!(lasts > 2 * HOUR, "the new session lasts {lasts:?}");
    let long = Session {
        user_id: body["userId"].as_str().unwrap().to_owned(),
        passkey_id: body["passkeyId"].as_str().unwrap().to_owned(),
        token: body["sessionToken"].as_str().unwrap().to_owned(),
        cookie: String::new(),
    };
    expect_at_gateways(&cluster, &long, 200, "").await;
    expect_at_gateways(&cluster, &short, 200, "").await;
    // What did it: one rotation, at the start.
    let keys = signing_keys(&cluster).await;
    assert_eq!(keys.len(), 2, "one rotation: {keys:?}");
    assert!(
        !keys
            .iter()
            .any(|key| key.current && key.key_id == keys_before[0].key_id)
    );

    // The same lifetime again: the restart appends nothing, and both sessions still work.
    cluster.stop_control_plane().await;
    cluster.start_control_plane().await;
    assert_eq!(head_revision(&cluster).await, head);
    assert_eq!(signing_keys(&cluster).await, keys);
    expect_at_gateways(&cluster, &long, 200, "").await;
    expect_at_gateways(&cluster, &short, 200, "").await;
}

//! Passkey sessions through a synced gateway: the session cookie and Bearer sessions reach the
//! upstream as a user and a session, signing keys arrive by snapshot and by event (rotation
//! included), and every kind of revocation turns 200 into 401 REVOKED as soon as its event is
//! applied, whether it came in the snapshot or on the stream.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use keygate_proto::session::{SessionClaims, SessionSigner};
use keygate_proto::{Change, SessionVerifyingKey};
use keygate_proxy::{AuthMode, ProxyConfig, RouteConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(10);
const HOUR: i64 = 3_600_000;

struct Setup {
    control_plane: ControlPlane,
    gateway: RunningGateway,
    client: TestClient,
    signer: SessionSigner,
}

fn route(prefix: &str, upstream: String, auth: AuthMode, forward_credential: bool) -> RouteConfig {
    RouteConfig {
        path_prefix: prefix.into(),
        upstream,
        auth,
        forward_credential,
        ..RouteConfig::default()
    }
}

/// A control plane with one signing key (and whatever `before` commits), a gateway synced from
/// its snapshot, and routes of every auth mode to an echo upstream.
async fn setup(
    before: impl FnOnce(&ControlPlane, &SessionSigner),
    adjust: impl FnOnce(&mut ProxyConfig),
) -> Setup {
    let control_plane = ControlPlane::start().await;
    let signer = SessionSigner::generate("sk_1");
    control_plane.signing_key(&signer, None);
    before(&control_plane, &signer);
    let upstream = Upstream::start().await;
    let mut config = config(&control_plane);
    config.routes = vec![
        route("/", upstream.url(), AuthMode::KeyOrSession, false),
        route("/session-only", upstream.url(), AuthMode::Session, false),
        route("/key-only", upstream.url(), AuthMode::Key, false),
        route("/forwarded", upstream.url(), AuthMode::Session, true),
    ];
    adjust(&mut config);
    let gateway = start_ready_gateway(config).await;
    let status = gateway.status.clone();
    eventually("the signing key from the snapshot", WAIT, || {
        status.session_state().signing_keys == 1
    })
    .await;
    Setup {
        control_plane,
        gateway,
        client: client(),
        signer,
    }
}

fn cookie(token: &str) -> String {
    format!("theme=dark; keygate_session={token}; lang=en")
}

async fn with_cookie(setup: &Setup, path: &str, token: &str) -> Reply {
    get_with(
        &setup.client,
        &setup.gateway.url(path),
        &[("cookie", &cookie(token))],
    )
    .await
}

async fn with_bearer(setup: &Setup, path: &str, token: &str) -> Reply {
    get_with(
        &setup.client,
        &setup.gateway.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// The error code of a refusal, or "OK" for a forwarded request.
fn outcome(reply: &Reply) -> String {
    if reply.status == 200 {
        "OK".to_owned()
    } else {
        reply.json()["error"]["code"].as_str().unwrap().to_owned()
    }
}

async fn wait_for_revision(setup: &Setup, revision: u64) {
    let status = setup.gateway.status.clone();
    eventually(&format!("revision {revision}"), WAIT, || {
        status.applied_revision() >= revision
    })
    .await;
}

async fn verify_body(setup: &Setup, body: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut request = Request::post(setup.gateway.url("/_keygate/v1/verify"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let reply = send(
        &setup.client,
        request
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.json()
}

#[tokio::test]
async fn a_session_reaches_the_upstream_as_its_user_and_session_only() {
    let setup = setup(|_, _| {}, |_| {}).await;
    let token = session_token(&setup.signer, "ses_1", "alice", "pk_1");

    // The cookie, with spoofed identity headers that must not get through.
    let reply = get_with(
        &setup.client,
        &setup.gateway.url("/orders"),
        &[
            ("cookie", &cookie(&token)),
            ("x-keygate-user-id", "mallory"),
            ("x-keygate-key-id", "key_spoofed"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.upstream_saw("x-keygate-user-id"), vec!["alice"]);
    assert_eq!(reply.upstream_saw("x-keygate-session-id"), vec!["ses_1"]);
    assert!(reply.upstream_saw("x-keygate-key-id").is_empty());
    assert!(reply.upstream_saw("x-keygate-owner").is_empty());
    assert_eq!(
        reply.upstream_saw("cookie"),
        vec!["theme=dark; lang=en"],
        "only the session cookie is removed"
    );

    // Bearer, on the default route and on a session-only route; the header is not forwarded.
    for path in ["/orders", "/session-only/x"] {
        let reply = with_bearer(&setup, path, &token).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
        assert_eq!(reply.upstream_saw("x-keygate-user-id"), vec!["alice"]);
        assert_eq!(reply.upstream_saw("x-keygate-session-id"), vec!["ses_1"]);
        assert!(reply.upstream_saw("authorization").is_empty(), "{path}");
    }

    // A route that forwards the credential keeps cookie and Bearer as they came.
    let reply = with_cookie(&setup, "/forwarded", &token).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_saw("cookie"), vec![cookie(&token)]);
    assert_eq!(reply.upstream_saw("x-keygate-user-id"), vec!["alice"]);

    // Key-only routes take no sessions.
    let reply = with_bearer(&setup, "/key-only/x", &token).await;
    assert_eq!(
        (reply.status.as_u16(), outcome(&reply)),
        (401, "MALFORMED".into())
    );
    let reply = with_cookie(&setup, "/key-only/x", &token).await;
    assert_eq!(
        (reply.status.as_u16(), outcome(&reply)),
        (401, "MISSING".into())
    );
    // And session-only routes no keys.
    let (key, record) = new_key("alice");
    let revision = setup.control_plane.upsert(&record);
    wait_for_revision(&setup, revision).await;
    let reply = get_with(
        &setup.client,
        &setup.gateway.url("/session-only/x"),
        &[("x-api-key", &key)],
    )
    .await;
    assert_eq!(outcome(&reply), "MISSING");
    let reply = with_bearer(&setup, "/orders", &key).await;
    assert_eq!(
        reply.status, 200,
        "keys still work on key_or_session routes"
    );
    assert_eq!(reply.upstream_saw("x-keygate-owner"), vec!["alice"]);
    assert!(reply.upstream_saw("x-keygate-user-id").is_empty());

    // Refusals: garbage, a forgery under our key id, an unknown key id, an expired session.
    let forger = SessionSigner::generate("sk_1");
    let stranger = SessionSigner::generate("sk_unknown");
    let now = keygate_proto::time::now_unix_ms();
    let expired = setup.signer.sign(&SessionClaims {
        session_id: "ses_old".into(),
        user_id: "alice".into(),
        passkey_id: "pk_1".into(),
        issued_unix_ms: now - 2 * HOUR,
        expires_unix_ms: now - HOUR,
    });
    for (token, code) in [
        ("v4.public.not-a-token".to_owned(), "MALFORMED"),
        (
            session_token(&forger, "ses_1", "alice", "pk_1"),
            "MALFORMED",
        ),
        (
            session_token(&stranger, "ses_1", "alice", "pk_1"),
            "MALFORMED",
        ),
        (expired, "EXPIRED"),
    ] {
        let reply = with_cookie(&setup, "/orders", &token).await;
        assert_eq!(reply.status, 401);
        assert_eq!(outcome(&reply), code);
        assert_eq!(
            reply.headers["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
    }

    // The verify endpoint answers for sessions too: body or cookie.
    for verdict in [
        verify_body(&setup, &format!(r#"{{"session":"{token}"}}"#), &[]).await,
        verify_body(&setup, &format!(r#"{{"key":"{token}"}}"#), &[]).await,
        verify_body(&setup, "", &[("cookie", &cookie(&token))]).await,
    ] {
        assert_eq!(verdict["valid"], true, "{verdict}");
        assert_eq!(verdict["code"], "VALID");
        assert_eq!(verdict["userId"], "alice");
        assert_eq!(verdict["sessionId"], "ses_1");
        assert!(verdict["expires"].as_str().unwrap().ends_with('Z'));
        assert!(verdict.get("keyId").is_none());
    }
    let refused = verify_body(&setup, r#"{"session":"v4.public.x.y"}"#, &[]).await;
    assert_eq!(refused["valid"], false);
    assert_eq!(refused["code"], "MALFORMED");
    assert!(refused["userId"].is_null());

    // Metrics count sessions, the cache and the session state.
    let metrics = get_with(&setup.client, &setup.gateway.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for name in [
        "keygate_session_verifications_total{code=\"VALID\"}",
        "keygate_session_verifications_total{code=\"EXPIRED\"}",
        "keygate_session_cache_total{result=\"hit\"}",
        "keygate_session_cache_total{result=\"miss\"}",
        "keygate_session_state_entries{set=\"signing_keys\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    setup.gateway.stop().await;
}

#[tokio::test]
async fn every_kind_of_revocation_turns_200_into_401_revoked() {
    let setup = setup(|_, _| {}, |_| {}).await;
    let signer = &setup.signer;
    let by_session = session_token(signer, "ses_1", "alice", "pk_1");
    let alice_other = session_token(signer, "ses_1b", "alice", "pk_1");
    let by_passkey = session_token(signer, "ses_2", "bob", "pk_2");
    let by_disable = session_token(signer, "ses_3", "carol", "pk_3");
    let by_sign_out = session_token(signer, "ses_4", "dave", "pk_4");
    let untouched = session_token(signer, "ses_5", "erin", "pk_5");
    let all = [
        &by_session,
        &alice_other,
        &by_passkey,
        &by_disable,
        &by_sign_out,
        &untouched,
    ];
    // Each session works (and is now in the signature cache).
    for token in all {
        assert_eq!(outcome(&with_cookie(&setup, "/api", token).await), "OK");
    }

    let control_plane = &setup.control_plane;
    let revision = control_plane.revoke_session("ses_1", "alice");
    wait_for_revision(&setup, revision).await;
    let reply = with_cookie(&setup, "/api", &by_session).await;
    assert_eq!(
        (reply.status.as_u16(), outcome(&reply)),
        (401, "REVOKED".into())
    );
    assert_eq!(
        reply.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &alice_other).await),
        "OK",
        "only that session"
    );

    let revision = control_plane.revoke_passkey("bob", "pk_2");
    wait_for_revision(&setup, revision).await;
    assert_eq!(
        outcome(&with_bearer(&setup, "/api", &by_passkey).await),
        "REVOKED"
    );

    let now = keygate_proto::time::now_unix_ms();
    let revision = control_plane.user_state("carol", true, now);
    wait_for_revision(&setup, revision).await;
    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &by_disable).await),
        "REVOKED"
    );
    // Enabled again: her old session stays revoked (the disable signed her out), a new one works.
    let revision = control_plane.user_state("carol", false, now);
    wait_for_revision(&setup, revision).await;
    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &by_disable).await),
        "REVOKED"
    );
    let fresh = signer.sign(&SessionClaims {
        session_id: "ses_3b".into(),
        user_id: "carol".into(),
        passkey_id: "pk_3".into(),
        issued_unix_ms: now,
        expires_unix_ms: now + HOUR,
    });
    assert_eq!(outcome(&with_cookie(&setup, "/api", &fresh).await), "OK");

    let revision = control_plane.user_state("dave", false, now);
    wait_for_revision(&setup, revision).await;
    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &by_sign_out).await),
        "REVOKED"
    );

    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &untouched).await),
        "OK"
    );
    let verdict = verify_body(&setup, &format!(r#"{{"session":"{by_passkey}"}}"#), &[]).await;
    assert_eq!(verdict["valid"], false);
    assert_eq!(verdict["code"], "REVOKED");
    assert_eq!(
        setup.gateway.status.session_state().revoked_passkeys,
        1,
        "the revocation sets are replicated"
    );
    setup.gateway.stop().await;
}

#[tokio::test]
async fn signing_keys_rotate_by_event_and_a_retired_key_is_revoked_after_its_deadline() {
    let setup = setup(|_, _| {}, |_| {}).await;
    let old_token = session_token(&setup.signer, "ses_old", "alice", "pk_1");
    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &old_token).await),
        "OK"
    );

    // A new key arrives on the stream: its sessions work at once.
    let next = SessionSigner::generate("sk_2");
    let revision = setup.control_plane.signing_key(&next, None);
    wait_for_revision(&setup, revision).await;
    let new_token = session_token(&next, "ses_new", "alice", "pk_1");
    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &new_token).await),
        "OK"
    );

    // The old key is retired but still verifies until its deadline ...
    let now = keygate_proto::time::now_unix_ms();
    let revision = setup
        .control_plane
        .signing_key(&setup.signer, Some(now + HOUR));
    wait_for_revision(&setup, revision).await;
    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &old_token).await),
        "OK"
    );
    // ... and not after it.
    let revision = setup
        .control_plane
        .signing_key(&setup.signer, Some(now - 1));
    wait_for_revision(&setup, revision).await;
    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &old_token).await),
        "REVOKED"
    );
    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &new_token).await),
        "OK"
    );
    assert_eq!(setup.gateway.status.session_state().signing_keys, 2);
    setup.gateway.stop().await;
}

/// Commits and streams `signer`'s key as the control plane announces it: revoked, or with the
/// longest session it may sign.
fn announce_key(
    control_plane: &ControlPlane,
    signer: &SessionSigner,
    verify_until_unix_ms: Option<i64>,
    revoked: bool,
    max_session_lifetime_ms: Option<i64>,
) -> u64 {
    control_plane.commit_change(Change::SigningKey(SessionVerifyingKey {
        key_id: signer.key_id().to_owned(),
        public_key: signer.public_key(),
        created_unix_ms: 0,
        verify_until_unix_ms,
        revoked,
        max_session_lifetime_ms,
    }))
}

#[tokio::test]
async fn a_revoked_signing_key_turns_every_session_it_signed_into_401_revoked() {
    let setup = setup(|_, _| {}, |_| {}).await;
    let old_token = session_token(&setup.signer, "ses_old", "alice", "pk_1");
    // Twice: the second is served from the signature cache, which must not outlive the key.
    for _ in 0..2 {
        assert_eq!(
            outcome(&with_cookie(&setup, "/api", &old_token).await),
            "OK"
        );
    }

    // As the control plane revokes its current key: a new current key, then the revocation.
    let next = SessionSigner::generate("sk_2");
    setup.control_plane.signing_key(&next, None);
    let now = keygate_proto::time::now_unix_ms();
    let revision = announce_key(
        &setup.control_plane,
        &setup.signer,
        Some(now + HOUR),
        true,
        None,
    );
    wait_for_revision(&setup, revision).await;
    let other_session = session_token(&setup.signer, "ses_other", "bob", "pk_2");
    for token in [&old_token, &other_session] {
        assert_eq!(
            outcome(&with_cookie(&setup, "/api", token).await),
            "REVOKED"
        );
        let reply = with_bearer(&setup, "/api", token).await;
        assert_eq!(
            (reply.status.as_u16(), outcome(&reply)),
            (401, "REVOKED".to_owned())
        );
    }
    let new_token = session_token(&next, "ses_new", "alice", "pk_1");
    assert_eq!(
        outcome(&with_cookie(&setup, "/api", &new_token).await),
        "OK"
    );

    // A gateway that starts now learns the revoked key from the snapshot and refuses alike.
    let upstream = Upstream::start().await;
    let mut late_config = config(&setup.control_plane);
    late_config.routes = vec![route("/", upstream.url(), AuthMode::KeyOrSession, false)];
    let late = start_ready_gateway(late_config).await;
    let status = late.status.clone();
    eventually("both signing keys in the snapshot", WAIT, || {
        status.session_state().signing_keys == 2
    })
    .await;
    let reply = get_with(
        &setup.client,
        &late.url("/api"),
        &[("authorization", &format!("Bearer {old_token}"))],
    )
    .await;
    assert_eq!(
        (reply.status.as_u16(), outcome(&reply)),
        (401, "REVOKED".to_owned())
    );
    late.stop().await;
    setup.gateway.stop().await;
}

#[tokio::test]
async fn tokens_issued_in_the_future_or_living_longer_than_the_lifetime_are_malformed() {
    // The key arrives in the snapshot with a 2-hour session lifetime; `session_token` signs
    // sessions of exactly two hours.
    let setup = setup(
        |control_plane, signer| {
            announce_key(control_plane, signer, None, false, Some(2 * HOUR));
        },
        |_| {},
    )
    .await;
    let sign = |session_id: &str, issued_unix_ms: i64, expires_unix_ms: i64| {
        setup.signer.sign(&SessionClaims {
            session_id: session_id.into(),
            user_id: "alice".into(),
            passkey_id: "pk_1".into(),
            issued_unix_ms,
            expires_unix_ms,
        })
    };
    let now = keygate_proto::time::now_unix_ms();
    let minute = 60_000;
    for (token, expected) in [
        (session_token(&setup.signer, "ses_1", "alice", "pk_1"), "OK"),
        (sign("ses_2", now + minute / 2, now + HOUR), "OK"),
        (sign("ses_3", now + 5 * minute, now + HOUR), "MALFORMED"),
        (sign("ses_4", now - HOUR, now + HOUR + 1), "MALFORMED"),
        (sign("ses_5", now - HOUR, now + 30 * 24 * HOUR), "MALFORMED"),
    ] {
        let reply = with_bearer(&setup, "/api", &token).await;
        assert_eq!(outcome(&reply), expected, "{token}");
        if expected != "OK" {
            assert_eq!(reply.status, 401);
        }
        let verdict =
            verify_body(&setup, "", &[("authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(
            verdict["code"],
            if expected == "OK" { "VALID" } else { expected }
        );
    }

    // The lifetime comes with the key: one announced without it (an older control plane)
    // leaves only the clock-skew rule.
    let revision = announce_key(&setup.control_plane, &setup.signer, None, false, None);
    wait_for_revision(&setup, revision).await;
    let long = sign("ses_6", now - HOUR, now + 30 * 24 * HOUR);
    assert_eq!(outcome(&with_bearer(&setup, "/api", &long).await), "OK");
    let future = sign("ses_7", now + 5 * minute, now + HOUR);
    assert_eq!(
        outcome(&with_bearer(&setup, "/api", &future).await),
        "MALFORMED"
    );
    setup.gateway.stop().await;
}

#[tokio::test]
async fn revocations_in_the_snapshot_apply_from_the_first_request() {
    let setup = setup(
        |control_plane, _| {
            control_plane.revoke_session("ses_1", "alice");
            control_plane.revoke_passkey("bob", "pk_2");
            control_plane.user_state("carol", true, 0);
        },
        |_| {},
    )
    .await;
    assert_eq!(setup.gateway.status.snapshots_applied(), 1);
    let signer = &setup.signer;
    for (token, expected) in [
        (session_token(signer, "ses_1", "alice", "pk_1"), "REVOKED"),
        (session_token(signer, "ses_2", "bob", "pk_2"), "REVOKED"),
        (session_token(signer, "ses_3", "carol", "pk_3"), "REVOKED"),
        (session_token(signer, "ses_4", "alice", "pk_1"), "OK"),
    ] {
        assert_eq!(
            outcome(&with_cookie(&setup, "/api", &token).await),
            expected
        );
    }
    let sizes = setup.gateway.status.session_state();
    assert_eq!(
        (
            sizes.signing_keys,
            sizes.revoked_sessions,
            sizes.revoked_passkeys,
            sizes.users
        ),
        (1, 1, 1, 1)
    );
    setup.gateway.stop().await;
}

#[tokio::test]
async fn a_stale_gateway_refuses_sessions_too() {
    let setup = setup(
        |_, _| {},
        |config| {
            config.propagation_bound = Duration::from_millis(400);
            config.ping_interval = Duration::from_millis(50);
        },
    )
    .await;
    let token = session_token(&setup.signer, "ses_1", "alice", "pk_1");
    assert_eq!(outcome(&with_cookie(&setup, "/api", &token).await), "OK");
    setup.control_plane.answer_pings(false);
    let status = setup.gateway.status.clone();
    eventually("staleness past the bound", WAIT, || status.is_stale()).await;
    let reply = with_cookie(&setup, "/api", &token).await;
    assert_eq!(
        (reply.status.as_u16(), outcome(&reply)),
        (503, "STALE".into())
    );
    setup.control_plane.answer_pings(true);
    eventually("recovery", WAIT, || status.is_ready()).await;
    assert_eq!(outcome(&with_cookie(&setup, "/api", &token).await), "OK");
    setup.gateway.stop().await;
}

//! Signing keys end to end (DESIGN.md, "Operator access"), with real `keygate` processes: a
//! control plane on a real PostgreSQL, two gateways, the echo upstream, and a user signed in
//! with the software authenticator. `keygate signing-keys revoke KID --wait` turns every session
//! the key signed into 401 REVOKED at both gateways by the time it returns, while sign-ins go on
//! with the key that replaced it; and tokens signed with a real key but issued in the future or
//! living longer than the session lifetime are refused at the gateways and at the control
//! plane's own API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use keygate_proto::session::{self, SessionClaims, SessionSigner};
use keygate_proto::time::now_unix_ms;
use keygate_test_postgres::TestPostgres;
use support::passkeys::{Device, Session, enroll_at, get_with_session, login_at};
use support::processes::{
    ControlPlaneProcess, GatewayProcess, Tokens, eventually_within, keygate_cli,
    start_echo_upstream,
};
use support::{DEADLINE, Reply, send};

/// The control plane's default session lifetime, which the test keeps.
const LIFETIME_MS: i64 = 12 * 3_600_000;

/// Sends `token` as a bearer to the control plane's self-service API.
async fn my_passkeys(control_plane: &ControlPlaneProcess, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    send(
        "GET",
        &format!("{}/v1/me/passkeys", control_plane.http),
        &[("authorization", auth.as_bytes())],
        b"",
    )
    .await
}

/// The claims of a token the control plane issued (verified with `signer`'s public key).
fn claims_of(token: &str, signer: &SessionSigner) -> SessionClaims {
    session::parse(token)
        .unwrap()
        .verify(&signer.public_key())
        .unwrap()
}

/// Lowercase hex to bytes.
fn from_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_signing_key_gives_revoked_at_both_gateways_after_wait() {
    let postgres = tokio::task::spawn_blocking(TestPostgres::start)
        .await
        .unwrap()
        .expect("PostgreSQL starts (tests/setup.sh installs it)");
    let database = postgres.create_database("signing").unwrap();
    let tokens = Tokens::random();
    let control_plane = ControlPlaneProcess::start("cp", &database, &tokens, "127.0.0.1:0").await;
    let (_echo, upstream) = start_echo_upstream().await;
    let mut gateways = Vec::new();
    for id in ["gw-a", "gw-b"] {
        gateways
            .push(GatewayProcess::start(id, &upstream, &[&control_plane.grpc], &tokens, &[]).await);
    }
    let cli = |args: &'static [&'static str]| keygate_cli(&control_plane.grpc, &tokens, args);

    // Alice enrolls from a link on a software authenticator; her session works at both.
    assert_eq!(cli(&["users", "create", "alice"]).await.code, 0);
    let enrollment = cli(&["enrollments", "create", "--user", "alice"]).await;
    let link = enrollment.json["link"].as_str().expect("a link").to_owned();
    let origin = link.split_once("/#enroll=").expect("a link with a token").0;
    let token = link.split_once("#enroll=").unwrap().1;
    let device = Device::new(origin);
    let session = enroll_at(&control_plane.http, &device, token, "Laptop").await;
    for gateway in &gateways {
        eventually_within(
            DEADLINE,
            &format!("the session works at {}", gateway.id),
            || async {
                get_with_session(&gateway.url("/orders"), &session)
                    .await
                    .status
                    == 200
            },
        )
        .await;
    }

    let listed = cli(&["signing-keys", "list"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let keys = listed.json["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["current"], true);
    assert!(keys[0]["verifyUntil"].is_null() && keys[0]["revoked"].is_null());
    assert!(keys[0]["created"].is_string());
    // The control plane's default session_lifetime, 12 h, recorded on the key.
    assert_eq!(keys[0]["maxSessionLifetimeMs"], 12 * 3600 * 1000);
    let key_id = keys[0]["keyId"].as_str().unwrap().to_owned();

    let revoked = keygate_cli(
        &control_plane.grpc,
        &tokens,
        &["signing-keys", "revoke", &key_id, "--wait"],
    )
    .await;
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    assert_eq!(revoked.json["keyId"], key_id.as_str());
    assert_eq!(revoked.json["alreadyRevoked"], false);
    assert_eq!(revoked.json["wait"]["complete"], true, "{}", revoked.json);
    let acked = revoked.json["wait"]["acked"].to_string();
    assert!(acked.contains("gw-a") && acked.contains("gw-b"), "{acked}");
    let current = revoked.json["currentKeyId"].as_str().unwrap().to_owned();
    assert_ne!(current, key_id);

    // Applied at both gateways when --wait returned: REVOKED at once, no polling.
    for gateway in &gateways {
        let reply = get_with_session(&gateway.url("/orders"), &session).await;
        assert_eq!(
            (reply.status, reply.code()),
            (401, "REVOKED".to_owned()),
            "{}",
            gateway.id
        );
    }
    assert_eq!(
        my_passkeys(&control_plane, &session.token).await.code(),
        "REVOKED"
    );

    // Signing in again works everywhere: the new key was announced before the revocation.
    let again: Session = login_at(&control_plane.http, &device).await;
    for gateway in &gateways {
        let reply = get_with_session(&gateway.url("/orders"), &again).await;
        assert_eq!(reply.status, 200, "{}: {:?}", gateway.id, reply.body);
    }

    let listed = cli(&["signing-keys", "list"]).await;
    let keys = listed.json["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let old = keys
        .iter()
        .find(|key| key["keyId"] == key_id.as_str())
        .unwrap();
    assert_eq!(old["current"], false);
    assert!(old["revoked"].is_string() && old["verifyUntil"].is_string());
    let new = keys
        .iter()
        .find(|key| key["keyId"] == current.as_str())
        .unwrap();
    assert_eq!(new["current"], true);

    // Again: no change, said plainly; an unknown key is a one-line error.
    let again_revoked = keygate_cli(
        &control_plane.grpc,
        &tokens,
        &["signing-keys", "revoke", &key_id],
    )
    .await;
    assert_eq!(again_revoked.code, 0);
    assert_eq!(again_revoked.json["alreadyRevoked"], true);
    let unknown = support::processes::run_to_exit(&[
        "signing-keys",
        "revoke",
        "sk_nope",
        "--endpoint",
        &control_plane.grpc,
        "--token",
        &tokens.admin,
    ])
    .await;
    assert_ne!(unknown.0, 0);
    assert!(unknown.1.contains("not found"), "{}", unknown.1);
    assert_eq!(unknown.1.trim().lines().count(), 1, "{}", unknown.1);

    // Tokens signed with the real current key (read from the database, as a thief would), for
    // the new session but with other times: issued in the future, or living too long.
    let secret = postgres
        .psql(
            "signing",
            &format!("SELECT encode(secret, 'hex') FROM signing_keys WHERE key_id = '{current}'"),
        )
        .unwrap();
    let secret: [u8; 32] = from_hex(secret.trim()).try_into().unwrap();
    let signer = SessionSigner::from_secret(current.as_str(), secret);
    let claims = claims_of(&again.token, &signer);
    assert_eq!(claims.expires_unix_ms - claims.issued_unix_ms, LIFETIME_MS);
    let now = now_unix_ms();
    for (issued, expires, expected) in [
        (claims.issued_unix_ms, claims.expires_unix_ms, "OK"),
        (now + 5 * 60_000, now + 3_600_000, "MALFORMED"),
        (
            claims.issued_unix_ms,
            claims.issued_unix_ms + LIFETIME_MS + 1,
            "MALFORMED",
        ),
    ] {
        let token = signer.sign(&SessionClaims {
            issued_unix_ms: issued,
            expires_unix_ms: expires,
            ..claims.clone()
        });
        let crafted = Session {
            token: token.clone(),
            ..again.clone()
        };
        for gateway in &gateways {
            let reply = get_with_session(&gateway.url("/orders"), &crafted).await;
            let outcome = if reply.status == 200 {
                "OK".to_owned()
            } else {
                reply.code()
            };
            assert_eq!(
                outcome, expected,
                "{}: issued {issued}, expires {expires}",
                gateway.id
            );
        }
        let reply = my_passkeys(&control_plane, &token).await;
        let outcome = if reply.status == 200 {
            "OK".to_owned()
        } else {
            reply.code()
        };
        assert_eq!(
            outcome, expected,
            "control plane: issued {issued}, expires {expires}"
        );
    }
}

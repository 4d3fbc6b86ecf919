//! Passkeys in tests: the software authenticator shared with the benchmarks
//! (`benches/src/authenticator.rs`: 1Password's passkey-rs, a real CTAP2 authenticator and
//! WebAuthn client, holding discoverable credentials in memory and always verifying its user),
//! driven against the control plane's HTTP API exactly as the page drives a browser: options
//! JSON in, credential JSON (base64url) out.

// The very same file is the keygate-benches crate's `authenticator` module.
#[path = "../../benches/src/authenticator.rs"]
mod authenticator;

// Each test binary uses a different part of it.
#[allow(unused_imports)]
pub use authenticator::{BackupFlags, Credentials, Device, b64};
use serde_json::{Value, json};

use super::{Cluster, Reply, send};

/// A signed-in session, as the finish endpoints return it.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub passkey_id: String,
    pub token: String,
    /// The `Set-Cookie` header of the finish.
    pub cookie: String,
}

impl Session {
    fn from_reply(reply: &Reply) -> Self {
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        let cookie = reply
            .headers
            .get("set-cookie")
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_owned();
        Self {
            user_id: body["userId"].as_str().unwrap().to_owned(),
            passkey_id: body["passkeyId"].as_str().unwrap().to_owned(),
            token: body["sessionToken"].as_str().unwrap().to_owned(),
            cookie,
        }
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

impl Cluster {
    /// A URL on the control plane's HTTP listener.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// The relying-party origin the control plane uses by default.
    pub fn passkey_origin(&self) -> String {
        format!("http://localhost:{}", self.http_addr.port())
    }

    /// POSTs JSON to the control plane's HTTP listener.
    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        post_json_to(&self.http_url(path), body).await
    }

    /// A request with a session (bearer) to the control plane's HTTP listener.
    pub async fn as_user(
        &self,
        session: &Session,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let auth = session.bearer();
        let body = body.map(Value::to_string).unwrap_or_default();
        send(
            method,
            &self.http_url(path),
            &[
                ("authorization", auth.as_bytes()),
                ("content-type", b"application/json"),
            ],
            body.as_bytes(),
        )
        .await
    }

    /// Creates a user and an enrollment link for them; returns the link's token.
    pub async fn user_with_enrollment(&self, user_id: &str) -> String {
        let mut admin = self.admin().await;
        admin
            .create_user(keygate_proto::pb::CreateUserRequest {
                user_id: user_id.into(),
            })
            .await
            .expect("create user");
        self.enrollment_token(user_id).await
    }

    /// A fresh enrollment link's token for `user_id`.
    pub async fn enrollment_token(&self, user_id: &str) -> String {
        let link = self
            .admin()
            .await
            .create_enrollment(keygate_proto::pb::CreateEnrollmentRequest {
                user_id: user_id.into(),
                expires_in_ms: 0,
                ..Default::default()
            })
            .await
            .expect("create enrollment")
            .into_inner()
            .link;
        link.split_once("#enroll=")
            .expect("link with a token")
            .1
            .to_owned()
    }

    /// Enrollment with a link token: begin, the device creates a passkey, finish.
    pub async fn enroll(&self, device: &Device, token: &str, name: &str) -> Session {
        enroll_at(&self.http_url(""), device, token, name).await
    }

    /// Begins a discoverable sign-in and lets the device answer; returns the finish body
    /// (unsent) for tests that tamper with it.
    pub async fn login_attempt(&self, device: &Device, user_id: Option<&str>) -> Value {
        login_attempt_at(&self.http_url(""), device, user_id).await
    }

    /// A discoverable sign-in with the device's passkey.
    pub async fn login(&self, device: &Device) -> Session {
        login_at(&self.http_url(""), device).await
    }

    /// A signed-in user adds a passkey on `device`; returns the new passkey's JSON.
    pub async fn add_passkey(&self, session: &Session, device: &Device, name: &str) -> Value {
        let begun = self
            .as_user(
                session,
                "POST",
                "/v1/me/passkeys/begin",
                Some(&json!({ "name": name })),
            )
            .await;
        assert_eq!(
            begun.status,
            200,
            "{}",
            String::from_utf8_lossy(&begun.body)
        );
        let begun = begun.json();
        let credential = device.create(&begun["publicKey"]).await;
        let finished = self
            .as_user(
                session,
                "POST",
                "/v1/me/passkeys/finish",
                Some(&json!({ "ceremonyId": begun["ceremonyId"], "credential": credential })),
            )
            .await;
        assert_eq!(
            finished.status,
            201,
            "{}",
            String::from_utf8_lossy(&finished.body)
        );
        finished.json()["passkey"].clone()
    }

    /// The signed-in user's passkeys, as `GET /v1/me/passkeys` lists them.
    pub async fn my_passkeys(&self, session: &Session) -> Reply {
        self.as_user(session, "GET", "/v1/me/passkeys", None).await
    }
}

/// POSTs JSON to `url`.
pub async fn post_json_to(url: &str, body: &Value) -> Reply {
    send(
        "POST",
        url,
        &[("content-type", b"application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

/// Enrollment with a link token at the control plane whose HTTP listener is `base`
/// (`http://host:port`): begin, the device creates a passkey, finish.
pub async fn enroll_at(base: &str, device: &Device, token: &str, name: &str) -> Session {
    let begun = post_json_to(
        &format!("{base}/v1/enroll/begin"),
        &json!({ "token": token, "name": name }),
    )
    .await;
    assert_eq!(
        begun.status,
        200,
        "{}",
        String::from_utf8_lossy(&begun.body)
    );
    let begun = begun.json();
    let credential = device.create(&begun["publicKey"]).await;
    let finished = post_json_to(
        &format!("{base}/v1/enroll/finish"),
        &json!({ "ceremonyId": begun["ceremonyId"], "credential": credential }),
    )
    .await;
    Session::from_reply(&finished)
}

/// Begins a sign-in at `base` (discoverable without `user_id`) and lets the device answer;
/// returns the finish body, unsent.
pub async fn login_attempt_at(base: &str, device: &Device, user_id: Option<&str>) -> Value {
    let body = match user_id {
        Some(user_id) => json!({ "userId": user_id }),
        None => json!({}),
    };
    let begun = post_json_to(&format!("{base}/v1/login/begin"), &body).await;
    assert_eq!(
        begun.status,
        200,
        "{}",
        String::from_utf8_lossy(&begun.body)
    );
    let begun = begun.json();
    let credential = device.get(&begun["publicKey"]).await;
    json!({ "ceremonyId": begun["ceremonyId"], "credential": credential })
}

/// A discoverable sign-in with the device's passkey at `base`.
pub async fn login_at(base: &str, device: &Device) -> Session {
    let finish = login_attempt_at(base, device, None).await;
    let reply = post_json_to(&format!("{base}/v1/login/finish"), &finish).await;
    Session::from_reply(&reply)
}

/// GET through a gateway with a session token as a bearer.
pub async fn get_with_session(url: &str, session: &Session) -> Reply {
    let auth = session.bearer();
    send("GET", url, &[("authorization", auth.as_bytes())], b"").await
}

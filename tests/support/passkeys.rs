//! Passkeys in tests: a software authenticator (1Password's passkey-rs: a real CTAP2
//! authenticator and WebAuthn client, holding discoverable credentials in memory and always
//! verifying its user), driven against the control plane's HTTP API exactly as the page drives a
//! browser: options JSON in, credential JSON (base64url) out.

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use passkey_authenticator::{
    Authenticator, CredentialStore, DiscoverabilitySupport, StoreInfo, UiHint, UserCheck,
    UserValidationMethod,
};
use passkey_client::{Client, DefaultClientData};
use passkey_crypto::AvailableBackend;
use passkey_types::Passkey;
use passkey_types::ctap2::make_credential::{
    Options, PublicKeyCredentialRpEntity, PublicKeyCredentialUserEntity,
};
use passkey_types::ctap2::{Aaguid, Ctap2Error, StatusCode};
use passkey_types::webauthn::{
    CredentialCreationOptions, CredentialRequestOptions, PublicKeyCredentialDescriptor,
};
use serde_json::{Value, json};
use url::Url;

use super::{Cluster, Reply, send};

/// Credentials kept in memory; a request with no allow list finds all of the site's
/// credentials (discoverable sign-in).
#[derive(Clone, Default)]
pub struct Credentials(Arc<Mutex<Vec<Passkey>>>);

#[async_trait::async_trait]
impl CredentialStore for Credentials {
    type PasskeyItem = Passkey;

    async fn find_credentials(
        &self,
        allow: Option<&[PublicKeyCredentialDescriptor]>,
        rp_id: &str,
        _user_handle: Option<&[u8]>,
    ) -> Result<Vec<Passkey>, StatusCode> {
        let found: Vec<Passkey> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|passkey| passkey.rp_id == rp_id)
            .filter(|passkey| match allow {
                Some(allow) if !allow.is_empty() => allow
                    .iter()
                    .any(|descriptor| *descriptor.id == *passkey.credential_id),
                _ => true,
            })
            .cloned()
            .collect();
        if found.is_empty() {
            Err(Ctap2Error::NoCredentials.into())
        } else {
            // Newest first: the authenticator signs with the first one, as a person picks the
            // passkey they made last.
            Ok(found.into_iter().rev().collect())
        }
    }

    async fn save_credential(
        &mut self,
        credential: Passkey,
        _user: PublicKeyCredentialUserEntity,
        _rp: PublicKeyCredentialRpEntity,
        _options: Options,
    ) -> Result<(), StatusCode> {
        self.0.lock().unwrap().push(credential);
        Ok(())
    }

    async fn update_credential(&mut self, credential: &Passkey) -> Result<(), StatusCode> {
        let mut all = self.0.lock().unwrap();
        if let Some(slot) = all
            .iter_mut()
            .find(|stored| stored.credential_id == credential.credential_id)
        {
            *slot = credential.clone();
        }
        Ok(())
    }

    async fn get_info(&self) -> StoreInfo {
        StoreInfo {
            discoverability: DiscoverabilitySupport::Full,
        }
    }
}

/// A user who is always present and always verified (a PIN or biometric that never fails).
struct AlwaysVerified;

#[async_trait::async_trait]
impl UserValidationMethod for AlwaysVerified {
    type PasskeyItem = Passkey;

    async fn check_user<'a>(
        &self,
        _hint: UiHint<'a, Passkey>,
        presence: bool,
        verification: bool,
    ) -> Result<UserCheck, Ctap2Error> {
        Ok(UserCheck {
            presence,
            verification,
        })
    }

    fn is_presence_enabled(&self) -> bool {
        true
    }

    fn is_verification_enabled(&self) -> Option<bool> {
        Some(true)
    }
}

/// One person's device: a software authenticator and the origin its "browser" is on.
#[derive(Clone)]
pub struct Device {
    pub credentials: Credentials,
    pub origin: Url,
}

impl Device {
    /// A device whose browser shows pages of `origin` (e.g. `http://localhost:7080`).
    pub fn new(origin: &str) -> Self {
        Self {
            credentials: Credentials::default(),
            origin: Url::parse(origin).unwrap(),
        }
    }

    fn authenticator(&self) -> Authenticator<Credentials, AlwaysVerified, AvailableBackend> {
        let mut authenticator = Authenticator::new(
            Aaguid::new_empty(),
            self.credentials.clone(),
            AlwaysVerified,
            AvailableBackend,
        );
        // Counters let the tests see the control plane store them.
        authenticator.set_make_credentials_with_signature_counter(true);
        authenticator
    }

    /// `navigator.credentials.create({publicKey})` on this device, as the page's JSON.
    pub async fn create(&self, public_key: &Value) -> Value {
        self.create_on(&self.origin.clone(), public_key).await
    }

    /// The same, from a page on another origin (the relying party must refuse it).
    pub async fn create_on(&self, origin: &Url, public_key: &Value) -> Value {
        let options = CredentialCreationOptions {
            public_key: serde_json::from_value(public_key.clone())
                .expect("creation options in the standard JSON form"),
        };
        let created = Client::new(self.authenticator())
            .allows_insecure_localhost(true)
            .register(origin, options, DefaultClientData)
            .await
            .unwrap_or_else(|error| panic!("the authenticator refused to register: {error:?}"));
        json!({
            "id": created.id,
            "rawId": b64(&created.raw_id),
            "type": "public-key",
            "response": {
                "attestationObject": b64(&created.response.attestation_object),
                "clientDataJSON": b64(&created.response.client_data_json),
                "transports": ["internal"],
            },
            "extensions": {},
        })
    }

    /// `navigator.credentials.get({publicKey})` on this device, as the page's JSON.
    pub async fn get(&self, public_key: &Value) -> Value {
        let options = CredentialRequestOptions {
            public_key: serde_json::from_value(public_key.clone())
                .expect("request options in the standard JSON form"),
        };
        let origin = self.origin.clone();
        let asserted = Client::new(self.authenticator())
            .allows_insecure_localhost(true)
            .authenticate(&origin, options, DefaultClientData)
            .await
            .unwrap_or_else(|error| panic!("the authenticator refused to sign: {error:?}"));
        json!({
            "id": asserted.id,
            "rawId": b64(&asserted.raw_id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(&asserted.response.authenticator_data),
                "clientDataJSON": b64(&asserted.response.client_data_json),
                "signature": b64(&asserted.response.signature),
                "userHandle": asserted.response.user_handle.as_deref().map(|handle| b64(handle)),
            },
            "extensions": {},
        })
    }

    /// How many credentials this device holds.
    pub fn credential_count(&self) -> usize {
        self.credentials.0.lock().unwrap().len()
    }
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

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
        send(
            "POST",
            &self.http_url(path),
            &[("content-type", b"application/json")],
            body.to_string().as_bytes(),
        )
        .await
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
        let begun = self
            .post_json("/v1/enroll/begin", &json!({ "token": token, "name": name }))
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
            .post_json(
                "/v1/enroll/finish",
                &json!({ "ceremonyId": begun["ceremonyId"], "credential": credential }),
            )
            .await;
        Session::from_reply(&finished)
    }

    /// Begins a discoverable sign-in and lets the device answer; returns the finish body
    /// (unsent) for tests that tamper with it.
    pub async fn login_attempt(&self, device: &Device, user_id: Option<&str>) -> Value {
        let body = match user_id {
            Some(user_id) => json!({ "userId": user_id }),
            None => json!({}),
        };
        let begun = self.post_json("/v1/login/begin", &body).await;
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

    /// A discoverable sign-in with the device's passkey.
    pub async fn login(&self, device: &Device) -> Session {
        let finish = self.login_attempt(device, None).await;
        let reply = self.post_json("/v1/login/finish", &finish).await;
        Session::from_reply(&reply)
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

/// GET through a gateway with a session token as a bearer.
pub async fn get_with_session(url: &str, session: &Session) -> Reply {
    let auth = session.bearer();
    send("GET", url, &[("authorization", auth.as_bytes())], b"").await
}

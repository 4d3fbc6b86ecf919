//! Enrolling passkeys the way an operator and the passkey page do: `CreateUser` and
//! `CreateEnrollment` over the Admin API give a one-time link `{origin}/#enroll=TOKEN`; a
//! "browser" on that link's origin runs the registration ceremony against the control plane's
//! JSON API (`/v1/enroll/begin`, the [`authenticator`](crate::authenticator) creates the passkey,
//! `/v1/enroll/finish`), sending `Origin` as a browser does, and keeps the session the finish
//! returns.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use keygate::admin_client::AdminClient;
use keygate_proto::pb;
use serde_json::{Value, json};
use url::Url;

use crate::authenticator::Device;
use crate::probe;

/// A passkey just enrolled, and the session its enrollment signed in.
#[derive(Debug, Clone)]
pub struct EnrolledSession {
    pub user_id: String,
    pub passkey_id: String,
    /// The session token (`v4.public.…`), presented to gateways as a bearer.
    pub token: String,
}

/// The control plane's passkey JSON API, reached at its HTTP listener.
#[derive(Debug, Clone)]
pub struct PasskeyApi {
    /// `http://HOST:PORT` of the control plane's HTTP listener, without a trailing slash.
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl PasskeyApi {
    /// The API at `base` (e.g. `http://127.0.0.1:7080`). The relying party's origin may name
    /// the same listener differently (`http://localhost:7080`); it is taken from the link.
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            client: probe::client(),
        }
    }

    /// Creates `user_id`, an enrollment link for them, and enrolls a new passkey with a fresh
    /// software authenticator through the link, as a person opening it would.
    pub async fn enroll(
        &self,
        admin: &mut AdminClient,
        user_id: &str,
    ) -> Result<EnrolledSession, String> {
        admin
            .create_user(pb::CreateUserRequest {
                user_id: user_id.into(),
            })
            .await
            .map_err(|status| format!("CreateUser({user_id}): {status}"))?;
        let link = admin
            .create_enrollment(pb::CreateEnrollmentRequest {
                user_id: user_id.into(),
                expires_in_ms: 0,
                ..Default::default()
            })
            .await
            .map_err(|status| format!("CreateEnrollment({user_id}): {status}"))?
            .into_inner()
            .link;
        let (origin, token) = link
            .split_once("/#enroll=")
            .ok_or_else(|| format!("an enrollment link without a token: {link}"))?;
        let device = Device::on(
            Url::parse(origin)
                .map_err(|e| format!("an enrollment link on no origin ({link}): {e}"))?,
        );

        let begun = self
            .post(
                "/v1/enroll/begin",
                origin,
                &json!({ "token": token, "name": "bench" }),
            )
            .await?;
        let credential = device
            .try_create_on(&device.origin, &begun["publicKey"])
            .await?;
        let finished = self
            .post(
                "/v1/enroll/finish",
                origin,
                &json!({ "ceremonyId": begun["ceremonyId"], "credential": credential }),
            )
            .await?;
        let field = |name: &str| {
            finished[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("/v1/enroll/finish answered without {name}: {finished}"))
        };
        Ok(EnrolledSession {
            user_id: field("userId")?,
            passkey_id: field("passkeyId")?,
            token: field("sessionToken")?,
        })
    }

    /// POSTs `body` as JSON from a page on `origin`; the answer's JSON if it is 2xx.
    async fn post(&self, path: &str, origin: &str, body: &Value) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let request = http::Request::post(&url)
            .header("content-type", "application/json")
            .header("origin", origin)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{url} answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url} answered no JSON: {e}"))
    }
}

//! `POST /_keygate/v1/verify` on the main listener: a verdict without forwarding, for callers
//! that only want to know (and for load tests of pure verification).
//!
//! The credential comes from a JSON body (at most 8 KiB) — `{"key":"…"}`, or `{"session":"…"}`
//! for a session token — or, when the body is empty or names neither, from the usual credential
//! headers and the session cookie (as on a `key_or_session` route). A `key` that starts with
//! `v4.public.` is a session token, as it would be in `Authorization: Bearer`. The answer is
//! always 200 with the verdict, STALE included: `{"valid","code","keyId","owner","meta",
//! "expires"}` for a key, `{"valid","code","userId","sessionId","expires"}` for a session
//! (refusals too, with the identity fields null).
//!
//! `"permissions": ["…"]` (every one required) and `"cost": n` (default 1) check a key's limits
//! as a request on a route with those settings would, and consume like one: the answer's code
//! is then INSUFFICIENT_PERMISSIONS, USAGE_EXCEEDED or RATE_LIMITED when they refuse, and a key
//! with rate limits gets the `RateLimit-Policy`/`RateLimit` headers (and `Retry-After` on
//! RATE_LIMITED) on the 200 answer. A session with permissions required is
//! INSUFFICIENT_PERMISSIONS.

use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use keygate_proto::Meta;
use keygate_proto::time::rfc3339;
use serde::{Deserialize, Serialize};

use crate::checks::Checks;
use crate::client_body::ClientBody;
use crate::config::AuthMode;
use crate::credential::Credential;
use crate::limits::{self, Admission};
use crate::response::{self, ProxyBody, codes};
use crate::verify::{Grant, Verdict};

/// Where the endpoint is served.
pub const PATH: &str = "/_keygate/v1/verify";

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 8 * 1024;

#[derive(Deserialize, Default)]
struct VerifyRequest {
    key: Option<String>,
    session: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
    cost: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VerifyResponse<'a> {
    valid: bool,
    code: &'static str,
    key_id: Option<String>,
    owner: Option<&'a str>,
    meta: Option<&'a Meta>,
    expires: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionVerifyResponse<'a> {
    valid: bool,
    code: &'static str,
    user_id: Option<&'a str>,
    session_id: Option<&'a str>,
    expires: Option<String>,
}

pub(crate) async fn answer(
    checks: &Checks,
    body_timeout: Duration,
    request: Request<ClientBody>,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    if request.method() != Method::POST {
        let mut response = response::error(
            StatusCode::METHOD_NOT_ALLOWED,
            codes::METHOD_NOT_ALLOWED,
            "use POST",
            request_id,
        );
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let (parts, body) = request.into_parts();
    let collected =
        tokio::time::timeout(body_timeout, Limited::new(body, MAX_BODY_BYTES).collect()).await;
    let Ok(collected) = collected else {
        // A Content-Length with no body, or a trickle: answer, and hyper closes the connection
        // since the body was not read to its end.
        return response::error(
            StatusCode::REQUEST_TIMEOUT,
            codes::BODY_TIMEOUT,
            "the request body did not arrive in time",
            request_id,
        );
    };
    let body = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return response::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD_TOO_LARGE,
                "the request body is larger than 8 KiB",
                request_id,
            );
        }
        Err(_) => {
            return response::error(
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                "could not read the request body",
                request_id,
            );
        }
    };
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        VerifyRequest::default()
    } else {
        match serde_json::from_slice::<VerifyRequest>(&body) {
            Ok(parsed) => parsed,
            Err(_) => {
                return response::error(
                    StatusCode::BAD_REQUEST,
                    codes::BAD_REQUEST,
                    "expected a JSON body {\"key\":\"…\"} or {\"session\":\"…\"}, with \"permissions\": [\"…\"] and \"cost\": n optional",
                    request_id,
                );
            }
        }
    };
    let required = match keygate_proto::limits::canonical_permissions(from_body.permissions) {
        Ok(required) => required,
        Err(error) => {
            return response::error(
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                &format!("permissions: {error}"),
                request_id,
            );
        }
    };
    let cost = from_body.cost.unwrap_or(1);
    if cost > keygate_proto::limits::MAX_AMOUNT {
        return response::error(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            &format!("cost must be at most {}", keygate_proto::limits::MAX_AMOUNT),
            request_id,
        );
    }
    let credential = match (&from_body.session, &from_body.key) {
        (Some(token), _) => Credential::Session(token),
        (None, Some(key)) => Credential::key_or_session(key),
        (None, None) => checks
            .credentials
            .extract(&parts.headers, AuthMode::KeyOrSession),
    };
    let now = keygate_proto::time::now_unix_ms();
    let mut verdict = checks.verifier.verify_at(credential, now).await;
    let mut admitted = None;
    if let Verdict::Valid(grant) = &verdict {
        let needed =
            !required.is_empty() || matches!(grant, Grant::Key(key) if key.policy().is_some());
        if needed {
            let admission = checks.admit_with(grant, &required, cost, now).await;
            if let Admission::Denied { code, .. } = &admission {
                verdict = Verdict::Denied(*code);
            }
            admitted = Some(admission);
        }
    }
    let code = verdict.code().as_str();
    let mut response = match &verdict {
        Verdict::Valid(Grant::Session(session)) => response::json(
            StatusCode::OK,
            &SessionVerifyResponse {
                valid: true,
                code,
                user_id: Some(session.user_id()),
                session_id: Some(session.session_id()),
                expires: Some(rfc3339(session.expires_unix_ms())),
            },
        ),
        Verdict::Denied(_) if matches!(credential, Credential::Session(_)) => response::json(
            StatusCode::OK,
            &SessionVerifyResponse {
                valid: false,
                code,
                user_id: None,
                session_id: None,
                expires: None,
            },
        ),
        Verdict::Valid(Grant::Key(grant)) => response::json(
            StatusCode::OK,
            &VerifyResponse {
                valid: true,
                code,
                key_id: Some(grant.key_id().to_string()),
                owner: Some(grant.owner()),
                meta: grant.meta(),
                expires: grant.expires_unix_ms().map(rfc3339),
            },
        ),
        Verdict::Denied(_) => response::json(
            StatusCode::OK,
            &VerifyResponse {
                valid: false,
                code,
                key_id: None,
                owner: None,
                meta: None,
                expires: None,
            },
        ),
    };
    response
        .headers_mut()
        .insert(response::REQUEST_ID.clone(), request_id.clone());
    if let Some(admitted) = &admitted {
        limits::headers::apply(response.headers_mut(), admitted);
    }
    response
}

//! Responses the gateway writes itself: JSON error bodies
//! (`{"error":{"code","message"},"requestId"}`), the `WWW-Authenticate` challenge on 401, and
//! request ids.

use bytes::Bytes;
use http::header::{
    CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use serde::Serialize;

use crate::fields;
use crate::h1::HeadFields;
use crate::limits::{self, Admission};
use crate::upstream::PooledBody;
use crate::verify::Code;

/// Body of every response the gateway sends: streamed from an upstream, or written here.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// The fields of a forwarded response that its map does not hold (`h1::HeadFields`): the
/// upstream's and the request id; none for a response the gateway wrote. Empty after the first
/// call.
pub fn head_fields(body: &mut ProxyBody) -> HeadFields {
    match body {
        Either::Left(upstream) => upstream.get_mut().take_fields(),
        Either::Right(_) => HeadFields::default(),
    }
}

/// The `x-request-id` the gateway gave `response`: set with the upstream's fields (a forwarded
/// one, `h1::HeadFields`) or in its map (one it wrote).
pub fn request_id_of(response: &Response<ProxyBody>) -> Option<&HeaderValue> {
    match response.body() {
        Either::Left(upstream) => upstream.get_ref().fields().get(&REQUEST_ID),
        Either::Right(_) => None,
    }
    .or_else(|| response.headers().get(&REQUEST_ID))
}

/// The request-id header, read from clients and sent to upstreams and back.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest inbound request id that is kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Error codes that are not verdicts.
pub(crate) mod codes {
    pub const UPSTREAM_UNAVAILABLE: &str = "UPSTREAM_UNAVAILABLE";
    pub const UPSTREAM_TIMEOUT: &str = "UPSTREAM_TIMEOUT";
    pub const UPSTREAM_BUSY: &str = "UPSTREAM_BUSY";
    pub const BODY_TIMEOUT: &str = "BODY_TIMEOUT";
    pub const NO_ROUTE: &str = "NO_ROUTE";
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
    pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
    pub const INTERNAL: &str = "INTERNAL";
    /// 400: the path has an encoded slash or backslash (`escaped_slashes = "reject"`) or a
    /// broken percent-encoding; see `path.rs`.
    pub const INVALID_PATH: &str = "INVALID_PATH";
}

/// The inbound `x-request-id` if it is 1–128 visible ASCII characters, else a fresh one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    // A walk over the few fields, not a hashed lookup of a name most requests lack.
    let [inbound] = fields::first(headers, [&REQUEST_ID]);
    if let Some(value) = inbound {
        let bytes = value.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(u8::is_ascii_graphic)
        {
            return value.clone();
        }
    }
    generate_request_id()
}

/// 128 random bits as 32 lowercase hex digits (a started trace takes them as its id).
fn generate_request_id() -> HeaderValue {
    let random: u128 = rand::random();
    let mut text = [0u8; 32];
    match hex::encode_to_slice(random.to_le_bytes(), &mut text) {
        Ok(()) => HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("unknown")),
        // 16 bytes are always 32 digits.
        Err(_) => HeaderValue::from_static("unknown"),
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
    #[serde(rename = "requestId")]
    request_id: &'a str,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

/// A JSON error response.
pub fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let body = ErrorBody {
        error: ErrorDetail { code, message },
        request_id: request_id.to_str().unwrap_or_default(),
    };
    let mut response = json(status, &body);
    response
        .headers_mut()
        .insert(REQUEST_ID.clone(), request_id.clone());
    response
}

/// The response to a refused verdict: the contract's status, JSON body and challenge.
pub fn denied(code: Code, request_id: &HeaderValue) -> Response<ProxyBody> {
    let status = code.status().unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = error(status, code.as_str(), message(code), request_id);
    let headers = response.headers_mut();
    match code {
        Code::Missing => {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ if status == StatusCode::UNAUTHORIZED => {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        Code::Stale => {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

/// The response to a request the key's limits refused: [`denied`]'s, with `Retry-After` and
/// the rate-limit headers the admission carries.
pub fn limit_denied(admission: &Admission, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut response = denied(admission.code(), request_id);
    limits::headers::apply(response.headers_mut(), admission);
    response
}

fn message(code: Code) -> &'static str {
    match code {
        Code::Valid => "valid",
        Code::Missing => {
            "no credential: send Authorization: Bearer <key or session>, X-API-Key: <key>, or the session cookie"
        }
        Code::Malformed => {
            "the credential is not a well-formed API key, or not a session token signed by a known key, or the request carries more than one credential"
        }
        Code::NotFound => "unknown API key",
        Code::Disabled => "this API key is disabled",
        Code::Expired => "this API key or session has expired",
        Code::Revoked => {
            "this session has been revoked (session, passkey or user), or its signing key retired"
        }
        Code::Stale => {
            "this gateway cannot prove its key data is current; retry on another gateway"
        }
        Code::ForbiddenOrigin => {
            "this method needs an allowed Origin when the session comes from the cookie; send the session as Authorization: Bearer instead"
        }
        Code::InsufficientPermissions => "this credential lacks a permission this route requires",
        Code::UsageExceeded => "this API key (or its identity) has no credits left",
        Code::RateLimited => "rate limit exceeded; retry after the time in Retry-After",
    }
}

/// A JSON response from any serializable value.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ProxyBody> {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            b"{\"error\":{\"code\":\"INTERNAL\"}}".to_vec(),
        ),
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body_json(response: Response<ProxyBody>) -> serde_json::Value {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("full body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("json")
    }

    #[test]
    fn request_ids_are_kept_only_when_short_and_printable() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID.clone(), HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID.clone(), HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
        headers.insert(
            REQUEST_ID.clone(),
            HeaderValue::from_str(&"a".repeat(129)).expect("ascii"),
        );
        assert_eq!(request_id(&headers).len(), 32);
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn denied_responses_follow_the_contract() {
        let id = HeaderValue::from_static("req-\"1\"");
        let response = denied(Code::NotFound, &id);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        assert_eq!(response.headers()[&REQUEST_ID], id);
        let body = body_json(response).await;
        assert_eq!(body["error"]["code"], "NOT_FOUND");
        assert_eq!(body["requestId"], "req-\"1\"");

        let missing = denied(Code::Missing, &id);
        assert_eq!(missing.headers()[WWW_AUTHENTICATE], "Bearer");
        let disabled = denied(Code::Disabled, &id);
        assert_eq!(disabled.status(), StatusCode::FORBIDDEN);
        assert!(disabled.headers().get(WWW_AUTHENTICATE).is_none());
        let stale = denied(Code::Stale, &id);
        assert_eq!(stale.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body_json(stale).await["error"]["code"], "STALE");
        let origin = denied(Code::ForbiddenOrigin, &id);
        assert_eq!(origin.status(), StatusCode::FORBIDDEN);
        assert!(origin.headers().get(WWW_AUTHENTICATE).is_none());
        assert_eq!(body_json(origin).await["error"]["code"], "FORBIDDEN_ORIGIN");
    }
}

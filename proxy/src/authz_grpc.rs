//! `--authz-grpc-listen`: Envoy's gRPC external authorization
//! (`envoy.service.auth.v3.Authorization/Check`, the `envoy.filters.http.ext_authz` filter with a
//! `grpc_service`). The decision is the HTTP endpoint's ([`authz_endpoint::decide`]); only the
//! request and answer shapes differ.
//!
//! The check names the original request: `attributes.request.http.method`, `.path` (the request
//! target with its query) and the client's headers, from `headers` (lower-case names, repeated
//! headers joined by Envoy) or, when Envoy's `encode_raw_headers` is on, `header_map`. Pseudo
//! headers (`:path`, `:authority`, ...) and headers that are not valid HTTP are ignored; a
//! credential dropped that way is a missing one (fail closed). `X-Forwarded-Uri` and
//! `X-Original-URI` are not consulted: Envoy sends the path itself.
//!
//! Allowed: `status.code = 0` and `ok_response` with
//! - `headers`: the `x-keygate-*` identity headers, with `append_action =
//!   OVERWRITE_IF_EXISTS_OR_ADD` (which is also what Envoy does for an unset `append` here);
//! - `headers_to_remove`: every other `x-keygate-*` header the client sent, and, unless the
//!   route forwards the credential, the credential headers `forward.rs` would strip (Bearer
//!   `Authorization`, the API-key header).
//!
//! A session cookie cannot be removed on its own through `headers_to_remove` (it removes the
//! whole `Cookie` header), so the `Cookie` header is rewritten instead: an `OVERWRITE` header
//! with the other cookies, or removed when the session cookie was the only one.
//!
//! Limits: the route's `permissions` and `cost` apply, plus the permissions named in the
//! check's context extension `permissions` (comma- or space-separated; set per route in Envoy
//! with `check_settings.context_extensions`). The `RateLimit-Policy`/`RateLimit` headers of a
//! key with rate limits go in `response_headers_to_add` (to the client) when allowed, with the
//! denied response's headers when refused (429 with `Retry-After`).
//!
//! Refused: `status.code` UNAUTHENTICATED (16) for a 401, PERMISSION_DENIED (7) otherwise; Envoy
//! denies on any non-OK status, and `denied_response` carries keygate's HTTP status (400, 401,
//! 403, 404, 429, 500, 503), its headers (`WWW-Authenticate`, `Retry-After`, `content-type`,
//! `x-request-id`) and the JSON body, as the HTTP endpoint answers. A refusal is never sent as
//! a gRPC error, so Envoy's `failure_mode_allow` cannot turn it into an allow.
//!
//! Checks are counted in `keygate_authz_checks_total` like the HTTP endpoint's.

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, COOKIE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either};
use keygate_proto::envoy_pb::envoy::config::core::v3 as core;
use keygate_proto::envoy_pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use keygate_proto::envoy_pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use keygate_proto::envoy_pb::envoy::service::auth::v3::check_response::HttpResponse;
use keygate_proto::envoy_pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use keygate_proto::envoy_pb::envoy::r#type::v3::HttpStatus;
use keygate_proto::envoy_pb::google::rpc::Status as RpcStatus;
use keygate_transport::ServerTls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::authz_endpoint::{self, Decision};
use crate::client_body::ClientBody;
use crate::handler::Handler;
use crate::limits;
use crate::metrics::AuthzOutcome;
use crate::response::{self, ProxyBody, codes};
use crate::server::{self, Peer, ServerLimits, Service};

/// gRPC status codes (google.rpc.Code).
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

/// Identity headers only the gateway may set.
const KEYGATE_PREFIX: &str = "x-keygate-";

/// The `Authorization` service on top of the gateway's handler.
pub(crate) struct AuthzGrpc {
    handler: Arc<Handler>,
}

#[tonic::async_trait]
impl Authorization for AuthzGrpc {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(
            self.answer(request.into_inner()).await,
        ))
    }
}

impl AuthzGrpc {
    async fn answer(&self, request: CheckRequest) -> CheckResponse {
        let attributes = request.attributes.unwrap_or_default();
        let asked = attributes
            .context_extensions
            .get("permissions")
            .map(|list| {
                keygate_proto::limits::canonical_permissions(
                    list.split([',', ' '])
                        .filter(|part| !part.is_empty())
                        .map(str::to_owned)
                        .collect(),
                )
            })
            .unwrap_or(Ok(Vec::new()));
        let http = attributes
            .request
            .and_then(|request| request.http)
            .unwrap_or_default();
        let headers = client_headers(&http);
        let request_id = response::request_id(&headers);
        let (Ok(method), Some(original)) = (
            Method::from_bytes(http.method.as_bytes()),
            origin_form(&http.path),
        ) else {
            self.handler
                .checks
                .verifier
                .authz_other(AuthzOutcome::BadRequest);
            return denied(response::error(
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                "the check must carry the request's method and origin-form path (attributes.request.http)",
                &request_id,
            ))
            .await;
        };
        let Ok(permissions) = asked else {
            self.handler
                .checks
                .verifier
                .authz_other(AuthzOutcome::BadRequest);
            return denied(response::error(
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                "the context extension `permissions` must list permissions ([A-Za-z0-9._:-], 1-64 characters each) separated by commas or spaces",
                &request_id,
            ))
            .await;
        };
        let routes = self.handler.routes.load();
        let decision = authz_endpoint::decide(
            &self.handler.checks,
            &routes,
            &method,
            original,
            &headers,
            &permissions,
            &request_id,
        )
        .await;
        if decision.response.status() == StatusCode::OK {
            self.allowed(&headers, &decision)
        } else {
            denied(decision.response).await
        }
    }

    fn allowed(&self, client: &HeaderMap, decision: &Decision) -> CheckResponse {
        let identity = decision.response.headers();
        let mut headers: Vec<core::HeaderValueOption> = identity
            .iter()
            .filter(|(name, _)| name.as_str().starts_with(KEYGATE_PREFIX))
            .map(|(name, value)| overwrite(name, value.as_bytes()))
            .collect();
        let mut headers_to_remove: Vec<String> = client
            .keys()
            .filter(|name| {
                name.as_str().starts_with(KEYGATE_PREFIX) && !identity.contains_key(*name)
            })
            .map(|name| name.as_str().to_owned())
            .collect();
        if decision.strip_credential {
            let mut stripped = client.clone();
            self.handler.checks.credentials.strip(&mut stripped);
            for name in client.keys() {
                if !stripped.contains_key(name) {
                    headers_to_remove.push(name.as_str().to_owned());
                } else if !client
                    .get_all(name)
                    .iter()
                    .eq(stripped.get_all(name).iter())
                {
                    headers.push(overwrite(name, &joined(name, &stripped)));
                }
            }
        }
        let response_headers_to_add = [
            &limits::headers::RATELIMIT_POLICY,
            &limits::headers::RATELIMIT,
        ]
        .into_iter()
        .filter_map(|name| {
            identity
                .get(name)
                .map(|value| overwrite(name, value.as_bytes()))
        })
        .collect();
        CheckResponse {
            status: Some(RpcStatus {
                code: OK,
                message: String::new(),
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove,
                response_headers_to_add,
            })),
        }
    }
}

/// The client's headers from the check: `headers`, then `header_map`.
fn client_headers(http: &HttpRequest) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut add = |name: &[u8], value: &[u8]| {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    };
    for (name, value) in &http.headers {
        add(name.as_bytes(), value.as_bytes());
    }
    if let Some(map) = &http.header_map {
        for header in &map.headers {
            let value = if header.raw_value.is_empty() {
                header.value.as_bytes()
            } else {
                &header.raw_value
            };
            add(header.key.as_bytes(), value);
        }
    }
    headers
}

/// `path` as an origin-form request target (`/path?query`), if it is one.
fn origin_form(path: &str) -> Option<Uri> {
    if !path.starts_with('/') {
        return None;
    }
    Uri::try_from(path).ok()
}

/// `name`'s values in `headers` as one field value: `; `-joined for `Cookie`, else `, `.
fn joined(name: &HeaderName, headers: &HeaderMap) -> Vec<u8> {
    let separator: &[u8] = if name == COOKIE { b"; " } else { b", " };
    let mut value = Vec::new();
    for (index, part) in headers.get_all(name).iter().enumerate() {
        if index > 0 {
            value.extend_from_slice(separator);
        }
        value.extend_from_slice(part.as_bytes());
    }
    value
}

/// A header Envoy sets, replacing any value the request has.
fn overwrite(name: &HeaderName, value: &[u8]) -> core::HeaderValueOption {
    let header = match std::str::from_utf8(value) {
        Ok(text) => core::HeaderValue {
            key: name.as_str().to_owned(),
            value: text.to_owned(),
            raw_value: Vec::new(),
        },
        Err(_) => core::HeaderValue {
            key: name.as_str().to_owned(),
            value: String::new(),
            raw_value: value.to_vec(),
        },
    };
    core::HeaderValueOption {
        header: Some(header),
        append_action: core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
    }
}

/// A refusal as Envoy's denied response: keygate's status, headers and JSON body.
async fn denied(response: Response<ProxyBody>) -> CheckResponse {
    let (parts, body) = response.into_parts();
    let body = match body {
        Either::Right(full) => {
            let Ok(collected) = full.collect().await;
            String::from_utf8_lossy(&collected.to_bytes()).into_owned()
        }
        // Refusals are always written by the gateway; an upstream body never reaches here.
        Either::Left(_) => String::new(),
    };
    let code = if parts.status == StatusCode::UNAUTHORIZED {
        UNAUTHENTICATED
    } else {
        PERMISSION_DENIED
    };
    CheckResponse {
        status: Some(RpcStatus {
            code,
            message: parts
                .status
                .canonical_reason()
                .unwrap_or_default()
                .to_owned(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(parts.status.as_u16()),
            }),
            headers: parts
                .headers
                .iter()
                .filter(|(name, _)| *name != CONTENT_LENGTH)
                .map(|(name, value)| overwrite(name, value.as_bytes()))
                .collect(),
            body,
        })),
    }
}

/// The `Authorization` server as a service of the gateway's own listener code, so the gRPC
/// listener's connections are bounded exactly like the main listener's: the connection cap,
/// the TLS handshake and the first request within `header_read_timeout` (a peer that connects
/// and never sends the HTTP/2 preface, or never a request, is cut then), idle connections
/// closed after `idle_timeout`, HTTP/2 stream, header-list, keepalive and reset limits, and the
/// shutdown drain. Only HTTP/2 is spoken.
struct GrpcChecks(AuthorizationServer<AuthzGrpc>);

impl Service for GrpcChecks {
    type Body = tonic::body::Body;
    const HTTP2_ONLY: bool = true;

    async fn call(&self, request: Request<ClientBody>, _peer: &Peer) -> Response<Self::Body> {
        // The generated server is always ready (`poll_ready` is `Ready(Ok)`), and a clone
        // shares the one `AuthzGrpc`.
        let mut server = self.0.clone();
        match tonic::codegen::Service::call(&mut server, request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Serves the `Authorization` service on `listener` until `shutdown`, then drains for up to
/// `limits.shutdown_grace`, like the main listener (see [`GrpcChecks`]).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    handler: Arc<Handler>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let service = Arc::new(GrpcChecks(AuthorizationServer::new(AuthzGrpc { handler })));
    server::serve("authz-grpc", listener, tls, service, limits, shutdown).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn headers_come_from_the_map_and_the_raw_header_map_without_pseudo_headers() {
        let http = HttpRequest {
            headers: [
                (":path", "/api"),
                (":authority", "api.example"),
                ("x-api-key", "k1"),
                ("bad name", "x"),
                ("x-control", "a\u{1}b"),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
            header_map: Some(core::HeaderMap {
                headers: vec![
                    core::HeaderValue {
                        key: "cookie".into(),
                        value: String::new(),
                        raw_value: b"a=1".to_vec(),
                    },
                    core::HeaderValue {
                        key: "cookie".into(),
                        value: "b=2".into(),
                        raw_value: Vec::new(),
                    },
                ],
            }),
            ..HttpRequest::default()
        };
        let headers = client_headers(&http);
        assert_eq!(headers.len(), 3, "{headers:?}");
        assert_eq!(headers["x-api-key"], "k1");
        let cookies: Vec<_> = headers.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(joined(&COOKIE, &headers), b"a=1; b=2");
    }

    #[test]
    fn only_an_origin_form_path_is_a_target() {
        assert_eq!(origin_form("/api?x=1").unwrap(), "/api?x=1");
        for path in ["", "api", "http://elsewhere/api", "*", "/a b"] {
            assert!(origin_form(path).is_none(), "{path:?}");
        }
    }

    #[test]
    fn a_header_that_is_not_utf8_is_sent_as_raw_bytes() {
        let name = HeaderName::from_static("x-keygate-owner");
        let text = overwrite(&name, b"alice").header.unwrap();
        assert_eq!((text.value.as_str(), text.raw_value.len()), ("alice", 0));
        let raw = overwrite(&name, b"\xffo").header.unwrap();
        assert_eq!((raw.value.as_str(), raw.raw_value), ("", b"\xffo".to_vec()));
    }
}

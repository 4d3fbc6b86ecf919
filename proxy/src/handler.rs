//! The main listener's request pipeline: request id, path normalisation, route, CSRF check
//! for cookie sessions, verdict, the key's limits (permissions, credits, rate limits; see
//! [`crate::limits`]), then forward or refuse. `POST /_keygate/v1/verify` and the
//! external-authorization checks (`/_keygate/v1/authz`) are answered here and never forwarded.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};

use crate::authz_endpoint;
use crate::checks::{Checks, needs_limits};
use crate::client_body::ClientBody;
use crate::credential::Carrier;
use crate::forward::{Forwarder, Forwarding};
use crate::limits::{self, Admission};
use crate::response::{self, ProxyBody, codes};
use crate::route::RouteTable;
use crate::server::Peer;
use crate::spans::RequestSpans;
use crate::trace_context;
use crate::verify::{Code, Verdict};
use crate::verify_endpoint;

/// Where the gateway's own endpoints live on the main listener.
const RESERVED_PREFIX: &str = "/_keygate/";

/// Everything a request needs, shared by all connections.
pub(crate) struct Handler {
    /// The current routes; a reload swaps in a new table (see [`crate::reload`]). A request
    /// loads it once and keeps that table until it is answered.
    pub routes: Arc<ArcSwap<RouteTable>>,
    /// The verdict and the limits step, which the gateway's own endpoints share.
    pub checks: Checks,
    pub forwarder: Forwarder,
    /// Longest wait for a request body the gateway reads itself (the verify endpoint's).
    pub request_body_timeout: std::time::Duration,
    /// Whether requests get spans for export (`ProxyConfig::spans`, `spans.rs`).
    pub spans: bool,
}

impl Handler {
    /// Answers one request from `peer`, recording what `spans` records: nothing
    /// ([`spans::Untraced`], whose calls compile to the plain code) or the `verify` and
    /// `forward` spans of a request span ([`spans::Traced`]).
    pub async fn handle<S: RequestSpans>(
        &self,
        mut request: Request<ClientBody>,
        peer: &Peer,
        spans: &S,
    ) -> Response<ProxyBody> {
        let request_id = response::request_id(request.headers());
        let routes = self.routes.load();
        // From here on the request carries its normalised path: the route is chosen by it and
        // the upstream receives it, so what was authorised is what is served.
        match routes.normalize(request.uri()) {
            Ok(None) => {}
            // A check's original path is its own: dot segments in it must not climb out of the
            // authz endpoint's path (`/_keygate/v1/authz/x/../../admin` is a check of
            // `/admin`), so a check is recognised before its path is normalised. An
            // already-normal path, the common case, takes the test below instead.
            Ok(Some(_)) if authz_endpoint::serves(request.uri().path()) => {
                return authz_endpoint::answer(&self.checks, &routes, request, &request_id).await;
            }
            Ok(Some(normalised)) => *request.uri_mut() = normalised,
            Err(error) => {
                return response::error(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_PATH,
                    error.message(),
                    &request_id,
                );
            }
        }
        // One prefix test keeps the gateway's own endpoints off the path of proxied requests.
        let path = request.uri().path();
        if path.starts_with(RESERVED_PREFIX) {
            if path == verify_endpoint::PATH {
                return verify_endpoint::answer(
                    &self.checks,
                    self.request_body_timeout,
                    request,
                    &request_id,
                )
                .await;
            }
            if authz_endpoint::serves(path) {
                return authz_endpoint::answer(&self.checks, &routes, request, &request_id).await;
            }
        }
        let Some(route) = routes.find(request.uri().path()) else {
            return response::error(
                StatusCode::NOT_FOUND,
                codes::NO_ROUTE,
                "no route for this path",
                &request_id,
            );
        };
        // A valid credential, with the instant it was verified at: one clock read serves the
        // verdict and the limits step (`now` means nothing without a grant).
        let (grant, now) = if route.auth.verifies() {
            let (credential, carrier) = self.checks.credentials.find(request.headers(), route.auth);
            // CSRF: a browser attaches the cookie to any site's form post; a Bearer token or
            // an API key it attaches only when the page's own code says so.
            if carrier == Carrier::Cookie
                && !route.accepts_cookie_session(request.method(), request.headers())
            {
                self.checks.verifier.refused(Code::ForbiddenOrigin);
                return response::denied(Code::ForbiddenOrigin, &request_id);
            }
            let now = keygate_proto::time::now_unix_ms();
            // Spans off, the verification is awaited in place: wrapping it, even in a call
            // that hands it back, moved the whole future (BENCHMARKS.md).
            let verdict = if S::TRACED {
                spans
                    .verify(self.checks.verifier.verify_at(credential, now))
                    .await
            } else {
                self.checks.verifier.verify_at(credential, now).await
            };
            match verdict {
                Verdict::Valid(grant) => (Some(grant), now),
                Verdict::Denied(code) => return response::denied(code, &request_id),
            }
        } else {
            (None, 0)
        };
        // A plain key on a route that requires no permissions skips this: one branch.
        let mut admitted = None;
        if let Some(grant) = &grant
            && needs_limits(grant, route)
        {
            match self.checks.admit(grant, route, now).await {
                Admission::Allowed(None) => {}
                allowed @ Admission::Allowed(Some(_)) => admitted = Some(allowed),
                denied @ Admission::Denied { .. } => {
                    return response::limit_denied(&denied, &request_id);
                }
            }
        }
        if !S::TRACED {
            let forwarding = Forwarding {
                route,
                peer,
                request_id,
                grant: grant.as_ref(),
            };
            let mut response = self.forwarder.forward(request, forwarding).await;
            if let Some(admitted) = &admitted {
                limits::headers::apply(response.headers_mut(), admitted);
            }
            return response;
        }
        // The upstream's `traceparent` names the forward span (the forwarder itself leaves
        // trace context alone when spans are on; see `gateway.rs`).
        let forward_span = spans.forward_span(route.upstream.as_str());
        match S::hop(&forward_span) {
            Some(hop) => trace_context::forward_as(request.headers_mut(), hop),
            None => trace_context::propagate(request.headers_mut(), &request_id),
        }
        let forwarding = Forwarding {
            route,
            peer,
            request_id,
            grant: grant.as_ref(),
        };
        let mut response =
            S::forward(forward_span, self.forwarder.forward(request, forwarding)).await;
        if let Some(admitted) = &admitted {
            limits::headers::apply(response.headers_mut(), admitted);
        }
        response
    }
}

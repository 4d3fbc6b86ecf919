//! The main listener's request pipeline: request id, route, verdict, then forward or refuse.
//! `POST /_keygate/v1/verify` is answered here and never forwarded.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::credential::CredentialHeaders;
use crate::forward::{Forwarder, Forwarding};
use crate::response::{self, ProxyBody, codes};
use crate::route::RouteTable;
use crate::server::Peer;
use crate::verify::{Verdict, Verifier};
use crate::verify_endpoint;

/// Everything a request needs, shared by all connections.
pub(crate) struct Handler {
    pub routes: RouteTable,
    pub verifier: Verifier,
    pub forwarder: Forwarder,
    pub credentials: CredentialHeaders,
}

impl Handler {
    /// Answers one request from `peer`.
    pub async fn handle(&self, request: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        let request_id = response::request_id(request.headers());
        if request.uri().path() == verify_endpoint::PATH {
            return verify_endpoint::answer(self, request, &request_id).await;
        }
        let Some(route) = self.routes.find(request.uri().path()) else {
            return response::error(
                StatusCode::NOT_FOUND,
                codes::NO_ROUTE,
                "no route for this path",
                &request_id,
            );
        };
        let grant = if route.auth.verifies() {
            let credential = self.credentials.extract(request.headers(), route.auth);
            match self.verifier.verify(credential).await {
                Verdict::Valid(grant) => Some(grant),
                Verdict::Denied(code) => return response::denied(code, &request_id),
            }
        } else {
            None
        };
        let forwarding = Forwarding {
            route,
            peer,
            request_id: &request_id,
            grant: grant.as_ref(),
        };
        self.forwarder.forward(request, forwarding).await
    }
}

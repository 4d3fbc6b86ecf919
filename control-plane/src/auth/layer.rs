//! [`Authenticated`]: the wrapper around each tonic service (Admin, Sync) that authenticates
//! every call before the service sees it. Authentication asks the store (named tokens), so it
//! is async, which tonic's interceptors cannot be; this is a tower service instead, named like
//! the service it wraps so tonic routes to it the same way. There is no other route to the
//! services: `ControlPlane::serve` adds only wrapped ones, and a refused call gets its status
//! here, without reaching the service at all.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use keygate_transport::ConnectInfo;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;

use super::{Authenticator, Service as Called};

/// A tonic service whose every call is authenticated first: an Admin call carries its
/// [`Operator`](super::Operator) in the request's extensions, a Sync call its
/// [`GatewayCredential`](super::GatewayCredential).
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
    service: Called,
}

impl<S> Authenticated<S> {
    /// The Admin service `inner`, for operators.
    pub fn admin(inner: S, authenticator: Arc<Authenticator>) -> Self {
        Self {
            inner,
            authenticator,
            service: Called::Admin,
        }
    }

    /// The Sync service `inner`, for gateways.
    pub fn sync(inner: S, authenticator: Arc<Authenticator>) -> Self {
        Self {
            inner,
            authenticator,
            service: Called::Sync,
        }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for Authenticated<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The instance polled ready serves this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = Arc::clone(&self.authenticator);
        let service = self.service;
        Box::pin(async move {
            let peer = request
                .extensions()
                .get::<ConnectInfo>()
                .and_then(|info| info.remote);
            match service {
                Called::Admin => match authenticator.operator(request.headers(), peer).await {
                    Ok(operator) => {
                        request.extensions_mut().insert(operator);
                    }
                    Err(status) => return Ok(status.into_http()),
                },
                Called::Sync => match authenticator.gateway(request.headers(), peer).await {
                    Ok(credential) => {
                        request.extensions_mut().insert(credential);
                    }
                    Err(status) => return Ok(status.into_http()),
                },
            }
            inner.call(request).await
        })
    }
}

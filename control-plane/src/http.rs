//! The HTTP listener: `GET /healthz`, `GET /metrics`, and the passkey API and page
//! (`passkey_api`).
//!
//! HTTP/1.1 only, with bounded headers, a header read timeout and a cap on open connections, so
//! that slow or hostile clients cannot exhaust the process.

mod passkey_api;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

pub use passkey_api::{ApiSettings, PasskeyApi, device_type};

/// Most connections served at once; further ones wait in the accept queue.
const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most request header lines.
const MAX_HEADERS: usize = 64;
/// Read buffer, which bounds the size of the request head.
const MAX_BUF_BYTES: usize = 64 * 1024;
/// How long in-flight requests get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the HTTP handlers need.
pub struct HttpState {
    pub store: Arc<dyn Store>,
    pub metrics: PrometheusHandle,
    pub passkeys: Arc<PasskeyApi>,
}

/// Serves HTTP on `listener` until `shutdown` is cancelled, then lets open requests finish.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, shutdown: CancellationToken) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_BUF_BYTES);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually EMFILE: keep serving the connections we have.
                    tracing::warn!(%error, "HTTP accept failed");
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let client = peer.ip();
        let service = hyper::service::service_fn(move |request| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(route(&state, request, client).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after the drain timeout; closing them");
    }
}

async fn route(
    state: &HttpState,
    request: Request<Incoming>,
    client: IpAddr,
) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => healthz(state).await,
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        (_, path) if PasskeyApi::serves(path) => state.passkeys.handle(request, client).await,
        (_, path) => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": {
                "code": "NOT_FOUND",
                "message": format!("no such endpoint: {} {}", request.method(), path.chars().take(200).collect::<String>()),
            }}),
        ),
    }
}

async fn healthz(state: &HttpState) -> Response<Full<Bytes>> {
    match state.store.log_bounds().await {
        Ok(bounds) => json_response(
            StatusCode::OK,
            &json!({ "status": "ok", "headRevision": bounds.head.0 }),
        ),
        Err(error) => {
            tracing::error!(%error, "health check cannot read the store");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({
                    "status": "unavailable",
                    "error": { "code": "STORE_UNAVAILABLE", "message": "the store cannot be read" },
                }),
            )
        }
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    text(status, "application/json", body.to_string())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

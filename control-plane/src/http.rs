//! The HTTP listener: `GET /healthz`, `GET /metrics`, and the passkey API and page
//! (`passkey_api`).
//!
//! HTTP/1.1 only (over TLS when the control plane has a certificate), with bounded headers, a
//! header read timeout and a cap on open connections (the shared accept loop's), so that slow
//! or hostile clients cannot exhaust the process.

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
use keygate_transport::{AcceptSettings, Accepted, Connections, ServerTls, accept_loop};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
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

/// Serves HTTP (HTTPS with `tls`) on `listener` until `shutdown` is cancelled, then lets
/// open requests finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_BUF_BYTES);
    let connections = Connections::new();
    let serving = connections.clone();
    let settings = AcceptSettings {
        name: "http",
        max_connections: MAX_CONNECTIONS,
        handshake_timeout: HEADER_READ_TIMEOUT,
    };
    accept_loop(listener, settings, tls, shutdown, move |accepted| {
        let Accepted {
            stream,
            remote,
            permit,
        } = accepted;
        let state = Arc::clone(&state);
        let client = remote.ip();
        let service = hyper::service::service_fn(move |request| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(route(&state, request, client).await) }
        });
        serving.spawn(
            builder.serve_connection(TokioIo::new(stream), service),
            remote,
            permit,
        );
    })
    .await;
    connections.drain("http", DRAIN_TIMEOUT).await;
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

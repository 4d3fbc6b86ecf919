//! The HTTP listener: `GET /healthz`, `GET /metrics`, and the passkey API and page
//! (`passkey_api`), routed with axum.
//!
//! Accepting is `keygate_transport`'s (the shared accept loop: connection cap, EMFILE back-off,
//! TLS handshake under a deadline); each connection is served by hyper's HTTP/1.1 builder with
//! bounded headers and a header read timeout, with the axum [`Router`] as its service and the
//! client's address put on every request ([`ClientAddr`]). Bodies are bounded in size and time
//! where they are read (`json_body`).
//!
//! axum, not hand-written matching: routes, extraction and the 405s come from a well-kept
//! crate already in the tree through tonic, and speed is not at stake on this listener.
//!
//! - `passkey_api` — the API's routes and thin handlers; `caller` — address, origin and
//!   session checks as extractors; `forwarded` — the client's address behind a trusted proxy; `json_body` — bounded JSON bodies; `cookies` — the session
//!   cookie; `api_error` — refusals as `{"error":{"code","message"}}`; `page` — the page.

mod api_error;
mod caller;
mod cookies;
mod forwarded;
mod json_body;
mod page;
mod passkey_api;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use keygate_transport::{AcceptSettings, Accepted, Connections, ServerTls, accept_loop};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

use self::api_error::ApiError;
use self::caller::ClientAddr;
pub use self::forwarded::TrustedProxies;
pub use self::passkey_api::{PasskeyApi, device_type};

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
    let router = router(state);
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
            ..
        } = accepted;
        let client = ClientAddr(remote.ip());
        let router = TowerToHyperService::new(router.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(client);
            router.call(request)
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

/// Every route of the listener.
fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/healthz", get_only(healthz))
        .route("/metrics", get_only(metrics))
        .with_state(Arc::clone(&state))
        .merge(passkey_api::router(Arc::clone(&state.passkeys)))
        .fallback(not_found)
}

/// A GET route whose other methods (HEAD included) are unknown, as for any unknown path.
fn get_only<H, T>(handler: H) -> MethodRouter<Arc<HttpState>>
where
    H: axum::handler::Handler<T, Arc<HttpState>>,
    T: 'static,
{
    get(handler).head(not_found).fallback(not_found)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if PasskeyApi::owns(path) {
        passkey_api::no_such_endpoint(&method, path)
    } else {
        ApiError::no_such_endpoint(&method, path).into_response()
    }
}

async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
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

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        state.metrics.render(),
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    text(status, "application/json", body.to_string())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::event_log::EventLog;
    use crate::passkeys::self_service::{Limits, SelfService};
    use crate::sessions::Sessions;
    use crate::store::sqlite::SqliteStore;
    use crate::webauthn::RelyingParty;

    /// The listener on 127.0.0.1:0 over a fresh store, allowing `per_address` passkey calls a
    /// minute per client.
    async fn listener(
        dir: &tempfile::TempDir,
        per_address: u32,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let store = SqliteStore::open(
            &dir.path().join("keygate.db"),
            Arc::new(EventLog::new(1024)) as _,
        )
        .await
        .unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        let relying_party = RelyingParty::new("localhost", "http://localhost:7080").unwrap();
        let sessions = Sessions::new(Arc::clone(&store), Duration::from_secs(3600));
        let limits = Limits {
            per_address: keygate_ratelimit::Rate::per_minute(per_address),
            per_user: keygate_ratelimit::Rate::per_minute(0),
            ceremonies_per_address: 0,
        };
        let rules = SelfService::new(Arc::clone(&store), relying_party, sessions, &limits);
        let state = Arc::new(HttpState {
            store,
            metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle(),
            passkeys: Arc::new(PasskeyApi::new(rules, TrustedProxies::default())),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, None, state, shutdown.clone()));
        (addr, shutdown, server)
    }

    /// Sends `request` on a new connection and reads until the server closes it.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn a_declared_body_that_never_comes_is_answered_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, shutdown, server) = listener(&dir, 0).await;
        tokio::time::pause();
        let response = exchange(
            addr,
            "POST /v1/login/begin HTTP/1.1\r\nhost: localhost\r\ncontent-length: 10\r\n\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 408 "), "{response}");
        assert!(response.contains("\"BODY_TIMEOUT\""), "{response}");
        tokio::time::resume();
        let response = exchange(
            addr,
            "GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
        shutdown.cancel();
        server.await.unwrap();
    }

    /// `METHOD PATH` with `body` on a connection of its own.
    async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
        exchange(
            addr,
            &format!(
                "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await
    }

    #[tokio::test]
    async fn routes_answer_unknown_paths_and_methods_as_before_axum() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, shutdown, server) = listener(&dir, 1).await;

        let wrong = request(addr, "GET", "/v1/login/begin", "").await;
        assert!(wrong.starts_with("HTTP/1.1 405 "), "{wrong}");
        assert!(wrong.contains("allow: POST\r\n"), "{wrong}");
        assert!(wrong.contains("cache-control: no-store\r\n"), "{wrong}");
        assert!(
            wrong.contains("\"/v1/login/begin answers POST\""),
            "{wrong}"
        );
        let head = request(addr, "HEAD", "/", "").await;
        assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
        assert!(head.contains("allow: GET\r\n"), "{head}");
        let removal = request(addr, "GET", "/v1/me/passkeys/pk_x", "").await;
        assert!(removal.contains("allow: DELETE, PATCH\r\n"), "{removal}");

        let api = request(addr, "GET", "/v1/nope", "").await;
        assert!(api.starts_with("HTTP/1.1 404 "), "{api}");
        assert!(api.contains("cache-control: no-store\r\n"), "{api}");
        assert!(api.contains("no such endpoint: GET /v1/nope"), "{api}");
        let other = request(addr, "GET", "/nope", "").await;
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
        assert!(!other.contains("cache-control"), "{other}");
        let health = request(addr, "POST", "/healthz", "").await;
        assert!(health.starts_with("HTTP/1.1 404 "), "{health}");

        // The client's address reaches the handlers: its bucket (one a minute) runs dry.
        let first = request(addr, "POST", "/v1/login/begin", "{}").await;
        assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
        let second = request(addr, "POST", "/v1/login/begin", "").await;
        assert!(second.starts_with("HTTP/1.1 429 "), "{second}");
        assert!(second.contains("retry-after: "), "{second}");
        // The page is not limited.
        let page = request(addr, "GET", "/", "").await;
        assert!(page.starts_with("HTTP/1.1 200 "), "{page}");
        assert!(page.contains("content-security-policy: "), "{page}");

        shutdown.cancel();
        server.await.unwrap();
    }
}

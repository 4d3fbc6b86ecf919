//! The admin listener: `/healthz` (the process answers), `/readyz` (synced, within the
//! propagation bound, not draining) and `/metrics` (Prometheus text).

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::client_body::ClientBody;
use crate::metrics::Metrics;
use crate::response::{self, ProxyBody};
use crate::server::{Peer, Service};
use crate::status::GatewayStatus;

/// Serves the admin endpoints.
pub(crate) struct Admin {
    pub status: GatewayStatus,
    pub prometheus: PrometheusHandle,
    pub metrics: Metrics,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Readiness {
    ready: bool,
    applied_revision: u64,
    staleness_ms: Option<u64>,
    connected: bool,
    /// The control plane the sync stream is open to (which one, after a failover).
    control_plane: Option<String>,
    /// The log the replica's revisions belong to; `None` until known.
    log_id: Option<String>,
    snapshots_applied: u64,
    draining: bool,
}

impl Admin {
    fn answer(&self, path: &str) -> Response<ProxyBody> {
        match path {
            "/healthz" => response::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            "/readyz" => {
                let ready = self.status.is_ready();
                let readiness = Readiness {
                    ready,
                    applied_revision: self.status.applied_revision(),
                    staleness_ms: self
                        .status
                        .staleness()
                        .map(|staleness| u64::try_from(staleness.as_millis()).unwrap_or(u64::MAX)),
                    connected: self.status.connected(),
                    control_plane: self.status.control_plane(),
                    log_id: Some(self.status.log_id()).filter(|id| !id.is_empty()),
                    snapshots_applied: self.status.snapshots_applied(),
                    draining: self.status.draining(),
                };
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                response::json(status, &readiness)
            }
            "/metrics" => {
                self.refresh_gauges();
                let mut response = Response::new(Either::Right(Full::new(Bytes::from(
                    self.prometheus.render(),
                ))));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            _ => response::json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": {"code": "NOT_FOUND", "message": "try /healthz, /readyz or /metrics"}}),
            ),
        }
    }

    /// Gauges that are cheaper to read at scrape time than to keep current per change.
    fn refresh_gauges(&self) {
        self.metrics
            .replica_keys
            .set(self.status.replica_len() as f64);
        self.metrics
            .replica_revision
            .set(self.status.applied_revision() as f64);
        self.metrics
            .sync_connected
            .set(if self.status.connected() { 1.0 } else { 0.0 });
        self.metrics
            .staleness
            .set(self.status.staleness_or_uptime().as_secs_f64());
        self.metrics
            .propagation_bound
            .set(self.status.propagation_bound().as_secs_f64());
        self.metrics.set_session_state(self.status.session_state());
    }
}

impl Service for Admin {
    type Body = ProxyBody;

    async fn call(&self, request: Request<ClientBody>, _peer: &Peer) -> Response<ProxyBody> {
        self.answer(request.uri().path())
    }
}

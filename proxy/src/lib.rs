//! keygate-proxy: the gateway. It extracts the credential of each request, verifies it in
//! memory against a hashed-key replica that the control plane keeps current over a gRPC
//! stream, and forwards valid requests to the route's upstream (DESIGN.md, "Verification at
//! the gateway" and "Sync").
//!
//! Map of the crate: [`config`] (settings and validation), [`credential`] (where keys are
//! found), [`replica`] (the key set), [`owners`] (owner names, interned), [`verdict`] (the
//! verdict vocabulary, a leaf), [`verify`] (verdicts; the hot path), [`miss`] (lookups of
//! keys not replicated yet), `deleted` (keys seen deleted: refused without a lookup),
//! [`sessions`] (signing keys and revocation sets) and
//! [`session_verify`] (session verdicts, the signature cache), [`freshness`] (the staleness
//! bound), `sync` (the replication stream), [`path`] (request paths made canonical before
//! routing), `route`/`forward` (upstreams), [`reload`] (routes swapped on SIGHUP),
//! `server`/`handler`/`verify_endpoint`/`admin` (HTTP), `authz_endpoint` (external
//! authorization for nginx, Traefik and Envoy's HTTP filter) and `authz_grpc` (Envoy's gRPC
//! `Check`, the same decision), [`trace_context`] (W3C `traceparent`), [`spans`] (OpenTelemetry spans for export),
//! [`limits`] (per-key permissions, rate limits and credits), [`metrics`], `response`
//! (JSON errors), `workers` (which serving thread the caller is on) and `gateway` (wiring,
//! bind and serve).
//!
//! **Invariant:** the hot path ([`Verifier::verify_cached`], [`Verifier::verify_session`])
//! takes no lock a writer can hold for longer than one map operation, and never logs or stores
//! a plaintext key or session token.
//!
//! **Invariant:** a session verdict is never cached: the signature cache holds verified claims
//! only, and the revocation sets are consulted on every request.
//!
//! **Invariant:** the upstream receives the path that was authorised: the route is chosen by
//! the normalised path ([`path`]), and that path, not the client's, is what is forwarded.

#![forbid(unsafe_code)]

mod admin;
mod authz_endpoint;
mod authz_grpc;
mod checks;
mod client_body;
pub mod config;
pub mod credential;
mod deleted;
mod error;
mod fields;
mod forward;
pub mod freshness;
mod gateway;
mod h1;
mod handler;
mod http_date;
mod idle_body;
mod lean;
pub mod limits;
pub mod metrics;
pub mod miss;
pub mod owners;
pub mod path;
pub mod reload;
pub mod replica;
mod response;
pub mod route;
mod server;
pub mod session_verify;
pub mod sessions;
pub mod spans;
mod status;
mod sync;
pub mod trace_context;
mod upstream;
pub mod verdict;
pub mod verify;
mod verify_endpoint;
mod workers;

pub use config::{AuthMode, EscapedSlashes, ProxyConfig, RouteConfig, Secret, StalePolicy};
pub use error::{ConfigError, ProxyError};
pub use gateway::Gateway;
pub use replica::{Replica, Snapshot};
pub use session_verify::{SessionGrant, SessionVerifier};
pub use sessions::{SessionSnapshot, SessionState, SessionStateSizes};
pub use status::GatewayStatus;
pub use verify::{Code, Grant, KeyGrant, Lookup, Verdict, Verifier};
pub use verify_endpoint::PATH as VERIFY_PATH;

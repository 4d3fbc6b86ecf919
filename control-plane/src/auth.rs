//! Who may call the gRPC services, and what they may do.
//!
//! - Authentication ([`Authenticator`]): a bearer token names an [`Operator`] (Admin service)
//!   or a [`GatewayCredential`] (Sync service). It runs before any method, in the layer that
//!   wraps each service (`layer`), and puts what it found into the request's extensions; a
//!   call it refuses never reaches the service.
//! - Authorization: every Admin method starts with [`require`] naming the [`Scope`] it needs;
//!   a call outside the operator's scopes is PERMISSION_DENIED, naming the missing scope.
//! - The audit actor is the operator's name, never something the caller claims.
//!
//! The tokens: the bootstrap `--admin-token` is the operator [`ROOT_NAME`] with scope `admin`;
//! the shared `--gateway-token` lets any gateway id sync; a named token (`keygate tokens
//! create`) is looked up by its blake3 hash in the store on every call, so a revoked one fails
//! at once on every control-plane replica. An operator token (scopes) calls Admin only; a
//! gateway token (bound to one gateway id) calls Sync only. The two bootstrap tokens are
//! compared as blake3 digests in constant time, so neither the content nor the length of the
//! expected token leaks through timing; a named token is found by the hash of what was
//! presented, which tells an attacker nothing about any stored token's hash.
//!
//! Failed authentications are counted (`keygate_auth_failures_total{service, reason}`),
//! logged with the peer's address and the reason (never the token), and limited per address
//! (`failures`).

mod failures;
pub mod layer;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use keygate_ratelimit::{Rate, client_bucket};
use subtle::ConstantTimeEq;
use tonic::codegen::http::HeaderMap;
use tonic::{Request, Status};

pub use self::failures::{FAILURES_PER_MINUTE, FailureLimit};
use crate::metrics;
use crate::store::{OperatorTokenRecord, Store, StoreError};

/// What an operator token may do (DESIGN.md, "Operator access"). `admin` allows everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Get and list keys.
    KeysRead,
    /// Create, enable, disable, delete and reroll keys; revoke an owner.
    KeysWrite,
    /// Create keys, and nothing else: a CI job's scope.
    KeysCreate,
    /// Disable keys, and nothing else: the on-call token's scope.
    KeysDisable,
    /// List passkeys and enrollment links.
    PasskeysRead,
    /// Create and revoke enrollment links, revoke passkeys and sessions.
    PasskeysWrite,
    /// Create, disable and enable users.
    UsersWrite,
    /// List gateways.
    GatewaysRead,
    /// Read the audit log.
    AuditRead,
    /// Everything, including operator tokens and signing keys.
    Admin,
}

impl Scope {
    /// Every scope, in the order `keygate tokens` prints them.
    pub const ALL: [Scope; 10] = [
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::KeysCreate,
        Scope::KeysDisable,
        Scope::PasskeysRead,
        Scope::PasskeysWrite,
        Scope::UsersWrite,
        Scope::GatewaysRead,
        Scope::AuditRead,
        Scope::Admin,
    ];

    /// The scope's name, e.g. `keys:write`.
    pub fn name(self) -> &'static str {
        match self {
            Scope::KeysRead => "keys:read",
            Scope::KeysWrite => "keys:write",
            Scope::KeysCreate => "keys:create",
            Scope::KeysDisable => "keys:disable",
            Scope::PasskeysRead => "passkeys:read",
            Scope::PasskeysWrite => "passkeys:write",
            Scope::UsersWrite => "users:write",
            Scope::GatewaysRead => "gateways:read",
            Scope::AuditRead => "audit:read",
            Scope::Admin => "admin",
        }
    }

    /// The scope named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == name)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of the bootstrap `--admin-token` (scope `admin`), as the audit log shows it.
pub const ROOT_NAME: &str = "admin";

/// The caller of an Admin method, authenticated by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// The token's name: the audit actor.
    pub name: String,
    scopes: Vec<Scope>,
}

impl Operator {
    /// An operator named `name` holding `scopes`.
    pub fn new(name: impl Into<String>, scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut scopes: Vec<Scope> = scopes.into_iter().collect();
        scopes.sort_unstable();
        scopes.dedup();
        Self {
            name: name.into(),
            scopes,
        }
    }

    /// The bootstrap `--admin-token`.
    pub fn root() -> Self {
        Self::new(ROOT_NAME, [Scope::Admin])
    }

    /// Whether the operator may act within `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }
}

/// The operator of `request`, if it holds `scope`; else PERMISSION_DENIED naming the scope.
/// Every Admin method begins with this (or [`require_any`]).
pub fn require<T>(request: &Request<T>, scope: Scope) -> Result<Operator, Status> {
    require_any(request, &[scope])
}

/// The operator of `request`, if it holds any of `scopes` (the first is the one a refusal
/// names, followed by the others).
pub fn require_any<T>(request: &Request<T>, scopes: &[Scope]) -> Result<Operator, Status> {
    // The authenticator put it there; a request without one never passed it (fail closed).
    let Some(operator) = request.extensions().get::<Operator>() else {
        return Err(Status::unauthenticated("missing bearer token"));
    };
    if scopes.iter().any(|scope| operator.allows(*scope)) {
        return Ok(operator.clone());
    }
    let needed = match scopes {
        [one] => format!("scope {one}"),
        _ => format!(
            "one of the scopes {}",
            scopes
                .iter()
                .map(|scope| scope.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(Status::permission_denied(format!(
        "token {:?} lacks {needed}",
        operator.name
    )))
}

/// Which service a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Admin,
    Sync,
}

impl Service {
    /// The `service` label of the metrics.
    fn label(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Sync => "sync",
        }
    }
}

/// The credential a Sync call authenticated with; in the extensions of every Sync request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayCredential {
    /// The shared `--gateway-token`: any gateway id.
    Shared,
    /// A named gateway token: only its gateway id.
    Token(GatewayToken),
}

/// A named gateway token, as authentication found it. `Debug` leaves the hash out.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayToken {
    pub name: String,
    /// The only gateway id that may use it.
    pub gateway_id: String,
    /// What it is stored under: a stream re-checks that the token still exists by it.
    pub token_hash: [u8; 32],
}

impl fmt::Debug for GatewayToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayToken")
            .field("name", &self.name)
            .field("gateway_id", &self.gateway_id)
            .finish_non_exhaustive()
    }
}

/// Why a call did not authenticate: the `reason` label of `keygate_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No `authorization: Bearer …`.
    Missing,
    /// A token that is no one's (unknown, or revoked).
    Invalid,
    /// A valid token for the other service: a gateway token on Admin, an operator token on
    /// Sync.
    WrongService,
}

impl Failure {
    fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::WrongService => "wrong_service",
        }
    }

    fn status(self, service: Service) -> Status {
        Status::unauthenticated(match (self, service) {
            (Self::Missing, _) => "missing bearer token",
            (Self::Invalid, Service::Admin) => "invalid operator token (unknown or revoked)",
            (Self::Invalid, Service::Sync) => "invalid gateway token (unknown or revoked)",
            (Self::WrongService, Service::Admin) => {
                "this is a gateway token: the Admin service takes an operator token"
            }
            (Self::WrongService, Service::Sync) => {
                "this is an operator token: the Sync service takes a gateway token"
            }
        })
    }
}

/// What a token turned out to be.
enum Identity {
    Operator(Operator),
    Gateway(GatewayCredential),
}

/// Why identifying a token did not work.
enum Unidentified {
    Failed(Failure),
    /// The store could not be asked: the call is refused, but it is not the caller's failure.
    Store(StoreError),
}

/// Authenticates every gRPC call; shared by the layers of both services.
pub struct Authenticator {
    admin_token: [u8; 32],
    gateway_token: [u8; 32],
    store: Arc<dyn Store>,
    failures: FailureLimit,
}

impl Authenticator {
    /// Checks tokens against the bootstrap `admin_token` and `gateway_token` and the named
    /// tokens in `store`, allowing [`FAILURES_PER_MINUTE`] failures per address.
    pub fn new(admin_token: &str, gateway_token: &str, store: Arc<dyn Store>) -> Self {
        Self::with_failure_limit(
            admin_token,
            gateway_token,
            store,
            FailureLimit::new(Rate::per_minute(FAILURES_PER_MINUTE)),
        )
    }

    /// Like [`Authenticator::new`], with another limit on failures.
    pub fn with_failure_limit(
        admin_token: &str,
        gateway_token: &str,
        store: Arc<dyn Store>,
        failures: FailureLimit,
    ) -> Self {
        Self {
            admin_token: digest(admin_token),
            gateway_token: digest(gateway_token),
            store,
            failures,
        }
    }

    /// The operator an Admin call comes from.
    pub async fn operator(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Operator, Status> {
        match self.authenticate(Service::Admin, headers, peer).await? {
            Identity::Operator(operator) => {
                tracing::debug!(operator = %operator.name, scopes = ?operator.scopes(), peer = ?peer, "operator authenticated");
                Ok(operator)
            }
            Identity::Gateway(_) => Err(Status::internal("authenticated as the wrong service")),
        }
    }

    /// The credential a Sync call comes with.
    pub async fn gateway(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<GatewayCredential, Status> {
        match self.authenticate(Service::Sync, headers, peer).await? {
            Identity::Gateway(credential) => Ok(credential),
            Identity::Operator(_) => Err(Status::internal("authenticated as the wrong service")),
        }
    }

    async fn authenticate(
        &self,
        service: Service,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Identity, Status> {
        // A connection always has a peer; should one not, it shares one bucket (fail closed).
        let bucket = client_bucket(peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip()));
        if let Err(wait) = self.failures.admits(bucket) {
            metrics::auth_throttled(service.label());
            tracing::debug!(peer = ?peer, service = service.label(), "call refused: too many failed authentications from this address");
            return Err(throttled(wait));
        }
        let failure = match self.identify(service, headers).await {
            Ok(identity) => return Ok(identity),
            Err(Unidentified::Store(error)) => {
                tracing::error!(%error, service = service.label(), "cannot authenticate: the store cannot be read");
                return Err(Status::unavailable(
                    "cannot check the token: the control plane cannot read its store; try again",
                ));
            }
            Err(Unidentified::Failed(failure)) => failure,
        };
        metrics::auth_failure(service.label(), failure.reason());
        match self.failures.failed(bucket) {
            Ok(()) => {
                tracing::warn!(peer = ?peer, service = service.label(), reason = failure.reason(), "authentication failed");
                Err(failure.status(service))
            }
            Err(wait) => {
                tracing::warn!(
                    peer = ?peer,
                    service = service.label(),
                    reason = failure.reason(),
                    retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    "authentication failed, and this address is over its limit of failures: \
                     refusing all its calls for a while"
                );
                Err(throttled(wait))
            }
        }
    }

    async fn identify(
        &self,
        service: Service,
        headers: &HeaderMap,
    ) -> Result<Identity, Unidentified> {
        let token = bearer_token(headers).ok_or(Unidentified::Failed(Failure::Missing))?;
        let presented = digest(token);
        // Both comparisons, always: which one matched must not show in the time taken.
        let admin = bool::from(presented.ct_eq(&self.admin_token));
        let gateway = bool::from(presented.ct_eq(&self.gateway_token));
        match (service, admin, gateway) {
            (Service::Admin, true, _) => return Ok(Identity::Operator(Operator::root())),
            (Service::Sync, _, true) => return Ok(Identity::Gateway(GatewayCredential::Shared)),
            (_, true, _) | (_, _, true) => {
                return Err(Unidentified::Failed(Failure::WrongService));
            }
            _ => {}
        }
        let record = self
            .store
            .token_by_hash(presented)
            .await
            .map_err(Unidentified::Store)?
            .ok_or(Unidentified::Failed(Failure::Invalid))?;
        match (service, record.gateway_id.clone()) {
            (Service::Admin, None) => Ok(Identity::Operator(operator_of(record))),
            (Service::Sync, Some(gateway_id)) => {
                Ok(Identity::Gateway(GatewayCredential::Token(GatewayToken {
                    name: record.name,
                    gateway_id,
                    token_hash: record.token_hash,
                })))
            }
            _ => Err(Unidentified::Failed(Failure::WrongService)),
        }
    }
}

/// The operator of a named operator token. A scope name this version does not know (written
/// by a newer one) grants nothing.
fn operator_of(record: OperatorTokenRecord) -> Operator {
    let scopes = record.scopes.iter().filter_map(|name| {
        let scope = Scope::parse(name);
        if scope.is_none() {
            tracing::warn!(token = %record.name, scope = %name, "ignoring an unknown scope of a stored token");
        }
        scope
    });
    Operator::new(record.name.clone(), scopes.collect::<Vec<_>>())
}

fn throttled(wait: Duration) -> Status {
    let seconds = wait.as_millis().div_ceil(1000).max(1);
    Status::resource_exhausted(format!(
        "too many failed authentications from this address; retry in {seconds}s"
    ))
}

fn digest(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// The token of `authorization: Bearer <token>` (scheme case-insensitive), if present.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewToken, TokenStore};

    const ADMIN: &str = "admin-token-0123456789";
    const GATEWAY: &str = "gateway-token-0123456789";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().unwrap());
        }
        map
    }

    fn bearer(token: &str) -> HeaderMap {
        headers(&[("authorization", &format!("Bearer {token}"))])
    }

    async fn authenticator(dir: &tempfile::TempDir) -> Authenticator {
        let store = SqliteStore::open(
            &dir.path().join("db"),
            Arc::new(crate::store::suite::Recorder::default()),
        )
        .await
        .unwrap();
        for (name, hash, scopes, gateway_id) in [
            (
                "ci",
                digest("kgo_ci"),
                vec!["keys:create".to_owned(), "from:the-future".to_owned()],
                None,
            ),
            (
                "edge-1",
                digest("kgo_edge"),
                Vec::new(),
                Some("edge-1".to_owned()),
            ),
        ] {
            let token = NewToken {
                name: name.into(),
                token_hash: hash,
                scopes,
                gateway_id,
            };
            store.create_token(token, "admin").await.unwrap();
        }
        Authenticator::new(ADMIN, GATEWAY, Arc::new(store))
    }

    #[tokio::test]
    async fn each_token_authenticates_for_its_own_service_only() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(&dir).await;
        let peer = Some(SocketAddr::from(([192, 0, 2, 1], 5000)));

        assert_eq!(
            auth.operator(&bearer(ADMIN), peer).await.unwrap(),
            Operator::root()
        );
        let lowercase = headers(&[("authorization", &format!("bearer {ADMIN}"))]);
        assert_eq!(
            auth.operator(&lowercase, peer).await.unwrap(),
            Operator::root()
        );
        let ci = auth.operator(&bearer("kgo_ci"), peer).await.unwrap();
        assert_eq!(ci.name, "ci");
        assert_eq!(
            ci.scopes(),
            [Scope::KeysCreate],
            "an unknown stored scope grants nothing"
        );

        assert_eq!(
            auth.gateway(&bearer(GATEWAY), peer).await.unwrap(),
            GatewayCredential::Shared
        );
        let GatewayCredential::Token(edge) = auth.gateway(&bearer("kgo_edge"), peer).await.unwrap()
        else {
            panic!("a named gateway token");
        };
        assert_eq!(
            (edge.name.as_str(), edge.gateway_id.as_str()),
            ("edge-1", "edge-1")
        );

        for (token, message) in [
            (GATEWAY, "this is a gateway token"),
            ("kgo_edge", "this is a gateway token"),
        ] {
            let status = auth.operator(&bearer(token), peer).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(
                status.message().starts_with(message),
                "{}",
                status.message()
            );
        }
        for token in [ADMIN, "kgo_ci"] {
            let status = auth.gateway(&bearer(token), peer).await.unwrap_err();
            assert!(
                status.message().starts_with("this is an operator token"),
                "{}",
                status.message()
            );
        }
        let wrong = auth
            .operator(&bearer(&ADMIN[..ADMIN.len() - 1]), peer)
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            wrong.message(),
            "invalid operator token (unknown or revoked)"
        );
        let wrong = auth.gateway(&bearer("nope"), peer).await.unwrap_err();
        assert_eq!(
            wrong.message(),
            "invalid gateway token (unknown or revoked)"
        );
        for missing in [
            headers(&[]),
            headers(&[("authorization", "Basic abc")]),
            headers(&[("authorization", "Bearer ")]),
        ] {
            let status = auth.operator(&missing, peer).await.unwrap_err();
            assert_eq!(status.message(), "missing bearer token");
        }
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_read_refuses_named_tokens_as_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(&dir).await;
        let sqlite = rusqlite::Connection::open(dir.path().join("db")).unwrap();
        sqlite
            .execute_batch("ALTER TABLE operator_tokens RENAME TO away")
            .unwrap();
        let peer = Some(SocketAddr::from(([192, 0, 2, 1], 5000)));
        let status = auth.operator(&bearer("kgo_ci"), peer).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        // The bootstrap token needs no store.
        assert!(auth.operator(&bearer(ADMIN), peer).await.is_ok());
        // And a store outage is no one's failure: nothing is counted against the address.
        for _ in 0..FAILURES_PER_MINUTE + 5 {
            let status = auth.operator(&bearer("kgo_ci"), peer).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable);
        }
    }
}

//! Bearer-token checks for the gRPC services: the admin token for Admin, the gateway token for
//! Sync. Installed as tonic interceptors, so no method can forget the check.
//!
//! Tokens are compared as blake3 digests in constant time: neither the content nor the length
//! of the expected token leaks through timing.

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Metadata key in which an operator may name itself for the audit log.
pub const ACTOR_HEADER: &str = "x-keygate-actor";
/// Longest accepted actor name.
pub const MAX_ACTOR_LEN: usize = 64;

/// Checks `authorization: Bearer <token>` against one expected token.
#[derive(Clone)]
pub struct TokenCheck {
    expected: [u8; 32],
    invalid: &'static str,
}

impl TokenCheck {
    /// The check for the Admin service.
    pub fn admin(token: &str) -> Self {
        Self::new(token, "invalid admin token")
    }

    /// The check for the Sync service.
    pub fn gateway(token: &str) -> Self {
        Self::new(token, "invalid gateway token")
    }

    fn new(token: &str, invalid: &'static str) -> Self {
        Self {
            expected: *blake3::hash(token.as_bytes()).as_bytes(),
            invalid,
        }
    }

    /// Accepts the request's metadata or says why not.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let token = bearer_token(metadata)
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let presented = blake3::hash(token.as_bytes());
        if bool::from(presented.as_bytes().ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(Status::unauthenticated(self.invalid))
        }
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

/// The token of `authorization: Bearer <token>` (scheme case-insensitive), if present.
fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The audit actor of an admin request: `admin:<name>` when the caller names itself in
/// `x-keygate-actor` (printable ASCII, at most 64 characters), else `admin`.
pub fn admin_actor(metadata: &MetadataMap) -> String {
    let named = metadata
        .get(ACTOR_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|name| {
            !name.is_empty()
                && name.len() <= MAX_ACTOR_LEN
                && name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        });
    match named {
        Some(name) => format!("admin:{name}"),
        None => "admin".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let check = TokenCheck::admin("admin-token-0123456789");
        assert!(
            check
                .check(&metadata(&[(
                    "authorization",
                    "Bearer admin-token-0123456789"
                )]))
                .is_ok()
        );
        assert!(
            check
                .check(&metadata(&[(
                    "authorization",
                    "bearer admin-token-0123456789"
                )]))
                .is_ok()
        );
        let wrong = check
            .check(&metadata(&[(
                "authorization",
                "Bearer admin-token-012345678",
            )]))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert_eq!(wrong.message(), "invalid admin token");
        for missing in [
            metadata(&[]),
            metadata(&[("authorization", "Basic abc")]),
            metadata(&[("authorization", "Bearer ")]),
        ] {
            let status = check.check(&missing).unwrap_err();
            assert_eq!(status.message(), "missing bearer token");
        }
        let status = TokenCheck::gateway("g".repeat(20).as_str())
            .check(&metadata(&[("authorization", "Bearer nope")]))
            .unwrap_err();
        assert_eq!(status.message(), "invalid gateway token");
    }

    #[test]
    fn actors_are_named_or_default() {
        assert_eq!(admin_actor(&metadata(&[])), "admin");
        assert_eq!(
            admin_actor(&metadata(&[(ACTOR_HEADER, "alice@example.com")])),
            "admin:alice@example.com"
        );
        assert_eq!(
            admin_actor(&metadata(&[(ACTOR_HEADER, &"x".repeat(65))])),
            "admin"
        );
        assert_eq!(admin_actor(&metadata(&[(ACTOR_HEADER, "  ")])), "admin");
    }
}

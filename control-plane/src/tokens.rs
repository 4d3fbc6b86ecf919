//! The rules of named tokens (DESIGN.md, "Operator access"): their names, their scopes, the
//! gateway a gateway token is bound to, and the secret itself. The gRPC layer converts wire
//! messages to the types here; the store makes each change one transaction with its audit row.
//!
//! A token is `kgo_` followed by 43 random base62 digits (256 bits): the prefix lets secret
//! scanners and people tell an operator token from an API key (`kg_…`). It is shown once, in
//! the create response, and stored only as `blake3(token)`. Unlike an API key it carries no
//! checksum: only the control plane ever checks one, by looking its hash up.

use std::sync::Arc;

use keygate_proto::base62;

use crate::auth::{ROOT_NAME, Scope};
use crate::store::{NewToken, OperatorTokenRecord, Store, StoreError, TokenCreated};

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "kgo_";
/// Random base62 digits after the prefix: 43 × log2(62) ≈ 256 bits.
pub const TOKEN_DIGITS: usize = 43;
/// Longest token name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest gateway id a token may be bound to, as a Hello may carry it.
pub const MAX_GATEWAY_ID_CHARS: usize = 128;

/// Why a token operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(message: impl Into<String>) -> TokenError {
    TokenError::InvalidArgument(message.into())
}

/// A create request, as the operator sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateToken {
    pub name: String,
    /// Scope names; at least one unless `gateway_id` is set, none if it is.
    pub scopes: Vec<String>,
    /// Empty: an operator token.
    pub gateway_id: String,
}

/// A created token: its record, and the secret, which exists only here.
pub struct IssuedToken {
    pub record: OperatorTokenRecord,
    pub token: String,
}

/// The token operations over a store.
#[derive(Clone)]
pub struct Tokens {
    store: Arc<dyn Store>,
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Validates `create`, makes a fresh secret and stores its hash. `actor` is the creating
    /// token's name.
    pub async fn create(
        &self,
        create: CreateToken,
        actor: &str,
    ) -> Result<IssuedToken, TokenError> {
        let new = validate(create)?;
        let token = generate();
        let name = new.name.clone();
        let new = NewToken {
            token_hash: hash(&token),
            ..new
        };
        match self.store.create_token(new, actor).await? {
            TokenCreated::Created(record) => Ok(IssuedToken { record, token }),
            TokenCreated::AlreadyExists => Err(TokenError::AlreadyExists(format!(
                "a token named {name:?} exists; revoke it first to issue a new one"
            ))),
        }
    }

    /// Every named token, by name.
    pub async fn list(&self) -> Result<Vec<OperatorTokenRecord>, TokenError> {
        Ok(self.store.list_tokens().await?)
    }

    /// Deletes the token named `name`: from the next call on, it authenticates nothing.
    pub async fn revoke(&self, name: &str, actor: &str) -> Result<OperatorTokenRecord, TokenError> {
        check_name(name)?;
        self.store
            .revoke_token(name, actor)
            .await?
            .ok_or_else(|| TokenError::NotFound(format!("no token named {name:?}")))
    }
}

/// A fresh token: the prefix and 43 base62 digits from the operating system's CSPRNG.
pub fn generate() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut token = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_DIGITS);
    token.push_str(TOKEN_PREFIX);
    for _ in 0..TOKEN_DIGITS {
        token.push(char::from(base62::ALPHABET[rng.random_range(0..62)]));
    }
    token
}

/// How a token is stored and looked up.
pub fn hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// Checks a create request; returns the token to store (its hash still to be filled in).
fn validate(create: CreateToken) -> Result<NewToken, TokenError> {
    check_name(&create.name)?;
    if create.name == ROOT_NAME {
        return Err(invalid(format!(
            "the name {ROOT_NAME:?} is reserved for the bootstrap --admin-token"
        )));
    }
    let mut scopes = Vec::new();
    for name in &create.scopes {
        let scope = Scope::parse(name).ok_or_else(|| {
            invalid(format!(
                "unknown scope {:?}; valid scopes: {}",
                name.chars().take(64).collect::<String>(),
                Scope::ALL.map(Scope::name).join(", ")
            ))
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    let gateway_id = if create.gateway_id.is_empty() {
        if scopes.is_empty() {
            return Err(invalid(format!(
                "an operator token needs at least one scope (valid scopes: {}), or a gateway \
                 token a gateway id",
                Scope::ALL.map(Scope::name).join(", ")
            )));
        }
        None
    } else {
        check_gateway_id(&create.gateway_id)?;
        if !scopes.is_empty() {
            return Err(invalid(
                "a gateway token has no scopes: it may only open the sync stream of its gateway",
            ));
        }
        Some(create.gateway_id)
    };
    Ok(NewToken {
        name: create.name,
        token_hash: [0; 32],
        scopes: scopes.iter().map(|scope| scope.name().to_owned()).collect(),
        gateway_id,
    })
}

/// A name: 1–64 characters of `[a-z0-9._-]`, starting with a letter or digit.
fn check_name(name: &str) -> Result<(), TokenError> {
    let well_formed = name.len() <= MAX_NAME_CHARS
        && name
            .bytes()
            .next()
            .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if well_formed {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid token name {:?}: expected 1-{MAX_NAME_CHARS} characters of a-z, 0-9, '.', \
             '_' and '-', starting with a letter or digit",
            name.chars().take(MAX_NAME_CHARS + 1).collect::<String>()
        )))
    }
}

/// A gateway id as a Hello may carry it: 1–128 printable characters.
fn check_gateway_id(id: &str) -> Result<(), TokenError> {
    if id.chars().count() > MAX_GATEWAY_ID_CHARS || id.chars().any(char::is_control) {
        return Err(invalid(format!(
            "invalid gateway id: expected 1-{MAX_GATEWAY_ID_CHARS} printable characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn create(name: &str, scopes: &[&str], gateway_id: &str) -> CreateToken {
        CreateToken {
            name: name.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            gateway_id: gateway_id.into(),
        }
    }

    fn refusal(create: CreateToken) -> String {
        match validate(create) {
            Err(TokenError::InvalidArgument(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn tokens_are_long_random_and_recognisable() {
        let token = generate();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(token.len(), TOKEN_PREFIX.len() + TOKEN_DIGITS);
        assert!(base62::all_digits(&token.as_bytes()[TOKEN_PREFIX.len()..]));
        assert_ne!(generate(), token);
        assert_eq!(hash(&token), *blake3::hash(token.as_bytes()).as_bytes());
    }

    #[test]
    fn names_are_short_lowercase_words() {
        for good in [
            "ci",
            "on-call",
            "edge-eu-1",
            "a",
            "deploy.bot_2",
            &"x".repeat(64),
        ] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "CI",
            "-ci",
            ".ci",
            "_ci",
            "ci bot",
            "ci/bot",
            "é",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(refusal(create("admin", &["keys:read"], "")).contains("reserved"));
    }

    #[test]
    fn scopes_are_known_names_and_gateway_tokens_have_none() {
        let new = validate(create(
            "ci",
            &["keys:create", "audit:read", "keys:create"],
            "",
        ))
        .unwrap();
        assert_eq!(
            new.scopes,
            ["keys:create", "audit:read"],
            "deduplicated, in order"
        );
        assert_eq!(new.gateway_id, None);

        let unknown = refusal(create("ci", &["keys:delete"], ""));
        assert!(
            unknown.contains("unknown scope \"keys:delete\""),
            "{unknown}"
        );
        for scope in Scope::ALL {
            assert!(unknown.contains(scope.name()), "{unknown}");
        }
        assert!(refusal(create("ci", &[], "")).contains("at least one scope"));

        let gateway = validate(create("edge-1", &[], "edge-1")).unwrap();
        assert_eq!(
            (gateway.scopes.len(), gateway.gateway_id.as_deref()),
            (0, Some("edge-1"))
        );
        assert!(refusal(create("edge-1", &["admin"], "edge-1")).contains("no scopes"));
        assert!(refusal(create("edge-1", &[], &"g".repeat(129))).contains("gateway id"));
        assert!(refusal(create("edge-1", &[], "a\nb")).contains("gateway id"));
    }
}

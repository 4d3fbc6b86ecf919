//! The control plane's configuration: one typed struct, loaded once (the CLI reads a TOML file
//! into it and then applies flags and environment variables), validated before anything binds.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::cidr::{Cidr, CidrError};
pub use crate::mail::SmtpCredentials;
pub use crate::passkeys::policy::{Aaguid, AaguidMode, BackupRule, PasskeyPolicy};

/// Shortest accepted admin or gateway token: anything shorter is guessable.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest accepted `session_lifetime`.
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Configuration of one control-plane process.
///
/// Unknown fields are an error, so a typo in a config file is reported instead of ignored.
/// `Debug` redacts both tokens, so the config can be logged.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    /// Address of the gRPC listener (Admin and Sync services). Default `127.0.0.1:7070`;
    /// port 0 picks a free port.
    pub grpc_listen: SocketAddr,
    /// Address of the HTTP listener (`/healthz`, `/metrics`, later the passkey web flows).
    /// Default `127.0.0.1:7080`; port 0 picks a free port.
    pub http_listen: SocketAddr,
    /// Where the state lives. Default `sqlite://keygate-data/keygate.db`.
    /// `sqlite://PATH` is a SQLite file (relative to the working directory, or absolute as in
    /// `sqlite:///var/lib/keygate/keygate.db`); missing parent directories are created.
    /// `postgres://…` is reserved for PostgreSQL, which is not supported yet.
    pub database: String,
    /// Bearer token operators present to the Admin service. Required, at least 16 visible
    /// ASCII characters. No default.
    pub admin_token: String,
    /// Bearer token gateways present to the Sync service. Required, at least 16 visible ASCII
    /// characters, different from `admin_token`. No default.
    pub gateway_token: String,
    /// WebAuthn relying-party id (a domain). Default `localhost`. Passkeys are bound to it:
    /// changing it later orphans every registered passkey.
    pub rp_id: Option<String>,
    /// WebAuthn relying-party origin (`https://id.example.com`), where the passkey page is
    /// served; its host must be `rp_id` or a subdomain of it. Default
    /// `http://localhost:<HTTP listener port>` (`https://` with `tls_cert`). Enrollment links
    /// point here.
    pub rp_origin: Option<String>,
    /// How long a passkey session lasts from sign-in; also how long a revocation must be
    /// remembered, and how long a retired signing key keeps verifying. Default 12 hours, at
    /// most 30 days. Same duration syntax as `gateway_timeout`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub session_lifetime: Duration,
    /// Requests per minute to the passkey HTTP endpoints from one client address (as a burst
    /// and as the steady rate). Default 60; 0 turns the limit off.
    pub passkey_rate_per_address: u32,
    /// Requests per minute to the passkey HTTP endpoints for one signed-in user (or holder of
    /// an enrollment link): an unauthenticated caller never spends a user's bucket. Default 30;
    /// 0 turns the limit off.
    pub passkey_rate_per_user: u32,
    /// Proxies (CIDR ranges, e.g. `["10.0.0.0/8", "2001:db8::/32"]`; a bare address is a range
    /// of one) whose `X-Forwarded-For` / `Forwarded: for=` headers name the client of a passkey
    /// API request: the rightmost address that is not itself a trusted proxy. Headers from any
    /// other peer are ignored. Default none: the TCP peer is the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Most passkey ceremonies (begun, not finished, not expired) one client address may have
    /// open at once; IPv6 clients count per /64. A begin beyond it is 429. Default 20; 0 turns
    /// the per-address cap off (the global cap of 10 000 still holds).
    pub max_ceremonies_per_address: usize,
    /// How long a disconnected gateway stays in the registry (`keygate gateways`) before it is
    /// dropped. Default 5 minutes. In TOML either a human-readable duration string
    /// (`"5m"`, `"90s"`, `"1h 30m"`) or an integer number of seconds (`300`).
    #[serde(deserialize_with = "duration::deserialize")]
    pub gateway_timeout: Duration,
    /// How long committed events stay in the event log. A gateway that reconnects within it
    /// resumes with the events it missed; one that was away longer gets a full snapshot (like
    /// etcd after compaction). Default 24 hours; 0 compacts everything already committed (a
    /// snapshot on every reconnect). Same duration syntax as `gateway_timeout`.
    #[serde(deserialize_with = "duration::deserialize")]
    pub event_retention: Duration,
    /// PEM certificate chain (leaf first) for both listeners. With `tls_key`, gRPC (Admin and
    /// Sync) and HTTP (the passkey page and API, health, metrics) are served over TLS 1.2/1.3
    /// only. Re-read on SIGHUP and when the file changes. Default none: plain text.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`. Default none.
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that gateways' client certificates must chain to (mutual TLS,
    /// needs `tls_cert`). The Sync service then refuses a gateway without one, and takes the
    /// gateway's id from its certificate's first DNS or URI SAN. Operators need none. Default
    /// none.
    pub client_ca: Option<PathBuf>,
    /// SMTP relay that enrollment links are emailed through (`keygate enrollments create
    /// --email`): `smtp://host[:port]` (default port 587; STARTTLS when the relay offers it,
    /// required with credentials or `?tls=required`) or `smtps://host[:port]` (TLS from the
    /// first byte, default port 465). Default none: `--email` is refused.
    pub smtp_url: Option<String>,
    /// Sender of enrollment emails, `address@example.com` or `Name <address@example.com>`.
    /// Required with `smtp_url`. Default none.
    pub smtp_from: Option<String>,
    /// The organisation the enrollment emails name ("… invites you to set up a passkey"), at
    /// most 100 characters. Required with `smtp_url`. Default none.
    pub org_name: Option<String>,
    /// User and password for the SMTP relay, from `KEYGATE_SMTP_USER` and
    /// `KEYGATE_SMTP_PASSWORD` only (never from the file, never printed). Default none: no
    /// authentication.
    #[serde(skip)]
    pub smtp_credentials: Option<SmtpCredentials>,
    /// JSON file of passkey provider names and icons by AAGUID, in the community list's format
    /// (passkeydeveloper/passkey-authenticator-aaguids, `aaguid.json`); it replaces the list
    /// compiled in, and is read once at start (`{}`: every passkey is "Unknown
    /// authenticator"). Default none: the vendored list.
    pub aaguid_names: Option<PathBuf>,
    /// `[passkey_policy]`: which authenticator models (`mode = "allow" | "block"` over
    /// `aaguids = ["<uuid>", …]`) and which kinds of passkeys (`backup = "any" |
    /// "device_bound" | "synced"`) may register. Default: any passkey.
    pub passkey_policy: PasskeyPolicy,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7070)),
            http_listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7080)),
            database: "sqlite://keygate-data/keygate.db".to_owned(),
            admin_token: String::new(),
            gateway_token: String::new(),
            rp_id: None,
            rp_origin: None,
            session_lifetime: Duration::from_secs(12 * 3600),
            passkey_rate_per_address: 60,
            passkey_rate_per_user: 30,
            trusted_proxies: Vec::new(),
            max_ceremonies_per_address: crate::ceremonies::MAX_CEREMONIES_PER_CLIENT,
            gateway_timeout: Duration::from_secs(5 * 60),
            event_retention: Duration::from_secs(24 * 60 * 60),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            smtp_url: None,
            smtp_from: None,
            org_name: None,
            smtp_credentials: None,
            aaguid_names: None,
            passkey_policy: PasskeyPolicy::default(),
        }
    }
}

impl fmt::Debug for ControlPlaneConfig {
    /// Never prints a token: configs end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |token: &str| {
            if token.is_empty() {
                "<unset>"
            } else {
                "<redacted>"
            }
        };
        f.debug_struct("ControlPlaneConfig")
            .field("grpc_listen", &self.grpc_listen)
            .field("http_listen", &self.http_listen)
            .field("database", &DatabaseUrl::redacted(&self.database))
            .field("admin_token", &redact(&self.admin_token))
            .field("gateway_token", &redact(&self.gateway_token))
            .field("rp_id", &self.rp_id)
            .field("rp_origin", &self.rp_origin)
            .field("session_lifetime", &self.session_lifetime)
            .field("passkey_rate_per_address", &self.passkey_rate_per_address)
            .field("passkey_rate_per_user", &self.passkey_rate_per_user)
            .field("trusted_proxies", &self.trusted_proxies)
            .field(
                "max_ceremonies_per_address",
                &self.max_ceremonies_per_address,
            )
            .field("gateway_timeout", &self.gateway_timeout)
            .field("event_retention", &self.event_retention)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("client_ca", &self.client_ca)
            .field(
                "smtp_url",
                &self.smtp_url.as_deref().map(DatabaseUrl::redacted),
            )
            .field("smtp_from", &self.smtp_from)
            .field("org_name", &self.org_name)
            .field("smtp_credentials", &self.smtp_credentials)
            .field("aaguid_names", &self.aaguid_names)
            .field("passkey_policy", &self.passkey_policy)
            .finish()
    }
}

/// Where the control plane keeps its state, parsed from [`ControlPlaneConfig::database`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server; the URL is passed to the driver as it is (`sslmode` and all).
    Postgres,
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH` or `postgres://…` / `postgresql://…`.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(ConfigError::Database(
                    "sqlite:// URL has no file path".into(),
                ));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres);
        }
        // Never echo the URL: a database URL may carry a password.
        Err(ConfigError::Database(
            "expected sqlite://PATH or postgres://… URL".into(),
        ))
    }

    /// `url` with any password replaced by `***`, for logs and errors: the one in the user
    /// info (`user:pass@`) and a `password=` query parameter.
    pub fn redacted(url: &str) -> String {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***@{host}"),
                None => authority.to_owned(),
            },
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                            format!("{name}=***")
                        }
                        _ => pair.to_owned(),
                    })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => tail.to_owned(),
        };
        format!("{scheme}://{authority}{tail}")
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} is required")]
    MissingToken { field: &'static str },
    #[error("{field} must be at least {MIN_TOKEN_LEN} characters")]
    ShortToken { field: &'static str },
    #[error("{field} must be visible ASCII characters only (it is sent in an HTTP header)")]
    TokenCharacters { field: &'static str },
    #[error("admin_token and gateway_token must differ, or every gateway could act as an operator")]
    SameTokens,
    #[error("invalid database: {0}")]
    Database(String),
    #[error("grpc_listen and http_listen are both {0}")]
    SameListenAddress(SocketAddr),
    #[error("gateway_timeout must be greater than zero")]
    ZeroGatewayTimeout,
    #[error("rp_origin must start with https:// or http://")]
    RpOrigin,
    #[error("rp_id must not be empty when set")]
    RpId,
    #[error("session_lifetime must be between 1 second and 30 days")]
    SessionLifetime,
    #[error("invalid WebAuthn relying party: {0}")]
    RelyingParty(String),
    #[error("tls_cert and tls_key go together: set both or neither")]
    TlsPair,
    #[error("client_ca needs tls_cert and tls_key: client certificates are only seen over TLS")]
    ClientCaWithoutTls,
    #[error("TLS: {0}")]
    Tls(String),
    #[error("email settings: {0}")]
    Smtp(String),
    #[error("{0}")]
    PasskeyPolicy(String),
    #[error("aaguid_names: {0}")]
    AaguidNames(String),
}

impl ControlPlaneConfig {
    /// Checks everything that can be checked without touching the network or the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_token("admin_token", &self.admin_token)?;
        check_token("gateway_token", &self.gateway_token)?;
        if self.admin_token == self.gateway_token {
            return Err(ConfigError::SameTokens);
        }
        DatabaseUrl::parse(&self.database)?;
        if self.grpc_listen == self.http_listen && self.grpc_listen.port() != 0 {
            return Err(ConfigError::SameListenAddress(self.grpc_listen));
        }
        if self.gateway_timeout.is_zero() {
            return Err(ConfigError::ZeroGatewayTimeout);
        }
        if self.rp_id.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::RpId);
        }
        if let Some(origin) = &self.rp_origin
            && !(origin.starts_with("https://") || origin.starts_with("http://"))
        {
            return Err(ConfigError::RpOrigin);
        }
        if self.session_lifetime < Duration::from_secs(1)
            || self.session_lifetime > MAX_SESSION_LIFETIME
        {
            return Err(ConfigError::SessionLifetime);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::TlsPair);
        }
        if self.client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::ClientCaWithoutTls);
        }
        crate::mail::SmtpSettings::from_config(self)?;
        self.passkey_policy
            .check()
            .map_err(ConfigError::PasskeyPolicy)?;
        Ok(())
    }

    /// The certificate and key files, when the listeners serve TLS.
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        self.tls_cert.as_deref().zip(self.tls_key.as_deref())
    }
}

impl ControlPlaneConfig {
    /// The relying-party id: `rp_id`, or `localhost`.
    pub fn relying_party_id(&self) -> String {
        self.rp_id.clone().unwrap_or_else(|| "localhost".to_owned())
    }

    /// The relying-party origin: `rp_origin` (without a trailing slash), or
    /// `http://localhost:<port of the bound HTTP listener>` (`https://` with TLS).
    pub fn relying_party_origin(&self, http_addr: SocketAddr) -> String {
        let scheme = if self.tls_files().is_some() {
            "https"
        } else {
            "http"
        };
        match &self.rp_origin {
            Some(origin) => origin.trim_end_matches('/').to_owned(),
            None => format!("{scheme}://localhost:{}", http_addr.port()),
        }
    }
}

fn check_token(field: &'static str, token: &str) -> Result<(), ConfigError> {
    if token.is_empty() {
        return Err(ConfigError::MissingToken { field });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::TokenCharacters { field });
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(ConfigError::ShortToken { field });
    }
    Ok(())
}

/// Serde support for durations written as `"5m"` (humantime) or as whole seconds.
mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::Deserializer;
    use serde::de::{self, Visitor};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"5m\" or \"90s\", or a whole number of seconds")
        }

        fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(seconds))
        }

        fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Duration, E> {
            u64::try_from(seconds)
                .map(Duration::from_secs)
                .map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text).map_err(|e| E::custom(format!("{text:?}: {e}")))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn valid() -> ControlPlaneConfig {
        ControlPlaneConfig {
            admin_token: "admin-token-0123456789".into(),
            gateway_token: "gateway-token-0123456789".into(),
            ..ControlPlaneConfig::default()
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = ControlPlaneConfig::default();
        assert_eq!(config.grpc_listen.to_string(), "127.0.0.1:7070");
        assert_eq!(config.http_listen.to_string(), "127.0.0.1:7080");
        assert_eq!(config.database, "sqlite://keygate-data/keygate.db");
        assert_eq!(config.gateway_timeout, Duration::from_secs(300));
        // Tokens are required, so the default alone does not validate.
        assert_eq!(
            config.validate(),
            Err(ConfigError::MissingToken {
                field: "admin_token"
            })
        );
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn toml_accepts_both_duration_forms_and_rejects_unknown_fields() {
        let config: ControlPlaneConfig =
            toml::from_str("admin_token = \"x\"\ngateway_timeout = \"90s\"").unwrap();
        assert_eq!(config.gateway_timeout, Duration::from_secs(90));
        assert_eq!(config.admin_token, "x");
        assert_eq!(config.grpc_listen.port(), 7070);
        let config: ControlPlaneConfig = toml::from_str("gateway_timeout = 42").unwrap();
        assert_eq!(config.gateway_timeout, Duration::from_secs(42));
        assert!(toml::from_str::<ControlPlaneConfig>("gateway_timeout = \"soon\"").is_err());
        assert!(toml::from_str::<ControlPlaneConfig>("gateway_timeout = -1").is_err());
        let typo = toml::from_str::<ControlPlaneConfig>("admin_tokne = \"x\"").unwrap_err();
        assert!(typo.to_string().contains("admin_tokne"), "{typo}");
    }

    #[test]
    fn validation_rejects_weak_or_shared_tokens() {
        let mut config = valid();
        config.gateway_token = "short".into();
        assert_eq!(
            config.validate(),
            Err(ConfigError::ShortToken {
                field: "gateway_token"
            })
        );
        config.gateway_token = "has a space in the token".into();
        assert_eq!(
            config.validate(),
            Err(ConfigError::TokenCharacters {
                field: "gateway_token"
            })
        );
        config.gateway_token = config.admin_token.clone();
        assert_eq!(config.validate(), Err(ConfigError::SameTokens));
    }

    #[test]
    fn validation_checks_database_and_listeners() {
        let mut config = valid();
        config.database = "mysql://db".into();
        assert!(matches!(config.validate(), Err(ConfigError::Database(_))));
        config.database = "sqlite://".into();
        assert!(matches!(config.validate(), Err(ConfigError::Database(_))));
        config.database = "postgres://u:p@db/keygate".into();
        assert_eq!(config.validate(), Ok(()), "rejected at bind, not here");
        config = valid();
        config.http_listen = config.grpc_listen;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::SameListenAddress(_))
        ));
        config = valid();
        config.gateway_timeout = Duration::ZERO;
        assert_eq!(config.validate(), Err(ConfigError::ZeroGatewayTimeout));
    }

    #[test]
    fn database_passwords_never_reach_logs() {
        assert_eq!(
            DatabaseUrl::redacted("postgres://keygate:s3cret@db:5432/keygate?sslmode=require"),
            "postgres://keygate:***@db:5432/keygate?sslmode=require"
        );
        assert_eq!(
            DatabaseUrl::redacted("postgres://keygate@db/keygate"),
            "postgres://keygate@db/keygate"
        );
        assert_eq!(
            DatabaseUrl::redacted("postgres://db/keygate?user=k&password=s3cret&sslmode=require"),
            "postgres://db/keygate?user=k&password=***&sslmode=require"
        );
        assert_eq!(
            DatabaseUrl::redacted("sqlite://keygate-data/keygate.db"),
            "sqlite://keygate-data/keygate.db"
        );
        let config = ControlPlaneConfig {
            database: "postgres://u:hunter2@db/k".into(),
            ..ControlPlaneConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn database_urls_parse() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://keygate-data/keygate.db"),
            Ok(DatabaseUrl::Sqlite("keygate-data/keygate.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/keygate.db"),
            Ok(DatabaseUrl::Sqlite("/var/lib/keygate.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("postgresql://x"),
            Ok(DatabaseUrl::Postgres)
        );
    }

    #[test]
    fn passkey_settings_default_and_validate() {
        let mut config = valid();
        assert_eq!(config.session_lifetime, Duration::from_secs(12 * 3600));
        assert_eq!(config.relying_party_id(), "localhost");
        let http: SocketAddr = "127.0.0.1:7080".parse().unwrap();
        assert_eq!(config.relying_party_origin(http), "http://localhost:7080");
        config.rp_origin = Some("https://id.example.com/".into());
        assert_eq!(config.relying_party_origin(http), "https://id.example.com");
        config.session_lifetime = Duration::ZERO;
        assert_eq!(config.validate(), Err(ConfigError::SessionLifetime));
        config.session_lifetime = MAX_SESSION_LIFETIME + Duration::from_secs(1);
        assert_eq!(config.validate(), Err(ConfigError::SessionLifetime));
        let parsed: ControlPlaneConfig =
            toml::from_str("session_lifetime = \"30m\"\npasskey_rate_per_user = 0").unwrap();
        assert_eq!(parsed.session_lifetime, Duration::from_secs(1800));
        assert_eq!(parsed.passkey_rate_per_user, 0);
    }

    #[test]
    fn trusted_proxies_are_cidr_ranges_and_a_bad_one_names_itself() {
        let config = ControlPlaneConfig::default();
        assert!(config.trusted_proxies.is_empty());
        assert_eq!(config.max_ceremonies_per_address, 20);
        let parsed: ControlPlaneConfig = toml::from_str(
            "trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]\n\
             max_ceremonies_per_address = 5",
        )
        .unwrap();
        let ranges: Vec<String> = parsed.trusted_proxies.iter().map(Cidr::to_string).collect();
        assert_eq!(ranges, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
        assert_eq!(parsed.max_ceremonies_per_address, 5);
        let error = toml::from_str::<ControlPlaneConfig>("trusted_proxies = [\"10.0.0.1/8\"]")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"10.0.0.1/8\" has bits set past its prefix; did you mean 10.0.0.0/8?"),
            "{error}"
        );
        let error = toml::from_str::<ControlPlaneConfig>("trusted_proxies = [\"proxy.local\"]")
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not a CIDR range"), "{error}");
    }

    #[test]
    fn debug_redacts_tokens() {
        let config = valid();
        let printed = format!("{config:?}");
        assert!(!printed.contains(&config.admin_token));
        assert!(!printed.contains(&config.gateway_token));
        assert!(printed.contains("<redacted>"));
    }
}

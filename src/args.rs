//! Command-line arguments. Every server flag can also come from a `KEYGATE_*` environment
//! variable and from the TOML file named by `--config`; flags and environment win over the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// keygate: API-key and passkey-session verification at the edge.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Log lines on stderr: `text`, or `json` (one JSON object a line). Read before any
    /// `--config` file, so only a flag or the environment sets it.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::telemetry::LogFormat,
    /// Export spans over OTLP/gRPC to this collector (`http://host:4317`, or `https://` with
    /// the system's roots): the gateway's request, verify, forward and sync-apply spans.
    /// Servers only; read before any `--config` file [default: no spans].
    #[arg(long, global = true, env = "KEYGATE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// How operator commands reach the control plane, and how they print.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Control plane gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "KEYGATE_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    pub endpoint: String,
    /// Admin token (printed by `keygate dev`).
    #[arg(long, global = true, env = "KEYGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that an https:// endpoint's certificate must chain to
    /// [default: the system's roots].
    #[arg(long, global = true, env = "KEYGATE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Print exactly one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run control plane, one gateway and an echo upstream on this machine (embedded SQLite).
    Dev(DevArgs),
    /// Run the control plane: gRPC admin + sync services, HTTP health and metrics.
    ControlPlane(ControlPlaneArgs),
    /// Run a gateway in front of an upstream.
    Proxy(ProxyArgs),
    /// Create, inspect, update, disable, enable, delete and reroll API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create, inspect, update and delete identities: groups of keys that share rate limits
    /// and credits.
    #[command(subcommand)]
    Identities(IdentitiesCommand),
    /// List the gateways connected to the control plane.
    Gateways,
    /// Read the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Create, disable and enable passkey users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Issue, list and revoke one-time passkey enrollment links.
    #[command(subcommand)]
    Enrollments(EnrollmentsCommand),
    /// List and revoke a user's passkeys.
    #[command(subcommand)]
    Passkeys(PasskeysCommand),
    /// Sign a user out everywhere.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// List, rotate and revoke the keys passkey sessions are signed with.
    #[command(subcommand)]
    SigningKeys(SigningKeysCommand),
    /// Create, list and revoke named operator tokens (scoped) and gateway tokens (one gateway).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Work on a store directly, with no control plane running on it.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Run only the echo upstream that `dev` uses (for benchmarks and demos).
    #[command(hide = true)]
    EchoUpstream {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Answer "ok" to everything instead of describing the request (for benchmarks).
        #[arg(long)]
        fixed: bool,
    },
}

impl Command {
    /// Whether this command runs servers (and so logs at info level by default).
    pub fn is_server(&self) -> bool {
        matches!(
            self,
            Self::Dev(_) | Self::ControlPlane(_) | Self::Proxy(_) | Self::EchoUpstream { .. }
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Where the SQLite database lives.
    #[arg(long, env = "KEYGATE_DATA_DIR", default_value = "./keygate-data")]
    pub data_dir: PathBuf,
    /// Gateway listener.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Gateway admin listener (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_listen: SocketAddr,
    /// Control plane gRPC listener.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub grpc_listen: SocketAddr,
    /// Control plane HTTP listener.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub http_listen: SocketAddr,
    /// Every link over TLS, with a throwaway CA and certificates made in <data-dir>/tls/
    /// (mutual TLS between gateway and control plane).
    #[arg(long)]
    pub tls: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ControlPlaneArgs {
    /// TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "KEYGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listener (admin + sync) [default: 127.0.0.1:7070].
    #[arg(long, env = "KEYGATE_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// HTTP listener (passkey web flows, /healthz, /metrics) [default: 127.0.0.1:7080].
    #[arg(long, env = "KEYGATE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Database URL: sqlite://PATH, or postgres://… [default: sqlite://keygate-data/keygate.db].
    #[arg(long, env = "KEYGATE_DATABASE")]
    pub database: Option<String>,
    /// Token operators present to the admin API.
    #[arg(long, env = "KEYGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Token gateways present to the sync API.
    #[arg(long, env = "KEYGATE_GATEWAY_TOKEN", hide_env_values = true)]
    pub gateway_token: Option<String>,
    /// WebAuthn relying party id [default: localhost].
    #[arg(long, env = "KEYGATE_RP_ID")]
    pub rp_id: Option<String>,
    /// WebAuthn relying party origin [default: the HTTP listener's URL].
    #[arg(long, env = "KEYGATE_RP_ORIGIN")]
    pub rp_origin: Option<String>,
    /// PEM certificate chain: serve gRPC and HTTP over TLS (with --tls-key).
    #[arg(long, env = "KEYGATE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KEYGATE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that gateways' client certificates must chain to (mutual TLS); a gateway's id
    /// is then its certificate's first DNS or URI SAN.
    #[arg(long, env = "KEYGATE_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// Proxies (CIDR ranges, comma-separated or repeated) whose X-Forwarded-For / Forwarded
    /// headers name the passkey API's client [default: none; replaces the file's list].
    #[arg(
        long,
        env = "KEYGATE_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<keygate_control_plane::config::Cidr>,
    /// JSON file of passkey provider names by AAGUID (the community list's format) replacing
    /// the vendored list [default: the vendored list].
    #[arg(long, env = "KEYGATE_AAGUID_NAMES", value_name = "FILE")]
    pub aaguid_names: Option<PathBuf>,
}

/// What a gateway does when it cannot prove it is within the propagation bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StalePolicyArg {
    /// Answer 503 STALE and fail /readyz.
    FailClosed,
    /// Keep serving from the replica and only report.
    Serve,
}

#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// TOML file with any of the settings below, and `[[route]]` tables.
    #[arg(long, env = "KEYGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listener for API traffic [default: 0.0.0.0:8080].
    #[arg(long, env = "KEYGATE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listener: /healthz, /readyz, /metrics [default: 127.0.0.1:9901].
    #[arg(long, env = "KEYGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Envoy gRPC ext_authz listener (envoy.service.auth.v3.Authorization/Check); TLS with
    /// the main listener's certificate when it has one [default: not served].
    #[arg(long, env = "KEYGATE_AUTHZ_GRPC_LISTEN")]
    pub authz_grpc_listen: Option<SocketAddr>,
    /// Upstream URL: one route `/` with the default auth (key_or_session).
    #[arg(long, env = "KEYGATE_UPSTREAM")]
    pub upstream: Option<String>,
    /// Continue or start a W3C `traceparent` on every forwarded request (config
    /// `trace_context = true`) [default: off, the header passes through untouched].
    #[arg(long, env = "KEYGATE_TRACE_CONTEXT")]
    pub trace_context: bool,
    /// Control plane gRPC URL; repeat for failover order.
    #[arg(
        long = "control-plane",
        env = "KEYGATE_CONTROL_PLANE",
        value_delimiter = ','
    )]
    pub control_plane: Vec<String>,
    /// Token this gateway presents to the control plane.
    #[arg(long, env = "KEYGATE_GATEWAY_TOKEN", hide_env_values = true)]
    pub gateway_token: Option<String>,
    /// Gateway id in the control plane's registry [default: hostname-pid].
    #[arg(long, env = "KEYGATE_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Region label, for operators.
    #[arg(long, env = "KEYGATE_REGION")]
    pub region: Option<String>,
    /// Longest time this gateway may go without proving it is current, e.g. 60s.
    #[arg(long, env = "KEYGATE_PROPAGATION_BOUND", value_parser = parse_duration)]
    pub propagation_bound: Option<Duration>,
    /// What to do past the bound.
    #[arg(long, env = "KEYGATE_STALE_POLICY", value_enum)]
    pub stale_policy: Option<StalePolicyArg>,
    /// PEM certificate chain: the main listener serves HTTPS (with --tls-key).
    #[arg(long, env = "KEYGATE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "KEYGATE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate chain: the admin listener serves HTTPS (with --admin-tls-key).
    #[arg(long, env = "KEYGATE_ADMIN_TLS_CERT", value_name = "FILE")]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key of --admin-tls-cert.
    #[arg(long, env = "KEYGATE_ADMIN_TLS_KEY", value_name = "FILE")]
    pub admin_tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that https:// control planes must chain to [default: system roots].
    #[arg(long, env = "KEYGATE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate for https:// control planes (mutual TLS).
    #[arg(long, env = "KEYGATE_CLIENT_CERT", value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "KEYGATE_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Threads serving the main listener, each with its own listener on the port, runtime and
    /// upstream connections (config `workers`) [default: the CPUs the process may use].
    #[arg(long, env = "KEYGATE_WORKERS")]
    pub workers: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its plaintext is printed only here.
    Create(CreateKeyArgs),
    /// Show one key, with its limits, current credits and rate-limit usage.
    Get { key_id: String },
    /// List keys, a page at a time.
    List(ListKeysArgs),
    /// Change a key's rate limits, credits, refill, permissions or identity; what no flag
    /// names keeps its value.
    Update(UpdateKeyArgs),
    /// Disable a key (reversible): gateways answer 403 DISABLED.
    Disable {
        key_id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Enable a disabled key.
    Enable {
        key_id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a key for good: gateways answer 401 NOT_FOUND.
    Delete {
        key_id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Issue a new key in place of an old one; the old one works until the grace ends.
    Reroll {
        key_id: String,
        /// How long the old key keeps working, e.g. 10m; 0 revokes it at once.
        #[arg(long, value_parser = parse_duration, default_value = "0s")]
        grace: Duration,
    },
    /// Delete every key of an owner.
    RevokeOwner {
        owner: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// `--wait [--timeout D]` of the commands that revoke something.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Return only once every gateway that may be serving has applied the change.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long, exit non-zero and name the gateways that have not
    /// applied the change [default: 60s].
    #[arg(long, value_parser = parse_duration, requires = "wait")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Args)]
pub struct CreateKeyArgs {
    /// External id of the key's owner (user, team, customer).
    #[arg(long)]
    pub owner: String,
    /// Key prefix, 1-16 characters of [A-Za-z0-9] [default: kg].
    #[arg(long)]
    pub prefix: Option<String>,
    /// Human-readable name.
    #[arg(long)]
    pub name: Option<String>,
    /// Expiry: an RFC 3339 time (2027-01-01T00:00:00Z) or a duration from now (30d, 12h).
    #[arg(long)]
    pub expires: Option<String>,
    /// Metadata entry, repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// Create the key disabled.
    #[arg(long)]
    pub disabled: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// A permission the key grants, repeatable: 1-64 of [A-Za-z0-9._:-], e.g. orders.read,
    /// matched exactly (a route with `permissions` needs every one it lists).
    #[arg(long = "permission", value_name = "PERMISSION")]
    pub permissions: Vec<String>,
    /// An identity whose rate limits and credits the key also counts against (created, with
    /// no limits, if it does not exist).
    #[arg(long, value_name = "ID")]
    pub identity: Option<String>,
}

/// `--ratelimit`, `--credits` and `--refill` of a key or an identity. Kept as text and checked
/// by `keygate_proto::limits` after parsing, so bad input fails with exit 1 and the control
/// plane's own words instead of clap's usage error.
#[derive(Debug, Clone, Default, Args)]
pub struct LimitArgs {
    /// A rate limit, repeatable: at most LIMIT units (a route's cost each, default 1) per
    /// window of DURATION aligned to Unix time, counted across every gateway, e.g.
    /// requests=100/1s, tokens=10000/1m. On update the ones given replace all of them.
    #[arg(long = "ratelimit", value_name = "NAME=LIMIT/DURATION")]
    pub ratelimits: Vec<String>,
    /// Credits: this many units in all (a route's cost each), then 429 USAGE_EXCEEDED at
    /// every gateway [default: unlimited]. On update: the balance is set to N.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub credits: Option<String>,
    /// With credits: every DURATION the balance is set back to AMOUNT, e.g. 1000/1d.
    #[arg(long, value_name = "AMOUNT/DURATION", allow_hyphen_values = true)]
    pub refill: Option<String>,
}

/// The flags that change a key's or an identity's limits: new values, or `--clear-…`.
#[derive(Debug, Clone, Default, Args)]
pub struct UpdateLimitArgs {
    #[command(flatten)]
    pub set: LimitArgs,
    /// Remove every rate limit.
    #[arg(long)]
    pub clear_ratelimits: bool,
    /// Make the credits unlimited again (drops the refill too).
    #[arg(long)]
    pub clear_credits: bool,
    /// Stop refilling the credits.
    #[arg(long)]
    pub clear_refill: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UpdateKeyArgs {
    pub key_id: String,
    #[command(flatten)]
    pub limits: UpdateLimitArgs,
    /// A permission the key grants, repeatable; the ones given replace all of them.
    #[arg(long = "permission", value_name = "PERMISSION")]
    pub permissions: Vec<String>,
    /// Remove every permission.
    #[arg(long)]
    pub clear_permissions: bool,
    /// Count the key against this identity's rate limits and credits (created if missing).
    #[arg(long, value_name = "ID")]
    pub identity: Option<String>,
    /// Take the key out of its identity.
    #[arg(long)]
    pub clear_identity: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Subcommand)]
pub enum IdentitiesCommand {
    /// Create an identity: every key created or updated with --identity ID also counts against
    /// its rate limits and credits.
    Create {
        /// 1-128 printable characters without spaces, e.g. the customer's id.
        identity_id: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Change an identity's rate limits, credits or refill; what no flag names keeps its value.
    Update {
        identity_id: String,
        #[command(flatten)]
        limits: UpdateLimitArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show one identity, with its current credits and rate-limit usage.
    Get { identity_id: String },
    /// List identities, a page at a time.
    List {
        /// Page size (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Cursor from the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Delete an identity; refused while a key names it.
    Delete { identity_id: String },
}

#[derive(Debug, Clone, Args)]
pub struct ListKeysArgs {
    /// Only this owner's keys.
    #[arg(long)]
    pub owner: Option<String>,
    /// Page size (at most 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Cursor from the previous page.
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user (the operator's own id, 1-256 characters).
    Create { user_id: String },
    /// Disable a user: every session of theirs is refused (401 REVOKED) at every gateway and
    /// every open enrollment link of theirs is voided; enabling them again brings none of
    /// those back.
    Disable {
        user_id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Enable a disabled user (they sign in again).
    Enable {
        user_id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnrollmentsCommand {
    /// Issue a one-time link with which the user registers a passkey; printed only here, or
    /// emailed by the control plane (--email, needs its smtp_url). --users-file enrolls every
    /// user of a CSV file.
    Create {
        /// The user who will enroll.
        #[arg(long, required_unless_present = "users_file")]
        user: Option<String>,
        /// Email the link to this address instead of printing it.
        #[arg(long, value_name = "ADDRESS", requires = "user")]
        email: Option<String>,
        /// A CSV file with a header row and a `user` column: one link per row, printed as JSON
        /// lines (or emailed, with --email-column). Users must exist already.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["user", "email"])]
        users_file: Option<PathBuf>,
        /// With --users-file: the column holding each user's email address; the links are
        /// emailed to them.
        #[arg(long, value_name = "COLUMN", requires = "users_file")]
        email_column: Option<String>,
        /// How long the link works, e.g. 24h, 30m (at most 30 days).
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        expires: Duration,
    },
    /// List a user's enrollment links, newest first, with their state: open, used, expired,
    /// revoked (by an operator) or voided (the user was disabled). Never their tokens.
    List {
        #[arg(long)]
        user: String,
    },
    /// Revoke an open enrollment link: it can no longer begin or finish an enrollment. A link
    /// already used, expired, revoked or voided is left as it is (changed: false).
    Revoke {
        /// The link's id (enr_…), from `create` or `list`.
        enrollment_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PasskeysCommand {
    /// List a user's passkeys: id, name, provider, created, last used, user agent, backed up,
    /// device type.
    List {
        #[arg(long, required_unless_present = "policy_violations")]
        user: Option<String>,
        /// Only the stored passkeys the control plane's [passkey_policy] would refuse now (every
        /// user's, or --user's), each with the rule it breaks.
        #[arg(long)]
        policy_violations: bool,
    },
    /// Give a user's passkey a new device name (1 to 64 characters).
    Rename {
        #[arg(long)]
        user: String,
        passkey_id: String,
        name: String,
    },
    /// Delete a user's passkey: every session it minted is refused (401 REVOKED).
    Revoke {
        #[arg(long)]
        user: String,
        passkey_id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Revoke every session of a user issued until now ("sign out everywhere").
    Revoke {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SigningKeysCommand {
    /// List the session signing keys: id, created, verify-until (retired or revoked), revoked,
    /// current.
    List,
    /// New sessions are signed with a new key; tokens signed with the old one keep working
    /// until they expire.
    Rotate,
    /// Revoke a signing key: every session it signed is refused (401 REVOKED) at every
    /// gateway. Revoking the current key makes a new one current first, so sign-ins go on.
    Revoke {
        /// The key's id (sk_…), as `keygate signing-keys list` shows it.
        key_id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a named token and print it, the only time it is shown (the control plane keeps
    /// its hash). An operator token gets scopes; a gateway token (--gateway) gets none and lets
    /// only that gateway id open a sync stream. Needs a token with scope admin.
    Create {
        /// 1-64 characters of a-z, 0-9, '.', '_' and '-': the audit log's actor for what the
        /// token does ("admin" is the bootstrap --admin-token's).
        name: String,
        /// A scope the token holds (repeat for several): keys:read, keys:write, keys:create,
        /// keys:disable, passkeys:read, passkeys:write, users:write, gateways:read, audit:read,
        /// admin.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Make a gateway token that only this gateway id may use.
        #[arg(long = "gateway", value_name = "GATEWAY_ID")]
        gateway_id: Option<String>,
    },
    /// List the named tokens (never the tokens themselves).
    List,
    /// Revoke a token: every call with it fails from now on, and the sync streams of a gateway
    /// token are closed.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy everything from one store into a new one: SQLite to PostgreSQL, and back.
    ///
    /// Moves keys, users, passkeys, enrollment links, sessions, signing keys (with their
    /// secrets), revocations, the audit log, the event log's retained events and the log's
    /// identity (log id, head revision): gateways resume against the copy without a snapshot.
    /// Not copied: passkey ceremonies in progress and the gateway registry (rebuilt as gateways
    /// connect).
    ///
    /// Stop every control plane on the source first: one serving a SQLite source makes the copy
    /// fail at once (the database is in use). The target must be new or freshly initialised;
    /// anything else is refused, and it is written in one transaction, so a failed copy leaves
    /// it as it was. The copy is then read back and checked against the source.
    ///
    /// The whole store is held in memory while it is copied: about 1.5 GB per million keys.
    Copy(StoreCopyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct StoreCopyArgs {
    /// The store to copy: sqlite://PATH or postgres://… (not served by a running control plane).
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The store to copy into: sqlite://PATH (created if missing) or postgres://… (an existing,
    /// empty database).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Give the copy a new log id: for restoring a backup. Gateways then take a snapshot of it
    /// instead of resuming, so none keeps what happened after the backup was taken (without
    /// it, a gateway that applied more than the backup holds refuses the restored store).
    #[arg(long)]
    pub new_log_id: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Newest entries first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// Parses a humantime duration such as `2s`, `250ms`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("invalid duration {text:?}: {error}"))
}

fn parse_meta(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

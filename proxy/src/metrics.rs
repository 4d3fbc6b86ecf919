//! The gateway's Prometheus metrics (DESIGN.md, "Observability").
//!
//! Handles are registered once, when the gateway is built, with whatever recorder is installed
//! then; the request path only increments handles it already holds and never looks a metric
//! up by name. [`prometheus_builder`] gives the histogram buckets these metrics expect.

use keygate_proto::session::TimeRefusal;
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::sessions::SessionStateSizes;
use crate::verdict::Code;

/// Verifications by verdict code.
pub const VERIFICATIONS: &str = "keygate_verifications_total";
/// Time to reach a verdict, seconds (miss lookups included).
pub const VERIFY_DURATION: &str = "keygate_verify_duration_seconds";
/// Time until the upstream's response headers, seconds.
pub const UPSTREAM_DURATION: &str = "keygate_upstream_duration_seconds";
/// Forwarded requests the upstream did not answer, by reason (`unavailable`: 502, `timeout`:
/// 504, `busy`: 503, every connection in use).
pub const UPSTREAM_ERRORS: &str = "keygate_upstream_errors_total";
/// Keys in the replica.
pub const REPLICA_KEYS: &str = "keygate_replica_keys";
/// Revision the replica has applied.
pub const REPLICA_REVISION: &str = "keygate_replica_revision";
/// Seconds since the replica was last proven current (since start when never).
pub const STALENESS: &str = "keygate_staleness_seconds";
/// The configured propagation bound, seconds: past it the replica is stale (alert at a
/// fraction of it against [`STALENESS`]).
pub const PROPAGATION_BOUND: &str = "keygate_propagation_bound_seconds";
/// 1 while the sync stream is open.
pub const SYNC_CONNECTED: &str = "keygate_sync_connected";
/// Full snapshots installed.
pub const SNAPSHOTS: &str = "keygate_snapshots_total";
/// Control planes the sync client refused, by reason (`older_history`: the control plane
/// serves an older copy of the gateway's log, e.g. a restored backup). The control plane counts
/// the streams it refuses under the same name.
pub const SYNC_REFUSED: &str = "keygate_sync_refused_total";
/// Control-plane lookups of unknown keys, by result.
pub const MISS_LOOKUPS: &str = "keygate_miss_lookups_total";
/// Verifications of session tokens by verdict code (a subset of [`VERIFICATIONS`]).
pub const SESSION_VERIFICATIONS: &str = "keygate_session_verifications_total";
/// Lookups in the verified-session-signature cache, by result (`hit`, `miss`).
pub const SESSION_CACHE: &str = "keygate_session_cache_total";
/// Entries in the replicated session state, by set (`signing_keys`, `revoked_sessions`,
/// `revoked_passkeys`, `users`).
pub const SESSION_STATE: &str = "keygate_session_state_entries";
/// Session tokens with a valid signature refused (MALFORMED) for their times, by reason
/// (`issued_in_future`: more than the clock skew ahead; `longer_than_lifetime`: expiry − issue
/// beyond the signing key's maximum session lifetime).
pub const SESSION_TIME_REFUSALS: &str = "keygate_session_time_refusals_total";
/// Configuration reloads (SIGHUP), by result (`ok`, `error`: the old routes were kept).
pub const CONFIG_RELOADS: &str = "keygate_config_reload_total";
/// Unix time, seconds, of the last successful configuration load (start or reload).
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "keygate_config_last_reload_success_timestamp_seconds";

/// External-authorization checks (`/_keygate/v1/authz`) by answer code: a verdict code, or
/// `NO_AUTH` (allowed on an `auth = "none"` route), `BAD_REQUEST`, `INVALID_PATH`, `NO_ROUTE`,
/// `INTERNAL`. The verdicts are also counted in [`VERIFICATIONS`].
pub const AUTHZ_CHECKS: &str = "keygate_authz_checks_total";

/// Requests refused by a key's limits or permissions after a VALID verdict, by code
/// (`INSUFFICIENT_PERMISSIONS`, `USAGE_EXCEEDED`, `RATE_LIMITED`, `STALE`: credits that cannot
/// be proven).
pub const LIMIT_REFUSALS: &str = "keygate_limit_refusals_total";
/// Usage reports sent to the control plane (rate limits).
pub const USAGE_REPORTS: &str = "keygate_usage_reports_total";
/// Credit leases received from the control plane (a grant of 0 included).
pub const CREDIT_LEASES: &str = "keygate_credit_leases_total";

/// A `PrometheusBuilder` with buckets suited to the gateway's latency histograms (from 10 µs):
/// without buckets the exporter renders histograms as summaries.
pub fn prometheus_builder() -> PrometheusBuilder {
    const VERIFY_BUCKETS: &[f64] = &[
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1, 0.5,
        1.0,
    ];
    const UPSTREAM_BUCKETS: &[f64] = &[
        0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        30.0,
    ];
    let builder = PrometheusBuilder::new();
    let builder = builder
        .set_buckets_for_metric(Matcher::Full(VERIFY_DURATION.to_owned()), VERIFY_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new());
    builder
        .set_buckets_for_metric(
            Matcher::Full(UPSTREAM_DURATION.to_owned()),
            UPSTREAM_BUCKETS,
        )
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Why the upstream did not answer a forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamFailure {
    /// Not reachable, or closed the connection (502).
    Unavailable,
    /// No response headers within the response timeout (504).
    Timeout,
    /// Every connection to it in use (503).
    Busy,
}

/// Results of a miss lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LookupResult {
    /// The control plane knows the key.
    Found,
    /// The control plane does not know the key.
    Absent,
    /// The lookup failed or timed out.
    Error,
    /// Over the rate or concurrency limit: not asked.
    Limited,
}

/// Answers of the external-authorization endpoint that are not a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthzOutcome {
    /// Allowed without a credential: the route's `auth` is `none`.
    Unverified,
    /// The original URI or method headers are invalid, repeated or disagree.
    BadRequest,
    /// Path normalisation refused the original path.
    InvalidPath,
    /// No route serves the original path.
    NoRoute,
    /// The identity cannot be sent as headers.
    Internal,
}

/// Pre-registered handles.
#[derive(Clone)]
pub(crate) struct Metrics {
    verifications: [Counter; Code::ALL.len()],
    pub verify_duration: Histogram,
    pub upstream_duration: Histogram,
    /// Unavailable, timeout, busy.
    upstream_errors: [Counter; 3],
    pub replica_keys: Gauge,
    pub replica_revision: Gauge,
    pub staleness: Gauge,
    pub propagation_bound: Gauge,
    pub sync_connected: Gauge,
    pub snapshots: Counter,
    /// Control planes refused for serving an older copy of the gateway's log.
    pub sync_refused_older_history: Counter,
    lookups: [Counter; 4],
    session_verifications: [Counter; Code::ALL.len()],
    /// Hit, miss.
    session_cache: [Counter; 2],
    /// Signing keys, revoked sessions, revoked passkeys, users.
    session_state: [Gauge; 4],
    /// Issued in the future, longer than the lifetime.
    session_time_refusals: [Counter; 2],
    authz_checks: [Counter; Code::ALL.len()],
    /// In [`AuthzOutcome`] order.
    authz_other: [Counter; 5],
    /// Insufficient permissions, usage exceeded, rate limited, stale.
    limit_refusals: [Counter; 4],
    pub usage_reports: Counter,
    pub credit_leases: Counter,
}

impl Metrics {
    /// Registers every handle with the installed recorder (a no-op recorder when none is).
    pub fn register() -> Self {
        metrics::describe_counter!(VERIFICATIONS, "Verifications by verdict code");
        metrics::describe_counter!(AUTHZ_CHECKS, "External-authorization checks by answer code");
        metrics::describe_histogram!(VERIFY_DURATION, Unit::Seconds, "Time to reach a verdict");
        metrics::describe_histogram!(
            UPSTREAM_DURATION,
            Unit::Seconds,
            "Time until upstream response headers"
        );
        metrics::describe_counter!(
            UPSTREAM_ERRORS,
            "Forwarded requests the upstream did not answer, by reason"
        );
        metrics::describe_gauge!(REPLICA_KEYS, "Keys in the replica");
        metrics::describe_gauge!(REPLICA_REVISION, "Revision the replica has applied");
        metrics::describe_gauge!(
            STALENESS,
            Unit::Seconds,
            "Time since the replica was last proven current"
        );
        metrics::describe_gauge!(
            PROPAGATION_BOUND,
            Unit::Seconds,
            "The propagation bound: stale past this staleness"
        );
        metrics::describe_gauge!(SYNC_CONNECTED, "1 while the sync stream is open");
        metrics::describe_counter!(SNAPSHOTS, "Full snapshots installed");
        metrics::describe_counter!(
            SYNC_REFUSED,
            "Control planes the sync client refused, by reason"
        );
        metrics::describe_counter!(
            MISS_LOOKUPS,
            "Control-plane lookups of keys missing from the replica"
        );
        metrics::describe_counter!(
            SESSION_VERIFICATIONS,
            "Verifications of session tokens by verdict code"
        );
        metrics::describe_counter!(
            SESSION_CACHE,
            "Lookups in the verified session signature cache"
        );
        metrics::describe_gauge!(SESSION_STATE, "Entries in the replicated session state");
        metrics::describe_counter!(
            SESSION_TIME_REFUSALS,
            "Signed session tokens refused for their times, by reason"
        );
        metrics::describe_counter!(
            LIMIT_REFUSALS,
            "Requests refused by a key's limits or permissions, by code"
        );
        metrics::describe_counter!(USAGE_REPORTS, "Usage reports sent to the control plane");
        metrics::describe_counter!(
            CREDIT_LEASES,
            "Credit leases received from the control plane"
        );
        Self {
            verifications: Code::ALL
                .map(|code| metrics::counter!(VERIFICATIONS, "code" => code.as_str())),
            verify_duration: metrics::histogram!(VERIFY_DURATION),
            upstream_duration: metrics::histogram!(UPSTREAM_DURATION),
            upstream_errors: ["unavailable", "timeout", "busy"]
                .map(|reason| metrics::counter!(UPSTREAM_ERRORS, "reason" => reason)),
            replica_keys: metrics::gauge!(REPLICA_KEYS),
            replica_revision: metrics::gauge!(REPLICA_REVISION),
            staleness: metrics::gauge!(STALENESS),
            propagation_bound: metrics::gauge!(PROPAGATION_BOUND),
            sync_connected: metrics::gauge!(SYNC_CONNECTED),
            snapshots: metrics::counter!(SNAPSHOTS),
            sync_refused_older_history: metrics::counter!(SYNC_REFUSED, "reason" => "older_history"),
            lookups: ["found", "absent", "error", "limited"]
                .map(|result| metrics::counter!(MISS_LOOKUPS, "result" => result)),
            session_verifications: Code::ALL
                .map(|code| metrics::counter!(SESSION_VERIFICATIONS, "code" => code.as_str())),
            session_cache: ["hit", "miss"]
                .map(|result| metrics::counter!(SESSION_CACHE, "result" => result)),
            session_state: [
                "signing_keys",
                "revoked_sessions",
                "revoked_passkeys",
                "users",
            ]
            .map(|set| metrics::gauge!(SESSION_STATE, "set" => set)),
            session_time_refusals: [
                TimeRefusal::IssuedInFuture.reason(),
                TimeRefusal::LongerThanLifetime.reason(),
            ]
            .map(|reason| metrics::counter!(SESSION_TIME_REFUSALS, "reason" => reason)),
            authz_checks: Code::ALL
                .map(|code| metrics::counter!(AUTHZ_CHECKS, "code" => code.as_str())),
            authz_other: [
                "NO_AUTH",
                "BAD_REQUEST",
                "INVALID_PATH",
                "NO_ROUTE",
                "INTERNAL",
            ]
            .map(|code| metrics::counter!(AUTHZ_CHECKS, "code" => code)),
            limit_refusals: [
                Code::InsufficientPermissions,
                Code::UsageExceeded,
                Code::RateLimited,
                Code::Stale,
            ]
            .map(|code| metrics::counter!(LIMIT_REFUSALS, "code" => code.as_str())),
            usage_reports: metrics::counter!(USAGE_REPORTS),
            credit_leases: metrics::counter!(CREDIT_LEASES),
        }
    }

    /// Counts one request refused by a key's limits or permissions.
    pub fn limit_refused(&self, code: Code) {
        let index = match code {
            Code::InsufficientPermissions => 0,
            Code::UsageExceeded => 1,
            Code::RateLimited => 2,
            Code::Stale => 3,
            _ => return,
        };
        self.limit_refusals[index].increment(1);
    }

    /// Counts one external-authorization check answered with a verdict.
    pub fn authz_checked(&self, code: Code) {
        self.authz_checks[code as usize].increment(1);
    }

    /// Counts one external-authorization check answered without a verdict.
    pub fn authz_other(&self, outcome: AuthzOutcome) {
        self.authz_other[outcome as usize].increment(1);
    }

    /// Counts one verdict.
    #[inline]
    pub fn verified(&self, code: Code) {
        self.verifications[code as usize].increment(1);
    }

    /// Counts one forwarded request the upstream did not answer.
    pub fn upstream_failed(&self, error: UpstreamFailure) {
        self.upstream_errors[error as usize].increment(1);
    }

    /// Counts one miss lookup.
    pub fn looked_up(&self, result: LookupResult) {
        self.lookups[result as usize].increment(1);
    }

    /// Counts one verdict on a session token.
    #[inline]
    pub fn session_verified(&self, code: Code) {
        self.session_verifications[code as usize].increment(1);
    }

    /// Counts a signed session token refused for its times (an expired one is not counted
    /// here: EXPIRED says it all).
    pub fn session_time_refused(&self, refusal: TimeRefusal) {
        match refusal {
            TimeRefusal::IssuedInFuture => self.session_time_refusals[0].increment(1),
            TimeRefusal::LongerThanLifetime => self.session_time_refusals[1].increment(1),
            TimeRefusal::Expired => {}
        }
    }

    /// Counts one lookup in the session signature cache.
    #[inline]
    pub fn session_cache_lookup(&self, hit: bool) {
        self.session_cache[usize::from(!hit)].increment(1);
    }

    /// Publishes the session state's entry counts.
    pub fn set_session_state(&self, sizes: SessionStateSizes) {
        let [keys, sessions, passkeys, users] = &self.session_state;
        keys.set(sizes.signing_keys as f64);
        sessions.set(sizes.revoked_sessions as f64);
        passkeys.set(sizes.revoked_passkeys as f64);
        users.set(sizes.users as f64);
    }
}

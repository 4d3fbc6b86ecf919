//! The control plane's Prometheus metrics: names, help texts and the one place each is updated,
//! so the names in dashboards are spelled in exactly one file.

use std::time::Duration;

use keygate_proto::Revision;

use crate::store::LogBounds;

const HEAD_REVISION: &str = "keygate_cp_head_revision";
const CONNECTED_GATEWAYS: &str = "keygate_cp_connected_gateways";
const EVENTS_TOTAL: &str = "keygate_cp_events_total";
const PROPAGATION_SECONDS: &str = "keygate_cp_propagation_seconds";
const LOOKUPS_TOTAL: &str = "keygate_cp_lookups_total";
const OLDEST_RETAINED: &str = "keygate_cp_log_oldest_retained_revision";
const PONGS_WITHHELD: &str = "keygate_sync_pongs_withheld_total";
const SYNC_REFUSED: &str = "keygate_sync_refused_total";
const AUTH_FAILURES: &str = "keygate_auth_failures_total";
const AUTH_THROTTLED: &str = "keygate_auth_throttled_total";
const TOKEN_STREAMS_ENDED: &str = "keygate_sync_token_revoked_streams_total";
const LEASES_GRANTED: &str = "keygate_credit_leases_granted_total";
const CREDITS_LEASED: &str = "keygate_credits_leased_total";
const CREDITS_WRITTEN_OFF: &str = "keygate_credits_written_off_total";
const CREDITS_REFILLED: &str = "keygate_credit_refills_total";
const USAGE_UPDATES_PUSHED: &str = "keygate_usage_updates_pushed_total";

/// Adds the control plane's histogram buckets to a Prometheus builder (without buckets the
/// exporter renders histograms as summaries). Propagation is milliseconds in practice and
/// bounded by the gateways' propagation bound (60 s by default).
pub fn with_buckets(
    builder: metrics_exporter_prometheus::PrometheusBuilder,
) -> metrics_exporter_prometheus::PrometheusBuilder {
    const PROPAGATION_BUCKETS: &[f64] = &[
        0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 15.0, 60.0,
    ];
    builder
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(PROPAGATION_SECONDS.to_owned()),
            PROPAGATION_BUCKETS,
        )
        .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new())
}

/// Registers help texts with whatever recorder is installed.
pub fn describe() {
    metrics::describe_gauge!(HEAD_REVISION, "Last committed revision of the event log.");
    metrics::describe_gauge!(
        CONNECTED_GATEWAYS,
        "Gateways with an open sync stream to this control plane."
    );
    metrics::describe_counter!(EVENTS_TOTAL, "Events appended to the event log.");
    metrics::describe_histogram!(
        PROPAGATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from the commit of a revision to a gateway's ack of it."
    );
    metrics::describe_gauge!(
        OLDEST_RETAINED,
        "First revision the event log still holds; a gateway behind it resyncs by snapshot."
    );
    metrics::describe_counter!(
        PONGS_WITHHELD,
        "Pings left unanswered because the committed head could not be read from the store."
    );
    metrics::describe_counter!(
        SYNC_REFUSED,
        "Sync streams refused, by reason (no_client_certificate, certificate_without_name, \
         identity_mismatch, credential_mismatch, credential_in_use)."
    );
    metrics::describe_counter!(
        AUTH_FAILURES,
        "Failed authentications of gRPC calls, by service (admin, sync) and reason (missing, \
         invalid, wrong_service)."
    );
    metrics::describe_counter!(
        AUTH_THROTTLED,
        "gRPC calls refused unread because their address failed to authenticate too often, by \
         service."
    );
    metrics::describe_counter!(
        TOKEN_STREAMS_ENDED,
        "Sync streams ended because the gateway token they authenticated with was revoked."
    );
    metrics::describe_counter!(
        LEASES_GRANTED,
        "Credit leases granted to gateways (grants of at least one credit)."
    );
    metrics::describe_counter!(
        CREDITS_LEASED,
        "Credits leased to gateways (taken off balances; unspent ones come back by returns)."
    );
    metrics::describe_counter!(
        CREDITS_WRITTEN_OFF,
        "Credits of leases that never came back, counted as spent 30 s after the lease expired."
    );
    metrics::describe_counter!(
        CREDITS_REFILLED,
        "Credit balances refilled by their refill rule."
    );
    metrics::describe_counter!(
        USAGE_UPDATES_PUSHED,
        "Usage updates (what the other gateways used per rate-limit window) sent to gateways."
    );
    metrics::describe_counter!(
        LOOKUPS_TOTAL,
        "Point lookups of a key by hash from gateways, by result (found, absent)."
    );
}

pub(crate) fn head_revision(head: Revision) {
    // A gauge is an f64: exact up to 2^53 revisions, which no log reaches.
    metrics::gauge!(HEAD_REVISION).set(head.0 as f64);
}

pub(crate) fn log_bounds(bounds: LogBounds) {
    metrics::gauge!(OLDEST_RETAINED).set(bounds.oldest_retained.0 as f64);
}

pub(crate) fn events_committed(count: usize) {
    metrics::counter!(EVENTS_TOTAL).increment(count as u64);
}

pub(crate) fn connected_gateways(count: usize) {
    metrics::gauge!(CONNECTED_GATEWAYS).set(count as f64);
}

pub(crate) fn propagation(elapsed: Duration) {
    metrics::histogram!(PROPAGATION_SECONDS).record(elapsed.as_secs_f64());
}

pub(crate) fn pong_withheld() {
    metrics::counter!(PONGS_WITHHELD).increment(1);
}

pub(crate) fn lookup(found: bool) {
    let result = if found { "found" } else { "absent" };
    metrics::counter!(LOOKUPS_TOTAL, "result" => result).increment(1);
}

pub(crate) fn sync_refused(reason: &'static str) {
    metrics::counter!(SYNC_REFUSED, "reason" => reason).increment(1);
}

pub(crate) fn auth_failure(service: &'static str, reason: &'static str) {
    metrics::counter!(AUTH_FAILURES, "service" => service, "reason" => reason).increment(1);
}

pub(crate) fn auth_throttled(service: &'static str) {
    metrics::counter!(AUTH_THROTTLED, "service" => service).increment(1);
}

pub(crate) fn token_streams_ended(count: usize) {
    metrics::counter!(TOKEN_STREAMS_ENDED).increment(count as u64);
}

pub(crate) fn credit_lease_granted(credits: u64) {
    metrics::counter!(LEASES_GRANTED).increment(1);
    metrics::counter!(CREDITS_LEASED).increment(credits);
}

pub(crate) fn credits_written_off(credits: u64) {
    metrics::counter!(CREDITS_WRITTEN_OFF).increment(credits);
}

pub(crate) fn credits_refilled(holders: usize) {
    metrics::counter!(CREDITS_REFILLED).increment(holders as u64);
}

pub(crate) fn usage_update_pushed() {
    metrics::counter!(USAGE_UPDATES_PUSHED).increment(1);
}

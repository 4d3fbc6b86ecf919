//! The control plane's Prometheus metrics: names, help texts and the one place each is updated,
//! so the names in dashboards are spelled in exactly one file.

use std::time::Duration;

use keygate_proto::Revision;

const HEAD_REVISION: &str = "keygate_cp_head_revision";
const CONNECTED_GATEWAYS: &str = "keygate_cp_connected_gateways";
const EVENTS_TOTAL: &str = "keygate_cp_events_total";
const PROPAGATION_SECONDS: &str = "keygate_cp_propagation_seconds";
const LOOKUPS_TOTAL: &str = "keygate_cp_lookups_total";

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
    metrics::describe_counter!(
        LOOKUPS_TOTAL,
        "Point lookups of a key by hash from gateways, by result (found, absent)."
    );
}

pub(crate) fn head_revision(head: Revision) {
    // A gauge is an f64: exact up to 2^53 revisions, which no log reaches.
    metrics::gauge!(HEAD_REVISION).set(head.0 as f64);
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

pub(crate) fn lookup(found: bool) {
    let result = if found { "found" } else { "absent" };
    metrics::counter!(LOOKUPS_TOTAL, "result" => result).increment(1);
}

//! The gateway registry as the control-plane replicas publish it. Each replica keeps its own
//! streams in memory (`crate::registry`) and writes what it knows to the store, with its own
//! heartbeat, so that `keygate gateways` and `--wait` on any replica see every gateway of every
//! replica. A row whose replica stopped beating is a gateway that lost its control plane then.

use async_trait::async_trait;
use keygate_proto::Revision;

use super::StoreError;

/// One gateway as the replica serving its stream last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    pub gateway_id: String,
    /// The replica whose stream this is.
    pub replica_id: String,
    pub region: String,
    pub address: String,
    pub version: String,
    pub applied: Revision,
    pub last_seen_unix_ms: i64,
    /// When this stream opened. A row is only replaced by a stream that opened no earlier.
    pub connected_unix_ms: i64,
    /// When the stream ended; `None` while it is open.
    pub disconnected_unix_ms: Option<i64>,
    pub staleness_ms: Option<u64>,
    pub propagation_bound_ms: u64,
    pub stale_policy: String,
    /// What the stream authenticated with: "token:NAME", "certificate:ID" or "shared".
    pub credential: String,
}

/// A published row with the last heartbeat of the replica that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedGateway {
    pub record: GatewayRecord,
    pub replica_seen_unix_ms: i64,
}

/// The shared gateway registry.
#[async_trait]
pub trait GatewayStore: Send + Sync {
    /// Records the heartbeat of `replica_id` at `now_unix_ms` and upserts its gateways' rows,
    /// in one transaction. A row another replica wrote for a stream that opened later is kept.
    async fn publish_gateways(
        &self,
        replica_id: &str,
        now_unix_ms: i64,
        gateways: &[GatewayRecord],
    ) -> Result<(), StoreError>;

    /// Every published gateway, ordered by id.
    async fn list_gateways(&self) -> Result<Vec<PublishedGateway>, StoreError>;

    /// Deletes rows last written before `before_unix_ms` (gateways gone for good).
    async fn forget_gateways(&self, before_unix_ms: i64) -> Result<usize, StoreError>;

    /// A receiver that changes whenever any replica has published (PostgreSQL's NOTIFY), so a
    /// `--wait` reads the rows again at once; `None` when the store cannot tell (readers then
    /// poll).
    fn publications(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

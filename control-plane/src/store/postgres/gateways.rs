//! [`GatewayStore`] on PostgreSQL: the `gateways` rows every replica publishes and the
//! `replicas` heartbeats, so `keygate gateways` and `--wait` on any replica see every gateway
//! of every replica. After a publish the replica notifies [`GATEWAYS_CHANNEL`], so a `--wait`
//! on another replica can look again at once. Nothing here appends an event or an audit row:
//! the registry is not replicated state.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::postgres::PgRow;

use super::{GATEWAYS_CHANNEL, PgStore, backend, db_revision, get, revision_from_db};
use crate::store::{GatewayRecord, GatewayStore, PublishedGateway, StoreError};

/// A `gateways` row followed by its replica's last heartbeat.
fn published_from_row(row: &PgRow) -> Result<PublishedGateway, StoreError> {
    Ok(PublishedGateway {
        record: GatewayRecord {
            gateway_id: get(row, 0)?,
            replica_id: get(row, 1)?,
            region: get(row, 2)?,
            address: get(row, 3)?,
            version: get(row, 4)?,
            applied: revision_from_db(get(row, 5)?)?,
            last_seen_unix_ms: get(row, 6)?,
            connected_unix_ms: get(row, 7)?,
            disconnected_unix_ms: get(row, 8)?,
            staleness_ms: get::<Option<i64>>(row, 9)?.map(unsigned).transpose()?,
            propagation_bound_ms: unsigned(get(row, 10)?)?,
            stale_policy: get(row, 11)?,
            credential: get(row, 12)?,
        },
        replica_seen_unix_ms: get(row, 13)?,
    })
}

fn unsigned(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative duration {value}")))
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The gateway rows of one publish as column arrays (for one `UNNEST` upsert), one row per
/// gateway id (the latest stream if one is listed twice), in id order, so that replicas
/// publishing overlapping rows lock them in the same order and never deadlock.
#[derive(Default)]
struct Columns {
    gateway_id: Vec<String>,
    replica_id: Vec<String>,
    region: Vec<String>,
    address: Vec<String>,
    version: Vec<String>,
    applied: Vec<i64>,
    last_seen_ms: Vec<i64>,
    connected_ms: Vec<i64>,
    disconnected_ms: Vec<Option<i64>>,
    staleness_ms: Vec<Option<i64>>,
    propagation_bound_ms: Vec<i64>,
    stale_policy: Vec<String>,
    credential: Vec<String>,
}

impl Columns {
    fn new(gateways: &[GatewayRecord]) -> Self {
        let mut latest: BTreeMap<&str, &GatewayRecord> = BTreeMap::new();
        for gateway in gateways {
            let entry = latest.entry(&gateway.gateway_id).or_insert(gateway);
            if gateway.connected_unix_ms >= entry.connected_unix_ms {
                *entry = gateway;
            }
        }
        let mut columns = Self::default();
        for gateway in latest.into_values() {
            columns.gateway_id.push(gateway.gateway_id.clone());
            columns.replica_id.push(gateway.replica_id.clone());
            columns.region.push(gateway.region.clone());
            columns.address.push(gateway.address.clone());
            columns.version.push(gateway.version.clone());
            columns.applied.push(db_revision(gateway.applied));
            columns.last_seen_ms.push(gateway.last_seen_unix_ms);
            columns.connected_ms.push(gateway.connected_unix_ms);
            columns.disconnected_ms.push(gateway.disconnected_unix_ms);
            columns.staleness_ms.push(gateway.staleness_ms.map(signed));
            columns
                .propagation_bound_ms
                .push(signed(gateway.propagation_bound_ms));
            columns.stale_policy.push(gateway.stale_policy.clone());
            columns.credential.push(gateway.credential.clone());
        }
        columns
    }
}

#[async_trait]
impl GatewayStore for PgStore {
    fn publications(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.gateway_publications())
    }

    async fn publish_gateways(
        &self,
        replica_id: &str,
        now_unix_ms: i64,
        gateways: &[GatewayRecord],
    ) -> Result<(), StoreError> {
        let mut w = self.write_unlogged().await?;
        sqlx::query(
            "INSERT INTO replicas (replica_id, seen_ms) VALUES ($1, $2)
             ON CONFLICT (replica_id) DO UPDATE SET seen_ms = EXCLUDED.seen_ms",
        )
        .bind(replica_id)
        .bind(now_unix_ms)
        .execute(w.conn())
        .await
        .map_err(backend)?;
        if !gateways.is_empty() {
            let c = Columns::new(gateways);
            sqlx::query(
                "INSERT INTO gateways (gateway_id, replica_id, region, address, version,
                    applied, last_seen_ms, connected_ms, disconnected_ms, staleness_ms,
                    propagation_bound_ms, stale_policy, credential, updated_ms)
                 SELECT *, $14 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[],
                    $5::TEXT[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[],
                    $10::BIGINT[], $11::BIGINT[], $12::TEXT[], $13::TEXT[])
                 ON CONFLICT (gateway_id) DO UPDATE SET
                    replica_id = EXCLUDED.replica_id, region = EXCLUDED.region,
                    address = EXCLUDED.address, version = EXCLUDED.version,
                    applied = EXCLUDED.applied, last_seen_ms = EXCLUDED.last_seen_ms,
                    connected_ms = EXCLUDED.connected_ms,
                    disconnected_ms = EXCLUDED.disconnected_ms,
                    staleness_ms = EXCLUDED.staleness_ms,
                    propagation_bound_ms = EXCLUDED.propagation_bound_ms,
                    stale_policy = EXCLUDED.stale_policy, credential = EXCLUDED.credential,
                    updated_ms = EXCLUDED.updated_ms
                 -- A gateway that reconnected elsewhere has a newer stream there: the row of
                 -- an older stream (one replica still reporting it lost) must not replace it.
                 -- Ties go to the writer: the same stream, reported again.
                 WHERE gateways.connected_ms <= EXCLUDED.connected_ms",
            )
            .bind(c.gateway_id)
            .bind(c.replica_id)
            .bind(c.region)
            .bind(c.address)
            .bind(c.version)
            .bind(c.applied)
            .bind(c.last_seen_ms)
            .bind(c.connected_ms)
            .bind(c.disconnected_ms)
            .bind(c.staleness_ms)
            .bind(c.propagation_bound_ms)
            .bind(c.stale_policy)
            .bind(c.credential)
            .bind(now_unix_ms)
            .execute(w.conn())
            .await
            .map_err(backend)?;
        }
        // Delivered when the transaction commits, to every replica listening.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(GATEWAYS_CHANNEL)
            .bind(replica_id)
            .execute(w.conn())
            .await
            .map_err(backend)?;
        w.commit().await
    }

    async fn list_gateways(&self) -> Result<Vec<PublishedGateway>, StoreError> {
        sqlx::query(
            // A row whose replica never beat (or was removed by hand) reads as seen at 0: long
            // ago, so the reader treats its stream as lost.
            "SELECT g.gateway_id, g.replica_id, g.region, g.address, g.version, g.applied,
                g.last_seen_ms, g.connected_ms, g.disconnected_ms, g.staleness_ms,
                g.propagation_bound_ms, g.stale_policy, g.credential, COALESCE(r.seen_ms, 0)
             FROM gateways g LEFT JOIN replicas r ON r.replica_id = g.replica_id
             ORDER BY g.gateway_id",
        )
        .fetch_all(self.pool())
        .await
        .map_err(backend)?
        .iter()
        .map(published_from_row)
        .collect()
    }

    async fn forget_gateways(&self, before_unix_ms: i64) -> Result<usize, StoreError> {
        let done = sqlx::query("DELETE FROM gateways WHERE updated_ms < $1")
            .bind(before_unix_ms)
            .execute(self.pool())
            .await
            .map_err(backend)?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }
}

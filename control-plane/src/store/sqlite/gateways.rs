//! [`GatewayStore`] on SQLite: the `gateways` rows replicas publish and the `replicas`
//! heartbeats. On SQLite there is only one replica, but the rows are the same as on
//! PostgreSQL, so `keygate gateways` reads them the same way and a copied store carries them.
//! Nothing here appends an event or an audit row: the registry is not replicated state.

use async_trait::async_trait;
use keygate_proto::Revision;
use rusqlite::{Row, params};

use super::{SqliteStore, backend, collect};
use crate::store::{GatewayRecord, GatewayStore, PublishedGateway, StoreError};

const GATEWAY_COLUMNS: &str = "gateway_id, replica_id, region, address, version, applied,
    last_seen_ms, connected_ms, disconnected_ms, staleness_ms, propagation_bound_ms,
    stale_policy, credential";

/// A `gateways` row (as [`GATEWAY_COLUMNS`], each prefixed `g.`) followed by its replica's
/// last heartbeat.
fn published_from_row(row: &Row<'_>) -> rusqlite::Result<PublishedGateway> {
    Ok(PublishedGateway {
        record: GatewayRecord {
            gateway_id: row.get(0)?,
            replica_id: row.get(1)?,
            region: row.get(2)?,
            address: row.get(3)?,
            version: row.get(4)?,
            applied: Revision(row.get(5)?),
            last_seen_unix_ms: row.get(6)?,
            connected_unix_ms: row.get(7)?,
            disconnected_unix_ms: row.get(8)?,
            staleness_ms: row.get(9)?,
            propagation_bound_ms: row.get(10)?,
            stale_policy: row.get(11)?,
            credential: row.get(12)?,
        },
        replica_seen_unix_ms: row.get(13)?,
    })
}

#[async_trait]
impl GatewayStore for SqliteStore {
    async fn publish_gateways(
        &self,
        replica_id: &str,
        now_unix_ms: i64,
        gateways: &[GatewayRecord],
    ) -> Result<(), StoreError> {
        let replica_id = replica_id.to_owned();
        let gateways = gateways.to_vec();
        self.write(move |w| {
            w.tx.execute(
                "INSERT INTO replicas (replica_id, seen_ms) VALUES (?1, ?2)
                 ON CONFLICT (replica_id) DO UPDATE SET seen_ms = excluded.seen_ms",
                params![replica_id, now_unix_ms],
            )
            .map_err(backend)?;
            let mut upsert =
                w.tx.prepare_cached(&format!(
                    "INSERT INTO gateways ({GATEWAY_COLUMNS}, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (gateway_id) DO UPDATE SET
                        replica_id = excluded.replica_id, region = excluded.region,
                        address = excluded.address, version = excluded.version,
                        applied = excluded.applied, last_seen_ms = excluded.last_seen_ms,
                        connected_ms = excluded.connected_ms,
                        disconnected_ms = excluded.disconnected_ms,
                        staleness_ms = excluded.staleness_ms,
                        propagation_bound_ms = excluded.propagation_bound_ms,
                        stale_policy = excluded.stale_policy, credential = excluded.credential,
                        updated_ms = excluded.updated_ms
                     -- A gateway that reconnected elsewhere has a newer stream there: the
                     -- row of an older stream (one replica still reporting it lost) must not
                     -- replace it. Ties go to the writer: the same stream, reported again.
                     WHERE excluded.connected_ms >= gateways.connected_ms"
                ))
                .map_err(backend)?;
            for gateway in &gateways {
                upsert
                    .execute(params![
                        gateway.gateway_id,
                        gateway.replica_id,
                        gateway.region,
                        gateway.address,
                        gateway.version,
                        gateway.applied.0,
                        gateway.last_seen_unix_ms,
                        gateway.connected_unix_ms,
                        gateway.disconnected_unix_ms,
                        gateway.staleness_ms,
                        gateway.propagation_bound_ms,
                        gateway.stale_policy,
                        gateway.credential,
                        now_unix_ms,
                    ])
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_gateways(&self) -> Result<Vec<PublishedGateway>, StoreError> {
        self.read(|tx| {
            collect(
                tx,
                // A row whose replica never beat (or was removed by hand) reads as seen at 0:
                // long ago, so the reader treats its stream as lost.
                "SELECT g.gateway_id, g.replica_id, g.region, g.address, g.version, g.applied,
                    g.last_seen_ms, g.connected_ms, g.disconnected_ms, g.staleness_ms,
                    g.propagation_bound_ms, g.stale_policy, g.credential, COALESCE(r.seen_ms, 0)
                 FROM gateways g LEFT JOIN replicas r ON r.replica_id = g.replica_id
                 ORDER BY g.gateway_id",
                [],
                published_from_row,
            )
        })
        .await
    }

    async fn forget_gateways(&self, before_unix_ms: i64) -> Result<usize, StoreError> {
        self.write(move |w| {
            w.tx.execute(
                "DELETE FROM gateways WHERE updated_ms < ?1",
                params![before_unix_ms],
            )
            .map_err(backend)
        })
        .await
    }
}

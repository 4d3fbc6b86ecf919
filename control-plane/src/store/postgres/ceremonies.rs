//! [`CeremonyStore`] on PostgreSQL: the `ceremonies` table, shared by every replica, so a
//! ceremony begun on one can finish on another. A take is one `DELETE … RETURNING`: of two
//! finishes for the same ceremony, on one replica or two, the second waits for the first's
//! row lock and then finds nothing. Ceremonies append no event and no audit row. A client's
//! open ceremonies are counted with the `ceremonies_by_client (client, expires_ms)` index,
//! under the same lock as the table's count, so neither cap can be overrun by replicas
//! putting at once.

use async_trait::async_trait;
use sqlx::postgres::PgConnection;

use super::{PgStore, backend, get};
use crate::store::{
    CeremonyLimits, CeremonyPut, CeremonyStore, CeremonyTaken, NewCeremony, StoreError,
};

/// The transaction-scoped advisory lock that serializes puts across replicas, so the table
/// never holds more than `capacity` rows however many replicas add at once. (Any fixed
/// number; sqlx's migration lock is derived from the database name and is another.)
const PUT_LOCK: i64 = 0x6b67_6365_7265_6d6f; // "kgceremo"

/// Deletes the ceremonies expired at `now` (`expires_ms <= now`, as
/// [`CeremonyStore::take_ceremony`] judges them); returns how many.
pub(super) async fn delete_expired(
    conn: &mut PgConnection,
    now_unix_ms: i64,
) -> Result<usize, StoreError> {
    let done = sqlx::query("DELETE FROM ceremonies WHERE expires_ms <= $1")
        .bind(now_unix_ms)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
}

async fn count(conn: &mut PgConnection) -> Result<usize, StoreError> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ceremonies")
        .fetch_one(conn)
        .await
        .map_err(backend)?;
    Ok(usize::try_from(count).unwrap_or(usize::MAX))
}

/// How many unexpired ceremonies `client` has open, and when the first of them expires.
async fn count_of_client(
    conn: &mut PgConnection,
    client: &str,
    now_unix_ms: i64,
) -> Result<(usize, Option<i64>), StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*), MIN(expires_ms) FROM ceremonies WHERE client = $1 AND expires_ms > $2",
    )
    .bind(client)
    .bind(now_unix_ms)
    .fetch_one(conn)
    .await
    .map_err(backend)?;
    let open: i64 = get(&row, 0)?;
    Ok((usize::try_from(open).unwrap_or(usize::MAX), get(&row, 1)?))
}

#[async_trait]
impl CeremonyStore for PgStore {
    async fn put_ceremony(
        &self,
        ceremony: NewCeremony,
        limits: CeremonyLimits,
        now_unix_ms: i64,
    ) -> Result<CeremonyPut, StoreError> {
        let mut w = self.write_unlogged().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PUT_LOCK)
            .execute(w.conn())
            .await
            .map_err(backend)?;
        if limits.per_client > 0 {
            let (open, first_expiry) =
                count_of_client(w.conn(), &ceremony.client, now_unix_ms).await?;
            if open >= limits.per_client {
                w.commit().await?;
                return Ok(CeremonyPut::ClientFull {
                    next_expiry_unix_ms: first_expiry.unwrap_or(now_unix_ms),
                });
            }
        }
        // Expired rows are deleted only when they stand in the way: the common case is two
        // COUNTs and one INSERT, and the table never holds more than `capacity` rows.
        if count(w.conn()).await? >= limits.capacity {
            delete_expired(w.conn(), now_unix_ms).await?;
            if count(w.conn()).await? >= limits.capacity {
                // Keep the deletions: they were due anyway.
                w.commit().await?;
                return Ok(CeremonyPut::Full);
            }
        }
        sqlx::query(
            "INSERT INTO ceremonies (ceremony_id, state_json, expires_ms, client)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&ceremony.ceremony_id)
        .bind(&ceremony.state_json)
        .bind(ceremony.expires_unix_ms)
        .bind(&ceremony.client)
        .execute(w.conn())
        .await
        .map_err(backend)?;
        w.commit().await?;
        Ok(CeremonyPut::Kept)
    }

    async fn take_ceremony(
        &self,
        ceremony_id: &str,
        now_unix_ms: i64,
    ) -> Result<CeremonyTaken, StoreError> {
        let taken = sqlx::query(
            "DELETE FROM ceremonies WHERE ceremony_id = $1 RETURNING state_json, expires_ms",
        )
        .bind(ceremony_id)
        .fetch_optional(self.pool())
        .await
        .map_err(backend)?
        .map(|row| Ok::<_, StoreError>((get(&row, 0)?, get(&row, 1)?)))
        .transpose()?;
        Ok(CeremonyTaken::at(now_unix_ms, taken))
    }
}

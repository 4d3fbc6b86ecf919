//! [`CeremonyStore`] on SQLite: the `ceremonies` table. Writes go through the single writer,
//! so a take is one transaction that deletes the row and returns it: of two finishes for the
//! same ceremony only one finds it. Ceremonies append no event and no audit row. A client's
//! open ceremonies are counted with the `ceremonies_by_client (client, expires_ms)` index.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params};

use super::{SqliteStore, backend};
use crate::store::{
    CeremonyLimits, CeremonyPut, CeremonyStore, CeremonyTaken, NewCeremony, StoreError,
};

/// Deletes the ceremonies expired at `now` (`expires_ms <= now`, as [`CeremonyStore::take_ceremony`]
/// judges them); returns how many.
pub(super) fn delete_expired(tx: &Transaction<'_>, now_unix_ms: i64) -> Result<usize, StoreError> {
    tx.execute(
        "DELETE FROM ceremonies WHERE expires_ms <= ?1",
        params![now_unix_ms],
    )
    .map_err(backend)
}

fn count(tx: &Transaction<'_>) -> Result<usize, StoreError> {
    tx.query_row("SELECT COUNT(*) FROM ceremonies", [], |row| row.get(0))
        .map_err(backend)
}

/// How many unexpired ceremonies `client` has open, and when the first of them expires.
fn count_of_client(
    tx: &Transaction<'_>,
    client: &str,
    now_unix_ms: i64,
) -> Result<(usize, Option<i64>), StoreError> {
    tx.query_row(
        "SELECT COUNT(*), MIN(expires_ms) FROM ceremonies WHERE client = ?1 AND expires_ms > ?2",
        params![client, now_unix_ms],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(backend)
}

#[async_trait]
impl CeremonyStore for SqliteStore {
    async fn put_ceremony(
        &self,
        ceremony: NewCeremony,
        limits: CeremonyLimits,
        now_unix_ms: i64,
    ) -> Result<CeremonyPut, StoreError> {
        self.write(move |w| {
            if limits.per_client > 0 {
                let (open, first_expiry) = count_of_client(w.tx, &ceremony.client, now_unix_ms)?;
                if open >= limits.per_client {
                    return Ok(CeremonyPut::ClientFull {
                        next_expiry_unix_ms: first_expiry.unwrap_or(now_unix_ms),
                    });
                }
            }
            // Expired rows are deleted only when they stand in the way, as the in-memory map
            // did: the common case is two COUNTs and one INSERT, and the table never holds
            // more than `capacity` rows.
            if count(w.tx)? >= limits.capacity {
                delete_expired(w.tx, now_unix_ms)?;
                if count(w.tx)? >= limits.capacity {
                    return Ok(CeremonyPut::Full);
                }
            }
            w.tx.execute(
                "INSERT INTO ceremonies (ceremony_id, state_json, expires_ms, client)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    ceremony.ceremony_id,
                    ceremony.state_json,
                    ceremony.expires_unix_ms,
                    ceremony.client
                ],
            )
            .map_err(backend)?;
            Ok(CeremonyPut::Kept)
        })
        .await
    }

    async fn take_ceremony(
        &self,
        ceremony_id: &str,
        now_unix_ms: i64,
    ) -> Result<CeremonyTaken, StoreError> {
        let ceremony_id = ceremony_id.to_owned();
        self.write(move |w| {
            let taken: Option<(String, i64)> =
                w.tx.query_row(
                    "DELETE FROM ceremonies WHERE ceremony_id = ?1
                     RETURNING state_json, expires_ms",
                    params![ceremony_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            Ok(CeremonyTaken::at(now_unix_ms, taken))
        })
        .await
    }
}

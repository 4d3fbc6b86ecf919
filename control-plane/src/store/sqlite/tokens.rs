//! [`TokenStore`] on SQLite: the `operator_tokens` table (hashes only). Changes go through the
//! writer for their audit row; none appends an event.

use async_trait::async_trait;
use keygate_proto::Revision;
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::{SqliteStore, backend, collect, corrupt, execute};
use crate::store::tokens::{join_scopes, split_scopes};
use crate::store::{NewToken, OperatorTokenRecord, StoreError, TokenCreated, TokenStore};

pub(super) const TOKEN_COLUMNS: &str =
    "name, token_hash, scopes, gateway_id, created_ms, created_by";

pub(super) fn token_from_row(row: &Row<'_>) -> rusqlite::Result<OperatorTokenRecord> {
    let hash: Vec<u8> = row.get(1)?;
    let scopes: String = row.get(2)?;
    Ok(OperatorTokenRecord {
        name: row.get(0)?,
        token_hash: hash.try_into().map_err(|_| corrupt("token hash"))?,
        scopes: split_scopes(&scopes),
        gateway_id: row.get(3)?,
        created_unix_ms: row.get(4)?,
        created_by: row.get(5)?,
    })
}

/// Inserts `token` as it is (a new token, or a copy).
pub(super) fn insert_token(
    tx: &Transaction<'_>,
    token: &OperatorTokenRecord,
) -> Result<(), StoreError> {
    execute(
        tx,
        &format!("INSERT INTO operator_tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
        params![
            token.name,
            &token.token_hash[..],
            join_scopes(&token.scopes),
            token.gateway_id,
            token.created_unix_ms,
            token.created_by
        ],
    )
}

fn token_by(
    tx: &Transaction<'_>,
    column: &str,
    value: &dyn rusqlite::ToSql,
) -> Result<Option<OperatorTokenRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {TOKEN_COLUMNS} FROM operator_tokens WHERE {column} = ?1"),
        [value],
        token_from_row,
    )
    .optional()
    .map_err(backend)
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(&self, token: NewToken, actor: &str) -> Result<TokenCreated, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            if token_by(w.tx, "name", &token.name)?.is_some() {
                return Ok(TokenCreated::AlreadyExists);
            }
            let record = token.into_record(w.now_unix_ms, &actor);
            insert_token(w.tx, &record)?;
            w.audit(&actor, Revision::ZERO, &record.created_audit())?;
            Ok(TokenCreated::Created(record))
        })
        .await
    }

    async fn token_by_hash(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        self.read(move |tx| token_by(tx, "token_hash", &&token_hash[..]))
            .await
    }

    async fn list_tokens(&self) -> Result<Vec<OperatorTokenRecord>, StoreError> {
        self.read(|tx| {
            collect(
                tx,
                &format!("SELECT {TOKEN_COLUMNS} FROM operator_tokens ORDER BY name"),
                [],
                token_from_row,
            )
        })
        .await
    }

    async fn revoke_token(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        let (name, actor) = (name.to_owned(), actor.to_owned());
        self.write(move |w| {
            let Some(record) = token_by(w.tx, "name", &name)? else {
                return Ok(None);
            };
            w.tx.execute("DELETE FROM operator_tokens WHERE name = ?1", params![name])
                .map_err(backend)?;
            w.audit(&actor, Revision::ZERO, &record.revoked_audit())?;
            Ok(Some(record))
        })
        .await
    }
}

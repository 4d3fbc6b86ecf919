//! [`TokenStore`] on PostgreSQL: the `operator_tokens` table (hashes only). No change appends
//! an event, so none takes the log lock; of two creates of one name (on any replicas) the
//! primary key lets exactly one insert.

use async_trait::async_trait;
use keygate_proto::Revision;
use sqlx::postgres::PgRow;

use super::{PgStore, array, backend, get};
use crate::store::tokens::{join_scopes, split_scopes};
use crate::store::{NewToken, OperatorTokenRecord, StoreError, TokenCreated, TokenStore};

/// The token columns, in [`token_from_row`]'s order.
macro_rules! token_columns {
    () => {
        "name, token_hash, scopes, gateway_id, created_ms, created_by"
    };
}
pub(super) use token_columns;

pub(super) fn token_from_row(row: &PgRow) -> Result<OperatorTokenRecord, StoreError> {
    let scopes: String = get(row, 2)?;
    Ok(OperatorTokenRecord {
        name: get(row, 0)?,
        token_hash: array(get(row, 1)?, "token hash")?,
        scopes: split_scopes(&scopes),
        gateway_id: get(row, 3)?,
        created_unix_ms: get(row, 4)?,
        created_by: get(row, 5)?,
    })
}

#[async_trait]
impl TokenStore for PgStore {
    async fn create_token(&self, token: NewToken, actor: &str) -> Result<TokenCreated, StoreError> {
        let mut w = self.write_unlogged().await?;
        let record = token.into_record(w.now().await?, actor);
        let inserted = sqlx::query(concat!(
            "INSERT INTO operator_tokens (",
            token_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING"
        ))
        .bind(&record.name)
        .bind(&record.token_hash[..])
        .bind(join_scopes(&record.scopes))
        .bind(&record.gateway_id)
        .bind(record.created_unix_ms)
        .bind(&record.created_by)
        .execute(w.conn())
        .await
        .map_err(backend)?;
        if inserted.rows_affected() == 0 {
            return Ok(TokenCreated::AlreadyExists);
        }
        w.audit(actor, Revision::ZERO, &record.created_audit())
            .await?;
        w.commit().await?;
        Ok(TokenCreated::Created(record))
    }

    async fn token_by_hash(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM operator_tokens WHERE token_hash = $1"
        ))
        .bind(&token_hash[..])
        .fetch_optional(self.pool())
        .await
        .map_err(backend)?
        .as_ref()
        .map(token_from_row)
        .transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<OperatorTokenRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM operator_tokens ORDER BY name"
        ))
        .fetch_all(self.pool())
        .await
        .map_err(backend)?
        .iter()
        .map(token_from_row)
        .collect()
    }

    async fn revoke_token(
        &self,
        name: &str,
        actor: &str,
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        let mut w = self.write_unlogged().await?;
        let Some(record) = sqlx::query(concat!(
            "DELETE FROM operator_tokens WHERE name = $1 RETURNING ",
            token_columns!()
        ))
        .bind(name)
        .fetch_optional(w.conn())
        .await
        .map_err(backend)?
        .as_ref()
        .map(token_from_row)
        .transpose()?
        else {
            return Ok(None);
        };
        w.audit(actor, Revision::ZERO, &record.revoked_audit())
            .await?;
        w.commit().await?;
        Ok(Some(record))
    }
}

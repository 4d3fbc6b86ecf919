//! [`LimitStore`] on PostgreSQL: the `identities`, `credits` and `credit_leases` tables, shared
//! by every replica.
//!
//! Identity changes and anything that appends an event (setting credits, refills) take the
//! log lock, as every replicated write does. Leases, returns and write-offs append nothing and
//! do not take it: what keeps them race-free across replicas is the balance's row lock. Every
//! change to a balance first locks its `credits` row (`SELECT … FOR UPDATE`) and only then
//! reads what it holds and what its leases hold, so two grants from one balance are
//! serialized and never take more than it has (the credits invariant, `store/limits.rs`).
//! Lease rows are locked after their balance's row, several at once in lease id order, so
//! these writes cannot deadlock one another.

use async_trait::async_trait;
use keygate_proto::{Change, Holder, Identity, KeyId, RefillSpec, Revision};
use sqlx::postgres::{PgConnection, PgRow};

use super::log::Writer;
use super::{
    PgStore, amount_from_db, backend, db_amount, db_limit, db_revision, get, revision_from_db,
};
use crate::store::event_codec::{ratelimits_from_column, ratelimits_to_column};
use crate::store::limits::{
    CreditsOutcome, credits_after, identity_deleted_audit, implicit_identity, lease_grant,
    refill_audit, refilled,
};
use crate::store::{
    CreditState, CreditsChange, IdentityRecord, IdentityUpdate, KeyRecord, LeaseGranted,
    LimitStore, LimitsUpdate, NewIdentity, NewLease, RefillChange, StoreError, UsageRow,
};

/// How often a return looks again for a lease that moved to another holder (a reroll) between
/// reading its holder and locking that holder's balance.
const RETURN_ATTEMPTS: usize = 5;

/// A balance beside what it belongs to: the columns of `credits` (`NULL`s without a row) and
/// what its leases hold. Read by [`credits_from_row`].
macro_rules! credit_columns {
    () => {
        "credits.remaining, credits.refill_amount, credits.refill_interval_ms, \
         credits.next_refill_ms, (SELECT COALESCE(SUM(amount), 0)::BIGINT FROM credit_leases \
         WHERE credit_leases.holder = credits.holder)"
    };
}
pub(super) use credit_columns;

/// The balance in `credit_columns!` starting at column `at`; `None` without a row.
pub(super) fn credits_from_row(row: &PgRow, at: usize) -> Result<Option<CreditState>, StoreError> {
    let Some(remaining) = get::<Option<i64>>(row, at)? else {
        return Ok(None);
    };
    let amount: Option<i64> = get(row, at + 1)?;
    let interval_ms: Option<i64> = get(row, at + 2)?;
    let refill = match amount.zip(interval_ms) {
        Some((amount, interval_ms)) => Some(RefillSpec {
            amount: amount_from_db(amount)?,
            interval_ms: amount_from_db(interval_ms)?,
        }),
        None => None,
    };
    Ok(Some(CreditState {
        remaining: amount_from_db(remaining)?,
        leased: amount_from_db(get(row, at + 4)?)?,
        refill,
        next_refill_unix_ms: get(row, at + 3)?,
    }))
}

macro_rules! identity_columns {
    () => {
        "identity_id, ratelimits_json, created_ms, revision"
    };
}

/// Identities with their balances (`identity_columns!`, then `credit_columns!`).
macro_rules! identities_with_credits {
    () => {
        concat!(
            "SELECT ",
            identity_columns!(),
            ", ",
            credit_columns!(),
            " FROM identities
             LEFT JOIN credits ON credits.holder = 'identity:' || identities.identity_id"
        )
    };
}

fn identity_from_row(row: &PgRow) -> Result<IdentityRecord, StoreError> {
    let ratelimits: String = get(row, 1)?;
    Ok(IdentityRecord {
        id: get(row, 0)?,
        ratelimits: ratelimits_from_column(&ratelimits)?,
        credits: credits_from_row(row, 4)?,
        created_unix_ms: get(row, 2)?,
        revision: revision_from_db(get(row, 3)?)?,
    })
}

async fn get_identity(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<IdentityRecord>, StoreError> {
    sqlx::query(concat!(
        identities_with_credits!(),
        " WHERE identity_id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(backend)?
    .as_ref()
    .map(identity_from_row)
    .transpose()
}

/// Every identity as gateways replicate it (a snapshot reads it beside the keys).
pub(super) async fn replica_identities(
    conn: &mut PgConnection,
) -> Result<Vec<Identity>, StoreError> {
    sqlx::query(concat!(identities_with_credits!(), " ORDER BY identity_id"))
        .fetch_all(conn)
        .await
        .map_err(backend)?
        .iter()
        .map(|row| identity_from_row(row).map(|identity| identity.replica()))
        .collect()
}

/// Every identity, without balances (a copy carries those as `credits` rows).
pub(super) async fn export_identities(
    conn: &mut PgConnection,
) -> Result<Vec<IdentityRecord>, StoreError> {
    sqlx::query(concat!(
        "SELECT ",
        identity_columns!(),
        ", NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, NULL::BIGINT, 0::BIGINT
         FROM identities ORDER BY identity_id"
    ))
    .fetch_all(conn)
    .await
    .map_err(backend)?
    .iter()
    .map(identity_from_row)
    .collect()
}

/// Every balance, by holder, as stored (leases are not copied: `leased` is 0).
pub(super) async fn export_credits(
    conn: &mut PgConnection,
) -> Result<Vec<(Holder, CreditState)>, StoreError> {
    sqlx::query(
        "SELECT holder, remaining, refill_amount, refill_interval_ms, next_refill_ms, 0::BIGINT
         FROM credits ORDER BY holder",
    )
    .fetch_all(conn)
    .await
    .map_err(backend)?
    .iter()
    .map(|row| {
        let holder: String = get(row, 0)?;
        let holder = holder
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("credit holder {holder:?}: {e}")))?;
        let state = credits_from_row(row, 1)?
            .ok_or_else(|| StoreError::Corrupt("a balance without credits".into()))?;
        Ok((holder, state))
    })
    .collect()
}

/// Inserts identities as they are (a copy).
pub(super) async fn import_identities(
    conn: &mut PgConnection,
    identities: &[IdentityRecord],
) -> Result<(), StoreError> {
    let ratelimits = identities
        .iter()
        .map(|identity| ratelimits_to_column(&identity.ratelimits))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "INSERT INTO identities (identity_id, ratelimits_json, created_ms, revision)
         SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[])",
    )
    .bind(identities.iter().map(|i| i.id.clone()).collect::<Vec<_>>())
    .bind(ratelimits)
    .bind(
        identities
            .iter()
            .map(|i| i.created_unix_ms)
            .collect::<Vec<_>>(),
    )
    .bind(
        identities
            .iter()
            .map(|i| db_revision(i.revision))
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await
    .map_err(backend)?;
    Ok(())
}

async fn insert_identity(
    conn: &mut PgConnection,
    identity: &IdentityRecord,
) -> Result<(), StoreError> {
    import_identities(conn, std::slice::from_ref(identity)).await
}

/// Writes a holder's balance (its leases are rows of their own).
pub(super) async fn insert_credits(
    conn: &mut PgConnection,
    holder: &Holder,
    state: &CreditState,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO credits (holder, remaining, refill_amount, refill_interval_ms,
            next_refill_ms)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (holder) DO UPDATE SET remaining = excluded.remaining,
            refill_amount = excluded.refill_amount,
            refill_interval_ms = excluded.refill_interval_ms,
            next_refill_ms = excluded.next_refill_ms",
    )
    .bind(holder.to_string())
    .bind(db_amount(state.remaining))
    .bind(state.refill.map(|refill| db_amount(refill.amount)))
    .bind(state.refill.map(|refill| db_amount(refill.interval_ms)))
    .bind(state.next_refill_unix_ms)
    .execute(conn)
    .await
    .map_err(backend)?;
    Ok(())
}

/// Locks a holder's balance row until the transaction ends; its remaining credits, `None`
/// without a row.
pub(super) async fn lock_credits(
    conn: &mut PgConnection,
    holder: &str,
) -> Result<Option<u64>, StoreError> {
    let remaining: Option<i64> =
        sqlx::query_scalar("SELECT remaining FROM credits WHERE holder = $1 FOR UPDATE")
            .bind(holder)
            .fetch_optional(conn)
            .await
            .map_err(backend)?;
    remaining.map(amount_from_db).transpose()
}

/// A holder's balance, locked first.
async fn locked_credit_state(
    conn: &mut PgConnection,
    holder: &Holder,
) -> Result<Option<CreditState>, StoreError> {
    if lock_credits(conn, &holder.to_string()).await?.is_none() {
        return Ok(None);
    }
    credit_state(conn, holder).await
}

async fn credit_state(
    conn: &mut PgConnection,
    holder: &Holder,
) -> Result<Option<CreditState>, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        credit_columns!(),
        " FROM credits WHERE holder = $1"
    ))
    .bind(holder.to_string())
    .fetch_optional(conn)
    .await
    .map_err(backend)?;
    match row {
        Some(row) => credits_from_row(&row, 0),
        None => Ok(None),
    }
}

/// Drops a holder's balance and its leases (the balance's row locked first).
pub(super) async fn delete_credits(
    conn: &mut PgConnection,
    holder: &Holder,
) -> Result<(), StoreError> {
    let holder = holder.to_string();
    lock_credits(conn, &holder).await?;
    sqlx::query(
        "DELETE FROM credit_leases WHERE lease_id IN (
            SELECT lease_id FROM credit_leases WHERE holder = $1 ORDER BY lease_id FOR UPDATE)",
    )
    .bind(&holder)
    .execute(&mut *conn)
    .await
    .map_err(backend)?;
    sqlx::query("DELETE FROM credits WHERE holder = $1")
        .bind(&holder)
        .execute(conn)
        .await
        .map_err(backend)?;
    Ok(())
}

impl Writer<'_> {
    /// Creates identity `id` without limits unless it exists, appending its
    /// `IdentityUpserted`. Identities change only under the log lock, which this write holds.
    pub(super) async fn ensure_identity(
        &mut self,
        id: &str,
        now_unix_ms: i64,
    ) -> Result<(), StoreError> {
        if get_identity(self.conn(), id).await?.is_some() {
            return Ok(());
        }
        let identity = implicit_identity(id, now_unix_ms).into_record(self.next_revision()?);
        insert_identity(self.conn(), &identity).await?;
        self.append(&Change::IdentityUpserted(identity.replica()))?;
        Ok(())
    }

    /// Applies a credits and refill change to `holder`'s balance (locked first); appends
    /// `CreditsChanged` when the credits were set. Returns the balance after.
    async fn change_credits(
        &mut self,
        holder: &Holder,
        credits: CreditsChange,
        refill: RefillChange,
        now_unix_ms: i64,
    ) -> Result<Option<CreditState>, StoreError> {
        let current = locked_credit_state(self.conn(), holder).await?;
        match credits_after(current.as_ref(), credits, refill, now_unix_ms) {
            CreditsOutcome::Unchanged(state) => Ok(state),
            CreditsOutcome::Cleared => {
                delete_credits(self.conn(), holder).await?;
                Ok(None)
            }
            CreditsOutcome::Write { state, set } => {
                insert_credits(self.conn(), holder, &state).await?;
                if set {
                    self.append(&Change::CreditsChanged {
                        holder: holder.clone(),
                        remaining: state.remaining,
                    })?;
                }
                Ok(Some(state))
            }
        }
    }

    /// The revision an audit row records: the head when this write appended, else 0.
    fn audited_revision(&self) -> Result<Revision, StoreError> {
        if self.appended() {
            self.head()
        } else {
            Ok(Revision::ZERO)
        }
    }
}

#[async_trait]
impl LimitStore for PgStore {
    async fn update_key_limits(
        &self,
        id: KeyId,
        update: LimitsUpdate,
        now_unix_ms: i64,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let mut w = self.write().await?;
        let mut key = w.existing_key(id).await?;
        let limits = update.applied_to(&key.limits);
        if let Some(identity) = &limits.identity {
            w.ensure_identity(identity, now_unix_ms).await?;
        }
        if limits != key.limits {
            key.limits = limits;
            key.revision = w.next_revision()?;
            w.update_key(&key).await?;
            w.append(&Change::KeyUpserted(key.replica()))?;
        }
        key.credits = w
            .change_credits(&key.holder(), update.credits, update.refill, now_unix_ms)
            .await?;
        let revision = w.audited_revision()?;
        w.audit(actor, revision, &update.audit(&key)).await?;
        w.commit().await?;
        Ok(key)
    }

    async fn create_identity(
        &self,
        identity: NewIdentity,
        actor: &str,
    ) -> Result<IdentityRecord, StoreError> {
        let mut w = self.write().await?;
        if get_identity(w.conn(), &identity.id).await?.is_some() {
            return Err(StoreError::Conflict(format!(
                "identity {:?} already exists",
                identity.id
            )));
        }
        let note = identity.audit();
        let mut record = identity.into_record(w.next_revision()?);
        insert_identity(w.conn(), &record).await?;
        record.revision = w.append(&Change::IdentityUpserted(record.replica()))?;
        if let Some(state) = &record.credits {
            insert_credits(w.conn(), &record.holder(), state).await?;
            w.append(&Change::CreditsChanged {
                holder: record.holder(),
                remaining: state.remaining,
            })?;
        }
        let revision = w.head()?;
        w.audit(actor, revision, &note).await?;
        w.commit().await?;
        Ok(record)
    }

    async fn update_identity(
        &self,
        id: &str,
        update: IdentityUpdate,
        now_unix_ms: i64,
        actor: &str,
    ) -> Result<IdentityRecord, StoreError> {
        let mut w = self.write().await?;
        let mut identity = get_identity(w.conn(), id)
            .await?
            .ok_or_else(|| StoreError::IdentityNotFound(id.to_owned()))?;
        let before = identity.replica();
        if let Some(ratelimits) = &update.ratelimits {
            identity.ratelimits.clone_from(ratelimits);
        }
        let mut after = identity.replica();
        after.credits = match update.credits {
            CreditsChange::Keep => identity.credits.is_some(),
            CreditsChange::Clear => false,
            CreditsChange::Set(_) => true,
        };
        if after != before {
            identity.revision = w.next_revision()?;
            sqlx::query(
                "UPDATE identities SET ratelimits_json = $2, revision = $3
                 WHERE identity_id = $1",
            )
            .bind(&identity.id)
            .bind(ratelimits_to_column(&identity.ratelimits)?)
            .bind(db_revision(identity.revision))
            .execute(w.conn())
            .await
            .map_err(backend)?;
            w.append(&Change::IdentityUpserted(after))?;
        }
        identity.credits = w
            .change_credits(
                &identity.holder(),
                update.credits,
                update.refill,
                now_unix_ms,
            )
            .await?;
        let revision = w.audited_revision()?;
        w.audit(actor, revision, &update.audit(&identity.id))
            .await?;
        w.commit().await?;
        Ok(identity)
    }

    async fn get_identity(&self, id: &str) -> Result<Option<IdentityRecord>, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(backend)?;
        get_identity(&mut conn, id).await
    }

    async fn list_identities(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IdentityRecord>, StoreError> {
        sqlx::query(concat!(
            identities_with_credits!(),
            " WHERE identity_id > $1 ORDER BY identity_id LIMIT $2"
        ))
        .bind(after.unwrap_or_default())
        .bind(db_limit(limit))
        .fetch_all(self.pool())
        .await
        .map_err(backend)?
        .iter()
        .map(identity_from_row)
        .collect()
    }

    async fn delete_identity(&self, id: &str, actor: &str) -> Result<Revision, StoreError> {
        let mut w = self.write().await?;
        let identity = get_identity(w.conn(), id)
            .await?
            .ok_or_else(|| StoreError::IdentityNotFound(id.to_owned()))?;
        // Keys change only under the log lock, which this write holds: none can start naming
        // the identity before the delete commits.
        let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keys WHERE identity_id = $1")
            .bind(id)
            .fetch_one(w.conn())
            .await
            .map_err(backend)?;
        if keys > 0 {
            return Err(StoreError::IdentityInUse {
                id: id.to_owned(),
                keys: u64::try_from(keys).unwrap_or(u64::MAX),
            });
        }
        sqlx::query("DELETE FROM identities WHERE identity_id = $1")
            .bind(id)
            .execute(w.conn())
            .await
            .map_err(backend)?;
        delete_credits(w.conn(), &identity.holder()).await?;
        let revision = w.append(&Change::IdentityDeleted { id: id.to_owned() })?;
        w.audit(actor, revision, &identity_deleted_audit(id))
            .await?;
        w.commit().await?;
        Ok(revision)
    }

    async fn credits(&self, holder: &Holder) -> Result<Option<CreditState>, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(backend)?;
        credit_state(&mut conn, holder).await
    }

    async fn lease_credits(&self, lease: NewLease) -> Result<Option<LeaseGranted>, StoreError> {
        let mut w = self.write_unlogged().await?;
        let holder = lease.holder.to_string();
        let Some(remaining) = lock_credits(w.conn(), &holder).await? else {
            return Ok(None);
        };
        let granted = lease_grant(remaining, lease.wanted, lease.share_divisor);
        if granted > 0 {
            sqlx::query("UPDATE credits SET remaining = remaining - $2 WHERE holder = $1")
                .bind(&holder)
                .bind(db_amount(granted))
                .execute(w.conn())
                .await
                .map_err(backend)?;
            sqlx::query(
                "INSERT INTO credit_leases (lease_id, holder, gateway_id, amount, expires_ms)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&lease.lease_id)
            .bind(&holder)
            .bind(&lease.gateway_id)
            .bind(db_amount(granted))
            .bind(lease.expires_unix_ms)
            .execute(w.conn())
            .await
            .map_err(backend)?;
        }
        w.commit().await?;
        Ok(Some(LeaseGranted {
            granted,
            remaining: remaining - granted,
        }))
    }

    async fn return_lease(&self, lease_id: &str, unspent: u64) -> Result<bool, StoreError> {
        let mut w = self.write_unlogged().await?;
        for _ in 0..RETURN_ATTEMPTS {
            let holder: Option<String> =
                sqlx::query_scalar("SELECT holder FROM credit_leases WHERE lease_id = $1")
                    .bind(lease_id)
                    .fetch_optional(w.conn())
                    .await
                    .map_err(backend)?;
            let Some(holder) = holder else {
                return Ok(false);
            };
            // The balance first, then the lease, as every change to a balance does.
            let has_balance = lock_credits(w.conn(), &holder).await?.is_some();
            let amount: Option<i64> = sqlx::query_scalar(
                "DELETE FROM credit_leases WHERE lease_id = $1 AND holder = $2 RETURNING amount",
            )
            .bind(lease_id)
            .bind(&holder)
            .fetch_optional(w.conn())
            .await
            .map_err(backend)?;
            let Some(amount) = amount else {
                // Returned or written off meanwhile (then the next look finds nothing), or
                // moved to a rerolled key's successor (then it finds the new holder).
                continue;
            };
            if !has_balance {
                // A lease left behind by a balance cleared at the same moment: nothing to
                // give back to.
                w.commit().await?;
                return Ok(false);
            }
            let back = unspent.min(amount_from_db(amount)?);
            sqlx::query("UPDATE credits SET remaining = remaining + $2 WHERE holder = $1")
                .bind(&holder)
                .bind(db_amount(back))
                .execute(w.conn())
                .await
                .map_err(backend)?;
            w.commit().await?;
            return Ok(true);
        }
        Err(StoreError::Conflict(format!(
            "lease {lease_id:?} kept moving between holders; try again"
        )))
    }

    async fn refill_due(&self, now_unix_ms: i64, actor: &str) -> Result<Vec<Holder>, StoreError> {
        // Under the log lock (it appends events): two replicas' refill tasks take turns, and
        // the second finds nothing due.
        let mut w = self.write().await?;
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT holder FROM credits WHERE next_refill_ms <= $1 ORDER BY holder FOR UPDATE",
        )
        .bind(now_unix_ms)
        .fetch_all(w.conn())
        .await
        .map_err(backend)?;
        let mut refilled_holders = Vec::with_capacity(due.len());
        for holder in due {
            let holder: Holder = holder
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("credit holder {holder:?}: {e}")))?;
            let Some(state) = credit_state(w.conn(), &holder).await? else {
                continue;
            };
            let Some(refill) = state.refill else {
                continue;
            };
            let after = refilled(&state, refill, now_unix_ms);
            insert_credits(w.conn(), &holder, &after).await?;
            let revision = w.append(&Change::CreditsChanged {
                holder: holder.clone(),
                remaining: after.remaining,
            })?;
            w.audit(actor, revision, &refill_audit(&holder, after.remaining))
                .await?;
            refilled_holders.push(holder);
        }
        w.commit().await?;
        Ok(refilled_holders)
    }

    async fn write_off_leases(&self, before_unix_ms: i64) -> Result<u64, StoreError> {
        let mut w = self.write_unlogged().await?;
        let amounts: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM credit_leases WHERE lease_id IN (
                SELECT lease_id FROM credit_leases WHERE expires_ms < $1
                ORDER BY lease_id FOR UPDATE)
             RETURNING amount",
        )
        .bind(before_unix_ms)
        .fetch_all(w.conn())
        .await
        .map_err(backend)?;
        w.commit().await?;
        amounts.into_iter().try_fold(0u64, |total, amount| {
            Ok(total.saturating_add(amount_from_db(amount)?))
        })
    }

    async fn publish_usage(
        &self,
        replica_id: &str,
        now_unix_ms: i64,
        rows: &[UsageRow],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let holders: Vec<String> = rows.iter().map(|row| row.holder.to_string()).collect();
        let limits: Vec<&str> = rows.iter().map(|row| row.limit.as_str()).collect();
        let gateways: Vec<&str> = rows.iter().map(|row| row.gateway_id.as_str()).collect();
        let starts: Vec<i64> = rows.iter().map(|row| row.window_start_unix_ms).collect();
        let used: Vec<i64> = rows.iter().map(|row| db_amount(row.used)).collect();
        let mut w = self.write_unlogged().await?;
        sqlx::query(
            "INSERT INTO rate_usage (holder, limit_name, gateway_id, window_start_ms, used,
                replica_id, updated_ms)
             SELECT *, $6, $7 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[],
                $5::BIGINT[])
             ON CONFLICT (holder, limit_name, gateway_id) DO UPDATE SET
                window_start_ms = EXCLUDED.window_start_ms, used = EXCLUDED.used,
                replica_id = EXCLUDED.replica_id, updated_ms = EXCLUDED.updated_ms
             WHERE (EXCLUDED.window_start_ms, EXCLUDED.used)
                > (rate_usage.window_start_ms, rate_usage.used)",
        )
        .bind(holders)
        .bind(limits)
        .bind(gateways)
        .bind(starts)
        .bind(used)
        .bind(replica_id)
        .bind(now_unix_ms)
        .execute(w.conn())
        .await
        .map_err(backend)?;
        w.commit().await
    }

    async fn read_usage(
        &self,
        replica_id: &str,
        since_unix_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let mut tx = self.read().await?;
        let rows = sqlx::query(
            "SELECT holder, limit_name, gateway_id, window_start_ms, used FROM rate_usage
             WHERE replica_id <> $1 AND updated_ms >= $2
             ORDER BY holder, limit_name, gateway_id",
        )
        .bind(replica_id)
        .bind(since_unix_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let holder: String = get(row, 0)?;
                Ok(UsageRow {
                    holder: holder.parse().map_err(|_| {
                        StoreError::Corrupt(format!("rate-usage holder {holder:?}"))
                    })?,
                    limit: get(row, 1)?,
                    gateway_id: get(row, 2)?,
                    window_start_unix_ms: get(row, 3)?,
                    used: amount_from_db(get(row, 4)?)?,
                })
            })
            .collect()
    }

    async fn forget_usage(&self, before_unix_ms: i64) -> Result<usize, StoreError> {
        let mut w = self.write_unlogged().await?;
        let deleted = sqlx::query("DELETE FROM rate_usage WHERE updated_ms < $1")
            .bind(before_unix_ms)
            .execute(w.conn())
            .await
            .map_err(backend)?
            .rows_affected();
        w.commit().await?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }
}

//! [`LimitStore`] on SQLite: the `identities`, `credits` and `credit_leases` tables. Every
//! operation runs through the one writer, so a lease, a return and a refill of the same
//! balance never interleave: the credits invariant (`store/limits.rs`) holds by construction.

use async_trait::async_trait;
use keygate_proto::{Change, Holder, Identity, KeyId, RefillSpec, Revision};
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::log::Writer;
use super::{SqliteStore, backend, collect, corrupt, execute};
use crate::store::event_codec::{ratelimits_from_column, ratelimits_to_column};
use crate::store::limits::{
    CreditsOutcome, credits_after, identity_deleted_audit, implicit_identity, lease_grant,
    refill_audit, refilled,
};
use crate::store::{
    CreditState, CreditsChange, IdentityRecord, IdentityUpdate, KeyRecord, LeaseGranted,
    LimitStore, LimitsUpdate, NewIdentity, NewLease, RefillChange, StoreError, UsageRow,
};

/// A balance beside what it belongs to: the columns of `credits` (`NULL`s without a row) and
/// what its leases hold. Read by [`credits_from_row`].
pub(super) const CREDIT_COLUMNS: &str = "credits.remaining, credits.refill_amount, \
     credits.refill_interval_ms, credits.next_refill_ms, \
     (SELECT COALESCE(SUM(amount), 0) FROM credit_leases \
      WHERE credit_leases.holder = credits.holder)";

/// The balance in [`CREDIT_COLUMNS`] starting at column `at`; `None` without a row.
pub(super) fn credits_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Option<CreditState>> {
    let Some(remaining) = row.get::<_, Option<u64>>(at)? else {
        return Ok(None);
    };
    let amount: Option<u64> = row.get(at + 1)?;
    let interval_ms: Option<u64> = row.get(at + 2)?;
    let refill = amount
        .zip(interval_ms)
        .map(|(amount, interval_ms)| RefillSpec {
            amount,
            interval_ms,
        });
    Ok(Some(CreditState {
        remaining,
        leased: row.get(at + 4)?,
        refill,
        next_refill_unix_ms: row.get(at + 3)?,
    }))
}

const IDENTITY_COLUMNS: &str = "identity_id, ratelimits_json, created_ms, revision";

/// Identities with their balances ([`IDENTITY_COLUMNS`], then [`CREDIT_COLUMNS`]).
fn identities_with_credits() -> String {
    format!(
        "SELECT {IDENTITY_COLUMNS}, {CREDIT_COLUMNS} FROM identities
         LEFT JOIN credits ON credits.holder = 'identity:' || identities.identity_id"
    )
}

fn identity_from_row(row: &Row<'_>) -> rusqlite::Result<IdentityRecord> {
    let ratelimits: String = row.get(1)?;
    Ok(IdentityRecord {
        id: row.get(0)?,
        ratelimits: ratelimits_from_column(&ratelimits)
            .map_err(|_| corrupt("identity rate limits"))?,
        credits: credits_from_row(row, 4)?,
        created_unix_ms: row.get(2)?,
        revision: Revision(row.get(3)?),
    })
}

fn get_identity(tx: &Transaction<'_>, id: &str) -> Result<Option<IdentityRecord>, StoreError> {
    tx.query_row(
        &format!("{} WHERE identity_id = ?1", identities_with_credits()),
        params![id],
        identity_from_row,
    )
    .optional()
    .map_err(backend)
}

/// Every identity as gateways replicate it (a snapshot reads it beside the keys).
pub(super) fn replica_identities(tx: &Transaction<'_>) -> Result<Vec<Identity>, StoreError> {
    collect(
        tx,
        &format!("{} ORDER BY identity_id", identities_with_credits()),
        [],
        identity_from_row,
    )
    .map(|identities| identities.iter().map(IdentityRecord::replica).collect())
}

/// Every identity, without balances (a copy carries those as `credits` rows).
pub(super) fn export_identities(tx: &Transaction<'_>) -> Result<Vec<IdentityRecord>, StoreError> {
    collect(
        tx,
        &format!(
            "SELECT {IDENTITY_COLUMNS}, NULL, NULL, NULL, NULL, 0 FROM identities
             ORDER BY identity_id"
        ),
        [],
        identity_from_row,
    )
}

/// Every balance, by holder, as stored (leases are not copied: `leased` is 0).
pub(super) fn export_credits(
    tx: &Transaction<'_>,
) -> Result<Vec<(Holder, CreditState)>, StoreError> {
    collect(
        tx,
        "SELECT holder, remaining, refill_amount, refill_interval_ms, next_refill_ms, 0
         FROM credits ORDER BY holder",
        [],
        |row| {
            let holder: String = row.get(0)?;
            let holder = holder.parse().map_err(|_| corrupt("credit holder"))?;
            let state = credits_from_row(row, 1)?.ok_or_else(|| corrupt("credit balance"))?;
            Ok((holder, state))
        },
    )
}

/// Inserts an identity as it is (a write, or a copy).
pub(super) fn insert_identity(
    tx: &Transaction<'_>,
    identity: &IdentityRecord,
) -> Result<(), StoreError> {
    execute(
        tx,
        &format!("INSERT INTO identities ({IDENTITY_COLUMNS}) VALUES (?1, ?2, ?3, ?4)"),
        params![
            identity.id,
            ratelimits_to_column(&identity.ratelimits)?,
            identity.created_unix_ms,
            identity.revision.0
        ],
    )
}

/// Writes a holder's balance (its leases are rows of their own).
pub(super) fn insert_credits(
    tx: &Transaction<'_>,
    holder: &Holder,
    state: &CreditState,
) -> Result<(), StoreError> {
    execute(
        tx,
        "INSERT INTO credits (holder, remaining, refill_amount, refill_interval_ms,
            next_refill_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (holder) DO UPDATE SET remaining = excluded.remaining,
            refill_amount = excluded.refill_amount,
            refill_interval_ms = excluded.refill_interval_ms,
            next_refill_ms = excluded.next_refill_ms",
        params![
            holder.to_string(),
            state.remaining,
            state.refill.map(|refill| refill.amount),
            state.refill.map(|refill| refill.interval_ms),
            state.next_refill_unix_ms,
        ],
    )
}

/// Drops a holder's balance and its leases.
pub(super) fn delete_credits(tx: &Transaction<'_>, holder: &Holder) -> Result<(), StoreError> {
    let holder = holder.to_string();
    execute(
        tx,
        "DELETE FROM credit_leases WHERE holder = ?1",
        params![holder],
    )?;
    execute(tx, "DELETE FROM credits WHERE holder = ?1", params![holder])
}

fn credit_state(tx: &Transaction<'_>, holder: &Holder) -> Result<Option<CreditState>, StoreError> {
    tx.query_row(
        &format!("SELECT {CREDIT_COLUMNS} FROM credits WHERE holder = ?1"),
        params![holder.to_string()],
        |row| credits_from_row(row, 0),
    )
    .optional()
    .map_err(backend)
    .map(Option::flatten)
}

impl Writer<'_> {
    /// Creates identity `id` without limits unless it exists, appending its
    /// `IdentityUpserted`.
    pub(super) fn ensure_identity(&mut self, id: &str, now_unix_ms: i64) -> Result<(), StoreError> {
        if get_identity(self.tx, id)?.is_some() {
            return Ok(());
        }
        let identity = implicit_identity(id, now_unix_ms).into_record(self.next_revision());
        insert_identity(self.tx, &identity)?;
        self.append(Change::IdentityUpserted(identity.replica()))?;
        Ok(())
    }

    /// Applies a credits and refill change to `holder`'s balance; appends `CreditsChanged`
    /// when the credits were set. Returns the balance after.
    fn change_credits(
        &mut self,
        holder: &Holder,
        credits: CreditsChange,
        refill: RefillChange,
        now_unix_ms: i64,
    ) -> Result<Option<CreditState>, StoreError> {
        let current = credit_state(self.tx, holder)?;
        match credits_after(current.as_ref(), credits, refill, now_unix_ms) {
            CreditsOutcome::Unchanged(state) => Ok(state),
            CreditsOutcome::Cleared => {
                delete_credits(self.tx, holder)?;
                Ok(None)
            }
            CreditsOutcome::Write { state, set } => {
                insert_credits(self.tx, holder, &state)?;
                if set {
                    self.append(Change::CreditsChanged {
                        holder: holder.clone(),
                        remaining: state.remaining,
                    })?;
                }
                Ok(Some(state))
            }
        }
    }
}

#[async_trait]
impl LimitStore for SqliteStore {
    async fn update_key_limits(
        &self,
        id: KeyId,
        update: LimitsUpdate,
        now_unix_ms: i64,
        actor: &str,
    ) -> Result<KeyRecord, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let mut key = w.existing_key(id)?;
            let limits = update.applied_to(&key.limits);
            if let Some(identity) = &limits.identity {
                w.ensure_identity(identity, now_unix_ms)?;
            }
            if limits != key.limits {
                key.limits = limits;
                key.revision = w.next_revision();
                w.update_key(&key)?;
                w.append(Change::KeyUpserted(key.replica()))?;
            }
            key.credits =
                w.change_credits(&key.holder(), update.credits, update.refill, now_unix_ms)?;
            let revision = if w.appended() {
                w.head()
            } else {
                Revision::ZERO
            };
            w.audit(&actor, revision, &update.audit(&key))?;
            Ok(key)
        })
        .await
    }

    async fn create_identity(
        &self,
        identity: NewIdentity,
        actor: &str,
    ) -> Result<IdentityRecord, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            if get_identity(w.tx, &identity.id)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "identity {:?} already exists",
                    identity.id
                )));
            }
            let note = identity.audit();
            let mut record = identity.into_record(w.next_revision());
            insert_identity(w.tx, &record)?;
            record.revision = w.append(Change::IdentityUpserted(record.replica()))?;
            if let Some(state) = &record.credits {
                insert_credits(w.tx, &record.holder(), state)?;
                w.append(Change::CreditsChanged {
                    holder: record.holder(),
                    remaining: state.remaining,
                })?;
            }
            w.audit(&actor, w.head(), &note)?;
            Ok(record)
        })
        .await
    }

    async fn update_identity(
        &self,
        id: &str,
        update: IdentityUpdate,
        now_unix_ms: i64,
        actor: &str,
    ) -> Result<IdentityRecord, StoreError> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.write(move |w| {
            let mut identity =
                get_identity(w.tx, &id)?.ok_or_else(|| StoreError::IdentityNotFound(id.clone()))?;
            let before = identity.replica();
            if let Some(ratelimits) = &update.ratelimits {
                identity.ratelimits.clone_from(ratelimits);
            }
            let holder = identity.holder();
            let credits = match update.credits {
                CreditsChange::Keep => identity.credits.is_some(),
                CreditsChange::Clear => false,
                CreditsChange::Set(_) => true,
            };
            let mut after = identity.replica();
            after.credits = credits;
            if after != before {
                identity.revision = w.next_revision();
                w.tx.execute(
                    "UPDATE identities SET ratelimits_json = ?2, revision = ?3
                     WHERE identity_id = ?1",
                    params![
                        identity.id,
                        ratelimits_to_column(&identity.ratelimits)?,
                        identity.revision.0
                    ],
                )
                .map_err(backend)?;
                w.append(Change::IdentityUpserted(after))?;
            }
            identity.credits =
                w.change_credits(&holder, update.credits, update.refill, now_unix_ms)?;
            let revision = if w.appended() {
                w.head()
            } else {
                Revision::ZERO
            };
            w.audit(&actor, revision, &update.audit(&identity.id))?;
            Ok(identity)
        })
        .await
    }

    async fn get_identity(&self, id: &str) -> Result<Option<IdentityRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |tx| get_identity(tx, &id)).await
    }

    async fn list_identities(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IdentityRecord>, StoreError> {
        let after = after.unwrap_or_default().to_owned();
        self.read(move |tx| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            collect(
                tx,
                &format!(
                    "{} WHERE identity_id > ?1 ORDER BY identity_id LIMIT ?2",
                    identities_with_credits()
                ),
                params![after, limit],
                identity_from_row,
            )
        })
        .await
    }

    async fn delete_identity(&self, id: &str, actor: &str) -> Result<Revision, StoreError> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.write(move |w| {
            let identity =
                get_identity(w.tx, &id)?.ok_or_else(|| StoreError::IdentityNotFound(id.clone()))?;
            let keys: u64 =
                w.tx.query_row(
                    "SELECT COUNT(*) FROM keys WHERE identity_id = ?1",
                    params![id],
                    |row| row.get(0),
                )
                .map_err(backend)?;
            if keys > 0 {
                return Err(StoreError::IdentityInUse { id, keys });
            }
            w.tx.execute("DELETE FROM identities WHERE identity_id = ?1", params![id])
                .map_err(backend)?;
            delete_credits(w.tx, &identity.holder())?;
            let revision = w.append(Change::IdentityDeleted { id: id.clone() })?;
            w.audit(&actor, revision, &identity_deleted_audit(&id))?;
            Ok(revision)
        })
        .await
    }

    async fn credits(&self, holder: &Holder) -> Result<Option<CreditState>, StoreError> {
        let holder = holder.clone();
        self.read(move |tx| credit_state(tx, &holder)).await
    }

    async fn lease_credits(&self, lease: NewLease) -> Result<Option<LeaseGranted>, StoreError> {
        self.write(move |w| {
            let holder = lease.holder.to_string();
            let remaining: Option<u64> =
                w.tx.query_row(
                    "SELECT remaining FROM credits WHERE holder = ?1",
                    params![holder],
                    |row| row.get(0),
                )
                .optional()
                .map_err(backend)?;
            let Some(remaining) = remaining else {
                return Ok(None);
            };
            let granted = lease_grant(remaining, lease.wanted, lease.share_divisor);
            if granted > 0 {
                w.tx.execute(
                    "UPDATE credits SET remaining = remaining - ?2 WHERE holder = ?1",
                    params![holder, granted],
                )
                .map_err(backend)?;
                w.tx.execute(
                    "INSERT INTO credit_leases (lease_id, holder, gateway_id, amount, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        lease.lease_id,
                        holder,
                        lease.gateway_id,
                        granted,
                        lease.expires_unix_ms
                    ],
                )
                .map_err(backend)?;
            }
            Ok(Some(LeaseGranted {
                granted,
                remaining: remaining - granted,
            }))
        })
        .await
    }

    async fn return_lease(&self, lease_id: &str, unspent: u64) -> Result<bool, StoreError> {
        let lease_id = lease_id.to_owned();
        self.write(move |w| {
            let lease: Option<(String, u64)> =
                w.tx.query_row(
                    "DELETE FROM credit_leases WHERE lease_id = ?1 RETURNING holder, amount",
                    params![lease_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            let Some((holder, amount)) = lease else {
                return Ok(false);
            };
            let updated =
                w.tx.execute(
                    "UPDATE credits SET remaining = remaining + ?2 WHERE holder = ?1",
                    params![holder, unspent.min(amount)],
                )
                .map_err(backend)?;
            Ok(updated > 0)
        })
        .await
    }

    async fn refill_due(&self, now_unix_ms: i64, actor: &str) -> Result<Vec<Holder>, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let due = collect(
                w.tx,
                &format!(
                    "SELECT credits.holder, {CREDIT_COLUMNS} FROM credits
                     WHERE next_refill_ms IS NOT NULL AND next_refill_ms <= ?1
                     ORDER BY credits.holder"
                ),
                params![now_unix_ms],
                |row| {
                    let holder: String = row.get(0)?;
                    let holder: Holder = holder.parse().map_err(|_| corrupt("credit holder"))?;
                    Ok((holder, credits_from_row(row, 1)?))
                },
            )?;
            let mut refilled_holders = Vec::with_capacity(due.len());
            for (holder, state) in due {
                let Some((state, refill)) = state.and_then(|s| s.refill.map(|r| (s, r))) else {
                    continue;
                };
                let after = refilled(&state, refill, now_unix_ms);
                insert_credits(w.tx, &holder, &after)?;
                let revision = w.append(Change::CreditsChanged {
                    holder: holder.clone(),
                    remaining: after.remaining,
                })?;
                w.audit(&actor, revision, &refill_audit(&holder, after.remaining))?;
                refilled_holders.push(holder);
            }
            Ok(refilled_holders)
        })
        .await
    }

    async fn write_off_leases(&self, before_unix_ms: i64) -> Result<u64, StoreError> {
        self.write(move |w| {
            let amounts = collect(
                w.tx,
                "DELETE FROM credit_leases WHERE expires_ms < ?1 RETURNING amount",
                params![before_unix_ms],
                |row| row.get::<_, u64>(0),
            )?;
            Ok(amounts.iter().sum())
        })
        .await
    }

    async fn publish_usage(
        &self,
        replica_id: &str,
        now_unix_ms: i64,
        rows: &[UsageRow],
    ) -> Result<(), StoreError> {
        let (replica_id, rows) = (replica_id.to_owned(), rows.to_vec());
        self.write(move |w| {
            for row in &rows {
                execute(
                    w.tx,
                    "INSERT INTO rate_usage (holder, limit_name, gateway_id, window_start_ms,
                        used, replica_id, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (holder, limit_name, gateway_id) DO UPDATE SET
                        window_start_ms = excluded.window_start_ms, used = excluded.used,
                        replica_id = excluded.replica_id, updated_ms = excluded.updated_ms
                     WHERE (excluded.window_start_ms, excluded.used)
                        > (rate_usage.window_start_ms, rate_usage.used)",
                    params![
                        row.holder.to_string(),
                        row.limit,
                        row.gateway_id,
                        row.window_start_unix_ms,
                        row.used,
                        replica_id,
                        now_unix_ms
                    ],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn read_usage(
        &self,
        replica_id: &str,
        since_unix_ms: i64,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let replica_id = replica_id.to_owned();
        self.read(move |tx| {
            collect(
                tx,
                "SELECT holder, limit_name, gateway_id, window_start_ms, used FROM rate_usage
                 WHERE replica_id <> ?1 AND updated_ms >= ?2
                 ORDER BY holder, limit_name, gateway_id",
                params![replica_id, since_unix_ms],
                |row| {
                    Ok(UsageRow {
                        holder: row
                            .get::<_, String>(0)?
                            .parse()
                            .map_err(|_| corrupt("rate-usage holder"))?,
                        limit: row.get(1)?,
                        gateway_id: row.get(2)?,
                        window_start_unix_ms: row.get(3)?,
                        used: row.get(4)?,
                    })
                },
            )
        })
        .await
    }

    async fn forget_usage(&self, before_unix_ms: i64) -> Result<usize, StoreError> {
        self.write(move |w| {
            w.tx.execute(
                "DELETE FROM rate_usage WHERE updated_ms < ?1",
                params![before_unix_ms],
            )
            .map_err(backend)
        })
        .await
    }
}

//! [`EventLogStore`] on PostgreSQL, and the [`Writer`] every write transaction goes through.
//!
//! The writer is the one place where revisions are assigned. A write that may append events
//! begins with `SELECT head FROM log_state WHERE id = 1 FOR UPDATE`: the row lock is held until
//! the transaction ends, so across every replica sharing the database at most one such write
//! runs at a time, and the head it reads is the last committed one (under READ COMMITTED, a
//! statement that waited for the lock sees the row as the previous holder committed it). Each
//! event takes head + 1; at commit the events, the new head and `pg_notify('keygate_log', head)`
//! go in one statement, and the notification is delivered when (and only if) the transaction
//! commits. So revisions are contiguous and totally ordered, and a reader that sees revision
//! N + 1 also sees N.
//!
//! Events are stored as `(revision, committed_ms, kind, payload_json)` in the store's own
//! encoding (`store/event_codec.rs`), never as wire messages.

use async_trait::async_trait;
use keygate_proto::time::now_unix_ms;
use keygate_proto::{Change, Event, LogId, Revision};
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::{Postgres, Transaction};

use super::{
    Inner, LOG_CHANNEL, PgStore, backend, db_limit, db_revision, get, keys, limits,
    revision_from_db, sessions,
};
use crate::store::event_codec;
use crate::store::{EventLogStore, LogBounds, Snapshot, StoreError};

/// A snapshot's statements may each take up to a minute (a million keys), not the 10 s of a
/// request's.
const SNAPSHOT_STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '60s'";

/// One write transaction: the head it advances, the events it appends, its clock.
pub(super) struct Writer<'s> {
    store: &'s Inner,
    tx: Transaction<'static, Postgres>,
    /// The head as of the last append (or the lock); `None` when this transaction did not take
    /// the log lock, and so may not append.
    head: Option<Revision>,
    /// The transaction's one instant, read on first use (after the locks it takes first).
    now_unix_ms: Option<i64>,
    /// Appended events, written at commit: (revision, kind, payload).
    events: Vec<(Revision, &'static str, String)>,
}

impl<'s> Writer<'s> {
    /// Begins a READ COMMITTED transaction; with `lock_log`, takes the log lock and reads the
    /// head first.
    pub(super) async fn begin(store: &'s Inner, lock_log: bool) -> Result<Self, StoreError> {
        // READ COMMITTED whatever the database's default: each statement sees what committed
        // before it began, so the statements after the log lock see the last commit's state.
        let mut tx = store
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(backend)?;
        let head = if lock_log {
            let head: i64 =
                sqlx::query_scalar("SELECT head FROM log_state WHERE id = 1 FOR UPDATE")
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(backend)?;
            Some(revision_from_db(head)?)
        } else {
            None
        };
        Ok(Self {
            store,
            tx,
            head,
            now_unix_ms: None,
            events: Vec::new(),
        })
    }

    /// The connection, for this transaction's statements.
    pub(super) fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// The transaction's instant: its events' commit time and every time it records. Read
    /// once, on first use, from the database server's clock (`clock_timestamp()`), so every
    /// replica stamps with one clock: a session issued on one replica is ordered against a
    /// revocation on another even when the replicas' own clocks disagree. Operations take
    /// their row locks before they first ask, so an instant is never earlier than that of a
    /// conflicting transaction that committed first.
    pub(super) async fn now(&mut self) -> Result<i64, StoreError> {
        if let Some(now) = self.now_unix_ms {
            return Ok(now);
        }
        let now: i64 =
            sqlx::query_scalar("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT")
                .fetch_one(&mut *self.tx)
                .await
                .map_err(backend)?;
        self.now_unix_ms = Some(now);
        Ok(now)
    }

    /// The last revision taken: the head this transaction will commit.
    pub(super) fn head(&self) -> Result<Revision, StoreError> {
        self.head.ok_or_else(unlocked)
    }

    /// The revision the next [`Writer::append`] will take.
    pub(super) fn next_revision(&self) -> Result<Revision, StoreError> {
        self.head().map(Revision::next)
    }

    /// Whether this transaction has appended any event.
    pub(super) fn appended(&self) -> bool {
        !self.events.is_empty()
    }

    /// Appends one event at the next revision (written at commit).
    pub(super) fn append(&mut self, change: &Change) -> Result<Revision, StoreError> {
        let revision = self.next_revision()?;
        let encoded = event_codec::encode(change)?;
        self.head = Some(revision);
        self.events.push((revision, encoded.kind, encoded.json));
        Ok(revision)
    }

    /// Writes the appended events and the new head, notifies [`LOG_CHANNEL`] (delivered at
    /// commit), commits, and then hands this store's observer everything committed through
    /// the new head. Dropping a writer instead rolls back.
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        let appended = !self.events.is_empty();
        if let (true, Some(head)) = (appended, self.head) {
            let committed_ms = self.now().await?;
            let mut revisions = Vec::with_capacity(self.events.len());
            let mut kinds = Vec::with_capacity(self.events.len());
            let mut payloads = Vec::with_capacity(self.events.len());
            for (revision, kind, payload) in self.events.drain(..) {
                revisions.push(db_revision(revision));
                kinds.push(kind);
                payloads.push(payload);
            }
            // One round trip while the log is locked: the events, the head, the notification.
            sqlx::query(
                "WITH appended AS (
                    INSERT INTO events (revision, committed_ms, kind, payload_json)
                    SELECT revision, $2, kind, payload_json
                    FROM UNNEST($1::BIGINT[], $3::TEXT[], $4::TEXT[])
                        AS appended (revision, kind, payload_json)
                 ), moved AS (
                    UPDATE log_state SET head = $5 WHERE id = 1 RETURNING head
                 )
                 SELECT pg_notify($6, head::TEXT) FROM moved",
            )
            .bind(revisions)
            .bind(committed_ms)
            .bind(kinds)
            .bind(payloads)
            .bind(db_revision(head))
            .bind(LOG_CHANNEL)
            .execute(&mut *self.tx)
            .await
            .map_err(backend)?;
        }
        self.tx.commit().await.map_err(backend)?;
        if let (true, Some(head)) = (appended, self.head) {
            // Committed: the write has succeeded whatever happens now. Should the read fail
            // (or the caller stop waiting), the tail delivers these events at its next wake.
            if let Err(error) = self
                .store
                .delivery
                .catch_up(&self.store.pool, Some(head))
                .await
            {
                tracing::warn!(%error, %head, "committed, but could not deliver yet; the tail will");
            }
        }
        Ok(())
    }
}

fn unlocked() -> StoreError {
    StoreError::Task("a write that may append events must take the log lock".into())
}

/// Creates the `log_state` row with a fresh log id unless it exists, and returns the head.
/// Every replica runs this at open; the primary key makes exactly one insert win, so the log
/// id is made once, whoever starts first.
pub(super) async fn initialise(pool: &PgPool) -> Result<Revision, sqlx::Error> {
    sqlx::query(
        "INSERT INTO log_state (id, log_id, head, oldest_retained) VALUES (1, $1, 0, 1)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(super::super::log::fresh_log_id().0)
    .execute(pool)
    .await?;
    let head: i64 = sqlx::query_scalar("SELECT head FROM log_state WHERE id = 1")
        .fetch_one(pool)
        .await?;
    Ok(Revision(u64::try_from(head).unwrap_or(0)))
}

pub(super) async fn log_bounds(conn: &mut PgConnection) -> Result<LogBounds, StoreError> {
    let row = sqlx::query("SELECT log_id, head, oldest_retained FROM log_state WHERE id = 1")
        .fetch_one(conn)
        .await
        .map_err(backend)?;
    Ok(LogBounds {
        log_id: LogId(get(&row, 0)?),
        head: revision_from_db(get(&row, 1)?)?,
        oldest_retained: revision_from_db(get(&row, 2)?)?,
    })
}

/// Up to `limit` events after `after`, in order (the tail reads through this too).
pub(super) async fn events_after(
    pool: &PgPool,
    after: Revision,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let rows = sqlx::query(
        "SELECT revision, committed_ms, kind, payload_json
         FROM events WHERE revision > $1 ORDER BY revision LIMIT $2",
    )
    .bind(db_revision(after))
    .bind(db_limit(limit))
    .fetch_all(pool)
    .await
    .map_err(backend)?;
    rows.iter().map(event_from_row).collect()
}

fn event_from_row(row: &PgRow) -> Result<Event, StoreError> {
    let kind: String = get(row, 2)?;
    let json: String = get(row, 3)?;
    Ok(Event {
        revision: revision_from_db(get(row, 0)?)?,
        committed_unix_ms: get(row, 1)?,
        change: event_codec::decode(&kind, &json)?,
    })
}

#[async_trait]
impl EventLogStore for PgStore {
    async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        let mut conn = self.pool().acquire().await.map_err(backend)?;
        log_bounds(&mut conn).await
    }

    async fn compact(&self, before_unix_ms: i64) -> Result<LogBounds, StoreError> {
        // Under the log lock, so no commit interleaves; it appends no event, so the head stays.
        let mut w = self.write().await?;
        let last_dropped: Option<i64> =
            sqlx::query_scalar("SELECT MAX(revision) FROM events WHERE committed_ms < $1")
                .bind(before_unix_ms)
                .fetch_one(w.conn())
                .await
                .map_err(backend)?;
        if let Some(last) = last_dropped {
            sqlx::query("DELETE FROM events WHERE revision <= $1")
                .bind(last)
                .execute(w.conn())
                .await
                .map_err(backend)?;
            sqlx::query(
                "UPDATE log_state SET oldest_retained = GREATEST(oldest_retained, $1) WHERE id = 1",
            )
            .bind(last.saturating_add(1))
            .execute(w.conn())
            .await
            .map_err(backend)?;
        }
        let bounds = log_bounds(w.conn()).await?;
        w.commit().await?;
        Ok(bounds)
    }

    async fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>, StoreError> {
        events_after(self.pool(), after, limit).await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        // Head, keys, identities and session state are read in one REPEATABLE READ
        // transaction: one snapshot of the database, so they are exactly the state at that
        // revision, whatever commits meanwhile.
        let mut tx = self.read().await?;
        // Every key in one statement: with many keys that may take longer than the timeout
        // meant for requests, though not without bound.
        sqlx::query(SNAPSHOT_STATEMENT_TIMEOUT)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let revision = log_bounds(&mut tx).await?.head;
        let keys = keys::replica_keys(&mut tx).await?;
        let identities = limits::replica_identities(&mut tx).await?;
        let sessions = sessions::session_state(&mut tx, now_unix_ms()).await?;
        tx.commit().await.map_err(backend)?;
        Ok(Snapshot {
            revision,
            keys,
            identities,
            sessions,
        })
    }
}

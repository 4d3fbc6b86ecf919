//! [`EventLogStore`] on SQLite, and the [`Writer`] every write transaction goes through.
//!
//! The writer is the one place where the contiguity invariant lives: it reads the head when
//! the transaction begins, each event it appends takes head + 1, and the new head is written in
//! the same transaction. Only one write transaction runs at a time (the store's writer mutex),
//! so no two commits can take the same revision or leave a gap.
//!
//! Events are stored as `(revision, committed_ms, kind, payload_json)` in the store's own
//! encoding (`store/event_codec.rs`), never as wire messages.

use async_trait::async_trait;
use keygate_proto::convert::event_from_legacy_bytes;
use keygate_proto::time::now_unix_ms;
use keygate_proto::{Change, Event, KeyHash, KeyId, LogId, ReplicaKey, Revision};
use rusqlite::{Row, Transaction, params};

use super::{SqliteStore, backend, corrupt, keys, limits, sessions};
use crate::store::event_codec;
use crate::store::{EventLogStore, LogBounds, Snapshot, StoreError};

/// One write transaction: the head it advances and the events it appends.
pub(super) struct Writer<'a> {
    pub(super) tx: &'a Transaction<'a>,
    /// The head as of the last append (or the transaction's start). Only [`Writer::append`]
    /// moves it.
    head: Revision,
    /// The transaction's one instant: its events' commit time, and every time it records.
    pub(super) now_unix_ms: i64,
    events: Vec<Event>,
}

impl<'a> Writer<'a> {
    /// Starts appending after the head committed before `tx` began. `tx` must be a write
    /// (immediate) transaction, so no other commit can move the head meanwhile.
    pub(super) fn begin(tx: &'a Transaction<'a>) -> Result<Self, StoreError> {
        let head: u64 = tx
            .query_row("SELECT head FROM log_state WHERE id = 1", [], |row| {
                row.get(0)
            })
            .map_err(backend)?;
        Ok(Self {
            tx,
            head: Revision(head),
            now_unix_ms: now_unix_ms(),
            events: Vec::new(),
        })
    }

    /// The last revision taken: the head this transaction will commit.
    pub(super) fn head(&self) -> Revision {
        self.head
    }

    /// The revision the next [`Writer::append`] will take.
    pub(super) fn next_revision(&self) -> Revision {
        self.head.next()
    }

    /// Whether this transaction has appended any event.
    pub(super) fn appended(&self) -> bool {
        !self.events.is_empty()
    }

    /// Appends one event at the next revision.
    pub(super) fn append(&mut self, change: Change) -> Result<Revision, StoreError> {
        let revision = self.head.next();
        let encoded = event_codec::encode(&change)?;
        self.tx
            .execute(
                "INSERT INTO events (revision, committed_ms, kind, payload_json)
                 VALUES (?1, ?2, ?3, ?4)",
                params![revision.0, self.now_unix_ms, encoded.kind, encoded.json],
            )
            .map_err(backend)?;
        self.head = revision;
        self.events.push(Event {
            revision,
            committed_unix_ms: self.now_unix_ms,
            change,
        });
        Ok(revision)
    }

    /// Records the new head, if anything was appended, and returns the events to announce once
    /// the transaction has committed.
    pub(super) fn finish(self) -> Result<Vec<Event>, StoreError> {
        if !self.events.is_empty() {
            self.tx
                .execute(
                    "UPDATE log_state SET head = ?1 WHERE id = 1",
                    params![self.head.0],
                )
                .map_err(backend)?;
        }
        Ok(self.events)
    }
}

pub(super) fn log_bounds(tx: &Transaction<'_>) -> Result<LogBounds, StoreError> {
    tx.query_row(
        "SELECT log_id, head, oldest_retained FROM log_state WHERE id = 1",
        [],
        |row| {
            Ok(LogBounds {
                log_id: LogId(row.get(0)?),
                head: Revision(row.get(1)?),
                oldest_retained: Revision(row.get(2)?),
            })
        },
    )
    .map_err(backend)
}

#[async_trait]
impl EventLogStore for SqliteStore {
    async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        self.read(log_bounds).await
    }

    async fn compact(&self, before_unix_ms: i64) -> Result<LogBounds, StoreError> {
        // Through the writer, so no commit interleaves; it appends no event, so the head stays.
        self.write(move |w| {
            let last_dropped: Option<u64> =
                w.tx.query_row(
                    "SELECT MAX(revision) FROM events WHERE committed_ms < ?1",
                    params![before_unix_ms],
                    |row| row.get(0),
                )
                .map_err(backend)?;
            if let Some(last) = last_dropped {
                w.tx.execute("DELETE FROM events WHERE revision <= ?1", params![last])
                    .map_err(backend)?;
                w.tx.execute(
                    "UPDATE log_state SET oldest_retained = MAX(oldest_retained, ?1) WHERE id = 1",
                    params![last + 1],
                )
                .map_err(backend)?;
            }
            log_bounds(w.tx)
        })
        .await
    }

    async fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(move |tx| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = super::collect(
                tx,
                "SELECT revision, committed_ms, kind, payload_json
                 FROM events WHERE revision > ?1 ORDER BY revision LIMIT ?2",
                params![after.0, limit],
                |row| {
                    Ok((
                        Revision(row.get(0)?),
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                },
            )?;
            rows.into_iter()
                .map(|(revision, committed_unix_ms, kind, json)| {
                    Ok(Event {
                        revision,
                        committed_unix_ms,
                        change: event_codec::decode(&kind, &json)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        // Head, keys, identities and session state are read in one read transaction, so they
        // are exactly the state at that revision, whatever commits meanwhile.
        self.read(|tx| {
            let revision = log_bounds(tx)?.head;
            let keys = keys::replica_keys(tx)?;
            let identities = limits::replica_identities(tx)?;
            let sessions = sessions::session_state(tx, now_unix_ms())?;
            Ok(Snapshot {
                revision,
                keys,
                identities,
                sessions,
            })
        })
        .await
    }
}

/// Migration 4: gives the log its identity. Random, so that two stores initialised apart never
/// share one, and written only here, so it never changes afterwards (a copy of the store
/// carries it over).
pub(super) fn add_log_id(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE log_state ADD COLUMN log_id TEXT NOT NULL DEFAULT ''")?;
    tx.execute(
        "UPDATE log_state SET log_id = ?1 WHERE id = 1",
        params![super::super::log::fresh_log_id().0],
    )?;
    Ok(())
}

/// Migration 5: rewrites the event log in the store's own encoding. Rows written before it
/// are converted once, in revision order: key events from their columns, the other kinds
/// (`kind = 'encoded'`) from the wire bytes in `payload`. A row that does not decode stops the
/// migration (and the store's start): dropping it would leave a gap in the revisions.
pub(super) fn encode_events(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE events_encoded (
            revision     INTEGER PRIMARY KEY,
            committed_ms INTEGER NOT NULL,
            kind         TEXT NOT NULL,
            payload_json TEXT NOT NULL
        )",
    )?;
    {
        let mut old = tx.prepare(
            "SELECT revision, committed_ms, kind, key_id, key_hash, owner, enabled,
                expires_ms, meta_json, payload
             FROM events ORDER BY revision",
        )?;
        let mut insert = tx.prepare(
            "INSERT INTO events_encoded (revision, committed_ms, kind, payload_json)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut rows = old.query([])?;
        while let Some(row) = rows.next()? {
            let revision: u64 = row.get(0)?;
            let committed_ms: i64 = row.get(1)?;
            let change = legacy_change(row)
                .map_err(|why| corrupt(&format!("event at revision {revision} ({why})")))?;
            let encoded = event_codec::encode(&change)
                .map_err(|error| corrupt(&format!("event at revision {revision} ({error})")))?;
            insert.execute(params![revision, committed_ms, encoded.kind, encoded.json])?;
        }
    }
    tx.execute_batch(
        "DROP TABLE events;
         ALTER TABLE events_encoded RENAME TO events;",
    )?;
    Ok(())
}

/// The change in an event row as migrations 1 and 2 stored it.
fn legacy_change(row: &Row<'_>) -> Result<Change, String> {
    let column = |error: rusqlite::Error| error.to_string();
    let kind: String = row.get(2).map_err(column)?;
    if kind == "encoded" {
        let payload: Vec<u8> = row.get(9).map_err(column)?;
        return event_from_legacy_bytes(&payload)
            .map(|event| event.change)
            .ok_or_else(|| "payload is not an encoded event".to_owned());
    }
    let id: String = row.get(3).map_err(column)?;
    let hash: Vec<u8> = row.get(4).map_err(column)?;
    let id: KeyId = id.parse().map_err(|_| "bad key id".to_owned())?;
    let hash = KeyHash::from_slice(&hash).ok_or_else(|| "bad key hash".to_owned())?;
    match kind.as_str() {
        "key_upserted" => {
            let meta_json: String = row.get(8).map_err(column)?;
            Ok(Change::KeyUpserted(ReplicaKey {
                hash,
                id,
                owner: row.get(5).map_err(column)?,
                enabled: row.get(6).map_err(column)?,
                expires_unix_ms: row.get(7).map_err(column)?,
                meta: serde_json::from_str(&meta_json).map_err(|_| "bad meta".to_owned())?,
                limits: keygate_proto::KeyLimits::default(),
            }))
        }
        "key_deleted" => Ok(Change::KeyDeleted { id, hash }),
        other => Err(format!("unknown kind {other:?}")),
    }
}

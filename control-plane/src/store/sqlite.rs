//! The SQLite store: one file in WAL mode, so reads (snapshots, lookups, listings) run beside
//! the single writer. Writes are serialized through one connection behind a mutex, which is
//! also what makes revisions contiguous: only one transaction at a time can take `head + 1`.
//!
//! SQLite calls block, so every operation runs on tokio's blocking pool; the async side only
//! awaits the result. The passkey tables and operations are in the `passkeys` submodule.

mod passkeys;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use keygate_proto::time::now_unix_ms;
use keygate_proto::{Change, Event, KeyHash, KeyId, Meta, ReplicaKey, Revision, pb};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde_json::json;

use super::{
    AuditEntry, CommitObserver, EnabledChange, KeyQuery, KeyRecord, LogBounds, NewKey,
    OwnerRevoked, Reroll, Rerolled, Snapshot, Store, StoreError,
};

/// Schema migrations, applied in order; the index + 1 is the version recorded in
/// `schema_migrations`. Only ever append.
const MIGRATIONS: &[&str] = &[
    // 1: keys, the event log, the audit log.
    "CREATE TABLE keys (
        key_id      TEXT PRIMARY KEY,
        key_hash    BLOB NOT NULL UNIQUE,
        owner       TEXT NOT NULL,
        name        TEXT NOT NULL,
        start       TEXT NOT NULL,
        enabled     INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL,
        expires_ms  INTEGER,
        meta_json   TEXT NOT NULL,
        revision    INTEGER NOT NULL
    );
    CREATE INDEX keys_by_owner ON keys (owner, key_id);
    -- One row per committed change. kind: 'key_upserted' (all columns set) or 'key_deleted'
    -- (owner, enabled, expires_ms and meta_json NULL).
    CREATE TABLE events (
        revision     INTEGER PRIMARY KEY,
        committed_ms INTEGER NOT NULL,
        kind         TEXT NOT NULL,
        key_id       TEXT NOT NULL,
        key_hash     BLOB NOT NULL,
        owner        TEXT,
        enabled      INTEGER,
        expires_ms   INTEGER,
        meta_json    TEXT
    );
    CREATE TABLE audit (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms       INTEGER NOT NULL,
        actor       TEXT NOT NULL,
        action      TEXT NOT NULL,
        target      TEXT NOT NULL,
        revision    INTEGER NOT NULL,
        detail_json TEXT NOT NULL
    );
    -- The head is kept here rather than derived from MAX(revision), so that compacting old
    -- events can never move it backwards.
    CREATE TABLE log_state (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        head            INTEGER NOT NULL,
        oldest_retained INTEGER NOT NULL
    );
    INSERT INTO log_state (id, head, oldest_retained) VALUES (1, 0, 1);",
    // 2: events that are not about keys (passkey, session, user, signing-key changes) are kept
    // whole as an encoded keygate.v1 Event in `payload`, with kind 'encoded' and empty key
    // columns.
    "ALTER TABLE events ADD COLUMN payload BLOB;",
    // 3: users, passkeys, enrollment links, sessions, signing keys, passkey revocations.
    passkeys::MIGRATION,
];

/// Idle read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 4;

const KEY_COLUMNS: &str =
    "key_id, key_hash, owner, name, start, enabled, created_ms, expires_ms, meta_json, revision";

/// A [`Store`] in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    observer: Arc<dyn CommitObserver>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// The parent directory must exist.
    pub async fn open(path: &Path, observer: Arc<dyn CommitObserver>) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let open_error = |source: rusqlite::Error| StoreError::Open {
                path: path.display().to_string(),
                source: Box::new(source),
            };
            let mut writer = open_connection(&path).map_err(open_error)?;
            // WAL is a property of the file: set once here, readers inherit it.
            writer
                .pragma_update(None, "journal_mode", "WAL")
                .map_err(open_error)?;
            migrate(&mut writer).map_err(open_error)?;
            Ok(Self {
                inner: Arc::new(Inner {
                    path,
                    writer: Mutex::new(writer),
                    readers: Mutex::new(Vec::new()),
                    observer,
                }),
            })
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `work` in one write transaction on the blocking pool. The events it appends are
    /// handed to the observer after the commit, while the writer lock is still held, so the
    /// observer sees them in revision order. The whole closure runs even if the caller stops
    /// waiting, so a committed change is never left unannounced.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&inner.writer);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let head: u64 = tx
                .query_row("SELECT head FROM log_state WHERE id = 1", [], |row| {
                    row.get(0)
                })
                .map_err(backend)?;
            let mut writer = Writer {
                tx: &tx,
                head: Revision(head),
                now_unix_ms: now_unix_ms(),
                events: Vec::new(),
            };
            let value = work(&mut writer)?;
            let events = std::mem::take(&mut writer.events);
            if !events.is_empty() {
                tx.execute(
                    "UPDATE log_state SET head = ?1 WHERE id = 1",
                    params![writer.head.0],
                )
                .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
            if !events.is_empty() {
                inner.observer.committed(&events);
            }
            Ok(value)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `work` in one read transaction on the blocking pool: everything it reads is
    /// consistent at one point in time.
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let idle = lock(&inner.readers).pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => open_connection(&inner.path).map_err(backend)?,
            };
            let value = {
                let tx = conn.transaction().map_err(backend)?;
                let value = work(&tx)?;
                tx.finish().map_err(backend)?;
                value
            };
            let mut readers = lock(&inner.readers);
            if readers.len() < MAX_IDLE_READERS {
                readers.push(conn);
            }
            Ok(value)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// A mutex poisoned by a panic elsewhere still guards a usable connection: every transaction
/// on it either committed or rolled back when it was dropped.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn open_connection(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    // FULL: a committed revocation must survive a power loss, or a restored control plane
    // would hand gateways a snapshot in which the key is valid again.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_ms INTEGER NOT NULL
        )",
    )?;
    let applied: usize = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(migration)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
            params![index + 1, now_unix_ms()],
        )?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied schema migration");
    }
    Ok(())
}

fn backend(error: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(failure, _) = &error
        && failure.code == rusqlite::ErrorCode::ConstraintViolation
    {
        return StoreError::Conflict("a key with this id or hash already exists".into());
    }
    StoreError::Backend(Box::new(error))
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(format!("corrupt {what}").into())
}

/// One write transaction: the head it advances and the events it appends.
struct Writer<'a> {
    tx: &'a Transaction<'a>,
    head: Revision,
    now_unix_ms: i64,
    events: Vec<Event>,
}

impl Writer<'_> {
    /// Appends one event at the next revision.
    fn append(&mut self, change: Change) -> Result<Revision, StoreError> {
        let revision = self.head.next();
        let event = Event {
            revision,
            committed_unix_ms: self.now_unix_ms,
            change,
        };
        let (kind, id, hash, upserted, payload) = match &event.change {
            Change::KeyUpserted(key) => (
                "key_upserted",
                key.id.to_string(),
                key.hash.0.to_vec(),
                Some(key),
                None,
            ),
            Change::KeyDeleted { id, hash } => {
                ("key_deleted", id.to_string(), hash.0.to_vec(), None, None)
            }
            Change::PasskeyRevoked(_)
            | Change::SessionRevoked(_)
            | Change::UserState(_)
            | Change::SigningKey(_) => (
                "encoded",
                String::new(),
                Vec::new(),
                None,
                Some(prost::Message::encode_to_vec(&pb::Event::from(&event))),
            ),
        };
        let meta_json = upserted.map(|key| meta_to_json(&key.meta)).transpose()?;
        self.tx
            .execute(
                "INSERT INTO events (revision, committed_ms, kind, key_id, key_hash, owner,
                    enabled, expires_ms, meta_json, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    revision.0,
                    self.now_unix_ms,
                    kind,
                    id,
                    hash,
                    upserted.map(|key| key.owner.as_str()),
                    upserted.map(|key| key.enabled),
                    upserted.and_then(|key| key.expires_unix_ms),
                    meta_json,
                    payload,
                ],
            )
            .map_err(backend)?;
        self.head = revision;
        self.events.push(event);
        Ok(revision)
    }

    /// Writes the operation's audit row. `revision` is 0 when nothing replicated changed.
    fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        revision: Revision,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO audit (at_ms, actor, action, target, revision, detail_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    self.now_unix_ms,
                    actor,
                    action,
                    target,
                    revision.0,
                    detail.to_string()
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.tx
            .execute(
                &format!("INSERT INTO keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    key.id.to_string(),
                    &key.hash.0[..],
                    key.owner,
                    key.name,
                    key.start,
                    key.enabled,
                    key.created_unix_ms,
                    key.expires_unix_ms,
                    meta_to_json(&key.meta)?,
                    key.revision.0,
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    /// Writes the mutable fields of a key (enabled, expiry, revision).
    fn update_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE keys SET enabled = ?2, expires_ms = ?3, revision = ?4 WHERE key_id = ?1",
                params![
                    key.id.to_string(),
                    key.enabled,
                    key.expires_unix_ms,
                    key.revision.0
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn delete_key(&mut self, key: &KeyRecord) -> Result<Revision, StoreError> {
        self.tx
            .execute(
                "DELETE FROM keys WHERE key_id = ?1",
                params![key.id.to_string()],
            )
            .map_err(backend)?;
        self.append(Change::KeyDeleted {
            id: key.id,
            hash: key.hash,
        })
    }

    fn existing_key(&self, id: KeyId) -> Result<KeyRecord, StoreError> {
        get_key(self.tx, id)?.ok_or(StoreError::KeyNotFound(id))
    }
}

fn meta_to_json(meta: &Meta) -> Result<String, StoreError> {
    serde_json::to_string(meta).map_err(|e| StoreError::Corrupt(format!("meta: {e}")))
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let id: String = row.get(0)?;
    let hash: Vec<u8> = row.get(1)?;
    let meta_json: String = row.get(8)?;
    Ok(KeyRecord {
        id: id.parse().map_err(|_| corrupt("key id"))?,
        hash: KeyHash::from_slice(&hash).ok_or_else(|| corrupt("key hash"))?,
        owner: row.get(2)?,
        name: row.get(3)?,
        start: row.get(4)?,
        enabled: row.get(5)?,
        created_unix_ms: row.get(6)?,
        expires_unix_ms: row.get(7)?,
        meta: serde_json::from_str(&meta_json).map_err(|_| corrupt("key meta"))?,
        revision: Revision(row.get(9)?),
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    let kind: String = row.get(2)?;
    if kind == "encoded" {
        let payload: Vec<u8> = row.get(9)?;
        let wire: pb::Event =
            prost::Message::decode(payload.as_slice()).map_err(|_| corrupt("event payload"))?;
        return Event::try_from(wire).map_err(|_| corrupt("event payload"));
    }
    let id: String = row.get(3)?;
    let hash: Vec<u8> = row.get(4)?;
    let id: KeyId = id.parse().map_err(|_| corrupt("event key id"))?;
    let hash = KeyHash::from_slice(&hash).ok_or_else(|| corrupt("event key hash"))?;
    let change = match kind.as_str() {
        "key_upserted" => {
            let meta_json: String = row.get(8)?;
            Change::KeyUpserted(ReplicaKey {
                hash,
                id,
                owner: row.get(5)?,
                enabled: row.get(6)?,
                expires_unix_ms: row.get(7)?,
                meta: serde_json::from_str(&meta_json).map_err(|_| corrupt("event meta"))?,
            })
        }
        "key_deleted" => Change::KeyDeleted { id, hash },
        _ => return Err(corrupt("event kind")),
    };
    Ok(Event {
        revision: Revision(row.get(0)?),
        committed_unix_ms: row.get(1)?,
        change,
    })
}

fn get_key(tx: &Transaction<'_>, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
    tx.query_row(
        &format!("SELECT {KEY_COLUMNS} FROM keys WHERE key_id = ?1"),
        params![id.to_string()],
        key_from_row,
    )
    .optional()
    .map_err(backend)
}

fn log_bounds(tx: &Transaction<'_>) -> Result<LogBounds, StoreError> {
    tx.query_row(
        "SELECT head, oldest_retained FROM log_state WHERE id = 1",
        [],
        |row| {
            Ok(LogBounds {
                head: Revision(row.get(0)?),
                oldest_retained: Revision(row.get(1)?),
            })
        },
    )
    .map_err(backend)
}

#[async_trait]
impl Store for SqliteStore {
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

    async fn create_key(&self, key: NewKey, actor: &str) -> Result<KeyRecord, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let mut record = KeyRecord {
                id: key.id,
                hash: key.hash,
                owner: key.owner,
                name: key.name,
                start: key.start,
                enabled: key.enabled,
                created_unix_ms: key.created_unix_ms,
                expires_unix_ms: key.expires_unix_ms,
                meta: key.meta,
                revision: w.head.next(),
            };
            w.insert_key(&record)?;
            record.revision = w.append(Change::KeyUpserted(record.replica()))?;
            let detail = json!({
                "owner": record.owner,
                "name": record.name,
                "prefix": record.prefix(),
                "enabled": record.enabled,
                "expiresUnixMs": record.expires_unix_ms,
            });
            w.audit(
                &actor,
                "key.create",
                &record.id.to_string(),
                record.revision,
                &detail,
            )?;
            Ok(record)
        })
        .await
    }

    async fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.read(move |tx| get_key(tx, id)).await
    }

    async fn key_by_hash(
        &self,
        hash: KeyHash,
    ) -> Result<(Option<KeyRecord>, Revision), StoreError> {
        self.read(move |tx| {
            let key = tx
                .query_row(
                    &format!("SELECT {KEY_COLUMNS} FROM keys WHERE key_hash = ?1"),
                    params![&hash.0[..]],
                    key_from_row,
                )
                .optional()
                .map_err(backend)?;
            Ok((key, log_bounds(tx)?.head))
        })
        .await
    }

    async fn list_keys(&self, query: KeyQuery) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(move |tx| {
            // Fixed-width base62 ids sort as text in the same order as their numbers.
            let after = query.after.map(|id| id.to_string()).unwrap_or_default();
            let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
            let mut statement = tx
                .prepare_cached(&format!(
                    "SELECT {KEY_COLUMNS} FROM keys
                     WHERE key_id > ?1 AND (?2 IS NULL OR owner = ?2)
                     ORDER BY key_id LIMIT ?3"
                ))
                .map_err(backend)?;
            let rows = statement
                .query_map(params![after, query.owner, limit], key_from_row)
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn set_key_enabled(
        &self,
        id: KeyId,
        enabled: bool,
        actor: &str,
    ) -> Result<EnabledChange, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let mut key = w.existing_key(id)?;
            let action = if enabled { "key.enable" } else { "key.disable" };
            let changed = key.enabled != enabled;
            let mut revision = Revision::ZERO;
            if changed {
                key.enabled = enabled;
                key.revision = w.head.next();
                w.update_key(&key)?;
                revision = w.append(Change::KeyUpserted(key.replica()))?;
            }
            let detail = json!({ "owner": key.owner, "changed": changed });
            w.audit(&actor, action, &id.to_string(), revision, &detail)?;
            Ok(EnabledChange { key, changed })
        })
        .await
    }

    async fn delete_key(&self, id: KeyId, actor: &str) -> Result<Revision, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let key = w.existing_key(id)?;
            let revision = w.delete_key(&key)?;
            let detail = json!({ "owner": key.owner, "name": key.name });
            w.audit(&actor, "key.delete", &id.to_string(), revision, &detail)?;
            Ok(revision)
        })
        .await
    }

    async fn reroll_key(&self, reroll: Reroll, actor: &str) -> Result<Rerolled, StoreError> {
        let actor = actor.to_owned();
        self.write(move |w| {
            let mut old_key = w.existing_key(reroll.old_id)?;
            let mut new_key = KeyRecord {
                id: reroll.new_id,
                hash: reroll.new_hash,
                owner: old_key.owner.clone(),
                name: old_key.name.clone(),
                start: reroll.new_start,
                // A reroll rotates the secret; it neither re-enables a disabled key nor
                // extends how long access lasts.
                enabled: old_key.enabled,
                created_unix_ms: reroll.now_unix_ms,
                expires_unix_ms: old_key.expires_unix_ms,
                meta: old_key.meta.clone(),
                revision: w.head.next(),
            };
            w.insert_key(&new_key)?;
            new_key.revision = w.append(Change::KeyUpserted(new_key.replica()))?;

            let old_expires = match old_key.expires_unix_ms {
                Some(existing) => existing.min(reroll.old_expires_unix_ms),
                None => reroll.old_expires_unix_ms,
            };
            old_key.expires_unix_ms = Some(old_expires);
            old_key.revision = w.head.next();
            w.update_key(&old_key)?;
            let revision = w.append(Change::KeyUpserted(old_key.replica()))?;

            let detail = json!({
                "owner": old_key.owner,
                "newKeyId": new_key.id.to_string(),
                "graceMs": reroll.grace_ms,
                "oldExpiresUnixMs": old_expires,
            });
            w.audit(
                &actor,
                "key.reroll",
                &old_key.id.to_string(),
                revision,
                &detail,
            )?;
            Ok(Rerolled {
                new_key,
                old_key,
                revision,
            })
        })
        .await
    }

    async fn revoke_owner(&self, owner: &str, actor: &str) -> Result<OwnerRevoked, StoreError> {
        let actor = actor.to_owned();
        let owner = owner.to_owned();
        self.write(move |w| {
            let keys = {
                let mut statement =
                    w.tx.prepare(&format!(
                        "SELECT {KEY_COLUMNS} FROM keys WHERE owner = ?1 ORDER BY key_id"
                    ))
                    .map_err(backend)?;
                let rows = statement
                    .query_map(params![owner], key_from_row)
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
            };
            let mut deleted = Vec::with_capacity(keys.len());
            let mut revision = Revision::ZERO;
            for key in &keys {
                revision = w.delete_key(key)?;
                deleted.push(key.id);
            }
            // The audit row names at most 100 ids, so one bulk revocation cannot bloat it.
            let sample: Vec<String> = deleted.iter().take(100).map(KeyId::to_string).collect();
            let detail = json!({ "count": deleted.len(), "keyIds": sample });
            w.audit(&actor, "owner.revoke", &owner, revision, &detail)?;
            Ok(OwnerRevoked {
                revision: w.head,
                deleted,
            })
        })
        .await
    }

    async fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(move |tx| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut statement = tx
                .prepare_cached(
                    "SELECT revision, committed_ms, kind, key_id, key_hash, owner, enabled,
                        expires_ms, meta_json, payload
                     FROM events WHERE revision > ?1 ORDER BY revision LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = statement
                .query_map(params![after.0, limit], event_from_row)
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        // Head and keys are read in one read transaction, so the keys are exactly the state
        // at that revision, whatever commits meanwhile.
        self.read(|tx| {
            let revision = log_bounds(tx)?.head;
            let mut statement = tx
                .prepare(&format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY key_id"))
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| key_from_row(row).map(|key| key.replica()))
                .map_err(backend)?;
            let keys = rows.collect::<Result<Vec<_>, _>>().map_err(backend)?;
            let sessions = passkeys::session_state(tx, now_unix_ms())?;
            Ok(Snapshot {
                revision,
                keys,
                sessions,
            })
        })
        .await
    }

    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |tx| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut statement = tx
                .prepare_cached(
                    "SELECT id, at_ms, actor, action, target, revision, detail_json
                     FROM audit ORDER BY id DESC LIMIT ?1",
                )
                .map_err(backend)?;
            let rows = statement
                .query_map(params![limit], |row| {
                    Ok(AuditEntry {
                        id: row.get(0)?,
                        at_unix_ms: row.get(1)?,
                        actor: row.get(2)?,
                        action: row.get(3)?,
                        target: row.get(4)?,
                        revision: Revision(row.get(5)?),
                        detail_json: row.get(6)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::{CreateKey, Keys, ListKeys};
    use crate::store::KeyQuery;

    /// Records what the store announces, to compare with what it stored.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Event>>);

    impl CommitObserver for Recorder {
        fn committed(&self, events: &[Event]) {
            lock(&self.0).extend_from_slice(events);
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        keys: Keys,
        recorder: Arc<Recorder>,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Arc::new(Recorder::default());
        let store = SqliteStore::open(&dir.path().join("keygate.db"), recorder.clone() as _)
            .await
            .unwrap();
        let keys = Keys::new(Arc::new(store.clone()));
        Fixture {
            _dir: dir,
            store,
            keys,
            recorder,
        }
    }

    #[tokio::test]
    async fn compaction_drops_old_events_but_never_the_head_or_the_keys() {
        let f = fixture().await;
        for _ in 0..3 {
            f.keys.create(create("alice"), "test").await.unwrap();
        }
        let unchanged = f.store.compact(0).await.unwrap();
        assert_eq!(unchanged.oldest_retained, Revision(1), "nothing that old");
        let bounds = f.store.compact(now_unix_ms() + 1).await.unwrap();
        assert_eq!(bounds.head, Revision(3));
        assert_eq!(bounds.oldest_retained, Revision(4));
        assert!(all_events(&f.store).await.is_empty());
        // Compacting again, or with an older cutoff, never moves the bound back.
        assert_eq!(f.store.compact(0).await.unwrap(), bounds);

        f.keys.create(create("alice"), "test").await.unwrap();
        let events = all_events(&f.store).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].revision, Revision(4));
        let snapshot = f.store.snapshot().await.unwrap();
        assert_eq!(snapshot.revision, Revision(4));
        assert_eq!(snapshot.keys.len(), 4);
    }

    fn create(owner: &str) -> CreateKey {
        CreateKey {
            owner: owner.into(),
            name: "ci".into(),
            meta: Meta::from([("plan".to_owned(), "pro".to_owned())]),
            ..CreateKey::default()
        }
    }

    async fn all_events(store: &SqliteStore) -> Vec<Event> {
        store.events_after(Revision::ZERO, 10_000).await.unwrap()
    }

    #[tokio::test]
    async fn revisions_are_contiguous_across_every_operation() {
        let f = fixture().await;
        let a = f.keys.create(create("alice"), "admin").await.unwrap();
        let b = f.keys.create(create("bob"), "admin").await.unwrap();
        let c = f.keys.create(create("bob"), "admin").await.unwrap();
        assert_eq!(
            [a.revision, b.revision, c.revision],
            [Revision(1), Revision(2), Revision(3)]
        );

        let id = a.record.id.to_string();
        assert_eq!(
            f.keys
                .set_enabled(&id, false, "admin")
                .await
                .unwrap()
                .revision,
            Revision(4)
        );
        // Already disabled: the key's revision comes back and nothing is appended.
        assert_eq!(
            f.keys
                .set_enabled(&id, false, "admin")
                .await
                .unwrap()
                .revision,
            Revision(4)
        );
        assert_eq!(
            f.keys
                .set_enabled(&id, true, "admin")
                .await
                .unwrap()
                .revision,
            Revision(5)
        );
        let rerolled = f.keys.reroll(&id, 60_000, "admin").await.unwrap();
        assert_eq!(rerolled.revision, Revision(7));
        assert_eq!(rerolled.record.revision, Revision(6));
        assert_eq!(f.keys.delete(&id, "admin").await.unwrap(), Revision(8));
        let revoked = f.keys.revoke_owner("bob", "admin").await.unwrap();
        assert_eq!(revoked.revision, Revision(10));
        assert_eq!(revoked.deleted.len(), 2);
        // No keys left for bob: the head is reported unchanged.
        assert_eq!(
            f.keys.revoke_owner("bob", "admin").await.unwrap().revision,
            Revision(10)
        );

        let events = all_events(&f.store).await;
        let revisions: Vec<u64> = events.iter().map(|e| e.revision.0).collect();
        assert_eq!(revisions, (1..=10).collect::<Vec<_>>());
        assert_eq!(
            *lock(&f.recorder.0),
            events,
            "observer saw exactly the stored events"
        );
        assert!(matches!(&events[7].change, Change::KeyDeleted { id, .. } if *id == a.record.id));
        let bounds = f.store.log_bounds().await.unwrap();
        assert_eq!(
            bounds,
            LogBounds {
                oldest_retained: Revision(1),
                head: Revision(10)
            }
        );
    }

    #[tokio::test]
    async fn every_operation_writes_one_audit_row_with_its_revision() {
        let f = fixture().await;
        let key = f.keys.create(create("alice"), "admin:ops").await.unwrap();
        let id = key.record.id.to_string();
        f.keys.set_enabled(&id, false, "admin").await.unwrap();
        f.keys.set_enabled(&id, false, "admin").await.unwrap();
        f.keys.reroll(&id, 0, "admin").await.unwrap();
        f.keys.delete(&id, "admin").await.unwrap();
        f.keys.revoke_owner("alice", "admin").await.unwrap();

        let audit = f.keys.audit(0).await.unwrap();
        let summary: Vec<(&str, u64)> = audit
            .iter()
            .map(|e| (e.action.as_str(), e.revision.0))
            .collect();
        assert_eq!(
            summary,
            [
                // The reroll's sibling key is alice's last one: revoked at 6.
                ("owner.revoke", 6),
                ("key.delete", 5),
                // Two events: the new key (3), the old key's expiry (4).
                ("key.reroll", 4),
                ("key.disable", 0),
                ("key.disable", 2),
                ("key.create", 1),
            ]
        );
        assert_eq!(audit[5].actor, "admin:ops");
        assert_eq!(audit[5].target, id);
        for entry in &audit {
            let detail: serde_json::Value = serde_json::from_str(&entry.detail_json).unwrap();
            assert!(detail.is_object());
            assert!(
                !entry.detail_json.contains(&key.plaintext),
                "secret in the audit log"
            );
        }
        assert_eq!(f.keys.audit(2).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_failed_write_leaves_no_event_and_no_audit_row() {
        let f = fixture().await;
        let first = f.keys.create(create("alice"), "admin").await.unwrap();
        // Same hash again: the unique constraint fails inside the transaction.
        let duplicate = NewKey {
            id: KeyId::generate(),
            hash: first.record.hash,
            owner: "mallory".into(),
            name: String::new(),
            start: first.record.start.clone(),
            enabled: true,
            created_unix_ms: 0,
            expires_unix_ms: None,
            meta: Meta::new(),
        };
        let error = f.store.create_key(duplicate, "admin").await.unwrap_err();
        assert!(matches!(error, StoreError::Conflict(_)), "{error}");
        assert_eq!(all_events(&f.store).await.len(), 1);
        assert_eq!(f.store.list_audit(100).await.unwrap().len(), 1);
        assert_eq!(f.store.log_bounds().await.unwrap().head, Revision(1));
        assert_eq!(
            lock(&f.recorder.0).len(),
            1,
            "nothing announced for the rollback"
        );
        // The next write still takes the next revision.
        assert_eq!(
            f.keys
                .create(create("bob"), "admin")
                .await
                .unwrap()
                .revision,
            Revision(2)
        );
    }

    #[tokio::test]
    async fn reroll_issues_a_sibling_and_shortens_the_old_expiry() {
        let f = fixture().await;
        let mut request = create("alice");
        request.prefix = "acme".into();
        let old = f.keys.create(request, "admin").await.unwrap();
        let before = now_unix_ms();
        let new = f
            .keys
            .reroll(&old.record.id.to_string(), 60_000, "admin")
            .await
            .unwrap();
        let after = now_unix_ms();

        assert_ne!(new.record.id, old.record.id);
        assert_ne!(new.plaintext, old.plaintext);
        assert!(new.plaintext.starts_with("acme_"));
        assert_eq!(new.record.prefix(), "acme");
        assert_eq!(new.record.owner, "alice");
        assert_eq!(new.record.name, "ci");
        assert_eq!(new.record.meta, old.record.meta);
        assert_eq!(new.record.expires_unix_ms, None);
        let old_now = f.keys.get(&old.record.id.to_string()).await.unwrap();
        let expires = old_now.expires_unix_ms.unwrap();
        assert!(
            (before + 60_000..=after + 60_000).contains(&expires),
            "{expires}"
        );

        // A second reroll with a longer grace keeps the earlier expiry.
        f.keys
            .reroll(&old.record.id.to_string(), 3_600_000, "admin")
            .await
            .unwrap();
        let again = f.keys.get(&old.record.id.to_string()).await.unwrap();
        assert_eq!(again.expires_unix_ms, Some(expires));

        // Grace 0: expired at once.
        let zero = f
            .keys
            .reroll(&new.record.id.to_string(), 0, "admin")
            .await
            .unwrap();
        let stopped = f.keys.get(&new.record.id.to_string()).await.unwrap();
        assert!(stopped.expires_unix_ms.unwrap() <= now_unix_ms());
        // The events carry the new key first, then the old key's new expiry.
        let events = f
            .store
            .events_after(Revision(zero.revision.0 - 2), 10)
            .await
            .unwrap();
        match (&events[0].change, &events[1].change) {
            (Change::KeyUpserted(first), Change::KeyUpserted(second)) => {
                assert_eq!(first.id, zero.record.id);
                assert_eq!(second.id, new.record.id);
                assert_eq!(second.expires_unix_ms, stopped.expires_unix_ms);
            }
            other => panic!("unexpected events {other:?}"),
        }
    }

    #[tokio::test]
    async fn keys_page_in_id_order_with_an_opaque_cursor() {
        let f = fixture().await;
        let mut alice = Vec::new();
        for i in 0..25 {
            let owner = if i % 5 == 0 { "bob" } else { "alice" };
            let key = f.keys.create(create(owner), "admin").await.unwrap();
            if owner == "alice" {
                alice.push(key.record.id);
            }
        }
        alice.sort();
        let mut seen = Vec::new();
        let mut cursor = String::new();
        let mut pages = 0;
        loop {
            let page = f
                .keys
                .list(ListKeys {
                    owner: "alice".into(),
                    limit: 7,
                    cursor,
                })
                .await
                .unwrap();
            pages += 1;
            assert!(page.keys.len() <= 7);
            seen.extend(page.keys.iter().map(|k| k.id));
            match page.next_cursor {
                Some(next) => cursor = next,
                None => break,
            }
        }
        assert_eq!(seen, alice, "every key once, in id order");
        assert_eq!(pages, 3, "20 keys in pages of 7; no empty last page");
        let everyone = f.keys.list(ListKeys::default()).await.unwrap();
        assert_eq!(everyone.keys.len(), 25);
        assert_eq!(everyone.next_cursor, None);
        let garbage = f
            .keys
            .list(ListKeys {
                cursor: "not a cursor".into(),
                ..ListKeys::default()
            })
            .await;
        assert!(matches!(
            garbage,
            Err(crate::keys::KeyError::InvalidArgument(_))
        ));
        // The store's own query honours the owner filter and the lower bound.
        let after_first = f
            .store
            .list_keys(KeyQuery {
                owner: Some("alice".into()),
                after: Some(alice[0]),
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(after_first.len(), alice.len() - 1);
    }

    #[tokio::test]
    async fn snapshots_are_consistent_at_their_revision_while_writes_go_on() {
        let f = fixture().await;
        let writer = {
            let keys = f.keys.clone();
            tokio::spawn(async move {
                for _ in 0..150 {
                    keys.create(create("alice"), "admin").await.unwrap();
                }
            })
        };
        let mut distinct = std::collections::BTreeSet::new();
        while !writer.is_finished() {
            // Only creates happen, so the state at revision R holds exactly R keys.
            let snapshot = f.store.snapshot().await.unwrap();
            assert_eq!(snapshot.keys.len() as u64, snapshot.revision.0);
            distinct.insert(snapshot.revision);
        }
        writer.await.unwrap();
        let last = f.store.snapshot().await.unwrap();
        assert_eq!((last.revision, last.keys.len()), (Revision(150), 150));
        assert!(!distinct.is_empty());
    }

    #[tokio::test]
    async fn lookups_by_hash_and_reopening_keep_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.db");
        let recorder: Arc<dyn CommitObserver> = Arc::new(Recorder::default());
        let store = SqliteStore::open(&path, recorder.clone()).await.unwrap();
        let keys = Keys::new(Arc::new(store.clone()));
        let issued = keys.create(create("alice"), "admin").await.unwrap();
        let hash = keygate_proto::ApiKey::parse(&issued.plaintext)
            .unwrap()
            .hash();
        let (found, head) = store.key_by_hash(hash).await.unwrap();
        assert_eq!(found.unwrap().id, issued.record.id);
        assert_eq!(head, Revision(1));
        let (missing, _) = store.key_by_hash(KeyHash([7; 32])).await.unwrap();
        assert!(missing.is_none());
        drop((keys, store));

        // Reopening runs no migration twice and keeps keys and head.
        let store = SqliteStore::open(&path, recorder).await.unwrap();
        assert_eq!(store.log_bounds().await.unwrap().head, Revision(1));
        assert!(store.get_key(issued.record.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn create_validates_its_input() {
        let f = fixture().await;
        let cases = [
            CreateKey {
                owner: String::new(),
                ..create("x")
            },
            CreateKey {
                prefix: "bad_prefix".into(),
                ..create("alice")
            },
            CreateKey {
                name: "n".repeat(257),
                ..create("alice")
            },
            CreateKey {
                expires_unix_ms: Some(now_unix_ms() - 1),
                ..create("alice")
            },
        ];
        for case in cases {
            let result = f.keys.create(case.clone(), "admin").await;
            assert!(
                matches!(result, Err(crate::keys::KeyError::InvalidArgument(_))),
                "{case:?}"
            );
        }
        let disabled = f
            .keys
            .create(
                CreateKey {
                    disabled: true,
                    ..create("alice")
                },
                "admin",
            )
            .await
            .unwrap();
        assert!(!disabled.record.enabled);
        assert!(disabled.plaintext.starts_with("kg_"));
        assert!(
            all_events(&f.store).await.len() == 1,
            "refused creates append nothing"
        );
    }
}

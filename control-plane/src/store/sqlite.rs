//! The SQLite store: one file in WAL mode, so reads (snapshots, lookups, listings) run beside
//! the single writer. Writes are serialized through one connection behind a mutex, which is
//! also what makes revisions contiguous: only one transaction at a time can take `head + 1`.
//!
//! SQLite calls block, so every operation runs on tokio's blocking pool; the async side only
//! awaits the result.
//!
//! SQLite is single-node. The store holds an exclusive lock on `<database>.lock` for as long as
//! it is open, so a second control plane on the same file refuses to start: each would announce
//! only its own commits to its own gateways, and the other's gateways would silently miss them.
//!
//! This module holds the connection handling and the schema's one list of migrations; each
//! aggregate's queries are in a submodule named after it: `log` (the writer, and with it the
//! contiguity invariant; the log's bounds, events and snapshots), `keys`, `limits`
//! (identities, credit balances, leases), `audit`, `users`, `enrollments`, `passkeys`,
//! `sessions`, `signing_keys`, `ceremonies`, `gateways`, `tokens`; and `copy`, the whole store
//! exported and imported.

mod audit;
mod ceremonies;
mod copy;
mod enrollments;
mod gateways;
mod keys;
mod limits;
mod log;
mod passkeys;
mod sessions;
mod signing_keys;
mod tokens;
mod users;

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use keygate_proto::time::now_unix_ms;
use rusqlite::{Connection, Row, Transaction, TransactionBehavior, params};

use self::log::Writer;
use super::{CommitObserver, StoreError};

/// One schema migration: SQL, or a Rust step for what SQL cannot do alone (making a random id,
/// decoding rows written in an older format).
enum Migration {
    Sql(&'static str),
    Rust(fn(&Transaction<'_>) -> rusqlite::Result<()>),
}

/// Schema migrations, applied in order, each in its own transaction; the index + 1 is the
/// version recorded in `schema_migrations`. Only ever append.
const MIGRATIONS: &[Migration] = &[
    // 1: keys, the event log, the audit log.
    Migration::Sql(
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
    ),
    // 2: events that are not about keys (passkey, session, user, signing-key changes) are kept
    // whole as an encoded keygate.v1 Event in `payload`, with kind 'encoded' and empty key
    // columns. (Superseded by migration 5.)
    Migration::Sql("ALTER TABLE events ADD COLUMN payload BLOB;"),
    // 3: users, passkeys, enrollment links, sessions, signing keys, passkey revocations.
    Migration::Sql(
        "
    -- handle: the WebAuthn user handle (16 random bytes). sessions_revoked_before_ms and
    -- state_prune_after_ms are the replicated UserState.
    CREATE TABLE users (
        user_id                    TEXT PRIMARY KEY,
        handle                     BLOB NOT NULL UNIQUE,
        created_ms                 INTEGER NOT NULL,
        disabled                   INTEGER NOT NULL,
        sessions_revoked_before_ms INTEGER NOT NULL,
        state_prune_after_ms       INTEGER NOT NULL
    );
    CREATE TABLE passkeys (
        passkey_id      TEXT PRIMARY KEY,
        user_id         TEXT NOT NULL REFERENCES users (user_id),
        credential_id   BLOB NOT NULL UNIQUE,
        name            TEXT NOT NULL,
        created_ms      INTEGER NOT NULL,
        last_used_ms    INTEGER,
        user_agent      TEXT NOT NULL,
        backup_eligible INTEGER NOT NULL,
        backed_up       INTEGER NOT NULL,
        credential_json TEXT NOT NULL
    );
    CREATE INDEX passkeys_by_user ON passkeys (user_id, created_ms);
    -- Only the blake3 hash of an enrollment token is kept.
    CREATE TABLE enrollments (
        token_hash    BLOB PRIMARY KEY,
        enrollment_id TEXT NOT NULL UNIQUE,
        user_id       TEXT NOT NULL REFERENCES users (user_id),
        created_ms    INTEGER NOT NULL,
        expires_ms    INTEGER NOT NULL,
        used_ms       INTEGER
    );
    -- No token is stored: tokens are signed and name their row.
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        user_id    TEXT NOT NULL,
        passkey_id TEXT NOT NULL,
        issued_ms  INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    );
    CREATE INDEX sessions_by_expiry ON sessions (expires_ms);
    -- Passkeys deleted while sessions they minted may still be unexpired.
    CREATE TABLE revoked_passkeys (
        passkey_id     TEXT PRIMARY KEY,
        user_id        TEXT NOT NULL,
        revoked_ms     INTEGER NOT NULL,
        prune_after_ms INTEGER NOT NULL
    );
    -- verify_until_ms NULL: the current key (at most one).
    CREATE TABLE signing_keys (
        key_id          TEXT PRIMARY KEY,
        secret          BLOB NOT NULL,
        public_key      BLOB NOT NULL,
        created_ms      INTEGER NOT NULL,
        verify_until_ms INTEGER
    );
    CREATE UNIQUE INDEX one_current_signing_key ON signing_keys ((verify_until_ms IS NULL))
        WHERE verify_until_ms IS NULL;",
    ),
    // 4: the log's identity, `log_state.log_id`: made here once, never changed afterwards.
    Migration::Rust(log::add_log_id),
    // 5: events in the store's own encoding: (revision, committed_ms, kind, payload_json), the
    // rows written by migrations 1 and 2 converted once.
    Migration::Rust(log::encode_events),
    // 6: WebAuthn ceremonies between begin and finish, so any replica can finish them.
    Migration::Sql(
        "CREATE TABLE ceremonies (
        ceremony_id TEXT PRIMARY KEY,
        state_json  TEXT NOT NULL,
        expires_ms  INTEGER NOT NULL
    );
    CREATE INDEX ceremonies_by_expiry ON ceremonies (expires_ms);",
    ),
    // 7: the gateway registry as replicas publish it, and each replica's heartbeat. (One
    // replica on SQLite, but the same rows as on PostgreSQL, so a copied store carries them.)
    Migration::Sql(
        "CREATE TABLE replicas (
        replica_id TEXT PRIMARY KEY,
        seen_ms    INTEGER NOT NULL
    );
    -- disconnected_ms NULL: the stream is open. staleness_ms NULL: not reported.
    CREATE TABLE gateways (
        gateway_id           TEXT PRIMARY KEY,
        replica_id           TEXT NOT NULL,
        region               TEXT NOT NULL,
        address              TEXT NOT NULL,
        version              TEXT NOT NULL,
        applied              INTEGER NOT NULL,
        last_seen_ms         INTEGER NOT NULL,
        connected_ms         INTEGER NOT NULL,
        disconnected_ms      INTEGER,
        staleness_ms         INTEGER,
        propagation_bound_ms INTEGER NOT NULL,
        stale_policy         TEXT NOT NULL,
        updated_ms           INTEGER NOT NULL
    );
    CREATE INDEX gateways_by_update ON gateways (updated_ms);",
    ),
    // 8: operator access (DESIGN.md, "Operator access" and "Hostile traffic"): named tokens
    // (hash only), revocable enrollment links, revocable signing keys, ceremonies counted per
    // client address, and the credential each gateway used.
    Migration::Sql(
        "-- scopes: space-separated scope names. gateway_id set: a gateway credential that only
    -- that gateway id may use (and no operator scope).
    CREATE TABLE operator_tokens (
        name       TEXT PRIMARY KEY,
        token_hash BLOB NOT NULL UNIQUE,
        scopes     TEXT NOT NULL,
        gateway_id TEXT,
        created_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL
    );
    -- voided_reason: 'revoked' (by an operator) or 'user_disabled'.
    ALTER TABLE enrollments ADD COLUMN voided_ms INTEGER;
    ALTER TABLE enrollments ADD COLUMN voided_reason TEXT;
    ALTER TABLE enrollments ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
    CREATE INDEX enrollments_by_user ON enrollments (user_id);
    -- revoked_ms set: every session the key signed is refused (verify_until_ms is set too).
    ALTER TABLE signing_keys ADD COLUMN revoked_ms INTEGER;
    -- max_session_lifetime_ms: the longest session the key signs (the session_lifetime it was
    -- made under); NULL for keys made before: no lifetime check on their tokens.
    ALTER TABLE signing_keys ADD COLUMN max_session_lifetime_ms INTEGER;
    -- client: the rate-limit bucket of the address that began the ceremony.
    ALTER TABLE ceremonies ADD COLUMN client TEXT NOT NULL DEFAULT '';
    CREATE INDEX ceremonies_by_client ON ceremonies (client, expires_ms);
    ALTER TABLE gateways ADD COLUMN credential TEXT NOT NULL DEFAULT '';",
    ),
    // 9: each passkey's authenticator model (DESIGN.md, "Passkeys beyond the basics"): the
    // AAGUID of its registration, 16 bytes; NULL for passkeys registered before.
    Migration::Sql("ALTER TABLE passkeys ADD COLUMN aaguid BLOB;"),
    // 10: limits per key (DESIGN.md, "Limits and permissions per key"): each key's limits,
    // identities, credit balances per holder, and the leases gateways spend them through.
    Migration::Sql(
        "-- limits_json: rate limits, credits flag, permissions ('{}': a plain key); the identity
    -- the key counts against is identity_id.
    ALTER TABLE keys ADD COLUMN limits_json TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE keys ADD COLUMN identity_id TEXT;
    CREATE INDEX keys_by_identity ON keys (identity_id) WHERE identity_id IS NOT NULL;
    CREATE TABLE identities (
        identity_id     TEXT PRIMARY KEY,
        ratelimits_json TEXT NOT NULL,
        created_ms      INTEGER NOT NULL,
        revision        INTEGER NOT NULL
    );
    -- One balance per holder with credits ('key:<id>' or 'identity:<id>'): what no gateway
    -- holds. The refill columns are all set or all NULL.
    CREATE TABLE credits (
        holder             TEXT PRIMARY KEY,
        remaining          INTEGER NOT NULL CHECK (remaining >= 0),
        refill_amount      INTEGER,
        refill_interval_ms INTEGER,
        next_refill_ms     INTEGER
    );
    CREATE INDEX credits_by_refill ON credits (next_refill_ms)
        WHERE next_refill_ms IS NOT NULL;
    -- Credits taken off a balance for one gateway to spend, until returned or written off.
    CREATE TABLE credit_leases (
        lease_id   TEXT PRIMARY KEY,
        holder     TEXT NOT NULL,
        gateway_id TEXT NOT NULL,
        amount     INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE INDEX credit_leases_by_holder ON credit_leases (holder);
    CREATE INDEX credit_leases_by_expiry ON credit_leases (expires_ms);",
    ),
    // 11: rate-limit use shared among replicas. A SQLite control plane is alone, so nothing
    // reads it; it exists so that both backends keep one schema and pass one store suite.
    Migration::Sql(
        "CREATE TABLE rate_usage (
        holder          TEXT NOT NULL,
        limit_name      TEXT NOT NULL,
        gateway_id      TEXT NOT NULL,
        window_start_ms INTEGER NOT NULL,
        used            INTEGER NOT NULL,
        replica_id      TEXT NOT NULL,
        updated_ms      INTEGER NOT NULL,
        PRIMARY KEY (holder, limit_name, gateway_id)
    );
    CREATE INDEX rate_usage_by_update ON rate_usage (updated_ms);",
    ),
];

/// Idle read connections kept open for reuse.
const MAX_IDLE_READERS: usize = 4;

/// A [`Store`](super::Store) in one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    observer: Arc<dyn CommitObserver>,
    /// `<database>.lock`, locked exclusively for the life of the store; dropping the file
    /// releases the lock (so does the process ending, however it ends).
    _lock: File,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// The parent directory must exist. Fails with [`StoreError::InUse`] while another store
    /// (in this process or another) has the same database open.
    pub async fn open(path: &Path, observer: Arc<dyn CommitObserver>) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            // Before the database is touched: a second control plane must not even migrate it.
            let lock = lock_database(&path)?;
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
                    _lock: lock,
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
            let (value, events) = {
                let mut writer = Writer::begin(&tx)?;
                let value = work(&mut writer)?;
                (value, writer.finish()?)
            };
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

/// Opens `<path>.lock` beside the database and locks it exclusively. An advisory lock on a
/// file of its own rather than on the database: SQLite's own locks are per transaction, and
/// locking the database file itself would fight SQLite's locking of it.
fn lock_database(path: &Path) -> Result<File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let open_error = |source: std::io::Error| StoreError::Open {
        path: lock_path.display().to_string(),
        source: Box::new(source),
    };
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(open_error)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::InUse {
            path: path.display().to_string(),
        }),
        Err(TryLockError::Error(source)) => Err(open_error(source)),
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
        match migration {
            Migration::Sql(sql) => tx.execute_batch(sql)?,
            Migration::Rust(step) => step(&tx)?,
        }
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
        // Ids are random and hashes are of random keys: a collision is practically impossible,
        // so this names the constraint rather than guessing which record it was.
        return StoreError::Conflict(format!("a unique id or hash already exists: {error}"));
    }
    StoreError::Backend(Box::new(error))
}

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(format!("corrupt {what}").into())
}

/// Every row `sql` returns, mapped.
fn collect<T>(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = tx.prepare_cached(sql).map_err(backend)?;
    let rows = statement.query_map(params, map).map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

/// Runs one statement that returns no rows, prepared once per connection (a copy runs the same
/// insert for every row).
fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<(), StoreError> {
    let mut statement = tx.prepare_cached(sql).map_err(backend)?;
    statement.execute(params).map_err(backend)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use keygate_proto::{Change, Event, KeyHash, KeyId, Meta, ReplicaKey, Revision, UserState};

    use super::*;
    use crate::store::suite::{Recorder, SuiteBackend};
    use crate::store::{EventLogStore, KeyStore, NewKey, Store};

    /// The suite's SQLite backend: a fresh file in a temporary directory per test.
    struct Sqlite {
        dir: tempfile::TempDir,
    }

    impl Sqlite {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("keygate.db")
        }
    }

    #[async_trait::async_trait]
    impl SuiteBackend for Sqlite {
        async fn open(&self, observer: Arc<dyn CommitObserver>) -> Arc<dyn Store> {
            Arc::new(SqliteStore::open(&self.path(), observer).await.unwrap())
        }
    }

    crate::store::suite::store_suite!(Sqlite::new());

    #[tokio::test]
    async fn a_second_store_on_the_same_file_is_refused_until_the_first_is_closed() {
        let db = Sqlite::new();
        let recorder: Arc<dyn CommitObserver> = Arc::new(Recorder::default());
        let first = SqliteStore::open(&db.path(), Arc::clone(&recorder))
            .await
            .unwrap();
        let second = SqliteStore::open(&db.path(), Arc::clone(&recorder)).await;
        let Err(error @ StoreError::InUse { .. }) = second else {
            panic!("a second store opened the same file");
        };
        let message = error.to_string();
        assert!(message.contains("SQLite is single-node"), "{message}");
        assert!(message.contains("postgres://"), "{message}");

        // A clone shares the first store's lock; only when every handle is gone is it free.
        let clone = first.clone();
        drop(first);
        assert!(matches!(
            SqliteStore::open(&db.path(), Arc::clone(&recorder)).await,
            Err(StoreError::InUse { .. })
        ));
        drop(clone);
        SqliteStore::open(&db.path(), recorder).await.unwrap();
    }

    /// A transaction on `conn` in which the database is as the first `count` migrations left
    /// it (recorded in `schema_migrations`); a test adds its old rows, commits, and opens the
    /// store to see the later migrations run.
    fn migrated_to(conn: &mut Connection, count: usize) -> rusqlite::Transaction<'_> {
        conn.execute_batch(
            "CREATE TABLE schema_migrations (
                version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
        )
        .unwrap();
        let tx = conn.transaction().unwrap();
        for (index, migration) in MIGRATIONS[..count].iter().enumerate() {
            match migration {
                Migration::Sql(sql) => tx.execute_batch(sql).unwrap(),
                Migration::Rust(step) => step(&tx).unwrap(),
            }
            tx.execute(
                "INSERT INTO schema_migrations VALUES (?1, 0)",
                params![index + 1],
            )
            .unwrap();
        }
        tx
    }

    /// A passkey registered before migration 9 has no AAGUID (it lists as "Unknown
    /// authenticator"); one registered after keeps its own.
    #[tokio::test]
    async fn passkeys_registered_before_aaguids_were_kept_have_none() {
        let db = Sqlite::new();
        {
            let mut conn = Connection::open(db.path()).unwrap();
            let tx = migrated_to(&mut conn, 8);
            tx.execute_batch(
                "INSERT INTO users VALUES ('alice', x'01010101010101010101010101010101', 0, 0, 0, 0);
                 INSERT INTO passkeys VALUES ('pk_old', 'alice', x'0909', 'old', 0, NULL, 'ua',
                    1, 1, '{}');",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = SqliteStore::open(&db.path(), Arc::new(Recorder::default()))
            .await
            .unwrap();
        let old = crate::store::PasskeyStore::list_passkeys(&store, "alice")
            .await
            .unwrap()
            .remove(0);
        assert_eq!((old.passkey_id.as_str(), old.aaguid), ("pk_old", None));
        assert!(old.backup_eligible && old.backed_up);
    }

    /// A key created before migration 10 is a plain key: no limits, no credits.
    #[tokio::test]
    async fn keys_created_before_limits_existed_are_plain_keys() {
        let db = Sqlite::new();
        let id = KeyId::generate();
        {
            let mut conn = Connection::open(db.path()).unwrap();
            let tx = migrated_to(&mut conn, 9);
            tx.execute(
                "INSERT INTO keys VALUES (?1, ?2, 'acme', 'ci', 'kg_abcd', 1, 0, NULL, '{}', 1)",
                params![id.to_string(), &[7_u8; 32][..]],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = SqliteStore::open(&db.path(), Arc::new(Recorder::default()))
            .await
            .unwrap();
        let key = store.get_key(id).await.unwrap().unwrap();
        assert!(key.limits.is_empty(), "{:?}", key.limits);
        assert_eq!(key.credits, None);
        assert!(store.snapshot().await.unwrap().identities.is_empty());
    }

    /// A database as stores before migration 4 left it: key events in columns, other events
    /// as prost-encoded `keygate.v1.Event` bytes. Opening it converts both, once.
    #[tokio::test]
    async fn events_written_before_the_store_encoding_are_converted_when_opened() {
        let db = Sqlite::new();
        let key = ReplicaKey {
            hash: KeyHash([5; 32]),
            id: KeyId::generate(),
            owner: "acme".into(),
            enabled: true,
            expires_unix_ms: Some(1_900_000_000_000),
            meta: Meta::from([("plan".to_owned(), "pro".to_owned())]),
            limits: keygate_proto::KeyLimits::default(),
        };
        let old_key_event = Event {
            revision: Revision(1),
            committed_unix_ms: 1_000,
            change: Change::KeyUpserted(key.clone()),
        };
        let old_encoded_event = Event {
            revision: Revision(2),
            committed_unix_ms: 2_000,
            change: Change::UserState(UserState {
                user_id: "alice".into(),
                disabled: true,
                sessions_revoked_before_unix_ms: 1_500,
                prune_after_unix_ms: 9_000,
            }),
        };
        {
            let mut conn = Connection::open(db.path()).unwrap();
            let tx = migrated_to(&mut conn, 3);
            tx.execute(
                "INSERT INTO events (revision, committed_ms, kind, key_id, key_hash, owner,
                    enabled, expires_ms, meta_json, payload)
                 VALUES (1, 1000, 'key_upserted', ?1, ?2, 'acme', 1, ?3, ?4, NULL)",
                params![
                    key.id.to_string(),
                    &key.hash.0[..],
                    key.expires_unix_ms,
                    serde_json::to_string(&key.meta).unwrap()
                ],
            )
            .unwrap();
            let wire = keygate_proto::pb::Event::from(&old_encoded_event);
            tx.execute(
                "INSERT INTO events (revision, committed_ms, kind, key_id, key_hash, payload)
                 VALUES (2, 2000, 'encoded', '', x'', ?1)",
                params![prost::Message::encode_to_vec(&wire)],
            )
            .unwrap();
            tx.execute("UPDATE log_state SET head = 2 WHERE id = 1", [])
                .unwrap();
            tx.commit().unwrap();
        }

        let recorder = Arc::new(Recorder::default());
        let store = SqliteStore::open(&db.path(), recorder.clone())
            .await
            .unwrap();
        assert_eq!(
            store.events_after(Revision::ZERO, 10).await.unwrap(),
            [old_key_event, old_encoded_event]
        );
        let bounds = store.log_bounds().await.unwrap();
        assert_eq!(bounds.head, Revision(2));
        assert!(bounds.log_id.0.starts_with("log_"), "{:?}", bounds.log_id);
        assert!(
            recorder.events().is_empty(),
            "a migration announces nothing"
        );

        // New events follow in the new encoding, contiguous with the converted ones.
        let created = store
            .create_key(
                NewKey {
                    id: KeyId::generate(),
                    hash: KeyHash([6; 32]),
                    owner: "acme".into(),
                    name: String::new(),
                    start: "kg_abcd".into(),
                    enabled: true,
                    created_unix_ms: 3_000,
                    expires_unix_ms: None,
                    meta: Meta::new(),
                    limits: keygate_proto::KeyLimits::default(),
                    credits: None,
                    refill: None,
                },
                "admin",
            )
            .await
            .unwrap();
        assert_eq!(created.revision, Revision(3));
        let events = store.events_after(Revision(2), 10).await.unwrap();
        assert_eq!(events, recorder.events());
        let version: usize = store
            .read(|tx| {
                tx.query_row("SELECT MAX(version) FROM schema_migrations", [], |row| {
                    row.get(0)
                })
                .map_err(backend)
            })
            .await
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
    }

    #[tokio::test]
    async fn an_undecodable_old_event_stops_the_migration_instead_of_dropping_a_revision() {
        let db = Sqlite::new();
        {
            let mut conn = Connection::open(db.path()).unwrap();
            let tx = migrated_to(&mut conn, 3);
            tx.execute(
                "INSERT INTO events (revision, committed_ms, kind, key_id, key_hash, payload)
                 VALUES (1, 1000, 'encoded', '', x'', x'ffffff')",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let recorder: Arc<dyn CommitObserver> = Arc::new(Recorder::default());
        let error = SqliteStore::open(&db.path(), recorder).await.err().unwrap();
        assert!(matches!(error, StoreError::Open { .. }), "{error}");
        assert!(error.to_string().contains("revision 1"), "{error}");
    }
}

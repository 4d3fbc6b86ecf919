//! The PostgreSQL store: any number of control-plane replicas share one database, and each
//! serves Admin, Sync and the passkey API from it.
//!
//! - **Revisions** are assigned in the committing transaction, under the row lock of
//!   `log_state` (`SELECT … FOR UPDATE`), which every write that may append events takes first.
//!   That lock serializes those writes across all replicas until they commit, so revision N is
//!   committed before N + 1 is assigned, and a reader that sees N + 1 also sees N. The `log`
//!   submodule is the one place that assigns revisions.
//! - **Observers** are fed from the shared log, not from the committing call: each store
//!   keeps the last revision it delivered and hands every event after it to its
//!   [`CommitObserver`], in order and exactly once, whichever replica committed it. A tail
//!   task does this for other replicas' commits, woken by `NOTIFY keygate_log` (sent by every
//!   commit that appends events) and backed up by a poll every 250 ms. A local write delivers
//!   through its own events itself right after its commit, before it returns (one more read;
//!   it never waits for the tail task), so this replica's observer has seen a change by the
//!   time its caller has: what the SQLite store does, and what the store suite checks.
//! - **Migrations** run at open under sqlx's PostgreSQL advisory lock, so several replicas may
//!   start at once (see `migrate` below).
//! - **Bounds**: a pool of at most 16 connections, a 5 s acquire timeout and a 10 s statement
//!   timeout (a minute for a snapshot's), so a hung database fails requests instead of hanging
//!   them.
//!
//! Each aggregate's queries are in a submodule named after it, as in the SQLite store: `log`,
//! `keys`, `limits`, `audit`, `users`, `enrollments`, `passkeys`, `sessions`, `signing_keys`,
//! `ceremonies`, `gateways`, `tokens`; and `copy`, the whole store exported and imported.

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

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keygate_proto::Revision;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Executor, Row};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::log::Writer;
use super::{CommitObserver, StoreError};

/// The channel every commit that appends events notifies, with the new head as its payload.
/// Each replica's tail listens on it to deliver other replicas' commits without waiting for
/// its poll.
pub const LOG_CHANNEL: &str = "keygate_log";

/// The channel a replica notifies, with its replica id as the payload, after publishing its
/// gateways, so that `--wait` on another replica can look again at once
/// ([`PgStore::gateway_publications`]).
pub const GATEWAYS_CHANNEL: &str = "keygate_gateways";

/// The schema, embedded at build time from `migrations/postgres/` (one numbered list for this
/// backend). sqlx's `migrate!` embeds each file with `include_str!`, so an edited file rebuilds
/// this crate; a newly added file needs this crate rebuilt (`touch` this file) to be seen.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Connections in the pool, at most. Enough for a control plane's request concurrency; each
/// replica holds its own pool (plus one listening connection), so the database sees
/// (16 + 1) × replicas connections at most.
const MAX_CONNECTIONS: u32 = 16;

/// How long a request waits for a pooled connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening waits for the database (the migration connection).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection settings: no statement runs longer than 10 s (waiting for the log lock
/// included), and a session that stops talking in the middle of a transaction loses it after
/// 30 s, so a hung replica cannot keep the log locked for everyone.
const SESSION_SETTINGS: &str =
    "SET statement_timeout = '10s'; SET idle_in_transaction_session_timeout = '30s'";

/// The tail's backstop: how often it looks for new events when nothing woke it.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Events the tail reads and delivers at a time.
const TAIL_BATCH: usize = 1000;

/// The longest wait between two attempts to (re)connect the listening connection.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(5);

/// A [`Store`](super::Store) in a PostgreSQL database that other replicas may share. Clones
/// share one pool and one tail; the tail stops when the last clone is dropped or on
/// [`PgStore::close`].
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// What this store has handed its observer, shared by local writes and the tail.
    delivery: Arc<Delivery>,
    /// Counts the gateway publications seen on [`GATEWAYS_CHANNEL`].
    gateway_publications: watch::Receiver<u64>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:pass@host:5432/db?sslmode=…`),
    /// brings its schema up to date, makes the log's identity if it is the first store ever to
    /// open it, and starts the tail that feeds `observer` every event committed from now on, by
    /// this store or by any other on the same database.
    ///
    /// Errors are [`StoreError::Open`] naming the URL without its password.
    pub async fn open(url: &str, observer: Arc<dyn CommitObserver>) -> Result<Self, StoreError> {
        Self::open_polling(url, observer, POLL_INTERVAL).await
    }

    /// [`PgStore::open`] with the tail's backstop poll every `poll` (tests make it long, to
    /// show that notifications alone wake the tail).
    async fn open_polling(
        url: &str,
        observer: Arc<dyn CommitObserver>,
        poll: Duration,
    ) -> Result<Self, StoreError> {
        let shown = redact_url(url);
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: shown.clone(),
            source,
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| open_error(Box::new(e)))?
            .application_name("keygate-control-plane");
        migrate(&options).await.map_err(open_error)?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(SESSION_SETTINGS).await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(|e| open_error(Box::new(e)))?;
        let head = match log::initialise(&pool).await {
            Ok(head) => head,
            Err(error) => {
                pool.close().await;
                return Err(open_error(Box::new(error)));
            }
        };

        let delivery = Arc::new(Delivery {
            observer,
            delivered: tokio::sync::Mutex::new(head),
        });
        let wake = Arc::new(Notify::new());
        let (publications_tx, publications_rx) = watch::channel(0);
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        // The listening connection has a pool of its own (of one), which PgListener uses to
        // reconnect; it never takes a connection from the request pool.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options);
        tasks.spawn(listen(
            listen_pool,
            Arc::clone(&wake),
            publications_tx,
            cancel.clone(),
        ));
        tasks.spawn(tail(
            pool.clone(),
            Arc::clone(&delivery),
            wake,
            poll,
            cancel.clone(),
        ));
        tasks.close();
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                delivery,
                gateway_publications: publications_rx,
                cancel,
                tasks,
            }),
        })
    }

    /// Stops the tail and the listener, waits for them, and closes the pool. Every clone of
    /// this store is closed with it: later operations fail.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        self.inner.tasks.wait().await;
        self.inner.pool.close().await;
    }

    /// Changes whenever any replica (this one included) has published its gateways: a
    /// `--wait` looks at [`list_gateways`](super::GatewayStore::list_gateways) again then
    /// rather than only on its own timer.
    pub fn gateway_publications(&self) -> watch::Receiver<u64> {
        self.inner.gateway_publications.clone()
    }

    fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Starts a write transaction that may append events: it takes the log lock first.
    async fn write(&self) -> Result<Writer<'_>, StoreError> {
        Writer::begin(&self.inner, true).await
    }

    /// Starts a write transaction that appends no event (users, enrollments, logins, pruning):
    /// it does not take the log lock, so it never waits for the replicated writes.
    async fn write_unlogged(&self) -> Result<Writer<'_>, StoreError> {
        Writer::begin(&self.inner, false).await
    }

    /// Starts a read-only transaction that sees one consistent state of the whole database
    /// (keys, session state and head at one point), whatever commits meanwhile.
    async fn read(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool()
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(backend)
    }
}

/// Brings the schema up to date on a connection of its own.
///
/// sqlx's `Migrator` takes `pg_advisory_lock(<id derived from the database name>)` before it
/// even creates its `_sqlx_migrations` table and releases it when done (sqlx-postgres
/// `migrate.rs`, `lock`/`unlock`), so of several replicas starting at once one migrates and the
/// others wait, then find every migration applied. The connection (a pool of one, closed
/// afterwards) has no statement timeout: waiting for another replica's migration, or a long
/// one, must not time out; and if a migration fails, the lock (held by the session) goes away
/// with the connection rather than staying with one in the request pool.
async fn migrate(
    options: &PgConnectOptions,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options.clone())
        .await?;
    let migrated = MIGRATOR.run(&pool).await;
    pool.close().await;
    Ok(migrated?)
}

/// What one store has handed its observer: every event through `delivered`, in order.
struct Delivery {
    observer: Arc<dyn CommitObserver>,
    /// The last revision delivered. The lock is held while reading and delivering, so local
    /// writes and the tail take turns and never deliver an event twice or out of order.
    delivered: tokio::sync::Mutex<Revision>,
}

impl Delivery {
    /// Delivers every committed event after the last delivered one, in order: all of them, or
    /// (with `through`) at least those up to `through`. Events compacted away before they were
    /// read are skipped (the delivery starts at the first retained one; the observer restarts
    /// on the gap). Cancel-safe: nothing is delivered until a batch has been read in full.
    async fn catch_up(&self, pool: &PgPool, through: Option<Revision>) -> Result<(), StoreError> {
        let mut delivered = self.delivered.lock().await;
        loop {
            if through.is_some_and(|through| *delivered >= through) {
                return Ok(());
            }
            let batch = log::events_after(pool, *delivered, TAIL_BATCH).await?;
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                return Ok(());
            };
            if first.revision != delivered.next() {
                tracing::info!(
                    delivered = %*delivered,
                    next = %first.revision,
                    "events were compacted before they were delivered"
                );
            }
            *delivered = last.revision;
            self.observer.committed(&batch);
            if batch.len() < TAIL_BATCH {
                return Ok(());
            }
        }
    }
}

/// Delivers other replicas' commits (and any local one whose writer stopped before it
/// delivered): woken by notifications, and every `poll` ([`POLL_INTERVAL`]) in any case. A
/// failed read is tried again at the next wake; nothing is skipped.
async fn tail(
    pool: PgPool,
    delivery: Arc<Delivery>,
    wake: Arc<Notify>,
    poll: Duration,
    cancel: CancellationToken,
) {
    let mut poll = tokio::time::interval(poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = wake.notified() => {}
            _ = poll.tick() => {}
        }
        let caught_up = tokio::select! {
            () = cancel.cancelled() => return,
            caught_up = delivery.catch_up(&pool, None) => caught_up,
        };
        match caught_up {
            Ok(()) if failing => {
                tracing::info!("reading the event log again");
                failing = false;
            }
            Ok(()) => {}
            Err(error) if !failing => {
                tracing::warn!(%error, "cannot read the event log; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Holds the listening connection: `LISTEN keygate_log, keygate_gateways`, reconnecting with
/// backoff. Every (re)connection wakes the tail once, since notifications sent while nobody
/// listened are lost.
async fn listen(
    pool: PgPool,
    wake: Arc<Notify>,
    publications: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let mut retry = Duration::from_millis(100);
    loop {
        let mut listening = false;
        let ended = tokio::select! {
            () = cancel.cancelled() => return,
            ended = listen_once(&pool, &wake, &publications, &mut listening) => ended,
        };
        if listening {
            retry = Duration::from_millis(100);
        }
        tracing::warn!(error = %ended, ?retry, "lost the event log notifications; reconnecting");
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(LISTEN_RETRY_MAX);
    }
}

/// Listens until the connection fails for good; returns why.
async fn listen_once(
    pool: &PgPool,
    wake: &Notify,
    publications: &watch::Sender<u64>,
    listening: &mut bool,
) -> sqlx::Error {
    let mut listener = match PgListener::connect_with(pool).await {
        Ok(listener) => listener,
        Err(error) => return error,
    };
    // Reconnect at once when the connection drops (the next `try_recv` returns `None` after
    // subscribing again).
    listener.eager_reconnect(true);
    if let Err(error) = listener.listen_all([LOG_CHANNEL, GATEWAYS_CHANNEL]).await {
        return error;
    }
    *listening = true;
    wake.notify_one();
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) if notification.channel() == GATEWAYS_CHANNEL => {
                publications.send_modify(|count| *count = count.wrapping_add(1));
            }
            Ok(Some(_)) => wake.notify_one(),
            // The connection dropped and was made again: anything sent in between is lost.
            Ok(None) => {
                wake.notify_one();
                publications.send_modify(|count| *count = count.wrapping_add(1));
            }
            Err(error) => return error,
        }
    }
}

/// `url` without its password (in the user info or a `password=` parameter), for messages.
/// Anything that does not look like a URL is not shown at all.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<database URL>".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (query, None),
            };
            let query: Vec<&str> = query
                .split('&')
                .map(|pair| {
                    let key = pair.split_once('=').map_or(pair, |(key, _)| key);
                    if key.eq_ignore_ascii_case("password") {
                        "password=***"
                    } else {
                        pair
                    }
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// A database error as a [`StoreError`]: a unique violation is a [`StoreError::Conflict`], a
/// value that does not decode is [`StoreError::Corrupt`], anything else (connection lost, pool
/// timed out, statement timed out) is [`StoreError::Backend`].
fn backend(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(database) if database.is_unique_violation() => {
            StoreError::Conflict(database.message().to_owned())
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StoreError::Corrupt(error.to_string())
        }
        _ => StoreError::Backend(Box::new(error)),
    }
}

/// Column `index` of `row`; a value of the wrong type or out of range is corrupt data.
fn get<'r, T>(row: &'r PgRow, index: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index)
        .map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
}

/// A revision as stored (BIGINT). Revisions the store assigns never exceed `i64::MAX`; one
/// from elsewhere (a gateway's cursor) that does is past every stored one.
fn db_revision(revision: Revision) -> i64 {
    i64::try_from(revision.0).unwrap_or(i64::MAX)
}

/// A stored revision; a negative one is corrupt.
fn revision_from_db(value: i64) -> Result<Revision, StoreError> {
    u64::try_from(value)
        .map(Revision)
        .map_err(|_| StoreError::Corrupt(format!("negative revision {value}")))
}

/// A credit amount as stored (BIGINT). Amounts are at most 2^53 (`keygate_proto::limits`).
fn db_amount(amount: u64) -> i64 {
    i64::try_from(amount).unwrap_or(i64::MAX)
}

/// A stored credit amount; a negative one is corrupt.
fn amount_from_db(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative amount {value}")))
}

/// A row limit as a SQL `LIMIT`.
fn db_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A fixed-size byte column.
fn array<const N: usize>(bytes: Vec<u8>, what: &str) -> Result<[u8; N], StoreError> {
    <[u8; N]>::try_from(bytes).map_err(|_| StoreError::Corrupt(format!("{what} is not {N} bytes")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Instant;

    use keygate_proto::Event;
    use keygate_proto::time::now_unix_ms;
    use keygate_test_postgres::TestPostgres;

    use super::*;
    use crate::keys::Keys;
    use crate::store::suite::{Recorder, SuiteBackend, create};
    use crate::store::{
        EventLogStore, GatewayRecord, GatewayStore, LimitStore, NewIdentity, NewLease, Store,
    };

    /// How long a test waits for something another task or replica does. Generous: the tail
    /// normally delivers within milliseconds (a NOTIFY), at worst at its next poll.
    const DEADLINE: Duration = Duration::from_secs(30);

    /// A poll interval far past [`DEADLINE`].
    const NO_POLL: Duration = Duration::from_secs(3600);

    /// A fresh server with an empty database `store`, for one test. Dropping it stops the
    /// server and deletes its files.
    struct Postgres {
        server: TestPostgres,
        url: String,
    }

    impl Postgres {
        fn start() -> Self {
            let server = TestPostgres::start().unwrap();
            let url = server.create_database("store").unwrap();
            Self { server, url }
        }

        async fn open(&self) -> (PgStore, Arc<Recorder>) {
            let recorder = Arc::new(Recorder::default());
            let store = PgStore::open(&self.url, recorder.clone()).await.unwrap();
            (store, recorder)
        }

        /// A store whose tail polls only once an hour: within a test's deadline, only a
        /// notification can wake it.
        async fn open_without_polling(&self) -> (PgStore, Arc<Recorder>) {
            let recorder = Arc::new(Recorder::default());
            let store = PgStore::open_polling(&self.url, recorder.clone(), NO_POLL)
                .await
                .unwrap();
            (store, recorder)
        }
    }

    #[async_trait::async_trait]
    impl SuiteBackend for Postgres {
        async fn open(&self, observer: Arc<dyn CommitObserver>) -> Arc<dyn Store> {
            Arc::new(PgStore::open(&self.url, observer).await.unwrap())
        }
    }

    crate::store::suite::store_suite!(Postgres::start());

    /// Waits until `done` holds, checking every few milliseconds; fails the test at the
    /// deadline.
    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn revisions(events: &[Event]) -> Vec<u64> {
        events.iter().map(|event| event.revision.0).collect()
    }

    /// Two replicas on one database, each writing from 8 tasks at once: every revision from 1
    /// to the head is taken exactly once, and each replica's observer receives every event,
    /// its own and the other's, exactly once and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_writing_at_once_keep_one_contiguous_log_and_both_observe_all_of_it() {
        const TASKS: usize = 8;
        const ROUNDS: usize = 50;
        let postgres = Postgres::start();
        let (first, first_seen) = postgres.open().await;
        let (second, second_seen) = postgres.open().await;
        let mut writers = tokio::task::JoinSet::new();
        for replica in [&first, &second] {
            for task in 0..TASKS {
                let keys = Keys::new(Arc::new(replica.clone()));
                writers.spawn(async move {
                    let mut returned = Vec::new();
                    for round in 0..ROUNDS {
                        // Creates, and deletes every other key again: two kinds of event.
                        let key = keys
                            .create(create(&format!("t{task}")), "admin")
                            .await
                            .unwrap();
                        returned.push(key.revision);
                        if round % 2 == 1 {
                            let id = key.record.id.to_string();
                            returned.push(keys.delete(&id, "admin").await.unwrap());
                        }
                    }
                    returned
                });
            }
        }
        let mut returned = BTreeSet::new();
        while let Some(revisions) = writers.join_next().await {
            for revision in revisions.unwrap() {
                assert!(
                    returned.insert(revision.0),
                    "revision {revision} returned twice"
                );
            }
        }

        let total = 2 * TASKS * (ROUNDS + ROUNDS / 2);
        let expected: Vec<u64> = (1..=total as u64).collect();
        assert_eq!(returned.into_iter().collect::<Vec<_>>(), expected);
        let head = first.log_bounds().await.unwrap().head;
        assert_eq!(head, Revision(total as u64));
        let stored = first.events_after(Revision::ZERO, 100_000).await.unwrap();
        assert_eq!(
            revisions(&stored),
            expected,
            "contiguous, each once, in order"
        );

        for (name, seen) in [("first", &first_seen), ("second", &second_seen)] {
            eventually(&format!("the {name} replica's observer catches up"), || {
                seen.events().len() >= total
            })
            .await;
            assert_eq!(
                seen.events(),
                stored,
                "the {name} replica observed every event once, in order"
            );
        }
    }

    /// Two replicas leasing one balance from 8 tasks each (and giving some back) never grant
    /// more than it holds: each grant locks the balance's row, whichever replica makes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_leasing_one_balance_at_once_never_overspend_it() {
        const BALANCE: u64 = 1_000;
        let postgres = Postgres::start();
        let (first, _) = postgres.open().await;
        let (second, _) = postgres.open().await;
        let identity = first
            .create_identity(
                NewIdentity {
                    id: "acme".into(),
                    ratelimits: Vec::new(),
                    credits: Some(BALANCE),
                    refill: None,
                    created_unix_ms: now_unix_ms(),
                },
                "admin",
            )
            .await
            .unwrap();
        let holder = identity.holder();
        let mut tasks = tokio::task::JoinSet::new();
        for (replica, store) in [&first, &second].into_iter().enumerate() {
            for task in 0..8 {
                let store = store.clone();
                let holder = holder.clone();
                tasks.spawn(async move {
                    let mut spent = 0;
                    for round in 0..30 {
                        let lease_id = format!("lease_{replica}_{task}_{round}");
                        let granted = store
                            .lease_credits(NewLease {
                                lease_id: lease_id.clone(),
                                holder: holder.clone(),
                                gateway_id: format!("gw-{replica}"),
                                wanted: 9,
                                share_divisor: 4,
                                expires_unix_ms: now_unix_ms() + 10_000,
                            })
                            .await
                            .unwrap()
                            .unwrap()
                            .granted;
                        spent += granted;
                        if round % 4 == 0 && granted > 0 {
                            assert!(store.return_lease(&lease_id, 1).await.unwrap());
                            spent -= 1;
                        }
                    }
                    spent
                });
            }
        }
        let mut spent = 0;
        while let Some(task_spent) = tasks.join_next().await {
            spent += task_spent.unwrap();
        }
        let state = second.credits(&holder).await.unwrap().unwrap();
        assert!(spent <= BALANCE, "granted {spent} of {BALANCE}");
        assert_eq!(state.remaining + spent, BALANCE, "{state:?}");
        assert!(spent > BALANCE / 2, "the balance was drained: {spent}");
    }

    /// A commit made through another replica reaches this one's observer with no write on
    /// this one to poke it, and no poll: the commit's notification wakes the tail.
    #[tokio::test]
    async fn a_notification_wakes_the_tail_for_another_replicas_commit() {
        let postgres = Postgres::start();
        let (here, seen_here) = postgres.open_without_polling().await;
        let (elsewhere, seen_elsewhere) = postgres.open().await;
        let keys = Keys::new(Arc::new(elsewhere.clone()));
        let created = keys.create(create("alice"), "admin").await.unwrap();
        // The committing replica has delivered its own event before the write returned.
        assert_eq!(revisions(&seen_elsewhere.events()), [1]);
        eventually("the other replica's event arrives", || {
            !seen_here.events().is_empty()
        })
        .await;
        assert_eq!(seen_here.events(), seen_elsewhere.events());
        assert!(matches!(
            &seen_here.events()[0].change,
            keygate_proto::Change::KeyUpserted(key) if key.id == created.record.id
        ));
        // Both replicas report the database's head.
        assert_eq!(here.log_bounds().await.unwrap().head, Revision(1));
    }

    /// A replica's listener survives the database going away and coming back: it listens
    /// again, and the tail (which never polls here) delivers what another replica commits,
    /// whether before or after the listener is back.
    #[tokio::test]
    async fn the_listener_reconnects_after_the_database_restarts() {
        let postgres = Postgres::start();
        let (_here, seen_here) = postgres.open_without_polling().await;
        let (elsewhere, _) = postgres.open().await;
        let keys = Keys::new(Arc::new(elsewhere.clone()));
        keys.create(create("alice"), "admin").await.unwrap();
        eventually("the first event arrives", || seen_here.events().len() == 1).await;

        postgres.server.stop().unwrap();
        postgres.server.restart().unwrap();

        keys.create(create("bob"), "admin").await.unwrap();
        eventually("the event after the restart arrives", || {
            seen_here.events().len() == 2
        })
        .await;
        assert_eq!(revisions(&seen_here.events()), [1, 2]);
    }

    /// sqlx's migrator holds PostgreSQL's advisory lock while it migrates, so replicas that
    /// start at the same moment on an empty database all succeed, and make one log id.
    #[tokio::test]
    async fn replicas_starting_at_once_migrate_once_and_share_one_log_id() {
        let postgres = Postgres::start();
        let open = || async {
            let recorder: Arc<dyn CommitObserver> = Arc::new(Recorder::default());
            PgStore::open(&postgres.url, recorder).await
        };
        let (a, b, c, d) = tokio::join!(open(), open(), open(), open());
        let stores = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
        let mut ids = BTreeSet::new();
        for store in &stores {
            ids.insert(store.log_bounds().await.unwrap().log_id.0);
        }
        assert_eq!(ids.len(), 1, "one log id: {ids:?}");
        let id = ids.pop_first().unwrap();
        assert!(id.starts_with("log_"), "{id}");
        let applied = postgres
            .server
            .psql("store", "SELECT COUNT(*) FROM _sqlx_migrations")
            .unwrap();
        assert_eq!(applied.trim(), MIGRATOR.iter().count().to_string());
    }

    /// What an open that fails says: the URL, never the password.
    #[tokio::test]
    async fn a_failed_open_names_the_database_without_its_password() {
        let postgres = Postgres::start();
        let port = postgres.server.port();
        postgres.server.stop().unwrap();
        let url = format!("postgres://keygate:hunter2@127.0.0.1:{port}/store");
        let recorder: Arc<dyn CommitObserver> = Arc::new(Recorder::default());
        let error = PgStore::open(&url, recorder).await.err().unwrap();
        assert!(matches!(error, StoreError::Open { .. }), "{error}");
        let message = format!("{error} {error:?}");
        assert!(
            message.contains(&format!("127.0.0.1:{port}/store")),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }

    /// A store that falls behind a compaction delivers from the first event still kept.
    #[tokio::test]
    async fn delivery_after_a_compaction_resumes_at_the_first_retained_event() {
        let postgres = Postgres::start();
        let (store, _) = postgres.open().await;
        let keys = Keys::new(Arc::new(store.clone()));
        for _ in 0..3 {
            keys.create(create("alice"), "admin").await.unwrap();
        }
        store.compact(now_unix_ms() + 1).await.unwrap();
        keys.create(create("alice"), "admin").await.unwrap();

        let late = Arc::new(Recorder::default());
        let delivery = Delivery {
            observer: late.clone(),
            delivered: tokio::sync::Mutex::new(Revision(1)),
        };
        delivery.catch_up(store.pool(), None).await.unwrap();
        assert_eq!(revisions(&late.events()), [4]);
        // Caught up: nothing more, and nothing twice.
        delivery.catch_up(store.pool(), None).await.unwrap();
        delivery
            .catch_up(store.pool(), Some(Revision(4)))
            .await
            .unwrap();
        assert_eq!(revisions(&late.events()), [4]);
    }

    /// A publish on one replica wakes a `--wait` on another.
    #[tokio::test]
    async fn a_gateway_publication_is_announced_to_every_replica() {
        let postgres = Postgres::start();
        let (here, _) = postgres.open().await;
        let (elsewhere, _) = postgres.open().await;
        let mut publications = here.gateway_publications();
        publications.borrow_and_update();
        let now = now_unix_ms();
        let gateway = GatewayRecord {
            gateway_id: "gw-1".into(),
            replica_id: "replica-b".into(),
            region: "eu".into(),
            address: "10.0.0.1:443".into(),
            version: "test".into(),
            applied: Revision::ZERO,
            last_seen_unix_ms: now,
            connected_unix_ms: now,
            disconnected_unix_ms: None,
            staleness_ms: Some(5),
            propagation_bound_ms: 1_000,
            stale_policy: "closed".into(),
            credential: "shared".into(),
        };
        // Listed twice: the later stream wins, and the upsert does not trip over itself.
        let older = GatewayRecord {
            connected_unix_ms: now - 1,
            region: "older".into(),
            ..gateway.clone()
        };
        elsewhere
            .publish_gateways("replica-b", now, &[older, gateway.clone()])
            .await
            .unwrap();
        tokio::time::timeout(DEADLINE, publications.changed())
            .await
            .expect("announced within the deadline")
            .unwrap();
        let listed = here.list_gateways().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].record, gateway);
        assert_eq!(listed[0].replica_seen_unix_ms, now);
    }

    /// `close` stops the background tasks and the pool; the store fails afterwards instead
    /// of hanging.
    #[tokio::test]
    async fn close_stops_the_tail_and_the_pool() {
        let postgres = Postgres::start();
        let (store, _) = postgres.open().await;
        store.close().await;
        assert!(store.inner.tasks.is_closed() && store.inner.tasks.is_empty());
        assert!(matches!(
            store.log_bounds().await,
            Err(StoreError::Backend(_))
        ));
    }

    #[test]
    fn redacted_urls_keep_everything_but_the_password() {
        for (url, shown) in [
            (
                "postgres://keygate:s3cret@db.internal:5432/keygate?sslmode=verify-full",
                "postgres://keygate:***@db.internal:5432/keygate?sslmode=verify-full",
            ),
            (
                "postgresql://keygate@db/keygate?password=s3cret&sslmode=require",
                "postgresql://keygate@db/keygate?password=***&sslmode=require",
            ),
            ("postgres://u:p@ss@h/d#frag", "postgres://u:***@h/d#frag"),
            (
                "postgres://db.internal/keygate",
                "postgres://db.internal/keygate",
            ),
            ("postgres://a:b@c", "postgres://a:***@c"),
            ("host=db password=s3cret", "<database URL>"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}

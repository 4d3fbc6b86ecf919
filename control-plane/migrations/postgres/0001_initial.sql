-- keygate's PostgreSQL schema: the same tables and columns as the SQLite store's (so
-- `keygate store copy` moves rows one for one), in PostgreSQL's types: BIGINT for revisions and
-- Unix milliseconds, BYTEA for hashes, handles and secrets, BOOLEAN for flags, JSON as TEXT.
-- Ids and names that queries order by are COLLATE "C" (byte order, as SQLite compares text):
-- fixed-width base62 key ids then sort in the order of their numbers, and listings page the
-- same way on either backend, whatever the database's default collation.
--
-- Applied by sqlx's migrator under its advisory lock (see `store/postgres.rs`), in one
-- transaction. Only ever add numbered files after this one; never edit an applied one (the
-- migrator checks each applied file's checksum and refuses to start on a mismatch).

-- API keys. key_id: fixed-width base62, so text order is id order.
CREATE TABLE keys (
    key_id     TEXT COLLATE "C" PRIMARY KEY,
    key_hash   BYTEA NOT NULL UNIQUE,
    owner      TEXT COLLATE "C" NOT NULL,
    name       TEXT NOT NULL,
    start      TEXT NOT NULL,
    enabled    BOOLEAN NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT,
    meta_json  TEXT NOT NULL,
    revision   BIGINT NOT NULL
);
CREATE INDEX keys_by_owner ON keys (owner, key_id);

-- The replicated event log: one row per committed change, in the store's own encoding
-- (`store/event_codec.rs`: a kind and a JSON document). Revisions are assigned only while the
-- log_state row is locked, so they are contiguous across every replica.
CREATE TABLE events (
    revision     BIGINT PRIMARY KEY,
    committed_ms BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    payload_json TEXT NOT NULL
);
-- Compaction drops events by commit time.
CREATE INDEX events_by_commit_time ON events (committed_ms);

-- Who did what: one row per operation, written in the operation's own transaction.
-- revision: the head after the operation, 0 when it changed nothing replicated.
CREATE TABLE audit (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    detail_json TEXT NOT NULL
);

-- The log's identity and bounds, in one row. The head is kept here rather than derived from
-- MAX(revision), so that compacting old events can never move it backwards; and this row's lock
-- (SELECT ... FOR UPDATE) is what serializes every write that appends events, across replicas.
-- The row itself is inserted by the store right after migrating, with a log id made in Rust
-- (`INSERT ... ON CONFLICT DO NOTHING`, so exactly one replica's id wins).
CREATE TABLE log_state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    log_id          TEXT NOT NULL,
    head            BIGINT NOT NULL,
    oldest_retained BIGINT NOT NULL
);

-- handle: the WebAuthn user handle (16 random bytes). sessions_revoked_before_ms and
-- state_prune_after_ms are the replicated UserState.
CREATE TABLE users (
    user_id                    TEXT COLLATE "C" PRIMARY KEY,
    handle                     BYTEA NOT NULL UNIQUE,
    created_ms                 BIGINT NOT NULL,
    disabled                   BOOLEAN NOT NULL,
    sessions_revoked_before_ms BIGINT NOT NULL,
    state_prune_after_ms       BIGINT NOT NULL
);

CREATE TABLE passkeys (
    passkey_id      TEXT COLLATE "C" PRIMARY KEY,
    user_id         TEXT COLLATE "C" NOT NULL REFERENCES users (user_id),
    credential_id   BYTEA NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    last_used_ms    BIGINT,
    user_agent      TEXT NOT NULL,
    backup_eligible BOOLEAN NOT NULL,
    backed_up       BOOLEAN NOT NULL,
    credential_json TEXT NOT NULL
);
CREATE INDEX passkeys_by_user ON passkeys (user_id, created_ms);

-- Only the blake3 hash of an enrollment token is kept.
CREATE TABLE enrollments (
    token_hash    BYTEA PRIMARY KEY,
    enrollment_id TEXT NOT NULL UNIQUE,
    user_id       TEXT COLLATE "C" NOT NULL REFERENCES users (user_id),
    created_ms    BIGINT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    used_ms       BIGINT
);
CREATE INDEX enrollments_by_expiry ON enrollments (expires_ms);

-- No token is stored: tokens are signed and name their row.
CREATE TABLE sessions (
    session_id TEXT COLLATE "C" PRIMARY KEY,
    user_id    TEXT COLLATE "C" NOT NULL,
    passkey_id TEXT COLLATE "C" NOT NULL,
    issued_ms  BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX sessions_by_expiry ON sessions (expires_ms);

-- Passkeys deleted while sessions they minted may still be unexpired.
CREATE TABLE revoked_passkeys (
    passkey_id     TEXT COLLATE "C" PRIMARY KEY,
    user_id        TEXT COLLATE "C" NOT NULL,
    revoked_ms     BIGINT NOT NULL,
    prune_after_ms BIGINT NOT NULL
);

-- verify_until_ms NULL: the current key (at most one, which the partial unique index enforces).
CREATE TABLE signing_keys (
    key_id          TEXT COLLATE "C" PRIMARY KEY,
    secret          BYTEA NOT NULL,
    public_key      BYTEA NOT NULL,
    created_ms      BIGINT NOT NULL,
    verify_until_ms BIGINT
);
CREATE UNIQUE INDEX one_current_signing_key ON signing_keys ((verify_until_ms IS NULL))
    WHERE verify_until_ms IS NULL;

-- WebAuthn ceremonies between begin and finish, so any replica can finish what another began.
CREATE TABLE ceremonies (
    ceremony_id TEXT PRIMARY KEY,
    state_json  TEXT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX ceremonies_by_expiry ON ceremonies (expires_ms);

-- Each control-plane replica's heartbeat, written with its gateway rows.
CREATE TABLE replicas (
    replica_id TEXT PRIMARY KEY,
    seen_ms    BIGINT NOT NULL
);

-- The gateway registry as the replicas publish it. disconnected_ms NULL: the stream is open.
-- staleness_ms NULL: not reported. updated_ms: when a replica last wrote the row.
CREATE TABLE gateways (
    gateway_id           TEXT COLLATE "C" PRIMARY KEY,
    replica_id           TEXT NOT NULL,
    region               TEXT NOT NULL,
    address              TEXT NOT NULL,
    version              TEXT NOT NULL,
    applied              BIGINT NOT NULL,
    last_seen_ms         BIGINT NOT NULL,
    connected_ms         BIGINT NOT NULL,
    disconnected_ms      BIGINT,
    staleness_ms         BIGINT,
    propagation_bound_ms BIGINT NOT NULL,
    stale_policy         TEXT NOT NULL,
    updated_ms           BIGINT NOT NULL
);
CREATE INDEX gateways_by_update ON gateways (updated_ms);

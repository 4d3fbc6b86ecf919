-- Operator access (DESIGN.md, "Operator access" and "Hostile traffic"): named tokens (hash
-- only), revocable enrollment links, revocable signing keys, ceremonies counted per client
-- address, and the credential each gateway used. The same schema as SQLite's migration 8.

-- scopes: space-separated scope names. gateway_id set: a gateway credential that only that
-- gateway id may use (and no operator scope).
CREATE TABLE operator_tokens (
    name       TEXT COLLATE "C" PRIMARY KEY,
    token_hash BYTEA NOT NULL UNIQUE,
    scopes     TEXT NOT NULL,
    gateway_id TEXT COLLATE "C",
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- voided_reason: 'revoked' (by an operator) or 'user_disabled'.
ALTER TABLE enrollments ADD COLUMN voided_ms BIGINT;
ALTER TABLE enrollments ADD COLUMN voided_reason TEXT;
ALTER TABLE enrollments ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
CREATE INDEX enrollments_by_user ON enrollments (user_id);

-- revoked_ms set: every session the key signed is refused (verify_until_ms is set too).
ALTER TABLE signing_keys ADD COLUMN revoked_ms BIGINT;
-- max_session_lifetime_ms: the longest session the key signs (the session_lifetime it was made
-- under); NULL for keys made before: no lifetime check on their tokens.
ALTER TABLE signing_keys ADD COLUMN max_session_lifetime_ms BIGINT;

-- client: the rate-limit bucket of the address that began the ceremony.
ALTER TABLE ceremonies ADD COLUMN client TEXT NOT NULL DEFAULT '';
CREATE INDEX ceremonies_by_client ON ceremonies (client, expires_ms);

ALTER TABLE gateways ADD COLUMN credential TEXT NOT NULL DEFAULT '';

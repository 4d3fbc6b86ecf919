-- Limits per key (DESIGN.md, "Limits and permissions per key"): each key's limits, identities,
-- credit balances per holder, and the leases gateways spend them through. The same schema as
-- SQLite's migration 10.

-- limits_json: rate limits, credits flag, permissions ('{}': a plain key); the identity the key
-- counts against is identity_id.
ALTER TABLE keys ADD COLUMN limits_json TEXT NOT NULL DEFAULT '{}';
ALTER TABLE keys ADD COLUMN identity_id TEXT COLLATE "C";
CREATE INDEX keys_by_identity ON keys (identity_id) WHERE identity_id IS NOT NULL;

CREATE TABLE identities (
    identity_id     TEXT COLLATE "C" PRIMARY KEY,
    ratelimits_json TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    revision        BIGINT NOT NULL
);

-- One balance per holder with credits ('key:<id>' or 'identity:<id>'): what no gateway holds.
-- Every change to a balance locks its row first (SELECT ... FOR UPDATE), so leases granted by
-- any replica never take more than it holds. The refill columns are all set or all NULL.
CREATE TABLE credits (
    holder             TEXT COLLATE "C" PRIMARY KEY,
    remaining          BIGINT NOT NULL CHECK (remaining >= 0),
    refill_amount      BIGINT,
    refill_interval_ms BIGINT,
    next_refill_ms     BIGINT
);
CREATE INDEX credits_by_refill ON credits (next_refill_ms) WHERE next_refill_ms IS NOT NULL;

-- Credits taken off a balance for one gateway to spend, until returned or written off.
CREATE TABLE credit_leases (
    lease_id   TEXT COLLATE "C" PRIMARY KEY,
    holder     TEXT COLLATE "C" NOT NULL,
    gateway_id TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX credit_leases_by_holder ON credit_leases (holder);
CREATE INDEX credit_leases_by_expiry ON credit_leases (expires_ms);

-- Rate-limit use shared among control-plane replicas (DESIGN.md, "Limits and permissions per
-- key"): each replica writes what every gateway connected to it used in the current window of
-- each rate limit, and reads what the other replicas' gateways used, so that a limit is global
-- across replicas too. Counts are absolute per gateway and window: a row is replaced only by a
-- later window or a larger count. Rows no replica wrote for longer than the longest window are
-- deleted.
CREATE TABLE rate_usage (
    holder          TEXT COLLATE "C" NOT NULL,
    limit_name      TEXT COLLATE "C" NOT NULL,
    gateway_id      TEXT COLLATE "C" NOT NULL,
    window_start_ms BIGINT NOT NULL,
    used            BIGINT NOT NULL,
    replica_id      TEXT COLLATE "C" NOT NULL,
    updated_ms      BIGINT NOT NULL,
    PRIMARY KEY (holder, limit_name, gateway_id)
);
CREATE INDEX rate_usage_by_update ON rate_usage (updated_ms);

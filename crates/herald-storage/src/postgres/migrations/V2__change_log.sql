-- The change log (transactional outbox), as in sqlite/migrations/002_change_log.sql. `seq` is
-- taken as max + 1 under a transaction-level advisory lock held until the commit, so numbers are
-- given in commit order: a read that sees record n sees every committed record below n (what
-- the dispatcher's LogFollower relies on). Trimming always keeps the newest record, so numbers
-- only grow.
CREATE TABLE change_log (
    seq BIGINT PRIMARY KEY,
    user_id TEXT NOT NULL,
    username TEXT NOT NULL,
    kind TEXT NOT NULL,
    change_type TEXT NOT NULL,
    items TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);

CREATE TABLE change_log_consumers (
    name TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    updated DOUBLE PRECISION NOT NULL
);

-- The change log (transactional outbox): every write that publishes a change appends it here in
-- the same transaction as its data, so a committed change can always be found again, even when
-- the process died before the bus carried it. `seq` only grows: it is the rowid (max + 1), and
-- trimming always keeps the newest record, so no number is ever given twice (cheaper than
-- AUTOINCREMENT, which writes sqlite_sequence on every insert). Items carry what scopes match
-- on (ids, stream ids, type), never content.
CREATE TABLE change_log (
    seq INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    username TEXT NOT NULL,
    kind TEXT NOT NULL,
    change_type TEXT NOT NULL,
    items TEXT NOT NULL,
    at REAL NOT NULL
);

-- How far each consumer of the log has durably got: every change up to `seq` has had its whole
-- effect saved (for the webhook dispatcher: on every webhook's pending messages). Records that
-- every consumer has passed may be trimmed.
CREATE TABLE change_log_consumers (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated REAL NOT NULL
);

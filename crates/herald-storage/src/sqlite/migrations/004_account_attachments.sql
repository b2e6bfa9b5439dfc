-- Schema version 4: what Pryv.io's clients use beyond the core (issue 10): attachments, profiles,
-- password resets, event history, and the secrets the server keeps for itself.

-- The attachment objects of an event (a JSON array, NULL when none); the files themselves are
-- outside the database, under the data dir's `attachments/`.
ALTER TABLE events ADD COLUMN attachments TEXT;

-- Past states of events (`versioning.forceKeepHistory`): each row a whole event as it was stored.
CREATE TABLE IF NOT EXISTS event_versions (
    user_id TEXT NOT NULL,
    head_id TEXT NOT NULL,
    id TEXT NOT NULL,
    modified REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (user_id, head_id, id)
);

-- Profile sets (`public`, `private`, and one per app name): free JSON objects.
CREATE TABLE IF NOT EXISTS profiles (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (user_id, id)
);

-- Pending password resets: a token is used once, before `expires`.
CREATE TABLE IF NOT EXISTS password_resets (
    token TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires REAL NOT NULL
);

-- Secrets made once and kept (e.g. the key of attachments' read tokens): the same on every start.
CREATE TABLE IF NOT EXISTS server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

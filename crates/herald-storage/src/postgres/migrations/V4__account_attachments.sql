-- Schema version 4 (issue 10): attachments, profiles, password resets, event history, secrets.
-- The same tables as SQLite's 004, plus the files themselves: every node of a cluster reads them
-- from here.

ALTER TABLE events ADD COLUMN attachments TEXT;

-- Attachment files, in chunks (each at most a few hundred KiB): written and read one chunk at a
-- time, so no file is ever whole in memory.
CREATE TABLE attachment_chunks (
    user_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (user_id, file_id, n)
);

CREATE TABLE event_versions (
    user_id TEXT NOT NULL,
    head_id TEXT NOT NULL,
    id TEXT NOT NULL,
    modified DOUBLE PRECISION NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (user_id, head_id, id)
);

CREATE TABLE profiles (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (user_id, id)
);

CREATE TABLE password_resets (
    token TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);

CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Herald's tables as the first release created them (schema version 1). Never edit a migration
-- that has shipped: add the next one. Plain SQL: PostgreSQL has its own migrations beside these.
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    language TEXT NOT NULL,
    created REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS accesses (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    token TEXT NOT NULL,
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    device_name TEXT,
    permissions TEXT NOT NULL,
    expires REAL,
    client_data TEXT,
    created REAL NOT NULL,
    created_by TEXT NOT NULL,
    modified REAL NOT NULL,
    modified_by TEXT NOT NULL,
    deleted REAL,
    PRIMARY KEY (user_id, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS accesses_token ON accesses (user_id, token) WHERE deleted IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS accesses_name ON accesses (user_id, type, name, COALESCE(device_name, '')) WHERE deleted IS NULL;

CREATE TABLE IF NOT EXISTS streams (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    client_data TEXT,
    trashed INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    created_by TEXT NOT NULL,
    modified REAL NOT NULL,
    modified_by TEXT NOT NULL,
    deleted REAL,
    PRIMARY KEY (user_id, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS streams_sibling_name ON streams (user_id, COALESCE(parent_id, ''), name) WHERE deleted IS NULL;

CREATE TABLE IF NOT EXISTS events (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    stream_ids TEXT NOT NULL,
    time REAL NOT NULL,
    duration REAL,            -- NULL while running
    end_time REAL,            -- time + duration; NULL while running
    type TEXT NOT NULL,
    content TEXT,
    description TEXT,
    client_data TEXT,
    trashed INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    created_by TEXT NOT NULL,
    modified REAL NOT NULL,
    modified_by TEXT NOT NULL,
    deleted REAL,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX IF NOT EXISTS events_time ON events (user_id, time);
CREATE INDEX IF NOT EXISTS events_modified ON events (user_id, modified);
CREATE INDEX IF NOT EXISTS events_deleted ON events (user_id, deleted) WHERE deleted IS NOT NULL;

CREATE TABLE IF NOT EXISTS event_streams (
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    PRIMARY KEY (user_id, event_id, stream_id)
);
CREATE INDEX IF NOT EXISTS event_streams_stream ON event_streams (user_id, stream_id);

CREATE TABLE IF NOT EXISTS webhooks (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    access_id TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    run_count INTEGER NOT NULL,
    fail_count INTEGER NOT NULL,
    last_run_status INTEGER NOT NULL,
    last_run_time REAL NOT NULL,
    runs TEXT NOT NULL,
    current_retries INTEGER NOT NULL,
    max_retries INTEGER NOT NULL,
    min_interval_ms INTEGER NOT NULL,
    scopes TEXT,
    secret TEXT NOT NULL,
    pending TEXT NOT NULL,
    created REAL NOT NULL,
    created_by TEXT NOT NULL,
    modified REAL NOT NULL,
    modified_by TEXT NOT NULL,
    deleted REAL,
    PRIMARY KEY (user_id, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS webhooks_access_url ON webhooks (user_id, access_id, url) WHERE deleted IS NULL;

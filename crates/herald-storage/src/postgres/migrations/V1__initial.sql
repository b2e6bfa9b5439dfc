-- Herald's tables on PostgreSQL: the same rows as the SQLite store (sqlite/migrations), with
-- PostgreSQL's types. Never edit a migration that has shipped: add the next one.
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    language TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);

CREATE TABLE accesses (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    token TEXT NOT NULL,
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    device_name TEXT,
    permissions TEXT NOT NULL,
    expires DOUBLE PRECISION,
    client_data TEXT,
    created DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL,
    modified DOUBLE PRECISION NOT NULL,
    modified_by TEXT NOT NULL,
    deleted DOUBLE PRECISION,
    PRIMARY KEY (user_id, id)
);
CREATE UNIQUE INDEX accesses_token ON accesses (user_id, token) WHERE deleted IS NULL;
CREATE UNIQUE INDEX accesses_name ON accesses (user_id, type, name, COALESCE(device_name, '')) WHERE deleted IS NULL;

CREATE TABLE streams (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    client_data TEXT,
    trashed INTEGER NOT NULL DEFAULT 0,
    created DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL,
    modified DOUBLE PRECISION NOT NULL,
    modified_by TEXT NOT NULL,
    deleted DOUBLE PRECISION,
    PRIMARY KEY (user_id, id)
);
CREATE UNIQUE INDEX streams_sibling_name ON streams (user_id, COALESCE(parent_id, ''), name) WHERE deleted IS NULL;

CREATE TABLE events (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    stream_ids TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    duration DOUBLE PRECISION,
    end_time DOUBLE PRECISION,
    type TEXT NOT NULL,
    content TEXT,
    description TEXT,
    client_data TEXT,
    trashed INTEGER NOT NULL DEFAULT 0,
    created DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL,
    modified DOUBLE PRECISION NOT NULL,
    modified_by TEXT NOT NULL,
    deleted DOUBLE PRECISION,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX events_time ON events (user_id, time);
CREATE INDEX events_modified ON events (user_id, modified);
CREATE INDEX events_deleted ON events (user_id, deleted) WHERE deleted IS NOT NULL;

CREATE TABLE event_streams (
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    PRIMARY KEY (user_id, event_id, stream_id)
);
CREATE INDEX event_streams_stream ON event_streams (user_id, stream_id);

CREATE TABLE webhooks (
    user_id TEXT NOT NULL,
    id TEXT NOT NULL,
    access_id TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    run_count BIGINT NOT NULL,
    fail_count BIGINT NOT NULL,
    last_run_status INTEGER NOT NULL,
    last_run_time DOUBLE PRECISION NOT NULL,
    runs TEXT NOT NULL,
    current_retries BIGINT NOT NULL,
    max_retries BIGINT NOT NULL,
    min_interval_ms BIGINT NOT NULL,
    scopes TEXT,
    secret TEXT NOT NULL,
    pending TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL,
    modified DOUBLE PRECISION NOT NULL,
    modified_by TEXT NOT NULL,
    deleted DOUBLE PRECISION,
    PRIMARY KEY (user_id, id)
);
CREATE UNIQUE INDEX webhooks_access_url ON webhooks (user_id, access_id, url) WHERE deleted IS NULL;

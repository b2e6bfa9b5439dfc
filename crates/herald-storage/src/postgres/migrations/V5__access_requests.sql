-- Access requests (Pryv's consent flow, issue 11): the same rows as the SQLite store's
-- migration 005. A pending request lives in the shared store, so any node answers its polls.
CREATE TABLE access_requests (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    state TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE INDEX access_requests_expires ON access_requests (expires);

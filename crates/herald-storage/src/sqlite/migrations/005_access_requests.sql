-- Access requests (Pryv's consent flow, issue 11). A pending request lives in the store, not in
-- one node's memory, so any node of a cluster answers its polls and it survives a restart.
-- `state` is the JSON object Pryv keeps (creation fields, then the outcome fields); `expires` is
-- when its key becomes unknown (indexed: expired rows are deleted in bulk).
CREATE TABLE access_requests (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX access_requests_expires ON access_requests (expires);

-- The identity of this database: nodes sharing it form one cluster, and derive from it the NATS
-- subjects they talk on, so two clusters on one NATS server never hear each other.
CREATE TABLE herald_cluster (
    id TEXT PRIMARY KEY
);
INSERT INTO herald_cluster (id) VALUES (replace(gen_random_uuid()::text, '-', ''));

-- Schema version 8: the freshness check of `events.create` (migration 7) reads an index of its own.
--
-- Version 7 read `change_log` by its primary key past `seen` and filtered on the user and the kind,
-- with a new (custom) plan at every call so that the range would start at `seen`: planning and the
-- function's `SET plan_cache_mode` took more of PostgreSQL's time than any statement of a create
-- but the commit. A partial index of the changes that make caches stale (accesses and streams,
-- rare next to events) by user and position answers the check in one descent whatever the
-- parameters, so the plan is made once; events' records, which are most of the log, are not in it.
CREATE INDEX change_log_rights ON change_log (user_id, seq) WHERE kind IN ('accesses', 'streams');

CREATE OR REPLACE FUNCTION herald_require_fresh(users TEXT[], seens BIGINT[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(users, 1), 0) LOOP
        IF EXISTS (SELECT 1 FROM change_log
                   WHERE user_id = users[i] AND seq > seens[i] AND kind IN ('accesses', 'streams')) THEN
            RAISE EXCEPTION 'the caches of user % are stale', users[i] USING ERRCODE = 'HR001';
        END IF;
    END LOOP;
END
$$;

-- Appends records to the change log, numbered in commit order, for every logged write (called
-- last in its transaction, right before the commit): takes the log's transaction-level advisory
-- lock, held until the commit has reached the disk, then numbers the records after the highest
-- `seq`. Each statement of a (volatile) PL/pgSQL function takes a new snapshot, so the numbering,
-- run after the lock is granted, sees every record committed by the lock's previous holder (a
-- single SQL statement could not: its snapshot would be taken before it waited for the lock).
-- Returns the highest `seq` before the records (the first record is that + 1).
CREATE FUNCTION herald_append_log(
    lock_key BIGINT, l_users TEXT[], l_names TEXT[], l_kinds TEXT[], l_types TEXT[], l_items TEXT[], l_at FLOAT8
) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    base BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT COALESCE(MAX(seq), 0) INTO base FROM change_log;
    INSERT INTO change_log (seq, user_id, username, kind, change_type, items, at)
        SELECT base + x.ord, x.u, x.n, x.k, x.t, x.i, l_at
        FROM unnest(l_users, l_names, l_kinds, l_types, l_items) WITH ORDINALITY AS x(u, n, k, t, i, ord);
    RETURN base;
END
$$;

-- A group of `events.create` (`postgres/group.rs`) as one statement: the freshness check, the
-- events and their stream rows, then the log records numbered under the log's lock. Sent as a
-- single statement outside any `BEGIN`, it is its own transaction: one parse-free call and one
-- commit instead of eight statements, most of PostgreSQL's per-create CPU in the group before.
-- Returns the highest `seq` before the group's records (0 when the group logs nothing).
-- `tombstones`: remove the rows of deleted events with these ids first (the one-by-one retry).
CREATE FUNCTION herald_create_events(
    tombstones BOOLEAN, f_users TEXT[], f_seens BIGINT[],
    e_users TEXT[], e_ids TEXT[], e_stream_ids TEXT[], e_times FLOAT8[], e_durations FLOAT8[],
    e_ends FLOAT8[], e_types TEXT[], e_contents TEXT[], e_descriptions TEXT[], e_client_datas TEXT[],
    e_trasheds INT4[], e_createds FLOAT8[], e_created_bys TEXT[], e_modifieds FLOAT8[],
    e_modified_bys TEXT[], e_attachments TEXT[],
    s_users TEXT[], s_ids TEXT[], s_streams TEXT[], s_times FLOAT8[],
    lock_key BIGINT, l_users TEXT[], l_names TEXT[], l_kinds TEXT[], l_types TEXT[], l_items TEXT[],
    l_at FLOAT8
) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    base BIGINT := 0;
BEGIN
    IF coalesce(array_length(f_users, 1), 0) > 0 THEN
        PERFORM herald_require_fresh(f_users, f_seens);
    END IF;
    IF tombstones THEN
        DELETE FROM events e USING unnest(e_users, e_ids) AS k(u, i)
            WHERE e.user_id = k.u AND e.id = k.i AND e.deleted IS NOT NULL;
        DELETE FROM event_streams es USING unnest(e_users, e_ids) AS k(u, i)
            WHERE es.user_id = k.u AND es.event_id = k.i;
    END IF;
    INSERT INTO events (user_id, id, stream_ids, time, duration, end_time, type, content, description,
                        client_data, trashed, created, created_by, modified, modified_by, attachments, deleted)
        SELECT *, NULL::float8 FROM unnest(e_users, e_ids, e_stream_ids, e_times, e_durations, e_ends,
            e_types, e_contents, e_descriptions, e_client_datas, e_trasheds, e_createds, e_created_bys,
            e_modifieds, e_modified_bys, e_attachments);
    INSERT INTO event_streams (user_id, event_id, stream_id, time)
        SELECT * FROM unnest(s_users, s_ids, s_streams, s_times) ON CONFLICT DO NOTHING;
    IF coalesce(array_length(l_users, 1), 0) > 0 THEN
        base := herald_append_log(lock_key, l_users, l_names, l_kinds, l_types, l_items, l_at);
    END IF;
    RETURN base;
END
$$;

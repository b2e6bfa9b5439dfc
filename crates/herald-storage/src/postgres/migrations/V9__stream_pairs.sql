-- Schema version 9: the events in both of two streams, in time order, as one range of an index
-- (SQLite's version 6, issue 14). `events.get` with `all` of two streams reads its matches from
-- it and nothing else; reading the two streams' `event_streams_time` ranges took 18 ms for two
-- disjoint 1 % streams of a million events (a hash join of both ranges).
--
-- One row per event and pair of its streams (`first_stream < second_stream`): only events in
-- several streams have any. Written beside the memberships by the paths that write them: the
-- group function of `events.create` below, and `write_event_streams` and `insert_events` in
-- `postgres/mod.rs`; a user's deletion deletes them. (Tried first: triggers on `event_streams`.
-- Statement-level ones cost 45 µs per group of creates even with nothing to pair, and joined
-- with `event_streams`, the plan cached while the table was small kept a sequential scan of it:
-- 0.26-0.39 ms per group, and growing. SQLite's row triggers cost ~2 µs and stay there.)
-- Memberships are inserted and deleted, never updated (a changed event's rows are rewritten);
-- an update, which would leave its pairs wrong, is refused.
CREATE TABLE event_stream_pairs (
    user_id TEXT NOT NULL,
    first_stream TEXT NOT NULL,
    second_stream TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, first_stream, second_stream, time, event_id)
);
-- A deleted membership finds its pairs by event.
CREATE INDEX event_stream_pairs_event ON event_stream_pairs (user_id, event_id);

INSERT INTO event_stream_pairs (user_id, first_stream, second_stream, time, event_id)
SELECT a.user_id, a.stream_id, b.stream_id, a.time, a.event_id
FROM event_streams a JOIN event_streams b
  ON b.user_id = a.user_id AND b.event_id = a.event_id AND b.stream_id > a.stream_id
ON CONFLICT DO NOTHING;

-- Migration 8's group of `events.create`, writing the pairs of its events too (and deleting a
-- tombstone's with its memberships).
CREATE OR REPLACE FUNCTION herald_create_events(
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
        DELETE FROM event_stream_pairs p USING unnest(e_users, e_ids) AS k(u, i)
            WHERE p.user_id = k.u AND p.event_id = k.i;
    END IF;
    INSERT INTO events (user_id, id, stream_ids, time, duration, end_time, type, content, description,
                        client_data, trashed, created, created_by, modified, modified_by, attachments, deleted)
        SELECT *, NULL::float8 FROM unnest(e_users, e_ids, e_stream_ids, e_times, e_durations, e_ends,
            e_types, e_contents, e_descriptions, e_client_datas, e_trasheds, e_createds, e_created_bys,
            e_modifieds, e_modified_bys, e_attachments);
    INSERT INTO event_streams (user_id, event_id, stream_id, time)
        SELECT * FROM unnest(s_users, s_ids, s_streams, s_times) ON CONFLICT DO NOTHING;
    -- More memberships than events: some event is in several streams, and has pairs.
    IF cardinality(s_ids) > cardinality(e_ids) THEN
        INSERT INTO event_stream_pairs (user_id, first_stream, second_stream, time, event_id)
            SELECT a.u, a.s, b.s, a.t, a.i
            FROM unnest(s_users, s_ids, s_streams, s_times) AS a(u, i, s, t)
            JOIN unnest(s_users, s_ids, s_streams) AS b(u, i, s) ON b.u = a.u AND b.i = a.i AND b.s > a.s
            ON CONFLICT DO NOTHING;
    END IF;
    IF coalesce(array_length(l_users, 1), 0) > 0 THEN
        base := herald_append_log(lock_key, l_users, l_names, l_kinds, l_types, l_items, l_at);
    END IF;
    RETURN base;
END
$$;

CREATE FUNCTION herald_event_stream_pairs_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event_streams rows are rewritten, not updated';
END $$;

CREATE TRIGGER event_stream_pairs_no_update BEFORE UPDATE ON event_streams
    FOR EACH STATEMENT EXECUTE FUNCTION herald_event_stream_pairs_no_update();

-- `events_duration` answers two questions for a time range's lower bound, the user's longest
-- positive duration and the oldest running event (no duration). Point events (duration 0),
-- most of them, answer neither: leaving them out saves an index insert per create (as SQLite's
-- version 6).
DROP INDEX events_duration;
CREATE INDEX events_duration ON events (user_id, duration, time) WHERE duration IS NULL OR duration > 0;

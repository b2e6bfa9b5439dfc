-- Schema version 9: the events in both of two streams, in time order, as one range of an index
-- (SQLite's version 6, issue 14). `events.get` with `all` of two streams reads its matches from
-- it and nothing else; reading the two streams' `event_streams_time` ranges took 18 ms for two
-- disjoint 1 % streams of a million events (a hash join of both ranges).
--
-- One row per event and pair of its streams (`first_stream < second_stream`): only events in
-- several streams have any. Kept by statement-level triggers on `event_streams` (one call per
-- statement, whatever its rows), so every path that writes memberships keeps its pairs without
-- knowing them. Memberships are inserted and deleted, never updated (a changed event's rows are
-- rewritten); an update is refused.
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

CREATE FUNCTION herald_event_stream_pairs_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A new membership pairs with each of the event's others (new ones included).
    INSERT INTO event_stream_pairs (user_id, first_stream, second_stream, time, event_id)
    SELECT n.user_id, LEAST(n.stream_id, o.stream_id), GREATEST(n.stream_id, o.stream_id), n.time, n.event_id
    FROM new_memberships n
    JOIN event_streams o ON o.user_id = n.user_id AND o.event_id = n.event_id AND o.stream_id <> n.stream_id
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE FUNCTION herald_event_stream_pairs_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_stream_pairs p USING old_memberships d
    WHERE p.user_id = d.user_id AND p.event_id = d.event_id
      AND (p.first_stream = d.stream_id OR p.second_stream = d.stream_id);
    RETURN NULL;
END $$;

CREATE FUNCTION herald_event_stream_pairs_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event_streams rows are rewritten, not updated';
END $$;

CREATE TRIGGER event_stream_pairs_insert AFTER INSERT ON event_streams
    REFERENCING NEW TABLE AS new_memberships FOR EACH STATEMENT EXECUTE FUNCTION herald_event_stream_pairs_insert();
CREATE TRIGGER event_stream_pairs_delete AFTER DELETE ON event_streams
    REFERENCING OLD TABLE AS old_memberships FOR EACH STATEMENT EXECUTE FUNCTION herald_event_stream_pairs_delete();
CREATE TRIGGER event_stream_pairs_no_update BEFORE UPDATE ON event_streams
    FOR EACH STATEMENT EXECUTE FUNCTION herald_event_stream_pairs_no_update();

-- Schema version 6: indexes that fit the reads of `events.get`, as SQLite's version 3 (issue
-- "Reads at scale"). (Versions 4 and 5 belong to attachments and access requests.)
--
-- Stream membership carries the event's time, so "the latest N of a stream" and "a time range
-- within a stream" are one ordered range of `event_streams_time`, whatever the user's other
-- events. Writes keep `event_streams.time` equal to `events.time` (the rows are rewritten with
-- the event).
ALTER TABLE event_streams ADD COLUMN time DOUBLE PRECISION NOT NULL DEFAULT 0;
UPDATE event_streams es SET time = e.time FROM events e WHERE e.user_id = es.user_id AND e.id = es.event_id;
DROP INDEX IF EXISTS event_streams_stream;
CREATE INDEX event_streams_time ON event_streams (user_id, stream_id, time, event_id);

-- Pryv's order is (time, id): the index gives it whole, no sort step.
DROP INDEX IF EXISTS events_time;
CREATE INDEX events_time ON events (user_id, time, id);
-- `types` filters, in the same order.
CREATE INDEX events_type_time ON events (user_id, type, time, id);
-- The longest duration and the oldest running event of a user: a time range's lower bound on
-- `time` (an event overlaps [from, to] only if it started after from - its duration).
CREATE INDEX events_duration ON events (user_id, duration, time);

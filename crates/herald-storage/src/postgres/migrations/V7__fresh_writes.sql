-- Schema version 7: `events.create` checks its node's caches inside its own transaction.
--
-- A node sharing the database trusts its caches of tokens and stream trees only once it has read
-- the change log up to a request's start (a token deleted through another node is refused at
-- once). For `events.create` that read is done here, in the write's transaction, instead of in a
-- round trip of its own before it: the node passes, for each write, the user and the log
-- position its caches are known good up to (`seen`), and the write fails (SQLSTATE HR001, rolling
-- the whole transaction back) if the log holds, past that, a change to the user's accesses or
-- streams. The node then reads the log and runs the request again.
--
-- Custom plans: `seq > seen` covers only the log's last records, which a generic plan (made
-- once, when the log may have been small) cannot know.
CREATE FUNCTION herald_require_fresh(users TEXT[], seens BIGINT[]) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(users, 1), 0) LOOP
        IF EXISTS (SELECT 1 FROM change_log
                   WHERE seq > seens[i] AND user_id = users[i] AND kind IN ('accesses', 'streams')) THEN
            RAISE EXCEPTION 'the caches of user % are stale', users[i] USING ERRCODE = 'HR001';
        END IF;
    END LOOP;
END
$$;

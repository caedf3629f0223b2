-- 0004_jobs.sql: the functions behind asynchronous jobs and idempotency keys.
--
-- The edge and the workers call these instead of writing ferry.jobs and
-- ferry.idempotency_keys with their own SQL, so that the rules (a finished
-- job is never run again, a key is reused only with the same request, rows
-- expire) live in one place.  The worker calls job_guard, idem_begin,
-- job_finish and idem_finish inside the handler's own transaction: the
-- handler's effect, the job's result and the stored response commit
-- together or not at all.  Outcomes the caller must act on are raised as
-- SQLSTATEs of class FY, which no PostgreSQL error uses:
--   FY410  the job already finished: reply its stored result
--   FY200  a response is stored for this key: reply it (a replay)
--   FY409  a request with this key is running right now
--   FY422  the key was used with a different request

-- A job the edge accepted: visible as 'queued' before any worker sees it.
CREATE FUNCTION ferry.job_submit(p_id uuid, p_service text, p_operation text,
                                 p_principal text, p_retention interval)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO ferry.jobs (id, principal, service, operation, expires_at)
    VALUES (p_id, p_principal, p_service, p_operation, now() + p_retention)
    ON CONFLICT (id) DO NOTHING
$$;

-- A worker starts (or restarts) a job, in a transaction of its own so that
-- 'running' shows while the handler works.  Returns the status afterwards:
-- 'running', or the final status of a job that had already finished.
CREATE FUNCTION ferry.job_start(p_id uuid, p_service text, p_operation text,
                                p_principal text, p_retention interval)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    INSERT INTO ferry.jobs AS j (id, principal, service, operation, status,
                                 attempts, expires_at)
    VALUES (p_id, p_principal, p_service, p_operation, 'running', 1,
            now() + p_retention)
    ON CONFLICT (id) DO UPDATE
        SET status = 'running', attempts = j.attempts + 1, updated_at = now()
        WHERE j.status IN ('queued', 'running')
    RETURNING status INTO v_status;
    IF v_status IS NULL THEN
        SELECT status INTO v_status FROM ferry.jobs WHERE id = p_id;
    END IF;
    RETURN v_status;
END
$$;

-- First statement of the handler's transaction.  The row lock makes a
-- second delivery of the same job wait for the first and then see it
-- finished, so the handler's effect happens once.
CREATE FUNCTION ferry.job_guard(p_id uuid)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    SELECT status INTO v_status FROM ferry.jobs WHERE id = p_id FOR UPDATE;
    IF v_status IN ('succeeded', 'failed', 'dead') THEN
        RAISE EXCEPTION 'job % already finished', p_id
            USING ERRCODE = 'FY410';
    END IF;
END
$$;

-- Stores a job's outcome and wakes whoever waits for it (LISTEN
-- ferry_jobs; the notification leaves at commit).  An upsert, because a
-- synchronous request that may turn into a job (async_after) has no row
-- until the edge gives up waiting.
CREATE FUNCTION ferry.job_finish(p_id uuid, p_state text, p_status int,
                                 p_headers jsonb, p_body bytea,
                                 p_error jsonb, p_retention interval)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_state NOT IN ('succeeded', 'failed', 'dead') THEN
        RAISE EXCEPTION 'job_finish: % is not a final state', p_state
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- clock_timestamp(): now() is when the handler's transaction began.
    UPDATE ferry.jobs
    SET status = p_state, result_status = p_status,
        result_headers = p_headers, result_body = p_body, error = p_error,
        updated_at = clock_timestamp(), finished_at = clock_timestamp(),
        expires_at = clock_timestamp() + p_retention
    WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job_finish: no job %', p_id
            USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM pg_notify('ferry_jobs', p_id::text);
END
$$;

-- A job that never ran (the broker refused or expired it after the edge
-- had answered 202): failed, unless a worker got to it after all.
CREATE FUNCTION ferry.job_expire(p_id uuid, p_status int, p_headers jsonb,
                                 p_body bytea, p_retention interval)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ferry.jobs
    SET status = 'failed', result_status = p_status,
        result_headers = p_headers, result_body = p_body,
        updated_at = clock_timestamp(), finished_at = clock_timestamp(),
        expires_at = clock_timestamp() + p_retention
    WHERE id = p_id AND status = 'queued';
    IF FOUND THEN
        PERFORM pg_notify('ferry_jobs', p_id::text);
    END IF;
END
$$;

-- First statement of the handler's transaction for a request with an
-- Idempotency-Key (after job_guard).  The advisory lock is held to the end
-- of the transaction: a concurrent request with the same key is told 409
-- at once instead of waiting on the row's unique index.
CREATE FUNCTION ferry.idem_begin(p_principal text, p_key text, p_hash bytea)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_hash bytea;
BEGIN
    IF NOT pg_try_advisory_xact_lock(
            hashtextextended('ferry.idem:' || p_principal || ':' || p_key, 0))
    THEN
        RAISE EXCEPTION 'a request with this Idempotency-Key is in progress'
            USING ERRCODE = 'FY409';
    END IF;
    SELECT request_hash INTO v_hash FROM ferry.idempotency_keys
    WHERE principal = p_principal AND key = p_key AND expires_at > now();
    IF FOUND THEN
        IF v_hash <> p_hash THEN
            RAISE EXCEPTION 'this Idempotency-Key was used with another request'
                USING ERRCODE = 'FY422';
        END IF;
        RAISE EXCEPTION 'a response is stored for this Idempotency-Key'
            USING ERRCODE = 'FY200';
    END IF;
END
$$;

-- Stores the response of a handler whose transaction is about to commit.
-- An expired row for the same key is replaced.
CREATE FUNCTION ferry.idem_finish(p_principal text, p_key text, p_hash bytea,
                                  p_status int, p_headers jsonb, p_body bytea,
                                  p_retention interval)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO ferry.idempotency_keys AS k
        (key, principal, request_hash, status, response_status,
         response_headers, response_body, expires_at)
    VALUES (p_key, p_principal, p_hash, 'completed', p_status, p_headers,
            p_body, now() + p_retention)
    ON CONFLICT (principal, key) DO UPDATE
        SET request_hash = excluded.request_hash, status = 'completed',
            response_status = excluded.response_status,
            response_headers = excluded.response_headers,
            response_body = excluded.response_body,
            created_at = now(), expires_at = excluded.expires_at
$$;

-- Deletes at most p_batch expired jobs and p_batch expired keys, skipping
-- rows someone holds, so a cleanup never waits on or blocks live work for
-- long.  Returns the number of rows deleted; callers repeat while it is at
-- least p_batch.
CREATE FUNCTION ferry.cleanup(p_batch int)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_jobs int;
    v_keys int;
BEGIN
    DELETE FROM ferry.jobs WHERE id IN (
        SELECT id FROM ferry.jobs
        WHERE expires_at < now()
        ORDER BY expires_at
        LIMIT p_batch
        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_jobs = ROW_COUNT;
    DELETE FROM ferry.idempotency_keys WHERE (principal, key) IN (
        SELECT principal, key FROM ferry.idempotency_keys
        WHERE expires_at < now()
        ORDER BY expires_at
        LIMIT p_batch
        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_keys = ROW_COUNT;
    RETURN v_jobs + v_keys;
END
$$;

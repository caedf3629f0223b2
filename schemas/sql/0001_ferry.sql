-- 0001_ferry.sql: ferry's own schema.
--
-- The ledger (ferry.migrations) is created by `ferryctl migrate` itself
-- before any file runs, so it is not here.  The tables below are the ones
-- later features write to: jobs for the asynchronous API, idempotency keys
-- for once-only effects per HTTP key, Kafka offsets stored in the same
-- transaction as a handler's writes, dead letters, and an outbox for events
-- that must leave only when their transaction commits.  Each migration runs
-- in one transaction, so IF NOT EXISTS is only there to make a hand-run of
-- this file harmless.

CREATE SCHEMA IF NOT EXISTS ferry;

-- One row per asynchronous request (202 Accepted, then poll the job).
CREATE TABLE IF NOT EXISTS ferry.jobs (
    id              uuid PRIMARY KEY,
    principal       text NOT NULL DEFAULT '',
    service         text NOT NULL,
    operation       text NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded',
                                      'failed', 'dead')),
    attempts        int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    result_status   int,
    result_headers  jsonb,
    result_body     bytea,
    error           jsonb,
    expires_at      timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_status_idx ON ferry.jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_expires_idx ON ferry.jobs (expires_at)
    WHERE expires_at IS NOT NULL;

-- An Idempotency-Key seen from one principal: the hash of the request it
-- came with (a reuse with another request is refused) and, once done, the
-- stored response that a retry gets back.
CREATE TABLE IF NOT EXISTS ferry.idempotency_keys (
    key               text NOT NULL,
    principal         text NOT NULL DEFAULT '',
    request_hash      bytea NOT NULL,
    status            text NOT NULL DEFAULT 'in_progress'
                      CHECK (status IN ('in_progress', 'completed')),
    response_status   int,
    response_headers  jsonb,
    response_body     bytea,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (principal, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expires_idx
    ON ferry.idempotency_keys (expires_at);

-- The next Kafka offset to consume, committed with the handler's writes so
-- an event's effect happens once even when the consumer restarts.
CREATE TABLE IF NOT EXISTS ferry.kafka_offsets (
    group_id    text NOT NULL,
    topic       text NOT NULL,
    partition   int NOT NULL CHECK (partition >= 0),
    "offset"    bigint NOT NULL CHECK ("offset" >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Messages that exhausted their retries, kept for inspection and replay.
CREATE TABLE IF NOT EXISTS ferry.dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      text NOT NULL,
    correlation_id  text,
    service         text NOT NULL,
    operation       text NOT NULL,
    source          text NOT NULL DEFAULT 'zmq'
                    CHECK (source IN ('zmq', 'kafka')),
    topic           text,
    partition       int,
    "offset"        bigint,
    envelope        bytea NOT NULL,
    error           jsonb NOT NULL,
    attempts        int NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz
);
CREATE INDEX IF NOT EXISTS dead_letters_service_idx
    ON ferry.dead_letters (service, created_at);

-- Transactional outbox: rows written with a handler's changes, published
-- to Kafka after commit, then marked sent.
CREATE TABLE IF NOT EXISTS ferry.outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic       text NOT NULL,
    key         bytea,
    headers     jsonb NOT NULL DEFAULT '{}'::jsonb,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unsent_idx ON ferry.outbox (id)
    WHERE sent_at IS NULL;

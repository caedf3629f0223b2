-- 0003_events.sql: the demo's event table, filled by a worker pool that
-- consumes the Kafka topic ferry.demo.events (plain JSON events from any
-- producer; docs/worker.md, "Kafka topics").
--
-- id is the event's own id when the producer gives one, else the
-- sequence's.  (topic, partition, "offset") says where the event came
-- from; it is unique as a second line of defence: the consumer's offset
-- claim in ferry.kafka_offsets already makes each offset's effect happen
-- once, and a duplicate here would show up as a dead letter, not a row.

CREATE TABLE IF NOT EXISTS public.events (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    payload     jsonb,
    topic       text NOT NULL,
    partition   int NOT NULL,
    "offset"    bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, partition, "offset")
);

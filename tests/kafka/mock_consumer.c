/*  mock_consumer.c: fault-injection tests of a pool's Kafka consumer
    (src/workers/worker_kafka.c) against librdkafka's mock cluster
    (rdkafka_mock.h) and a real PostgreSQL.

    Usage: ferry-kafka-mock [-v] CONNINFO [CASE...]
    tests/integration/test_kafka_mock.py starts PostgreSQL (initdb in a
    temporary directory, ferry's migrations) and runs this with its
    conninfo; this prints one TAP line per case.

    Each case has its own mock cluster (in this process, on ephemeral
    ports), topic of S_PARTS partitions, consumer group and table, and
    runs the consumer through its public API (worker_kafka.h) from a YAML
    pool configuration parsed in memory, as ferry-worker would.  The pool's
    operation inserts each event into the case's table, whose primary key
    is the event id and which has no ON CONFLICT: a second effect of one
    event fails the insert, so the message would be dead-lettered and the
    case would fail on ferry.dead_letters, the counts and the offsets.
    After each stream the case checks that PostgreSQL holds every event
    exactly once (count, distinct ids, sum, min and max of the ids, each
    row in the partition its id was produced to), that
    ferry.kafka_offsets holds for every partition the offset after its
    last message, and that nothing was dead-lettered.

    The events are produced while the consumer runs, paced, so that each
    fault lands in the middle of the stream:
    - stream:    5,000 events, no fault;
    - down:      the only broker goes down for longer than the session
                 timeout (the consumer loses its assignment) and comes
                 back, while events keep being produced;
    - errors:    Fetch, OffsetCommit, Heartbeat, JoinGroup and SyncGroup
                 requests answered with errors (broker error stacks, which
                 can be counted, so the case proves they were all served);
    - rebalance: a second consumer of the same pool configuration joins
                 (cooperative-sticky moves some partitions to it while the
                 first keeps the others), then the first leaves;
    - breaker:   PostgreSQL stops in the middle of the stream and starts
                 again: the pool's circuit breaker opens (no dead letters,
                 the events wait), requests on a ferry topic are answered
                 503 with retry-after at once while it is open, and it
                 closes once PostgreSQL is back.

    The consumer gets a circuit breaker built from the pool's `breaker`
    settings, as worker_pool.c builds it.  The breaker case cannot stop
    PostgreSQL itself (test_kafka_mock.py runs it): it writes "pg stop" or
    "pg start" on stdout and reads a line from stdin, "ok" once done.  */

#include "ferry.h"
#include "config.h"
#include "log.h"
#include "envelope.h"
#include "worker_breaker.h"
#include "worker_kafka.h"
#include "worker_ops.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_PARTS 4
/*  Kafka protocol ApiKeys (librdkafka's RD_KAFKAP_* live in a header it
    does not install).  */
#define S_API_FETCH 1
#define S_API_OFFSET_COMMIT 8
#define S_API_JOIN_GROUP 11
#define S_API_HEARTBEAT 12
#define S_API_SYNC_GROUP 14

/*  The consumer's librdkafka properties: quick heartbeats and a short
    session so that rebalances and a lost session take seconds, quick
    reconnects after the broker comes back.  */
#define S_PROPERTIES                                                          \
    "        - heartbeat.interval.ms=500\n"                                   \
    "        - session.timeout.ms=6000\n"                                     \
    "        - reconnect.backoff.ms=100\n"                                    \
    "        - reconnect.backoff.max.ms=1000\n"                               \
        "        - topic.metadata.refresh.interval.ms=2000\n"

static bool s_verbose;
static const char *s_conninfo;

/*  One case: its mock cluster, producer, table and what was produced.  */
typedef struct {
    const char *name;
    char table[64];
    char topic[64];
    char group[64];
    rd_kafka_t *host;            /* only hosts the mock cluster */
    rd_kafka_mock_cluster_t *mc;
    const char *bootstraps;
    rd_kafka_t *producer;
    PGconn *pg;                  /* the test's own checks */
    int64_t produced;            /* events 1..produced were sent */
    int64_t per_part[S_PARTS];   /* ... per partition */
    int64_t delivered;           /* delivery reports without error */
    int64_t failed;              /* ... with one */
} s_case_t;

/*  A pool's consumer built from YAML text, as ferry-worker builds it.  */
typedef struct {
    ferry_config_t *config;
    worker_ops_t *ops;
    worker_breaker_t *breaker;
    worker_kafka_t *kafka;
} s_worker_t;

static void
s_diag (const char *fmt, ...)
{
    va_list ap;
    va_start (ap, fmt);
    printf ("# ");
    vprintf (fmt, ap);
    printf ("\n");
    fflush (stdout);
    va_end (ap);
}

#define S_CHECK(cond)                                                         \
    do {                                                                      \
        if (!(cond)) {                                                        \
            s_diag ("%s:%d: check failed: %s", __FILE__, __LINE__, #cond);    \
            return -1;                                                        \
        }                                                                     \
    } while (0)

static void
s_sleep_ms (int64_t ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep (&ts, NULL);
}

/* ---- PostgreSQL ----------------------------------------------------------- */

/*  Runs sql with up to 3 text parameters; returns the result when its
    status is ok (the caller clears it), else NULL with a diagnostic.  */
static PGresult *
s_query (PGconn *pg, const char *sql, int n, const char *p1, const char *p2,
         const char *p3)
{
    const char *values[3] = {p1, p2, p3};
    PGresult *r = PQexecParams (pg, sql, n, NULL, values, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus (r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        s_diag ("SQL failed: %s: %s", sql, PQresultErrorMessage (r));
        PQclear (r);
        return NULL;
    }
    return r;
}

/*  The first column of the first row of sql as an integer, or -1.  */
static int64_t
s_scalar (PGconn *pg, const char *sql)
{
    PGresult *r = s_query (pg, sql, 0, NULL, NULL, NULL);
    int64_t v = -1;
    if (r && PQntuples (r) == 1 && !PQgetisnull (r, 0, 0))
        (void) ferry_parse_int64 (PQgetvalue (r, 0, 0), &v);
    PQclear (r);
    return v;
}

static int64_t
s_rows (s_case_t *c, const char *where)
{
    char sql[256];
    snprintf (sql, sizeof sql, "SELECT count(*) FROM %s%s%s", c->table,
              where ? " WHERE " : "", where ? where : "");
    return s_scalar (c->pg, sql);
}

/* ---- the mock cluster and the producer ----------------------------------- */

static void
s_log_cb (const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void) rk;
    if (s_verbose)
        fprintf (stderr, "rdkafka %d %s: %s\n", level, fac, buf);
}

/*  The delivery opaque of a request (the breaker case): not an event.  */
static int s_request_mark;

static void
s_dr_cb (rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void) rk;
    s_case_t *c = opaque;
    if (m->_private == &s_request_mark) {
        if (m->err)
            s_diag ("request delivery failed: %s", rd_kafka_err2str (m->err));
        return;
    }
    if (m->err) {
        c->failed++;
        s_diag ("delivery failed: %s", rd_kafka_err2str (m->err));
    } else
        c->delivered++;
}

static int
s_set (rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[256];
    if (rd_kafka_conf_set (conf, name, value, err, sizeof err)
        != RD_KAFKA_CONF_OK) {
        s_diag ("%s=%s: %s", name, value, err);
        return -1;
    }
    return 0;
}

/*  Starts the case: a mock cluster of brokers, its topic, an idempotent
    producer to it, a PostgreSQL connection and the case's table.  */
static int
s_case_start (s_case_t *c, const char *name, int brokers)
{
    memset (c, 0, sizeof *c);
    c->name = name;
    snprintf (c->table, sizeof c->table, "kmock_%s", name);
    snprintf (c->topic, sizeof c->topic, "ferry.kmock.%s", name);
    snprintf (c->group, sizeof c->group, "ferry.kmock.%s", name);
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    rd_kafka_conf_set_log_cb (conf, s_log_cb);
    c->host = rd_kafka_new (RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!c->host) {
        rd_kafka_conf_destroy (conf);
        s_diag ("mock host: %s", err);
        return -1;
    }
    c->mc = rd_kafka_mock_cluster_new (c->host, brokers);
    S_CHECK (c->mc);
    S_CHECK (rd_kafka_mock_topic_create (c->mc, c->topic, S_PARTS, 1) == 0);
    c->bootstraps = rd_kafka_mock_cluster_bootstraps (c->mc);

    conf = rd_kafka_conf_new ();
    rd_kafka_conf_set_log_cb (conf, s_log_cb);
    rd_kafka_conf_set_dr_msg_cb (conf, s_dr_cb);
    rd_kafka_conf_set_opaque (conf, c);
    if (s_set (conf, "bootstrap.servers", c->bootstraps)
        || s_set (conf, "enable.idempotence", "true")
        || s_set (conf, "acks", "all") || s_set (conf, "linger.ms", "5")
        || s_set (conf, "reconnect.backoff.max.ms", "1000")) {
        rd_kafka_conf_destroy (conf);
        return -1;
    }
    c->producer = rd_kafka_new (RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!c->producer) {
        rd_kafka_conf_destroy (conf);
        s_diag ("producer: %s", err);
        return -1;
    }

    c->pg = PQconnectdb (s_conninfo);
    if (PQstatus (c->pg) != CONNECTION_OK) {
        s_diag ("PostgreSQL: %s", PQerrorMessage (c->pg));
        return -1;
    }
    char sql[768];
    snprintf (sql, sizeof sql,
              "SET client_min_messages = warning;"
              "DELETE FROM ferry.kafka_offsets WHERE group_id = '%s';"
              "DELETE FROM ferry.dead_letters WHERE topic = '%s';"
              "DROP TABLE IF EXISTS %s;"
              "CREATE TABLE %s (id bigint PRIMARY KEY, consumer text NOT NULL,"
              " part int NOT NULL, off bigint NOT NULL, UNIQUE (part, off))",
              c->group, c->topic, c->table, c->table);
    PGresult *r = PQexec (c->pg, sql);
    if (PQresultStatus (r) != PGRES_COMMAND_OK) {
        s_diag ("%s: %s", sql, PQresultErrorMessage (r));
        PQclear (r);
        return -1;
    }
    PQclear (r);
    return 0;
}

static void
s_case_stop (s_case_t *c)
{
    if (c->producer)
        rd_kafka_destroy (c->producer);
    if (c->mc)
        rd_kafka_mock_cluster_destroy (c->mc);
    if (c->host)
        rd_kafka_destroy (c->host);
    if (c->pg)
        PQfinish (c->pg);
    memset (c, 0, sizeof *c);
}

/*  Produces the next n events, event i to partition i % S_PARTS, as plain
    JSON an outside producer would write.  Never blocks for long: a full
    local queue is served and retried.  */
static int
s_produce (s_case_t *c, int64_t n)
{
    for (int64_t k = 0; k < n; k++) {
        int64_t id = c->produced + 1;
        int32_t part = (int32_t) (id % S_PARTS);
        char key[24], value[160];
        int klen = snprintf (key, sizeof key, "%" PRId64, id);
        int vlen = snprintf (value, sizeof value,
                             "{\"id\": %" PRId64 ", \"kind\": \"kmock\","
                             " \"payload\": {\"n\": %" PRId64 "}}",
                             id, id);
        rd_kafka_resp_err_t err;
        int64_t end = ferry_mono_ms () + 10000;
        while ((err = rd_kafka_producev (
                    c->producer, RD_KAFKA_V_TOPIC (c->topic),
                    RD_KAFKA_V_PARTITION (part),
                    RD_KAFKA_V_MSGFLAGS (RD_KAFKA_MSG_F_COPY),
                    RD_KAFKA_V_KEY (key, (size_t) klen),
                    RD_KAFKA_V_VALUE (value, (size_t) vlen),
                    RD_KAFKA_V_END))
                   == RD_KAFKA_RESP_ERR__QUEUE_FULL
               && ferry_mono_ms () < end)
            rd_kafka_poll (c->producer, 100);
        if (err) {
            s_diag ("produce: %s", rd_kafka_err2str (err));
            return -1;
        }
        c->produced++;
        c->per_part[part]++;
    }
    rd_kafka_poll (c->producer, 0);
    return 0;
}

/*  Waits until every event produced was delivered, at most ms.  */
static int
s_delivered (s_case_t *c, int64_t ms)
{
    int64_t end = ferry_mono_ms () + ms;
    while (c->delivered + c->failed < c->produced && ferry_mono_ms () < end)
        rd_kafka_poll (c->producer, 50);
    if (c->delivered != c->produced)
        s_diag ("%" PRId64 " of %" PRId64 " events delivered (%" PRId64
                " failed)",
                c->delivered, c->produced, c->failed);
    return c->delivered == c->produced ? 0 : -1;
}

/*  Serves the producer's delivery reports for ms (rd_kafka_poll returns
    at the first event).  */
static void
s_serve (s_case_t *c, int64_t ms)
{
    int64_t end = ferry_mono_ms () + ms, now;
    while ((now = ferry_mono_ms ()) < end)
        rd_kafka_poll (c->producer, (int) (end - now));
}

/*  Produces n events in steps of `step` every `pace` ms (the stream the
    consumer sees while faults happen).  */
static int
s_stream (s_case_t *c, int64_t n, int64_t step, int64_t pace)
{
    for (int64_t done = 0; done < n; done += step) {
        if (s_produce (c, step < n - done ? step : n - done))
            return -1;
        s_serve (c, pace);
    }
    return 0;
}

/*  Waits until the case's table holds at least want rows (where narrows
    them, may be NULL), at most ms, serving the producer meanwhile.  */
static int
s_wait_rows (s_case_t *c, const char *where, int64_t want, int64_t ms)
{
    int64_t end = ferry_mono_ms () + ms, n = -1;
    while (ferry_mono_ms () < end) {
        n = s_rows (c, where);
        if (n >= want)
            return 0;
        s_serve (c, 100);
    }
    s_diag ("%s: %" PRId64 " of %" PRId64 " rows%s%s after %" PRId64 " ms",
            c->name, n, want, where ? " where " : "", where ? where : "", ms);
    return -1;
}

/*  Every event exactly once: the table, ferry.kafka_offsets and
    ferry.dead_letters.  */
static int
s_check_once (s_case_t *c)
{
    char sql[512];
    snprintf (sql, sizeof sql,
              "SELECT count(*), count(DISTINCT id), coalesce(sum(id), 0),"
              " coalesce(min(id), 0), coalesce(max(id), 0),"
              " count(*) FILTER (WHERE part <> id %% %d) FROM %s",
              S_PARTS, c->table);
    PGresult *r = s_query (c->pg, sql, 0, NULL, NULL, NULL);
    S_CHECK (r && PQntuples (r) == 1);
    int64_t v[6];
    for (int i = 0; i < 6; i++)
        if (ferry_parse_int64 (PQgetvalue (r, 0, i), &v[i]))
            v[i] = -1;
    PQclear (r);
    int64_t n = c->produced;
    if (v[0] != n || v[1] != n || v[2] != n * (n + 1) / 2
        || v[3] != (n ? 1 : 0) || v[4] != n || v[5] != 0) {
        s_diag ("%s: rows %" PRId64 ", distinct ids %" PRId64 ", sum %" PRId64
                ", min %" PRId64 ", max %" PRId64 ", misplaced %" PRId64
                "; expected %" PRId64 " events with ids 1..%" PRId64
                " (sum %" PRId64 ")",
                c->name, v[0], v[1], v[2], v[3], v[4], v[5], n, n,
                n * (n + 1) / 2);
        return -1;
    }

    r = s_query (c->pg,
                 "SELECT count(*) FROM ferry.dead_letters WHERE topic = $1",
                 1, c->topic, NULL, NULL);
    S_CHECK (r);
    int64_t dead = -1;
    (void) ferry_parse_int64 (PQgetvalue (r, 0, 0), &dead);
    PQclear (r);
    if (dead != 0) {
        r = s_query (c->pg,
                     "SELECT partition, \"offset\", error FROM"
                     " ferry.dead_letters WHERE topic = $1 ORDER BY id"
                     " LIMIT 5",
                     1, c->topic, NULL, NULL);
        for (int i = 0; r && i < PQntuples (r); i++)
            s_diag ("dead letter: partition %s offset %s: %s",
                    PQgetvalue (r, i, 0), PQgetvalue (r, i, 1),
                    PQgetvalue (r, i, 2));
        PQclear (r);
        s_diag ("%s: %" PRId64 " dead letters", c->name, dead);
        return -1;
    }

    r = s_query (c->pg,
                 "SELECT partition, \"offset\" FROM ferry.kafka_offsets"
                 " WHERE group_id = $1 AND topic = $2 ORDER BY partition",
                 2, c->group, c->topic, NULL);
    S_CHECK (r);
    int64_t kept[S_PARTS] = {0};
    for (int i = 0; i < PQntuples (r); i++) {
        int64_t p, off;
        if (!ferry_parse_int64 (PQgetvalue (r, i, 0), &p)
            && !ferry_parse_int64 (PQgetvalue (r, i, 1), &off) && p >= 0
            && p < S_PARTS)
            kept[p] = off;
    }
    PQclear (r);
    for (int p = 0; p < S_PARTS; p++)
        if (kept[p] != c->per_part[p]) {
            s_diag ("%s: partition %d: ferry.kafka_offsets holds %" PRId64
                    ", %" PRId64 " events were produced to it",
                    c->name, p, kept[p], c->per_part[p]);
            return -1;
        }
    return 0;
}

/*  Waits for the last rows, lets a late duplicate show up, checks.  */
static int
s_finish (s_case_t *c, int64_t ms)
{
    S_CHECK (s_delivered (c, 30000) == 0);
    S_CHECK (s_wait_rows (c, NULL, c->produced, ms) == 0);
    s_sleep_ms (1000);
    return s_check_once (c);
}

/* ---- the consumer ----------------------------------------------------------- */

static void
s_worker_destroy (s_worker_t **self_p)
{
    if (!*self_p)
        return;
    s_worker_t *self = *self_p;
    worker_kafka_destroy (&self->kafka);
    worker_breaker_destroy (&self->breaker);
    worker_ops_destroy (&self->ops);
    ferry_config_destroy (&self->config);
    free (self);
    *self_p = NULL;
}

/*  A pool `kmock` of 4 actors consuming the case's topic into its table,
    through ferry's configuration reader; marker names the consumer in the
    rows it writes (the rebalance case runs two).  more is YAML for the
    pool's map (indented 4) and topics (indented 8), may be "".  */
static s_worker_t *
s_worker_new_with (s_case_t *c, const char *marker, const char *pool_more,
                   const char *topics_more)
{
    /*  FERRY_KMOCK_DEBUG: librdkafka debug contexts (e.g. cgrp,consumer)
        for the consumer, shown with -v.  */
    const char *debug = getenv ("FERRY_KMOCK_DEBUG");
    char extra[128] = "";
    if (debug && *debug)
        snprintf (extra, sizeof extra, "        - \"debug=%s\"\n", debug);
    char yaml[4096];
    snprintf (yaml, sizeof yaml,
              "pools:\n"
              "  kmock:\n"
              "    actors: 4\n"
              "%s"
              "    operations:\n"
              "      ask: {sql: SELECT 1 AS one, result: one}\n"
              "      take:\n"
              "        sql: INSERT INTO %s (id, consumer, part, off)"
              " VALUES ($1, '%s', $2, $3)\n"
              "        params: [id:int8, kafka_partition:int4,"
              " kafka_offset:int8]\n"
              "        result: exec\n"
              "    kafka:\n"
              "      group: %s\n"
              "      properties:\n"
              "        - \"bootstrap.servers=%s\"\n" S_PROPERTIES "%s"
              "      topics:\n"
              "        - {topic: %s, format: json, operation: take}\n"
              "%s",
              pool_more, c->table, marker, c->group, c->bootstraps, extra,
              c->topic, topics_more);
    s_worker_t *self = ferry_calloc (1, sizeof *self);
    char err[512];
    self->config
        = ferry_config_parse (yaml, strlen (yaml), "kmock.yaml", err, sizeof err);
    if (!self->config) {
        s_diag ("config: %s", err);
        goto fail;
    }
    self->ops = worker_ops_new (
        self->config,
        ferry_config_node (self->config, NULL, "pools.kmock.operations"));
    if (!self->ops) {
        s_diag ("operations: %s", ferry_config_error (self->config));
        goto fail;
    }
    worker_breaker_settings_t bs;
    if (worker_breaker_settings_load (
            self->config,
            ferry_config_node (self->config, NULL, "pools.kmock"), &bs)) {
        s_diag ("breaker: %s", ferry_config_error (self->config));
        goto fail;
    }
    self->breaker = worker_breaker_new ("kmock", &bs);
    if (!self->breaker) {
        s_diag ("breaker: cannot create");
        goto fail;
    }
    self->kafka = worker_kafka_new (
        self->config, ferry_config_node (self->config, NULL, "pools.kmock.kafka"),
        "kmock", self->ops, s_conninfo, self->breaker);
    if (!self->kafka) {
        s_diag ("kafka: %s", ferry_config_error (self->config));
        goto fail;
    }
    if (worker_kafka_start (self->kafka)) {
        s_diag ("worker_kafka_start failed");
        goto fail;
    }
    return self;
fail:
    s_worker_destroy (&self);
    return NULL;
}

static s_worker_t *
s_worker_new (s_case_t *c, const char *marker)
{
    return s_worker_new_with (c, marker, "", "");
}

/* ---- cases ------------------------------------------------------------------ */

/*  5,000 events across 4 partitions, produced while the pool consumes.  */
static int
s_stream_case (s_case_t *c)
{
    s_worker_t *w = s_worker_new (c, "a");
    S_CHECK (w);
    int64_t t0 = ferry_mono_ms ();
    S_CHECK (s_stream (c, 5000, 250, 20) == 0);
    int rc = s_finish (c, 60000);
    s_diag ("stream: %" PRId64 " events in %" PRId64 " ms", c->produced,
            ferry_mono_ms () - t0);
    s_worker_destroy (&w);
    S_CHECK (rc == 0);
    /*  Stopping the pool changes nothing.  */
    S_CHECK (s_check_once (c) == 0);
    return 0;
}

/*  The only broker goes down in the middle of the stream for longer than
    the session timeout, and comes back.  */
static int
s_down_case (s_case_t *c)
{
    s_worker_t *w = s_worker_new (c, "a");
    S_CHECK (w);
    S_CHECK (s_stream (c, 1500, 100, 50) == 0);
    S_CHECK (s_wait_rows (c, NULL, 500, 30000) == 0);
    S_CHECK (rd_kafka_mock_broker_set_down (c->mc, 1) == 0);
    int64_t before = s_rows (c, NULL);
    /*  Events produced meanwhile wait in the producer's queue.  */
    S_CHECK (s_stream (c, 1000, 100, 100) == 0);
    s_sleep_ms (6000);
    int64_t during = s_rows (c, NULL);
    S_CHECK (rd_kafka_mock_broker_set_up (c->mc, 1) == 0);
    int64_t up = ferry_mono_ms ();
    s_diag ("down: %" PRId64 " rows when the broker went down, %" PRId64
            " after 7 s down, %" PRId64 " produced",
            before, during, c->produced);
    S_CHECK (during < c->produced);
    S_CHECK (s_stream (c, 2500, 100, 50) == 0);
    int rc = s_finish (c, 90000);
    s_diag ("down: all %" PRId64 " events in PostgreSQL %" PRId64
            " ms after the broker came back",
            c->produced, ferry_mono_ms () - up);
    s_worker_destroy (&w);
    S_CHECK (rc == 0);
    S_CHECK (s_check_once (c) == 0);
    return 0;
}

/*  Injected errors in the middle of the stream, on broker 1 (the only
    one: leader and group coordinator), whose stacks can be counted.  */
static int
s_errors_case (s_case_t *c)
{
    s_worker_t *w = s_worker_new (c, "a");
    S_CHECK (w);
    S_CHECK (s_stream (c, 1000, 100, 50) == 0);
    S_CHECK (s_wait_rows (c, NULL, 300, 30000) == 0);
    static const struct {
        int16_t api;
        const char *name;
        rd_kafka_resp_err_t errs[3];
    } inject[] = {
        {S_API_FETCH,
         "Fetch",
         {RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
          RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE,
          RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART}},
        {S_API_OFFSET_COMMIT,
         "OffsetCommit",
         {RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
          RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
          RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE}},
        {S_API_HEARTBEAT,
         "Heartbeat",
         {RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
          RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
          RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS}},
        {S_API_JOIN_GROUP,
         "JoinGroup",
         {RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
          RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
          RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE}},
        {S_API_SYNC_GROUP,
         "SyncGroup",
         {RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
          RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
          RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS}},
    };
    const size_t ninject = sizeof inject / sizeof inject[0];
    for (size_t i = 0; i < ninject; i++)
        S_CHECK (rd_kafka_mock_broker_push_request_error_rtts (
                     c->mc, 1, inject[i].api, 3, inject[i].errs[0], 0,
                     inject[i].errs[1], 0, inject[i].errs[2], 0)
                 == 0);
    /*  The stream goes on until every injected error was served (the
        consumer commits every 5 s, so OffsetCommit takes the longest).  */
    int64_t end = ferry_mono_ms () + 60000;
    size_t left = 1;
    while (left && ferry_mono_ms () < end) {
        S_CHECK (s_stream (c, 100, 100, 100) == 0);
        left = 0;
        for (size_t i = 0; i < ninject; i++) {
            size_t cnt = 0;
            S_CHECK (rd_kafka_mock_broker_error_stack_cnt (
                         c->mc, 1, inject[i].api, &cnt)
                     == 0);
            left += cnt;
        }
    }
    for (size_t i = 0; i < ninject; i++) {
        size_t cnt = 0;
        (void) rd_kafka_mock_broker_error_stack_cnt (c->mc, 1, inject[i].api,
                                                     &cnt);
        if (cnt)
            s_diag ("errors: %zu of 3 %s errors never served", cnt,
                    inject[i].name);
    }
    S_CHECK (left == 0);
    S_CHECK (s_stream (c, 500, 100, 50) == 0);
    int rc = s_finish (c, 60000);
    s_diag ("errors: %" PRId64 " events, every injected error served",
            c->produced);
    s_worker_destroy (&w);
    S_CHECK (rc == 0);
    S_CHECK (s_check_once (c) == 0);
    return 0;
}

/*  A second consumer of the same pool joins in the middle of the stream;
    then the first leaves.  */
static int
s_rebalance_case (s_case_t *c)
{
    s_worker_t *a = s_worker_new (c, "a");
    S_CHECK (a);
    S_CHECK (s_stream (c, 1000, 100, 50) == 0);
    S_CHECK (s_wait_rows (c, NULL, 500, 30000) == 0);

    s_worker_t *b = s_worker_new (c, "b");
    S_CHECK (b);
    int64_t joined = c->produced;
    /*  The stream goes on until b took over partitions.  */
    int64_t end = ferry_mono_ms () + 60000;
    while (s_rows (c, "consumer = 'b'") < 300 && ferry_mono_ms () < end)
        S_CHECK (s_stream (c, 100, 100, 100) == 0);
    S_CHECK (s_stream (c, 1000, 100, 50) == 0);
    S_CHECK (s_delivered (c, 30000) == 0);
    S_CHECK (s_wait_rows (c, NULL, c->produced, 60000) == 0);
    int64_t both = c->produced;
    char where[128];
    snprintf (where, sizeof where, "consumer = 'b' AND id <= %" PRId64, both);
    int64_t b_rows = s_rows (c, where);
    /*  Cooperative-sticky: a kept some partitions and worked on them
        while b took the others.  */
    snprintf (where, sizeof where,
              "consumer = 'a' AND id > %" PRId64 " AND id <= %" PRId64,
              joined, both);
    int64_t a_after = s_rows (c, where);
    char sql[256];
    snprintf (sql, sizeof sql,
              "SELECT count(DISTINCT part) FROM %s WHERE consumer = 'b'",
              c->table);
    int64_t b_parts = s_scalar (c->pg, sql);
    s_diag ("rebalance: with two consumers, b wrote %" PRId64
            " rows on %" PRId64 " partitions, a wrote %" PRId64
            " rows after b joined",
            b_rows, b_parts, a_after);
    S_CHECK (b_rows > 0 && a_after > 0);
    S_CHECK (b_parts >= 1 && b_parts < S_PARTS);

    /*  a leaves in the middle of the stream, with a burst on its way to
        it (fetches arrive while it closes); b takes everything.  */
    S_CHECK (s_stream (c, 500, 100, 50) == 0);
    S_CHECK (s_produce (c, 2000) == 0);
    int64_t t0 = ferry_mono_ms ();
    s_worker_destroy (&a);
    s_diag ("rebalance: a left in %" PRId64 " ms", ferry_mono_ms () - t0);
    int64_t left = c->produced;
    S_CHECK (s_stream (c, 2000, 100, 50) == 0);
    int rc = s_finish (c, 90000);
    snprintf (where, sizeof where, "consumer = 'a' AND id > %" PRId64, left);
    int64_t a_late = s_rows (c, where);
    snprintf (sql, sizeof sql,
              "SELECT count(DISTINCT part) FROM %s WHERE consumer = 'b'"
              " AND id > %" PRId64,
              c->table, left);
    int64_t b_all = s_scalar (c->pg, sql);
    s_worker_destroy (&b);
    S_CHECK (rc == 0);
    s_diag ("rebalance: after a left, b wrote on %" PRId64 " partitions",
            b_all);
    S_CHECK (a_late == 0);
    S_CHECK (b_all == S_PARTS);
    S_CHECK (s_check_once (c) == 0);
    return 0;
}


/* ---- the breaker case ------------------------------------------------------ */

/*  Asks test_kafka_mock.py to stop or start PostgreSQL and waits until it
    did.  */
static int
s_pg_control (const char *what)
{
    printf ("pg %s\n", what);
    fflush (stdout);
    char line[256];
    if (!fgets (line, sizeof line, stdin)) {
        s_diag ("pg %s: no answer on stdin", what);
        return -1;
    }
    line[strcspn (line, "\n")] = '\0';
    if (strcmp (line, "ok") != 0) {
        s_diag ("pg %s: %s", what, line);
        return -1;
    }
    return 0;
}

/*  Produces a request envelope for operation `ask` to topic, answered on
    reply_to; its id goes to id.  */
static int
s_request (s_case_t *c, const char *topic, const char *reply_to,
           char id[FERRY_ID_LEN + 1])
{
    ferry_id_generate (id);
    ferry_envelope_t *req = ferry_envelope_new (FERRY_KIND_REQUEST);
    ferry_envelope_set_id (req, id);
    ferry_envelope_set_service (req, "kmock");
    ferry_envelope_set_operation (req, "ask");
    ferry_envelope_set_reply_to (req, reply_to);
    ferry_envelope_set_deadline (req, ferry_wall_ms () + 20000);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init (&buf);
    int rc = ferry_envelope_encode (req, &buf);
    ferry_envelope_destroy (&req);
    if (rc == 0) {
        rd_kafka_resp_err_t err = rd_kafka_producev (
            c->producer, RD_KAFKA_V_TOPIC (topic),
            RD_KAFKA_V_MSGFLAGS (RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_KEY (id, strlen (id)),
            RD_KAFKA_V_VALUE (buf.data, buf.size),
            RD_KAFKA_V_OPAQUE (&s_request_mark), RD_KAFKA_V_END);
        if (err) {
            s_diag ("produce request: %s", rd_kafka_err2str (err));
            rc = -1;
        }
    } else
        s_diag ("cannot encode a request");
    msgpack_sbuffer_destroy (&buf);
    rd_kafka_poll (c->producer, 0);
    return rc;
}

/*  A consumer of the reply topic (partition 0, from its start).  */
static rd_kafka_t *
s_replies_new (s_case_t *c, const char *topic)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    rd_kafka_conf_set_log_cb (conf, s_log_cb);
    if (s_set (conf, "bootstrap.servers", c->bootstraps)
        || s_set (conf, "group.id", "ferry.kmock.replies")
        || s_set (conf, "enable.auto.commit", "false")
        || s_set (conf, "fetch.wait.max.ms", "50")) {
        rd_kafka_conf_destroy (conf);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new (RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        rd_kafka_conf_destroy (conf);
        s_diag ("reply consumer: %s", err);
        return NULL;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new (1);
    rd_kafka_topic_partition_list_add (l, topic, 0)->offset
        = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_resp_err_t rc = rd_kafka_assign (rk, l);
    rd_kafka_topic_partition_list_destroy (l);
    if (rc) {
        s_diag ("reply consumer assign: %s", rd_kafka_err2str (rc));
        rd_kafka_destroy (rk);
        return NULL;
    }
    return rk;
}

/*  Waits at most ms for the reply to request id; fills its status and
    retry-after header ("" when none).  */
static int
s_reply_wait (s_case_t *c, rd_kafka_t *rk, const char *id, int64_t ms,
              unsigned *status, char *retry, size_t retrylen)
{
    int64_t end = ferry_mono_ms () + ms;
    while (ferry_mono_ms () < end) {
        rd_kafka_poll (c->producer, 0);
        rd_kafka_message_t *m = rd_kafka_consumer_poll (rk, 50);
        if (!m)
            continue;
        bool mine = false;
        if (!m->err && m->payload) {
            char reason[128];
            ferry_envelope_t *rep = ferry_envelope_decode (
                m->payload, m->len, NULL, reason, sizeof reason);
            const char *re = rep ? ferry_envelope_re (rep) : NULL;
            if (re && strcmp (re, id) == 0) {
                mine = true;
                *status = ferry_envelope_status (rep);
                const char *after = ferry_envelope_header (rep, "retry-after");
                snprintf (retry, retrylen, "%s", after ? after : "");
            }
            ferry_envelope_destroy (&rep);
        }
        rd_kafka_message_destroy (m);
        if (mine)
            return 0;
    }
    s_diag ("no reply to request %s in %" PRId64 " ms", id, ms);
    return -1;
}

/*  Waits at most ms until the breaker is in state want.  */
static int
s_breaker_wait (s_case_t *c, worker_breaker_t *b, worker_breaker_state_t want,
                int64_t ms)
{
    int64_t end = ferry_mono_ms () + ms;
    while (ferry_mono_ms () < end) {
        if (worker_breaker_state (b, ferry_mono_ms ()) == want)
            return 0;
        s_serve (c, 20);
    }
    s_diag ("breaker not %s after %" PRId64 " ms",
            worker_breaker_state_name (want), ms);
    return -1;
}

/*  PostgreSQL stops in the middle of the stream and starts again.  */
static int
s_breaker_run (s_case_t *c, s_worker_t *w, rd_kafka_t *replies,
               const char *req)
{
    char id[FERRY_ID_LEN + 1], retry[16];
    unsigned status = 0;
    char rtopic[96];
    snprintf (rtopic, sizeof rtopic, "%s.reply", c->topic);
    /*  The request path works, and the partitions are assigned.  */
    S_CHECK (s_request (c, req, rtopic, id) == 0);
    S_CHECK (s_reply_wait (c, replies, id, 30000, &status, retry,
                           sizeof retry)
             == 0);
    S_CHECK (status == 200);
    S_CHECK (s_stream (c, 1000, 100, 50) == 0);
    S_CHECK (s_wait_rows (c, NULL, 300, 30000) == 0);
    S_CHECK (worker_breaker_state (w->breaker, ferry_mono_ms ())
             == WORKER_BREAKER_CLOSED);

    S_CHECK (s_pg_control ("stop") == 0);
    int64_t stopped = ferry_mono_ms ();
    /*  Events keep coming while PostgreSQL is away: they must wait.  */
    S_CHECK (s_stream (c, 300, 100, 100) == 0);
    S_CHECK (s_breaker_wait (c, w->breaker, WORKER_BREAKER_OPEN, 20000) == 0);
    int64_t opened = ferry_mono_ms ();

    /*  Requests are answered 503 with retry-after at once, open or
        half-open (a probe finds PostgreSQL refusing and it opens again),
        not at their deadline (20 s).  */
    int64_t slowest = 0;
    for (int i = 0; i < 5; i++) {
        int64_t t0 = ferry_mono_ms ();
        S_CHECK (s_request (c, req, rtopic, id) == 0);
        S_CHECK (s_reply_wait (c, replies, id, 5000, &status, retry,
                               sizeof retry)
                 == 0);
        int64_t took = ferry_mono_ms () - t0;
        if (took > slowest)
            slowest = took;
        if (status != 503 || !*retry)
            s_diag ("breaker: request %d answered %u retry-after '%s'", i,
                    status, retry);
        S_CHECK (status == 503 && atoi (retry) >= 1);
        S_CHECK (s_produce (c, 50) == 0);
        s_serve (c, 300);
    }
    S_CHECK (s_pg_control ("start") == 0);
    int64_t started = ferry_mono_ms ();
    PQreset (c->pg);
    S_CHECK (PQstatus (c->pg) == CONNECTION_OK);
    S_CHECK (s_breaker_wait (c, w->breaker, WORKER_BREAKER_CLOSED, 30000)
             == 0);
    int64_t closed = ferry_mono_ms ();
    s_diag ("breaker: open %" PRId64 " ms after PostgreSQL stopped, 503s in "
            "%" PRId64 " ms at most, closed %" PRId64
            " ms after it started",
            opened - stopped, slowest, closed - started);
    S_CHECK (s_stream (c, 1000, 100, 50) == 0);
    S_CHECK (s_request (c, req, rtopic, id) == 0);
    S_CHECK (s_reply_wait (c, replies, id, 30000, &status, retry,
                           sizeof retry)
             == 0);
    S_CHECK (status == 200);
    return 0;
}

static int
s_breaker_case (s_case_t *c)
{
    char req[96], rtopic[96], topics[160];
    snprintf (req, sizeof req, "%s.req", c->topic);
    snprintf (rtopic, sizeof rtopic, "%s.reply", c->topic);
    S_CHECK (rd_kafka_mock_topic_create (c->mc, req, 1, 1) == 0);
    S_CHECK (rd_kafka_mock_topic_create (c->mc, rtopic, 1, 1) == 0);
    snprintf (topics, sizeof topics, "        - {topic: %s, format: ferry}\n",
              req);
    /*  The breaker's state changes go to the log, which
        test_kafka_mock.py reads.  */
    int level = ferry_log_level;
    if (ferry_log_level < FERRY_LOG_INFO)
        ferry_log_level = FERRY_LOG_INFO;
    s_worker_t *w = s_worker_new_with (
        c, "a",
        "    breaker: {failures: 3, window: 10s, cooldown: 2s, probes: 2}\n",
        topics);
    rd_kafka_t *replies = w ? s_replies_new (c, rtopic) : NULL;
    int rc = replies ? s_breaker_run (c, w, replies, req) : -1;
    if (rc == 0)
        rc = s_finish (c, 90000);
    s_worker_destroy (&w);
    if (replies) {
        rd_kafka_consumer_close (replies);
        rd_kafka_destroy (replies);
    }
    ferry_log_level = level;
    S_CHECK (rc == 0);
    S_CHECK (s_check_once (c) == 0);
    return 0;
}

typedef struct {
    const char *name;
    const char *title;
    int brokers;
    int (*run) (s_case_t *c);
} s_entry_t;

static const s_entry_t s_cases[] = {
    {"stream", "5,000 events across 4 partitions consumed exactly once", 1,
     s_stream_case},
    {"down", "broker down and back in the middle of the stream: exactly once",
     1, s_down_case},
    {"errors",
     "Fetch/OffsetCommit/Heartbeat/JoinGroup/SyncGroup errors in the middle "
     "of the stream: exactly once",
     1, s_errors_case},
    {"rebalance",
     "a second consumer joins and the first leaves in the middle of the "
     "stream: exactly once",
     3, s_rebalance_case},
    {"breaker",
     "PostgreSQL stopped and started in the middle of the stream: the "
     "breaker opens (requests 503 at once) and closes, events exactly once",
     1, s_breaker_case},
};
#define S_NCASES (sizeof s_cases / sizeof s_cases[0])

static bool
s_selected (const char *name, int argc, char **argv, int first)
{
    if (first >= argc)
        return true;
    for (int i = first; i < argc; i++)
        if (strcmp (argv[i], name) == 0)
            return true;
    return false;
}

int
main (int argc, char **argv)
{
    int first = 1;
    if (first < argc && strcmp (argv[first], "-v") == 0) {
        s_verbose = true;
        first++;
    }
    if (first >= argc || argv[first][0] == '-') {
        fprintf (stderr, "usage: %s [-v] CONNINFO [CASE...]\n", argv[0]);
        return 2;
    }
    s_conninfo = argv[first++];
    /*  The pool's own log only when asked: the TAP stream is stdout.  */
    const char *debug = getenv ("FERRY_KMOCK_DEBUG");
    ferry_log_init ("kmock",
                    !s_verbose          ? FERRY_LOG_ERROR
                    : debug && *debug ? FERRY_LOG_DEBUG
                                        : FERRY_LOG_INFO,
                    false);
    int n = 0, failed = 0;
    for (size_t i = 0; i < S_NCASES; i++) {
        if (!s_selected (s_cases[i].name, argc, argv, first))
            continue;
        int64_t t0 = ferry_mono_ms ();
        s_case_t c;
        int rc = s_case_start (&c, s_cases[i].name, s_cases[i].brokers);
        if (rc == 0)
            rc = s_cases[i].run (&c);
        s_case_stop (&c);
        /*  Every librdkafka instance and its threads must be gone before
            the next case.  */
        if (rd_kafka_wait_destroyed (10000) != 0) {
            s_diag ("%s: librdkafka instances left behind", s_cases[i].name);
            rc = -1;
        }
        n++;
        if (rc)
            failed++;
        printf ("%s %d - %s: %s (%.1f s)\n", rc ? "not ok" : "ok", n,
                s_cases[i].name, s_cases[i].title,
                (double) (ferry_mono_ms () - t0) / 1000.0);
        fflush (stdout);
    }
    printf ("1..%d\n", n);
    return failed ? 1 : 0;
}

/*  worker_kafka.c: a pool's Kafka consumer (one CZMQ actor per pool).

    Exactly-once effect rests on PostgreSQL, not on Kafka: each message
    runs in one transaction that first claims its offset in
    ferry.kafka_offsets (an upsert that only moves the group's next offset
    forward past this message) and then runs the operation's steps.  A
    message whose offset PostgreSQL already holds claims nothing and is
    skipped, so a redelivery after a crash, a rebalance or a zombie consumer
    changes nothing.  The offset is stored to librdkafka (which commits
    stored offsets in the background) only after COMMIT, and on assignment
    the consumer starts from the offsets PostgreSQL holds, so Kafka's
    committed offsets are a hint that is never ahead of the truth.

    One thread polls (rd_kafka_consumer_poll; the batch APIs are buggy in
    librdkafka 2.0) and hands each message to one of the pool's lanes,
    chosen by (topic, partition): a lane is a thread with its own blocking
    libpq connection and producer, up to the pool's actor count, so
    partitions run concurrently and each partition's messages run in
    order on one lane.  A lane runs the messages waiting in one partition
    (up to S_BATCH) as one transaction, and one by one when that fails, so
    that each keeps its own retry and dead letter.  A partition with more
    than S_PAUSE_AT messages waiting is paused (rd_kafka_pause_partitions)
    and resumed once its lane has worked it down to S_RESUME_AT: memory
    stays bounded whatever PostgreSQL's pace.  On revocation (the
    rebalance callback, on the polling thread) the lanes finish the
    message in hand of each revoked partition and drop the rest; the new
    owner starts from PostgreSQL's offset.  A retriable failure (connection
    lost, deadlock, serialization, any server-side 5xx class) holds the
    partition's first message for a backoff (exponential, with jitter)
    while the lane goes on with its other partitions; after the topic's
    `retries` the message is dead-lettered, like a failure that is the
    message's fault (bad value, constraint) and a message that does not
    decode, at once.

    Dead-lettering is asynchronous for the same reason: the partition is
    held, the message is produced to the topic's dead-letter topic
    (`<topic>.dlq`) with ferry-* headers saying why, and only once its
    delivery report succeeded does one transaction claim the offset and
    record the row in ferry.dead_letters.  Then the partition goes on past
    it.  A failed delivery is produced again after a backoff: nothing is
    dropped silently, and a crash in between at worst puts the message in
    the dead-letter topic twice.

    A topic of format `ferry` is a request topic: its values are ferry
    envelopes that an edge produced, each naming its operation, and each
    gets a reply envelope produced to the reply topic it names, through
    the lane's own producer, after COMMIT and before the offset is
    stored.  A request PostgreSQL already holds is skipped without a
    reply: its first run replied.  The requests waiting in a partition run
    as one transaction too (s_request_batch: one claim, one COMMIT, then
    the replies in order), since a claim per request made each one pay a
    WAL flush; whatever does not go as planned runs one by one instead.

    A request carrying a job id or an Idempotency-Key runs as on ZeroMQ
    (worker_jobs.c, docs/worker.md): job_start commits on its own, then
    the transaction that claims the offset runs job_guard, idem_begin,
    the steps, job_finish and idem_finish.  A stored outcome, a refused
    key or a failed handler is answered from a transaction that claims
    the offset too, so the offset is claimed once whatever the outcome;
    a request dead-lettered after its retries ends its job `dead`.

    The lanes share the pool's circuit breaker with its ZeroMQ actors
    (docs/kafka.md, "The pool's circuit breaker"): they report PostgreSQL
    unreachable to it, and successes.  While it is open no lane calls
    PostgreSQL: events wait in their partitions (nothing dead-lettered,
    offsets unstored), requests are answered 503 at once (s_part_shed);
    half-open, only the runs it admits go through.  */

#include "ferry.h"
#include "envelope.h"
#include "json.h"
#include "kafka.h"
#include "log.h"
#include "worker_breaker.h"
#include "worker_kafka.h"
#include "worker_jobs.h"
#include "worker_pgerror.h"
#include "worker_reply.h"

#include <czmq.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

typedef enum { S_FORMAT_JSON, S_FORMAT_CLOUDEVENTS, S_FORMAT_FERRY } s_format_t;

typedef struct {
    char *name;
    s_format_t format;
    const worker_op_t *op;   /* NULL for ferry: each envelope names one */
    char *dlq;               /* dead-letter topic */
    int64_t retries;         /* retries of a retriable failure before it */
} s_topic_t;

/*  Why a message failed: detail goes to ferry.dead_letters (operators'
    table, may quote the server), text to the dead-letter topic's
    ferry-error header (a fixed phrase and the SQLSTATE, never server text:
    the topic may be read far more widely than the database).  */
typedef struct {
    char operation[128];
    char text[96];
    char detail[512];
} s_fault_t;

/*  What a partition's first message waits for.  */
typedef enum {
    S_HOLD_NONE,      /* nothing: it runs when the lane gets to it */
    S_HOLD_BACKOFF,   /* a retry: runs again at due */
    S_HOLD_SENDING,   /* dead letter produced, delivery report pending */
    S_HOLD_UNSENT,    /* its delivery failed: produce again at due */
    S_HOLD_SENT,      /* delivered: record it in PostgreSQL (again at due) */
} s_hold_state_t;

/*  One assigned partition as its lane sees it: the messages polled and
    not done yet, in offset order (a ring), and what the first one waits
    for.  Only the consumer thread appends and creates or frees parts;
    only the lane pops.  Everything here is under the lane's mutex, except
    the hold fields while busy (the lane alone touches them then).  */
typedef struct {
    const s_topic_t *topic;
    int32_t partition;
    rd_kafka_message_t **q;
    size_t head, count, cap;
    int64_t next;            /* the next offset expected from Kafka */
    bool paused;             /* by back-pressure */
    bool busy;               /* the lane runs its first messages now */
    int64_t attempts;        /* failed attempts of the first message */
    int64_t backoff_ms;      /* its next wait */
    int64_t due;             /* ferry_mono_ms of its next step */
    s_hold_state_t state;
    s_fault_t fault;
    bool stuck;              /* its first message cannot be answered
                                without PostgreSQL (s_part_shed) */
} s_part_t;

/*  A lane: one thread with its own PostgreSQL connection and producer
    that runs the messages of the partitions hashed to it, one partition
    at a time, in order within each.  */
typedef struct {
    worker_kafka_t *cfg;
    rd_kafka_t *rk;
    size_t index;
    pthread_t thread;
    bool started;
    pthread_mutex_t mutex;
    pthread_cond_t wake;     /* work, or stop, for the lane */
    pthread_cond_t idle;     /* a part stopped being busy */
    s_part_t **parts;
    size_t nparts, capparts, rr;
    bool stop;
    PGconn *conn;
    ferry_kafka_producer_t *producer; /* replies and dead letters */
    msgpack_sbuffer body;    /* a reply's result, reused */
    msgpack_sbuffer out;     /* an encoded reply, reused */
    worker_jobs_ctx_t jobs;  /* of the request in hand with job or idem */
    int64_t backoff_ms;      /* next wait while PostgreSQL is down */
    char sqlstate[6];        /* of the last failure classified, or "" */
} s_lane_t;

/*  The consumer actor's state; lives in worker_kafka_t because
    librdkafka's rebalance callback gets it as the handle's opaque.  */
typedef struct {
    worker_kafka_t *cfg;
    rd_kafka_t *rk;
    PGconn *conn;            /* reads the offsets on assignment */
    int64_t backoff_ms;      /* next wait while PostgreSQL is down */
    s_lane_t *lanes;
    size_t nlanes;
    atomic_uint_fast64_t stored;   /* offsets stored by the lanes */
    uint64_t committed;      /* ... when the last commit was asked */
    int64_t commit_due;      /* ferry_mono_ms of the next commit */
    int inflight;            /* commits not reported yet */
    bool down;               /* the cluster looked unreachable */
    bool terminated;
    zsock_t *pipe;
} s_consumer_t;

struct _worker_kafka_t {
    char *pool;
    char *group;
    const char *conninfo;
    size_t ntopics;
    s_topic_t *topics;
    size_t nlanes;           /* the pool's actors */
    const worker_ops_t *ops;
    worker_breaker_t *breaker;     /* the pool's, or NULL */
    worker_jobs_settings_t jobs;   /* jobs.* and idempotency.* */
    char *crash_after_commit;      /* test-only fault hook, or NULL */
    rd_kafka_conf_t *conf;   /* until start */
    rd_kafka_conf_t *pconf;  /* the producer's; each producer gets a copy */
    zactor_t *actor;
    s_consumer_t consumer;   /* the actor's, from start */
    bool stopping;
};

#define S_BACKOFF_MIN 100
#define S_BACKOFF_MAX 5000
#define S_RETRIES_DEFAULT 5
#define S_BATCH 100          /* messages of one partition per transaction */
#define S_PAUSE_AT 2000      /* messages waiting that pause a partition */
#define S_RESUME_AT 1000     /* ... and that resume it: while half is left,
                                so that the fetch after a resume overlaps
                                the work (a pause drops what librdkafka
                                had prefetched for the partition) */
#define S_LANES_MAX 64
#define S_CLOSE_MS 2000      /* leaving the group at stop, at most */
#define S_COMMIT_WAIT_MS 1000 /* the last commit at stop, at most */
#define S_DESTROY_MS 1500    /* librdkafka's destroy at stop, at most */
#define S_FLUSH_MS 2000      /* a lane's producer flush at stop, at most */
#define S_COMMIT_MS 5000     /* stored offsets committed to Kafka this often */
#define S_BREAKER_LOOK_MS 100 /* a lane looks at a breaker not closed this
                                 often (for the end of its cool-down) */

static const char s_claim_sql[]
    = "INSERT INTO ferry.kafka_offsets (group_id, topic, partition,"
      " \"offset\") VALUES ($1, $2, $3, $4 + 1)"
      " ON CONFLICT (group_id, topic, partition) DO UPDATE"
      " SET \"offset\" = EXCLUDED.\"offset\", updated_at = now()"
      " WHERE ferry.kafka_offsets.\"offset\" <= $4 RETURNING 1";

/*  The same for a batch of one partition, $4 its first offset and $5 its
    last: one row lock, one claim for the range.  */
static const char s_claim_range_sql[]
    = "INSERT INTO ferry.kafka_offsets (group_id, topic, partition,"
      " \"offset\") VALUES ($1, $2, $3, $5 + 1)"
      " ON CONFLICT (group_id, topic, partition) DO UPDATE"
      " SET \"offset\" = EXCLUDED.\"offset\", updated_at = now()"
      " WHERE ferry.kafka_offsets.\"offset\" <= $4 RETURNING 1";

static const char s_dead_sql[]
    = "INSERT INTO ferry.dead_letters (message_id, service, operation,"
      " source, topic, partition, \"offset\", envelope, error, attempts)"
      " VALUES ($1, $2, $3, 'kafka', $4, $5, $6, $7, $8, $9)";

/* ---- configuration ------------------------------------------------------ */

worker_kafka_t *
worker_kafka_new (ferry_config_t *config, const ferry_cnode_t *node,
                  const char *pool, const worker_ops_t *ops,
                  const char *conninfo, worker_breaker_t *breaker)
{
    if (ferry_cnode_type (node) != FERRY_CNODE_MAP) {
        ferry_config_fail (config, node, "expected a map");
        return NULL;
    }
    worker_kafka_t *self = ferry_calloc (1, sizeof *self);
    self->pool = ferry_strdup (pool);
    self->conninfo = conninfo;
    self->ops = ops;
    self->breaker = breaker;
    char dflt[128];
    snprintf (dflt, sizeof dflt, "ferry.%s", pool);
    const char *group;
    if (ferry_config_str (config, node, "group", dflt, &group))
        goto fail;
    if (!group || !*group) {
        ferry_config_fail (config, ferry_config_node (config, node, "group"),
                           "must not be empty");
        goto fail;
    }
    self->group = ferry_strdup (group);
    if (worker_jobs_settings_load (config, &self->jobs))
        goto fail;
    /*  docs/worker.md: the worker kills itself after the COMMIT of this
        operation's tracked message, before its reply (tests only).  */
    const char *crash = getenv ("FERRY_TEST_CRASH_AFTER_COMMIT");
    if (crash && *crash)
        self->crash_after_commit = ferry_strdup (crash);
    /*  One lane per actor of the pool: the pool's actor count is its
        PostgreSQL budget, Kafka's partitions share it.  */
    char path[160];
    snprintf (path, sizeof path, "pools.%s", pool);
    const ferry_cnode_t *pnode = ferry_config_node (config, NULL, path);
    int64_t actors = 1;
    if (pnode && ferry_cnode_type (pnode) == FERRY_CNODE_MAP
        && ferry_config_int (config, pnode, "actors", 1, 1024, 1, &actors))
        goto fail;
    self->nlanes = (size_t) (actors > S_LANES_MAX ? S_LANES_MAX : actors);

    const ferry_cnode_t *topics = ferry_config_node (config, node, "topics");
    if (!topics || ferry_cnode_type (topics) != FERRY_CNODE_SEQ
        || ferry_cnode_size (topics) == 0) {
        ferry_config_fail (config, topics ? topics : node,
                           "%s", topics ? "expected a sequence of topics"
                                        : "missing topics");
        goto fail;
    }
    self->ntopics = ferry_cnode_size (topics);
    self->topics = ferry_calloc (self->ntopics, sizeof *self->topics);
    for (size_t i = 0; i < self->ntopics; i++) {
        const ferry_cnode_t *t = ferry_cnode_child (topics, i);
        const char *name, *format, *op, *dlq;
        if (ferry_cnode_type (t) != FERRY_CNODE_MAP) {
            ferry_config_fail (config, t, "expected a map");
            goto fail;
        }
        if (ferry_config_str (config, t, "topic", NULL, &name)
            || ferry_config_str (config, t, "format", "json", &format)
            || ferry_config_str (config, t, "operation", NULL, &op)
            || ferry_config_str (config, t, "dlq", NULL, &dlq)
            || ferry_config_int (config, t, "retries", 0, 1000,
                                 S_RETRIES_DEFAULT,
                                 &self->topics[i].retries))
            goto fail;
        if (!name || !*name) {
            ferry_config_fail (config, t, "missing topic");
            goto fail;
        }
        if (dlq && (!*dlq || strcmp (dlq, name) == 0)) {
            /*  Dead letters fed back into their own topic would loop.  */
            ferry_config_fail (config, ferry_config_node (config, t, "dlq"),
                               "must name another topic");
            goto fail;
        }
        if (dlq)
            self->topics[i].dlq = ferry_strdup (dlq);
        else {
            self->topics[i].dlq = ferry_malloc (strlen (name) + 5);
            sprintf (self->topics[i].dlq, "%s.dlq", name);
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp (self->topics[j].name, name) == 0) {
                ferry_config_fail (config,
                                   ferry_config_node (config, t, "topic"),
                                   "topic '%s' listed twice", name);
                goto fail;
            }
        self->topics[i].name = ferry_strdup (name);
        if (strcmp (format, "json") == 0)
            self->topics[i].format = S_FORMAT_JSON;
        else if (strcmp (format, "cloudevents") == 0)
            self->topics[i].format = S_FORMAT_CLOUDEVENTS;
        else if (strcmp (format, "ferry") == 0)
            self->topics[i].format = S_FORMAT_FERRY;
        else {
            ferry_config_fail (config, ferry_config_node (config, t, "format"),
                               "format is json, cloudevents or ferry");
            goto fail;
        }
        if (self->topics[i].format == S_FORMAT_FERRY) {
            if (op) {
                ferry_config_fail (config,
                                   ferry_config_node (config, t, "operation"),
                                   "a ferry topic's envelopes name their "
                                   "operation");
                goto fail;
            }
            continue;
        }
        if (!op) {
            ferry_config_fail (config, t, "missing operation");
            goto fail;
        }
        self->topics[i].op = worker_ops_find (ops, op);
        if (!self->topics[i].op) {
            ferry_config_fail (config,
                               ferry_config_node (config, t, "operation"),
                               "no operation named '%s' in this pool", op);
            goto fail;
        }
    }

    /*  Ours first, then the file's properties (which may, for instance,
        choose auto.offset.reset), then the settings exactly-once needs,
        which win.  Events written before a group first ran are consumed:
        an outside producer's events must not be lost to a late start.  */
    char err[512];
    self->conf = ferry_kafka_conf_new (config, node, err, sizeof err);
    if (!self->conf)
        goto fail;
    self->pconf = rd_kafka_conf_dup (self->conf);
    bool reset_given = false;
    const ferry_cnode_t *props = ferry_config_node (config, node,
                                                    "properties");
    for (size_t i = 0; props && i < ferry_cnode_size (props); i++) {
        const char *item = ferry_cnode_value (ferry_cnode_child (props, i));
        const char *eq = item ? strchr (item, '=') : NULL;
        if (!eq)
            continue;
        while (*item == ' ')
            item++;
        size_t n = (size_t) (eq - item);
        while (n && item[n - 1] == ' ')
            n--;
        if (n == strlen ("auto.offset.reset")
            && strncmp (item, "auto.offset.reset", n) == 0)
            reset_given = true;
    }
    static const char *forced[][2] = {
        {"enable.auto.offset.store", "false"},
        {"enable.auto.commit", "false"},
        {"partition.assignment.strategy", "cooperative-sticky"},
        {"isolation.level", "read_committed"},
        {"enable.partition.eof", "false"},
    };
    if (rd_kafka_conf_set (self->conf, "group.id", self->group, err,
                           sizeof err) != RD_KAFKA_CONF_OK
        || (!reset_given
            && rd_kafka_conf_set (self->conf, "auto.offset.reset",
                                  "earliest", err, sizeof err)
                   != RD_KAFKA_CONF_OK)) {
        ferry_config_fail (config, node, "%s", err);
        goto fail;
    }
    for (size_t i = 0; i < sizeof forced / sizeof forced[0]; i++)
        if (rd_kafka_conf_set (self->conf, forced[i][0], forced[i][1], err,
                               sizeof err) != RD_KAFKA_CONF_OK) {
            ferry_config_fail (config, node, "%s", err);
            goto fail;
        }
    return self;
fail:
    worker_kafka_destroy (&self);
    return NULL;
}

void
worker_kafka_destroy (worker_kafka_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    worker_kafka_t *self = *self_p;
    zactor_destroy (&self->actor);
    /*  Only when the actor never ran: it destroys its own.  */
    if (self->consumer.rk)
        rd_kafka_destroy (self->consumer.rk);
    if (self->conf)
        rd_kafka_conf_destroy (self->conf);
    if (self->pconf)
        rd_kafka_conf_destroy (self->pconf);
    for (size_t i = 0; self->topics && i < self->ntopics; i++) {
        free (self->topics[i].name);
        free (self->topics[i].dlq);
    }
    free (self->topics);
    free (self->group);
    free (self->crash_after_commit);
    free (self->pool);
    free (self);
    *self_p = NULL;
}

/* ---- PostgreSQL --------------------------------------------------------- */

static const char s_setup_sql[]
    = "SELECT set_config('DateStyle', 'ISO, MDY', false),"
      " set_config('TimeZone', 'UTC', false),"
      " set_config('IntervalStyle', 'iso_8601', false),"
      " set_config('bytea_output', 'hex', false),"
      " set_config('extra_float_digits', '3', false)";

/*  Waits up to ms for a $TERM on the pipe.  */
static void
s_wait (s_consumer_t *self, int64_t ms)
{
    zpoller_t *poller = zpoller_new (self->pipe, NULL);
    if (zpoller_wait (poller, (int) ms) == self->pipe) {
        char *cmd = zstr_recv (self->pipe);
        if (!cmd || strcmp (cmd, "$TERM") == 0)
            self->terminated = true;
        free (cmd);
    }
    if (zpoller_terminated (poller))
        self->terminated = true;
    zpoller_destroy (&poller);
}

/*  The next wait of an exponential backoff (*step doubles up to 5 s),
    drawn between half and all of the step, so that many consumers failing
    together do not retry in step.  */
static int64_t
s_next_backoff (int64_t *step)
{
    int64_t ms = *step / 2 + (int64_t) (random () % (*step / 2 + 1));
    *step = *step * 2 > S_BACKOFF_MAX ? S_BACKOFF_MAX : *step * 2;
    return ms;
}

/*  PostgreSQL could not be reached (the pool's breaker counts it).  */
static void
s_pg_failure (const worker_kafka_t *cfg, const char *reason)
{
    if (cfg->breaker)
        worker_breaker_failure (cfg->breaker, reason, ferry_mono_ms ());
}

/*  PostgreSQL answered.  */
static void
s_pg_success (const worker_kafka_t *cfg)
{
    if (cfg->breaker)
        worker_breaker_success (cfg->breaker);
}

/*  Connects *conn when not connected.  With stale, a connection the
    server closed meanwhile (a restart, a fast shutdown: its last words
    wait in the socket) is found without a round trip (one recv) and
    counts as lost.  Returns 0 when a connection is up.  */
static int
s_pg_connect (const worker_kafka_t *cfg, PGconn **conn, const char *who,
              bool stale)
{
    if (*conn && PQstatus (*conn) == CONNECTION_OK
        && (!stale || (PQconsumeInput (*conn)
                       && PQstatus (*conn) == CONNECTION_OK)))
        return 0;
    if (*conn) {
        log_warn ("kafka %s lost its PostgreSQL connection pool=%s", who,
                  cfg->pool);
        s_pg_failure (cfg, "connection lost");
        PQfinish (*conn);
    }
    *conn = PQconnectdb (cfg->conninfo);
    if (PQstatus (*conn) == CONNECTION_OK) {
        PGresult *r = PQexec (*conn, s_setup_sql);
        bool ok = PQresultStatus (r) == PGRES_TUPLES_OK;
        PQclear (r);
        if (ok) {
            log_info ("kafka %s connected to PostgreSQL pool=%s", who,
                      cfg->pool);
            s_pg_success (cfg);
            return 0;
        }
    }
    char msg[256];
    snprintf (msg, sizeof msg, "%s", PQerrorMessage (*conn));
    msg[strcspn (msg, "\n")] = '\0';
    log_warn ("kafka %s cannot connect to PostgreSQL pool=%s: %s", who,
              cfg->pool, msg);
    s_pg_failure (cfg, "connect failed");
    PQfinish (*conn);
    *conn = NULL;
    return -1;
}

static int
s_pg_ensure (s_lane_t *self)
{
    char who[32];
    snprintf (who, sizeof who, "lane %zu", self->index);
    return s_pg_connect (self->cfg, &self->conn, who, true);
}

/*  Runs sql without parameters; true when it succeeded.  */
static bool
s_exec (PGconn *conn, const char *sql)
{
    PGresult *r = PQexec (conn, sql);
    bool ok = PQresultStatus (r) == PGRES_COMMAND_OK;
    PQclear (r);
    return ok;
}

/* ---- rebalance ---------------------------------------------------------- */

/*  Sets the start offset of every partition in parts that PostgreSQL
    holds an offset for; the others keep RD_KAFKA_OFFSET_INVALID (Kafka's
    committed offset, never ahead of PostgreSQL's, or auto.offset.reset).
    Without PostgreSQL the claim still skips anything already done.  */
static void
s_resume_offsets (s_consumer_t *self,
                  rd_kafka_topic_partition_list_t *parts)
{
    /*  No PostgreSQL calls while the pool's breaker is not closed: the
        claims skip whatever PostgreSQL already holds.  */
    if (self->cfg->breaker && !worker_breaker_closed (self->cfg->breaker)) {
        log_info ("kafka consumer starts from Kafka's offsets pool=%s: "
                  "circuit breaker not closed",
                  self->cfg->pool);
        return;
    }
    if (s_pg_connect (self->cfg, &self->conn, "consumer", true))
        return;
    const char *values[1] = {self->cfg->group};
    PGresult *r = PQexecParams (
        self->conn,
        "SELECT topic, partition, \"offset\" FROM ferry.kafka_offsets"
        " WHERE group_id = $1",
        1, NULL, values, NULL, NULL, 0);
    if (PQresultStatus (r) != PGRES_TUPLES_OK) {
        log_warn ("kafka consumer cannot read offsets pool=%s: %s",
                  self->cfg->pool, PQresultErrorMessage (r));
        PQclear (r);
        return;
    }
    for (int row = 0; row < PQntuples (r); row++) {
        int64_t partition, offset;
        if (ferry_parse_int64 (PQgetvalue (r, row, 1), &partition)
            || ferry_parse_int64 (PQgetvalue (r, row, 2), &offset))
            continue;
        rd_kafka_topic_partition_t *p = rd_kafka_topic_partition_list_find (
            parts, PQgetvalue (r, row, 0), (int32_t) partition);
        if (p)
            p->offset = offset;
    }
    PQclear (r);
    for (int i = 0; i < parts->cnt; i++)
        log_info ("kafka partition assigned pool=%s topic=%s partition=%d "
                  "offset=%" PRId64,
                  self->cfg->pool, parts->elems[i].topic,
                  parts->elems[i].partition, parts->elems[i].offset);
}

static void s_lanes_revoke (s_consumer_t *self,
                            const rd_kafka_topic_partition_list_t *parts);

static void
s_rebalance (rd_kafka_t *rk, rd_kafka_resp_err_t err,
             rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    s_consumer_t *self = opaque;
    bool coop = strcmp (rd_kafka_rebalance_protocol (rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t rc = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        s_resume_offsets (self, parts);
        if (coop)
            error = rd_kafka_incremental_assign (rk, parts);
        else
            rc = rd_kafka_assign (rk, parts);
        /*  A partition paused by back-pressure when it was revoked starts
            afresh if it comes back.  */
        if (!error && !rc)
            (void) rd_kafka_resume_partitions (rk, parts);
    } else {
        for (int i = 0; i < parts->cnt; i++)
            log_info ("kafka partition revoked pool=%s topic=%s partition=%d",
                      self->cfg->pool, parts->elems[i].topic,
                      parts->elems[i].partition);
        s_lanes_revoke (self, parts);
        if (coop)
            error = rd_kafka_incremental_unassign (rk, parts);
        else
            rc = rd_kafka_assign (rk, NULL);
    }
    if (error) {
        log_error ("kafka rebalance failed pool=%s: %s", self->cfg->pool,
                   rd_kafka_error_string (error));
        rd_kafka_error_destroy (error);
    } else if (rc)
        log_error ("kafka rebalance failed pool=%s: %s", self->cfg->pool,
                   rd_kafka_err2str (rc));
}

/* ---- one message -------------------------------------------------------- */

static const s_topic_t *
s_topic_find (const worker_kafka_t *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->ntopics; i++)
        if (strcmp (cfg->topics[i].name, name) == 0)
            return &cfg->topics[i];
    return NULL;
}

static void
s_pack_str (msgpack_packer *pk, const char *s, size_t len)
{
    msgpack_pack_str (pk, len);
    msgpack_pack_str_body (pk, s, len);
}

/*  Packs the arguments (Kafka metadata, and the ce_* headers for
    CloudEvents) into args and the value's JSON into body.  Returns 0, or
    -1 with the reason in err (the message cannot be decoded).  */
static int
s_decode (const rd_kafka_message_t *m, const s_topic_t *topic,
          msgpack_sbuffer *args, msgpack_sbuffer *body, char *err,
          size_t errlen)
{
    rd_kafka_headers_t *hdrs = NULL;
    size_t nce = 0;
    if (topic->format == S_FORMAT_CLOUDEVENTS
        && rd_kafka_message_headers (m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *val;
        size_t size;
        for (size_t i = 0;
             !rd_kafka_header_get_all (hdrs, i, &name, &val, &size); i++)
            if (strncmp (name, "ce_", 3) == 0)
                nce++;
    }
    msgpack_packer pk;
    msgpack_packer_init (&pk, args, msgpack_sbuffer_write);
    msgpack_pack_map (&pk, 5 + nce);
    const char *tname = rd_kafka_topic_name (m->rkt);
    s_pack_str (&pk, "kafka_topic", 11);
    s_pack_str (&pk, tname, strlen (tname));
    s_pack_str (&pk, "kafka_partition", 15);
    msgpack_pack_int32 (&pk, m->partition);
    s_pack_str (&pk, "kafka_offset", 12);
    msgpack_pack_int64 (&pk, m->offset);
    s_pack_str (&pk, "kafka_key", 9);
    if (m->key)
        s_pack_str (&pk, m->key, m->key_len);
    else
        msgpack_pack_nil (&pk);
    s_pack_str (&pk, "kafka_timestamp", 15);
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp (m, &tstype);
    if (ts >= 0)
        msgpack_pack_int64 (&pk, ts);
    else
        msgpack_pack_nil (&pk);
    if (nce) {
        const char *name;
        const void *val;
        size_t size;
        for (size_t i = 0;
             !rd_kafka_header_get_all (hdrs, i, &name, &val, &size); i++)
            if (strncmp (name, "ce_", 3) == 0) {
                /*  Duplicate ce_* headers would make a map with repeated
                    keys, which binding cannot read unambiguously.  */
                for (size_t j = 0; j < i; j++) {
                    const char *n2;
                    const void *v2;
                    size_t s2;
                    if (!rd_kafka_header_get_all (hdrs, j, &n2, &v2, &s2)
                        && strcmp (n2, name) == 0) {
                        snprintf (err, errlen, "header %s repeated", name);
                        return -1;
                    }
                }
                s_pack_str (&pk, name, strlen (name));
                if (val)
                    s_pack_str (&pk, val, size);
                else
                    msgpack_pack_nil (&pk);
            }
    }
    if (!m->payload || m->len == 0) {
        snprintf (err, errlen, "empty value");
        return -1;
    }
    return ferry_json_to_msgpack (m->payload, m->len, NULL, body, err, errlen);
}

static void
s_unpack (const msgpack_sbuffer *buf, msgpack_unpacked *out)
{
    size_t off = 0;
    msgpack_unpacked_init (out);
    msgpack_unpack_return rc
        = msgpack_unpack_next (out, buf->data, buf->size, &off);
    assert (rc == MSGPACK_UNPACK_SUCCESS);
    (void) rc;
}

/*  Outcome of one attempt at a message.  */
typedef enum {
    S_DONE,     /* committed, or already done: store the offset */
    S_RETRY,    /* nothing happened: seek back and retry later */
    S_DEAD      /* the handler failed for good: dead-letter it */
} s_outcome_t;

/*  Claims the message's offset in the open transaction: 1 when this
    transaction owns it, 0 when PostgreSQL already holds it, -1 on
    error (sqlstate filled).  */
static int
s_claim (s_lane_t *self, const rd_kafka_message_t *m, char *sqlstate)
{
    char part[16], off[24];
    snprintf (part, sizeof part, "%" PRId32, m->partition);
    snprintf (off, sizeof off, "%" PRId64, m->offset);
    const char *values[4]
        = {self->cfg->group, rd_kafka_topic_name (m->rkt), part, off};
    PGresult *r = PQexecParams (self->conn, s_claim_sql, 4, NULL, values,
                                NULL, NULL, 0);
    int rc = -1;
    if (PQresultStatus (r) == PGRES_TUPLES_OK)
        rc = PQntuples (r) > 0;
    else {
        const char *st = PQresultErrorField (r, PG_DIAG_SQLSTATE);
        snprintf (sqlstate, 6, "%s", st ? st : "");
    }
    PQclear (r);
    return rc;
}

/*  Classifies a failure; on a lost connection drops it.  */
static s_outcome_t
s_failed (s_lane_t *self, const char *sqlstate, char *err, size_t errlen,
          const char *what)
{
    worker_pgerror_t e;
    worker_pgerror_classify (sqlstate, &e);
    snprintf (self->sqlstate, sizeof self->sqlstate, "%s", sqlstate);
    if (e.reconnect || PQstatus (self->conn) != CONNECTION_OK) {
        snprintf (err, errlen, "%s: connection lost", what);
        s_pg_failure (self->cfg, "connection lost");
        PQfinish (self->conn);
        self->conn = NULL;
        return S_RETRY;
    }
    /*  A failure outside a transaction (job_start) has none to end.  */
    if (PQtransactionStatus (self->conn) != PQTRANS_IDLE)
        (void) s_exec (self->conn, "ROLLBACK");
    /*  Only a failure that is the data's fault (4xx: a bad value, a
        broken constraint) dead-letters the message.  A server-side one
        (a missing table, out of resources) would fail every message
        alike: retrying keeps the stream for when it is fixed.  */
    if (e.retry || e.status >= 500) {
        snprintf (err, errlen, "%s: SQLSTATE %s", what, sqlstate);
        return S_RETRY;
    }
    return S_DEAD;
}

/*  What an attempt leaves for a reply.  */
typedef struct {
    bool skipped;          /* PostgreSQL already held the offset */
    PGresult *last;        /* S_DONE: the last step's result (owned) */
    unsigned status;       /* S_DEAD: the problem's status */
    const char *detail;    /* ... its detail for a `one` step without a
                              row (the same as over ZeroMQ), else NULL */
    char sqlstate[6];      /* S_DEAD by a failed statement, else "" */
} s_result_t;

static void
s_result_clear (s_result_t *res)
{
    PQclear (res->last);
    memset (res, 0, sizeof *res);
}

/*  Sets the open transaction's statement_timeout to the time left before
    deadline (wall ms; 0 = none), at least 1 ms since 0 disables it.  */
static bool
s_set_timeout (PGconn *conn, uint64_t deadline, char *sqlstate)
{
    if (!deadline)
        return true;
    uint64_t now = ferry_wall_ms ();
    char ms[32];
    snprintf (ms, sizeof ms, "%" PRIu64, deadline > now ? deadline - now : 1);
    const char *values[1] = {ms};
    PGresult *r = PQexecParams (
        conn, "SELECT set_config('statement_timeout', $1, true)", 1, NULL,
        values, NULL, NULL, 0);
    bool ok = PQresultStatus (r) == PGRES_TUPLES_OK;
    const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
    snprintf (sqlstate, 6, "%s", code ? code : "");
    PQclear (r);
    return ok;
}

/*  Opens the message's transaction and claims its offset.  S_DONE with
    res->skipped when PostgreSQL already holds the offset (a redelivery:
    the transaction is rolled back), S_DONE with the transaction open when
    the claim is ours, or a failure outcome.  */
static s_outcome_t
s_begin_claim (s_lane_t *self, const rd_kafka_message_t *m,
               s_result_t *res, char *err, size_t errlen)
{
    char sqlstate[6] = "";
    if (!s_exec (self->conn, "BEGIN"))
        return s_failed (self, "", err, errlen, "BEGIN");
    int claimed = s_claim (self, m, sqlstate);
    if (claimed < 0)
        return s_failed (self, sqlstate, err, errlen, "offset claim");
    if (claimed == 0) {
        (void) s_exec (self->conn, "ROLLBACK");
        log_debug ("kafka message already done pool=%s topic=%s "
                   "partition=%d offset=%" PRId64,
                   self->cfg->pool, rd_kafka_topic_name (m->rkt),
                   m->partition, m->offset);
        res->skipped = true;
    }
    return S_DONE;
}

/*  Binds step st's parameters from args and body and runs it on conn.
    Returns 0 with its result in *r_p (the caller clears it), or -1 with
    the binding error in err when a parameter does not bind (nothing
    ran).  */
static int
s_step_exec (PGconn *conn, const worker_step_t *st,
             const msgpack_object *args, const msgpack_object *body,
             PGresult **r_p, char *err, size_t errlen)
{
    char *values[st->nparams ? st->nparams : 1];
    if (worker_step_bind (st, args, body, values, err, errlen))
        return -1;
    *r_p = PQexecParams (conn, st->sql, (int) st->nparams, st->oids,
                         (const char *const *) values, NULL, NULL, 0);
    worker_step_values_free (st, values);
    return 0;
}

/*  Runs op's steps in the open transaction.  Returns S_DONE with the
    last step's result in res->last (the transaction still open), or a
    failure outcome with the transaction over: S_DEAD with res->status
    (arguments that do not bind: 422; a `one` step that found no row) or
    res->sqlstate (a statement the data made fail), S_RETRY.  err says
    why.  */
static s_outcome_t
s_steps (s_lane_t *self, const worker_op_t *op, const msgpack_object *args,
         const msgpack_object *body, s_result_t *res, char *err,
         size_t errlen)
{
    for (size_t s = 0; s < op->nsteps; s++) {
        const worker_step_t *st = &op->steps[s];
        PGresult *r;
        if (s_step_exec (self->conn, st, args, body, &r, err, errlen)) {
            (void) s_exec (self->conn, "ROLLBACK");
            res->status = 422;
            return S_DEAD;
        }
        ExecStatusType rs = PQresultStatus (r);
        if (rs != PGRES_COMMAND_OK && rs != PGRES_TUPLES_OK) {
            char sqlstate[6];
            const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
            snprintf (sqlstate, sizeof sqlstate, "%s", code ? code : "");
            char *msg = PQresultErrorMessage (r);
            snprintf (err, errlen, "step %zu: SQLSTATE %s: %s", s + 1,
                      sqlstate, msg ? msg : "");
            err[strcspn (err, "\n")] = '\0';
            PQclear (r);
            char keep[512];
            snprintf (keep, sizeof keep, "%s", err);
            s_outcome_t o = s_failed (self, sqlstate, err, errlen, "step");
            if (self->conn)
                snprintf (err, errlen, "%s", keep);
            memcpy (res->sqlstate, sqlstate, sizeof sqlstate);
            return o;
        }
        bool none = st->result == WORKER_RESULT_ONE && PQntuples (r) == 0;
        if (none) {
            PQclear (r);
            snprintf (err, errlen, "step %zu: %s", s + 1,
                      st->not_found_detail ? st->not_found_detail
                                           : "no such row");
            (void) s_exec (self->conn, "ROLLBACK");
            res->status = st->not_found_status;
            res->detail = st->not_found_detail ? st->not_found_detail
                                               : "no such row";
            return S_DEAD;
        }
        if (s == op->nsteps - 1)
            res->last = r;
        else
            PQclear (r);
    }
    return S_DONE;
}

/*  One attempt: BEGIN, claim, statement timeout, steps, COMMIT.  On
    S_DEAD err holds the reason and res the problem's status or the
    SQLSTATE of the statement that failed.  */
static s_outcome_t
s_attempt (s_lane_t *self, const rd_kafka_message_t *m,
           const worker_op_t *op, const msgpack_object *args,
           const msgpack_object *body, uint64_t deadline, s_result_t *res,
           char *err, size_t errlen)
{
    char sqlstate[6] = "";
    s_outcome_t begun = s_begin_claim (self, m, res, err, errlen);
    if (begun != S_DONE || res->skipped)
        return begun;
    if (!s_set_timeout (self->conn, deadline, sqlstate))
        return s_failed (self, sqlstate, err, errlen, "statement timeout");
    s_outcome_t o = s_steps (self, op, args, body, res, err, errlen);
    if (o != S_DONE)
        return o;
    PGresult *r = PQexec (self->conn, "COMMIT");
    ExecStatusType rs = PQresultStatus (r);
    const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
    snprintf (sqlstate, sizeof sqlstate, "%s", code ? code : "");
    PQclear (r);
    if (rs != PGRES_COMMAND_OK) {
        memcpy (res->sqlstate, sqlstate, sizeof sqlstate);
        return s_failed (self, sqlstate, err, errlen, "COMMIT");
    }
    return S_DONE;
}

/*  Claims the offset of a request that is answered without running its
    operation (expired, unknown operation, refused by the data) in a
    transaction of its own, so that a redelivery is skipped.  */
static s_outcome_t
s_record (s_lane_t *self, const rd_kafka_message_t *m, s_result_t *res,
          char *err, size_t errlen)
{
    char sqlstate[6] = "";
    s_outcome_t begun = s_begin_claim (self, m, res, err, errlen);
    if (begun != S_DONE || res->skipped)
        return begun;
    PGresult *r = PQexec (self->conn, "COMMIT");
    bool ok = PQresultStatus (r) == PGRES_COMMAND_OK;
    const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
    snprintf (sqlstate, sizeof sqlstate, "%s", code ? code : "");
    PQclear (r);
    if (!ok)
        return s_failed (self, sqlstate, err, errlen, "COMMIT");
    return S_DONE;
}

static s_outcome_t s_pg_commit (s_lane_t *self, char *err, size_t errlen);
static s_outcome_t s_dead_job (s_lane_t *self, const rd_kafka_message_t *m,
                               const s_fault_t *fault, int64_t attempts,
                               char *err, size_t errlen);

/*  Records a message that went to the dead-letter topic in
    ferry.dead_letters, in the transaction that claims its offset, and
    the job of a request as dead.  */
static s_outcome_t
s_dead_letter (s_lane_t *self, const rd_kafka_message_t *m,
               const s_fault_t *fault, int64_t attempts, char *err,
               size_t errlen)
{
    const char *operation = fault->operation, *reason = fault->detail;
    s_result_t res = {0};
    s_outcome_t begun = s_begin_claim (self, m, &res, err, errlen);
    if (begun != S_DONE || res.skipped)
        return begun;
    s_outcome_t jo = s_dead_job (self, m, fault, attempts, err, errlen);
    if (jo != S_DONE)
        return jo;
    const char *tname = rd_kafka_topic_name (m->rkt);
    char id[320], part[16], off[24], tries[24];
    snprintf (id, sizeof id, "%s/%" PRId32 "/%" PRId64, tname, m->partition,
              m->offset);
    snprintf (tries, sizeof tries, "%" PRId64, attempts);
    snprintf (part, sizeof part, "%" PRId32, m->partition);
    snprintf (off, sizeof off, "%" PRId64, m->offset);
    json_t *error = json_pack ("{s:s, s:s, s:s}", "detail", reason,
                               "error", fault->text, "group",
                               self->cfg->group);
    char *error_text = error ? json_dumps (error, JSON_COMPACT) : NULL;
    json_decref (error);
    const char *values[9] = {id,   self->cfg->pool, operation,
                             tname, part,           off,
                             m->payload ? (const char *) m->payload : "",
                             error_text ? error_text : "{}", tries};
    int lengths[9] = {0, 0, 0, 0, 0, 0, (int) (m->payload ? m->len : 0), 0,
                      0};
    int formats[9] = {0, 0, 0, 0, 0, 0, 1, 0, 0};
    PGresult *r = PQexecParams (self->conn, s_dead_sql, 9, NULL, values,
                                lengths, formats, 0);
    free (error_text);
    bool ok = PQresultStatus (r) == PGRES_COMMAND_OK;
    char sqlstate[6];
    const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
    snprintf (sqlstate, sizeof sqlstate, "%s", code ? code : "");
    PQclear (r);
    if (!ok)
        return s_failed (self, sqlstate, err, errlen, "dead letter");
    s_outcome_t committed = s_pg_commit (self, err, errlen);
    if (committed != S_DONE)
        return committed;
    log_warn ("kafka message dead-lettered pool=%s topic=%s partition=%d "
              "offset=%" PRId64 " attempts=%" PRId64 ": %s",
              self->cfg->pool, tname, m->partition, m->offset, attempts,
              reason);
    return S_DONE;
}

/*  What a produced message was, for its delivery report.  A dead letter
    names its partition and offset rather than pointing at its hold: a
    rebalance may have dropped the hold before the report comes.  */
typedef struct {
    bool dead;               /* a dead letter, else a reply */
    char *name;              /* the reply's msg id, or the held topic */
    int32_t partition;
    int64_t offset;
} s_sent_t;

static s_sent_t *
s_sent_new (bool dead, const char *name, int32_t partition, int64_t offset)
{
    s_sent_t *sent = ferry_calloc (1, sizeof *sent);
    sent->dead = dead;
    sent->name = ferry_strdup (name);
    sent->partition = partition;
    sent->offset = offset;
    return sent;
}

static void
s_sent_destroy (s_sent_t **sent_p)
{
    if (*sent_p) {
        free ((*sent_p)->name);
        free (*sent_p);
        *sent_p = NULL;
    }
}

/*  The part of topic/partition in the lane; called with the mutex held.  */
static s_part_t *
s_part_find (s_lane_t *self, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < self->nparts; i++)
        if (self->parts[i]->partition == partition
            && strcmp (self->parts[i]->topic->name, topic) == 0)
            return self->parts[i];
    return NULL;
}

/*  A reply that could not be delivered is logged: the edge answers 504 at
    its deadline.  A dead letter's report moves its partition on (the lane
    records it, or produces it again after a backoff).  Runs on the lane's
    thread, which does not hold the mutex when it polls the producer.  */
static void
s_delivered (void *opaque, rd_kafka_resp_err_t err, void *arg)
{
    s_sent_t *sent = opaque;
    s_lane_t *self = arg;
    if (!sent->dead) {
        if (err)
            log_warn ("kafka reply not delivered pool=%s msg=%s: %s",
                      self->cfg->pool, sent->name, rd_kafka_err2str (err));
        s_sent_destroy (&sent);
        return;
    }
    pthread_mutex_lock (&self->mutex);
    s_part_t *p = s_part_find (self, sent->name, sent->partition);
    if (p && p->count && p->q[p->head]->offset == sent->offset
        && p->state == S_HOLD_SENDING) {
        if (err) {
            log_warn ("kafka dead letter not delivered pool=%s topic=%s "
                      "partition=%d offset=%" PRId64 " to %s: %s",
                      self->cfg->pool, sent->name, sent->partition,
                      sent->offset, p->topic->dlq, rd_kafka_err2str (err));
            p->state = S_HOLD_UNSENT;
            p->due = ferry_mono_ms () + s_next_backoff (&p->backoff_ms);
        } else {
            p->state = S_HOLD_SENT;
            p->due = 0;
        }
    }
    pthread_mutex_unlock (&self->mutex);
    s_sent_destroy (&sent);
}

/*  Builds the reply producer when there is none or the last one died of a
    fatal error.  Returns 0 when a producer is there.  */
static int
s_producer_ensure (s_lane_t *self)
{
    if (self->producer && !ferry_kafka_producer_fatal (self->producer))
        return 0;
    ferry_kafka_producer_destroy (&self->producer);
    rd_kafka_conf_t *conf = rd_kafka_conf_dup (self->cfg->pconf);
    char err[512];
    self->producer = ferry_kafka_producer_new (&conf, s_delivered, self, err,
                                               sizeof err);
    if (self->producer)
        ferry_kafka_producer_set_flush_timeout (self->producer, S_FLUSH_MS);
    if (!self->producer) {
        log_error ("kafka reply producer refused pool=%s: %s",
                   self->cfg->pool, err);
        return -1;
    }
    return 0;
}

/*  Produces reply to the request's reply topic, with the request's id,
    correlation id and our span in the headers the edge matches on.  A
    failure is logged: the transaction committed, so nothing can be
    redone, and the edge answers 504 at its deadline.  */
static void
s_reply (s_lane_t *self, const ferry_envelope_t *request,
         const char *reply_to, ferry_envelope_t **reply_p)
{
    ferry_envelope_t *reply = *reply_p;
    const char *id = ferry_envelope_id (request);
    const char *cid = ferry_envelope_cid (request);
    worker_reply_trace (request, reply);
    const char *tp = ferry_envelope_traceparent (reply);
    msgpack_sbuffer_clear (&self->out);
    if (ferry_envelope_encode (reply, &self->out)) {
        log_error ("cannot encode reply msg=%s", id);
        ferry_envelope_destroy (reply_p);
        return;
    }
    ferry_kafka_header_t headers[3] = {
        {"ferry-msg-id", id, strlen (id)},
        {"traceparent", tp, strlen (tp)},
        {"ferry-cid", cid, cid ? strlen (cid) : 0},
    };
    const char *key = cid ? cid : id;
    s_sent_t *opaque = s_sent_new (false, id, 0, 0);
    if (s_producer_ensure (self)
        || ferry_kafka_producer_send (self->producer, reply_to, key,
                                      strlen (key), self->out.data,
                                      self->out.size, headers, cid ? 3 : 2,
                                      opaque)) {
        log_warn ("kafka reply not sent pool=%s msg=%s topic=%s: %s",
                  self->cfg->pool, id, reply_to,
                  self->producer ? rd_kafka_err2str (
                      ferry_kafka_producer_last_error (self->producer))
                                 : "no producer");
        s_sent_destroy (&opaque);
    }
    ferry_envelope_destroy (reply_p);
}

/*  The reply topic: the envelope's, else the ferry-reply-to header.  */
static const char *
s_reply_topic (const rd_kafka_message_t *m, const ferry_envelope_t *request,
               char *buf, size_t buflen)
{
    const char *to = ferry_envelope_reply_to (request);
    if (to && *to)
        return to;
    rd_kafka_headers_t *hdrs;
    const void *val;
    size_t size;
    if (rd_kafka_message_headers (m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR
        && rd_kafka_header_get_last (hdrs, "ferry-reply-to", &val, &size)
               == RD_KAFKA_RESP_ERR_NO_ERROR
        && val && size > 0 && size < buflen) {
        memcpy (buf, val, size);
        buf[size] = '\0';
        return buf;
    }
    return NULL;
}

/* ---- jobs and idempotency keys ------------------------------------------ */

/*  The job's state, its row locked, when the message's own job_start
    did not run in this attempt.  */
static const char s_job_state_sql[]
    = "SELECT status FROM ferry.jobs WHERE id = $1::uuid FOR UPDATE";

/*  Runs one worker_jobs statement for the lane's message.  Returns its
    result, or NULL with sqlstate filled.  */
static PGresult *
s_call (s_lane_t *self, worker_jobs_stmt_t which, char *sqlstate)
{
    worker_jobs_call_t call;
    worker_jobs_call (&self->jobs, which, &call);
    PGresult *r = PQexecParams (self->conn, call.sql, call.nparams, NULL,
                                call.values, call.lengths, call.formats, 0);
    ExecStatusType rs = PQresultStatus (r);
    if (rs == PGRES_TUPLES_OK || rs == PGRES_COMMAND_OK)
        return r;
    const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
    snprintf (sqlstate, 6, "%s", code ? code : "");
    PQclear (r);
    return NULL;
}

/*  Commits the open transaction.  */
static s_outcome_t
s_pg_commit (s_lane_t *self, char *err, size_t errlen)
{
    PGresult *r = PQexec (self->conn, "COMMIT");
    bool ok = PQresultStatus (r) == PGRES_COMMAND_OK;
    char sqlstate[6];
    const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
    snprintf (sqlstate, sizeof sqlstate, "%s", code ? code : "");
    PQclear (r);
    return ok ? S_DONE : s_failed (self, sqlstate, err, errlen, "COMMIT");
}

/*  Records reply (a problem) as the result of the message's job, with
    state ("dead"; NULL: as the status says), in the open transaction.
    started says that job_start ran for this attempt (the row is there
    and running); otherwise the row is created when missing and left as
    it is when already finished.  It runs in a savepoint: a job that
    cannot be recorded (an id that is no UUID, a row gone) must not hold
    the message back for ever, so only a lost connection or a retriable
    failure fails the whole transaction.  */
static s_outcome_t
s_job_record (s_lane_t *self, const ferry_envelope_t *reply,
              const char *state, bool started, char *err, size_t errlen)
{
    worker_jobs_ctx_t *ctx = &self->jobs;
    if (!ctx->job)
        return S_DONE;
    if (worker_jobs_ctx_capture (ctx, reply)) {
        log_warn ("kafka job result not recordable pool=%s job=%s",
                  self->cfg->pool, ctx->job);
        return S_DONE;
    }
    if (state)
        ctx->state = state;
    char sqlstate[6] = "";
    if (!s_exec (self->conn, "SAVEPOINT ferry_job"))
        return s_failed (self, "", err, errlen, "SAVEPOINT");
    bool finish = true;
    PGresult *r;
    if (!started) {
        const char *values[1] = {ctx->job};
        r = PQexecParams (self->conn, s_job_state_sql, 1, NULL, values, NULL,
                          NULL, 0);
        if (PQresultStatus (r) != PGRES_TUPLES_OK) {
            const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
            snprintf (sqlstate, sizeof sqlstate, "%s", code ? code : "");
            PQclear (r);
            goto failed;
        }
        if (PQntuples (r) == 1) {
            const char *st = PQgetvalue (r, 0, 0);
            finish = strcmp (st, "queued") == 0 || strcmp (st, "running") == 0;
            PQclear (r);
        } else {
            PQclear (r);
            if (!(r = s_call (self, WORKER_JOBS_START, sqlstate)))
                goto failed;
            PQclear (r);
        }
    }
    if (finish) {
        if (!(r = s_call (self, WORKER_JOBS_JOB_FINISH, sqlstate)))
            goto failed;
        PQclear (r);
    }
    if (!s_exec (self->conn, "RELEASE SAVEPOINT ferry_job"))
        return s_failed (self, "", err, errlen, "RELEASE SAVEPOINT");
    return S_DONE;
failed:;
    worker_pgerror_t e;
    worker_pgerror_classify (sqlstate, &e);
    if (e.reconnect || e.retry || PQstatus (self->conn) != CONNECTION_OK) {
        s_outcome_t o = s_failed (self, sqlstate, err, errlen, "job result");
        return o == S_DEAD ? S_RETRY : o;
    }
    if (!s_exec (self->conn, "ROLLBACK TO SAVEPOINT ferry_job"))
        return s_failed (self, "", err, errlen, "ROLLBACK TO SAVEPOINT");
    log_warn ("kafka job result not recorded pool=%s job=%s sqlstate=%s",
              self->cfg->pool, ctx->job, sqlstate);
    return S_DONE;
}

/*  Answers the message with reply (owned: a problem) without its
    handler's effect: one transaction claims the offset and records the
    reply as the job's failed result (an Idempotency-Key stores nothing:
    a retry runs again).  On S_DONE *reply_p is the reply to send, or
    NULL when PostgreSQL already held the offset.  */
static s_outcome_t
s_tracked_refuse (s_lane_t *self, const rd_kafka_message_t *m,
                  ferry_envelope_t *reply, bool started,
                  ferry_envelope_t **reply_p, char *err, size_t errlen)
{
    s_result_t res = {0};
    s_outcome_t o = s_begin_claim (self, m, &res, err, errlen);
    bool open = o == S_DONE && !res.skipped;
    if (open)
        o = s_job_record (self, reply, NULL, started, err, errlen);
    if (open && o == S_DONE)
        o = s_pg_commit (self, err, errlen);
    if (o == S_DONE && open)
        *reply_p = reply;
    else
        ferry_envelope_destroy (&reply);
    return o;
}

/*  Answers a message whose outcome PostgreSQL holds (FY410: its job
    finished; FY200: its Idempotency-Key's response is stored), in one
    transaction that claims the offset and reads it (and, for a key
    replayed into a job, records it as the job's result).  */
static s_outcome_t
s_tracked_stored (s_lane_t *self, const rd_kafka_message_t *m,
                  const ferry_envelope_t *req, bool replayed,
                  ferry_envelope_t **reply_p, char *err, size_t errlen)
{
    s_result_t res = {0};
    s_outcome_t o = s_begin_claim (self, m, &res, err, errlen);
    if (o != S_DONE || res.skipped)
        return o;
    char sqlstate[6] = "";
    PGresult *r = s_call (self,
                          replayed ? WORKER_JOBS_IDEM_STORED
                                   : WORKER_JOBS_JOB_STORED,
                          sqlstate);
    if (!r)
        return s_failed (self, sqlstate, err, errlen, "stored response");
    if (replayed && self->jobs.job) {
        PGresult *f = s_call (self, WORKER_JOBS_JOB_FROM_IDEM, sqlstate);
        if (!f) {
            PQclear (r);
            return s_failed (self, sqlstate, err, errlen, "job result");
        }
        PQclear (f);
    }
    o = s_pg_commit (self, err, errlen);
    if (o == S_DONE)
        *reply_p = worker_jobs_stored_reply (req, r, replayed);
    PQclear (r);
    return o;
}

/*  Runs a request with a job id or an Idempotency-Key (the lane's jobs
    context begun for it), as the ZeroMQ actors do (docs/worker.md,
    "Jobs and idempotency"):
        job_start                                  its own transaction
        BEGIN, claim, timeout, job_guard, idem_begin, steps,
        job_finish, idem_finish, COMMIT
    The offset is claimed exactly once whatever the outcome: with the
    handler's effect, or in the transaction that reads a stored outcome
    or records the failure.  Returns S_DONE with *reply_p the reply to
    send (NULL when PostgreSQL already held the offset), or S_RETRY.  */
static s_outcome_t
s_tracked_run (s_lane_t *self, const rd_kafka_message_t *m,
               const worker_op_t *op, const ferry_envelope_t *req,
               uint64_t deadline, ferry_envelope_t **reply_p, char *err,
               size_t errlen)
{
    worker_jobs_ctx_t *ctx = &self->jobs;
    char sqlstate[6] = "";
    bool started = false;
    s_outcome_t o;
    if (ctx->job) {
        /*  'running' must show while the handler works: committed on its
            own, before the handler's transaction.  */
        PGresult *r = s_call (self, WORKER_JOBS_START, sqlstate);
        if (!r) {
            o = s_failed (self, sqlstate, err, errlen, "job start");
            if (o != S_DEAD)
                return o;
            return s_tracked_refuse (self, m,
                                     worker_reply_failure (req, sqlstate),
                                     false, reply_p, err, errlen);
        }
        PQclear (r);
        started = true;
    }
    s_result_t res = {0};
    o = s_begin_claim (self, m, &res, err, errlen);
    if (o != S_DONE || res.skipped)
        return o;
    if (!s_set_timeout (self->conn, deadline, sqlstate)) {
        o = s_failed (self, sqlstate, err, errlen, "statement timeout");
        goto failed;
    }
    worker_jobs_stmt_t guards[2];
    size_t nguards = 0;
    if (ctx->job)
        guards[nguards++] = WORKER_JOBS_GUARD;
    if (ctx->idem)
        guards[nguards++] = WORKER_JOBS_IDEM_BEGIN;
    for (size_t i = 0; i < nguards; i++) {
        PGresult *r = s_call (self, guards[i], sqlstate);
        if (r) {
            PQclear (r);
            continue;
        }
        worker_jobs_outcome_t w = worker_jobs_classify (sqlstate);
        if (w == WORKER_JOBS_OTHER) {
            o = s_failed (self, sqlstate, err, errlen, "job guard");
            goto failed;
        }
        (void) s_exec (self->conn, "ROLLBACK");
        log_debug ("kafka stored outcome pool=%s msg=%s sqlstate=%s",
                   self->cfg->pool, ferry_envelope_id (req), sqlstate);
        if (w == WORKER_JOBS_FINISHED || w == WORKER_JOBS_REPLAY)
            return s_tracked_stored (self, m, req, w == WORKER_JOBS_REPLAY,
                                     reply_p, err, errlen);
        return s_tracked_refuse (self, m, worker_jobs_problem (req, w),
                                 started, reply_p, err, errlen);
    }
    o = s_steps (self, op, ferry_envelope_args (req),
                 ferry_envelope_body (req), &res, err, errlen);
    if (o != S_DONE) {
        if (o == S_DEAD && !res.sqlstate[0]) {
            /*  Arguments that do not bind, a `one` step without a row.  */
            return s_tracked_refuse (
                self, m,
                worker_reply_problem (req, res.status,
                                      res.detail ? res.detail : err, NULL),
                started, reply_p, err, errlen);
        }
        memcpy (sqlstate, res.sqlstate, sizeof sqlstate);
        goto failed;
    }
    ferry_envelope_t *reply
        = worker_reply_result (req, op, res.last, &self->body);
    s_result_clear (&res);
    if (ferry_envelope_status (reply) >= 400
        || worker_jobs_ctx_capture (ctx, reply)) {
        /*  The result has no form to store or send: undo.  */
        (void) s_exec (self->conn, "ROLLBACK");
        return s_tracked_refuse (self, m, reply, started, reply_p, err,
                                 errlen);
    }
    /*  The result is in hand: recording it must not be cancelled by the
        deadline that bounded the handler.  */
    if (!s_exec (self->conn, "SET LOCAL statement_timeout = 0"))
        o = s_failed (self, "", err, errlen, "statement timeout");
    worker_jobs_stmt_t finish[2];
    size_t nfinish = 0;
    if (ctx->job)
        finish[nfinish++] = WORKER_JOBS_JOB_FINISH;
    if (ctx->idem)
        finish[nfinish++] = WORKER_JOBS_IDEM_FINISH;
    for (size_t i = 0; o == S_DONE && i < nfinish; i++) {
        PGresult *r = s_call (self, finish[i], sqlstate);
        if (r)
            PQclear (r);
        else
            o = s_failed (self, sqlstate, err, errlen, "job result");
    }
    if (o == S_DONE) {
        o = s_pg_commit (self, err, errlen);
        memcpy (sqlstate, self->sqlstate, sizeof sqlstate);
    }
    if (o != S_DONE) {
        ferry_envelope_destroy (&reply);
        goto failed;
    }
    const char *crash = self->cfg->crash_after_commit;
    if (crash && strcmp (crash, op->name) == 0) {
        log_warn ("FERRY_TEST_CRASH_AFTER_COMMIT: dying before the reply "
                  "msg=%s op=%s",
                  ferry_envelope_id (req), crash);
        raise (SIGKILL);
    }
    *reply_p = reply;
    return S_DONE;
failed:
    /*  The transaction is over.  A failure the data caused is the
        request's answer, recorded as the job's result; anything else is
        retried (the job stays running meanwhile).  */
    s_result_clear (&res);
    if (o != S_DEAD)
        return o;
    return s_tracked_refuse (self, m, worker_reply_failure (req, sqlstate),
                             started, reply_p, err, errlen);
}

/*  A request with a job id or an Idempotency-Key: like s_handle_request,
    on the two-phase path.  */
static s_outcome_t
s_tracked (s_lane_t *self, const rd_kafka_message_t *m,
           const ferry_envelope_t *req, const char *reply_to, char *err,
           size_t errlen)
{
    worker_jobs_ctx_t *ctx = &self->jobs;
    const char *id = ferry_envelope_id (req);
    uint64_t deadline = ferry_envelope_deadline (req);
    const worker_op_t *op
        = worker_ops_find (self->cfg->ops, ferry_envelope_operation (req));
    ferry_envelope_t *reply = NULL;
    s_outcome_t o;
    if (worker_jobs_ctx_begin (ctx, req, &self->cfg->jobs)) {
        log_error ("cannot hash request pool=%s msg=%s", self->cfg->pool, id);
        o = s_tracked_refuse (
            self, m,
            worker_reply_problem (req, 500, "the request could not be hashed",
                                  NULL),
            false, &reply, err, errlen);
    } else if (!op)
        o = s_tracked_refuse (
            self, m, worker_reply_problem (req, 404, "unknown operation", NULL),
            false, &reply, err, errlen);
    else if (deadline && ferry_wall_ms () >= deadline)
        o = s_tracked_refuse (
            self, m,
            worker_reply_problem (
                req, 504, "the deadline passed before the worker started",
                NULL),
            false, &reply, err, errlen);
    else
        o = s_tracked_run (self, m, op, req, deadline, &reply, err, errlen);
    if (o == S_DONE && reply) {
        log_debug ("kafka request done pool=%s msg=%s status=%u",
                   self->cfg->pool, id, ferry_envelope_status (reply));
        s_reply (self, req, reply_to, &reply);
    }
    ferry_envelope_destroy (&reply);
    worker_jobs_ctx_clear (ctx);
    /*  A recording that failed on data is not the request's fault.  */
    return o == S_DEAD ? S_RETRY : o;
}

/*  Records the job of a request going to the dead-letter topic as dead,
    with the reason, in the dead letter's transaction.  */
static s_outcome_t
s_dead_job (s_lane_t *self, const rd_kafka_message_t *m,
            const s_fault_t *fault, int64_t attempts, char *err,
            size_t errlen)
{
    const s_topic_t *topic
        = s_topic_find (self->cfg, rd_kafka_topic_name (m->rkt));
    if (!topic || topic->format != S_FORMAT_FERRY || !m->payload || !m->len)
        return S_DONE;
    char reason[128];
    ferry_envelope_t *req = ferry_envelope_decode (m->payload, m->len, NULL,
                                                   reason, sizeof reason);
    if (!req || !ferry_envelope_job (req)) {
        ferry_envelope_destroy (&req);
        return S_DONE;
    }
    /*  Only the hash can fail, which a dead job does not need.  */
    (void) worker_jobs_ctx_begin (&self->jobs, req, &self->cfg->jobs);
    char detail[192];
    snprintf (detail, sizeof detail, "the request failed after %" PRId64
              " attempts: %s", attempts, fault->text);
    ferry_envelope_t *reply = worker_reply_problem (req, 500, detail, NULL);
    s_outcome_t o = s_job_record (self, reply, "dead", false, err, errlen);
    ferry_envelope_destroy (&reply);
    worker_jobs_ctx_clear (&self->jobs);
    ferry_envelope_destroy (&req);
    return o;
}

/*  Handles one request envelope from a ferry topic: runs its operation
    exactly once and replies, or returns S_DEAD (f filled) for what cannot
    be a request.  */
static s_outcome_t
s_handle_request (s_lane_t *self, const rd_kafka_message_t *m,
                  s_fault_t *f)
{
    char *err = f->detail;
    size_t errlen = sizeof f->detail;
    char reason[512];
    char topic_buf[256];
    const char *reply_to = NULL;
    ferry_envelope_t *req = NULL;
    if (!m->payload || m->len == 0)
        snprintf (reason, sizeof reason, "empty value");
    else
        req = ferry_envelope_decode (m->payload, m->len, NULL, reason,
                                     sizeof reason);
    if (req && (ferry_envelope_kind (req) != FERRY_KIND_REQUEST
                || !ferry_envelope_id (req)))
        snprintf (reason, sizeof reason, "not a request envelope");
    else if (req
             && !(reply_to = s_reply_topic (m, req, topic_buf,
                                            sizeof topic_buf)))
        snprintf (reason, sizeof reason, "no reply topic");
    if (!reply_to) {
        const char *opname = req ? ferry_envelope_operation (req) : NULL;
        snprintf (f->operation, sizeof f->operation, "%s",
                  opname ? opname : "");
        snprintf (f->text, sizeof f->text, "%s",
                  !req ? "undecodable value" : "not a ferry request");
        snprintf (f->detail, sizeof f->detail, "%s", reason);
        ferry_envelope_destroy (&req);
        return S_DEAD;
    }
    if (worker_jobs_wanted (req)) {
        s_outcome_t o = s_tracked (self, m, req, reply_to, err, errlen);
        ferry_envelope_destroy (&req);
        return o;
    }
    const char *id = ferry_envelope_id (req);
    uint64_t deadline = ferry_envelope_deadline (req);
    const worker_op_t *op
        = worker_ops_find (self->cfg->ops, ferry_envelope_operation (req));
    s_result_t res = {0};
    s_outcome_t o;
    const char *detail = reason;
    if (!op) {
        res.status = 404;
        detail = "unknown operation";
        o = s_record (self, m, &res, err, errlen);
    } else if (deadline && ferry_wall_ms () >= deadline) {
        res.status = 504;
        detail = "the deadline passed before the worker started";
        o = s_record (self, m, &res, err, errlen);
    } else {
        o = s_attempt (self, m, op, ferry_envelope_args (req),
                       ferry_envelope_body (req), deadline, &res, reason,
                       sizeof reason);
        if (o == S_RETRY)
            snprintf (err, errlen, "%s", reason);
        else if (o == S_DEAD) {
            /*  The request's own fault is its answer (a 404, a 409):
                recorded as done, replied, not dead-lettered.  */
            o = s_record (self, m, &res, err, errlen);
        }
    }
    if (o == S_DONE && !res.skipped) {
        ferry_envelope_t *reply;
        if (res.sqlstate[0])
            reply = worker_reply_failure (req, res.sqlstate);
        else if (res.status)
            reply = worker_reply_problem (req, res.status,
                                          res.detail ? res.detail : detail,
                                          NULL);
        else
            reply = worker_reply_result (req, op, res.last, &self->body);
        log_debug ("kafka request done pool=%s msg=%s status=%u",
                   self->cfg->pool, id, ferry_envelope_status (reply));
        s_reply (self, req, reply_to, &reply);
    }
    if (o == S_DEAD)
        o = S_RETRY;        /* the claim itself failed on data: not ours */
    s_result_clear (&res);
    ferry_envelope_destroy (&req);
    return o;
}

/*  Handles one message of topic: S_DONE, S_RETRY (f->detail says why) or
    S_DEAD (f says why: the message's own fault).  */
static s_outcome_t
s_handle (s_lane_t *self, const rd_kafka_message_t *m,
          const s_topic_t *topic, s_fault_t *f)
{
    self->sqlstate[0] = '\0';
    if (topic->format == S_FORMAT_FERRY)
        return s_handle_request (self, m, f);
    snprintf (f->operation, sizeof f->operation, "%s", topic->op->name);
    msgpack_sbuffer args, body;
    msgpack_sbuffer_init (&args);
    msgpack_sbuffer_init (&body);
    char *reason = f->detail;
    size_t rlen = sizeof f->detail;
    s_outcome_t o;
    if (s_decode (m, topic, &args, &body, reason, rlen)) {
        snprintf (f->text, sizeof f->text, "undecodable value");
        o = S_DEAD;
    } else {
        msgpack_unpacked a, b;
        s_unpack (&args, &a);
        s_unpack (&body, &b);
        s_result_t res = {0};
        o = s_attempt (self, m, topic->op, &a.data, &b.data, 0, &res, reason,
                       rlen);
        if (o == S_DEAD && res.sqlstate[0])
            snprintf (f->text, sizeof f->text,
                      "statement failed (SQLSTATE %s)", res.sqlstate);
        else if (o == S_DEAD)
            snprintf (f->text, sizeof f->text, "refused with status %u",
                      res.status);
        s_result_clear (&res);
        msgpack_unpacked_destroy (&a);
        msgpack_unpacked_destroy (&b);
    }
    msgpack_sbuffer_destroy (&args);
    msgpack_sbuffer_destroy (&body);
    return o;
}

/*  Stores offset+1 for librdkafka's background commit.  */
static void
s_store (s_lane_t *self, const rd_kafka_message_t *m)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new (1);
    rd_kafka_topic_partition_list_add (l, rd_kafka_topic_name (m->rkt),
                                       m->partition)
        ->offset = m->offset + 1;
    rd_kafka_resp_err_t rc = rd_kafka_offsets_store (self->rk, l);
    /*  A partition revoked meanwhile refuses the store: harmless,
        PostgreSQL holds the offset.  */
    if (!rc)
        atomic_fetch_add (&self->cfg->consumer.stored, 1);
    else
        log_debug ("kafka offset store pool=%s: %s", self->cfg->pool,
                   rd_kafka_err2str (rc));
    rd_kafka_topic_partition_list_destroy (l);
}

/*  Runs n messages of one json or cloudevents partition (offset order) as
    one transaction: one claim covering them all, each message's steps,
    one COMMIT, so that PostgreSQL commits (and syncs its log) once per
    batch rather than per message.  Returns true when all of them
    committed.  On any failure, or when PostgreSQL already holds part of
    the range, it rolls back and returns false: the caller runs them one
    by one, each with its own retry and dead letter.  */
static bool
s_batch (s_lane_t *self, const s_topic_t *topic, rd_kafka_message_t **ms,
         size_t n)
{
    const rd_kafka_message_t *first = ms[0], *last = ms[n - 1];
    char part[16], off0[24], off1[24];
    snprintf (part, sizeof part, "%" PRId32, first->partition);
    snprintf (off0, sizeof off0, "%" PRId64, first->offset);
    snprintf (off1, sizeof off1, "%" PRId64, last->offset);
    const char *values[5] = {self->cfg->group,
                             rd_kafka_topic_name (first->rkt), part, off0,
                             off1};
    if (!s_exec (self->conn, "BEGIN"))
        return false;
    PGresult *r = PQexecParams (self->conn, s_claim_range_sql, 5, NULL,
                                values, NULL, NULL, 0);
    bool ok = PQresultStatus (r) == PGRES_TUPLES_OK && PQntuples (r) > 0;
    PQclear (r);
    msgpack_sbuffer args, body;
    msgpack_sbuffer_init (&args);
    msgpack_sbuffer_init (&body);
    for (size_t i = 0; ok && i < n; i++) {
        char err[256];
        msgpack_sbuffer_clear (&args);
        msgpack_sbuffer_clear (&body);
        if (s_decode (ms[i], topic, &args, &body, err, sizeof err)) {
            ok = false;
            break;
        }
        msgpack_unpacked a, b;
        s_unpack (&args, &a);
        s_unpack (&body, &b);
        const worker_op_t *op = topic->op;
        for (size_t s = 0; ok && s < op->nsteps; s++) {
            const worker_step_t *st = &op->steps[s];
            char *vals[st->nparams ? st->nparams : 1];
            if (worker_step_bind (st, &a.data, &b.data, vals, err,
                                  sizeof err)) {
                ok = false;
                break;
            }
            r = PQexecParams (self->conn, st->sql, (int) st->nparams,
                              st->oids, (const char *const *) vals, NULL,
                              NULL, 0);
            worker_step_values_free (st, vals);
            ExecStatusType rs = PQresultStatus (r);
            if ((rs != PGRES_COMMAND_OK && rs != PGRES_TUPLES_OK)
                || (st->result == WORKER_RESULT_ONE && PQntuples (r) == 0))
                ok = false;
            PQclear (r);
        }
        msgpack_unpacked_destroy (&a);
        msgpack_unpacked_destroy (&b);
    }
    msgpack_sbuffer_destroy (&args);
    msgpack_sbuffer_destroy (&body);
    if (ok) {
        r = PQexec (self->conn, "COMMIT");
        ok = PQresultStatus (r) == PGRES_COMMAND_OK;
        PQclear (r);
        if (ok)
            return true;
    } else
        (void) s_exec (self->conn, "ROLLBACK");
    log_debug ("kafka batch of %zu runs one by one pool=%s topic=%s "
               "partition=%d offset=%" PRId64,
               n, self->cfg->pool, topic->name, first->partition,
               first->offset);
    return false;
}

/*  Whether m is a request that can be answered: a ferry request
    envelope naming its reply topic.  Returns the decoded request (owned),
    or NULL.  */
static ferry_envelope_t *
s_answerable (const rd_kafka_message_t *m, const char **reply_to,
              char *topic_buf, size_t buflen)
{
    char reason[128];
    if (!m->payload || m->len == 0)
        return NULL;
    ferry_envelope_t *req = ferry_envelope_decode (m->payload, m->len, NULL,
                                                   reason, sizeof reason);
    if (!req || ferry_envelope_kind (req) != FERRY_KIND_REQUEST
        || !ferry_envelope_id (req)
        || !(*reply_to = s_reply_topic (m, req, topic_buf, buflen))) {
        ferry_envelope_destroy (&req);
        return NULL;
    }
    return req;
}

/*  Whether m is a request that s_request_batch may run: an answerable
    one without a job id or an Idempotency-Key (those keep the two-phase
    path, one per transaction).  Returns the decoded request (owned), or
    NULL.  */
static ferry_envelope_t *
s_batchable (const rd_kafka_message_t *m, const char **reply_to,
             char *topic_buf, size_t buflen)
{
    ferry_envelope_t *req = s_answerable (m, reply_to, topic_buf, buflen);
    if (req && worker_jobs_wanted (req))
        ferry_envelope_destroy (&req);
    return req;
}

/*  Runs one request of a batch in the open transaction and leaves its
    reply in *reply_p.  Returns false when the batch must be rolled back
    (a statement failed, which aborts the transaction, or a request would
    need part of its own effect undone): the caller then runs the batch
    one by one, each with its own retry and answer.  */
static bool
s_batch_one (s_lane_t *self, const ferry_envelope_t *req,
             ferry_envelope_t **reply_p)
{
    const worker_op_t *op
        = worker_ops_find (self->cfg->ops, ferry_envelope_operation (req));
    uint64_t deadline = ferry_envelope_deadline (req);
    if (!op) {
        *reply_p = worker_reply_problem (req, 404, "unknown operation", NULL);
        return true;
    }
    if (deadline && ferry_wall_ms () >= deadline) {
        *reply_p = worker_reply_problem (
            req, 504, "the deadline passed before the worker started", NULL);
        return true;
    }
    char sqlstate[6] = "";
    if (!s_set_timeout (self->conn, deadline, sqlstate))
        return false;
    const msgpack_object *args = ferry_envelope_args (req);
    const msgpack_object *body = ferry_envelope_body (req);
    for (size_t s = 0; s < op->nsteps; s++) {
        const worker_step_t *st = &op->steps[s];
        PGresult *r;
        char err[512];
        if (s_step_exec (self->conn, st, args, body, &r, err, sizeof err)) {
            /*  Nothing of this request ran yet only at its first step.  */
            if (s > 0)
                return false;
            *reply_p = worker_reply_problem (req, 422, err, NULL);
            return true;
        }
        ExecStatusType rs = PQresultStatus (r);
        if (rs != PGRES_COMMAND_OK && rs != PGRES_TUPLES_OK) {
            PQclear (r);
            return false;
        }
        if (st->result == WORKER_RESULT_ONE && PQntuples (r) == 0) {
            PQclear (r);
            if (s > 0)
                return false;
            const char *detail = st->not_found_detail ? st->not_found_detail
                                                      : "no such row";
            *reply_p = worker_reply_problem (req, st->not_found_status,
                                             detail, NULL);
            return true;
        }
        if (s == op->nsteps - 1)
            *reply_p = worker_reply_result (req, op, r, &self->body);
        PQclear (r);
    }
    if (!*reply_p)
        *reply_p = worker_reply_result (req, op, NULL, &self->body);
    return true;
}

/*  Runs the requests at the start of ms (n of one ferry partition, offset
    order) as one transaction: one claim covering them, each request's
    statement timeout and steps, one COMMIT, then their replies in order.
    A request answered over ZeroMQ commits nothing when it only reads, but
    over Kafka each claims its offset: one claim and one COMMIT (one WAL
    flush) for many requests is what lets a partition keep up.  Only
    requests without job or idem, from the first on, take part (*tried
    says how many).  Returns how many are done (0 or *tried): 0 when
    fewer than two qualify, or when anything did not go as planned (the
    caller then runs them one by one, which retries, answers or
    dead-letters each as its own transaction would).  */
static size_t
s_request_batch (s_lane_t *self, rd_kafka_message_t **ms, size_t n,
                 size_t *tried)
{
    ferry_envelope_t *reqs[S_BATCH], *replies[S_BATCH];
    const char *reply_to[S_BATCH];
    char topics[S_BATCH][256];
    size_t k = 0;
    *tried = 0;
    while (k < n && k < S_BATCH
           && (reqs[k] = s_batchable (ms[k], &reply_to[k], topics[k],
                                      sizeof topics[k])))
        k++;
    memset (replies, 0, k * sizeof *replies);
    bool ok = k > 1;
    if (ok) {
        *tried = k;
        const rd_kafka_message_t *first = ms[0], *last = ms[k - 1];
        char part[16], off0[24], off1[24];
        snprintf (part, sizeof part, "%" PRId32, first->partition);
        snprintf (off0, sizeof off0, "%" PRId64, first->offset);
        snprintf (off1, sizeof off1, "%" PRId64, last->offset);
        const char *values[5] = {self->cfg->group,
                                 rd_kafka_topic_name (first->rkt), part,
                                 off0, off1};
        ok = s_exec (self->conn, "BEGIN");
        if (ok) {
            PGresult *r = PQexecParams (self->conn, s_claim_range_sql, 5,
                                        NULL, values, NULL, NULL, 0);
            ok = PQresultStatus (r) == PGRES_TUPLES_OK && PQntuples (r) > 0;
            PQclear (r);
        }
        for (size_t i = 0; ok && i < k; i++)
            ok = s_batch_one (self, reqs[i], &replies[i]);
        if (ok) {
            PGresult *r = PQexec (self->conn, "COMMIT");
            ok = PQresultStatus (r) == PGRES_COMMAND_OK;
            PQclear (r);
        } else if (PQstatus (self->conn) == CONNECTION_OK
                   && PQtransactionStatus (self->conn) != PQTRANS_IDLE)
            (void) s_exec (self->conn, "ROLLBACK");
        if (!ok)
            log_debug ("kafka batch of %zu requests runs one by one pool=%s "
                       "topic=%s partition=%d offset=%" PRId64,
                       k, self->cfg->pool, rd_kafka_topic_name (first->rkt),
                       first->partition, first->offset);
    }
    for (size_t i = 0; i < k; i++) {
        if (ok && replies[i]) {
            log_debug ("kafka request done pool=%s msg=%s status=%u",
                       self->cfg->pool, ferry_envelope_id (reqs[i]),
                       ferry_envelope_status (replies[i]));
            s_reply (self, reqs[i], reply_to[i], &replies[i]);
        }
        ferry_envelope_destroy (&replies[i]);
        ferry_envelope_destroy (&reqs[i]);
    }
    return ok ? k : 0;
}

/* ---- partitions in lanes ------------------------------------------------ */

/*  Pauses or resumes p's partition for back-pressure.  A failure is
    logged: the partition was revoked meanwhile.  */
static void
s_pause (s_lane_t *self, s_part_t *p, bool pause)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new (1);
    rd_kafka_topic_partition_list_add (l, p->topic->name, p->partition);
    rd_kafka_resp_err_t rc = pause ? rd_kafka_pause_partitions (self->rk, l)
                                   : rd_kafka_resume_partitions (self->rk, l);
    if (!rc)
        rc = l->elems[0].err;
    if (rc)
        log_warn ("kafka %s failed pool=%s topic=%s partition=%d: %s",
                  pause ? "pause" : "resume", self->cfg->pool,
                  p->topic->name, p->partition, rd_kafka_err2str (rc));
    else
        log_debug ("kafka partition %s pool=%s topic=%s partition=%d "
                   "waiting=%zu",
                   pause ? "paused" : "resumed", self->cfg->pool,
                   p->topic->name, p->partition, p->count);
    rd_kafka_topic_partition_list_destroy (l);
}

/*  Done with p's first message: the next one starts afresh.  */
static void
s_part_clear (s_part_t *p)
{
    p->attempts = 0;
    p->backoff_ms = S_BACKOFF_MIN;
    p->due = 0;
    p->state = S_HOLD_NONE;
}

/*  Pops p's first n messages (mutex held) and resumes the partition once
    few enough are waiting.  */
static void
s_part_pop (s_lane_t *self, s_part_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rd_kafka_message_destroy (p->q[p->head]);
        p->head = (p->head + 1) % p->cap;
        p->count--;
    }
    if (p->paused && p->count <= S_RESUME_AT) {
        s_pause (self, p, false);
        p->paused = false;
    }
}

/*  Frees p and the messages it still holds (mutex held, p not busy).  */
static void
s_part_free (s_lane_t *self, s_part_t *p)
{
    for (size_t i = 0; i < self->nparts; i++)
        if (self->parts[i] == p) {
            self->parts[i] = self->parts[--self->nparts];
            break;
        }
    while (p->count) {
        rd_kafka_message_destroy (p->q[p->head]);
        p->head = (p->head + 1) % p->cap;
        p->count--;
    }
    free (p->q);
    free (p);
}

/*  Whether p's first message can run at now.  */
static bool
s_part_ready (const s_part_t *p, int64_t now)
{
    if (!p->count || p->busy || p->state == S_HOLD_SENDING)
        return false;
    return p->state == S_HOLD_NONE || p->due <= now;
}

/*  Produces m (p's first message) to its dead-letter topic: its key,
    value and headers, and the ferry-* headers that say why and where
    from.  */
static void
s_dlq_send (s_lane_t *self, s_part_t *p, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *hdrs = NULL;
    size_t n = 0;
    if (rd_kafka_message_headers (m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR)
        n = rd_kafka_header_cnt (hdrs);
    ferry_kafka_header_t *h = ferry_calloc (n + 5, sizeof *h);
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name;
        const void *val;
        size_t size;
        /*  A replayed message that failed again says why afresh (its
            other ferry-* headers, such as ferry-reply-to, stay).  */
        if (rd_kafka_header_get_all (hdrs, i, &name, &val, &size)
            || strcmp (name, "ferry-error") == 0
            || strcmp (name, "ferry-attempts") == 0
            || strncmp (name, "ferry-original-", 15) == 0)
            continue;
        h[count++] = (ferry_kafka_header_t) {name, val, size};
    }
    char attempts[24], part[16], off[24];
    snprintf (attempts, sizeof attempts, "%" PRId64, p->attempts);
    snprintf (part, sizeof part, "%" PRId32, m->partition);
    snprintf (off, sizeof off, "%" PRId64, m->offset);
    const char *topic = p->topic->name;
    h[count++] = (ferry_kafka_header_t) {"ferry-error", p->fault.text,
                                         strlen (p->fault.text)};
    h[count++] = (ferry_kafka_header_t) {"ferry-attempts", attempts,
                                         strlen (attempts)};
    h[count++] = (ferry_kafka_header_t) {"ferry-original-topic", topic,
                                         strlen (topic)};
    h[count++] = (ferry_kafka_header_t) {"ferry-original-partition", part,
                                         strlen (part)};
    h[count++] = (ferry_kafka_header_t) {"ferry-original-offset", off,
                                         strlen (off)};
    s_sent_t *sent = s_sent_new (true, topic, m->partition, m->offset);
    /*  SENDING before the send: a purge report of a rebuilt producer may
        run inside it.  */
    p->state = S_HOLD_SENDING;
    if (s_producer_ensure (self)
        || ferry_kafka_producer_send (self->producer, p->topic->dlq, m->key,
                                      m->key_len, m->payload, m->len, h,
                                      count, sent)) {
        log_warn ("kafka dead letter not sent pool=%s topic=%s partition=%d "
                  "offset=%" PRId64 " to %s: %s",
                  self->cfg->pool, topic, m->partition, m->offset,
                  p->topic->dlq,
                  self->producer ? rd_kafka_err2str (
                      ferry_kafka_producer_last_error (self->producer))
                                 : "no producer");
        s_sent_destroy (&sent);
        p->state = S_HOLD_UNSENT;
        p->due = ferry_mono_ms () + s_next_backoff (&p->backoff_ms);
    }
    free (h);
}

/*  Holds p at m (its first message now) and dead-letters it.  */
static void
s_dlq_begin (s_lane_t *self, s_part_t *p, const rd_kafka_message_t *m,
             const s_fault_t *fault)
{
    p->attempts++;
    p->fault = *fault;
    p->backoff_ms = S_BACKOFF_MIN;
    log_warn ("kafka message goes to %s pool=%s topic=%s partition=%d "
              "offset=%" PRId64 " attempts=%" PRId64 ": %s",
              p->topic->dlq, self->cfg->pool, p->topic->name, m->partition,
              m->offset, p->attempts, fault->detail);
    s_dlq_send (self, p, m);
}

/*  Holds p at m for a retry after a backoff; the lane goes on with its
    other partitions meanwhile.  A lost connection is not the message's
    fault and does not count as an attempt (nor could its dead letter be
    recorded without PostgreSQL).  Past the topic's retries the message is
    dead-lettered instead.  */
static void
s_retry_later (s_lane_t *self, s_part_t *p, const rd_kafka_message_t *m,
               s_fault_t *fault)
{
    bool counts = self->conn != NULL;
    int64_t attempts = p->attempts + (counts ? 1 : 0);
    if (counts && attempts > p->topic->retries) {
        snprintf (fault->text, sizeof fault->text, "retries exhausted%s%s%s",
                  self->sqlstate[0] ? " (SQLSTATE " : "", self->sqlstate,
                  self->sqlstate[0] ? ")" : "");
        p->attempts = attempts - 1;  /* dlq_begin counts the last */
        s_dlq_begin (self, p, m, fault);
        return;
    }
    p->attempts = attempts;
    int64_t wait = s_next_backoff (&p->backoff_ms);
    log_warn ("kafka message will be retried in %" PRId64 " ms pool=%s "
              "topic=%s partition=%d offset=%" PRId64 " attempts=%" PRId64
              ": %s",
              wait, self->cfg->pool, p->topic->name, m->partition, m->offset,
              attempts, fault->detail);
    p->state = S_HOLD_BACKOFF;
    p->due = ferry_mono_ms () + wait;
}

/*  Runs p's first n messages (ms, not popped yet) without the mutex.
    Returns how many are done (their offsets stored).  */
static size_t
s_part_run (s_lane_t *self, s_part_t *p, rd_kafka_message_t **ms, size_t n)
{
    const s_topic_t *topic = p->topic;
    if (p->state == S_HOLD_SENT) {
        char err[512] = "";
        if (s_dead_letter (self, ms[0], &p->fault, p->attempts, err,
                           sizeof err) == S_DONE) {
            s_store (self, ms[0]);
            s_part_clear (p);
            return 1;
        }
        log_warn ("kafka dead letter not recorded pool=%s topic=%s "
                  "partition=%d offset=%" PRId64 ": %s",
                  self->cfg->pool, topic->name, p->partition, ms[0]->offset,
                  err);
        p->due = ferry_mono_ms () + s_next_backoff (&p->backoff_ms);
        return 0;
    }
    if (p->state == S_HOLD_UNSENT) {
        s_dlq_send (self, p, ms[0]);
        return 0;
    }
    if (n > 1 && topic->format != S_FORMAT_FERRY
        && s_batch (self, topic, ms, n)) {
        s_store (self, ms[n - 1]);
        return n;
    }
    /*  Requests run in batches while they can, and one by one from the
        first that cannot (job or idem, not a request) until the one after
        it, or over the whole range of a batch that failed.  */
    size_t single_until = 0;
    for (size_t i = 0; i < n; i++) {
        if (topic->format == S_FORMAT_FERRY && p->state == S_HOLD_NONE
            && i >= single_until && n - i > 1) {
            size_t tried, done = s_request_batch (self, ms + i, n - i,
                                                  &tried);
            if (done) {
                s_store (self, ms[i + done - 1]);
                i += done - 1;
                continue;
            }
            single_until = i + (tried ? tried : 1);
        }
        s_fault_t fault = {.detail = ""};
        s_outcome_t o = s_handle (self, ms[i], topic, &fault);
        if (o == S_DONE) {
            s_store (self, ms[i]);
            s_part_clear (p);
            continue;
        }
        if (o == S_DEAD)
            s_dlq_begin (self, p, ms[i], &fault);
        else
            s_retry_later (self, p, ms[i], &fault);
        return i;
    }
    return n;
}

/*  The pool's breaker is open (or half-open with no probe left): answers
    p's first messages (ms, not popped yet), requests whose client waits,
    at once without PostgreSQL, as the ZeroMQ actors do: 503 with
    retry-after (504 past the deadline), and stores their offsets, since
    they were answered.  Stops at the first message that is not a request
    it can answer: that one waits for PostgreSQL like an event.  Returns
    how many are done.  */
static size_t
s_part_shed (s_lane_t *self, s_part_t *p, rd_kafka_message_t **ms, size_t n)
{
    worker_breaker_t *breaker = self->cfg->breaker;
    size_t i;
    for (i = 0; i < n; i++) {
        char topic_buf[256];
        const char *reply_to = NULL;
        ferry_envelope_t *req
            = s_answerable (ms[i], &reply_to, topic_buf, sizeof topic_buf);
        if (!req)
            break;
        uint64_t deadline = ferry_envelope_deadline (req);
        ferry_envelope_t *reply;
        if (deadline && ferry_wall_ms () >= deadline)
            reply = worker_reply_problem (
                req, 504, "the deadline passed before the worker started",
                NULL);
        else {
            reply = worker_reply_problem (
                req, 503, "the database is unavailable (circuit breaker open)",
                NULL);
            char after[16];
            snprintf (after, sizeof after, "%u",
                      worker_breaker_retry_after (breaker, ferry_mono_ms ()));
            ferry_envelope_set_header (reply, "retry-after", after);
        }
        log_debug ("kafka request refused pool=%s msg=%s status=%u: "
                   "circuit breaker open",
                   self->cfg->pool, ferry_envelope_id (req),
                   ferry_envelope_status (reply));
        s_reply (self, req, reply_to, &reply);
        ferry_envelope_destroy (&req);
        s_store (self, ms[i]);
    }
    if (i)
        s_part_clear (p);
    return i;
}

/*  Whether p's first messages may be answered by s_part_shed: requests
    of a ferry topic, not held for a dead letter, not found unanswerable
    already.  */
static bool
s_part_sheddable (const s_part_t *p)
{
    return p->topic->format == S_FORMAT_FERRY && !p->stuck
           && (p->state == S_HOLD_NONE || p->state == S_HOLD_BACKOFF);
}

/*  Waits on cond for at most ms (mutex held).  */
static void
s_cond_wait (pthread_cond_t *cond, pthread_mutex_t *mutex, int64_t ms)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait (cond, mutex, &ts);
}

/*  How a lane takes a partition's first messages.  */
typedef enum {
    S_TAKE_NONE,   /* not now */
    S_TAKE_RUN,    /* run them in PostgreSQL */
    S_TAKE_SHED    /* answer them without (s_part_shed) */
} s_take_t;

/*  A lane's thread: picks its partitions in turn (round robin among those
    whose first message can run), runs up to S_BATCH waiting messages of
    one, pops what is done.  The mutex is released while it runs them, so
    the consumer thread keeps appending.

    The pool's breaker decides what can run.  Closed: everything, unless
    the lane waits to reconnect.  Open: nothing reaches PostgreSQL (the
    lane drops its connection, so that its first probe is a fresh
    connection rather than one the server closed meanwhile); requests are
    answered 503 at once, events wait in their partitions, which pause
    when enough wait, their offsets unstored, nothing dead-lettered.
    Half-open: each run the breaker admits is a probe (connecting
    included); the others are treated as while open.  */
static void *
s_lane_main (void *arg)
{
    s_lane_t *self = arg;
    worker_breaker_t *breaker = self->cfg->breaker;
    rd_kafka_message_t *ms[S_BATCH];
    int64_t pg_due = 0;
    pthread_mutex_lock (&self->mutex);
    while (!self->stop) {
        int64_t now = ferry_mono_ms ();
        int64_t next = now + 1000;
        s_part_t *p = NULL;
        s_take_t take = S_TAKE_NONE;
        /*  One atomic load while closed.  */
        worker_breaker_state_t bs
            = !breaker || worker_breaker_closed (breaker)
                  ? WORKER_BREAKER_CLOSED
                  : worker_breaker_state (breaker, now);
        if (bs != WORKER_BREAKER_CLOSED) {
            next = now + S_BREAKER_LOOK_MS;
            if (bs == WORKER_BREAKER_OPEN && self->conn) {
                PQfinish (self->conn);
                self->conn = NULL;
            }
            /*  Probes are admitted by the breaker, not by our backoff.  */
            pg_due = 0;
            self->backoff_ms = S_BACKOFF_MIN;
        }
        if (pg_due > now && pg_due < next)
            next = pg_due;
        for (size_t k = 0; k < self->nparts && !p; k++) {
            s_part_t *c = self->parts[(self->rr + k) % self->nparts];
            if (!s_part_ready (c, now)) {
                if (c->count && !c->busy && c->state != S_HOLD_SENDING
                    && c->due < next)
                    next = c->due;
                continue;
            }
            if (bs == WORKER_BREAKER_CLOSED)
                take = pg_due > now ? S_TAKE_NONE : S_TAKE_RUN;
            else if (bs == WORKER_BREAKER_HALF_OPEN
                     && worker_breaker_admit (breaker, now))
                take = S_TAKE_RUN;
            else
                take = s_part_sheddable (c) ? S_TAKE_SHED : S_TAKE_NONE;
            if (take != S_TAKE_NONE) {
                p = c;
                self->rr = (self->rr + k + 1) % self->nparts;
            }
        }
        bool outstanding
            = self->producer
              && ferry_kafka_producer_outstanding (self->producer) > 0;
        if (outstanding && next > now + 20)
            next = now + 20;
        if (!p) {
            s_cond_wait (&self->wake, &self->mutex, next - now);
            if (self->producer) {
                pthread_mutex_unlock (&self->mutex);
                ferry_kafka_producer_poll (self->producer);
                pthread_mutex_lock (&self->mutex);
            }
            continue;
        }
        size_t n = p->state == S_HOLD_NONE
                       ? (p->count < S_BATCH ? p->count : S_BATCH)
                       : 1;
        for (size_t i = 0; i < n; i++)
            ms[i] = p->q[(p->head + i) % p->cap];
        p->busy = true;
        pthread_mutex_unlock (&self->mutex);
        size_t done = 0;
        if (take == S_TAKE_SHED)
            done = s_part_shed (self, p, ms, n);
        else {
            /*  Re-producing a dead letter asks nothing of PostgreSQL.  */
            bool asks = p->state != S_HOLD_UNSENT;
            if (s_pg_ensure (self) == 0) {
                self->backoff_ms = S_BACKOFF_MIN;
                done = s_part_run (self, p, ms, n);
                /*  Still connected: PostgreSQL answered (a lost
                    connection was counted as it was found).  */
                if (self->conn && asks)
                    s_pg_success (self->cfg);
            }
            if (!self->conn)
                pg_due = ferry_mono_ms ()
                         + s_next_backoff (&self->backoff_ms);
        }
        if (self->producer)
            ferry_kafka_producer_poll (self->producer);
        pthread_mutex_lock (&self->mutex);
        s_part_pop (self, p, done);
        /*  A message answered moves the partition on; one that could not
            be holds it until PostgreSQL can be asked.  */
        if (done || take == S_TAKE_RUN)
            p->stuck = false;
        else
            p->stuck = true;
        p->busy = false;
        pthread_cond_broadcast (&self->idle);
    }
    pthread_mutex_unlock (&self->mutex);
    /*  Flushes the replies and dead letters still queued (a dead letter
        is recorded only by a next run: the partition's offset stays).  */
    ferry_kafka_producer_destroy (&self->producer);
    if (self->conn)
        PQfinish (self->conn);
    self->conn = NULL;
    return NULL;
}

/*  Hands m to the lane of its partition (the consumer thread).  Pauses
    the partition when too many of its messages wait.  */
static void
s_dispatch (s_consumer_t *self, const s_topic_t *topic, rd_kafka_message_t *m)
{
    size_t t = (size_t) (topic - self->cfg->topics);
    s_lane_t *lane
        = &self->lanes[(t * 31 + (size_t) m->partition) % self->nlanes];
    pthread_mutex_lock (&lane->mutex);
    s_part_t *p = s_part_find (lane, topic->name, m->partition);
    if (!p) {
        if (lane->nparts == lane->capparts) {
            lane->capparts = lane->capparts ? lane->capparts * 2 : 8;
            lane->parts = ferry_realloc (lane->parts, lane->capparts
                                                          * sizeof *lane->parts);
        }
        p = ferry_calloc (1, sizeof *p);
        p->topic = topic;
        p->partition = m->partition;
        p->backoff_ms = S_BACKOFF_MIN;
        lane->parts[lane->nparts++] = p;
    }
    if (m->offset < p->next) {
        /*  Already here (a fetch that crossed a pause): the copy we hold
            keeps the order.  */
        pthread_mutex_unlock (&lane->mutex);
        rd_kafka_message_destroy (m);
        return;
    }
    if (p->count == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        rd_kafka_message_t **q = ferry_malloc (cap * sizeof *q);
        for (size_t i = 0; i < p->count; i++)
            q[i] = p->q[(p->head + i) % p->cap];
        free (p->q);
        p->q = q;
        p->cap = cap;
        p->head = 0;
    }
    p->q[(p->head + p->count) % p->cap] = m;
    p->count++;
    p->next = m->offset + 1;
    if (!p->paused && p->count >= S_PAUSE_AT) {
        s_pause (lane, p, true);
        p->paused = true;
    }
    pthread_cond_signal (&lane->wake);
    pthread_mutex_unlock (&lane->mutex);
}

/*  Drops what the lanes hold of revoked partitions, after the message in
    hand of each is done: nothing runs on a partition once it is revoked,
    and its next owner starts from PostgreSQL's offset (a dead letter in
    flight may then be produced twice; it is never lost).  */
static void
s_lanes_revoke (s_consumer_t *self,
                const rd_kafka_topic_partition_list_t *parts)
{
    for (size_t l = 0; l < self->nlanes; l++) {
        s_lane_t *lane = &self->lanes[l];
        pthread_mutex_lock (&lane->mutex);
        for (int i = 0; i < parts->cnt; i++) {
            s_part_t *p = s_part_find (lane, parts->elems[i].topic,
                                       parts->elems[i].partition);
            if (!p)
                continue;
            while (p->busy)
                pthread_cond_wait (&lane->idle, &lane->mutex);
            s_part_free (lane, p);
        }
        pthread_mutex_unlock (&lane->mutex);
    }
}

/*  Starts the lanes.  Returns 0, or -1 when a thread cannot start.  */
static int
s_lanes_start (s_consumer_t *self)
{
    self->nlanes = self->cfg->nlanes;
    self->lanes = ferry_calloc (self->nlanes, sizeof *self->lanes);
    pthread_condattr_t attr;
    pthread_condattr_init (&attr);
    pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
    for (size_t i = 0; i < self->nlanes; i++) {
        s_lane_t *lane = &self->lanes[i];
        lane->cfg = self->cfg;
        lane->rk = self->rk;
        lane->index = i;
        lane->backoff_ms = S_BACKOFF_MIN;
        msgpack_sbuffer_init (&lane->body);
        msgpack_sbuffer_init (&lane->out);
        worker_jobs_ctx_init (&lane->jobs);
        pthread_mutex_init (&lane->mutex, NULL);
        pthread_cond_init (&lane->wake, &attr);
        pthread_cond_init (&lane->idle, NULL);
    }
    pthread_condattr_destroy (&attr);
    for (size_t i = 0; i < self->nlanes; i++) {
        if (pthread_create (&self->lanes[i].thread, NULL, s_lane_main,
                            &self->lanes[i])) {
            log_error ("kafka lane %zu cannot start pool=%s", i,
                       self->cfg->pool);
            return -1;
        }
        self->lanes[i].started = true;
    }
    return 0;
}

/*  Stops every lane (each finishes the messages in hand and flushes its
    producer, all at once) and frees them with what they still hold.  */
static void
s_lanes_stop (s_consumer_t *self)
{
    for (size_t i = 0; i < self->nlanes; i++) {
        s_lane_t *lane = &self->lanes[i];
        pthread_mutex_lock (&lane->mutex);
        lane->stop = true;
        pthread_cond_signal (&lane->wake);
        pthread_mutex_unlock (&lane->mutex);
    }
    for (size_t i = 0; i < self->nlanes; i++) {
        s_lane_t *lane = &self->lanes[i];
        if (lane->started)
            pthread_join (lane->thread, NULL);
        while (lane->nparts)
            s_part_free (lane, lane->parts[0]);
        free (lane->parts);
        msgpack_sbuffer_destroy (&lane->body);
        msgpack_sbuffer_destroy (&lane->out);
        worker_jobs_ctx_destroy (&lane->jobs);
        pthread_mutex_destroy (&lane->mutex);
        pthread_cond_destroy (&lane->wake);
        pthread_cond_destroy (&lane->idle);
    }
    free (self->lanes);
    self->lanes = NULL;
    self->nlanes = 0;
}

/* ---- the actor ---------------------------------------------------------- */

/*  The report of an asynchronous commit, served by consumer_poll.  */
static void
s_committed (rd_kafka_t *rk, rd_kafka_resp_err_t err,
             rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void) rk;
    (void) offsets;
    s_consumer_t *self = opaque;
    if (self->inflight > 0)
        self->inflight--;
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
        log_debug ("kafka commit pool=%s: %s", self->cfg->pool,
                   rd_kafka_err2str (err));
    else
        self->down = false;
}

/*  Commits the stored offsets to Kafka (a hint for tools and for
    partitions PostgreSQL holds nothing for) when some are new.  Never
    while the cluster looks unreachable or a commit is still out: a
    commit waiting for the group coordinator makes librdkafka's destroy
    wait for the session timeout, so stopping would hang.  */
static void
s_commit (s_consumer_t *self)
{
    uint64_t stored = atomic_load (&self->stored);
    if (self->down || self->inflight || stored == self->committed)
        return;
    rd_kafka_resp_err_t rc = rd_kafka_commit (self->rk, NULL, 1);
    if (rc == RD_KAFKA_RESP_ERR_NO_ERROR) {
        self->inflight++;
        self->committed = stored;
    } else if (rc != RD_KAFKA_RESP_ERR__NO_OFFSET)
        log_debug ("kafka commit pool=%s: %s", self->cfg->pool,
                   rd_kafka_err2str (rc));
}

/*  rd_kafka_destroy in a thread of its own, so that stopping can give
    up waiting for it.  */
typedef struct {
    rd_kafka_t *rk;
    int flags;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    bool done;
    bool abandoned;
} s_destroy_t;

static void *
s_destroy_main (void *arg)
{
    s_destroy_t *d = arg;
    rd_kafka_destroy_flags (d->rk, d->flags);
    pthread_mutex_lock (&d->mutex);
    d->done = true;
    bool abandoned = d->abandoned;
    pthread_cond_signal (&d->cond);
    pthread_mutex_unlock (&d->mutex);
    if (abandoned) {
        pthread_mutex_destroy (&d->mutex);
        pthread_cond_destroy (&d->cond);
        free (d);
    }
    return NULL;
}

/*  Leaves the group and destroys the consumer, in bounded time: with the
    cluster unreachable librdkafka's close would wait for the group
    coordinator for ever.  Offsets live in PostgreSQL, so a close cut
    short loses nothing (the group's next owner resumes from them).  */
static void
s_close (s_consumer_t *self)
{
    /*  The last offsets, when the cluster is there to take them.  */
    s_commit (self);
    int64_t end = ferry_mono_ms () + S_COMMIT_WAIT_MS;
    while (self->inflight && ferry_mono_ms () < end) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll (self->rk, 100);
        if (m)
            rd_kafka_message_destroy (m);
    }
    if (self->inflight)
        log_warn ("kafka consumer pool=%s: a commit is still waiting for "
                  "the cluster; stopping may take the session timeout",
                  self->cfg->pool);
    rd_kafka_queue_t *q = rd_kafka_queue_new (self->rk);
    rd_kafka_error_t *error = rd_kafka_consumer_close_queue (self->rk, q);
    bool closed = false;
    if (error) {
        log_warn ("kafka consumer close pool=%s: %s", self->cfg->pool,
                  rd_kafka_error_string (error));
        rd_kafka_error_destroy (error);
    } else {
        /*  Serving the queue runs the revocation (s_rebalance).  */
        end = ferry_mono_ms () + S_CLOSE_MS;
        while (!(closed = rd_kafka_consumer_closed (self->rk))
               && ferry_mono_ms () < end)
            rd_kafka_queue_poll_callback (q, 100);
    }
    rd_kafka_queue_destroy (q);
    if (!closed)
        log_warn ("kafka consumer pool=%s did not leave its group within "
                  "%d ms (cluster unreachable?): stopping without it",
                  self->cfg->pool, S_CLOSE_MS);
    /*  Even without the close, librdkafka's destroy waits up to the
        group's session timeout (45 s by default) for a request to a group
        coordinator that is gone, such as a commit sent as it went away.
        The process is stopping and PostgreSQL holds the offsets: after a
        bounded wait the destroy is left to finish, or not, in its thread
        (its memory stays reachable from it).  */
    s_destroy_t *d = ferry_calloc (1, sizeof *d);
    d->rk = self->rk;
    d->flags = closed ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE;
    pthread_mutex_init (&d->mutex, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init (&attr);
    pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
    pthread_cond_init (&d->cond, &attr);
    pthread_condattr_destroy (&attr);
    self->rk = NULL;
    pthread_t thread;
    if (pthread_create (&thread, NULL, s_destroy_main, d)) {
        rd_kafka_destroy_flags (d->rk, d->flags);
        d->done = true;
    } else {
        pthread_mutex_lock (&d->mutex);
        int64_t until = ferry_mono_ms () + S_DESTROY_MS;
        while (!d->done && ferry_mono_ms () < until)
            s_cond_wait (&d->cond, &d->mutex, until - ferry_mono_ms ());
        bool done = d->done;
        d->abandoned = !done;
        pthread_mutex_unlock (&d->mutex);
        if (done)
            pthread_join (thread, NULL);
        else {
            log_warn ("kafka consumer pool=%s: librdkafka still waits for "
                      "the group coordinator; stopping without it",
                      self->cfg->pool);
            pthread_detach (thread);
            return;
        }
    }
    pthread_mutex_destroy (&d->mutex);
    pthread_cond_destroy (&d->cond);
    free (d);
}

static void
s_consumer (zsock_t *pipe, void *arg)
{
    worker_kafka_t *cfg = arg;
    s_consumer_t *self = &cfg->consumer;
    self->pipe = pipe;
    zsock_signal (pipe, 0);
    if (s_lanes_start (self))
        self->terminated = true;
    rd_kafka_topic_partition_list_t *subs
        = rd_kafka_topic_partition_list_new ((int) cfg->ntopics);
    for (size_t i = 0; i < cfg->ntopics; i++)
        rd_kafka_topic_partition_list_add (subs, cfg->topics[i].name,
                                           RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t rc = rd_kafka_subscribe (self->rk, subs);
    rd_kafka_topic_partition_list_destroy (subs);
    if (rc) {
        log_error ("kafka subscribe failed pool=%s: %s", cfg->pool,
                   rd_kafka_err2str (rc));
        while (!self->terminated)
            s_wait (self, 1000);
    }
    log_info ("kafka consumer started pool=%s group=%s topics=%zu lanes=%zu",
              cfg->pool, cfg->group, cfg->ntopics, self->nlanes);
    while (!self->terminated) {
        if (zsock_events (pipe) & ZMQ_POLLIN) {
            char *cmd = zstr_recv (pipe);
            if (!cmd || strcmp (cmd, "$TERM") == 0)
                self->terminated = true;
            free (cmd);
            continue;
        }
        /*  Assignment reads the offsets from PostgreSQL: without it, no
            polling.  A long outage exceeds max.poll.interval.ms and the
            group moves the partitions to a consumer that can work.  But
            while the pool's breaker is not closed the outage is known:
            polling goes on without PostgreSQL, so that requests are
            answered 503 at once (s_part_shed) and events wait in their
            lanes, which pause partitions as they fill; an assignment then
            starts from Kafka's offsets (s_resume_offsets), which are
            never ahead of PostgreSQL's but for requests answered so.  */
        bool closed = !cfg->breaker || worker_breaker_closed (cfg->breaker);
        if (closed && s_pg_connect (cfg, &self->conn, "consumer", false)) {
            s_wait (self, s_next_backoff (&self->backoff_ms));
            continue;
        }
        self->backoff_ms = S_BACKOFF_MIN;
        if (ferry_mono_ms () >= self->commit_due) {
            s_commit (self);
            self->commit_due = ferry_mono_ms () + S_COMMIT_MS;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll (self->rk, 100);
        if (!m)
            continue;
        if (m->err) {
            if (m->err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN
                || m->err == RD_KAFKA_RESP_ERR__TRANSPORT)
                self->down = true;
            log_warn ("kafka consumer pool=%s: %s", cfg->pool,
                      rd_kafka_message_errstr (m));
            rd_kafka_message_destroy (m);
            continue;
        }
        const s_topic_t *topic = s_topic_find (cfg,
                                               rd_kafka_topic_name (m->rkt));
        if (!topic) {
            rd_kafka_message_destroy (m);
            continue;
        }
        self->down = false;
        s_dispatch (self, topic, m);
    }
    /*  The lanes first: their messages must be gone before the handle.  */
    s_lanes_stop (self);
    s_close (self);
    if (self->conn)
        PQfinish (self->conn);
    self->conn = NULL;
    log_info ("kafka consumer stopped pool=%s", cfg->pool);
}

/*  Messages librdkafka had already fetched when the consumer closes are
    served to the close queue; without a consume callback
    rd_kafka_queue_poll_callback asserts on them (rd_kafka_q_serve,
    librdkafka 2.0).  The lanes have stopped by then and PostgreSQL holds
    the offsets, so dropping them loses nothing: the partition's next owner
    fetches them again.  rd_kafka_consumer_poll still returns messages.  */
static void
s_drop_fetched (rd_kafka_message_t *m, void *opaque)
{
    (void) m;
    (void) opaque;
}

int
worker_kafka_start (worker_kafka_t *self)
{
    char err[512];
    /*  The actor's state is the handle's opaque: the rebalance callback
        runs on the actor's thread inside rd_kafka_consumer_poll.  */
    self->consumer.cfg = self;
    self->consumer.backoff_ms = S_BACKOFF_MIN;
    rd_kafka_conf_set_opaque (self->conf, &self->consumer);
    rd_kafka_conf_set_rebalance_cb (self->conf, s_rebalance);
    rd_kafka_conf_set_offset_commit_cb (self->conf, s_committed);
    rd_kafka_conf_set_consume_cb (self->conf, s_drop_fetched);
    rd_kafka_t *rk = rd_kafka_new (RD_KAFKA_CONSUMER, self->conf, err,
                                   sizeof err);
    if (!rk) {
        log_error ("kafka consumer refused pool=%s: %s", self->pool, err);
        return -1;
    }
    self->conf = NULL;
    rd_kafka_poll_set_consumer (rk);
    self->consumer.rk = rk;
    self->actor = zactor_new (s_consumer, self);
    assert (self->actor);
    return 0;
}

void
worker_kafka_stop (worker_kafka_t *self)
{
    if (self->stopping || !self->actor)
        return;
    self->stopping = true;
    zstr_send (self->actor, "$TERM");
}

/* ---- tests -------------------------------------------------------------- */

int
worker_kafka_config_test (bool verbose)
{
    static const char yaml[]
        = "pools:\n"
          "  ev:\n"
          "    operations:\n"
          "      insert_event: {sql: SELECT $1::text, params: [kind:text],"
          " result: exec}\n"
          "    kafka:\n"
          "      properties: [bootstrap.servers=127.0.0.1:1]\n"
          "      topics:\n"
          "        - {topic: ferry.demo.events, operation: insert_event}\n"
          "        - {topic: ce, format: cloudevents,"
          " operation: insert_event}\n"
          "  g:\n"
          "    kafka:\n"
          "      group: mine\n"
          "      properties: [auto.offset.reset=latest]\n"
          "      topics: [{topic: t, operation: insert_event}]\n"
          "  noop:\n"
          "    kafka:\n"
          "      topics: [{topic: t, operation: nope}]\n"
          "  fmt:\n"
          "    kafka:\n"
          "      topics: [{topic: t, format: xml, operation: insert_event}]\n"
          "  none:\n"
          "    kafka: {}\n"
          "  twice:\n"
          "    kafka:\n"
          "      topics: [{topic: t, operation: insert_event},"
          " {topic: t, operation: insert_event}]\n"
          "  prop:\n"
          "    kafka:\n"
          "      properties: [no.such.thing=1]\n"
          "      topics: [{topic: t, operation: insert_event}]\n"
          "  req:\n"
          "    kafka:\n"
          "      topics: [{topic: ferry.app.requests, format: ferry}]\n"
          "  reqop:\n"
          "    kafka:\n"
          "      topics: [{topic: r, format: ferry,"
          " operation: insert_event}]\n"
          "  dlq:\n"
          "    kafka:\n"
          "      topics: [{topic: t, operation: insert_event, retries: 0,"
          " dlq: t.dead}]\n"
          "  loop:\n"
          "    kafka:\n"
          "      topics: [{topic: t, operation: insert_event, dlq: t}]\n";
    char err[256];
    ferry_config_t *config
        = ferry_config_parse (yaml, strlen (yaml), "k.yaml", err, sizeof err);
    FERRY_CHECK (config);
    worker_ops_t *ops = worker_ops_new (
        config, ferry_config_node (config, NULL, "pools.ev.operations"));
    FERRY_CHECK (ops);

    worker_kafka_t *k = worker_kafka_new (
        config, ferry_config_node (config, NULL, "pools.ev.kafka"), "ev", ops,
        "", NULL);
    FERRY_CHECK (k);
    FERRY_CHECK (strcmp (k->group, "ferry.ev") == 0);
    FERRY_CHECK (k->ntopics == 2);
    FERRY_CHECK (k->topics[0].format == S_FORMAT_JSON);
    FERRY_CHECK (k->topics[1].format == S_FORMAT_CLOUDEVENTS);
    FERRY_CHECK (strcmp (k->topics[0].op->name, "insert_event") == 0);
    FERRY_CHECK (strcmp (k->topics[0].dlq, "ferry.demo.events.dlq") == 0);
    FERRY_CHECK (k->topics[0].retries == S_RETRIES_DEFAULT);
    char v[64];
    size_t vlen = sizeof v;
    FERRY_CHECK (rd_kafka_conf_get (k->conf, "enable.auto.offset.store", v,
                                    &vlen) == RD_KAFKA_CONF_OK
                 && strcmp (v, "false") == 0);
    vlen = sizeof v;
    FERRY_CHECK (rd_kafka_conf_get (k->conf, "partition.assignment.strategy",
                                    v, &vlen) == RD_KAFKA_CONF_OK
                 && strcmp (v, "cooperative-sticky") == 0);
    vlen = sizeof v;
    FERRY_CHECK (rd_kafka_conf_get (k->conf, "group.id", v, &vlen)
                     == RD_KAFKA_CONF_OK
                 && strcmp (v, "ferry.ev") == 0);
    vlen = sizeof v;
    FERRY_CHECK (rd_kafka_conf_get (k->conf, "auto.offset.reset", v, &vlen)
                     == RD_KAFKA_CONF_OK
                 && strcmp (v, "smallest") == 0); /* its alias */
    worker_kafka_destroy (&k);
    worker_kafka_destroy (&k);

    k = worker_kafka_new (config,
                          ferry_config_node (config, NULL, "pools.g.kafka"),
                          "g", ops, "", NULL);
    FERRY_CHECK (k);
    FERRY_CHECK (strcmp (k->group, "mine") == 0);
    vlen = sizeof v;
    FERRY_CHECK (rd_kafka_conf_get (k->conf, "auto.offset.reset", v, &vlen)
                     == RD_KAFKA_CONF_OK
                 && strcmp (v, "largest") == 0);
    worker_kafka_destroy (&k);

    k = worker_kafka_new (config,
                          ferry_config_node (config, NULL, "pools.dlq.kafka"),
                          "dlq", ops, "", NULL);
    FERRY_CHECK (k);
    FERRY_CHECK (strcmp (k->topics[0].dlq, "t.dead") == 0);
    FERRY_CHECK (k->topics[0].retries == 0);
    worker_kafka_destroy (&k);

    /*  A request topic: the operation comes from each envelope.  */
    k = worker_kafka_new (config,
                          ferry_config_node (config, NULL, "pools.req.kafka"),
                          "req", ops, "", NULL);
    FERRY_CHECK (k);
    FERRY_CHECK (k->topics[0].format == S_FORMAT_FERRY && !k->topics[0].op);
    FERRY_CHECK (k->pconf);
    worker_kafka_destroy (&k);

    static const struct {
        const char *pool, *line, *words;
    } bad[] = {
        {"noop", "k.yaml:17", "no operation named 'nope'"},
        {"fmt", "k.yaml:20", "json, cloudevents or ferry"},
        {"none", "k.yaml:22", "missing topics"},
        {"twice", "k.yaml:25", "listed twice"},
        {"prop", "k.yaml:28", "no.such.thing"},
        {"reqop", "k.yaml:35", "name their operation"},
        {"loop", "k.yaml:41", "must name another topic"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[64];
        snprintf (path, sizeof path, "pools.%s.kafka", bad[i].pool);
        k = worker_kafka_new (config, ferry_config_node (config, NULL, path),
                              bad[i].pool, ops, "", NULL);
        FERRY_CHECK (!k);
        if (verbose)
            printf ("# %s\n", ferry_config_error (config));
        FERRY_CHECK (strstr (ferry_config_error (config), bad[i].words));
        if (!strstr (ferry_config_error (config), bad[i].line))
            printf ("# want %s\n", bad[i].line);
        FERRY_CHECK (strstr (ferry_config_error (config), bad[i].line));
    }
    worker_ops_destroy (&ops);
    ferry_config_destroy (&config);
    return 0;
}

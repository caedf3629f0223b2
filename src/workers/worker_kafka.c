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
    librdkafka 2.0) and runs the transaction on its own blocking libpq
    connection: order within a partition holds trivially, and the
    rebalance callback runs on the same thread, between messages, so
    partitions are never revoked under a transaction.  A retriable failure
    (connection lost, deadlock, serialization, any server-side 5xx class)
    pauses the partition, seeks it back to the message and resumes it when
    its backoff (exponential, with jitter) has passed: the thread never
    sleeps on one partition's failure, so the others go on meanwhile.
    After the topic's `retries` the message is dead-lettered, like a
    failure that is the message's fault (bad value, constraint) and a
    message that does not decode, at once.

    Dead-lettering is asynchronous for the same reason: the partition is
    paused, the message is produced to the topic's dead-letter topic
    (`<topic>.dlq`) with ferry-* headers saying why, and only once its
    delivery report succeeded does one transaction claim the offset and
    record the row in ferry.dead_letters.  Then the partition goes on past
    it.  A failed delivery is produced again after a backoff: nothing is
    dropped silently, and a crash in between at worst puts the message in
    the dead-letter topic twice.

    A topic of format `ferry` is a request topic: its values are ferry
    envelopes that an edge produced, each naming its operation, and each
    gets a reply envelope produced to the reply topic it names, through
    the actor's own producer, after COMMIT and before the offset is
    stored.  A request PostgreSQL already holds is skipped without a
    reply: its first run replied.  */

#include "ferry.h"
#include "envelope.h"
#include "json.h"
#include "kafka.h"
#include "log.h"
#include "worker_kafka.h"
#include "worker_pgerror.h"
#include "worker_reply.h"

#include <czmq.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
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

/*  What a paused partition waits for.  */
typedef enum {
    S_HOLD_BACKOFF,   /* a retry: resume at due */
    S_HOLD_READY,     /* resumed: the message comes back for its retry */
    S_HOLD_SENDING,   /* dead letter produced, delivery report pending */
    S_HOLD_UNSENT,    /* its delivery failed: produce again at due */
    S_HOLD_SENT,      /* delivered: record it in PostgreSQL (again at due) */
} s_hold_state_t;

/*  A partition held at one message: by a retry's backoff or while the
    message is dead-lettered.  One per partition at most.  */
typedef struct {
    const s_topic_t *topic;
    int32_t partition;
    int64_t offset;          /* the message held */
    int64_t attempts;        /* failed attempts so far */
    int64_t backoff_ms;      /* the next wait */
    int64_t due;             /* ferry_mono_ms of the next step */
    s_hold_state_t state;
    rd_kafka_message_t *m;   /* while dead-lettering */
    s_fault_t fault;
} s_hold_t;

/*  The actor's state; lives in worker_kafka_t because librdkafka's
    rebalance callback gets it as the handle's opaque.  */
typedef struct {
    worker_kafka_t *cfg;
    rd_kafka_t *rk;
    PGconn *conn;
    ferry_kafka_producer_t *producer; /* replies; from start */
    msgpack_sbuffer body;    /* a reply's result, reused */
    msgpack_sbuffer out;     /* an encoded reply, reused */
    int64_t backoff_ms;      /* next wait while PostgreSQL is down */
    char sqlstate[6];        /* of the last failure classified, or "" */
    s_hold_t **holds;        /* paused partitions */
    size_t nholds, capholds;
    bool terminated;
    zsock_t *pipe;
} s_consumer_t;

struct _worker_kafka_t {
    char *pool;
    char *group;
    const char *conninfo;
    size_t ntopics;
    s_topic_t *topics;
    const worker_ops_t *ops;
    rd_kafka_conf_t *conf;   /* until start */
    rd_kafka_conf_t *pconf;  /* the producer's; each producer gets a copy */
    rd_kafka_t *rk;          /* from start; used by the actor only */
    zactor_t *actor;
    s_consumer_t consumer;   /* the actor's, from start */
    bool stopping;
};

#define S_BACKOFF_MIN 100
#define S_BACKOFF_MAX 5000
#define S_RETRIES_DEFAULT 5

static const char s_claim_sql[]
    = "INSERT INTO ferry.kafka_offsets (group_id, topic, partition,"
      " \"offset\") VALUES ($1, $2, $3, $4 + 1)"
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
                  const char *conninfo)
{
    if (ferry_cnode_type (node) != FERRY_CNODE_MAP) {
        ferry_config_fail (config, node, "expected a map");
        return NULL;
    }
    worker_kafka_t *self = ferry_calloc (1, sizeof *self);
    self->pool = ferry_strdup (pool);
    self->conninfo = conninfo;
    self->ops = ops;
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
        {"enable.auto.commit", "true"},
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
    if (self->rk)
        rd_kafka_destroy (self->rk);
    if (self->conf)
        rd_kafka_conf_destroy (self->conf);
    if (self->pconf)
        rd_kafka_conf_destroy (self->pconf);
    /*  Only when the actor never ran: it destroys its own.  */
    ferry_kafka_producer_destroy (&self->consumer.producer);
    for (size_t i = 0; self->topics && i < self->ntopics; i++) {
        free (self->topics[i].name);
        free (self->topics[i].dlq);
    }
    free (self->topics);
    free (self->group);
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

static void
s_backoff (s_consumer_t *self)
{
    int64_t ms = self->backoff_ms / 2
                 + (int64_t) (random () % (self->backoff_ms / 2 + 1));
    s_wait (self, ms);
    self->backoff_ms = self->backoff_ms * 2 > S_BACKOFF_MAX
                           ? S_BACKOFF_MAX
                           : self->backoff_ms * 2;
}

/*  Connects when not connected.  Returns 0 when a connection is up.  */
static int
s_pg_ensure (s_consumer_t *self)
{
    if (self->conn && PQstatus (self->conn) == CONNECTION_OK)
        return 0;
    if (self->conn)
        PQfinish (self->conn);
    self->conn = PQconnectdb (self->cfg->conninfo);
    if (PQstatus (self->conn) == CONNECTION_OK) {
        PGresult *r = PQexec (self->conn, s_setup_sql);
        bool ok = PQresultStatus (r) == PGRES_TUPLES_OK;
        PQclear (r);
        if (ok) {
            log_info ("kafka consumer connected to PostgreSQL pool=%s",
                      self->cfg->pool);
            return 0;
        }
    }
    char msg[256];
    snprintf (msg, sizeof msg, "%s", PQerrorMessage (self->conn));
    msg[strcspn (msg, "\n")] = '\0';
    log_warn ("kafka consumer cannot connect to PostgreSQL pool=%s: %s",
              self->cfg->pool, msg);
    PQfinish (self->conn);
    self->conn = NULL;
    return -1;
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
    if (s_pg_ensure (self))
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

static void s_holds_revoke (s_consumer_t *self,
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
    } else {
        for (int i = 0; i < parts->cnt; i++)
            log_info ("kafka partition revoked pool=%s topic=%s partition=%d",
                      self->cfg->pool, parts->elems[i].topic,
                      parts->elems[i].partition);
        s_holds_revoke (self, parts);
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
s_claim (s_consumer_t *self, const rd_kafka_message_t *m, char *sqlstate)
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
s_failed (s_consumer_t *self, const char *sqlstate, char *err, size_t errlen,
          const char *what)
{
    worker_pgerror_t e;
    worker_pgerror_classify (sqlstate, &e);
    snprintf (self->sqlstate, sizeof self->sqlstate, "%s", sqlstate);
    if (e.reconnect || PQstatus (self->conn) != CONNECTION_OK) {
        snprintf (err, errlen, "%s: connection lost", what);
        PQfinish (self->conn);
        self->conn = NULL;
        return S_RETRY;
    }
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
s_begin_claim (s_consumer_t *self, const rd_kafka_message_t *m,
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

/*  One attempt: BEGIN, claim, statement timeout, steps, COMMIT.  On
    S_DEAD err holds the reason and res the problem's status.  */
static s_outcome_t
s_attempt (s_consumer_t *self, const rd_kafka_message_t *m,
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
    for (size_t s = 0; s < op->nsteps; s++) {
        const worker_step_t *st = &op->steps[s];
        char *values[st->nparams ? st->nparams : 1];
        if (worker_step_bind (st, args, body, values, err, errlen)) {
            (void) s_exec (self->conn, "ROLLBACK");
            res->status = 422;
            return S_DEAD;
        }
        PGresult *r = PQexecParams (self->conn, st->sql, (int) st->nparams,
                                    st->oids, (const char *const *) values,
                                    NULL, NULL, 0);
        worker_step_values_free (st, values);
        ExecStatusType rs = PQresultStatus (r);
        if (rs != PGRES_COMMAND_OK && rs != PGRES_TUPLES_OK) {
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
            return S_DEAD;
        }
        if (s == op->nsteps - 1)
            res->last = r;
        else
            PQclear (r);
    }
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
s_record (s_consumer_t *self, const rd_kafka_message_t *m, s_result_t *res,
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

/*  Records a message that went to the dead-letter topic in
    ferry.dead_letters, in the transaction that claims its offset.  */
static s_outcome_t
s_dead_letter (s_consumer_t *self, const rd_kafka_message_t *m,
               const s_fault_t *fault, int64_t attempts, char *err,
               size_t errlen)
{
    const char *operation = fault->operation, *reason = fault->detail;
    char sqlstate[6] = "";
    if (!s_exec (self->conn, "BEGIN"))
        return s_failed (self, "", err, errlen, "BEGIN");
    int claimed = s_claim (self, m, sqlstate);
    if (claimed < 0)
        return s_failed (self, sqlstate, err, errlen, "offset claim");
    if (claimed == 0) {
        (void) s_exec (self->conn, "ROLLBACK");
        return S_DONE;
    }
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
    const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
    snprintf (sqlstate, sizeof sqlstate, "%s", code ? code : "");
    PQclear (r);
    if (!ok)
        return s_failed (self, sqlstate, err, errlen, "dead letter");
    r = PQexec (self->conn, "COMMIT");
    ok = PQresultStatus (r) == PGRES_COMMAND_OK;
    code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
    snprintf (sqlstate, sizeof sqlstate, "%s", code ? code : "");
    PQclear (r);
    if (!ok)
        return s_failed (self, sqlstate, err, errlen, "COMMIT");
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

static s_hold_t *
s_hold_find (s_consumer_t *self, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < self->nholds; i++)
        if (self->holds[i]->partition == partition
            && strcmp (self->holds[i]->topic->name, topic) == 0)
            return self->holds[i];
    return NULL;
}

/*  A reply that could not be delivered is logged: the edge answers 504 at
    its deadline.  A dead letter's report moves its hold on (the main loop
    records it, or produces it again).  */
static void
s_delivered (void *opaque, rd_kafka_resp_err_t err, void *arg)
{
    s_sent_t *sent = opaque;
    s_consumer_t *self = arg;
    if (!sent->dead) {
        if (err)
            log_warn ("kafka reply not delivered pool=%s msg=%s: %s",
                      self->cfg->pool, sent->name, rd_kafka_err2str (err));
    } else {
        s_hold_t *hold = s_hold_find (self, sent->name, sent->partition);
        if (hold && hold->offset == sent->offset
            && hold->state == S_HOLD_SENDING) {
            if (err) {
                log_warn ("kafka dead letter not delivered pool=%s topic=%s "
                          "partition=%d offset=%" PRId64 " to %s: %s",
                          self->cfg->pool, sent->name, sent->partition,
                          sent->offset, hold->topic->dlq,
                          rd_kafka_err2str (err));
                hold->state = S_HOLD_UNSENT;
            } else
                hold->state = S_HOLD_SENT;
            hold->due = 0;  /* the main loop's backoff decides */
        }
    }
    s_sent_destroy (&sent);
}

/*  Builds the reply producer when there is none or the last one died of a
    fatal error.  Returns 0 when a producer is there.  */
static int
s_producer_ensure (s_consumer_t *self)
{
    if (self->producer && !ferry_kafka_producer_fatal (self->producer))
        return 0;
    ferry_kafka_producer_destroy (&self->producer);
    rd_kafka_conf_t *conf = rd_kafka_conf_dup (self->cfg->pconf);
    char err[512];
    self->producer = ferry_kafka_producer_new (&conf, s_delivered, self, err,
                                               sizeof err);
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
s_reply (s_consumer_t *self, const ferry_envelope_t *request,
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

/*  Handles one request envelope from a ferry topic: runs its operation
    exactly once and replies, or returns S_DEAD (f filled) for what cannot
    be a request.  */
static s_outcome_t
s_handle_request (s_consumer_t *self, const rd_kafka_message_t *m,
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
        if (res.status && res.sqlstate[0])
            reply = worker_reply_failure (req, res.sqlstate);
        else if (res.status)
            reply = worker_reply_problem (req, res.status, detail, NULL);
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
s_handle (s_consumer_t *self, const rd_kafka_message_t *m,
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
s_store (s_consumer_t *self, const rd_kafka_message_t *m)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new (1);
    rd_kafka_topic_partition_list_add (l, rd_kafka_topic_name (m->rkt),
                                       m->partition)
        ->offset = m->offset + 1;
    rd_kafka_resp_err_t rc = rd_kafka_offsets_store (self->rk, l);
    /*  A partition revoked meanwhile refuses the store: harmless,
        PostgreSQL holds the offset.  */
    if (rc)
        log_debug ("kafka offset store pool=%s: %s", self->cfg->pool,
                   rd_kafka_err2str (rc));
    rd_kafka_topic_partition_list_destroy (l);
}

/* ---- held partitions ---------------------------------------------------- */

/*  Pauses, seeks or resumes one partition (what: "pause", "seek" to
    offset, "resume").  A failure is logged: the partition was revoked
    meanwhile, and its next owner starts from PostgreSQL's offset.  */
static void
s_partition (s_consumer_t *self, const char *what, const char *topic,
             int32_t partition, int64_t offset)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new (1);
    rd_kafka_topic_partition_list_add (l, topic, partition)->offset = offset;
    rd_kafka_resp_err_t rc = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (what[0] == 'p')
        rc = rd_kafka_pause_partitions (self->rk, l);
    else if (what[0] == 'r')
        rc = rd_kafka_resume_partitions (self->rk, l);
    else {
        rd_kafka_error_t *e = rd_kafka_seek_partitions (self->rk, l, 0);
        if (e) {
            rc = rd_kafka_error_code (e);
            rd_kafka_error_destroy (e);
        }
    }
    /*  An asynchronous seek (timeout 0) reports "in progress".  */
    if (!rc && l->elems[0].err != RD_KAFKA_RESP_ERR__IN_PROGRESS)
        rc = l->elems[0].err;
    if (rc)
        log_warn ("kafka %s failed pool=%s topic=%s partition=%d: %s", what,
                  self->cfg->pool, topic, partition, rd_kafka_err2str (rc));
    rd_kafka_topic_partition_list_destroy (l);
}

/*  Next wait of a hold: exponential with jitter (half to all of it), so
    that many consumers failing together do not retry in step.  */
static int64_t
s_hold_backoff (s_hold_t *hold)
{
    int64_t ms = hold->backoff_ms / 2
                 + (int64_t) (random () % (hold->backoff_ms / 2 + 1));
    hold->backoff_ms = hold->backoff_ms * 2 > S_BACKOFF_MAX
                           ? S_BACKOFF_MAX
                           : hold->backoff_ms * 2;
    return ms;
}

/*  The hold of m's partition, created (not paused yet) when missing.  */
static s_hold_t *
s_hold_get (s_consumer_t *self, const s_topic_t *topic,
            const rd_kafka_message_t *m)
{
    s_hold_t *hold = s_hold_find (self, topic->name, m->partition);
    if (hold)
        return hold;
    if (self->nholds == self->capholds) {
        self->capholds = self->capholds ? self->capholds * 2 : 8;
        self->holds = ferry_realloc (self->holds,
                                     self->capholds * sizeof *self->holds);
    }
    hold = ferry_calloc (1, sizeof *hold);
    hold->topic = topic;
    hold->partition = m->partition;
    hold->offset = m->offset;
    hold->backoff_ms = S_BACKOFF_MIN;
    self->holds[self->nholds++] = hold;
    return hold;
}

/*  Forgets a hold (the partition is not resumed here).  */
static void
s_hold_drop (s_consumer_t *self, s_hold_t *hold)
{
    for (size_t i = 0; i < self->nholds; i++)
        if (self->holds[i] == hold) {
            self->holds[i] = self->holds[--self->nholds];
            break;
        }
    if (hold->m)
        rd_kafka_message_destroy (hold->m);
    free (hold);
}

/*  Drops the holds of revoked partitions: their next owner starts again
    from PostgreSQL's offset (a dead letter in flight may then be produced
    twice; it is never lost).  */
static void
s_holds_revoke (s_consumer_t *self,
                const rd_kafka_topic_partition_list_t *parts)
{
    for (int i = 0; i < parts->cnt; i++) {
        s_hold_t *hold = s_hold_find (self, parts->elems[i].topic,
                                      parts->elems[i].partition);
        if (hold)
            s_hold_drop (self, hold);
    }
}

/*  Produces the held message to its dead-letter topic: its key, value
    and headers, and the ferry-* headers that say why and where from.  */
static void
s_dlq_send (s_consumer_t *self, s_hold_t *hold)
{
    const rd_kafka_message_t *m = hold->m;
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
    snprintf (attempts, sizeof attempts, "%" PRId64, hold->attempts);
    snprintf (part, sizeof part, "%" PRId32, m->partition);
    snprintf (off, sizeof off, "%" PRId64, m->offset);
    const char *topic = hold->topic->name;
    h[count++] = (ferry_kafka_header_t) {"ferry-error", hold->fault.text,
                                         strlen (hold->fault.text)};
    h[count++] = (ferry_kafka_header_t) {"ferry-attempts", attempts,
                                         strlen (attempts)};
    h[count++] = (ferry_kafka_header_t) {"ferry-original-topic", topic,
                                         strlen (topic)};
    h[count++] = (ferry_kafka_header_t) {"ferry-original-partition", part,
                                         strlen (part)};
    h[count++] = (ferry_kafka_header_t) {"ferry-original-offset", off,
                                         strlen (off)};
    s_sent_t *sent = s_sent_new (true, topic, m->partition, m->offset);
    if (s_producer_ensure (self)
        || ferry_kafka_producer_send (self->producer, hold->topic->dlq,
                                      m->key, m->key_len, m->payload, m->len,
                                      h, count, sent)) {
        log_warn ("kafka dead letter not sent pool=%s topic=%s partition=%d "
                  "offset=%" PRId64 " to %s: %s",
                  self->cfg->pool, topic, m->partition, m->offset,
                  hold->topic->dlq,
                  self->producer ? rd_kafka_err2str (
                      ferry_kafka_producer_last_error (self->producer))
                                 : "no producer");
        s_sent_destroy (&sent);
        hold->state = S_HOLD_UNSENT;
        hold->due = ferry_mono_ms () + s_hold_backoff (hold);
    } else
        hold->state = S_HOLD_SENDING;
    free (h);
}

/*  Holds m's partition and dead-letters m (which the hold takes over).  */
static void
s_dlq_begin (s_consumer_t *self, const s_topic_t *topic,
             rd_kafka_message_t *m, const s_fault_t *fault)
{
    s_hold_t *hold = s_hold_get (self, topic, m);
    hold->attempts++;
    hold->fault = *fault;
    hold->m = m;
    hold->backoff_ms = S_BACKOFF_MIN;
    log_warn ("kafka message goes to %s pool=%s topic=%s partition=%d "
              "offset=%" PRId64 " attempts=%" PRId64 ": %s",
              topic->dlq, self->cfg->pool, topic->name, m->partition,
              m->offset, hold->attempts, fault->detail);
    s_partition (self, "pause", topic->name, m->partition, 0);
    s_dlq_send (self, hold);
}

/*  Holds m's partition for a retry after a backoff.  A lost connection is
    not the message's fault and does not count as an attempt (nor could
    its dead letter be recorded without PostgreSQL).  Past the topic's
    retries the message is dead-lettered instead; returns true when it
    took m over for that.  */
static bool
s_retry_later (s_consumer_t *self, const s_topic_t *topic,
               rd_kafka_message_t *m, s_fault_t *fault)
{
    s_hold_t *hold = s_hold_find (self, topic->name, m->partition);
    bool counts = self->conn != NULL;
    int64_t attempts = (hold ? hold->attempts : 0) + (counts ? 1 : 0);
    if (counts && attempts > topic->retries) {
        snprintf (fault->text, sizeof fault->text, "retries exhausted%s%s%s",
                  self->sqlstate[0] ? " (SQLSTATE " : "", self->sqlstate,
                  self->sqlstate[0] ? ")" : "");
        if (hold)
            hold->attempts = attempts - 1;  /* dlq_begin counts the last */
        s_dlq_begin (self, topic, m, fault);
        return true;
    }
    hold = s_hold_get (self, topic, m);
    hold->attempts = attempts;
    int64_t wait = s_hold_backoff (hold);
    log_warn ("kafka message will be retried in %" PRId64 " ms pool=%s "
              "topic=%s partition=%d offset=%" PRId64 " attempts=%" PRId64
              ": %s",
              wait, self->cfg->pool, topic->name, m->partition, m->offset,
              attempts, fault->detail);
    s_partition (self, "pause", topic->name, m->partition, 0);
    s_partition (self, "seek", topic->name, m->partition, m->offset);
    hold->state = S_HOLD_BACKOFF;
    hold->due = ferry_mono_ms () + wait;
    return false;
}

/*  Moves every hold whose time has come: resumes a partition after its
    backoff, produces a dead letter again, records a delivered one (then
    stores its offset and lets the partition go on past it).  Returns the
    milliseconds until the next hold is due (at most 100).  */
static int
s_holds_run (s_consumer_t *self)
{
    int64_t now = ferry_mono_ms (), next = 100;
    for (size_t i = 0; i < self->nholds; i++) {
        s_hold_t *hold = self->holds[i];
        if (hold->state == S_HOLD_SENT && hold->due <= now) {
            char err[512] = "";
            if (s_dead_letter (self, hold->m, &hold->fault, hold->attempts,
                               err, sizeof err) != S_DONE) {
                log_warn ("kafka dead letter not recorded pool=%s topic=%s "
                          "partition=%d offset=%" PRId64 ": %s",
                          self->cfg->pool, hold->topic->name,
                          hold->partition, hold->offset, err);
                if (!self->conn || s_pg_ensure (self))
                    break;  /* the main loop waits for PostgreSQL */
                hold->due = now + s_hold_backoff (hold);
            } else {
                s_store (self, hold->m);
                s_partition (self, "seek", hold->topic->name, hold->partition,
                             hold->offset + 1);
                s_partition (self, "resume", hold->topic->name,
                             hold->partition, 0);
                s_hold_drop (self, hold);
                i--;
                continue;
            }
        } else if (hold->state == S_HOLD_UNSENT && hold->due <= now) {
            if (!hold->due)     /* just failed: wait before the next try */
                hold->due = now + s_hold_backoff (hold);
            else
                s_dlq_send (self, hold);
        } else if (hold->state == S_HOLD_BACKOFF && hold->due <= now) {
            s_partition (self, "resume", hold->topic->name, hold->partition,
                         0);
            hold->state = S_HOLD_READY;
        }
        if ((hold->state == S_HOLD_BACKOFF || hold->state == S_HOLD_UNSENT
             || hold->state == S_HOLD_SENT)
            && hold->due - now < next)
            next = hold->due - now;
    }
    return next < 0 ? 0 : (int) next;
}

/* ---- the actor ---------------------------------------------------------- */

static void
s_consumer (zsock_t *pipe, void *arg)
{
    worker_kafka_t *cfg = arg;
    s_consumer_t *self = &cfg->consumer;
    self->pipe = pipe;
    zsock_signal (pipe, 0);
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
    log_info ("kafka consumer started pool=%s group=%s topics=%zu", cfg->pool,
              cfg->group, cfg->ntopics);
    while (!self->terminated) {
        if (zsock_events (pipe) & ZMQ_POLLIN) {
            char *cmd = zstr_recv (pipe);
            if (!cmd || strcmp (cmd, "$TERM") == 0)
                self->terminated = true;
            free (cmd);
            continue;
        }
        /*  No messages without PostgreSQL: they could only be sought
            back.  A long outage exceeds max.poll.interval.ms and the group
            moves the partitions to a consumer that can work.  */
        if (s_pg_ensure (self)) {
            s_backoff (self);
            continue;
        }
        self->backoff_ms = S_BACKOFF_MIN;
        if (self->producer)
            ferry_kafka_producer_poll (self->producer);
        int wait = s_holds_run (self);
        rd_kafka_message_t *m = rd_kafka_consumer_poll (self->rk, wait);
        if (!m)
            continue;
        if (m->err) {
            log_warn ("kafka consumer pool=%s: %s", cfg->pool,
                      rd_kafka_message_errstr (m));
            rd_kafka_message_destroy (m);
            continue;
        }
        const s_topic_t *topic = s_topic_find (cfg,
                                               rd_kafka_topic_name (m->rkt));
        s_hold_t *hold = topic ? s_hold_find (self, topic->name, m->partition)
                               : NULL;
        if (!topic || (hold && hold->state != S_HOLD_READY)) {
            /*  Fetched before its partition was paused: the seek brings
                it back when the partition goes on.  */
            rd_kafka_message_destroy (m);
            continue;
        }
        if (hold && m->offset != hold->offset) {
            /*  Not the message held (the seek was refused): the claim in
                PostgreSQL keeps whatever comes exactly-once.  */
            s_hold_drop (self, hold);
            hold = NULL;
        }
        s_fault_t fault = {.detail = ""};
        s_outcome_t o = s_handle (self, m, topic, &fault);
        if (o == S_DONE) {
            s_store (self, m);
            if (hold)
                s_hold_drop (self, hold);
        } else if (o == S_DEAD) {
            s_dlq_begin (self, topic, m, &fault);
            continue;       /* the hold owns m now */
        } else if (s_retry_later (self, topic, m, &fault))
            continue;
        rd_kafka_message_destroy (m);
    }
    /*  Leaves the group (the revocation runs s_rebalance) and commits the
        stored offsets.  */
    rc = rd_kafka_consumer_close (self->rk);
    if (rc)
        log_warn ("kafka consumer close pool=%s: %s", cfg->pool,
                  rd_kafka_err2str (rc));
    if (self->conn)
        PQfinish (self->conn);
    /*  Flushes the replies and dead letters still queued (a dead letter
        is recorded only by a next run: PostgreSQL is closed).  */
    ferry_kafka_producer_destroy (&self->producer);
    while (self->nholds)
        s_hold_drop (self, self->holds[0]);
    free (self->holds);
    self->holds = NULL;
    msgpack_sbuffer_destroy (&self->body);
    msgpack_sbuffer_destroy (&self->out);
    log_info ("kafka consumer stopped pool=%s", cfg->pool);
}

int
worker_kafka_start (worker_kafka_t *self)
{
    char err[512];
    /*  The actor's state is the handle's opaque: the rebalance callback
        runs on the actor's thread inside rd_kafka_consumer_poll.  */
    self->consumer.cfg = self;
    self->consumer.backoff_ms = S_BACKOFF_MIN;
    msgpack_sbuffer_init (&self->consumer.body);
    msgpack_sbuffer_init (&self->consumer.out);
    /*  Every topic may dead-letter, so every consumer produces.  */
    if (s_producer_ensure (&self->consumer))
        return -1;
    rd_kafka_conf_set_opaque (self->conf, &self->consumer);
    rd_kafka_conf_set_rebalance_cb (self->conf, s_rebalance);
    rd_kafka_t *rk = rd_kafka_new (RD_KAFKA_CONSUMER, self->conf, err,
                                   sizeof err);
    if (!rk) {
        log_error ("kafka consumer refused pool=%s: %s", self->pool, err);
        return -1;
    }
    self->conf = NULL;
    rd_kafka_poll_set_consumer (rk);
    self->rk = rk;
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
        "");
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
                          "g", ops, "");
    FERRY_CHECK (k);
    FERRY_CHECK (strcmp (k->group, "mine") == 0);
    vlen = sizeof v;
    FERRY_CHECK (rd_kafka_conf_get (k->conf, "auto.offset.reset", v, &vlen)
                     == RD_KAFKA_CONF_OK
                 && strcmp (v, "largest") == 0);
    worker_kafka_destroy (&k);

    k = worker_kafka_new (config,
                          ferry_config_node (config, NULL, "pools.dlq.kafka"),
                          "dlq", ops, "");
    FERRY_CHECK (k);
    FERRY_CHECK (strcmp (k->topics[0].dlq, "t.dead") == 0);
    FERRY_CHECK (k->topics[0].retries == 0);
    worker_kafka_destroy (&k);

    /*  A request topic: the operation comes from each envelope.  */
    k = worker_kafka_new (config,
                          ferry_config_node (config, NULL, "pools.req.kafka"),
                          "req", ops, "");
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
                              bad[i].pool, ops, "");
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

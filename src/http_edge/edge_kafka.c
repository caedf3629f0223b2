/*  edge_kafka.c: the reply consumer of ferry-edge and the helpers its
    loops share for Kafka routes (see edge_kafka.h).

    The consumer runs in its own thread (a CZMQ actor) because everything
    it does may block: creating the reply topic, reading metadata and
    watermarks, and polling.  It assigns every partition of the reply topic
    itself, at its current end, instead of joining a group: replies older
    than this process answer nobody, and a manual assignment needs no
    rebalance before the first reply can be read.  It never commits.

    Readiness is one atomic flag: set once the partitions are assigned and
    again after each probe (a metadata request about once a second) that
    the cluster answers, cleared when two probes in a row fail or
    librdkafka reports every broker down.  Loops answer a Kafka route with 503 at once while
    it is clear, so a client never waits until its deadline for a cluster
    that is known to be away; when it clears, the consumer tells every
    loop, which answers its parked Kafka requests 503 too (their replies
    could only come back through the cluster that is gone).

    The probe is a metadata request, not a watermark query: librdkafka
    2.0 queues a ListOffsets request on the partition leader's broker
    thread and waits for it with no deadline of its own, so with the
    broker gone the query sat for socket.timeout.ms (a minute), the flag
    stayed set and $TERM waited behind it.  rd_kafka_metadata picks a
    broker that is up (none: it fails) and bounds its wait.  */

#include "ferry.h"
#include "log.h"
#include "edge_kafka.h"

#include <czmq.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/*  How often the consumer probes the cluster, and how long a blocking
    request may take (this bounds how late $TERM is seen too).  */
#define S_PROBE_MS 1000
#define S_PROBE_TIMEOUT_MS 500
/*  Failed probes in a row before the cluster counts as away: one metadata
    answer later than S_PROBE_TIMEOUT_MS is what a busy cluster (or a
    sanitizer build) gives now and then, and flipping to "not reachable"
    answers every parked Kafka request 503.  librdkafka's own "all brokers
    down" still clears the flag at once.  */
#define S_PROBE_FAILURES 2
#define S_REQUEST_MS 1500
/*  Replies are useless after their request's deadline: an hour of
    retention is plenty and keeps the topic small.  */
#define S_RETENTION_MS "3600000"

struct _edge_kafka_t {
    const edge_settings_t *settings;
    zactor_t *actor;
    atomic_bool ready;
    rd_kafka_t *consumer;   /* owned by the actor once it runs */
    /*  Set by the error callback (on the actor's thread, inside
        rd_kafka_consumer_poll) when every broker is down.  */
    bool all_down;
    /*  rd_kafka_conf_dup reads the template: one reader at a time, since
        loops start their producers from their own threads.  */
    pthread_mutex_t conf_lock;
};

/* ---- msg ids that name their loop ------------------------------------------ */

void
edge_kafka_msg_id (char *id, size_t loop)
{
    static const char hex[] = "0123456789abcdef";
    ferry_id_generate (id);
    id[0] = hex[(loop >> 4) & 0xf];
    id[1] = hex[loop & 0xf];
}

static int
s_hex (char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int
edge_kafka_msg_loop (const char *id, size_t len)
{
    if (len != FERRY_ID_LEN)
        return -1;
    for (size_t i = 0; i < len; i++)
        if (s_hex (id[i]) < 0)
            return -1;
    return s_hex (id[0]) * 16 + s_hex (id[1]);
}

void
edge_kafka_endpoint (const edge_kafka_t *self, size_t loop, char *buf,
                     size_t size)
{
    snprintf (buf, size, "inproc://ferry-edge-kafka-%p-%zu", (void *) self,
              loop);
}

/* ---- configuration ------------------------------------------------------- */

static rd_kafka_conf_t *
s_conf_dup (edge_kafka_t *self)
{
    pthread_mutex_lock (&self->conf_lock);
    rd_kafka_conf_t *conf = rd_kafka_conf_dup (self->settings->kafka_conf);
    pthread_mutex_unlock (&self->conf_lock);
    return conf;
}

rd_kafka_conf_t *
edge_kafka_producer_conf (edge_kafka_t *self)
{
    rd_kafka_conf_t *conf = s_conf_dup (self);
    char value[32];
    size_t size = sizeof value;
    /*  librdkafka's default is 300000 (5 minutes).  */
    if (rd_kafka_conf_get (conf, "message.timeout.ms", value, &size)
            == RD_KAFKA_CONF_OK
        && strcmp (value, "300000") == 0
        && self->settings->max_timeout_ms > 0) {
        char errstr[256];
        snprintf (value, sizeof value, "%lld",
                  (long long) self->settings->max_timeout_ms);
        if (rd_kafka_conf_set (conf, "message.timeout.ms", value, errstr,
                               sizeof errstr)
            != RD_KAFKA_CONF_OK)
            log_warn ("kafka: message.timeout.ms=%s: %s", value, errstr);
    }
    return conf;
}

/* ---- the consumer thread ------------------------------------------------- */

/*  Creates the reply topic unless it exists.  Other failures are logged
    and left to the metadata request that follows (a cluster may create
    topics itself, or forbid us to).  */
static void
s_create_topic (rd_kafka_t *rk, const char *topic)
{
    char errstr[256];
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new (topic, 1, -1, errstr,
                                                     sizeof errstr);
    if (!nt) {
        log_warn ("kafka: reply topic %s: %s", topic, errstr);
        return;
    }
    rd_kafka_NewTopic_set_config (nt, "retention.ms", S_RETENTION_MS);
    rd_kafka_AdminOptions_t *opts
        = rd_kafka_AdminOptions_new (rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout (opts, S_REQUEST_MS, errstr,
                                               sizeof errstr);
    rd_kafka_queue_t *q = rd_kafka_queue_new (rk);
    rd_kafka_CreateTopics (rk, &nt, 1, opts, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll (q, S_REQUEST_MS + 500);
    const rd_kafka_CreateTopics_result_t *res
        = ev ? rd_kafka_event_CreateTopics_result (ev) : NULL;
    if (!ev)
        log_debug ("kafka: creating %s: no answer", topic);
    else if (rd_kafka_event_error (ev))
        log_debug ("kafka: creating %s: %s", topic,
                   rd_kafka_event_error_string (ev));
    else if (res) {
        size_t n;
        const rd_kafka_topic_result_t **r
            = rd_kafka_CreateTopics_result_topics (res, &n);
        rd_kafka_resp_err_t err = n ? rd_kafka_topic_result_error (r[0])
                                    : RD_KAFKA_RESP_ERR_NO_ERROR;
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
            log_info ("kafka: created reply topic %s", topic);
        else if (err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            log_warn ("kafka: creating reply topic %s: %s", topic,
                      rd_kafka_err2str (err));
    }
    if (ev)
        rd_kafka_event_destroy (ev);
    rd_kafka_queue_destroy (q);
    rd_kafka_AdminOptions_destroy (opts);
    rd_kafka_NewTopic_destroy (nt);
}

/*  Assigns every partition of the reply topic at its current end.
    Returns 0, or -1 when the cluster did not answer (tried again).  */
static int
s_assign (rd_kafka_t *rk, const char *topic)
{
    s_create_topic (rk, topic);
    rd_kafka_topic_t *rkt = rd_kafka_topic_new (rk, topic, NULL);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata (rk, 0, rkt, &md,
                                                 S_REQUEST_MS);
    rd_kafka_topic_destroy (rkt);
    if (err || md->topic_cnt != 1 || md->topics[0].err
        || md->topics[0].partition_cnt <= 0) {
        log_debug ("kafka: reply topic %s not usable yet: %s", topic,
                   rd_kafka_err2str (err ? err
                                     : md->topic_cnt ? md->topics[0].err
                                                     : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
        if (md)
            rd_kafka_metadata_destroy (md);
        return -1;
    }
    int count = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy (md);
    rd_kafka_topic_partition_list_t *list
        = rd_kafka_topic_partition_list_new (count);
    int rc = 0;
    for (int p = 0; p < count && rc == 0; p++) {
        int64_t low, high;
        if (rd_kafka_query_watermark_offsets (rk, topic, p, &low, &high,
                                              S_REQUEST_MS))
            rc = -1;
        else
            rd_kafka_topic_partition_list_add (list, topic, p)->offset = high;
    }
    if (rc == 0 && (err = rd_kafka_assign (rk, list)) != 0) {
        log_warn ("kafka: assigning %s: %s", topic, rd_kafka_err2str (err));
        rc = -1;
    }
    rd_kafka_topic_partition_list_destroy (list);
    if (rc == 0)
        log_info ("kafka: reading replies from %s (%d partitions)", topic,
                  count);
    return rc;
}

/*  Asks the cluster for the reply topic's metadata, bounded by
    S_PROBE_TIMEOUT_MS.  Returns true when a broker answered it.  */
static bool
s_probe (rd_kafka_t *rk, const char *topic)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new (rk, topic, NULL);
    if (!rkt)
        return false;
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata (rk, 0, rkt, &md,
                                                 S_PROBE_TIMEOUT_MS);
    rd_kafka_topic_destroy (rkt);
    bool ok = err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1
              && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR;
    if (md)
        rd_kafka_metadata_destroy (md);
    if (!ok)
        log_debug ("kafka: probe of %s failed: %s", topic,
                   rd_kafka_err2str (err));
    return ok;
}

/*  Tells every loop that the cluster went away: a one-part message on
    the reply socket (replies have two).  A loop whose socket is full
    still sees the flag on its next request.  */
static void
s_tell_down (edge_kafka_t *self, zsock_t **pushes)
{
    for (size_t i = 0; i < self->settings->loops; i++)
        zmq_send (zsock_resolve (pushes[i]), "down", 4, ZMQ_DONTWAIT);
}

/*  librdkafka's error callback; runs inside rd_kafka_consumer_poll.  */
static void
s_on_error (rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void) rk;
    edge_kafka_t *self = opaque;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        self->all_down = true;
    log_debug ("kafka: reply consumer: %s: %s",
               rd_kafka_err2str ((rd_kafka_resp_err_t) err), reason);
}

/*  Hands one reply to the loop its msg id names.  A full loop socket or
    a msg id that is not ours drops the reply: its request then ends at
    its deadline, as a lost reply would.  */
static void
s_forward (edge_kafka_t *self, zsock_t **pushes, rd_kafka_message_t *m)
{
    rd_kafka_headers_t *headers = NULL;
    const void *id = NULL;
    size_t len = 0;
    if (rd_kafka_message_headers (m, &headers) != 0
        || rd_kafka_header_get_last (headers, "ferry-msg-id", &id, &len) != 0
        || !id) {
        log_warn ("kafka: reply without a ferry-msg-id header dropped "
                  "(partition %d offset %lld)", (int) m->partition,
                  (long long) m->offset);
        return;
    }
    int loop = edge_kafka_msg_loop (id, len);
    if (loop < 0 || (size_t) loop >= self->settings->loops) {
        log_debug ("kafka: reply for another edge dropped");
        return;
    }
    void *s = zsock_resolve (pushes[loop]);
    if (zmq_send (s, id, len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        log_warn ("kafka: loop %d is not taking replies: dropped", loop);
        return;
    }
    zmq_send (s, m->payload, m->len, 0);
}

/*  The consumer, made on the caller's thread so that a configuration
    librdkafka refuses fails edge_kafka_new; the actor then owns it.  */
static rd_kafka_t *
s_consumer_new (edge_kafka_t *self)
{
    rd_kafka_conf_t *conf = s_conf_dup (self);
    char errstr[512], group[300];
    snprintf (group, sizeof group, "ferry-edge.%s",
              self->settings->reply_topic);
    rd_kafka_t *rk = NULL;
    rd_kafka_conf_set_error_cb (conf, s_on_error);
    rd_kafka_conf_set_opaque (conf, self);
    if (rd_kafka_conf_set (conf, "group.id", group, errstr, sizeof errstr)
            != RD_KAFKA_CONF_OK
        || rd_kafka_conf_set (conf, "enable.auto.commit", "false", errstr,
                              sizeof errstr)
               != RD_KAFKA_CONF_OK
        || !(rk = rd_kafka_new (RD_KAFKA_CONSUMER, conf, errstr,
                                sizeof errstr))) {
        rd_kafka_conf_destroy (conf);
        log_error ("kafka: reply consumer: %s", errstr);
        return NULL;
    }
    rd_kafka_poll_set_consumer (rk);
    return rk;
}

static void
s_consumer_actor (zsock_t *pipe, void *arg)
{
    edge_kafka_t *self = arg;
    const edge_settings_t *st = self->settings;
    rd_kafka_t *rk = self->consumer;
    zsock_t **pushes = ferry_calloc (st->loops, sizeof *pushes);
    for (size_t i = 0; i < st->loops; i++) {
        char endpoint[128];
        edge_kafka_endpoint (self, i, endpoint, sizeof endpoint);
        pushes[i] = zsock_new (ZMQ_PUSH);
        zsock_set_sndhwm (pushes[i], (int) st->max_inflight + 64);
        zsock_set_linger (pushes[i], 0);
        zsock_connect (pushes[i], "%s", endpoint);
    }
    zsock_signal (pipe, 0);

    bool assigned = false;
    int64_t next_probe = 0;
    int failures = 0;
    for (;;) {
        if (zsock_events (pipe) & ZMQ_POLLIN) {
            char *cmd = zstr_recv (pipe);
            bool term = !cmd || strcmp (cmd, "$TERM") == 0;
            free (cmd);
            if (term)
                break;
        }
        int64_t now = ferry_mono_ms ();
        bool ok = atomic_load (&self->ready);
        if (self->all_down) {
            /*  No need to wait for the next probe.  */
            self->all_down = false;
            ok = false;
            next_probe = now + S_PROBE_TIMEOUT_MS;
        }
        else if (now >= next_probe) {
            if (!assigned)
                assigned = s_assign (rk, st->reply_topic) == 0;
            bool answered = assigned && s_probe (rk, st->reply_topic);
            failures = answered ? 0 : failures + 1;
            /*  Not assigned yet, or never reachable: no grace.  */
            ok = answered || (ok && failures < S_PROBE_FAILURES);
            next_probe = ferry_mono_ms () + S_PROBE_MS;
        }
        if (ok != atomic_load (&self->ready)) {
            log_info ("kafka: cluster %s", ok ? "reachable"
                                              : "not reachable");
            atomic_store (&self->ready, ok);
            if (!ok)
                s_tell_down (self, pushes);
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll (rk, 100);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
            s_forward (self, pushes, m);
        else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            log_debug ("kafka: reply consumer: %s",
                       rd_kafka_message_errstr (m));
        rd_kafka_message_destroy (m);
    }
    atomic_store (&self->ready, false);
    /*  Nothing to leave or commit (no group join, no commits), and a
        consumer close would wait for a group coordinator that may be
        gone: destroy without it, which returns at once.  */
    rd_kafka_destroy_flags (rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    for (size_t i = 0; i < st->loops; i++)
        zsock_destroy (&pushes[i]);
    free (pushes);
}

edge_kafka_t *
edge_kafka_new (const edge_settings_t *settings)
{
    edge_kafka_t *self = ferry_calloc (1, sizeof *self);
    self->settings = settings;
    atomic_init (&self->ready, false);
    pthread_mutex_init (&self->conf_lock, NULL);
    self->consumer = s_consumer_new (self);
    if (self->consumer)
        self->actor = zactor_new (s_consumer_actor, self);
    if (!self->actor) {
        if (self->consumer)
            rd_kafka_destroy (self->consumer);
        pthread_mutex_destroy (&self->conf_lock);
        free (self);
        return NULL;
    }
    return self;
}

void
edge_kafka_destroy (edge_kafka_t **self_p)
{
    edge_kafka_t *self = *self_p;
    if (!self)
        return;
    zactor_destroy (&self->actor);
    pthread_mutex_destroy (&self->conf_lock);
    free (self);
    *self_p = NULL;
}

bool
edge_kafka_ready (edge_kafka_t *self)
{
    return atomic_load (&self->ready);
}

/* ---- tests --------------------------------------------------------------- */

int
edge_kafka_test (bool verbose)
{
    if (verbose)
        printf ("# Kafka msg ids name their loop\n");
    char id[FERRY_ID_LEN + 1];
    for (size_t loop = 0; loop < 256; loop += 17) {
        edge_kafka_msg_id (id, loop);
        FERRY_CHECK (strlen (id) == FERRY_ID_LEN);
        FERRY_CHECK (edge_kafka_msg_loop (id, FERRY_ID_LEN) == (int) loop);
    }
    edge_kafka_msg_id (id, 255);
    FERRY_CHECK (edge_kafka_msg_loop (id, FERRY_ID_LEN) == 255);
    FERRY_CHECK (edge_kafka_msg_loop (id, FERRY_ID_LEN - 1) == -1);
    id[5] = 'G';
    FERRY_CHECK (edge_kafka_msg_loop (id, FERRY_ID_LEN) == -1);
    return 0;
}

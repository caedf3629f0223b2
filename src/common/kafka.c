/*  kafka.c: librdkafka configuration from ferry's YAML file, and the
    producer that the edge and the workers share (docs/kafka.md).

    Configuration: ferry's config paths are dotted, so its keys cannot hold
    librdkafka's dotted property names.  A section's `properties` is
    therefore a sequence of "name=value" strings, passed one by one to
    rd_kafka_conf_set; the name stays exactly as librdkafka documents it,
    and a refused one is reported with file, line and name.

    Producer: idempotent with acks=all whatever the file says (librdkafka
    2.0 has idempotence off by default, and without it a retried batch may
    be written twice).  Sending never waits: a full local queue is an error
    at once so that the edge can answer 503 instead of hanging until its
    deadline.  librdkafka puts delivery reports and errors on its main
    queue, which wakes a pipe that the owner's event loop polls; the
    owner's thread then serves them with ferry_kafka_producer_poll.  Each
    message sent is reported exactly once, counted in `outstanding`, so
    destroy can make sure nobody waits for a report that never comes.

    A producer belongs to the thread that created it.  librdkafka's own
    threads call only s_log (ferry's log writes each line with one write
    call, so lines from several threads do not mix).  */

#include "ferry.h"
#include "kafka.h"
#include "log.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_FLUSH_TIMEOUT_MS 5000
/*  After a purge librdkafka reports the purged messages on its queue;
    serving them takes milliseconds, this bound only guards against a
    librdkafka that never reports.  */
#define S_PURGE_WAIT_MS 2000

struct _ferry_kafka_producer_t {
    rd_kafka_t *rk;                 /* the librdkafka producer */
    rd_kafka_queue_t *main_q;       /* its main queue, wired to the pipe */
    int wake_fds[2];                /* librdkafka writes [1], loop reads [0] */
    ferry_kafka_delivery_fn *on_delivery; /* the owner's callback */
    void *arg;                      /* ...and its argument */
    int outstanding;                /* sent and not reported yet */
    int flush_timeout_ms;           /* destroy's bound for flushing */
    rd_kafka_resp_err_t last_error; /* of the last failed send */
};

static void s_log (const rd_kafka_t *rk, int level, const char *facility,
                   const char *message);
static void s_delivered (rd_kafka_t *rk, const rd_kafka_message_t *message,
                         void *opaque);
static void s_error (rd_kafka_t *rk, int err, const char *reason,
                     void *opaque);
static void s_copy (char *err, size_t errlen, const char *message);
static char *s_trim (char *s);

/* ---- configuration ------------------------------------------------------- */

rd_kafka_conf_t *
ferry_kafka_conf_new (ferry_config_t *config, const ferry_cnode_t *section,
                      char *err, size_t errlen)
{
    assert (config);
    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    rd_kafka_conf_set_log_cb (conf, s_log);
    if (!section)
        return conf;
    if (ferry_cnode_type (section) != FERRY_CNODE_MAP) {
        ferry_config_fail (config, section, "expected a map");
        goto failed;
    }
    const ferry_cnode_t *props
        = ferry_config_node (config, section, "properties");
    if (!props)
        return conf;
    if (ferry_cnode_type (props) == FERRY_CNODE_SCALAR) {
        /*  An empty `properties:` is a YAML null: no properties.  */
        const char *text = NULL;
        if (ferry_config_str (config, section, "properties", NULL, &text) == 0
            && !text)
            return conf;
    }
    if (ferry_cnode_type (props) != FERRY_CNODE_SEQ) {
        ferry_config_fail (config, props,
                           "expected a sequence of \"name=value\" strings");
        goto failed;
    }
    for (size_t i = 0; i < ferry_cnode_size (props); i++) {
        const ferry_cnode_t *item = ferry_cnode_child (props, i);
        const char *text = ferry_cnode_value (item);
        const char *eq = text ? strchr (text, '=') : NULL;
        if (!eq) {
            ferry_config_fail (config, item, "expected \"name=value\"");
            goto failed;
        }
        char *name = ferry_strndup (text, (size_t) (eq - text));
        char *value = ferry_strdup (eq + 1);
        char *key = s_trim (name);
        char reason[512];
        int rc = 0;
        if (!*key)
            rc = ferry_config_fail (config, item, "empty property name");
        else if (rd_kafka_conf_set (conf, key, s_trim (value), reason,
                                    sizeof reason)
                 != RD_KAFKA_CONF_OK)
            rc = ferry_config_fail (config, item, "%s: %s", key, reason);
        free (name);
        free (value);
        if (rc != 0)
            goto failed;
    }
    return conf;

failed:
    s_copy (err, errlen, ferry_config_error (config));
    rd_kafka_conf_destroy (conf);
    return NULL;
}

/* ---- producer ------------------------------------------------------------ */

ferry_kafka_producer_t *
ferry_kafka_producer_new (rd_kafka_conf_t **conf_p,
                          ferry_kafka_delivery_fn *on_delivery, void *arg,
                          char *err, size_t errlen)
{
    assert (conf_p && *conf_p);
    assert (on_delivery);
    rd_kafka_conf_t *conf = *conf_p;
    *conf_p = NULL;

    char reason[512];
    if (rd_kafka_conf_set (conf, "enable.idempotence", "true", reason,
                           sizeof reason)
            != RD_KAFKA_CONF_OK
        || rd_kafka_conf_set (conf, "acks", "all", reason, sizeof reason)
               != RD_KAFKA_CONF_OK) {
        s_copy (err, errlen, reason);
        rd_kafka_conf_destroy (conf);
        return NULL;
    }
    ferry_kafka_producer_t *self = ferry_calloc (1, sizeof *self);
    self->on_delivery = on_delivery;
    self->arg = arg;
    self->flush_timeout_ms = S_FLUSH_TIMEOUT_MS;
    if (pipe2 (self->wake_fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        snprintf (reason, sizeof reason, "pipe: %s", strerror (errno));
        s_copy (err, errlen, reason);
        rd_kafka_conf_destroy (conf);
        free (self);
        return NULL;
    }
    rd_kafka_conf_set_opaque (conf, self);
    rd_kafka_conf_set_dr_msg_cb (conf, s_delivered);
    rd_kafka_conf_set_error_cb (conf, s_error);
    /*  rd_kafka_new takes the configuration only when it succeeds.  */
    self->rk = rd_kafka_new (RD_KAFKA_PRODUCER, conf, reason, sizeof reason);
    if (!self->rk) {
        s_copy (err, errlen, reason);
        rd_kafka_conf_destroy (conf);
        close (self->wake_fds[0]);
        close (self->wake_fds[1]);
        free (self);
        return NULL;
    }
    /*  librdkafka writes one byte when the main queue turns non-empty and
        not again until the queue is served, so the loop's poll never spins
        and never misses a report.  */
    self->main_q = rd_kafka_queue_get_main (self->rk);
    rd_kafka_queue_io_event_enable (self->main_q, self->wake_fds[1], "1", 1);
    return self;
}

void
ferry_kafka_producer_destroy (ferry_kafka_producer_t **self_p)
{
    assert (self_p);
    ferry_kafka_producer_t *self = *self_p;
    if (!self)
        return;
    *self_p = NULL;
    /*  rd_kafka_flush serves delivery reports to s_delivered while it
        waits, since they go to a callback rather than an event queue.  */
    if (self->outstanding > 0)
        rd_kafka_flush (self->rk, self->flush_timeout_ms);
    if (self->outstanding > 0) {
        log_warn ("kafka: flush timed out, purging outstanding=%d",
                  self->outstanding);
        rd_kafka_purge (self->rk,
                        RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        int64_t deadline = ferry_mono_ms () + S_PURGE_WAIT_MS;
        while (self->outstanding > 0 && ferry_mono_ms () < deadline)
            rd_kafka_poll (self->rk, 50);
        if (self->outstanding > 0)
            log_error ("kafka: messages never reported outstanding=%d",
                       self->outstanding);
    }
    rd_kafka_queue_io_event_enable (self->main_q, -1, NULL, 0);
    rd_kafka_queue_destroy (self->main_q);
    rd_kafka_destroy (self->rk);
    close (self->wake_fds[0]);
    close (self->wake_fds[1]);
    free (self);
}

int
ferry_kafka_producer_send (ferry_kafka_producer_t *self, const char *topic,
                           const void *key, size_t key_len,
                           const void *payload, size_t len,
                           const ferry_kafka_header_t *headers,
                           size_t header_count, void *opaque)
{
    assert (self && topic);
    assert (headers || header_count == 0);
    rd_kafka_vu_t vus[6];
    size_t n = 0;
    vus[n].vtype = RD_KAFKA_VTYPE_TOPIC;
    vus[n++].u.cstr = topic;
    vus[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
    vus[n++].u.i = RD_KAFKA_MSG_F_COPY;
    vus[n].vtype = RD_KAFKA_VTYPE_VALUE;
    vus[n].u.mem.ptr = (void *) payload;
    vus[n++].u.mem.size = len;
    vus[n].vtype = RD_KAFKA_VTYPE_OPAQUE;
    vus[n++].u.ptr = opaque;
    if (key) {
        vus[n].vtype = RD_KAFKA_VTYPE_KEY;
        vus[n].u.mem.ptr = (void *) key;
        vus[n++].u.mem.size = key_len;
    }
    rd_kafka_headers_t *hdrs = NULL;
    if (header_count > 0) {
        hdrs = rd_kafka_headers_new (header_count);
        for (size_t i = 0; i < header_count; i++)
            rd_kafka_header_add (hdrs, headers[i].name, -1, headers[i].value,
                                 (ssize_t) headers[i].size);
        vus[n].vtype = RD_KAFKA_VTYPE_HEADERS;
        vus[n++].u.headers = hdrs;
    }
    rd_kafka_error_t *error = rd_kafka_produceva (self->rk, vus, n);
    if (!error) {
        /*  The message owns the headers from here on.  */
        self->outstanding++;
        return 0;
    }
    /*  After a fatal error librdkafka returns the fatal error's own code;
        callers get one code to test for.  */
    self->last_error = ferry_kafka_producer_fatal (self)
                           ? RD_KAFKA_RESP_ERR__FATAL
                           : rd_kafka_error_code (error);
    log_debug ("kafka: send failed topic=%s error=%s", topic,
               rd_kafka_error_string (error));
    rd_kafka_error_destroy (error);
    if (hdrs)
        rd_kafka_headers_destroy (hdrs);
    return -1;
}

rd_kafka_resp_err_t
ferry_kafka_producer_last_error (const ferry_kafka_producer_t *self)
{
    assert (self);
    return self->last_error;
}

int
ferry_kafka_producer_poll (ferry_kafka_producer_t *self)
{
    assert (self);
    /*  Drain the wake-up first: a report queued after rd_kafka_poll has
        looked writes a new byte, so nothing is left unannounced.  */
    char buf[64];
    while (read (self->wake_fds[0], buf, sizeof buf) > 0)
        ;
    return rd_kafka_poll (self->rk, 0);
}

int
ferry_kafka_producer_fd (const ferry_kafka_producer_t *self)
{
    assert (self);
    return self->wake_fds[0];
}

bool
ferry_kafka_producer_fatal (const ferry_kafka_producer_t *self)
{
    assert (self);
    return rd_kafka_fatal_error (self->rk, NULL, 0)
           != RD_KAFKA_RESP_ERR_NO_ERROR;
}

int
ferry_kafka_producer_outstanding (const ferry_kafka_producer_t *self)
{
    assert (self);
    return self->outstanding;
}

void
ferry_kafka_producer_set_flush_timeout (ferry_kafka_producer_t *self,
                                        int timeout_ms)
{
    assert (self && timeout_ms >= 0);
    self->flush_timeout_ms = timeout_ms;
}

/* ---- helpers ------------------------------------------------------------- */

/*  librdkafka's log lines, from its own threads: syslog levels mapped to
    ferry's.  */
static void
s_log (const rd_kafka_t *rk, int level, const char *facility,
       const char *message)
{
    int ferry_level = level <= 3   ? FERRY_LOG_ERROR
                      : level == 4 ? FERRY_LOG_WARN
                      : level <= 6 ? FERRY_LOG_INFO
                                   : FERRY_LOG_DEBUG;
    ferry_log (ferry_level, "kafka: librdkafka client=%s facility=%s %s",
               rk ? rd_kafka_name (rk) : "-", facility, message);
}

/*  Served by rd_kafka_poll or rd_kafka_flush on the owner's thread.  */
static void
s_delivered (rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque)
{
    (void) rk;
    ferry_kafka_producer_t *self = opaque;
    self->outstanding--;
    if (message->err)
        log_debug ("kafka: delivery failed topic=%s error=%s",
                   rd_kafka_topic_name (message->rkt),
                   rd_kafka_err2str (message->err));
    self->on_delivery (message->_private, message->err, self->arg);
}

/*  Most errors are transient (a broker down, a connection refused) and
    librdkafka retries by itself; a fatal one leaves the producer useless,
    which its owner learns from ferry_kafka_producer_fatal.  */
static void
s_error (rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void) opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t cause = rd_kafka_fatal_error (rk, why, sizeof why);
        log_error ("kafka: fatal producer error error=%s reason=%s",
                   rd_kafka_err2name (cause), why);
    }
    else
        log_warn ("kafka: error error=%s reason=%s",
                  rd_kafka_err2name ((rd_kafka_resp_err_t) err), reason);
}

static void
s_copy (char *err, size_t errlen, const char *message)
{
    if (err && errlen > 0)
        snprintf (err, errlen, "%s", message);
}

static char *
s_trim (char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen (s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

/* ---- tests ----------------------------------------------------------------
    Against librdkafka's mock cluster (rdkafka_mock.h): one in-process
    broker that speaks the Kafka protocol, can be taken down and can answer
    requests with injected errors.  Messages are consumed back with a plain
    consumer to prove each one is in the log exactly once.  */

#include <librdkafka/rdkafka_mock.h>
#include <poll.h>

/*  The Kafka protocol's ApiKey of Produce (librdkafka's RD_KAFKAP_Produce
    lives in a header it does not install).  */
#define S_API_PRODUCE 0
#define S_TEST_REPLY_TOPIC "ferry.edge-test.replies"
#define S_TEST_TRACEPARENT                                                    \
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

/*  What the delivery callback saw, per message index.  */
typedef struct {
    int count;      /* messages the test sends */
    int *reports;   /* [count]: reports per message */
    int failed;     /* reports with an error */
    int stray;      /* reports with an opaque out of range */
    rd_kafka_resp_err_t last_err;
} s_tally_t;

/*  A one-broker mock cluster; rk only hosts it.  */
typedef struct {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mc;
    const char *bootstraps;
} s_mock_t;

static void
s_tally_init (s_tally_t *tally, int count)
{
    memset (tally, 0, sizeof *tally);
    tally->count = count;
    tally->reports = ferry_calloc ((size_t) count, sizeof (int));
}

static void
s_tally_cb (void *opaque, rd_kafka_resp_err_t err, void *arg)
{
    s_tally_t *tally = arg;
    intptr_t i = (intptr_t) opaque - 1;
    if (i < 0 || i >= tally->count) {
        tally->stray++;
        return;
    }
    tally->reports[i]++;
    if (err) {
        tally->failed++;
        tally->last_err = err;
    }
}

/*  True when every message was reported exactly once.  */
static bool
s_tally_once (const s_tally_t *tally)
{
    for (int i = 0; i < tally->count; i++)
        if (tally->reports[i] != 1) {
            fprintf (stderr, "# message %d reported %d times\n", i,
                     tally->reports[i]);
            return false;
        }
    return tally->stray == 0;
}

static int
s_mock_start (s_mock_t *mock, const char *topic, int partitions)
{
    char reason[256];
    memset (mock, 0, sizeof *mock);
    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    rd_kafka_conf_set_log_cb (conf, s_log);
    mock->rk = rd_kafka_new (RD_KAFKA_PRODUCER, conf, reason, sizeof reason);
    if (!mock->rk) {
        fprintf (stderr, "# mock host: %s\n", reason);
        rd_kafka_conf_destroy (conf);
        return -1;
    }
    mock->mc = rd_kafka_mock_cluster_new (mock->rk, 1);
    if (!mock->mc
        || rd_kafka_mock_topic_create (mock->mc, topic, partitions, 1) != 0)
        return -1;
    mock->bootstraps = rd_kafka_mock_cluster_bootstraps (mock->mc);
    return 0;
}

static void
s_mock_stop (s_mock_t *mock)
{
    if (mock->mc)
        rd_kafka_mock_cluster_destroy (mock->mc);
    if (mock->rk)
        rd_kafka_destroy (mock->rk);
    memset (mock, 0, sizeof *mock);
}

/*  A producer configured through ferry_kafka_conf_new, as a daemon's would
    be; extra holds more "    - name=value\n" lines.  */
static ferry_kafka_producer_t *
s_producer (const char *bootstraps, const char *extra, s_tally_t *tally)
{
    char yaml[1024];
    char err[512];
    snprintf (yaml, sizeof yaml,
              "kafka:\n"
              "  properties:\n"
              "    - bootstrap.servers=%s\n"
              "    - reconnect.backoff.max.ms=200\n"
              "%s",
              bootstraps, extra ? extra : "");
    ferry_config_t *config = ferry_config_parse (yaml, strlen (yaml),
                                                 "test.yaml", err, sizeof err);
    if (!config) {
        fprintf (stderr, "# %s\n", err);
        return NULL;
    }
    rd_kafka_conf_t *conf = ferry_kafka_conf_new (
        config, ferry_config_node (config, NULL, "kafka"), err, sizeof err);
    ferry_config_destroy (&config);
    ferry_kafka_producer_t *producer = NULL;
    if (conf)
        producer = ferry_kafka_producer_new (&conf, s_tally_cb, tally, err,
                                             sizeof err);
    if (!producer)
        fprintf (stderr, "# %s\n", err);
    return producer;
}

/*  Sends messages [from, to): payload "m<index>", a key out of 16 so that
    partitions get several, and the headers an edge would set.  */
static int
s_send_range (ferry_kafka_producer_t *producer, const char *topic, int from,
              int to)
{
    for (int i = from; i < to; i++) {
        char payload[32], key[16], cid[32];
        snprintf (payload, sizeof payload, "m%06d", i);
        snprintf (key, sizeof key, "k%d", i % 16);
        snprintf (cid, sizeof cid, "cid-%06d", i);
        ferry_kafka_header_t headers[] = {
            {"ferry-correlation-id", cid, strlen (cid)},
            {"traceparent", S_TEST_TRACEPARENT, strlen (S_TEST_TRACEPARENT)},
            {"ferry-reply-to", S_TEST_REPLY_TOPIC,
             strlen (S_TEST_REPLY_TOPIC)},
        };
        if (ferry_kafka_producer_send (producer, topic, key, strlen (key),
                                       payload, strlen (payload), headers, 3,
                                       (void *) (intptr_t) (i + 1))
            != 0) {
            fprintf (stderr, "# send %d: %s\n", i,
                     rd_kafka_err2str (
                         ferry_kafka_producer_last_error (producer)));
            return -1;
        }
    }
    return 0;
}

/*  Waits on the producer's fd, as an event loop would, and serves it until
    nothing is outstanding; -1 after timeout_ms.  */
static int
s_drain (ferry_kafka_producer_t *producer, int timeout_ms)
{
    int64_t deadline = ferry_mono_ms () + timeout_ms;
    while (ferry_kafka_producer_outstanding (producer) > 0) {
        int64_t left = deadline - ferry_mono_ms ();
        if (left <= 0)
            return -1;
        struct pollfd pfd = {ferry_kafka_producer_fd (producer), POLLIN, 0};
        if (poll (&pfd, 1, (int) left) < 0 && errno != EINTR)
            return -1;
        ferry_kafka_producer_poll (producer);
    }
    return 0;
}

/*  Serves the producer for ms milliseconds whatever happens.  */
static void
s_serve_for (ferry_kafka_producer_t *producer, int ms)
{
    int64_t deadline = ferry_mono_ms () + ms;
    for (int64_t left = ms; left > 0; left = deadline - ferry_mono_ms ()) {
        struct pollfd pfd = {ferry_kafka_producer_fd (producer), POLLIN, 0};
        poll (&pfd, 1, (int) left);
        ferry_kafka_producer_poll (producer);
    }
}

/*  True when the message carries header name with value.  */
static bool
s_has_header (const rd_kafka_message_t *message, const char *name,
              const char *value)
{
    rd_kafka_headers_t *hdrs = NULL;
    const void *found = NULL;
    size_t size = 0;
    return rd_kafka_message_headers (message, &hdrs) == 0
           && rd_kafka_header_get_last (hdrs, name, &found, &size) == 0
           && size == strlen (value) && memcmp (found, value, size) == 0;
}

/*  Consumes topic from the start of every partition with a plain consumer
    and counts each message index in seen[count], checking key and
    headers.  Stops expect messages in, plus a moment for duplicates to
    show, or at timeout_ms.  Returns the number of messages read, -1 on a
    malformed one.  */
static int
s_consume (const char *bootstraps, const char *topic, int partitions,
           int *seen, int count, int expect, int timeout_ms)
{
    char reason[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    rd_kafka_conf_set_log_cb (conf, s_log);
    if (rd_kafka_conf_set (conf, "bootstrap.servers", bootstraps, reason,
                           sizeof reason)
            != RD_KAFKA_CONF_OK
        || rd_kafka_conf_set (conf, "group.id", "ferry-test", reason,
                              sizeof reason)
               != RD_KAFKA_CONF_OK
        || rd_kafka_conf_set (conf, "enable.auto.commit", "false", reason,
                              sizeof reason)
               != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy (conf);
        return -1;
    }
    rd_kafka_t *rk = rd_kafka_new (RD_KAFKA_CONSUMER, conf, reason,
                                   sizeof reason);
    if (!rk) {
        rd_kafka_conf_destroy (conf);
        return -1;
    }
    rd_kafka_poll_set_consumer (rk);
    rd_kafka_topic_partition_list_t *list
        = rd_kafka_topic_partition_list_new (partitions);
    for (int p = 0; p < partitions; p++)
        rd_kafka_topic_partition_list_add (list, topic, p)->offset
            = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign (rk, list);
    rd_kafka_topic_partition_list_destroy (list);

    int got = 0;
    int64_t deadline = ferry_mono_ms () + timeout_ms;
    int64_t settle = 0;
    while (ferry_mono_ms () < deadline
           && (settle == 0 || ferry_mono_ms () < settle)) {
        rd_kafka_message_t *message = rd_kafka_consumer_poll (rk, 50);
        if (!message)
            continue;
        if (message->err) {
            rd_kafka_message_destroy (message);
            continue;
        }
        char payload[32] = "", cid[32], key[16];
        if (message->len < sizeof payload)
            memcpy (payload, message->payload, message->len);
        int64_t i = -1;
        if (payload[0] == 'm')
            ferry_parse_int64 (payload + 1, &i);
        snprintf (cid, sizeof cid, "cid-%06d", (int) i);
        snprintf (key, sizeof key, "k%d", (int) (i % 16));
        bool good = i >= 0 && i < count && message->key_len == strlen (key)
                    && memcmp (message->key, key, message->key_len) == 0
                    && s_has_header (message, "ferry-correlation-id", cid)
                    && s_has_header (message, "traceparent",
                                     S_TEST_TRACEPARENT)
                    && s_has_header (message, "ferry-reply-to",
                                     S_TEST_REPLY_TOPIC);
        rd_kafka_message_destroy (message);
        if (!good) {
            got = -1;
            break;
        }
        seen[i]++;
        if (++got == expect)
            settle = ferry_mono_ms () + 300;
    }
    rd_kafka_consumer_close (rk);
    rd_kafka_destroy (rk);
    return got;
}

/*  True when topic holds messages [0, count) exactly once each.  */
static bool
s_log_holds (const char *bootstraps, const char *topic, int partitions,
             int count)
{
    int *seen = ferry_calloc ((size_t) count, sizeof (int));
    int got = s_consume (bootstraps, topic, partitions, seen, count, count,
                         10000);
    bool once = got == count;
    for (int i = 0; once && i < count; i++)
        once = seen[i] == 1;
    if (!once)
        fprintf (stderr, "# consumed %d of %d, not each exactly once\n", got,
                 count);
    free (seen);
    return once;
}

/*  librdkafka's warnings (a broker down is the point of some tests) would
    clutter the TAP output: the tests run quiet unless verbose.  */
static int
s_run_quiet (int (*test) (bool), bool verbose)
{
    int level = ferry_log_level;
    if (!verbose)
        ferry_log_level = -1;
    int rc = test (verbose);
    ferry_log_level = level;
    /*  Every librdkafka instance and its threads must be gone, or the
        leak checker would blame the next test.  */
    if (rd_kafka_wait_destroyed (5000) != 0) {
        fprintf (stderr, "# librdkafka instances left behind\n");
        rc = 1;
    }
    return rc;
}

/*  Returns the error of conf_new on the YAML text ("" when it succeeds).  */
static const char *
s_conf_error (const char *yaml)
{
    static char err[1024];
    err[0] = '\0';
    ferry_config_t *config
        = ferry_config_parse (yaml, strlen (yaml), "t.yaml", err, sizeof err);
    if (!config)
        return err;
    rd_kafka_conf_t *conf = ferry_kafka_conf_new (
        config, ferry_config_node (config, NULL, "kafka"), err, sizeof err);
    if (conf) {
        err[0] = '\0';
        rd_kafka_conf_destroy (conf);
    }
    ferry_config_destroy (&config);
    return err;
}

static bool
s_conf_is (rd_kafka_conf_t *conf, const char *name, const char *expected)
{
    char value[256];
    size_t size = sizeof value;
    return rd_kafka_conf_get (conf, name, value, &size) == RD_KAFKA_CONF_OK
           && strcmp (value, expected) == 0;
}

int ferry_kafka_conf_test (bool verbose);
int
ferry_kafka_conf_test (bool verbose)
{
    const char *yaml = "kafka:\n"
                       "  properties:\n"
                       "    - bootstrap.servers=127.0.0.1:9092,[::1]:9093\n"
                       "    - security.protocol = sasl_ssl\n"
                       "    - sasl.mechanisms=PLAIN\n"
                       "    - sasl.username=ferry\n"
                       "    - sasl.password=a=b c\n"
                       "    - client.id=ferry-test\n"
                       "    - message.timeout.ms=30000\n";
    char err[512];
    ferry_config_t *config = ferry_config_parse (yaml, strlen (yaml),
                                                 "t.yaml", err, sizeof err);
    FERRY_CHECK (config);
    /*  The command line can append or replace items (--set).  */
    FERRY_CHECK (ferry_config_set (config,
                                   "kafka.properties[7]=linger.ms=7")
                 == 0);
    FERRY_CHECK (ferry_config_set (config,
                                   "kafka.properties[5]=client.id=cli")
                 == 0);
    rd_kafka_conf_t *conf = ferry_kafka_conf_new (
        config, ferry_config_node (config, NULL, "kafka"), err, sizeof err);
    FERRY_CHECK (conf);
    FERRY_CHECK (s_conf_is (conf, "bootstrap.servers",
                            "127.0.0.1:9092,[::1]:9093"));
    FERRY_CHECK (s_conf_is (conf, "security.protocol", "sasl_ssl"));
    FERRY_CHECK (s_conf_is (conf, "sasl.password", "a=b c"));
    FERRY_CHECK (s_conf_is (conf, "client.id", "cli"));
    FERRY_CHECK (s_conf_is (conf, "linger.ms", "7"));
    FERRY_CHECK (s_conf_is (conf, "message.timeout.ms", "30000"));
    FERRY_CHECK (ferry_config_check_unused (config, "kafka") == 0);
    rd_kafka_conf_destroy (conf);
    /*  No section, no properties, empty properties: librdkafka defaults.  */
    conf = ferry_kafka_conf_new (config, NULL, err, sizeof err);
    FERRY_CHECK (conf);
    rd_kafka_conf_destroy (conf);
    ferry_config_destroy (&config);
    FERRY_CHECK (strcmp (s_conf_error ("kafka: {}\n"), "") == 0);
    FERRY_CHECK (strcmp (s_conf_error ("kafka:\n  properties:\n"), "") == 0);
    FERRY_CHECK (strcmp (s_conf_error ("kafka: {properties: []}\n"), "")
                 == 0);

    /*  Refusals name file, line, path and the property.  */
    const char *e = s_conf_error ("kafka:\n"
                                  "  properties:\n"
                                  "    - acks=all\n"
                                  "    - no.such.thing=1\n");
    if (verbose)
        fprintf (stderr, "# %s\n", e);
    FERRY_CHECK (strncmp (e, "t.yaml:4: kafka.properties[1]: no.such.thing: ",
                          46)
                 == 0);
    e = s_conf_error ("kafka:\n  properties: [acks=sometimes]\n");
    if (verbose)
        fprintf (stderr, "# %s\n", e);
    FERRY_CHECK (strncmp (e, "t.yaml:2: kafka.properties[0]: acks: ", 37)
                 == 0);
    e = s_conf_error ("kafka:\n  properties:\n    - bootstrap.servers\n");
    FERRY_CHECK (strcmp (e, "t.yaml:3: kafka.properties[0]: expected "
                            "\"name=value\"")
                 == 0);
    e = s_conf_error ("kafka:\n  properties:\n    - \" =x\"\n");
    FERRY_CHECK (strcmp (e, "t.yaml:3: kafka.properties[0]: empty property "
                            "name")
                 == 0);
    e = s_conf_error ("kafka:\n  properties:\n    - {a: b}\n");
    FERRY_CHECK (strcmp (e, "t.yaml:3: kafka.properties[0]: expected "
                            "\"name=value\"")
                 == 0);
    e = s_conf_error ("kafka:\n  properties: acks=all\n");
    FERRY_CHECK (strcmp (e, "t.yaml:2: kafka.properties: expected a sequence "
                            "of \"name=value\" strings")
                 == 0);
    e = s_conf_error ("kafka:\n  properties: {acks: all}\n");
    FERRY_CHECK (strstr (e, "kafka.properties: expected a sequence"));
    e = s_conf_error ("kafka: 3\n");
    FERRY_CHECK (strcmp (e, "t.yaml:1: kafka: expected a map") == 0);
    return 0;
}

static int
s_produce_test (bool verbose)
{
    (void) verbose;
    const int count = 1000;
    s_mock_t mock;
    s_tally_t tally;
    s_tally_init (&tally, count);
    FERRY_CHECK (s_mock_start (&mock, "ferry.test.requests", 4) == 0);
    ferry_kafka_producer_t *producer
        = s_producer (mock.bootstraps, NULL, &tally);
    FERRY_CHECK (producer);
    FERRY_CHECK (ferry_kafka_producer_fd (producer) >= 0);
    FERRY_CHECK (!ferry_kafka_producer_fatal (producer));
    FERRY_CHECK (s_send_range (producer, "ferry.test.requests", 0, count)
                 == 0);
    FERRY_CHECK (ferry_kafka_producer_outstanding (producer) == count);
    FERRY_CHECK (s_drain (producer, 10000) == 0);
    FERRY_CHECK (tally.failed == 0);
    FERRY_CHECK (s_tally_once (&tally));
    ferry_kafka_producer_destroy (&producer);
    ferry_kafka_producer_destroy (&producer);
    FERRY_CHECK (s_tally_once (&tally));
    FERRY_CHECK (
        s_log_holds (mock.bootstraps, "ferry.test.requests", 4, count));
    s_mock_stop (&mock);
    free (tally.reports);
    return 0;
}

int ferry_kafka_produce_test (bool verbose);
int
ferry_kafka_produce_test (bool verbose)
{
    return s_run_quiet (s_produce_test, verbose);
}

/*  Messages sent while the only broker is down wait in the local queue and
    are delivered, once, when it is back.  */
static int
s_broker_down_test (bool verbose)
{
    (void) verbose;
    const int count = 100;
    s_mock_t mock;
    s_tally_t tally;
    s_tally_init (&tally, count);
    FERRY_CHECK (s_mock_start (&mock, "ferry.test.down", 2) == 0);
    ferry_kafka_producer_t *producer
        = s_producer (mock.bootstraps, NULL, &tally);
    FERRY_CHECK (producer);
    FERRY_CHECK (s_send_range (producer, "ferry.test.down", 0, count / 2)
                 == 0);
    FERRY_CHECK (s_drain (producer, 10000) == 0);
    FERRY_CHECK (tally.failed == 0);

    FERRY_CHECK (rd_kafka_mock_broker_set_down (mock.mc, 1) == 0);
    FERRY_CHECK (s_send_range (producer, "ferry.test.down", count / 2, count)
                 == 0);
    s_serve_for (producer, 500);
    FERRY_CHECK (ferry_kafka_producer_outstanding (producer) == count / 2);
    FERRY_CHECK (rd_kafka_mock_broker_set_up (mock.mc, 1) == 0);
    FERRY_CHECK (s_drain (producer, 10000) == 0);
    FERRY_CHECK (tally.failed == 0);
    FERRY_CHECK (s_tally_once (&tally));
    FERRY_CHECK (!ferry_kafka_producer_fatal (producer));
    ferry_kafka_producer_destroy (&producer);
    FERRY_CHECK (s_log_holds (mock.bootstraps, "ferry.test.down", 2, count));
    s_mock_stop (&mock);
    free (tally.reports);
    return 0;
}

int ferry_kafka_broker_down_test (bool verbose);
int
ferry_kafka_broker_down_test (bool verbose)
{
    return s_run_quiet (s_broker_down_test, verbose);
}

/*  Produce requests answered with retriable errors are retried by
    librdkafka; each message still lands once.  */
static int
s_retry_test (bool verbose)
{
    (void) verbose;
    const int count = 100;
    s_mock_t mock;
    s_tally_t tally;
    s_tally_init (&tally, count);
    FERRY_CHECK (s_mock_start (&mock, "ferry.test.retry", 1) == 0);
    ferry_kafka_producer_t *producer
        = s_producer (mock.bootstraps, NULL, &tally);
    FERRY_CHECK (producer);
    rd_kafka_mock_push_request_errors (
        mock.mc, S_API_PRODUCE, 3, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS);
    FERRY_CHECK (s_send_range (producer, "ferry.test.retry", 0, count) == 0);
    FERRY_CHECK (s_drain (producer, 10000) == 0);
    FERRY_CHECK (tally.failed == 0);
    FERRY_CHECK (s_tally_once (&tally));
    ferry_kafka_producer_destroy (&producer);
    FERRY_CHECK (s_log_holds (mock.bootstraps, "ferry.test.retry", 1, count));
    s_mock_stop (&mock);
    free (tally.reports);
    return 0;
}

int ferry_kafka_retry_test (bool verbose);
int
ferry_kafka_retry_test (bool verbose)
{
    return s_run_quiet (s_retry_test, verbose);
}

/*  A full local queue refuses at once; destroy then purges what waits and
    still reports each message.  */
static int
s_queue_full_test (bool verbose)
{
    (void) verbose;
    s_mock_t mock;
    s_tally_t tally;
    s_tally_init (&tally, 5);
    FERRY_CHECK (s_mock_start (&mock, "ferry.test.full", 1) == 0);
    FERRY_CHECK (rd_kafka_mock_broker_set_down (mock.mc, 1) == 0);
    ferry_kafka_producer_t *producer = s_producer (
        mock.bootstraps, "    - queue.buffering.max.messages=5\n", &tally);
    FERRY_CHECK (producer);
    FERRY_CHECK (s_send_range (producer, "ferry.test.full", 0, 5) == 0);
    int64_t start = ferry_mono_ms ();
    FERRY_CHECK (ferry_kafka_producer_send (producer, "ferry.test.full", NULL,
                                            0, "x", 1, NULL, 0, NULL)
                 == -1);
    FERRY_CHECK (ferry_mono_ms () - start < 100);
    FERRY_CHECK (ferry_kafka_producer_last_error (producer)
                 == RD_KAFKA_RESP_ERR__QUEUE_FULL);
    FERRY_CHECK (ferry_kafka_producer_outstanding (producer) == 5);
    ferry_kafka_producer_set_flush_timeout (producer, 200);
    start = ferry_mono_ms ();
    ferry_kafka_producer_destroy (&producer);
    FERRY_CHECK (ferry_mono_ms () - start < 3000);
    FERRY_CHECK (s_tally_once (&tally));
    FERRY_CHECK (tally.failed == 5);
    FERRY_CHECK (tally.last_err == RD_KAFKA_RESP_ERR__PURGE_QUEUE
                 || tally.last_err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT);
    s_mock_stop (&mock);
    free (tally.reports);
    return 0;
}

int ferry_kafka_queue_full_test (bool verbose);
int
ferry_kafka_queue_full_test (bool verbose)
{
    return s_run_quiet (s_queue_full_test, verbose);
}

/*  Destroy right after sending delivers everything first.  */
static int
s_flush_test (bool verbose)
{
    (void) verbose;
    const int count = 200;
    s_mock_t mock;
    s_tally_t tally;
    s_tally_init (&tally, count);
    FERRY_CHECK (s_mock_start (&mock, "ferry.test.flush", 2) == 0);
    ferry_kafka_producer_t *producer
        = s_producer (mock.bootstraps, NULL, &tally);
    FERRY_CHECK (producer);
    FERRY_CHECK (s_send_range (producer, "ferry.test.flush", 0, count) == 0);
    ferry_kafka_producer_destroy (&producer);
    FERRY_CHECK (tally.failed == 0);
    FERRY_CHECK (s_tally_once (&tally));
    FERRY_CHECK (s_log_holds (mock.bootstraps, "ferry.test.flush", 2, count));
    s_mock_stop (&mock);
    free (tally.reports);
    return 0;
}

int ferry_kafka_flush_test (bool verbose);
int
ferry_kafka_flush_test (bool verbose)
{
    return s_run_quiet (s_flush_test, verbose);
}

/*  After a fatal error the producer refuses to send and says so; a new one
    (what the owner builds) works.  */
static int
s_fatal_test (bool verbose)
{
    (void) verbose;
    s_mock_t mock;
    s_tally_t tally;
    s_tally_init (&tally, 20);
    FERRY_CHECK (s_mock_start (&mock, "ferry.test.fatal", 1) == 0);
    ferry_kafka_producer_t *producer
        = s_producer (mock.bootstraps, NULL, &tally);
    FERRY_CHECK (producer);
    FERRY_CHECK (s_send_range (producer, "ferry.test.fatal", 0, 10) == 0);
    FERRY_CHECK (s_drain (producer, 10000) == 0);
    FERRY_CHECK (rd_kafka_test_fatal_error (
                     producer->rk,
                     RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, "test")
                 == 0);
    FERRY_CHECK (ferry_kafka_producer_fatal (producer));
    FERRY_CHECK (ferry_kafka_producer_send (producer, "ferry.test.fatal",
                                            NULL, 0, "x", 1, NULL, 0, NULL)
                 == -1);
    FERRY_CHECK (ferry_kafka_producer_last_error (producer)
                 == RD_KAFKA_RESP_ERR__FATAL);
    ferry_kafka_producer_poll (producer);
    ferry_kafka_producer_destroy (&producer);

    producer = s_producer (mock.bootstraps, NULL, &tally);
    FERRY_CHECK (producer);
    FERRY_CHECK (s_send_range (producer, "ferry.test.fatal", 10, 20) == 0);
    FERRY_CHECK (s_drain (producer, 10000) == 0);
    FERRY_CHECK (tally.failed == 0);
    FERRY_CHECK (s_tally_once (&tally));
    ferry_kafka_producer_destroy (&producer);
    FERRY_CHECK (s_log_holds (mock.bootstraps, "ferry.test.fatal", 1, 20));
    s_mock_stop (&mock);
    free (tally.reports);
    return 0;
}

int ferry_kafka_fatal_test (bool verbose);
int
ferry_kafka_fatal_test (bool verbose)
{
    return s_run_quiet (s_fatal_test, verbose);
}

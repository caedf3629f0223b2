/*  edge_loop.c: one event loop of ferry-edge (see edge_loop.h).

    The loop thread owns everything here: the libmicrohttpd daemon (run in
    external mode: we wait on its epoll fd, then call MHD_run), the DEALER
    socket to the broker, the pending table (msg_id -> parked request) and
    a deadline heap.  Nothing is locked because nothing is shared except
    the read-only settings and the per-client limits table (which locks
    itself, edge_clients.h).

    SIGHUP: main sends RELOAD with new settings.  The loop swaps its
    pointer; every request holds a reference to the settings it began
    under (its route points into their table), so the old ones are freed
    when the last request under them ends, and a keep-alive connection's
    next request sees the new routes.

    A request goes through libmicrohttpd's access handler several times:
      1st call   headers only: limits, request id, trace, route, query
                 arguments, Content-Length and Content-Type checks;
      next calls body chunks, counted against the route's max_body;
      last call  upload complete: body to msgpack, envelope, send REQ,
                 suspend the connection and park it under its msg_id;
      resumed    the reply (or the deadline) resumed it: queue the response.
    Responses are queued from the second call onwards, never the first,
    except for errors on requests that announced a body: answering on the
    first call makes libmicrohttpd 0.9.75 close the connection (fine for a
    413: the body is never read; fatal to keep-alive otherwise).

    ZeroMQ's ZMQ_FD only signals edges: after it fires, and after every
    send (a send can consume the edge), the loop reads ZMQ_EVENTS and
    drains until POLLIN clears, and never sleeps while POLLIN is set.  */

#include "ferry.h"
#include "log.h"
#include "proto.h"
#include "edge_http.h"
#include "edge_jobs.h"
#include "edge_loop.h"
#include "kafka.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/*  How long a draining loop waits for its pending requests.  */
#define S_DRAIN_MS 5000
/*  How long a stopping loop may flush its Kafka producer while the
    cluster answers (kafka.h's default is 5 s, too long per loop).  */
#define S_FLUSH_MS 2000
/*  libmicrohttpd 0.9.75 keeps each header field and query argument as a
    record of 56 bytes in the connection's pool, rounded up to 16.  */
#define S_MHD_RECORD 64
/*  Query arguments a head at every limit may carry on top of its
    max_header_count fields.  */
#define S_EXTRA_RECORDS 64
/*  Finished requests a loop keeps for reuse, and the largest msgpack
    buffer it keeps with them: reuse spares a calloc and an 8 KiB malloc
    (msgpack's first buffer) per request.  */
#define S_SPARE_MAX 64
#define S_KEEP_BUFFER (64 * 1024)
/*  Body bytes read and dropped after a 413 before the edge closes.  */
#define S_DISCARD_MIN (1024 * 1024)
/*  Longest Prefer: wait=N honoured on GET /jobs/{id}.  */
#define S_MAX_GET_WAIT_MS 60000
/*  A job answered 202 is remembered (for a late 503/504 from the broker,
    which marks it failed) until its deadline and this much more.  */
#define S_ACCEPTED_GRACE 2000
#define S_ACCEPTED_MAX 100000

typedef enum {
    S_HEAD = 0,   /* first call not yet seen */
    S_BODY = 1,   /* accepted; reading the body */
    S_PARKED = 2, /* suspended, waiting for the reply */
    S_ANSWER = 3, /* out holds the response to queue */
    S_DB = 4      /* suspended, waiting for a jobs statement */
} s_stage_t;

/*  What a request does with a job (docs/edge.md "Asynchronous jobs").  */
typedef enum {
    J_NONE = 0, /* a plain request, or a sync one whose budget gave up */
    J_SUBMIT,   /* async: job_submit in flight (S_DB) */
    J_ACK,      /* async: published, waiting for the ACK or the delivery
                   report (parked) */
    J_WAIT,     /* async with Prefer wait: accepted, waiting for the reply
                   (parked) */
    J_BUDGET,   /* sync with async_after: the reply within budget (parked) */
    J_LATE,     /* async_after passed: job_submit in flight (S_DB) */
    J_FETCH,    /* reading the job to answer 200 with it (S_DB) */
    J_GET,      /* GET /jobs/{id}: reading the job (S_DB) */
    J_GET_WAIT  /* GET with wait: parked until its notification */
} s_job_t;

typedef struct _edge_loop_t edge_loop_t;

/*  One TCP connection, from libmicrohttpd's STARTED notification to its
    CLOSED one.  libmicrohttpd's connection timeout counts idle time only,
    so a client that sends its head a byte at a time is never idle and
    would hold the connection (and its memory pool) for ever: the loop
    gives every head connection_timeout from the connection's start (or
    the end of the previous request on it) and shuts the socket down when
    it has not arrived by then.  */
typedef struct s_conn_t {
    struct s_conn_t *prev, *next; /* in the loop's list */
    struct MHD_Connection *conn;
    int fd;
    int64_t head_since;   /* monotonic ms the head being read began */
    bool in_request;      /* head complete, request not yet finished */
    bool cut;             /* shut down by us, waiting for CLOSED */
} s_conn_t;

/*  One HTTP request, from its first handler call to MHD's completion
    callback.  */
typedef struct s_req_t {
    edge_loop_t *loop;
    edge_settings_t *settings;   /* referenced: req->route lives in it */
    struct MHD_Connection *conn;
    s_stage_t stage;
    const edge_route_t *route;   /* NULL for /healthz, /readyz and errors */
    msgpack_sbuffer args;        /* packed on the first call */
    char request_id[129];        /* X-Request-Id, kept or generated */
    char msg_id[FERRY_ID_LEN + 1];
    char traceparent[FERRY_TRACEPARENT_LEN + 1];
    char *idempotency_key;       /* NULL when absent */
    char *kafka_key;             /* Kafka message key; NULL: the cid */
    size_t kafka_key_len;
    edge_ct_t ctype;             /* request Content-Type */
    bool want_msgpack;           /* Accept prefers msgpack */
    char *body;                  /* accumulated body */
    size_t body_len, body_cap;
    size_t discarded;            /* body bytes dropped after a 413 */
    size_t heap_index;           /* in loop->heap, SIZE_MAX when not */
    int64_t deadline_mono;       /* for the local timer */
    uint64_t deadline_wall;      /* travels in the envelope */
    int64_t started;             /* monotonic ms, for the access log */
    edge_output_t out;           /* what to answer */
    struct s_req_t *next_spare;  /* in loop->spare while unused */
    /*  Jobs.  */
    s_job_t job;
    char job_id[EDGE_JOB_ID_LEN + 1]; /* "" when none */
    edge_prefer_t prefer;
    bool async_asked;            /* Prefer: respond-async was honoured */
    bool waited;                 /* GET: the wait is over, answer now */
    bool jobs_busy;              /* a jobs statement refers to req */
    bool waiting;                /* in loop->waiters under job_id */
    struct s_req_t *next_waiter;
    char *envelope;              /* async: the REQ payload to publish */
    size_t envelope_len;
    int64_t route_deadline;      /* monotonic: the route's own deadline */
    /*  Per-client limits: the client's key and ticket, 0 when none.  */
    uint64_t client_ticket;
    char client_key[EDGE_CLIENT_KEY_SIZE];
} s_req_t;

/*  A job answered 202 whose reply may still come (see S_ACCEPTED_GRACE).  */
typedef struct {
    char job_id[EDGE_JOB_ID_LEN + 1];
    int64_t until;
} s_accepted_t;

struct _edge_loop_t {
    zsock_t *pipe;                   /* to the parent (main) */
    edge_settings_t *settings;       /* shared, read-only, referenced;
                                        replaced on RELOAD */
    size_t index;                    /* for logs */
    struct MHD_Daemon *daemon;       /* NULL until START */
    zsock_t *dealer;                 /* to the broker frontend */
    void *dealer_handle;             /* libzmq handle of dealer */
    int epoll_fd;
    zhashx_t *pending;      /* msg_id -> s_req_t, not owning */
    s_req_t **heap;         /* pending by deadline_mono, a binary heap */
    size_t heap_size;       /* same as zhashx_size (pending) */
    size_t active;          /* requests alive (handler seen, not done) */
    s_req_t *spare;         /* finished requests kept for reuse */
    size_t nspare;
    msgpack_sbuffer payload; /* the REQ being encoded, reused */
    int64_t next_heartbeat; /* monotonic ms */
    int64_t last_broker;    /* monotonic ms of the last broker message */
    bool broker_gone;       /* the broker said BYE (it is stopping) and
                               no HB came since: send it nothing */
    char *services;         /* services with workers, last HB: " a b " */
    /*  A send on a ZeroMQ socket may run its pending commands and so
        consume the ZMQ_FD edge: after one the socket must be read (or
        ZMQ_EVENTS asked) before the loop may sleep.  */
    bool dealer_sent;       /* sent on the DEALER since the last drain */
    bool pipe_sent;         /* sent on the pipe since it was last read */
    bool draining;
    int64_t drain_deadline;
    bool drained_sent;
    bool terminated;
    /*  Kafka routes: this loop's own producer (kafka.h: one thread owns a
        producer) and the PULL socket the reply consumer feeds.  */
    edge_kafka_t *kafka;              /* shared; NULL without Kafka */
    ferry_kafka_producer_t *producer;
    zsock_t *replies;
    /*  Jobs: this loop's PostgreSQL connection (NULL when no route makes
        jobs), the GETs waiting per job id, the jobs answered 202.  */
    edge_jobs_t *jobs;
    zhashx_t *waiters;   /* job id -> first s_req_t, via next_waiter */
    zhashx_t *accepted;  /* msg_id -> s_accepted_t */
    int64_t next_prune;
    s_conn_t *conns;        /* every open connection, newest first */
    int64_t next_head_check; /* monotonic ms */
};

/* ---- deadline heap ---------------------------------------------------------
    Replies usually come long before the deadline, so removals from the
    middle are the common case: each request knows its index.  */

static void
s_heap_swap (edge_loop_t *self, size_t a, size_t b)
{
    s_req_t *t = self->heap[a];
    self->heap[a] = self->heap[b];
    self->heap[b] = t;
    self->heap[a]->heap_index = a;
    self->heap[b]->heap_index = b;
}

static void
s_heap_up (edge_loop_t *self, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (self->heap[parent]->deadline_mono <= self->heap[i]->deadline_mono)
            break;
        s_heap_swap (self, i, parent);
        i = parent;
    }
}

static void
s_heap_down (edge_loop_t *self, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < self->heap_size
            && self->heap[l]->deadline_mono < self->heap[m]->deadline_mono)
            m = l;
        if (r < self->heap_size
            && self->heap[r]->deadline_mono < self->heap[m]->deadline_mono)
            m = r;
        if (m == i)
            return;
        s_heap_swap (self, i, m);
        i = m;
    }
}

/*  Parks req: pending table and heap.  The heap array was sized for
    max_inflight at start.  Returns false when it is full.  */
static bool
s_park (edge_loop_t *self, s_req_t *req)
{
    if (self->heap_size >= self->settings->max_inflight)
        return false;
    zhashx_insert (self->pending, req->msg_id, req);
    req->heap_index = self->heap_size;
    self->heap[self->heap_size++] = req;
    s_heap_up (self, req->heap_index);
    req->stage = S_PARKED;
    return true;
}

/*  Takes req out of the GETs waiting for its job.  */
static void
s_waiter_remove (edge_loop_t *self, s_req_t *req)
{
    if (!req->waiting)
        return;
    req->waiting = false;
    s_req_t *head = zhashx_lookup (self->waiters, req->job_id);
    if (head == req) {
        if (req->next_waiter)
            zhashx_update (self->waiters, req->job_id, req->next_waiter);
        else
            zhashx_delete (self->waiters, req->job_id);
    }
    else
        for (s_req_t *w = head; w; w = w->next_waiter)
            if (w->next_waiter == req) {
                w->next_waiter = req->next_waiter;
                break;
            }
    req->next_waiter = NULL;
}

static void
s_unpark (edge_loop_t *self, s_req_t *req)
{
    s_waiter_remove (self, req);
    if (req->heap_index == SIZE_MAX)
        return;
    zhashx_delete (self->pending, req->msg_id);
    size_t i = req->heap_index;
    self->heap_size--;
    if (i != self->heap_size) {
        s_heap_swap (self, i, self->heap_size);
        s_heap_up (self, i);
        s_heap_down (self, self->heap[i]->heap_index);
    }
    req->heap_index = SIZE_MAX;
}

/*  The reply (or the deadline) is in req->out: wake the connection so MHD
    calls the handler again, which queues the response.  */
static void
s_answer_parked (edge_loop_t *self, s_req_t *req)
{
    s_unpark (self, req);
    req->stage = S_ANSWER;
    MHD_resume_connection (req->conn);
}

/* ---- requests ------------------------------------------------------------ */

/*  Empties buf for reuse; frees it if a large request made it big.  */
static void
s_buffer_reuse (msgpack_sbuffer *buf)
{
    if (buf->alloc > S_KEEP_BUFFER) {
        msgpack_sbuffer_destroy (buf);
        msgpack_sbuffer_init (buf);
    }
    else
        msgpack_sbuffer_clear (buf);
}

static s_req_t *
s_req_new (edge_loop_t *self, struct MHD_Connection *conn)
{
    s_req_t *req = self->spare;
    if (req) {
        /*  A spare is all zero but for its args buffer (see below).  */
        self->spare = req->next_spare;
        self->nspare--;
        req->next_spare = NULL;
    }
    else {
        req = ferry_calloc (1, sizeof *req);
        msgpack_sbuffer_init (&req->args);
    }
    req->loop = self;
    req->settings = edge_settings_ref (self->settings);
    req->conn = conn;
    req->heap_index = SIZE_MAX;
    req->started = ferry_mono_ms ();
    self->active++;
    return req;
}

/*  Ends req: frees what it holds, then keeps it as a spare (zeroed, with
    its emptied args buffer) or frees it.  */
static void
s_req_destroy (s_req_t **req_p)
{
    s_req_t *req = *req_p;
    if (!req)
        return;
    edge_loop_t *self = req->loop;
    s_unpark (self, req);
    if (req->jobs_busy && self->jobs)
        edge_jobs_cancel (self->jobs, req);
    free (req->envelope);
    self->active--;
    free (req->idempotency_key);
    free (req->kafka_key);
    free (req->body);
    edge_output_clear (&req->out);
    if (req->client_ticket)
        edge_clients_release (req->settings->clients, req->client_key,
                              req->client_ticket, ferry_mono_ms ());
    edge_settings_unref (&req->settings);
    if (self->nspare < S_SPARE_MAX) {
        msgpack_sbuffer args = req->args;
        s_buffer_reuse (&args);
        memset (req, 0, sizeof *req);
        req->args = args;
        req->next_spare = self->spare;
        self->spare = req;
        self->nspare++;
    }
    else {
        msgpack_sbuffer_destroy (&req->args);
        free (req);
    }
    *req_p = NULL;
}

static void
s_fail (s_req_t *req, unsigned status, const char *detail)
{
    edge_output_problem (&req->out, status, detail, req->request_id);
    req->stage = S_ANSWER;
}

/*  Hands req->out to libmicrohttpd.  Returns MHD_YES, or MHD_NO when the
    response could not be queued (MHD then closes the connection).  */
static enum MHD_Result
s_queue (s_req_t *req)
{
    edge_output_t *out = &req->out;
    struct MHD_Response *resp;
    if (out->body) {
        resp = MHD_create_response_from_buffer (out->len, out->body,
                                                MHD_RESPMEM_MUST_FREE);
        if (resp)
            out->body = NULL; /* MHD frees it with free() */
    }
    else
        resp = MHD_create_response_from_buffer (0, NULL,
                                                MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    if (out->content_type && out->len)
        MHD_add_response_header (resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                 out->content_type);
    MHD_add_response_header (resp, "X-Request-Id", req->request_id);
    if (out->allow[0])
        MHD_add_response_header (resp, MHD_HTTP_HEADER_ALLOW, out->allow);
    if (out->retry_after[0])
        MHD_add_response_header (resp, MHD_HTTP_HEADER_RETRY_AFTER,
                                 out->retry_after);
    if (out->traceresponse[0])
        MHD_add_response_header (resp, "traceresponse", out->traceresponse);
    if (out->location[0])
        MHD_add_response_header (resp, MHD_HTTP_HEADER_LOCATION,
                                 out->location);
    if (out->preference_applied[0])
        MHD_add_response_header (resp, "Preference-Applied",
                                 out->preference_applied);
    if (out->replayed)
        MHD_add_response_header (resp, "Idempotent-Replayed", "true");
    if (req->loop->draining)
        MHD_add_response_header (resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response (req->conn, out->status, resp);
    MHD_destroy_response (resp);
    log_debug ("request id=%s route=\"%s\" status=%u ms=%lld",
               req->request_id,
               req->route ? edge_route_template (req->route) : "-",
               out->status, (long long) (ferry_mono_ms () - req->started));
    return rc;
}

typedef struct {
    edge_head_t head;
    int status;
    char err[128];
} s_head_ctx_t;

static enum MHD_Result
s_head_field (void *cls, enum MHD_ValueKind kind, const char *key,
              size_t key_size, const char *value, size_t value_size)
{
    (void) kind;
    (void) key;
    (void) value;
    s_head_ctx_t *ctx = cls;
    ctx->status = edge_head_add (&ctx->head, key_size, value_size, ctx->err,
                                 sizeof ctx->err);
    return ctx->status ? MHD_NO : MHD_YES;
}

static const char *
s_query_value (void *ctx, const char *name)
{
    return MHD_lookup_connection_value (ctx, MHD_GET_ARGUMENT_KIND, name);
}

static const char *
s_header (s_req_t *req, const char *name)
{
    return MHD_lookup_connection_value (req->conn, MHD_HEADER_KIND, name);
}

static enum MHD_Result
s_prefer_field (void *cls, enum MHD_ValueKind kind, const char *key,
                size_t key_size, const char *value, size_t value_size)
{
    (void) kind;
    (void) value_size;
    if (key_size == 6 && strncasecmp (key, "Prefer", 6) == 0 && value)
        edge_prefer_parse (cls, value);
    return MHD_YES;
}

/*  Reads every Prefer field of the request (RFC 7240 allows several).  */
static void
s_read_prefer (s_req_t *req)
{
    edge_prefer_init (&req->prefer);
    MHD_get_connection_values_n (req->conn, MHD_HEADER_KIND, s_prefer_field,
                                 &req->prefer);
}

/*  /readyz: the broker answered heartbeats recently and every service a
    route uses has a worker.  */
static void
s_readyz (edge_loop_t *self, s_req_t *req)
{
    const edge_settings_t *st = self->settings;
    int64_t now = ferry_mono_ms ();
    bool broker = self->last_broker && !self->broker_gone
                  && now - self->last_broker
                         <= st->liveness * st->heartbeat_ms;
    json_t *missing = json_array ();
    for (size_t i = 0; i < st->nservices; i++) {
        char needle[FERRY_NAME_MAX + 3];
        snprintf (needle, sizeof needle, " %s ", st->services[i]);
        if (!broker || !self->services || !strstr (self->services, needle))
            json_array_append_new (missing, json_string (st->services[i]));
    }
    bool ready = broker && json_array_size (missing) == 0;
    json_t *body = json_pack ("{s:s, s:b, s:o}", "status",
                              ready ? "ready" : "not ready", "broker",
                              broker, "missing_workers", missing);
    /*  Kafka's state is reported, not required: ZeroMQ routes serve
        without it and Kafka routes answer 503 at once while it is away.  */
    if (self->kafka)
        json_object_set_new (body, "kafka",
                             json_boolean (edge_kafka_ready (self->kafka)));
    /*  Likewise the job store: only job operations need it.  */
    if (self->jobs)
        json_object_set_new (body, "jobs",
                             json_boolean (edge_jobs_ready (self->jobs)));
    edge_output_clear (&req->out);
    req->out.status = ready ? 200 : 503;
    req->out.body = json_dumps (body, JSON_COMPACT);
    req->out.len = req->out.body ? strlen (req->out.body) : 0;
    req->out.content_type = "application/json";
    json_decref (body);
    req->stage = S_ANSWER;
}

static void
s_healthz (s_req_t *req)
{
    edge_output_clear (&req->out);
    req->out.status = 200;
    req->out.body = ferry_strdup ("{\"status\":\"ok\"}");
    req->out.len = strlen (req->out.body);
    req->out.content_type = "application/json";
    req->stage = S_ANSWER;
}

/*  The first handler call: everything the head decides.  Leaves req in
    S_BODY (go on) or S_ANSWER (out holds an error or a health answer).  */
/*  The key of req's client (edge_clients.h): "h:" and the configured
    header's value, or "a:" and the remote address.  */
static void
s_client_key (s_req_t *req, const edge_clients_conf_t *conf)
{
    const char *value = conf->header ? s_header (req, conf->header) : NULL;
    if (value && *value) {
        snprintf (req->client_key, sizeof req->client_key, "h:%.*s",
                  EDGE_CLIENT_KEY_MAX, value);
        return;
    }
    char host[INET6_ADDRSTRLEN] = "?";
    const union MHD_ConnectionInfo *info = MHD_get_connection_info (
        req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = info ? info->client_addr : NULL;
    if (sa && sa->sa_family == AF_INET)
        inet_ntop (AF_INET, &((const struct sockaddr_in *) sa)->sin_addr,
                   host, sizeof host);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop (AF_INET6, &((const struct sockaddr_in6 *) sa)->sin6_addr,
                   host, sizeof host);
    snprintf (req->client_key, sizeof req->client_key, "a:%s", host);
}

/*  Per-client limits: admits req, or answers it 429 with Retry-After.
    Returns true when admitted (or no limits are set).  */
static bool
s_client_admit (s_req_t *req)
{
    edge_clients_t *clients = req->settings->clients;
    if (!clients)
        return true;
    s_client_key (req, &req->settings->client_limits);
    unsigned retry = 1;
    edge_client_verdict_t v = edge_clients_admit (
        clients, req->client_key, ferry_mono_ms (), &req->client_ticket,
        &retry);
    if (v == EDGE_CLIENT_OK)
        return true;
    req->client_ticket = 0;
    log_debug ("client over its limit id=%s client=%s limit=%s",
               req->request_id, req->client_key,
               v == EDGE_CLIENT_RATE ? "rate" : "inflight");
    s_fail (req, 429, v == EDGE_CLIENT_RATE
                          ? "this client sends more requests than its rate"
                          : "this client has too many requests in flight");
    snprintf (req->out.retry_after, sizeof req->out.retry_after, "%u",
              retry);
    return false;
}

static void
s_begin (edge_loop_t *self, s_req_t *req, const char *url,
         const char *method, const char *version)
{
    const edge_settings_t *st = req->settings;
    const char *rid = s_header (req, "X-Request-Id");
    if (rid && ferry_request_id_valid (rid))
        snprintf (req->request_id, sizeof req->request_id, "%s", rid);
    else
        ferry_id_generate (req->request_id);
    ferry_traceparent_continue (s_header (req, "traceparent"),
                                req->traceparent);
    req->want_msgpack = edge_accept_msgpack (s_header (req, "Accept"));

    s_head_ctx_t head = {.status = 0};
    edge_head_init (&head.head, st->max_header_line, st->max_header_total,
                    st->max_header_count,
                    strlen (method) + strlen (url) + strlen (version) + 2);
    MHD_get_connection_values_n (req->conn, MHD_HEADER_KIND, s_head_field,
                                 &head);
    if (head.status) {
        s_fail (req, (unsigned) head.status, head.err);
        return;
    }
    bool get = strcmp (method, "GET") == 0 || strcmp (method, "HEAD") == 0;
    if (get && strcmp (url, "/healthz") == 0) {
        s_healthz (req);
        return;
    }
    if (get && strcmp (url, "/readyz") == 0) {
        s_readyz (self, req);
        return;
    }
    /*  Health checks are never limited; everything else is.  */
    if (!s_client_admit (req))
        return;
    char err[256];
    /*  GET /jobs/{id} is the edge's own, ahead of the configured routes.  */
    if (get && st->jobs && strncmp (url, "/jobs/", 6) == 0) {
        if (!edge_job_id_valid (url + 6)) {
            snprintf (err, sizeof err, "no job %.64s", url + 6);
            s_fail (req, 404, err);
            return;
        }
        for (size_t i = 0; i < EDGE_JOB_ID_LEN; i++)
            req->job_id[i] = (char) tolower ((unsigned char) url[6 + i]);
        req->job = J_GET;
        s_read_prefer (req);
        req->stage = S_BODY;
        return;
    }
    edge_match_t match;
    int status = edge_routes_match (st->routes, method, url, &match);
    if (status == 404) {
        snprintf (err, sizeof err, "no route for %s %s", method, url);
        s_fail (req, 404, err);
        return;
    }
    if (status == 405) {
        snprintf (err, sizeof err, "%s is not allowed here; use %s", method,
                  match.allow);
        s_fail (req, 405, err);
        strcpy (req->out.allow, match.allow);
        return;
    }
    req->route = match.route;
    if (edge_route_uses_jobs (req->route))
        s_read_prefer (req);
    if (edge_route_pack_args (&match, s_query_value, req->conn, &req->args,
                              err, sizeof err)
        != 0) {
        s_fail (req, 400, err);
        return;
    }
    size_t key_len = 0;
    const char *key_value = edge_route_key_value (&match, s_query_value,
                                                  req->conn, &key_len);
    if (key_value) {
        req->kafka_key = ferry_malloc (key_len + 1);
        memcpy (req->kafka_key, key_value, key_len);
        req->kafka_key[key_len] = '\0';
        req->kafka_key_len = key_len;
    }
    const char *length = s_header (req, MHD_HTTP_HEADER_CONTENT_LENGTH);
    uint64_t declared = 0;
    if (length && ferry_parse_uint64 (length, &declared) == 0
        && declared > edge_route_max_body (req->route)) {
        snprintf (err, sizeof err, "the body is larger than %llu bytes",
                  (unsigned long long) edge_route_max_body (req->route));
        s_fail (req, 413, err);
        return;
    }
    req->ctype = edge_content_type (s_header (req, "Content-Type"));
    bool body = declared > 0
                || s_header (req, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (body && req->ctype != EDGE_CT_JSON && req->ctype != EDGE_CT_MSGPACK) {
        s_fail (req, 415,
                "Content-Type must be application/json or "
                "application/msgpack");
        return;
    }
    /*  Idempotency-Key means something on POST and PATCH only (the
        httpapi draft); other methods are idempotent or safe already.  */
    const char *key = s_header (req, "Idempotency-Key");
    if (key
        && (strcmp (method, "POST") == 0 || strcmp (method, "PATCH") == 0)) {
        char value[EDGE_IDEM_MAX + 1];
        if (edge_idempotency_key (key, value, err, sizeof err) != 0) {
            s_fail (req, 400, err);
            return;
        }
        req->idempotency_key = ferry_strdup (value);
    }
    req->stage = S_BODY;
}

/*  Sends the REQ for req.  Returns 0, or -1 when the DEALER refused it
    (its queue to an absent broker is full) or the broker is stopping: a
    REQ sent to a broker that said BYE could arrive after it stopped
    reading and be lost, so the caller answers 503 instead.  */
static int
s_send (edge_loop_t *self, s_req_t *req, const msgpack_sbuffer *payload)
{
    if (self->broker_gone)
        return -1;
    const edge_route_t *route = req->route;
    const char *service = edge_route_service (route);
    char deadline[24];
    snprintf (deadline, sizeof deadline, "%llu",
              (unsigned long long) req->deadline_wall);
    /*  A request with an Idempotency-Key may run twice without a second
        effect, so it is as safe to redeliver as a GET.  An async job asks
        the broker for an ACK: the 202 waits for it.  */
    char flags[4];
    size_t nflags = 0;
    if (edge_route_retryable (route) || req->idempotency_key)
        flags[nflags++] = FERRY_FLAG_RETRYABLE;
    if (req->job == J_SUBMIT)
        flags[nflags++] = FERRY_FLAG_ACK;
    flags[nflags] = '\0';
    void *s = self->dealer_handle;
    self->dealer_sent = true;
    /*  A DEALER delivers all parts of a message or none, so only the first
        send can fail, and DONTWAIT keeps the loop from blocking when the
        broker is away and the queue is full.  */
    if (zmq_send (s, FERRY_PROTO, 4, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    zmq_send (s, FERRY_CMD_REQ, strlen (FERRY_CMD_REQ), ZMQ_SNDMORE);
    zmq_send (s, service, strlen (service), ZMQ_SNDMORE);
    zmq_send (s, req->msg_id, FERRY_ID_LEN, ZMQ_SNDMORE);
    zmq_send (s, deadline, strlen (deadline), ZMQ_SNDMORE);
    zmq_send (s, flags, strlen (flags), ZMQ_SNDMORE);
    zmq_send (s, payload->data, payload->size, 0);
    return 0;
}

/* ---- Kafka routes ----------------------------------------------------------
    A Kafka request is parked like a ZeroMQ one.  Its delivery report comes
    back to s_on_delivery on this thread (the producer's fd is in the
    loop's epoll set): a failure answers 503 at once if the request still
    waits; success needs nothing, the reply or the deadline ends it.  The
    report's opaque is a copy of the msg id, not the request, because a
    request may end (and its record be reused) before its report.  */

static void s_job_handed_over (edge_loop_t *self, s_req_t *req);

static void
s_on_delivery (void *opaque, rd_kafka_resp_err_t err, void *arg)
{
    edge_loop_t *self = arg;
    char *msg_id = opaque;
    s_req_t *req = zhashx_lookup (self->pending, msg_id);
    if (req && !err && req->job == J_ACK) {
        /*  Kafka holds the job: that is the hand-over a 202 waits for.  */
        s_job_handed_over (self, req);
        req = NULL;
    }
    else if (!err)
        req = NULL;
    if (req) {
        char detail[160];
        snprintf (detail, sizeof detail,
                  "the request could not be delivered to Kafka: %s",
                  rd_kafka_err2str (err));
        log_warn ("kafka delivery failed id=%s msg_id=%s reason=\"%s\"",
                  req->request_id, msg_id, rd_kafka_err2str (err));
        edge_output_problem (&req->out, 503, detail, req->request_id);
        strcpy (req->out.retry_after, "1");
        if (req->job == J_ACK && self->jobs)
            edge_jobs_expire (self->jobs, req->job_id, 503, detail);
        s_answer_parked (self, req);
    }
    free (msg_id);
}

static int
s_producer_start (edge_loop_t *self)
{
    char err[512];
    rd_kafka_conf_t *conf = edge_kafka_producer_conf (self->kafka);
    self->producer = ferry_kafka_producer_new (&conf, s_on_delivery, self,
                                               err, sizeof err);
    if (!self->producer) {
        log_error ("loop=%zu kafka producer: %s", self->index, err);
        return -1;
    }
    struct epoll_event ev = {
        .events = EPOLLIN,
        .data = {.fd = ferry_kafka_producer_fd (self->producer)}};
    if (epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, ev.data.fd, &ev) != 0) {
        log_error ("loop=%zu epoll: %s", self->index, strerror (errno));
        ferry_kafka_producer_destroy (&self->producer);
        return -1;
    }
    return 0;
}

/*  A fatal error (broken idempotence sequence, fenced producer id) leaves
    a producer that only fails: replace it.  Destroying it reports what it
    still held, so those requests are answered 503 now.  */
static void
s_producer_rebuild (edge_loop_t *self)
{
    log_warn ("loop=%zu rebuilding the kafka producer after a fatal error",
              self->index);
    ferry_kafka_producer_set_flush_timeout (self->producer, 0);
    ferry_kafka_producer_destroy (&self->producer);
    if (s_producer_start (self) != 0)
        log_error ("loop=%zu kafka routes answer 503 until restart",
                   self->index);
}

static void
s_producer_poll (edge_loop_t *self)
{
    if (!self->producer)
        return;
    ferry_kafka_producer_poll (self->producer);
    if (ferry_kafka_producer_fatal (self->producer))
        s_producer_rebuild (self);
}

/*  Produces req's envelope to its route's topic.  Returns 0, or -1 with
    req answered 503 (queue full, fatal error: nothing waits in vain).  */
static int
s_kafka_send (edge_loop_t *self, s_req_t *req,
              const msgpack_sbuffer *payload)
{
    const char *reply_topic = self->settings->reply_topic;
    ferry_kafka_header_t headers[] = {
        {"ferry-cid", req->request_id, strlen (req->request_id)},
        {"traceparent", req->traceparent, strlen (req->traceparent)},
        {"ferry-reply-to", reply_topic, strlen (reply_topic)},
        {"ferry-msg-id", req->msg_id, FERRY_ID_LEN},
    };
    const char *key = req->kafka_key ? req->kafka_key : req->request_id;
    size_t key_len = req->kafka_key ? req->kafka_key_len
                                    : strlen (req->request_id);
    char *opaque = ferry_strdup (req->msg_id);
    if (ferry_kafka_producer_send (self->producer,
                                   edge_route_topic (req->route), key,
                                   key_len, payload->data, payload->size,
                                   headers, 4, opaque)
        == 0)
        return 0;
    free (opaque);
    rd_kafka_resp_err_t err = ferry_kafka_producer_last_error (self->producer);
    char detail[160];
    snprintf (detail, sizeof detail, "Kafka refused the request: %s",
              rd_kafka_err2str (err));
    s_fail (req, 503, detail);
    if (err == RD_KAFKA_RESP_ERR__FATAL)
        s_producer_rebuild (self);
    return -1;
}

/* ---- jobs ------------------------------------------------------------------
    The steps of docs/edge.md "Asynchronous jobs".  A request waiting for
    a jobs statement is suspended in S_DB (not parked: no reply or
    deadline concerns it); the statement's callback moves it on.  */

static void s_job_read (edge_loop_t *self, s_req_t *req);

/*  Answers a request in S_DB (its connection is suspended).  */
static void
s_answer_db (s_req_t *req)
{
    req->stage = S_ANSWER;
    MHD_resume_connection (req->conn);
}

static void
s_fail_db (s_req_t *req, unsigned status, const char *detail)
{
    edge_output_problem (&req->out, status, detail, req->request_id);
    if (status == 503)
        strcpy (req->out.retry_after, "1");
    s_answer_db (req);
}

/*  Remembers that msg_id became job job_id answered 202, so that a
    broker's late 503/504 can mark the job failed.  */
static void
s_accepted_note (edge_loop_t *self, s_req_t *req)
{
    if (zhashx_size (self->accepted) >= S_ACCEPTED_MAX)
        return;
    s_accepted_t *a = ferry_malloc (sizeof *a);
    memcpy (a->job_id, req->job_id, sizeof a->job_id);
    a->until = req->route_deadline + S_ACCEPTED_GRACE;
    zhashx_update (self->accepted, req->msg_id, a);
}

/*  Fills out with 202 Accepted: Location and the job's first state.  */
static void
s_accepted_output (edge_loop_t *self, s_req_t *req)
{
    edge_output_t *out = &req->out;
    edge_output_clear (out);
    json_t *body = json_object ();
    char href[sizeof out->location];
    snprintf (href, sizeof href, "/jobs/%s", req->job_id);
    json_object_set_new (body, "id", json_string (req->job_id));
    json_object_set_new (body, "status", json_string ("queued"));
    json_object_set_new (body, "href", json_string (href));
    out->status = 202;
    out->body = json_dumps (body, JSON_COMPACT);
    out->len = out->body ? strlen (out->body) : 0;
    out->content_type = "application/json";
    json_decref (body);
    strcpy (out->location, href);
    if (req->async_asked)
        strcpy (out->preference_applied, "respond-async");
    s_accepted_note (self, req);
}

/*  The seconds of Prefer: wait the request gets: capped at the route's
    timeout on a submit, at S_MAX_GET_WAIT_MS on GET /jobs.  */
static int64_t
s_wait_s (const s_req_t *req)
{
    int64_t cap = req->route ? edge_route_timeout_ms (req->route) / 1000
                             : S_MAX_GET_WAIT_MS / 1000;
    return req->prefer.wait_s < cap ? req->prefer.wait_s : cap;
}

static void
s_on_fetched (void *arg, edge_jobs_result_t *r)
{
    s_req_t *req = arg;
    edge_loop_t *self = req->loop;
    req->jobs_busy = false;
    if (r->ok && r->found) {
        edge_output_clear (&req->out);
        req->out.status = 200;
        req->out.body = r->json;
        req->out.len = r->len;
        req->out.content_type = "application/json";
        r->json = NULL;
        snprintf (req->out.preference_applied,
                  sizeof req->out.preference_applied, "wait=%lld",
                  (long long) s_wait_s (req));
    }
    else
        /*  The job is accepted either way: point at it.  */
        s_accepted_output (self, req);
    s_answer_db (req);
}

/*  The reply of a submit with Prefer: wait came: answer 200 with the job
    as PostgreSQL now holds it (the worker stored the result before it
    replied).  */
static void
s_job_fetch (edge_loop_t *self, s_req_t *req)
{
    s_unpark (self, req);
    req->job = J_FETCH;
    req->stage = S_DB;
    if (edge_jobs_get (self->jobs, req->job_id, "", s_on_fetched, req) == 0)
        req->jobs_busy = true;
    else {
        s_accepted_output (self, req);
        s_answer_db (req);
    }
}

/*  The broker holds the job (ACK) or Kafka has it (delivery report).  */
static void
s_job_handed_over (edge_loop_t *self, s_req_t *req)
{
    if (req->prefer.wait_s > 0) {
        s_unpark (self, req);
        req->job = J_WAIT;
        int64_t until = ferry_mono_ms () + s_wait_s (req) * 1000;
        if (until < req->deadline_mono)
            req->deadline_mono = until;
        s_park (self, req); /* it was parked: there is room */
        return;
    }
    s_accepted_output (self, req);
    s_answer_parked (self, req);
}

/*  Publishes an async job's saved envelope once job_submit is done.  */
static void
s_on_submitted (void *arg, edge_jobs_result_t *r)
{
    s_req_t *req = arg;
    edge_loop_t *self = req->loop;
    req->jobs_busy = false;
    if (!r->ok) {
        s_fail_db (req, 503, "the job store is not reachable");
        return;
    }
    msgpack_sbuffer payload = {req->envelope_len, req->envelope,
                               req->envelope_len};
    int rc;
    if (edge_route_transport (req->route) == EDGE_TRANSPORT_KAFKA)
        rc = s_kafka_send (self, req, &payload);
    else if ((rc = s_send (self, req, &payload)) != 0)
        edge_output_problem (&req->out, 503, "the broker is not reachable",
                             req->request_id);
    free (req->envelope);
    req->envelope = NULL;
    req->job = J_ACK;
    if (rc == 0 && !s_park (self, req)) {
        edge_output_problem (&req->out, 503, "too many requests in flight",
                             req->request_id);
        rc = -1;
    }
    if (rc != 0) {
        /*  Never published, or published without anyone to wait for
            the hand-over: the queued row must not stay queued.  */
        edge_jobs_expire (self->jobs, req->job_id, 503,
                          "the job could not be handed over");
        strcpy (req->out.retry_after, "1");
        s_answer_db (req);
    }
}

/*  async_after passed and job_submit is done: 202, or, without the job
    store, the request simply goes on waiting as a sync one.  */
static void
s_on_late_submitted (void *arg, edge_jobs_result_t *r)
{
    s_req_t *req = arg;
    edge_loop_t *self = req->loop;
    req->jobs_busy = false;
    if (r->ok) {
        s_accepted_output (self, req);
        s_answer_db (req);
        return;
    }
    req->job = J_NONE;
    req->deadline_mono = req->route_deadline;
    if (req->deadline_mono <= ferry_mono_ms () || !s_park (self, req))
        s_fail_db (req, 504, "no reply within the route's timeout");
}

/*  A sync route's async_after budget ran out.  */
static void
s_budget_passed (edge_loop_t *self, s_req_t *req)
{
    s_unpark (self, req);
    if (self->jobs
        && edge_jobs_submit (self->jobs, req->job_id,
                             edge_route_service (req->route),
                             edge_route_operation (req->route), "",
                             s_on_late_submitted, req)
               == 0) {
        req->job = J_LATE;
        req->stage = S_DB;
        req->jobs_busy = true;
        /*  The reply may still come while job_submit runs: dropped, the
            worker has stored it.  A broker 503/504 expires the job.  */
        s_accepted_t *a = ferry_malloc (sizeof *a);
        memcpy (a->job_id, req->job_id, sizeof a->job_id);
        a->until = req->route_deadline + S_ACCEPTED_GRACE;
        zhashx_update (self->accepted, req->msg_id, a);
        return;
    }
    req->job = J_NONE;
    req->deadline_mono = req->route_deadline;
    s_park (self, req); /* it was parked: there is room */
}

static void
s_on_job_read (void *arg, edge_jobs_result_t *r)
{
    s_req_t *req = arg;
    edge_loop_t *self = req->loop;
    req->jobs_busy = false;
    if (!r->ok) {
        s_fail_db (req, 503, "the job store is not reachable");
        return;
    }
    if (!r->found) {
        char detail[64];
        snprintf (detail, sizeof detail, "no job %s", req->job_id);
        s_fail_db (req, 404, detail);
        return;
    }
    int64_t wait = s_wait_s (req);
    if (!r->finished && wait > 0 && !req->waited) {
        /*  LISTEN was sent when the connection opened, and this loop reads
            notifications only after the statement's callback: one that
            finishes the job after this read cannot be missed.  */
        ferry_id_generate (req->msg_id);
        req->deadline_mono = ferry_mono_ms () + wait * 1000;
        req->job = J_GET_WAIT;
        if (s_park (self, req)) {
            req->next_waiter = zhashx_lookup (self->waiters, req->job_id);
            zhashx_update (self->waiters, req->job_id, req);
            req->waiting = true;
            return;
        }
        req->stage = S_DB;
    }
    edge_output_clear (&req->out);
    req->out.status = 200;
    req->out.body = r->json;
    req->out.len = r->len;
    req->out.content_type = "application/json";
    r->json = NULL;
    if (wait > 0)
        snprintf (req->out.preference_applied,
                  sizeof req->out.preference_applied, "wait=%lld",
                  (long long) wait);
    s_answer_db (req);
}

/*  GET /jobs/{id}: reads the job (again, after a wait).  */
static void
s_job_read (edge_loop_t *self, s_req_t *req)
{
    req->job = J_GET;
    req->stage = S_DB;
    if (self->jobs
        && edge_jobs_get (self->jobs, req->job_id, "", s_on_job_read, req)
               == 0)
        req->jobs_busy = true;
    else
        s_fail_db (req, 503, "the job store is not reachable");
}

/*  A notification: the job finished.  Every GET waiting for it reads it
    again and answers.  */
static void
s_on_notify (void *arg, const char *job_id)
{
    edge_loop_t *self = arg;
    s_req_t *req = zhashx_lookup (self->waiters, job_id);
    if (!req)
        return;
    zhashx_delete (self->waiters, job_id);
    while (req) {
        s_req_t *next = req->next_waiter;
        req->waiting = false;
        req->next_waiter = NULL;
        s_unpark (self, req);
        req->waited = true;
        s_job_read (self, req);
        req = next;
    }
}

/*  A reply for a msg id no request waits for: if it was a job answered
    202 and the broker refused it after all, the job failed.  */
static void
s_late_reply (edge_loop_t *self, const char *msg_id, const void *data,
              size_t size)
{
    s_accepted_t *a = self->accepted ? zhashx_lookup (self->accepted, msg_id)
                                     : NULL;
    if (!a) {
        log_debug ("late reply dropped msg_id=%s", msg_id);
        return;
    }
    ferry_envelope_t *reply = ferry_envelope_decode (data, size, NULL, NULL,
                                                     0);
    unsigned status = reply ? ferry_envelope_status (reply) : 0;
    if ((status == 503 || status == 504) && self->jobs)
        edge_jobs_expire (self->jobs, a->job_id, status,
                          status == 503 ? "the job could not be delivered"
                                        : "the job was not run in time");
    ferry_envelope_destroy (&reply);
    zhashx_delete (self->accepted, msg_id);
}

/*  Forgets accepted jobs whose replies can no longer come.  */
static void
s_accepted_prune (edge_loop_t *self, int64_t now)
{
    if (!self->accepted || now < self->next_prune)
        return;
    self->next_prune = now + 1000;
    zlistx_t *keys = zhashx_keys (self->accepted);
    for (const char *k = zlistx_first (keys); k; k = zlistx_next (keys)) {
        s_accepted_t *a = zhashx_lookup (self->accepted, k);
        if (a && a->until <= now)
            zhashx_delete (self->accepted, k);
    }
    zlistx_destroy (&keys);
}

/*  The last handler call of a request in S_BODY: the body is complete.  */
static void
s_dispatch (edge_loop_t *self, s_req_t *req)
{
    if (req->job == J_GET) {
        if (!self->jobs
            || edge_jobs_get (self->jobs, req->job_id, "", s_on_job_read,
                              req)
                   != 0) {
            s_fail (req, 503, "the job store is not reachable");
            strcpy (req->out.retry_after, "1");
            return;
        }
        req->jobs_busy = true;
        req->stage = S_DB;
        MHD_suspend_connection (req->conn);
        return;
    }
    char err[320];
    const edge_route_t *route = req->route;
    msgpack_sbuffer body;
    msgpack_sbuffer_init (&body);
    int status = edge_body_to_msgpack (req->ctype, req->body, req->body_len,
                                       edge_route_max_body (route), &body, err,
                                       sizeof err);
    free (req->body);
    req->body = NULL;
    if (status) {
        msgpack_sbuffer_destroy (&body);
        s_fail (req, (unsigned) status, err);
        return;
    }
    if (zhashx_size (self->pending) >= self->settings->max_inflight) {
        msgpack_sbuffer_destroy (&body);
        s_fail (req, 503, "too many requests in flight");
        strcpy (req->out.retry_after, "1");
        return;
    }
    bool kafka = edge_route_transport (route) == EDGE_TRANSPORT_KAFKA;
    if (kafka && !(self->producer && edge_kafka_ready (self->kafka))) {
        msgpack_sbuffer_destroy (&body);
        s_fail (req, 503, "Kafka is not reachable");
        strcpy (req->out.retry_after, "1");
        return;
    }
    /*  An async job needs the job store now; a sync route's async_after
        only when the budget runs out, and without the store it stays a
        plain sync request.  */
    req->async_asked = edge_route_async (route) && req->prefer.respond_async;
    bool async = edge_route_mode (route) == EDGE_MODE_ASYNC
                 || req->async_asked;
    bool jobs_up = self->jobs && edge_jobs_ready (self->jobs);
    bool budget = !async && edge_route_async_after_ms (route) > 0 && jobs_up;
    if (async && !jobs_up) {
        msgpack_sbuffer_destroy (&body);
        s_fail (req, 503, "the job store is not reachable");
        strcpy (req->out.retry_after, "1");
        return;
    }
    if (async || budget)
        edge_job_id_generate (req->job_id);
    if (kafka)
        edge_kafka_msg_id (req->msg_id, self->index);
    else
        ferry_id_generate (req->msg_id);
    int64_t timeout = edge_route_timeout_ms (route);
    uint64_t now = ferry_wall_ms ();
    req->deadline_wall = now + (uint64_t) timeout;
    req->deadline_mono = ferry_mono_ms () + timeout;
    req->route_deadline = req->deadline_mono;
    edge_request_info_t info = {
        .msg_id = req->msg_id,
        .request_id = req->request_id,
        .traceparent = req->traceparent,
        .idempotency_key = req->idempotency_key,
        .job = req->job_id[0] ? req->job_id : NULL,
        .service = edge_route_service (route),
        .operation = edge_route_operation (route),
        .args = req->args.data,
        .args_len = req->args.size,
        .body = body.size ? body.data : NULL,
        .body_len = body.size,
        .created_ms = now,
        .deadline_ms = req->deadline_wall,
        .reply_to = kafka ? self->settings->reply_topic : NULL,
    };
    msgpack_sbuffer *payload = &self->payload;
    s_buffer_reuse (payload);
    int rc = edge_request_encode (&info, payload, err, sizeof err);
    msgpack_sbuffer_destroy (&body);
    if (rc != 0) {
        log_warn ("envelope failed id=%s reason=\"%s\"", req->request_id,
                  err);
        s_fail (req, 500, "the request could not be encoded");
        return;
    }
    if (async) {
        /*  The job row first, so a GET right after the 202 finds it; the
            envelope goes out when job_submit is done.  */
        req->job = J_SUBMIT;
        if (edge_jobs_submit (self->jobs, req->job_id,
                              edge_route_service (route),
                              edge_route_operation (route), "",
                              s_on_submitted, req)
            != 0) {
            s_fail (req, 503, "the job store is not reachable");
            strcpy (req->out.retry_after, "1");
            return;
        }
        req->envelope = ferry_malloc (payload->size);
        memcpy (req->envelope, payload->data, payload->size);
        req->envelope_len = payload->size;
        req->jobs_busy = true;
        req->stage = S_DB;
        MHD_suspend_connection (req->conn);
        return;
    }
    if (kafka)
        rc = s_kafka_send (self, req, payload);
    else if ((rc = s_send (self, req, payload)) != 0)
        s_fail (req, 503, "the broker is not reachable");
    if (rc != 0) {
        strcpy (req->out.retry_after, "1");
        return;
    }
    if (budget) {
        req->job = J_BUDGET;
        int64_t until = ferry_mono_ms () + edge_route_async_after_ms (route);
        if (until < req->deadline_mono)
            req->deadline_mono = until;
    }
    MHD_suspend_connection (req->conn);
    s_park (self, req); /* room was checked above */
}

static s_conn_t *
s_conn_of (struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *info = MHD_get_connection_info (
        conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? (s_conn_t *) info->socket_context : NULL;
}

/*  Keeps the list of open connections for the head deadline.  */
static void
s_on_connection (void *cls, struct MHD_Connection *conn,
                 void **socket_context,
                 enum MHD_ConnectionNotificationCode toe)
{
    edge_loop_t *self = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info = MHD_get_connection_info (
            conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        s_conn_t *c = ferry_calloc (1, sizeof *c);
        c->conn = conn;
        c->fd = info ? (int) info->connect_fd : -1;
        c->head_since = ferry_mono_ms ();
        c->next = self->conns;
        if (self->conns)
            self->conns->prev = c;
        self->conns = c;
        *socket_context = c;
    }
    else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        s_conn_t *c = *socket_context;
        if (c->prev)
            c->prev->next = c->next;
        else
            self->conns = c->next;
        if (c->next)
            c->next->prev = c->prev;
        free (c);
        *socket_context = NULL;
    }
}

/*  Shuts down the connections whose head did not arrive within the
    connection timeout; libmicrohttpd then reads the end of the stream
    and closes them.  Runs a few times a second (the loop wakes at least
    every heartbeat).  */
static void
s_heads_expire (edge_loop_t *self, int64_t now)
{
    int64_t limit = (int64_t) self->settings->connection_timeout_s * 1000;
    if (limit <= 0 || now < self->next_head_check)
        return;
    self->next_head_check = now + 200;
    for (s_conn_t *c = self->conns; c; c = c->next)
        if (!c->in_request && !c->cut && c->fd >= 0
            && now - c->head_since >= limit) {
            log_debug ("loop=%zu request head not complete after %lld ms: "
                       "closing the connection",
                       self->index, (long long) limit);
            shutdown (c->fd, SHUT_RDWR);
            c->cut = true;
        }
}

static enum MHD_Result
s_on_request (void *cls, struct MHD_Connection *conn, const char *url,
              const char *method, const char *version,
              const char *upload_data, size_t *upload_data_size,
              void **req_cls)
{
    edge_loop_t *self = cls;
    s_req_t *req = *req_cls;
    if (!req) {
        s_conn_t *c = s_conn_of (conn);
        if (c)
            c->in_request = true;
        req = s_req_new (self, conn);
        *req_cls = req;
        s_begin (self, req, url, method, version);
        /*  An error on a request that announced a body is answered now, so
            the body is never read (MHD closes the connection after it).
            Everything else waits for the next call: keep-alive.  */
        if (req->stage == S_ANSWER
            && (s_header (req, MHD_HTTP_HEADER_TRANSFER_ENCODING)
                || (s_header (req, MHD_HTTP_HEADER_CONTENT_LENGTH)
                    && strcmp (s_header (req, MHD_HTTP_HEADER_CONTENT_LENGTH),
                               "0")
                           != 0)))
            return s_queue (req);
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t size = *upload_data_size;
        *upload_data_size = 0;
        uint64_t max = req->route ? edge_route_max_body (req->route) : 0;
        if (req->stage != S_BODY) {
            /*  Over the limit while reading: libmicrohttpd 0.9.75 cannot
                answer in the middle of a body, so the rest is read and
                dropped, up to as much again (or 1 MiB), and answered 413
                at its end; a client that sends more is cut off.  */
            uint64_t allowed = max > S_DISCARD_MIN ? max : S_DISCARD_MIN;
            req->discarded += size;
            return req->discarded > allowed ? MHD_NO : MHD_YES;
        }
        if (req->body_len + size > max) {
            char err[96];
            snprintf (err, sizeof err, "the body is larger than %llu bytes",
                      (unsigned long long) max);
            free (req->body);
            req->body = NULL;
            req->discarded = req->body_len + size;
            s_fail (req, 413, err);
            return MHD_YES;
        }
        if (req->body_len + size > req->body_cap) {
            size_t cap = req->body_cap ? req->body_cap : 4096;
            while (cap < req->body_len + size)
                cap *= 2;
            req->body = ferry_realloc (req->body, cap);
            req->body_cap = cap;
        }
        memcpy (req->body + req->body_len, upload_data, size);
        req->body_len += size;
        return MHD_YES;
    }
    if (req->stage == S_BODY)
        s_dispatch (self, req);
    if (req->stage == S_ANSWER)
        return s_queue (req);
    return MHD_YES;
}

static void
s_on_completed (void *cls, struct MHD_Connection *conn, void **req_cls,
                enum MHD_RequestTerminationCode toe)
{
    (void) cls;
    s_conn_t *c = s_conn_of (conn);
    if (c) {
        /*  The next request's head on this connection starts now.  */
        c->in_request = false;
        c->head_since = ferry_mono_ms ();
    }
    s_req_t *req = *req_cls;
    if (req && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        log_debug ("request ended id=%s code=%d", req->request_id, (int) toe);
    s_req_destroy (&req);
    *req_cls = NULL;
}

static void
s_mhd_log (void *cls, const char *fmt, va_list ap)
{
    (void) cls;
    char msg[512];
    vsnprintf (msg, sizeof msg, fmt, ap);
    size_t len = strlen (msg);
    while (len && (msg[len - 1] == '\n' || msg[len - 1] == '\r'))
        msg[--len] = '\0';
    log_warn ("libmicrohttpd: %s", msg);
}

/* ---- broker side --------------------------------------------------------- */

static bool
s_frame_is (zmq_msg_t *frame, const char *text)
{
    size_t len = strlen (text);
    return zmq_msg_size (frame) == len
           && memcmp (zmq_msg_data (frame), text, len) == 0;
}

/*  A reply to an async job that is still parked: before the hand-over
    (J_ACK) a 503/504 is the broker refusing it, which the client gets and
    the job records; anything else means the job ran.  With Prefer: wait
    the job is read and answered 200, else 202.  */
static void
s_job_reply (edge_loop_t *self, s_req_t *req, const void *data, size_t size)
{
    ferry_limits_t limits = ferry_limits_default;
    limits.max_frame = FERRY_MAX_MESSAGE_DEFAULT;
    if (limits.max_string < limits.max_frame)
        limits.max_string = limits.max_frame;
    char err[256];
    ferry_envelope_t *reply
        = ferry_envelope_decode (data, size, &limits, err, sizeof err);
    unsigned status = reply ? ferry_envelope_status (reply) : 502;
    bool refused = status == 503 || status == 504;
    if (refused && self->jobs)
        edge_jobs_expire (self->jobs, req->job_id, status,
                          status == 503 ? "the job could not be delivered"
                                        : "the job was not run in time");
    if (refused && req->job == J_ACK) {
        if (edge_output_reply (&req->out, reply, req->request_id,
                               req->want_msgpack)
            != 0)
            log_warn ("reply not shown id=%s", req->request_id);
        ferry_envelope_destroy (&reply);
        s_answer_parked (self, req);
        return;
    }
    ferry_envelope_destroy (&reply);
    if (req->prefer.wait_s > 0)
        s_job_fetch (self, req);
    else {
        s_accepted_output (self, req);
        s_answer_parked (self, req);
    }
}

/*  A reply (an envelope) for msg id id (FERRY_ID_LEN characters), from
    the broker or from the Kafka reply consumer: answers the request it
    names, or drops it when that request is gone.  */
static void
s_reply (edge_loop_t *self, const void *id, const void *data, size_t size)
{
    char msg_id[FERRY_ID_LEN + 1];
    memcpy (msg_id, id, FERRY_ID_LEN);
    msg_id[FERRY_ID_LEN] = '\0';
    s_req_t *req = zhashx_lookup (self->pending, msg_id);
    if (!req) {
        s_late_reply (self, msg_id, data, size);
        return;
    }
    if (req->job == J_ACK || req->job == J_WAIT) {
        s_job_reply (self, req, data, size);
        return;
    }
    if (req->job == J_BUDGET)
        req->job = J_NONE; /* answered in time: a plain reply */
    char err[256];
    ferry_limits_t limits = ferry_limits_default;
    limits.max_frame = FERRY_MAX_MESSAGE_DEFAULT;
    if (limits.max_string < limits.max_frame)
        limits.max_string = limits.max_frame;
    ferry_envelope_t *reply
        = ferry_envelope_decode (data, size, &limits, err, sizeof err);
    if (!reply) {
        log_warn ("bad reply id=%s msg_id=%s reason=\"%s\"", req->request_id,
                  msg_id, err);
        edge_output_problem (&req->out, 502, "the reply could not be decoded",
                             req->request_id);
    }
    else {
        if (edge_output_reply (&req->out, reply, req->request_id,
                               req->want_msgpack)
            != 0)
            log_warn ("reply not shown id=%s msg_id=%s", req->request_id,
                      msg_id);
        ferry_envelope_destroy (&reply);
    }
    s_answer_parked (self, req);
}

/*  Handles one message from the broker (frames after the signature).  */
static void
s_broker_message (edge_loop_t *self, zmq_msg_t *frames, size_t count)
{
    self->last_broker = ferry_mono_ms ();
    if (count == 2 && s_frame_is (&frames[1], FERRY_CMD_BYE)) {
        /*  The broker is stopping: until a broker answers a heartbeat
            again, requests are answered 503 here.  */
        if (!self->broker_gone) {
            log_info ("loop=%zu the broker is stopping: answering 503 until "
                      "it is back", self->index);
            /*  BYE back: behind every REQ we sent it, so once the broker
                reads it, it knows none is still on its way.  */
            self->dealer_sent = true;
            if (zmq_send (self->dealer_handle, FERRY_PROTO, 4,
                          ZMQ_SNDMORE | ZMQ_DONTWAIT)
                == 4)
                zmq_send (self->dealer_handle, FERRY_CMD_BYE,
                          strlen (FERRY_CMD_BYE), 0);
        }
        self->broker_gone = true;
        return;
    }
    if (count >= 2 && s_frame_is (&frames[1], FERRY_CMD_HB)) {
        if (self->broker_gone)
            log_info ("loop=%zu the broker is back", self->index);
        self->broker_gone = false;
        /*  " a b " so that a service is found as " name ".  */
        size_t len = count >= 3 ? zmq_msg_size (&frames[2]) : 0;
        free (self->services);
        self->services = ferry_malloc (len + 3);
        self->services[0] = ' ';
        if (len)
            memcpy (self->services + 1, zmq_msg_data (&frames[2]), len);
        self->services[len + 1] = ' ';
        self->services[len + 2] = '\0';
        return;
    }
    if (count == 3 && s_frame_is (&frames[1], FERRY_CMD_ACK)
        && zmq_msg_size (&frames[2]) == FERRY_ID_LEN) {
        char msg_id[FERRY_ID_LEN + 1];
        memcpy (msg_id, zmq_msg_data (&frames[2]), FERRY_ID_LEN);
        msg_id[FERRY_ID_LEN] = '\0';
        s_req_t *req = zhashx_lookup (self->pending, msg_id);
        if (req && req->job == J_ACK)
            s_job_handed_over (self, req);
        return;
    }
    if (count != 4 || !s_frame_is (&frames[1], FERRY_CMD_REP)
        || zmq_msg_size (&frames[2]) != FERRY_ID_LEN) {
        log_warn ("loop=%zu unexpected message from the broker (%zu frames)",
                  self->index, count);
        return;
    }
    s_reply (self, zmq_msg_data (&frames[2]), zmq_msg_data (&frames[3]),
             zmq_msg_size (&frames[3]));
}

/*  Reads everything the DEALER holds, until a receive says EAGAIN.  That
    last receive also runs libzmq's pending commands (it has to, to be sure
    nothing arrived), which re-arms ZMQ_FD; asking ZMQ_EVENTS before every
    message instead would cost a poll and a getpid per message.  */
static void
s_dealer_drain (edge_loop_t *self)
{
    enum { MAX_FRAMES = 8 };
    self->dealer_sent = false;
    for (;;) {
        zmq_msg_t frames[MAX_FRAMES];
        zmq_msg_init (&frames[0]);
        if (zmq_msg_recv (&frames[0], self->dealer_handle, ZMQ_DONTWAIT)
            < 0) {
            zmq_msg_close (&frames[0]);
            if (errno == ETERM)
                self->terminated = true; /* the process is exiting */
            else if (errno != EAGAIN && errno != EINTR)
                log_warn ("loop=%zu broker socket: %s", self->index,
                          zmq_strerror (errno));
            return;
        }
        size_t count = 1;
        bool more = zmq_msg_more (&frames[0]), bad = false;
        /*  The other parts of a message are already there: ZeroMQ
            delivers all of them or none.  */
        while (more) {
            zmq_msg_t scratch, *f = count < MAX_FRAMES ? &frames[count]
                                                       : &scratch;
            zmq_msg_init (f);
            if (zmq_msg_recv (f, self->dealer_handle, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close (f);
                bad = true;
                break;
            }
            more = zmq_msg_more (f);
            if (f == &scratch) {
                zmq_msg_close (f);
                bad = true;
            }
            else
                count++;
        }
        if (!bad && count >= 2 && s_frame_is (&frames[0], FERRY_PROTO))
            s_broker_message (self, frames, count);
        else
            log_warn ("loop=%zu malformed message from the broker",
                      self->index);
        for (size_t i = 0; i < count; i++)
            zmq_msg_close (&frames[i]);
    }
}

/*  The Kafka cluster went away: the replies of the Kafka requests parked
    here could only come back through it, and their messages may sit in
    the producer until message.timeout.ms (the longest route timeout).
    Answer them 503 now rather than 504 at their deadlines.  */
static void
s_kafka_down (edge_loop_t *self)
{
    size_t count = 0;
    s_req_t **down = ferry_malloc ((self->heap_size + 1) * sizeof *down);
    for (size_t i = 0; i < self->heap_size; i++)
        /*  GET /jobs/{id} waits are parked too, without a route.  */
        if (self->heap[i]->route
            && edge_route_transport (self->heap[i]->route)
                   == EDGE_TRANSPORT_KAFKA)
            down[count++] = self->heap[i];
    for (size_t i = 0; i < count; i++) {
        s_req_t *req = down[i];
        if (req->job == J_WAIT) {
            /*  Kafka has the job already: it is accepted.  */
            s_accepted_output (self, req);
            s_answer_parked (self, req);
            continue;
        }
        if (req->job == J_ACK && self->jobs)
            edge_jobs_expire (self->jobs, req->job_id, 503,
                              "Kafka is not reachable");
        log_warn ("kafka unreachable id=%s msg_id=%s: answered 503",
                  req->request_id, req->msg_id);
        edge_output_problem (&req->out, 503, "Kafka is not reachable",
                             req->request_id);
        strcpy (req->out.retry_after, "1");
        s_answer_parked (self, req);
    }
    free (down);
}

/*  Reads every reply the Kafka consumer forwarded: [msg_id][envelope],
    or its one-part notice that the cluster went away.  Like the DEALER,
    until EAGAIN, which re-arms the socket's ZMQ_FD.  */
static void
s_replies_drain (edge_loop_t *self)
{
    void *s = zsock_resolve (self->replies);
    for (;;) {
        zmq_msg_t id, env;
        zmq_msg_init (&id);
        if (zmq_msg_recv (&id, s, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close (&id);
            return;
        }
        if (!zmq_msg_more (&id)) {
            zmq_msg_close (&id);
            if (!edge_kafka_ready (self->kafka))
                s_kafka_down (self);
            continue;
        }
        zmq_msg_init (&env);
        /*  The consumer always sends both parts (ZeroMQ delivers all
            parts or none) and checked the id's length.  */
        if (zmq_msg_more (&id) && zmq_msg_recv (&env, s, ZMQ_DONTWAIT) >= 0
            && zmq_msg_size (&id) == FERRY_ID_LEN)
            s_reply (self, zmq_msg_data (&id), zmq_msg_data (&env),
                     zmq_msg_size (&env));
        zmq_msg_close (&id);
        zmq_msg_close (&env);
    }
}

static void
s_heartbeat (edge_loop_t *self, int64_t now)
{
    if (now < self->next_heartbeat)
        return;
    self->next_heartbeat = now + self->settings->heartbeat_ms;
    self->dealer_sent = true;
    if (zmq_send (self->dealer_handle, FERRY_PROTO, 4,
                  ZMQ_SNDMORE | ZMQ_DONTWAIT)
        == 4)
        zmq_send (self->dealer_handle, FERRY_CMD_HB, strlen (FERRY_CMD_HB),
                  0);
}

/*  Answers every request whose deadline passed with 504; their late
    replies will find nothing in the table and be dropped.  */
static void
s_expire (edge_loop_t *self, int64_t now)
{
    while (self->heap_size && self->heap[0]->deadline_mono <= now) {
        s_req_t *req = self->heap[0];
        switch (req->job) {
        case J_BUDGET:
            s_budget_passed (self, req);
            continue;
        case J_WAIT:
            /*  Prefer: wait passed: the job is accepted, poll it.  */
            s_accepted_output (self, req);
            s_answer_parked (self, req);
            continue;
        case J_GET_WAIT:
            s_unpark (self, req);
            req->waited = true;
            s_job_read (self, req);
            continue;
        case J_ACK:
            edge_output_problem (&req->out, 504,
                                 "the job was not handed over in time",
                                 req->request_id);
            if (self->jobs)
                edge_jobs_expire (self->jobs, req->job_id, 504,
                                  "the job was not handed over in time");
            s_answer_parked (self, req);
            continue;
        default:
            break;
        }
        char detail[96];
        snprintf (detail, sizeof detail, "no reply within %lld ms",
                  (long long) edge_route_timeout_ms (req->route));
        log_debug ("deadline passed id=%s msg_id=%s", req->request_id,
                   req->msg_id);
        edge_output_problem (&req->out, 504, detail, req->request_id);
        s_answer_parked (self, req);
    }
}

/*  Answers everything still parked with 503 (shutting down).  */
static void
s_abandon_all (edge_loop_t *self)
{
    /*  First what waits for PostgreSQL (a failed job_submit after
        async_after parks the request again, answered just below).  */
    if (self->jobs)
        edge_jobs_fail_all (self->jobs, "the edge is shutting down");
    while (self->heap_size) {
        s_req_t *req = self->heap[0];
        edge_output_problem (&req->out, 503, "the edge is shutting down",
                             req->request_id);
        s_answer_parked (self, req);
    }
}

/* ---- the loop ------------------------------------------------------------ */

static edge_loop_t *
s_loop_new (zsock_t *pipe, const edge_loop_args_t *args)
{
    edge_loop_t *self = ferry_calloc (1, sizeof *self);
    self->pipe = pipe;
    self->settings = edge_settings_ref (args->settings);
    self->index = args->index;
    self->kafka = args->kafka;
    self->epoll_fd = -1;
    self->pending = zhashx_new ();
    /*  Keys are the requests' own msg_id buffers, alive while parked.  */
    zhashx_set_key_duplicator (self->pending, NULL);
    zhashx_set_key_destructor (self->pending, NULL);
    self->heap = ferry_calloc (self->settings->max_inflight,
                               sizeof *self->heap);
    msgpack_sbuffer_init (&self->payload);
    return self;
}

static void
s_loop_destroy (edge_loop_t **self_p)
{
    edge_loop_t *self = *self_p;
    if (!self)
        return;
    if (self->daemon) {
        /*  Resume what is parked so MHD can finish and free it.  */
        s_abandon_all (self);
        MHD_run (self->daemon);
        MHD_stop_daemon (self->daemon);
    }
    /*  Shutdown flushes: every message still queued is delivered or
        reported (its request was answered by s_abandon_all already).
        At most S_FLUSH_MS while the cluster answers, not at all while it
        is away: the loops stop one after the other and $TERM must end
        the process within seconds.  */
    if (self->producer)
        ferry_kafka_producer_set_flush_timeout (
            self->producer,
            self->kafka && edge_kafka_ready (self->kafka) ? S_FLUSH_MS : 0);
    ferry_kafka_producer_destroy (&self->producer);
    edge_jobs_destroy (&self->jobs);
    zhashx_destroy (&self->waiters);
    zhashx_destroy (&self->accepted);
    zsock_destroy (&self->replies);
    zsock_destroy (&self->dealer);
    if (self->epoll_fd >= 0)
        close (self->epoll_fd);
    zhashx_destroy (&self->pending);
    while (self->spare) {
        s_req_t *req = self->spare;
        self->spare = req->next_spare;
        msgpack_sbuffer_destroy (&req->args);
        free (req);
    }
    msgpack_sbuffer_destroy (&self->payload);
    free (self->heap);
    free (self->services);
    edge_settings_unref (&self->settings);
    free (self);
    *self_p = NULL;
}

static void
s_accepted_free (void **item)
{
    free (*item);
    *item = NULL;
}

static int
s_epoll_add (edge_loop_t *self, int fd)
{
    struct epoll_event ev = {.events = EPOLLIN, .data = {.fd = fd}};
    return epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, fd, &ev);
}

/*  START: listen and connect.  Returns 0 or -1 (logged).  */
static int
s_start (edge_loop_t *self)
{
    const edge_settings_t *st = self->settings;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME
                     | MHD_USE_ERROR_LOG;
    if (st->address.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /*  The pool holds the request head (MHD answers 431 when it does not
        fit), a record per header field and query argument, and the
        response head; our own checks give the exact limits.  It is no
        larger than that because libmicrohttpd zeroes the whole pool
        between two requests on a connection: 48 KiB of memset per request
        was 5% of the edge's time.  The unit test sends a head at every
        limit with S_EXTRA_RECORDS query arguments.  */
    size_t memory = st->max_header_total
                    + (st->max_header_count + S_EXTRA_RECORDS) * S_MHD_RECORD
                    + 4 * 1024;
    self->daemon = MHD_start_daemon (
        flags, 0, NULL, NULL, s_on_request, self,
        /*  The logger first, so no message escapes to MHD's own.  */
        MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, self, MHD_OPTION_SOCK_ADDR,
        (const struct sockaddr *) &st->address,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned) 1,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned) 1024,
        MHD_OPTION_CONNECTION_LIMIT, st->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, st->connection_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, memory,
        MHD_OPTION_STRICT_FOR_CLIENT, (int) 1, MHD_OPTION_NOTIFY_COMPLETED,
        s_on_completed, self, MHD_OPTION_NOTIFY_CONNECTION, s_on_connection,
        self, MHD_OPTION_END);
    if (!self->daemon) {
        log_error ("loop=%zu cannot listen on %s", self->index, st->listen);
        return -1;
    }
    self->dealer = zsock_new (ZMQ_DEALER);
    if (!self->dealer) {
        log_error ("loop=%zu cannot create the broker socket", self->index);
        return -1;
    }
    self->dealer_handle = zsock_resolve (self->dealer);
    zsock_set_maxmsgsize (self->dealer, FERRY_MAX_MESSAGE_DEFAULT);
    /*  While the broker is away the DEALER queues: room for every request
        the loop may have in flight, and their deadlines bound the wait. */
    zsock_set_sndhwm (self->dealer, (int) st->max_inflight + 64);
    zsock_set_rcvhwm (self->dealer, (int) st->max_inflight + 64);
    zsock_set_linger (self->dealer, 0);
    if (zsock_connect (self->dealer, "%s", st->broker) != 0) {
        log_error ("loop=%zu cannot connect to the broker at %s",
                   self->index, st->broker);
        return -1;
    }
    self->epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    const union MHD_DaemonInfo *info
        = MHD_get_daemon_info (self->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    if (self->epoll_fd < 0 || !info || s_epoll_add (self, info->epoll_fd)
        || s_epoll_add (self, zsock_fd (self->dealer))
        || s_epoll_add (self, zsock_fd (self->pipe))) {
        log_error ("loop=%zu epoll: %s", self->index, strerror (errno));
        return -1;
    }
    if (self->kafka) {
        char endpoint[128];
        edge_kafka_endpoint (self->kafka, self->index, endpoint,
                             sizeof endpoint);
        self->replies = zsock_new (ZMQ_PULL);
        if (!self->replies) {
            log_error ("loop=%zu cannot create the reply socket", self->index);
            return -1;
        }
        zsock_set_rcvhwm (self->replies, (int) st->max_inflight + 64);
        if (zsock_bind (self->replies, "%s", endpoint) != 0
            || s_epoll_add (self, zsock_fd (self->replies))
            || s_producer_start (self) != 0) {
            log_error ("loop=%zu cannot start the Kafka side", self->index);
            return -1;
        }
    }
    if (st->jobs) {
        self->jobs = edge_jobs_new (st->database, st->job_retention_ms,
                                    self->epoll_fd, self->index, s_on_notify,
                                    self);
        self->waiters = zhashx_new ();
        self->accepted = zhashx_new ();
        zhashx_set_destructor (self->accepted, s_accepted_free);
        /*  Connect now rather than on the first job.  */
        edge_jobs_process (self->jobs);
    }
    self->next_heartbeat = 0;
    return 0;
}

/*  Draining: requests that only wait for a job to finish answer now
    with what there is (the job's state, or 202) instead of 503 later.  */
static void
s_jobs_wake_all (edge_loop_t *self)
{
    size_t count = 0;
    s_req_t **wake = ferry_malloc ((self->heap_size + 1) * sizeof *wake);
    for (size_t i = 0; i < self->heap_size; i++)
        if (self->heap[i]->job == J_GET_WAIT || self->heap[i]->job == J_WAIT)
            wake[count++] = self->heap[i];
    for (size_t i = 0; i < count; i++) {
        s_req_t *req = wake[i];
        if (req->job == J_WAIT) {
            s_accepted_output (self, req);
            s_answer_parked (self, req);
        }
        else {
            s_unpark (self, req);
            req->waited = true;
            s_job_read (self, req);
        }
    }
    free (wake);
}

/*  Before a draining loop closes its listening socket: the connections
    the kernel has completed but nobody accepted yet would be reset by
    the close (with SO_REUSEPORT a new edge on the same port takes the
    new ones, but not these), so they are accepted and served too.  */
static void
s_adopt_backlog (edge_loop_t *self, MHD_socket fd)
{
    size_t adopted = 0;
    for (int i = 0; i < 4096; i++) {
        struct sockaddr_storage addr;
        socklen_t len = sizeof addr;
        int s = accept4 (fd, (struct sockaddr *) &addr, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (s < 0)
            break;
        /*  On failure libmicrohttpd closes the socket itself.  */
        if (MHD_add_connection (self->daemon, s, (struct sockaddr *) &addr,
                                len)
            == MHD_YES)
            adopted++;
    }
    if (adopted)
        log_info ("loop=%zu draining: served %zu connections still waiting "
                  "to be accepted", self->index, adopted);
}

static void
s_pipe_command (edge_loop_t *self)
{
    while (zsock_events (self->pipe) & ZMQ_POLLIN) {
        zmsg_t *msg = zmsg_recv (self->pipe);
        if (!msg) {
            self->terminated = true;
            return;
        }
        char *cmd = zmsg_popstr (msg);
        if (cmd && streq (cmd, "$TERM"))
            self->terminated = true;
        else if (cmd && streq (cmd, "START")) {
            int rc = self->daemon ? -1 : s_start (self);
            zsock_signal (self->pipe, rc == 0 ? 0 : 1);
        }
        else if (cmd && streq (cmd, "RELOAD")) {
            /*  The reference main took for us comes with the pointer;
                ours on the old settings goes, requests keep theirs.  */
            zframe_t *frame = zmsg_pop (msg);
            edge_settings_t *fresh = NULL;
            if (frame && zframe_size (frame) == sizeof fresh)
                memcpy (&fresh, zframe_data (frame), sizeof fresh);
            zframe_destroy (&frame);
            if (fresh) {
                edge_settings_unref (&self->settings);
                self->settings = fresh;
            }
            zsock_signal (self->pipe, fresh ? 0 : 1);
            self->pipe_sent = true;
        }
        else if (cmd && streq (cmd, "DRAIN") && self->daemon
                 && !self->draining) {
            self->draining = true;
            self->drain_deadline = ferry_mono_ms () + S_DRAIN_MS;
            /*  Stop accepting: other loops' sockets stay open until they
                drain too, then the port closes.  */
            MHD_socket fd = MHD_quiesce_daemon (self->daemon);
            if (fd != MHD_INVALID_SOCKET) {
                s_adopt_backlog (self, fd);
                close (fd);
            }
            s_jobs_wake_all (self);
        }
        else
            log_warn ("loop=%zu unknown command %s", self->index,
                      cmd ? cmd : "(none)");
        free (cmd);
        zmsg_destroy (&msg);
    }
}

static int
s_timeout (edge_loop_t *self, int64_t now)
{
    int64_t t = self->next_heartbeat - now;
    if (self->heap_size && self->heap[0]->deadline_mono - now < t)
        t = self->heap[0]->deadline_mono - now;
    if (self->jobs) {
        int64_t j = edge_jobs_timeout (self->jobs, now);
        if (j >= 0 && j < t)
            t = j;
    }
    if (self->draining && t > 50)
        t = 50;
    MHD_UNSIGNED_LONG_LONG mhd;
    if (MHD_get_timeout (self->daemon, &mhd) == MHD_YES
        && (int64_t) mhd < t)
        t = (int64_t) mhd;
    return t < 0 ? 0 : (int) t;
}

/*  One round: read what the broker sent, expire, heartbeat, and let MHD
    handle its sockets once, which may send new requests.  */
static void
s_work (edge_loop_t *self, bool dealer_ready, bool kafka_ready,
        bool jobs_ready)
{
    if (dealer_ready || self->dealer_sent)
        s_dealer_drain (self);
    if (kafka_ready) {
        s_replies_drain (self);
        s_producer_poll (self);
    }
    int64_t now = ferry_mono_ms ();
    if (self->jobs
        && (jobs_ready || edge_jobs_timeout (self->jobs, now) == 0))
        edge_jobs_process (self->jobs);
    s_accepted_prune (self, now);
    s_expire (self, now);
    s_heads_expire (self, now);
    s_heartbeat (self, now);
    MHD_run (self->daemon);
}

static void
s_run (edge_loop_t *self)
{
    struct epoll_event events[6];
    int dealer_fd = zsock_fd (self->dealer), pipe_fd = zsock_fd (self->pipe);
    self->pipe_sent = true; /* START was answered on it */
    while (!self->terminated) {
        if (self->draining && !self->drained_sent) {
            int64_t now = ferry_mono_ms ();
            if (self->active == 0 || now >= self->drain_deadline) {
                if (self->active)
                    log_warn ("loop=%zu drain timed out with %zu requests",
                              self->index, self->active);
                s_abandon_all (self);
                MHD_run (self->daemon);
                zstr_send (self->pipe, "DRAINED");
                self->drained_sent = true;
                self->pipe_sent = true;
            }
        }
        /*  After a send the DEALER must be drained before sleeping: the
            send may have consumed its edge, and the replies it waits for
            may be there already.  */
        int timeout = s_timeout (self, ferry_mono_ms ());
        if (self->pipe_sent || self->dealer_sent)
            timeout = 0;
        int n = epoll_wait (self->epoll_fd, events, 6, timeout);
        if (n < 0 && errno != EINTR) {
            log_error ("loop=%zu epoll_wait: %s", self->index,
                       strerror (errno));
            break;
        }
        bool dealer_ready = false, pipe_ready = self->pipe_sent;
        /*  The reply socket and the producer are cheap to check, so any
            of their fds (or MHD's) firing serves both.  */
        bool kafka_ready = false, jobs_ready = false;
        for (int i = 0; i < n; i++) {
            if (events[i].data.fd == dealer_fd)
                dealer_ready = true;
            else if (events[i].data.fd == pipe_fd)
                pipe_ready = true;
            else if (self->jobs
                     && events[i].data.fd == edge_jobs_fd (self->jobs))
                jobs_ready = true;
            else if (self->kafka)
                kafka_ready = true;
        }
        if (pipe_ready) {
            /*  s_pipe_command reads until ZMQ_EVENTS says no more, which
                also covers its own replies on the pipe.  */
            self->pipe_sent = false;
            s_pipe_command (self);
            if (self->terminated)
                break;
        }
        s_work (self, dealer_ready, kafka_ready, jobs_ready);
    }
}

void
edge_loop_actor (zsock_t *pipe, void *args)
{
    edge_loop_t *self = s_loop_new (pipe, args);
    zsock_signal (pipe, 0);
    /*  Commands until START succeeds; then the epoll loop.  */
    while (!self->terminated && !self->daemon) {
        zmsg_t *msg = zmsg_recv (pipe);
        if (!msg)
            break;
        char *cmd = zmsg_popstr (msg);
        if (cmd && streq (cmd, "START")) {
            int rc = s_start (self);
            zsock_signal (pipe, rc == 0 ? 0 : 1);
            if (rc != 0) {
                /*  Keep the daemon pointer meaning "started": a half
                    started loop waits for $TERM only.  */
                if (self->daemon) {
                    MHD_stop_daemon (self->daemon);
                    self->daemon = NULL;
                }
            }
        }
        else if (cmd && streq (cmd, "$TERM"))
            self->terminated = true;
        free (cmd);
        zmsg_destroy (&msg);
    }
    if (self->daemon)
        s_run (self);
    s_loop_destroy (&self);
}

/* ---- tests ------------------------------------------------------------------
    A real loop on a free port, a ROUTER in the test standing in for the
    broker, and plain sockets for the HTTP client: keep-alive, a reply
    found by msg_id, 404, 405 with Allow, 504 with the late reply dropped,
    /healthz.  */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>

static int
s_test_port (void)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (fd < 0 || bind (fd, (struct sockaddr *) &sa, sizeof sa) != 0
        || getsockname (fd, (struct sockaddr *) &sa, &len) != 0) {
        if (fd >= 0)
            close (fd);
        return -1;
    }
    close (fd);
    return ntohs (sa.sin_port);
}

static int
s_test_connect (int port)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons ((uint16_t) port)};
    sa.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    if (fd >= 0 && connect (fd, (struct sockaddr *) &sa, sizeof sa) == 0)
        return fd;
    if (fd >= 0)
        close (fd);
    return -1;
}

/*  Sends a request and reads one response (head and Content-Length body)
    into buf.  Returns its length, or -1 on timeout or close.  */
static ssize_t
s_test_http (int fd, const char *request, char *buf, size_t size)
{
    if (request && write (fd, request, strlen (request))
                       != (ssize_t) strlen (request))
        return -1;
    size_t got = 0;
    int64_t until = ferry_mono_ms () + 3000;
    for (;;) {
        buf[got] = '\0';
        char *end = strstr (buf, "\r\n\r\n");
        if (end) {
            const char *cl = strcasestr (buf, "Content-Length: ");
            size_t body = cl && cl < end ? strtoul (cl + 16, NULL, 10) : 0;
            if (got >= (size_t) (end + 4 - buf) + body)
                return (ssize_t) got;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int64_t left = until - ferry_mono_ms ();
        if (left <= 0 || poll (&p, 1, (int) left) != 1)
            return -1;
        ssize_t n = read (fd, buf + got, size - 1 - got);
        if (n <= 0)
            return -1;
        got += (size_t) n;
    }
}

/*  Receives the next REQ at the fake broker (skipping heartbeats).  */
static zmsg_t *
s_test_broker_req (zsock_t *router)
{
    for (int i = 0; i < 20; i++) {
        zmsg_t *msg = zmsg_recv (router);
        if (!msg)
            return NULL;
        zmsg_first (msg);             /* identity */
        zframe_t *cmd = zmsg_next (msg); /* signature */
        cmd = zmsg_next (msg);
        if (cmd && zframe_streq (cmd, FERRY_CMD_REQ))
            return msg;
        zmsg_destroy (&msg);
    }
    return NULL;
}

/*  Answers a REQ with status and a JSON-ish body {"id": N}.  */
static int
s_test_broker_reply (zsock_t *router, zmsg_t *req, unsigned status)
{
    zframe_t *identity = zmsg_first (req);
    zframe_t *msg_id = NULL;
    for (int i = 0; i < 4; i++) /* signature, REQ, service, msg_id */
        msg_id = zmsg_next (req);
    zframe_t *payload = zmsg_last (req);
    char err[200];
    ferry_envelope_t *env = ferry_envelope_decode (
        zframe_data (payload), zframe_size (payload), NULL, err, sizeof err);
    if (!env)
        return -1;
    ferry_envelope_t *rep = ferry_envelope_new_reply (env, status);
    const msgpack_object *id = ferry_envelope_arg (env, "id");
    char body[16];
    body[0] = (char) 0x81;
    body[1] = (char) 0xa2;
    body[2] = 'i';
    body[3] = 'd';
    body[4] = (char) (id ? id->via.u64 & 0x7f : 0);
    ferry_envelope_set_body_raw (rep, body, 5, err, sizeof err);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init (&buf);
    ferry_envelope_encode (rep, &buf);
    zmsg_t *out = zmsg_new ();
    zmsg_append (out, &(zframe_t *) {zframe_dup (identity)});
    zmsg_addstr (out, FERRY_PROTO);
    zmsg_addstr (out, FERRY_CMD_REP);
    zmsg_append (out, &(zframe_t *) {zframe_dup (msg_id)});
    zmsg_addmem (out, buf.data, buf.size);
    int rc = zmsg_send (&out, router);
    msgpack_sbuffer_destroy (&buf);
    ferry_envelope_destroy (&rep);
    ferry_envelope_destroy (&env);
    return rc;
}

/*  Writes a GET of /users/42 with S_EXTRA_RECORDS query arguments and a
    head whose size by our rules (edge_head_add: method, path, version and
    2, then name + 2 + value + 2 per field) is exactly total, with count
    fields, one of them a line of line bytes.  */
static void
s_test_big_head (char *out, size_t size, size_t total, size_t count,
                 size_t line)
{
    char url[16 + 2 * S_EXTRA_RECORDS] = "/users/42?q";
    for (size_t i = 1; i < S_EXTRA_RECORDS; i++)
        strcat (url, "&q");
    /*  The handler sees the path without the query, and counts that.  */
    size_t used = strlen ("GET") + strlen ("/users/42")
                  + strlen ("HTTP/1.1") + 2 + 9 + line + 2 + (count - 2) * 9;
    size_t spread = total - used, fillers = count - 2;
    size_t len = (size_t) snprintf (out, size,
                                    "GET %s HTTP/1.1\r\nHost: t\r\n"
                                    "X-Big: %0*d\r\n",
                                    url, (int) (line - 7), 0);
    for (size_t i = 0; i < fillers; i++) {
        size_t v = spread / fillers + (i < spread % fillers ? 1 : 0);
        len += (size_t) snprintf (out + len, size - len, "X-F%02zu: %0*d\r\n",
                                  i, (int) v, 0);
    }
    snprintf (out + len, size - len, "\r\n");
}

int
edge_loop_test (bool verbose)
{
    zsock_t *router = zsock_new_router ("tcp://127.0.0.1:*");
    FERRY_CHECK (router);
    zsock_set_rcvtimeo (router, 3000);
    int port = s_test_port ();
    FERRY_CHECK (port > 0);

    edge_settings_t st = {0};
    /*  The test's own reference: the loop's never free this record.  */
    atomic_init (&st.refs, 1);
    char listen[32];
    snprintf (listen, sizeof listen, "127.0.0.1:%d", port);
    st.listen = listen;
    struct sockaddr_in *sa = (struct sockaddr_in *) &st.address;
    sa->sin_family = AF_INET;
    sa->sin_port = htons ((uint16_t) port);
    sa->sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    st.address_len = sizeof *sa;
    st.broker = (char *) zsock_endpoint (router);
    st.loops = 1;
    st.max_connections = 16;
    st.max_inflight = 16;
    st.connection_timeout_s = 5;
    st.max_header_line = 8192;
    st.max_header_total = 16384;
    st.max_header_count = 100;
    st.heartbeat_ms = 1000;
    st.liveness = 3;
    st.routes = edge_routes_new ();
    char err[256];
    FERRY_CHECK (edge_routes_add (st.routes, "GET /users/{id:int}", "app",
                                  "get_user", 2000, 1024, err, sizeof err));
    FERRY_CHECK (edge_routes_add (st.routes, "POST /users", "app",
                                  "create_user", 2000, 16, err, sizeof err));
    FERRY_CHECK (edge_routes_add (st.routes, "GET /slow", "app", "slow", 200,
                                  1024, err, sizeof err));

    edge_loop_args_t args = {&st, 0, NULL};
    zactor_t *loop = zactor_new (edge_loop_actor, &args);
    zstr_send (loop, "START");
    FERRY_CHECK (zsock_wait (loop) == 0);
    int fd = s_test_connect (port);
    FERRY_CHECK (fd >= 0);
    char buf[8192];

    /*  A routed request: the reply finds its connection by msg_id.  */
    const char *get = "GET /users/42 HTTP/1.1\r\nHost: t\r\n"
                      "X-Request-Id: test-1\r\n\r\n";
    FERRY_CHECK (write (fd, get, strlen (get)) == (ssize_t) strlen (get));
    zmsg_t *req = s_test_broker_req (router);
    FERRY_CHECK (req);
    FERRY_CHECK (s_test_broker_reply (router, req, 200) == 0);
    zmsg_destroy (&req);
    FERRY_CHECK (s_test_http (fd, NULL, buf, sizeof buf) > 0);
    if (verbose)
        printf ("# %s\n", buf);
    FERRY_CHECK (strncmp (buf, "HTTP/1.1 200", 12) == 0);
    FERRY_CHECK (strcasestr (buf, "X-Request-Id: test-1\r\n"));
    FERRY_CHECK (!strcasestr (buf, "Connection: close"));
    FERRY_CHECK (strstr (buf, "\r\n\r\n{\"id\":42}"));

    /*  Same connection (keep-alive): 404, 405 with Allow, /healthz.  */
    FERRY_CHECK (s_test_http (fd, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", buf,
                              sizeof buf)
                 > 0);
    FERRY_CHECK (strncmp (buf, "HTTP/1.1 404", 12) == 0);
    FERRY_CHECK (strcasestr (buf, "application/problem+json"));
    FERRY_CHECK (strcasestr (buf, "X-Request-Id: "));
    FERRY_CHECK (strstr (buf, "\"request_id\""));
    FERRY_CHECK (s_test_http (fd, "PUT /users HTTP/1.1\r\nHost: t\r\n\r\n",
                              buf, sizeof buf)
                 > 0);
    FERRY_CHECK (strncmp (buf, "HTTP/1.1 405", 12) == 0);
    FERRY_CHECK (strcasestr (buf, "Allow: POST\r\n"));
    FERRY_CHECK (s_test_http (fd, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
                              buf, sizeof buf)
                 > 0);
    FERRY_CHECK (strncmp (buf, "HTTP/1.1 200", 12) == 0);
    FERRY_CHECK (strstr (buf, "{\"status\":\"ok\"}"));
    /*  415 and 400 on bodies; the connection stays usable after both.  */
    FERRY_CHECK (s_test_http (fd,
                              "POST /users HTTP/1.1\r\nHost: t\r\n"
                              "Content-Type: application/json\r\n"
                              "Content-Length: 3\r\n\r\n{x}",
                              buf, sizeof buf)
                 > 0);
    FERRY_CHECK (strncmp (buf, "HTTP/1.1 400", 12) == 0);
    /*  413 from Content-Length, answered before the body is read.  */
    FERRY_CHECK (s_test_http (fd,
                              "POST /users HTTP/1.1\r\nHost: t\r\n"
                              "Content-Type: application/json\r\n"
                              "Content-Length: 100\r\n\r\n",
                              buf, sizeof buf)
                 > 0);
    FERRY_CHECK (strncmp (buf, "HTTP/1.1 413", 12) == 0);
    close (fd);

    /*  A head at every limit at once, with query arguments too, is served
        (libmicrohttpd's pool is sized for it); one byte more is our 431
        with a problem body.  */
    char *head = ferry_malloc (st.max_header_total + 1024);
    s_test_big_head (head, st.max_header_total + 1024, st.max_header_total,
                     st.max_header_count, st.max_header_line);
    fd = s_test_connect (port);
    FERRY_CHECK (fd >= 0);
    FERRY_CHECK (write (fd, head, strlen (head)) == (ssize_t) strlen (head));
    req = s_test_broker_req (router);
    FERRY_CHECK (req);
    FERRY_CHECK (s_test_broker_reply (router, req, 200) == 0);
    zmsg_destroy (&req);
    FERRY_CHECK (s_test_http (fd, NULL, buf, sizeof buf) > 0);
    FERRY_CHECK (strncmp (buf, "HTTP/1.1 200", 12) == 0);
    close (fd);
    s_test_big_head (head, st.max_header_total + 1024,
                     st.max_header_total + 1, st.max_header_count,
                     st.max_header_line);
    fd = s_test_connect (port);
    FERRY_CHECK (fd >= 0);
    FERRY_CHECK (s_test_http (fd, head, buf, sizeof buf) > 0);
    if (verbose)
        printf ("# %.300s\n", buf);
    FERRY_CHECK (strncmp (buf, "HTTP/1.1 431", 12) == 0);
    FERRY_CHECK (strstr (buf, "application/problem+json"));
    close (fd);
    free (head);

    /*  504 when the backend stays silent; the late reply is dropped.  */
    fd = s_test_connect (port);
    FERRY_CHECK (fd >= 0);
    int64_t t0 = ferry_mono_ms ();
    FERRY_CHECK (s_test_http (fd, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n", buf,
                              sizeof buf)
                 > 0);
    FERRY_CHECK (strncmp (buf, "HTTP/1.1 504", 12) == 0);
    FERRY_CHECK (ferry_mono_ms () - t0 >= 190);
    req = s_test_broker_req (router);
    FERRY_CHECK (req);
    FERRY_CHECK (s_test_broker_reply (router, req, 200) == 0);
    zmsg_destroy (&req);
    FERRY_CHECK (s_test_http (fd, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
                              buf, sizeof buf)
                 > 0);
    FERRY_CHECK (strncmp (buf, "HTTP/1.1 200", 12) == 0);
    close (fd);

    zactor_destroy (&loop);
    edge_routes_destroy (&st.routes);
    zsock_destroy (&router);
    return 0;
}

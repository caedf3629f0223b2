/*  edge_jobs.c: a loop's non-blocking PostgreSQL connection for jobs (see
    edge_jobs.h).

    The connection goes DOWN -> CONNECTING (PQconnectStart/PQconnectPoll,
    whose socket may change between polls, so it is re-registered each
    time) -> READY (LISTEN ferry_jobs sent first, then the queued
    statements one at a time).  One statement in flight keeps the result
    handling plain: its results are read until PQgetResult says NULL, then
    its callback runs and the next statement is sent.  A statement is a
    short function call on an index, so the round trip is the cost; the
    loop is never blocked by it.

    Callbacks run from edge_jobs_process or edge_jobs_fail_all, never from
    the call that queues a statement, and may queue statements themselves.
    SQL never holds request text: every value travels as a parameter.  */

#include "ferry.h"
#include "log.h"
#include "edge_http.h"
#include "edge_jobs.h"

#include <errno.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define S_BACKOFF_MIN 100
#define S_BACKOFF_MAX 5000

typedef enum { S_DOWN = 0, S_CONNECTING = 1, S_READY = 2 } s_state_t;

typedef enum { S_OP_LISTEN, S_OP_SUBMIT, S_OP_EXPIRE, S_OP_GET } s_kind_t;

#define S_MAX_PARAMS 5

typedef struct s_op_t {
    s_kind_t kind;
    char *values[S_MAX_PARAMS]; /* owned */
    int lengths[S_MAX_PARAMS];
    int formats[S_MAX_PARAMS];
    int nparams;
    edge_jobs_fn *fn;
    void *arg;
    struct s_op_t *next;
} s_op_t;

struct _edge_jobs_t {
    char *conninfo;
    char retention[48]; /* "N milliseconds" */
    int epoll_fd;
    size_t index;
    edge_jobs_notify_fn *notify;
    void *notify_arg;
    PGconn *conn;
    s_state_t state;
    int watched_fd;          /* in the epoll set, -1 when none */
    uint32_t watched_events;
    int64_t next_attempt;    /* monotonic ms, while DOWN */
    int64_t backoff;
    bool logged_down;        /* "unreachable" logged since the last success */
    s_op_t *head, *tail;     /* queued; head is in flight when sent */
    bool head_sent;
    PGresult *result;        /* the in-flight statement's first result */
};

static const char *s_sql[] = {
    [S_OP_LISTEN] = "LISTEN ferry_jobs",
    [S_OP_SUBMIT] = "SELECT ferry.job_submit($1::uuid, $2, $3, $4, "
                    "$5::interval)",
    [S_OP_EXPIRE] = "SELECT ferry.job_expire($1::uuid, $2::int, $3::jsonb, "
                    "$4::bytea, $5::interval)",
    /*  Expired rows the cleanup has not reached yet are gone already.  */
    [S_OP_GET]
    = "SELECT id::text, status, service, operation, attempts, "
      "to_char(created_at AT TIME ZONE 'UTC', "
      "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
      "to_char(updated_at AT TIME ZONE 'UTC', "
      "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
      "to_char(finished_at AT TIME ZONE 'UTC', "
      "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
      "result_status, result_headers::text, result_body, error::text "
      "FROM ferry.jobs WHERE id = $1::uuid AND principal = $2 "
      "AND (expires_at IS NULL OR expires_at > now())",
};

/* ---- epoll --------------------------------------------------------------- */

static void
s_unwatch (edge_jobs_t *self)
{
    if (self->watched_fd >= 0)
        epoll_ctl (self->epoll_fd, EPOLL_CTL_DEL, self->watched_fd, NULL);
    self->watched_fd = -1;
    self->watched_events = 0;
}

/*  Keeps the connection's current socket in the epoll set with events.
    libpq may close a socket and open another between connection polls,
    and the new one may even get the old number (the kernel dropped the
    old registration with it): MOD then fails and ADD is right.  */
static int
s_watch (edge_jobs_t *self, uint32_t events)
{
    int fd = self->conn ? PQsocket (self->conn) : -1;
    if (fd < 0)
        return -1;
    struct epoll_event ev = {.events = events, .data = {.fd = fd}};
    if (fd == self->watched_fd) {
        if (events == self->watched_events)
            return 0;
        if (epoll_ctl (self->epoll_fd, EPOLL_CTL_MOD, fd, &ev) == 0) {
            self->watched_events = events;
            return 0;
        }
    }
    else
        s_unwatch (self);
    if (epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        log_warn ("loop=%zu jobs epoll: %s", self->index, strerror (errno));
        return -1;
    }
    self->watched_fd = fd;
    self->watched_events = events;
    return 0;
}

/* ---- statements ---------------------------------------------------------- */

static void
s_op_destroy (s_op_t **op_p)
{
    s_op_t *op = *op_p;
    if (!op)
        return;
    for (int i = 0; i < op->nparams; i++)
        free (op->values[i]);
    free (op);
    *op_p = NULL;
}

static void
s_op_finish (s_op_t *op, edge_jobs_result_t *result)
{
    if (op->fn)
        op->fn (op->arg, result);
    free (result->json);
    result->json = NULL;
}

static void
s_fail_queue (edge_jobs_t *self, const char *why)
{
    /*  Callbacks may queue more: those fail too (the queue is refused
        while not READY, so this ends).  */
    while (self->head) {
        s_op_t *op = self->head;
        self->head = op->next;
        if (!self->head)
            self->tail = NULL;
        self->head_sent = false;
        edge_jobs_result_t r = {.ok = false, .error = why};
        s_op_finish (op, &r);
        s_op_destroy (&op);
    }
}

static void
s_schedule_reconnect (edge_jobs_t *self)
{
    self->state = S_DOWN;
    self->next_attempt = ferry_mono_ms () + self->backoff;
    self->backoff = self->backoff * 2 > S_BACKOFF_MAX ? S_BACKOFF_MAX
                                                      : self->backoff * 2;
}

/*  The connection failed or broke: everything queued fails (503 for the
    requests behind it), and a reconnect is planned.  */
static void
s_broken (edge_jobs_t *self, const char *what)
{
    char why[256];
    snprintf (why, sizeof why, "%s: %s", what,
              self->conn ? PQerrorMessage (self->conn) : "no connection");
    /*  libpq's messages span lines; a log line must not.  */
    for (char *c = why; *c; c++)
        if (*c == '\n' || *c == '\t')
            *c = ' ';
    size_t len = strlen (why);
    while (len && why[len - 1] == ' ')
        why[--len] = '\0';
    if (!self->logged_down)
        log_warn ("loop=%zu jobs database unreachable: %s", self->index,
                  why);
    self->logged_down = true;
    s_unwatch (self);
    PQclear (self->result);
    self->result = NULL;
    if (self->conn)
        PQfinish (self->conn);
    self->conn = NULL;
    s_schedule_reconnect (self);
    s_fail_queue (self, "the job store is not reachable");
}

/*  Sends the head statement when nothing is in flight.  */
static void
s_send_next (edge_jobs_t *self)
{
    if (self->state != S_READY || !self->head || self->head_sent)
        return;
    s_op_t *op = self->head;
    if (!PQsendQueryParams (self->conn, s_sql[op->kind], op->nparams, NULL,
                            (const char *const *) op->values, op->lengths,
                            op->formats, 0)) {
        s_broken (self, "send");
        return;
    }
    self->head_sent = true;
    int rc = PQflush (self->conn);
    if (rc < 0)
        s_broken (self, "flush");
    else
        s_watch (self, rc == 1 ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

static s_op_t *
s_op_new (s_kind_t kind, edge_jobs_fn *fn, void *arg)
{
    s_op_t *op = ferry_calloc (1, sizeof *op);
    op->kind = kind;
    op->fn = fn;
    op->arg = arg;
    return op;
}

static void
s_op_text (s_op_t *op, const char *value)
{
    op->values[op->nparams] = ferry_strdup (value);
    op->lengths[op->nparams] = 0;
    op->formats[op->nparams] = 0;
    op->nparams++;
}

static void
s_op_binary (s_op_t *op, const void *data, size_t len)
{
    op->values[op->nparams] = ferry_malloc (len ? len : 1);
    memcpy (op->values[op->nparams], data, len);
    op->lengths[op->nparams] = (int) len;
    op->formats[op->nparams] = 1;
    op->nparams++;
}

static void
s_enqueue (edge_jobs_t *self, s_op_t *op, bool first)
{
    if (first) {
        op->next = self->head;
        self->head = op;
        if (!self->tail)
            self->tail = op;
    }
    else {
        if (self->tail)
            self->tail->next = op;
        else
            self->head = op;
        self->tail = op;
    }
    s_send_next (self);
}

/* ---- the job's JSON ------------------------------------------------------ */

char *
edge_jobs_json (const char *id, const char *status, const char *service,
                const char *operation, long attempts, const char *created_at,
                const char *updated_at, const char *finished_at,
                int result_status, const char *headers, const void *body,
                size_t body_len, const char *error, size_t *len)
{
    json_t *job = json_pack ("{s:s, s:s, s:s, s:s, s:I, s:s, s:s}", "id", id,
                             "status", status, "service", service,
                             "operation", operation, "attempts",
                             (json_int_t) attempts, "created_at", created_at,
                             "updated_at", updated_at);
    if (!job)
        return NULL;
    json_object_set_new (job, "finished_at",
                         finished_at ? json_string (finished_at)
                                     : json_null ());
    bool finished = strcmp (status, "succeeded") == 0
                    || strcmp (status, "failed") == 0
                    || strcmp (status, "dead") == 0;
    int rc = 0;
    if (finished && result_status > 0) {
        json_t *h = headers ? json_loads (headers, 0, NULL) : json_object ();
        json_t *b = json_null ();
        if (body && body_len) {
            /*  The stored body is the reply's msgpack value: shown as the
                edge shows a reply body.  */
            msgpack_unpacked u;
            msgpack_unpacked_init (&u);
            size_t off = 0, text_len = 0;
            char *text = NULL;
            if (msgpack_unpack_next (&u, body, body_len, &off)
                == MSGPACK_UNPACK_SUCCESS)
                text = edge_json_text (&u.data, &text_len);
            msgpack_unpacked_destroy (&u);
            json_decref (b);
            b = text ? json_loadb (text, text_len, JSON_DECODE_ANY, NULL)
                     : NULL;
            free (text);
        }
        if (!h || !b)
            rc = -1;
        json_object_set_new (
            job, "result",
            json_pack ("{s:i, s:o*, s:o*}", "status", result_status,
                       "headers", h, "body", b));
    }
    if (error) {
        json_t *e = json_loads (error, JSON_DECODE_ANY, NULL);
        if (e)
            json_object_set_new (job, "error", e);
    }
    char *text = rc == 0 ? json_dumps (job, JSON_COMPACT) : NULL;
    json_decref (job);
    if (text)
        *len = strlen (text);
    return text;
}

/*  Turns the in-flight GET's result into its callback's result.  */
static void
s_get_result (edge_jobs_t *self, PGresult *res, edge_jobs_result_t *r)
{
    if (PQntuples (res) == 0)
        return;
    r->found = true;
    const char *status = PQgetvalue (res, 0, 1);
    r->finished = strcmp (status, "succeeded") == 0
                  || strcmp (status, "failed") == 0
                  || strcmp (status, "dead") == 0;
    size_t body_len = 0;
    unsigned char *body = NULL;
    if (!PQgetisnull (res, 0, 10))
        body = PQunescapeBytea (
            (const unsigned char *) PQgetvalue (res, 0, 10), &body_len);
#define S_OPT(col)                                                             \
    (PQgetisnull (res, 0, (col)) ? NULL : PQgetvalue (res, 0, (col)))
    r->json = edge_jobs_json (
        PQgetvalue (res, 0, 0), status, PQgetvalue (res, 0, 2),
        PQgetvalue (res, 0, 3), atol (PQgetvalue (res, 0, 4)),
        PQgetvalue (res, 0, 5), PQgetvalue (res, 0, 6), S_OPT (7),
        PQgetisnull (res, 0, 8) ? 0 : atoi (PQgetvalue (res, 0, 8)),
        S_OPT (9), body, body_len,
        S_OPT (11), &r->len);
#undef S_OPT
    if (body)
        PQfreemem (body);
    if (!r->json) {
        log_warn ("loop=%zu job %s cannot be shown as JSON", self->index,
                  PQgetvalue (res, 0, 0));
        r->ok = false;
        r->error = "the job cannot be shown";
    }
}

/*  The in-flight statement is complete: run its callback.  */
static void
s_complete (edge_jobs_t *self)
{
    s_op_t *op = self->head;
    self->head = op->next;
    if (!self->head)
        self->tail = NULL;
    self->head_sent = false;
    PGresult *res = self->result;
    self->result = NULL;
    ExecStatusType st = res ? PQresultStatus (res) : PGRES_FATAL_ERROR;
    edge_jobs_result_t r = {.ok = st == PGRES_TUPLES_OK
                                  || st == PGRES_COMMAND_OK};
    if (!r.ok) {
        r.error = res ? PQresultErrorMessage (res) : "no result";
        log_warn ("loop=%zu jobs statement failed: %s", self->index,
                  r.error);
    }
    else if (op->kind == S_OP_GET)
        s_get_result (self, res, &r);
    s_op_finish (op, &r);
    s_op_destroy (&op);
    PQclear (res);
}

/* ---- connecting ---------------------------------------------------------- */

/*  libpq prints server notices to stderr by default; they belong in the
    log (the connection's loss is logged by s_broken anyway).  */
static void
s_notice (void *arg, const char *message)
{
    edge_jobs_t *self = arg;
    log_debug ("loop=%zu jobs database notice: %.*s", self->index,
               (int) strcspn (message, "\n"), message);
}

static void
s_connect_start (edge_jobs_t *self)
{
    self->conn = PQconnectStart (self->conninfo);
    if (!self->conn || PQstatus (self->conn) == CONNECTION_BAD) {
        s_broken (self, "connect");
        return;
    }
    PQsetNoticeProcessor (self->conn, s_notice, self);
    self->state = S_CONNECTING;
    /*  libpq: act as if the last poll said WRITING.  */
    if (s_watch (self, EPOLLOUT) != 0)
        s_broken (self, "connect");
}

static void
s_connect_poll (edge_jobs_t *self)
{
    switch (PQconnectPoll (self->conn)) {
    case PGRES_POLLING_READING:
        if (s_watch (self, EPOLLIN) != 0)
            s_broken (self, "connect");
        return;
    case PGRES_POLLING_WRITING:
        if (s_watch (self, EPOLLOUT) != 0)
            s_broken (self, "connect");
        return;
    case PGRES_POLLING_OK:
        break;
    default:
        s_broken (self, "connect");
        return;
    }
    if (PQsetnonblocking (self->conn, 1) != 0) {
        s_broken (self, "non-blocking mode");
        return;
    }
    if (self->logged_down)
        log_info ("loop=%zu jobs database reachable again", self->index);
    self->logged_down = false;
    self->backoff = S_BACKOFF_MIN;
    self->state = S_READY;
    s_watch (self, EPOLLIN);
    /*  LISTEN goes first, before anything queued while connecting.  */
    s_enqueue (self, s_op_new (S_OP_LISTEN, NULL, NULL), true);
}

/* ---- public -------------------------------------------------------------- */

edge_jobs_t *
edge_jobs_new (const char *conninfo, int64_t retention_ms, int epoll_fd,
               size_t index, edge_jobs_notify_fn *notify, void *notify_arg)
{
    edge_jobs_t *self = ferry_calloc (1, sizeof *self);
    self->conninfo = ferry_strdup (conninfo ? conninfo : "");
    snprintf (self->retention, sizeof self->retention, "%lld milliseconds",
              (long long) retention_ms);
    self->epoll_fd = epoll_fd;
    self->index = index;
    self->notify = notify;
    self->notify_arg = notify_arg;
    self->watched_fd = -1;
    self->backoff = S_BACKOFF_MIN;
    self->state = S_DOWN;
    self->next_attempt = 0;
    return self;
}

void
edge_jobs_destroy (edge_jobs_t **self_p)
{
    edge_jobs_t *self = *self_p;
    if (!self)
        return;
    s_fail_queue (self, "the edge is shutting down");
    s_unwatch (self);
    PQclear (self->result);
    if (self->conn)
        PQfinish (self->conn);
    free (self->conninfo);
    free (self);
    *self_p = NULL;
}

bool
edge_jobs_ready (const edge_jobs_t *self)
{
    return self->state == S_READY;
}

int
edge_jobs_fd (const edge_jobs_t *self)
{
    return self->watched_fd;
}

int64_t
edge_jobs_timeout (const edge_jobs_t *self, int64_t now)
{
    if (self->state != S_DOWN)
        return -1;
    return self->next_attempt > now ? self->next_attempt - now : 0;
}

void
edge_jobs_process (edge_jobs_t *self)
{
    if (self->state == S_DOWN) {
        if (ferry_mono_ms () >= self->next_attempt)
            s_connect_start (self);
        return;
    }
    if (self->state == S_CONNECTING) {
        s_connect_poll (self);
        return;
    }
    if (!PQconsumeInput (self->conn)) {
        s_broken (self, "read");
        return;
    }
    int rc = PQflush (self->conn);
    if (rc < 0) {
        s_broken (self, "flush");
        return;
    }
    s_watch (self, rc == 1 ? EPOLLIN | EPOLLOUT : EPOLLIN);
    while (self->state == S_READY && self->head_sent
           && !PQisBusy (self->conn)) {
        PGresult *res = PQgetResult (self->conn);
        if (!res) {
            s_complete (self);
            s_send_next (self);
            continue;
        }
        /*  Keep the first result (the statement's); later ones (none for
            a single statement) are dropped.  */
        if (!self->result)
            self->result = res;
        else
            PQclear (res);
    }
    if (self->state != S_READY)
        return;
    if (PQstatus (self->conn) == CONNECTION_BAD) {
        s_broken (self, "connection");
        return;
    }
    PGnotify *n;
    while (self->conn && (n = PQnotifies (self->conn))) {
        if (self->notify && n->extra)
            self->notify (self->notify_arg, n->extra);
        PQfreemem (n);
    }
}

int
edge_jobs_submit (edge_jobs_t *self, const char *id, const char *service,
                  const char *operation, const char *principal,
                  edge_jobs_fn *fn, void *arg)
{
    if (self->state != S_READY)
        return -1;
    s_op_t *op = s_op_new (S_OP_SUBMIT, fn, arg);
    s_op_text (op, id);
    s_op_text (op, service);
    s_op_text (op, operation);
    s_op_text (op, principal ? principal : "");
    s_op_text (op, self->retention);
    s_enqueue (self, op, false);
    return 0;
}

int
edge_jobs_expire (edge_jobs_t *self, const char *id, unsigned status,
                  const char *detail)
{
    if (self->state != S_READY)
        return -1;
    /*  The stored body is what a worker would store: the problem as a
        msgpack map.  */
    msgpack_sbuffer buf;
    msgpack_sbuffer_init (&buf);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &buf, msgpack_sbuffer_write);
    const char *title = ferry_status_title (status);
    msgpack_pack_map (&pk, 4);
    msgpack_pack_str_with_body (&pk, "type", 4);
    msgpack_pack_str_with_body (&pk, "about:blank", 11);
    msgpack_pack_str_with_body (&pk, "title", 5);
    msgpack_pack_str_with_body (&pk, title, strlen (title));
    msgpack_pack_str_with_body (&pk, "status", 6);
    msgpack_pack_unsigned_int (&pk, status);
    msgpack_pack_str_with_body (&pk, "detail", 6);
    msgpack_pack_str_with_body (&pk, detail, strlen (detail));
    char code[8];
    snprintf (code, sizeof code, "%u", status);
    s_op_t *op = s_op_new (S_OP_EXPIRE, NULL, NULL);
    s_op_text (op, id);
    s_op_text (op, code);
    s_op_text (op, "{\"content-type\": \"application/problem+json\"}");
    s_op_binary (op, buf.data, buf.size);
    s_op_text (op, self->retention);
    msgpack_sbuffer_destroy (&buf);
    s_enqueue (self, op, false);
    return 0;
}

int
edge_jobs_get (edge_jobs_t *self, const char *id, const char *principal,
               edge_jobs_fn *fn, void *arg)
{
    if (self->state != S_READY)
        return -1;
    s_op_t *op = s_op_new (S_OP_GET, fn, arg);
    s_op_text (op, id);
    s_op_text (op, principal ? principal : "");
    s_enqueue (self, op, false);
    return 0;
}

void
edge_jobs_cancel (edge_jobs_t *self, void *arg)
{
    for (s_op_t *op = self->head; op; op = op->next)
        if (op->arg == arg)
            op->fn = NULL;
}

void
edge_jobs_fail_all (edge_jobs_t *self, const char *why)
{
    /*  A statement in flight cannot be taken back from the connection:
        close it, the next process reconnects.  */
    if (self->head_sent) {
        s_unwatch (self);
        PQclear (self->result);
        self->result = NULL;
        PQfinish (self->conn);
        self->conn = NULL;
        self->state = S_DOWN;
        self->next_attempt = 0;
    }
    s_fail_queue (self, why);
}

/* ---- tests ------------------------------------------------------------------
    The JSON of a job from its columns, and a manager without a database:
    it refuses statements while down and plans its reconnects.  */

int
edge_jobs_test (bool verbose)
{
    size_t len = 0;
    char *text = edge_jobs_json ("0190f3c2-0000-4000-8000-000000000001",
                                 "queued", "app", "create_user", 0,
                                 "2026-01-01T00:00:00.000Z",
                                 "2026-01-01T00:00:00.000Z", NULL, 0, NULL,
                                 NULL, 0, NULL, &len);
    FERRY_CHECK (text);
    if (verbose)
        printf ("# %s\n", text);
    FERRY_CHECK (strstr (text, "\"status\":\"queued\""));
    FERRY_CHECK (strstr (text, "\"finished_at\":null"));
    FERRY_CHECK (!strstr (text, "\"result\""));
    FERRY_CHECK (len == strlen (text));
    free (text);

    /*  A finished job carries its result; the body is the msgpack map
        {"id": 7, "name": "ada"} shown as JSON.  */
    const char body[] = "\x82\xa2id\x07\xa4name\xa3" "ada";
    text = edge_jobs_json ("0190f3c2-0000-4000-8000-000000000001",
                           "succeeded", "app", "create_user", 1,
                           "2026-01-01T00:00:00.000Z",
                           "2026-01-01T00:00:01.000Z",
                           "2026-01-01T00:00:01.000Z", 201,
                           "{\"content-type\": \"application/json\"}", body,
                           sizeof body - 1, NULL, &len);
    FERRY_CHECK (text);
    if (verbose)
        printf ("# %s\n", text);
    FERRY_CHECK (strstr (text, "\"result\":{\"status\":201,\"headers\":"
                               "{\"content-type\":\"application/json\"},"
                               "\"body\":{\"id\":7,\"name\":\"ada\"}}"));
    FERRY_CHECK (strstr (text, "\"attempts\":1"));
    free (text);
    /*  A failed one without a body, with an error.  */
    text = edge_jobs_json ("x", "dead", "app", "op", 3, "t", "t", "t", 500,
                           NULL, NULL, 0, "{\"detail\": \"boom\"}", &len);
    FERRY_CHECK (text);
    FERRY_CHECK (strstr (text, "\"body\":null"));
    FERRY_CHECK (strstr (text, "\"error\":{\"detail\":\"boom\"}"));
    free (text);
    /*  A body that is not msgpack cannot be shown.  */
    FERRY_CHECK (!edge_jobs_json ("x", "succeeded", "app", "op", 1, "t", "t",
                                  "t", 200, NULL, "\xc1", 1, NULL, &len));

    int ep = epoll_create1 (EPOLL_CLOEXEC);
    FERRY_CHECK (ep >= 0);
    /*  Port 1 on loopback refuses at once.  */
    edge_jobs_t *jobs = edge_jobs_new ("host=127.0.0.1 port=1 "
                                       "connect_timeout=1",
                                       3600000, ep, 0, NULL, NULL);
    FERRY_CHECK (!edge_jobs_ready (jobs));
    FERRY_CHECK (edge_jobs_timeout (jobs, ferry_mono_ms ()) == 0);
    FERRY_CHECK (edge_jobs_submit (jobs, "x", "a", "b", "", NULL, NULL)
                 == -1);
    FERRY_CHECK (edge_jobs_get (jobs, "x", "", NULL, NULL) == -1);
    int64_t until = ferry_mono_ms () + 3000;
    while (ferry_mono_ms () < until
           && edge_jobs_timeout (jobs, ferry_mono_ms ()) <= 0) {
        edge_jobs_process (jobs);
        struct epoll_event ev;
        epoll_wait (ep, &ev, 1, 50);
    }
    /*  Down, with a reconnect planned after the backoff.  */
    FERRY_CHECK (!edge_jobs_ready (jobs));
    FERRY_CHECK (edge_jobs_timeout (jobs, ferry_mono_ms ()) > 0);
    FERRY_CHECK (edge_jobs_fd (jobs) == -1);
    edge_jobs_destroy (&jobs);
    close (ep);
    return 0;
}

/*  worker_actor.c: the worker actor.  One thread; everything below runs
    on it and shares nothing mutable with other actors.

    The actor holds a DEALER socket to the broker and a libpq connection in
    non-blocking pipeline mode, and polls the pipe, the socket and the
    PostgreSQL file descriptor in one zmq_poll, so it never blocks on the
    database.  It announces `READY service credit` only while PostgreSQL
    is connected: when the connection goes away it answers what it holds
    with 503, sends BYE (it no longer holds credit) and reconnects with
    exponential backoff; once connected again it sends READY.  The broker
    therefore never routes work to an actor that cannot do it.

    One message is one transaction, sent as one pipeline:
        [Parse of statements not yet prepared on this connection]
        BEGIN
        SELECT set_config('statement_timeout', <ms left>, true)
        step 1 .. step N (prepared statements, typed text parameters)
        [COMMIT, when the operation has a single step]
        Sync
    A single-step operation is done in one round trip.  With several steps
    a `one` step that finds no row must undo the steps before it, which
    the pipeline cannot know in advance, so COMMIT or ROLLBACK follows in
    a second round trip once the results are read.  After a failure the
    server answers PIPELINE_ABORTED up to the Sync and keeps the explicit
    transaction in failed state, so the actor checks PQtransactionStatus
    and sends ROLLBACK.  */

#include "ferry.h"
#include "envelope.h"
#include "log.h"
#include "proto.h"
#include "worker_actor.h"
#include "worker_pgerror.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CONNECT_TIMEOUT_MS 10000

/*  Session settings every connection gets first, so result text has one
    known shape (worker_values.c relies on ISO dates in UTC and hex
    bytea) and floats print with all their digits.  */
static const char s_setup_sql[]
    = "SELECT set_config('DateStyle', 'ISO, MDY', false),"
      " set_config('TimeZone', 'UTC', false),"
      " set_config('IntervalStyle', 'iso_8601', false),"
      " set_config('bytea_output', 'hex', false),"
      " set_config('extra_float_digits', '3', false)";

typedef enum {
    S_PG_DOWN,       /* waiting for the next attempt */
    S_PG_CONNECTING, /* PQconnectPoll in progress */
    S_PG_SETUP,      /* connected, session settings in flight */
    S_PG_UP          /* ready for work */
} s_pg_state_t;

/*  What each result in the pipeline belongs to, in the order sent.  */
typedef enum {
    SLOT_SETUP,
    SLOT_PREPARE,
    SLOT_BEGIN,
    SLOT_TIMEOUT,
    SLOT_STEP,
    SLOT_COMMIT,
    SLOT_END, /* the COMMIT or ROLLBACK of the second round trip */
    SLOT_SYNC
} s_slot_kind_t;

typedef struct {
    s_slot_kind_t kind;
    size_t step;
} s_slot_t;

#define PLAN_MAX 64

/*  A message the broker gave us.  */
typedef struct {
    char *msg_id;
    uint64_t deadline; /* wall ms; 0 = none */
    zframe_t *payload;
} s_job_t;

typedef struct {
    zsock_t *pipe;                   /* to the pool */
    const worker_actor_args_t *args; /* borrowed from the pool */
    char name[FERRY_NAME_MAX + 16];  /* "app/2", for logs */
    bool terminating;                /* $TERM received */
    bool done;                       /* leave the loop */
    uint64_t rng;                    /* backoff jitter */

    zsock_t *broker;                 /* DEALER to the broker backend */
    bool registered;                 /* READY sent, BYE not yet */
    int64_t broker_seen;             /* mono ms of the last broker message */
    int64_t broker_sent;             /* mono ms of our last message */

    PGconn *conn;
    s_pg_state_t pg;
    PostgresPollingStatusType want;  /* while connecting */
    int64_t pg_next_try;             /* mono ms, while down */
    int64_t pg_backoff;              /* next backoff, ms */
    int64_t pg_give_up;              /* mono ms, while connecting */
    bool flush_pending;              /* libpq has output left to send */
    bool *prepared;                  /* per step index, this connection */

    zlist_t *queue;                  /* s_job_t *, not started yet */
    s_job_t *job;                    /* the message in PostgreSQL now */
    ferry_envelope_t *request;       /* job's decoded envelope */
    const worker_op_t *op;           /* job's operation */
    unsigned attempts;               /* runs of this job so far */
    bool finishing;                  /* COMMIT/ROLLBACK round trip */

    s_slot_t plan[PLAN_MAX];         /* results expected, in order */
    size_t plan_len;
    size_t plan_pos;
    bool slot_done;                  /* plan[pos] had its result */

    bool failed;                     /* a statement failed */
    char sqlstate[6];
    char constraint[64];
    int not_found;                   /* `one` step without a row, or -1 */
    PGresult *last;                  /* the last step's result */
} s_actor_t;

static s_actor_t *s_actor_new (zsock_t *pipe, const worker_actor_args_t *a);
static void s_actor_destroy (s_actor_t **self_p);
static void s_pipe_command (s_actor_t *self);
static void s_timers (s_actor_t *self, int64_t now);
static long s_poll_timeout (s_actor_t *self, int64_t now);
static void s_broker_open (s_actor_t *self);
static void s_broker_recv (s_actor_t *self);
static void s_broker_send (s_actor_t *self, const char *cmd, const char *a1,
                           const char *a2, const void *data, size_t size);
static void s_register (s_actor_t *self);
static void s_withdraw (s_actor_t *self);
static void s_job_arrive (s_actor_t *self, const char *msg_id,
                          uint64_t deadline, zframe_t **payload_p);
static void s_job_free (s_job_t **job_p);
static void s_reply_raw (s_actor_t *self, const char *msg_id,
                         unsigned status, const char *detail);
static void s_fail_queue (s_actor_t *self, unsigned status,
                          const char *detail);
static void s_pump (s_actor_t *self);
static int s_job_send (s_actor_t *self);
static void s_job_problem (s_actor_t *self, unsigned status,
                           const char *detail, const char *sqlstate);
static void s_job_reply (s_actor_t *self, ferry_envelope_t **reply_p);
static void s_job_complete (s_actor_t *self);
static void s_job_end (s_actor_t *self);
static void s_outcome_reset (s_actor_t *self);
static void s_pg_start (s_actor_t *self);
static void s_pg_connect_poll (s_actor_t *self);
static void s_pg_fail (s_actor_t *self, const char *what);
static void s_pg_lost (s_actor_t *self, const char *what);
static void s_pg_io (s_actor_t *self, short revents);
static void s_pg_read (s_actor_t *self);
static void s_pg_flush (s_actor_t *self);
static void s_slot_result (s_actor_t *self, const s_slot_t *slot,
                           PGresult *r);
static void s_segment_done (s_actor_t *self);
static void s_plan (s_actor_t *self, s_slot_kind_t kind, size_t step);
static int s_pack_result (msgpack_packer *pk, const PGresult *r,
                          worker_result_t mode);

void
worker_actor (zsock_t *pipe, void *args)
{
    s_actor_t *self = s_actor_new (pipe, args);
    zsock_signal (pipe, 0);
    while (!self->done) {
        int64_t now = ferry_mono_ms ();
        s_timers (self, now);
        zmq_pollitem_t items[3] = {
            {zsock_resolve (self->pipe), 0, ZMQ_POLLIN, 0},
            {zsock_resolve (self->broker), 0, ZMQ_POLLIN, 0},
            {NULL, -1, 0, 0},
        };
        int nitems = 2;
        PGconn *polled = self->conn;
        int fd = polled ? PQsocket (polled) : -1;
        if (fd >= 0) {
            short events = ZMQ_POLLIN;
            if (self->pg == S_PG_CONNECTING)
                events = self->want == PGRES_POLLING_WRITING ? ZMQ_POLLOUT
                                                             : ZMQ_POLLIN;
            else if (self->flush_pending)
                events |= ZMQ_POLLOUT;
            items[2].fd = fd;
            items[2].events = events;
            nitems = 3;
        }
        int rc = zmq_poll (items, nitems, s_poll_timeout (self, now));
        if (rc == -1) {
            if (errno == EINTR)
                continue;
            log_error ("poll failed actor=%s error=%s", self->name,
                       zmq_strerror (errno));
            break;
        }
        if (items[0].revents & ZMQ_POLLIN)
            s_pipe_command (self);
        if (items[1].revents & ZMQ_POLLIN)
            s_broker_recv (self);
        /*  The handlers above may have dropped the connection; the
            revents then belong to a descriptor we no longer own.  */
        if (nitems == 3 && items[2].revents && self->conn == polled)
            s_pg_io (self, items[2].revents);
        s_pump (self);
        if (self->terminating && !self->job) {
            s_fail_queue (self, 503, "the worker is shutting down");
            s_withdraw (self);
            self->done = true;
        }
    }
    s_actor_destroy (&self);
}

/* ---- construction ------------------------------------------------------- */

static s_actor_t *
s_actor_new (zsock_t *pipe, const worker_actor_args_t *a)
{
    s_actor_t *self = ferry_calloc (1, sizeof *self);
    self->pipe = pipe;
    self->args = a;
    snprintf (self->name, sizeof self->name, "%s/%u", a->pool, a->index);
    self->rng = (uint64_t) ferry_mono_ms () * 2654435761u + a->index + 1;
    self->queue = zlist_new ();
    self->prepared = ferry_calloc (worker_ops_steps (a->ops) + 1, 1);
    self->pg = S_PG_DOWN;
    self->pg_backoff = BACKOFF_MIN_MS;
    self->pg_next_try = 0; /* connect at once */
    self->not_found = -1;
    s_broker_open (self);
    return self;
}

static void
s_actor_destroy (s_actor_t **self_p)
{
    s_actor_t *self = *self_p;
    s_job_t *job;
    while ((job = zlist_pop (self->queue)))
        s_job_free (&job);
    zlist_destroy (&self->queue);
    s_job_free (&self->job);
    ferry_envelope_destroy (&self->request);
    PQclear (self->last);
    if (self->conn)
        PQfinish (self->conn);
    /*  Linger so the final BYE and replies leave before the socket.  */
    zsock_set_linger (self->broker, 1000);
    zsock_destroy (&self->broker);
    free (self->prepared);
    free (self);
    *self_p = NULL;
}

/* ---- pipe and timers ---------------------------------------------------- */

static void
s_pipe_command (s_actor_t *self)
{
    zmsg_t *msg = zmsg_recv (self->pipe);
    if (!msg)
        return;
    char *cmd = zmsg_popstr (msg);
    if (cmd && strcmp (cmd, "$TERM") == 0) {
        log_debug ("terminating actor=%s", self->name);
        self->terminating = true;
        /*  Finish the message in hand; the waiting ones would only delay
            shutdown, and the edge gets an answer for each.  */
        s_fail_queue (self, 503, "the worker is shutting down");
    }
    else
        log_warn ("unknown actor command=%s actor=%s",
                  cmd ? cmd : "(none)", self->name);
    free (cmd);
    zmsg_destroy (&msg);
}

static int64_t
s_jitter (s_actor_t *self, int64_t ms)
{
    /*  xorshift64: spread reconnects of many actors over 50..100% of the
        backoff so they do not hit a recovering server together.  */
    self->rng ^= self->rng << 13;
    self->rng ^= self->rng >> 7;
    self->rng ^= self->rng << 17;
    return ms / 2 + (int64_t) (self->rng % (uint64_t) (ms / 2 + 1));
}

static void
s_timers (s_actor_t *self, int64_t now)
{
    const worker_actor_args_t *a = self->args;
    if (self->registered) {
        if (now - self->broker_seen > a->heartbeat_ms * (int64_t) a->liveness) {
            /*  The broker went silent: it died or forgot us.  A new
                socket gets a new identity and a clean queue.  */
            log_warn ("broker silent, reconnecting actor=%s",
                      self->name);
            zsock_set_linger (self->broker, 0);
            zsock_destroy (&self->broker);
            s_broker_open (self);
            self->registered = false;
            s_register (self);
        }
        else if (now - self->broker_sent >= a->heartbeat_ms)
            s_broker_send (self, FERRY_CMD_HB, NULL, NULL, NULL, 0);
    }
    if (self->pg == S_PG_DOWN && now >= self->pg_next_try
        && !self->terminating)
        s_pg_start (self);
    else if ((self->pg == S_PG_CONNECTING || self->pg == S_PG_SETUP)
             && now >= self->pg_give_up)
        s_pg_fail (self, "connect timed out");
}

static long
s_poll_timeout (s_actor_t *self, int64_t now)
{
    const worker_actor_args_t *a = self->args;
    int64_t next = now + 1000;
    if (self->registered) {
        int64_t hb = self->broker_sent + a->heartbeat_ms;
        int64_t dead
            = self->broker_seen + a->heartbeat_ms * (int64_t) a->liveness + 1;
        next = hb < next ? hb : next;
        next = dead < next ? dead : next;
    }
    if (self->pg == S_PG_DOWN && self->pg_next_try < next)
        next = self->pg_next_try;
    if ((self->pg == S_PG_CONNECTING || self->pg == S_PG_SETUP)
        && self->pg_give_up < next)
        next = self->pg_give_up;
    return next > now ? (long) (next - now) : 0;
}

/* ---- broker ------------------------------------------------------------- */

static void
s_broker_open (s_actor_t *self)
{
    self->broker = zsock_new (ZMQ_DEALER);
    assert (self->broker);
    zsock_set_maxmsgsize (self->broker, FERRY_MAX_MESSAGE_DEFAULT);
    /*  The endpoint was checked by the pool before the actor started.  */
    if (zsock_connect (self->broker, "%s", self->args->broker) == -1)
        log_error ("cannot connect endpoint=%s actor=%s",
                   self->args->broker, self->name);
}

static void
s_broker_send (s_actor_t *self, const char *cmd, const char *a1,
               const char *a2, const void *data, size_t size)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, FERRY_PROTO);
    zmsg_addstr (msg, cmd);
    if (a1)
        zmsg_addstr (msg, a1);
    if (a2)
        zmsg_addstr (msg, a2);
    if (data)
        zmsg_addmem (msg, data, size);
    if (zmsg_send (&msg, self->broker) == -1) {
        log_warn ("send to broker failed cmd=%s actor=%s", cmd,
                  self->name);
        zmsg_destroy (&msg);
    }
    self->broker_sent = ferry_mono_ms ();
}

static void
s_register (s_actor_t *self)
{
    if (self->registered || self->terminating)
        return;
    char credit[16];
    snprintf (credit, sizeof credit, "%u", self->args->credit);
    s_broker_send (self, FERRY_CMD_READY, self->args->service, credit, NULL,
                   0);
    self->registered = true;
    self->broker_seen = ferry_mono_ms ();
}

static void
s_withdraw (s_actor_t *self)
{
    if (!self->registered)
        return;
    s_broker_send (self, FERRY_CMD_BYE, NULL, NULL, NULL, 0);
    self->registered = false;
}

static void
s_broker_recv (s_actor_t *self)
{
    while (zsock_events (self->broker) & ZMQ_POLLIN) {
        zmsg_t *msg = zmsg_recv (self->broker);
        if (!msg)
            return;
        self->broker_seen = ferry_mono_ms ();
        zframe_t *sig = zmsg_first (msg);
        zframe_t *cmd = zmsg_next (msg);
        if (!sig || !cmd || !zframe_streq (sig, FERRY_PROTO)) {
            log_warn ("malformed broker message actor=%s",
                      self->name);
        }
        else if (zframe_streq (cmd, FERRY_CMD_REQ) && zmsg_size (msg) == 5) {
            char *msg_id = zframe_strdup (zmsg_next (msg));
            char *deadline_s = zframe_strdup (zmsg_next (msg));
            zframe_t *payload = zmsg_next (msg);
            uint64_t deadline;
            if (ferry_parse_uint64 (deadline_s, &deadline))
                log_warn ("bad deadline msg=%s actor=%s", msg_id,
                          self->name);
            else {
                zmsg_remove (msg, payload);
                s_job_arrive (self, msg_id, deadline, &payload);
            }
            free (msg_id);
            free (deadline_s);
        }
        else if (zframe_streq (cmd, FERRY_CMD_HB)) {
            /*  Sign of life, already noted.  */
        }
        else if (zframe_streq (cmd, FERRY_CMD_BYE)) {
            /*  The broker restarted or declared us dead.  */
            if (self->registered) {
                log_info ("broker forgot us, announcing again "
                          "actor=%s", self->name);
                self->registered = false;
                s_register (self);
            }
        }
        else
            log_warn ("unexpected broker command actor=%s",
                      self->name);
        zmsg_destroy (&msg);
    }
}

/* ---- jobs --------------------------------------------------------------- */

static void
s_job_arrive (s_actor_t *self, const char *msg_id, uint64_t deadline,
              zframe_t **payload_p)
{
    if (deadline && ferry_wall_ms () >= deadline) {
        s_reply_raw (self, msg_id, 504,
                     "the deadline passed before the worker started");
        zframe_destroy (payload_p);
        return;
    }
    if (!self->registered || self->pg != S_PG_UP || self->terminating) {
        /*  Sent before the broker saw our BYE.  */
        s_reply_raw (self, msg_id, 503, "the worker cannot take work now");
        zframe_destroy (payload_p);
        return;
    }
    /*  The broker keeps to our credit; a broker that does not is not
        allowed to grow our memory.  One spare for a READY repeated after
        a broker reconnect while a message was in hand.  */
    if (zlist_size (self->queue) >= self->args->credit + 1) {
        s_reply_raw (self, msg_id, 503, "the worker is over its credit");
        zframe_destroy (payload_p);
        return;
    }
    s_job_t *job = ferry_calloc (1, sizeof *job);
    job->msg_id = ferry_strdup (msg_id);
    job->deadline = deadline;
    job->payload = *payload_p;
    *payload_p = NULL;
    zlist_append (self->queue, job);
}

static void
s_job_free (s_job_t **job_p)
{
    s_job_t *job = *job_p;
    if (!job)
        return;
    free (job->msg_id);
    zframe_destroy (&job->payload);
    free (job);
    *job_p = NULL;
}

/*  A problem reply for a message we did not decode (or cannot).  */
static void
s_reply_raw (s_actor_t *self, const char *msg_id, unsigned status,
             const char *detail)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    if (ferry_problem_reply_encode (msg_id, status, detail,
                                    status == 503 ? 1 : 0, &sb)
        == 0)
        s_broker_send (self, FERRY_CMD_REP, msg_id, NULL, sb.data, sb.size);
    else
        log_error ("cannot encode problem msg=%s", msg_id);
    msgpack_sbuffer_destroy (&sb);
}

static void
s_fail_queue (s_actor_t *self, unsigned status, const char *detail)
{
    s_job_t *job;
    while ((job = zlist_pop (self->queue))) {
        s_reply_raw (self, job->msg_id, status, detail);
        s_job_free (&job);
    }
}

/*  Starts the next message when PostgreSQL is free.  Loops because a
    message may be answered without PostgreSQL (expired, invalid).  */
static void
s_pump (s_actor_t *self)
{
    while (!self->job && self->pg == S_PG_UP && zlist_size (self->queue)) {
        s_job_t *job = zlist_pop (self->queue);
        if (job->deadline && ferry_wall_ms () >= job->deadline) {
            s_reply_raw (self, job->msg_id, 504,
                         "the deadline passed before the worker started");
            s_job_free (&job);
            continue;
        }
        char err[160];
        ferry_envelope_t *req
            = ferry_envelope_decode (zframe_data (job->payload),
                                     zframe_size (job->payload), NULL, err,
                                     sizeof err);
        if (!req) {
            log_warn ("undecodable envelope msg=%s reason=%s",
                      job->msg_id, err);
            s_reply_raw (self, job->msg_id, 400,
                         "the message is not a valid envelope");
            s_job_free (&job);
            continue;
        }
        self->job = job;
        self->request = req;
        self->attempts = 0;
        self->op = worker_ops_find (self->args->ops,
                                    ferry_envelope_operation (req));
        if (!self->op) {
            s_job_problem (self, 404, "unknown operation", NULL);
            continue;
        }
        log_debug ("start msg=%s cid=%s op=%s actor=%s",
                   job->msg_id,
                   ferry_envelope_cid (req) ? ferry_envelope_cid (req) : "-",
                   self->op->name, self->name);
        s_job_send (self);
    }
}

/*  Binds the parameters and sends the message's pipeline.  Returns 0 when
    sent, -1 when the message was answered or the connection dropped.  */
static int
s_job_send (s_actor_t *self)
{
    const worker_op_t *op = self->op;
    const msgpack_object *args = ferry_envelope_args (self->request);
    const msgpack_object *body = ferry_envelope_body (self->request);
    char ***values = ferry_calloc (op->nsteps, sizeof *values);
    char err[192];
    int rc = 0;
    for (size_t s = 0; s < op->nsteps; s++) {
        values[s] = ferry_calloc (op->steps[s].nparams + 1, sizeof (char *));
        if (worker_step_bind (&op->steps[s], args, body, values[s], err,
                              sizeof err)) {
            free (values[s]);
            values[s] = NULL;
            rc = -1;
            break;
        }
    }
    PGconn *conn = self->conn;
    bool sent = rc == 0;
    if (sent) {
        s_outcome_reset (self);
        self->plan_len = self->plan_pos = 0;
        self->slot_done = false;
        self->finishing = false;
        for (size_t s = 0; sent && s < op->nsteps; s++) {
            const worker_step_t *st = &op->steps[s];
            if (self->prepared[st->index])
                continue;
            sent = PQsendPrepare (conn, st->stmt, st->sql, (int) st->nparams,
                                  st->oids)
                   == 1;
            s_plan (self, SLOT_PREPARE, s);
        }
        sent = sent
               && PQsendQueryParams (conn, "BEGIN", 0, NULL, NULL, NULL,
                                     NULL, 0) == 1;
        s_plan (self, SLOT_BEGIN, 0);
        /*  The time left, computed here; never request data.  0 would
            disable the timeout, so a message without deadline gets none
            and one about to expire gets 1 ms.  */
        char ms[32] = "0";
        if (self->job->deadline) {
            uint64_t now = ferry_wall_ms ();
            uint64_t left
                = self->job->deadline > now ? self->job->deadline - now : 1;
            snprintf (ms, sizeof ms, "%" PRIu64, left);
        }
        const char *tv[1] = {ms};
        sent = sent
               && PQsendQueryParams (
                      conn,
                      "SELECT set_config('statement_timeout', $1, true)", 1,
                      NULL, tv, NULL, NULL, 0) == 1;
        s_plan (self, SLOT_TIMEOUT, 0);
        for (size_t s = 0; sent && s < op->nsteps; s++) {
            const worker_step_t *st = &op->steps[s];
            sent = PQsendQueryPrepared (conn, st->stmt, (int) st->nparams,
                                        (const char *const *) values[s],
                                        NULL, NULL, 0) == 1;
            s_plan (self, SLOT_STEP, s);
        }
        if (op->nsteps == 1) {
            sent = sent
                   && PQsendQueryParams (conn, "COMMIT", 0, NULL, NULL, NULL,
                                         NULL, 0) == 1;
            s_plan (self, SLOT_COMMIT, 0);
        }
        sent = sent && PQpipelineSync (conn) == 1;
        s_plan (self, SLOT_SYNC, 0);
    }
    for (size_t s = 0; s < op->nsteps; s++)
        if (values[s]) {
            worker_step_values_free (&op->steps[s], values[s]);
            free (values[s]);
        }
    free (values);
    if (rc == -1) {
        s_job_problem (self, 422, err, NULL);
        return -1;
    }
    if (!sent) {
        s_pg_lost (self, "send failed");
        return -1;
    }
    s_pg_flush (self);
    return self->job ? 0 : -1;
}

static void
s_plan (s_actor_t *self, s_slot_kind_t kind, size_t step)
{
    /*  PLAN_MAX bounds steps per operation far above any sane config.  */
    assert (self->plan_len < PLAN_MAX);
    self->plan[self->plan_len].kind = kind;
    self->plan[self->plan_len].step = step;
    self->plan_len++;
}

static void
s_outcome_reset (s_actor_t *self)
{
    self->failed = false;
    self->sqlstate[0] = '\0';
    self->constraint[0] = '\0';
    self->not_found = -1;
    PQclear (self->last);
    self->last = NULL;
}

/*  Adds our span to the reply, encodes it and sends it; ends the job.  */
static void
s_job_reply (s_actor_t *self, ferry_envelope_t **reply_p)
{
    ferry_envelope_t *reply = *reply_p;
    char tp[FERRY_TRACEPARENT_LEN + 1];
    ferry_traceparent_continue (ferry_envelope_traceparent (self->request),
                                tp);
    ferry_envelope_set_header (reply, "traceparent", tp);
    ferry_envelope_set_traceparent (reply, tp);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    if (ferry_envelope_encode (reply, &sb) == 0)
        s_broker_send (self, FERRY_CMD_REP, self->job->msg_id, NULL, sb.data,
                       sb.size);
    else {
        log_error ("cannot encode reply msg=%s", self->job->msg_id);
        s_reply_raw (self, self->job->msg_id, 500,
                     "the reply could not be encoded");
    }
    msgpack_sbuffer_destroy (&sb);
    ferry_envelope_destroy (reply_p);
    s_job_end (self);
}

static void
s_job_problem (s_actor_t *self, unsigned status, const char *detail,
               const char *sqlstate)
{
    log_debug ("problem msg=%s status=%u actor=%s",
               self->job->msg_id, status, self->name);
    ferry_envelope_t *reply = ferry_envelope_new_reply (self->request, status);
    ferry_envelope_set_problem (reply, status, NULL, detail, sqlstate);
    s_job_reply (self, &reply);
}

static void
s_job_end (s_actor_t *self)
{
    s_job_free (&self->job);
    ferry_envelope_destroy (&self->request);
    self->op = NULL;
    s_outcome_reset (self);
    self->plan_len = self->plan_pos = 0;
    self->slot_done = false;
    self->finishing = false;
}

/*  All results are in and the transaction is over: answer.  */
static void
s_job_complete (s_actor_t *self)
{
    const worker_op_t *op = self->op;
    if (self->failed && self->not_found < 0) {
        worker_pgerror_t e;
        worker_pgerror_classify (self->sqlstate, &e);
        if (e.retry && self->attempts == 0 && !e.reconnect) {
            /*  Serialization failure or deadlock: the transaction was
                rolled back whole, so running it again is safe.  */
            self->attempts++;
            log_info ("retrying msg=%s sqlstate=%s actor=%s",
                      self->job->msg_id, self->sqlstate, self->name);
            s_job_send (self);
            return;
        }
        /*  The constraint name stays in our log: schema names are
            nobody's business outside.  */
        char sqlstate[6];
        memcpy (sqlstate, self->sqlstate, sizeof sqlstate);
        s_job_problem (self, e.status, e.detail,
                       e.show_sqlstate && sqlstate[0] ? sqlstate : NULL);
        if (e.reconnect)
            s_pg_lost (self, "server error");
        return;
    }
    if (self->not_found >= 0) {
        const worker_step_t *st = &op->steps[self->not_found];
        s_job_problem (self, st->not_found_status,
                       st->not_found_detail ? st->not_found_detail
                                            : "no such row",
                       NULL);
        return;
    }
    const worker_step_t *last = &op->steps[op->nsteps - 1];
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sb, msgpack_sbuffer_write);
    char err[128];
    ferry_envelope_t *reply = NULL;
    if (!self->last || s_pack_result (&pk, self->last, last->result)) {
        log_error ("result not convertible msg=%s op=%s",
                   self->job->msg_id, op->name);
    }
    else {
        reply = ferry_envelope_new_reply (self->request, op->status);
        if (ferry_envelope_set_body_raw (reply, sb.data, sb.size, err,
                                         sizeof err)) {
            log_warn ("result refused msg=%s op=%s reason=%s",
                      self->job->msg_id, op->name, err);
            ferry_envelope_destroy (&reply);
        }
    }
    msgpack_sbuffer_destroy (&sb);
    if (reply)
        s_job_reply (self, &reply);
    else
        s_job_problem (self, 500, "the result could not be converted",
                       NULL);
}

static int
s_pack_row (msgpack_packer *pk, const PGresult *r, int row)
{
    int nf = PQnfields (r);
    msgpack_pack_map (pk, (size_t) nf);
    for (int c = 0; c < nf; c++) {
        const char *name = PQfname (r, c);
        msgpack_pack_str_with_body (pk, name, strlen (name));
        if (worker_value_pack (pk, PQftype (r, c), PQgetvalue (r, row, c),
                               (size_t) PQgetlength (r, row, c),
                               PQgetisnull (r, row, c)))
            return -1;
    }
    return 0;
}

/*  Body by result mode: one -> map, many -> array of maps, exec ->
    {"affected": N}.  `one` takes the first row.  */
static int
s_pack_result (msgpack_packer *pk, const PGresult *r, worker_result_t mode)
{
    if (mode == WORKER_RESULT_EXEC) {
        uint64_t n = 0;
        const char *t = PQcmdTuples ((PGresult *) r);
        if (t && *t && ferry_parse_uint64 (t, &n))
            return -1;
        msgpack_pack_map (pk, 1);
        msgpack_pack_str_with_body (pk, "affected", 8);
        msgpack_pack_uint64 (pk, n);
        return 0;
    }
    if (mode == WORKER_RESULT_ONE)
        return PQntuples (r) > 0 ? s_pack_row (pk, r, 0) : -1;
    int n = PQntuples (r);
    msgpack_pack_array (pk, (size_t) n);
    for (int i = 0; i < n; i++)
        if (s_pack_row (pk, r, i))
            return -1;
    return 0;
}

/* ---- PostgreSQL --------------------------------------------------------- */

static void
s_notice (void *arg, const char *message)
{
    s_actor_t *self = arg;
    (void) message;
    log_debug ("server notice actor=%s", self->name);
}

static void
s_pg_start (s_actor_t *self)
{
    self->conn = PQconnectStart (self->args->conninfo);
    if (!self->conn || PQstatus (self->conn) == CONNECTION_BAD) {
        s_pg_fail (self, "connect failed");
        return;
    }
    self->pg = S_PG_CONNECTING;
    self->want = PGRES_POLLING_WRITING; /* libpq: as if polled for write */
    self->pg_give_up = ferry_mono_ms () + CONNECT_TIMEOUT_MS;
}

static void
s_pg_connect_poll (s_actor_t *self)
{
    PostgresPollingStatusType st = PQconnectPoll (self->conn);
    if (st == PGRES_POLLING_READING || st == PGRES_POLLING_WRITING) {
        self->want = st;
        return;
    }
    if (st != PGRES_POLLING_OK) {
        s_pg_fail (self, "connect failed");
        return;
    }
    if (PQsetnonblocking (self->conn, 1) || !PQenterPipelineMode (self->conn)) {
        s_pg_fail (self, "cannot enter pipeline mode");
        return;
    }
    PQsetNoticeProcessor (self->conn, s_notice, self);
    memset (self->prepared, 0, worker_ops_steps (self->args->ops) + 1);
    self->plan_len = self->plan_pos = 0;
    self->slot_done = false;
    s_outcome_reset (self);
    int ok = PQsendQueryParams (self->conn, s_setup_sql, 0, NULL, NULL, NULL,
                                NULL, 0);
    s_plan (self, SLOT_SETUP, 0);
    ok = ok && PQpipelineSync (self->conn);
    s_plan (self, SLOT_SYNC, 0);
    if (!ok) {
        s_pg_fail (self, "session setup failed");
        return;
    }
    self->pg = S_PG_SETUP;
    s_pg_flush (self);
}

/*  A connection attempt failed: log once, wait, try again.  */
static void
s_pg_fail (s_actor_t *self, const char *what)
{
    char msg[256] = "";
    if (self->conn) {
        /*  libpq's text may name hosts; it goes to our log, never to a
            client.  One line.  */
        snprintf (msg, sizeof msg, "%s", PQerrorMessage (self->conn));
        for (char *p = msg; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        PQfinish (self->conn);
        self->conn = NULL;
    }
    self->pg = S_PG_DOWN;
    int64_t delay = s_jitter (self, self->pg_backoff);
    log_warn ("postgres %s actor=%s retry_ms=%" PRId64 " error=%s",
              what, self->name, delay, msg);
    self->pg_next_try = ferry_mono_ms () + delay;
    self->pg_backoff *= 2;
    if (self->pg_backoff > BACKOFF_MAX_MS)
        self->pg_backoff = BACKOFF_MAX_MS;
}

/*  An established connection broke: answer everything we hold with 503,
    leave the broker (we cannot do work, so we hold no credit), and
    reconnect.  */
static void
s_pg_lost (s_actor_t *self, const char *what)
{
    bool was_up = self->pg == S_PG_UP;
    if (self->job)
        s_job_problem (self, 503, "the database connection was lost", NULL);
    s_fail_queue (self, 503, "the database connection was lost");
    s_withdraw (self);
    self->flush_pending = false;
    self->plan_len = self->plan_pos = 0;
    s_pg_fail (self, what);
    if (was_up)
        zstr_send (self->pipe, "DISCONNECTED");
}

static void
s_pg_flush (s_actor_t *self)
{
    int rc = PQflush (self->conn);
    if (rc < 0) {
        s_pg_lost (self, "write failed");
        return;
    }
    self->flush_pending = rc == 1;
}

static void
s_pg_io (s_actor_t *self, short revents)
{
    if (self->pg == S_PG_CONNECTING) {
        s_pg_connect_poll (self);
        return;
    }
    if (self->flush_pending) {
        s_pg_flush (self);
        if (!self->conn)
            return;
    }
    if (revents & (ZMQ_POLLIN | ZMQ_POLLERR))
        s_pg_read (self);
}

static void
s_pg_read (s_actor_t *self)
{
    if (!PQconsumeInput (self->conn)) {
        s_pg_lost (self, "connection lost");
        return;
    }
    while (self->conn && self->plan_pos < self->plan_len
           && !PQisBusy (self->conn)) {
        PGresult *r = PQgetResult (self->conn);
        if (!r) {
            if (!self->slot_done)
                break;
            self->plan_pos++;
            self->slot_done = false;
            continue;
        }
        if (PQresultStatus (r) == PGRES_PIPELINE_SYNC) {
            PQclear (r);
            self->plan_pos = self->plan_len;
            self->slot_done = false;
            s_segment_done (self);
            continue;
        }
        s_slot_result (self, &self->plan[self->plan_pos], r);
        self->slot_done = true;
    }
    if (self->conn && PQstatus (self->conn) == CONNECTION_BAD)
        s_pg_lost (self, "connection lost");
}

static void
s_slot_result (s_actor_t *self, const s_slot_t *slot, PGresult *r)
{
    ExecStatusType st = PQresultStatus (r);
    if (st == PGRES_FATAL_ERROR) {
        /*  A `one` step that found no row came first: that is the
            answer, and what failed after it is rolled back anyway.  */
        if (!self->failed && self->not_found >= 0)
            self->failed = true;
        else if (!self->failed) {
            self->failed = true;
            const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
            const char *cons
                = PQresultErrorField (r, PG_DIAG_CONSTRAINT_NAME);
            snprintf (self->sqlstate, sizeof self->sqlstate, "%s",
                      code ? code : "");
            snprintf (self->constraint, sizeof self->constraint, "%s",
                      cons ? cons : "");
            worker_pgerror_t e;
            worker_pgerror_classify (self->sqlstate, &e);
            const char *text = PQresultErrorField (r, PG_DIAG_MESSAGE_PRIMARY);
            /*  Unexpected failures need the server's words in our log;
                expected ones (409, 422) are per-message detail.  */
            if (e.status == 500)
                log_warn ("statement failed actor=%s op=%s "
                          "sqlstate=%s message=%s",
                          self->name, self->op ? self->op->name : "(setup)",
                          self->sqlstate, text ? text : "");
            else
                log_debug ("statement failed actor=%s sqlstate=%s "
                           "constraint=%s",
                           self->name, self->sqlstate,
                           self->constraint[0] ? self->constraint : "-");
        }
        PQclear (r);
        return;
    }
    if (st == PGRES_PIPELINE_ABORTED) {
        PQclear (r);
        return;
    }
    if (slot->kind == SLOT_PREPARE)
        self->prepared[self->op->steps[slot->step].index] = true;
    else if (slot->kind == SLOT_STEP && self->op) {
        const worker_step_t *step = &self->op->steps[slot->step];
        if (step->result == WORKER_RESULT_ONE && PQntuples (r) == 0
            && self->not_found < 0)
            self->not_found = (int) slot->step;
        if (slot->step == self->op->nsteps - 1) {
            PQclear (self->last);
            self->last = r;
            return;
        }
    }
    PQclear (r);
}

/*  A Sync came back: the setup is done, or a message's round trip.  */
static void
s_segment_done (s_actor_t *self)
{
    if (self->pg == S_PG_SETUP) {
        if (self->failed) {
            s_pg_fail (self, "session setup failed");
            return;
        }
        self->pg = S_PG_UP;
        self->pg_backoff = BACKOFF_MIN_MS;
        self->plan_len = self->plan_pos = 0;
        log_info ("postgres connected actor=%s", self->name);
        s_register (self);
        zstr_send (self->pipe, "CONNECTED");
        return;
    }
    if (!self->job)
        return;
    PGTransactionStatusType ts = PQtransactionStatus (self->conn);
    if (!self->finishing
        && (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)) {
        bool commit = !self->failed && self->not_found < 0;
        self->finishing = true;
        self->plan_len = self->plan_pos = 0;
        self->slot_done = false;
        int ok = PQsendQueryParams (self->conn, commit ? "COMMIT" : "ROLLBACK",
                                    0, NULL, NULL, NULL, NULL, 0);
        s_plan (self, SLOT_END, 0);
        ok = ok && PQpipelineSync (self->conn);
        s_plan (self, SLOT_SYNC, 0);
        if (!ok)
            s_pg_lost (self, "send failed");
        else
            s_pg_flush (self);
        return;
    }
    if (ts != PQTRANS_IDLE) {
        s_pg_lost (self, "unexpected transaction state");
        return;
    }
    self->plan_len = self->plan_pos = 0;
    s_job_complete (self);
}

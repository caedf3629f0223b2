/*  worker_actor.c: the worker actor.  One thread; everything below runs
    on it and shares nothing mutable with other actors.

    The actor holds a DEALER socket to the broker and a libpq connection in
    non-blocking pipeline mode, and polls the pipe, the socket and the
    PostgreSQL file descriptor in one zmq_poll, so it never blocks on the
    database.  It announces `READY service credit` only while PostgreSQL
    is connected: when the connection goes away it answers what was in
    its pipeline with 503, sends BYE (it no longer holds credit), hands the
    messages it had not started back to the broker (BACK) and reconnects
    with exponential backoff; once connected again it sends READY.  The
    broker therefore never routes work to an actor that cannot do it.

    On $TERM it drains the same way: BYE, BACK for everything not started
    (and for each REQ that crossed the BYE), the pipeline finished, then a
    HB until the broker's BYE says that nothing more is on its way, all
    within the drain timeout.

    Every hop costs a thread wake-up, so the actor does as much as it can
    per wake-up: it reads every message the socket has, then sends all of
    them into the pipeline at once, one segment (ending with a Sync) per
    message, and reads the results in order.  Each segment is its own
    transaction.  A single-step operation is sent as
        [Parse of statements not yet prepared on this connection]
        set_config('statement_timeout', <ms left>, true)
        the statement
        Sync
    and runs as the implicit transaction that the extended protocol opens
    for the statements before a Sync: the local setting holds for the
    statement, and an error rolls back the whole segment.  A failure only
    aborts its own segment; the next message's segment runs normally.

    An operation with several steps is a real transaction:
        BEGIN, set_config, step 1 .. step N, Sync
    A `one` step that finds no row must undo the steps before it, which
    the pipeline cannot know in advance, so COMMIT or ROLLBACK follows in a
    second round trip once the results are read.  To keep that simple
    such a message waits until the pipeline is empty and nothing is sent
    behind it until its transaction is over.

    A message with an asynchronous job id or an Idempotency-Key takes the
    same exclusive, two-phase path, with the calls of worker_jobs.c around
    the handler (docs/worker.md, "Jobs and idempotency"):
        [job_start, Sync]                      its own transaction
        BEGIN, set_config, [job_guard], [idem_begin], steps, Sync
        -- the reply is built from the results --
        set_config 0, [job_finish], [idem_finish], COMMIT, Sync
    and the reply leaves only after the COMMIT, so the handler's effect,
    the job's result and the stored response are all there or none is.
    A stored outcome (FY410, FY200), a busy or reused key (FY409, FY422)
    or a failed handler is answered after a ROLLBACK segment that reads
    the stored response or records the job as failed.

    Actor 0 of each pool also runs ferry.cleanup(batch) as a segment of
    its own every jobs.cleanup_interval, and again at once while a call
    deletes a full batch.  */

#include "ferry.h"
#include "envelope.h"
#include "log.h"
#include "proto.h"
#include "worker_actor.h"
#include "worker_breaker.h"
#include "worker_dead.h"
#include "worker_pgerror.h"
#include "worker_reply.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CONNECT_TIMEOUT_MS 10000
/*  The broker refuses longer message ids (BROKER_MSG_ID_MAX), so a
    fixed buffer per message is enough.  */
#define MSG_ID_MAX 64
/*  FRY1 REQ msg_id deadline attempt payload: the longest broker
    message.  */
#define FRAMES_MAX 6
/*  Dead letters waiting for the connection; the broker sends one per
    poison message, so more than this at one actor means something else
    is wrong.  */
#define DEAD_MAX 64

/*  Session settings every connection gets first, so result text has one
    known shape (worker_values.c relies on ISO dates in UTC and hex
    bytea) and floats print with all their digits.  */
static const char s_setup_sql[]
    = "SELECT set_config('DateStyle', 'ISO, MDY', false),"
      " set_config('TimeZone', 'UTC', false),"
      " set_config('IntervalStyle', 'iso_8601', false),"
      " set_config('bytea_output', 'hex', false),"
      " set_config('extra_float_digits', '3', false)";

/*  Prepared once per connection with the session settings: every message
    runs it, and a prepared statement spares the server a parse and plan
    each time.  */
static const char s_timeout_stmt[] = "ferry_timeout";
/*  A broken invariant of ours, not PostgreSQL being unreachable: the one
    reason to drop a connection that the breaker does not count.  */
static const char s_bad_state[] = "unexpected transaction state";
static const char s_timeout_sql[]
    = "SELECT set_config('statement_timeout', $1, true)";

typedef enum {
    S_PG_DOWN,       /* waiting for the next attempt */
    S_PG_CONNECTING, /* PQconnectPoll in progress */
    S_PG_SETUP,      /* connected, session settings in flight */
    S_PG_UP          /* ready for work */
} s_pg_state_t;

/*  What each result of a segment belongs to, in the order sent.  */
typedef enum {
    SLOT_SETUP,
    SLOT_PREPARE,
    SLOT_BEGIN,
    SLOT_TIMEOUT,
    SLOT_STEP,
    SLOT_END, /* the COMMIT or ROLLBACK of the second round trip */
    SLOT_JOB, /* a worker_jobs call whose result only matters if it fails */
    SLOT_STORED, /* a result kept in `last`: stored response, cleanup */
    SLOT_SYNC
} s_slot_kind_t;

/*  Where a message with a job or an Idempotency-Key is on its path.  */
typedef enum {
    PH_RUN,    /* [job_start], BEGIN .. handler steps */
    PH_COMMIT, /* job_finish, idem_finish, COMMIT */
    PH_STORED, /* ROLLBACK, read the stored response */
    PH_RECORD, /* ROLLBACK, record the job as failed */
    PH_RETRY   /* ROLLBACK, then run it again */
} s_phase_t;

typedef struct {
    s_slot_kind_t kind;
    size_t step;
} s_slot_t;

#define PLAN_MAX 64

/*  A message the broker gave us, from its arrival to its reply.  Jobs
    are recycled through the actor's spare list, so a steady load
    allocates none.  */
typedef struct _s_job_t s_job_t;
struct _s_job_t {
    s_job_t *next;                 /* in a s_fifo_t or the spare list */
    char msg_id[MSG_ID_MAX + 1];
    uint64_t deadline;             /* wall ms; 0 = none */
    zmq_msg_t payload;             /* the envelope, until decoded */
    ferry_envelope_t *request;     /* decoded before it is first sent */
    const worker_op_t *op;
    unsigned delivery;             /* the broker's attempt, 1 = first */
    unsigned attempts;             /* runs so far */
    bool setup;                    /* the session setup, not a message */
    bool cleanup;                  /* the cleanup call, not a message */
    bool dead;                     /* a dead letter's INSERT, not a
                                      message: in no credit */
    char *info;                    /* a dead letter's info (JSON text) */
    bool finishing;                /* COMMIT/ROLLBACK round trip */
    bool tracked;                  /* has a job id or Idempotency-Key */
    s_phase_t phase;               /* of a tracked message */
    bool replayed;                 /* PH_STORED reads the key's response */
    ferry_envelope_t *reply;       /* built before its COMMIT or record */
    worker_jobs_ctx_t jobs;        /* of a tracked message */

    s_slot_t plan[PLAN_MAX];       /* results expected, in order */
    size_t plan_len;
    size_t plan_pos;
    bool slot_done;                /* plan[pos] had its result */

    bool failed;                   /* a statement failed */
    char sqlstate[6];
    char constraint[64];
    int not_found;                 /* `one` step without a row, or -1 */
    PGresult *last;                /* the last step's result */
};

typedef struct {
    s_job_t *head;
    s_job_t *tail;
    size_t size;
} s_fifo_t;

typedef struct {
    zsock_t *pipe;                   /* to the pool */
    const worker_actor_args_t *args; /* borrowed from the pool */
    char name[FERRY_NAME_MAX + 16];  /* "app/2", for logs */
    bool terminating;                /* $TERM received: draining */
    bool leaving;                    /* draining, and the broker may still
                                        send us work it dispatched before
                                        it read our BYE: wait for its BYE
                                        (the answer to a HB once it has
                                        forgotten us) */
    bool idle_probed;                /* HB sent since we last had work */
    int64_t drain_until;             /* mono ms the drain gives up */
    bool done;                       /* leave the loop */
    worker_breaker_state_t breaker;  /* the pool breaker's state when we
                                        last looked */
    uint64_t rng;                    /* backoff jitter */

    zsock_t *broker;                 /* DEALER to the broker backend */
    bool registered;                 /* READY sent, BYE not yet */
    int64_t broker_seen;             /* mono ms of the last broker message */
    int64_t broker_sent;             /* mono ms of our last message */
    int64_t hb_sent;                 /* mono ms of our last HB: replies
                                        do not carry the breaker state,
                                        so a busy actor sends one too */

    PGconn *conn;
    s_pg_state_t pg;
    PostgresPollingStatusType want;  /* while connecting */
    int64_t pg_next_try;             /* mono ms, while down */
    int64_t pg_backoff;              /* next backoff, ms */
    int64_t pg_give_up;              /* mono ms, while connecting */
    bool flush_pending;              /* libpq has output left to send */
    bool *prepared;                  /* per step index, this connection */

    s_fifo_t waiting;                /* received, not sent yet */
    s_fifo_t sent;                   /* in the pipeline, in order */
    s_fifo_t dead;                   /* dead letters not written yet */
    size_t dead_sent;                /* dead letters in `sent` */
    bool exclusive;                  /* a multi-step job is in `sent` */
    s_job_t *spare;                  /* recycled jobs */
    s_job_t setup;                   /* the session setup segment */
    s_job_t cleanup;                 /* actor 0: the cleanup segment */
    bool cleanup_busy;               /* cleanup in the pipeline */
    int64_t cleanup_next;            /* mono ms of the next cleanup */

    /*  Reused for every reply so that encoding allocates nothing once
        they have grown to the usual reply size.  */
    msgpack_sbuffer body;            /* a result as msgpack */
    msgpack_sbuffer out;             /* an encoded reply envelope */
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
static void s_fifo_push (s_fifo_t *fifo, s_job_t *job);
static void s_fifo_push_front (s_fifo_t *fifo, s_job_t *job);
static s_job_t *s_fifo_pop (s_fifo_t *fifo);
static s_job_t *s_job_new (s_actor_t *self);
static void s_job_recycle (s_actor_t *self, s_job_t *job);
static void s_job_arrive (s_actor_t *self, const zmq_msg_t *id,
                          uint64_t deadline, unsigned attempt,
                          zmq_msg_t *payload);
static void s_dead_arrive (s_actor_t *self, const zmq_msg_t *id,
                           const zmq_msg_t *info, zmq_msg_t *payload);
static bool s_dead_send (s_actor_t *self);
static void s_dead_done (s_actor_t *self, s_job_t *job);
static void s_heartbeat (s_actor_t *self);
static void s_reply_raw (s_actor_t *self, const char *msg_id,
                         unsigned status, const char *detail);
static void s_reply_problem (s_actor_t *self, const char *msg_id,
                             unsigned status, const char *detail,
                             unsigned retry_after);
static void s_reply_breaker (s_actor_t *self, const char *msg_id);
static void s_breaker_follow (s_actor_t *self, int64_t now);
static void s_hand_back (s_actor_t *self, const char *msg_id,
                         const zmq_msg_t *payload);
static void s_back_waiting (s_actor_t *self);
static void s_drain (s_actor_t *self, int64_t now);
static void s_pump (s_actor_t *self);
static int s_job_prepare (s_actor_t *self, s_job_t *job);
static int s_job_send (s_actor_t *self, s_job_t *job);
static void s_job_problem (s_actor_t *self, s_job_t *job, unsigned status,
                           const char *detail, const char *sqlstate);
static void s_job_reply (s_actor_t *self, s_job_t *job,
                         ferry_envelope_t **reply_p);
static void s_job_complete (s_actor_t *self, s_job_t *job);
static void s_outcome_reset (s_job_t *job);
static void s_pg_start (s_actor_t *self);
static void s_pg_connect_poll (s_actor_t *self);
static void s_pg_fail (s_actor_t *self, const char *what);
static void s_pg_lost (s_actor_t *self, const char *what);
static void s_pg_io (s_actor_t *self, short revents);
static void s_pg_read (s_actor_t *self);
static void s_pg_flush (s_actor_t *self);
static void s_slot_result (s_actor_t *self, s_job_t *job,
                           const s_slot_t *slot, PGresult *r);
static void s_segment_done (s_actor_t *self, s_job_t *job);
static void s_plan (s_job_t *job, s_slot_kind_t kind, size_t step);
static bool s_send_call (s_actor_t *self, s_job_t *job,
                         worker_jobs_stmt_t which, s_slot_kind_t kind);
static void s_tracked_done (s_actor_t *self, s_job_t *job);
static void s_tracked_reject (s_actor_t *self, s_job_t *job,
                              ferry_envelope_t *reply);
static void s_tracked_end (s_actor_t *self, s_job_t *job,
                           ferry_envelope_t *reply);
static bool s_cleanup_due (s_actor_t *self, int64_t now);
static bool s_cleanup_send (s_actor_t *self);
static void s_cleanup_done (s_actor_t *self, s_job_t *job);
static void s_check_idle (s_actor_t *self);

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
        /*  Results first: they free pipeline room and produce replies,
            and the messages read next then go out in one batch.  */
        if (nitems == 3 && items[2].revents && self->conn == polled)
            s_pg_io (self, items[2].revents);
        if (items[1].revents & ZMQ_POLLIN)
            s_broker_recv (self);
        s_pump (self);
        if (self->terminating)
            s_drain (self, ferry_mono_ms ());
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
    self->prepared = ferry_calloc (worker_ops_steps (a->ops) + 1, 1);
    self->pg = S_PG_DOWN;
    self->pg_backoff = BACKOFF_MIN_MS;
    self->pg_next_try = 0; /* connect at once */
    self->setup.setup = true;
    zmq_msg_init (&self->setup.payload);
    s_outcome_reset (&self->setup);
    worker_jobs_ctx_init (&self->setup.jobs);
    self->cleanup.cleanup = true;
    zmq_msg_init (&self->cleanup.payload);
    s_outcome_reset (&self->cleanup);
    worker_jobs_ctx_init (&self->cleanup.jobs);
    snprintf (self->cleanup.jobs.batch, sizeof self->cleanup.jobs.batch,
              "%" PRId64, a->jobs ? a->jobs->cleanup_batch : 0);
    msgpack_sbuffer_init (&self->body);
    msgpack_sbuffer_init (&self->out);
    s_broker_open (self);
    return self;
}

static void
s_actor_destroy (s_actor_t **self_p)
{
    s_actor_t *self = *self_p;
    s_job_t *job;
    while ((job = s_fifo_pop (&self->waiting)))
        s_job_recycle (self, job);
    while ((job = s_fifo_pop (&self->sent)))
        if (job->dead)
            s_fifo_push (&self->dead, job);
        else if (!job->setup && !job->cleanup)
            s_job_recycle (self, job);
    while ((job = s_fifo_pop (&self->dead))) {
        log_error ("dead letter not written msg=%s actor=%s "
                   "reason=worker stopping",
                   job->msg_id, self->name);
        s_job_recycle (self, job);
    }
    while ((job = self->spare)) {
        self->spare = job->next;
        zmq_msg_close (&job->payload);
        worker_jobs_ctx_destroy (&job->jobs);
        free (job);
    }
    s_outcome_reset (&self->setup);
    zmq_msg_close (&self->setup.payload);
    worker_jobs_ctx_destroy (&self->setup.jobs);
    s_outcome_reset (&self->cleanup);
    zmq_msg_close (&self->cleanup.payload);
    worker_jobs_ctx_destroy (&self->cleanup.jobs);
    if (self->conn)
        PQfinish (self->conn);
    /*  Linger so the final BYE and replies leave before the socket.  */
    zsock_set_linger (self->broker, 1000);
    zsock_destroy (&self->broker);
    msgpack_sbuffer_destroy (&self->body);
    msgpack_sbuffer_destroy (&self->out);
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
    if (cmd && strcmp (cmd, "$TERM") == 0 && !self->terminating) {
        log_debug ("terminating actor=%s", self->name);
        self->terminating = true;
        self->drain_until = ferry_mono_ms () + self->args->drain_ms;
        /*  BYE first, so the broker sends nothing more and keeps what we
            hand back for another worker; then the messages we have not
            started go back.  The pipeline's finish here.  */
        if (self->registered) {
            s_withdraw (self);
            self->leaving = true;
        }
        s_back_waiting (self);
    }
    else if (cmd && strcmp (cmd, "$TERM") == 0) {
        /*  zactor_destroy repeats it: the drain is under way.  */
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
        else if (now - self->hb_sent >= a->heartbeat_ms)
            s_heartbeat (self);
    }
    else if (self->leaving) {
        /*  Draining: the broker still counts on our heartbeats while we
            finish, and a broker that went silent sends nothing more.  */
        if (now - self->broker_seen > a->heartbeat_ms * (int64_t) a->liveness) {
            log_warn ("broker silent while draining actor=%s", self->name);
            self->leaving = false;
        }
        else if (now - self->hb_sent >= a->heartbeat_ms)
            s_heartbeat (self);
    }
    s_breaker_follow (self, now);
    if (self->pg == S_PG_DOWN && now >= self->pg_next_try
        && !self->terminating) {
        if (self->breaker == WORKER_BREAKER_OPEN)
            /*  No PostgreSQL calls while open, connects included; look
                again soon for the end of the cool-down.  */
            self->pg_next_try = now + BACKOFF_MIN_MS;
        else
            s_pg_start (self);
    }
    else if ((self->pg == S_PG_CONNECTING || self->pg == S_PG_SETUP)
             && now >= self->pg_give_up)
        s_pg_fail (self, "connect timed out");
}

/*  Follows the pool's breaker.  While it is not closed every actor holds
    credit, connected or not, so that the broker hands the pool's
    messages to us and we answer them 503 at once (a pool without actors
    would make them wait for the broker's no-worker grace); once it
    closes, an actor without a connection withdraws again.  When it turns
    half-open an actor without a connection tries one at once: that is a
    probe too.  A change is told to the broker at once, in a HB after
    the READY or BYE it may cause (the broker keeps the state of the
    workers it knows, for `ferryctl status`).  */
static void
s_breaker_follow (s_actor_t *self, int64_t now)
{
    worker_breaker_state_t bs = worker_breaker_state (self->args->breaker,
                                                      now);
    bool changed = bs != self->breaker;
    if (changed) {
        if (bs == WORKER_BREAKER_HALF_OPEN && self->pg == S_PG_DOWN) {
            self->pg_backoff = BACKOFF_MIN_MS;
            self->pg_next_try = now + s_jitter (self, BACKOFF_MIN_MS);
        }
        self->breaker = bs;
    }
    bool was = self->registered;
    if (!self->terminating && !self->leaving) {
        if (bs != WORKER_BREAKER_CLOSED)
            s_register (self); /* which sends the HB */
        else if (self->registered && self->pg != S_PG_UP)
            s_withdraw (self);
    }
    /*  Only to a broker that knows us: it answers a HB from a stranger
        with BYE.  */
    if (changed && ((was && self->registered) || self->leaving))
        s_heartbeat (self);
}

static long
s_poll_timeout (s_actor_t *self, int64_t now)
{
    const worker_actor_args_t *a = self->args;
    int64_t next = now + 1000;
    if (self->registered || self->leaving) {
        int64_t hb = self->hb_sent + a->heartbeat_ms;
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
    if (self->terminating && self->drain_until < next)
        next = self->drain_until;
    /*  s_pump sends it only then; waking for it otherwise would spin.  */
    if (s_cleanup_due (self, INT64_MAX) && !self->exclusive
        && !self->terminating && self->cleanup_next < next)
        next = self->cleanup_next;
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

/*  Sends FRY1 cmd [a1] [a2] [data].  Frames go straight to zmq_send,
    which copies small frames into the message itself instead of the
    malloc per frame that a zmsg costs.  ZMQ_DONTWAIT: an actor never
    blocks, and a broker that cannot take our messages at the high-water
    mark is gone; the heartbeat timeout then reconnects.  */
static void
s_broker_send (s_actor_t *self, const char *cmd, const char *a1,
               const char *a2, const void *data, size_t size)
{
    void *sock = zsock_resolve (self->broker);
    const void *part[5] = {FERRY_PROTO, cmd, a1, a2, data};
    size_t len[5] = {sizeof FERRY_PROTO - 1, strlen (cmd),
                     a1 ? strlen (a1) : 0, a2 ? strlen (a2) : 0, size};
    int last = data ? 4 : a2 ? 3 : a1 ? 2 : 1;
    for (int i = 0; i <= last; i++) {
        if (i > 1 && !part[i])
            continue;
        int flags = ZMQ_DONTWAIT | (i < last ? ZMQ_SNDMORE : 0);
        /*  Only the first frame can fail for want of room: ZeroMQ takes
            the rest of a message once it took its first frame.  */
        if (zmq_send (sock, part[i], len[i], flags) == -1) {
            log_warn ("send to broker failed cmd=%s actor=%s error=%s", cmd,
                      self->name, zmq_strerror (errno));
            break;
        }
    }
    self->broker_sent = ferry_mono_ms ();
}

/*  READY service credit process: three text arguments, which
    s_broker_send (two and a payload) has no room for.  */
static void
s_broker_send3 (s_actor_t *self, const char *cmd, const char *a1,
                const char *a2, const char *a3)
{
    s_broker_send (self, cmd, a1, a2, a3, strlen (a3));
}

/*  HB breaker: the pool breaker's state as the actor last saw it, which
    the broker shows in its status.  */
static void
s_heartbeat (s_actor_t *self)
{
    s_broker_send (self, FERRY_CMD_HB,
                   worker_breaker_state_name (self->breaker), NULL, NULL, 0);
    self->hb_sent = self->broker_sent;
}

static void
s_register (s_actor_t *self)
{
    if (self->registered || self->terminating)
        return;
    char credit[16];
    snprintf (credit, sizeof credit, "%u", self->args->credit);
    if (self->args->process)
        s_broker_send3 (self, FERRY_CMD_READY, self->args->service, credit,
                        self->args->process);
    else
        s_broker_send (self, FERRY_CMD_READY, self->args->service, credit,
                       NULL, 0);
    self->registered = true;
    self->broker_seen = ferry_mono_ms ();
    /*  READY carries no breaker state: tell it now, not a heartbeat
        later, so that status never shows a stale one.  */
    s_heartbeat (self);
}

static void
s_withdraw (s_actor_t *self)
{
    if (!self->registered)
        return;
    s_broker_send (self, FERRY_CMD_BYE, NULL, NULL, NULL, 0);
    self->registered = false;
}

static bool
s_frame_is (zmq_msg_t *frame, const char *s)
{
    size_t len = strlen (s);
    return zmq_msg_size (frame) == len
           && memcmp (zmq_msg_data (frame), s, len) == 0;
}

/*  Reads every message the socket holds now, so that one wake-up feeds
    one pipeline batch.  Frames are zmq_msg_t on the stack and the
    payload moves into its job without a copy.  */
static void
s_broker_recv (s_actor_t *self)
{
    void *sock = zsock_resolve (self->broker);
    zmq_msg_t frame[FRAMES_MAX];
    while (true) {
        size_t n = 0;
        bool more = true, oversized = false;
        while (more) {
            zmq_msg_t *f = &frame[n < FRAMES_MAX ? n : FRAMES_MAX - 1];
            if (n >= FRAMES_MAX) {
                /*  Too many frames: keep reading into the last one so
                    the message is drained, and drop it below.  */
                zmq_msg_close (f);
                oversized = true;
            }
            zmq_msg_init (f);
            if (zmq_msg_recv (f, sock, ZMQ_DONTWAIT) == -1) {
                zmq_msg_close (f);
                break;
            }
            more = zmq_msg_more (f);
            if (n < FRAMES_MAX)
                n++;
        }
        if (n == 0)
            return; /* EAGAIN: nothing more now */
        self->broker_seen = ferry_mono_ms ();
        if (oversized || more || n < 2 || !s_frame_is (&frame[0], FERRY_PROTO))
            log_warn ("malformed broker message actor=%s", self->name);
        else if (s_frame_is (&frame[1], FERRY_CMD_REQ)
                 && (n == 5 || n == 6)) {
            /*  REQ msg_id deadline [attempt] payload: a broker from before
                attempts sends no attempt, which is the first.  */
            uint64_t deadline;
            unsigned attempt;
            if (zmq_msg_size (&frame[2]) > MSG_ID_MAX)
                log_warn ("malformed broker message actor=%s", self->name);
            else if (worker_req_fields (
                         zmq_msg_data (&frame[3]), zmq_msg_size (&frame[3]),
                         n == 6 ? zmq_msg_data (&frame[4]) : NULL,
                         n == 6 ? zmq_msg_size (&frame[4]) : 0, &deadline,
                         &attempt))
                log_warn ("bad deadline or attempt actor=%s", self->name);
            else
                s_job_arrive (self, &frame[2], deadline, attempt,
                              &frame[n - 1]);
        }
        else if (s_frame_is (&frame[1], FERRY_CMD_DEAD) && n == 5) {
            if (zmq_msg_size (&frame[2]) == 0
                || zmq_msg_size (&frame[2]) > MSG_ID_MAX)
                log_warn ("malformed broker message actor=%s", self->name);
            else
                s_dead_arrive (self, &frame[2], &frame[3], &frame[4]);
        }
        else if (s_frame_is (&frame[1], FERRY_CMD_HB)) {
            /*  Sign of life, already noted.  */
        }
        else if (s_frame_is (&frame[1], FERRY_CMD_BYE)) {
            /*  The broker restarted or declared us dead; or, while we
                drain, it has forgotten us: nothing more is on its way.  */
            if (self->leaving) {
                log_debug ("broker released us actor=%s", self->name);
                self->leaving = false;
            }
            else if (self->registered) {
                log_info ("broker forgot us, announcing again "
                          "actor=%s", self->name);
                self->registered = false;
                s_register (self);
            }
        }
        else
            log_warn ("unexpected broker command actor=%s",
                      self->name);
        for (size_t i = 0; i < n; i++)
            zmq_msg_close (&frame[i]);
    }
}

/* ---- jobs --------------------------------------------------------------- */

static void
s_fifo_push (s_fifo_t *fifo, s_job_t *job)
{
    job->next = NULL;
    if (fifo->tail)
        fifo->tail->next = job;
    else
        fifo->head = job;
    fifo->tail = job;
    fifo->size++;
}

static void
s_fifo_push_front (s_fifo_t *fifo, s_job_t *job)
{
    job->next = fifo->head;
    fifo->head = job;
    if (!fifo->tail)
        fifo->tail = job;
    fifo->size++;
}

static s_job_t *
s_fifo_pop (s_fifo_t *fifo)
{
    s_job_t *job = fifo->head;
    if (job) {
        fifo->head = job->next;
        if (!fifo->head)
            fifo->tail = NULL;
        job->next = NULL;
        fifo->size--;
    }
    return job;
}

static s_job_t *
s_job_new (s_actor_t *self)
{
    s_job_t *job = self->spare;
    if (job)
        self->spare = job->next;
    else {
        job = ferry_calloc (1, sizeof *job);
        zmq_msg_init (&job->payload);
        worker_jobs_ctx_init (&job->jobs);
    }
    job->next = NULL;
    job->delivery = 1;
    job->attempts = 0;
    job->dead = false;
    job->finishing = false;
    job->tracked = false;
    job->phase = PH_RUN;
    job->replayed = false;
    job->reply = NULL;
    job->request = NULL;
    job->op = NULL;
    job->plan_len = job->plan_pos = 0;
    job->slot_done = false;
    job->not_found = -1;
    return job;
}

/*  Frees what the job holds and keeps the job itself for the next
    message.  There are at most credit + 1 jobs, so the list is short.  */
static void
s_job_recycle (s_actor_t *self, s_job_t *job)
{
    zmq_msg_close (&job->payload);
    zmq_msg_init (&job->payload);
    if (job->tracked) {
        ferry_envelope_destroy (&job->reply);
        worker_jobs_ctx_clear (&job->jobs);
    }
    ferry_envelope_destroy (&job->request);
    free (job->info);
    job->info = NULL;
    s_outcome_reset (job);
    job->next = self->spare;
    self->spare = job;
}

/*  Takes the payload (moved out of *payload, which stays a valid empty
    message for the caller to close).  */
static void
s_job_arrive (s_actor_t *self, const zmq_msg_t *id, uint64_t deadline,
              unsigned attempt, zmq_msg_t *payload)
{
    char msg_id[MSG_ID_MAX + 1];
    size_t len = zmq_msg_size ((zmq_msg_t *) id);
    memcpy (msg_id, zmq_msg_data ((zmq_msg_t *) id), len);
    msg_id[len] = '\0';
    /*  A drain asks the broker again once this one is dealt with.  */
    self->idle_probed = false;
    if (deadline && ferry_wall_ms () >= deadline) {
        s_reply_raw (self, msg_id, 504,
                     "the deadline passed before the worker started");
        return;
    }
    /*  One atomic load while the breaker is closed.  Half-open, an actor
        with a connection may run a probe (s_pump decides).  */
    if (!worker_breaker_closed (self->args->breaker) && !self->terminating) {
        worker_breaker_state_t bs
            = worker_breaker_state (self->args->breaker, ferry_mono_ms ());
        if (bs == WORKER_BREAKER_OPEN
            || (bs == WORKER_BREAKER_HALF_OPEN && self->pg != S_PG_UP)) {
            s_reply_breaker (self, msg_id);
            return;
        }
    }
    if (!self->registered || self->pg != S_PG_UP || self->terminating) {
        /*  Sent before the broker saw our BYE: it never ran, so another
            worker may run it.  */
        s_hand_back (self, msg_id, payload);
        return;
    }
    /*  The broker keeps to our credit; a broker that does not is not
        allowed to grow our memory.  One spare for a READY repeated after
        a broker reconnect while messages were in hand.  */
    if (self->waiting.size + self->sent.size - self->dead_sent
        >= self->args->credit + 1) {
        s_reply_raw (self, msg_id, 503, "the worker is over its credit");
        return;
    }
    s_job_t *job = s_job_new (self);
    memcpy (job->msg_id, msg_id, len + 1);
    job->deadline = deadline;
    job->delivery = attempt;
    zmq_msg_move (&job->payload, payload);
    s_fifo_push (&self->waiting, job);
}

/*  A problem reply for a message we did not decode (or cannot).  */
static void
s_reply_raw (s_actor_t *self, const char *msg_id, unsigned status,
             const char *detail)
{
    s_reply_problem (self, msg_id, status, detail, status == 503 ? 1 : 0);
}

/*  The open breaker's answer: 503, retry when the cool-down ends.  */
static void
s_reply_breaker (s_actor_t *self, const char *msg_id)
{
    s_reply_problem (
        self, msg_id, 503,
        "the database is unavailable (circuit breaker open)",
        worker_breaker_retry_after (self->args->breaker, ferry_mono_ms ()));
}

static void
s_reply_problem (s_actor_t *self, const char *msg_id, unsigned status,
                 const char *detail, unsigned retry_after)
{
    msgpack_sbuffer_clear (&self->out);
    if (ferry_problem_reply_encode (msg_id, status, detail, retry_after,
                                    &self->out)
        == 0)
        s_broker_send (self, FERRY_CMD_REP, msg_id, NULL, self->out.data,
                       self->out.size);
    else
        log_error ("cannot encode problem msg=%s", msg_id);
}

/*  BACK msg_id payload: returns a message we have not started to the
    broker, which queues it again for another worker.  The payload is the
    envelope as it came (the broker gave a non-retryable one away).  */
static void
s_hand_back (s_actor_t *self, const char *msg_id, const zmq_msg_t *payload)
{
    log_debug ("handing back msg=%s actor=%s", msg_id, self->name);
    s_broker_send (self, FERRY_CMD_BACK, msg_id, NULL,
                   zmq_msg_data ((zmq_msg_t *) payload),
                   zmq_msg_size ((zmq_msg_t *) payload));
}

static void
s_back_waiting (s_actor_t *self)
{
    s_job_t *job;
    while ((job = s_fifo_pop (&self->waiting))) {
        s_hand_back (self, job->msg_id, &job->payload);
        s_job_recycle (self, job);
    }
}

/*  One step of a drain: done once the pipeline is empty and the broker
    has confirmed (its BYE) that it sends us nothing more, or at the drain
    timeout.  What is still in the pipeline then is the broker's to
    handle when it finds us silent (its death rules).  */
static void
s_drain (s_actor_t *self, int64_t now)
{
    if (now >= self->drain_until) {
        log_warn ("drain timed out actor=%s in_flight=%zu", self->name,
                  self->sent.size);
        self->done = true;
        return;
    }
    if (self->sent.size || self->waiting.size
        || (self->dead.size && self->pg == S_PG_UP))
        return;
    if (!self->leaving) {
        self->done = true;
        return;
    }
    /*  Idle, and everything we were given is answered or handed back.
        The broker answers a HB from a worker it has forgotten with BYE;
        a message it dispatched before it read our BYE reaches us first,
        and we hand it back and ask again.  */
    if (!self->idle_probed) {
        s_heartbeat (self);
        self->idle_probed = true;
    }
}

/*  Sends the waiting messages into the pipeline, all of them when they
    are single-step, and flushes once.  Messages answered without
    PostgreSQL (expired, invalid) are answered here.  A multi-step
    message waits for an empty pipeline and holds it to itself.  */
static void
s_pump (s_actor_t *self)
{
    bool queued = false;
    /*  A retried message comes back here: nothing new starts in a
        drain.  */
    if (self->terminating)
        s_back_waiting (self);
    while (self->pg == S_PG_UP && !self->exclusive && self->waiting.head) {
        s_job_t *job = s_fifo_pop (&self->waiting);
        if (job->deadline && ferry_wall_ms () >= job->deadline) {
            s_reply_raw (self, job->msg_id, 504,
                         "the deadline passed before the worker started");
            s_job_recycle (self, job);
            continue;
        }
        if (!job->request && s_job_prepare (self, job))
            continue;
        bool multi = job->op->nsteps > 1 || job->tracked;
        if (multi && self->sent.size) {
            s_fifo_push_front (&self->waiting, job);
            break;
        }
        /*  Open: no PostgreSQL calls.  Half-open: a few probes.  */
        if (!worker_breaker_closed (self->args->breaker)
            && !worker_breaker_admit (self->args->breaker,
                                      ferry_mono_ms ())) {
            s_reply_breaker (self, job->msg_id);
            s_job_recycle (self, job);
            continue;
        }
        if (s_job_send (self, job))
            continue;
        queued = true;
        self->exclusive = multi;
    }
    /*  Never behind a tracked or multi-step message: its transaction is
        open until its second round trip, and the cleanup would run in
        it.  */
    if (self->pg == S_PG_UP && !self->exclusive && !self->terminating
        && s_cleanup_due (self, ferry_mono_ms ()))
        queued = s_cleanup_send (self) || queued;
    /*  Dead letters: their own segment each, so they never share a
        transaction with a message; not behind an exclusive message for
        the same reason as the cleanup.  */
    while (self->pg == S_PG_UP && !self->exclusive && self->dead.head)
        if (s_dead_send (self))
            queued = true;
        else
            break;
    if (queued && self->conn)
        s_pg_flush (self);
}

/*  Decodes the envelope and finds the operation.  Returns 0, or -1 when
    the message was answered (400, 404) and recycled.  */
static int
s_job_prepare (s_actor_t *self, s_job_t *job)
{
    char err[160];
    job->request = ferry_envelope_decode (zmq_msg_data (&job->payload),
                                          zmq_msg_size (&job->payload), NULL,
                                          err, sizeof err);
    if (!job->request) {
        log_warn ("undecodable envelope msg=%s reason=%s", job->msg_id,
                  err);
        s_reply_raw (self, job->msg_id, 400,
                     "the message is not a valid envelope");
        s_job_recycle (self, job);
        return -1;
    }
    /*  The broker's count of deliveries is the one that matters (the
        edge sends 1): handlers, logs and dead letters see it.  */
    ferry_envelope_set_attempt (job->request, job->delivery);
    /*  The envelope owns copies of what it needs; the payload stays
        until the reply, so a message not started yet can be handed back
        whole.  */
    job->op = worker_ops_find (self->args->ops,
                               ferry_envelope_operation (job->request));
    if (!job->op) {
        s_job_problem (self, job, 404, "unknown operation", NULL);
        return -1;
    }
    const char *poison = self->args->abort_operation;
    if (poison && strcmp (poison, job->op->name) == 0) {
        /*  Test only: a message that crashes its worker process every
            time, with whatever the other actors hold in flight.  */
        log_warn ("FERRY_TEST_ABORT_OPERATION: aborting msg=%s op=%s "
                  "attempt=%u actor=%s",
                  job->msg_id, poison, job->delivery, self->name);
        abort ();
    }
    job->tracked = worker_jobs_wanted (job->request);
    if (job->tracked && (!self->args->jobs
                         || worker_jobs_ctx_begin (&job->jobs, job->request,
                                                   self->args->jobs))) {
        log_error ("cannot hash request msg=%s", job->msg_id);
        s_job_problem (self, job, 500, "the request could not be hashed",
                       NULL);
        return -1;
    }
    log_debug ("start msg=%s cid=%s op=%s attempt=%u actor=%s", job->msg_id,
               ferry_envelope_cid (job->request)
                   ? ferry_envelope_cid (job->request)
                   : "-",
               job->op->name, job->delivery, self->name);
    return 0;
}

/*  Binds the parameters and queues the message's segment in libpq's
    output buffer; s_pump flushes.  Returns 0 when queued, -1 when the
    message was answered (and recycled) or the connection dropped.  */
static int
s_job_send (s_actor_t *self, s_job_t *job)
{
    const worker_op_t *op = job->op;
    const msgpack_object *args = ferry_envelope_args (job->request);
    const msgpack_object *body = ferry_envelope_body (job->request);
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
        s_outcome_reset (job);
        job->plan_len = job->plan_pos = 0;
        job->slot_done = false;
        job->finishing = false;
        job->phase = PH_RUN;
        s_fifo_push (&self->sent, job);
        for (size_t s = 0; sent && s < op->nsteps; s++) {
            const worker_step_t *st = &op->steps[s];
            if (self->prepared[st->index])
                continue;
            sent = PQsendPrepare (conn, st->stmt, st->sql, (int) st->nparams,
                                  st->oids)
                   == 1;
            s_plan (job, SLOT_PREPARE, s);
            /*  Messages behind this one in the same batch use the
                statement too; a failed Parse clears the mark again.  */
            self->prepared[st->index] = true;
        }
        if (job->tracked && job->jobs.job) {
            /*  'running' must show while the handler works, so
                job_start commits on its own, before the handler's
                transaction.  */
            sent = sent && s_send_call (self, job, WORKER_JOBS_START,
                                        SLOT_JOB);
            sent = sent && PQpipelineSync (conn) == 1;
            s_plan (job, SLOT_SYNC, 0);
        }
        if (op->nsteps > 1 || job->tracked) {
            sent = sent
                   && PQsendQueryParams (conn, "BEGIN", 0, NULL, NULL, NULL,
                                         NULL, 0) == 1;
            s_plan (job, SLOT_BEGIN, 0);
        }
        /*  The time left, computed here; never request data.  0 would
            disable the timeout, so a message without deadline gets none
            and one about to expire gets 1 ms.  */
        char ms[32] = "0";
        if (job->deadline) {
            uint64_t now = ferry_wall_ms ();
            uint64_t left = job->deadline > now ? job->deadline - now : 1;
            snprintf (ms, sizeof ms, "%" PRIu64, left);
        }
        const char *tv[1] = {ms};
        sent = sent
               && PQsendQueryPrepared (conn, s_timeout_stmt, 1, tv, NULL, NULL,
                                       0) == 1;
        s_plan (job, SLOT_TIMEOUT, 0);
        if (job->tracked && job->jobs.job)
            sent = sent && s_send_call (self, job, WORKER_JOBS_GUARD,
                                        SLOT_JOB);
        if (job->tracked && job->jobs.idem)
            sent = sent && s_send_call (self, job, WORKER_JOBS_IDEM_BEGIN,
                                        SLOT_JOB);
        for (size_t s = 0; sent && s < op->nsteps; s++) {
            const worker_step_t *st = &op->steps[s];
            sent = PQsendQueryPrepared (conn, st->stmt, (int) st->nparams,
                                        (const char *const *) values[s],
                                        NULL, NULL, 0) == 1;
            s_plan (job, SLOT_STEP, s);
        }
        sent = sent && PQpipelineSync (conn) == 1;
        s_plan (job, SLOT_SYNC, 0);
    }
    for (size_t s = 0; s < op->nsteps; s++)
        if (values[s]) {
            worker_step_values_free (&op->steps[s], values[s]);
            free (values[s]);
        }
    free (values);
    if (rc == -1) {
        if (job->tracked && job->jobs.job)
            s_tracked_reject (self, job,
                              worker_reply_problem (job->request, 422, err,
                                                    NULL));
        else
            s_job_problem (self, job, 422, err, NULL);
        return -1;
    }
    if (!sent) {
        /*  Answers the job too: it is in `sent` already.  */
        s_pg_lost (self, "send failed");
        return -1;
    }
    return 0;
}

/*  Queues one worker_jobs statement of job (unnamed: these run once or
    twice per message, not on the fast path).  */
static bool
s_send_call (s_actor_t *self, s_job_t *job, worker_jobs_stmt_t which,
             s_slot_kind_t kind)
{
    worker_jobs_call_t call;
    worker_jobs_call (&job->jobs, which, &call);
    s_plan (job, kind, 0);
    return PQsendQueryParams (self->conn, call.sql, call.nparams, NULL,
                              call.values, call.lengths, call.formats, 0)
           == 1;
}

static void
s_plan (s_job_t *job, s_slot_kind_t kind, size_t step)
{
    /*  PLAN_MAX bounds steps per operation far above any sane config.  */
    assert (job->plan_len < PLAN_MAX);
    job->plan[job->plan_len].kind = kind;
    job->plan[job->plan_len].step = step;
    job->plan_len++;
}

/*  Starts a segment of job on the connection: a fresh outcome and plan,
    and the job queued to read its results in order.  */
static void
s_segment_begin (s_actor_t *self, s_job_t *job)
{
    s_outcome_reset (job);
    job->plan_len = job->plan_pos = 0;
    job->slot_done = false;
    s_fifo_push (&self->sent, job);
}

/*  Ends the segment with its Sync.  ok says whether every statement of
    it was sent; when that or the Sync failed the connection is lost.
    Returns whether the segment is on its way.  */
static bool
s_segment_end (s_actor_t *self, s_job_t *job, bool ok)
{
    ok = ok && PQpipelineSync (self->conn) == 1;
    s_plan (job, SLOT_SYNC, 0);
    if (!ok)
        s_pg_lost (self, "send failed");
    return ok;
}

static void
s_outcome_reset (s_job_t *job)
{
    job->failed = false;
    job->sqlstate[0] = '\0';
    job->constraint[0] = '\0';
    job->not_found = -1;
    PQclear (job->last);
    job->last = NULL;
}

/*  Adds our span to the reply, encodes it and sends it; recycles the
    job, which must be in no list.  */
static void
s_job_reply (s_actor_t *self, s_job_t *job, ferry_envelope_t **reply_p)
{
    ferry_envelope_t *reply = *reply_p;
    worker_reply_trace (job->request, reply);
    msgpack_sbuffer_clear (&self->out);
    if (ferry_envelope_encode (reply, &self->out) == 0)
        s_broker_send (self, FERRY_CMD_REP, job->msg_id, NULL, self->out.data,
                       self->out.size);
    else {
        log_error ("cannot encode reply msg=%s", job->msg_id);
        s_reply_raw (self, job->msg_id, 500,
                     "the reply could not be encoded");
    }
    ferry_envelope_destroy (reply_p);
    s_job_recycle (self, job);
}

static void
s_job_problem (s_actor_t *self, s_job_t *job, unsigned status,
               const char *detail, const char *sqlstate)
{
    log_debug ("problem msg=%s status=%u actor=%s", job->msg_id, status,
               self->name);
    ferry_envelope_t *reply
        = worker_reply_problem (job->request, status, detail, sqlstate);
    s_job_reply (self, job, &reply);
}

/*  The job's transaction is over and its results are in: answer, or run
    it once more after a serialization failure.  The job is in no list.  */
static void
s_job_complete (s_actor_t *self, s_job_t *job)
{
    const worker_op_t *op = job->op;
    if (job->failed && job->not_found < 0) {
        worker_pgerror_t e;
        worker_pgerror_classify (job->sqlstate, &e);
        if (e.retry && job->attempts == 0 && !e.reconnect) {
            /*  Serialization failure or deadlock: the transaction was
                rolled back whole, so running it again is safe.  It goes
                first in line; s_pump sends it.  */
            job->attempts++;
            log_info ("retrying msg=%s sqlstate=%s actor=%s", job->msg_id,
                      job->sqlstate, self->name);
            s_fifo_push_front (&self->waiting, job);
            return;
        }
        /*  The constraint name stays in our log: schema names are
            nobody's business outside.  */
        log_debug ("problem msg=%s sqlstate=%s actor=%s", job->msg_id,
                   job->sqlstate, self->name);
        ferry_envelope_t *reply
            = worker_reply_failure (job->request, job->sqlstate);
        s_job_reply (self, job, &reply);
        if (e.reconnect)
            s_pg_lost (self, "server error");
        return;
    }
    if (job->not_found >= 0) {
        const worker_step_t *st = &op->steps[job->not_found];
        s_job_problem (self, job, st->not_found_status,
                       st->not_found_detail ? st->not_found_detail
                                            : "no such row",
                       NULL);
        return;
    }
    ferry_envelope_t *reply
        = worker_reply_result (job->request, op, job->last, &self->body);
    s_job_reply (self, job, &reply);
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
    s_job_t *job = &self->setup;
    s_segment_begin (self, job);
    int ok = PQsendQueryParams (self->conn, s_setup_sql, 0, NULL, NULL, NULL,
                                NULL, 0);
    s_plan (job, SLOT_SETUP, 0);
    ok = ok
         && PQsendPrepare (self->conn, s_timeout_stmt, s_timeout_sql, 1,
                           NULL);
    s_plan (job, SLOT_SETUP, 0);
    ok = ok && PQpipelineSync (self->conn);
    s_plan (job, SLOT_SYNC, 0);
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
    /*  Only the setup segment can be in flight while connecting.  */
    if (self->sent.head == &self->setup)
        s_fifo_pop (&self->sent);
    assert (self->sent.size == 0);
    self->flush_pending = false;
    self->pg = S_PG_DOWN;
    if (what != s_bad_state)
        worker_breaker_failure (self->args->breaker, what, ferry_mono_ms ());
    int64_t delay = s_jitter (self, self->pg_backoff);
    log_warn ("postgres %s actor=%s retry_ms=%" PRId64 " error=%s",
              what, self->name, delay, msg);
    self->pg_next_try = ferry_mono_ms () + delay;
    self->pg_backoff *= 2;
    if (self->pg_backoff > BACKOFF_MAX_MS)
        self->pg_backoff = BACKOFF_MAX_MS;
}

/*  An established connection broke: answer what was in the pipeline with
    503 (its outcome is unknown), leave the broker (we cannot do work, so
    we hold no credit), hand back the messages not started, and
    reconnect.  */
static void
s_pg_lost (s_actor_t *self, const char *what)
{
    bool was_up = self->pg == S_PG_UP;
    s_job_t *job;
    while ((job = s_fifo_pop (&self->sent)))
        if (job->cleanup)
            self->cleanup_busy = false;
        else if (job->dead) {
            /*  Written once we are connected again.  */
            self->dead_sent--;
            s_fifo_push (&self->dead, job);
        }
        else if (!job->setup)
            s_job_problem (self, job, 503, "the database connection was lost",
                           NULL);
    self->exclusive = false;
    /*  BYE before the hand-back, so the broker gives what we return to
        another worker rather than to us.  */
    s_withdraw (self);
    s_back_waiting (self);
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

/*  Reads every result that has arrived.  They come in the order the
    segments were sent, so each belongs to the head of `sent`; a Sync
    result ends the head's segment.  */
static void
s_pg_read (s_actor_t *self)
{
    if (!PQconsumeInput (self->conn)) {
        s_pg_lost (self, "connection lost");
        return;
    }
    while (self->conn && self->sent.head && !PQisBusy (self->conn)) {
        s_job_t *job = self->sent.head;
        PGresult *r = PQgetResult (self->conn);
        if (!r) {
            /*  libpq ends each query's results with a NULL; a NULL
                before any result means nothing more has arrived.  */
            if (!job->slot_done)
                break;
            job->plan_pos++;
            job->slot_done = false;
            continue;
        }
        if (PQresultStatus (r) == PGRES_PIPELINE_SYNC) {
            PQclear (r);
            if (job->plan_pos + 1 < job->plan_len
                && job->plan[job->plan_pos].kind == SLOT_SYNC) {
                /*  The end of a segment inside the job's plan (its
                    job_start): the next segment is the job's too.  */
                job->plan_pos++;
                job->slot_done = false;
                continue;
            }
            s_fifo_pop (&self->sent);
            job->slot_done = false;
            s_segment_done (self, job);
            continue;
        }
        if (job->plan_pos < job->plan_len)
            s_slot_result (self, job, &job->plan[job->plan_pos], r);
        else
            PQclear (r);
        job->slot_done = true;
    }
    if (self->conn && PQstatus (self->conn) == CONNECTION_BAD)
        s_pg_lost (self, "connection lost");
}

static void
s_slot_result (s_actor_t *self, s_job_t *job, const s_slot_t *slot,
               PGresult *r)
{
    ExecStatusType st = PQresultStatus (r);
    if (st == PGRES_FATAL_ERROR) {
        if (slot->kind == SLOT_PREPARE)
            self->prepared[job->op->steps[slot->step].index] = false;
        /*  A `one` step that found no row came first: that is the
            answer, and what failed after it is rolled back anyway.  */
        if (!job->failed && job->not_found >= 0)
            job->failed = true;
        else if (!job->failed) {
            job->failed = true;
            const char *code = PQresultErrorField (r, PG_DIAG_SQLSTATE);
            const char *cons
                = PQresultErrorField (r, PG_DIAG_CONSTRAINT_NAME);
            snprintf (job->sqlstate, sizeof job->sqlstate, "%s",
                      code ? code : "");
            snprintf (job->constraint, sizeof job->constraint, "%s",
                      cons ? cons : "");
            worker_pgerror_t e;
            worker_pgerror_classify (job->sqlstate, &e);
            const char *text = PQresultErrorField (r, PG_DIAG_MESSAGE_PRIMARY);
            /*  Unexpected failures need the server's words in our log;
                expected ones (409, 422) are per-message detail.  */
            if (e.status == 500
                && worker_jobs_classify (job->sqlstate) == WORKER_JOBS_OTHER)
                log_warn ("statement failed actor=%s op=%s "
                          "sqlstate=%s message=%s",
                          self->name, job->op ? job->op->name : "(setup)",
                          job->sqlstate, text ? text : "");
            else
                log_debug ("statement failed actor=%s sqlstate=%s "
                           "constraint=%s",
                           self->name, job->sqlstate,
                           job->constraint[0] ? job->constraint : "-");
        }
        PQclear (r);
        return;
    }
    if (st == PGRES_PIPELINE_ABORTED) {
        /*  An earlier Parse of the segment failed, so this one never ran:
            the statement is not prepared on this connection.  */
        if (slot->kind == SLOT_PREPARE)
            self->prepared[job->op->steps[slot->step].index] = false;
        PQclear (r);
        return;
    }
    if (slot->kind == SLOT_STORED) {
        PQclear (job->last);
        job->last = r;
        return;
    }
    if (slot->kind == SLOT_STEP && job->op) {
        const worker_step_t *step = &job->op->steps[slot->step];
        if (step->result == WORKER_RESULT_ONE && PQntuples (r) == 0
            && job->not_found < 0)
            job->not_found = (int) slot->step;
        if (slot->step == job->op->nsteps - 1) {
            PQclear (job->last);
            job->last = r;
            return;
        }
    }
    PQclear (r);
}

/*  A Sync came back for job, which is out of `sent` now: the setup is
    done, or a message's segment.  */
static void
s_segment_done (s_actor_t *self, s_job_t *job)
{
    /*  PostgreSQL answered; a lost connection or a server going down
        (08, 57P0x) is counted by s_pg_fail instead.  */
    bool answered = !job->failed;
    if (job->failed && !job->setup) {
        worker_pgerror_t e;
        worker_pgerror_classify (job->sqlstate, &e);
        answered = !e.reconnect;
    }
    if (answered)
        worker_breaker_success (self->args->breaker);
    if (job->setup) {
        if (job->failed) {
            s_pg_fail (self, "session setup failed");
            return;
        }
        self->pg = S_PG_UP;
        self->pg_backoff = BACKOFF_MIN_MS;
        log_info ("postgres connected actor=%s", self->name);
        s_register (self);
        zstr_send (self->pipe, "CONNECTED");
        return;
    }
    if (job->cleanup) {
        s_cleanup_done (self, job);
        return;
    }
    if (job->dead) {
        s_dead_done (self, job);
        return;
    }
    if (job->tracked) {
        s_tracked_done (self, job);
        return;
    }
    if (job->op->nsteps > 1) {
        /*  The job has the pipeline to itself (exclusive), so the
            transaction status is this job's.  */
        PGTransactionStatusType ts = PQtransactionStatus (self->conn);
        if (!job->finishing
            && (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)) {
            bool commit = !job->failed && job->not_found < 0;
            job->finishing = true;
            job->plan_len = job->plan_pos = 0;
            job->slot_done = false;
            s_fifo_push (&self->sent, job);
            int ok = PQsendQueryParams (self->conn,
                                        commit ? "COMMIT" : "ROLLBACK", 0,
                                        NULL, NULL, NULL, NULL, 0);
            s_plan (job, SLOT_END, 0);
            ok = ok && PQpipelineSync (self->conn);
            s_plan (job, SLOT_SYNC, 0);
            if (!ok)
                s_pg_lost (self, "send failed");
            else
                s_pg_flush (self);
            return;
        }
        self->exclusive = false;
        if (ts != PQTRANS_IDLE) {
            s_fifo_push (&self->sent, job); /* s_pg_lost answers it */
            s_pg_lost (self, s_bad_state);
            return;
        }
    }
    /*  A single-step segment was the implicit transaction that the Sync
        committed or rolled back.  */
    s_job_complete (self, job);
    s_check_idle (self);
}

/*  Once the pipeline is empty nothing may be left open, whatever the
    configured statements did.  */
static void
s_check_idle (s_actor_t *self)
{
    if (self->conn && self->sent.size == 0
        && PQtransactionStatus (self->conn) != PQTRANS_IDLE)
        s_pg_lost (self, s_bad_state);
}


/* ---- jobs and idempotency keys ------------------------------------------ */

/*  Sends the next segment of a tracked message (which is out of `sent`
    and holds the pipeline alone) for phase.  */
static void
s_tracked_segment (s_actor_t *self, s_job_t *job, s_phase_t phase)
{
    PGconn *conn = self->conn;
    bool open = PQtransactionStatus (conn) != PQTRANS_IDLE;
    job->phase = phase;
    s_segment_begin (self, job);
    bool ok = true;
    if (phase == PH_COMMIT) {
        /*  The result is in hand: recording it must not be cancelled by
            the deadline that bounded the handler.  */
        const char *tv[1] = {"0"};
        ok = PQsendQueryPrepared (conn, s_timeout_stmt, 1, tv, NULL, NULL, 0)
             == 1;
        s_plan (job, SLOT_TIMEOUT, 0);
        if (job->jobs.job)
            ok = ok && s_send_call (self, job, WORKER_JOBS_JOB_FINISH,
                                    SLOT_JOB);
        if (job->jobs.idem)
            ok = ok && s_send_call (self, job, WORKER_JOBS_IDEM_FINISH,
                                    SLOT_JOB);
        ok = ok
             && PQsendQueryParams (conn, "COMMIT", 0, NULL, NULL, NULL, NULL,
                                   0) == 1;
        s_plan (job, SLOT_END, 0);
    }
    else {
        /*  A COMMIT that failed left no transaction to roll back.  */
        if (open) {
            ok = PQsendQueryParams (conn, "ROLLBACK", 0, NULL, NULL, NULL,
                                    NULL, 0) == 1;
            s_plan (job, SLOT_END, 0);
        }
        /*  What follows runs as the implicit transaction up to the
            Sync.  */
        if (phase == PH_STORED) {
            ok = ok
                 && s_send_call (self, job,
                                 job->replayed ? WORKER_JOBS_IDEM_STORED
                                               : WORKER_JOBS_JOB_STORED,
                                 SLOT_STORED);
            if (job->replayed && job->jobs.job)
                ok = ok && s_send_call (self, job, WORKER_JOBS_JOB_FROM_IDEM,
                                        SLOT_JOB);
        }
        else if (phase == PH_RECORD && job->jobs.job && job->jobs.captured)
            ok = ok && s_send_call (self, job, WORKER_JOBS_JOB_FINISH,
                                    SLOT_JOB);
    }
    if (s_segment_end (self, job, ok))
        s_pg_flush (self);
}

/*  A job that cannot start (its arguments do not bind): it still gets
    its failed result, in one implicit transaction that may sit in the
    pipeline among other messages, then reply is answered.  */
static void
s_tracked_reject (s_actor_t *self, s_job_t *job, ferry_envelope_t *reply)
{
    job->reply = reply;
    if (worker_jobs_ctx_capture (&job->jobs, reply)) {
        s_tracked_end (self, job, reply);
        return;
    }
    job->phase = PH_RECORD;
    s_segment_begin (self, job);
    bool ok = s_send_call (self, job, WORKER_JOBS_START, SLOT_JOB)
              && s_send_call (self, job, WORKER_JOBS_JOB_FINISH, SLOT_JOB);
    (void) s_segment_end (self, job, ok);
}

/*  The message is done: release the pipeline and answer.  */
static void
s_tracked_end (s_actor_t *self, s_job_t *job, ferry_envelope_t *reply)
{
    self->exclusive = false;
    if (job->reply == reply)
        job->reply = NULL;
    else
        ferry_envelope_destroy (&job->reply);
    s_job_reply (self, job, &reply);
    s_check_idle (self);
}

/*  The handler's transaction cannot commit: answer reply (owned) after
    a ROLLBACK, recording it as the job's failed result first.  */
static void
s_tracked_fail (s_actor_t *self, s_job_t *job, ferry_envelope_t *reply)
{
    ferry_envelope_destroy (&job->reply);
    job->reply = reply;
    if (job->jobs.job && worker_jobs_ctx_capture (&job->jobs, reply))
        log_warn ("job result not recordable msg=%s actor=%s", job->msg_id,
                  self->name);
    s_tracked_segment (self, job, PH_RECORD);
}

/*  The handler or its COMMIT failed, or a guard said the outcome is
    known already.  */
static void
s_tracked_failed (s_actor_t *self, s_job_t *job)
{
    worker_jobs_outcome_t outcome = job->failed
                                        ? worker_jobs_classify (job->sqlstate)
                                        : WORKER_JOBS_OTHER;
    if (outcome == WORKER_JOBS_FINISHED || outcome == WORKER_JOBS_REPLAY) {
        log_debug ("stored outcome msg=%s sqlstate=%s actor=%s", job->msg_id,
                   job->sqlstate, self->name);
        job->replayed = outcome == WORKER_JOBS_REPLAY;
        s_tracked_segment (self, job, PH_STORED);
        return;
    }
    if (outcome == WORKER_JOBS_BUSY || outcome == WORKER_JOBS_MISMATCH) {
        s_tracked_fail (self, job, worker_jobs_problem (job->request, outcome));
        return;
    }
    if (job->not_found >= 0) {
        const worker_step_t *st = &job->op->steps[job->not_found];
        s_tracked_fail (self, job,
                        worker_reply_problem (job->request,
                                              st->not_found_status,
                                              st->not_found_detail
                                                  ? st->not_found_detail
                                                  : "no such row",
                                              NULL));
        return;
    }
    worker_pgerror_t e;
    worker_pgerror_classify (job->sqlstate, &e);
    if (e.retry && job->attempts == 0 && !e.reconnect) {
        /*  Rolled back whole, guards included: running it again is
            safe.  */
        job->attempts++;
        log_info ("retrying msg=%s sqlstate=%s actor=%s", job->msg_id,
                  job->sqlstate, self->name);
        s_tracked_segment (self, job, PH_RETRY);
        return;
    }
    ferry_envelope_t *reply = worker_reply_failure (job->request,
                                                    job->sqlstate);
    if (e.reconnect) {
        /*  Nothing more can be sent on this connection; the job stays
            'running' and a redelivery finds it so.  */
        self->exclusive = false;
        ferry_envelope_destroy (&job->reply);
        s_job_reply (self, job, &reply);
        s_pg_lost (self, "server error");
        return;
    }
    s_tracked_fail (self, job, reply);
}

/*  A Sync came back for a tracked message (out of `sent` now).  */
static void
s_tracked_done (s_actor_t *self, s_job_t *job)
{
    switch (job->phase) {
    case PH_RUN:
        if (!job->failed && job->not_found < 0) {
            ferry_envelope_t *reply = worker_reply_result (
                job->request, job->op, job->last, &self->body);
            if (ferry_envelope_status (reply) >= 400
                || worker_jobs_ctx_capture (&job->jobs, reply)) {
                /*  The result has no form to store or send: undo.  */
                s_tracked_fail (self, job, reply);
                return;
            }
            job->reply = reply;
            s_tracked_segment (self, job, PH_COMMIT);
            return;
        }
        s_tracked_failed (self, job);
        return;
    case PH_COMMIT:
        if (!job->failed && PQtransactionStatus (self->conn) == PQTRANS_IDLE) {
            const char *crash = self->args->crash_after_commit;
            if (crash && strcmp (crash, job->op->name) == 0) {
                log_warn ("FERRY_TEST_CRASH_AFTER_COMMIT: dying before the "
                          "reply msg=%s op=%s",
                          job->msg_id, crash);
                raise (SIGKILL);
            }
            s_tracked_end (self, job, job->reply);
            return;
        }
        log_warn ("commit failed msg=%s sqlstate=%s actor=%s", job->msg_id,
                  job->sqlstate, self->name);
        ferry_envelope_destroy (&job->reply);
        s_tracked_failed (self, job);
        return;
    case PH_STORED: {
        if (job->failed)
            log_warn ("stored response not read msg=%s sqlstate=%s actor=%s",
                      job->msg_id, job->sqlstate, self->name);
        ferry_envelope_t *reply = worker_jobs_stored_reply (
            job->request, job->failed ? NULL : job->last, job->replayed);
        s_tracked_end (self, job, reply);
        return;
    }
    case PH_RECORD:
        if (job->failed)
            log_warn ("job result not recorded msg=%s sqlstate=%s actor=%s",
                      job->msg_id, job->sqlstate, self->name);
        s_tracked_end (self, job, job->reply);
        return;
    case PH_RETRY:
        /*  First in line again; s_pump sends it.  */
        self->exclusive = false;
        s_fifo_push_front (&self->waiting, job);
        s_check_idle (self);
        return;
    }
}

/*  Actor 0 of a pool deletes expired jobs and keys.  */
static bool
s_cleanup_due (s_actor_t *self, int64_t now)
{
    return self->args->index == 0 && self->args->jobs
           && self->pg == S_PG_UP && !self->cleanup_busy
           && now >= self->cleanup_next;
}

static bool
s_cleanup_send (s_actor_t *self)
{
    s_job_t *job = &self->cleanup;
    s_segment_begin (self, job);
    self->cleanup_busy = true;
    bool ok = s_send_call (self, job, WORKER_JOBS_CLEANUP, SLOT_STORED);
    return s_segment_end (self, job, ok);
}

static void
s_cleanup_done (s_actor_t *self, s_job_t *job)
{
    const worker_jobs_settings_t *js = self->args->jobs;
    int64_t deleted = -1;
    self->cleanup_busy = false;
    if (!job->failed && job->last && PQntuples (job->last) == 1
        && ferry_parse_int64 (PQgetvalue (job->last, 0, 0), &deleted))
        deleted = -1;
    if (job->failed)
        log_warn ("cleanup failed actor=%s sqlstate=%s", self->name,
                  job->sqlstate);
    else if (deleted > 0)
        log_info ("cleanup deleted rows=%" PRId64 " actor=%s", deleted,
                  self->name);
    /*  A full batch means more may be waiting: go on at once, one short
        transaction at a time.  */
    int64_t now = ferry_mono_ms ();
    self->cleanup_next
        = deleted >= js->cleanup_batch ? now : now + js->cleanup_interval_ms;
    s_outcome_reset (job);
    s_check_idle (self);
}


/* ---- dead letters ------------------------------------------------------- */

/*  DEAD msg_id info payload: a poison message's dead letter, which the
    broker sends to one actor of the service between messages, without
    credit and expecting no answer.  It waits in `dead` for the
    connection; s_pump writes it in a segment of its own.  */
static void
s_dead_arrive (s_actor_t *self, const zmq_msg_t *id, const zmq_msg_t *info,
               zmq_msg_t *payload)
{
    char msg_id[MSG_ID_MAX + 1];
    size_t len = zmq_msg_size ((zmq_msg_t *) id);
    memcpy (msg_id, zmq_msg_data ((zmq_msg_t *) id), len);
    msg_id[len] = '\0';
    if (self->dead.size + self->dead_sent >= DEAD_MAX) {
        log_error ("dead letter not written msg=%s actor=%s "
                   "reason=too many waiting",
                   msg_id, self->name);
        return;
    }
    s_job_t *job = s_job_new (self);
    job->dead = true;
    memcpy (job->msg_id, msg_id, len + 1);
    size_t ilen = zmq_msg_size ((zmq_msg_t *) info);
    job->info = ferry_malloc (ilen + 1);
    memcpy (job->info, zmq_msg_data ((zmq_msg_t *) info), ilen);
    job->info[ilen] = '\0';
    zmq_msg_move (&job->payload, payload);
    log_info ("dead letter received msg=%s actor=%s", msg_id, self->name);
    s_fifo_push (&self->dead, job);
}

/*  Queues the INSERT of the first waiting dead letter.  Returns true
    when it is in the pipeline.  */
static bool
s_dead_send (s_actor_t *self)
{
    s_job_t *job = s_fifo_pop (&self->dead);
    worker_dead_row_t row;
    if (worker_dead_row_build (&row, job->msg_id, job->info,
                               strlen (job->info),
                               zmq_msg_data (&job->payload),
                               zmq_msg_size (&job->payload),
                               self->args->service)) {
        log_error ("dead letter not written msg=%s actor=%s "
                   "reason=no message id",
                   job->msg_id, self->name);
        s_job_recycle (self, job);
        return false;
    }
    const char *values[7] = {row.message_id, row.correlation_id, row.service,
                             row.operation,
                             (const char *) zmq_msg_data (&job->payload),
                             row.error, row.attempts};
    int lengths[7] = {0, 0, 0, 0, (int) zmq_msg_size (&job->payload), 0, 0};
    int formats[7] = {0, 0, 0, 0, 1, 0, 0};
    s_segment_begin (self, job);
    self->dead_sent++;
    s_plan (job, SLOT_JOB, 0);
    bool ok = PQsendQueryParams (self->conn, worker_dead_insert_sql, 7, NULL,
                                 values, lengths, formats, 0)
              == 1;
    worker_dead_row_free (&row);
    /*  On failure s_pg_lost puts it back in `dead`.  */
    return s_segment_end (self, job, ok);
}

/*  The INSERT's Sync came back: the row is there, or it never will be
    (nothing else to do than to say so, with the message id).  */
static void
s_dead_done (s_actor_t *self, s_job_t *job)
{
    self->dead_sent--;
    if (job->failed)
        log_error ("dead letter not written msg=%s actor=%s sqlstate=%s",
                   job->msg_id, self->name, job->sqlstate);
    else
        log_info ("dead letter written msg=%s actor=%s", job->msg_id,
                  self->name);
    s_job_recycle (self, job);
    s_check_idle (self);
}

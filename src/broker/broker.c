/*  broker.c: the broker actor, one thread that owns every piece of broker
    state (services, workers, the in-flight table) and the two ROUTER
    sockets, so nothing here takes a lock.

    Edges send REQ on the frontend; the broker reads only the routing frames
    (service, msg_id, deadline, flags) and either answers at once (409 when
    a request with that msg_id is still queued or in flight, 503 when the
    service queue is full or max_inflight requests are in flight, 504 when
    the deadline already passed), dispatches the request to a worker of
    that service that holds credit (round-robin), or queues it.  The
    payload frame is never decoded or copied: the same zmq_msg_t goes out
    to the worker and the worker's reply part goes back to the edge.
    Replies are matched by msg_id in the requests table, which holds every
    request not yet answered and remembers the edge's routing identity.
    An in-flight request whose deadline passed a grace ago without a reply
    is expired (504, and the worker gets its credit back), so a lost reply
    costs nothing for good.

    Both ROUTERs set ZMQ_ROUTER_MANDATORY, so sending to a peer that went
    away fails with EHOSTUNREACH instead of vanishing; every send is
    non-blocking, so a slow peer can never stall the broker.  High-water
    marks are only a backstop: the bounded service queues and the bounded
    in-flight table are the overload policy.

    The message path is written for cost per message, because every request
    crosses it four times (REQ in and out, REP in and out): it works on raw
    libzmq sockets and zmq_msg_t parts (the CZMQ zmsg/zframe wrappers
    allocate per part), a request is one allocation from arrival to answer,
    and the loop sleeps in one poll() on the sockets' ZMQ_FDs and then reads
    each socket until it is empty (s_drain), instead of a zmq_poll per
    message.

    Timers run from the monotonic clock (heartbeats, liveness, no-worker
    grace) and the wall clock (request deadlines, which travel between
    processes as absolute times); the poll timeout is the time to the
    nearest of them.  In-flight expiry runs at heartbeat ticks.  Network
    input is never trusted: a malformed message is logged at debug and
    dropped.  */

#include "broker.h"
#include "envelope.h"
#include "harness.h"
#include "log.h"
#include "proto.h"
#include "service.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <string.h>

/*  Caps that keep a misbehaving peer from growing broker state without
    bound: services are created on first use by edges and workers, and a
    worker's credit is a number it sends us.  */
#define BROKER_SERVICES_MAX 1024
#define BROKER_CREDIT_MAX 1000000
/*  Messages read from one socket before looking at the other, so a busy
    frontend cannot starve the backend (whose replies free credit).  */
#define BROKER_BATCH 64
#define BROKER_HWM 100000
/*  The longest message of the protocol: identity, FRY1, REQ, service,
    msg_id, deadline, flags, payload.  */
#define BROKER_PARTS_MAX 8
/*  A worker process as READY and DIED name it: "<hostname>:<pid>".  */
#define BROKER_PROCESS_MAX 300
/*  Dead letters kept for services that have no worker to write them.  */
#define BROKER_DEAD_PENDING_MAX 256
/*  Largest control request accepted (a STATUS is a few bytes).  */
#define BROKER_CONTROL_MAX 4096


/*  A worker process: the workers whose READY named the same process (a
    worker that named none is a process of its own).  A crash kills the
    whole process, every worker of it at once, so a suspect of a crash
    (s_crash_suspect) is isolated per process: it goes only to a process
    that holds nothing, and while it holds the suspect none of its workers
    is sent anything else.  In the normal path this costs a counter per
    dispatch and answer.  */
typedef struct {
    char name[BROKER_PROCESS_MAX + 1]; /* READY's process; "" for a
                                   worker's own (not in the processes
                                   table, freed with the worker) */
    zlistx_t *workers;          /* s_worker_t, not owned */
    size_t inflight;            /* messages its workers hold */
    bool isolating;             /* holds a suspect (a message that was in
                                   flight at a worker death): its workers
                                   get nothing else until that one is
                                   done, i.e. until inflight is 0 */
    broker_service_t *reserved; /* a crash suspect of this service waits
                                   for the process to empty: its workers
                                   get nothing new meanwhile, of any
                                   service, so that busy pools sharing
                                   the process cannot keep it from ever
                                   holding nothing; NULL when not */
    void *reserved_handle;      /* in the broker's reserved list */
} s_process_t;

typedef struct {
    uint8_t identity[BROKER_IDENTITY_MAX]; /* ROUTER routing identity */
    size_t identity_size;
    char key[2 * BROKER_IDENTITY_MAX + 1]; /* identity as hex, for the
                                               workers table and logs */
    broker_service_t *service;  /* the service it announced */
    int64_t credit;             /* messages it may still be sent */
    int64_t expiry;             /* monotonic ms; silent past this = dead */
    void *ready;                /* handle in the service's ready ring */
    zlistx_t *inflight;         /* broker_request_t it holds, oldest first,
                                   not owned (the in-flight table owns) */
    bool leaving;               /* sent BYE; removed when inflight empties */
    bool dead;                  /* being removed as lost: takes nothing,
                                   not even a dead letter */
    bool isolating;             /* holds a suspect of a death whose cause
                                   is unknown (no DIED): it gets no other
                                   message until that one is done */
    s_process_t *proc;          /* its process, never NULL while in the
                                   workers table */
    void *proc_handle;          /* handle in proc->workers */
    char breaker[16];           /* last HB breaker state, "" if none */
    int64_t idle_since;         /* monotonic ms it last held nothing */
} s_worker_t;

/*  A poison message's dead letter waiting for a worker of its service
    (none was there to write it).  */
typedef struct {
    char service[FERRY_NAME_MAX + 1];
    char msg_id[BROKER_MSG_ID_MAX + 1];
    char *info;                 /* JSON object text */
    zmq_msg_t payload;          /* the envelope */
} s_dead_letter_t;

/*  An edge, known from its heartbeats, so that a stopping broker can tell
    it to send nothing more.  */
typedef struct {
    uint8_t identity[BROKER_IDENTITY_MAX];
    size_t identity_size;
    int64_t expiry;             /* monotonic ms; forgotten when silent */
    bool stopped;               /* answered our BYE with BYE while we
                                   drain: it sends us nothing more */
} s_edge_t;

/*  Edges remembered at most; more only lose the BYE at a stop.  */
#define BROKER_EDGES_MAX 4096

/*  One ROUTER as the loop sees it.  */
typedef struct {
    zsock_t *sock;
    void *handle;               /* libzmq socket under sock: the hot path
                                   skips CZMQ's per-call checks */
    int fd;                     /* ZMQ_FD: readable when commands arrive */
    bool settled;               /* read empty since our last send; only
                                   then may the loop sleep on fd */
} s_router_t;

/*  A message received from a ROUTER: its parts, identity first.  */
typedef struct {
    zmq_msg_t part[BROKER_PARTS_MAX + 1]; /* the last is scratch */
    size_t count;               /* parts received; BROKER_PARTS_MAX + 1
                                   when there were too many */
} s_message_t;

typedef struct {
    zsock_t *pipe;              /* to the actor's owner */
    s_router_t frontend;        /* ROUTER for edges */
    s_router_t backend;         /* ROUTER for workers */
    zsock_t *control;           /* ROUTER for ferryctl, NULL when off */
    zlistx_t *dead_letters;     /* s_dead_letter_t waiting, oldest first */
    broker_settings_t *settings; /* private copy */
    zhashx_t *services;         /* name -> broker_service_t, owned */
    zhashx_t *workers;          /* key -> s_worker_t, owned */
    zhashx_t *processes;        /* READY's process -> s_process_t, owned;
                                   each has at least one worker */
    zlistx_t *reserved;         /* s_process_t reserved for a crash
                                   suspect, not owned; usually empty */
    zhashx_t *edges;            /* identity hex -> s_edge_t, owned */
    zhashx_t *requests;         /* msg_id -> broker_request_t, every
                                   request admitted and not yet answered,
                                   queued or in flight; the key is the
                                   request's own msg_id.  Owns the ones in
                                   flight (queues own the others).  */
    size_t inflight;            /* requests dispatched, not answered */
    bool rejoined;              /* a process stopped isolating: its
                                   workers, of any service, may take work
                                   again, so every service is dispatched
                                   once the current message is handled */
    uint64_t inflight_deadline; /* lower bound of in-flight deadlines
                                   (wall ms), UINT64_MAX when none */
    int64_t heartbeat_at;       /* monotonic ms of the next heartbeat */
    bool verbose;               /* per-message lines at info level */
    bool draining;              /* DRAIN received: refusing new requests */
    bool drained;               /* DRAINED sent: only $TERM is left */
    int64_t drain_until;        /* monotonic ms the drain gives up */
    bool terminated;
} s_broker_t;

/*  Per-message detail: at debug, or at info after VERBOSE.  */
#define s_trace(self, ...)                                                    \
    do {                                                                      \
        if ((self)->verbose)                                                  \
            log_info (__VA_ARGS__);                                           \
        else                                                                  \
            log_debug (__VA_ARGS__);                                          \
    } while (0)

/* ---- sending and receiving ------------------------------------------------ */

/*  Sends [identity, FRY1, parts..., payload] without blocking.  Returns 0,
    or -1 when the peer is gone (EHOSTUNREACH, thanks to ROUTER_MANDATORY)
    or its pipe is full; then nothing was sent.  The payload, when given, is
    moved into libzmq (left empty), or with keep shared (zmq_msg_copy counts
    a reference, it does not copy the bytes) and left as it was.  */
static int
s_send (s_router_t *router, const void *identity, size_t identity_size,
        const char **parts, size_t count, zmq_msg_t *payload, bool keep)
{
    /*  A send may consume the socket's pending commands, after which its
        fd stays quiet although input waits: read it again before sleeping. */
    router->settled = false;
    /*  ROUTER decides routability on the identity frame; once that frame
        is accepted the rest of the message goes to the same pipe.  */
    if (zmq_send (router->handle, identity, identity_size,
                  ZMQ_SNDMORE | ZMQ_DONTWAIT)
        == -1)
        return -1;
    bool more = true;
    if (zmq_send (router->handle, FERRY_PROTO, strlen (FERRY_PROTO),
                  (count || payload) ? ZMQ_SNDMORE : 0)
        == -1)
        more = false;
    for (size_t i = 0; more && i < count; i++)
        if (zmq_send (router->handle, parts[i], strlen (parts[i]),
                      (i + 1 < count || payload) ? ZMQ_SNDMORE : 0)
            == -1)
            more = false;
    if (more && payload) {
        zmq_msg_t shared;
        zmq_msg_init (&shared);
        if (keep)
            zmq_msg_copy (&shared, payload);
        else
            zmq_msg_move (&shared, payload);
        if (zmq_msg_send (&shared, router->handle, 0) == -1)
            zmq_msg_close (&shared);
    }
    return 0;
}

/*  Receives one whole message from router without waiting.  Returns true
    with msg filled (the caller closes it with s_message_close), or false
    when nothing waits; then the router is settled.  The parts of a
    multipart message arrive together, so only the first read can find
    nothing.  */
static bool
s_recv (s_broker_t *self, s_router_t *router, s_message_t *msg)
{
    msg->count = 0;
    while (true) {
        zmq_msg_t *part = &msg->part[msg->count <= BROKER_PARTS_MAX
                                         ? msg->count
                                         : BROKER_PARTS_MAX];
        if (msg->count > BROKER_PARTS_MAX)
            zmq_msg_close (part); /* too many parts: drop the extra ones */
        zmq_msg_init (part);
        if (zmq_msg_recv (part, router->handle, ZMQ_DONTWAIT) == -1) {
            zmq_msg_close (part);
            if (errno == ETERM)
                self->terminated = true;
            if (msg->count == 0) {
                router->settled = true;
                return false;
            }
            break; /* cannot happen; what came is a malformed message */
        }
        if (msg->count <= BROKER_PARTS_MAX)
            msg->count++;
        if (!zmq_msg_more (part))
            break;
    }
    return true;
}

static void
s_message_close (s_message_t *msg)
{
    for (size_t i = 0; i < msg->count; i++)
        zmq_msg_close (&msg->part[i]);
    msg->count = 0;
}

/*  Copies a routing frame into buf as a string.  Returns 0, or -1 when it
    is too long or holds anything but visible ASCII.  */
static int
s_part_text (zmq_msg_t *part, char *buf, size_t size, bool allow_empty)
{
    size_t len = zmq_msg_size (part);
    if (len >= size || (len == 0 && !allow_empty))
        return -1;
    const unsigned char *data = (const unsigned char *) zmq_msg_data (part);
    for (size_t i = 0; i < len; i++)
        if (data[i] < 0x21 || data[i] > 0x7e)
            return -1;
    memcpy (buf, data, len);
    buf[len] = '\0';
    return 0;
}

static bool
s_part_is (zmq_msg_t *part, const char *text)
{
    size_t len = strlen (text);
    return zmq_msg_size (part) == len
           && memcmp (zmq_msg_data (part), text, len) == 0;
}

/*  Checks [identity, FRY1, command, ...] and copies the command into
    command.  Returns the number of parts after the command, or -1 for
    anything that is not ferry's protocol.  */
static int
s_message_command (s_message_t *msg, char *command, size_t size)
{
    if (msg->count < 3 || msg->count > BROKER_PARTS_MAX)
        return -1;
    size_t identity = zmq_msg_size (&msg->part[0]);
    if (identity == 0 || identity > BROKER_IDENTITY_MAX
        || !s_part_is (&msg->part[1], FERRY_PROTO)
        || s_part_text (&msg->part[2], command, size, false))
        return -1;
    return (int) msg->count - 3;
}

/*  Forwards a reply to an edge.  An edge that went away loses its reply:
    that is the edge's business (it has answered 504 or is gone).  */
static void
s_send_reply (s_broker_t *self, const void *edge, size_t edge_size,
              const char *msg_id, zmq_msg_t *payload)
{
    const char *parts[] = {FERRY_CMD_REP, msg_id};
    if (s_send (&self->frontend, edge, edge_size, parts, 2, payload, false))
        s_trace (self, "broker: reply dropped msg=%s reason=%s", msg_id,
                 zmq_strerror (errno));
}

/*  Answers a request with the broker's own problem reply.  */
static void
s_send_problem (s_broker_t *self, const void *edge, size_t edge_size,
                const char *msg_id, unsigned status, const char *detail,
                unsigned retry_after)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init (&buf);
    if (ferry_problem_reply_encode (msg_id, status, detail, retry_after,
                                    &buf)
        == 0) {
        zmq_msg_t payload;
        zmq_msg_init_size (&payload, buf.size);
        memcpy (zmq_msg_data (&payload), buf.data, buf.size);
        s_trace (self, "broker: problem msg=%s status=%u detail=\"%s\"",
                 msg_id, status, detail);
        s_send_reply (self, edge, edge_size, msg_id, &payload);
        zmq_msg_close (&payload);
    }
    else
        log_warn ("broker: cannot encode problem reply msg=%s status=%u",
                  msg_id, status);
    msgpack_sbuffer_destroy (&buf);
}

/*  Forgets a request that has been answered (or dropped) and destroys it:
    its msg_id is free again.  */
static void
s_request_end (s_broker_t *self, broker_request_t **req_p)
{
    broker_request_t *req = *req_p;
    if (zhashx_lookup (self->requests, req->msg_id) == req)
        zhashx_delete (self->requests, req->msg_id);
    broker_request_destroy (req_p);
}

/*  Answers req with a problem and ends it.  */
static void
s_fail_request (s_broker_t *self, broker_request_t **req_p, unsigned status,
                const char *detail, unsigned retry_after)
{
    broker_request_t *req = *req_p;
    s_send_problem (self, req->edge, req->edge_size, req->msg_id, status,
                    detail, retry_after);
    s_request_end (self, req_p);
}

/* ---- workers -------------------------------------------------------------- */

static void
s_process_destroy (s_process_t **self_p)
{
    s_process_t *self = *self_p;
    if (self) {
        zlistx_destroy (&self->workers);
        free (self);
        *self_p = NULL;
    }
}

static void
s_process_destructor (void **item_p)
{
    s_process_destroy ((s_process_t **) item_p);
}

/*  A worker still in the table when the broker ends frees its own process
    record; the processes table frees the shared ones.  */
static void
s_worker_destructor (void **item_p)
{
    s_worker_t *worker = (s_worker_t *) *item_p;
    if (worker) {
        if (worker->proc && !*worker->proc->name)
            s_process_destroy (&worker->proc);
        zlistx_destroy (&worker->inflight);
        free (worker);
        *item_p = NULL;
    }
}

static void
s_edge_destructor (void **item_p)
{
    free (*item_p);
    *item_p = NULL;
}

static void
s_service_destructor (void **item_p)
{
    broker_service_destroy ((broker_service_t **) item_p);
}

/*  The service by name, created on first use.  NULL when the broker
    already holds BROKER_SERVICES_MAX services.  */
static broker_service_t *
s_service_require (s_broker_t *self, const char *name)
{
    broker_service_t *svc
        = (broker_service_t *) zhashx_lookup (self->services, name);
    if (svc)
        return svc;
    if (zhashx_size (self->services) >= BROKER_SERVICES_MAX) {
        log_warn ("broker: too many services, refusing service=%s", name);
        return NULL;
    }
    svc = broker_service_new (
        name, broker_settings_queue_limit (self->settings, name),
        ferry_mono_ms ());
    if (!svc)
        return NULL;
    zhashx_insert (self->services, name, svc);
    return svc;
}

static void
s_worker_refresh (s_broker_t *self, s_worker_t *worker)
{
    worker->expiry = ferry_mono_ms ()
                     + broker_settings_heartbeat (self->settings)
                           * broker_settings_liveness (self->settings);
}

/*  Keeps the worker in its service's ready ring exactly while it may be
    sent work: it has credit, is not leaving or dead, and its process holds
    no suspect.  */
static void
s_worker_update_ready (s_worker_t *worker)
{
    bool ready = worker->credit > 0 && !worker->leaving && !worker->dead
                 && !worker->isolating && !worker->proc->isolating
                 && !worker->proc->reserved;
    if (ready && !worker->ready)
        worker->ready = broker_service_ready_add (worker->service, worker);
    else if (!ready && worker->ready)
        broker_service_ready_remove (worker->service, &worker->ready);
}

/*  The process started or stopped holding a suspect: each of its workers
    leaves or rejoins its service's ready ring.  Only suspects get here,
    and a process has a few workers.  */
static void
s_process_update_ready (s_process_t *proc)
{
    for (s_worker_t *worker = (s_worker_t *) zlistx_first (proc->workers);
         worker; worker = (s_worker_t *) zlistx_next (proc->workers))
        s_worker_update_ready (worker);
}

/*  Ends proc's reservation: its workers take any work again, of every
    service (the loop dispatches them all).  */
static void
s_process_release (s_broker_t *self, s_process_t *proc)
{
    if (!proc->reserved)
        return;
    zlistx_detach (self->reserved, proc->reserved_handle);
    proc->reserved = proc->reserved_handle = NULL;
    s_process_update_ready (proc);
    self->rejoined = true;
}

/*  Puts a new worker into the record of the process its READY named
    (created on first use), or into one of its own when it named none.  */
static void
s_process_join (s_broker_t *self, s_worker_t *worker, const char *name)
{
    s_process_t *proc
        = *name ? (s_process_t *) zhashx_lookup (self->processes, name)
                : NULL;
    if (!proc) {
        proc = ferry_calloc (1, sizeof *proc);
        snprintf (proc->name, sizeof proc->name, "%s", name);
        proc->workers = zlistx_new ();
        assert (proc->workers);
        if (*name)
            zhashx_insert (self->processes, name, proc);
    }
    worker->proc = proc;
    worker->proc_handle = zlistx_add_end (proc->workers, worker);
}

/*  Takes a worker that holds nothing out of its process record, which
    goes with its last worker.  */
static void
s_process_leave (s_broker_t *self, s_worker_t *worker)
{
    s_process_t *proc = worker->proc;
    zlistx_detach (proc->workers, worker->proc_handle);
    worker->proc = worker->proc_handle = NULL;
    /*  The suspect may have been waiting for this very worker: it looks
        for a process again at its next dispatch.  */
    s_process_release (self, proc);
    if (zlistx_size (proc->workers) > 0)
        return;
    assert (proc->inflight == 0);
    if (*proc->name)
        zhashx_delete (self->processes, proc->name);
    else
        s_process_destroy (&proc);
}

/*  Forgets a worker that holds nothing in flight.  */
static void
s_worker_remove (s_broker_t *self, s_worker_t *worker)
{
    assert (zlistx_size (worker->inflight) == 0);
    broker_service_ready_remove (worker->service, &worker->ready);
    s_process_leave (self, worker);
    broker_service_worker_left (worker->service, ferry_mono_ms ());
    zhashx_delete (self->workers, worker->key);
}

/*  True when max_inflight requests are in flight: the broker then neither
    dispatches nor admits any more.  */
static bool
s_inflight_full (s_broker_t *self)
{
    return self->inflight >= broker_settings_max_inflight (self->settings);
}

/*  Takes req from its worker's list; the caller owns it again.  It stays
    in the requests table (it is still to be answered).  */
static void
s_inflight_take (s_broker_t *self, broker_request_t *req)
{
    s_worker_t *worker = (s_worker_t *) req->worker;
    zlistx_detach (worker->inflight, req->handle);
    req->worker = req->handle = NULL;
    /*  An isolating worker held its suspect alone: with it gone the worker
        may take any work again (the caller updates its readiness).  */
    if (zlistx_size (worker->inflight) == 0) {
        worker->isolating = false;
        worker->idle_since = ferry_mono_ms ();
    }
    /*  An isolating process held the suspect alone: with it gone its
        workers may take any work again.  */
    s_process_t *proc = worker->proc;
    assert (proc->inflight > 0);
    if (--proc->inflight == 0 && proc->isolating) {
        proc->isolating = false;
        s_process_update_ready (proc);
        self->rejoined = true;
    }
    /*  A reserved process is empty at last: its suspect goes there.  */
    else if (proc->inflight == 0 && proc->reserved)
        self->rejoined = true;
    assert (self->inflight > 0);
    if (--self->inflight == 0)
        self->inflight_deadline = UINT64_MAX;
}

/*  The worker holding *req_p is done with it: it answered, or the deadline
    and the grace passed without an answer (then the worker no longer holds
    the message either: its statement_timeout is the time left before the
    deadline).  Takes the request out, ends it, and gives the worker its
    credit back, or forgets a leaving worker that now holds nothing.  The
    caller has answered the edge and dispatches afterwards.  */
static void s_worker_release (s_broker_t *self, s_worker_t *worker);

static void
s_inflight_done (s_broker_t *self, broker_request_t **req_p)
{
    s_worker_t *worker = (s_worker_t *) (*req_p)->worker;
    s_inflight_take (self, *req_p);
    s_request_end (self, req_p);
    s_worker_release (self, worker);
}

/*  The worker gave up one message it held: gives it its credit back, or
    forgets a leaving worker that now holds nothing.  */
static void
s_worker_release (s_broker_t *self, s_worker_t *worker)
{
    if (worker->leaving) {
        if (zlistx_size (worker->inflight) == 0) {
            log_info ("broker: worker left id=%s service=%s", worker->key,
                      broker_service_name (worker->service));
            s_worker_remove (self, worker);
        }
        return;
    }
    if (worker->credit < BROKER_CREDIT_MAX)
        worker->credit++;
    s_worker_update_ready (worker);
}

/* ---- dead letters -------------------------------------------------------- */

static void
s_dead_letter_destroy (s_dead_letter_t **self_p)
{
    s_dead_letter_t *self = *self_p;
    if (self) {
        zmq_msg_close (&self->payload);
        free (self->info);
        free (self);
        *self_p = NULL;
    }
}

static void
s_dead_letter_destructor (void **item_p)
{
    s_dead_letter_destroy ((s_dead_letter_t **) item_p);
}

/*  The dead letter's info: what the broker knows of the deaths, as a JSON
    object text (caller frees), or NULL when it cannot be built.  Built with
    jansson so that no string needs escaping by hand.  */
static char *
s_dead_info (const broker_request_t *req, const char *service)
{
    json_t *root = json_object ();
    json_t *workers = json_array (), *signals = json_array ();
    char *text = NULL;
    if (root && workers && signals) {
        const broker_deaths_t *history = req->history;
        for (size_t i = 0; history && i < history->worker_count; i++)
            json_array_append_new (workers,
                                   json_string (history->workers[i]));
        for (size_t i = 0; history && i < history->signal_count; i++)
            json_array_append_new (signals,
                                   json_string (history->signals[i]));
        /*  Every delivery but a BACK ended in a death: the attempts are
            the deaths.  */
        if (json_object_set_new (root, "reason",
                                 json_string ("worker deaths"))
                == 0
            && json_object_set_new (root, "deaths",
                                    json_integer (req->deaths))
                   == 0
            && json_object_set_new (root, "attempts",
                                    json_integer (req->deaths))
                   == 0
            && json_object_set_new (root, "service", json_string (service))
                   == 0
            && json_object_set (root, "workers", workers) == 0
            && json_object_set (root, "signals", signals) == 0)
            text = json_dumps (root, JSON_COMPACT);
    }
    json_decref (workers);
    json_decref (signals);
    json_decref (root);
    return text;
}

/*  Sends DEAD msg_id info payload to a live worker of the letter's
    service, without using its credit.  Returns 0, or -1 when the service
    has no worker that can be reached now.  */
static int
s_dead_letter_send (s_broker_t *self, s_dead_letter_t *letter,
                    s_worker_t *only)
{
    const char *parts[] = {FERRY_CMD_DEAD, letter->msg_id, letter->info};
    for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
         worker; worker = (s_worker_t *) zhashx_next (self->workers)) {
        if ((only && worker != only) || worker->leaving || worker->dead
            || !streq (broker_service_name (worker->service),
                       letter->service))
            continue;
        if (s_send (&self->backend, worker->identity, worker->identity_size,
                    parts, 3, &letter->payload, true)
            == 0) {
            log_info ("broker: dead letter sent msg=%s service=%s worker=%s",
                      letter->msg_id, letter->service, worker->key);
            return 0;
        }
    }
    return -1;
}

/*  A poison message is given up: its dead letter goes to a worker of its
    service to be written to ferry.dead_letters, or waits (bounded) for
    one to come.  req keeps its payload.  */
static void
s_dead_letter (s_broker_t *self, broker_request_t *req, const char *service)
{
    s_dead_letter_t *letter = ferry_calloc (1, sizeof *letter);
    snprintf (letter->service, sizeof letter->service, "%s", service);
    snprintf (letter->msg_id, sizeof letter->msg_id, "%s", req->msg_id);
    letter->info = s_dead_info (req, service);
    zmq_msg_init (&letter->payload);
    if (!letter->info
        || zmq_msg_copy (&letter->payload, &req->payload) == -1) {
        log_error ("broker: cannot build dead letter msg=%s", req->msg_id);
        s_dead_letter_destroy (&letter);
        return;
    }
    if (s_dead_letter_send (self, letter, NULL) == 0) {
        s_dead_letter_destroy (&letter);
        return;
    }
    if (zlistx_size (self->dead_letters) >= BROKER_DEAD_PENDING_MAX) {
        s_dead_letter_t *oldest
            = (s_dead_letter_t *) zlistx_first (self->dead_letters);
        log_warn ("broker: dead letter dropped msg=%s service=%s "
                  "reason=\"too many waiting for a worker\"",
                  oldest->msg_id, oldest->service);
        zlistx_delete (self->dead_letters, zlistx_cursor (self->dead_letters));
    }
    log_info ("broker: dead letter waits for a worker msg=%s service=%s",
              letter->msg_id, letter->service);
    zlistx_add_end (self->dead_letters, letter);
}

/*  A worker of service registered: it writes the dead letters that
    waited for one.  */
static void
s_dead_letters_flush (s_broker_t *self, s_worker_t *worker)
{
    const char *service = broker_service_name (worker->service);
    s_dead_letter_t *letter
        = (s_dead_letter_t *) zlistx_first (self->dead_letters);
    while (letter) {
        void *cursor = zlistx_cursor (self->dead_letters);
        s_dead_letter_t *next
            = (s_dead_letter_t *) zlistx_next (self->dead_letters);
        if (streq (letter->service, service)
            && s_dead_letter_send (self, letter, worker) == 0)
            zlistx_delete (self->dead_letters, cursor);
        letter = next;
    }
}

/* ---- worker deaths -------------------------------------------------------- */

/*  A worker died (silent, unreachable, killed, or it registered again):
    what it held has an unknown outcome.  Retryable requests go back to the
    head of their queue, in their original order, as suspects; the others
    are answered 502.  signal is the signal that killed its process when
    known (DIED), else NULL.  The caller dispatches afterwards.  */
static void
s_worker_lost (s_broker_t *self, s_worker_t *worker, const char *reason,
               const char *signal)
{
    log_info ("broker: worker lost id=%s service=%s inflight=%zu reason=%s",
              worker->key, broker_service_name (worker->service),
              zlistx_size (worker->inflight), reason);
    worker->dead = true;
    broker_request_t *req;
    /*  Newest first, each to the head: the queue keeps their order.  */
    while ((req = (broker_request_t *) zlistx_last (worker->inflight))) {
        s_inflight_take (self, req);
        broker_request_died (req, worker->key, signal);
        if (!broker_request_retryable (req))
            s_fail_request (self, &req, 502, "worker died, outcome unknown",
                            0);
        else if (req->deaths
                 >= (unsigned) broker_settings_max_deaths (self->settings)) {
            /*  The same message at every death is the likeliest cause:
                sending it on would take the whole pool down in turn.  */
            log_warn ("broker: dead letter msg=%s service=%s deaths=%u "
                      "last_worker=%s reason=%s",
                      req->msg_id, broker_service_name (worker->service),
                      req->deaths, worker->key, reason);
            s_dead_letter (self, req, broker_service_name (worker->service));
            char detail[128];
            snprintf (detail, sizeof detail,
                      "%u workers died while holding this request; it is "
                      "not delivered again",
                      req->deaths);
            s_fail_request (self, &req, 502, detail, 0);
        }
        else
            broker_service_push_front (worker->service, &req);
    }
    s_worker_remove (self, worker);
}

/*  True for a suspect that was in flight at a crash: a supervisor told
    (DIED) that its worker process died by a signal a process raises on
    itself (SIGSEGV, SIGABRT, SIGBUS...), which is what a poison message
    does, and takes every actor of the process with it.  Other deaths
    (heartbeat silence, an unreachable or re-registered worker, SIGKILL or
    SIGTERM from outside: an operator, the OOM killer) isolate per worker,
    so that after a mass loss the suspects are redelivered in parallel,
    one per idle worker, rather than one per idle process.  */
static bool
s_crash_suspect (const broker_request_t *req)
{
    static const char *const external[]
        = {"SIGKILL", "SIGTERM", "SIGINT", "SIGHUP"};
    if (req->deaths == 0 || !req->history)
        return false;
    for (size_t i = 0; i < req->history->signal_count; i++) {
        bool outside = false;
        for (size_t k = 0; k < sizeof external / sizeof external[0]; k++)
            outside |= strcmp (req->history->signals[i], external[k]) == 0;
        if (!outside)
            return true;
    }
    return false;
}

/*  Sends *req_p to worker and records it in flight.  Returns 0 (the
    in-flight table owns the request), or -1 when the worker cannot be
    reached (the request stays with the caller, untouched).  */
static int
s_send_work (s_broker_t *self, s_worker_t *worker, broker_request_t **req_p)
{
    broker_request_t *req = *req_p;
    char deadline[24], attempt[16];
    snprintf (deadline, sizeof deadline, "%" PRIu64, req->deadline);
    /*  Only deaths count: a BACK hands back a message that never ran.  */
    snprintf (attempt, sizeof attempt, "%u", req->deaths + 1);
    const char *parts[] = {FERRY_CMD_REQ, req->msg_id, deadline, attempt};
    /*  A retryable request keeps its payload so it can be sent again if
        the worker dies; the others give it to libzmq.  */
    if (s_send (&self->backend, worker->identity, worker->identity_size,
                parts, 4, &req->payload, broker_request_retryable (req)))
        return -1;
    req->worker = worker;
    req->handle = zlistx_add_end (worker->inflight, req);
    self->inflight++;
    worker->proc->inflight++;
    if (req->deadline && req->deadline < self->inflight_deadline)
        self->inflight_deadline = req->deadline;
    *req_p = NULL;
    worker->credit--;
    if (s_crash_suspect (req)) {
        /*  The process was idle (s_process_idle, or emptied for it): now
            the suspect is all it holds until it is done.  */
        s_process_release (self, worker->proc);
        worker->proc->isolating = true;
        s_process_update_ready (worker->proc);
    }
    else {
        if (req->deaths > 0)
            worker->isolating = true;
        s_worker_update_ready (worker);
    }
    s_trace (self, "broker: dispatch msg=%s service=%s worker=%s",
             req->msg_id, broker_service_name (worker->service),
             worker->key);
    return 0;
}

/*  True for a worker that holds nothing: it may take a suspect whose
    deaths had no known cause.  */
static bool
s_worker_idle (void *worker)
{
    return zlistx_size (((s_worker_t *) worker)->inflight) == 0;
}

/*  True for a worker whose whole process holds nothing: it may take a
    crash suspect, whose next crash would then kill no innocent message
    with it.  */
static bool
s_process_idle (void *worker)
{
    return ((s_worker_t *) worker)->proc->inflight == 0;
}

/*  A worker of svc in proc that may take a message, or NULL.  */
static s_worker_t *
s_process_worker (s_process_t *proc, broker_service_t *svc)
{
    for (s_worker_t *worker = (s_worker_t *) zlistx_first (proc->workers);
         worker; worker = (s_worker_t *) zlistx_next (proc->workers))
        if (worker->service == svc && worker->credit > 0 && !worker->leaving
            && !worker->dead)
            return worker;
    return NULL;
}

/*  Where a crash suspect of svc goes: a worker whose whole process holds
    nothing.  When there is none, one process with a worker of svc (the
    one holding least) is reserved: it gets nothing new, of any service,
    and the suspect goes there once it has answered what it holds.
    Without that, pools that share the process could keep it busy until
    the suspect's deadline.  Returns NULL while the suspect must wait.
    Runs only for a crash suspect at the head of its queue: its cost,
    a walk over the workers, is off the normal path.  */
static s_worker_t *
s_crash_target (s_broker_t *self, broker_service_t *svc)
{
    s_worker_t *worker
        = (s_worker_t *) broker_service_ready_find (svc, s_process_idle);
    if (worker)
        return worker;
    s_process_t *proc;
    for (proc = (s_process_t *) zlistx_first (self->reserved); proc;
         proc = (s_process_t *) zlistx_next (self->reserved))
        if (proc->reserved == svc)
            break;
    if (!proc) {
        for (worker = (s_worker_t *) zhashx_first (self->workers); worker;
             worker = (s_worker_t *) zhashx_next (self->workers)) {
            s_process_t *p = worker->proc;
            if (worker->service == svc && !worker->leaving && !worker->dead
                && !p->isolating && !p->reserved
                && (!proc || p->inflight < proc->inflight))
                proc = p;
        }
        if (!proc)
            return NULL;
        proc->reserved = svc;
        proc->reserved_handle = zlistx_add_end (self->reserved, proc);
        s_process_update_ready (proc);
        log_info ("broker: process reserved for a crash suspect process=%s "
                  "service=%s inflight=%zu",
                  proc->name, broker_service_name (svc), proc->inflight);
    }
    return proc->inflight == 0 ? s_process_worker (proc, svc) : NULL;
}

/*  Moves queued requests of svc to its workers while someone has credit
    and the in-flight table has room.  Expired requests are answered 504 on
    the way and never dispatched.  Costs O(1) per request dispatched.  */
static void
s_dispatch (s_broker_t *self, broker_service_t *svc)
{
    /*  A stopping broker starts nothing new: what waits (a redelivery,
        too) is refused while the client can still retry elsewhere.  */
    while (self->draining && broker_service_queued (svc) > 0) {
        broker_request_t *req = broker_service_pop (svc);
        s_fail_request (self, &req, 503, "the broker is shutting down", 1);
    }
    while (broker_service_queued (svc) > 0 && !s_inflight_full (self)) {
        broker_request_t *req = broker_service_peek (svc);
        /*  A crash suspect may go to a reserved process, whose workers
            are not in the ready ring.  */
        if (req->deaths == 0 && broker_service_ready (svc) == 0)
            break;
        if (req->deadline && req->deadline <= ferry_wall_ms ()) {
            req = broker_service_pop (svc);
            s_fail_request (self, &req, 504,
                            "deadline passed before dispatch", 0);
            continue;
        }
        /*  A suspect goes only to a worker that holds nothing, and a
            crash suspect only to one whose whole process holds nothing
            (a crash kills the process), so that no innocent message
            shares its next death; it waits at the head until one is
            idle (the service's workers finish what they hold, and get
            nothing new from its queue meanwhile; a crash suspect's
            process is reserved, s_crash_target) or its deadline
            passes.  */
        s_worker_t *worker;
        if (req->deaths == 0)
            worker = (s_worker_t *) broker_service_ready_next (svc);
        else if (s_crash_suspect (req))
            worker = s_crash_target (self, svc);
        else
            worker = (s_worker_t *) broker_service_ready_find (
                svc, s_worker_idle);
        if (!worker)
            break;
        req = broker_service_pop (svc);
        if (s_send_work (self, worker, &req)) {
            broker_service_push_front (svc, &req);
            s_worker_lost (self, worker, "unreachable", NULL);
        }
    }
    /*  No crash suspect waits at the head any more (it went, expired, or
        was refused): a process reserved for one takes work again.  */
    if (zlistx_size (self->reserved) > 0
        && (broker_service_queued (svc) == 0
            || !s_crash_suspect (broker_service_peek (svc))))
        for (s_process_t *proc = (s_process_t *) zlistx_first (
                 self->reserved);
             proc; proc = (s_process_t *) zlistx_next (self->reserved))
            if (proc->reserved == svc) {
                s_process_release (self, proc);
                break;
            }
}

static void
s_dispatch_all (s_broker_t *self)
{
    self->rejoined = false;
    for (broker_service_t *svc = (broker_service_t *) zhashx_first (
             self->services);
         svc; svc = (broker_service_t *) zhashx_next (self->services))
        s_dispatch (self, svc);
}

/* ---- frontend: edges ------------------------------------------------------ */

/*  parts: identity, FRY1, REQ, service, msg_id, deadline, flags, payload.  */
static void
s_edge_request (s_broker_t *self, s_message_t *msg)
{
    char service[FERRY_NAME_MAX + 1], msg_id[BROKER_MSG_ID_MAX + 1];
    char deadline_text[24], flags[BROKER_FLAGS_MAX + 1];
    uint64_t deadline;
    zmq_msg_t *edge = &msg->part[0];
    bool valid
        = s_part_text (&msg->part[3], service, sizeof service, false) == 0
          && broker_name_valid (service)
          && s_part_text (&msg->part[4], msg_id, sizeof msg_id, false) == 0
          && s_part_text (&msg->part[5], deadline_text, sizeof deadline_text,
                          false)
                 == 0
          && ferry_parse_uint64 (deadline_text, &deadline) == 0
          && s_part_text (&msg->part[6], flags, sizeof flags, true) == 0;
    if (!valid) {
        log_debug ("broker: malformed REQ from edge dropped");
        return;
    }
    /*  Replies are matched by msg_id: a second request with the id of one
        that is still queued or in flight would take its reply.  Refused
        here, answered, so that nothing is dropped without a word.  */
    if (zhashx_lookup (self->requests, msg_id)) {
        s_send_problem (self, zmq_msg_data (edge), zmq_msg_size (edge),
                        msg_id, 409, "duplicate message id", 0);
        return;
    }
    s_trace (self, "broker: request msg=%s service=%s", msg_id, service);
    if (self->draining) {
        s_send_problem (self, zmq_msg_data (edge), zmq_msg_size (edge),
                        msg_id, 503, "the broker is shutting down", 1);
        return;
    }
    if (deadline && deadline <= ferry_wall_ms ()) {
        s_send_problem (self, zmq_msg_data (edge), zmq_msg_size (edge),
                        msg_id, 504, "deadline passed", 0);
        return;
    }
    broker_service_t *svc = s_service_require (self, service);
    const char *refusal = NULL;
    if (!svc)
        refusal = "too many services";
    else if (s_inflight_full (self))
        refusal = "broker overloaded";
    if (refusal) {
        s_send_problem (self, zmq_msg_data (edge), zmq_msg_size (edge),
                        msg_id, 503, refusal, 1);
        return;
    }
    broker_request_t *req = broker_request_new (
        zmq_msg_data (edge), zmq_msg_size (edge), msg_id, flags, deadline,
        ferry_mono_ms (), &msg->part[7]);
    zhashx_insert (self->requests, req->msg_id, req);
    /*  Nobody waits ahead of it and a worker has credit: it goes straight
        out, so even a service with queue_limit 0 is served.  */
    if (broker_service_queued (svc) == 0 && broker_service_ready (svc) > 0)
        broker_service_push_front (svc, &req);
    else if (broker_service_push (svc, &req)) {
        s_fail_request (self, &req, 503, "service queue full", 1);
        return;
    }
    /*  An edge that answers 202 Accepted must know the broker holds the
        message; whatever happens to it later comes as a reply.  */
    if (strchr (flags, FERRY_FLAG_ACK)) {
        const char *parts[] = {FERRY_CMD_ACK, msg_id};
        if (s_send (&self->frontend, zmq_msg_data (edge),
                    zmq_msg_size (edge), parts, 2, NULL, false))
            s_trace (self, "broker: ack dropped msg=%s reason=%s", msg_id,
                     zmq_strerror (errno));
    }
    s_dispatch (self, svc);
}

/*  Answers an edge's heartbeat with the services that have live workers,
    which is what the edge's /readyz reports.  */
static void
s_identity_key (zmq_msg_t *identity, char *key);

static void
s_edge_heartbeat (s_broker_t *self, zmq_msg_t *edge)
{
    size_t size = zmq_msg_size (edge);
    if (self->draining) {
        /*  Stopping: the edge must not take us for a broker again.  */
        const char *bye[] = {FERRY_CMD_BYE};
        s_send (&self->frontend, zmq_msg_data (edge), size, bye, 1, NULL,
                false);
        return;
    }
    if (size > 0 && size <= BROKER_IDENTITY_MAX) {
        char key[2 * BROKER_IDENTITY_MAX + 1];
        s_identity_key (edge, key);
        s_edge_t *known = (s_edge_t *) zhashx_lookup (self->edges, key);
        if (!known && zhashx_size (self->edges) < BROKER_EDGES_MAX) {
            known = ferry_calloc (1, sizeof *known);
            known->identity_size = size;
            memcpy (known->identity, zmq_msg_data (edge),
                    known->identity_size);
            zhashx_insert (self->edges, key, known);
        }
        if (known)
            known->expiry = ferry_mono_ms ()
                            + broker_settings_heartbeat (self->settings)
                                  * broker_settings_liveness (self->settings);
    }
    size_t cap = 256, len = 0;
    char *list = ferry_malloc (cap);
    list[0] = '\0';
    for (broker_service_t *svc = (broker_service_t *) zhashx_first (
             self->services);
         svc; svc = (broker_service_t *) zhashx_next (self->services)) {
        if (broker_service_workers (svc) == 0)
            continue;
        const char *name = broker_service_name (svc);
        size_t need = len + strlen (name) + 2;
        if (need > cap) {
            cap = need * 2;
            list = ferry_realloc (list, cap);
        }
        len += (size_t) sprintf (list + len, "%s%s", len ? " " : "", name);
    }
    const char *parts[] = {FERRY_CMD_HB, list};
    if (s_send (&self->frontend, zmq_msg_data (edge), zmq_msg_size (edge),
                parts, 2, NULL, false))
        s_trace (self, "broker: heartbeat to edge dropped reason=%s",
                 zmq_strerror (errno));
    free (list);
}

/*  An edge answered our BYE: messages on one connection keep their
    order, so every REQ it sent us before has arrived.  */
static void
s_edge_bye (s_broker_t *self, zmq_msg_t *edge)
{
    if (zmq_msg_size (edge) == 0 || zmq_msg_size (edge) > BROKER_IDENTITY_MAX)
        return;
    char key[2 * BROKER_IDENTITY_MAX + 1];
    s_identity_key (edge, key);
    s_edge_t *known = (s_edge_t *) zhashx_lookup (self->edges, key);
    if (known && self->draining)
        known->stopped = true;
}

/*  True when every edge we told BYE has answered it.  */
static bool
s_edges_stopped (s_broker_t *self)
{
    for (s_edge_t *edge = (s_edge_t *) zhashx_first (self->edges); edge;
         edge = (s_edge_t *) zhashx_next (self->edges))
        if (!edge->stopped)
            return false;
    return true;
}

static void
s_frontend_message (s_broker_t *self, s_message_t *msg)
{
    char command[16];
    int rest = s_message_command (msg, command, sizeof command);
    if (rest < 0)
        log_debug ("broker: malformed message from edge dropped");
    else if (streq (command, FERRY_CMD_REQ) && rest == 5)
        s_edge_request (self, msg);
    else if (streq (command, FERRY_CMD_HB) && rest == 0)
        s_edge_heartbeat (self, &msg->part[0]);
    else if (streq (command, FERRY_CMD_BYE) && rest == 0)
        s_edge_bye (self, &msg->part[0]);
    else
        log_debug ("broker: unexpected %s from edge dropped", command);
}

/* ---- backend: workers ----------------------------------------------------- */

static void
s_send_bye (s_broker_t *self, zmq_msg_t *identity)
{
    const char *parts[] = {FERRY_CMD_BYE};
    s_send (&self->backend, zmq_msg_data (identity), zmq_msg_size (identity),
            parts, 1, NULL, false);
}

/*  parts: identity, FRY1, READY, service, credit [, process].  */
static void
s_worker_ready (s_broker_t *self, s_message_t *msg, const char *key)
{
    char service[FERRY_NAME_MAX + 1], credit_text[24];
    char process[BROKER_PROCESS_MAX + 1] = "";
    int64_t credit;
    bool valid
        = s_part_text (&msg->part[3], service, sizeof service, false) == 0
          && broker_name_valid (service)
          && s_part_text (&msg->part[4], credit_text, sizeof credit_text,
                          false)
                 == 0
          && ferry_parse_int64 (credit_text, &credit) == 0 && credit >= 0
          && credit <= BROKER_CREDIT_MAX
          && (msg->count < 6
              || s_part_text (&msg->part[5], process, sizeof process, true)
                     == 0);
    if (!valid) {
        log_debug ("broker: malformed READY from worker %s dropped", key);
        return;
    }
    /*  A worker that announces itself again started a new session: what
        the old one held will not be answered.  */
    s_worker_t *old = (s_worker_t *) zhashx_lookup (self->workers, key);
    if (old) {
        broker_service_t *old_svc = old->service;
        s_worker_lost (self, old, "registered again", NULL);
        s_dispatch (self, old_svc);
    }
    broker_service_t *svc = s_service_require (self, service);
    if (!svc) {
        s_send_bye (self, &msg->part[0]);
        return;
    }
    s_worker_t *worker = ferry_calloc (1, sizeof *worker);
    worker->identity_size = zmq_msg_size (&msg->part[0]);
    memcpy (worker->identity, zmq_msg_data (&msg->part[0]),
            worker->identity_size);
    snprintf (worker->key, sizeof worker->key, "%s", key);
    worker->service = svc;
    worker->credit = credit;
    worker->inflight = zlistx_new ();
    assert (worker->inflight);
    s_process_join (self, worker, process);
    worker->idle_since = ferry_mono_ms ();
    s_worker_refresh (self, worker);
    zhashx_insert (self->workers, worker->key, worker);
    broker_service_worker_joined (svc);
    s_worker_update_ready (worker);
    log_info ("broker: worker ready id=%s service=%s credit=%" PRId64
              " process=%s",
              key, service, credit, *process ? process : "-");
    s_dead_letters_flush (self, worker);
    s_dispatch (self, svc);
}

/*  The request named by msg->part[3] that worker holds, or NULL (said in
    the trace) when the frame is malformed or the request is not this
    worker's: a queued one, one another worker holds, or one that expired
    (it is gone, and so is the credit it held, which the expiry gave
    back).  what names the command for the log.  */
static broker_request_t *
s_held_request (s_broker_t *self, s_worker_t *worker, s_message_t *msg,
                const char *what)
{
    char msg_id[BROKER_MSG_ID_MAX + 1];
    if (s_part_text (&msg->part[3], msg_id, sizeof msg_id, false)) {
        log_debug ("broker: malformed %s from worker %s dropped", what,
                   worker->key);
        return NULL;
    }
    broker_request_t *req
        = (broker_request_t *) zhashx_lookup (self->requests, msg_id);
    if (!req || req->worker != worker) {
        s_trace (self, "broker: late %s msg=%s dropped", what, msg_id);
        return NULL;
    }
    return req;
}

/*  parts: identity, FRY1, REP, msg_id, payload.  */
static void
s_worker_reply (s_broker_t *self, s_worker_t *worker, s_message_t *msg)
{
    broker_request_t *req = s_held_request (self, worker, msg, "REP");
    if (!req)
        return;
    const char *msg_id = req->msg_id;
    s_trace (self, "broker: reply msg=%s worker=%s", msg_id, worker->key);
    s_send_reply (self, req->edge, req->edge_size, msg_id, &msg->part[4]);
    /*  Only a full in-flight table holds back other services.  */
    bool was_full = s_inflight_full (self);
    broker_service_t *svc = worker->service; /* the worker may go */
    s_inflight_done (self, &req);
    if (was_full)
        s_dispatch_all (self);
    else
        s_dispatch (self, svc);
}

/*  parts: identity, FRY1, CREDIT, n.  */
static void
s_worker_credit (s_broker_t *self, s_worker_t *worker, s_message_t *msg)
{
    char text[24];
    int64_t more;
    if (s_part_text (&msg->part[3], text, sizeof text, false)
        || ferry_parse_int64 (text, &more) || more < 0
        || more > BROKER_CREDIT_MAX) {
        log_debug ("broker: malformed CREDIT from worker %s dropped",
                   worker->key);
        return;
    }
    if (worker->leaving)
        return;
    worker->credit += more;
    if (worker->credit > BROKER_CREDIT_MAX)
        worker->credit = BROKER_CREDIT_MAX;
    s_worker_update_ready (worker);
    s_dispatch (self, worker->service);
}

/*  parts: identity, FRY1, BACK, msg_id, payload.  The worker hands back a
    message it has not started (it is stopping, or it cannot do work now):
    the request goes back to the head of its queue with the payload the
    worker returns (a non-retryable request gave ours to libzmq), counts
    no death (it never ran, so it needs no retryable flag), and the
    worker gets its credit back unless it is leaving.  */
static void
s_worker_back (s_broker_t *self, s_worker_t *worker, s_message_t *msg)
{
    broker_request_t *req = s_held_request (self, worker, msg, "BACK");
    if (!req)
        return;
    s_trace (self, "broker: handed back msg=%s worker=%s", req->msg_id,
             worker->key);
    broker_service_t *svc = worker->service; /* the worker may go */
    s_inflight_take (self, req);
    zmq_msg_close (&req->payload);
    zmq_msg_init (&req->payload);
    zmq_msg_move (&req->payload, &msg->part[4]);
    broker_service_push_front (svc, &req);
    s_worker_release (self, worker);
    s_dispatch (self, svc);
}

/*  parts: identity, FRY1, HB [, breaker].  Keeps the pool's breaker
    state the worker reports, for STATUS.  */
static void
s_worker_heartbeat (s_worker_t *worker, s_message_t *msg)
{
    char state[sizeof worker->breaker];
    if (msg->count < 4)
        return;
    if (s_part_text (&msg->part[3], state, sizeof state, false) == 0
        && (streq (state, "closed") || streq (state, "open")
            || streq (state, "half-open")))
        memcpy (worker->breaker, state, sizeof state);
    else
        log_debug ("broker: unknown breaker state from worker %s ignored",
                   worker->key);
}

/*  parts: identity, FRY1, DIED, process, signal.  A worker process died by
    a signal (its supervisor tells us): every worker it ran is lost now,
    without waiting for their heartbeats to stop, and what they held
    remembers the signal for its dead letter.  Never answered.  */
static void
s_process_died (s_broker_t *self, s_message_t *msg)
{
    char process[BROKER_PROCESS_MAX + 1], signal[BROKER_SIGNAL_MAX + 1];
    if (s_part_text (&msg->part[3], process, sizeof process, false)
        || s_part_text (&msg->part[4], signal, sizeof signal, false)) {
        log_debug ("broker: malformed DIED dropped");
        return;
    }
    /*  A copy of its workers: losing them empties the record.  */
    zlistx_t *dead = zlistx_new ();
    assert (dead);
    s_process_t *proc = *process ? (s_process_t *) zhashx_lookup (
                                       self->processes, process)
                                 : NULL;
    for (s_worker_t *worker = proc ? (s_worker_t *) zlistx_first (
                                         proc->workers)
                                   : NULL;
         worker; worker = (s_worker_t *) zlistx_next (proc->workers)) {
        worker->dead = true;
        zlistx_add_end (dead, worker);
    }
    log_info ("broker: process died process=%s signal=%s workers=%zu",
              process, signal, zlistx_size (dead));
    char reason[sizeof signal + 16];
    snprintf (reason, sizeof reason, "killed by %s", signal);
    /*  All of them first, then dispatch: what they held must not go to
        another worker of the same dead process.  */
    for (s_worker_t *worker = (s_worker_t *) zlistx_first (dead); worker;
         worker = (s_worker_t *) zlistx_next (dead))
        s_worker_lost (self, worker, reason, signal);
    bool lost = zlistx_size (dead) > 0;
    zlistx_destroy (&dead);
    if (lost)
        s_dispatch_all (self);
}

static void
s_worker_bye (s_broker_t *self, s_worker_t *worker)
{
    if (zlistx_size (worker->inflight) == 0) {
        log_info ("broker: worker left id=%s service=%s", worker->key,
                  broker_service_name (worker->service));
        s_worker_remove (self, worker);
        return;
    }
    /*  It still holds work: stop sending more and remove it once it has
        answered (or when it goes silent).  */
    worker->leaving = true;
    worker->credit = 0;
    s_worker_update_ready (worker);
}

/*  Writes the identity as upper-case hex into key (2 * size + 1 bytes),
    without allocating: it is computed for every backend message.  */
static void
s_identity_key (zmq_msg_t *identity, char *key)
{
    static const char hex[] = "0123456789ABCDEF";
    const uint8_t *data = (const uint8_t *) zmq_msg_data (identity);
    size_t size = zmq_msg_size (identity);
    for (size_t i = 0; i < size; i++) {
        key[2 * i] = hex[data[i] >> 4];
        key[2 * i + 1] = hex[data[i] & 15];
    }
    key[2 * size] = '\0';
}

static void
s_backend_message (s_broker_t *self, s_message_t *msg)
{
    char command[16];
    int rest = s_message_command (msg, command, sizeof command);
    if (rest < 0) {
        log_debug ("broker: malformed message from worker dropped");
        return;
    }
    char key[2 * BROKER_IDENTITY_MAX + 1];
    s_identity_key (&msg->part[0], key);
    s_worker_t *worker = (s_worker_t *) zhashx_lookup (self->workers, key);
    if (streq (command, FERRY_CMD_DIED)) {
        /*  From any peer (a supervisor is no worker), never answered.  */
        if (rest == 2)
            s_process_died (self, msg);
        else
            log_debug ("broker: malformed DIED dropped");
    }
    else if (streq (command, FERRY_CMD_READY) && (rest == 2 || rest == 3))
        s_worker_ready (self, msg, key);
    else if (!worker) {
        /*  We declared it dead, or we restarted: it must say READY again. */
        if (!streq (command, FERRY_CMD_BYE)) {
            s_trace (self, "broker: %s from unknown worker %s, sending BYE",
                     command, key);
            s_send_bye (self, &msg->part[0]);
        }
    }
    else {
        s_worker_refresh (self, worker);
        if (streq (command, FERRY_CMD_REP) && rest == 2)
            s_worker_reply (self, worker, msg);
        else if (streq (command, FERRY_CMD_HB) && rest <= 1)
            s_worker_heartbeat (worker, msg);
        else if (streq (command, FERRY_CMD_CREDIT) && rest == 1)
            s_worker_credit (self, worker, msg);
        else if (streq (command, FERRY_CMD_BACK) && rest == 2)
            s_worker_back (self, worker, msg);
        else if (streq (command, FERRY_CMD_BYE) && rest == 0)
            s_worker_bye (self, worker);
        else
            log_debug ("broker: unexpected %s from worker %s dropped",
                       command, key);
    }
}

/* ---- timers --------------------------------------------------------------- */

/*  Forgets the edges that stopped sending heartbeats.  */
static void
s_edges_expire (s_broker_t *self, int64_t now)
{
    zlistx_t *gone = zlistx_new ();
    assert (gone);
    zlistx_set_destructor (gone, (zlistx_destructor_fn *) zstr_free);
    for (s_edge_t *edge = (s_edge_t *) zhashx_first (self->edges); edge;
         edge = (s_edge_t *) zhashx_next (self->edges))
        if (now >= edge->expiry)
            zlistx_add_end (gone,
                            ferry_strdup ((const char *) zhashx_cursor (
                                self->edges)));
    for (char *key = (char *) zlistx_first (gone); key;
         key = (char *) zlistx_next (gone))
        zhashx_delete (self->edges, key);
    zlistx_destroy (&gone);
}

/*  Sends HB to every worker and removes those silent for too long.  */
static void
s_heartbeat (s_broker_t *self, int64_t now)
{
    zlistx_t *dead = zlistx_new ();
    assert (dead);
    const char *parts[] = {FERRY_CMD_HB};
    for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
         worker; worker = (s_worker_t *) zhashx_next (self->workers)) {
        if (now >= worker->expiry
            || s_send (&self->backend, worker->identity,
                       worker->identity_size, parts, 1, NULL, false))
            zlistx_add_end (dead, worker);
    }
    bool lost = zlistx_size (dead) > 0;
    for (s_worker_t *worker = (s_worker_t *) zlistx_first (dead); worker;
         worker = (s_worker_t *) zlistx_next (dead))
        s_worker_lost (self, worker,
                       now >= worker->expiry ? "silent" : "unreachable",
                       NULL);
    zlistx_destroy (&dead);
    if (lost)
        s_dispatch_all (self);
}

/*  Expires in-flight requests whose deadline passed more than a grace
    ago: a worker that lost the reply (its send hit the high-water mark, it
    dropped a bad frame) would otherwise keep the entry, an in-flight slot
    and a unit of its credit for good, and after enough losses get no work
    although it heartbeats.  The grace, liveness x heartbeat, covers a
    statement_timeout that fires exactly at the deadline and the reply's
    trip back.  The edge answered 504 itself at the deadline and drops late
    replies, so the 504 sent here is harmless and keeps exactly one answer
    per request on the edge's side.  Requests without a deadline never
    expire this way.

    Called at heartbeat ticks only, so the heartbeat timer, already in the
    poll timeout, is also this timer: an expiry is at most one heartbeat
    late, which is small next to the grace (liveness heartbeats).  Checking
    on every turn would need a deadline-ordered structure, a cost on every
    dispatch (requests with different timeouts do not arrive in deadline
    order); a scan per tick costs nothing per message.  The scan walks the
    workers' lists only when the lower bound inflight_deadline says
    something may be due, so at most once per heartbeat, and it recomputes
    the bound from what stays.  */
static void
s_inflight_expire (s_broker_t *self, uint64_t wall)
{
    uint64_t grace
        = (uint64_t) (broker_settings_heartbeat (self->settings)
                      * broker_settings_liveness (self->settings));
    if (wall < grace || self->inflight_deadline > wall - grace)
        return;
    uint64_t cutoff = wall - grace;
    uint64_t bound = UINT64_MAX;
    zlistx_t *due = zlistx_new ();
    assert (due);
    for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
         worker; worker = (s_worker_t *) zhashx_next (self->workers)) {
        zlistx_t *held = worker->inflight;
        for (broker_request_t *req = (broker_request_t *) zlistx_first (held);
             req; req = (broker_request_t *) zlistx_next (held)) {
            if (!req->deadline)
                continue;
            if (req->deadline <= cutoff)
                zlistx_add_end (due, req);
            else if (req->deadline < bound)
                bound = req->deadline;
        }
    }
    self->inflight_deadline = bound;
    bool expired = zlistx_size (due) > 0;
    broker_request_t *req;
    while ((req = (broker_request_t *) zlistx_first (due))) {
        zlistx_delete (due, zlistx_cursor (due));
        log_info ("broker: inflight expired msg=%s worker=%s", req->msg_id,
                  ((s_worker_t *) req->worker)->key);
        s_send_problem (self, req->edge, req->edge_size, req->msg_id, 504,
                        "deadline passed, no reply from the worker", 0);
        s_inflight_done (self, &req);
    }
    zlistx_destroy (&due);
    if (expired)
        s_dispatch_all (self);
}

static void
s_timers (s_broker_t *self)
{
    int64_t now = ferry_mono_ms ();
    if (now >= self->heartbeat_at) {
        self->heartbeat_at
            = now + broker_settings_heartbeat (self->settings);
        s_heartbeat (self, now);
        s_edges_expire (self, now);
        s_inflight_expire (self, ferry_wall_ms ());
    }
    uint64_t wall = ferry_wall_ms ();
    int64_t grace = broker_settings_no_worker_grace (self->settings);
    for (broker_service_t *svc = (broker_service_t *) zhashx_first (
             self->services);
         svc; svc = (broker_service_t *) zhashx_next (self->services)) {
        broker_request_t *req;
        bool expired = false;
        while ((req = broker_service_pop_expired (svc, wall))) {
            s_fail_request (self, &req, 504, "deadline passed in the queue",
                            0);
            expired = true;
        }
        /*  A suspect that expired at the head held back the requests
            behind it, which idle workers may take now.  */
        if (expired)
            s_dispatch (self, svc);
        while ((req = broker_service_pop_orphaned (svc, now, grace)))
            s_fail_request (self, &req, 503, "no worker for this service",
                            1);
    }
    if (self->rejoined)
        s_dispatch_all (self);
}

/*  Milliseconds to the nearest timer, for the poll.  In-flight expiry runs
    at heartbeat ticks (s_inflight_expire), so the heartbeat covers it.  */
static int
s_timeout (s_broker_t *self)
{
    int64_t now = ferry_mono_ms ();
    uint64_t wall = ferry_wall_ms ();
    int64_t next = self->heartbeat_at - now;
    for (broker_service_t *svc = (broker_service_t *) zhashx_first (
             self->services);
         svc; svc = (broker_service_t *) zhashx_next (self->services)) {
        int64_t t = broker_service_next_timer (
            svc, wall, now,
            broker_settings_no_worker_grace (self->settings));
        if (t >= 0 && t < next)
            next = t;
    }
    return next < 0 ? 0 : (int) next;
}

/* ---- the actor ------------------------------------------------------------ */

/*  Creates a ROUTER with ferry's options.  Returns 0 or -1.  */
static int
s_router_init (s_router_t *router, const broker_settings_t *settings)
{
    router->sock = zsock_new (ZMQ_ROUTER);
    if (!router->sock)
        return -1;
    router->handle = zsock_resolve (router->sock);
    uint64_t limit = broker_settings_max_message (settings);
    int64_t max = limit > (uint64_t) INT64_MAX ? INT64_MAX : (int64_t) limit;
    zsock_set_router_mandatory (router->sock, 1);
    zmq_setsockopt (router->handle, ZMQ_MAXMSGSIZE, &max, sizeof max);
    zsock_set_sndhwm (router->sock, BROKER_HWM);
    zsock_set_rcvhwm (router->sock, BROKER_HWM);
    zsock_set_linger (router->sock, 0);
    router->fd = zsock_fd (router->sock);
    return 0;
}

static void
s_broker_destroy (s_broker_t **self_p)
{
    s_broker_t *self = *self_p;
    if (self) {
        /*  In-flight requests are listed by their workers: free them
            first.  Queued ones belong to their service's queue.  */
        if (self->requests)
            for (broker_request_t *req
                 = (broker_request_t *) zhashx_first (self->requests);
                 req;
                 req = (broker_request_t *) zhashx_next (self->requests))
                if (req->worker)
                    broker_request_destroy (&req);
        zhashx_destroy (&self->requests);
        zlistx_destroy (&self->dead_letters);
        zlistx_destroy (&self->reserved);
        zhashx_destroy (&self->workers);
        zhashx_destroy (&self->processes);
        zhashx_destroy (&self->edges);
        zhashx_destroy (&self->services);
        zsock_destroy (&self->frontend.sock);
        zsock_destroy (&self->backend.sock);
        zsock_destroy (&self->control);
        broker_settings_destroy (&self->settings);
        free (self);
        *self_p = NULL;
    }
}

static s_broker_t *
s_broker_new (zsock_t *pipe, const broker_settings_t *settings)
{
    s_broker_t *self = ferry_calloc (1, sizeof *self);
    self->pipe = pipe;
    self->settings = broker_settings_dup (settings);
    self->services = zhashx_new ();
    self->workers = zhashx_new ();
    self->processes = zhashx_new ();
    self->edges = zhashx_new ();
    self->requests = zhashx_new ();
    self->dead_letters = zlistx_new ();
    self->reserved = zlistx_new ();
    self->inflight_deadline = UINT64_MAX;
    if (s_router_init (&self->frontend, settings)
        || s_router_init (&self->backend, settings) || !self->services
        || !self->workers || !self->processes || !self->edges || !self->requests
        || !self->dead_letters || !self->reserved) {
        s_broker_destroy (&self);
        return NULL;
    }
    /*  A worker that reconnects with the same identity takes its place.  */
    zsock_set_router_handover (self->backend.sock, 1);
    zhashx_set_destructor (self->services, s_service_destructor);
    zhashx_set_destructor (self->workers, s_worker_destructor);
    zhashx_set_destructor (self->processes, s_process_destructor);
    zhashx_set_destructor (self->edges, s_edge_destructor);
    zlistx_set_destructor (self->dead_letters, s_dead_letter_destructor);
    /*  The key is the request's own msg_id: no copy per request.  */
    zhashx_set_key_duplicator (self->requests, NULL);
    zhashx_set_key_destructor (self->requests, NULL);
    self->heartbeat_at
        = ferry_mono_ms () + broker_settings_heartbeat (self->settings);
    return self;
}

static int
s_bind (zsock_t *sock, const char *endpoint, char **bound)
{
    if (zsock_bind (sock, "%s", endpoint) == -1) {
        log_error ("broker: cannot bind endpoint=%s error=\"%s\"", endpoint,
                   zmq_strerror (errno));
        return -1;
    }
    *bound = zsock_last_endpoint (sock);
    return *bound ? 0 : -1;
}

/* ---- control socket ------------------------------------------------------ */

/*  The state of the broker for `ferryctl status` as a JSON object text
    (caller frees), or NULL when it cannot be built.  A service's breaker
    is the common state of its workers' last reported breakers, "mixed"
    when they differ, "closed" when none reported one.  */
static char *
s_status_json (s_broker_t *self)
{
    int64_t now = ferry_mono_ms ();
    json_t *root = json_object ();
    json_t *services = json_array (), *workers = json_array ();
    bool ok = root && services && workers;
    for (broker_service_t *svc = (broker_service_t *) zhashx_first (
             self->services);
         ok && svc; svc = (broker_service_t *) zhashx_next (self->services)) {
        size_t inflight = 0;
        const char *breaker = NULL;
        for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
             worker; worker = (s_worker_t *) zhashx_next (self->workers)) {
            if (worker->service != svc)
                continue;
            inflight += zlistx_size (worker->inflight);
            if (!*worker->breaker)
                continue;
            if (!breaker)
                breaker = worker->breaker;
            else if (!streq (breaker, worker->breaker))
                breaker = "mixed";
        }
        json_t *item = json_pack (
            "{s:s, s:I, s:I, s:I, s:I, s:I, s:s}", "name",
            broker_service_name (svc), "queued",
            (json_int_t) broker_service_queued (svc), "queue_max",
            (json_int_t) broker_service_limit (svc), "workers",
            (json_int_t) broker_service_workers (svc), "ready",
            (json_int_t) broker_service_ready (svc), "inflight",
            (json_int_t) inflight, "breaker", breaker ? breaker : "closed");
        ok = item && json_array_append_new (services, item) == 0;
    }
    for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
         ok && worker; worker = (s_worker_t *) zhashx_next (self->workers)) {
        size_t inflight = zlistx_size (worker->inflight);
        int64_t idle = inflight ? 0 : now - worker->idle_since;
        json_t *item = json_pack (
            "{s:s, s:s, s:s, s:I, s:I, s:s, s:I}", "id", worker->key,
            "service", broker_service_name (worker->service), "process",
            worker->proc->name, "credit", (json_int_t) worker->credit,
            "inflight", (json_int_t) inflight, "breaker",
            *worker->breaker ? worker->breaker : "closed", "idle_ms",
            (json_int_t) (idle > 0 ? idle : 0));
        ok = item && json_array_append_new (workers, item) == 0;
    }
    char *text = NULL;
    if (ok && json_object_set (root, "services", services) == 0
        && json_object_set (root, "workers", workers) == 0
        && json_object_set_new (root, "edges",
                                json_integer ((json_int_t) zhashx_size (
                                    self->edges)))
               == 0
        && json_object_set_new (root, "inflight",
                                json_integer ((json_int_t) self->inflight))
               == 0
        && json_object_set_new (
               root, "inflight_max",
               json_integer ((json_int_t) broker_settings_max_inflight (
                   self->settings)))
               == 0
        && json_object_set_new (root, "draining",
                                json_boolean (self->draining))
               == 0)
        text = json_dumps (root, JSON_COMPACT);
    json_decref (services);
    json_decref (workers);
    json_decref (root);
    return text;
}

/*  Binds the control ROUTER.  Returns 0 with *bound set, or -1.  */
static int
s_control_bind (s_broker_t *self, const char *endpoint, char **bound)
{
    zsock_destroy (&self->control);
    self->control = zsock_new (ZMQ_ROUTER);
    if (!self->control)
        return -1;
    int64_t max = BROKER_CONTROL_MAX;
    zmq_setsockopt (zsock_resolve (self->control), ZMQ_MAXMSGSIZE, &max,
                    sizeof max);
    zsock_set_linger (self->control, 0);
    zsock_set_sndtimeo (self->control, 0);
    zsock_set_rcvtimeo (self->control, 0);
    if (zsock_bind (self->control, "%s", endpoint) == -1) {
        log_error ("broker: cannot bind control endpoint=%s error=\"%s\"",
                   endpoint, zmq_strerror (errno));
        zsock_destroy (&self->control);
        return -1;
    }
    *bound = zsock_last_endpoint (self->control);
    return *bound ? 0 : -1;
}

/*  Answers every control request waiting: [identity, FRY1, STATUS] gets
    [identity, FRY1, STATUS, json]; anything else is dropped.  Reads until
    empty, so the fd (edge-triggered) signals the next one.  */
static void
s_control_recv (s_broker_t *self)
{
    while (self->control && (zsock_events (self->control) & ZMQ_POLLIN)) {
        zmsg_t *msg = zmsg_recv (self->control);
        if (!msg)
            break;
        zframe_t *identity = zmsg_pop (msg);
        char *proto = zmsg_popstr (msg), *command = zmsg_popstr (msg);
        if (identity && proto && command && zmsg_size (msg) == 0
            && streq (proto, FERRY_PROTO)
            && streq (command, FERRY_CMD_STATUS)) {
            char *json = s_status_json (self);
            if (json) {
                zmsg_t *reply = zmsg_new ();
                zmsg_append (reply, &identity);
                zmsg_addstr (reply, FERRY_PROTO);
                zmsg_addstr (reply, FERRY_CMD_STATUS);
                zmsg_addstr (reply, json);
                if (zmsg_send (&reply, self->control))
                    zmsg_destroy (&reply);
                free (json);
            }
            else
                log_warn ("broker: cannot build the status");
        }
        else
            log_debug ("broker: malformed control request dropped");
        zframe_destroy (&identity);
        free (proto);
        free (command);
        zmsg_destroy (&msg);
    }
}

/* ---- graceful stop ------------------------------------------------------- */

/*  DRAIN (the process got SIGTERM): refuse new requests and answer the
    queued ones 503 with Retry-After at once, so edges do not wait for
    them until their deadlines; tell every edge BYE; the requests in
    flight keep their workers until they answer.  The drain is over
    (s_drain_finish) when nothing is in flight and every edge has answered
    BYE, so no REQ of theirs is still on its way to us, or when
    drain_timeout passes.  */
static void
s_drain_start (s_broker_t *self)
{
    if (self->draining)
        return;
    self->draining = true;
    self->drain_until
        = ferry_mono_ms () + broker_settings_drain_timeout (self->settings);
    size_t refused = 0;
    for (broker_service_t *svc = (broker_service_t *) zhashx_first (
             self->services);
         svc; svc = (broker_service_t *) zhashx_next (self->services))
        while (broker_service_queued (svc) > 0) {
            broker_request_t *req = broker_service_pop (svc);
            s_fail_request (self, &req, 503, "the broker is shutting down",
                            1);
            refused++;
        }
    /*  Edges answer 503 themselves from now until a broker answers
        their heartbeat again: a REQ sent to us later could arrive after
        we stopped reading and be lost.  */
    const char *bye[] = {FERRY_CMD_BYE};
    for (s_edge_t *edge = (s_edge_t *) zhashx_first (self->edges); edge;
         edge = (s_edge_t *) zhashx_next (self->edges))
        s_send (&self->frontend, edge->identity, edge->identity_size, bye, 1,
                NULL, false);
    log_info ("broker: draining inflight=%zu queued_refused=%zu edges=%zu",
              self->inflight, refused, zhashx_size (self->edges));
}

/*  The drain is over: every request still in flight is answered here, a
    retryable one 503 (running it again is safe), any other 502 (the
    worker may still run it: the outcome is unknown).  Every worker gets
    BYE, which tells it to register again: it does so with the broker
    that comes next, whose HB answers also make it re-register.  The
    sockets linger so these last messages leave before the process ends,
    then the owner hears DRAINED.  */
static void
s_drain_finish (s_broker_t *self)
{
    size_t answered = 0;
    const char *bye[] = {FERRY_CMD_BYE};
    for (s_worker_t *worker = (s_worker_t *) zhashx_first (self->workers);
         worker; worker = (s_worker_t *) zhashx_next (self->workers)) {
        broker_request_t *req;
        while ((req = (broker_request_t *) zlistx_first (worker->inflight))) {
            s_inflight_take (self, req);
            if (broker_request_retryable (req))
                s_fail_request (self, &req, 503,
                                "the broker is shutting down", 1);
            else
                s_fail_request (self, &req, 502,
                                "the broker stopped, outcome unknown", 0);
            answered++;
        }
        worker->credit = 0;
        s_worker_update_ready (worker);
        s_send (&self->backend, worker->identity, worker->identity_size,
                bye, 1, NULL, false);
    }
    zsock_set_linger (self->frontend.sock, 1000);
    zsock_set_linger (self->backend.sock, 1000);
    log_info ("broker: drained unanswered=%zu workers=%zu", answered,
              zhashx_size (self->workers));
    self->drained = true;
    zstr_send (self->pipe, "DRAINED");
}

static void
s_pipe_recv (s_broker_t *self)
{
    zmsg_t *msg = zmsg_recv (self->pipe);
    if (!msg) {
        self->terminated = true; /* interrupted */
        return;
    }
    char *command = zmsg_popstr (msg);
    if (!command)
        log_warn ("broker: empty command on the pipe");
    else if (streq (command, "$TERM"))
        self->terminated = true;
    else if (streq (command, "VERBOSE"))
        self->verbose = true;
    else if (streq (command, "DRAIN"))
        s_drain_start (self);
    else if (streq (command, "BIND")) {
        char *fe = zmsg_popstr (msg), *be = zmsg_popstr (msg);
        char *fe_bound = NULL, *be_bound = NULL;
        int rc = fe && be ? 0 : -1;
        if (rc == 0)
            rc = s_bind (self->frontend.sock, fe, &fe_bound);
        if (rc == 0)
            rc = s_bind (self->backend.sock, be, &be_bound);
        zsock_send (self->pipe, "iss", rc, fe_bound ? fe_bound : "",
                    be_bound ? be_bound : "");
        free (fe);
        free (be);
        free (fe_bound);
        free (be_bound);
    }
    else if (streq (command, "CONTROL")) {
        char *endpoint = zmsg_popstr (msg), *bound = NULL;
        int rc = endpoint ? s_control_bind (self, endpoint, &bound) : -1;
        zsock_send (self->pipe, "is", rc, bound ? bound : "");
        free (endpoint);
        free (bound);
    }
    else if (streq (command, "STATUS")) {
        size_t queued = 0;
        for (broker_service_t *svc = (broker_service_t *) zhashx_first (
                 self->services);
             svc; svc = (broker_service_t *) zhashx_next (self->services))
            queued += broker_service_queued (svc);
        zsock_send (self->pipe, "iiii", (int) zhashx_size (self->workers),
                    (int) self->inflight, (int) queued,
                    (int) zhashx_size (self->services));
    }
    else
        log_warn ("broker: unknown command %s on the pipe", command);
    free (command);
    zmsg_destroy (&msg);
}

/*  Reads up to BROKER_BATCH messages from router and hands each to
    handle.  */
static void
s_read_batch (s_broker_t *self, s_router_t *router,
              void (*handle) (s_broker_t *, s_message_t *))
{
    s_message_t msg;
    for (int i = 0; i < BROKER_BATCH && !self->terminated; i++) {
        if (!s_recv (self, router, &msg))
            break;
        handle (self, &msg);
        s_message_close (&msg);
        /*  The handler dispatched its own service only.  */
        if (self->rejoined)
            s_dispatch_all (self);
    }
}

/*  Reads both ROUTERs until both are settled, a batch at a time, backend
    first: replies free credit for the requests behind them, so a busy
    frontend must not starve the backend.  A ROUTER's fd only signals new
    commands for it, and libzmq may consume those inside a send (at most
    once a millisecond), so a socket we sent on must be read until empty
    again before the loop may sleep on its fd.  Gives up after a few rounds
    so timers and the pipe get their turn under constant load.  */
static void
s_drain (s_broker_t *self)
{
    for (int round = 0; round < 4 && !self->terminated; round++) {
        if (self->backend.settled && self->frontend.settled)
            return;
        if (!self->backend.settled)
            s_read_batch (self, &self->backend, s_backend_message);
        if (!self->frontend.settled)
            s_read_batch (self, &self->frontend, s_frontend_message);
    }
}

/*  Answers commands with failure until told to end: the actor could not
    build its state, and zactor_new cannot report that.  */
static void
s_broker_failed (zsock_t *pipe)
{
    log_error ("broker: cannot create sockets");
    while (true) {
        zmsg_t *msg = zmsg_recv (pipe);
        char *command = msg ? zmsg_popstr (msg) : NULL;
        bool term = !command || streq (command, "$TERM");
        if (command && streq (command, "BIND"))
            zsock_send (pipe, "iss", -1, "", "");
        else if (command && streq (command, "CONTROL"))
            zsock_send (pipe, "is", -1, "");
        else if (command && streq (command, "STATUS"))
            zsock_send (pipe, "iiii", 0, 0, 0, 0);
        free (command);
        zmsg_destroy (&msg);
        if (term)
            return;
    }
}

void
broker_actor (zsock_t *pipe, void *args)
{
    const broker_settings_t *settings = (const broker_settings_t *) args;
    s_broker_t *self = s_broker_new (pipe, settings);
    zsock_signal (pipe, 0);
    if (!self) {
        s_broker_failed (pipe);
        return;
    }
    /*  The owner may have sent commands already; the pipe's fd only tells
        of commands that arrive from now on.  */
    bool pipe_ready = true;
    int pipe_fd = zsock_fd (self->pipe);
    while (!self->terminated) {
        /*  The pipe is read until empty too, for the same reason as the
            ROUTERs: our answers on it may consume its fd's signal.  */
        while (pipe_ready && !self->terminated
               && (zsock_events (self->pipe) & ZMQ_POLLIN))
            s_pipe_recv (self);
        s_drain (self);
        s_control_recv (self);
        s_timers (self);
        if (self->draining && !self->drained
            && ((self->inflight == 0 && s_edges_stopped (self))
                || ferry_mono_ms () >= self->drain_until))
            s_drain_finish (self);
        if (self->terminated)
            break;
        bool settled = self->frontend.settled && self->backend.settled;
        struct pollfd fds[] = {
            {pipe_fd, POLLIN, 0},
            {self->frontend.fd, POLLIN, 0},
            {self->backend.fd, POLLIN, 0},
            {self->control ? zsock_fd (self->control) : -1, POLLIN, 0},
        };
        int timeout = settled ? s_timeout (self) : 0;
        if (self->draining && !self->drained && timeout > 20)
            timeout = 20;
        if (poll (fds, 4, timeout) == -1) {
            if (errno == EINTR)
                continue;
            log_error ("broker: poll failed error=\"%s\"", strerror (errno));
            break;
        }
        pipe_ready = fds[0].revents != 0;
        if (fds[1].revents)
            self->frontend.settled = false;
        if (fds[2].revents)
            self->backend.settled = false;
    }
    s_broker_destroy (&self);
}

/* ---- tests ---------------------------------------------------------------- */


/*  The actor tests run the broker in-process through harness.c: DEALER
    sockets play edges and workers.  Each names its peers, sends protocol
    messages and checks what comes back; the harness owns the peers and
    the broker, and every receive has a timeout.  */

#define S_WAIT BROKER_HARNESS_WAIT

int
broker_dispatch_test (bool verbose)
{
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, NULL, true, verbose) == 0);
    FERRY_CHECK (strncmp (h.frontend, "tcp://127.0.0.1:", 16) == 0);
    FERRY_CHECK (!strstr (h.frontend, "*"));
    zsock_t *edge = broker_harness_edge (&h);
    zsock_t *worker = broker_harness_worker (&h, "app", "1");
    FERRY_CHECK (edge && worker);
    FERRY_CHECK (broker_harness_wait_workers (&h, 1));

    /*  Binary payload, zero bytes included: it must arrive as sent.  */
    unsigned char payload[300];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (unsigned char) (i * 7);
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "app", id, deadline, "", payload,
                            sizeof payload);
    zmsg_t *work = broker_harness_work (worker, id, S_WAIT);
    FERRY_CHECK (work);
    char *got_id = zmsg_popstr (work), *got_deadline = zmsg_popstr (work);
    char *got_attempt = zmsg_popstr (work);
    zframe_t *got = zmsg_pop (work);
    FERRY_CHECK (streq (got_id, id));
    FERRY_CHECK (got_attempt && streq (got_attempt, "1"));
    free (got_attempt);
    uint64_t parsed;
    FERRY_CHECK (ferry_parse_uint64 (got_deadline, &parsed) == 0
                 && parsed == deadline);
    FERRY_CHECK (zframe_size (got) == sizeof payload
                 && memcmp (zframe_data (got), payload, sizeof payload) == 0);
    free (got_id);
    free (got_deadline);
    zframe_destroy (&got);
    zmsg_destroy (&work);

    unsigned char answer[] = {0x81, 0xa1, 'x', 0x00};
    broker_harness_reply (worker, id, answer, sizeof answer);
    zmsg_t *reply = broker_harness_recv (edge, FERRY_CMD_REP, 2, 0);
    FERRY_CHECK (reply);
    FERRY_CHECK (zframe_streq (zmsg_first (reply), id));
    zframe_t *body = zmsg_next (reply);
    FERRY_CHECK (zframe_size (body) == sizeof answer
                 && memcmp (zframe_data (body), answer, sizeof answer) == 0);
    zmsg_destroy (&reply);
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.workers == 1 && status.inflight == 0
                 && status.queued == 0);

    /*  The edge's heartbeat is answered with the live services.  */
    char *services = broker_harness_edge_hb (edge);
    FERRY_CHECK (services && streq (services, "app"));
    free (services);
    broker_harness_stop (&h);
    return 0;
}

int
broker_routing_test (bool verbose)
{
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, NULL, false, verbose) == 0);
    zsock_t *edge_a = broker_harness_edge (&h);
    zsock_t *edge_b = broker_harness_edge (&h);
    zsock_t *worker = broker_harness_worker (&h, "app", "2");
    FERRY_CHECK (broker_harness_wait_workers (&h, 1));
    char id_a[FERRY_ID_LEN + 1], id_b[FERRY_ID_LEN + 1];
    ferry_id_generate (id_a);
    ferry_id_generate (id_b);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge_a, "app", id_a, deadline, "", "A", 1);
    FERRY_CHECK (broker_harness_got_work (worker, id_a));
    broker_harness_request (edge_b, "app", id_b, deadline, "", "B", 1);
    FERRY_CHECK (broker_harness_got_work (worker, id_b));

    /*  Answer in the other order: each reply finds its own edge.  */
    broker_harness_reply (worker, id_b, "for b", 5);
    broker_harness_reply (worker, id_a, "for a", 5);
    FERRY_CHECK (broker_harness_got_reply (edge_a, id_a, "for a"));
    FERRY_CHECK (broker_harness_got_reply (edge_b, id_b, "for b"));
    FERRY_CHECK (broker_harness_silent (edge_a, 50)
                 && broker_harness_silent (edge_b, 50));

    /*  A second reply to the same message is late and dropped.  */
    broker_harness_reply (worker, id_a, "again", 5);
    FERRY_CHECK (broker_harness_silent (edge_a, 100));

    /*  An edge that went away: its reply is dropped, the broker lives on
        (ROUTER_MANDATORY turns the send into EHOSTUNREACH).  */
    broker_harness_request (edge_b, "app", id_b, deadline, "", "B", 1);
    FERRY_CHECK (broker_harness_got_work (worker, id_b));
    broker_harness_drop (&h, &edge_b);
    zclock_sleep (20);
    broker_harness_reply (worker, id_b, "nobody", 6);
    ferry_id_generate (id_a);
    broker_harness_request (edge_a, "app", id_a, deadline, "", "A", 1);
    FERRY_CHECK (broker_harness_got_work (worker, id_a));
    broker_harness_stop (&h);
    return 0;
}

int
broker_credit_test (bool verbose)
{
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, NULL, "app", "1",
                                              verbose, &edge, &worker)
                 == 0);
    char ids[3][FERRY_ID_LEN + 1];
    broker_harness_requests (edge, "app", ids, 3);
    FERRY_CHECK (broker_harness_got_work (worker, ids[0]));
    /*  One credit: nothing more until the reply.  */
    FERRY_CHECK (broker_harness_work (worker, NULL, 150) == NULL);
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.inflight == 1 && status.queued == 2);
    broker_harness_reply (worker, ids[0], "r", 1);
    FERRY_CHECK (broker_harness_got_work (worker, ids[1]));
    /*  CREDIT adds to what the reply will give back.  */
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_CREDIT, "1", NULL);
    FERRY_CHECK (broker_harness_got_work (worker, ids[2]));
    status = broker_harness_status (&h);
    FERRY_CHECK (status.inflight == 2 && status.queued == 0);
    for (int i = 0; i < 3; i++) {
        if (i > 0)
            broker_harness_reply (worker, ids[i], "r", 1);
        FERRY_CHECK (broker_harness_got_reply (edge, ids[i], NULL));
    }
    /*  A worker that leaves with BYE is forgotten.  */
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_BYE, NULL);
    FERRY_CHECK (broker_harness_wait_workers (&h, 0));
    broker_harness_stop (&h);
    return 0;
}

int
broker_queue_full_test (bool verbose)
{
    broker_settings_t *settings = broker_harness_settings (false);
    broker_settings_set_queue_limit (settings, "app", 2);
    broker_settings_set_default_queue_limit (settings, 5);
    /*  A worker without credit: everything queues.  */
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, &settings, "app", "0",
                                              verbose, &edge, &worker)
                 == 0);
    char ids[3][FERRY_ID_LEN + 1];
    broker_harness_requests (edge, "app", ids, 3);
    int64_t start = ferry_mono_ms ();
    FERRY_CHECK (broker_harness_got_problem (edge, ids[2], 503, true));
    /*  "Immediate": well before any timer (grace 100 ms, deadline 10 s). */
    FERRY_CHECK (ferry_mono_ms () - start < 90);
    FERRY_CHECK (broker_harness_status (&h).queued == 2);
    /*  Credit drains the queue in order.  */
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_CREDIT, "2", NULL);
    for (int i = 0; i < 2; i++)
        FERRY_CHECK (broker_harness_got_work (worker, ids[i]));
    broker_harness_stop (&h);
    return 0;
}

int
broker_ack_test (bool verbose)
{
    broker_settings_t *settings = broker_harness_settings (false);
    broker_settings_set_queue_limit (settings, "app", 1);
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, &settings, "app", "0",
                                              verbose, &edge, &worker)
                 == 0);
    /*  Queued (the worker has no credit): ACK at once, then the work.  */
    char ids[3][FERRY_ID_LEN + 1];
    for (int i = 0; i < 3; i++)
        ferry_id_generate (ids[i]);
    broker_harness_request (edge, "app", ids[0], broker_harness_deadline (),
                            "ra", "x", 1);
    zmsg_t *ack = broker_harness_recv (edge, FERRY_CMD_ACK, 1, 0);
    FERRY_CHECK (ack);
    char *acked = zmsg_popstr (ack);
    FERRY_CHECK (acked && streq (acked, ids[0]));
    free (acked);
    zmsg_destroy (&ack);
    /*  A refusal is a problem reply and no ACK.  */
    broker_harness_request (edge, "app", ids[1], broker_harness_deadline (),
                            "a", "x", 1);
    FERRY_CHECK (broker_harness_got_problem (edge, ids[1], 503, true));
    FERRY_CHECK (broker_harness_silent (edge, 50));
    /*  Without the flag there is no ACK.  */
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_CREDIT, "2", NULL);
    FERRY_CHECK (broker_harness_got_work (worker, ids[0]));
    broker_harness_request (edge, "app", ids[2], broker_harness_deadline (),
                            "", "x", 1);
    FERRY_CHECK (broker_harness_got_work (worker, ids[2]));
    FERRY_CHECK (broker_harness_silent (edge, 50));
    broker_harness_stop (&h);
    return 0;
}

int
broker_deadline_test (bool verbose)
{
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, NULL, "app", "0",
                                              verbose, &edge, &worker)
                 == 0);

    /*  Already past on arrival: 504 at once.  */
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    broker_harness_request (edge, "app", id, ferry_wall_ms () - 1, "", "x",
                            1);
    FERRY_CHECK (broker_harness_got_problem (edge, id, 504, false));

    /*  Passes while queued: 504 near the deadline, never dispatched.  */
    ferry_id_generate (id);
    int64_t start = ferry_mono_ms ();
    broker_harness_request (edge, "app", id, ferry_wall_ms () + 100, "", "x",
                            1);
    FERRY_CHECK (broker_harness_got_problem (edge, id, 504, false));
    int64_t took = ferry_mono_ms () - start;
    FERRY_CHECK (took >= 90 && took < 1000);
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_CREDIT, "1", NULL);
    FERRY_CHECK (broker_harness_work (worker, NULL, 150) == NULL);
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.workers == 1 && status.inflight == 0
                 && status.queued == 0);

    /*  Deadline 0 means none: dispatched.  */
    ferry_id_generate (id);
    broker_harness_request (edge, "app", id, 0, "", "x", 1);
    FERRY_CHECK (broker_harness_got_work (worker, id));
    broker_harness_stop (&h);
    return 0;
}

int
broker_no_worker_test (bool verbose)
{
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, NULL, false, verbose) == 0);
    zsock_t *edge = broker_harness_edge (&h);
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    int64_t start = ferry_mono_ms ();
    broker_harness_request (edge, "ghost", id, broker_harness_deadline (),
                            "", "x", 1);
    FERRY_CHECK (broker_harness_got_problem (edge, id, 503, true));
    int64_t took = ferry_mono_ms () - start;
    FERRY_CHECK (took >= 90 && took < 1000);

    /*  A worker that comes within the grace gets the request.  */
    ferry_id_generate (id);
    broker_harness_request (edge, "ghost", id, broker_harness_deadline (),
                            "", "x", 1);
    zsock_t *worker = broker_harness_worker (&h, "ghost", "1");
    FERRY_CHECK (broker_harness_got_work (worker, id));
    broker_harness_stop (&h);
    return 0;
}

int
broker_liveness_test (bool verbose)
{
    broker_settings_t *settings = broker_harness_settings (true);
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, &settings, false, verbose) == 0);
    zsock_t *edge = broker_harness_edge (&h);
    zsock_t *worker = broker_harness_worker (&h, "app", "1");
    zsock_t *reports = broker_harness_worker (&h, "reports", "1");
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    char *services = broker_harness_edge_hb (edge);
    FERRY_CHECK (services
                 && (streq (services, "app reports")
                     || streq (services, "reports app")));
    free (services);

    /*  The broker heartbeats the worker; "reports" answers, "app" keeps
        quiet and is removed after liveness (3) x 50 ms.  */
    zmsg_t *hb = broker_harness_recv (worker, FERRY_CMD_HB, 0, 0);
    FERRY_CHECK (hb);
    zmsg_destroy (&hb);
    FERRY_CHECK (broker_harness_wait_silent (&h, reports, 1).workers == 1);
    services = broker_harness_edge_hb (edge);
    FERRY_CHECK (services && streq (services, "reports"));
    free (services);

    /*  The removed worker speaks again: BYE, then it can register.  */
    broker_harness_drain (worker);
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_HB, NULL);
    zmsg_t *bye = broker_harness_recv (worker, FERRY_CMD_BYE, 0, 0);
    FERRY_CHECK (bye);
    zmsg_destroy (&bye);
    broker_harness_stop (&h);
    return 0;
}

int
broker_unknown_worker_test (bool verbose)
{
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, NULL, false, verbose) == 0);
    zsock_t *worker = broker_harness_worker (&h, NULL, NULL);
    /*  HB, REP and CREDIT from a worker the broker does not know.  */
    for (int i = 0; i < 3; i++) {
        if (i == 0)
            zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_HB, NULL);
        else if (i == 1)
            zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_REP, "0123", "x",
                        NULL);
        else
            zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_CREDIT, "1", NULL);
        zmsg_t *bye = broker_harness_recv (worker, FERRY_CMD_BYE, 0, 0);
        FERRY_CHECK (bye);
        zmsg_destroy (&bye);
    }
    /*  BYE from an unknown worker needs no answer.  */
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_BYE, NULL);
    FERRY_CHECK (broker_harness_silent (worker, 50));
    FERRY_CHECK (broker_harness_status (&h).workers == 0);
    broker_harness_stop (&h);
    return 0;
}

int
broker_malformed_test (bool verbose)
{
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, NULL, false, verbose) == 0);
    zsock_t *edge = broker_harness_edge (&h);
    zsock_t *worker = broker_harness_worker (&h, NULL, NULL);
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    /*  Garbage from an edge.  */
    zstr_send (edge, "x");
    zstr_sendx (edge, "FRY2", FERRY_CMD_HB, NULL);
    zstr_sendx (edge, FERRY_PROTO, "WHAT", NULL);
    zstr_sendx (edge, FERRY_PROTO, FERRY_CMD_REQ, "app", id, NULL);
    zstr_sendx (edge, FERRY_PROTO, FERRY_CMD_REQ, "a b", id, "0", "", "x",
                NULL);
    zstr_sendx (edge, FERRY_PROTO, FERRY_CMD_REQ, "app", id, "soon", "", "x",
                NULL);
    zstr_sendx (edge, FERRY_PROTO, FERRY_CMD_REQ, "app", "bad id", "0", "",
                "x", NULL);
    zstr_sendx (edge, FERRY_PROTO, FERRY_CMD_REQ, "app", id, "0",
                "flagsfarfartoolong", "x", NULL);
    zstr_sendx (edge, FERRY_PROTO, FERRY_CMD_HB, "extra", NULL);
    zstr_sendx (edge, FERRY_PROTO, FERRY_CMD_REQ, "app", id, "0", "", "x",
                "one too many", NULL);
    zmsg_t *binary = zmsg_new ();
    zmsg_addstr (binary, FERRY_PROTO);
    zmsg_addmem (binary, "\0\1", 2);
    zmsg_send (&binary, edge);
    /*  Garbage from a worker.  */
    zstr_send (worker, "");
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_READY, "app", "-1", NULL);
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_READY, "app", "many", NULL);
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_READY, "", "1", NULL);
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_READY, "app", NULL);
    FERRY_CHECK (broker_harness_silent (edge, 50));
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.workers == 0 && status.inflight == 0
                 && status.queued == 0);

    /*  And the broker still works.  */
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_READY, "app", "1", NULL);
    FERRY_CHECK (broker_harness_wait_workers (&h, 1));
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_CREDIT, "x", NULL);
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_REP, NULL);
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_REP, "nobody", "x", NULL);
    broker_harness_request (edge, "app", id, broker_harness_deadline (), "r",
                            "ok", 2);
    FERRY_CHECK (broker_harness_got_work (worker, id));
    broker_harness_reply (worker, id, "done", 4);
    FERRY_CHECK (broker_harness_got_reply (edge, id, "done"));
    broker_harness_stop (&h);
    return 0;
}

int
broker_worker_death_test (bool verbose)
{
    broker_settings_t *settings = broker_harness_settings (true);
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, &settings, "app", "2",
                                              verbose, &edge, &worker)
                 == 0);
    char plain[FERRY_ID_LEN + 1], retry[FERRY_ID_LEN + 1];
    ferry_id_generate (plain);
    ferry_id_generate (retry);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "app", plain, deadline, "", "p", 1);
    broker_harness_request (edge, "app", retry, deadline, "r", "retry me",
                            8);
    FERRY_CHECK (broker_harness_got_work (worker, plain));
    FERRY_CHECK (broker_harness_got_work (worker, retry));

    /*  A second worker joins with no credit, then the first goes silent:
        the plain request gets 502, the retryable one goes to the second
        worker, payload untouched.  */
    zsock_t *second = broker_harness_worker (&h, "app", "0");
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    broker_harness_status_t status
        = broker_harness_wait_silent (&h, second, 1);
    FERRY_CHECK (status.workers == 1);
    FERRY_CHECK (broker_harness_got_problem (edge, plain, 502, false));
    FERRY_CHECK (status.inflight == 0 && status.queued == 1);
    zstr_sendx (second, FERRY_PROTO, FERRY_CMD_CREDIT, "1", NULL);
    zmsg_t *work = broker_harness_work (second, retry, S_WAIT);
    FERRY_CHECK (work);
    FERRY_CHECK (zframe_streq (zmsg_last (work), "retry me"));
    zmsg_destroy (&work);
    broker_harness_reply (second, retry, "ok", 2);
    FERRY_CHECK (broker_harness_got_reply (edge, retry, NULL));
    /*  The dead worker's late reply is dropped.  */
    broker_harness_reply (worker, plain, "late", 4);
    FERRY_CHECK (broker_harness_silent (edge, 50));
    broker_harness_stop (&h);
    return 0;
}

int
broker_poison_test (bool verbose)
{
    /*  A retryable request whose workers keep dying is answered 502 at
        the second death instead of being sent to a third worker.  */
    broker_settings_t *settings = broker_harness_settings (true);
    broker_settings_set_max_deaths (settings, 2);
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, &settings, "app", "1",
                                              verbose, &edge, &worker)
                 == 0);
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    broker_harness_request (edge, "app", id, broker_harness_deadline (), "r",
                            "poison", 6);
    FERRY_CHECK (broker_harness_got_work (worker, id));
    zsock_t *second = broker_harness_worker (&h, "app", "0");
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    broker_harness_status_t status
        = broker_harness_wait_silent (&h, second, 1);
    FERRY_CHECK (status.workers == 1 && status.queued == 1);
    zstr_sendx (second, FERRY_PROTO, FERRY_CMD_CREDIT, "1", NULL);
    FERRY_CHECK (broker_harness_got_work (second, id));
    zsock_t *third = broker_harness_worker (&h, "app", "1");
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    status = broker_harness_wait_silent (&h, third, 1);
    FERRY_CHECK (status.workers == 1);
    FERRY_CHECK (broker_harness_got_problem (edge, id, 502, false));
    FERRY_CHECK (status.inflight == 0 && status.queued == 0);
    zmsg_t *none = broker_harness_work (third, id, 50);
    FERRY_CHECK (!none);
    zmsg_destroy (&none);
    broker_harness_stop (&h);
    return 0;
}

int
broker_drain_test (bool verbose)
{
    /*  DRAIN: queued requests and new ones get 503 with Retry-After, the
        edge gets BYE (and BYE for its heartbeats), a reply in flight
        still goes through, what is left at drain_timeout is answered
        (502 when not retryable), the worker gets BYE, the owner DRAINED. */
    broker_settings_t *settings = broker_harness_settings (false);
    broker_settings_set_drain_timeout (settings, 300);
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, &settings, "app", "2",
                                              verbose, &edge, &worker)
                 == 0);
    zstr_sendx (edge, FERRY_PROTO, FERRY_CMD_HB, NULL);
    zmsg_t *hb = broker_harness_recv (edge, FERRY_CMD_HB, 1, 0);
    FERRY_CHECK (hb);
    zmsg_destroy (&hb);
    char a[FERRY_ID_LEN + 1], b[FERRY_ID_LEN + 1], c[FERRY_ID_LEN + 1];
    char d[FERRY_ID_LEN + 1];
    ferry_id_generate (a);
    ferry_id_generate (b);
    ferry_id_generate (c);
    ferry_id_generate (d);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "app", a, deadline, "r", "a", 1);
    FERRY_CHECK (broker_harness_got_work (worker, a));
    broker_harness_request (edge, "app", b, deadline, "", "b", 1);
    FERRY_CHECK (broker_harness_got_work (worker, b));
    broker_harness_request (edge, "app", c, deadline, "r", "c", 1);
    /*  c travels on the edge's socket, STATUS on the pipe: wait.  */
    broker_harness_status_t status = broker_harness_status (&h);
    for (int i = 0; i < 200 && status.queued != 1; i++) {
        zclock_sleep (10);
        status = broker_harness_status (&h);
    }
    FERRY_CHECK (status.inflight == 2 && status.queued == 1);

    zstr_send (h.actor, "DRAIN");
    FERRY_CHECK (broker_harness_got_problem (edge, c, 503, true));
    zmsg_t *bye = broker_harness_recv (edge, FERRY_CMD_BYE, 0, 0);
    FERRY_CHECK (bye);
    zmsg_destroy (&bye);
    broker_harness_request (edge, "app", d, deadline, "r", "d", 1);
    FERRY_CHECK (broker_harness_got_problem (edge, d, 503, true));
    zstr_sendx (edge, FERRY_PROTO, FERRY_CMD_HB, NULL);
    bye = broker_harness_recv (edge, FERRY_CMD_BYE, 0, 0);
    FERRY_CHECK (bye);
    zmsg_destroy (&bye);
    broker_harness_reply (worker, a, "ok", 2);
    FERRY_CHECK (broker_harness_got_reply (edge, a, "ok"));
    /*  b is never answered: at drain_timeout it gets 502.  */
    FERRY_CHECK (broker_harness_got_problem (edge, b, 502, false));
    bye = broker_harness_recv (worker, FERRY_CMD_BYE, 0, 0);
    FERRY_CHECK (bye);
    zmsg_destroy (&bye);
    char *drained = zstr_recv (h.actor);
    FERRY_CHECK (drained && streq (drained, "DRAINED"));
    free (drained);
    broker_harness_stop (&h);
    return 0;
}

int
broker_overload_test (bool verbose)
{
    /*  A full in-flight table answers 503 at once; a service with
        queue_limit 0 is still served while a worker has credit.  */
    broker_settings_t *settings = broker_harness_settings (false);
    broker_settings_set_max_inflight (settings, 1);
    broker_settings_set_queue_limit (settings, "zero", 0);
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, &settings, "zero", "5",
                                              verbose, &edge, &worker)
                 == 0);
    char first[FERRY_ID_LEN + 1], second[FERRY_ID_LEN + 1];
    ferry_id_generate (first);
    ferry_id_generate (second);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "zero", first, deadline, "", "1", 1);
    FERRY_CHECK (broker_harness_got_work (worker, first));
    broker_harness_request (edge, "zero", second, deadline, "", "2", 1);
    FERRY_CHECK (broker_harness_got_problem (edge, second, 503, true));
    broker_harness_reply (worker, first, "ok", 2);
    FERRY_CHECK (broker_harness_got_reply (edge, first, NULL));
    /*  Room again: the next one goes through.  */
    ferry_id_generate (second);
    broker_harness_request (edge, "zero", second, deadline, "", "3", 1);
    FERRY_CHECK (broker_harness_got_work (worker, second));
    broker_harness_stop (&h);
    return 0;
}

int
broker_inflight_expiry_test (bool verbose)
{
    /*  Heartbeat 50 ms x liveness 3: the in-flight grace is 150 ms.  The
        worker stays alive (it heartbeats) but never answers "lost".  */
    broker_settings_t *settings = broker_harness_settings (true);
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, &settings, "app", "2",
                                              verbose, &edge, &worker)
                 == 0);
    char lost[FERRY_ID_LEN + 1], forever[FERRY_ID_LEN + 1];
    char next[FERRY_ID_LEN + 1];
    ferry_id_generate (lost);
    ferry_id_generate (forever);
    ferry_id_generate (next);
    int64_t start = ferry_mono_ms ();
    broker_harness_request (edge, "app", lost, ferry_wall_ms () + 100, "",
                            "x", 1);
    broker_harness_request (edge, "app", forever, 0, "", "y", 1);
    FERRY_CHECK (broker_harness_got_work (worker, lost));
    FERRY_CHECK (broker_harness_got_work (worker, forever));

    /*  Deadline + grace later the edge gets 504 for "lost", not before.  */
    FERRY_CHECK (broker_harness_wait_alive (edge, worker, S_WAIT));
    FERRY_CHECK (broker_harness_got_problem (edge, lost, 504, false));
    int64_t took = ferry_mono_ms () - start;
    FERRY_CHECK (took >= 240 && took < 1500);
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.workers == 1 && status.inflight == 1);

    /*  Its credit came back: the worker gets new work.  */
    broker_harness_request (edge, "app", next, broker_harness_deadline (),
                            "", "z", 1);
    FERRY_CHECK (broker_harness_got_work (worker, next));

    /*  "forever" has no deadline: it never expires this way.  */
    FERRY_CHECK (!broker_harness_wait_alive (edge, worker, 300));
    FERRY_CHECK (broker_harness_status (&h).inflight == 2);
    broker_harness_reply (worker, forever, "f", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, forever, "f"));
    broker_harness_reply (worker, next, "n", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, next, "n"));
    broker_harness_stop (&h);
    return 0;
}

int
broker_late_reply_test (bool verbose)
{
    broker_settings_t *settings = broker_harness_settings (true);
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, &settings, "app", "1",
                                              verbose, &edge, &worker)
                 == 0);
    char lost[FERRY_ID_LEN + 1], ids[2][FERRY_ID_LEN + 1];
    ferry_id_generate (lost);
    broker_harness_request (edge, "app", lost, ferry_wall_ms () + 50, "",
                            "x", 1);
    FERRY_CHECK (broker_harness_got_work (worker, lost));
    FERRY_CHECK (broker_harness_wait_alive (edge, worker, S_WAIT));
    FERRY_CHECK (broker_harness_got_problem (edge, lost, 504, false));
    broker_harness_requests (edge, "app", ids, 1);
    FERRY_CHECK (broker_harness_got_work (worker, ids[0]));

    /*  The reply to "lost" comes after all: dropped, and it gives no
        credit (the expiry gave it back already).  The worker announced 1
        and holds ids[0], so ids[1] must wait.  */
    broker_harness_reply (worker, lost, "late", 4);
    FERRY_CHECK (broker_harness_silent (edge, 50));
    ferry_id_generate (ids[1]);
    broker_harness_request (edge, "app", ids[1], broker_harness_deadline (),
                            "", "x", 1);
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_HB, NULL);
    FERRY_CHECK (broker_harness_work (worker, NULL, 100) == NULL);
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.workers == 1 && status.inflight == 1
                 && status.queued == 1);
    broker_harness_reply (worker, ids[0], "a", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, ids[0], "a"));
    FERRY_CHECK (broker_harness_got_work (worker, ids[1]));
    broker_harness_reply (worker, ids[1], "b", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, ids[1], "b"));
    broker_harness_stop (&h);
    return 0;
}

int
broker_duplicate_id_test (bool verbose)
{
    /*  No credit: the first request with the id waits in the queue.  */
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, NULL, "app", "0", verbose,
                                              &edge, &worker)
                 == 0);
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "app", id, deadline, "", "first", 5);
    broker_harness_request (edge, "app", id, deadline, "", "again", 5);
    FERRY_CHECK (broker_harness_got_problem (edge, id, 409, false));
    FERRY_CHECK (broker_harness_status (&h).queued == 1);

    /*  In flight: refused the same way; the first one is served.  */
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_CREDIT, "2", NULL);
    zmsg_t *work = broker_harness_work (worker, id, S_WAIT);
    FERRY_CHECK (work && zframe_streq (zmsg_last (work), "first"));
    zmsg_destroy (&work);
    broker_harness_request (edge, "app", id, deadline, "", "third", 5);
    FERRY_CHECK (broker_harness_got_problem (edge, id, 409, false));
    FERRY_CHECK (broker_harness_work (worker, NULL, 100) == NULL);
    broker_harness_reply (worker, id, "done", 4);
    FERRY_CHECK (broker_harness_got_reply (edge, id, "done"));
    FERRY_CHECK (broker_harness_silent (edge, 50));
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.inflight == 0 && status.queued == 0);
    broker_harness_stop (&h);
    return 0;
}

int
broker_back_test (bool verbose)
{
    /*  BACK requeues a message its worker has not started, without the
        retryable flag and without counting a death, and returns the
        credit; a leaving worker that hands back its last message is
        forgotten and the message goes to another worker.  */
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, NULL, "app", "1", verbose,
                                              &edge, &worker)
                 == 0);
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    broker_harness_request (edge, "app", id, broker_harness_deadline (), "",
                            "plain", 5);
    FERRY_CHECK (broker_harness_got_work (worker, id));
    /*  The credit comes back with the message: the same worker gets it
        again, payload untouched.  */
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_BACK, id, "plain", NULL);
    zmsg_t *work = broker_harness_work (worker, id, S_WAIT);
    FERRY_CHECK (work);
    FERRY_CHECK (zframe_streq (zmsg_last (work), "plain"));
    zmsg_destroy (&work);
    FERRY_CHECK (broker_harness_silent (edge, 50));

    /*  The worker leaves holding it; a second one comes.  */
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_BYE, NULL);
    zsock_t *second = broker_harness_worker (&h, "app", "1");
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    FERRY_CHECK (broker_harness_silent (second, 50));
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_BACK, id, "plain", NULL);
    work = broker_harness_work (second, id, S_WAIT);
    FERRY_CHECK (work);
    FERRY_CHECK (zframe_streq (zmsg_last (work), "plain"));
    zmsg_destroy (&work);
    FERRY_CHECK (broker_harness_wait_workers (&h, 1));
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.inflight == 1 && status.queued == 0);
    /*  The leaver is forgotten: its heartbeat is answered BYE, which
        tells a stopping worker that nothing more is on its way.  */
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_HB, NULL);
    zmsg_t *bye = broker_harness_recv (worker, FERRY_CMD_BYE, 0, 0);
    FERRY_CHECK (bye);
    zmsg_destroy (&bye);
    /*  A BACK for a message the worker does not hold is dropped.  */
    zstr_sendx (second, FERRY_PROTO, FERRY_CMD_BACK, "nope", "x", NULL);
    broker_harness_reply (second, id, "ok", 2);
    FERRY_CHECK (broker_harness_got_reply (edge, id, "ok"));
    status = broker_harness_status (&h);
    FERRY_CHECK (status.inflight == 0 && status.queued == 0
                 && status.workers == 1);
    broker_harness_stop (&h);
    return 0;
}

int
broker_attempt_test (bool verbose)
{
    /*  REQ carries the attempt: 1 first, the same after a BACK (the
        message never ran), +1 after the worker holding it died.  */
    broker_settings_t *settings = broker_harness_settings (true);
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, &settings, "app", "1",
                                              verbose, &edge, &worker)
                 == 0);
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    broker_harness_request (edge, "app", id, broker_harness_deadline (), "r",
                            "again", 5);
    FERRY_CHECK (broker_harness_got_attempt (worker, id, "1"));
    zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_BACK, id, "again", NULL);
    FERRY_CHECK (broker_harness_got_attempt (worker, id, "1"));
    zsock_t *second = broker_harness_worker (&h, "app", "1");
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    FERRY_CHECK (broker_harness_wait_silent (&h, second, 1).workers == 1);
    FERRY_CHECK (broker_harness_got_attempt (second, id, "2"));
    broker_harness_reply (second, id, "ok", 2);
    FERRY_CHECK (broker_harness_got_reply (edge, id, "ok"));
    broker_harness_stop (&h);
    return 0;
}

/*  Parses a DEAD's info and checks the deaths, the service and the
    signals it lists (in order).  */
static bool
s_test_dead_info (zmsg_t *dead, const char *msg_id, int deaths,
                  const char *payload, const char **signals, size_t count)
{
    zframe_t *id = zmsg_first (dead), *info = zmsg_next (dead);
    zframe_t *body = zmsg_next (dead);
    if (!id || !info || !body || !zframe_streq (id, msg_id)
        || !zframe_streq (body, payload))
        return false;
    json_error_t error;
    json_t *root = json_loadb ((const char *) zframe_data (info),
                               zframe_size (info), 0, &error);
    json_t *workers = json_object_get (root, "workers");
    json_t *sigs = json_object_get (root, "signals");
    bool ok = root
              && streq (json_string_value (json_object_get (root, "reason"))
                            ? json_string_value (
                                json_object_get (root, "reason"))
                            : "",
                        "worker deaths")
              && json_integer_value (json_object_get (root, "deaths"))
                     == deaths
              && json_integer_value (json_object_get (root, "attempts"))
                     == deaths
              && json_is_string (json_object_get (root, "service"))
              && streq (json_string_value (json_object_get (root, "service")),
                        "app")
              && json_array_size (workers) == (size_t) deaths
              && json_array_size (sigs) == count;
    for (size_t i = 0; ok && i < count; i++)
        ok = json_is_string (json_array_get (sigs, i))
             && streq (json_string_value (json_array_get (sigs, i)),
                       signals[i]);
    /*  Each death was a different worker.  */
    for (size_t i = 0; ok && i < json_array_size (workers); i++)
        for (size_t j = i + 1; ok && j < json_array_size (workers); j++)
            ok = !json_equal (json_array_get (workers, i),
                              json_array_get (workers, j));
    json_decref (root);
    return ok;
}

int
broker_died_test (bool verbose)
{
    /*  Heartbeats of 1 s x 3: only DIED can make these workers lost in
        time.  Two workers of process h:1, one of h:2; a supervisor DEALER
        that is no worker reports the deaths and gets no answer.  */
    broker_settings_t *settings = broker_harness_settings (false);
    broker_settings_set_max_deaths (settings, 2);
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, &settings, false, verbose) == 0);
    zsock_t *edge = broker_harness_edge (&h);
    zsock_t *first = broker_harness_worker_at (&h, "app", "2", "h:1");
    zsock_t *sibling = broker_harness_worker_at (&h, "app", "0", "h:1");
    zsock_t *other = broker_harness_worker_at (&h, "app", "0", "h:2");
    zsock_t *writer = broker_harness_worker_at (&h, "app", "0", "h:3");
    zsock_t *supervisor = broker_harness_worker (&h, NULL, NULL);
    FERRY_CHECK (edge && first && sibling && other && writer && supervisor);
    FERRY_CHECK (broker_harness_wait_workers (&h, 4));
    char retry[FERRY_ID_LEN + 1], plain[FERRY_ID_LEN + 1];
    ferry_id_generate (retry);
    ferry_id_generate (plain);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "app", retry, deadline, "r", "poison", 6);
    broker_harness_request (edge, "app", plain, deadline, "", "plain", 5);
    FERRY_CHECK (broker_harness_got_work (first, retry));
    FERRY_CHECK (broker_harness_got_work (first, plain));

    int64_t start = ferry_mono_ms ();
    zstr_sendx (supervisor, FERRY_PROTO, FERRY_CMD_DIED, "h:1", "SIGABRT",
                NULL);
    FERRY_CHECK (broker_harness_got_problem (edge, plain, 502, false));
    FERRY_CHECK (ferry_mono_ms () - start < 1000);
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    FERRY_CHECK (broker_harness_silent (supervisor, 50));
    /*  Both workers of h:1 are gone: they are told BYE when they speak.  */
    zstr_sendx (sibling, FERRY_PROTO, FERRY_CMD_HB, NULL);
    zmsg_t *bye = broker_harness_recv (sibling, FERRY_CMD_BYE, 0, 0);
    FERRY_CHECK (bye);
    zmsg_destroy (&bye);

    /*  The retryable one goes on, attempt 2; its second death, of h:2 by
        SIGSEGV, makes it a dead letter, which the live worker gets with
        both signals.  */
    zstr_sendx (other, FERRY_PROTO, FERRY_CMD_CREDIT, "1", NULL);
    FERRY_CHECK (broker_harness_got_attempt (other, retry, "2"));
    zstr_sendx (supervisor, FERRY_PROTO, FERRY_CMD_DIED, "h:2", "SIGSEGV",
                NULL);
    FERRY_CHECK (broker_harness_got_problem (edge, retry, 502, false));
    zmsg_t *dead = broker_harness_dead (writer);
    const char *signals[] = {"SIGABRT", "SIGSEGV"};
    FERRY_CHECK (dead
                 && s_test_dead_info (dead, retry, 2, "poison", signals, 2));
    zmsg_destroy (&dead);
    /*  DEAD uses no credit: the writer (credit 0) got no REQ.  */
    FERRY_CHECK (broker_harness_work (writer, NULL, 50) == NULL);
    /*  DIED for a process nobody runs, or malformed: nothing happens.  */
    zstr_sendx (supervisor, FERRY_PROTO, FERRY_CMD_DIED, "h:9", "SIGKILL",
                NULL);
    zstr_sendx (supervisor, FERRY_PROTO, FERRY_CMD_DIED, "h:3", NULL);
    FERRY_CHECK (broker_harness_silent (supervisor, 50));
    FERRY_CHECK (broker_harness_status (&h).workers == 1);
    broker_harness_stop (&h);
    return 0;
}

int
broker_isolation_test (bool verbose)
{
    /*  An innocent message in flight at the first death of a poison one
        (credit 2) is a suspect too, but from then on each goes alone to
        an idle worker: the poison's later deaths are its own, and the
        innocent message is served, not dead-lettered.  */
    broker_settings_t *settings = broker_harness_settings (false);
    broker_settings_set_max_deaths (settings, 3);
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start (&h, &settings, false, verbose) == 0);
    edge = broker_harness_edge (&h);
    zsock_t *supervisor = broker_harness_worker (&h, NULL, NULL);
    worker = broker_harness_worker_at (&h, "app", "2", "h:1");
    FERRY_CHECK (broker_harness_wait_workers (&h, 1));
    char poison[FERRY_ID_LEN + 1], innocent[FERRY_ID_LEN + 1];
    ferry_id_generate (poison);
    ferry_id_generate (innocent);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "app", poison, deadline, "r", "poison", 6);
    broker_harness_request (edge, "app", innocent, deadline, "r", "fine", 4);
    FERRY_CHECK (broker_harness_got_attempt (worker, poison, "1"));
    FERRY_CHECK (broker_harness_got_attempt (worker, innocent, "1"));
    const char *signals[] = {"SIGABRT", "SIGKILL", "SIGSEGV"};
    char process[16];
    for (int death = 1; death <= 3; death++) {
        snprintf (process, sizeof process, "h:%d", death);
        zstr_sendx (supervisor, FERRY_PROTO, FERRY_CMD_DIED, process,
                    signals[death - 1], NULL);
        FERRY_CHECK (broker_harness_wait_workers (&h, 0));
        if (death == 3)
            break;
        /*  The next worker has credit 2 but gets the poison alone.  */
        snprintf (process, sizeof process, "h:%d", death + 1);
        broker_harness_drop (&h, &worker);
        worker = broker_harness_worker_at (&h, "app", "2", process);
        char attempt[8];
        snprintf (attempt, sizeof attempt, "%d", death + 1);
        FERRY_CHECK (broker_harness_got_attempt (worker, poison, attempt));
        FERRY_CHECK (broker_harness_work (worker, NULL, 100) == NULL);
        broker_harness_status_t status = broker_harness_status (&h);
        FERRY_CHECK (status.inflight == 1 && status.queued == 1);
    }
    /*  Three deaths: the poison is answered 502 and its dead letter
        waits, as no worker is left to write it.  */
    FERRY_CHECK (broker_harness_got_problem (edge, poison, 502, false));
    FERRY_CHECK (broker_harness_status (&h).queued == 1);
    broker_harness_drop (&h, &worker);
    worker = broker_harness_worker_at (&h, "app", "2", "h:4");
    zmsg_t *dead = broker_harness_dead (worker);
    FERRY_CHECK (dead
                 && s_test_dead_info (dead, poison, 3, "poison", signals, 3));
    zmsg_destroy (&dead);
    /*  The innocent one: second attempt (one death only), answered.  */
    FERRY_CHECK (broker_harness_got_attempt (worker, innocent, "2"));
    /*  While it holds the suspect the worker gets nothing else; once
        answered, it takes any work again.  */
    char next[FERRY_ID_LEN + 1];
    ferry_id_generate (next);
    broker_harness_request (edge, "app", next, deadline, "", "n", 1);
    FERRY_CHECK (broker_harness_work (worker, NULL, 100) == NULL);
    broker_harness_reply (worker, innocent, "ok", 2);
    FERRY_CHECK (broker_harness_got_reply (edge, innocent, "ok"));
    FERRY_CHECK (broker_harness_got_attempt (worker, next, "1"));
    broker_harness_reply (worker, next, "n", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, next, "n"));
    broker_harness_stop (&h);
    return 0;
}

int
broker_suspect_deadline_test (bool verbose)
{
    /*  A suspect waiting for an idle worker (the only one is busy with a
        message that is never answered) gets 504 at its deadline, and the
        requests behind it are not lost.  */
    broker_settings_t *settings = broker_harness_settings (false);
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, &settings, false, verbose) == 0);
    zsock_t *edge = broker_harness_edge (&h);
    zsock_t *supervisor = broker_harness_worker (&h, NULL, NULL);
    zsock_t *dying = broker_harness_worker_at (&h, "app", "1", "h:1");
    FERRY_CHECK (broker_harness_wait_workers (&h, 1));
    char suspect[FERRY_ID_LEN + 1], busy[FERRY_ID_LEN + 1];
    ferry_id_generate (suspect);
    ferry_id_generate (busy);
    broker_harness_request (edge, "app", suspect, ferry_wall_ms () + 400,
                            "r", "s", 1);
    FERRY_CHECK (broker_harness_got_work (dying, suspect));
    zsock_t *worker = broker_harness_worker_at (&h, "app", "2", "h:2");
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    broker_harness_request (edge, "app", busy, broker_harness_deadline (),
                            "", "b", 1);
    FERRY_CHECK (broker_harness_got_work (worker, busy));
    zstr_sendx (supervisor, FERRY_PROTO, FERRY_CMD_DIED, "h:1", "SIGKILL",
                NULL);
    FERRY_CHECK (broker_harness_wait_workers (&h, 1));
    /*  A plain request behind the suspect waits with it, though the
        worker has credit, and is dispatched as soon as the suspect
        expires (not at some later event).  */
    char behind[FERRY_ID_LEN + 1];
    ferry_id_generate (behind);
    broker_harness_request (edge, "app", behind, broker_harness_deadline (),
                            "", "x", 1);
    FERRY_CHECK (broker_harness_work (worker, NULL, 50) == NULL);
    FERRY_CHECK (broker_harness_got_problem (edge, suspect, 504, false));
    FERRY_CHECK (broker_harness_got_attempt (worker, behind, "1"));
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.workers == 1 && status.inflight == 2
                 && status.queued == 0);
    broker_harness_reply (worker, busy, "b", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, busy, "b"));
    broker_harness_reply (worker, behind, "x", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, behind, "x"));
    broker_harness_stop (&h);
    return 0;
}

/*  Waits for REQ msg_id with attempt at worker a or b, whichever gets it
    first; returns that worker, or NULL.  */
static zsock_t *
s_test_work_either (zsock_t *a, zsock_t *b, const char *msg_id,
                    const char *attempt)
{
    zpoller_t *poller = zpoller_new (a, b, NULL);
    zsock_t *which
        = poller ? (zsock_t *) zpoller_wait (poller, BROKER_HARNESS_WAIT)
                 : NULL;
    zpoller_destroy (&poller);
    if (!which || !broker_harness_got_attempt (which, msg_id, attempt))
        return NULL;
    return which;
}

/*  Waits for a REQ at worker a or b: returns its frames [msg_id,
    deadline, attempt, payload] and sets *at to the worker, or NULL.  */
static zmsg_t *
s_test_next_work (zsock_t *a, zsock_t *b, zsock_t **at)
{
    zpoller_t *poller = zpoller_new (a, b, NULL);
    *at = poller ? (zsock_t *) zpoller_wait (poller, BROKER_HARNESS_WAIT)
                 : NULL;
    zpoller_destroy (&poller);
    return *at ? broker_harness_work (*at, NULL, BROKER_HARNESS_WAIT) : NULL;
}

/*  True when work is [msg_id, deadline, attempt, payload] for msg_id with
    attempt.  */
static bool
s_test_work_is (zmsg_t *work, const char *msg_id, const char *attempt)
{
    zframe_t *id = zmsg_first (work);
    zmsg_next (work);
    zframe_t *frame = zmsg_next (work);
    return id && frame && zframe_streq (id, msg_id)
           && zframe_streq (frame, attempt);
}

int
broker_process_isolation_test (bool verbose)
{
    /*  Two workers (actors) of one process hold a poison and an innocent
        message when the process dies; both are suspects then.  A death
        kills the whole process, so from then on each goes to a process
        that holds nothing, and no other worker of that process gets
        anything while it holds one: the poison's later deaths are its
        own, and the innocent message is served, never dead-lettered.  */
    broker_settings_t *settings = broker_harness_settings (false);
    broker_settings_set_max_deaths (settings, 3);
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, &settings, false, verbose) == 0);
    zsock_t *edge = broker_harness_edge (&h);
    zsock_t *supervisor = broker_harness_worker (&h, NULL, NULL);
    zsock_t *x = broker_harness_worker_at (&h, "app", "1", "h:1");
    zsock_t *y = broker_harness_worker_at (&h, "app", "1", "h:1");
    FERRY_CHECK (edge && supervisor && x && y);
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    char poison[FERRY_ID_LEN + 1], innocent[FERRY_ID_LEN + 1];
    ferry_id_generate (poison);
    ferry_id_generate (innocent);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "app", poison, deadline, "r", "poison", 6);
    zsock_t *first = s_test_work_either (x, y, poison, "1");
    FERRY_CHECK (first);
    broker_harness_request (edge, "app", innocent, deadline, "r", "fine", 4);
    FERRY_CHECK (broker_harness_got_attempt (first == x ? y : x, innocent,
                                             "1"));
    const char *signals[] = {"SIGABRT", "SIGKILL", "SIGSEGV"};
    char process[16];
    bool served = false;
    for (int death = 1; death <= 3; death++) {
        snprintf (process, sizeof process, "h:%d", death);
        zstr_sendx (supervisor, FERRY_PROTO, FERRY_CMD_DIED, process,
                    signals[death - 1], NULL);
        FERRY_CHECK (broker_harness_wait_workers (&h, 0));
        broker_harness_drop (&h, &x);
        broker_harness_drop (&h, &y);
        if (death == 3)
            break;
        /*  A new process of two idle workers.  Either suspect may come
            first (the deaths requeue them worker by worker); whichever
            it is, the other worker gets nothing meanwhile.  The innocent
            one is answered; the poison kills the process again.  */
        snprintf (process, sizeof process, "h:%d", death + 1);
        x = broker_harness_worker_at (&h, "app", "1", process);
        y = broker_harness_worker_at (&h, "app", "1", process);
        FERRY_CHECK (x && y);
        zsock_t *at;
        zmsg_t *work = s_test_next_work (x, y, &at);
        FERRY_CHECK (work);
        if (!served && s_test_work_is (work, innocent, "2")) {
            FERRY_CHECK (broker_harness_work (at == x ? y : x, NULL, 100)
                         == NULL);
            broker_harness_status_t status = broker_harness_status (&h);
            FERRY_CHECK (status.inflight == 1 && status.queued == 1);
            broker_harness_reply (at, innocent, "ok", 2);
            FERRY_CHECK (broker_harness_got_reply (edge, innocent, "ok"));
            served = true;
            zmsg_destroy (&work);
            work = s_test_next_work (x, y, &at);
            FERRY_CHECK (work);
        }
        char attempt[8];
        snprintf (attempt, sizeof attempt, "%d", death + 1);
        FERRY_CHECK (s_test_work_is (work, poison, attempt));
        zmsg_destroy (&work);
        FERRY_CHECK (broker_harness_work (x, NULL, 100) == NULL);
        FERRY_CHECK (broker_harness_work (y, NULL, 10) == NULL);
        broker_harness_status_t status = broker_harness_status (&h);
        FERRY_CHECK (status.inflight == 1
                     && status.queued == (served ? 0 : 1));
    }
    /*  Three deaths of its own: the poison is answered 502 and its dead
        letter waits for a worker; the innocent one, which shared only
        the first death, was served or is now, on its second attempt.  */
    FERRY_CHECK (broker_harness_got_problem (edge, poison, 502, false));
    FERRY_CHECK (broker_harness_silent (edge, 50));
    x = broker_harness_worker_at (&h, "app", "1", "h:4");
    zmsg_t *dead = broker_harness_dead (x);
    FERRY_CHECK (dead
                 && s_test_dead_info (dead, poison, 3, "poison", signals, 3));
    zmsg_destroy (&dead);
    if (!served) {
        FERRY_CHECK (broker_harness_got_attempt (x, innocent, "2"));
        broker_harness_reply (x, innocent, "ok", 2);
        FERRY_CHECK (broker_harness_got_reply (edge, innocent, "ok"));
    }
    FERRY_CHECK (broker_harness_status (&h).inflight == 0);
    broker_harness_stop (&h);
    return 0;
}

int
broker_suspect_parallel_test (bool verbose)
{
    /*  Suspects of a death with no known cause (no DIED: here a worker
        that registers again) are isolated per worker, not per process:
        two of them go at once to two idle workers of one process.  */
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, NULL, false, verbose) == 0);
    zsock_t *edge = broker_harness_edge (&h);
    zsock_t *x = broker_harness_worker_at (&h, "app", "2", "h:1");
    FERRY_CHECK (edge && x);
    FERRY_CHECK (broker_harness_wait_workers (&h, 1));
    char one[FERRY_ID_LEN + 1], two[FERRY_ID_LEN + 1];
    ferry_id_generate (one);
    ferry_id_generate (two);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "app", one, deadline, "r", "1", 1);
    broker_harness_request (edge, "app", two, deadline, "r", "2", 1);
    FERRY_CHECK (broker_harness_got_attempt (x, one, "1"));
    FERRY_CHECK (broker_harness_got_attempt (x, two, "1"));
    zsock_t *y = broker_harness_worker_at (&h, "app", "1", "h:1");
    FERRY_CHECK (y && broker_harness_wait_workers (&h, 2));
    zstr_sendx (x, FERRY_PROTO, FERRY_CMD_READY, "app", "1", "h:1", NULL);
    zsock_t *first, *second;
    zmsg_t *work = s_test_next_work (x, y, &first);
    FERRY_CHECK (work);
    bool is_one = s_test_work_is (work, one, "2");
    FERRY_CHECK (is_one || s_test_work_is (work, two, "2"));
    zmsg_destroy (&work);
    work = s_test_next_work (x, y, &second);
    FERRY_CHECK (work && second != first);
    FERRY_CHECK (s_test_work_is (work, is_one ? two : one, "2"));
    zmsg_destroy (&work);
    broker_harness_stop (&h);
    return 0;
}

int
broker_process_busy_test (bool verbose)
{
    /*  A suspect skips an idle worker whose sibling (same process) is
        busy and waits for a process that holds nothing; while that
        process holds it, none of its workers (another service's too) is
        sent anything else, and the busy process's idle worker still takes
        ordinary work.  */
    broker_settings_t *settings = broker_harness_settings (false);
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, &settings, false, verbose) == 0);
    zsock_t *edge = broker_harness_edge (&h);
    zsock_t *supervisor = broker_harness_worker (&h, NULL, NULL);
    zsock_t *dying = broker_harness_worker_at (&h, "app", "1", "h:1");
    FERRY_CHECK (edge && supervisor && dying);
    FERRY_CHECK (broker_harness_wait_workers (&h, 1));
    char suspect[FERRY_ID_LEN + 1], busy[FERRY_ID_LEN + 1];
    char plain[FERRY_ID_LEN + 1], other[FERRY_ID_LEN + 1];
    ferry_id_generate (suspect);
    ferry_id_generate (busy);
    ferry_id_generate (plain);
    ferry_id_generate (other);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "app", suspect, deadline, "r", "s", 1);
    FERRY_CHECK (broker_harness_got_work (dying, suspect));
    zsock_t *a = broker_harness_worker_at (&h, "app", "1", "h:2");
    zsock_t *b = broker_harness_worker_at (&h, "app", "1", "h:2");
    FERRY_CHECK (a && b);
    FERRY_CHECK (broker_harness_wait_workers (&h, 3));
    broker_harness_request (edge, "app", busy, deadline, "", "b", 1);
    zsock_t *holder = s_test_work_either (a, b, busy, "1");
    FERRY_CHECK (holder);
    zsock_t *idle = holder == a ? b : a;
    zstr_sendx (supervisor, FERRY_PROTO, FERRY_CMD_DIED, "h:1", "SIGSEGV",
                NULL);
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    FERRY_CHECK (broker_harness_work (idle, NULL, 100) == NULL);
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.inflight == 1 && status.queued == 1);

    /*  Process h:3 holds nothing: the suspect goes there.  */
    zsock_t *c = broker_harness_worker_at (&h, "app", "2", "h:3");
    FERRY_CHECK (broker_harness_got_attempt (c, suspect, "2"));
    zsock_t *d = broker_harness_worker_at (&h, "other", "1", "h:3");
    FERRY_CHECK (d);
    FERRY_CHECK (broker_harness_wait_workers (&h, 4));
    broker_harness_request (edge, "other", other, deadline, "", "o", 1);
    broker_harness_request (edge, "app", plain, deadline, "", "p", 1);
    FERRY_CHECK (broker_harness_got_attempt (idle, plain, "1"));
    FERRY_CHECK (broker_harness_work (c, NULL, 50) == NULL);
    FERRY_CHECK (broker_harness_work (d, NULL, 50) == NULL);
    status = broker_harness_status (&h);
    FERRY_CHECK (status.inflight == 3 && status.queued == 1);

    /*  The suspect answered, h:3 takes any work again.  */
    broker_harness_reply (c, suspect, "s", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, suspect, "s"));
    FERRY_CHECK (broker_harness_got_attempt (d, other, "1"));
    broker_harness_reply (d, other, "o", 1);
    broker_harness_reply (idle, plain, "p", 1);
    broker_harness_reply (holder, busy, "b", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, other, "o"));
    FERRY_CHECK (broker_harness_got_reply (edge, plain, "p"));
    FERRY_CHECK (broker_harness_got_reply (edge, busy, "b"));
    broker_harness_stop (&h);
    return 0;
}

/*  A new worker of process takes app request id (retryable), then its
    process dies by SIGSEGV: id is a crash suspect at the head of app's
    queue.  workers: how many the broker has besides the new one.  */
static bool
s_test_crash (broker_harness_t *h, zsock_t *edge, zsock_t *supervisor,
              const char *process, int workers, const char *id,
              uint64_t deadline)
{
    zsock_t *dying = broker_harness_worker_at (h, "app", "1", process);
    if (!dying || !broker_harness_wait_workers (h, workers + 1))
        return false;
    broker_harness_request (edge, "app", id, deadline, "r", "s", 1);
    bool got = broker_harness_got_work (dying, id);
    zstr_sendx (supervisor, FERRY_PROTO, FERRY_CMD_DIED, process, "SIGSEGV",
                NULL);
    broker_harness_drop (h, &dying);
    return got && broker_harness_wait_workers (h, workers);
}

int
broker_process_reserve_test (bool verbose)
{
    /*  A crash suspect whose pool shares its only process (h:2) with a
        busy pool: the process is reserved for it, so the busy pool's next
        message waits instead of keeping the process from ever holding
        nothing, and the suspect goes there alone as soon as it is empty.
        A suspect that expires while it waits ends the reservation.  */
    broker_settings_t *settings = broker_harness_settings (false);
    broker_harness_t h;
    FERRY_CHECK (broker_harness_start (&h, &settings, false, verbose) == 0);
    zsock_t *edge = broker_harness_edge (&h);
    zsock_t *supervisor = broker_harness_worker (&h, NULL, NULL);
    zsock_t *reports = broker_harness_worker_at (&h, "reports", "2", "h:2");
    zsock_t *app = broker_harness_worker_at (&h, "app", "1", "h:2");
    FERRY_CHECK (edge && supervisor && reports && app);
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    char r[3][FERRY_ID_LEN + 1], a[2][FERRY_ID_LEN + 1];
    char s1[FERRY_ID_LEN + 1], s2[FERRY_ID_LEN + 1];
    for (int i = 0; i < 3; i++)
        ferry_id_generate (r[i]);
    ferry_id_generate (a[0]);
    ferry_id_generate (a[1]);
    ferry_id_generate (s1);
    ferry_id_generate (s2);
    uint64_t deadline = broker_harness_deadline ();
    broker_harness_request (edge, "reports", r[0], deadline, "", "0", 1);
    FERRY_CHECK (broker_harness_got_work (reports, r[0]));
    broker_harness_request (edge, "app", a[0], deadline, "", "a", 1);
    FERRY_CHECK (broker_harness_got_work (app, a[0]));

    /*  Suspect s1, which expires: h:2 holds r[0] and a[0] and is
        reserved, so r[1] waits though reports has credit, until s1 gets
        its 504.  */
    FERRY_CHECK (s_test_crash (&h, edge, supervisor, "h:3", 2, s1,
                               ferry_wall_ms () + 500));
    broker_harness_request (edge, "reports", r[1], deadline, "", "1", 1);
    FERRY_CHECK (broker_harness_work (reports, NULL, 100) == NULL);
    broker_harness_status_t status = broker_harness_status (&h);
    FERRY_CHECK (status.inflight == 2 && status.queued == 2);
    FERRY_CHECK (broker_harness_got_problem (edge, s1, 504, false));
    FERRY_CHECK (broker_harness_got_attempt (reports, r[1], "1"));
    broker_harness_reply (app, a[0], "a", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, a[0], "a"));

    /*  Suspect s2: h:2 holds r[0], r[1] and a[1]; r[2] waits.  Once h:2
        has answered them all, s2 goes to it alone, and then r[2].  */
    broker_harness_request (edge, "app", a[1], deadline, "", "a", 1);
    FERRY_CHECK (broker_harness_got_work (app, a[1]));
    FERRY_CHECK (s_test_crash (&h, edge, supervisor, "h:4", 2, s2,
                               deadline));
    broker_harness_request (edge, "reports", r[2], deadline, "", "2", 1);
    FERRY_CHECK (broker_harness_work (reports, NULL, 100) == NULL);
    status = broker_harness_status (&h);
    FERRY_CHECK (status.inflight == 3 && status.queued == 2);
    broker_harness_reply (reports, r[0], "0", 1);
    broker_harness_reply (reports, r[1], "1", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, r[0], "0"));
    FERRY_CHECK (broker_harness_got_reply (edge, r[1], "1"));
    FERRY_CHECK (broker_harness_work (reports, NULL, 50) == NULL);
    broker_harness_reply (app, a[1], "a", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, a[1], "a"));
    FERRY_CHECK (broker_harness_got_attempt (app, s2, "2"));
    FERRY_CHECK (broker_harness_work (reports, NULL, 50) == NULL);
    broker_harness_reply (app, s2, "s", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, s2, "s"));
    FERRY_CHECK (broker_harness_got_attempt (reports, r[2], "1"));
    broker_harness_reply (reports, r[2], "2", 1);
    FERRY_CHECK (broker_harness_got_reply (edge, r[2], "2"));
    FERRY_CHECK (broker_harness_status (&h).inflight == 0);
    broker_harness_stop (&h);
    return 0;
}

int
broker_status_json_test (bool verbose)
{
    broker_harness_t h;
    zsock_t *edge, *worker;
    FERRY_CHECK (broker_harness_start_served (&h, NULL, "app", "3", verbose,
                                              &edge, &worker)
                 == 0);
    zsock_t *second = broker_harness_worker_at (&h, "app", "2", "h:7");
    FERRY_CHECK (broker_harness_wait_workers (&h, 2));
    char *services = broker_harness_edge_hb (edge);
    free (services);
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    broker_harness_request (edge, "app", id, broker_harness_deadline (), "",
                            "x", 1);
    zmsg_t *work = broker_harness_work (worker, id, S_WAIT);
    if (!work)
        work = broker_harness_work (second, id, S_WAIT);
    FERRY_CHECK (work);
    zmsg_destroy (&work);
    /*  Nobody reported a breaker: closed.  Then one reports open and the
        other closed: the service is mixed.  */
    for (int round = 0; round < 3; round++) {
        if (round == 1) {
            zstr_sendx (worker, FERRY_PROTO, FERRY_CMD_HB, "open", NULL);
            zstr_sendx (second, FERRY_PROTO, FERRY_CMD_HB, "closed", NULL);
        }
        if (round == 2) {
            zstr_sendx (second, FERRY_PROTO, FERRY_CMD_HB, "open", NULL);
            zstr_sendx (second, FERRY_PROTO, FERRY_CMD_HB, "bogus", NULL);
        }
        /*  The HBs travel on other sockets: wait for them to count.  */
        const char *expect = round == 0 ? "closed"
                             : round == 1 ? "mixed"
                                          : "open";
        json_t *root = NULL;
        for (int i = 0; i < 100; i++) {
            json_decref (root);
            char *text = broker_harness_status_json (&h);
            FERRY_CHECK (text);
            json_error_t error;
            root = json_loads (text, 0, &error);
            free (text);
            FERRY_CHECK (root);
            json_t *svc = json_array_get (json_object_get (root, "services"),
                                          0);
            const char *state
                = json_string_value (json_object_get (svc, "breaker"));
            if (state && streq (state, expect))
                break;
            zclock_sleep (10);
        }
        json_t *list = json_object_get (root, "services");
        FERRY_CHECK (json_array_size (list) == 1);
        json_t *svc = json_array_get (list, 0);
        FERRY_CHECK (streq (json_string_value (json_object_get (svc, "name")),
                            "app"));
        FERRY_CHECK (streq (
            json_string_value (json_object_get (svc, "breaker")), expect));
        FERRY_CHECK (json_integer_value (json_object_get (svc, "workers"))
                     == 2);
        FERRY_CHECK (json_integer_value (json_object_get (svc, "ready"))
                     == 2);
        FERRY_CHECK (json_integer_value (json_object_get (svc, "inflight"))
                     == 1);
        FERRY_CHECK (json_integer_value (json_object_get (svc, "queued"))
                     == 0);
        FERRY_CHECK (json_integer_value (json_object_get (svc, "queue_max"))
                     == 1000);
        list = json_object_get (root, "workers");
        FERRY_CHECK (json_array_size (list) == 2);
        json_int_t credits = 0, held = 0;
        bool named = false;
        for (size_t i = 0; i < 2; i++) {
            json_t *w = json_array_get (list, i);
            FERRY_CHECK (json_is_string (json_object_get (w, "id")));
            FERRY_CHECK (streq (
                json_string_value (json_object_get (w, "service")), "app"));
            FERRY_CHECK (json_is_string (json_object_get (w, "breaker")));
            FERRY_CHECK (json_integer_value (json_object_get (w, "idle_ms"))
                         >= 0);
            credits += json_integer_value (json_object_get (w, "credit"));
            held += json_integer_value (json_object_get (w, "inflight"));
            named |= streq (
                json_string_value (json_object_get (w, "process")), "h:7");
        }
        FERRY_CHECK (credits == 4 && held == 1 && named);
        FERRY_CHECK (json_integer_value (json_object_get (root, "edges"))
                     == 1);
        FERRY_CHECK (json_integer_value (json_object_get (root, "inflight"))
                     == 1);
        FERRY_CHECK (
            json_integer_value (json_object_get (root, "inflight_max"))
            == 100000);
        FERRY_CHECK (json_is_false (json_object_get (root, "draining")));
        json_decref (root);
    }
    /*  Garbage on the control socket is dropped; STATUS still answers. */
    zsock_t *client = zsock_new_dealer (h.control);
    FERRY_CHECK (client);
    zsock_set_linger (client, 0);
    zstr_sendx (client, FERRY_PROTO, "WHAT", NULL);
    zstr_sendx (client, "FRY2", FERRY_CMD_STATUS, NULL);
    FERRY_CHECK (broker_harness_silent (client, 50));
    zsock_destroy (&client);
    char *text = broker_harness_status_json (&h);
    FERRY_CHECK (text && strstr (text, "\"services\""));
    free (text);
    broker_harness_stop (&h);
    return 0;
}

/*  service.c: one broker service, owned by the broker actor's thread.

    A service is what edges address and workers announce.  It holds the
    bounded FIFO of requests that wait for a worker with credit (the limit is
    ferry's overload policy: when it is reached the broker answers 503 at
    once instead of letting latency grow without bound) and the ring of its
    workers that hold credit, which the broker walks round-robin.

    Expiry is cheap on purpose: the service keeps lower bounds of the
    earliest deadline and the earliest queue time of what it holds, so the
    broker can compute its poll timeout from a handful of numbers and only
    scans a queue when something in it may be due.  */

#include "service.h"

#include <string.h>

struct _broker_service_t {
    char *name;              /* service name, [A-Za-z0-9_.-]{1,64} */
    size_t limit;            /* most requests queued by push */
    zlistx_t *queue;         /* broker_request_t, FIFO, owned */
    uint64_t min_deadline;   /* lower bound of queued deadlines (wall ms) */
    int64_t min_queued;      /* lower bound of queued times (monotonic ms) */
    size_t workers;          /* live workers serving this service */
    int64_t orphan_since;    /* monotonic ms the last worker left */
    zlistx_t *ready;         /* workers holding credit, not owned */
};

broker_request_t *
broker_request_new (const void *edge, size_t edge_size, const char *msg_id,
                    const char *flags, uint64_t deadline, int64_t queued,
                    zmq_msg_t *payload)
{
    assert (edge_size > 0 && edge_size <= BROKER_IDENTITY_MAX && payload);
    broker_request_t *self = ferry_malloc (sizeof *self);
    memcpy (self->edge, edge, edge_size);
    self->edge_size = edge_size;
    snprintf (self->msg_id, sizeof self->msg_id, "%s", msg_id);
    snprintf (self->flags, sizeof self->flags, "%s", flags);
    self->deadline = deadline;
    self->queued = queued;
    zmq_msg_init (&self->payload);
    zmq_msg_move (&self->payload, payload);
    self->worker = NULL;
    self->handle = NULL;
    self->deaths = 0;
    self->history = NULL;
    return self;
}

void
broker_request_destroy (broker_request_t **self_p)
{
    assert (self_p);
    broker_request_t *self = *self_p;
    if (self) {
        zmq_msg_close (&self->payload);
        if (self->history)
            for (size_t i = 0; i < self->history->worker_count; i++)
                free (self->history->workers[i]);
        free (self->history);
        free (self);
        *self_p = NULL;
    }
}

bool
broker_request_retryable (const broker_request_t *self)
{
    return strchr (self->flags, FERRY_FLAG_RETRYABLE) != NULL;
}

void
broker_request_died (broker_request_t *self, const char *worker_key,
                     const char *signal)
{
    self->deaths++;
    if (!self->history)
        self->history = ferry_calloc (1, sizeof *self->history);
    broker_deaths_t *history = self->history;
    if (history->worker_count < BROKER_DEATHS_KEPT)
        history->workers[history->worker_count++] = ferry_strdup (worker_key);
    if (signal && *signal && history->signal_count < BROKER_DEATHS_KEPT)
        snprintf (history->signals[history->signal_count++],
                  sizeof history->signals[0], "%s", signal);
}

static void
s_request_destructor (void **item_p)
{
    broker_request_destroy ((broker_request_t **) item_p);
}

broker_service_t *
broker_service_new (const char *name, size_t limit, int64_t now)
{
    broker_service_t *self = ferry_calloc (1, sizeof *self);
    self->name = ferry_strdup (name);
    self->limit = limit;
    self->queue = zlistx_new ();
    self->ready = zlistx_new ();
    if (!self->queue || !self->ready) {
        broker_service_destroy (&self);
        return NULL;
    }
    zlistx_set_destructor (self->queue, s_request_destructor);
    self->min_deadline = UINT64_MAX;
    self->min_queued = INT64_MAX;
    self->orphan_since = now;
    return self;
}

void
broker_service_destroy (broker_service_t **self_p)
{
    assert (self_p);
    broker_service_t *self = *self_p;
    if (self) {
        zlistx_destroy (&self->queue);
        zlistx_destroy (&self->ready);
        free (self->name);
        free (self);
        *self_p = NULL;
    }
}

const char *
broker_service_name (const broker_service_t *self)
{
    return self->name;
}

size_t
broker_service_limit (const broker_service_t *self)
{
    return self->limit;
}

size_t
broker_service_queued (const broker_service_t *self)
{
    return zlistx_size (self->queue);
}

static void
s_note (broker_service_t *self, const broker_request_t *req)
{
    if (req->deadline && req->deadline < self->min_deadline)
        self->min_deadline = req->deadline;
    if (req->queued < self->min_queued)
        self->min_queued = req->queued;
}

/*  An empty queue has nothing to expire: forget the bounds so the broker
    does not wake up for requests that already left.  */
static void
s_reset_if_empty (broker_service_t *self)
{
    if (zlistx_size (self->queue) == 0) {
        self->min_deadline = UINT64_MAX;
        self->min_queued = INT64_MAX;
    }
}

int
broker_service_push (broker_service_t *self, broker_request_t **req_p)
{
    assert (req_p && *req_p);
    if (zlistx_size (self->queue) >= self->limit)
        return -1;
    s_note (self, *req_p);
    zlistx_add_end (self->queue, *req_p);
    *req_p = NULL;
    return 0;
}

void
broker_service_push_front (broker_service_t *self, broker_request_t **req_p)
{
    assert (req_p && *req_p);
    s_note (self, *req_p);
    zlistx_add_start (self->queue, *req_p);
    *req_p = NULL;
}

broker_request_t *
broker_service_pop (broker_service_t *self)
{
    broker_request_t *req = NULL;
    if (zlistx_first (self->queue))
        req = (broker_request_t *) zlistx_detach_cur (self->queue);
    s_reset_if_empty (self);
    return req;
}

broker_request_t *
broker_service_peek (broker_service_t *self)
{
    return (broker_request_t *) zlistx_first (self->queue);
}

/*  Scans the queue once: detaches the first request that is due and
    recomputes the bounds from what stays, so a queue with nothing due is
    not scanned again until its new bound comes.  */
static broker_request_t *
s_pop_due (broker_service_t *self, uint64_t wall_now, int64_t now,
           int64_t grace, bool orphans)
{
    uint64_t min_deadline = UINT64_MAX;
    int64_t min_queued = INT64_MAX;
    broker_request_t *req = (broker_request_t *) zlistx_first (self->queue);
    while (req) {
        bool due;
        if (orphans) {
            int64_t since = req->queued > self->orphan_since
                                ? req->queued
                                : self->orphan_since;
            due = now - since >= grace;
        }
        else
            due = req->deadline && req->deadline <= wall_now;
        if (due) {
            zlistx_detach_cur (self->queue);
            /*  The bounds of the rest are not known yet: keep the old
                ones, which are still lower bounds.  */
            s_reset_if_empty (self);
            return req;
        }
        if (req->deadline && req->deadline < min_deadline)
            min_deadline = req->deadline;
        if (req->queued < min_queued)
            min_queued = req->queued;
        req = (broker_request_t *) zlistx_next (self->queue);
    }
    self->min_deadline = min_deadline;
    self->min_queued = min_queued;
    return NULL;
}

broker_request_t *
broker_service_pop_expired (broker_service_t *self, uint64_t wall_now)
{
    if (self->min_deadline > wall_now)
        return NULL;
    return s_pop_due (self, wall_now, 0, 0, false);
}

broker_request_t *
broker_service_pop_orphaned (broker_service_t *self, int64_t now,
                             int64_t grace)
{
    if (self->workers > 0 || zlistx_size (self->queue) == 0)
        return NULL;
    int64_t since = self->min_queued > self->orphan_since ? self->min_queued
                                                          : self->orphan_since;
    if (now - since < grace)
        return NULL;
    return s_pop_due (self, 0, now, grace, true);
}

int64_t
broker_service_next_timer (const broker_service_t *self, uint64_t wall_now,
                           int64_t now, int64_t grace)
{
    if (zlistx_size (self->queue) == 0)
        return -1;
    int64_t next = -1;
    if (self->min_deadline != UINT64_MAX)
        next = self->min_deadline > wall_now
                   ? (int64_t) (self->min_deadline - wall_now)
                   : 0;
    if (self->workers == 0) {
        int64_t since = self->min_queued > self->orphan_since
                            ? self->min_queued
                            : self->orphan_since;
        int64_t left = since + grace - now;
        if (left < 0)
            left = 0;
        if (next < 0 || left < next)
            next = left;
    }
    return next;
}

void
broker_service_worker_joined (broker_service_t *self)
{
    self->workers++;
}

void
broker_service_worker_left (broker_service_t *self, int64_t now)
{
    assert (self->workers > 0);
    if (--self->workers == 0)
        self->orphan_since = now;
}

size_t
broker_service_workers (const broker_service_t *self)
{
    return self->workers;
}

void *
broker_service_ready_add (broker_service_t *self, void *worker)
{
    return zlistx_add_end (self->ready, worker);
}

void
broker_service_ready_remove (broker_service_t *self, void **handle_p)
{
    assert (handle_p);
    if (*handle_p) {
        zlistx_detach (self->ready, *handle_p);
        *handle_p = NULL;
    }
}

void *
broker_service_ready_next (broker_service_t *self)
{
    void *worker = zlistx_first (self->ready);
    if (worker)
        zlistx_move_end (self->ready, zlistx_cursor (self->ready));
    return worker;
}

void *
broker_service_ready_find (broker_service_t *self,
                           bool (*match) (void *worker))
{
    for (void *worker = zlistx_first (self->ready); worker;
         worker = zlistx_next (self->ready))
        if (match (worker)) {
            zlistx_move_end (self->ready, zlistx_cursor (self->ready));
            return worker;
        }
    return NULL;
}

size_t
broker_service_ready (const broker_service_t *self)
{
    return zlistx_size (self->ready);
}

/* ---- test ----------------------------------------------------------------- */

static broker_request_t *
s_test_request (const char *id, uint64_t deadline, int64_t queued,
                const char *flags)
{
    zmq_msg_t payload;
    zmq_msg_init_size (&payload, strlen (id));
    memcpy (zmq_msg_data (&payload), id, strlen (id));
    broker_request_t *req
        = broker_request_new ("E", 1, id, flags, deadline, queued, &payload);
    zmq_msg_close (&payload);
    return req;
}

static bool
s_test_is_two (void *worker)
{
    return *(int *) worker == 2;
}

static bool
s_test_is_three (void *worker)
{
    return *(int *) worker == 3;
}

int
broker_service_test (bool verbose)
{
    (void) verbose;
    broker_service_t *svc = broker_service_new ("app", 3, 1000);
    FERRY_CHECK (svc);
    FERRY_CHECK (strcmp (broker_service_name (svc), "app") == 0);
    FERRY_CHECK (broker_service_limit (svc) == 3);
    FERRY_CHECK (broker_service_pop (svc) == NULL);
    FERRY_CHECK (broker_service_next_timer (svc, 0, 1000, 10) == -1);

    /*  Bounded FIFO: the fourth push is refused and stays with us.  */
    broker_request_t *req = s_test_request ("a", 0, 1000, "");
    FERRY_CHECK (broker_service_push (svc, &req) == 0 && req == NULL);
    req = s_test_request ("b", 5000, 1001, "r");
    FERRY_CHECK (broker_request_retryable (req));
    FERRY_CHECK (broker_service_push (svc, &req) == 0);
    req = s_test_request ("c", 3000, 1002, "");
    FERRY_CHECK (!broker_request_retryable (req));
    FERRY_CHECK (broker_service_push (svc, &req) == 0);
    req = s_test_request ("d", 0, 1003, "");
    FERRY_CHECK (broker_service_push (svc, &req) == -1 && req != NULL);
    FERRY_CHECK (broker_service_queued (svc) == 3);

    /*  Requeue at the front goes beyond the limit.  */
    broker_service_push_front (svc, &req);
    FERRY_CHECK (req == NULL && broker_service_queued (svc) == 4);
    req = broker_service_pop (svc);
    FERRY_CHECK (req && strcmp (req->msg_id, "d") == 0);
    FERRY_CHECK (zmq_msg_size (&req->payload) == 1
                 && memcmp (zmq_msg_data (&req->payload), "d", 1) == 0);
    FERRY_CHECK (req->edge_size == 1 && req->edge[0] == 'E');
    /*  Deaths: counted always, keys and known signals kept up to a bound. */
    FERRY_CHECK (req->deaths == 0 && !req->history);
    for (int i = 0; i < BROKER_DEATHS_KEPT + 2; i++)
        broker_request_died (req, "W1", i == 0 ? NULL : "SIGABRT");
    FERRY_CHECK (req->deaths == BROKER_DEATHS_KEPT + 2 && req->history);
    FERRY_CHECK (req->history->worker_count == BROKER_DEATHS_KEPT);
    FERRY_CHECK (req->history->signal_count == BROKER_DEATHS_KEPT);
    FERRY_CHECK (strcmp (req->history->signals[0], "SIGABRT") == 0);
    FERRY_CHECK (broker_service_peek (svc) != NULL);
    broker_request_destroy (&req);
    broker_request_destroy (&req);

    /*  Expiry by deadline: "c" (3000) then "b" (5000); "a" has none.  */
    FERRY_CHECK (broker_service_next_timer (svc, 2000, 1010, 10) == 0);
    broker_service_worker_joined (svc);
    FERRY_CHECK (broker_service_next_timer (svc, 2000, 1010, 10) == 1000);
    FERRY_CHECK (broker_service_pop_expired (svc, 2999) == NULL);
    req = broker_service_pop_expired (svc, 3000);
    FERRY_CHECK (req && strcmp (req->msg_id, "c") == 0);
    broker_request_destroy (&req);
    FERRY_CHECK (broker_service_pop_expired (svc, 3000) == NULL);
    FERRY_CHECK (broker_service_next_timer (svc, 3000, 1010, 10) == 2000);
    req = broker_service_pop_expired (svc, 9000);
    FERRY_CHECK (req && strcmp (req->msg_id, "b") == 0);
    broker_request_destroy (&req);
    FERRY_CHECK (broker_service_pop_expired (svc, UINT64_MAX - 1) == NULL);
    FERRY_CHECK (broker_service_queued (svc) == 1);

    /*  No-worker grace: only once no worker is left, counted from the
        later of queue time and the last worker leaving.  */
    FERRY_CHECK (broker_service_workers (svc) == 1);
    FERRY_CHECK (broker_service_pop_orphaned (svc, 99999, 10) == NULL);
    broker_service_worker_left (svc, 2000);
    FERRY_CHECK (broker_service_workers (svc) == 0);
    FERRY_CHECK (broker_service_next_timer (svc, 0, 2005, 10) == 5);
    FERRY_CHECK (broker_service_pop_orphaned (svc, 2009, 10) == NULL);
    req = broker_service_pop_orphaned (svc, 2010, 10);
    FERRY_CHECK (req && strcmp (req->msg_id, "a") == 0);
    broker_request_destroy (&req);
    FERRY_CHECK (broker_service_queued (svc) == 0);
    FERRY_CHECK (broker_service_next_timer (svc, 0, 2010, 10) == -1);

    /*  Ready ring: round-robin, removal by handle.  */
    int w1 = 1, w2 = 2;
    void *h1 = broker_service_ready_add (svc, &w1);
    void *h2 = broker_service_ready_add (svc, &w2);
    FERRY_CHECK (h1 && h2 && broker_service_ready (svc) == 2);
    FERRY_CHECK (broker_service_ready_next (svc) == &w1);
    FERRY_CHECK (broker_service_ready_next (svc) == &w2);
    FERRY_CHECK (broker_service_ready_next (svc) == &w1);
    FERRY_CHECK (broker_service_ready_find (svc, s_test_is_two) == &w2);
    FERRY_CHECK (broker_service_ready_next (svc) == &w1);
    broker_service_ready_remove (svc, &h1);
    FERRY_CHECK (h1 == NULL && broker_service_ready (svc) == 1);
    FERRY_CHECK (broker_service_ready_find (svc, s_test_is_three) == NULL);
    broker_service_ready_remove (svc, &h1);
    FERRY_CHECK (broker_service_ready_next (svc) == &w2);
    FERRY_CHECK (broker_service_ready_next (svc) == &w2);
    broker_service_ready_remove (svc, &h2);
    FERRY_CHECK (broker_service_ready_next (svc) == NULL);

    /*  Destroying a service with queued requests frees them.  */
    req = s_test_request ("e", 0, 3000, "");
    FERRY_CHECK (broker_service_push (svc, &req) == 0);
    broker_service_destroy (&svc);
    broker_service_destroy (&svc);
    FERRY_CHECK (svc == NULL);

    /*  A zero limit refuses everything.  */
    svc = broker_service_new ("zero", 0, 0);
    req = s_test_request ("f", 0, 0, "");
    FERRY_CHECK (broker_service_push (svc, &req) == -1);
    broker_request_destroy (&req);
    broker_service_destroy (&svc);
    return 0;
}

/*  service.h: one broker service: its bounded queue of waiting requests and
    the ring of its workers that hold credit (see service.c).  */

#ifndef BROKER_SERVICE_H_INCLUDED
#define BROKER_SERVICE_H_INCLUDED

#include "ferry.h"
#include "proto.h"

#include <czmq.h>

/*  Longest msg_id and flags string the broker accepts.  */
#define BROKER_MSG_ID_MAX 64
#define BROKER_FLAGS_MAX 16
/*  ZeroMQ routing identities are 1 to 255 bytes.  */
#define BROKER_IDENTITY_MAX 255

/*  Worker keys and exit signals a request remembers from the deaths it
    was in flight for, for its dead letter; later ones are not kept.  */
#define BROKER_DEATHS_KEPT 8
/*  Longest signal name a DIED may carry ("SIGABRT").  */
#define BROKER_SIGNAL_MAX 15

/*  What a request saw die, allocated at its first death only.  */
typedef struct {
    char *workers[BROKER_DEATHS_KEPT];    /* keys of the dead workers */
    size_t worker_count;
    char signals[BROKER_DEATHS_KEPT][BROKER_SIGNAL_MAX + 1]; /* known
                                             exit signals, in order */
    size_t signal_count;
} broker_deaths_t;

/*  A request, from its arrival until it is answered: first in a service
    queue, then in flight at a worker.  The broker never decodes the
    payload; it keeps the message part it received and sends that same part
    on.  The edge identity lives inline so that a request costs one
    allocation.  */
typedef struct {
    uint8_t edge[BROKER_IDENTITY_MAX];    /* routing identity of the edge */
    size_t edge_size;
    char msg_id[BROKER_MSG_ID_MAX + 1];   /* the edge's message id */
    char flags[BROKER_FLAGS_MAX + 1];     /* "r" = retryable */
    uint64_t deadline;                    /* wall ms, 0 = none */
    int64_t queued;                       /* monotonic ms, first queued */
    zmq_msg_t payload;                    /* the envelope, untouched; empty
                                             once sent unless retryable */
    void *worker;                         /* in flight: who holds it */
    void *handle;                         /* in flight: in its worker list */
    unsigned deaths;                      /* workers that died holding it;
                                             > 0 makes it a suspect, and
                                             deaths + 1 is the attempt of
                                             its next delivery */
    broker_deaths_t *history;             /* NULL until the first death */
} broker_request_t;

/*  Moves *payload into the request (payload is left empty) and copies the
    edge identity (1 to BROKER_IDENTITY_MAX bytes).  msg_id and flags must
    fit (the caller validated them).  Never returns NULL.  */
broker_request_t *broker_request_new (const void *edge, size_t edge_size,
                                      const char *msg_id, const char *flags,
                                      uint64_t deadline, int64_t queued,
                                      zmq_msg_t *payload);
void broker_request_destroy (broker_request_t **self_p);
/*  True when flags contain FERRY_FLAG_RETRYABLE.  */
bool broker_request_retryable (const broker_request_t *self);
/*  Counts a death of the worker worker_key while it held the request and
    remembers the key and, when not NULL, the signal that killed it (up to
    BROKER_DEATHS_KEPT of each).  */
void broker_request_died (broker_request_t *self, const char *worker_key,
                          const char *signal);

typedef struct _broker_service_t broker_service_t;

/*  A service with an empty queue holding at most limit requests, and no
    workers; its no-worker grace starts at now (monotonic ms).  */
broker_service_t *broker_service_new (const char *name, size_t limit,
                                      int64_t now);
/*  Destroys the queued requests too; workers are only referenced.  */
void broker_service_destroy (broker_service_t **self_p);

const char *broker_service_name (const broker_service_t *self);
size_t broker_service_limit (const broker_service_t *self);
size_t broker_service_queued (const broker_service_t *self);

/*  Appends *req_p and nulls it.  Returns 0, or -1 when the queue is full
    (the request stays with the caller).  */
int broker_service_push (broker_service_t *self, broker_request_t **req_p);
/*  Puts *req_p back at the head (a request taken back from a worker that
    died, or one that could not be sent).  Always accepted, even beyond the
    limit: the request was admitted once and refusing it now would lose it. */
void broker_service_push_front (broker_service_t *self,
                                broker_request_t **req_p);
/*  Removes and returns the head request, or NULL when the queue is empty.  */
broker_request_t *broker_service_pop (broker_service_t *self);
/*  The head request, left in place, or NULL.  */
broker_request_t *broker_service_peek (broker_service_t *self);

/*  Removes and returns one queued request whose deadline is at or before
    wall_now, or NULL when there is none.  Call until NULL.  */
broker_request_t *broker_service_pop_expired (broker_service_t *self,
                                              uint64_t wall_now);
/*  When the service has no worker: removes and returns one queued request
    that has waited grace ms since it was queued and since the last worker
    left, or NULL.  Call until NULL.  */
broker_request_t *broker_service_pop_orphaned (broker_service_t *self,
                                               int64_t now, int64_t grace);
/*  Milliseconds from now until pop_expired or pop_orphaned may return
    something (0 if due, -1 if nothing is queued).  The deadlines are lower
    bounds, so the answer can be early, never late.  */
int64_t broker_service_next_timer (const broker_service_t *self,
                                   uint64_t wall_now, int64_t now,
                                   int64_t grace);

/* ---- workers --------------------------------------------------------------
    The service counts its live workers (for heartbeats and the no-worker
    grace) and keeps a ring of the ones that hold credit, for round-robin
    dispatch.  Workers are opaque pointers here; the broker owns them.  */
void broker_service_worker_joined (broker_service_t *self);
/*  now starts the no-worker grace when the last worker leaves.  */
void broker_service_worker_left (broker_service_t *self, int64_t now);
size_t broker_service_workers (const broker_service_t *self);
/*  Adds worker to the ready ring; returns the handle for remove.  */
void *broker_service_ready_add (broker_service_t *self, void *worker);
void broker_service_ready_remove (broker_service_t *self, void **handle_p);
/*  The next worker in the ring, which moves to the back, or NULL.  */
void *broker_service_ready_next (broker_service_t *self);
/*  The first worker in the ring for which match (worker) is true, which
    moves to the back, or NULL.  Walks the ring: for rare cases only.  */
void *broker_service_ready_find (broker_service_t *self,
                                 bool (*match) (void *worker));
size_t broker_service_ready (const broker_service_t *self);

int broker_service_test (bool verbose);

#endif

/*  harness.h: an in-process test harness for the broker actor (see
    harness.c).  Used by the actor tests at the bottom of broker.c, which
    are also what exercises it.  */

#ifndef BROKER_HARNESS_H_INCLUDED
#define BROKER_HARNESS_H_INCLUDED

#include "broker.h"

/*  How long a harness receive waits before it gives up (ms).  */
#define BROKER_HARNESS_WAIT 2000
#define BROKER_HARNESS_PEERS 8

typedef struct {
    zactor_t *actor;            /* the broker under test */
    char *frontend;             /* endpoints it bound */
    char *backend;
    char *control;              /* bound by the first status_json */
    zsock_t *peers[BROKER_HARNESS_PEERS]; /* edges and workers, owned */
} broker_harness_t;

/*  The broker's counters, as STATUS reports them.  */
typedef struct {
    int workers;
    int inflight;
    int queued;
} broker_harness_status_t;

/*  Settings with test timings: a no-worker grace of 100 ms and, unless
    fast, a heartbeat long enough that test workers (which do not
    heartbeat) stay alive; fast is 50 ms x 3, for the liveness tests.  */
broker_settings_t *broker_harness_settings (bool fast);

/*  Starts a broker with *settings_p (destroyed and nulled), or with
    broker_harness_settings (false) when settings_p is NULL, bound on
    inproc (tcp://127.0.0.1:* when tcp).  Returns 0, or -1.  */
int broker_harness_start (broker_harness_t *self,
                          broker_settings_t **settings_p, bool tcp,
                          bool verbose);
/*  broker_harness_start on inproc, then an edge and a worker that has
    registered for service with credit: the set-up most tests share.
    Returns 0 with *edge_p and *worker_p (owned by self), or -1.  */
int broker_harness_start_served (broker_harness_t *self,
                                 broker_settings_t **settings_p,
                                 const char *service, const char *credit,
                                 bool verbose, zsock_t **edge_p,
                                 zsock_t **worker_p);
/*  Ends the broker and destroys every peer the harness made.  */
void broker_harness_stop (broker_harness_t *self);

/*  A DEALER playing an edge, connected to the frontend; owned by self.
    NULL when the harness holds BROKER_HARNESS_PEERS peers already.  */
zsock_t *broker_harness_edge (broker_harness_t *self);
/*  A DEALER playing a worker, connected to the backend; when service is
    not NULL it has sent READY service credit.  Owned by self.  */
zsock_t *broker_harness_worker (broker_harness_t *self, const char *service,
                                const char *credit);
/*  The same with READY service credit process (process is "host:pid").  */
zsock_t *broker_harness_worker_at (broker_harness_t *self,
                                   const char *service, const char *credit,
                                   const char *process);
/*  Destroys one peer before the end of the test.  */
void broker_harness_drop (broker_harness_t *self, zsock_t **peer_p);

broker_harness_status_t broker_harness_status (broker_harness_t *self);
/*  Binds the control socket on first use, asks it STATUS from a fresh
    DEALER and returns the JSON text (caller frees), or NULL.  */
char *broker_harness_status_json (broker_harness_t *self);
/*  Waits until the broker has expected workers.  */
bool broker_harness_wait_workers (broker_harness_t *self, int expected);
/*  Heartbeats from keeper until the broker is down to expected workers
    (the others go silent).  Returns the status seen last.  */
broker_harness_status_t broker_harness_wait_silent (broker_harness_t *self,
                                                    zsock_t *keeper,
                                                    int expected);

/*  An edge sends REQ.  */
void broker_harness_request (zsock_t *edge, const char *service,
                             const char *msg_id, uint64_t deadline,
                             const char *flags, const void *payload,
                             size_t size);
/*  Generates count ids and sends a REQ ("x", deadline 10 s ahead) for
    each, in order.  */
void broker_harness_requests (zsock_t *edge, const char *service,
                              char (*ids)[FERRY_ID_LEN + 1], size_t count);
/*  A deadline 10 s ahead.  */
uint64_t broker_harness_deadline (void);
/*  A worker sends REP.  */
void broker_harness_reply (zsock_t *worker, const char *msg_id,
                           const void *data, size_t size);

/*  Receives a message (waiting ms when > 0, else BROKER_HARNESS_WAIT) and
    checks it is [FRY1, command, ...] with count frames after the command;
    returns those frames, or NULL.  */
zmsg_t *broker_harness_recv (zsock_t *sock, const char *command,
                             size_t count, int ms);
/*  True when nothing arrives on sock within ms.  */
bool broker_harness_silent (zsock_t *sock, int ms);
/*  Heartbeats from keeper every 20 ms, so a fast-liveness broker keeps it,
    until something waits on sock or ms pass.  True when something
    waits.  */
bool broker_harness_wait_alive (zsock_t *sock, zsock_t *keeper, int ms);
/*  Drops whatever waits on sock.  */
void broker_harness_drain (zsock_t *sock);

/*  A worker receives REQ for msg_id (any when NULL) within ms, skipping
    broker heartbeats: returns its frames [msg_id, deadline, attempt,
    payload], or NULL.  */
zmsg_t *broker_harness_work (zsock_t *worker, const char *msg_id, int ms);
/*  True when worker receives REQ for msg_id within BROKER_HARNESS_WAIT
    with attempt (any when NULL).  */
bool broker_harness_got_attempt (zsock_t *worker, const char *msg_id,
                                 const char *attempt);
/*  A worker receives DEAD within BROKER_HARNESS_WAIT, skipping
    heartbeats: returns its frames [msg_id, info, payload], or NULL.  */
zmsg_t *broker_harness_dead (zsock_t *worker);
/*  True when worker receives REQ for msg_id within BROKER_HARNESS_WAIT.  */
bool broker_harness_got_work (zsock_t *worker, const char *msg_id);
/*  True when edge receives REP for msg_id whose payload is body (any
    payload when body is NULL).  */
bool broker_harness_got_reply (zsock_t *edge, const char *msg_id,
                               const char *body);
/*  True when edge receives the broker's own problem reply to msg_id with
    status, and (when retry_after) the header retry-after: 1.  */
bool broker_harness_got_problem (zsock_t *edge, const char *msg_id,
                                 unsigned status, bool retry_after);
/*  The edge's heartbeat answer: the services list (caller frees), or
    NULL.  */
char *broker_harness_edge_hb (zsock_t *edge);

#endif

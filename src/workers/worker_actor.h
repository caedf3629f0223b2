/*  worker_actor.h: one worker actor: a broker DEALER socket, a
    non-blocking PostgreSQL connection, its own credit and a local FIFO of
    the messages it holds.  Run with zactor_new (worker_actor, &args).

    Events the actor sends to its parent on the pipe, as single strings:
    "CONNECTED" when its PostgreSQL connection is up and it has announced
    itself to the broker, "DISCONNECTED" when it lost it and withdrew.
    It exits (and zactor_destroy returns) once a $TERM drain is over.  */

#ifndef WORKER_ACTOR_H_INCLUDED
#define WORKER_ACTOR_H_INCLUDED

#include "worker_breaker.h"
#include "worker_jobs.h"
#include "worker_ops.h"

#include <czmq.h>

/*  What an actor is told at start.  The pool owns it and keeps it alive
    (and unchanged) until the actor is destroyed.  */
typedef struct {
    const char *pool;         /* for logs */
    const char *service;      /* announced with READY */
    unsigned credit;          /* messages held at once */
    const worker_ops_t *ops;  /* shared, read-only */
    const char *conninfo;     /* libpq; "" = PG* environment */
    const char *broker;       /* backend endpoint to connect to */
    int64_t heartbeat_ms;
    unsigned liveness;
    int64_t drain_ms;         /* SIGTERM: longest wait for work in hand */
    unsigned index;           /* actor number in the pool; actor 0 also
                                 deletes expired jobs and keys */
    const worker_jobs_settings_t *jobs; /* retention, cleanup */
    worker_breaker_t *breaker; /* the pool's, shared by its actors */
    /*  Test only (FERRY_TEST_CRASH_AFTER_COMMIT): the operation after
        whose COMMIT the process kills itself before replying; NULL.  */
    const char *crash_after_commit;
    /*  Test only (FERRY_TEST_ABORT_OPERATION): the operation whose
        message makes the process abort () when the actor starts it, a
        poison message; NULL.  */
    const char *abort_operation;
    const char *process;      /* "<hostname>:<pid>", sent with READY */
} worker_actor_args_t;

void worker_actor (zsock_t *pipe, void *args);

#endif

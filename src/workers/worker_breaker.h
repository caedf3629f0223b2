/*  worker_breaker.h: the circuit breaker of one pool, shared by its
    actors (docs/worker.md, "Circuit breaker").

    Failures are PostgreSQL being unreachable: a connection attempt that
    fails or times out, a connection lost, a server error of class 08 or
    57P0x.  Handler errors (a 4xx, a constraint) are not failures: the
    server answered.  Enough failures in a window open the breaker; while
    it is open the pool answers 503 with retry-after at once and calls no
    PostgreSQL; after the cool-down it is half-open: actors reconnect and a
    few messages go through as probes; `probes` successes close it, a
    failure opens it again.

    Thread-safe.  The per-message calls (worker_breaker_state,
    worker_breaker_admit in the closed state, worker_breaker_success) are
    atomic loads (plus an atomic add once failures were seen in the
    window); only failures and state changes take the mutex.  */

#ifndef WORKER_BREAKER_H_INCLUDED
#define WORKER_BREAKER_H_INCLUDED

#include "config.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    WORKER_BREAKER_CLOSED,
    WORKER_BREAKER_OPEN,
    WORKER_BREAKER_HALF_OPEN
} worker_breaker_state_t;

/*  pools.NAME.breaker: {failures, window, ratio, cooldown, probes}.  */
typedef struct {
    int64_t failures;    /* failures in a window that open it; 0 = never */
    int64_t window_ms;   /* the counting window */
    double ratio;        /* and at least this share of outcomes failed */
    int64_t cooldown_ms; /* open this long, then half-open */
    int64_t probes;      /* successes in half-open that close it */
} worker_breaker_settings_t;

typedef struct _worker_breaker_t worker_breaker_t;

/*  Reads the `breaker` map below pool (absent: the defaults).  Returns 0,
    or -1 with the error in ferry_config_error (config).  */
int worker_breaker_settings_load (ferry_config_t *config,
                                  const ferry_cnode_t *pool,
                                  worker_breaker_settings_t *out);

/*  A closed breaker for pool (the name is copied, for logs).  */
worker_breaker_t *worker_breaker_new (const char *pool,
                                      const worker_breaker_settings_t *s);
void worker_breaker_destroy (worker_breaker_t **self_p);

/*  True while closed: one atomic load, for the per-message path.  */
bool worker_breaker_closed (worker_breaker_t *self);
/*  The state at monotonic time now; an open breaker whose cool-down has
    passed turns half-open here.  */
worker_breaker_state_t worker_breaker_state (worker_breaker_t *self,
                                             int64_t now);
/*  True when a message may go to PostgreSQL now: always when closed,
    never when open, and in half-open while probes are left (each call
    that returns true takes one).  */
bool worker_breaker_admit (worker_breaker_t *self, int64_t now);
/*  PostgreSQL answered (a segment's Sync came back, or a connection was
    set up).  */
void worker_breaker_success (worker_breaker_t *self);
/*  PostgreSQL could not be reached; reason is a fixed phrase, logged when
    this opens the breaker.  */
void worker_breaker_failure (worker_breaker_t *self, const char *reason,
                             int64_t now);
/*  Seconds a client should wait (retry-after): the cool-down left,
    at least 1.  */
unsigned worker_breaker_retry_after (worker_breaker_t *self, int64_t now);
const char *worker_breaker_state_name (worker_breaker_state_t state);

int worker_breaker_test (bool verbose);
int worker_breaker_config_test (bool verbose);

#endif

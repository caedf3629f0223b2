/*  worker_pool.h: a pool is a bulkhead: N actors serving one broker
    service with their own PostgreSQL connections.  Built and validated in
    the main thread from `pools.NAME`, then started.  */

#ifndef WORKER_POOL_H_INCLUDED
#define WORKER_POOL_H_INCLUDED

#include "config.h"
#include "worker_breaker.h"
#include "worker_jobs.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _worker_pool_t worker_pool_t;

/*  Settings from the `worker:` and `broker:` sections that every pool
    shares.  The strings must outlive the pools.  */
typedef struct {
    const char *broker;      /* backend endpoint */
    int64_t heartbeat_ms;
    unsigned liveness;
    int64_t drain_ms;        /* worker.drain_timeout */
    const char *database;    /* default conninfo; "" = PG* environment */
    worker_jobs_settings_t jobs;    /* jobs.* and idempotency.* */
    const char *crash_after_commit; /* test-only fault hook, or NULL */
    const char *abort_operation;    /* test-only fault hook, or NULL */
    const char *process;     /* "<hostname>:<pid>" for READY, or NULL */
} worker_settings_t;

/*  Reads and validates pools.NAME (node is that map entry).  Returns a
    pool that is not running yet, or NULL with the error in
    ferry_config_error (config).  */
worker_pool_t *worker_pool_new (ferry_config_t *config,
                                const ferry_cnode_t *node,
                                const worker_settings_t *settings);
/*  Stops the actors (each finishes the message in hand and says BYE)
    and frees the pool.  */
void worker_pool_destroy (worker_pool_t **self_p);

const char *worker_pool_name (const worker_pool_t *self);
/*  The number of actors running (or to run, before start).  */
size_t worker_pool_size (const worker_pool_t *self);

/*  Starts the actors (and the pool's Kafka consumer, if it has a `kafka:`
    section); they connect in the background.  Returns 0, or -1 (logged)
    when librdkafka refuses the consumer's configuration.  */
int worker_pool_start (worker_pool_t *self);
/*  Changes the number of running actors to size (1..1024): starts new
    actors, or drains the last ones the way SIGTERM drains (each finishes
    what it holds, hands the rest back, says BYE) and waits for them.
    The other actors and their connections are untouched.  */
void worker_pool_resize (worker_pool_t *self, size_t size);
/*  The state of the pool's circuit breaker now.  */
worker_breaker_state_t worker_pool_breaker (worker_pool_t *self);
/*  Asks every actor to stop without waiting, so that pools drain in
    parallel; destroy waits.  */
void worker_pool_stop (worker_pool_t *self);
/*  Reads the actors' events without blocking and returns how many
    actors are connected to PostgreSQL now; *ever gets how many have
    been connected at least once.  */
size_t worker_pool_poll (worker_pool_t *self, size_t *ever);

int worker_pool_config_test (bool verbose);

#endif

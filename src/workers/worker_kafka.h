/*  worker_kafka.h: a pool's Kafka consumer: events from topics run the
    pool's operations with exactly-once effect in PostgreSQL
    (docs/worker.md, "Kafka topics").

    Read and validated in the main thread from pools.NAME.kafka, started
    as one CZMQ actor (a thread that polls the consumer) and one lane per
    actor of the pool (threads with their own PostgreSQL connection)
    beside the pool's broker actors.  */

#ifndef WORKER_KAFKA_H_INCLUDED
#define WORKER_KAFKA_H_INCLUDED

#include "config.h"
#include "worker_breaker.h"
#include "worker_ops.h"

#include <stdbool.h>

typedef struct _worker_kafka_t worker_kafka_t;

/*  Reads node (the pool's `kafka:` map).  pool names the pool (default
    group "ferry.<pool>" and logs); ops and conninfo belong to the pool and
    must outlive the consumer.  Every topic's operation must exist in ops.
    breaker is the pool's circuit breaker, shared with its actors (NULL:
    none); the lanes report PostgreSQL's reachability to it and hold their
    work while it is open.  It must outlive the consumer.  Returns a
    consumer that is not running yet, or NULL with the error in
    ferry_config_error (config).  */
worker_kafka_t *worker_kafka_new (ferry_config_t *config,
                                  const ferry_cnode_t *node, const char *pool,
                                  const worker_ops_t *ops,
                                  const char *conninfo,
                                  worker_breaker_t *breaker);
/*  Stops the consumer (it finishes the message in hand) and frees it.  */
void worker_kafka_destroy (worker_kafka_t **self_p);

/*  Creates the librdkafka consumer and starts the actor.  Returns 0, or -1
    (logged) when librdkafka refuses the configuration.  */
int worker_kafka_start (worker_kafka_t *self);
/*  Asks the actor to stop without waiting; destroy waits.  */
void worker_kafka_stop (worker_kafka_t *self);

int worker_kafka_config_test (bool verbose);

#endif

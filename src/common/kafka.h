/*  kafka.h: librdkafka configuration from ferry's YAML file, and the one
    producer that the edge and the workers share (docs/kafka.md).

    The producer is idempotent with acks=all whatever the configuration
    says, sends without ever blocking (a full local queue fails at once so
    the caller can answer 503), and reports every message exactly once to
    the callback given at creation: delivered, failed, or purged at
    shutdown.  A producer belongs to one thread: the one that sends, polls
    and destroys it (librdkafka's own threads never call back into ferry
    code except to log).  */

#ifndef FERRY_KAFKA_H_INCLUDED
#define FERRY_KAFKA_H_INCLUDED

#include "config.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

/*  Builds a librdkafka configuration from section (a map such as the
    top-level `kafka:`; NULL means librdkafka's defaults).  Its `properties`
    key holds a sequence of "name=value" strings, each passed unchanged to
    rd_kafka_conf_set (names as librdkafka documents them, which contain
    dots that ferry's config keys cannot).  Other keys of section are left
    for their own readers.  Returns a configuration that the caller owns,
    or NULL with "file:line: path: message" in err (also left in
    ferry_config_error) when a property is malformed or refused.  librdkafka
    logs through ferry's log (log.h) with this configuration.  */
rd_kafka_conf_t *ferry_kafka_conf_new (ferry_config_t *config,
                                       const ferry_cnode_t *section,
                                       char *err, size_t errlen);

typedef struct _ferry_kafka_producer_t ferry_kafka_producer_t;

/*  A Kafka header of a message: name and value are copied by send.  */
typedef struct {
    const char *name;
    const void *value;
    size_t size;
} ferry_kafka_header_t;

/*  Called from ferry_kafka_producer_poll (and from destroy) once per sent
    message with the opaque given to send and the outcome: 0
    (RD_KAFKA_RESP_ERR_NO_ERROR) when the message is written on all
    in-sync replicas, else the error (RD_KAFKA_RESP_ERR__PURGE_QUEUE and
    __PURGE_INFLIGHT for messages still unsent when destroy gave up).  */
typedef void (ferry_kafka_delivery_fn) (void *opaque, rd_kafka_resp_err_t err,
                                        void *arg);

/*  Creates a producer from *conf_p, which it takes over (the caller's
    pointer is nulled, also on failure).  enable.idempotence=true and
    acks=all are forced.  on_delivery (with arg) receives every delivery
    report.  Returns NULL with the reason in err on failure.  */
ferry_kafka_producer_t *
ferry_kafka_producer_new (rd_kafka_conf_t **conf_p,
                          ferry_kafka_delivery_fn *on_delivery, void *arg,
                          char *err, size_t errlen);

/*  Flushes for at most the flush timeout (5 s unless set), then purges
    what is left; every message not reported yet is reported to the
    delivery callback before this returns.  Accepts NULL; nulls *self_p.  */
void ferry_kafka_producer_destroy (ferry_kafka_producer_t **self_p);

/*  Queues one message to topic (partitioned by key through librdkafka's
    default partitioner; key may be NULL).  key, payload and headers are
    copied.  Never blocks: returns 0 when queued (opaque then comes back to
    the delivery callback exactly once), or -1 at once when it could not be
    queued (the callback is not called; see
    ferry_kafka_producer_last_error: RD_KAFKA_RESP_ERR__QUEUE_FULL when the
    local queue is full, RD_KAFKA_RESP_ERR__FATAL after a fatal error).  */
int ferry_kafka_producer_send (ferry_kafka_producer_t *self, const char *topic,
                               const void *key, size_t key_len,
                               const void *payload, size_t len,
                               const ferry_kafka_header_t *headers,
                               size_t header_count, void *opaque);

/*  The error of the last failed send.  */
rd_kafka_resp_err_t
ferry_kafka_producer_last_error (const ferry_kafka_producer_t *self);

/*  Serves what librdkafka has queued for this thread without waiting:
    delivery reports (to the callback) and errors (logged).  Returns the
    number of events served.  */
int ferry_kafka_producer_poll (ferry_kafka_producer_t *self);

/*  A file descriptor that becomes readable when the producer has something
    to serve: an event loop polls it for input and then calls
    ferry_kafka_producer_poll, which also drains it.  Owned by the
    producer.  */
int ferry_kafka_producer_fd (const ferry_kafka_producer_t *self);

/*  True once librdkafka has raised a fatal error (for an idempotent
    producer: a broken sequence or a fenced producer id).  Such a producer
    only fails from then on: its owner destroys it and builds a new one.
    The reason is logged once by ferry_kafka_producer_poll.  */
bool ferry_kafka_producer_fatal (const ferry_kafka_producer_t *self);

/*  Messages queued or in flight that have not been reported yet.  */
int ferry_kafka_producer_outstanding (const ferry_kafka_producer_t *self);

/*  How long destroy waits for outstanding messages (milliseconds).  */
void ferry_kafka_producer_set_flush_timeout (ferry_kafka_producer_t *self,
                                             int timeout_ms);

#endif

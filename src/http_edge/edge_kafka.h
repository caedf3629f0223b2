/*  edge_kafka.h: what ferry-edge's loops share for routes with
    transport: kafka (docs/kafka.md "HTTP over Kafka").

    Each loop owns its own producer (kafka.h: a producer belongs to one
    thread), so only the reply side is shared: one consumer per process
    reads this instance's reply topic in its own thread and hands every
    reply to the loop that parked the request.  The loop is found from the
    reply's ferry-msg-id header: a Kafka request's msg id starts with the
    loop index in two hex digits (edge.loops is at most 256), so no table
    is shared and nothing is locked on the request path.  Each loop binds
    an inproc PULL socket; the consumer PUSHes [msg_id][envelope] to it.  */

#ifndef EDGE_KAFKA_H_INCLUDED
#define EDGE_KAFKA_H_INCLUDED

#include "edge_config.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct _edge_kafka_t edge_kafka_t;

/*  Starts the reply consumer for settings (which must outlive it).  It
    never waits for Kafka: creating the reply topic, assigning its
    partitions from their end and probing the cluster happen in its
    thread.  Returns NULL (logged) when librdkafka refuses the
    configuration.  */
edge_kafka_t *edge_kafka_new (const edge_settings_t *settings);
void edge_kafka_destroy (edge_kafka_t **self_p);

/*  True while the reply consumer is assigned and the cluster answered its
    last probe (about once a second).  Any thread may ask.  */
bool edge_kafka_ready (edge_kafka_t *self);

/*  A new configuration for one loop's producer (the caller owns it):
    edge.kafka.properties, with message.timeout.ms lowered to the longest
    Kafka route timeout unless configured, so a failed delivery is
    reported while someone still waits for it.  */
rd_kafka_conf_t *edge_kafka_producer_conf (edge_kafka_t *self);

/*  The inproc endpoint loop binds its PULL socket to.  */
void edge_kafka_endpoint (const edge_kafka_t *self, size_t loop, char *buf,
                          size_t size);

/*  Writes a fresh msg id (FERRY_ID_LEN hex characters) that names loop.  */
void edge_kafka_msg_id (char *id, size_t loop);
/*  The loop a msg id names, or -1 when it is not one of ours.  */
int edge_kafka_msg_loop (const char *id, size_t len);

int edge_kafka_test (bool verbose);

#endif

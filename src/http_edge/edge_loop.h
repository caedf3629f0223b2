/*  edge_loop.h: one ferry-edge event loop, a CZMQ actor (one thread).

    Each loop owns a libmicrohttpd daemon in external-loop epoll mode on its
    own SO_REUSEPORT listening socket, its own ZeroMQ DEALER to the broker,
    and the table of its requests that wait for a reply.  A reply comes
    back on the DEALER that sent the request, so it always reaches the loop
    that owns the parked connection and no state is shared between loops.

    Commands on the pipe:
      START    binds and connects; answers with a signal, 0 on success
      RELOAD   [pointer] new settings (edge_settings_adopt done), with a
               reference for the loop: new requests use them, requests
               under way keep theirs; answers with a signal 0
      DRAIN    stops accepting, answers what is pending (at most 5 s), then
               sends "DRAINED"
      $TERM    stops the loop (what is still pending gets a 503 first)  */

#ifndef EDGE_LOOP_H_INCLUDED
#define EDGE_LOOP_H_INCLUDED

#include "edge_config.h"
#include "edge_kafka.h"

#include <czmq.h>

typedef struct {
    edge_settings_t *settings;       /* shared, read-only; the loop takes
                                        its own reference */
    size_t index;                    /* 0-based, for logs */
    edge_kafka_t *kafka;             /* NULL without Kafka routes */
} edge_loop_args_t;

/*  The actor function: zactor_new (edge_loop_actor, &args).  args must
    outlive the actor.  */
void edge_loop_actor (zsock_t *pipe, void *args);

int edge_loop_test (bool verbose);

#endif

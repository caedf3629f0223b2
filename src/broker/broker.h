/*  broker.h: ferry-broker's core, a CZMQ actor that routes requests from
    edges (frontend ROUTER) to workers (backend ROUTER) and replies back by
    message id (docs/broker.md, docs/protocol.md).

    Start it with zactor_new (broker_actor, settings); the actor copies
    what it needs from settings before zactor_new returns, so the caller
    may destroy them afterwards.  Commands on the actor pipe:

      BIND frontend backend   -> "iss": 0 or -1, and the endpoints bound
                                 (tcp://host:* becomes the real port)
      CONTROL endpoint        -> "is": 0 or -1, and the endpoint bound of
                                 the control ROUTER (ferryctl status)
      VERBOSE                 -> no answer; logs per-message detail
      STATUS                  -> "iiii": workers, in flight, queued,
                                 services
      $TERM                   -> the actor ends  */

#ifndef BROKER_H_INCLUDED
#define BROKER_H_INCLUDED

#include "ferry.h"
#include "config.h"
#include "settings.h"

#include <czmq.h>

/*  The actor; args is a const broker_settings_t *.  */
void broker_actor (zsock_t *pipe, void *args);

int broker_dispatch_test (bool verbose);
int broker_ack_test (bool verbose);
int broker_poison_test (bool verbose);
int broker_drain_test (bool verbose);
int broker_routing_test (bool verbose);
int broker_credit_test (bool verbose);
int broker_queue_full_test (bool verbose);
int broker_deadline_test (bool verbose);
int broker_no_worker_test (bool verbose);
int broker_liveness_test (bool verbose);
int broker_unknown_worker_test (bool verbose);
int broker_malformed_test (bool verbose);
int broker_worker_death_test (bool verbose);
int broker_overload_test (bool verbose);
int broker_inflight_expiry_test (bool verbose);
int broker_late_reply_test (bool verbose);
int broker_duplicate_id_test (bool verbose);
int broker_back_test (bool verbose);
int broker_attempt_test (bool verbose);
int broker_died_test (bool verbose);
int broker_isolation_test (bool verbose);
int broker_suspect_deadline_test (bool verbose);
int broker_process_isolation_test (bool verbose);
int broker_process_reserve_test (bool verbose);
int broker_process_busy_test (bool verbose);
int broker_suspect_parallel_test (bool verbose);
int broker_status_json_test (bool verbose);

#endif

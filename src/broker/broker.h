/*  broker.h: ferry-broker's core, a CZMQ actor that routes requests from
    edges (frontend ROUTER) to workers (backend ROUTER) and replies back by
    message id (docs/broker.md, docs/protocol.md).

    Start it with zactor_new (broker_actor, settings); the actor copies
    what it needs from settings before zactor_new returns, so the caller
    may destroy them afterwards.  Commands on the actor pipe:

      BIND frontend backend   -> "iss": 0 or -1, and the endpoints bound
                                 (tcp://host:* becomes the real port)
      VERBOSE                 -> no answer; logs per-message detail
      STATUS                  -> "iiii": workers, in flight, queued,
                                 services
      $TERM                   -> the actor ends  */

#ifndef BROKER_H_INCLUDED
#define BROKER_H_INCLUDED

#include "ferry.h"
#include "config.h"

#include <czmq.h>

typedef struct _broker_settings_t broker_settings_t;

/*  The defaults of etc/ferry.yaml's broker section.  Never NULL.  */
broker_settings_t *broker_settings_new (void);
void broker_settings_destroy (broker_settings_t **self_p);

/*  Reads the broker section of config.  Returns 0, or -1 with the message
    in ferry_config_error (config).  */
int broker_settings_load (broker_settings_t *self, ferry_config_t *config);

const char *broker_settings_frontend (const broker_settings_t *self);
const char *broker_settings_backend (const broker_settings_t *self);

/*  Setters for what tests and embedders choose themselves.  */
void broker_settings_set_heartbeat (broker_settings_t *self, int64_t ms,
                                    int64_t liveness);
void broker_settings_set_no_worker_grace (broker_settings_t *self,
                                          int64_t ms);
void broker_settings_set_max_inflight (broker_settings_t *self, size_t n);
void broker_settings_set_max_message (broker_settings_t *self, uint64_t n);
void broker_settings_set_default_queue_limit (broker_settings_t *self,
                                              size_t n);
void broker_settings_set_queue_limit (broker_settings_t *self,
                                      const char *service, size_t limit);

/*  The actor; args is a const broker_settings_t *.  */
void broker_actor (zsock_t *pipe, void *args);

/*  True for a usable service name: [A-Za-z0-9_.-]{1,64}.  */
bool broker_name_valid (const char *name);

int broker_settings_test (bool verbose);
int broker_dispatch_test (bool verbose);
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

#endif

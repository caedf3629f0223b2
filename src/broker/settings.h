/*  settings.h: ferry-broker's settings, from etc/ferry.yaml's broker
    section (see settings.c and docs/broker.md).  */

#ifndef BROKER_SETTINGS_H_INCLUDED
#define BROKER_SETTINGS_H_INCLUDED

#include "ferry.h"
#include "config.h"

#include <czmq.h>

typedef struct _broker_settings_t broker_settings_t;

/*  The defaults of etc/ferry.yaml's broker section.  Never NULL.  */
broker_settings_t *broker_settings_new (void);
void broker_settings_destroy (broker_settings_t **self_p);
/*  A copy that belongs to the caller.  Never NULL.  */
broker_settings_t *broker_settings_dup (const broker_settings_t *self);

/*  Reads the broker section of config.  Returns 0, or -1 with the message
    in ferry_config_error (config).  */
int broker_settings_load (broker_settings_t *self, ferry_config_t *config);

const char *broker_settings_frontend (const broker_settings_t *self);
const char *broker_settings_backend (const broker_settings_t *self);
/*  Endpoint of the control socket (ferryctl status), "" when off.  */
const char *broker_settings_control (const broker_settings_t *self);
/*  Milliseconds between heartbeats; a peer silent for liveness of them is
    dead.  */
int64_t broker_settings_heartbeat (const broker_settings_t *self);
int64_t broker_settings_liveness (const broker_settings_t *self);
/*  Milliseconds a request for a service without workers waits.  */
int64_t broker_settings_no_worker_grace (const broker_settings_t *self);
uint64_t broker_settings_max_message (const broker_settings_t *self);
/*  A retryable request that was in flight at this many workers when they
    died is not redelivered again: it is likely what kills them.  */
int64_t broker_settings_max_deaths (const broker_settings_t *self);
/*  Milliseconds a stopping broker waits for the replies of the requests
    in flight before it answers them itself.  */
int64_t broker_settings_drain_timeout (const broker_settings_t *self);
size_t broker_settings_max_inflight (const broker_settings_t *self);
/*  The queue limit of service: its own, or default_queue_limit.  */
size_t broker_settings_queue_limit (const broker_settings_t *self,
                                    const char *service);

/*  Setters for what tests and embedders choose themselves.  */
void broker_settings_set_heartbeat (broker_settings_t *self, int64_t ms,
                                    int64_t liveness);
void broker_settings_set_no_worker_grace (broker_settings_t *self,
                                          int64_t ms);
void broker_settings_set_control (broker_settings_t *self,
                                  const char *endpoint);
void broker_settings_set_max_inflight (broker_settings_t *self, size_t n);
void broker_settings_set_max_deaths (broker_settings_t *self, int64_t n);
void broker_settings_set_drain_timeout (broker_settings_t *self,
                                        int64_t ms);
void broker_settings_set_max_message (broker_settings_t *self, uint64_t n);
void broker_settings_set_default_queue_limit (broker_settings_t *self,
                                              size_t n);
void broker_settings_set_queue_limit (broker_settings_t *self,
                                      const char *service, size_t limit);

/*  True for a usable service name: [A-Za-z0-9_.-]{1,64}.  */
bool broker_name_valid (const char *name);

int broker_settings_test (bool verbose);

#endif

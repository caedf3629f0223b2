/*  edge_config.h: the settings of ferry-edge, read from the `edge:`
    section of the configuration (and broker.heartbeat / broker.liveness,
    which edges and broker share).

    A settings record is built before the loops see it and only read
    afterwards, so every loop thread shares it without locks.  SIGHUP
    builds a new record (edge_settings_reload) which the loops take for
    their new requests; a record is reference counted (the main thread,
    each loop, each request that began under it) because a request keeps
    pointing into its routes until it ends.  */

#ifndef EDGE_CONFIG_H_INCLUDED
#define EDGE_CONFIG_H_INCLUDED

#include "config.h"
#include "edge_clients.h"
#include "edge_routes.h"

#include <stdatomic.h>
#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct {
    char *listen;                     /* "HOST:PORT" as configured */
    struct sockaddr_storage address;  /* listen, resolved */
    socklen_t address_len;
    char *broker;                     /* ZeroMQ endpoint of the frontend */
    size_t loops;                     /* event loops (threads) */
    unsigned max_connections;         /* per loop */
    size_t max_inflight;              /* per loop: requests awaiting a reply */
    unsigned connection_timeout_s;    /* idle or slow connections */
    size_t max_header_line;
    size_t max_header_total;
    size_t max_header_count;
    int64_t heartbeat_ms;             /* broker.heartbeat */
    int64_t liveness;                 /* broker.liveness */
    edge_routes_t *routes;
    char **services;                  /* distinct services the routes use */
    size_t nservices;
    /*  Kafka (edge.kafka), used when a route says transport: kafka.  */
    bool kafka;                       /* some route uses Kafka */
    rd_kafka_conf_t *kafka_conf;      /* edge.kafka.properties, a template */
    char *reply_topic;                /* this instance's reply topic */
    int64_t max_timeout_ms;           /* longest Kafka route timeout */
    /*  Jobs (docs/edge.md "Asynchronous jobs").  */
    bool jobs;                        /* a route makes jobs, or database set */
    char *database;                   /* libpq conninfo; "": PG* environment */
    int64_t job_retention_ms;         /* jobs.retention */
    /*  Per-client limits (edge.client_limits).  */
    edge_clients_conf_t client_limits;
    edge_clients_t *clients;          /* NULL when off; shared by loops */
    atomic_size_t refs;               /* edge_settings_ref / _unref */
} edge_settings_t;

/*  Reads the settings.  Returns a new record the caller owns, or NULL with
    "file:line: key: message" in ferry_config_error (config).  */
edge_settings_t *edge_settings_load (ferry_config_t *config);
void edge_settings_destroy (edge_settings_t **self_p);

/*  Takes a reference (thread-safe); returns self.  */
edge_settings_t *edge_settings_ref (edge_settings_t *self);
/*  Drops a reference and sets *self_p to NULL; the last one destroys the
    record (on whichever thread drops it).  */
void edge_settings_unref (edge_settings_t **self_p);

/*  Makes fresh (just loaded, for SIGHUP) fit the running edge: settings
    that only take effect at start (listen, loops, limits of the loops,
    Kafka and job store) are taken over from running, each change logged
    as needing a restart; routes and client limits stay fresh's.  Returns
    0, or -1 with the reason in err when fresh cannot be served by the
    running edge (its routes need Kafka or the job store and the running
    edge has none, or the reverse).  */
int edge_settings_adopt (edge_settings_t *fresh,
                         const edge_settings_t *running, char *err,
                         size_t errlen);

int edge_config_test (bool verbose);

#endif

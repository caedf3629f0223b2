/*  edge_config.h: the settings of ferry-edge, read once from the `edge:`
    section of the configuration (and broker.heartbeat / broker.liveness,
    which edges and broker share).

    The settings record is built before the loops start and only read
    afterwards, so every loop thread shares it without locks.  */

#ifndef EDGE_CONFIG_H_INCLUDED
#define EDGE_CONFIG_H_INCLUDED

#include "config.h"
#include "edge_routes.h"

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
} edge_settings_t;

/*  Reads the settings.  Returns a new record the caller owns, or NULL with
    "file:line: key: message" in ferry_config_error (config).  */
edge_settings_t *edge_settings_load (ferry_config_t *config);
void edge_settings_destroy (edge_settings_t **self_p);

int edge_config_test (bool verbose);

#endif

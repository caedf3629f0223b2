/*  edge_routes.h: the edge's route table.

    A route maps "METHOD /path/{name:type}" to a service and an operation,
    with a timeout, a body limit and typed query parameters.  The table is
    built once at start-up (from the `edge.routes` configuration) and is
    read-only afterwards, so every event loop shares it without locks.  */

#ifndef EDGE_ROUTES_H_INCLUDED
#define EDGE_ROUTES_H_INCLUDED

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    EDGE_PARAM_STRING = 1,
    EDGE_PARAM_INT = 2,    /* int64, packed as a msgpack int */
    EDGE_PARAM_NUMBER = 3, /* finite double, packed as float64 */
    EDGE_PARAM_BOOL = 4,   /* true|false|1|0 */
    EDGE_PARAM_UUID = 5    /* 8-4-4-4-12 hex, packed lowercase */
} edge_param_type_t;

/*  Path templates have at most this many segments and parameters.  */
#define EDGE_MAX_SEGMENTS 32
#define EDGE_MAX_PARAMS 16
/*  Declared query parameters per route.  */
#define EDGE_MAX_QUERY 32
/*  Longest path parameter value the edge accepts (longer: no match).  */
#define EDGE_MAX_PARAM_LEN 1024

typedef enum {
    EDGE_TRANSPORT_ZMQ = 0,  /* REQ to ferry-broker (the default) */
    EDGE_TRANSPORT_KAFKA = 1 /* produced to a request topic */
} edge_transport_t;

/*  How a route answers (docs/edge.md "Asynchronous jobs").  */
typedef enum {
    EDGE_MODE_SYNC = 0, /* the reply, or 504 at the timeout (the default) */
    EDGE_MODE_ASYNC = 1 /* always 202 Accepted and a job */
} edge_mode_t;

typedef struct _edge_routes_t edge_routes_t;
typedef struct _edge_route_t edge_route_t;

/*  The outcome of matching a request line against the table.  */
typedef struct {
    const edge_route_t *route; /* set when status is 200 */
    size_t nparams;            /* path parameters captured */
    struct {
        const char *value; /* points into the matched path */
        size_t len;
    } params[EDGE_MAX_PARAMS];
    char allow[64]; /* for 405: "GET, HEAD, POST" */
} edge_match_t;

/*  Looks up a decoded query parameter by name; NULL when absent.  */
typedef const char *(edge_query_fn) (void *ctx, const char *name);

/*  Parses "int", "string", "number", "bool" or "uuid".  Returns 0 or -1.  */
int edge_param_type_parse (const char *name, edge_param_type_t *out);
const char *edge_param_type_name (edge_param_type_t type);

edge_routes_t *edge_routes_new (void);
void edge_routes_destroy (edge_routes_t **self_p);

/*  Adds a route.  tmpl is "METHOD /path", path segments are literals or
    {name} / {name:type} with type int, string or uuid (string when
    omitted).  Returns the route (owned by the table), or NULL with a
    reason in err for a bad template, a bad name, or a route that
    duplicates an earlier one (same method, same literals, same parameter
    types at the same places).  */
edge_route_t *edge_routes_add (edge_routes_t *self, const char *tmpl,
                               const char *service, const char *operation,
                               int64_t timeout_ms, uint64_t max_body,
                               char *err, size_t errlen);
/*  Declares a typed query parameter.  Returns 0, or -1 with a reason when
    the name is invalid or already used by the route.  */
int edge_route_add_query (edge_route_t *route, const char *name,
                          edge_param_type_t type, bool required, char *err,
                          size_t errlen);

/*  Sends the route's requests over Kafka to topic (NULL: the default
    "ferry.<service>.requests"), keyed by the value of the path or declared
    query parameter key (NULL: by correlation id).  Call after the query
    parameters are declared.  Returns 0, or -1 with a reason when the topic
    is not a valid Kafka topic name or key names no parameter.  */
int edge_route_set_kafka (edge_route_t *route, const char *topic,
                          const char *key, char *err, size_t errlen);

/*  Sets how the route answers: mode, whether a sync route honours
    Prefer: respond-async (async), and the budget after which a sync route
    answers 202 with a job (async_after_ms, 0 for never).  Returns 0, or -1
    with a reason when async_after is set on an async route or is not
    shorter than the route's timeout.  */
int edge_route_set_async (edge_route_t *route, edge_mode_t mode, bool async,
                          int64_t async_after_ms, char *err, size_t errlen);

size_t edge_routes_size (const edge_routes_t *self);
const edge_route_t *edge_routes_at (const edge_routes_t *self, size_t i);

/*  Matches method and a decoded path.  Returns 200 with m->route and the
    captured parameters, 405 with m->allow when the path matches routes of
    other methods only, or 404.  HEAD matches GET routes.  Routes are tried
    in the order they were added; the first match wins.  */
int edge_routes_match (const edge_routes_t *self, const char *method,
                       const char *path, edge_match_t *m);

/*  Packs the request arguments of a match as one msgpack map (path
    parameters, then the declared query parameters that are present) into
    out.  Returns 0, or 400 with a message naming the parameter in err
    (wrong type, required and missing).  Undeclared query parameters are
    ignored.  query may be NULL (no query string).  */
int edge_route_pack_args (const edge_match_t *m, edge_query_fn *query,
                          void *ctx, msgpack_sbuffer *out, char *err,
                          size_t errlen);

/* ---- route fields (borrowed) --------------------------------------------- */
const char *edge_route_method (const edge_route_t *self);
/*  The template as configured, e.g. "GET /users/{id:int}".  */
const char *edge_route_template (const edge_route_t *self);
const char *edge_route_service (const edge_route_t *self);
const char *edge_route_operation (const edge_route_t *self);
int64_t edge_route_timeout_ms (const edge_route_t *self);
uint64_t edge_route_max_body (const edge_route_t *self);
/*  GET routes are safe to redeliver: their requests carry the "r" flag.  */
bool edge_route_retryable (const edge_route_t *self);

edge_mode_t edge_route_mode (const edge_route_t *self);
/*  True when the route may answer 202 on request: mode async, or async:
    true (Prefer: respond-async is honoured).  */
bool edge_route_async (const edge_route_t *self);
/*  The sync route's budget before 202 + job, 0 for none.  */
int64_t edge_route_async_after_ms (const edge_route_t *self);
/*  True when some request of the route may become a job.  */
bool edge_route_uses_jobs (const edge_route_t *self);

edge_transport_t edge_route_transport (const edge_route_t *self);
/*  The Kafka request topic (set for Kafka routes only).  */
const char *edge_route_topic (const edge_route_t *self);
/*  The parameter whose value keys Kafka messages; NULL: correlation id.  */
const char *edge_route_key (const edge_route_t *self);
/*  The key parameter's value in a match (path parameter, else the query
    parameter through query), or NULL when the route has no key or the
    request does not carry it.  */
const char *edge_route_key_value (const edge_match_t *m, edge_query_fn *query,
                                  void *ctx, size_t *len);

int edge_routes_test (bool verbose);
int edge_routes_kafka_test (bool verbose);
int edge_routes_match_test (bool verbose);
int edge_routes_args_test (bool verbose);
int edge_routes_async_test (bool verbose);

#endif

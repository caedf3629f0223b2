/*  edge_clients.h: per-client limits of ferry-edge (edge.client_limits,
    docs/edge.md "Per-client limits").

    A client is its remote address, or the value of a configured request
    header (falling back to the address when the header is absent).  Each
    client has a token bucket (rate, burst) and a count of its requests in
    flight; a request over either limit is answered 429 with Retry-After
    while other clients go on unaffected.

    One table serves every loop of the edge (the limits are per edge, not
    per loop: SO_REUSEPORT spreads one client's connections over the
    loops).  It is split in shards, each behind its own mutex, so loops
    rarely wait for one another.  Memory is bounded: at most `clients`
    entries in all; a client quiet for `idle` is forgotten, and when the
    table is full the least recently seen client is evicted (a client
    evicted with requests in flight starts afresh; the releases of its old
    requests are recognised by their ticket and ignored).  */

#ifndef EDGE_CLIENTS_H_INCLUDED
#define EDGE_CLIENTS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*  Longest header value used as a key (longer ones are cut).  */
#define EDGE_CLIENT_KEY_MAX 128
/*  A key as stored: "a:" or "h:" and the address or header value.  */
#define EDGE_CLIENT_KEY_SIZE (EDGE_CLIENT_KEY_MAX + 3)

typedef struct {
    bool enabled;            /* edge.client_limits is present */
    char *header;            /* key: header:NAME; NULL: the address */
    double rate;             /* requests per second; 0: no rate limit */
    double burst;            /* bucket size (requests) */
    size_t inflight;         /* per client; 0: no limit */
    size_t clients;          /* entries in the table, whole edge */
    int64_t idle_ms;         /* a client quiet this long is forgotten */
} edge_clients_conf_t;

typedef struct _edge_clients_t edge_clients_t;

typedef enum {
    EDGE_CLIENT_OK = 0,
    EDGE_CLIENT_RATE,        /* over its rate */
    EDGE_CLIENT_INFLIGHT     /* too many requests in flight */
} edge_client_verdict_t;

/*  A new table for conf (copied; conf->enabled must be true).  */
edge_clients_t *edge_clients_new (const edge_clients_conf_t *conf);
void edge_clients_destroy (edge_clients_t **self_p);

/*  Admits one request of client key at monotonic time now.  On
    EDGE_CLIENT_OK *ticket is set (never 0) and edge_clients_release must
    follow when the request ends; otherwise *retry_after_s says when to
    come back (at least 1).  Thread-safe.  */
edge_client_verdict_t edge_clients_admit (edge_clients_t *self,
                                          const char *key, int64_t now,
                                          uint64_t *ticket,
                                          unsigned *retry_after_s);
/*  The request admitted with ticket ended.  Thread-safe.  */
void edge_clients_release (edge_clients_t *self, const char *key,
                           uint64_t ticket, int64_t now);
/*  Clients in the table (for tests and logs).  */
size_t edge_clients_size (edge_clients_t *self);

/*  Parses a rate: "N", "N/s" or "N/m" (N a non-negative integer) into
    requests per second.  Returns 0 or -1.  */
int edge_clients_parse_rate (const char *text, double *rate);

int edge_clients_test (bool verbose);

#endif

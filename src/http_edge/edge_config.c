/*  edge_config.c: reads ferry-edge's settings and routes from the
    configuration (see edge_config.h and docs/edge.md).

    Every error names file, line and key through ferry_config_fail, so an
    operator sees "etc/ferry.yaml:41: edge.routes[2].route: unknown method
    'FETCH'" and the edge exits non-zero before it binds anything.  */

#include "ferry.h"
#include "edge_config.h"
#include "kafka.h"
#include "log.h"

#include <ctype.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_MAX_BODY_LIMIT (16ull * 1024 * 1024)

/*  Splits "HOST:PORT" (HOST may be "[v6]", "*" or empty for any address)
    and resolves it numerically.  Returns 0 or -1 with a reason.  */
static int
s_resolve (const char *listen, edge_settings_t *self, char *err,
           size_t errlen)
{
    const char *colon = strrchr (listen, ':');
    if (!colon || colon[1] == '\0') {
        snprintf (err, errlen, "expected HOST:PORT");
        return -1;
    }
    char host[256];
    const char *h = listen;
    size_t hlen = (size_t) (colon - listen);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen >= sizeof host) {
        snprintf (err, errlen, "host name too long");
        return -1;
    }
    memcpy (host, h, hlen);
    host[hlen] = '\0';
    bool any = hlen == 0 || strcmp (host, "*") == 0;
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV | (any ? 0 : AI_NUMERICHOST);
    int rc = getaddrinfo (any ? NULL : host, colon + 1, &hints, &res);
    if (rc != 0) {
        snprintf (err, errlen, "cannot use '%s': %s", listen,
                  gai_strerror (rc));
        return -1;
    }
    memcpy (&self->address, res->ai_addr, res->ai_addrlen);
    self->address_len = res->ai_addrlen;
    freeaddrinfo (res);
    return 0;
}

static void
s_service_note (edge_settings_t *self, const char *service)
{
    for (size_t i = 0; i < self->nservices; i++)
        if (strcmp (self->services[i], service) == 0)
            return;
    self->services = ferry_realloc (
        self->services, (self->nservices + 1) * sizeof *self->services);
    self->services[self->nservices++] = ferry_strdup (service);
}

/*  Reads the `query` map of one route: NAME: TYPE or NAME: {type,
    required}.  Returns 0 or -1 (message set).  */
static int
s_load_query (ferry_config_t *config, const ferry_cnode_t *rnode,
              edge_route_t *route)
{
    const ferry_cnode_t *query = ferry_config_node (config, rnode, "query");
    if (!query)
        return 0;
    if (ferry_cnode_type (query) != FERRY_CNODE_MAP)
        return ferry_config_fail (config, query,
                                  "expected a map of NAME: TYPE");
    for (size_t i = 0; i < ferry_cnode_size (query); i++) {
        const ferry_cnode_t *q = ferry_cnode_child (query, i);
        const char *type_name = NULL;
        bool required = false;
        if (ferry_cnode_type (q) == FERRY_CNODE_SCALAR)
            type_name = ferry_cnode_value (q);
        else if (ferry_cnode_type (q) == FERRY_CNODE_MAP) {
            if (ferry_config_str (config, q, "type", "string", &type_name)
                    != 0
                || ferry_config_bool (config, q, "required", false, &required)
                       != 0)
                return -1;
        }
        else
            return ferry_config_fail (config, q,
                                      "expected a type or {type, required}");
        edge_param_type_t type;
        if (edge_param_type_parse (type_name, &type) != 0)
            return ferry_config_fail (
                config, q, "unknown type '%s' (int, number, bool, string, "
                           "uuid)", type_name ? type_name : "");
        char err[256];
        if (edge_route_add_query (route, ferry_cnode_key (q), type, required,
                                  err, sizeof err)
            != 0)
            return ferry_config_fail (config, q, "%s", err);
    }
    return 0;
}

/*  Reads a route's `transport` (zmq | kafka) and, for Kafka, `topic` and
    `key`.  Returns 0 or -1 (message set).  */
static int
s_load_transport (ferry_config_t *config, const ferry_cnode_t *rnode,
                  edge_route_t *route, edge_settings_t *self)
{
    const char *transport, *topic, *key;
    if (ferry_config_str (config, rnode, "transport", "zmq", &transport) != 0
        || ferry_config_str (config, rnode, "topic", NULL, &topic) != 0
        || ferry_config_str (config, rnode, "key", NULL, &key) != 0)
        return -1;
    if (strcmp (transport, "zmq") == 0) {
        if (topic || key)
            return ferry_config_fail (
                config, ferry_config_node (config, rnode, topic ? "topic"
                                                                : "key"),
                "only a route with transport: kafka has a %s",
                topic ? "topic" : "key");
        return 0;
    }
    if (strcmp (transport, "kafka") != 0)
        return ferry_config_fail (
            config, ferry_config_node (config, rnode, "transport"),
            "unknown transport '%s' (zmq, kafka)", transport);
    char err[320];
    if (edge_route_set_kafka (route, topic, key, err, sizeof err) != 0)
        return ferry_config_fail (
            config, ferry_config_node (config, rnode, topic && !key ? "topic"
                                                     : key ? "key"
                                                           : "transport"),
            "%s", err);
    self->kafka = true;
    if (edge_route_timeout_ms (route) > self->max_timeout_ms)
        self->max_timeout_ms = edge_route_timeout_ms (route);
    return 0;
}

/*  The default reply topic, stable per instance so that a restart reuses
    it rather than leaving topics behind: "ferry.replies.HOST.PORT", the
    host name reduced to the characters a topic name allows.  */
static char *
s_default_reply_topic (const edge_settings_t *self)
{
    char host[128] = "localhost";
    if (gethostname (host, sizeof host) != 0)
        strcpy (host, "localhost");
    host[sizeof host - 1] = '\0';
    for (char *c = host; *c; c++)
        if (!isalnum ((unsigned char) *c) && *c != '-' && *c != '.')
            *c = '_';
    const char *port = strrchr (self->listen, ':');
    char topic[192];
    snprintf (topic, sizeof topic, "ferry.replies.%s.%s", host,
              port ? port + 1 : "0");
    return ferry_strdup (topic);
}

/*  Reads `edge.kafka`: the librdkafka properties (kafka.h) and the reply
    topic.  Returns 0 or -1 (message set).  */
static int
s_load_kafka (ferry_config_t *config, edge_settings_t *self)
{
    const ferry_cnode_t *section = ferry_config_node (config, NULL,
                                                      "edge.kafka");
    if (section && ferry_cnode_type (section) != FERRY_CNODE_MAP)
        return ferry_config_fail (config, section, "expected a map");
    const char *reply_topic = NULL;
    if (section
        && ferry_config_str (config, section, "reply_topic", NULL,
                             &reply_topic)
               != 0)
        return -1;
    char err[512];
    self->kafka_conf = ferry_kafka_conf_new (config, section, err,
                                             sizeof err);
    if (!self->kafka_conf)
        return -1;
    if (reply_topic) {
        if (strlen (reply_topic) > 249 || strspn (reply_topic,
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                "0123456789._-") != strlen (reply_topic) || !*reply_topic)
            return ferry_config_fail (
                config, ferry_config_node (config, section, "reply_topic"),
                "'%s' is not a Kafka topic name", reply_topic);
        self->reply_topic = ferry_strdup (reply_topic);
    }
    else
        self->reply_topic = s_default_reply_topic (self);
    return 0;
}

/*  Reads a route's `mode` (sync | async), `async` and `async_after`.
    Returns 0 or -1 (message set).  */
static int
s_load_async (ferry_config_t *config, const ferry_cnode_t *rnode,
              edge_route_t *route, edge_settings_t *self)
{
    const char *mode_name;
    bool async;
    int64_t after;
    if (ferry_config_str (config, rnode, "mode", "sync", &mode_name) != 0
        || ferry_config_bool (config, rnode, "async", false, &async) != 0
        || ferry_config_duration_ms (config, rnode, "async_after", 1,
                                     3600000, 0, &after)
               != 0)
        return -1;
    edge_mode_t mode;
    if (strcmp (mode_name, "sync") == 0)
        mode = EDGE_MODE_SYNC;
    else if (strcmp (mode_name, "async") == 0)
        mode = EDGE_MODE_ASYNC;
    else
        return ferry_config_fail (config,
                                  ferry_config_node (config, rnode, "mode"),
                                  "unknown mode '%s' (sync, async)",
                                  mode_name);
    char err[256];
    if (edge_route_set_async (route, mode, async, after, err, sizeof err)
        != 0)
        return ferry_config_fail (
            config, ferry_config_node (config, rnode, "async_after"), "%s",
            err);
    if (edge_route_uses_jobs (route))
        self->jobs = true;
    return 0;
}

static int
s_load_routes (ferry_config_t *config, edge_settings_t *self,
               int64_t default_timeout, uint64_t default_max_body)
{
    const ferry_cnode_t *routes = ferry_config_node (config, NULL,
                                                     "edge.routes");
    if (!routes)
        return 0;
    if (ferry_cnode_type (routes) != FERRY_CNODE_SEQ)
        return ferry_config_fail (config, routes, "expected a list of routes");
    for (size_t i = 0; i < ferry_cnode_size (routes); i++) {
        const ferry_cnode_t *r = ferry_cnode_child (routes, i);
        if (ferry_cnode_type (r) != FERRY_CNODE_MAP)
            return ferry_config_fail (config, r, "expected a map");
        const char *tmpl, *service, *operation;
        int64_t timeout;
        uint64_t max_body;
        if (ferry_config_str (config, r, "route", NULL, &tmpl) != 0
            || ferry_config_str (config, r, "service", NULL, &service) != 0
            || ferry_config_str (config, r, "operation", NULL, &operation)
                   != 0
            || ferry_config_duration_ms (config, r, "timeout", 1, 3600000,
                                         default_timeout, &timeout)
                   != 0
            || ferry_config_size (config, r, "max_body", 0, S_MAX_BODY_LIMIT,
                                  default_max_body, &max_body)
                   != 0)
            return -1;
        if (!tmpl)
            return ferry_config_fail (config, r, "missing key 'route'");
        if (!service)
            return ferry_config_fail (config, r, "missing key 'service'");
        if (!operation)
            return ferry_config_fail (config, r, "missing key 'operation'");
        char err[256];
        edge_route_t *route
            = edge_routes_add (self->routes, tmpl, service, operation,
                               timeout, max_body, err, sizeof err);
        if (!route)
            return ferry_config_fail (
                config, ferry_config_node (config, r, "route"), "%s", err);
        if (s_load_query (config, r, route) != 0
            || s_load_transport (config, r, route, self) != 0
            || s_load_async (config, r, route, self) != 0)
            return -1;
        /*  /readyz asks the broker for workers of ZeroMQ services only.  */
        if (edge_route_transport (route) == EDGE_TRANSPORT_ZMQ)
            s_service_note (self, service);
    }
    return 0;
}

/*  Reads `edge.client_limits` (edge_clients.h): absent means no
    per-client limits.  Returns 0 or -1 (message set).  */
static int
s_load_client_limits (ferry_config_t *config, edge_settings_t *self)
{
    const ferry_cnode_t *section = ferry_config_node (config, NULL,
                                                      "edge.client_limits");
    if (!section)
        return 0;
    if (ferry_cnode_type (section) != FERRY_CNODE_MAP)
        return ferry_config_fail (config, section, "expected a map");
    edge_clients_conf_t *c = &self->client_limits;
    const char *key, *rate_text;
    int64_t burst, inflight, clients, idle;
    if (ferry_config_str (config, section, "key", "address", &key) != 0
        || ferry_config_str (config, section, "rate", "0", &rate_text) != 0
        || ferry_config_int (config, section, "burst", 0, 100000000, 0,
                             &burst)
               != 0
        || ferry_config_int (config, section, "inflight", 0, 1000000, 0,
                             &inflight)
               != 0
        || ferry_config_int (config, section, "clients", 16, 10000000,
                             100000, &clients)
               != 0
        || ferry_config_duration_ms (config, section, "idle", 1000,
                                     86400000, 60000, &idle)
               != 0)
        return -1;
    if (strcmp (key, "address") != 0) {
        const char *name = strncmp (key, "header:", 7) == 0 ? key + 7 : "";
        size_t len = strlen (name);
        if (len == 0 || len > 64
            || strspn (name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"
                             "RSTUVWXYZ0123456789-_")
                   != len)
            return ferry_config_fail (
                config, ferry_config_node (config, section, "key"),
                "expected 'address' or 'header:NAME', not '%s'", key);
        c->header = ferry_strdup (name);
    }
    if (edge_clients_parse_rate (rate_text, &c->rate) != 0)
        return ferry_config_fail (
            config, ferry_config_node (config, section, "rate"),
            "expected requests per second: N, N/s or N/m, not '%s'",
            rate_text);
    if (c->rate == 0 && inflight == 0)
        return ferry_config_fail (config, section,
                                  "sets neither rate nor inflight");
    if (burst == 0)
        burst = c->rate < 1 ? 1 : (int64_t) c->rate;
    c->burst = (double) burst;
    c->inflight = (size_t) inflight;
    c->clients = (size_t) clients;
    c->idle_ms = idle;
    c->enabled = true;
    self->clients = edge_clients_new (c);
    return 0;
}

edge_settings_t *
edge_settings_load (ferry_config_t *config)
{
    edge_settings_t *self = ferry_calloc (1, sizeof *self);
    atomic_init (&self->refs, 1);
    self->routes = edge_routes_new ();
    const char *listen, *broker;
    int64_t loops, max_conn, max_inflight, conn_timeout, max_count;
    int64_t default_timeout, liveness, retention;
    const char *database;
    uint64_t max_line, max_total, default_max_body;
    if (ferry_config_str (config, NULL, "edge.listen", "127.0.0.1:8080",
                          &listen)
            != 0
        || ferry_config_str (config, NULL, "edge.broker",
                             "tcp://127.0.0.1:5555", &broker)
               != 0
        || ferry_config_int (config, NULL, "edge.loops", 0, 256, 0, &loops)
               != 0
        || ferry_config_int (config, NULL, "edge.max_connections", 1, 1000000,
                             1024, &max_conn)
               != 0
        || ferry_config_int (config, NULL, "edge.max_inflight", 1, 1000000,
                             8192, &max_inflight)
               != 0
        || ferry_config_duration_ms (config, NULL, "edge.connection_timeout",
                                     1000, 86400000, 30000, &conn_timeout)
               != 0
        || ferry_config_size (config, NULL, "edge.max_header_line", 256,
                              1024 * 1024, 8192, &max_line)
               != 0
        || ferry_config_size (config, NULL, "edge.max_header_total", 1024,
                              4 * 1024 * 1024, 16384, &max_total)
               != 0
        || ferry_config_int (config, NULL, "edge.max_header_count", 1, 10000,
                             100, &max_count)
               != 0
        || ferry_config_duration_ms (config, NULL, "edge.default_timeout", 1,
                                     3600000, 5000, &default_timeout)
               != 0
        || ferry_config_size (config, NULL, "edge.default_max_body", 0,
                              S_MAX_BODY_LIMIT, 1024 * 1024,
                              &default_max_body)
               != 0
        || ferry_config_duration_ms (config, NULL, "broker.heartbeat", 10,
                                     600000, 1000, &self->heartbeat_ms)
               != 0
        || ferry_config_int (config, NULL, "broker.liveness", 1, 1000, 3,
                             &liveness)
               != 0
        || ferry_config_str (config, NULL, "edge.database", NULL, &database)
               != 0
        || ferry_config_duration_ms (config, NULL, "jobs.retention", 1000,
                                     INT64_C (366) * 86400000, 86400000,
                                     &retention)
               != 0)
        goto fail;
    char err[256];
    if (s_resolve (listen, self, err, sizeof err) != 0) {
        ferry_config_fail (config,
                           ferry_config_node (config, NULL, "edge.listen"),
                           "%s", err);
        goto fail;
    }
    if (max_line > max_total) {
        ferry_config_fail (config,
                           ferry_config_node (config, NULL,
                                              "edge.max_header_line"),
                           "larger than edge.max_header_total");
        goto fail;
    }
    self->listen = ferry_strdup (listen);
    self->broker = ferry_strdup (broker);
    if (loops == 0) {
        long cores = sysconf (_SC_NPROCESSORS_ONLN);
        loops = cores > 0 ? cores : 1;
    }
    self->loops = (size_t) loops;
    self->max_connections = (unsigned) max_conn;
    self->max_inflight = (size_t) max_inflight;
    self->connection_timeout_s = (unsigned) ((conn_timeout + 999) / 1000);
    self->max_header_line = (size_t) max_line;
    self->max_header_total = (size_t) max_total;
    self->max_header_count = (size_t) max_count;
    self->liveness = liveness;
    self->job_retention_ms = retention;
    /*  An explicit edge.database serves GET /jobs/{id} even without a
        route of its own that makes jobs.  */
    self->database = ferry_strdup (database ? database : "");
    self->jobs = database && *database;
    if (s_load_routes (config, self, default_timeout, default_max_body) != 0
        || s_load_kafka (config, self) != 0
        || s_load_client_limits (config, self) != 0)
        goto fail;
    return self;
fail:
    edge_settings_destroy (&self);
    return NULL;
}

void
edge_settings_destroy (edge_settings_t **self_p)
{
    edge_settings_t *self = *self_p;
    if (!self)
        return;
    free (self->listen);
    free (self->broker);
    free (self->database);
    edge_routes_destroy (&self->routes);
    for (size_t i = 0; i < self->nservices; i++)
        free (self->services[i]);
    free (self->services);
    if (self->kafka_conf)
        rd_kafka_conf_destroy (self->kafka_conf);
    free (self->reply_topic);
    free (self->client_limits.header);
    edge_clients_destroy (&self->clients);
    free (self);
    *self_p = NULL;
}

edge_settings_t *
edge_settings_ref (edge_settings_t *self)
{
    atomic_fetch_add_explicit (&self->refs, 1, memory_order_relaxed);
    return self;
}

void
edge_settings_unref (edge_settings_t **self_p)
{
    edge_settings_t *self = *self_p;
    *self_p = NULL;
    if (!self)
        return;
    /*  Release: our reads of the record happen before its destruction on
        another thread, which acquires.  */
    if (atomic_fetch_sub_explicit (&self->refs, 1, memory_order_acq_rel)
        == 1)
        edge_settings_destroy (&self);
}

static void
s_keep_str (char **fresh, const char *running, const char *key)
{
    if (strcmp (*fresh, running) == 0)
        return;
    log_warn ("reload: %s changed (%s -> %s): needs a restart, keeping %s",
              key, running, *fresh, running);
    free (*fresh);
    *fresh = ferry_strdup (running);
}

static void
s_keep_int (int64_t *fresh, int64_t running, const char *key)
{
    if (*fresh == running)
        return;
    log_warn ("reload: %s changed (%lld -> %lld): needs a restart, keeping "
              "%lld", key, (long long) running, (long long) *fresh,
              (long long) running);
    *fresh = running;
}

int
edge_settings_adopt (edge_settings_t *fresh, const edge_settings_t *running,
                     char *err, size_t errlen)
{
    if (fresh->kafka && !running->kafka) {
        snprintf (err, errlen, "a route now uses transport: kafka, which the "
                               "running edge has not started: restart it");
        return -1;
    }
    if (fresh->jobs != running->jobs
        || (fresh->jobs && strcmp (fresh->database, running->database))) {
        snprintf (err, errlen, "the job store (async routes, "
                               "edge.database) changed: restart the edge");
        return -1;
    }
    if (fresh->kafka && fresh->max_timeout_ms > running->max_timeout_ms) {
        snprintf (err, errlen, "a Kafka route's timeout (%lld ms) is longer "
                               "than the running producer allows (%lld ms): "
                               "restart the edge",
                  (long long) fresh->max_timeout_ms,
                  (long long) running->max_timeout_ms);
        return -1;
    }
    s_keep_str (&fresh->listen, running->listen, "edge.listen");
    memcpy (&fresh->address, &running->address, sizeof fresh->address);
    fresh->address_len = running->address_len;
    s_keep_str (&fresh->broker, running->broker, "edge.broker");
    /*  The default reply topic follows the port: without Kafka it is
        unused, and with it the change was logged for edge.listen.  */
    free (fresh->reply_topic);
    fresh->reply_topic = ferry_strdup (running->reply_topic);
    int64_t v;
#define S_KEEP(field, type, key)                                            \
    v = (int64_t) fresh->field;                                              \
    s_keep_int (&v, (int64_t) running->field, key);                          \
    fresh->field = (type) v;
    S_KEEP (loops, size_t, "edge.loops");
    S_KEEP (max_connections, unsigned, "edge.max_connections");
    S_KEEP (max_inflight, size_t, "edge.max_inflight");
    S_KEEP (connection_timeout_s, unsigned, "edge.connection_timeout (s)");
    S_KEEP (max_header_line, size_t, "edge.max_header_line");
    S_KEEP (max_header_total, size_t, "edge.max_header_total");
    S_KEEP (max_header_count, size_t, "edge.max_header_count");
    S_KEEP (heartbeat_ms, int64_t, "broker.heartbeat (ms)");
    S_KEEP (liveness, int64_t, "broker.liveness");
    S_KEEP (job_retention_ms, int64_t, "jobs.retention (ms)");
#undef S_KEEP
    fresh->kafka = running->kafka;
    fresh->max_timeout_ms = running->max_timeout_ms;
    return 0;
}

/* ---- tests --------------------------------------------------------------- */

static edge_settings_t *
s_load_text (const char *text, char *err, size_t errlen)
{
    ferry_config_t *config
        = ferry_config_parse (text, strlen (text), "test.yaml", err, errlen);
    if (!config)
        return NULL;
    edge_settings_t *s = edge_settings_load (config);
    if (!s)
        snprintf (err, errlen, "%s", ferry_config_error (config));
    else if (ferry_config_check_unused (config, "edge") != 0) {
        snprintf (err, errlen, "%s", ferry_config_error (config));
        edge_settings_destroy (&s);
    }
    ferry_config_destroy (&config);
    return s;
}

int
edge_config_test (bool verbose)
{
    char err[512] = "";
    const char *good = "broker:\n"
                       "  heartbeat: 250ms\n"
                       "  liveness: 4\n"
                       "edge:\n"
                       "  listen: 127.0.0.1:23001\n"
                       "  loops: 2\n"
                       "  connection_timeout: 1500ms\n"
                       "  default_timeout: 2s\n"
                       "  routes:\n"
                       "    - route: GET /users/{id:int}\n"
                       "      service: app\n"
                       "      operation: get_user\n"
                       "    - route: GET /reports/slow\n"
                       "      service: reports\n"
                       "      operation: slow\n"
                       "      timeout: 30s\n"
                       "      max_body: 64KiB\n"
                       "      query:\n"
                       "        seconds: {type: number, required: true}\n"
                       "        verbose: bool\n"
                       "    - route: POST /users\n"
                       "      service: app\n"
                       "      operation: create_user\n"
                       "      async: true\n"
                       "      async_after: 1500ms\n"
                       "    - route: POST /imports\n"
                       "      service: app\n"
                       "      operation: import\n"
                       "      mode: async\n"
                       "jobs:\n"
                       "  retention: 2h\n";
    const edge_route_t *r = NULL;
    edge_settings_t *s = s_load_text (good, err, sizeof err);
    if (!s)
        fprintf (stderr, "# %s\n", err);
    FERRY_CHECK (s);
    FERRY_CHECK (s->loops == 2);
    FERRY_CHECK (s->heartbeat_ms == 250 && s->liveness == 4);
    FERRY_CHECK (s->connection_timeout_s == 2);
    FERRY_CHECK (s->max_connections == 1024 && s->max_inflight == 8192);
    FERRY_CHECK (s->max_header_line == 8192 && s->max_header_total == 16384);
    FERRY_CHECK (s->max_header_count == 100);
    FERRY_CHECK (s->address.ss_family == AF_INET);
    FERRY_CHECK (edge_routes_size (s->routes) == 4);
    FERRY_CHECK (s->jobs && strcmp (s->database, "") == 0);
    FERRY_CHECK (s->job_retention_ms == 2 * 3600 * 1000);
    r = edge_routes_at (s->routes, 2);
    FERRY_CHECK (edge_route_mode (r) == EDGE_MODE_SYNC);
    FERRY_CHECK (edge_route_async (r));
    FERRY_CHECK (edge_route_async_after_ms (r) == 1500);
    r = edge_routes_at (s->routes, 3);
    FERRY_CHECK (edge_route_mode (r) == EDGE_MODE_ASYNC);
    FERRY_CHECK (edge_route_async (r) && !edge_route_async_after_ms (r));
    r = edge_routes_at (s->routes, 0);
    FERRY_CHECK (!edge_route_uses_jobs (r));
    FERRY_CHECK (s->nservices == 2);
    FERRY_CHECK (strcmp (s->services[0], "app") == 0);
    FERRY_CHECK (strcmp (s->services[1], "reports") == 0);
    FERRY_CHECK (!s->kafka);
    FERRY_CHECK (strncmp (s->reply_topic, "ferry.replies.", 14) == 0);
    FERRY_CHECK (strstr (s->reply_topic, ".23001"));
    r = edge_routes_at (s->routes, 0);
    FERRY_CHECK (edge_route_timeout_ms (r) == 2000);
    FERRY_CHECK (edge_route_max_body (r) == 1024 * 1024);
    r = edge_routes_at (s->routes, 1);
    FERRY_CHECK (edge_route_timeout_ms (r) == 30000);
    FERRY_CHECK (edge_route_max_body (r) == 64 * 1024);
    edge_match_t m;
    FERRY_CHECK (edge_routes_match (s->routes, "GET", "/reports/slow", &m)
                 == 200);
    msgpack_sbuffer buf;
    msgpack_sbuffer_init (&buf);
    FERRY_CHECK (edge_route_pack_args (&m, NULL, NULL, &buf, err, sizeof err)
                 == 400);
    msgpack_sbuffer_destroy (&buf);
    edge_settings_destroy (&s);

    const char *kafka = "edge:\n"
                        "  kafka:\n"
                        "    properties: [bootstrap.servers=127.0.0.1:1]\n"
                        "    reply_topic: edge-1.replies\n"
                        "  routes:\n"
                        "    - route: GET /users/{id:int}\n"
                        "      service: app\n"
                        "      operation: get_user\n"
                        "      transport: kafka\n"
                        "      key: id\n"
                        "      timeout: 7s\n"
                        "    - route: POST /users\n"
                        "      service: app\n"
                        "      operation: create_user\n"
                        "      transport: kafka\n"
                        "      topic: users.in\n";
    s = s_load_text (kafka, err, sizeof err);
    if (!s)
        fprintf (stderr, "# %s\n", err);
    FERRY_CHECK (s);
    FERRY_CHECK (s->kafka && s->kafka_conf && s->max_timeout_ms == 7000);
    FERRY_CHECK (!s->jobs && s->job_retention_ms == 86400000);
    FERRY_CHECK (strcmp (s->reply_topic, "edge-1.replies") == 0);
    r = edge_routes_at (s->routes, 0);
    FERRY_CHECK (edge_route_transport (r) == EDGE_TRANSPORT_KAFKA);
    FERRY_CHECK (strcmp (edge_route_topic (r), "ferry.app.requests") == 0);
    FERRY_CHECK (strcmp (edge_route_key (r), "id") == 0);
    r = edge_routes_at (s->routes, 1);
    FERRY_CHECK (strcmp (edge_route_topic (r), "users.in") == 0);
    FERRY_CHECK (!edge_route_key (r));
    edge_settings_destroy (&s);

    /*  Per-client limits: off by default; a header key; defaults.  */
    s = s_load_text ("edge:\n  listen: 127.0.0.1:1\n", err, sizeof err);
    FERRY_CHECK (s && !s->clients && !s->client_limits.enabled);
    edge_settings_destroy (&s);
    s = s_load_text ("edge:\n  client_limits:\n    key: header:X-Client-Id\n"
                     "    rate: 120/m\n    inflight: 8\n",
                     err, sizeof err);
    if (!s)
        fprintf (stderr, "# %s\n", err);
    FERRY_CHECK (s && s->clients && s->client_limits.enabled);
    FERRY_CHECK (strcmp (s->client_limits.header, "X-Client-Id") == 0);
    FERRY_CHECK (s->client_limits.rate == 2 && s->client_limits.burst == 2);
    FERRY_CHECK (s->client_limits.inflight == 8);
    FERRY_CHECK (s->client_limits.clients == 100000);
    FERRY_CHECK (s->client_limits.idle_ms == 60000);
    /*  Reference counts: the last unref frees (ASan checks).  */
    edge_settings_t *extra = edge_settings_ref (s);
    edge_settings_unref (&extra);
    FERRY_CHECK (!extra && s->clients);

    /*  A reload keeps what needs a restart and refuses what the running
        edge cannot serve.  */
    edge_settings_t *fresh = s_load_text (
        "edge:\n  listen: 127.0.0.1:2\n  max_inflight: 7\n  routes:\n"
        "    - route: GET /x\n      service: a\n      operation: b\n",
        err, sizeof err);
    FERRY_CHECK (fresh);
    FERRY_CHECK (edge_settings_adopt (fresh, s, err, sizeof err) == 0);
    FERRY_CHECK (strcmp (fresh->listen, s->listen) == 0);
    FERRY_CHECK (fresh->max_inflight == s->max_inflight);
    FERRY_CHECK (edge_routes_size (fresh->routes) == 1 && !fresh->clients);
    edge_settings_unref (&fresh);
    fresh = s_load_text ("edge:\n  routes:\n    - route: POST /x\n"
                         "      service: a\n      operation: b\n"
                         "      mode: async\n",
                         err, sizeof err);
    FERRY_CHECK (fresh);
    FERRY_CHECK (edge_settings_adopt (fresh, s, err, sizeof err) != 0);
    FERRY_CHECK (strstr (err, "job store"));
    edge_settings_unref (&fresh);
    edge_settings_unref (&s);

    /*  Errors name the line and the key.  */
    struct {
        const char *text;
        const char *expect;
    } bad[] = {
        {"edge:\n  routes:\n    - route: FETCH /x\n      service: a\n"
         "      operation: b\n",
         "test.yaml:3"},
        {"edge:\n  routes:\n    - route: GET /x\n      operation: b\n",
         "service"},
        {"edge:\n  routes:\n    - route: GET /x\n      service: a\n"
         "      operation: b\n    - route: GET /x\n      service: a\n"
         "      operation: c\n",
         "duplicates"},
        {"edge:\n  routes:\n    - route: GET /x\n      service: a\n"
         "      operation: b\n      query:\n        n: float\n",
         "test.yaml:7"},
        {"edge:\n  listen: nowhere\n", "edge.listen"},
        {"edge:\n  lisen: 127.0.0.1:1\n", "lisen"},
        {"edge:\n  routes:\n    - route: GET /x\n      service: a\n"
         "      operation: b\n      timout: 1s\n",
         "timout"},
        {"edge:\n  routes:\n    - route: GET /x\n      service: a\n"
         "      operation: b\n      transport: amqp\n",
         "test.yaml:6: edge.routes[0].transport: unknown transport 'amqp'"},
        {"edge:\n  routes:\n    - route: GET /x\n      service: a\n"
         "      operation: b\n      topic: t\n",
         "only a route with transport: kafka has a topic"},
        {"edge:\n  routes:\n    - route: GET /x/{id}\n      service: a\n"
         "      operation: b\n      transport: kafka\n      key: nope\n",
         "edge.routes[0].key: key 'nope' is not a path or query parameter"},
        {"edge:\n  routes:\n    - route: GET /x\n      service: a\n"
         "      operation: b\n      transport: kafka\n      topic: a/b\n",
         "edge.routes[0].topic: 'a/b' is not a Kafka topic name"},
        {"edge:\n  kafka:\n    properties: [no.such.thing=1]\n",
         "no.such.thing"},
        {"edge:\n  kafka:\n    reply_topic: \"r t\"\n",
         "edge.kafka.reply_topic: 'r t' is not a Kafka topic name"},
        {"edge:\n  kafka:\n    reply_topc: x\n", "reply_topc"},
        {"edge:\n  routes:\n    - route: POST /x\n      service: a\n"
         "      operation: b\n      mode: later\n",
         "test.yaml:6: edge.routes[0].mode: unknown mode 'later'"},
        {"edge:\n  routes:\n    - route: POST /x\n      service: a\n"
         "      operation: b\n      async: maybe\n",
         "test.yaml:6: edge.routes[0].async"},
        {"edge:\n  routes:\n    - route: POST /x\n      service: a\n"
         "      operation: b\n      mode: async\n      async_after: 1s\n",
         "test.yaml:7: edge.routes[0].async_after: async_after is for routes "
         "in sync mode"},
        {"edge:\n  routes:\n    - route: POST /x\n      service: a\n"
         "      operation: b\n      timeout: 2s\n      async_after: 2s\n",
         "test.yaml:7: edge.routes[0].async_after: async_after (2000 ms) "
         "must be shorter"},
        {"edge:\n  routes:\n    - route: POST /x\n      service: a\n"
         "      operation: b\n      async_after: soon\n",
         "test.yaml:6: edge.routes[0].async_after"},
        {"edge:\n  database: [a]\n", "test.yaml:2: edge.database"},
        {"jobs:\n  retention: forever\n", "test.yaml:2: jobs.retention"},
        {"edge:\n  client_limits:\n    key: cookie\n    rate: 1\n",
         "test.yaml:3: edge.client_limits.key: expected 'address' or "
         "'header:NAME'"},
        {"edge:\n  client_limits:\n    key: \"header:X Y\"\n    rate: 1\n",
         "edge.client_limits.key"},
        {"edge:\n  client_limits:\n    rate: 5/h\n",
         "test.yaml:3: edge.client_limits.rate: expected requests per second"},
        {"edge:\n  client_limits:\n    burst: 5\n",
         "sets neither rate nor inflight"},
        {"edge:\n  client_limits:\n    rate: 5\n    inflite: 2\n",
         "inflite"},
        {"edge:\n  client_limits: 5\n", "edge.client_limits: expected a map"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        s = s_load_text (bad[i].text, err, sizeof err);
        if (s || !strstr (err, bad[i].expect)) {
            fprintf (stderr, "# case %zu: got '%s', want '%s'\n", i, err,
                     bad[i].expect);
            edge_settings_destroy (&s);
            return 1;
        }
        if (verbose)
            printf ("# %s\n", err);
    }
    return 0;
}

/*  settings.c: the broker's settings, read from the broker section of the
    configuration (docs/broker.md lists the keys) or set by tests.

    Kept apart from the actor so the actor reads as message handling: the
    actor takes a private copy (broker_settings_dup) when it starts and
    only reads it afterwards, from its own thread.  */

#include "settings.h"
#include "proto.h"

#include <string.h>

struct _broker_settings_t {
    char *frontend;              /* endpoint edges connect to */
    char *backend;               /* endpoint workers connect to */
    char *control;               /* endpoint ferryctl asks, "" = none */
    int64_t heartbeat;           /* ms between heartbeats */
    int64_t liveness;            /* heartbeats missed before a peer is dead */
    int64_t no_worker_grace;     /* ms a request waits for a first worker */
    uint64_t max_message;        /* ZMQ_MAXMSGSIZE on both ROUTERs */
    size_t max_inflight;         /* dispatched and unanswered, whole broker */
    size_t default_queue_limit;  /* per service unless listed in limits */
    int64_t max_deaths;          /* worker deaths a request may witness */
    int64_t drain_timeout;       /* ms a stopping broker waits for replies */
    zhashx_t *limits;            /* service name -> size_t * queue limit */
};

static void
s_free_item (void **item_p)
{
    free (*item_p);
    *item_p = NULL;
}

broker_settings_t *
broker_settings_new (void)
{
    broker_settings_t *self = ferry_calloc (1, sizeof *self);
    self->frontend = ferry_strdup ("tcp://127.0.0.1:5555");
    self->backend = ferry_strdup ("tcp://127.0.0.1:5556");
    /*  Off unless configured: a second broker on the same host (tests,
        benchmarks) must not fight over a port it did not ask for.  */
    self->control = ferry_strdup ("");
    self->heartbeat = 1000;
    self->liveness = 3;
    self->no_worker_grace = 2000;
    self->max_message = FERRY_MAX_MESSAGE_DEFAULT;
    self->max_inflight = 100000;
    self->default_queue_limit = 1000;
    self->max_deaths = 2;
    self->drain_timeout = 5000;
    self->limits = zhashx_new ();
    assert (self->limits);
    zhashx_set_destructor (self->limits, s_free_item);
    return self;
}

void
broker_settings_destroy (broker_settings_t **self_p)
{
    assert (self_p);
    broker_settings_t *self = *self_p;
    if (self) {
        zhashx_destroy (&self->limits);
        free (self->frontend);
        free (self->backend);
        free (self->control);
        free (self);
        *self_p = NULL;
    }
}

broker_settings_t *
broker_settings_dup (const broker_settings_t *src)
{
    broker_settings_t *self = broker_settings_new ();
    free (self->frontend);
    free (self->backend);
    free (self->control);
    self->frontend = ferry_strdup (src->frontend);
    self->backend = ferry_strdup (src->backend);
    self->control = ferry_strdup (src->control);
    self->heartbeat = src->heartbeat;
    self->liveness = src->liveness;
    self->no_worker_grace = src->no_worker_grace;
    self->max_message = src->max_message;
    self->max_inflight = src->max_inflight;
    self->default_queue_limit = src->default_queue_limit;
    self->max_deaths = src->max_deaths;
    self->drain_timeout = src->drain_timeout;
    for (size_t *limit = (size_t *) zhashx_first (src->limits); limit;
         limit = (size_t *) zhashx_next (src->limits))
        broker_settings_set_queue_limit (
            self, (const char *) zhashx_cursor (src->limits), *limit);
    return self;
}

bool
broker_name_valid (const char *name)
{
    size_t len = strlen (name);
    if (len == 0 || len > FERRY_NAME_MAX)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
              || (*p >= '0' && *p <= '9') || *p == '_' || *p == '.'
              || *p == '-'))
            return false;
    return true;
}

int
broker_settings_load (broker_settings_t *self, ferry_config_t *config)
{
    const char *frontend, *backend, *control;
    int64_t heartbeat, liveness, grace, inflight, dflt_limit, deaths, drain;
    uint64_t max_message;
    if (ferry_config_str (config, NULL, "broker.frontend", self->frontend,
                          &frontend)
        || ferry_config_str (config, NULL, "broker.backend", self->backend,
                             &backend)
        || ferry_config_str (config, NULL, "broker.control", self->control,
                             &control)
        || ferry_config_duration_ms (config, NULL, "broker.heartbeat", 10,
                                     3600000, self->heartbeat, &heartbeat)
        || ferry_config_int (config, NULL, "broker.liveness", 1, 1000,
                             self->liveness, &liveness)
        || ferry_config_duration_ms (config, NULL, "broker.no_worker_grace",
                                     0, 3600000, self->no_worker_grace,
                                     &grace)
        || ferry_config_size (config, NULL, "broker.max_message", 1024,
                              (uint64_t) INT64_MAX, self->max_message,
                              &max_message)
        || ferry_config_int (config, NULL, "broker.max_inflight", 1,
                             100000000, (int64_t) self->max_inflight,
                             &inflight)
        || ferry_config_int (config, NULL, "broker.default_queue_limit", 0,
                             100000000, (int64_t) self->default_queue_limit,
                             &dflt_limit)
        || ferry_config_int (config, NULL, "broker.max_deaths", 1, 1000,
                             self->max_deaths, &deaths)
        || ferry_config_duration_ms (config, NULL, "broker.drain_timeout", 0,
                                     3600000, self->drain_timeout, &drain))
        return -1;
    /*  Copy before replacing: the strings may be our own defaults.  */
    char *fe = ferry_strdup (frontend), *be = ferry_strdup (backend);
    char *ctl = ferry_strdup (control);
    free (self->frontend);
    free (self->backend);
    free (self->control);
    self->frontend = fe;
    self->backend = be;
    self->control = ctl;
    self->heartbeat = heartbeat;
    self->liveness = liveness;
    self->no_worker_grace = grace;
    self->max_message = max_message;
    self->max_inflight = (size_t) inflight;
    self->default_queue_limit = (size_t) dflt_limit;
    self->max_deaths = deaths;
    self->drain_timeout = drain;

    const ferry_cnode_t *services
        = ferry_config_node (config, NULL, "broker.services");
    if (!services)
        return 0;
    if (ferry_cnode_type (services) != FERRY_CNODE_MAP)
        return ferry_config_fail (config, services, "expected a map");
    for (size_t i = 0; i < ferry_cnode_size (services); i++) {
        const ferry_cnode_t *svc = ferry_cnode_child (services, i);
        const char *name = ferry_cnode_key (svc);
        if (!name || !broker_name_valid (name))
            return ferry_config_fail (config, svc,
                                      "service names are [A-Za-z0-9_.-]"
                                      "{1,64}");
        if (ferry_cnode_type (svc) != FERRY_CNODE_MAP)
            return ferry_config_fail (config, svc, "expected a map");
        int64_t limit;
        if (ferry_config_int (config, svc, "queue_limit", 0, 100000000,
                              (int64_t) self->default_queue_limit, &limit))
            return -1;
        broker_settings_set_queue_limit (self, name, (size_t) limit);
    }
    return 0;
}

const char *
broker_settings_frontend (const broker_settings_t *self)
{
    return self->frontend;
}

const char *
broker_settings_backend (const broker_settings_t *self)
{
    return self->backend;
}

const char *
broker_settings_control (const broker_settings_t *self)
{
    return self->control;
}

void
broker_settings_set_control (broker_settings_t *self, const char *endpoint)
{
    char *copy = ferry_strdup (endpoint);
    free (self->control);
    self->control = copy;
}

int64_t
broker_settings_heartbeat (const broker_settings_t *self)
{
    return self->heartbeat;
}

int64_t
broker_settings_liveness (const broker_settings_t *self)
{
    return self->liveness;
}

int64_t
broker_settings_max_deaths (const broker_settings_t *self)
{
    return self->max_deaths;
}

void
broker_settings_set_max_deaths (broker_settings_t *self, int64_t n)
{
    assert (n > 0);
    self->max_deaths = n;
}

int64_t
broker_settings_drain_timeout (const broker_settings_t *self)
{
    return self->drain_timeout;
}

void
broker_settings_set_drain_timeout (broker_settings_t *self, int64_t ms)
{
    assert (ms >= 0);
    self->drain_timeout = ms;
}

int64_t
broker_settings_no_worker_grace (const broker_settings_t *self)
{
    return self->no_worker_grace;
}

uint64_t
broker_settings_max_message (const broker_settings_t *self)
{
    return self->max_message;
}

size_t
broker_settings_max_inflight (const broker_settings_t *self)
{
    return self->max_inflight;
}

size_t
broker_settings_queue_limit (const broker_settings_t *self,
                             const char *service)
{
    size_t *limit = (size_t *) zhashx_lookup (self->limits, service);
    return limit ? *limit : self->default_queue_limit;
}

void
broker_settings_set_heartbeat (broker_settings_t *self, int64_t ms,
                               int64_t liveness)
{
    assert (ms > 0 && liveness > 0);
    self->heartbeat = ms;
    self->liveness = liveness;
}

void
broker_settings_set_no_worker_grace (broker_settings_t *self, int64_t ms)
{
    assert (ms >= 0);
    self->no_worker_grace = ms;
}

void
broker_settings_set_max_inflight (broker_settings_t *self, size_t n)
{
    assert (n > 0);
    self->max_inflight = n;
}

void
broker_settings_set_max_message (broker_settings_t *self, uint64_t n)
{
    self->max_message = n;
}

void
broker_settings_set_default_queue_limit (broker_settings_t *self, size_t n)
{
    self->default_queue_limit = n;
}

void
broker_settings_set_queue_limit (broker_settings_t *self,
                                 const char *service, size_t limit)
{
    size_t *value = ferry_malloc (sizeof *value);
    *value = limit;
    zhashx_update (self->limits, service, value);
}

/* ---- test ----------------------------------------------------------------- */

int
broker_settings_test (bool verbose)
{
    (void) verbose;
    const char *yaml
        = "broker:\n"
          "  frontend: tcp://127.0.0.1:21001\n"
          "  control: tcp://127.0.0.1:21003\n"
          "  heartbeat: 250ms\n"
          "  liveness: 4\n"
          "  no_worker_grace: 1s\n"
          "  drain_timeout: 1500ms\n"
          "  max_message: 1MiB\n"
          "  default_queue_limit: 7\n"
          "  services:\n"
          "    app: {queue_limit: 3}\n"
          "    reports: {}\n";
    char err[256];
    ferry_config_t *config = ferry_config_parse (yaml, strlen (yaml), "t.yaml",
                                                 err, sizeof err);
    FERRY_CHECK (config);
    broker_settings_t *settings = broker_settings_new ();
    FERRY_CHECK (broker_settings_load (settings, config) == 0);
    FERRY_CHECK (ferry_config_check_unused (config, "broker") == 0);
    FERRY_CHECK (streq (broker_settings_frontend (settings),
                        "tcp://127.0.0.1:21001"));
    FERRY_CHECK (streq (broker_settings_backend (settings),
                        "tcp://127.0.0.1:5556"));
    FERRY_CHECK (streq (broker_settings_control (settings),
                        "tcp://127.0.0.1:21003"));
    broker_settings_t *copy = broker_settings_dup (settings);
    FERRY_CHECK (streq (broker_settings_control (copy),
                        "tcp://127.0.0.1:21003"));
    broker_settings_destroy (&copy);
    copy = broker_settings_new ();
    FERRY_CHECK (streq (broker_settings_control (copy), ""));
    broker_settings_destroy (&copy);
    FERRY_CHECK (settings->heartbeat == 250 && settings->liveness == 4);
    FERRY_CHECK (settings->no_worker_grace == 1000);
    FERRY_CHECK (broker_settings_drain_timeout (settings) == 1500);
    FERRY_CHECK (settings->max_message == 1024 * 1024);
    FERRY_CHECK (settings->max_inflight == 100000);
    FERRY_CHECK (settings->default_queue_limit == 7);
    size_t *limit = (size_t *) zhashx_lookup (settings->limits, "app");
    FERRY_CHECK (limit && *limit == 3);
    limit = (size_t *) zhashx_lookup (settings->limits, "reports");
    FERRY_CHECK (limit && *limit == 7);
    broker_settings_destroy (&settings);
    broker_settings_destroy (&settings);
    ferry_config_destroy (&config);

    /*  Errors name the key.  */
    const char *bad[] = {
        "broker:\n  liveness: 0\n",
        "broker:\n  heartbeat: soon\n",
        "broker:\n  services:\n    \"a b\": {queue_limit: 1}\n",
        "broker:\n  services:\n    app: {queue_limit: -1}\n",
        "broker:\n  services: [app]\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        config = ferry_config_parse (bad[i], strlen (bad[i]), "t.yaml", err,
                                     sizeof err);
        FERRY_CHECK (config);
        settings = broker_settings_new ();
        FERRY_CHECK (broker_settings_load (settings, config) == -1);
        FERRY_CHECK (strstr (ferry_config_error (config), "t.yaml:"));
        broker_settings_destroy (&settings);
        ferry_config_destroy (&config);
    }
    FERRY_CHECK (broker_name_valid ("app.v2_x-y"));
    FERRY_CHECK (!broker_name_valid (""));
    FERRY_CHECK (!broker_name_valid ("a b"));
    FERRY_CHECK (!broker_name_valid ("x/y"));
    return 0;
}

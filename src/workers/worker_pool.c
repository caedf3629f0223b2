/*  worker_pool.c: a pool of worker actors (the bulkhead).

    Owned by the main thread.  The pool reads its section of the config,
    keeps the operations and the actor arguments alive for as long as the
    actors run, and counts the CONNECTED / DISCONNECTED events they send
    so main.c can tell systemd when the worker is ready.  */

#include "ferry.h"
#include "log.h"
#include "proto.h"
#include "worker_actor.h"
#include "worker_kafka.h"
#include "worker_pool.h"

#include <czmq.h>
#include <stdlib.h>
#include <string.h>

struct _worker_pool_t {
    char *name;
    char *service;
    char *conninfo;
    char *broker;
    size_t size;                 /* actors */
    unsigned credit;             /* per actor */
    worker_ops_t *ops;           /* shared by the actors, read-only */
    worker_kafka_t *kafka;       /* the pool's Kafka consumer, or NULL */
    worker_jobs_settings_t jobs; /* the actors point here */
    worker_breaker_t *breaker;   /* shared by the actors */
    char *crash_after_commit;    /* test-only fault hook, or NULL */
    char *abort_operation;       /* test-only fault hook, or NULL */
    char *process;               /* "<hostname>:<pid>", or NULL */
    worker_actor_args_t base;    /* what every actor's args start from */
    /*  Per actor, `cap` slots of which `size` are used.  Each args is
        its own allocation: a running actor keeps a pointer to it, so
        growing the arrays must not move it.  */
    size_t cap;
    worker_actor_args_t **args;
    zactor_t **actors;
    bool *up;                    /* actor connected now */
    bool *ever;                  /* actor connected at least once */
    bool started;
    bool stopping;
};

static bool
s_name_ok (const char *s)
{
    size_t n = strlen (s);
    if (n == 0 || n > FERRY_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(strchr ("_.-", s[i]) || (s[i] >= 'a' && s[i] <= 'z')
              || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9')))
            return false;
    return true;
}

/*  Makes room for n actors in the per-actor arrays; new slots are
    empty (no args, no actor).  */
static void
s_reserve (worker_pool_t *self, size_t n)
{
    if (n <= self->cap)
        return;
    self->args = ferry_realloc (self->args, n * sizeof *self->args);
    self->actors = ferry_realloc (self->actors, n * sizeof *self->actors);
    self->up = ferry_realloc (self->up, n * sizeof *self->up);
    self->ever = ferry_realloc (self->ever, n * sizeof *self->ever);
    for (size_t i = self->cap; i < n; i++) {
        self->args[i] = NULL;
        self->actors[i] = NULL;
        self->up[i] = self->ever[i] = false;
    }
    self->cap = n;
}

/*  Starts actor i, whose slot is reserved and empty.  */
static void
s_actor_start (worker_pool_t *self, size_t i)
{
    if (!self->args[i]) {
        self->args[i] = ferry_malloc (sizeof *self->args[i]);
        *self->args[i] = self->base;
        self->args[i]->index = (unsigned) i;
    }
    self->up[i] = self->ever[i] = false;
    self->actors[i] = zactor_new (worker_actor, self->args[i]);
    assert (self->actors[i]);
}

worker_pool_t *
worker_pool_new (ferry_config_t *config, const ferry_cnode_t *node,
                 const worker_settings_t *settings)
{
    const char *name = ferry_cnode_key (node);
    if (!name || !s_name_ok (name)) {
        ferry_config_fail (config, node, "pool names are [A-Za-z0-9_.-]{1,64}");
        return NULL;
    }
    if (ferry_cnode_type (node) != FERRY_CNODE_MAP) {
        ferry_config_fail (config, node, "expected a map");
        return NULL;
    }
    worker_pool_t *self = ferry_calloc (1, sizeof *self);
    self->name = ferry_strdup (name);
    const char *service, *database;
    int64_t actors, credit;
    if (ferry_config_str (config, node, "service", name, &service)
        || ferry_config_int (config, node, "actors", 1, 1024, 1, &actors)
        || ferry_config_int (config, node, "credit", 1, 1000, 1, &credit)
        || ferry_config_str (config, node, "database", settings->database,
                             &database))
        goto fail;
    if (!s_name_ok (service)) {
        ferry_config_fail (config, ferry_config_node (config, node, "service"),
                           "service names are [A-Za-z0-9_.-]{1,64}");
        goto fail;
    }
    self->service = ferry_strdup (service);
    self->conninfo = ferry_strdup (database ? database : "");
    self->broker = ferry_strdup (settings->broker);
    self->size = (size_t) actors;
    self->credit = (unsigned) credit;
    self->ops = worker_ops_new (config,
                                ferry_config_node (config, node, "operations"));
    if (!self->ops) {
        if (!ferry_config_node (config, node, "operations"))
            ferry_config_fail (config, node, "missing operations");
        goto fail;
    }
    worker_breaker_settings_t breaker;
    if (worker_breaker_settings_load (config, node, &breaker))
        goto fail;
    self->breaker = worker_breaker_new (self->name, &breaker);
    if (!self->breaker)
        goto fail;
    const ferry_cnode_t *kafka = ferry_config_node (config, node, "kafka");
    if (kafka) {
        self->kafka = worker_kafka_new (config, kafka, self->name, self->ops,
                                        self->conninfo, self->breaker);
        if (!self->kafka)
            goto fail;
    }
    self->jobs = settings->jobs;
    if (settings->crash_after_commit)
        self->crash_after_commit = ferry_strdup (settings->crash_after_commit);
    if (settings->abort_operation)
        self->abort_operation = ferry_strdup (settings->abort_operation);
    if (settings->process)
        self->process = ferry_strdup (settings->process);
    worker_actor_args_t *a = &self->base;
    a->pool = self->name;
    a->service = self->service;
    a->credit = self->credit;
    a->ops = self->ops;
    a->conninfo = self->conninfo;
    a->broker = self->broker;
    a->heartbeat_ms = settings->heartbeat_ms;
    a->liveness = settings->liveness;
    a->drain_ms = settings->drain_ms;
    a->breaker = self->breaker;
    a->jobs = &self->jobs;
    a->crash_after_commit = self->crash_after_commit;
    a->abort_operation = self->abort_operation;
    a->process = self->process;
    s_reserve (self, self->size);
    return self;
fail:
    worker_pool_destroy (&self);
    return NULL;
}

void
worker_pool_destroy (worker_pool_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    worker_pool_t *self = *self_p;
    for (size_t i = 0; i < self->cap; i++)
        zactor_destroy (&self->actors[i]);
    worker_kafka_destroy (&self->kafka);
    /*  After the actors: they use it to the end.  */
    worker_breaker_destroy (&self->breaker);
    for (size_t i = 0; i < self->cap; i++)
        free (self->args[i]);
    free (self->actors);
    free (self->args);
    free (self->up);
    free (self->ever);
    worker_ops_destroy (&self->ops);
    free (self->name);
    free (self->service);
    free (self->conninfo);
    free (self->broker);
    free (self->crash_after_commit);
    free (self->abort_operation);
    free (self->process);
    free (self);
    *self_p = NULL;
}

const char *
worker_pool_name (const worker_pool_t *self)
{
    return self->name;
}

size_t
worker_pool_size (const worker_pool_t *self)
{
    return self->size;
}

int
worker_pool_start (worker_pool_t *self)
{
    if (self->kafka && worker_kafka_start (self->kafka))
        return -1;
    for (size_t i = 0; i < self->size; i++)
        s_actor_start (self, i);
    self->started = true;
    log_info ("pool started pool=%s service=%s actors=%zu credit=%u",
              self->name, self->service, self->size, self->credit);
    return 0;
}

void
worker_pool_stop (worker_pool_t *self)
{
    if (self->stopping)
        return;
    self->stopping = true;
    if (self->kafka)
        worker_kafka_stop (self->kafka);
    /*  zactor_destroy sends $TERM again and waits for the actor's exit
        signal, which it finds already queued.  */
    for (size_t i = 0; i < self->cap; i++)
        if (self->actors[i])
            zstr_send (self->actors[i], "$TERM");
}

void
worker_pool_resize (worker_pool_t *self, size_t size)
{
    assert (size >= 1);
    if (!self->started || self->stopping || size == self->size)
        return;
    size_t old = self->size;
    if (size > old) {
        s_reserve (self, size);
        for (size_t i = old; i < size; i++)
            s_actor_start (self, i);
        self->size = size;
        log_info ("pool grown pool=%s actors=%zu was=%zu", self->name, size,
                  old);
        return;
    }
    /*  The last ones go (actor 0, which runs the cleanup, stays).  All
        are told first so that they drain in parallel; zactor_destroy
        then waits for each drain, as at SIGTERM.  */
    self->size = size;
    for (size_t i = size; i < old; i++)
        zstr_send (self->actors[i], "$TERM");
    for (size_t i = size; i < old; i++) {
        zactor_destroy (&self->actors[i]);
        self->up[i] = self->ever[i] = false;
    }
    log_info ("pool shrunk pool=%s actors=%zu was=%zu", self->name, size,
              old);
}

worker_breaker_state_t
worker_pool_breaker (worker_pool_t *self)
{
    return worker_breaker_state (self->breaker, ferry_mono_ms ());
}

size_t
worker_pool_poll (worker_pool_t *self, size_t *ever)
{
    size_t up = 0, once = 0;
    for (size_t i = 0; i < self->size; i++) {
        zactor_t *actor = self->actors[i];
        while (actor && !self->stopping
               && (zsock_events (zactor_sock (actor)) & ZMQ_POLLIN)) {
            char *event = zstr_recv (actor);
            if (!event)
                break;
            if (strcmp (event, "CONNECTED") == 0)
                self->up[i] = self->ever[i] = true;
            else if (strcmp (event, "DISCONNECTED") == 0)
                self->up[i] = false;
            free (event);
        }
        up += self->up[i];
        once += self->ever[i];
    }
    if (ever)
        *ever = once;
    return up;
}

/* ---- tests -------------------------------------------------------------- */

int
worker_pool_config_test (bool verbose)
{
    static const char yaml[]
        = "pools:\n"
          "  app:\n"
          "    actors: 3\n"
          "    credit: 2\n"
          "    operations:\n"
          "      ping: {sql: SELECT 1 AS one, result: one}\n"
          "  reports:\n"
          "    service: rep\n"
          "    database: dbname=x\n"
          "    operations:\n"
          "      ping: {sql: SELECT 1 AS one, result: one}\n"
          "  bad:\n"
          "    actors: 0\n"
          "    operations:\n"
          "      ping: {sql: SELECT 1, result: one}\n"
          "  noops:\n"
          "    actors: 1\n";
    char err[256];
    ferry_config_t *config
        = ferry_config_parse (yaml, strlen (yaml), "p.yaml", err, sizeof err);
    FERRY_CHECK (config);
    worker_settings_t settings = {.broker = "tcp://127.0.0.1:1",
                                  .heartbeat_ms = 1000,
                                  .liveness = 3,
                                  .database = "dbname=default"};
    worker_pool_t *app = worker_pool_new (
        config, ferry_config_node (config, NULL, "pools.app"), &settings);
    FERRY_CHECK (app);
    FERRY_CHECK (strcmp (worker_pool_name (app), "app") == 0);
    FERRY_CHECK (worker_pool_size (app) == 3);
    FERRY_CHECK (strcmp (app->service, "app") == 0 && app->credit == 2);
    FERRY_CHECK (strcmp (app->conninfo, "dbname=default") == 0);
    worker_pool_destroy (&app);
    worker_pool_destroy (&app);

    worker_pool_t *rep = worker_pool_new (
        config, ferry_config_node (config, NULL, "pools.reports"), &settings);
    FERRY_CHECK (rep);
    FERRY_CHECK (strcmp (rep->service, "rep") == 0);
    FERRY_CHECK (strcmp (rep->conninfo, "dbname=x") == 0);
    FERRY_CHECK (rep->size == 1 && rep->credit == 1);
    worker_pool_destroy (&rep);

    worker_pool_t *bad = worker_pool_new (
        config, ferry_config_node (config, NULL, "pools.bad"), &settings);
    FERRY_CHECK (!bad);
    if (verbose)
        printf ("# %s\n", ferry_config_error (config));
    FERRY_CHECK (strstr (ferry_config_error (config), "p.yaml:13"));
    bad = worker_pool_new (
        config, ferry_config_node (config, NULL, "pools.noops"), &settings);
    FERRY_CHECK (!bad);
    FERRY_CHECK (strstr (ferry_config_error (config), "operations"));
    ferry_config_destroy (&config);
    return 0;
}

/*  main.c: ferry-worker, the process around the pools.

    Reads the configuration, builds and validates every pool in `pools:`
    (so a typo in a pool this process does not run still fails at start),
    starts the selected ones, and tells systemd READY=1 once every actor
    has connected to PostgreSQL once.  Signal handlers only set a flag;
    this loop checks it a few times a second while it collects the
    actors' connection events.  On SIGTERM every actor drains: it sends
    BYE (no new work), hands the messages it has not started back to the
    broker, finishes those in its pipeline (up to worker.drain_timeout)
    and exits.  */

#include "config.h"
#include "daemon.h"
#include "ferry.h"
#include "log.h"
#include "worker_pool.h"

#include <czmq.h>
#include <stdlib.h>
#include <string.h>

static const ferry_flag_t s_flags[] = {
    {"pool", "worker.pool", "pools to run, comma-separated (default: all)"},
    {"database", "worker.database",
     "libpq connection string (default: the PG* environment)"},
    {"broker", "worker.broker",
     "broker endpoint to connect to (default: broker.backend)"},
    {NULL, NULL, NULL},
};

#define POOLS_MAX 64

/*  True when name is one of the comma-separated names in list.  */
static bool
s_listed (const char *list, const char *name)
{
    size_t n = strlen (name);
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',' && *end != ' ')
            end++;
        if ((size_t) (end - p) == n && strncmp (p, name, n) == 0)
            return true;
        p = end;
    }
    return false;
}

/*  Reads everything; fills pools[] (all configured pools) and run[]
    (those this process runs).  Returns 0 or -1 (message in config).  */
static int
s_load (ferry_config_t *config, worker_settings_t *settings,
        worker_pool_t **pools, bool *run, size_t *count)
{
    const char *selection, *database, *backend, *broker;
    int64_t heartbeat, liveness, drain;
    if (ferry_daemon_log_setup (config, "ferry-worker")
        || ferry_config_str (config, NULL, "worker.pool", "", &selection)
        || ferry_config_str (config, NULL, "worker.database", "", &database)
        || ferry_config_str (config, NULL, "broker.backend",
                             "tcp://127.0.0.1:5556", &backend)
        || ferry_config_str (config, NULL, "worker.broker", backend, &broker)
        || ferry_config_duration_ms (config, NULL, "broker.heartbeat", 10,
                                     60000, 1000, &heartbeat)
        || ferry_config_int (config, NULL, "broker.liveness", 1, 100, 3,
                             &liveness)
        || ferry_config_duration_ms (config, NULL, "worker.drain_timeout", 0,
                                     3600000, 5000, &drain)
        || worker_jobs_settings_load (config, &settings->jobs))
        return -1;
    /*  Test-only fault hook (docs/worker.md): never set in production.  */
    const char *crash = getenv ("FERRY_TEST_CRASH_AFTER_COMMIT");
    settings->crash_after_commit = crash && *crash ? crash : NULL;
    if (settings->crash_after_commit)
        log_warn ("FERRY_TEST_CRASH_AFTER_COMMIT is set: the worker kills "
                  "itself after committing operation=%s",
                  settings->crash_after_commit);
    settings->broker = broker;
    settings->database = database ? database : "";
    settings->heartbeat_ms = heartbeat;
    settings->liveness = (unsigned) liveness;
    settings->drain_ms = drain;

    /*  A DEALER refuses a malformed endpoint at connect: find out here,
        where it can still be a config error.  */
    zsock_t *probe = zsock_new (ZMQ_DEALER);
    int ok = probe && zsock_connect (probe, "%s", broker) == 0;
    zsock_destroy (&probe);
    if (!ok) {
        const ferry_cnode_t *at = ferry_config_node (config, NULL,
                                                     "worker.broker");
        return ferry_config_fail (
            config, at ? at : ferry_config_node (config, NULL,
                                                 "broker.backend"),
            "not a ZeroMQ endpoint");
    }

    const ferry_cnode_t *node = ferry_config_node (config, NULL, "pools");
    if (!node || ferry_cnode_type (node) != FERRY_CNODE_MAP
        || ferry_cnode_size (node) == 0)
        return ferry_config_fail (config, node,
                                  "expected a map of one or more pools");
    size_t n = ferry_cnode_size (node);
    if (n > POOLS_MAX)
        return ferry_config_fail (config, node, "at most %d pools",
                                  POOLS_MAX);
    size_t selected = 0;
    for (size_t i = 0; i < n; i++) {
        const ferry_cnode_t *child = ferry_cnode_child (node, i);
        pools[i] = worker_pool_new (config, child, settings);
        *count = i + 1;
        if (!pools[i])
            return -1;
        run[i] = !*selection || s_listed (selection, ferry_cnode_key (child));
        selected += run[i];
    }
    /*  Every name in the selection must be a pool.  */
    for (const char *p = selection; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = p;
        while (*end && *end != ',' && *end != ' ')
            end++;
        if (end > p) {
            bool found = false;
            for (size_t i = 0; i < n; i++) {
                const char *name = worker_pool_name (pools[i]);
                if (strlen (name) == (size_t) (end - p)
                    && strncmp (name, p, (size_t) (end - p)) == 0)
                    found = true;
            }
            if (!found)
                return ferry_config_fail (
                    config, ferry_config_node (config, NULL, "worker.pool"),
                    "no pool named '%.*s'", (int) (end - p), p);
        }
        p = end;
    }
    if (selected == 0)
        return ferry_config_fail (config, node, "no pool selected");
    if (ferry_config_check_unused (config, "pools")
        || ferry_config_check_unused (config, "worker"))
        return -1;
    return 0;
}

int
main (int argc, char **argv)
{
    ferry_config_t *config = NULL;
    int rc = ferry_cli_load (argc, argv, "ferry-worker",
                             "Runs pools of actors that answer ferry "
                             "requests from PostgreSQL.",
                             s_flags, &config);
    if (rc == 1)
        return 0;
    if (rc < 0)
        return 2;

    worker_settings_t settings = {0};
    worker_pool_t *pools[POOLS_MAX] = {NULL};
    bool run[POOLS_MAX] = {false};
    size_t count = 0;
    int status = 0;
    if (s_load (config, &settings, pools, run, &count)) {
        fprintf (stderr, "ferry-worker: %s\n", ferry_config_error (config));
        status = 2;
        goto done;
    }
    if (ferry_daemon_signals ()) {
        log_error ("cannot install signal handlers");
        status = 1;
        goto done;
    }
    size_t actors = 0;
    for (size_t i = 0; i < count; i++) {
        if (!run[i]) {
            worker_pool_destroy (&pools[i]);
            continue;
        }
        if (worker_pool_start (pools[i])) {
            status = 1;
            break;
        }
        actors += worker_pool_size (pools[i]);
    }

    bool ready = false;
    size_t last_up = (size_t) -1;
    char last_breakers[256] = "";
    while (!status && !ferry_daemon_terminating ()) {
        size_t up = 0, ever = 0;
        for (size_t i = 0; i < count; i++)
            if (pools[i]) {
                size_t once;
                up += worker_pool_poll (pools[i], &once);
                ever += once;
            }
        /*  Breakers that are not closed, for systemctl status.  */
        char breakers[256] = "";
        size_t len = 0;
        for (size_t i = 0; i < count && len < sizeof breakers; i++) {
            worker_breaker_state_t bs
                = pools[i] ? worker_pool_breaker (pools[i])
                           : WORKER_BREAKER_CLOSED;
            if (bs != WORKER_BREAKER_CLOSED)
                len += (size_t) snprintf (
                    breakers + len, sizeof breakers - len,
                    "; breaker %s %s", worker_pool_name (pools[i]),
                    worker_breaker_state_name (bs));
        }
        if (up != last_up || strcmp (breakers, last_breakers) != 0) {
            char state[384];
            snprintf (state, sizeof state,
                      "STATUS=%zu of %zu actors connected to PostgreSQL%s",
                      up, actors, breakers);
            ferry_daemon_notify (state);
            last_up = up;
            snprintf (last_breakers, sizeof last_breakers, "%s", breakers);
        }
        if (!ready && ever == actors) {
            ferry_daemon_notify ("READY=1");
            log_info ("ready actors=%zu broker=%s", actors, settings.broker);
            ready = true;
        }
        (void) ferry_daemon_reload_requested ();
        zclock_sleep (100);
    }
    log_info ("stopping");
    ferry_daemon_notify ("STOPPING=1");
    /*  Tell every pool first so they drain in parallel, then wait.  */
    for (size_t i = 0; i < count; i++)
        if (pools[i])
            worker_pool_stop (pools[i]);
done:
    for (size_t i = 0; i < count; i++)
        worker_pool_destroy (&pools[i]);
    ferry_config_destroy (&config);
    return status;
}

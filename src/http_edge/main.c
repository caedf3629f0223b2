/*  main.c: ferry-edge, the HTTP front of ferry.

    Reads the configuration, starts one event loop (a CZMQ actor, see
    edge_loop.c) per configured loop or per core, tells systemd it is ready
    once every loop listens, and on SIGTERM or SIGINT stops accepting,
    lets the loops answer what is pending (at most 5 s) and exits 0.
    On SIGHUP it reads the configuration again (same file, same command
    line) and hands the new routes and client limits to every loop; an
    invalid configuration is logged and the running one kept.  The main
    thread does nothing else: all HTTP and ZeroMQ work happens in the
    loops.  */

#include "ferry.h"
#include "config.h"
#include "daemon.h"
#include "log.h"
#include "edge_config.h"
#include "edge_loop.h"

#include <czmq.h>
#include <stdlib.h>

static const ferry_flag_t s_flags[] = {
    {"listen", "edge.listen", "HOST:PORT to serve HTTP on"},
    {"broker", "edge.broker", "ZeroMQ endpoint of the broker frontend"},
    {"loops", "edge.loops", "event loops (0 = one per core)"},
    {NULL, NULL, NULL},
};

/*  SIGHUP: loads the configuration again and, if it is valid and fits
    the running edge, gives every loop the new settings.  *current is the
    settings main holds a reference to; it becomes the new ones.  */
static void
s_reload (int argc, char **argv, zactor_t **loops, size_t count,
          edge_settings_t **current)
{
    ferry_daemon_notify ("RELOADING=1");
    log_info ("reload: reading the configuration again");
    ferry_config_t *config = NULL;
    edge_settings_t *fresh = NULL;
    char err[512] = "";
    int rc = ferry_cli_load (argc, argv, "ferry-edge", "", s_flags, &config);
    if (rc != 0)
        snprintf (err, sizeof err, "cannot read the configuration (see "
                                   "stderr)");
    else if (!(fresh = edge_settings_load (config))
             || ferry_config_check_unused (config, "edge") != 0)
        snprintf (err, sizeof err, "%s", ferry_config_error (config));
    else if (edge_settings_adopt (fresh, *current, err, sizeof err) != 0)
        ;
    else {
        size_t failed = 0;
        for (size_t i = 0; i < count; i++) {
            edge_settings_t *ref = edge_settings_ref (fresh);
            zmsg_t *msg = zmsg_new ();
            zmsg_addstr (msg, "RELOAD");
            zmsg_addmem (msg, &ref, sizeof ref);
            if (zmsg_send (&msg, loops[i]) != 0 || zsock_wait (loops[i]) != 0)
                failed++;
        }
        if (failed)
            log_error ("reload: %zu loops did not take the new settings",
                       failed);
        log_info ("reloaded routes=%zu client_limits=%s",
                  edge_routes_size (fresh->routes),
                  fresh->clients ? "on" : "off");
        edge_settings_unref (current);
        *current = fresh;
        fresh = NULL;
    }
    if (err[0])
        log_error ("reload failed, keeping the running configuration: %s",
                   err);
    edge_settings_unref (&fresh);
    ferry_config_destroy (&config);
    ferry_daemon_notify ("READY=1");
}

/*  Waits for "DRAINED" from every loop, at most wait_ms in all.  */
static void
s_drain (zactor_t **loops, size_t count, int64_t wait_ms)
{
    zpoller_t *poller = zpoller_new (NULL);
    for (size_t i = 0; i < count; i++) {
        zstr_send (loops[i], "DRAIN");
        zpoller_add (poller, loops[i]);
    }
    int64_t until = ferry_mono_ms () + wait_ms;
    size_t drained = 0;
    while (drained < count) {
        int64_t left = until - ferry_mono_ms ();
        if (left <= 0)
            break;
        zsock_t *which = zpoller_wait (poller, (int) left);
        if (!which) {
            if (zpoller_expired (poller))
                break;
            continue; /* a signal interrupted the wait */
        }
        char *reply = zstr_recv (which);
        if (reply && streq (reply, "DRAINED")) {
            drained++;
            zpoller_remove (poller, which);
        }
        free (reply);
    }
    if (drained < count)
        log_warn ("stopping with %zu loops not drained", count - drained);
    zpoller_destroy (&poller);
}

int
main (int argc, char **argv)
{
    ferry_config_t *config = NULL;
    int rc = ferry_cli_load (
        argc, argv, "ferry-edge",
        "HTTP/1.1 edge: routes requests to ferry services over ZeroMQ",
        s_flags, &config);
    if (rc == 1)
        return 0;
    if (rc != 0)
        return 2;
    edge_settings_t *settings = NULL;
    if (ferry_daemon_log_setup (config, "ferry-edge") != 0
        || !(settings = edge_settings_load (config))
        || ferry_config_check_unused (config, "edge") != 0) {
        fprintf (stderr, "ferry-edge: %s\n", ferry_config_error (config));
        edge_settings_destroy (&settings);
        ferry_config_destroy (&config);
        return 2;
    }
    if (ferry_daemon_signals () != 0) {
        log_error ("cannot install signal handlers");
        return 1;
    }
    /*  One CZMQ context for all loops, made before any thread uses it.  */
    zsys_init ();
    zsys_set_logstream (NULL);

    /*  The Kafka reply consumer starts first so that it is connected to
        every loop's reply socket; it never waits for Kafka itself.  */
    edge_kafka_t *kafka = NULL;
    if (settings->kafka && !(kafka = edge_kafka_new (settings))) {
        edge_settings_destroy (&settings);
        ferry_config_destroy (&config);
        return 1;
    }
    size_t count = settings->loops;
    zactor_t **loops = ferry_calloc (count, sizeof *loops);
    edge_loop_args_t *args = ferry_calloc (count, sizeof *args);
    int status = 0;
    for (size_t i = 0; i < count; i++) {
        args[i] = (edge_loop_args_t) {settings, i, kafka};
        loops[i] = zactor_new (edge_loop_actor, &args[i]);
        zstr_send (loops[i], "START");
        if (zsock_wait (loops[i]) != 0) {
            status = 1;
            break;
        }
    }
    if (status == 0) {
        log_info ("ready listen=%s loops=%zu routes=%zu broker=%s",
                  settings->listen, count, edge_routes_size (settings->routes),
                  settings->broker);
        ferry_daemon_notify ("READY=1");
        /*  main's reference to the settings the loops serve now; the
            first ones stay referenced by `settings` for edge_kafka.  */
        edge_settings_t *current = edge_settings_ref (settings);
        while (!ferry_daemon_terminating ()) {
            if (ferry_daemon_reload_requested ())
                s_reload (argc, argv, loops, count, &current);
            else
                zclock_sleep (100);
        }
        edge_settings_unref (&current);
        log_info ("stopping: draining requests in flight");
        ferry_daemon_notify ("STOPPING=1");
        s_drain (loops, count, 6000);
    }
    for (size_t i = 0; i < count; i++)
        zactor_destroy (&loops[i]);
    free (loops);
    free (args);
    edge_kafka_destroy (&kafka);
    if (status == 0)
        log_info ("stopped");
    else
        log_error ("start failed");
    edge_settings_unref (&settings);
    ferry_config_destroy (&config);
    return status;
}

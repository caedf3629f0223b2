/*  main.c: ferry-broker, the process around the broker actor.

    Reads the configuration, starts the actor (broker.c) and binds it,
    tells systemd it is ready, then waits for SIGTERM or SIGINT.  The signal
    handlers only set a flag; this loop polls it a few times a second while
    it watches the actor's pipe, so it also notices an actor that ended on
    its own.  On SIGTERM it asks the actor to drain (refuse new requests,
    let those in flight finish for up to broker.drain_timeout, answer the
    rest, tell the workers) before it stops it.  SIGHUP reloads nothing:
    the endpoints and queue caps are read once, and changing them under
    queued requests is not worth the states it would add.

    broker.control, when set, is bound like the other endpoints (a failure
    is fatal at start-up): ferryctl status asks the broker's state there.  */

#include "broker.h"
#include "config.h"
#include "daemon.h"
#include "ferry.h"
#include "log.h"

#include <stdlib.h>

/*  Asks the actor to drain (broker.c: refuse new requests, wait for the
    replies of those in flight) and waits for DRAINED, at most wait_ms.  */
static void
s_drain (zactor_t *actor, int64_t wait_ms)
{
    zstr_send (actor, "DRAIN");
    zpoller_t *poller = zpoller_new (actor, NULL);
    int64_t until = ferry_mono_ms () + wait_ms;
    bool drained = false;
    while (!drained) {
        int64_t left = until - ferry_mono_ms ();
        if (left <= 0)
            break;
        if (!zpoller_wait (poller, (int) left)) {
            if (zpoller_expired (poller))
                break;
            continue; /* a signal interrupted the wait */
        }
        char *reply = zstr_recv (actor);
        drained = reply && streq (reply, "DRAINED");
        free (reply);
    }
    if (!drained)
        log_warn ("stopping without a finished drain");
    zpoller_destroy (&poller);
}

static const ferry_flag_t s_flags[] = {
    {"frontend", "broker.frontend", "endpoint edges connect to"},
    {"backend", "broker.backend", "endpoint workers connect to"},
    {"control", "broker.control",
     "endpoint for ferryctl status (empty: off)"},
    {NULL, NULL, NULL},
};

int
main (int argc, char **argv)
{
    ferry_config_t *config = NULL;
    int rc = ferry_cli_load (argc, argv, "ferry-broker",
                             "Routes requests from ferry-edge to ferry-worker "
                             "over ZeroMQ.",
                             s_flags, &config);
    if (rc == 1)
        return 0;
    if (rc < 0)
        return 2;

    broker_settings_t *settings = broker_settings_new ();
    if (ferry_daemon_log_setup (config, "ferry-broker")
        || broker_settings_load (settings, config)
        || ferry_config_check_unused (config, "broker")) {
        fprintf (stderr, "ferry-broker: %s\n", ferry_config_error (config));
        broker_settings_destroy (&settings);
        ferry_config_destroy (&config);
        return 2;
    }
    if (ferry_daemon_signals ()) {
        log_error ("cannot install signal handlers");
        broker_settings_destroy (&settings);
        ferry_config_destroy (&config);
        return 1;
    }

    zactor_t *actor = zactor_new (broker_actor, settings);
    int status = 1;
    if (!actor) {
        log_error ("cannot start the broker actor");
        goto done;
    }
    zstr_sendx (actor, "BIND", broker_settings_frontend (settings),
                broker_settings_backend (settings), NULL);
    int bind_rc = -1;
    char *frontend = NULL, *backend = NULL;
    if (zsock_recv (actor, "iss", &bind_rc, &frontend, &backend) == -1
        || bind_rc != 0) {
        log_error ("cannot bind frontend=%s backend=%s",
                   broker_settings_frontend (settings),
                   broker_settings_backend (settings));
        free (frontend);
        free (backend);
        goto done;
    }
    char *control = NULL;
    if (*broker_settings_control (settings)) {
        zstr_sendx (actor, "CONTROL", broker_settings_control (settings),
                    NULL);
        int control_rc = -1;
        if (zsock_recv (actor, "is", &control_rc, &control) == -1
            || control_rc != 0) {
            log_error ("cannot bind control=%s",
                       broker_settings_control (settings));
            free (frontend);
            free (backend);
            free (control);
            goto done;
        }
    }
    ferry_daemon_notify ("READY=1");
    log_info ("ready frontend=%s backend=%s control=%s", frontend, backend,
              control ? control : "-");
    free (frontend);
    free (backend);
    free (control);

    /*  The actor only talks on its pipe when asked; input there means it
        ended (or the pipe broke), which is fatal.  */
    zpoller_t *poller = zpoller_new (actor, NULL);
    status = 0;
    while (!ferry_daemon_terminating ()) {
        void *which = zpoller_wait (poller, 150);
        if (which == actor) {
            log_error ("the broker actor stopped");
            status = 1;
            break;
        }
        if (ferry_daemon_reload_requested ()) {
            ferry_daemon_notify ("RELOADING=1");
            log_info ("reload: nothing to reload (endpoints and queue caps "
                      "need a restart)");
            ferry_daemon_notify ("READY=1");
        }
    }
    zpoller_destroy (&poller);
    if (status == 0) {
        log_info ("stopping: draining requests in flight");
        ferry_daemon_notify ("STOPPING=1");
        s_drain (actor, broker_settings_drain_timeout (settings) + 2000);
        log_info ("stopped");
    }

done:
    zactor_destroy (&actor);
    broker_settings_destroy (&settings);
    ferry_config_destroy (&config);
    return status;
}

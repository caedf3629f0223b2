/*  daemon.h: what the three daemons share around their main loop: signal
    flags and systemd notification.

    Signal handlers only set flags (nginx's rule); the main loop reads them
    with ferry_daemon_terminating / ferry_daemon_reload_requested.  CZMQ's
    own SIGINT/SIGTERM handler is switched off so ferry decides what
    shutdown means.  ferry_daemon_notify is sd_notify when built with
    libsystemd and NOTIFY_SOCKET is set, and a no-op otherwise.  */

#ifndef FERRY_DAEMON_H_INCLUDED
#define FERRY_DAEMON_H_INCLUDED

#include <stdbool.h>

#include "config.h"

/*  Sets up logging for component from the `log:` section (log.level,
    log.json; --log-level sets the first).  Returns 0, or -1 with the
    message in ferry_config_error.  */
int ferry_daemon_log_setup (ferry_config_t *config, const char *component);

/*  Installs the handlers for SIGTERM, SIGINT and SIGHUP and ignores
    SIGPIPE.  Returns 0 or -1.  */
int ferry_daemon_signals (void);
bool ferry_daemon_terminating (void);
/*  True once per SIGHUP received.  */
bool ferry_daemon_reload_requested (void);
/*  Sends a state string such as "READY=1" or "STATUS=...".  Returns 0 on
    success or when there is nobody to tell, -1 on error.  */
int ferry_daemon_notify (const char *state);

#endif

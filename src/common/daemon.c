/*  daemon.c: signal flags and systemd notification for the daemons.

    Owned by each daemon's main thread.  The flags are sig_atomic_t because
    handlers may write nothing else; actors never look at them, the main
    thread tells them with $TERM.  */

#include "daemon.h"
#include "log.h"

#include <czmq.h>
#include <signal.h>
#include <string.h>
#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

static volatile sig_atomic_t s_terminate;
static volatile sig_atomic_t s_reload;

static void
s_on_signal (int sig)
{
    if (sig == SIGHUP)
        s_reload = 1;
    else
        s_terminate = 1;
}

int
ferry_daemon_log_setup (ferry_config_t *config, const char *component)
{
    const char *level_name;
    bool json;
    if (ferry_config_str (config, NULL, "log.level", "info", &level_name)
        || ferry_config_bool (config, NULL, "log.json", false, &json))
        return -1;
    int level = ferry_log_level_parse (level_name);
    if (level < 0)
        return ferry_config_fail (config,
                                  ferry_config_node (config, NULL,
                                                     "log.level"),
                                  "expected error, warn, info or debug");
    ferry_log_init (component, level, json);
    return 0;
}

int
ferry_daemon_signals (void)
{
    /*  CZMQ would otherwise install its own handler and set zsys_interrupted,
        which makes blocking CZMQ calls fail in ways the loops do not expect. */
    zsys_handler_set (NULL);
    struct sigaction sa;
    memset (&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset (&sa.sa_mask);
    if (sigaction (SIGTERM, &sa, NULL) || sigaction (SIGINT, &sa, NULL)
        || sigaction (SIGHUP, &sa, NULL))
        return -1;
    sa.sa_handler = SIG_IGN;
    if (sigaction (SIGPIPE, &sa, NULL))
        return -1;
    return 0;
}

bool
ferry_daemon_terminating (void)
{
    return s_terminate != 0;
}

bool
ferry_daemon_reload_requested (void)
{
    if (!s_reload)
        return false;
    s_reload = 0;
    return true;
}

int
ferry_daemon_notify (const char *state)
{
#ifdef HAVE_LIBSYSTEMD
    return sd_notify (0, state) < 0 ? -1 : 0;
#else
    (void) state;
    return 0;
#endif
}

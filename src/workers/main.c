/*  main.c: ferry-worker, the process around the pools.

    By default ferry-worker is two processes.  The first is a small
    supervisor: it reads the configuration only to learn the broker
    endpoint, then forks the real worker (before it has created any
    thread or ZeroMQ context, so the fork copies nothing half-locked),
    forwards SIGTERM, SIGINT and SIGHUP to it, and exits with its status
    when it exits.  When the worker dies by a signal instead (a handler
    that crashed, the OOM killer) the supervisor logs it, tells the
    broker `DIED <hostname>:<pid> <signal>` on a short-lived DEALER, so
    the broker counts every actor of that process dead at once and knows
    the signal for its dead letters, and starts a new worker after a
    backoff.  `--no-supervise` (worker.supervise: false) runs the worker
    alone, for debuggers.

    The worker reads the configuration, builds and validates every pool
    in `pools:` (so a typo in a pool this process does not run still fails
    at start), starts the selected ones, and tells systemd READY=1 once
    every actor has connected to PostgreSQL once.  Signal handlers only
    set a flag; this loop checks it a few times a second while it
    collects the actors' connection events.  On SIGTERM every actor
    drains: it sends BYE (no new work), hands the messages it has not
    started back to the broker, finishes those in its pipeline (up to
    worker.drain_timeout) and exits.  On SIGHUP it reads the file again
    and applies the new pool sizes (pools.NAME.actors): new actors start,
    surplus ones drain as at SIGTERM; everything else it only reports as
    needing a restart.  A file that does not load changes nothing.  */

#include "config.h"
#include "daemon.h"
#include "ferry.h"
#include "log.h"
#include "proto.h"
#include "worker_dead.h"
#include "worker_pool.h"

#include <czmq.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const ferry_flag_t s_flags[] = {
    {"pool", "worker.pool", "pools to run, comma-separated (default: all)"},
    {"database", "worker.database",
     "libpq connection string (default: the PG* environment)"},
    {"broker", "worker.broker",
     "broker endpoint to connect to (default: broker.backend)"},
    {NULL, NULL, NULL},
};

#define POOLS_MAX 64
#define RESTART_MIN_MS 100
#define RESTART_MAX_MS 5000
/*  A worker that ran this long before it died starts the backoff
    afresh: it was not crash-looping.  */
#define RESTART_RESET_MS 10000

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

/*  Reads everything but the log settings; fills pools[] (all configured
    pools) and run[] (those this process runs).  settings->process must be
    set.  Returns 0 or -1 (message in config).  */
static int
s_load (ferry_config_t *config, worker_settings_t *settings,
        worker_pool_t **pools, bool *run, size_t *count)
{
    const char *selection, *database, *backend, *broker;
    int64_t heartbeat, liveness, drain;
    bool supervise;
    if (ferry_config_str (config, NULL, "worker.pool", "", &selection)
        || ferry_config_bool (config, NULL, "worker.supervise", true,
                              &supervise)
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
    const char *poison = getenv ("FERRY_TEST_ABORT_OPERATION");
    settings->abort_operation = poison && *poison ? poison : NULL;
    if (settings->abort_operation)
        log_warn ("FERRY_TEST_ABORT_OPERATION is set: the worker aborts "
                  "when it starts operation=%s",
                  settings->abort_operation);
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


/* ---- reload ------------------------------------------------------------- */

/*  True when the trees at a and b say the same (either may be NULL).
    At the top level, a map entry named skip is left out.  */
static bool
s_same (const ferry_cnode_t *a, const ferry_cnode_t *b, const char *skip)
{
    if (!a || !b)
        return a == b;
    if (ferry_cnode_type (a) != ferry_cnode_type (b))
        return false;
    if (ferry_cnode_type (a) == FERRY_CNODE_SCALAR) {
        const char *va = ferry_cnode_value (a), *vb = ferry_cnode_value (b);
        return strcmp (va ? va : "", vb ? vb : "") == 0;
    }
    size_t na = ferry_cnode_size (a), nb = ferry_cnode_size (b);
    if (ferry_cnode_type (a) == FERRY_CNODE_SEQ) {
        if (na != nb)
            return false;
        for (size_t i = 0; i < na; i++)
            if (!s_same (ferry_cnode_child (a, i), ferry_cnode_child (b, i),
                         NULL))
                return false;
        return true;
    }
    size_t seen = 0, nb_kept = 0;
    for (size_t j = 0; j < nb; j++)
        if (!skip || strcmp (ferry_cnode_key (ferry_cnode_child (b, j)), skip))
            nb_kept++;
    for (size_t i = 0; i < na; i++) {
        const ferry_cnode_t *ca = ferry_cnode_child (a, i);
        const char *key = ferry_cnode_key (ca);
        if (skip && strcmp (key, skip) == 0)
            continue;
        const ferry_cnode_t *cb = NULL;
        for (size_t j = 0; j < nb && !cb; j++)
            if (strcmp (ferry_cnode_key (ferry_cnode_child (b, j)), key) == 0)
                cb = ferry_cnode_child (b, j);
        if (!cb || !s_same (ca, cb, NULL))
            return false;
        seen++;
    }
    return seen == nb_kept;
}

/*  pools.NAME of config, found by key (pool names may hold dots).  */
static const ferry_cnode_t *
s_pool_node (ferry_config_t *config, const char *name)
{
    const ferry_cnode_t *pools = ferry_config_node (config, NULL, "pools");
    if (!pools || ferry_cnode_type (pools) != FERRY_CNODE_MAP)
        return NULL;
    for (size_t i = 0; i < ferry_cnode_size (pools); i++) {
        const ferry_cnode_t *child = ferry_cnode_child (pools, i);
        if (strcmp (ferry_cnode_key (child), name) == 0)
            return child;
    }
    return NULL;
}

/*  The settings outside pools.* that the worker reads at start.  */
static const char *const s_restart_paths[]
    = {"worker", "log", "jobs", "idempotency", "broker.backend",
       "broker.heartbeat", "broker.liveness", NULL};

/*  SIGHUP: loads the configuration the way the start did (same file,
    same command line) into a fresh config and fresh, unstarted pools,
    then applies what can change in place: each running pool's size.
    Each reload compares against what is in effect, whatever came
    before: a pool's new size against its size now (the last successful
    reload's), everything else against running, the configuration the
    process started with, which is the only one those settings ever
    took effect from (it stays: the pools borrow from it).  So reverting
    a change that was reported as needing a restart reports nothing, a
    change still waiting for one is reported again, and reloading the
    same file changes nothing.  A shrink returns once the surplus actors
    have drained (up to worker.drain_timeout).  */
static void
s_reload (int argc, char **argv, ferry_config_t *running,
          const worker_settings_t *settings, worker_pool_t **pools,
          size_t count)
{
    ferry_daemon_notify ("RELOADING=1");
    log_info ("reloading configuration");
    ferry_config_t *fresh = NULL;
    worker_settings_t ns = {.process = settings->process};
    worker_pool_t *np[POOLS_MAX] = {NULL};
    bool nrun[POOLS_MAX] = {false};
    size_t ncount = 0;
    int rc = ferry_cli_load (argc, argv, "ferry-worker", "", s_flags, &fresh);
    if (rc != 0)
        log_error ("reload failed: the configuration does not load "
                   "(see above); keeping the running one");
    else if (s_load (fresh, &ns, np, nrun, &ncount))
        log_error ("reload failed error=%s; keeping the running "
                   "configuration", ferry_config_error (fresh));
    else {
        for (const char *const *p = s_restart_paths; *p; p++)
            if (!s_same (ferry_config_node (running, NULL, *p),
                         ferry_config_node (fresh, NULL, *p), NULL))
                log_warn ("reload: %s changed, needs a restart", *p);
        for (size_t j = 0; j < ncount; j++) {
            bool found = false;
            for (size_t i = 0; i < count; i++)
                found = found || (pools[i] && nrun[j]
                                  && strcmp (worker_pool_name (pools[i]),
                                             worker_pool_name (np[j]))
                                         == 0);
            if (nrun[j] && !found)
                log_warn ("reload: pool %s is new here, needs a restart",
                          worker_pool_name (np[j]));
        }
        for (size_t i = 0; i < count; i++) {
            if (!pools[i])
                continue;
            const char *name = worker_pool_name (pools[i]);
            worker_pool_t *now = NULL;
            for (size_t j = 0; j < ncount && !now; j++)
                if (nrun[j] && strcmp (worker_pool_name (np[j]), name) == 0)
                    now = np[j];
            if (!now) {
                log_warn ("reload: pool %s is gone from the configuration "
                          "or the selection, needs a restart", name);
                continue;
            }
            if (!s_same (s_pool_node (running, name),
                         s_pool_node (fresh, name), "actors"))
                log_warn ("reload: pools.%s changed beyond its size, "
                          "needs a restart", name);
            worker_pool_resize (pools[i], worker_pool_size (now));
        }
        log_info ("reloaded");
    }
    for (size_t j = 0; j < ncount; j++)
        worker_pool_destroy (&np[j]);
    ferry_config_destroy (&fresh);
    ferry_daemon_notify ("READY=1");
}

/* ---- the worker --------------------------------------------------------- */

static int
s_worker (int argc, char **argv)
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

    char process[300];
    worker_process_name (process, sizeof process, (long) getpid ());
    worker_settings_t settings = {.process = process};
    worker_pool_t *pools[POOLS_MAX] = {NULL};
    bool run[POOLS_MAX] = {false};
    size_t count = 0;
    int status = 0;
    if (ferry_daemon_log_setup (config, "ferry-worker")
        || s_load (config, &settings, pools, run, &count)) {
        fprintf (stderr, "ferry-worker: %s\n", ferry_config_error (config));
        status = 2;
        goto done;
    }
    if (ferry_daemon_signals ()) {
        log_error ("cannot install signal handlers");
        status = 1;
        goto done;
    }
    /*  The supervisor forked us with these blocked, so that none came
        before the handlers above.  */
    sigset_t mask;
    sigemptyset (&mask);
    sigaddset (&mask, SIGTERM);
    sigaddset (&mask, SIGINT);
    sigaddset (&mask, SIGHUP);
    sigprocmask (SIG_UNBLOCK, &mask, NULL);
    for (size_t i = 0; i < count; i++) {
        if (!run[i]) {
            worker_pool_destroy (&pools[i]);
            continue;
        }
        if (worker_pool_start (pools[i])) {
            status = 1;
            break;
        }
    }

    bool ready = false;
    size_t last_up = (size_t) -1, last_actors = 0;
    char last_breakers[256] = "";
    while (!status && !ferry_daemon_terminating ()) {
        size_t up = 0, ever = 0, actors = 0;
        for (size_t i = 0; i < count; i++)
            if (pools[i]) {
                size_t once;
                up += worker_pool_poll (pools[i], &once);
                ever += once;
                actors += worker_pool_size (pools[i]);
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
        if (up != last_up || actors != last_actors
            || strcmp (breakers, last_breakers) != 0) {
            char state[384];
            snprintf (state, sizeof state,
                      "STATUS=%zu of %zu actors connected to PostgreSQL%s",
                      up, actors, breakers);
            ferry_daemon_notify (state);
            last_up = up;
            last_actors = actors;
            snprintf (last_breakers, sizeof last_breakers, "%s", breakers);
        }
        if (!ready && ever == actors) {
            ferry_daemon_notify ("READY=1");
            log_info ("ready actors=%zu broker=%s process=%s", actors,
                      settings.broker, process);
            ready = true;
        }
        if (ferry_daemon_reload_requested ())
            s_reload (argc, argv, config, &settings, pools, count);
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

/* ---- the supervisor ----------------------------------------------------- */

static volatile sig_atomic_t s_stop;
static volatile pid_t s_child;

/*  Handlers only forward (kill is async-signal-safe) and set a flag.  */
static void
s_forward (int sig)
{
    if (sig != SIGHUP)
        s_stop = 1;
    pid_t child = s_child;
    if (child > 0)
        kill (child, sig);
}

static const char *
s_signal_name (int sig, char *buf, size_t size)
{
    static const struct {
        int sig;
        const char *name;
    } names[] = {
        {SIGABRT, "SIGABRT"}, {SIGSEGV, "SIGSEGV"}, {SIGKILL, "SIGKILL"},
        {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},   {SIGILL, "SIGILL"},
        {SIGTERM, "SIGTERM"}, {SIGINT, "SIGINT"},   {SIGHUP, "SIGHUP"},
        {SIGQUIT, "SIGQUIT"}, {SIGTRAP, "SIGTRAP"}, {SIGSYS, "SIGSYS"},
        {SIGPIPE, "SIGPIPE"}, {SIGUSR1, "SIGUSR1"}, {SIGUSR2, "SIGUSR2"},
        {SIGXCPU, "SIGXCPU"}, {SIGXFSZ, "SIGXFSZ"}, {SIGALRM, "SIGALRM"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (names[i].sig == sig)
            return names[i].name;
    snprintf (buf, size, "SIG%d", sig);
    return buf;
}

/*  DIED process signal, on a DEALER of its own that lingers up to 1 s to
    deliver it.  Plain libzmq with its own context, terminated before we
    return: the next fork must again happen in a process without
    threads (CZMQ's global context would outlive this call).  */
static void
s_send_died (const char *endpoint, const char *process, const char *signame)
{
    void *ctx = zmq_ctx_new ();
    if (!ctx) {
        log_error ("cannot tell the broker process=%s error=%s", process,
                   zmq_strerror (errno));
        return;
    }
    void *sock = zmq_socket (ctx, ZMQ_DEALER);
    int linger = 1000;
    int ok = sock
             && zmq_setsockopt (sock, ZMQ_LINGER, &linger, sizeof linger)
                    == 0
             && zmq_connect (sock, endpoint) == 0;
    const char *parts[4] = {FERRY_PROTO, FERRY_CMD_DIED, process, signame};
    for (int i = 0; ok && i < 4; i++)
        ok = zmq_send (sock, parts[i], strlen (parts[i]),
                       i < 3 ? ZMQ_SNDMORE : 0)
             != -1;
    if (!ok)
        log_error ("cannot tell the broker process=%s error=%s", process,
                   zmq_strerror (errno));
    if (sock)
        zmq_close (sock);
    zmq_ctx_term (ctx);
}

/*  Sleeps ms unless a stop signal comes first.  */
static void
s_pause (int64_t ms)
{
    struct timespec ts = {(time_t) (ms / 1000), (long) (ms % 1000) * 1000000L};
    while (!s_stop && nanosleep (&ts, &ts) == -1 && errno == EINTR)
        ;
}

/*  Runs the worker in child processes.  Returns -1 in each child (which
    then runs the worker, with SIGTERM, SIGINT and SIGHUP blocked), or
    the supervisor's exit status.  */
static int
s_supervise (const char *endpoint)
{
    struct sigaction sa;
    memset (&sa, 0, sizeof sa);
    sa.sa_handler = s_forward;
    sigemptyset (&sa.sa_mask);
    sigaction (SIGTERM, &sa, NULL);
    sigaction (SIGINT, &sa, NULL);
    sigaction (SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction (SIGPIPE, &sa, NULL);
    sigset_t mask, old;
    sigemptyset (&mask);
    sigaddset (&mask, SIGTERM);
    sigaddset (&mask, SIGINT);
    sigaddset (&mask, SIGHUP);
    pid_t self = getpid ();
    int64_t backoff = RESTART_MIN_MS;
    while (!s_stop) {
        sigprocmask (SIG_BLOCK, &mask, &old);
        int64_t started = ferry_mono_ms ();
        pid_t pid = fork ();
        if (pid == 0) {
            /*  The worker installs its own handlers; until then a signal
                stays pending, not lost and not forwarded by a copy of
                ours.  It dies with us if we are killed.  */
            sa.sa_handler = SIG_DFL;
            sigaction (SIGTERM, &sa, NULL);
            sigaction (SIGINT, &sa, NULL);
            sigaction (SIGHUP, &sa, NULL);
            s_child = 0;
            if (prctl (PR_SET_PDEATHSIG, SIGKILL) == -1
                || getppid () != self)
                _exit (1);
            return -1;
        }
        if (pid < 0) {
            sigprocmask (SIG_SETMASK, &old, NULL);
            log_error ("cannot start the worker process error=%s",
                       strerror (errno));
            return 1;
        }
        s_child = pid;
        sigprocmask (SIG_SETMASK, &old, NULL);
        int st;
        while (waitpid (pid, &st, 0) == -1 && errno == EINTR)
            ;
        s_child = 0;
        if (WIFEXITED (st)) {
            if (WEXITSTATUS (st) != 0)
                log_warn ("worker process exited status=%d pid=%ld",
                          WEXITSTATUS (st), (long) pid);
            return WEXITSTATUS (st);
        }
        int sig = WIFSIGNALED (st) ? WTERMSIG (st) : SIGKILL;
        char buf[16], process[300];
        const char *signame = s_signal_name (sig, buf, sizeof buf);
        log_error ("worker process died signal=%s pid=%ld", signame,
                   (long) pid);
        worker_process_name (process, sizeof process, (long) pid);
        s_send_died (endpoint, process, signame);
        if (s_stop)
            return 128 + sig;
        if (ferry_mono_ms () - started >= RESTART_RESET_MS)
            backoff = RESTART_MIN_MS;
        char state[128];
        snprintf (state, sizeof state,
                  "STATUS=restarting the worker process after %s", signame);
        ferry_daemon_notify (state);
        log_info ("restarting the worker process in_ms=%lld",
                  (long long) backoff);
        s_pause (backoff);
        backoff = backoff * 2 > RESTART_MAX_MS ? RESTART_MAX_MS : backoff * 2;
    }
    return 0;
}

int
main (int argc, char **argv)
{
    /*  --no-supervise is --set worker.supervise=false (the command line
        helper only knows flags with a value).  */
    char **args = ferry_calloc ((size_t) argc + 2, sizeof *args);
    int nargs = 0;
    for (int i = 0; i < argc; i++)
        if (i > 0 && strcmp (argv[i], "--no-supervise") == 0) {
            args[nargs++] = (char *) "--set";
            args[nargs++] = (char *) "worker.supervise=false";
        }
        else
            args[nargs++] = argv[i];
    args[nargs] = NULL;

    /*  The supervisor reads only what it needs and keeps nothing of the
        configuration: the worker loads it again itself.  */
    ferry_config_t *config = NULL;
    int rc = ferry_cli_load (nargs, args, "ferry-worker",
                             "Runs pools of actors that answer ferry "
                             "requests from PostgreSQL, in a child process "
                             "that a supervisor restarts when it crashes "
                             "(--no-supervise: no supervisor).",
                             s_flags, &config);
    if (rc != 0) {
        free (args);
        return rc == 1 ? 0 : 2;
    }
    const char *backend, *broker;
    bool supervise;
    if (ferry_daemon_log_setup (config, "ferry-worker")
        || ferry_config_bool (config, NULL, "worker.supervise", true,
                              &supervise)
        || ferry_config_str (config, NULL, "broker.backend",
                             "tcp://127.0.0.1:5556", &backend)
        || ferry_config_str (config, NULL, "worker.broker", backend,
                             &broker)) {
        fprintf (stderr, "ferry-worker: %s\n", ferry_config_error (config));
        ferry_config_destroy (&config);
        free (args);
        return 2;
    }
    char *endpoint = ferry_strdup (broker);
    ferry_config_destroy (&config);
    int status = supervise ? s_supervise (endpoint) : -1;
    free (endpoint);
    if (status == -1)
        status = s_worker (nargs, args);
    free (args);
    return status;
}

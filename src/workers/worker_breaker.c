/*  worker_breaker.c: the circuit breaker of one pool.

    The pool owns it; its actors (one thread each) share it.  Every
    message asks it whether PostgreSQL may be called and every answer from
    PostgreSQL is reported to it, so those paths are atomic loads: the
    state word, and the failure count, which is zero while all is well
    (successes are only counted, with an atomic add, once a failure was
    seen in the window, because the ratio only matters then).  Failures
    and state changes are rare and take the mutex, which also orders the
    log lines of the changes.

    The window is a fixed one: it starts at its first failure and counts
    for window_ms; a failure after that starts a new one.  Opening needs
    both `failures` failures and a failed share of at least `ratio`, so a
    single actor that loses its connection under heavy load does not open
    the breaker of a pool whose other actors are doing fine.  */

#include "ferry.h"
#include "log.h"
#include "worker_breaker.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct _worker_breaker_t {
    char *pool;                    /* for logs */
    worker_breaker_settings_t s;
    _Atomic int state;             /* worker_breaker_state_t */
    _Atomic int64_t until;         /* open: end of the cool-down; half-open:
                                      when undecided probes are re-armed */
    _Atomic int64_t fails;         /* failures in the window */
    _Atomic int64_t oks;           /* successes in the window, counted
                                      from its first failure on */
    _Atomic int64_t probes_left;   /* half-open: messages still admitted */
    _Atomic int64_t probe_oks;     /* half-open: successes so far */
    int64_t window_start;          /* mono ms; under lock */
    pthread_mutex_t lock;          /* failures and state changes */
};

int
worker_breaker_settings_load (ferry_config_t *config,
                              const ferry_cnode_t *pool,
                              worker_breaker_settings_t *out)
{
    const ferry_cnode_t *node = ferry_config_node (config, pool, "breaker");
    if (node && ferry_cnode_type (node) != FERRY_CNODE_MAP)
        return ferry_config_fail (config, node, "expected a map");
    const char *ratio;
    if (ferry_config_int (config, pool, "breaker.failures", 0, 1000000, 5,
                          &out->failures)
        || ferry_config_duration_ms (config, pool, "breaker.window", 100,
                                     3600000, 10000, &out->window_ms)
        || ferry_config_str (config, pool, "breaker.ratio", "0.5", &ratio)
        || ferry_config_duration_ms (config, pool, "breaker.cooldown", 10,
                                     3600000, 5000, &out->cooldown_ms)
        || ferry_config_int (config, pool, "breaker.probes", 1, 1000, 3,
                             &out->probes))
        return -1;
    char *end;
    out->ratio = strtod (ratio, &end);
    if (end == ratio || *end || !(out->ratio >= 0.0 && out->ratio <= 1.0))
        return ferry_config_fail (
            config, ferry_config_node (config, pool, "breaker.ratio"),
            "expected a number from 0 to 1");
    return 0;
}

worker_breaker_t *
worker_breaker_new (const char *pool, const worker_breaker_settings_t *s)
{
    worker_breaker_t *self = ferry_calloc (1, sizeof *self);
    self->pool = ferry_strdup (pool);
    self->s = *s;
    atomic_init (&self->state, WORKER_BREAKER_CLOSED);
    atomic_init (&self->until, 0);
    atomic_init (&self->fails, 0);
    atomic_init (&self->oks, 0);
    atomic_init (&self->probes_left, 0);
    atomic_init (&self->probe_oks, 0);
    if (pthread_mutex_init (&self->lock, NULL)) {
        free (self->pool);
        free (self);
        return NULL;
    }
    return self;
}

void
worker_breaker_destroy (worker_breaker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    worker_breaker_t *self = *self_p;
    pthread_mutex_destroy (&self->lock);
    free (self->pool);
    free (self);
    *self_p = NULL;
}

const char *
worker_breaker_state_name (worker_breaker_state_t state)
{
    return state == WORKER_BREAKER_OPEN        ? "open"
           : state == WORKER_BREAKER_HALF_OPEN ? "half-open"
                                               : "closed";
}

/*  Under lock.  */
static void
s_open (worker_breaker_t *self, const char *reason, int64_t now)
{
    atomic_store (&self->until, now + self->s.cooldown_ms);
    if (atomic_load (&self->state) == WORKER_BREAKER_HALF_OPEN)
        log_warn ("breaker open pool=%s reason=%s probe=failed "
                  "cooldown_ms=%" PRId64,
                  self->pool, reason, self->s.cooldown_ms);
    else
        log_warn ("breaker open pool=%s reason=%s failures=%" PRId64
                  " successes=%" PRId64 " cooldown_ms=%" PRId64,
                  self->pool, reason, atomic_load (&self->fails),
                  atomic_load (&self->oks), self->s.cooldown_ms);
    atomic_store (&self->state, WORKER_BREAKER_OPEN);
}

/*  Under lock.  From open after the cool-down, or again from half-open
    when the probes let through have not decided within a cool-down (an
    actor stopped with one), so the breaker cannot stay half-open for
    good.  */
static void
s_half_open (worker_breaker_t *self, int64_t now)
{
    bool was_open = atomic_load (&self->state) == WORKER_BREAKER_OPEN;
    atomic_store (&self->probes_left, self->s.probes);
    atomic_store (&self->probe_oks, 0);
    atomic_store (&self->until, now + self->s.cooldown_ms);
    atomic_store (&self->state, WORKER_BREAKER_HALF_OPEN);
    if (was_open)
        log_info ("breaker half-open pool=%s probes=%" PRId64, self->pool,
                  self->s.probes);
}

bool
worker_breaker_closed (worker_breaker_t *self)
{
    return atomic_load_explicit (&self->state, memory_order_acquire)
           == WORKER_BREAKER_CLOSED;
}

worker_breaker_state_t
worker_breaker_state (worker_breaker_t *self, int64_t now)
{
    int st = atomic_load_explicit (&self->state, memory_order_acquire);
    if (st == WORKER_BREAKER_CLOSED
        || now < atomic_load_explicit (&self->until, memory_order_acquire))
        return (worker_breaker_state_t) st;
    pthread_mutex_lock (&self->lock);
    st = atomic_load (&self->state);
    if (st != WORKER_BREAKER_CLOSED && now >= atomic_load (&self->until)) {
        s_half_open (self, now);
        st = WORKER_BREAKER_HALF_OPEN;
    }
    pthread_mutex_unlock (&self->lock);
    return (worker_breaker_state_t) st;
}

bool
worker_breaker_admit (worker_breaker_t *self, int64_t now)
{
    worker_breaker_state_t st = worker_breaker_state (self, now);
    if (st == WORKER_BREAKER_CLOSED)
        return true;
    if (st == WORKER_BREAKER_OPEN)
        return false;
    return atomic_fetch_sub (&self->probes_left, 1) > 0;
}

void
worker_breaker_success (worker_breaker_t *self)
{
    int st = atomic_load_explicit (&self->state, memory_order_acquire);
    if (st == WORKER_BREAKER_CLOSED) {
        if (atomic_load_explicit (&self->fails, memory_order_relaxed) > 0)
            atomic_fetch_add_explicit (&self->oks, 1, memory_order_relaxed);
        return;
    }
    /*  Answers to messages sent before it opened say nothing about now.  */
    if (st != WORKER_BREAKER_HALF_OPEN
        || atomic_fetch_add (&self->probe_oks, 1) + 1 < self->s.probes)
        return;
    pthread_mutex_lock (&self->lock);
    if (atomic_load (&self->state) == WORKER_BREAKER_HALF_OPEN) {
        atomic_store (&self->fails, 0);
        atomic_store (&self->oks, 0);
        self->window_start = 0;
        atomic_store (&self->state, WORKER_BREAKER_CLOSED);
        log_info ("breaker closed pool=%s probes=%" PRId64, self->pool,
                  self->s.probes);
    }
    pthread_mutex_unlock (&self->lock);
}

void
worker_breaker_failure (worker_breaker_t *self, const char *reason,
                        int64_t now)
{
    if (self->s.failures == 0)
        return;
    pthread_mutex_lock (&self->lock);
    int st = atomic_load (&self->state);
    if (st == WORKER_BREAKER_CLOSED) {
        if (atomic_load (&self->fails) == 0
            || now - self->window_start >= self->s.window_ms) {
            self->window_start = now;
            atomic_store (&self->fails, 0);
            atomic_store (&self->oks, 0);
        }
        int64_t f = atomic_fetch_add (&self->fails, 1) + 1;
        int64_t o = atomic_load (&self->oks);
        if (f >= self->s.failures
            && (double) f >= self->s.ratio * (double) (f + o))
            s_open (self, reason, now);
    }
    else if (st == WORKER_BREAKER_HALF_OPEN)
        s_open (self, reason, now);
    /*  Open: the cool-down runs from the opening; failures of work sent
        before it do not extend it.  */
    pthread_mutex_unlock (&self->lock);
}

unsigned
worker_breaker_retry_after (worker_breaker_t *self, int64_t now)
{
    if (atomic_load (&self->state) != WORKER_BREAKER_OPEN)
        return 1;
    int64_t left = atomic_load (&self->until) - now;
    return left > 1000 ? (unsigned) ((left + 999) / 1000) : 1;
}

/* ---- tests -------------------------------------------------------------- */

int
worker_breaker_test (bool verbose)
{
    (void) verbose;
    worker_breaker_settings_t s = {.failures = 3,
                                   .window_ms = 1000,
                                   .ratio = 0.5,
                                   .cooldown_ms = 500,
                                   .probes = 2};
    worker_breaker_t *b = worker_breaker_new ("t", &s);
    FERRY_CHECK (b);
    int64_t t = 10000;
    FERRY_CHECK (worker_breaker_state (b, t) == WORKER_BREAKER_CLOSED);
    FERRY_CHECK (worker_breaker_admit (b, t));
    /*  Successes before any failure are not counted.  */
    for (int i = 0; i < 100; i++)
        worker_breaker_success (b);
    /*  Three failures, but spread over more than the window.  */
    worker_breaker_failure (b, "x", t);
    worker_breaker_failure (b, "x", t + 100);
    worker_breaker_failure (b, "x", t + 1100);
    FERRY_CHECK (worker_breaker_state (b, t + 1100)
                 == WORKER_BREAKER_CLOSED);
    /*  Three in the window, but most outcomes succeeded.  */
    t += 2000;
    worker_breaker_failure (b, "x", t);
    for (int i = 0; i < 10; i++)
        worker_breaker_success (b);
    worker_breaker_failure (b, "x", t + 1);
    worker_breaker_failure (b, "x", t + 2);
    FERRY_CHECK (worker_breaker_state (b, t + 2) == WORKER_BREAKER_CLOSED);
    /*  A new window: three failures in a row open it.  */
    t += 2000;
    worker_breaker_failure (b, "x", t);
    worker_breaker_failure (b, "x", t + 1);
    worker_breaker_success (b);
    worker_breaker_failure (b, "connect failed", t + 2);
    FERRY_CHECK (worker_breaker_state (b, t + 2) == WORKER_BREAKER_OPEN);
    FERRY_CHECK (!worker_breaker_admit (b, t + 3));
    FERRY_CHECK (worker_breaker_retry_after (b, t + 3) == 1);
    /*  Old answers and more failures while open change nothing.  */
    worker_breaker_success (b);
    worker_breaker_failure (b, "x", t + 400);
    FERRY_CHECK (worker_breaker_state (b, t + 499) == WORKER_BREAKER_OPEN);
    /*  Cool-down over: two probes, then no more; a failure reopens.  */
    FERRY_CHECK (worker_breaker_state (b, t + 502)
                 == WORKER_BREAKER_HALF_OPEN);
    FERRY_CHECK (worker_breaker_admit (b, t + 502));
    FERRY_CHECK (worker_breaker_admit (b, t + 502));
    FERRY_CHECK (!worker_breaker_admit (b, t + 502));
    worker_breaker_success (b);
    worker_breaker_failure (b, "probe failed", t + 503);
    FERRY_CHECK (worker_breaker_state (b, t + 504) == WORKER_BREAKER_OPEN);
    /*  Undecided probes are re-armed after a cool-down.  */
    t += 1003;
    FERRY_CHECK (worker_breaker_state (b, t) == WORKER_BREAKER_HALF_OPEN);
    FERRY_CHECK (worker_breaker_admit (b, t));
    FERRY_CHECK (worker_breaker_admit (b, t));
    FERRY_CHECK (!worker_breaker_admit (b, t + 10));
    FERRY_CHECK (worker_breaker_admit (b, t + 500));
    /*  Two successes close it, and it counts from scratch.  */
    worker_breaker_success (b);
    FERRY_CHECK (worker_breaker_state (b, t + 501)
                 == WORKER_BREAKER_HALF_OPEN);
    worker_breaker_success (b);
    FERRY_CHECK (worker_breaker_state (b, t + 501) == WORKER_BREAKER_CLOSED);
    worker_breaker_failure (b, "x", t + 502);
    worker_breaker_failure (b, "x", t + 503);
    FERRY_CHECK (worker_breaker_state (b, t + 503) == WORKER_BREAKER_CLOSED);
    FERRY_CHECK (strcmp (worker_breaker_state_name (WORKER_BREAKER_HALF_OPEN),
                         "half-open")
                 == 0);
    worker_breaker_destroy (&b);
    worker_breaker_destroy (&b);

    /*  failures: 0 never opens.  */
    s.failures = 0;
    b = worker_breaker_new ("off", &s);
    for (int i = 0; i < 10; i++)
        worker_breaker_failure (b, "x", 1);
    FERRY_CHECK (worker_breaker_state (b, 2) == WORKER_BREAKER_CLOSED);
    worker_breaker_destroy (&b);
    return 0;
}

int
worker_breaker_config_test (bool verbose)
{
    static const char yaml[]
        = "a: {breaker: {failures: 7, window: 2s, ratio: 0.25,"
          " cooldown: 300ms, probes: 1}}\n"
          "b: {}\n"
          "c: {breaker: {ratio: 2}}\n"
          "d: {breaker: 5}\n"
          "e: {breaker: {probes: 0}}\n";
    char err[256];
    ferry_config_t *config
        = ferry_config_parse (yaml, strlen (yaml), "b.yaml", err, sizeof err);
    FERRY_CHECK (config);
    worker_breaker_settings_t s;
    FERRY_CHECK (worker_breaker_settings_load (
                     config, ferry_config_node (config, NULL, "a"), &s)
                 == 0);
    FERRY_CHECK (s.failures == 7 && s.window_ms == 2000 && s.ratio == 0.25
                 && s.cooldown_ms == 300 && s.probes == 1);
    FERRY_CHECK (worker_breaker_settings_load (
                     config, ferry_config_node (config, NULL, "b"), &s)
                 == 0);
    FERRY_CHECK (s.failures == 5 && s.window_ms == 10000 && s.ratio == 0.5
                 && s.cooldown_ms == 5000 && s.probes == 3);
    const char *bad[] = {"c", "d", "e"};
    for (size_t i = 0; i < 3; i++) {
        FERRY_CHECK (worker_breaker_settings_load (
                         config, ferry_config_node (config, NULL, bad[i]),
                         &s)
                     == -1);
        if (verbose)
            printf ("# %s\n", ferry_config_error (config));
    }
    FERRY_CHECK (strstr (ferry_config_error (config), "b.yaml:5"));
    ferry_config_destroy (&config);
    return 0;
}

/*  edge_clients.c: the per-client limits table (see edge_clients.h).

    Each shard holds a hash (key -> client) and a list of its clients,
    most recently seen first, so that both the idle sweep and the
    eviction of a full shard take the tail in O(1).  A client's ticket is
    a number unique in its shard: a release whose ticket does not match
    the client now under that key belongs to an evicted predecessor and
    is ignored, so a count never goes wrong and nothing points to freed
    memory.  */

#include "ferry.h"
#include "edge_clients.h"

#include <czmq.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define S_SHARDS 16
/*  Idle clients forgotten per admit, at most: the sweep stays O(1).  */
#define S_SWEEP 2

typedef struct s_client_t {
    struct s_client_t *prev, *next; /* in the shard's list, newest first */
    uint64_t ticket;
    double tokens;
    int64_t refilled;                /* monotonic ms of the last refill */
    int64_t seen;                    /* monotonic ms of the last activity */
    size_t inflight;
    char key[EDGE_CLIENT_KEY_SIZE];
} s_client_t;

typedef struct {
    pthread_mutex_t lock;
    zhashx_t *hash;                  /* key -> s_client_t, owning */
    s_client_t *head, *tail;
    uint64_t next_ticket;
} s_shard_t;

struct _edge_clients_t {
    edge_clients_conf_t conf;        /* header not kept: not needed here */
    size_t shard_cap;
    s_shard_t shards[S_SHARDS];
};

static void
s_client_free (void **item)
{
    free (*item);
    *item = NULL;
}

edge_clients_t *
edge_clients_new (const edge_clients_conf_t *conf)
{
    edge_clients_t *self = ferry_calloc (1, sizeof *self);
    self->conf = *conf;
    self->conf.header = NULL;
    size_t cap = (conf->clients + S_SHARDS - 1) / S_SHARDS;
    self->shard_cap = cap ? cap : 1;
    for (size_t i = 0; i < S_SHARDS; i++) {
        s_shard_t *s = &self->shards[i];
        pthread_mutex_init (&s->lock, NULL);
        s->hash = zhashx_new ();
        zhashx_set_destructor (s->hash, s_client_free);
    }
    return self;
}

void
edge_clients_destroy (edge_clients_t **self_p)
{
    edge_clients_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < S_SHARDS; i++) {
        zhashx_destroy (&self->shards[i].hash);
        pthread_mutex_destroy (&self->shards[i].lock);
    }
    free (self);
    *self_p = NULL;
}

static s_shard_t *
s_shard (edge_clients_t *self, const char *key)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *) key; *p; p++)
        h = (h ^ *p) * 16777619u;
    return &self->shards[h % S_SHARDS];
}

static void
s_unlink (s_shard_t *s, s_client_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        s->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        s->tail = c->prev;
    c->prev = c->next = NULL;
}

static void
s_push_front (s_shard_t *s, s_client_t *c)
{
    c->prev = NULL;
    c->next = s->head;
    if (s->head)
        s->head->prev = c;
    s->head = c;
    if (!s->tail)
        s->tail = c;
}

static void
s_forget (s_shard_t *s, s_client_t *c)
{
    s_unlink (s, c);
    zhashx_delete (s->hash, c->key); /* frees c */
}

edge_client_verdict_t
edge_clients_admit (edge_clients_t *self, const char *key, int64_t now,
                    uint64_t *ticket, unsigned *retry_after_s)
{
    const edge_clients_conf_t *conf = &self->conf;
    s_shard_t *s = s_shard (self, key);
    edge_client_verdict_t verdict = EDGE_CLIENT_OK;
    pthread_mutex_lock (&s->lock);
    /*  Forget a few idle clients from the tail: the table shrinks back
        once a crowd of clients has gone.  */
    for (int i = 0; i < S_SWEEP && s->tail && !s->tail->inflight
                    && now - s->tail->seen >= conf->idle_ms;
         i++)
        s_forget (s, s->tail);
    s_client_t *c = zhashx_lookup (s->hash, key);
    if (!c) {
        if (zhashx_size (s->hash) >= self->shard_cap && s->tail)
            s_forget (s, s->tail); /* the least recently seen */
        c = ferry_calloc (1, sizeof *c);
        snprintf (c->key, sizeof c->key, "%s", key);
        c->tokens = conf->burst;
        c->refilled = now;
        c->ticket = ++s->next_ticket;
        zhashx_insert (s->hash, c->key, c);
    }
    else
        s_unlink (s, c);
    s_push_front (s, c);
    c->seen = now;
    if (conf->rate > 0 && now > c->refilled) {
        c->tokens += (double) (now - c->refilled) * conf->rate / 1000.0;
        if (c->tokens > conf->burst)
            c->tokens = conf->burst;
    }
    c->refilled = now;
    if (conf->inflight && c->inflight >= conf->inflight) {
        verdict = EDGE_CLIENT_INFLIGHT;
        *retry_after_s = 1;
    }
    else if (conf->rate > 0 && c->tokens < 1.0) {
        verdict = EDGE_CLIENT_RATE;
        double wait_s = (1.0 - c->tokens) / conf->rate;
        unsigned whole = wait_s < 3600.0 ? (unsigned) wait_s : 3600;
        *retry_after_s = whole + ((double) whole < wait_s ? 1 : 0);
        if (*retry_after_s == 0)
            *retry_after_s = 1;
    }
    else {
        if (conf->rate > 0)
            c->tokens -= 1.0;
        c->inflight++;
        *ticket = c->ticket;
    }
    pthread_mutex_unlock (&s->lock);
    return verdict;
}

void
edge_clients_release (edge_clients_t *self, const char *key, uint64_t ticket,
                      int64_t now)
{
    s_shard_t *s = s_shard (self, key);
    pthread_mutex_lock (&s->lock);
    s_client_t *c = zhashx_lookup (s->hash, key);
    if (c && c->ticket == ticket && c->inflight) {
        c->inflight--;
        c->seen = now;
    }
    pthread_mutex_unlock (&s->lock);
}

size_t
edge_clients_size (edge_clients_t *self)
{
    size_t n = 0;
    for (size_t i = 0; i < S_SHARDS; i++) {
        pthread_mutex_lock (&self->shards[i].lock);
        n += zhashx_size (self->shards[i].hash);
        pthread_mutex_unlock (&self->shards[i].lock);
    }
    return n;
}

int
edge_clients_parse_rate (const char *text, double *rate)
{
    if (!text)
        return -1;
    const char *slash = strchr (text, '/');
    size_t len = slash ? (size_t) (slash - text) : strlen (text);
    char number[24];
    if (len == 0 || len >= sizeof number)
        return -1;
    memcpy (number, text, len);
    number[len] = '\0';
    int64_t n;
    if (ferry_parse_int64 (number, &n) != 0 || n < 0 || n > 100000000)
        return -1;
    double per = 1.0;
    if (slash && strcmp (slash, "/s") == 0)
        per = 1.0;
    else if (slash && strcmp (slash, "/m") == 0)
        per = 60.0;
    else if (slash)
        return -1;
    *rate = (double) n / per;
    return 0;
}

/* ---- tests --------------------------------------------------------------- */

int
edge_clients_test (bool verbose)
{
    (void) verbose;
    double rate = 0;
    FERRY_CHECK (edge_clients_parse_rate ("200", &rate) == 0 && rate == 200);
    FERRY_CHECK (edge_clients_parse_rate ("200/s", &rate) == 0
                 && rate == 200);
    FERRY_CHECK (edge_clients_parse_rate ("30/m", &rate) == 0 && rate == 0.5);
    FERRY_CHECK (edge_clients_parse_rate ("0", &rate) == 0 && rate == 0);
    FERRY_CHECK (edge_clients_parse_rate ("fast", &rate) != 0);
    FERRY_CHECK (edge_clients_parse_rate ("10/h", &rate) != 0);
    FERRY_CHECK (edge_clients_parse_rate ("-1/s", &rate) != 0);
    FERRY_CHECK (edge_clients_parse_rate ("/s", &rate) != 0);

    /*  Rate 10/s, burst 3: three at once, then one per 100 ms; another
        client is not affected.  */
    edge_clients_conf_t conf = {.enabled = true, .rate = 10, .burst = 3,
                                .inflight = 0, .clients = 64,
                                .idle_ms = 60000};
    edge_clients_t *t = edge_clients_new (&conf);
    uint64_t ticket = 0, tickets[4];
    unsigned retry = 0;
    int64_t now = 1000000;
    for (int i = 0; i < 3; i++) {
        FERRY_CHECK (edge_clients_admit (t, "a:10.0.0.1", now, &tickets[i],
                                         &retry)
                     == EDGE_CLIENT_OK);
        FERRY_CHECK (tickets[i] != 0);
    }
    FERRY_CHECK (edge_clients_admit (t, "a:10.0.0.1", now, &ticket, &retry)
                 == EDGE_CLIENT_RATE);
    FERRY_CHECK (retry == 1);
    FERRY_CHECK (edge_clients_admit (t, "a:10.0.0.2", now, &ticket, &retry)
                 == EDGE_CLIENT_OK);
    edge_clients_release (t, "a:10.0.0.2", ticket, now);
    FERRY_CHECK (edge_clients_admit (t, "a:10.0.0.1", now + 50, &ticket,
                                     &retry)
                 == EDGE_CLIENT_RATE);
    FERRY_CHECK (edge_clients_admit (t, "a:10.0.0.1", now + 101, &ticket,
                                     &retry)
                 == EDGE_CLIENT_OK);
    edge_clients_destroy (&t);

    /*  A slow rate: Retry-After says when a token is back.  */
    conf.rate = 0.5;
    conf.burst = 1;
    t = edge_clients_new (&conf);
    FERRY_CHECK (edge_clients_admit (t, "h:x", now, &ticket, &retry)
                 == EDGE_CLIENT_OK);
    FERRY_CHECK (edge_clients_admit (t, "h:x", now, &ticket, &retry)
                 == EDGE_CLIENT_RATE);
    FERRY_CHECK (retry == 2);
    edge_clients_destroy (&t);

    /*  In flight: two at once; a release makes room; a stale ticket (of
        an evicted client) changes nothing.  */
    conf = (edge_clients_conf_t) {.enabled = true, .rate = 0, .burst = 1,
                                  .inflight = 2, .clients = 16,
                                  .idle_ms = 1000};
    t = edge_clients_new (&conf);
    FERRY_CHECK (edge_clients_admit (t, "a:c", now, &tickets[0], &retry)
                 == EDGE_CLIENT_OK);
    FERRY_CHECK (edge_clients_admit (t, "a:c", now, &tickets[1], &retry)
                 == EDGE_CLIENT_OK);
    FERRY_CHECK (edge_clients_admit (t, "a:c", now, &ticket, &retry)
                 == EDGE_CLIENT_INFLIGHT);
    FERRY_CHECK (retry == 1);
    edge_clients_release (t, "a:c", tickets[0] + 1000, now);
    FERRY_CHECK (edge_clients_admit (t, "a:c", now, &ticket, &retry)
                 == EDGE_CLIENT_INFLIGHT);
    edge_clients_release (t, "a:c", tickets[0], now);
    FERRY_CHECK (edge_clients_admit (t, "a:c", now, &tickets[2], &retry)
                 == EDGE_CLIENT_OK);
    edge_clients_release (t, "a:c", tickets[1], now);
    edge_clients_release (t, "a:c", tickets[2], now);
    edge_clients_destroy (&t);

    /*  Bounded: 16 entries at most (one per shard), however many
        clients; idle ones are forgotten.  */
    conf.inflight = 1000;
    conf.rate = 0;
    t = edge_clients_new (&conf);
    char key[32];
    for (int i = 0; i < 5000; i++) {
        snprintf (key, sizeof key, "a:10.1.%d.%d", i / 256, i % 256);
        FERRY_CHECK (edge_clients_admit (t, key, now, &ticket, &retry)
                     == EDGE_CLIENT_OK);
        edge_clients_release (t, key, ticket, now);
        FERRY_CHECK (edge_clients_size (t) <= 16);
    }
    /*  Much later, each new client sweeps idle ones away.  */
    for (int i = 0; i < 40; i++) {
        snprintf (key, sizeof key, "a:10.2.0.%d", i % 2);
        FERRY_CHECK (edge_clients_admit (t, key, now + 5000 + i, &ticket,
                                         &retry)
                     == EDGE_CLIENT_OK);
        edge_clients_release (t, key, ticket, now + 5000 + i);
    }
    FERRY_CHECK (edge_clients_size (t) <= 16);
    edge_clients_destroy (&t);
    return 0;
}

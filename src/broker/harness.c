/*  harness.c: runs the broker actor in-process for its tests, with DEALER
    sockets playing edges and workers over inproc:// (or tcp://127.0.0.1:*
    to check BIND's port report).

    The tests at the bottom of broker.c all start a broker, attach a few
    peers, send protocol messages and wait for answers; this module holds
    that set-up and the protocol's framing once, so each test reads as the
    behaviour it checks.  The harness owns the peers it makes and destroys
    them with the broker, so an early return on a failed check does not
    change the next test.  Every receive has a timeout, so a failing test
    ends instead of hanging.  */

#include "harness.h"
#include "envelope.h"
#include "proto.h"

#include <string.h>

broker_settings_t *
broker_harness_settings (bool fast)
{
    broker_settings_t *settings = broker_settings_new ();
    broker_settings_set_heartbeat (settings, fast ? 50 : 1000, 3);
    broker_settings_set_no_worker_grace (settings, 100);
    return settings;
}

int
broker_harness_start (broker_harness_t *self, broker_settings_t **settings_p,
                      bool tcp, bool verbose)
{
    /*  inproc endpoints are process-wide: each broker gets its own.  */
    static int counter;
    memset (self, 0, sizeof *self);
    broker_settings_t *settings
        = settings_p ? *settings_p : broker_harness_settings (false);
    self->actor = zactor_new (broker_actor, settings);
    broker_settings_destroy (settings_p ? settings_p : &settings);
    if (!self->actor)
        return -1;
    if (verbose)
        zstr_send (self->actor, "VERBOSE");
    char fe[64], be[64];
    if (tcp) {
        snprintf (fe, sizeof fe, "tcp://127.0.0.1:*");
        snprintf (be, sizeof be, "tcp://127.0.0.1:*");
    }
    else {
        counter++;
        snprintf (fe, sizeof fe, "inproc://broker-test-fe-%d", counter);
        snprintf (be, sizeof be, "inproc://broker-test-be-%d", counter);
    }
    zstr_sendx (self->actor, "BIND", fe, be, NULL);
    int rc = -1;
    if (zsock_recv (self->actor, "iss", &rc, &self->frontend, &self->backend)
        == -1)
        return -1;
    return rc;
}

int
broker_harness_start_served (broker_harness_t *self,
                             broker_settings_t **settings_p,
                             const char *service, const char *credit,
                             bool verbose, zsock_t **edge_p,
                             zsock_t **worker_p)
{
    if (broker_harness_start (self, settings_p, false, verbose))
        return -1;
    *edge_p = broker_harness_edge (self);
    *worker_p = broker_harness_worker (self, service, credit);
    return *edge_p && *worker_p && broker_harness_wait_workers (self, 1)
               ? 0
               : -1;
}

void
broker_harness_stop (broker_harness_t *self)
{
    for (size_t i = 0; i < BROKER_HARNESS_PEERS; i++)
        zsock_destroy (&self->peers[i]);
    zactor_destroy (&self->actor);
    free (self->frontend);
    free (self->backend);
    free (self->control);
    self->frontend = self->backend = self->control = NULL;
}

static zsock_t *
s_peer (broker_harness_t *self, const char *endpoint)
{
    for (size_t i = 0; i < BROKER_HARNESS_PEERS; i++)
        if (!self->peers[i]) {
            zsock_t *sock = zsock_new_dealer (endpoint);
            if (sock) {
                zsock_set_rcvtimeo (sock, BROKER_HARNESS_WAIT);
                zsock_set_linger (sock, 0);
            }
            self->peers[i] = sock;
            return sock;
        }
    return NULL;
}

zsock_t *
broker_harness_edge (broker_harness_t *self)
{
    return s_peer (self, self->frontend);
}

zsock_t *
broker_harness_worker (broker_harness_t *self, const char *service,
                       const char *credit)
{
    zsock_t *sock = s_peer (self, self->backend);
    if (sock && service)
        zstr_sendx (sock, FERRY_PROTO, FERRY_CMD_READY, service, credit,
                    NULL);
    return sock;
}

zsock_t *
broker_harness_worker_at (broker_harness_t *self, const char *service,
                          const char *credit, const char *process)
{
    zsock_t *sock = s_peer (self, self->backend);
    if (sock)
        zstr_sendx (sock, FERRY_PROTO, FERRY_CMD_READY, service, credit,
                    process, NULL);
    return sock;
}

void
broker_harness_drop (broker_harness_t *self, zsock_t **peer_p)
{
    for (size_t i = 0; i < BROKER_HARNESS_PEERS; i++)
        if (self->peers[i] && self->peers[i] == *peer_p)
            self->peers[i] = NULL;
    zsock_destroy (peer_p);
}

broker_harness_status_t
broker_harness_status (broker_harness_t *self)
{
    broker_harness_status_t status = {-1, -1, -1};
    int services;
    zstr_send (self->actor, "STATUS");
    zsock_recv (self->actor, "iiii", &status.workers, &status.inflight,
                &status.queued, &services);
    return status;
}

char *
broker_harness_status_json (broker_harness_t *self)
{
    static int counter;
    if (!self->control) {
        char endpoint[64];
        snprintf (endpoint, sizeof endpoint, "inproc://broker-test-ctl-%d",
                  ++counter);
        zstr_sendx (self->actor, "CONTROL", endpoint, NULL);
        int rc = -1;
        if (zsock_recv (self->actor, "is", &rc, &self->control) == -1
            || rc != 0) {
            zstr_free (&self->control);
            return NULL;
        }
    }
    zsock_t *client = zsock_new_dealer (self->control);
    if (!client)
        return NULL;
    zsock_set_rcvtimeo (client, BROKER_HARNESS_WAIT);
    zsock_set_linger (client, 0);
    zstr_sendx (client, FERRY_PROTO, FERRY_CMD_STATUS, NULL);
    zmsg_t *reply = broker_harness_recv (client, FERRY_CMD_STATUS, 1, 0);
    char *json = reply ? zmsg_popstr (reply) : NULL;
    zmsg_destroy (&reply);
    zsock_destroy (&client);
    return json;
}

bool
broker_harness_wait_workers (broker_harness_t *self, int expected)
{
    int64_t until = ferry_mono_ms () + BROKER_HARNESS_WAIT;
    while (ferry_mono_ms () < until) {
        if (broker_harness_status (self).workers == expected)
            return true;
        zclock_sleep (5);
    }
    return false;
}

broker_harness_status_t
broker_harness_wait_silent (broker_harness_t *self, zsock_t *keeper,
                            int expected)
{
    int64_t until = ferry_mono_ms () + BROKER_HARNESS_WAIT;
    broker_harness_status_t status = broker_harness_status (self);
    while (status.workers != expected && ferry_mono_ms () < until) {
        zstr_sendx (keeper, FERRY_PROTO, FERRY_CMD_HB, NULL);
        zclock_sleep (20);
        status = broker_harness_status (self);
    }
    return status;
}

void
broker_harness_request (zsock_t *edge, const char *service,
                        const char *msg_id, uint64_t deadline,
                        const char *flags, const void *payload, size_t size)
{
    char text[24];
    snprintf (text, sizeof text, "%" PRIu64, deadline);
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, FERRY_PROTO);
    zmsg_addstr (msg, FERRY_CMD_REQ);
    zmsg_addstr (msg, service);
    zmsg_addstr (msg, msg_id);
    zmsg_addstr (msg, text);
    zmsg_addstr (msg, flags);
    zmsg_addmem (msg, payload, size);
    zmsg_send (&msg, edge);
}

void
broker_harness_requests (zsock_t *edge, const char *service,
                         char (*ids)[FERRY_ID_LEN + 1], size_t count)
{
    for (size_t i = 0; i < count; i++) {
        ferry_id_generate (ids[i]);
        broker_harness_request (edge, service, ids[i],
                                broker_harness_deadline (), "", "x", 1);
    }
}

uint64_t
broker_harness_deadline (void)
{
    return ferry_wall_ms () + 10000;
}

void
broker_harness_reply (zsock_t *worker, const char *msg_id, const void *data,
                      size_t size)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, FERRY_PROTO);
    zmsg_addstr (msg, FERRY_CMD_REP);
    zmsg_addstr (msg, msg_id);
    zmsg_addmem (msg, data, size);
    zmsg_send (&msg, worker);
}

/*  Removes the first two frames of msg.  */
static void
s_pop2 (zmsg_t *msg)
{
    for (int i = 0; i < 2; i++) {
        zframe_t *frame = zmsg_pop (msg);
        zframe_destroy (&frame);
    }
}

zmsg_t *
broker_harness_recv (zsock_t *sock, const char *command, size_t count,
                     int ms)
{
    if (ms > 0)
        zsock_set_rcvtimeo (sock, ms);
    zmsg_t *msg = zmsg_recv (sock);
    if (ms > 0)
        zsock_set_rcvtimeo (sock, BROKER_HARNESS_WAIT);
    if (!msg)
        return NULL;
    zframe_t *proto = zmsg_first (msg), *cmd = zmsg_next (msg);
    if (zmsg_size (msg) != count + 2 || !zframe_streq (proto, FERRY_PROTO)
        || !zframe_streq (cmd, command)) {
        zmsg_destroy (&msg);
        return NULL;
    }
    s_pop2 (msg);
    return msg;
}

bool
broker_harness_silent (zsock_t *sock, int ms)
{
    zpoller_t *poller = zpoller_new (sock, NULL);
    void *which = zpoller_wait (poller, ms);
    zpoller_destroy (&poller);
    return which == NULL;
}

bool
broker_harness_wait_alive (zsock_t *sock, zsock_t *keeper, int ms)
{
    int64_t until = ferry_mono_ms () + ms;
    while (ferry_mono_ms () < until) {
        zstr_sendx (keeper, FERRY_PROTO, FERRY_CMD_HB, NULL);
        if (!broker_harness_silent (sock, 20))
            return true;
    }
    return false;
}

void
broker_harness_drain (zsock_t *sock)
{
    zsock_set_rcvtimeo (sock, 0);
    zmsg_t *msg;
    while ((msg = zmsg_recv (sock)))
        zmsg_destroy (&msg);
    zsock_set_rcvtimeo (sock, BROKER_HARNESS_WAIT);
}

zmsg_t *
broker_harness_work (zsock_t *worker, const char *msg_id, int ms)
{
    int64_t until = ferry_mono_ms () + ms;
    int64_t left;
    while ((left = until - ferry_mono_ms ()) > 0) {
        zsock_set_rcvtimeo (worker, (int) left);
        zmsg_t *msg = zmsg_recv (worker);
        zsock_set_rcvtimeo (worker, BROKER_HARNESS_WAIT);
        if (!msg)
            return NULL;
        if (zmsg_size (msg) == 6 && zframe_streq (zmsg_first (msg), "FRY1")
            && zframe_streq (zmsg_next (msg), FERRY_CMD_REQ)) {
            s_pop2 (msg);
            if (!msg_id || zframe_streq (zmsg_first (msg), msg_id))
                return msg;
        }
        zmsg_destroy (&msg);
    }
    return NULL;
}

bool
broker_harness_got_attempt (zsock_t *worker, const char *msg_id,
                            const char *attempt)
{
    zmsg_t *work = broker_harness_work (worker, msg_id, BROKER_HARNESS_WAIT);
    bool got = false;
    if (work) {
        zmsg_first (work);
        zmsg_next (work);
        zframe_t *frame = zmsg_next (work);
        got = !attempt || zframe_streq (frame, attempt);
        if (!got) {
            char *text = zframe_strdup (frame);
            fprintf (stderr, "# attempt %s, expected %s\n", text, attempt);
            free (text);
        }
    }
    zmsg_destroy (&work);
    return got;
}

zmsg_t *
broker_harness_dead (zsock_t *worker)
{
    int64_t until = ferry_mono_ms () + BROKER_HARNESS_WAIT;
    while (ferry_mono_ms () < until) {
        zmsg_t *msg = zmsg_recv (worker);
        if (!msg)
            return NULL;
        if (zmsg_size (msg) == 5 && zframe_streq (zmsg_first (msg), "FRY1")
            && zframe_streq (zmsg_next (msg), FERRY_CMD_DEAD)) {
            s_pop2 (msg);
            return msg;
        }
        zmsg_destroy (&msg);
    }
    return NULL;
}

bool
broker_harness_got_work (zsock_t *worker, const char *msg_id)
{
    zmsg_t *work = broker_harness_work (worker, msg_id, BROKER_HARNESS_WAIT);
    bool got = work != NULL;
    zmsg_destroy (&work);
    return got;
}

bool
broker_harness_got_reply (zsock_t *edge, const char *msg_id,
                          const char *body)
{
    zmsg_t *reply = broker_harness_recv (edge, FERRY_CMD_REP, 2, 0);
    bool ok = reply && zframe_streq (zmsg_first (reply), msg_id)
              && (!body || zframe_streq (zmsg_next (reply), body));
    zmsg_destroy (&reply);
    return ok;
}

bool
broker_harness_got_problem (zsock_t *edge, const char *msg_id,
                            unsigned status, bool retry_after)
{
    zmsg_t *msg = broker_harness_recv (edge, FERRY_CMD_REP, 2, 0);
    if (!msg)
        return false;
    char *id = zmsg_popstr (msg);
    zframe_t *payload = zmsg_pop (msg);
    char err[160];
    ferry_envelope_t *env = ferry_envelope_decode (
        zframe_data (payload), zframe_size (payload), NULL, err, sizeof err);
    bool ok = env && streq (id, msg_id)
              && ferry_envelope_kind (env) == FERRY_KIND_REPLY
              && ferry_envelope_status (env) == status
              && ferry_envelope_re (env)
              && streq (ferry_envelope_re (env), msg_id);
    if (ok && retry_after) {
        const char *value = ferry_envelope_header (env, "retry-after");
        ok = value && streq (value, "1");
    }
    if (!env)
        fprintf (stderr, "# problem reply does not decode: %s\n", err);
    ferry_envelope_destroy (&env);
    zframe_destroy (&payload);
    free (id);
    zmsg_destroy (&msg);
    return ok;
}

char *
broker_harness_edge_hb (zsock_t *edge)
{
    zstr_sendx (edge, FERRY_PROTO, FERRY_CMD_HB, NULL);
    zmsg_t *hb = broker_harness_recv (edge, FERRY_CMD_HB, 1, 0);
    char *services = hb ? zmsg_popstr (hb) : NULL;
    zmsg_destroy (&hb);
    return services;
}

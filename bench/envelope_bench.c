/*  envelope_bench.c: nanoseconds per operation of the envelope codec.

    Every GET through ferry costs four codec operations: the edge builds
    and encodes the request, the worker decodes it, builds and encodes the
    reply, and the edge decodes that.  This program times each on the
    envelopes of a typical GET /users/<id> so that a change to envelope.c
    can be judged by numbers, not guesses.  Figures only; nothing here
    passes or fails.  Usage: envelope_bench [iterations] (default 1000000).  */

#include "ferry.h"
#include "envelope.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/*  {"id": 12345}, as the edge packs a path parameter.  */
static const char s_args[] = "\x81\xa2id\xcd\x30\x39";
/*  A users row, as the worker packs it.  */
static const char s_body[] =
    "\x84\xa2id\xcd\x30\x39\xa4name\xa8user 123\xa5"
    "email\xb0user123@test.com\xa7"
    "created\xb9"
    "2024-01-01T00:00:00+00:00";
static const char *s_tp =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

static double
s_now_ns (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/*  The request as edge_request_encode builds it.  */
static int
s_request_encode (msgpack_sbuffer *out)
{
    char err[160];
    ferry_envelope_t *env = ferry_envelope_new (FERRY_KIND_REQUEST);
    ferry_envelope_set_id (env, "01JD6Z3K7Q8R9S0T1V2W3X4Y5Z");
    ferry_envelope_set_cid (env, "9f0c2a4e-6b1d-4c3e-8f7a-2d5b6c7e8f90");
    ferry_envelope_set_service (env, "app");
    ferry_envelope_set_operation (env, "get_user");
    ferry_envelope_set_traceparent (env, s_tp);
    ferry_envelope_set_created (env, 1700000000000);
    ferry_envelope_set_deadline (env, 1700000030000);
    ferry_envelope_set_attempt (env, 1);
    int rc = ferry_envelope_set_args_raw (env, s_args, sizeof s_args - 1, err,
                                          sizeof err);
    rc |= ferry_envelope_encode (env, out);
    ferry_envelope_destroy (&env);
    return rc;
}

/*  The reply as the worker builds it for a found row.  */
static int
s_reply_encode (const ferry_envelope_t *request, msgpack_sbuffer *out)
{
    char err[160];
    ferry_envelope_t *reply = ferry_envelope_new_reply (request, 200);
    ferry_envelope_set_header (reply, "traceparent", s_tp);
    ferry_envelope_set_traceparent (reply, s_tp);
    int rc = ferry_envelope_set_body_raw (reply, s_body, sizeof s_body - 1,
                                          err, sizeof err);
    rc |= ferry_envelope_encode (reply, out);
    ferry_envelope_destroy (&reply);
    return rc;
}

static int
s_decode (const msgpack_sbuffer *in)
{
    char err[160];
    ferry_envelope_t *env = ferry_envelope_decode (in->data, in->size, NULL,
                                                   err, sizeof err);
    if (!env) {
        fprintf (stderr, "decode: %s\n", err);
        return -1;
    }
    /*  The worker reads args, the edge the body: both must be there.  */
    int rc = ferry_envelope_args (env) || ferry_envelope_body (env) ? 0 : -1;
    ferry_envelope_destroy (&env);
    return rc;
}

int
main (int argc, char *argv[])
{
    long n = argc > 1 ? atol (argv[1]) : 1000000;
    if (n <= 0) {
        fprintf (stderr, "usage: envelope_bench [iterations]\n");
        return 2;
    }
    char err[160];
    msgpack_sbuffer req, rep;
    msgpack_sbuffer_init (&req);
    msgpack_sbuffer_init (&rep);
    if (s_request_encode (&req))
        return 1;
    ferry_envelope_t *request = ferry_envelope_decode (req.data, req.size,
                                                       NULL, err, sizeof err);
    if (!request || s_reply_encode (request, &rep))
        return 1;

    const char *names[] = {"request build+encode (edge)",
                           "request decode (worker)",
                           "reply build+encode (worker)",
                           "reply decode (edge)"};
    msgpack_sbuffer scratch;
    msgpack_sbuffer_init (&scratch);
    int rc = 0;
    for (int op = 0; op < 4; op++) {
        double start = s_now_ns ();
        for (long i = 0; i < n && rc == 0; i++) {
            msgpack_sbuffer_clear (&scratch);
            switch (op) {
            case 0: rc = s_request_encode (&scratch); break;
            case 1: rc = s_decode (&req); break;
            case 2: rc = s_reply_encode (request, &scratch); break;
            default: rc = s_decode (&rep); break;
            }
        }
        double ns = (s_now_ns () - start) / (double) n;
        printf ("%-30s %8.0f ns/op (%zu bytes)\n", names[op], ns,
                op < 2 ? req.size : rep.size);
    }
    ferry_envelope_destroy (&request);
    msgpack_sbuffer_destroy (&scratch);
    msgpack_sbuffer_destroy (&req);
    msgpack_sbuffer_destroy (&rep);
    return rc ? 1 : 0;
}

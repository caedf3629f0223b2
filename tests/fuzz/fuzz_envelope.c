/*  fuzz_envelope.c: libFuzzer target for the envelope codec.

    Every frame a peer sends goes through ferry_envelope_decode and
    ferry_msgpack_check first, so they must refuse any byte string without
    crashing, leaking or reading out of bounds.  The input is decoded with
    the default limits and with tight ones (to reach the limit checks at
    small sizes); an envelope that decodes is encoded again, and that
    encoding must decode and encode to the same bytes (a decoder that
    accepts what the encoder would not write, or an encoder that writes what
    the decoder refuses, breaks the round trip).  Body and args are turned
    into JSON as the edge does with replies.  */

#include "envelope.h"
#include "json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static const ferry_limits_t s_tight = {
    .max_frame = 4096,
    .max_depth = 4,
    .max_string = 64,
    .max_count = 8,
    .max_total = 64,
};

static void
s_fail (const char *what, const char *err)
{
    fprintf (stderr, "fuzz_envelope: %s: %s\n", what, err);
    abort ();
}

static void
s_to_json (const msgpack_object *obj)
{
    if (!obj)
        return;
    size_t len = 0;
    char *text = ferry_msgpack_to_json (obj, &len);
    if (text && strlen (text) != len)
        s_fail ("ferry_msgpack_to_json", "length differs from the text");
    free (text);
}

/*  Encodes env, checks the bytes and that they survive another round.  */
static void
s_round_trip (const ferry_envelope_t *env)
{
    msgpack_sbuffer first, second;
    msgpack_sbuffer_init (&first);
    msgpack_sbuffer_init (&second);
    char err[256];
    /*  A decoded envelope may still lack what encode requires of its kind
        (encode checks more than decode); that is not a bug.  */
    if (ferry_envelope_encode (env, &first) == 0) {
        if (ferry_msgpack_check (first.data, first.size, NULL, err,
                                 sizeof err))
            s_fail ("check of an encoded envelope", err);
        ferry_envelope_t *again = ferry_envelope_decode (
            first.data, first.size, NULL, err, sizeof err);
        if (!again)
            s_fail ("decode of an encoded envelope", err);
        if (ferry_envelope_encode (again, &second))
            s_fail ("encode of a re-decoded envelope", "refused");
        if (second.size != first.size
            || memcmp (first.data, second.data, first.size) != 0)
            s_fail ("round trip", "second encoding differs from the first");
        ferry_envelope_destroy (&again);
    }
    msgpack_sbuffer_destroy (&first);
    msgpack_sbuffer_destroy (&second);
}

static void
s_exercise (ferry_envelope_t *env)
{
    (void) ferry_envelope_kind (env);
    (void) ferry_envelope_version (env);
    (void) ferry_envelope_id (env);
    (void) ferry_envelope_arg (env, "id");
    (void) ferry_envelope_header (env, "Content-Type");
    size_t n = ferry_envelope_header_count (env);
    for (size_t i = 0; i <= n; i++) {
        const char *name, *value;
        (void) ferry_envelope_header_at (env, i, &name, &value);
    }
    s_to_json (ferry_envelope_args (env));
    s_to_json (ferry_envelope_body (env));
    s_round_trip (env);
    if (ferry_envelope_kind (env) == FERRY_KIND_REQUEST
        && ferry_envelope_id (env)) {
        ferry_envelope_t *reply = ferry_envelope_new_reply (env, 500);
        ferry_envelope_set_problem (reply, 500, NULL, "fuzz", NULL);
        s_round_trip (reply);
        ferry_envelope_destroy (&reply);
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    char err[256];
    (void) ferry_msgpack_check (data, size, NULL, err, sizeof err);
    (void) ferry_msgpack_check (data, size, &s_tight, err, sizeof err);

    ferry_envelope_t *env = ferry_envelope_decode (data, size, NULL, err,
                                                   sizeof err);
    if (env) {
        s_exercise (env);
        ferry_envelope_destroy (&env);
    }
    else if (strlen (err) == 0)
        s_fail ("decode", "refused without a reason");
    env = ferry_envelope_decode (data, size, &s_tight, err, sizeof err);
    ferry_envelope_destroy (&env);
    return 0;
}

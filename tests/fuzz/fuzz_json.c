/*  fuzz_json.c: libFuzzer target for JSON -> msgpack conversion.

    The edge converts every request body with ferry_json_to_msgpack, so any
    text must be refused or converted without crashing or leaking.  What it
    converts must be one msgpack value within the limits (the edge puts it
    in an envelope unchecked), must convert back to JSON (it has no form
    JSON cannot express), and that JSON must convert to the same msgpack
    bytes again.  Tight limits are tried as well, to reach the limit
    checks with small inputs.  */

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
    fprintf (stderr, "fuzz_json: %s: %s\n", what, err);
    abort ();
}

/*  Converts text under limits; on success checks the invariants above.  */
static void
s_convert (const char *text, size_t len, const ferry_limits_t *limits)
{
    msgpack_sbuffer out, again;
    msgpack_sbuffer_init (&out);
    msgpack_sbuffer_init (&again);
    char err[256];
    if (ferry_json_to_msgpack (text, len, limits, &out, err, sizeof err)) {
        if (strlen (err) == 0)
            s_fail ("ferry_json_to_msgpack", "refused without a reason");
        goto done;
    }
    /*  As a body it sits one level below the envelope's map.  */
    ferry_limits_t body = limits ? *limits : ferry_limits_default;
    body.max_depth--;
    if (ferry_msgpack_check (out.data, out.size, &body, err, sizeof err))
        s_fail ("check of converted JSON", err);
    msgpack_unpacked unpacked;
    msgpack_unpacked_init (&unpacked);
    size_t off = 0;
    if (msgpack_unpack_next (&unpacked, out.data, out.size, &off)
            != MSGPACK_UNPACK_SUCCESS
        || off != out.size)
        s_fail ("unpack of converted JSON", "not one msgpack value");
    size_t jlen = 0;
    char *json = ferry_msgpack_to_json (&unpacked.data, &jlen);
    if (!json)
        s_fail ("ferry_msgpack_to_json", "converted JSON has no JSON form");
    if (ferry_json_to_msgpack (json, jlen, limits, &again, err, sizeof err))
        s_fail ("conversion of the JSON written back", err);
    if (again.size != out.size || memcmp (again.data, out.data, out.size))
        s_fail ("round trip", "msgpack differs after JSON and back");
    free (json);
    msgpack_unpacked_destroy (&unpacked);
done:
    msgpack_sbuffer_destroy (&out);
    msgpack_sbuffer_destroy (&again);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    s_convert ((const char *) data, size, NULL);
    s_convert ((const char *) data, size, &s_tight);
    return 0;
}

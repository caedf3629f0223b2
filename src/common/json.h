/*  json.h: JSON <-> msgpack conversion, on jansson.

    The edge turns request bodies into msgpack and replies back into JSON;
    the worker binds jsonb parameters and reads json columns.  Input is
    bounded: ferry_json_to_msgpack refuses nesting deeper than the limits
    allow and anything that is not exactly one JSON value.  Integers become
    msgpack ints, other numbers float64; msgpack bin becomes a base64
    string and non-string map keys are refused in JSON output.  */

#ifndef FERRY_JSON_H_INCLUDED
#define FERRY_JSON_H_INCLUDED

#include "envelope.h"

/*  Appends the msgpack form of the JSON text to out.  Returns 0, or -1 with
    a reason (and position) in err.  The value must fit as an envelope's
    body: nesting at most limits->max_depth - 1, no duplicate object keys,
    no \u0000, integers within int64.  limits may be NULL for defaults.  */
int ferry_json_to_msgpack (const char *json, size_t len,
                           const ferry_limits_t *limits, msgpack_sbuffer *out,
                           char *err, size_t errlen);

/*  Compact JSON text of obj in a new NUL-ended buffer the caller frees with
    free(); *len gets its length.  Returns NULL when obj has no JSON form (a
    non-string or duplicate map key, NaN or infinity, ext, invalid UTF-8, an
    unsigned integer above INT64_MAX).  */
char *ferry_msgpack_to_json (const msgpack_object *obj, size_t *len);

/*  Packs a jansson value into pk.  Returns 0 or -1.  */
struct json_t;
int ferry_json_pack (const struct json_t *value, msgpack_packer *pk);

#endif

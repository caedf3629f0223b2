/*  json.c: JSON <-> msgpack conversion on jansson (see json.h).

    JSON bodies come from HTTP clients, so parsing is strict: exactly one
    value with nothing after it, duplicate object keys refused (two readers
    could otherwise disagree about which value counts), no \u0000 in
    strings (PostgreSQL text cannot hold it), integers beyond int64 refused
    by jansson.  jansson bounds its own recursion at 2048 levels; ferry's
    limits are far lower, so the parsed tree is measured before anything is
    packed.

    In the other direction a msgpack value becomes JSON text when it has a
    faithful JSON form: bin becomes a base64 string, while ext values, map
    keys that are not strings, duplicate map keys, NaN and infinities,
    invalid UTF-8 and unsigned integers above INT64_MAX (jansson's integers
    are long long; a real would silently lose digits) have none.  */

#include "ferry.h"
#include "json.h"

#include <czmq.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int s_measure (const json_t *value, size_t depth,
                      const ferry_limits_t *lim, size_t *total, char *err,
                      size_t errlen);
static json_t *s_to_json (const msgpack_object *obj, int *precision);
static void s_err (char *err, size_t errlen, const char *fmt, ...)
    __attribute__ ((format (printf, 3, 4)));

int
ferry_json_to_msgpack (const char *json, size_t len,
                       const ferry_limits_t *limits, msgpack_sbuffer *out,
                       char *err, size_t errlen)
{
    const ferry_limits_t *lim = limits ? limits : &ferry_limits_default;
    if (len > lim->max_frame) {
        s_err (err, errlen, "JSON text of %zu bytes exceeds the limit of %zu",
               len, lim->max_frame);
        return -1;
    }
    json_error_t error;
    json_t *root = json_loadb (json, len,
                               JSON_DECODE_ANY | JSON_REJECT_DUPLICATES,
                               &error);
    if (!root) {
        s_err (err, errlen, "invalid JSON at line %d column %d: %s",
               error.line, error.column, error.text);
        return -1;
    }
    /*  The value becomes an envelope's body or args, one level below the
        envelope's top map, so it gets one level less than the limit.  */
    size_t total = 0;
    if (s_measure (root, 2, lim, &total, err, errlen)) {
        json_decref (root);
        return -1;
    }
    msgpack_packer pk;
    msgpack_packer_init (&pk, out, msgpack_sbuffer_write);
    int rc = ferry_json_pack (root, &pk);
    json_decref (root);
    if (rc)
        s_err (err, errlen, "cannot pack the JSON value");
    return rc;
}

/*  The growing buffer that ferry_msgpack_to_json prints into.  */
typedef struct {
    char *data;
    size_t size, alloc;
} s_text_t;

static int
s_text_append (const char *buffer, size_t size, void *data)
{
    s_text_t *text = data;
    if (text->alloc - text->size <= size) { /* room for the NUL too */
        size_t alloc = text->alloc * 2;
        while (alloc - text->size <= size)
            alloc *= 2;
        text->data = ferry_realloc (text->data, alloc);
        text->alloc = alloc;
    }
    memcpy (text->data + text->size, buffer, size);
    text->size += size;
    return 0;
}

char *
ferry_msgpack_to_json (const msgpack_object *obj, size_t *len)
{
    int precision = 1;
    json_t *root = s_to_json (obj, &precision);
    if (!root)
        return NULL;
    size_t flags = JSON_ENCODE_ANY | JSON_COMPACT | JSON_PRESERVE_ORDER
                   | JSON_REAL_PRECISION (precision);
    /*  Printed once, into a buffer that grows: jansson's json_dumpb would
        need a first pass to measure.  */
    s_text_t text = {ferry_malloc (256), 0, 256};
    if (json_dump_callback (root, s_text_append, &text, flags) != 0
        || text.size == 0) {
        free (text.data);
        text.data = NULL;
    }
    else {
        text.data[text.size] = '\0';
        if (len)
            *len = text.size;
    }
    json_decref (root);
    return text.data;
}

int
ferry_json_pack (const struct json_t *value, msgpack_packer *pk)
{
    if (!value)
        return -1;
    switch (json_typeof (value)) {
    case JSON_NULL:
        return msgpack_pack_nil (pk);
    case JSON_TRUE:
        return msgpack_pack_true (pk);
    case JSON_FALSE:
        return msgpack_pack_false (pk);
    case JSON_INTEGER:
        return msgpack_pack_int64 (pk, json_integer_value (value));
    case JSON_REAL:
        return msgpack_pack_double (pk, json_real_value (value));
    case JSON_STRING: {
        size_t n = json_string_length (value);
        return msgpack_pack_str (pk, n)
               | msgpack_pack_str_body (pk, json_string_value (value), n);
    }
    case JSON_ARRAY: {
        size_t n = json_array_size (value);
        int rc = msgpack_pack_array (pk, n);
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = ferry_json_pack (json_array_get (value, i), pk);
        return rc;
    }
    case JSON_OBJECT: {
        int rc = msgpack_pack_map (pk, json_object_size (value));
        const char *key;
        json_t *member;
        /*  jansson's iteration takes a non-const object; it only reads.  */
        json_object_foreach ((json_t *) value, key, member) {
            size_t n = strlen (key);
            rc |= msgpack_pack_str (pk, n) | msgpack_pack_str_body (pk, key, n);
            rc |= ferry_json_pack (member, pk);
            if (rc)
                break;
        }
        return rc;
    }
    }
    return -1;
}

/*  Bounds depth, entries per container and objects in all (keys count as
    objects, as they do in msgpack).  Recursion stops at max_depth, far
    below jansson's own 2048.  */
static int
s_measure (const json_t *value, size_t depth, const ferry_limits_t *lim,
           size_t *total, char *err, size_t errlen)
{
    if (++*total > lim->max_total) {
        s_err (err, errlen, "JSON value has more than %zu elements",
               lim->max_total);
        return -1;
    }
    /*  Strings are bounded too: the body must pass the peers'
        ferry_msgpack_check, which refuses any str over max_string (found
        by tests/fuzz/fuzz_json).  */
    if (json_is_string (value)
        && json_string_length (value) > lim->max_string) {
        s_err (err, errlen, "JSON string of %zu bytes exceeds %zu",
               json_string_length (value), lim->max_string);
        return -1;
    }
    if (!json_is_array (value) && !json_is_object (value))
        return 0;
    if (depth > lim->max_depth) {
        s_err (err, errlen, "JSON nested deeper than %zu levels",
               lim->max_depth - 1);
        return -1;
    }
    if (json_is_array (value)) {
        size_t n = json_array_size (value);
        if (n > lim->max_count) {
            s_err (err, errlen, "JSON array of %zu entries exceeds %zu", n,
                   lim->max_count);
            return -1;
        }
        for (size_t i = 0; i < n; i++)
            if (s_measure (json_array_get (value, i), depth + 1, lim, total,
                           err, errlen))
                return -1;
        return 0;
    }
    size_t n = json_object_size (value);
    if (n > lim->max_count) {
        s_err (err, errlen, "JSON object of %zu members exceeds %zu", n,
               lim->max_count);
        return -1;
    }
    const char *key;
    json_t *member;
    json_object_foreach ((json_t *) value, key, member) {
        ++*total;
        if (strlen (key) > lim->max_string) {
            s_err (err, errlen, "JSON object key of %zu bytes exceeds %zu",
                   strlen (key), lim->max_string);
            return -1;
        }
        if (s_measure (member, depth + 1, lim, total, err, errlen))
            return -1;
    }
    return 0;
}

/*  The fewest significant digits (at most 17) that give x back, as a
    float when it came from a float32.  */
static int
s_digits (double x, bool single)
{
    char buf[40];
    for (int p = 1; p < 17; p++) {
        snprintf (buf, sizeof buf, "%.*g", p, x);
        double y = strtod (buf, NULL);
        if (single ? (float) y == (float) x : y == x)
            return p;
    }
    return 17;
}

static json_t *
s_real (double x, bool single, int *precision)
{
    if (!isfinite (x))
        return NULL;
    /*  jansson prints every real with one precision; the largest that any
        value needs keeps each exact and spares "0.1" its 17 digits.  */
    int p = s_digits (x, single);
    if (p > *precision)
        *precision = p;
    return json_real (x);
}

static char *
s_base64 (const void *data, size_t size)
{
    zarmour_t *armour = zarmour_new ();
    zarmour_set_mode (armour, ZARMOUR_MODE_BASE64_STD);
    char *text = zarmour_encode (armour, (const byte *) data, size);
    zarmour_destroy (&armour);
    return text;
}

/*  A new jansson value for obj, or NULL when it has no JSON form.  */
static json_t *
s_to_json (const msgpack_object *obj, int *precision)
{
    switch (obj->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null ();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean (obj->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (obj->via.u64 > INT64_MAX)
            return NULL;
        return json_integer ((json_int_t) obj->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer (obj->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
        return s_real (obj->via.f64, true, precision);
    case MSGPACK_OBJECT_FLOAT64:
        return s_real (obj->via.f64, false, precision);
    /*  msgpack-c gives an empty str or bin a NULL pointer, which jansson
        and zarmour refuse.  */
    case MSGPACK_OBJECT_STR:
        return json_stringn (obj->via.str.size ? obj->via.str.ptr : "",
                             obj->via.str.size);
    case MSGPACK_OBJECT_BIN: {
        if (obj->via.bin.size == 0)
            return json_string ("");
        char *text = s_base64 (obj->via.bin.ptr, obj->via.bin.size);
        json_t *value = text ? json_string (text) : NULL;
        free (text);
        return value;
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *array = json_array ();
        for (uint32_t i = 0; i < obj->via.array.size; i++)
            if (json_array_append_new (
                    array, s_to_json (&obj->via.array.ptr[i], precision))) {
                json_decref (array);
                return NULL;
            }
        return array;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *map = json_object ();
        for (uint32_t i = 0; i < obj->via.map.size; i++) {
            const msgpack_object_kv *kv = &obj->via.map.ptr[i];
            const char *key = kv->key.via.str.size ? kv->key.via.str.ptr
                                                   : "";
            if (kv->key.type != MSGPACK_OBJECT_STR
                || json_object_getn (map, key, kv->key.via.str.size)
                || json_object_setn_new (map, key, kv->key.via.str.size,
                                         s_to_json (&kv->val, precision))) {
                json_decref (map);
                return NULL;
            }
        }
        return map;
    }
    default: /* ext has no JSON form */
        return NULL;
    }
}

static void
s_err (char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list args;
    va_start (args, fmt);
    vsnprintf (err, errlen, fmt, args);
    va_end (args);
}

/* ---- tests --------------------------------------------------------------- */

int ferry_json_test (bool verbose);
int ferry_json_out_test (bool verbose);

/*  JSON text -> msgpack -> JSON text, compared with want (NULL: the
    conversion to msgpack must fail and err must hold want_err).  */
static bool
s_test_round (const char *json, const ferry_limits_t *lim, const char *want,
              const char *want_err)
{
    char err[200] = "";
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    int rc = ferry_json_to_msgpack (json, strlen (json), lim, &sb, err,
                                    sizeof err);
    bool ok;
    if (!want)
        ok = rc == -1 && strstr (err, want_err);
    else {
        msgpack_unpacked up;
        msgpack_unpacked_init (&up);
        size_t off = 0;
        char *text = NULL;
        if (rc == 0 && ferry_msgpack_check (sb.data, sb.size, NULL, err,
                                            sizeof err) == 0
            && msgpack_unpack_next (&up, sb.data, sb.size, &off)
                   == MSGPACK_UNPACK_SUCCESS)
            text = ferry_msgpack_to_json (&up.data, NULL);
        ok = text && strcmp (text, want) == 0;
        if (!ok)
            fprintf (stderr, "# got %s\n", text ? text : err);
        free (text);
        msgpack_unpacked_destroy (&up);
    }
    if (!ok)
        fprintf (stderr, "# %.60s: rc %d, err '%s'\n", json, rc, err);
    msgpack_sbuffer_destroy (&sb);
    return ok;
}

int
ferry_json_test (bool verbose)
{
    const char *doc = "{\"a\":1,\"b\":-2,\"c\":1.5,\"d\":\"x\",\"e\":true,"
                      "\"f\":false,\"g\":null,\"h\":[1,[2,{}]],\"i\":\"\"}";
    FERRY_CHECK (s_test_round (doc, NULL, doc, NULL));
    FERRY_CHECK (s_test_round (" 42 ", NULL, "42", NULL));
    FERRY_CHECK (s_test_round ("\"Zo\\u00eb \\ud83d\\udea2\"", NULL,
                               "\"Zo\xc3\xab \xf0\x9f\x9a\xa2\"", NULL));
    FERRY_CHECK (s_test_round ("[9223372036854775807,-9223372036854775808]",
                               NULL,
                               "[9223372036854775807,-9223372036854775808]",
                               NULL));
    FERRY_CHECK (s_test_round ("[0.1,1e300,-0.0,0.30000000000000004]", NULL,
                               "[0.10000000000000001,1.0000000000000001e300,"
                               "-0.0,0.30000000000000004]",
                               NULL));
    FERRY_CHECK (s_test_round ("[0.1,2.5e-8]", NULL, "[0.1,2.5e-8]", NULL));

    FERRY_CHECK (s_test_round ("", NULL, NULL, "invalid JSON"));
    FERRY_CHECK (s_test_round ("{\"a\":", NULL, NULL, "invalid JSON"));
    FERRY_CHECK (s_test_round ("{} x", NULL, NULL, "invalid JSON"));
    FERRY_CHECK (s_test_round ("1 2", NULL, NULL, "invalid JSON"));
    FERRY_CHECK (s_test_round ("{\"a\":1,\"a\":2}", NULL, NULL, "duplicate"));
    FERRY_CHECK (s_test_round ("\"a\\u0000b\"", NULL, NULL, "invalid JSON"));
    FERRY_CHECK (s_test_round ("\"\xff\"", NULL, NULL, "invalid JSON"));
    FERRY_CHECK (s_test_round ("9223372036854775808", NULL, NULL,
                               "too big"));
    FERRY_CHECK (s_test_round ("NaN", NULL, NULL, "invalid JSON"));

    /*  31 levels fit an envelope's body, 32 do not; 3000 are beyond
        jansson's own parser limit and must fail cleanly too.  */
    char deep[3001 * 2 + 1];
    for (size_t levels = 31; levels <= 33; levels++) {
        memset (deep, '[', levels);
        memset (deep + levels, ']', levels);
        deep[2 * levels] = '\0';
        if (levels == 31)
            FERRY_CHECK (s_test_round (deep, NULL, deep, NULL));
        else
            FERRY_CHECK (s_test_round (deep, NULL, NULL,
                                       "nested deeper than 31 levels"));
    }
    memset (deep, '[', 3000);
    memset (deep + 3000, ']', 3000);
    deep[6000] = '\0';
    FERRY_CHECK (s_test_round (deep, NULL, NULL, "invalid JSON"));

    ferry_limits_t lim = ferry_limits_default;
    lim.max_count = 2;
    FERRY_CHECK (s_test_round ("[1,2]", &lim, "[1,2]", NULL));
    FERRY_CHECK (s_test_round ("[1,2,3]", &lim, NULL, "3 entries"));
    FERRY_CHECK (s_test_round ("{\"a\":1,\"b\":2,\"c\":3}", &lim, NULL,
                               "3 members"));
    lim = ferry_limits_default;
    lim.max_total = 4; /* the array and its entries */
    FERRY_CHECK (s_test_round ("[1,2,3]", &lim, "[1,2,3]", NULL));
    FERRY_CHECK (s_test_round ("{\"a\":1,\"b\":2}", &lim, NULL,
                               "more than 4"));
    lim = ferry_limits_default;
    lim.max_frame = 4;
    FERRY_CHECK (s_test_round ("[1,2]", &lim, NULL, "exceeds the limit"));

    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sb, msgpack_sbuffer_write);
    FERRY_CHECK (ferry_json_pack (NULL, &pk) == -1);
    msgpack_sbuffer_destroy (&sb);
    if (verbose)
        printf ("# json: JSON to msgpack\n");
    return 0;
}

/*  msgpack built by build() -> JSON, compared with want (NULL: none).  */
static bool
s_test_out (void (*build) (msgpack_packer *), const char *want)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sb, msgpack_sbuffer_write);
    build (&pk);
    msgpack_unpacked up;
    msgpack_unpacked_init (&up);
    size_t off = 0, len = 0;
    char *text = NULL;
    if (msgpack_unpack_next (&up, sb.data, sb.size, &off)
        == MSGPACK_UNPACK_SUCCESS)
        text = ferry_msgpack_to_json (&up.data, &len);
    bool ok = want ? text && strcmp (text, want) == 0 && len == strlen (want)
                   : text == NULL;
    if (!ok)
        fprintf (stderr, "# got %s, want %s\n", text ? text : "(null)",
                 want ? want : "(null)");
    free (text);
    msgpack_unpacked_destroy (&up);
    msgpack_sbuffer_destroy (&sb);
    return ok;
}

static void
s_test_key (msgpack_packer *pk, const char *key)
{
    msgpack_pack_str (pk, strlen (key));
    msgpack_pack_str_body (pk, key, strlen (key));
}

static void
s_build_nested (msgpack_packer *pk)
{
    msgpack_pack_map (pk, 4);
    s_test_key (pk, "rows");
    msgpack_pack_array (pk, 2);
    msgpack_pack_map (pk, 2);
    s_test_key (pk, "id");
    msgpack_pack_uint64 (pk, INT64_MAX);
    s_test_key (pk, "f");
    msgpack_pack_float (pk, 0.1f);
    msgpack_pack_map (pk, 1);
    s_test_key (pk, "bin");
    msgpack_pack_bin (pk, 4);
    msgpack_pack_bin_body (pk, "\x00\x01\xfe\xff", 4);
    s_test_key (pk, "neg");
    msgpack_pack_int64 (pk, INT64_MIN);
    s_test_key (pk, "empty");
    msgpack_pack_array (pk, 0);
    s_test_key (pk, "nul\x01");
    msgpack_pack_str (pk, 3);
    msgpack_pack_str_body (pk, "a\0b", 3);
}

static void
s_build_nan (msgpack_packer *pk)
{
    msgpack_pack_array (pk, 1);
    msgpack_pack_double (pk, NAN);
}

static void
s_build_inf (msgpack_packer *pk)
{
    msgpack_pack_float (pk, INFINITY);
}

static void
s_build_ext (msgpack_packer *pk)
{
    msgpack_pack_map (pk, 1);
    s_test_key (pk, "t");
    msgpack_pack_ext (pk, 1, -1);
    msgpack_pack_ext_body (pk, "x", 1);
}

static void
s_build_huge (msgpack_packer *pk)
{
    msgpack_pack_uint64 (pk, (uint64_t) INT64_MAX + 1);
}

static void
s_build_int_key (msgpack_packer *pk)
{
    msgpack_pack_map (pk, 1);
    msgpack_pack_int (pk, 1);
    msgpack_pack_int (pk, 2);
}

static void
s_build_dup_key (msgpack_packer *pk)
{
    msgpack_pack_map (pk, 2);
    s_test_key (pk, "a");
    msgpack_pack_int (pk, 1);
    s_test_key (pk, "a");
    msgpack_pack_int (pk, 2);
}

static void
s_build_bad_utf8 (msgpack_packer *pk)
{
    msgpack_pack_str (pk, 2);
    msgpack_pack_str_body (pk, "\xc3\x28", 2);
}

/*  msgpack-c unpacks an empty str or bin with a NULL pointer.  */
static void
s_build_empty (msgpack_packer *pk)
{
    msgpack_pack_map (pk, 3);
    s_test_key (pk, "");
    s_test_key (pk, "");
    s_test_key (pk, "b");
    msgpack_pack_bin (pk, 0);
    s_test_key (pk, "c");
    msgpack_pack_array (pk, 1);
    s_test_key (pk, "");
}

static void
s_build_dup_empty_key (msgpack_packer *pk)
{
    msgpack_pack_map (pk, 2);
    s_test_key (pk, "");
    msgpack_pack_int (pk, 1);
    s_test_key (pk, "");
    msgpack_pack_int (pk, 2);
}

/*  Text far longer than the first buffer.  */
static void
s_build_long (msgpack_packer *pk)
{
    msgpack_pack_array (pk, 100);
    for (int i = 0; i < 100; i++)
        s_test_key (pk, "0123456789abcdefghij");
}

int
ferry_json_out_test (bool verbose)
{
    /*  The object msgpack-c makes of an empty str, built by hand so the
        test does not depend on how msgpack-c unpacks it.  */
    msgpack_object empty = {.type = MSGPACK_OBJECT_STR};
    size_t len = 99;
    char *text = ferry_msgpack_to_json (&empty, &len);
    FERRY_CHECK (text && strcmp (text, "\"\"") == 0 && len == 2);
    free (text);
    FERRY_CHECK (s_test_out (s_build_empty,
                             "{\"\":\"\",\"b\":\"\",\"c\":[\"\"]}"));
    FERRY_CHECK (s_test_out (s_build_dup_empty_key, NULL));
    char want[100 * 23 + 3] = "[";
    for (int i = 0; i < 100; i++)
        strcat (want, &",\"0123456789abcdefghij\""[i == 0]);
    strcat (want, "]");
    FERRY_CHECK (s_test_out (s_build_long, want));
    FERRY_CHECK (s_test_out (s_build_nested,
                             "{\"rows\":[{\"id\":9223372036854775807,"
                             "\"f\":0.1},{\"bin\":\"AAH+/w==\"}],"
                             "\"neg\":-9223372036854775808,\"empty\":[],"
                             "\"nul\\u0001\":\"a\\u0000b\"}"));
    FERRY_CHECK (s_test_out (s_build_nan, NULL));
    FERRY_CHECK (s_test_out (s_build_inf, NULL));
    FERRY_CHECK (s_test_out (s_build_ext, NULL));
    FERRY_CHECK (s_test_out (s_build_huge, NULL));
    FERRY_CHECK (s_test_out (s_build_int_key, NULL));
    FERRY_CHECK (s_test_out (s_build_dup_key, NULL));
    FERRY_CHECK (s_test_out (s_build_bad_utf8, NULL));
    if (verbose)
        printf ("# json_out: msgpack to JSON\n");
    return 0;
}

/*  edge_http.c: the HTTP rules of ferry-edge that need no socket (see
    edge_http.h): head limits, negotiation, request bodies, the request
    envelope and responses.  Called from every loop thread; nothing here
    keeps state.

    Media types are compared without their parameters and without case, so
    "Application/JSON; charset=utf-8" is JSON.  JSON work goes through
    jansson (src/common/json.c), msgpack through msgpack-c and the envelope
    codec: nothing here parses a format by hand beyond splitting the
    comma-separated Accept list.  */

#include "edge_http.h"
#include "json.h"

#include <ctype.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void
edge_head_init (edge_head_t *self, size_t max_line, size_t max_total,
                size_t max_count, size_t line_len)
{
    *self = (edge_head_t) {max_line, max_total, max_count, 0, line_len};
}

int
edge_head_add (edge_head_t *self, size_t name_len, size_t value_len,
               char *err, size_t errlen)
{
    size_t line = name_len + 2 + value_len;
    self->count++;
    self->total += line + 2;
    if (line > self->max_line) {
        snprintf (err, errlen, "a header field is longer than %zu bytes",
                  self->max_line);
        return 431;
    }
    if (self->count > self->max_count) {
        snprintf (err, errlen, "more than %zu header fields",
                  self->max_count);
        return 431;
    }
    if (self->total > self->max_total) {
        snprintf (err, errlen, "the request head is larger than %zu bytes",
                  self->max_total);
        return 431;
    }
    return 0;
}

/*  Trims spaces and tabs from both ends of [*s, *s + *len).  */
static void
s_trim (const char **s, size_t *len)
{
    while (*len && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*len)--;
    }
    while (*len && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
        (*len)--;
}

static bool
s_media_is (const char *s, size_t len, const char *type)
{
    return strlen (type) == len && strncasecmp (s, type, len) == 0;
}

edge_ct_t
edge_content_type (const char *value)
{
    if (!value)
        return EDGE_CT_NONE;
    const char *semi = strchr (value, ';');
    size_t len = semi ? (size_t) (semi - value) : strlen (value);
    s_trim (&value, &len);
    if (len == 0)
        return EDGE_CT_NONE;
    if (s_media_is (value, len, "application/json"))
        return EDGE_CT_JSON;
    if (s_media_is (value, len, "application/msgpack")
        || s_media_is (value, len, "application/x-msgpack"))
        return EDGE_CT_MSGPACK;
    return EDGE_CT_OTHER;
}

/*  The q value in the parameters of one Accept element ("; q=0.5").  */
static double
s_quality (const char *params, size_t len)
{
    while (len) {
        const char *semi = memchr (params, ';', len);
        size_t plen = semi ? (size_t) (semi - params) : len;
        const char *p = params;
        size_t n = plen;
        s_trim (&p, &n);
        if (n >= 2 && (p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
            char buf[8];
            size_t vlen = n - 2 < sizeof buf - 1 ? n - 2 : sizeof buf - 1;
            memcpy (buf, p + 2, vlen);
            buf[vlen] = '\0';
            char *end;
            double q = strtod (buf, &end);
            return (end == buf || q < 0 || q > 1) ? 0 : q;
        }
        if (!semi)
            break;
        len -= plen + 1;
        params = semi + 1;
    }
    return 1;
}

bool
edge_accept_msgpack (const char *accept)
{
    if (!accept)
        return false;
    double q_msgpack = 0, q_json = -1, q_app = -1, q_any = -1;
    const char *p = accept;
    while (*p) {
        const char *comma = strchr (p, ',');
        size_t len = comma ? (size_t) (comma - p) : strlen (p);
        const char *semi = memchr (p, ';', len);
        const char *type = p;
        size_t tlen = semi ? (size_t) (semi - p) : len;
        s_trim (&type, &tlen);
        double q = semi ? s_quality (semi + 1, (size_t) (p + len - semi - 1))
                        : 1;
        if (s_media_is (type, tlen, "application/msgpack")
            || s_media_is (type, tlen, "application/x-msgpack"))
            q_msgpack = q > q_msgpack ? q : q_msgpack;
        else if (s_media_is (type, tlen, "application/json"))
            q_json = q > q_json ? q : q_json;
        else if (s_media_is (type, tlen, "application/*"))
            q_app = q > q_app ? q : q_app;
        else if (s_media_is (type, tlen, "*/*"))
            q_any = q > q_any ? q : q_any;
        if (!comma)
            break;
        p = comma + 1;
    }
    /*  The most specific range that covers JSON decides its quality.  */
    double json = q_json >= 0 ? q_json : q_app >= 0 ? q_app : q_any;
    return q_msgpack > 0 && q_msgpack >= json;
}

/*  Decoding limits for bodies: the defaults, widened so one string or the
    whole value may be as large as the route allows.  */
static ferry_limits_t
s_body_limits (size_t max_body)
{
    ferry_limits_t limits = ferry_limits_default;
    if (limits.max_frame < max_body)
        limits.max_frame = max_body;
    if (limits.max_string < max_body)
        limits.max_string = max_body;
    return limits;
}

int
edge_body_to_msgpack (edge_ct_t type, const char *body, size_t len,
                      size_t max_body, msgpack_sbuffer *out, char *err,
                      size_t errlen)
{
    if (len == 0)
        return 0;
    ferry_limits_t limits = s_body_limits (max_body);
    char why[200];
    if (type == EDGE_CT_JSON) {
        size_t start = out->size;
        if (ferry_json_to_msgpack (body, len, &limits, out, why, sizeof why)
            != 0) {
            out->size = start;
            snprintf (err, errlen, "invalid JSON body: %s", why);
            return 400;
        }
        return 0;
    }
    if (type == EDGE_CT_MSGPACK) {
        if (ferry_msgpack_check (body, len, &limits, why, sizeof why) != 0) {
            snprintf (err, errlen, "invalid msgpack body: %s", why);
            return 400;
        }
        msgpack_sbuffer_write (out, body, len);
        return 0;
    }
    snprintf (err, errlen, "%s",
              type == EDGE_CT_NONE
                  ? "a body needs Content-Type application/json or "
                    "application/msgpack"
                  : "Content-Type must be application/json or "
                    "application/msgpack");
    return 415;
}

int
edge_request_encode (const edge_request_info_t *info, msgpack_sbuffer *out,
                     char *err, size_t errlen)
{
    ferry_envelope_t *env = ferry_envelope_new (FERRY_KIND_REQUEST);
    ferry_envelope_set_id (env, info->msg_id);
    ferry_envelope_set_cid (env, info->request_id);
    ferry_envelope_set_service (env, info->service);
    ferry_envelope_set_operation (env, info->operation);
    ferry_envelope_set_traceparent (env, info->traceparent);
    if (info->idempotency_key)
        ferry_envelope_set_idempotency_key (env, info->idempotency_key);
    if (info->job)
        ferry_envelope_set_job (env, info->job);
    ferry_envelope_set_created (env, info->created_ms);
    ferry_envelope_set_deadline (env, info->deadline_ms);
    ferry_envelope_set_attempt (env, 1);
    if (info->reply_to)
        ferry_envelope_set_reply_to (env, info->reply_to);
    int rc = ferry_envelope_set_args_raw (env, info->args, info->args_len,
                                          err, errlen);
    if (rc == 0 && info->body)
        rc = ferry_envelope_set_body_raw (env, info->body, info->body_len,
                                          err, errlen);
    if (rc == 0 && ferry_envelope_encode (env, out) != 0) {
        snprintf (err, errlen, "cannot encode the request envelope");
        rc = -1;
    }
    ferry_envelope_destroy (&env);
    return rc;
}

void
edge_output_clear (edge_output_t *out)
{
    free (out->body);
    memset (out, 0, sizeof *out);
}

void
edge_output_problem (edge_output_t *out, unsigned status,
                     const char *detail, const char *request_id)
{
    edge_output_clear (out);
    json_t *problem = json_object ();
    json_object_set_new (problem, "type", json_string ("about:blank"));
    json_object_set_new (problem, "title",
                         json_string (ferry_status_title (status)));
    json_object_set_new (problem, "status", json_integer (status));
    /*  detail comes from our own messages, which may quote request text
        that is not UTF-8: json_string refuses it, so fall back.  */
    if (detail) {
        json_t *d = json_string (detail);
        json_object_set_new (problem, "detail",
                             d ? d : json_string ("(detail not UTF-8)"));
    }
    if (request_id)
        json_object_set_new (problem, "request_id", json_string (request_id));
    out->status = status;
    out->body = json_dumps (problem, JSON_COMPACT);
    out->len = out->body ? strlen (out->body) : 0;
    out->content_type = "application/problem+json";
    json_decref (problem);
}

/*  Adds "request_id" to a JSON problem object that lacks one.  Takes the
    buffer at *body_p and may replace it.  */
static void
s_problem_add_request_id (char **body_p, size_t *len, const char *request_id)
{
    json_t *obj = json_loadb (*body_p, *len, 0, NULL);
    if (obj && json_is_object (obj) && !json_object_get (obj, "request_id")) {
        json_object_set_new (obj, "request_id", json_string (request_id));
        char *text = json_dumps (obj, JSON_COMPACT);
        if (text) {
            free (*body_p);
            *body_p = text;
            *len = strlen (text);
        }
    }
    json_decref (obj);
}

/* ---- reply bodies as JSON ---------------------------------------------------
    Most replies are maps of strings and integers.  Converting them through
    a jansson tree (ferry_msgpack_to_json) allocated every value and printed
    the tree twice, a third of the edge's allocations per request; this
    writer prints such values straight from the msgpack object into one
    buffer.  It gives up (returns -1) on anything it does not print the way
    jansson would, byte for byte: floats (jansson's shared precision),
    binary, ext, integers above INT64_MAX, strings that are not UTF-8 and
    duplicate or non-string keys.  The caller then takes the jansson path,
    which prints or refuses those as before.  The unit test compares both
    outputs.  */

typedef struct {
    char *data;
    size_t len, cap;
} s_text_t;

static void
s_text_put (s_text_t *t, const void *bytes, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        t->data = ferry_realloc (t->data, cap);
        t->cap = cap;
    }
    memcpy (t->data + t->len, bytes, n);
    t->len += n;
}

/*  Length of the UTF-8 sequence at s (at most left bytes), 0 when it is not
    valid: no overlong forms, surrogates or code points above U+10FFFF
    (what jansson accepts in a string).  */
static size_t
s_utf8_seq (const uint8_t *s, size_t left)
{
    size_t n;
    uint32_t cp;
    if (s[0] < 0x80)
        return 1;
    if (s[0] < 0xc2)
        return 0;
    if (s[0] < 0xe0)
        n = 2, cp = s[0] & 0x1f;
    else if (s[0] < 0xf0)
        n = 3, cp = s[0] & 0x0f;
    else if (s[0] < 0xf5)
        n = 4, cp = s[0] & 0x07;
    else
        return 0;
    if (n > left)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)
        || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000))
        return 0;
    return n;
}

/*  A JSON string, escaped as jansson escapes it without JSON_ENSURE_ASCII
    and JSON_ESCAPE_SLASH: quote, backslash and control characters.  */
static int
s_text_string (s_text_t *t, const char *str, size_t size)
{
    const uint8_t *s = (const uint8_t *) str;
    s_text_put (t, "\"", 1);
    size_t run = 0; /* start of the bytes not yet copied */
    for (size_t i = 0; i < size;) {
        uint8_t c = s[i];
        if (c >= 0x80) {
            size_t n = s_utf8_seq (s + i, size - i);
            if (n == 0)
                return -1;
            i += n;
            continue;
        }
        if (c >= 0x20 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        s_text_put (t, s + run, i - run);
        char esc[8];
        size_t elen = 2;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            elen = (size_t) snprintf (esc, sizeof esc, "\\u%04X", c);
        }
        s_text_put (t, esc, elen);
        run = ++i;
    }
    s_text_put (t, s + run, size - run);
    s_text_put (t, "\"", 1);
    return 0;
}

static void
s_text_int (s_text_t *t, int64_t v)
{
    char digits[24], *p = digits + sizeof digits;
    /*  Through unsigned, so that INT64_MIN negates without overflow.  */
    uint64_t u = v < 0 ? -(uint64_t) v : (uint64_t) v;
    do
        *--p = (char) ('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        *--p = '-';
    s_text_put (t, p, (size_t) (digits + sizeof digits - p));
}

static bool
s_key_seen (const msgpack_object_kv *kv, uint32_t n, const msgpack_object *key)
{
    for (uint32_t i = 0; i < n; i++)
        if (kv[i].key.via.str.size == key->via.str.size
            && memcmp (kv[i].key.via.str.ptr, key->via.str.ptr,
                       key->via.str.size)
                   == 0)
            return true;
    return false;
}

/*  Maps larger than this go the jansson way: the duplicate check here is
    quadratic.  */
#define S_TEXT_MAX_KEYS 64

static int
s_text_value (s_text_t *t, const msgpack_object *obj)
{
    switch (obj->type) {
    case MSGPACK_OBJECT_NIL:
        s_text_put (t, "null", 4);
        return 0;
    case MSGPACK_OBJECT_BOOLEAN:
        if (obj->via.boolean)
            s_text_put (t, "true", 4);
        else
            s_text_put (t, "false", 5);
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (obj->via.u64 > INT64_MAX)
            return -1;
        s_text_int (t, (int64_t) obj->via.u64);
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        s_text_int (t, obj->via.i64);
        return 0;
    case MSGPACK_OBJECT_STR:
        return s_text_string (t, obj->via.str.ptr, obj->via.str.size);
    case MSGPACK_OBJECT_ARRAY:
        s_text_put (t, "[", 1);
        for (uint32_t i = 0; i < obj->via.array.size; i++) {
            if (i)
                s_text_put (t, ",", 1);
            if (s_text_value (t, &obj->via.array.ptr[i]))
                return -1;
        }
        s_text_put (t, "]", 1);
        return 0;
    case MSGPACK_OBJECT_MAP: {
        const msgpack_object_kv *kv = obj->via.map.ptr;
        if (obj->via.map.size > S_TEXT_MAX_KEYS)
            return -1;
        s_text_put (t, "{", 1);
        for (uint32_t i = 0; i < obj->via.map.size; i++) {
            if (kv[i].key.type != MSGPACK_OBJECT_STR
                || s_key_seen (kv, i, &kv[i].key))
                return -1;
            if (i)
                s_text_put (t, ",", 1);
            const msgpack_object_str *key = &kv[i].key.via.str;
            if (s_text_string (t, key->ptr, key->size))
                return -1;
            s_text_put (t, ":", 1);
            if (s_text_value (t, &kv[i].val))
                return -1;
        }
        s_text_put (t, "}", 1);
        return 0;
    }
    default: /* floats, bin, ext: the jansson path decides */
        return -1;
    }
}

/*  Compact JSON text of obj in a new NUL-ended buffer the caller frees with
    free(), as ferry_msgpack_to_json writes it; NULL when obj has no JSON
    form.  */
static char *
s_body_json (const msgpack_object *obj, size_t *len)
{
    s_text_t t = {NULL, 0, 0};
    if (s_text_value (&t, obj) == 0) {
        t.data[t.len] = '\0';
        *len = t.len;
        return t.data;
    }
    free (t.data);
    return ferry_msgpack_to_json (obj, len);
}

int
edge_output_reply (edge_output_t *out, const ferry_envelope_t *reply,
                   const char *request_id, bool want_msgpack)
{
    edge_output_clear (out);
    /*  1xx is an interim answer: the client would wait for a final one
        that never comes, so it is a bad reply like any other.  */
    unsigned status = ferry_envelope_status (reply);
    if (status < 200 || status > 599) {
        edge_output_problem (out, 502, "the reply has no valid status",
                             request_id);
        return -1;
    }
    const char *ctype = ferry_envelope_header (reply, "content-type");
    bool problem = ctype && strncasecmp (ctype, "application/problem+json",
                                         strlen ("application/problem+json"))
                                == 0;
    const msgpack_object *body = ferry_envelope_body (reply);
    if (body && want_msgpack) {
        msgpack_sbuffer buf;
        msgpack_sbuffer_init (&buf);
        msgpack_packer pk;
        msgpack_packer_init (&pk, &buf, msgpack_sbuffer_write);
        msgpack_pack_object (&pk, *body);
        out->len = buf.size;
        out->body = msgpack_sbuffer_release (&buf);
        out->content_type = "application/msgpack";
    }
    else if (body) {
        out->body = s_body_json (body, &out->len);
        if (!out->body) {
            edge_output_problem (out, 502, "the reply body has no JSON form",
                                 request_id);
            return -1;
        }
        if (problem && request_id)
            s_problem_add_request_id (&out->body, &out->len, request_id);
        out->content_type
            = problem ? "application/problem+json" : "application/json";
    }
    out->status = status;
    const char *retry = ferry_envelope_header (reply, "retry-after");
    if (retry && strlen (retry) < sizeof out->retry_after)
        strcpy (out->retry_after, retry);
    const char *tp = ferry_envelope_header (reply, "traceparent");
    if (tp && ferry_traceparent_valid (tp))
        strcpy (out->traceresponse, tp);
    const char *replayed = ferry_envelope_header (reply,
                                                  "idempotent-replayed");
    out->replayed = replayed && strcasecmp (replayed, "true") == 0;
    return 0;
}

char *
edge_json_text (const msgpack_object *obj, size_t *len)
{
    return s_body_json (obj, len);
}

/* ---- Prefer -----------------------------------------------------------------
    RFC 7240 grammar, split by hand like Accept above: libmicrohttpd hands
    over the field value and nothing else parses it.  Quoted strings may
    hold commas and semicolons, so the splitter skips them.  */

void
edge_prefer_init (edge_prefer_t *self)
{
    self->respond_async = false;
    self->wait_s = -1;
}

/*  Length of the next item of s up to (not including) stop, outside
    quoted strings.  */
static size_t
s_item_len (const char *s, size_t len, char stop)
{
    bool quoted = false;
    for (size_t i = 0; i < len; i++) {
        if (quoted && s[i] == '\\' && i + 1 < len)
            i++;
        else if (s[i] == '"')
            quoted = !quoted;
        else if (!quoted && s[i] == stop)
            return i;
    }
    return len;
}

static bool
s_tchar (char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
           || (c >= 'A' && c <= 'Z') || (c && strchr ("!#$%&'*+-.^_`|~", c));
}

/*  One preference "name [= value]" (its parameters already cut off).  */
static void
s_prefer_one (edge_prefer_t *self, const char *s, size_t len, bool *seen_async,
              bool *seen_wait)
{
    s_trim (&s, &len);
    size_t eq = s_item_len (s, len, '=');
    const char *name = s;
    size_t name_len = eq;
    s_trim (&name, &name_len);
    for (size_t i = 0; i < name_len; i++)
        if (!s_tchar (name[i]))
            return;
    const char *value = eq < len ? s + eq + 1 : NULL;
    size_t value_len = eq < len ? len - eq - 1 : 0;
    if (value) {
        s_trim (&value, &value_len);
        if (value_len >= 2 && value[0] == '"' && value[value_len - 1] == '"') {
            value++;
            value_len -= 2;
        }
    }
    if (s_media_is (name, name_len, "respond-async")) {
        if (!*seen_async)
            self->respond_async = true;
        *seen_async = true;
    }
    else if (s_media_is (name, name_len, "wait")) {
        if (*seen_wait)
            return;
        *seen_wait = true;
        /*  delta-seconds: digits only; larger than a day is a day.  */
        int64_t n = 0;
        if (!value || value_len == 0 || value_len > 18)
            return;
        for (size_t i = 0; i < value_len; i++) {
            if (value[i] < '0' || value[i] > '9')
                return;
            n = n * 10 + (value[i] - '0');
        }
        self->wait_s = n > 86400 ? 86400 : n;
    }
}

void
edge_prefer_parse (edge_prefer_t *self, const char *value)
{
    if (!value)
        return;
    /*  "first counts" across fields: a preference already set stays.  */
    bool seen_async = self->respond_async, seen_wait = self->wait_s >= 0;
    size_t len = strlen (value);
    while (len) {
        size_t item = s_item_len (value, len, ',');
        size_t head = s_item_len (value, item, ';');
        s_prefer_one (self, value, head, &seen_async, &seen_wait);
        value += item;
        len -= item;
        if (len) {
            value++;
            len--;
        }
    }
}

/* ---- Idempotency-Key ----------------------------------------------------- */

int
edge_idempotency_key (const char *value, char *out, char *err, size_t errlen)
{
    size_t len = strlen (value), n = 0;
    s_trim (&value, &len);
    bool quoted = len && value[0] == '"';
    if (quoted) {
        if (len < 2 || value[len - 1] != '"') {
            snprintf (err, errlen, "Idempotency-Key is not a valid key");
            return 400;
        }
        value++;
        len -= 2;
    }
    for (size_t i = 0; i < len; i++) {
        char c = value[i];
        if (quoted && c == '\\') {
            /*  sf-string: only \" and \\ are escapes.  */
            if (i + 1 == len || (value[i + 1] != '"' && value[i + 1] != '\\')) {
                snprintf (err, errlen, "Idempotency-Key is not a valid key");
                return 400;
            }
            c = value[++i];
        }
        else if (quoted && c == '"') {
            snprintf (err, errlen, "Idempotency-Key is not a valid key");
            return 400;
        }
        if (c < 0x21 || c > 0x7e) {
            snprintf (err, errlen, "Idempotency-Key is not a valid key");
            return 400;
        }
        if (n == EDGE_IDEM_MAX) {
            snprintf (err, errlen,
                      "Idempotency-Key is longer than %d characters",
                      EDGE_IDEM_MAX);
            return 400;
        }
        out[n++] = c;
    }
    out[n] = '\0';
    if (n == 0) {
        snprintf (err, errlen, "Idempotency-Key is not a valid key");
        return 400;
    }
    return 0;
}

/* ---- job ids ----------------------------------------------------------------
    ferry_id_generate already draws 128 random bits from getrandom (in
    blocks); the version and variant nibbles are then set so the id is a
    well-formed UUIDv4 (122 random bits remain: unguessable).  */

void
edge_job_id_generate (char out[EDGE_JOB_ID_LEN + 1])
{
    char hex[FERRY_ID_LEN + 1];
    ferry_id_generate (hex);
    hex[12] = '4';
    static const char variant[] = "89ab";
    char d = hex[16];
    int v = d >= 'a' ? d - 'a' + 10 : d - '0';
    hex[16] = variant[v & 3];
    snprintf (out, EDGE_JOB_ID_LEN + 1, "%.8s-%.4s-%.4s-%.4s-%.12s", hex,
              hex + 8, hex + 12, hex + 16, hex + 20);
}

bool
edge_job_id_valid (const char *s)
{
    static const size_t dash[] = {8, 13, 18, 23};
    if (!s || strlen (s) != EDGE_JOB_ID_LEN)
        return false;
    for (size_t i = 0, d = 0; i < EDGE_JOB_ID_LEN; i++) {
        if (d < 4 && i == dash[d]) {
            if (s[i] != '-')
                return false;
            d++;
        }
        else if (!isxdigit ((unsigned char) s[i]))
            return false;
    }
    return true;
}

/* ---- tests --------------------------------------------------------------- */

int
edge_http_head_test (bool verbose)
{
    char err[128];
    edge_head_t h;
    edge_head_init (&h, 8192, 16384, 100, 30);
    FERRY_CHECK (edge_head_add (&h, 4, 10, err, sizeof err) == 0);
    /*  8 KiB per line: name + ": " + value.  */
    FERRY_CHECK (edge_head_add (&h, 4, 8192 - 6, err, sizeof err) == 0);
    FERRY_CHECK (edge_head_add (&h, 4, 8192 - 5, err, sizeof err) == 431);
    FERRY_CHECK (strstr (err, "8192"));
    /*  16 KiB in all.  */
    edge_head_init (&h, 8192, 16384, 100, 30);
    FERRY_CHECK (edge_head_add (&h, 10, 8000, err, sizeof err) == 0);
    FERRY_CHECK (edge_head_add (&h, 10, 8000, err, sizeof err) == 0);
    FERRY_CHECK (edge_head_add (&h, 10, 400, err, sizeof err) == 431);
    FERRY_CHECK (strstr (err, "16384"));
    /*  100 fields.  */
    edge_head_init (&h, 8192, 16384, 100, 30);
    for (int i = 0; i < 100; i++)
        FERRY_CHECK (edge_head_add (&h, 3, 3, err, sizeof err) == 0);
    FERRY_CHECK (edge_head_add (&h, 3, 3, err, sizeof err) == 431);
    if (verbose)
        printf ("# %s\n", err);
    FERRY_CHECK (strstr (err, "100 header fields"));
    return 0;
}

int
edge_http_negotiation_test (bool verbose)
{
    (void) verbose;
    FERRY_CHECK (edge_content_type (NULL) == EDGE_CT_NONE);
    FERRY_CHECK (edge_content_type ("") == EDGE_CT_NONE);
    FERRY_CHECK (edge_content_type ("application/json") == EDGE_CT_JSON);
    FERRY_CHECK (edge_content_type ("Application/JSON; charset=utf-8")
                 == EDGE_CT_JSON);
    FERRY_CHECK (edge_content_type (" application/json ;charset=UTF-8")
                 == EDGE_CT_JSON);
    FERRY_CHECK (edge_content_type ("application/msgpack") == EDGE_CT_MSGPACK);
    FERRY_CHECK (edge_content_type ("application/x-msgpack")
                 == EDGE_CT_MSGPACK);
    FERRY_CHECK (edge_content_type ("text/plain") == EDGE_CT_OTHER);
    FERRY_CHECK (edge_content_type ("application/jsonx") == EDGE_CT_OTHER);
    FERRY_CHECK (edge_content_type ("application/x-www-form-urlencoded")
                 == EDGE_CT_OTHER);

    FERRY_CHECK (!edge_accept_msgpack (NULL));
    FERRY_CHECK (!edge_accept_msgpack (""));
    FERRY_CHECK (!edge_accept_msgpack ("*/*"));
    FERRY_CHECK (!edge_accept_msgpack ("application/*"));
    FERRY_CHECK (!edge_accept_msgpack ("application/json"));
    FERRY_CHECK (edge_accept_msgpack ("application/msgpack"));
    FERRY_CHECK (edge_accept_msgpack ("application/x-msgpack"));
    FERRY_CHECK (edge_accept_msgpack ("application/msgpack, */*;q=0.1"));
    FERRY_CHECK (edge_accept_msgpack ("application/msgpack, application/json"));
    FERRY_CHECK (edge_accept_msgpack (
        "application/json;q=0.5, application/msgpack"));
    FERRY_CHECK (!edge_accept_msgpack (
        "application/json, application/msgpack;q=0.5"));
    FERRY_CHECK (!edge_accept_msgpack ("application/msgpack;q=0"));
    FERRY_CHECK (edge_accept_msgpack ("text/html ; q=0.2 , APPLICATION/MSGPACK"
                                      " ; charset=x ; q=0.9"));
    FERRY_CHECK (!edge_accept_msgpack ("application/msgpack;q=0.4, "
                                       "application/*;q=0.5"));
    return 0;
}

int
edge_http_problem_test (bool verbose)
{
    edge_output_t out = {0};
    edge_output_problem (&out, 404, "no route for GET /x", "req-1");
    FERRY_CHECK (out.status == 404);
    FERRY_CHECK (strcmp (out.content_type, "application/problem+json") == 0);
    FERRY_CHECK (out.body && out.len == strlen (out.body));
    if (verbose)
        printf ("# %s\n", out.body);
    json_t *j = json_loadb (out.body, out.len, 0, NULL);
    FERRY_CHECK (j);
    FERRY_CHECK (json_integer_value (json_object_get (j, "status")) == 404);
    FERRY_CHECK (strcmp (json_string_value (json_object_get (j, "title")),
                         "Not Found")
                 == 0);
    FERRY_CHECK (strcmp (json_string_value (json_object_get (j, "type")),
                         "about:blank")
                 == 0);
    FERRY_CHECK (strcmp (json_string_value (json_object_get (j, "request_id")),
                         "req-1")
                 == 0);
    FERRY_CHECK (strstr (json_string_value (json_object_get (j, "detail")),
                         "GET /x"));
    json_decref (j);
    /*  Without a detail, and a detail that is not UTF-8.  */
    edge_output_problem (&out, 504, NULL, "r");
    FERRY_CHECK (out.status == 504 && !strstr (out.body, "detail"));
    edge_output_problem (&out, 400, "bad \xff byte", "r");
    FERRY_CHECK (out.body && strstr (out.body, "not UTF-8"));
    edge_output_clear (&out);
    FERRY_CHECK (out.body == NULL && out.status == 0);
    edge_output_clear (&out);
    return 0;
}

int
edge_http_body_test (bool verbose)
{
    char err[256];
    msgpack_sbuffer buf;
    msgpack_sbuffer_init (&buf);
    FERRY_CHECK (edge_body_to_msgpack (EDGE_CT_JSON, "", 0, 100, &buf, err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (buf.size == 0);
    const char *json = "{\"a\":1}";
    FERRY_CHECK (edge_body_to_msgpack (EDGE_CT_JSON, json, strlen (json), 100,
                                       &buf, err, sizeof err)
                 == 0);
    /*  fixmap(1) "a" 1  */
    FERRY_CHECK (buf.size == 4 && (uint8_t) buf.data[0] == 0x81
                 && buf.data[3] == 1);
    msgpack_sbuffer_clear (&buf);
    FERRY_CHECK (edge_body_to_msgpack (EDGE_CT_JSON, "{\"a\":", 5, 100, &buf,
                                       err, sizeof err)
                 == 400);
    if (verbose)
        printf ("# %s\n", err);
    FERRY_CHECK (buf.size == 0);
    FERRY_CHECK (edge_body_to_msgpack (EDGE_CT_MSGPACK, "\x81\xa1" "a\x01", 4,
                                       100, &buf, err, sizeof err)
                 == 0);
    FERRY_CHECK (buf.size == 4);
    msgpack_sbuffer_clear (&buf);
    /*  A truncated map, then a value followed by trailing bytes.  */
    FERRY_CHECK (edge_body_to_msgpack (EDGE_CT_MSGPACK, "\x82\xa1" "a\x01", 4,
                                       100, &buf, err, sizeof err)
                 == 400);
    FERRY_CHECK (edge_body_to_msgpack (EDGE_CT_MSGPACK, "\x01\x02", 2, 100,
                                       &buf, err, sizeof err)
                 == 400);
    FERRY_CHECK (edge_body_to_msgpack (EDGE_CT_OTHER, "x", 1, 100, &buf, err,
                                       sizeof err)
                 == 415);
    FERRY_CHECK (edge_body_to_msgpack (EDGE_CT_NONE, "x", 1, 100, &buf, err,
                                       sizeof err)
                 == 415);
    FERRY_CHECK (buf.size == 0);
    msgpack_sbuffer_destroy (&buf);
    return 0;
}

int
edge_http_envelope_test (bool verbose)
{
    (void) verbose;
    char err[256];
    /*  Request: encode, then decode as the worker would.  */
    msgpack_sbuffer buf;
    msgpack_sbuffer_init (&buf);
    char msg_id[FERRY_ID_LEN + 1], tp[FERRY_TRACEPARENT_LEN + 1];
    ferry_id_generate (msg_id);
    ferry_traceparent_continue (NULL, tp);
    edge_request_info_t info = {
        .msg_id = msg_id, .request_id = "client-7", .traceparent = tp,
        .idempotency_key = "k1", .service = "app", .operation = "get_user",
        .args = "\x81\xa2id\x2a", .args_len = 5, .body = "\xc0",
        .body_len = 1, .created_ms = 1000, .deadline_ms = 6000};
    FERRY_CHECK (edge_request_encode (&info, &buf, err, sizeof err) == 0);
    ferry_envelope_t *req
        = ferry_envelope_decode (buf.data, buf.size, NULL, err, sizeof err);
    FERRY_CHECK (req);
    FERRY_CHECK (ferry_envelope_kind (req) == FERRY_KIND_REQUEST);
    FERRY_CHECK (strcmp (ferry_envelope_id (req), msg_id) == 0);
    FERRY_CHECK (strcmp (ferry_envelope_cid (req), "client-7") == 0);
    FERRY_CHECK (strcmp (ferry_envelope_service (req), "app") == 0);
    FERRY_CHECK (strcmp (ferry_envelope_operation (req), "get_user") == 0);
    FERRY_CHECK (strcmp (ferry_envelope_traceparent (req), tp) == 0);
    FERRY_CHECK (strcmp (ferry_envelope_idempotency_key (req), "k1") == 0);
    FERRY_CHECK (ferry_envelope_deadline (req) == 6000);
    FERRY_CHECK (ferry_envelope_attempt (req) == 1);
    const msgpack_object *id = ferry_envelope_arg (req, "id");
    FERRY_CHECK (id && id->via.u64 == 42);

    /*  Reply: JSON, msgpack, problem with the request id added.  */
    ferry_envelope_t *rep = ferry_envelope_new_reply (req, 200);
    FERRY_CHECK (ferry_envelope_set_body_raw (rep, "\x81\xa1x\x01", 4, err,
                                              sizeof err)
                 == 0);
    char tp2[FERRY_TRACEPARENT_LEN + 1];
    ferry_traceparent_continue (tp, tp2);
    ferry_envelope_set_header (rep, "traceparent", tp2);
    edge_output_t out = {0};
    FERRY_CHECK (edge_output_reply (&out, rep, "client-7", false) == 0);
    FERRY_CHECK (out.status == 200);
    FERRY_CHECK (strcmp (out.content_type, "application/json") == 0);
    FERRY_CHECK (out.len == 7 && memcmp (out.body, "{\"x\":1}", 7) == 0);
    FERRY_CHECK (strcmp (out.traceresponse, tp2) == 0);
    FERRY_CHECK (edge_output_reply (&out, rep, "client-7", true) == 0);
    FERRY_CHECK (strcmp (out.content_type, "application/msgpack") == 0);
    FERRY_CHECK (out.len == 4 && memcmp (out.body, "\x81\xa1x\x01", 4) == 0);
    ferry_envelope_destroy (&rep);

    rep = ferry_envelope_new_reply (req, 503);
    ferry_envelope_set_problem (rep, 503, NULL, "queue full", NULL);
    ferry_envelope_set_header (rep, "retry-after", "1");
    FERRY_CHECK (edge_output_reply (&out, rep, "client-7", false) == 0);
    FERRY_CHECK (out.status == 503);
    FERRY_CHECK (strcmp (out.content_type, "application/problem+json") == 0);
    FERRY_CHECK (strcmp (out.retry_after, "1") == 0);
    FERRY_CHECK (strstr (out.body, "\"request_id\":\"client-7\""));
    ferry_envelope_destroy (&rep);

    /*  An interim status is no answer: the client would wait for the
        final one forever (101 makes libmicrohttpd drop the connection).  */
    static const unsigned interim[] = {100, 101, 102, 199};
    for (size_t i = 0; i < sizeof interim / sizeof interim[0]; i++) {
        rep = ferry_envelope_new_reply (req, interim[i]);
        FERRY_CHECK (edge_output_reply (&out, rep, "client-7", false) == -1);
        FERRY_CHECK (out.status == 502);
        ferry_envelope_destroy (&rep);
    }

    /*  No body: no content type.  */
    rep = ferry_envelope_new_reply (req, 204);
    FERRY_CHECK (edge_output_reply (&out, rep, "client-7", false) == 0);
    FERRY_CHECK (out.status == 204 && out.body == NULL && !out.content_type);
    ferry_envelope_destroy (&rep);
    edge_output_clear (&out);
    ferry_envelope_destroy (&req);
    msgpack_sbuffer_destroy (&buf);
    return 0;
}

/*  The direct JSON writer against the jansson path: s_body_json must give
    byte for byte what ferry_msgpack_to_json gives (NULL included), and
    jansson must parse what it writes.  The value is unpacked the way a
    reply body is, as a value in a map ({"v": value}): msgpack-c gives an
    empty string that is the first thing in a buffer a NULL pointer, which
    jansson refuses, and a body never is.  */
static int
s_json_same (const char *packed, size_t size, bool fast, bool verbose,
             size_t *direct)
{
    msgpack_sbuffer wrap;
    msgpack_sbuffer_init (&wrap);
    msgpack_sbuffer_write (&wrap, "\x81\xa1v", 3);
    msgpack_sbuffer_write (&wrap, packed, size);
    msgpack_unpacked u;
    msgpack_unpacked_init (&u);
    size_t off = 0;
    FERRY_CHECK (msgpack_unpack_next (&u, wrap.data, wrap.size, &off)
                 == MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *value = &u.data.via.map.ptr[0].val;
    size_t len_a = 0, len_b = 0;
    s_text_t t = {NULL, 0, 0};
    bool took_fast = s_text_value (&t, value) == 0;
    free (t.data);
    char *a = s_body_json (value, &len_a);
    char *b = ferry_msgpack_to_json (value, &len_b);
    if (verbose)
        printf ("# %s %s\n", took_fast ? "direct" : "jansson",
                a ? a : "(no JSON form)");
    FERRY_CHECK (!fast || took_fast);
    if (direct && took_fast)
        (*direct)++;
    FERRY_CHECK ((a == NULL) == (b == NULL));
    if (a) {
        FERRY_CHECK (len_a == len_b && memcmp (a, b, len_a) == 0);
        FERRY_CHECK (a[len_a] == '\0');
        json_t *back
            = json_loadb (a, len_a, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        FERRY_CHECK (back);
        json_decref (back);
    }
    free (a);
    free (b);
    msgpack_unpacked_destroy (&u);
    msgpack_sbuffer_destroy (&wrap);
    return 0;
}

static uint64_t
s_test_rand (uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

/*  Packs a random value: few short keys so that duplicates happen, strings
    drawn from bytes that need escaping, valid and broken UTF-8.  */
static void
s_test_pack_random (msgpack_packer *pk, uint64_t *rs, int depth)
{
    static const char *const pieces[]
        = {"a", "b", "\"", "\\", "/", "\n", "\t", "\x01", "\x1f", "\x7f",
           "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xff", "\xc0\x80",
           "\xed\xa0\x80", "\xe2\x82", " ", "z"};
    size_t npieces = sizeof pieces / sizeof pieces[0];
    unsigned kind = (unsigned) (s_test_rand (rs) % (depth > 3 ? 6 : 9));
    switch (kind) {
    case 0: msgpack_pack_nil (pk); break;
    case 1: msgpack_pack_true (pk); break;
    case 2: msgpack_pack_int64 (pk, (int64_t) s_test_rand (rs)); break;
    case 3: msgpack_pack_uint64 (pk, s_test_rand (rs)); break;
    case 4: msgpack_pack_int64 (pk, (int64_t) (s_test_rand (rs) % 200) - 100);
        break;
    case 5:
    case 8: {
        char str[64];
        size_t len = 0, parts = s_test_rand (rs) % 8;
        /*  Mostly clean text: one string in four carries a broken byte.  */
        bool clean = s_test_rand (rs) % 4 != 0;
        for (size_t i = 0; i < parts; i++) {
            const char *p = pieces[s_test_rand (rs) % (clean ? 13 : npieces)];
            memcpy (str + len, p, strlen (p));
            len += strlen (p);
        }
        msgpack_pack_str_with_body (pk, str, len);
        break;
    }
    case 6: {
        uint32_t n = (uint32_t) (s_test_rand (rs) % 4);
        msgpack_pack_array (pk, n);
        for (uint32_t i = 0; i < n; i++)
            s_test_pack_random (pk, rs, depth + 1);
        break;
    }
    default: {
        uint32_t n = (uint32_t) (s_test_rand (rs) % 4);
        msgpack_pack_map (pk, n);
        for (uint32_t i = 0; i < n; i++) {
            char key[2] = {(char) ('a' + s_test_rand (rs) % 6), 0};
            msgpack_pack_str_with_body (pk, key, 1);
            s_test_pack_random (pk, rs, depth + 1);
        }
        break;
    }
    }
}

int
edge_http_json_test (bool verbose)
{
    msgpack_sbuffer buf;
    msgpack_sbuffer_init (&buf);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &buf, msgpack_sbuffer_write);

    /*  A typical reply, then every ASCII byte in a string.  */
    msgpack_pack_map (&pk, 4);
    msgpack_pack_str_with_body (&pk, "id", 2);
    msgpack_pack_int64 (&pk, 42);
    msgpack_pack_str_with_body (&pk, "name", 4);
    msgpack_pack_str_with_body (&pk, "Zo\xc3\xab \"Q\" \\ /", 12);
    msgpack_pack_str_with_body (&pk, "tags", 4);
    msgpack_pack_array (&pk, 3);
    msgpack_pack_nil (&pk);
    msgpack_pack_false (&pk);
    msgpack_pack_int64 (&pk, INT64_MIN);
    msgpack_pack_str_with_body (&pk, "empty", 5);
    msgpack_pack_map (&pk, 0);
    FERRY_CHECK (s_json_same (buf.data, buf.size, true, verbose, NULL) == 0);
    msgpack_sbuffer_clear (&buf);
    char ascii[128];
    for (int i = 0; i < 128; i++)
        ascii[i] = (char) i;
    msgpack_pack_str_with_body (&pk, ascii, sizeof ascii);
    FERRY_CHECK (s_json_same (buf.data, buf.size, true, verbose, NULL) == 0);
    msgpack_sbuffer_clear (&buf);

    /*  What the writer leaves to jansson: floats, binary, ext, a large
        unsigned, a duplicate key, a non-string key, invalid UTF-8.  */
    msgpack_pack_double (&pk, 0.1);
    FERRY_CHECK (s_json_same (buf.data, buf.size, false, verbose, NULL) == 0);
    msgpack_sbuffer_clear (&buf);
    msgpack_pack_bin_with_body (&pk, "\x00\x01", 2);
    FERRY_CHECK (s_json_same (buf.data, buf.size, false, verbose, NULL) == 0);
    msgpack_sbuffer_clear (&buf);
    msgpack_pack_ext_with_body (&pk, "x", 1, 1);
    FERRY_CHECK (s_json_same (buf.data, buf.size, false, verbose, NULL) == 0);
    msgpack_sbuffer_clear (&buf);
    msgpack_pack_uint64 (&pk, (uint64_t) INT64_MAX + 1);
    FERRY_CHECK (s_json_same (buf.data, buf.size, false, verbose, NULL) == 0);
    msgpack_sbuffer_clear (&buf);
    msgpack_pack_map (&pk, 2);
    msgpack_pack_str_with_body (&pk, "k", 1);
    msgpack_pack_int64 (&pk, 1);
    msgpack_pack_str_with_body (&pk, "k", 1);
    msgpack_pack_int64 (&pk, 2);
    FERRY_CHECK (s_json_same (buf.data, buf.size, false, verbose, NULL) == 0);
    msgpack_sbuffer_clear (&buf);
    msgpack_pack_map (&pk, 1);
    msgpack_pack_int64 (&pk, 1);
    msgpack_pack_int64 (&pk, 2);
    FERRY_CHECK (s_json_same (buf.data, buf.size, false, verbose, NULL) == 0);
    msgpack_sbuffer_clear (&buf);
    const char *broken[] = {"\xff", "\xc0\x80", "\xed\xa0\x80",
                            "\xf4\x90\x80\x80", "a\xe2\x82"};
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        msgpack_pack_str_with_body (&pk, broken[i], strlen (broken[i]));
        FERRY_CHECK (s_json_same (buf.data, buf.size, false, false, NULL)
                     == 0);
        msgpack_sbuffer_clear (&buf);
    }

    /*  Random values; a good share must take the direct path.  */
    uint64_t rs = 0x9e3779b97f4a7c15u;
    size_t direct = 0, rounds = 3000;
    for (size_t i = 0; i < rounds; i++) {
        s_test_pack_random (&pk, &rs, 0);
        FERRY_CHECK (s_json_same (buf.data, buf.size, false, false, &direct)
                     == 0);
        msgpack_sbuffer_clear (&buf);
    }
    if (verbose)
        printf ("# %zu of %zu random values written directly\n", direct,
                rounds);
    FERRY_CHECK (direct > rounds / 4);
    msgpack_sbuffer_destroy (&buf);
    return 0;
}

int
edge_http_prefer_test (bool verbose)
{
    struct {
        const char *fields[3];
        bool async;
        int64_t wait;
    } cases[] = {
        {{NULL}, false, -1},
        {{"respond-async"}, true, -1},
        {{"Respond-Async, wait=5"}, true, 5},
        {{"wait=10", "respond-async"}, true, 10},
        {{"wait = \"7\" ; foo=bar, respond-async;x"}, true, 7},
        {{"handling=lenient, return=minimal"}, false, -1},
        {{"wait=3, wait=9"}, false, 3},
        {{"wait=3", "wait=9"}, false, 3},
        {{"wait=x, wait=4"}, false, -1},
        {{"wait=-1"}, false, -1},
        {{"wait="}, false, -1},
        {{"wait=999999"}, false, 86400},
        {{"foo=\"a,wait=2\", respond-async"}, true, -1},
        {{"respond-async=ignored-value"}, true, -1},
        {{"  ,, respond-async ,"}, true, -1},
        {{"resp ond-async"}, false, -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        edge_prefer_t p;
        edge_prefer_init (&p);
        for (size_t f = 0; f < 3 && cases[i].fields[f]; f++)
            edge_prefer_parse (&p, cases[i].fields[f]);
        if (verbose)
            printf ("# '%s' -> async=%d wait=%lld\n",
                    cases[i].fields[0] ? cases[i].fields[0] : "(none)",
                    p.respond_async, (long long) p.wait_s);
        if (p.respond_async != cases[i].async || p.wait_s != cases[i].wait) {
            fprintf (stderr, "# Prefer case %zu: async=%d wait=%lld\n", i,
                     p.respond_async, (long long) p.wait_s);
            return 1;
        }
    }
    return 0;
}

int
edge_http_idempotency_test (bool verbose)
{
    char key[EDGE_IDEM_MAX + 1], err[128];
    FERRY_CHECK (edge_idempotency_key ("abc-123", key, err, sizeof err) == 0);
    FERRY_CHECK (strcmp (key, "abc-123") == 0);
    FERRY_CHECK (edge_idempotency_key ("\"8e03978e-40d5\"", key, err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (strcmp (key, "8e03978e-40d5") == 0);
    FERRY_CHECK (edge_idempotency_key ("\"a\\\"b\\\\c\"", key, err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (strcmp (key, "a\"b\\c") == 0);
    /*  Exactly 255 is fine, 256 is too long, quoted or not.  */
    char long_key[300];
    memset (long_key, 'k', 255);
    long_key[255] = '\0';
    FERRY_CHECK (edge_idempotency_key (long_key, key, err, sizeof err) == 0);
    FERRY_CHECK (strlen (key) == 255);
    long_key[255] = 'k';
    long_key[256] = '\0';
    FERRY_CHECK (edge_idempotency_key (long_key, key, err, sizeof err) == 400);
    FERRY_CHECK (strstr (err, "longer than 255"));
    const char *bad[] = {"", "\"\"", "\"abc", "a b", "\"a b\"", "\"a\\x\"",
                         "\"a\"b\"", "caf\xc3\xa9", "\"tab\there\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (edge_idempotency_key (bad[i], key, err, sizeof err) != 400
            || !strstr (err, "not a valid key")) {
            fprintf (stderr, "# key case %zu accepted\n", i);
            return 1;
        }
        if (verbose)
            printf ("# %s\n", err);
    }
    return 0;
}

int
edge_http_job_id_test (bool verbose)
{
    char a[EDGE_JOB_ID_LEN + 1], b[EDGE_JOB_ID_LEN + 1];
    for (int i = 0; i < 100; i++) {
        edge_job_id_generate (a);
        FERRY_CHECK (edge_job_id_valid (a));
        FERRY_CHECK (a[14] == '4' && strchr ("89ab", a[19]));
        for (const char *c = a; *c; c++)
            FERRY_CHECK (!isupper ((unsigned char) *c));
    }
    edge_job_id_generate (b);
    FERRY_CHECK (strcmp (a, b) != 0);
    if (verbose)
        printf ("# %s\n", a);
    FERRY_CHECK (edge_job_id_valid ("0190F3C2-0000-4000-8000-00000000000A"));
    FERRY_CHECK (!edge_job_id_valid ("0190f3c2-0000-4000-8000-00000000000"));
    FERRY_CHECK (!edge_job_id_valid ("0190f3c2x0000-4000-8000-000000000000"));
    FERRY_CHECK (!edge_job_id_valid ("0190f3c2-0000-4000-8000-00000000000g"));
    FERRY_CHECK (!edge_job_id_valid (""));
    return 0;
}

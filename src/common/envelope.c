/*  envelope.c: the ferry envelope v1 codec (schemas/envelope-v1.md).

    Every message between edge, broker and workers is one msgpack map with
    short string keys.  Decoding happens on bytes from other processes, so
    it is strict and runs in two steps.  ferry_msgpack_check first walks the
    raw bytes without allocating and bounds every declared size, count and
    the nesting against the bytes that remain and the limits: msgpack-c 4.0
    reserves memory for whatever element count a header declares, so a
    9-byte input could otherwise ask for gigabytes.  Only bytes that pass
    are unpacked by msgpack-c, into a zone that the envelope keeps, and the
    map is read field by field with a reason for every refusal.

    Encoding and decoding of msgpack itself are msgpack-c's; the header walk
    is a bounds check, not a codec.  An envelope belongs to one thread at a
    time; nothing here keeps global state.  */

#include "ferry.h"
#include "envelope.h"
#include "proto.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/*  msgpack-c's unpacker keeps a fixed stack of 32 open containers
    (MSGPACK_EMBED_STACK_SIZE, in an internal header); deeper input would
    fail inside msgpack-c, so the walk never allows more.  */
#define S_DEPTH_CAP 32

/*  Limits of single fields, from the specification.  */
#define S_TOKEN_MAX 128    /* id, cid, re, tp, job */
#define S_REPLY_TO_MAX 255 /* a Kafka topic name fits */
/*  The HTTP edge accepts Idempotency-Key values up to 255 characters.  */
#define S_IDEM_MAX 255
#define S_PRINCIPAL_MAX 1024
#define S_HEADERS_MAX 100 /* the edge's own limit on header fields */
#define S_HEADER_NAME_MAX 128
#define S_HEADER_VALUE_MAX 8192

const ferry_limits_t ferry_limits_default = {
    .max_frame = FERRY_MAX_MESSAGE_DEFAULT,
    .max_depth = 32,
    .max_string = 16 * 1024 * 1024,
    .max_count = 65536,
    .max_total = 262144,
};

/*  The fields, in the order they are encoded.  */
typedef enum {
    F_V, F_KIND, F_ID, F_CID, F_RE, F_SVC, F_OP, F_DL, F_TS, F_ATT, F_ST,
    F_PRIN, F_IDEM, F_TP, F_RTO, F_JOB, F_HDRS, F_ARGS, F_BODY, F_COUNT
} s_field_t;

typedef enum {
    T_UINT,  /* unsigned integer, at most max */
    T_KIND,  /* "request", "reply" or "event" */
    T_TOKEN, /* 1..max visible ASCII characters (0x21..0x7e) */
    T_NAME,  /* [A-Za-z0-9_.-]{1,max} */
    T_TEXT,  /* 1..max bytes, no NUL */
    T_HDRS,  /* map str -> str, at most max entries */
    T_MAP,   /* map with unique str keys */
    T_ANY    /* any value */
} s_type_t;

/*  A key and its length, which decode compares first.  */
#define S_KEY(k) k, sizeof k - 1

static const struct {
    const char *key;
    size_t klen; /* at most 4, see s_field_of */
    s_type_t type;
    uint64_t max;
} s_fields[F_COUNT] = {
    [F_V] = {S_KEY ("v"), T_UINT, UINT32_MAX},
    [F_KIND] = {S_KEY ("kind"), T_KIND, 0},
    [F_ID] = {S_KEY ("id"), T_TOKEN, S_TOKEN_MAX},
    [F_CID] = {S_KEY ("cid"), T_TOKEN, S_TOKEN_MAX},
    [F_RE] = {S_KEY ("re"), T_TOKEN, S_TOKEN_MAX},
    [F_SVC] = {S_KEY ("svc"), T_NAME, FERRY_NAME_MAX},
    [F_OP] = {S_KEY ("op"), T_NAME, FERRY_NAME_MAX},
    [F_DL] = {S_KEY ("dl"), T_UINT, UINT64_MAX},
    [F_TS] = {S_KEY ("ts"), T_UINT, UINT64_MAX},
    [F_ATT] = {S_KEY ("att"), T_UINT, UINT32_MAX},
    [F_ST] = {S_KEY ("st"), T_UINT, 599},
    [F_PRIN] = {S_KEY ("prin"), T_TEXT, S_PRINCIPAL_MAX},
    [F_IDEM] = {S_KEY ("idem"), T_TOKEN, S_IDEM_MAX},
    [F_TP] = {S_KEY ("tp"), T_TOKEN, S_TOKEN_MAX},
    [F_RTO] = {S_KEY ("rto"), T_TOKEN, S_REPLY_TO_MAX},
    [F_JOB] = {S_KEY ("job"), T_TOKEN, S_TOKEN_MAX},
    [F_HDRS] = {S_KEY ("hdrs"), T_HDRS, S_HEADERS_MAX},
    [F_ARGS] = {S_KEY ("args"), T_MAP, 0},
    [F_BODY] = {S_KEY ("body"), T_ANY, 0},
};

static const char *s_kind_names[] = {NULL, "request", "reply", "event"};

/*  A header; both strings live in the envelope's zone.  */
typedef struct {
    const char *name; /* lowercase */
    const char *value;
} s_header_t;

/*  All memory of an envelope but the struct itself comes from one
    msgpack zone: the copy of a decoded frame, msgpack-c's objects, field
    strings and the header array.  A decode sizes the zone's first chunk
    from the frame, so it takes two allocations in all; an envelope built
    by setters starts its zone at the first setter.  A value replaced by a
    setter stays in the zone until the envelope is destroyed: envelopes
    live for one message and are set a handful of times.  */
struct _ferry_envelope_t {
    ferry_kind_t kind;
    unsigned version;
    const char *str[F_COUNT];   /* string fields, NULL when absent */
    uint64_t num[F_COUNT];      /* number fields */
    bool has[F_COUNT];          /* which number fields are present */
    bool zoned;                 /* zone initialised */
    msgpack_zone zone;
    size_t frame_size;          /* bytes of the decoded frame, or 0 */
    const msgpack_object *args; /* into the zone, or NULL */
    const msgpack_object *body; /* into the zone, or NULL until unpacked */
    /*  Checked bytes given to set_args_raw and set_body_raw: encode writes
        them as they are, and the body is unpacked only when asked for.  */
    const char *args_raw, *body_raw;
    size_t args_size, body_size;
    s_header_t *hdrs;           /* in insertion order */
    size_t hdr_count, hdr_alloc;
};

static void s_err (char *err, size_t errlen, const char *fmt, ...)
    __attribute__ ((format (printf, 3, 4)));
static int s_read_map (ferry_envelope_t *self, const msgpack_object *map,
                       char *err, size_t errlen);
static int s_check_keys (const msgpack_object_map *map, const char *where,
                         char *err, size_t errlen);
static int s_check_string (s_field_t f, const char *s, size_t len, char *err,
                           size_t errlen);
static int s_check_header (const char *name, size_t nlen, const char *value,
                           size_t vlen, char *err, size_t errlen);
static int s_check_fields (const ferry_envelope_t *self, bool values,
                           char *err, size_t errlen);
static int s_walk (const void *data, size_t size, const ferry_limits_t *limits,
                   size_t *total, char *err, size_t errlen);
static void s_zone_init (ferry_envelope_t *self, size_t chunk);
static void *s_alloc (ferry_envelope_t *self, size_t size, bool align);
static const char *s_copy (ferry_envelope_t *self, const char *s,
                           size_t len);
static const msgpack_object *s_unpack (ferry_envelope_t *self,
                                       const char *bytes, size_t size);
static const char *s_value_for_field (ferry_envelope_t *self,
                                      const void *data, size_t size,
                                      char *err, size_t errlen);
static bool s_str_is (const msgpack_object *o, const char *s);
static int s_pack_str (msgpack_packer *pk, const char *s);

/* ---- construction -------------------------------------------------------- */

ferry_envelope_t *
ferry_envelope_new (ferry_kind_t kind)
{
    if (kind < FERRY_KIND_REQUEST || kind > FERRY_KIND_EVENT)
        return NULL;
    ferry_envelope_t *self = ferry_calloc (1, sizeof *self);
    self->kind = kind;
    self->version = FERRY_ENVELOPE_VERSION;
    return self;
}

void
ferry_envelope_destroy (ferry_envelope_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ferry_envelope_t *self = *self_p;
    if (self->zoned)
        msgpack_zone_destroy (&self->zone);
    free (self);
    *self_p = NULL;
}

/* ---- the bounds walk ----------------------------------------------------- */

int
ferry_msgpack_check (const void *data, size_t size,
                     const ferry_limits_t *limits, char *err, size_t errlen)
{
    size_t total;
    return s_walk (data, size, limits, &total, err, errlen);
}

/*  ferry_msgpack_check, which also gives the number of objects: that
    bounds the memory msgpack-c will take to unpack the value.  */
static int
s_walk (const void *data, size_t size, const ferry_limits_t *limits,
        size_t *total_p, char *err, size_t errlen)
{
    const ferry_limits_t *lim = limits ? limits : &ferry_limits_default;
    const uint8_t *p = data;
    size_t max_depth = lim->max_depth < S_DEPTH_CAP ? lim->max_depth
                                                    : S_DEPTH_CAP;
    uint64_t left[S_DEPTH_CAP]; /* values still due in each open container */
    size_t depth = 0, pos = 0, total = 0;
    bool started = false;

    if (size > lim->max_frame) {
        s_err (err, errlen, "message of %zu bytes exceeds the limit of %zu",
               size, lim->max_frame);
        return -1;
    }
    for (;;) {
        while (depth > 0 && left[depth - 1] == 0)
            depth--;
        if (depth == 0 && started)
            break;
        if (depth > 0)
            left[depth - 1]--;
        started = true;
        if (pos >= size) {
            s_err (err, errlen, "truncated input");
            return -1;
        }
        if (++total > lim->max_total) {
            s_err (err, errlen, "more than %zu objects", lim->max_total);
            return -1;
        }
        uint8_t b = p[pos++];
        uint64_t len = 0;         /* payload bytes after the header */
        uint64_t count = 0;       /* entries of a container */
        size_t hdr = 0;           /* length bytes after the type byte */
        const char *what = NULL;  /* "str", "bin", "ext", "array", "map" */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
            ; /* fixint, nil, false, true */
        else if (b <= 0x8f) {
            what = "map";
            count = b & 0x0f;
        }
        else if (b <= 0x9f) {
            what = "array";
            count = b & 0x0f;
        }
        else if (b <= 0xbf) {
            what = "str";
            len = b & 0x1f;
        }
        else switch (b) {
            case 0xc4: case 0xc5: case 0xc6:
                what = "bin";
                hdr = (size_t) 1 << (b - 0xc4);
                break;
            case 0xc7: case 0xc8: case 0xc9:
                what = "ext";
                hdr = (size_t) 1 << (b - 0xc7);
                break;
            case 0xca: len = 4; break;
            case 0xcb: len = 8; break;
            case 0xcc: case 0xcd: case 0xce: case 0xcf:
                len = (uint64_t) 1 << (b - 0xcc);
                break;
            case 0xd0: case 0xd1: case 0xd2: case 0xd3:
                len = (uint64_t) 1 << (b - 0xd0);
                break;
            case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
                len = 1 + ((uint64_t) 1 << (b - 0xd4)); /* type, data */
                break;
            case 0xd9: case 0xda: case 0xdb:
                what = "str";
                hdr = (size_t) 1 << (b - 0xd9);
                break;
            case 0xdc: case 0xdd:
                what = "array";
                hdr = b == 0xdc ? 2 : 4;
                break;
            case 0xde: case 0xdf:
                what = "map";
                hdr = b == 0xde ? 2 : 4;
                break;
            default:
                s_err (err, errlen, "invalid msgpack byte 0x%02x at offset %zu",
                       b, pos - 1);
                return -1;
        }
        if (hdr) {
            if (size - pos < hdr) {
                s_err (err, errlen, "truncated input");
                return -1;
            }
            uint64_t n = 0;
            for (size_t i = 0; i < hdr; i++)
                n = n << 8 | p[pos++];
            if (*what == 'a' || *what == 'm')
                count = n;
            else
                len = n;
        }
        if (what && (*what == 's' || *what == 'b' || *what == 'e')) {
            if (len > lim->max_string) {
                s_err (err, errlen,
                       "%s of %" PRIu64 " bytes exceeds the limit of %zu",
                       what, len, lim->max_string);
                return -1;
            }
            if (len > size - pos) {
                s_err (err, errlen,
                       "%s of %" PRIu64 " bytes runs past the end of input",
                       what, len);
                return -1;
            }
            if (*what == 'e')
                len++; /* the ext type byte */
        }
        if (len > size - pos) {
            s_err (err, errlen, "truncated input");
            return -1;
        }
        pos += len;
        if (what && (*what == 'a' || *what == 'm')) {
            /*  Every entry takes at least one byte (a map entry two), so a
                count larger than what remains is a lie: refuse it before
                msgpack-c reserves memory for it.  */
            uint64_t due = *what == 'm' ? 2 * count : count;
            if (count > lim->max_count) {
                s_err (err, errlen,
                       "%s of %" PRIu64 " entries exceeds the limit of %zu",
                       what, count, lim->max_count);
                return -1;
            }
            if (due > size - pos) {
                s_err (err, errlen,
                       "%s of %" PRIu64 " entries runs past the end of input",
                       what, count);
                return -1;
            }
            if (depth + 1 > max_depth) {
                s_err (err, errlen, "nesting deeper than %zu levels",
                       max_depth);
                return -1;
            }
            if (total + due > lim->max_total) {
                s_err (err, errlen, "more than %zu objects", lim->max_total);
                return -1;
            }
            if (due)
                left[depth++] = due;
        }
    }
    if (pos != size) {
        s_err (err, errlen, "trailing bytes after the value (%zu)",
               size - pos);
        return -1;
    }
    *total_p = total;
    return 0;
}

/* ---- decoding and encoding ----------------------------------------------- */

ferry_envelope_t *
ferry_envelope_decode (const void *data, size_t size,
                       const ferry_limits_t *limits, char *err, size_t errlen)
{
    size_t total;
    if (s_walk (data, size, limits, &total, err, errlen))
        return NULL;
    ferry_envelope_t *self = ferry_calloc (1, sizeof *self);
    /*  One chunk holds it all: the copy of the frame, msgpack-c's objects
        (each object sits in one array or map of its parent, and total
        counts keys too), then the field strings and the header array,
        which a frame of at most a few KiB bounds.  */
    size_t strings = size < 4096 ? size : 4096;
    s_zone_init (self, size + total * sizeof (msgpack_object) + strings
                           + 256);
    char *bytes = s_alloc (self, size, false);
    memcpy (bytes, data, size);
    self->frame_size = size;
    msgpack_object top;
    size_t off = 0;
    if (msgpack_unpack (bytes, size, &off, &self->zone, &top)
            != MSGPACK_UNPACK_SUCCESS
        || off != size) {
        s_err (err, errlen, "msgpack-c cannot unpack the value");
        ferry_envelope_destroy (&self);
        return NULL;
    }
    if (top.type != MSGPACK_OBJECT_MAP) {
        s_err (err, errlen, "envelope is not a map");
        ferry_envelope_destroy (&self);
        return NULL;
    }
    if (s_read_map (self, &top, err, errlen)
        || s_check_fields (self, false, err, errlen))
        ferry_envelope_destroy (&self);
    return self;
}

/*  At least the bytes ferry_envelope_encode writes for self, when args
    and body came as bytes; a guess from the frame otherwise.  */
static size_t
s_encoded_size (const ferry_envelope_t *self)
{
    size_t n = 5 + 2 + 5 + 5 + 8; /* map header, "v" 1, "kind" "request" */
    for (size_t f = F_ID; f < F_HDRS; f++)
        if (self->str[f])
            n += 1 + s_fields[f].klen + 5 + strlen (self->str[f]);
        else if (self->has[f])
            n += 1 + s_fields[f].klen + 9;
    if (self->hdr_count)
        n += 5 + 5;
    for (size_t i = 0; i < self->hdr_count; i++)
        n += 10 + strlen (self->hdrs[i].name) + strlen (self->hdrs[i].value);
    n += 5 + (self->args_raw ? self->args_size : 0);
    n += 5 + (self->body_raw ? self->body_size : 0);
    if ((self->args && !self->args_raw) || (self->body && !self->body_raw))
        n += self->frame_size;
    return n;
}

int
ferry_envelope_encode (const ferry_envelope_t *self, msgpack_sbuffer *out)
{
    char err[160];
    if (s_check_fields (self, true, err, sizeof err))
        return -1;

    /*  One reallocation at most instead of msgpack-c's doubling from 8 KiB
        up to what a large body needs; the buffer is malloc'ed memory that
        msgpack_sbuffer_destroy frees, as msgpack_sbuffer_write does it.  */
    size_t need = s_encoded_size (self);
    if (out->alloc - out->size < need) {
        size_t alloc = out->size + need;
        if (alloc < 2 * out->alloc)
            alloc = 2 * out->alloc;
        out->data = ferry_realloc (out->data, alloc);
        out->alloc = alloc;
    }

    size_t n = 2; /* v, kind */
    for (size_t f = F_ID; f < F_HDRS; f++)
        n += self->str[f] || self->has[f];
    n += (self->hdr_count > 0) + (self->args != NULL)
         + (self->body != NULL || self->body_raw != NULL);

    msgpack_packer pk;
    msgpack_packer_init (&pk, out, msgpack_sbuffer_write);
    int rc = msgpack_pack_map (&pk, n);
    rc |= s_pack_str (&pk, "v");
    rc |= msgpack_pack_unsigned_int (&pk, self->version);
    rc |= s_pack_str (&pk, "kind");
    rc |= s_pack_str (&pk, s_kind_names[self->kind]);
    for (size_t f = F_ID; f < F_HDRS; f++) {
        if (self->str[f] || self->has[f])
            rc |= msgpack_pack_str_with_body (&pk, s_fields[f].key,
                                              s_fields[f].klen);
        if (self->str[f])
            rc |= s_pack_str (&pk, self->str[f]);
        else if (self->has[f]) {
            rc |= msgpack_pack_uint64 (&pk, self->num[f]);
        }
    }
    if (self->hdr_count > 0) {
        rc |= s_pack_str (&pk, "hdrs");
        rc |= msgpack_pack_map (&pk, self->hdr_count);
        for (size_t i = 0; i < self->hdr_count; i++) {
            rc |= s_pack_str (&pk, self->hdrs[i].name);
            rc |= s_pack_str (&pk, self->hdrs[i].value);
        }
    }
    /*  Bytes given to set_args_raw and set_body_raw were checked then and
        go out as they came; decoded values are packed again.  */
    if (self->args) {
        rc |= s_pack_str (&pk, "args");
        if (self->args_raw)
            rc |= msgpack_sbuffer_write (out, self->args_raw,
                                         self->args_size);
        else
            rc |= msgpack_pack_object (&pk, *self->args);
    }
    if (self->body_raw || self->body) {
        rc |= s_pack_str (&pk, "body");
        if (self->body_raw)
            rc |= msgpack_sbuffer_write (out, self->body_raw,
                                         self->body_size);
        else
            rc |= msgpack_pack_object (&pk, *self->body);
    }
    return rc ? -1 : 0;
}

/* ---- fields -------------------------------------------------------------- */

static void
s_set_str (ferry_envelope_t *self, s_field_t f, const char *s)
{
    self->str[f] = s ? s_copy (self, s, strlen (s)) : NULL;
}

static void
s_set_num (ferry_envelope_t *self, s_field_t f, uint64_t value)
{
    self->num[f] = value;
    self->has[f] = true;
}

ferry_kind_t
ferry_envelope_kind (const ferry_envelope_t *self)
{
    return self->kind;
}

unsigned
ferry_envelope_version (const ferry_envelope_t *self)
{
    return self->version;
}

const char *
ferry_envelope_id (const ferry_envelope_t *self)
{
    return self->str[F_ID];
}

void
ferry_envelope_set_id (ferry_envelope_t *self, const char *id)
{
    s_set_str (self, F_ID, id);
}

const char *
ferry_envelope_cid (const ferry_envelope_t *self)
{
    return self->str[F_CID];
}

void
ferry_envelope_set_cid (ferry_envelope_t *self, const char *cid)
{
    s_set_str (self, F_CID, cid);
}

const char *
ferry_envelope_re (const ferry_envelope_t *self)
{
    return self->str[F_RE];
}

void
ferry_envelope_set_re (ferry_envelope_t *self, const char *re)
{
    s_set_str (self, F_RE, re);
}

const char *
ferry_envelope_service (const ferry_envelope_t *self)
{
    return self->str[F_SVC];
}

void
ferry_envelope_set_service (ferry_envelope_t *self, const char *service)
{
    s_set_str (self, F_SVC, service);
}

const char *
ferry_envelope_operation (const ferry_envelope_t *self)
{
    return self->str[F_OP];
}

void
ferry_envelope_set_operation (ferry_envelope_t *self, const char *op)
{
    s_set_str (self, F_OP, op);
}

const char *
ferry_envelope_principal (const ferry_envelope_t *self)
{
    return self->str[F_PRIN];
}

void
ferry_envelope_set_principal (ferry_envelope_t *self, const char *p)
{
    s_set_str (self, F_PRIN, p);
}

const char *
ferry_envelope_idempotency_key (const ferry_envelope_t *self)
{
    return self->str[F_IDEM];
}

void
ferry_envelope_set_idempotency_key (ferry_envelope_t *self, const char *key)
{
    s_set_str (self, F_IDEM, key);
}

const char *
ferry_envelope_traceparent (const ferry_envelope_t *self)
{
    return self->str[F_TP];
}

void
ferry_envelope_set_traceparent (ferry_envelope_t *self, const char *tp)
{
    s_set_str (self, F_TP, tp);
}

const char *
ferry_envelope_reply_to (const ferry_envelope_t *self)
{
    return self->str[F_RTO];
}

void
ferry_envelope_set_reply_to (ferry_envelope_t *self, const char *to)
{
    s_set_str (self, F_RTO, to);
}

const char *
ferry_envelope_job (const ferry_envelope_t *self)
{
    return self->str[F_JOB];
}

void
ferry_envelope_set_job (ferry_envelope_t *self, const char *id)
{
    s_set_str (self, F_JOB, id);
}

uint64_t
ferry_envelope_deadline (const ferry_envelope_t *self)
{
    return self->num[F_DL];
}

void
ferry_envelope_set_deadline (ferry_envelope_t *self, uint64_t ms)
{
    s_set_num (self, F_DL, ms);
}

uint64_t
ferry_envelope_created (const ferry_envelope_t *self)
{
    return self->num[F_TS];
}

void
ferry_envelope_set_created (ferry_envelope_t *self, uint64_t ms)
{
    s_set_num (self, F_TS, ms);
}

unsigned
ferry_envelope_attempt (const ferry_envelope_t *self)
{
    return (unsigned) self->num[F_ATT];
}

void
ferry_envelope_set_attempt (ferry_envelope_t *self, unsigned attempt)
{
    s_set_num (self, F_ATT, attempt);
}

unsigned
ferry_envelope_status (const ferry_envelope_t *self)
{
    return (unsigned) self->num[F_ST];
}

void
ferry_envelope_set_status (ferry_envelope_t *self, unsigned status)
{
    s_set_num (self, F_ST, status);
}

/*  Checks bytes for args or body and copies them into the zone.  args and
    body sit inside an envelope whose top map is one level, so they may
    nest one level less than the limit.  */
static const char *
s_value_for_field (ferry_envelope_t *self, const void *data, size_t size,
                   char *err, size_t errlen)
{
    ferry_limits_t limits = ferry_limits_default;
    limits.max_depth--;
    size_t total;
    if (s_walk (data, size, &limits, &total, err, errlen))
        return NULL;
    char *bytes = s_alloc (self, size, false);
    memcpy (bytes, data, size);
    return bytes;
}

int
ferry_envelope_set_args_raw (ferry_envelope_t *self, const void *data,
                             size_t size, char *err, size_t errlen)
{
    const char *bytes = s_value_for_field (self, data, size, err, errlen);
    if (!bytes)
        return -1;
    const msgpack_object *o = s_unpack (self, bytes, size);
    if (!o) {
        s_err (err, errlen, "msgpack-c cannot unpack the value");
        return -1;
    }
    if (o->type != MSGPACK_OBJECT_MAP) {
        s_err (err, errlen, "field 'args': expected map");
        return -1;
    }
    if (s_check_keys (&o->via.map, "args", err, errlen))
        return -1;
    self->args = o;
    self->args_raw = bytes;
    self->args_size = size;
    return 0;
}

const msgpack_object *
ferry_envelope_args (const ferry_envelope_t *self)
{
    return self->args;
}

const msgpack_object *
ferry_envelope_arg (const ferry_envelope_t *self, const char *name)
{
    if (!self->args)
        return NULL;
    const msgpack_object_map *map = &self->args->via.map;
    for (uint32_t i = 0; i < map->size; i++)
        if (s_str_is (&map->ptr[i].key, name))
            return &map->ptr[i].val;
    return NULL;
}

/*  The body is only checked and copied here: the worker hands over bytes
    it has just packed and the edge forwards them, so nobody reads the
    objects unless ferry_envelope_body asks for them.  */
int
ferry_envelope_set_body_raw (ferry_envelope_t *self, const void *data,
                             size_t size, char *err, size_t errlen)
{
    const char *bytes = s_value_for_field (self, data, size, err, errlen);
    if (!bytes)
        return -1;
    self->body = NULL;
    self->body_raw = bytes;
    self->body_size = size;
    return 0;
}

const msgpack_object *
ferry_envelope_body (const ferry_envelope_t *self)
{
    if (!self->body && self->body_raw) {
        /*  Unpacking on first use changes no value the caller can see;
            an envelope belongs to one thread and is never const itself.
            NULL here could only mean msgpack-c ran out of memory.  */
        ferry_envelope_t *mutable = (ferry_envelope_t *) self;
        mutable->body = s_unpack (mutable, self->body_raw, self->body_size);
    }
    return self->body;
}

/*  Setting an existing header replaces its value; a NULL value removes it.
    Names are stored lowercase.  */
void
ferry_envelope_set_header (ferry_envelope_t *self, const char *name,
                           const char *value)
{
    size_t i;
    for (i = 0; i < self->hdr_count; i++)
        if (strcasecmp (self->hdrs[i].name, name) == 0)
            break;
    if (i < self->hdr_count) {
        if (value) {
            self->hdrs[i].value = s_copy (self, value, strlen (value));
            return;
        }
        self->hdr_count--;
        memmove (self->hdrs + i, self->hdrs + i + 1,
                 (self->hdr_count - i) * sizeof *self->hdrs);
        return;
    }
    if (!value)
        return;
    if (self->hdr_count == self->hdr_alloc) {
        size_t alloc = self->hdr_alloc ? 2 * self->hdr_alloc : 4;
        s_header_t *hdrs = s_alloc (self, alloc * sizeof *hdrs, true);
        if (self->hdr_count)
            memcpy (hdrs, self->hdrs, self->hdr_count * sizeof *hdrs);
        self->hdrs = hdrs;
        self->hdr_alloc = alloc;
    }
    size_t len = strlen (name);
    char *lower = s_alloc (self, len + 1, false);
    for (size_t c = 0; c <= len; c++)
        lower[c] = name[c] >= 'A' && name[c] <= 'Z'
                       ? (char) (name[c] + 'a' - 'A')
                       : name[c];
    self->hdrs[i].name = lower;
    self->hdrs[i].value = s_copy (self, value, strlen (value));
    self->hdr_count++;
}

const char *
ferry_envelope_header (const ferry_envelope_t *self, const char *name)
{
    for (size_t i = 0; i < self->hdr_count; i++)
        if (strcasecmp (self->hdrs[i].name, name) == 0)
            return self->hdrs[i].value;
    return NULL;
}

size_t
ferry_envelope_header_count (const ferry_envelope_t *self)
{
    return self->hdr_count;
}

int
ferry_envelope_header_at (const ferry_envelope_t *self, size_t i,
                          const char **name, const char **value)
{
    if (i >= self->hdr_count)
        return -1;
    *name = self->hdrs[i].name;
    *value = self->hdrs[i].value;
    return 0;
}

/* ---- replies and problems ------------------------------------------------ */

ferry_envelope_t *
ferry_envelope_new_reply (const ferry_envelope_t *request, unsigned status)
{
    ferry_envelope_t *self = ferry_envelope_new (FERRY_KIND_REPLY);
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    ferry_envelope_set_id (self, id);
    ferry_envelope_set_re (self, request->str[F_ID]);
    ferry_envelope_set_cid (self, request->str[F_CID]);
    ferry_envelope_set_traceparent (self, request->str[F_TP]);
    ferry_envelope_set_created (self, ferry_wall_ms ());
    ferry_envelope_set_status (self, status);
    return self;
}

void
ferry_envelope_set_problem (ferry_envelope_t *self, unsigned status,
                            const char *title, const char *detail,
                            const char *sqlstate)
{
    ferry_envelope_set_status (self, status);
    ferry_envelope_set_header (self, "content-type",
                               "application/problem+json");
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map (&pk, 3 + (detail != NULL) + (sqlstate != NULL));
    s_pack_str (&pk, "type");
    s_pack_str (&pk, "about:blank");
    s_pack_str (&pk, "title");
    s_pack_str (&pk, title ? title : ferry_status_title (status));
    s_pack_str (&pk, "status");
    msgpack_pack_unsigned_int (&pk, status);
    if (detail) {
        s_pack_str (&pk, "detail");
        s_pack_str (&pk, detail);
    }
    if (sqlstate) {
        s_pack_str (&pk, "sqlstate");
        s_pack_str (&pk, sqlstate);
    }
    /*  Only a detail beyond max_string can fail the check; a problem
        without a body still carries its status.  */
    char err[160];
    if (ferry_envelope_set_body_raw (self, sb.data, sb.size, err, sizeof err)) {
        self->body = NULL;
        self->body_raw = NULL;
    }
    msgpack_sbuffer_destroy (&sb);
}

int
ferry_problem_reply_encode (const char *re_id, unsigned status,
                            const char *detail, unsigned retry_after,
                            msgpack_sbuffer *out)
{
    ferry_envelope_t *self = ferry_envelope_new (FERRY_KIND_REPLY);
    char id[FERRY_ID_LEN + 1];
    ferry_id_generate (id);
    ferry_envelope_set_id (self, id);
    ferry_envelope_set_re (self, re_id);
    ferry_envelope_set_created (self, ferry_wall_ms ());
    ferry_envelope_set_problem (self, status, NULL, detail, NULL);
    if (retry_after) {
        char seconds[16];
        snprintf (seconds, sizeof seconds, "%u", retry_after);
        ferry_envelope_set_header (self, "retry-after", seconds);
    }
    int rc = ferry_envelope_encode (self, out);
    ferry_envelope_destroy (&self);
    return rc;
}

const char *
ferry_status_title (unsigned status)
{
    static const struct {
        unsigned status;
        const char *title;
    } titles[] = {
        {200, "OK"},
        {201, "Created"},
        {202, "Accepted"},
        {204, "No Content"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {408, "Request Timeout"},
        {409, "Conflict"},
        {413, "Content Too Large"},
        {415, "Unsupported Media Type"},
        {422, "Unprocessable Content"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
    };
    for (size_t i = 0; i < sizeof titles / sizeof titles[0]; i++)
        if (titles[i].status == status)
            return titles[i].title;
    return "Unknown";
}

/* ---- helpers ------------------------------------------------------------- */

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

static bool
s_str_is (const msgpack_object *o, const char *s)
{
    size_t len = strlen (s);
    /*  An empty str from msgpack-c may have a NULL pointer.  */
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == len
           && (len == 0 || memcmp (o->via.str.ptr, s, len) == 0);
}

static int
s_pack_str (msgpack_packer *pk, const char *s)
{
    size_t len = strlen (s);
    return msgpack_pack_str (pk, len) | msgpack_pack_str_body (pk, s, len);
}

/*  The zone's first chunk; later ones take msgpack-c's doubling.  */
static void
s_zone_init (ferry_envelope_t *self, size_t chunk)
{
    assert (!self->zoned);
    if (!msgpack_zone_init (&self->zone, chunk)) {
        fprintf (stderr, "ferry: out of memory (%zu bytes)\n", chunk);
        abort ();
    }
    self->zoned = true;
}

/*  Memory that lives as long as the envelope; like ferry_malloc, running
    out of memory ends the process.  An envelope built by setters starts
    with 1 KiB, which holds a request's or a small reply's fields.  */
static void *
s_alloc (ferry_envelope_t *self, size_t size, bool align)
{
    if (!self->zoned)
        s_zone_init (self, size + 64 > 1024 ? size + 64 : 1024);
    void *p = align ? msgpack_zone_malloc (&self->zone, size)
                    : msgpack_zone_malloc_no_align (&self->zone, size);
    if (!p) {
        fprintf (stderr, "ferry: out of memory (%zu bytes)\n", size);
        abort ();
    }
    return p;
}

/*  A NUL-ended copy of len bytes in the zone; s may be NULL when len is 0,
    as msgpack-c gives an empty str.  */
static const char *
s_copy (ferry_envelope_t *self, const char *s, size_t len)
{
    char *copy = s_alloc (self, len + 1, false);
    if (len)
        memcpy (copy, s, len);
    copy[len] = '\0';
    return copy;
}

/*  Unpacks bytes that s_walk passed into the zone, or returns NULL;
    strings point into the bytes, which must live in the zone too.  The
    walk is stricter than msgpack-c, so this fails only without memory.  */
static const msgpack_object *
s_unpack (ferry_envelope_t *self, const char *bytes, size_t size)
{
    msgpack_object *o = s_alloc (self, sizeof *o, true);
    size_t off = 0;
    if (msgpack_unpack (bytes, size, &off, &self->zone, o)
            != MSGPACK_UNPACK_SUCCESS
        || off != size)
        return NULL;
    return o;
}

static int
s_key_cmp (const void *a, const void *b)
{
    const msgpack_object_str *x = &(*(const msgpack_object_kv *const *) a)
                                        ->key.via.str;
    const msgpack_object_str *y = &(*(const msgpack_object_kv *const *) b)
                                        ->key.via.str;
    if (x->size != y->size)
        return x->size < y->size ? -1 : 1;
    return x->size ? memcmp (x->ptr, y->ptr, x->size) : 0;
}

/*  Every key must be a str and no key may appear twice.  Sorting keeps a
    map of 65,536 keys from costing billions of comparisons.  */
static int
s_check_keys (const msgpack_object_map *map, const char *where, char *err,
              size_t errlen)
{
    const char *pre = where ? "field '" : "";
    const char *post = where ? "': " : "";
    where = where ? where : "";
    if (map->size == 0)
        return 0;
    /*  Envelopes, headers and args are small maps: no allocation.  */
    const msgpack_object_kv *small[32];
    const msgpack_object_kv **kv = map->size <= 32
                                       ? small
                                       : ferry_malloc (map->size * sizeof *kv);
    int rc = 0;
    for (uint32_t i = 0; i < map->size && rc == 0; i++) {
        kv[i] = &map->ptr[i];
        if (kv[i]->key.type != MSGPACK_OBJECT_STR) {
            s_err (err, errlen, "%s%s%skey is not a string", pre, where, post);
            rc = -1;
        }
    }
    if (rc == 0) {
        qsort (kv, map->size, sizeof *kv, s_key_cmp);
        for (uint32_t i = 1; i < map->size && rc == 0; i++)
            if (s_key_cmp (&kv[i - 1], &kv[i]) == 0) {
                const msgpack_object_str *k = &kv[i]->key.via.str;
                bool printable = k->size <= 64;
                for (uint32_t c = 0; c < k->size && printable; c++)
                    printable = k->ptr[c] >= 0x20 && k->ptr[c] < 0x7f;
                s_err (err, errlen, "%s%s%sduplicate key '%.*s'", pre, where,
                       post, printable ? (int) k->size : 0, k->ptr);
                rc = -1;
            }
    }
    if (kv != small)
        free (kv);
    return rc;
}

static int
s_read_field (ferry_envelope_t *self, s_field_t f, const msgpack_object *o,
              char *err, size_t errlen)
{
    const char *key = s_fields[f].key;
    switch (s_fields[f].type) {
    case T_UINT:
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
            s_err (err, errlen, "field '%s': expected unsigned integer", key);
            return -1;
        }
        s_set_num (self, f, o->via.u64);
        return 0;
    case T_KIND:
        if (o->type != MSGPACK_OBJECT_STR) {
            s_err (err, errlen, "field '%s': expected string", key);
            return -1;
        }
        for (int k = FERRY_KIND_REQUEST; k <= FERRY_KIND_EVENT; k++)
            if (s_str_is (o, s_kind_names[k])) {
                self->kind = (ferry_kind_t) k;
                return 0;
            }
        s_err (err, errlen, "field 'kind': unknown kind");
        return -1;
    case T_TOKEN:
    case T_NAME:
    case T_TEXT:
        if (o->type != MSGPACK_OBJECT_STR) {
            s_err (err, errlen, "field '%s': expected string", key);
            return -1;
        }
        if (s_check_string (f, o->via.str.ptr, o->via.str.size, err, errlen))
            return -1;
        self->str[f] = s_copy (self, o->via.str.ptr, o->via.str.size);
        return 0;
    case T_HDRS:
        if (o->type != MSGPACK_OBJECT_MAP) {
            s_err (err, errlen, "field '%s': expected map", key);
            return -1;
        }
        if (o->via.map.size > s_fields[f].max) {
            s_err (err, errlen, "field '%s': more than %" PRIu64 " headers",
                   key, s_fields[f].max);
            return -1;
        }
        /*  Valid names are lowercase, so keys that differ as bytes differ
            without regard to case too.  */
        if (s_check_keys (&o->via.map, key, err, errlen))
            return -1;
        if (o->via.map.size) {
            self->hdrs = s_alloc (self, o->via.map.size * sizeof *self->hdrs,
                                  true);
            self->hdr_alloc = o->via.map.size;
        }
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            const msgpack_object *v = &o->via.map.ptr[i].val;
            if (v->type != MSGPACK_OBJECT_STR) {
                s_err (err, errlen, "field '%s': expected string values", key);
                return -1;
            }
            if (s_check_header (k->via.str.ptr, k->via.str.size,
                                v->via.str.ptr, v->via.str.size, err, errlen))
                return -1;
            self->hdrs[i].name = s_copy (self, k->via.str.ptr,
                                         k->via.str.size);
            self->hdrs[i].value = s_copy (self, v->via.str.ptr,
                                          v->via.str.size);
            self->hdr_count++;
        }
        return 0;
    case T_MAP:
        if (o->type != MSGPACK_OBJECT_MAP) {
            s_err (err, errlen, "field '%s': expected map", key);
            return -1;
        }
        if (s_check_keys (&o->via.map, key, err, errlen))
            return -1;
        self->args = o;
        return 0;
    case T_ANY:
        self->body = o;
        return 0;
    }
    return -1;
}

/*  The field a key names, or F_COUNT.  Keys are short: comparing the
    length first spares most of the string compares.  */
static s_field_t
s_field_of (const msgpack_object *key)
{
    if (key->type != MSGPACK_OBJECT_STR)
        return F_COUNT;
    size_t len = key->via.str.size;
    if (len == 0 || len > 4)
        return F_COUNT;
    for (size_t f = 0; f < F_COUNT; f++)
        if (s_fields[f].klen == len
            && memcmp (s_fields[f].key, key->via.str.ptr, len) == 0)
            return (s_field_t) f;
    return F_COUNT;
}

/*  Reads the top map: keys first (all str, no duplicates), then the
    version, because another major version may mean anything, and then the
    known fields.  Unknown keys are minor additions and are skipped.  */
static int
s_read_map (ferry_envelope_t *self, const msgpack_object *map, char *err,
            size_t errlen)
{
    const msgpack_object_map *m = &map->via.map;
    if (s_check_keys (m, NULL, err, errlen))
        return -1;
    const msgpack_object *v = NULL;
    for (uint32_t i = 0; i < m->size && !v; i++)
        if (s_str_is (&m->ptr[i].key, "v"))
            v = &m->ptr[i].val;
    if (!v) {
        s_err (err, errlen, "missing field 'v'");
        return -1;
    }
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        s_err (err, errlen, "field 'v': expected unsigned integer");
        return -1;
    }
    if (v->via.u64 != FERRY_ENVELOPE_VERSION) {
        s_err (err, errlen, "unsupported envelope version %" PRIu64,
               v->via.u64);
        return -1;
    }
    self->version = FERRY_ENVELOPE_VERSION;
    for (uint32_t i = 0; i < m->size; i++) {
        s_field_t f = s_field_of (&m->ptr[i].key);
        if (f != F_COUNT && f != F_V
            && s_read_field (self, f, &m->ptr[i].val, err, errlen))
            return -1;
    }
    return 0;
}

static int
s_check_string (s_field_t f, const char *s, size_t len, char *err,
                size_t errlen)
{
    const char *key = s_fields[f].key;
    uint64_t max = s_fields[f].max;
    bool ok = len >= 1 && len <= max;
    const unsigned char *u = (const unsigned char *) s;
    size_t i = 0;
    if (ok && s_fields[f].type == T_TOKEN)
        while (i < len && u[i] >= 0x21 && u[i] <= 0x7e)
            i++;
    else if (ok && s_fields[f].type == T_NAME)
        while (i < len
               && ((u[i] >= 'a' && u[i] <= 'z') || (u[i] >= 'A' && u[i] <= 'Z')
                   || (u[i] >= '0' && u[i] <= '9') || u[i] == '_'
                   || u[i] == '.' || u[i] == '-'))
            i++;
    else if (ok)
        i = memchr (s, 0, len) ? 0 : len;
    if (ok && i == len)
        return 0;
    if (s_fields[f].type == T_TOKEN)
        s_err (err, errlen,
               "field '%s': expected 1 to %" PRIu64
               " visible ASCII characters",
               key, max);
    else if (s_fields[f].type == T_NAME)
        s_err (err, errlen,
               "field '%s': expected a name of 1 to %" PRIu64
               " characters [A-Za-z0-9_.-]",
               key, max);
    else
        s_err (err, errlen,
               "field '%s': expected 1 to %" PRIu64 " bytes without NUL", key,
               max);
    return -1;
}

/*  Header names are lowercase HTTP tokens; values may hold no control
    characters but tab, so a value copied into an HTTP response can never
    split it.  */
static int
s_check_header (const char *name, size_t nlen, const char *value, size_t vlen,
                char *err, size_t errlen)
{
    bool ok = nlen >= 1 && nlen <= S_HEADER_NAME_MAX;
    for (size_t i = 0; i < nlen && ok; i++) {
        char c = name[i];
        ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
             || (c && strchr ("!#$%&'*+-.^_`|~", c));
    }
    if (!ok) {
        s_err (err, errlen, "field 'hdrs': invalid header name");
        return -1;
    }
    ok = vlen <= S_HEADER_VALUE_MAX;
    for (size_t i = 0; i < vlen && ok; i++) {
        unsigned char c = (unsigned char) value[i];
        ok = (c >= 0x20 && c != 0x7f) || c == '\t';
    }
    if (!ok) {
        s_err (err, errlen, "field 'hdrs': invalid value for header '%.*s'",
               (int) nlen, name);
        return -1;
    }
    return 0;
}

/*  What both decode and encode require: the fields of the kind are
    present, numbers are in range and, with values, strings and headers
    well formed, so encode never writes what decode would refuse.  Decode
    has checked each string as it read it and passes false.  */
static int
s_check_fields (const ferry_envelope_t *self, bool values, char *err,
                size_t errlen)
{
    static const s_field_t required[][5] = {
        [FERRY_KIND_REQUEST] = {F_ID, F_SVC, F_OP, F_DL, F_COUNT},
        [FERRY_KIND_REPLY] = {F_ID, F_RE, F_ST, F_COUNT},
        [FERRY_KIND_EVENT] = {F_ID, F_COUNT},
    };
    if (self->kind < FERRY_KIND_REQUEST || self->kind > FERRY_KIND_EVENT) {
        s_err (err, errlen, "missing field 'kind'");
        return -1;
    }
    for (const s_field_t *f = required[self->kind]; *f != F_COUNT; f++)
        if (!self->str[*f] && !self->has[*f]) {
            s_err (err, errlen, "missing field '%s'", s_fields[*f].key);
            return -1;
        }
    for (size_t f = F_ID; f < F_HDRS; f++) {
        if (values && self->str[f]
            && s_check_string (f, self->str[f], strlen (self->str[f]), err,
                               errlen))
            return -1;
        if (self->has[f] && self->num[f] > s_fields[f].max) {
            s_err (err, errlen, "field '%s': %" PRIu64 " is out of range",
                   s_fields[f].key, self->num[f]);
            return -1;
        }
    }
    if (self->has[F_ST] && self->num[F_ST] < 100) {
        s_err (err, errlen, "field 'st': %" PRIu64 " is out of range",
               self->num[F_ST]);
        return -1;
    }
    if (self->hdr_count > S_HEADERS_MAX) {
        s_err (err, errlen, "field 'hdrs': more than %d headers",
               S_HEADERS_MAX);
        return -1;
    }
    for (size_t i = 0; i < self->hdr_count && values; i++)
        if (s_check_header (self->hdrs[i].name, strlen (self->hdrs[i].name),
                            self->hdrs[i].value,
                            strlen (self->hdrs[i].value), err, errlen))
            return -1;
    return 0;
}


/* ---- tests --------------------------------------------------------------- */

#include "json.h"

#include <jansson.h>
#include <unistd.h>

int ferry_envelope_test (bool verbose);
int ferry_envelope_check_test (bool verbose);
int ferry_envelope_problem_test (bool verbose);
int ferry_envelope_vectors_test (bool verbose);

static bool
s_eq (const char *a, const char *b)
{
    return a && b && strcmp (a, b) == 0;
}

/*  Packs {"id": 42, "name": "x"} or, with bad, an array.  */
static void
s_test_args (msgpack_sbuffer *sb, bool bad)
{
    msgpack_packer pk;
    msgpack_packer_init (&pk, sb, msgpack_sbuffer_write);
    if (bad) {
        msgpack_pack_array (&pk, 0);
        return;
    }
    msgpack_pack_map (&pk, 2);
    s_pack_str (&pk, "id");
    msgpack_pack_int (&pk, 42);
    s_pack_str (&pk, "name");
    s_pack_str (&pk, "x");
}

static bool
s_test_json_is (const msgpack_object *o, const char *json)
{
    char *text = o ? ferry_msgpack_to_json (o, NULL) : NULL;
    bool same = text && strcmp (text, json) == 0;
    if (!same)
        fprintf (stderr, "# got %s, want %s\n", text ? text : "(null)", json);
    free (text);
    return same;
}

/*  What the zone must get right: values replaced or set from the
    envelope's own getters, header growth and removal, empty strings that
    msgpack-c hands over with a NULL pointer, raw bytes written as given,
    and a body larger than the zone's first chunk.  */
static int
s_test_zone (void)
{
    char err[160];
    ferry_envelope_t *rep = ferry_envelope_new (FERRY_KIND_REPLY);
    ferry_envelope_set_id (rep, "m-2");
    ferry_envelope_set_re (rep, "m-1");
    ferry_envelope_set_status (rep, 200);
    ferry_envelope_set_cid (rep, "first");
    ferry_envelope_set_cid (rep, ferry_envelope_cid (rep));
    FERRY_CHECK (s_eq (ferry_envelope_cid (rep), "first"));
    char name[16];
    for (int i = 0; i < 9; i++) {
        snprintf (name, sizeof name, "X-H%d", i);
        ferry_envelope_set_header (rep, name, i == 4 ? "" : name);
    }
    ferry_envelope_set_header (rep, "x-h2", NULL);
    ferry_envelope_set_header (rep, "x-h3", ferry_envelope_header (rep,
                                                                   "x-h3"));
    FERRY_CHECK (ferry_envelope_header_count (rep) == 8);
    const char *n, *v;
    FERRY_CHECK (ferry_envelope_header_at (rep, 2, &n, &v) == 0);
    FERRY_CHECK (s_eq (n, "x-h3") && s_eq (v, "X-H3"));
    FERRY_CHECK (ferry_envelope_header_at (rep, 7, &n, &v) == 0);
    FERRY_CHECK (s_eq (n, "x-h8") && s_eq (v, "X-H8"));

    /*  1 as a uint64: not how msgpack-c would pack it, still valid.  */
    const char one[] = "\xcf\0\0\0\0\0\0\0\x01";
    FERRY_CHECK (ferry_envelope_set_body_raw (rep, one, 9, err, sizeof err)
                 == 0);
    FERRY_CHECK (ferry_envelope_body (rep)->via.u64 == 1);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    FERRY_CHECK (ferry_envelope_encode (rep, &sb) == 0);
    FERRY_CHECK (sb.size > 9 && memcmp (sb.data + sb.size - 9, one, 9) == 0);
    ferry_envelope_t *copy = ferry_envelope_decode (sb.data, sb.size, NULL,
                                                    err, sizeof err);
    FERRY_CHECK (copy);
    FERRY_CHECK (s_eq (ferry_envelope_header (copy, "x-h4"), ""));
    FERRY_CHECK (ferry_envelope_header_count (copy) == 8);
    FERRY_CHECK (ferry_envelope_body (copy)->via.u64 == 1);
    ferry_envelope_destroy (&copy);

    /*  A refused args value leaves the envelope as it was.  */
    FERRY_CHECK (ferry_envelope_set_args_raw (rep, "\x81\xa1k\x01", 4, err,
                                              sizeof err) == 0);
    FERRY_CHECK (ferry_envelope_set_args_raw (rep, "\x82\xa1k\x01\xa1k\x02",
                                              7, err, sizeof err) == -1);
    FERRY_CHECK (strstr (err, "duplicate key 'k'"));
    FERRY_CHECK (ferry_envelope_arg (rep, "k")->via.u64 == 1);
    FERRY_CHECK (ferry_envelope_set_args_raw (rep, "\x81\xa0\xa0", 3, err,
                                              sizeof err) == 0);
    FERRY_CHECK (ferry_envelope_arg (rep, "")->via.str.size == 0);

    /*  A body of 100 KiB, then its envelope decoded and encoded again.  */
    size_t big = 100 * 1024;
    char *body = ferry_malloc (big + 5);
    body[0] = (char) 0xdb;
    body[1] = 0;
    body[2] = (char) (big >> 16);
    body[3] = (char) (big >> 8);
    body[4] = (char) big;
    memset (body + 5, 'b', big);
    FERRY_CHECK (ferry_envelope_set_body_raw (rep, body, big + 5, err,
                                              sizeof err) == 0);
    msgpack_sbuffer_clear (&sb);
    FERRY_CHECK (ferry_envelope_encode (rep, &sb) == 0);
    copy = ferry_envelope_decode (sb.data, sb.size, NULL, err, sizeof err);
    FERRY_CHECK (copy);
    const msgpack_object *o = ferry_envelope_body (copy);
    FERRY_CHECK (o->type == MSGPACK_OBJECT_STR && o->via.str.size == big
                 && memcmp (o->via.str.ptr, body + 5, big) == 0);
    msgpack_sbuffer again;
    msgpack_sbuffer_init (&again);
    FERRY_CHECK (ferry_envelope_encode (copy, &again) == 0);
    FERRY_CHECK (again.size == sb.size
                 && memcmp (again.data, sb.data, sb.size) == 0);
    msgpack_sbuffer_destroy (&again);
    ferry_envelope_destroy (&copy);
    free (body);
    msgpack_sbuffer_destroy (&sb);
    ferry_envelope_destroy (&rep);
    return 0;
}

int
ferry_envelope_test (bool verbose)
{
    char err[160];
    FERRY_CHECK (ferry_envelope_new ((ferry_kind_t) 0) == NULL);
    ferry_envelope_t *req = ferry_envelope_new (FERRY_KIND_REQUEST);
    FERRY_CHECK (ferry_envelope_kind (req) == FERRY_KIND_REQUEST);
    FERRY_CHECK (ferry_envelope_version (req) == 1);
    FERRY_CHECK (ferry_envelope_id (req) == NULL);
    FERRY_CHECK (ferry_envelope_deadline (req) == 0);
    FERRY_CHECK (ferry_envelope_args (req) == NULL);
    FERRY_CHECK (ferry_envelope_arg (req, "id") == NULL);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    /*  Missing fields, then a bad name, make encode refuse.  */
    FERRY_CHECK (ferry_envelope_encode (req, &sb) == -1);
    ferry_envelope_set_id (req, "m-1");
    ferry_envelope_set_service (req, "app");
    ferry_envelope_set_operation (req, "get user");
    ferry_envelope_set_deadline (req, 1700000005000);
    FERRY_CHECK (ferry_envelope_encode (req, &sb) == -1);
    ferry_envelope_set_operation (req, "get_user");
    FERRY_CHECK (sb.size == 0);

    ferry_envelope_set_cid (req, "req-42");
    ferry_envelope_set_re (req, "ignored-in-a-request");
    ferry_envelope_set_re (req, NULL);
    ferry_envelope_set_principal (req, "user:ada");
    ferry_envelope_set_idempotency_key (req, "idem-1");
    ferry_envelope_set_traceparent (
        req, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    ferry_envelope_set_reply_to (req, "ferry.replies");
    ferry_envelope_set_job (req, "0190f3c2-7d4e-4a1b-9c2d-3e4f5a6b7c8d");
    ferry_envelope_set_created (req, 1700000000000);
    ferry_envelope_set_attempt (req, 2);
    ferry_envelope_set_header (req, "Accept", "text/plain");
    ferry_envelope_set_header (req, "accept", "application/json");
    ferry_envelope_set_header (req, "x-gone", "soon");
    ferry_envelope_set_header (req, "X-Gone", NULL);
    ferry_envelope_set_header (req, "x-b", "2");
    FERRY_CHECK (ferry_envelope_header_count (req) == 2);

    msgpack_sbuffer args;
    msgpack_sbuffer_init (&args);
    s_test_args (&args, true);
    FERRY_CHECK (ferry_envelope_set_args_raw (req, args.data, args.size, err,
                                              sizeof err) == -1);
    FERRY_CHECK (strstr (err, "expected map"));
    msgpack_sbuffer_clear (&args);
    s_test_args (&args, false);
    FERRY_CHECK (ferry_envelope_set_args_raw (req, args.data, args.size - 1,
                                              err, sizeof err) == -1);
    FERRY_CHECK (ferry_envelope_set_args_raw (req, args.data, args.size, err,
                                              sizeof err) == 0);
    FERRY_CHECK (ferry_envelope_set_body_raw (req, args.data, args.size, err,
                                              sizeof err) == 0);
    msgpack_sbuffer_destroy (&args);

    FERRY_CHECK (ferry_envelope_encode (req, &sb) == 0);
    ferry_envelope_t *copy = ferry_envelope_decode (sb.data, sb.size, NULL,
                                                    err, sizeof err);
    if (!copy)
        fprintf (stderr, "# %s\n", err);
    FERRY_CHECK (copy);
    FERRY_CHECK (ferry_envelope_kind (copy) == FERRY_KIND_REQUEST);
    FERRY_CHECK (ferry_envelope_version (copy) == 1);
    FERRY_CHECK (s_eq (ferry_envelope_id (copy), "m-1"));
    FERRY_CHECK (s_eq (ferry_envelope_cid (copy), "req-42"));
    FERRY_CHECK (ferry_envelope_re (copy) == NULL);
    FERRY_CHECK (s_eq (ferry_envelope_service (copy), "app"));
    FERRY_CHECK (s_eq (ferry_envelope_operation (copy), "get_user"));
    FERRY_CHECK (s_eq (ferry_envelope_principal (copy), "user:ada"));
    FERRY_CHECK (s_eq (ferry_envelope_idempotency_key (copy), "idem-1"));
    FERRY_CHECK (s_eq (ferry_envelope_job (copy),
                       "0190f3c2-7d4e-4a1b-9c2d-3e4f5a6b7c8d"));
    FERRY_CHECK (strncmp (ferry_envelope_traceparent (copy), "00-4bf9", 7)
                 == 0);
    FERRY_CHECK (s_eq (ferry_envelope_reply_to (copy), "ferry.replies"));
    FERRY_CHECK (ferry_envelope_deadline (copy) == 1700000005000);
    FERRY_CHECK (ferry_envelope_created (copy) == 1700000000000);
    FERRY_CHECK (ferry_envelope_attempt (copy) == 2);
    FERRY_CHECK (ferry_envelope_status (copy) == 0);
    FERRY_CHECK (ferry_envelope_header_count (copy) == 2);
    FERRY_CHECK (s_eq (ferry_envelope_header (copy, "ACCEPT"),
                         "application/json"));
    FERRY_CHECK (ferry_envelope_header (copy, "x-gone") == NULL);
    const char *name, *value;
    FERRY_CHECK (ferry_envelope_header_at (copy, 1, &name, &value) == 0);
    FERRY_CHECK (s_eq (name, "x-b") && s_eq (value, "2"));
    FERRY_CHECK (ferry_envelope_header_at (copy, 2, &name, &value) == -1);
    const msgpack_object *id = ferry_envelope_arg (copy, "id");
    FERRY_CHECK (id && id->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                 && id->via.u64 == 42);
    FERRY_CHECK (ferry_envelope_arg (copy, "nope") == NULL);
    FERRY_CHECK (s_test_json_is (ferry_envelope_args (copy),
                                 "{\"id\":42,\"name\":\"x\"}"));
    FERRY_CHECK (s_test_json_is (ferry_envelope_body (copy),
                                 "{\"id\":42,\"name\":\"x\"}"));

    /*  Re-encoding a decoded envelope gives the same bytes: same field
        order, objects re-packed from msgpack-c's.  */
    msgpack_sbuffer again;
    msgpack_sbuffer_init (&again);
    FERRY_CHECK (ferry_envelope_encode (copy, &again) == 0);
    FERRY_CHECK (again.size == sb.size
                 && memcmp (again.data, sb.data, sb.size) == 0);
    msgpack_sbuffer_destroy (&again);

    /*  Replacing args and body of a decoded envelope leaves the old
        objects' memory with the frame, and the new ones valid.  */
    msgpack_sbuffer_init (&args);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &args, msgpack_sbuffer_write);
    msgpack_pack_nil (&pk);
    FERRY_CHECK (ferry_envelope_set_body_raw (copy, args.data, args.size, err,
                                              sizeof err) == 0);
    msgpack_sbuffer_destroy (&args);
    FERRY_CHECK (ferry_envelope_body (copy)->type == MSGPACK_OBJECT_NIL);

    ferry_envelope_destroy (&copy);
    ferry_envelope_destroy (&copy);
    FERRY_CHECK (copy == NULL);
    FERRY_CHECK (s_test_zone () == 0);
    ferry_envelope_destroy (&req);
    msgpack_sbuffer_destroy (&sb);
    if (verbose)
        printf ("# envelope: round trip of every field\n");
    return 0;
}

/*  A byte string of every msgpack type family, to truncate at every
    length.  */
static void
s_test_all_types (msgpack_sbuffer *sb)
{
    msgpack_packer pk;
    msgpack_packer_init (&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_array (&pk, 20);
    msgpack_pack_nil (&pk);
    msgpack_pack_true (&pk);
    msgpack_pack_int64 (&pk, -1);
    msgpack_pack_int64 (&pk, -200);
    msgpack_pack_int64 (&pk, -40000);
    msgpack_pack_int64 (&pk, -3000000000LL);
    msgpack_pack_uint64 (&pk, 200);
    msgpack_pack_uint64 (&pk, 40000);
    msgpack_pack_uint64 (&pk, 3000000000ULL);
    msgpack_pack_uint64 (&pk, UINT64_MAX);
    msgpack_pack_float (&pk, 1.5f);
    msgpack_pack_double (&pk, 2.5);
    s_pack_str (&pk, "a string longer than thirty-one bytes");
    msgpack_pack_bin (&pk, 3);
    msgpack_pack_bin_body (&pk, "\x00\x01\x02", 3);
    msgpack_pack_ext (&pk, 1, 5);
    msgpack_pack_ext_body (&pk, "\x01", 1);
    msgpack_pack_ext (&pk, 4, 7);
    msgpack_pack_ext_body (&pk, "\x01\x02\x03\x04", 4);
    msgpack_pack_ext (&pk, 3, 9);
    msgpack_pack_ext_body (&pk, "abc", 3);
    msgpack_pack_map (&pk, 1);
    s_pack_str (&pk, "k");
    msgpack_pack_array (&pk, 0);
    msgpack_pack_map (&pk, 0);
    msgpack_pack_array (&pk, 17); /* array16 */
    for (int i = 0; i < 17; i++)
        msgpack_pack_int (&pk, i);
}

int
ferry_envelope_check_test (bool verbose)
{
    char err[160];
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    s_test_all_types (&sb);
    FERRY_CHECK (ferry_msgpack_check (sb.data, sb.size, NULL, err, sizeof err)
                 == 0);
    /*  Every proper prefix is truncated and must be refused; a copy of
        exactly that size lets ASan see any read past it.  */
    for (size_t n = 0; n < sb.size; n++) {
        char *part = ferry_malloc (n);
        memcpy (part, sb.data, n);
        FERRY_CHECK (ferry_msgpack_check (part, n, NULL, err, sizeof err)
                     == -1);
        free (part);
    }
    msgpack_sbuffer_destroy (&sb);

    /*  9 bytes declaring a map of 4 billion entries fail on the header,
        and decode never hands them to msgpack-c.  */
    const char huge[] = "\xdf\xff\xff\xff\xff\xa1v\x01\xa4";
    FERRY_CHECK (ferry_msgpack_check (huge, 9, NULL, err, sizeof err) == -1);
    FERRY_CHECK (strstr (err, "4294967295 entries exceeds"));
    FERRY_CHECK (!ferry_envelope_decode (huge, 9, NULL, err, sizeof err));
    ferry_limits_t wide = ferry_limits_default;
    wide.max_count = SIZE_MAX;
    FERRY_CHECK (ferry_msgpack_check (huge, 9, &wide, err, sizeof err) == -1);
    FERRY_CHECK (strstr (err, "runs past the end of input"));

    /*  Each limit on its own.  */
    ferry_limits_t lim = ferry_limits_default;
    const char arr3[] = "\x93\x01\x02\x03";
    lim.max_count = 2;
    FERRY_CHECK (ferry_msgpack_check (arr3, 4, &lim, err, sizeof err) == -1);
    lim = ferry_limits_default;
    lim.max_total = 3;
    FERRY_CHECK (ferry_msgpack_check (arr3, 4, &lim, err, sizeof err) == -1);
    FERRY_CHECK (strstr (err, "more than 3 objects"));
    lim.max_total = 4;
    FERRY_CHECK (ferry_msgpack_check (arr3, 4, &lim, err, sizeof err) == 0);
    lim = ferry_limits_default;
    lim.max_frame = 3;
    FERRY_CHECK (ferry_msgpack_check (arr3, 4, &lim, err, sizeof err) == -1);
    FERRY_CHECK (strstr (err, "exceeds the limit of 3"));
    lim = ferry_limits_default;
    lim.max_string = 2;
    FERRY_CHECK (ferry_msgpack_check ("\xa3" "abc", 4, &lim, err, sizeof err)
                 == -1);
    FERRY_CHECK (ferry_msgpack_check ("\xa2" "ab", 3, &lim, err, sizeof err)
                 == 0);
    lim = ferry_limits_default;
    lim.max_depth = 2;
    FERRY_CHECK (ferry_msgpack_check ("\x91\x91\x01", 3, &lim, err,
                                      sizeof err) == 0);
    FERRY_CHECK (ferry_msgpack_check ("\x91\x91\x90", 3, &lim, err,
                                      sizeof err) == -1);
    FERRY_CHECK (strstr (err, "nesting deeper than 2"));

    /*  A depth limit above msgpack-c's fixed stack is held at 32.  */
    char deep[40];
    memset (deep, 0x91, 33);
    deep[33] = 0x01;
    lim.max_depth = 100;
    FERRY_CHECK (ferry_msgpack_check (deep, 34, &lim, err, sizeof err) == -1);
    FERRY_CHECK (ferry_msgpack_check (deep + 1, 33, &lim, err, sizeof err)
                 == 0);
    FERRY_CHECK (ferry_msgpack_check ("\xc0\xc0", 2, NULL, err, sizeof err)
                 == -1);
    FERRY_CHECK (strstr (err, "trailing bytes"));
    /*  err may be NULL.  */
    FERRY_CHECK (ferry_msgpack_check ("", 0, NULL, NULL, 0) == -1);
    if (verbose)
        printf ("# envelope_check: limits and truncation\n");
    return 0;
}

int
ferry_envelope_problem_test (bool verbose)
{
    char err[160];
    FERRY_CHECK (s_eq (ferry_status_title (404), "Not Found"));
    FERRY_CHECK (s_eq (ferry_status_title (503), "Service Unavailable"));
    FERRY_CHECK (s_eq (ferry_status_title (299), "Unknown"));

    ferry_envelope_t *req = ferry_envelope_new (FERRY_KIND_REQUEST);
    ferry_envelope_set_id (req, "m-1");
    ferry_envelope_set_cid (req, "req-42");
    ferry_envelope_set_traceparent (
        req, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    ferry_envelope_t *rep = ferry_envelope_new_reply (req, 200);
    FERRY_CHECK (ferry_envelope_kind (rep) == FERRY_KIND_REPLY);
    FERRY_CHECK (strlen (ferry_envelope_id (rep)) == FERRY_ID_LEN);
    FERRY_CHECK (s_eq (ferry_envelope_re (rep), "m-1"));
    FERRY_CHECK (s_eq (ferry_envelope_cid (rep), "req-42"));
    FERRY_CHECK (s_eq (ferry_envelope_traceparent (rep),
                         ferry_envelope_traceparent (req)));
    FERRY_CHECK (ferry_envelope_status (rep) == 200);
    FERRY_CHECK (ferry_envelope_created (rep) > 0);

    ferry_envelope_set_problem (rep, 409, NULL, "email taken", "23505");
    FERRY_CHECK (ferry_envelope_status (rep) == 409);
    FERRY_CHECK (s_eq (ferry_envelope_header (rep, "content-type"),
                         "application/problem+json"));
    FERRY_CHECK (s_test_json_is (
        ferry_envelope_body (rep),
        "{\"type\":\"about:blank\",\"title\":\"Conflict\",\"status\":409,"
        "\"detail\":\"email taken\",\"sqlstate\":\"23505\"}"));
    ferry_envelope_set_problem (rep, 422, "Bad Input", NULL, NULL);
    FERRY_CHECK (ferry_envelope_header_count (rep) == 1);
    FERRY_CHECK (s_test_json_is (ferry_envelope_body (rep),
                                 "{\"type\":\"about:blank\",\"title\":"
                                 "\"Bad Input\",\"status\":422}"));
    ferry_envelope_set_status (rep, 600);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    FERRY_CHECK (ferry_envelope_encode (rep, &sb) == -1);
    ferry_envelope_destroy (&rep);
    ferry_envelope_destroy (&req);

    FERRY_CHECK (ferry_problem_reply_encode ("m-7", 503, "queue full", 2, &sb)
                 == 0);
    rep = ferry_envelope_decode (sb.data, sb.size, NULL, err, sizeof err);
    FERRY_CHECK (rep);
    FERRY_CHECK (ferry_envelope_kind (rep) == FERRY_KIND_REPLY);
    FERRY_CHECK (s_eq (ferry_envelope_re (rep), "m-7"));
    FERRY_CHECK (ferry_envelope_status (rep) == 503);
    FERRY_CHECK (s_eq (ferry_envelope_header (rep, "retry-after"), "2"));
    FERRY_CHECK (s_test_json_is (
        ferry_envelope_body (rep),
        "{\"type\":\"about:blank\",\"title\":\"Service Unavailable\","
        "\"status\":503,\"detail\":\"queue full\"}"));
    ferry_envelope_destroy (&rep);
    msgpack_sbuffer_clear (&sb);
    FERRY_CHECK (ferry_problem_reply_encode ("m-8", 504, NULL, 0, &sb) == 0);
    rep = ferry_envelope_decode (sb.data, sb.size, NULL, err, sizeof err);
    FERRY_CHECK (rep && ferry_envelope_header (rep, "retry-after") == NULL);
    ferry_envelope_destroy (&rep);
    /*  A message id the decoder would refuse is refused here too.  */
    FERRY_CHECK (ferry_problem_reply_encode ("", 503, NULL, 0, &sb) == -1);
    msgpack_sbuffer_destroy (&sb);
    if (verbose)
        printf ("# envelope_problem: replies and problem details\n");
    return 0;
}

/*  The vector file: $FERRY_SRCDIR/schemas/..., else the first
    schemas/vectors/envelope-v1.json found walking up from the current
    directory (a build directory inside the source tree).  */
static json_t *
s_test_load_vectors (void)
{
    const char *rel = "schemas/vectors/envelope-v1.json";
    char path[4096];
    json_error_t error;
    const char *srcdir = getenv ("FERRY_SRCDIR");
    if (srcdir) {
        snprintf (path, sizeof path, "%s/%s", srcdir, rel);
        return json_load_file (path, JSON_REJECT_DUPLICATES, &error);
    }
    char prefix[64] = "";
    for (int up = 0; up < 6; up++) {
        snprintf (path, sizeof path, "%s%s", prefix, rel);
        if (access (path, R_OK) == 0)
            return json_load_file (path, JSON_REJECT_DUPLICATES, &error);
        strcat (prefix, "../");
    }
    return NULL;
}

static size_t
s_test_unhex (const char *hex, char *out)
{
    size_t n = strlen (hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned byte;
        sscanf (hex + 2 * i, "%2x", &byte);
        out[i] = (char) byte;
    }
    return n;
}

/*  True when every field of self is what expect says, and absent when
    expect does not name it.  */
static bool
s_test_matches (const ferry_envelope_t *self, json_t *expect)
{
    if (json_object_size (expect) == 0)
        return false;
    const char *key;
    json_t *want;
    json_object_foreach (expect, key, want) {
        size_t f;
        for (f = 0; f < F_COUNT; f++)
            if (s_eq (key, s_fields[f].key))
                break;
        if (f == F_COUNT) {
            fprintf (stderr, "# unknown field '%s' in expect\n", key);
            return false;
        }
    }
    for (size_t f = 0; f < F_COUNT; f++) {
        want = json_object_get (expect, s_fields[f].key);
        bool ok;
        const msgpack_object *o = f == F_ARGS ? ferry_envelope_args (self)
                                              : ferry_envelope_body (self);
        switch (s_fields[f].type) {
        case T_UINT:
            if (f == F_V)
                ok = want && self->version == json_integer_value (want);
            else
                ok = want ? self->has[f]
                                && self->num[f]
                                       == (uint64_t) json_integer_value (want)
                          : !self->has[f];
            break;
        case T_KIND:
            ok = want && s_eq (json_string_value (want),
                                 s_kind_names[self->kind]);
            break;
        case T_HDRS:
            ok = self->hdr_count == json_object_size (want);
            for (size_t i = 0; i < self->hdr_count && ok; i++)
                ok = s_eq (json_string_value (json_object_get (
                                 want, self->hdrs[i].name)),
                             self->hdrs[i].value);
            break;
        case T_MAP:
        case T_ANY:
            if (want && o) {
                char *text = ferry_msgpack_to_json (o, NULL);
                json_t *got = text ? json_loads (text, JSON_DECODE_ANY, NULL)
                                   : NULL;
                ok = got && json_equal (got, want);
                json_decref (got);
                free (text);
            }
            else
                ok = !want && !o;
            break;
        default:
            ok = want ? self->str[f]
                            && s_eq (json_string_value (want), self->str[f])
                      : !self->str[f];
        }
        if (!ok) {
            fprintf (stderr, "# field '%s' differs\n", s_fields[f].key);
            return false;
        }
    }
    return true;
}

int
ferry_envelope_vectors_test (bool verbose)
{
    json_t *vectors = s_test_load_vectors ();
    FERRY_CHECK (json_is_array (vectors));
    size_t i, valid = 0, invalid = 0;
    json_t *vector;
    char err[160];
    json_array_foreach (vectors, i, vector) {
        const char *name = json_string_value (json_object_get (vector, "name"));
        const char *hex = json_string_value (json_object_get (vector, "hex"));
        FERRY_CHECK (name && hex);
        char *bytes = ferry_malloc (strlen (hex) / 2);
        size_t size = s_test_unhex (hex, bytes);
        strcpy (err, "");
        ferry_envelope_t *self = ferry_envelope_decode (bytes, size, NULL, err,
                                                        sizeof err);
        free (bytes);
        if (json_is_true (json_object_get (vector, "valid"))) {
            json_t *expect = json_object_get (vector, "expect");
            if (!self || !s_test_matches (self, expect)) {
                fprintf (stderr, "# vector '%s': %s\n", name, err);
                FERRY_CHECK (false);
            }
            msgpack_sbuffer sb;
            msgpack_sbuffer_init (&sb);
            FERRY_CHECK (ferry_envelope_encode (self, &sb) == 0);
            ferry_envelope_t *again = ferry_envelope_decode (
                sb.data, sb.size, NULL, err, sizeof err);
            msgpack_sbuffer_destroy (&sb);
            if (!again || !s_test_matches (again, expect)) {
                fprintf (stderr, "# vector '%s' re-encoded: %s\n", name, err);
                FERRY_CHECK (false);
            }
            ferry_envelope_destroy (&again);
            valid++;
        }
        else {
            const char *want = json_string_value (json_object_get (vector,
                                                                   "error"));
            if (self || !want || !strstr (err, want)) {
                fprintf (stderr, "# vector '%s': got '%s', want '%s'\n", name,
                         self ? "(decoded)" : err, want ? want : "");
                FERRY_CHECK (false);
            }
            invalid++;
        }
        ferry_envelope_destroy (&self);
    }
    json_decref (vectors);
    FERRY_CHECK (valid >= 12 && invalid >= 20);
    if (verbose)
        printf ("# envelope_vectors: %zu valid, %zu invalid\n", valid,
                invalid);
    return 0;
}

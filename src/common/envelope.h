/*  envelope.h: the ferry envelope v1, one msgpack map per message
    (schemas/envelope-v1.md is the specification).

    The codec decodes untrusted bytes strictly: every size, depth and count
    is bounded by ferry_limits_t and checked against the bytes that remain
    before msgpack-c is allowed to allocate anything; wrong types, missing
    required fields, duplicate keys, trailing bytes and newer major versions
    are refused with a reason.  An envelope owns all its memory: strings
    returned by getters and msgpack objects returned by ferry_envelope_args
    and ferry_envelope_body are borrowed and live as long as the envelope.  */

#ifndef FERRY_ENVELOPE_H_INCLUDED
#define FERRY_ENVELOPE_H_INCLUDED

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FERRY_ENVELOPE_VERSION 1

typedef enum {
    FERRY_KIND_REQUEST = 1,
    FERRY_KIND_REPLY = 2,
    FERRY_KIND_EVENT = 3
} ferry_kind_t;

typedef struct {
    size_t max_frame;  /* whole encoded message, bytes */
    size_t max_depth;  /* nesting of arrays and maps; the top map is 1 */
    size_t max_string; /* any one str, bin or ext, bytes */
    size_t max_count;  /* entries of any one array or map */
    size_t max_total;  /* objects in the whole message */
} ferry_limits_t;

/*  17 MiB frame (FERRY_MAX_MESSAGE_DEFAULT: the largest edge body, 16 MiB,
    plus the envelope's own fields), depth 32, 16 MiB strings, 65,536
    entries, 262,144 objects.  max_depth cannot exceed 32, the fixed stack
    of msgpack-c's unpacker.  */
extern const ferry_limits_t ferry_limits_default;

typedef struct _ferry_envelope_t ferry_envelope_t;

/*  A new, empty envelope of the given kind, version 1, no fields set.  */
ferry_envelope_t *ferry_envelope_new (ferry_kind_t kind);
void ferry_envelope_destroy (ferry_envelope_t **self_p);

/*  Decodes one envelope from untrusted bytes.  Returns a new envelope the
    caller owns, or NULL with a one-line reason in err (always NUL-ended).
    limits may be NULL for ferry_limits_default.  */
ferry_envelope_t *ferry_envelope_decode (const void *data, size_t size,
                                         const ferry_limits_t *limits,
                                         char *err, size_t errlen);

/*  Appends the encoded envelope to out (caller's buffer).  Returns 0, or -1
    when a required field for the kind is missing or a field holds what the
    decoder would refuse (a bad service name, a status out of range).  */
int ferry_envelope_encode (const ferry_envelope_t *self,
                           msgpack_sbuffer *out);

/*  Checks that data holds exactly one msgpack value within limits (depth,
    counts against remaining bytes, string sizes, nothing trailing) without
    allocating.  Returns 0, or -1 with a reason in err.  */
int ferry_msgpack_check (const void *data, size_t size,
                         const ferry_limits_t *limits, char *err,
                         size_t errlen);

/* ---- fields --------------------------------------------------------------
    String setters copy their argument; NULL clears the field.  The memory
    of a replaced value is released with the envelope, so a value a getter
    returned stays valid until then.  Getters
    return NULL (strings) or 0 (numbers) when a field is absent.  Setters
    do not check values; ferry_envelope_encode does.  */
ferry_kind_t ferry_envelope_kind (const ferry_envelope_t *self);
unsigned ferry_envelope_version (const ferry_envelope_t *self);

const char *ferry_envelope_id (const ferry_envelope_t *self);
void ferry_envelope_set_id (ferry_envelope_t *self, const char *id);
/*  Correlation id: the request's X-Request-Id, echoed in the reply.  */
const char *ferry_envelope_cid (const ferry_envelope_t *self);
void ferry_envelope_set_cid (ferry_envelope_t *self, const char *cid);
/*  In a reply: the message id of the request it answers.  */
const char *ferry_envelope_re (const ferry_envelope_t *self);
void ferry_envelope_set_re (ferry_envelope_t *self, const char *re);
const char *ferry_envelope_service (const ferry_envelope_t *self);
void ferry_envelope_set_service (ferry_envelope_t *self, const char *service);
const char *ferry_envelope_operation (const ferry_envelope_t *self);
void ferry_envelope_set_operation (ferry_envelope_t *self, const char *op);
const char *ferry_envelope_principal (const ferry_envelope_t *self);
void ferry_envelope_set_principal (ferry_envelope_t *self, const char *p);
const char *ferry_envelope_idempotency_key (const ferry_envelope_t *self);
void ferry_envelope_set_idempotency_key (ferry_envelope_t *self,
                                         const char *key);
const char *ferry_envelope_traceparent (const ferry_envelope_t *self);
void ferry_envelope_set_traceparent (ferry_envelope_t *self, const char *tp);
/*  Where the reply goes when the transport needs it (a Kafka reply topic);
    absent for ZeroMQ, where the broker routes the reply.  */
const char *ferry_envelope_reply_to (const ferry_envelope_t *self);
void ferry_envelope_set_reply_to (ferry_envelope_t *self, const char *to);
/*  The asynchronous job this request is (or may become), a UUID string:
    the worker records the request's outcome in ferry.jobs under it.  */
const char *ferry_envelope_job (const ferry_envelope_t *self);
void ferry_envelope_set_job (ferry_envelope_t *self, const char *id);

/*  Absolute deadline, ms since the Unix epoch.  */
uint64_t ferry_envelope_deadline (const ferry_envelope_t *self);
void ferry_envelope_set_deadline (ferry_envelope_t *self, uint64_t ms);
/*  Creation time, ms since the Unix epoch.  */
uint64_t ferry_envelope_created (const ferry_envelope_t *self);
void ferry_envelope_set_created (ferry_envelope_t *self, uint64_t ms);
/*  Delivery attempt, 1 for the first.  */
unsigned ferry_envelope_attempt (const ferry_envelope_t *self);
void ferry_envelope_set_attempt (ferry_envelope_t *self, unsigned attempt);
/*  Reply status, an HTTP status code (100..599).  */
unsigned ferry_envelope_status (const ferry_envelope_t *self);
void ferry_envelope_set_status (ferry_envelope_t *self, unsigned status);

/*  Arguments: a msgpack map of path and query parameters, string keys.
    set_args_raw and set_body_raw check and copy the bytes (one msgpack
    value within ferry_limits_default, one level shallower since it sits in
    the envelope's map; args must be a map with unique string keys) and
    return 0, or -1 with a reason in err.  */
int ferry_envelope_set_args_raw (ferry_envelope_t *self, const void *data,
                                 size_t size, char *err, size_t errlen);
const msgpack_object *ferry_envelope_args (const ferry_envelope_t *self);
/*  One argument by name, or NULL.  */
const msgpack_object *ferry_envelope_arg (const ferry_envelope_t *self,
                                          const char *name);
int ferry_envelope_set_body_raw (ferry_envelope_t *self, const void *data,
                                 size_t size, char *err, size_t errlen);
/*  The body, or NULL when there is none.  */
const msgpack_object *ferry_envelope_body (const ferry_envelope_t *self);

/*  Headers: lowercase names, string values (map str -> str).  Setting a
    header that exists replaces its value, a NULL value removes it; names
    are stored lowercase and looked up without regard to case.  */
void ferry_envelope_set_header (ferry_envelope_t *self, const char *name,
                                const char *value);
const char *ferry_envelope_header (const ferry_envelope_t *self,
                                   const char *name);
size_t ferry_envelope_header_count (const ferry_envelope_t *self);
/*  The i-th header; returns -1 when i is out of range.  */
int ferry_envelope_header_at (const ferry_envelope_t *self, size_t i,
                              const char **name, const char **value);

/* ---- replies and problems ------------------------------------------------ */
/*  A new reply to request: kind reply, a fresh id, re = request's id,
    cid and traceparent copied, the given status.  */
ferry_envelope_t *ferry_envelope_new_reply (const ferry_envelope_t *request,
                                            unsigned status);
/*  Makes self an RFC 9457 problem: sets status, the content-type header
    application/problem+json, and a body map {type, title, status, detail}
    plus "sqlstate" when given.  title defaults to ferry_status_title.
    detail and sqlstate may be NULL.  */
void ferry_envelope_set_problem (ferry_envelope_t *self, unsigned status,
                                 const char *title, const char *detail,
                                 const char *sqlstate);
/*  Encodes a problem reply to message re_id into out, for a peer that
    never decoded the request (the broker's 503 and 504).  retry_after
    (seconds) adds a retry-after header when non-zero.  Returns 0 or -1.  */
int ferry_problem_reply_encode (const char *re_id, unsigned status,
                                const char *detail, unsigned retry_after,
                                msgpack_sbuffer *out);
/*  The reason phrase for an HTTP status ("Not Found"), "Unknown" if none.  */
const char *ferry_status_title (unsigned status);

#endif

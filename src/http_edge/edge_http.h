/*  edge_http.h: the HTTP-facing rules of ferry-edge that do not need a
    socket: header limits, content-type and Accept negotiation, request
    bodies to msgpack, the request envelope, and responses (a worker's reply
    or the edge's own RFC 9457 problem) as status, body and headers.

    edge_loop.c glues these to libmicrohttpd and ZeroMQ; keeping them apart
    lets the unit tests check every rule without a server.  Everything here
    is reentrant: each loop calls it from its own thread.  */

#ifndef EDGE_HTTP_H_INCLUDED
#define EDGE_HTTP_H_INCLUDED

#include "ferry.h"
#include "envelope.h"

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- request head limits ------------------------------------------------- */
typedef struct {
    size_t max_line;  /* one field: name, ": " and value */
    size_t max_total; /* request line and every field */
    size_t max_count; /* fields */
    size_t count;     /* fields seen so far */
    size_t total;     /* bytes seen so far */
} edge_head_t;

/*  Starts counting a request head whose request line is line_len bytes.  */
void edge_head_init (edge_head_t *self, size_t max_line, size_t max_total,
                     size_t max_count, size_t line_len);
/*  Counts one header field.  Returns 0, or 431 with the limit that was
    passed in err.  */
int edge_head_add (edge_head_t *self, size_t name_len, size_t value_len,
                   char *err, size_t errlen);

/* ---- negotiation --------------------------------------------------------- */
typedef enum {
    EDGE_CT_NONE = 0,    /* no Content-Type */
    EDGE_CT_JSON = 1,    /* application/json, parameters allowed */
    EDGE_CT_MSGPACK = 2, /* application/msgpack or application/x-msgpack */
    EDGE_CT_OTHER = 3
} edge_ct_t;

edge_ct_t edge_content_type (const char *value);
/*  True when the Accept header asks for msgpack at least as much as for
    JSON: application/msgpack must be named (a wildcard never selects it).
    NULL or an empty header means JSON.  */
bool edge_accept_msgpack (const char *accept);

/*  Converts a request body to one msgpack value appended to out.  An empty
    body appends nothing and returns 0.  Returns 0, 400 (invalid JSON or
    msgpack; reason in err) or 415 (another media type).  */
int edge_body_to_msgpack (edge_ct_t type, const char *body, size_t len,
                          size_t max_body, msgpack_sbuffer *out, char *err,
                          size_t errlen);

/* ---- Prefer (RFC 7240) and Idempotency-Key ------------------------------- */
typedef struct {
    bool respond_async; /* Prefer: respond-async */
    int64_t wait_s;     /* Prefer: wait=N, -1 when absent */
} edge_prefer_t;

void edge_prefer_init (edge_prefer_t *self);
/*  Adds the preferences of one Prefer field value: comma-separated
    preferences, each "token [= word] *(; parameter)", names without case.
    Unknown preferences and malformed ones are ignored; of a preference
    given twice (in one field or in several) the first counts.  */
void edge_prefer_parse (edge_prefer_t *self, const char *value);

/*  Longest Idempotency-Key, after unquoting.  */
#define EDGE_IDEM_MAX 255
/*  Reads an Idempotency-Key value: an RFC 8941 sf-string ("...", with \"
    and \\ escapes) or a bare token, 1 to EDGE_IDEM_MAX visible ASCII
    characters once unquoted.  Writes the key into out (EDGE_IDEM_MAX + 1
    bytes).  Returns 0, or 400 with the reason in err.  */
int edge_idempotency_key (const char *value, char *out, char *err,
                          size_t errlen);

/* ---- jobs ---------------------------------------------------------------- */
#define EDGE_JOB_ID_LEN 36
/*  Writes a new job id into out: 128 random bits formatted as a UUID with
    the version 4 and variant bits set, lowercase.  */
void edge_job_id_generate (char out[EDGE_JOB_ID_LEN + 1]);
/*  True when s is a UUID (8-4-4-4-12 hex digits, any case).  */
bool edge_job_id_valid (const char *s);

/*  Compact JSON text of a msgpack value in a new buffer (free()), as the
    edge writes reply bodies; NULL when the value has no JSON form.  */
char *edge_json_text (const msgpack_object *obj, size_t *len);

/* ---- the request envelope ------------------------------------------------ */
typedef struct {
    const char *msg_id;          /* ferry_id_generate */
    const char *request_id;      /* X-Request-Id, becomes the cid */
    const char *traceparent;     /* already continued or started */
    const char *idempotency_key; /* NULL when absent */
    const char *job;             /* job id, NULL when none */
    const char *service;
    const char *operation;
    const void *args; /* msgpack map */
    size_t args_len;
    const void *body; /* one msgpack value; NULL for no body */
    size_t body_len;
    uint64_t created_ms;  /* wall clock */
    uint64_t deadline_ms; /* wall clock */
    const char *reply_to; /* Kafka reply topic; NULL over ZeroMQ */
} edge_request_info_t;

/*  Encodes a request envelope into out.  Returns 0, or -1 with a reason.  */
int edge_request_encode (const edge_request_info_t *info,
                         msgpack_sbuffer *out, char *err, size_t errlen);

/* ---- responses ----------------------------------------------------------- */
typedef struct {
    unsigned status;
    char *body;               /* owned, free(); NULL for no body */
    size_t len;
    const char *content_type; /* static string, NULL with no body */
    char retry_after[16];     /* "" when none */
    char allow[64];           /* "" when none */
    char traceresponse[FERRY_TRACEPARENT_LEN + 1]; /* "" when none */
    char location[48];             /* "/jobs/{id}" or "" */
    char preference_applied[48];   /* "respond-async", "wait=5" or "" */
    bool replayed;                 /* Idempotent-Replayed: true */
} edge_output_t;

/*  Frees the body and empties out.  */
void edge_output_clear (edge_output_t *out);
/*  Fills out with an application/problem+json body {type, title, status,
    detail, request_id}.  detail may be NULL.  */
void edge_output_problem (edge_output_t *out, unsigned status,
                          const char *detail, const char *request_id);
/*  Fills out from a worker's (or the broker's) reply: its status, its body
    as JSON or, when want_msgpack, as msgpack, its retry-after header and
    its traceparent as traceresponse.  A problem reply becomes
    application/problem+json with request_id added when missing.  Returns 0,
    or -1 when the reply cannot be shown (out then holds a 502 problem).  */
int edge_output_reply (edge_output_t *out, const ferry_envelope_t *reply,
                       const char *request_id, bool want_msgpack);

int edge_http_head_test (bool verbose);
int edge_http_negotiation_test (bool verbose);
int edge_http_problem_test (bool verbose);
int edge_http_body_test (bool verbose);
int edge_http_envelope_test (bool verbose);
int edge_http_json_test (bool verbose);
int edge_http_prefer_test (bool verbose);
int edge_http_idempotency_test (bool verbose);
int edge_http_job_id_test (bool verbose);

#endif

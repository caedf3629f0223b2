/*  worker_dead.c: the fields of the broker's REQ and DEAD messages that
    need more than a copy, and the worker process's name.

    The broker marks each delivery of a message with its attempt (1, then
    +1 after every worker death it was in flight for); the actor puts it
    into the envelope's `att`, which handlers, logs and dead letters see.
    A message that killed broker.max_deaths workers comes back once more
    as DEAD msg_id info payload: the actor that gets it writes the row
    built here into ferry.dead_letters, so an operator finds the envelope
    and what the broker knows of the deaths next to the Kafka consumer's
    dead letters.  Pure functions; the actor (worker_actor.c) owns the
    sockets and the connection.  */

#include "worker_dead.h"

#include "envelope.h"
#include "ferry.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char worker_dead_insert_sql[]
    = "INSERT INTO ferry.dead_letters (message_id, correlation_id, service,"
      " operation, source, envelope, error, attempts)"
      " VALUES ($1, $2, $3, $4, 'zmq', $5::bytea, $6::jsonb, $7::int)";

/*  A frame's text as a number; the frames are short or refused.  */
static int
s_frame_uint64 (const void *data, size_t len, uint64_t *out)
{
    char text[24];
    if (len == 0 || len >= sizeof text)
        return -1;
    memcpy (text, data, len);
    text[len] = '\0';
    return ferry_parse_uint64 (text, out);
}

int
worker_req_fields (const void *deadline, size_t deadline_len,
                   const void *attempt, size_t attempt_len,
                   uint64_t *deadline_out, unsigned *attempt_out)
{
    uint64_t att = 1;
    if (s_frame_uint64 (deadline, deadline_len, deadline_out))
        return -1;
    if (attempt
        && (s_frame_uint64 (attempt, attempt_len, &att) || att == 0
            || att > 1000000))
        return -1;
    *attempt_out = (unsigned) att;
    return 0;
}

int
worker_dead_row_build (worker_dead_row_t *row, const char *msg_id,
                       const void *info, size_t info_len,
                       const void *payload, size_t payload_len,
                       const char *dflt_service)
{
    memset (row, 0, sizeof *row);
    if (!msg_id || !*msg_id)
        return -1;
    row->message_id = ferry_strdup (msg_id);
    int64_t attempts = 0;
    const char *service = NULL;
    json_error_t jerr;
    json_t *obj = json_loadb (info, info_len, JSON_REJECT_DUPLICATES, &jerr);
    if (obj && json_is_object (obj)) {
        json_t *a = json_object_get (obj, "attempts");
        if (json_is_integer (a) && json_integer_value (a) >= 0
            && json_integer_value (a) <= INT32_MAX)
            attempts = json_integer_value (a);
        json_t *s = json_object_get (obj, "service");
        if (json_is_string (s) && json_string_length (s) > 0)
            service = json_string_value (s);
        /*  Re-dumped so what reaches jsonb is JSON that jansson read.  */
        row->error = json_dumps (obj, JSON_COMPACT);
    }
    else {
        /*  Keep what the broker said even if it is not JSON: a dead
            letter without its reason is worse than one with a quoted
            reason.  */
        json_t *wrap = json_pack ("{s:s, s:s%}", "reason", "unknown", "info",
                                  (const char *) info, info_len);
        row->error = wrap ? json_dumps (wrap, JSON_COMPACT) : NULL;
        json_decref (wrap);
    }
    if (!row->error)
        row->error = ferry_strdup ("{\"reason\":\"unknown\"}");
    row->service = ferry_strdup (service ? service
                                         : dflt_service ? dflt_service : "");
    json_decref (obj);
    snprintf (row->attempts, sizeof row->attempts, "%lld",
              (long long) attempts);

    char err[128];
    ferry_envelope_t *env = ferry_envelope_decode (payload, payload_len, NULL,
                                                   err, sizeof err);
    const char *op = env ? ferry_envelope_operation (env) : NULL;
    const char *cid = env ? ferry_envelope_cid (env) : NULL;
    row->operation = ferry_strdup (op ? op : "");
    row->correlation_id = cid ? ferry_strdup (cid) : NULL;
    ferry_envelope_destroy (&env);
    return 0;
}

void
worker_dead_row_free (worker_dead_row_t *row)
{
    free (row->message_id);
    free (row->correlation_id);
    free (row->service);
    free (row->operation);
    free (row->error);
    memset (row, 0, sizeof *row);
}

void
worker_process_name (char *buf, size_t size, long pid)
{
    char host[256];
    if (gethostname (host, sizeof host) != 0)
        snprintf (host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    snprintf (buf, size, "%s:%ld", host, pid);
}

/* ---- tests -------------------------------------------------------------- */

int
worker_dead_req_test (bool verbose)
{
    (void) verbose;
    uint64_t deadline = 0;
    unsigned attempt = 0;
    FERRY_CHECK (worker_req_fields ("1700000000000", 13, NULL, 0, &deadline,
                                    &attempt) == 0);
    FERRY_CHECK (deadline == 1700000000000ull && attempt == 1);
    FERRY_CHECK (worker_req_fields ("0", 1, "3", 1, &deadline, &attempt)
                 == 0);
    FERRY_CHECK (deadline == 0 && attempt == 3);
    /*  Not numbers, empty, zero, absurd: refused.  */
    FERRY_CHECK (worker_req_fields ("12x", 3, NULL, 0, &deadline, &attempt)
                 == -1);
    FERRY_CHECK (worker_req_fields ("", 0, NULL, 0, &deadline, &attempt)
                 == -1);
    FERRY_CHECK (worker_req_fields ("5", 1, "", 0, &deadline, &attempt)
                 == -1);
    FERRY_CHECK (worker_req_fields ("5", 1, "0", 1, &deadline, &attempt)
                 == -1);
    FERRY_CHECK (worker_req_fields ("5", 1, "-1", 2, &deadline, &attempt)
                 == -1);
    FERRY_CHECK (worker_req_fields ("5", 1, "1000001", 7, &deadline,
                                    &attempt) == -1);
    FERRY_CHECK (worker_req_fields ("123456789012345678901234", 24, NULL, 0,
                                    &deadline, &attempt) == -1);
    char name[300];
    worker_process_name (name, sizeof name, 4242);
    FERRY_CHECK (strlen (name) > 5
                 && strcmp (name + strlen (name) - 5, ":4242") == 0);
    return 0;
}

int
worker_dead_row_test (bool verbose)
{
    ferry_envelope_t *req = ferry_envelope_new (FERRY_KIND_REQUEST);
    ferry_envelope_set_id (req, "m-1");
    ferry_envelope_set_cid (req, "req-42");
    ferry_envelope_set_service (req, "slow");
    ferry_envelope_set_operation (req, "boom");
    ferry_envelope_set_deadline (req, 1700000005000);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    FERRY_CHECK (ferry_envelope_encode (req, &sb) == 0);
    ferry_envelope_destroy (&req);

    static const char info[]
        = "{\"reason\":\"worker deaths\",\"deaths\":3,\"attempts\":3,"
          "\"service\":\"slow\",\"workers\":[\"w1\",\"w2\"],"
          "\"signals\":[\"SIGABRT\"]}";
    worker_dead_row_t row;
    FERRY_CHECK (worker_dead_row_build (&row, "m-1", info, strlen (info),
                                        sb.data, sb.size, "other") == 0);
    if (verbose)
        printf ("# error=%s\n", row.error);
    FERRY_CHECK (strcmp (row.message_id, "m-1") == 0);
    FERRY_CHECK (row.correlation_id
                 && strcmp (row.correlation_id, "req-42") == 0);
    FERRY_CHECK (strcmp (row.service, "slow") == 0);
    FERRY_CHECK (strcmp (row.operation, "boom") == 0);
    FERRY_CHECK (strcmp (row.attempts, "3") == 0);
    FERRY_CHECK (strstr (row.error, "\"signals\":[\"SIGABRT\"]"));
    FERRY_CHECK (strstr (row.error, "\"reason\":\"worker deaths\""));
    worker_dead_row_free (&row);

    /*  An envelope that does not decode and info that is not JSON: the
        row is still written, with what is known.  */
    FERRY_CHECK (worker_dead_row_build (&row, "m-2", "not json", 8, "\xc1",
                                        1, "app") == 0);
    FERRY_CHECK (strcmp (row.operation, "") == 0);
    FERRY_CHECK (row.correlation_id == NULL);
    FERRY_CHECK (strcmp (row.service, "app") == 0);
    FERRY_CHECK (strcmp (row.attempts, "0") == 0);
    FERRY_CHECK (strstr (row.error, "\"info\":\"not json\""));
    worker_dead_row_free (&row);

    /*  A JSON array is not an object; a negative attempts is ignored.  */
    FERRY_CHECK (worker_dead_row_build (&row, "m-3", "[1]", 3, sb.data,
                                        sb.size, "app") == 0);
    FERRY_CHECK (strstr (row.error, "\"info\":\"[1]\""));
    worker_dead_row_free (&row);
    FERRY_CHECK (worker_dead_row_build (&row, "m-4", "{\"attempts\":-2}", 15,
                                        sb.data, sb.size, NULL) == 0);
    FERRY_CHECK (strcmp (row.attempts, "0") == 0);
    FERRY_CHECK (strcmp (row.service, "") == 0);
    worker_dead_row_free (&row);

    FERRY_CHECK (worker_dead_row_build (&row, "", info, strlen (info),
                                        sb.data, sb.size, "app") == -1);
    worker_dead_row_free (&row);
    msgpack_sbuffer_destroy (&sb);
    return 0;
}

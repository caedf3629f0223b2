/*  worker_jobs.c: the SQL side of asynchronous jobs and idempotency keys
    for a worker, kept apart from any connection handling so that the
    pipelined ZeroMQ actors and a blocking libpq user (the Kafka consumer)
    call the same functions with the same parameters.

    Every rule about jobs and keys lives in PostgreSQL (0004_jobs.sql);
    this module only shapes the calls: ids as text cast to uuid, the
    retention as an interval, bodies as binary bytea parameters, and the
    request hash computed by the server (sha256) over bytes we send, so
    that a worker never needs a hash library and every transport hashes
    the same input.  */

#include "ferry.h"
#include "json.h"
#include "log.h"
#include "worker_jobs.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *const s_sql[] = {
    [WORKER_JOBS_START]
    = "SELECT ferry.job_start($1::uuid, $2, $3, $4, $5::interval)",
    [WORKER_JOBS_GUARD] = "SELECT ferry.job_guard($1::uuid)",
    [WORKER_JOBS_IDEM_BEGIN]
    = "SELECT ferry.idem_begin($1, $2, sha256($3::bytea))",
    [WORKER_JOBS_JOB_FINISH]
    = "SELECT ferry.job_finish($1::uuid, $2, $3::int4, $4::jsonb,"
      " $5::bytea, $6::jsonb, $7::interval)",
    [WORKER_JOBS_IDEM_FINISH]
    = "SELECT ferry.idem_finish($1, $2, sha256($3::bytea), $4::int4,"
      " $5::jsonb, $6::bytea, $7::interval)",
    [WORKER_JOBS_JOB_STORED]
    = "SELECT result_status, result_headers, result_body"
      " FROM ferry.jobs WHERE id = $1::uuid",
    [WORKER_JOBS_IDEM_STORED]
    = "SELECT response_status, response_headers, response_body"
      " FROM ferry.idempotency_keys WHERE principal = $1 AND key = $2",
    [WORKER_JOBS_JOB_FROM_IDEM]
    = "SELECT ferry.job_finish($1::uuid, CASE WHEN response_status < 400"
      " THEN 'succeeded' ELSE 'failed' END, response_status,"
      " response_headers, response_body, NULL, $4::interval)"
      " FROM ferry.idempotency_keys WHERE principal = $2 AND key = $3",
    [WORKER_JOBS_CLEANUP] = "SELECT ferry.cleanup($1::int4)",
};

/*  PostgreSQL reads "N milliseconds" as an interval.  */
static void
s_interval (char *buf, size_t size, int64_t ms)
{
    snprintf (buf, size, "%" PRId64 " milliseconds", ms);
}

int
worker_jobs_settings_load (ferry_config_t *config,
                           worker_jobs_settings_t *out)
{
    /*  A day keeps a result for a client polling after a night's
        outage; ten years is as long as anyone means by "keep".  */
    const int64_t day = 24 * 3600 * 1000LL, max = 3650 * day;
    if (ferry_config_duration_ms (config, NULL, "jobs.retention", 1000, max,
                                  day, &out->job_retention_ms)
        || ferry_config_duration_ms (config, NULL, "jobs.cleanup_interval",
                                     10, day, 10000,
                                     &out->cleanup_interval_ms)
        || ferry_config_int (config, NULL, "jobs.cleanup_batch", 1, 100000,
                             500, &out->cleanup_batch)
        || ferry_config_duration_ms (config, NULL, "idempotency.retention",
                                     1000, max, day,
                                     &out->idem_retention_ms))
        return -1;
    return 0;
}

void
worker_jobs_ctx_init (worker_jobs_ctx_t *ctx)
{
    memset (ctx, 0, sizeof *ctx);
    msgpack_sbuffer_init (&ctx->hash);
    msgpack_sbuffer_init (&ctx->body);
}

void
worker_jobs_ctx_destroy (worker_jobs_ctx_t *ctx)
{
    worker_jobs_ctx_clear (ctx);
    msgpack_sbuffer_destroy (&ctx->hash);
    msgpack_sbuffer_destroy (&ctx->body);
}

bool
worker_jobs_wanted (const ferry_envelope_t *request)
{
    return ferry_envelope_job (request)
           || ferry_envelope_idempotency_key (request);
}

int
worker_jobs_ctx_begin (worker_jobs_ctx_t *ctx,
                       const ferry_envelope_t *request,
                       const worker_jobs_settings_t *settings)
{
    worker_jobs_ctx_clear (ctx);
    const char *p = ferry_envelope_principal (request);
    const char *svc = ferry_envelope_service (request);
    const char *op = ferry_envelope_operation (request);
    ctx->job = ferry_envelope_job (request);
    ctx->idem = ferry_envelope_idempotency_key (request);
    ctx->principal = p ? p : "";
    ctx->service = svc ? svc : "";
    ctx->operation = op ? op : "";
    s_interval (ctx->job_retention, sizeof ctx->job_retention,
                settings->job_retention_ms);
    s_interval (ctx->idem_retention, sizeof ctx->idem_retention,
                settings->idem_retention_ms);
    snprintf (ctx->batch, sizeof ctx->batch, "%" PRId64,
              settings->cleanup_batch);

    /*  The same request always gives the same bytes: the decoded
        objects are packed again, so how the edge happened to encode them
        does not matter.  */
    msgpack_sbuffer_clear (&ctx->hash);
    msgpack_sbuffer_write (&ctx->hash, ctx->service, strlen (ctx->service)
                                                         + 1);
    msgpack_sbuffer_write (&ctx->hash, ctx->operation,
                           strlen (ctx->operation) + 1);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &ctx->hash, msgpack_sbuffer_write);
    const msgpack_object *args = ferry_envelope_args (request);
    const msgpack_object *body = ferry_envelope_body (request);
    int rc = args ? msgpack_pack_object (&pk, *args) : msgpack_pack_nil (&pk);
    rc = rc ? rc
            : body ? msgpack_pack_object (&pk, *body)
                   : msgpack_pack_nil (&pk);
    return rc ? -1 : 0;
}

int
worker_jobs_ctx_capture (worker_jobs_ctx_t *ctx,
                         const ferry_envelope_t *reply)
{
    free (ctx->headers);
    free (ctx->error);
    ctx->headers = ctx->error = NULL;
    ctx->captured = false;
    unsigned status = ferry_envelope_status (reply);
    snprintf (ctx->status, sizeof ctx->status, "%u", status);
    ctx->state = status < 400 ? "succeeded" : "failed";

    json_t *h = json_object ();
    size_t n = ferry_envelope_header_count (reply);
    for (size_t i = 0; i < n; i++) {
        const char *name, *value;
        if (ferry_envelope_header_at (reply, i, &name, &value) == 0)
            json_object_set_new (h, name, json_string (value));
    }
    ctx->headers = json_dumps (h, JSON_COMPACT);
    json_decref (h);

    msgpack_sbuffer_clear (&ctx->body);
    const msgpack_object *body = ferry_envelope_body (reply);
    ctx->has_body = body != NULL;
    if (body) {
        msgpack_packer pk;
        msgpack_packer_init (&pk, &ctx->body, msgpack_sbuffer_write);
        if (msgpack_pack_object (&pk, *body))
            return -1;
        if (status >= 400) {
            size_t len;
            ctx->error = ferry_msgpack_to_json (body, &len);
        }
    }
    if (!ctx->headers) {
        log_error ("reply headers have no JSON form re=%s",
                   ferry_envelope_re (reply) ? ferry_envelope_re (reply)
                                             : "-");
        return -1;
    }
    ctx->captured = true;
    return 0;
}

void
worker_jobs_ctx_clear (worker_jobs_ctx_t *ctx)
{
    free (ctx->headers);
    free (ctx->error);
    ctx->headers = ctx->error = NULL;
    ctx->captured = false;
    ctx->has_body = false;
    ctx->job = ctx->idem = NULL;
    ctx->principal = ctx->service = ctx->operation = "";
    msgpack_sbuffer_clear (&ctx->hash);
    msgpack_sbuffer_clear (&ctx->body);
}

static void
s_text (worker_jobs_call_t *call, const char *value)
{
    int i = call->nparams++;
    call->values[i] = value;
    call->lengths[i] = 0;
    call->formats[i] = 0;
}

static void
s_binary (worker_jobs_call_t *call, const void *data, size_t size)
{
    int i = call->nparams++;
    /*  libpq sends a zero-length binary value for an empty buffer only
        when the pointer is not NULL.  */
    call->values[i] = data ? data : "";
    call->lengths[i] = (int) size;
    call->formats[i] = 1;
}

void
worker_jobs_call (const worker_jobs_ctx_t *ctx, worker_jobs_stmt_t which,
                  worker_jobs_call_t *call)
{
    memset (call, 0, sizeof *call);
    call->sql = s_sql[which];
    switch (which) {
    case WORKER_JOBS_START:
        s_text (call, ctx->job);
        s_text (call, ctx->service);
        s_text (call, ctx->operation);
        s_text (call, ctx->principal);
        s_text (call, ctx->job_retention);
        break;
    case WORKER_JOBS_GUARD:
    case WORKER_JOBS_JOB_STORED:
        s_text (call, ctx->job);
        break;
    case WORKER_JOBS_IDEM_BEGIN:
        s_text (call, ctx->principal);
        s_text (call, ctx->idem);
        s_binary (call, ctx->hash.data, ctx->hash.size);
        break;
    case WORKER_JOBS_JOB_FINISH:
        assert (ctx->captured);
        s_text (call, ctx->job);
        s_text (call, ctx->state);
        s_text (call, ctx->status);
        s_text (call, ctx->headers);
        if (ctx->has_body)
            s_binary (call, ctx->body.data, ctx->body.size);
        else
            s_text (call, NULL);
        s_text (call, ctx->error);
        s_text (call, ctx->job_retention);
        break;
    case WORKER_JOBS_IDEM_FINISH:
        assert (ctx->captured);
        s_text (call, ctx->principal);
        s_text (call, ctx->idem);
        s_binary (call, ctx->hash.data, ctx->hash.size);
        s_text (call, ctx->status);
        s_text (call, ctx->headers);
        if (ctx->has_body)
            s_binary (call, ctx->body.data, ctx->body.size);
        else
            s_text (call, NULL);
        s_text (call, ctx->idem_retention);
        break;
    case WORKER_JOBS_IDEM_STORED:
        s_text (call, ctx->principal);
        s_text (call, ctx->idem);
        break;
    case WORKER_JOBS_JOB_FROM_IDEM:
        s_text (call, ctx->job);
        s_text (call, ctx->principal);
        s_text (call, ctx->idem);
        s_text (call, ctx->job_retention);
        break;
    case WORKER_JOBS_CLEANUP:
        s_text (call, ctx->batch);
        break;
    }
}

worker_jobs_outcome_t
worker_jobs_classify (const char *sqlstate)
{
    if (!sqlstate || strncmp (sqlstate, "FY", 2) != 0)
        return WORKER_JOBS_OTHER;
    if (strcmp (sqlstate, "FY410") == 0)
        return WORKER_JOBS_FINISHED;
    if (strcmp (sqlstate, "FY200") == 0)
        return WORKER_JOBS_REPLAY;
    if (strcmp (sqlstate, "FY409") == 0)
        return WORKER_JOBS_BUSY;
    if (strcmp (sqlstate, "FY422") == 0)
        return WORKER_JOBS_MISMATCH;
    return WORKER_JOBS_OTHER;
}

ferry_envelope_t *
worker_jobs_problem (const ferry_envelope_t *request,
                     worker_jobs_outcome_t outcome)
{
    unsigned status = outcome == WORKER_JOBS_BUSY ? 409 : 422;
    const char *detail
        = outcome == WORKER_JOBS_BUSY
              ? "a request with this Idempotency-Key is still in progress"
              : "this Idempotency-Key was used with a different request";
    ferry_envelope_t *reply = ferry_envelope_new_reply (request, status);
    ferry_envelope_set_problem (reply, status, NULL, detail, NULL);
    return reply;
}

static ferry_envelope_t *
s_stored_missing (const ferry_envelope_t *request, const char *why)
{
    const char *id = ferry_envelope_id (request);
    log_error ("stored response unusable msg=%s reason=%s", id ? id : "-",
               why);
    ferry_envelope_t *reply = ferry_envelope_new_reply (request, 500);
    ferry_envelope_set_problem (reply, 500, NULL,
                                "the stored response could not be read",
                                NULL);
    return reply;
}

ferry_envelope_t *
worker_jobs_stored_reply (const ferry_envelope_t *request, const PGresult *r,
                          bool replayed)
{
    if (!r || PQntuples (r) < 1 || PQnfields (r) < 3
        || PQgetisnull (r, 0, 0))
        return s_stored_missing (request, "no stored status");
    int64_t status;
    if (ferry_parse_int64 (PQgetvalue (r, 0, 0), &status) || status < 100
        || status > 599)
        return s_stored_missing (request, "bad status");
    ferry_envelope_t *reply
        = ferry_envelope_new_reply (request, (unsigned) status);
    if (!PQgetisnull (r, 0, 1)) {
        json_error_t jerr;
        json_t *h = json_loads (PQgetvalue (r, 0, 1), 0, &jerr);
        if (!h || !json_is_object (h)) {
            json_decref (h);
            ferry_envelope_destroy (&reply);
            return s_stored_missing (request, "bad headers");
        }
        const char *name;
        json_t *value;
        json_object_foreach (h, name, value)
            if (json_is_string (value))
                ferry_envelope_set_header (reply, name,
                                           json_string_value (value));
        json_decref (h);
    }
    if (!PQgetisnull (r, 0, 2)) {
        size_t len;
        unsigned char *raw = PQunescapeBytea (
            (const unsigned char *) PQgetvalue (r, 0, 2), &len);
        char err[128];
        int rc = raw ? ferry_envelope_set_body_raw (reply, raw, len, err,
                                                    sizeof err)
                     : -1;
        PQfreemem (raw);
        if (rc) {
            ferry_envelope_destroy (&reply);
            return s_stored_missing (request, "bad body");
        }
    }
    if (replayed)
        ferry_envelope_set_header (reply, "idempotent-replayed", "true");
    return reply;
}

/* ---- tests -------------------------------------------------------------- */

static ferry_envelope_t *
s_test_request (const char *body_json)
{
    ferry_envelope_t *req = ferry_envelope_new (FERRY_KIND_REQUEST);
    ferry_envelope_set_id (req, "m1");
    ferry_envelope_set_service (req, "app");
    ferry_envelope_set_operation (req, "create_user");
    ferry_envelope_set_idempotency_key (req, "k1");
    if (body_json) {
        msgpack_sbuffer b;
        msgpack_sbuffer_init (&b);
        char err[128];
        if (ferry_json_to_msgpack (body_json, strlen (body_json), NULL, &b,
                                   err, sizeof err)
            == 0)
            ferry_envelope_set_body_raw (req, b.data, b.size, err,
                                         sizeof err);
        msgpack_sbuffer_destroy (&b);
    }
    return req;
}

int
worker_jobs_hash_test (bool verbose)
{
    (void) verbose;
    worker_jobs_settings_t set = {1000, 2000, 10000, 7};
    worker_jobs_ctx_t a, b;
    worker_jobs_ctx_init (&a);
    worker_jobs_ctx_init (&b);
    ferry_envelope_t *r1 = s_test_request ("{\"name\": \"x\"}");
    ferry_envelope_t *r2 = s_test_request ("{\"name\": \"x\"}");
    ferry_envelope_t *r3 = s_test_request ("{\"name\": \"y\"}");
    ferry_envelope_t *r4 = s_test_request (NULL);
    FERRY_CHECK (worker_jobs_wanted (r1));
    FERRY_CHECK (worker_jobs_ctx_begin (&a, r1, &set) == 0);
    FERRY_CHECK (worker_jobs_ctx_begin (&b, r2, &set) == 0);
    /*  "app\0create_user\0" then nil args and the body.  */
    FERRY_CHECK (a.hash.size > 16
                 && memcmp (a.hash.data, "app\0create_user\0", 16) == 0);
    FERRY_CHECK ((unsigned char) a.hash.data[16] == 0xc0);
    FERRY_CHECK (a.hash.size == b.hash.size
                 && memcmp (a.hash.data, b.hash.data, a.hash.size) == 0);
    FERRY_CHECK (worker_jobs_ctx_begin (&b, r3, &set) == 0);
    FERRY_CHECK (a.hash.size != b.hash.size
                 || memcmp (a.hash.data, b.hash.data, a.hash.size) != 0);
    FERRY_CHECK (worker_jobs_ctx_begin (&b, r4, &set) == 0);
    FERRY_CHECK (b.hash.size == 18);
    FERRY_CHECK (strcmp (a.principal, "") == 0 && !a.job
                 && strcmp (a.idem, "k1") == 0);
    FERRY_CHECK (strcmp (a.job_retention, "1000 milliseconds") == 0);

    worker_jobs_call_t call;
    worker_jobs_call (&a, WORKER_JOBS_IDEM_BEGIN, &call);
    FERRY_CHECK (call.nparams == 3 && call.formats[2] == 1
                 && call.lengths[2] == (int) a.hash.size);
    FERRY_CHECK (strstr (call.sql, "sha256($3::bytea)"));
    worker_jobs_call (&a, WORKER_JOBS_CLEANUP, &call);
    FERRY_CHECK (call.nparams == 1 && strcmp (call.values[0], "7") == 0);

    FERRY_CHECK (worker_jobs_classify ("FY410") == WORKER_JOBS_FINISHED);
    FERRY_CHECK (worker_jobs_classify ("FY200") == WORKER_JOBS_REPLAY);
    FERRY_CHECK (worker_jobs_classify ("FY409") == WORKER_JOBS_BUSY);
    FERRY_CHECK (worker_jobs_classify ("FY422") == WORKER_JOBS_MISMATCH);
    FERRY_CHECK (worker_jobs_classify ("23505") == WORKER_JOBS_OTHER);
    FERRY_CHECK (worker_jobs_classify (NULL) == WORKER_JOBS_OTHER);

    ferry_envelope_destroy (&r1);
    ferry_envelope_destroy (&r2);
    ferry_envelope_destroy (&r3);
    ferry_envelope_destroy (&r4);
    worker_jobs_ctx_destroy (&a);
    worker_jobs_ctx_destroy (&b);
    return 0;
}

int
worker_jobs_capture_test (bool verbose)
{
    (void) verbose;
    worker_jobs_settings_t set = {1000, 2000, 10000, 7};
    worker_jobs_ctx_t ctx;
    worker_jobs_ctx_init (&ctx);
    ferry_envelope_t *req = s_test_request ("{\"name\": \"x\"}");
    ferry_envelope_set_job (req, "0190f3c2-0000-4000-8000-000000000001");
    FERRY_CHECK (worker_jobs_ctx_begin (&ctx, req, &set) == 0);

    /*  A success: no error, body bytes as the reply carries them.  */
    ferry_envelope_t *ok = ferry_envelope_new_reply (req, 201);
    char err[128];
    FERRY_CHECK (ferry_envelope_set_body_raw (ok, "\x81\xa2id\x07", 5, err,
                                              sizeof err)
                 == 0);
    ferry_envelope_set_header (ok, "Location", "/users/7");
    FERRY_CHECK (worker_jobs_ctx_capture (&ctx, ok) == 0);
    FERRY_CHECK (strcmp (ctx.state, "succeeded") == 0);
    FERRY_CHECK (strcmp (ctx.status, "201") == 0);
    FERRY_CHECK (strcmp (ctx.headers, "{\"location\":\"/users/7\"}") == 0);
    FERRY_CHECK (ctx.has_body && ctx.body.size == 5 && !ctx.error);
    worker_jobs_call_t call;
    worker_jobs_call (&ctx, WORKER_JOBS_JOB_FINISH, &call);
    FERRY_CHECK (call.nparams == 7 && call.formats[4] == 1
                 && call.lengths[4] == 5 && call.values[5] == NULL);
    FERRY_CHECK (strcmp (call.values[0], ferry_envelope_job (req)) == 0);
    worker_jobs_call (&ctx, WORKER_JOBS_IDEM_FINISH, &call);
    FERRY_CHECK (call.nparams == 7
                 && strcmp (call.values[6], "2000 milliseconds") == 0);
    ferry_envelope_destroy (&ok);

    /*  A problem: failed, with the problem body as the error.  */
    ferry_envelope_t *bad = worker_jobs_problem (req, WORKER_JOBS_MISMATCH);
    FERRY_CHECK (ferry_envelope_status (bad) == 422);
    FERRY_CHECK (worker_jobs_ctx_capture (&ctx, bad) == 0);
    FERRY_CHECK (strcmp (ctx.state, "failed") == 0);
    FERRY_CHECK (ctx.error && strstr (ctx.error, "\"status\":422"));
    FERRY_CHECK (strstr (ctx.headers, "application/problem+json"));
    ferry_envelope_destroy (&bad);
    bad = worker_jobs_problem (req, WORKER_JOBS_BUSY);
    FERRY_CHECK (ferry_envelope_status (bad) == 409);
    ferry_envelope_destroy (&bad);

    worker_jobs_ctx_clear (&ctx);
    FERRY_CHECK (!ctx.captured && !ctx.headers && !ctx.job);
    ferry_envelope_destroy (&req);
    worker_jobs_ctx_destroy (&ctx);
    return 0;
}

int
worker_jobs_stored_test (bool verbose)
{
    (void) verbose;
    ferry_envelope_t *req = s_test_request (NULL);
    PGresult *r = PQmakeEmptyPGresult (NULL, PGRES_TUPLES_OK);
    PGresAttDesc att[3] = {
        {.name = (char *) "s", .typid = 23, .typlen = 4, .atttypmod = -1},
        {.name = (char *) "h", .typid = 3802, .typlen = -1, .atttypmod = -1},
        {.name = (char *) "b", .typid = 17, .typlen = -1, .atttypmod = -1},
    };
    FERRY_CHECK (PQsetResultAttrs (r, 3, att));
    /*  No row: a 500 problem.  */
    ferry_envelope_t *rep = worker_jobs_stored_reply (req, r, true);
    FERRY_CHECK (ferry_envelope_status (rep) == 500);
    ferry_envelope_destroy (&rep);

    FERRY_CHECK (PQsetvalue (r, 0, 0, (char *) "201", 3));
    const char *h = "{\"location\": \"/users/7\"}";
    FERRY_CHECK (PQsetvalue (r, 0, 1, (char *) h, (int) strlen (h)));
    FERRY_CHECK (PQsetvalue (r, 0, 2, (char *) "\\x81a2696407", 12));
    rep = worker_jobs_stored_reply (req, r, true);
    FERRY_CHECK (ferry_envelope_status (rep) == 201);
    FERRY_CHECK (strcmp (ferry_envelope_re (rep), "m1") == 0);
    FERRY_CHECK (strcmp (ferry_envelope_header (rep, "location"), "/users/7")
                 == 0);
    FERRY_CHECK (strcmp (ferry_envelope_header (rep, "idempotent-replayed"),
                         "true")
                 == 0);
    const msgpack_object *body = ferry_envelope_body (rep);
    FERRY_CHECK (body && body->type == MSGPACK_OBJECT_MAP
                 && body->via.map.size == 1
                 && body->via.map.ptr[0].val.via.u64 == 7);
    ferry_envelope_destroy (&rep);

    /*  A redelivered job: no replay header.  A body that is not one
        msgpack value: 500.  */
    rep = worker_jobs_stored_reply (req, r, false);
    FERRY_CHECK (!ferry_envelope_header (rep, "idempotent-replayed"));
    ferry_envelope_destroy (&rep);
    FERRY_CHECK (PQsetvalue (r, 0, 2, (char *) "\\x81a2", 6));
    rep = worker_jobs_stored_reply (req, r, false);
    FERRY_CHECK (ferry_envelope_status (rep) == 500);
    ferry_envelope_destroy (&rep);
    PQclear (r);
    ferry_envelope_destroy (&req);
    return 0;
}

int
worker_jobs_config_test (bool verbose)
{
    (void) verbose;
    static const char yaml[] = "jobs:\n"
                               "  retention: 2h\n"
                               "  cleanup_interval: 250ms\n"
                               "  cleanup_batch: 50\n"
                               "idempotency:\n"
                               "  retention: 1h\n";
    char err[256];
    ferry_config_t *config
        = ferry_config_parse (yaml, strlen (yaml), "j.yaml", err, sizeof err);
    FERRY_CHECK (config);
    worker_jobs_settings_t s;
    FERRY_CHECK (worker_jobs_settings_load (config, &s) == 0);
    FERRY_CHECK (s.job_retention_ms == 7200000);
    FERRY_CHECK (s.cleanup_interval_ms == 250 && s.cleanup_batch == 50);
    FERRY_CHECK (s.idem_retention_ms == 3600000);
    ferry_config_destroy (&config);

    config = ferry_config_parse ("x: 1\n", 5, "j.yaml", err, sizeof err);
    FERRY_CHECK (config);
    FERRY_CHECK (worker_jobs_settings_load (config, &s) == 0);
    FERRY_CHECK (s.job_retention_ms == 86400000 && s.cleanup_batch == 500
                 && s.cleanup_interval_ms == 10000);
    ferry_config_destroy (&config);

    static const char bad[] = "jobs:\n  cleanup_batch: 0\n";
    config = ferry_config_parse (bad, strlen (bad), "j.yaml", err, sizeof err);
    FERRY_CHECK (config);
    FERRY_CHECK (worker_jobs_settings_load (config, &s) == -1);
    FERRY_CHECK (strstr (ferry_config_error (config), "cleanup_batch"));
    ferry_config_destroy (&config);
    return 0;
}

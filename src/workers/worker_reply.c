/*  worker_reply.c: the reply envelope to a request, shared by the ZeroMQ
    actors and the Kafka consumer so that a client sees the same body,
    status and problem for an operation whichever transport carried it.  */

#include "ferry.h"
#include "log.h"
#include "worker_pgerror.h"
#include "worker_reply.h"
#include "worker_values.h"

#include <string.h>

static int
s_pack_row (msgpack_packer *pk, const PGresult *r, int row)
{
    int nf = PQnfields (r);
    msgpack_pack_map (pk, (size_t) nf);
    for (int c = 0; c < nf; c++) {
        const char *name = PQfname (r, c);
        msgpack_pack_str_with_body (pk, name, strlen (name));
        if (worker_value_pack (pk, PQftype (r, c), PQgetvalue (r, row, c),
                               (size_t) PQgetlength (r, row, c),
                               PQgetisnull (r, row, c)))
            return -1;
    }
    return 0;
}

int
worker_reply_pack_result (msgpack_packer *pk, const PGresult *r,
                          worker_result_t mode)
{
    if (mode == WORKER_RESULT_EXEC) {
        uint64_t n = 0;
        const char *t = PQcmdTuples ((PGresult *) r);
        if (t && *t && ferry_parse_uint64 (t, &n))
            return -1;
        msgpack_pack_map (pk, 1);
        msgpack_pack_str_with_body (pk, "affected", 8);
        msgpack_pack_uint64 (pk, n);
        return 0;
    }
    if (mode == WORKER_RESULT_ONE)
        return PQntuples (r) > 0 ? s_pack_row (pk, r, 0) : -1;
    int n = PQntuples (r);
    msgpack_pack_array (pk, (size_t) n);
    for (int i = 0; i < n; i++)
        if (s_pack_row (pk, r, i))
            return -1;
    return 0;
}

ferry_envelope_t *
worker_reply_result (const ferry_envelope_t *request, const worker_op_t *op,
                     const PGresult *last, msgpack_sbuffer *scratch)
{
    const worker_step_t *step = &op->steps[op->nsteps - 1];
    const char *id = ferry_envelope_id (request);
    msgpack_sbuffer_clear (scratch);
    msgpack_packer pk;
    msgpack_packer_init (&pk, scratch, msgpack_sbuffer_write);
    if (!last || worker_reply_pack_result (&pk, last, step->result)) {
        log_error ("result not convertible msg=%s op=%s", id ? id : "-",
                   op->name);
        return worker_reply_problem (request, 500,
                                     "the result could not be converted",
                                     NULL);
    }
    ferry_envelope_t *reply = ferry_envelope_new_reply (request, op->status);
    char err[128];
    if (ferry_envelope_set_body_raw (reply, scratch->data, scratch->size, err,
                                     sizeof err)) {
        log_warn ("result refused msg=%s op=%s reason=%s", id ? id : "-",
                  op->name, err);
        ferry_envelope_destroy (&reply);
        return worker_reply_problem (request, 500,
                                     "the result could not be converted",
                                     NULL);
    }
    return reply;
}

ferry_envelope_t *
worker_reply_problem (const ferry_envelope_t *request, unsigned status,
                      const char *detail, const char *sqlstate)
{
    ferry_envelope_t *reply = ferry_envelope_new_reply (request, status);
    ferry_envelope_set_problem (reply, status, NULL, detail, sqlstate);
    return reply;
}

ferry_envelope_t *
worker_reply_failure (const ferry_envelope_t *request, const char *sqlstate)
{
    worker_pgerror_t e;
    worker_pgerror_classify (sqlstate, &e);
    return worker_reply_problem (request, e.status, e.detail,
                                 e.show_sqlstate && sqlstate && sqlstate[0]
                                     ? sqlstate
                                     : NULL);
}

void
worker_reply_trace (const ferry_envelope_t *request, ferry_envelope_t *reply)
{
    char tp[FERRY_TRACEPARENT_LEN + 1];
    ferry_traceparent_continue (ferry_envelope_traceparent (request), tp);
    ferry_envelope_set_header (reply, "traceparent", tp);
    ferry_envelope_set_traceparent (reply, tp);
}

/* ---- tests -------------------------------------------------------------- */

int
worker_reply_test (bool verbose)
{
    (void) verbose;
    ferry_envelope_t *req = ferry_envelope_new (FERRY_KIND_REQUEST);
    ferry_envelope_set_id (req, "m1");
    ferry_envelope_set_cid (req, "c1");

    /*  A result of one row (id int8 = 7), as libpq would hand it over.  */
    PGresult *r = PQmakeEmptyPGresult (NULL, PGRES_TUPLES_OK);
    PGresAttDesc att = {.name = (char *) "id", .typid = 20, .typlen = 8,
                        .atttypmod = -1};
    FERRY_CHECK (PQsetResultAttrs (r, 1, &att));
    FERRY_CHECK (PQsetvalue (r, 0, 0, (char *) "7", 1));

    worker_step_t step = {.result = WORKER_RESULT_ONE};
    worker_op_t op = {.name = (char *) "get", .nsteps = 1, .steps = &step,
                      .status = 200};
    msgpack_sbuffer scratch;
    msgpack_sbuffer_init (&scratch);
    ferry_envelope_t *rep = worker_reply_result (req, &op, r, &scratch);
    FERRY_CHECK (ferry_envelope_status (rep) == 200);
    FERRY_CHECK (strcmp (ferry_envelope_re (rep), "m1") == 0);
    const msgpack_object *body = ferry_envelope_body (rep);
    FERRY_CHECK (body && body->type == MSGPACK_OBJECT_MAP
                 && body->via.map.size == 1
                 && body->via.map.ptr[0].val.via.u64 == 7);
    ferry_envelope_destroy (&rep);

    /*  No row for `one`, no result at all: a 500 problem.  */
    step.result = WORKER_RESULT_MANY;
    rep = worker_reply_result (req, &op, NULL, &scratch);
    FERRY_CHECK (ferry_envelope_status (rep) == 500);
    ferry_envelope_destroy (&rep);
    rep = worker_reply_result (req, &op, r, &scratch);
    body = ferry_envelope_body (rep);
    FERRY_CHECK (body && body->type == MSGPACK_OBJECT_ARRAY
                 && body->via.array.size == 1);
    ferry_envelope_destroy (&rep);

    /*  A unique violation is the client's 409, with fixed words.  */
    rep = worker_reply_failure (req, "23505");
    FERRY_CHECK (ferry_envelope_status (rep) == 409);
    worker_reply_trace (req, rep);
    FERRY_CHECK (ferry_envelope_traceparent (rep)
                 && strlen (ferry_envelope_traceparent (rep))
                        == FERRY_TRACEPARENT_LEN);
    ferry_envelope_destroy (&rep);

    msgpack_sbuffer_destroy (&scratch);
    PQclear (r);
    ferry_envelope_destroy (&req);
    return 0;
}

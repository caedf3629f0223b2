/*  worker_jobs.h: what a worker does in PostgreSQL for a request that
    carries an asynchronous job id (`job`) or an Idempotency-Key (`idem`):
    the SQL calls of ferry.job_* / ferry.idem_* (schemas/sql/0004_jobs.sql)
    with their parameters, the request hash, the response to record, and
    the reply rebuilt from a stored response.

    The module sends nothing itself: worker_jobs_call fills the text and
    the parameter arrays of one statement, which the caller passes to
    PQsendQueryParams (the ZeroMQ actors, in pipeline mode) or PQexecParams
    (a blocking connection, as the Kafka consumer has).  The order of the
    calls is the caller's (docs/worker.md, "Jobs and idempotency"):

        job_start                                  -- own transaction
        BEGIN; job_guard; idem_begin; handler ...
        job_finish; idem_finish; COMMIT            -- handler committed
        ROLLBACK; job_finish (failed)              -- handler failed
        ROLLBACK; job_stored / idem_stored [+ job_from_idem]
                                                   -- FY410 / FY200  */

#ifndef WORKER_JOBS_H_INCLUDED
#define WORKER_JOBS_H_INCLUDED

#include "config.h"
#include "envelope.h"

#include <libpq-fe.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

/*  jobs.retention, jobs.cleanup_interval, jobs.cleanup_batch and
    idempotency.retention.  */
typedef struct {
    int64_t job_retention_ms;
    int64_t idem_retention_ms;
    int64_t cleanup_interval_ms;
    int64_t cleanup_batch;
} worker_jobs_settings_t;

/*  Reads the settings (defaults 24h, 10s, 500, 24h).  Returns 0, or -1
    with the message in ferry_config_error (config).  */
int worker_jobs_settings_load (ferry_config_t *config,
                               worker_jobs_settings_t *out);

typedef enum {
    WORKER_JOBS_START,       /* ferry.job_start: its own transaction */
    WORKER_JOBS_GUARD,       /* ferry.job_guard: first in the handler's */
    WORKER_JOBS_IDEM_BEGIN,  /* ferry.idem_begin: after the guard */
    WORKER_JOBS_JOB_FINISH,  /* ferry.job_finish with the captured reply */
    WORKER_JOBS_IDEM_FINISH, /* ferry.idem_finish with the captured reply */
    WORKER_JOBS_JOB_STORED,  /* the job's stored result: status, headers,
                                body (one row, or none) */
    WORKER_JOBS_IDEM_STORED, /* the key's stored response, same columns */
    WORKER_JOBS_JOB_FROM_IDEM, /* job_finish with the key's stored
                                  response (after FY200) */
    WORKER_JOBS_CLEANUP      /* ferry.cleanup(batch): rows deleted */
} worker_jobs_stmt_t;

/*  What a failed job_guard / idem_begin said (its SQLSTATE).  */
typedef enum {
    WORKER_JOBS_OTHER,    /* not one of ours: the handler's failure */
    WORKER_JOBS_FINISHED, /* FY410: reply the job's stored result */
    WORKER_JOBS_REPLAY,   /* FY200: reply the key's stored response */
    WORKER_JOBS_BUSY,     /* FY409: 409, the key's request is running */
    WORKER_JOBS_MISMATCH  /* FY422: 422, the key came with another request */
} worker_jobs_outcome_t;

#define WORKER_JOBS_PARAMS_MAX 7

/*  One statement ready for PQsendQueryParams / PQexecParams (paramTypes
    NULL, result format text).  Pointers borrow from the context.  */
typedef struct {
    const char *sql;
    int nparams;
    const char *values[WORKER_JOBS_PARAMS_MAX];
    int lengths[WORKER_JOBS_PARAMS_MAX];
    int formats[WORKER_JOBS_PARAMS_MAX];
} worker_jobs_call_t;

/*  Per message state.  Init once, begin per message, clear after it;
    the buffers are kept so a steady load allocates little.  */
typedef struct {
    const char *job;         /* borrowed from the request; NULL = none */
    const char *idem;        /* borrowed; NULL = none */
    const char *principal;   /* borrowed; "" when anonymous */
    const char *service;     /* borrowed; "" when absent */
    const char *operation;   /* borrowed */
    char job_retention[32];  /* "86400000 milliseconds" */
    char idem_retention[32];
    char batch[24];          /* cleanup batch */
    msgpack_sbuffer hash;    /* what PostgreSQL hashes with sha256 */
    /*  The response to record (worker_jobs_ctx_capture).  */
    bool captured;
    const char *state;       /* "succeeded" or "failed" */
    char status[8];
    char *headers;           /* JSON object text */
    msgpack_sbuffer body;    /* the body's msgpack bytes */
    bool has_body;
    char *error;             /* JSON of a problem body, or NULL */
} worker_jobs_ctx_t;

void worker_jobs_ctx_init (worker_jobs_ctx_t *ctx);
void worker_jobs_ctx_destroy (worker_jobs_ctx_t *ctx);

/*  True when request carries a job id or an Idempotency-Key, so it takes
    the two-phase path.  */
bool worker_jobs_wanted (const ferry_envelope_t *request);

/*  Prepares ctx for request (which must outlive the use of ctx): its ids
    and the hash input: service, NUL, operation, NUL, then the msgpack of
    args and of body (nil when absent).  Returns 0, or -1 when the
    request cannot be hashed (it then needs a 500 problem).  */
int worker_jobs_ctx_begin (worker_jobs_ctx_t *ctx,
                           const ferry_envelope_t *request,
                           const worker_jobs_settings_t *settings);
/*  Records reply (before its trace header is added) as the response to
    store: status, headers as a JSON object, body bytes, and the error
    (the problem body as JSON) when the status is 400 or more.  Returns 0
    or -1 (the reply has no JSON form; logged).  */
int worker_jobs_ctx_capture (worker_jobs_ctx_t *ctx,
                             const ferry_envelope_t *reply);
/*  Forgets the message; keeps the buffers.  */
void worker_jobs_ctx_clear (worker_jobs_ctx_t *ctx);

/*  Fills call for statement which.  JOB_FINISH and IDEM_FINISH need a
    captured response.  */
void worker_jobs_call (const worker_jobs_ctx_t *ctx, worker_jobs_stmt_t which,
                       worker_jobs_call_t *call);

worker_jobs_outcome_t worker_jobs_classify (const char *sqlstate);

/*  The problem reply for BUSY (409) and MISMATCH (422).  */
ferry_envelope_t *worker_jobs_problem (const ferry_envelope_t *request,
                                       worker_jobs_outcome_t outcome);

/*  The reply to request rebuilt from r, the text-format result of
    JOB_STORED or IDEM_STORED: status, headers, body; replayed adds
    `idempotent-replayed: true`.  A missing row or result gives a 500
    problem (logged).  */
ferry_envelope_t *worker_jobs_stored_reply (const ferry_envelope_t *request,
                                            const PGresult *r, bool replayed);

int worker_jobs_hash_test (bool verbose);
int worker_jobs_capture_test (bool verbose);
int worker_jobs_stored_test (bool verbose);
int worker_jobs_config_test (bool verbose);

#endif

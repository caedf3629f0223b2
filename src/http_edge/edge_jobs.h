/*  edge_jobs.h: one event loop's side of PostgreSQL, for asynchronous jobs
    (docs/edge.md "Asynchronous jobs").

    Each loop owns one non-blocking libpq connection.  Its socket sits in
    the loop's epoll set beside libmicrohttpd and the ZeroMQ socket, so a
    statement never blocks the loop: the caller queues it with a callback,
    and the loop calls edge_jobs_process when the socket is ready or the
    reconnect timer is due.  Statements run one after the other in the
    order they were queued.  The connection LISTENs on ferry_jobs once, and
    every notification (a job finished) goes to the notify callback.

    When PostgreSQL is away the connection is retried with a growing
    backoff (100 ms to 5 s); statements queued meanwhile fail at once, so
    job operations answer 503 while ZeroMQ and Kafka routes carry on.  */

#ifndef EDGE_JOBS_H_INCLUDED
#define EDGE_JOBS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _edge_jobs_t edge_jobs_t;

typedef struct {
    bool ok;           /* the statement ran */
    const char *error; /* why not, when !ok (for logs) */
    /*  edge_jobs_get only.  */
    bool found;        /* the job exists (and the principal may read it) */
    bool finished;     /* succeeded, failed or dead */
    char *json;        /* its representation; the callback may take it
                          (set it to NULL), else it is freed */
    size_t len;
} edge_jobs_result_t;

/*  Called once per statement, from edge_jobs_process (or at once, from the
    queuing call's caller never: a refused statement returns -1 instead).  */
typedef void (edge_jobs_fn) (void *arg, edge_jobs_result_t *result);
/*  Called for every notification on ferry_jobs: the job id (lowercase).  */
typedef void (edge_jobs_notify_fn) (void *arg, const char *job_id);

/*  A new connection manager; it connects on the first edge_jobs_process.
    conninfo is libpq's ("" means the PG* environment); retention_ms is
    jobs.retention; epoll_fd is the loop's epoll set, where it keeps its
    socket (data.fd is the socket).  */
edge_jobs_t *edge_jobs_new (const char *conninfo, int64_t retention_ms,
                            int epoll_fd, size_t index,
                            edge_jobs_notify_fn *notify, void *notify_arg);
/*  Fails what is still queued (callbacks run) and closes.  */
void edge_jobs_destroy (edge_jobs_t **self_p);

/*  True while connected (LISTEN sent).  */
bool edge_jobs_ready (const edge_jobs_t *self);
/*  The socket in the epoll set, -1 when none.  */
int edge_jobs_fd (const edge_jobs_t *self);
/*  Milliseconds until edge_jobs_process wants to run without an event (a
    reconnect), or -1 for never.  */
int64_t edge_jobs_timeout (const edge_jobs_t *self, int64_t now);
/*  Reads, writes, runs callbacks and notifications, reconnects.  */
void edge_jobs_process (edge_jobs_t *self);

/*  Queues ferry.job_submit (a queued job with jobs.retention).  Returns 0,
    or -1 when the database is not connected (fn is not called).  */
int edge_jobs_submit (edge_jobs_t *self, const char *id, const char *service,
                      const char *operation, const char *principal,
                      edge_jobs_fn *fn, void *arg);
/*  Queues ferry.job_expire: the job failed with a problem (status,
    detail) unless it already ran.  No callback; returns 0 or -1.  */
int edge_jobs_expire (edge_jobs_t *self, const char *id, unsigned status,
                      const char *detail);
/*  Queues a read of the job as its JSON representation.  Returns 0 or
    -1.  */
int edge_jobs_get (edge_jobs_t *self, const char *id, const char *principal,
                   edge_jobs_fn *fn, void *arg);
/*  Forgets arg: its queued statements still run, without callback.  */
void edge_jobs_cancel (edge_jobs_t *self, void *arg);
/*  Fails every queued statement now (callbacks run with ok false).  */
void edge_jobs_fail_all (edge_jobs_t *self, const char *why);

/*  Builds the JSON representation of a job from its columns (the unit
    test checks it without a database).  body is the stored msgpack result
    body (NULL for none), headers and error JSON text or NULL.  Returns a
    new NUL-ended string (free()) or NULL when a column cannot be shown.  */
char *edge_jobs_json (const char *id, const char *status, const char *service,
                      const char *operation, long attempts,
                      const char *created_at, const char *updated_at,
                      const char *finished_at, int result_status,
                      const char *headers, const void *body, size_t body_len,
                      const char *error, size_t *len);

int edge_jobs_test (bool verbose);

#endif

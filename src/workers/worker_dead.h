/*  worker_dead.h: what the worker makes of the broker's less common
    messages, apart from the sockets and the database so that it can be
    tested alone: the fields of a REQ (deadline, delivery attempt), the
    row of a poison message's dead letter (DEAD), and the process name
    that READY and the supervisor's DIED carry.  */

#ifndef WORKER_DEAD_H_INCLUDED
#define WORKER_DEAD_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*  Parses the decimal deadline and, when attempt is not NULL (the 6-frame
    REQ), the decimal attempt of a REQ; the 5-frame form is attempt 1.
    The texts are frames, not NUL-ended.  Returns 0, or -1 when either is
    not a number (or the attempt is 0 or above 1000000).  */
int worker_req_fields (const void *deadline, size_t deadline_len,
                       const void *attempt, size_t attempt_len,
                       uint64_t *deadline_out, unsigned *attempt_out);

/*  A row of ferry.dead_letters, as the text parameters of its INSERT.  */
typedef struct {
    char *message_id;
    char *correlation_id;    /* NULL when the envelope has none */
    char *service;
    char *operation;         /* "" when the envelope does not decode */
    char *error;             /* JSON object text */
    char attempts[16];       /* decimal */
} worker_dead_row_t;

/*  Builds the row of DEAD msg_id info payload.  info is the broker's JSON
    object text (not NUL-ended); when it is not a JSON object it is kept
    as {"reason":"unknown","info":"<text>"}.  service comes from info,
    else from dflt_service.  Fills *row (free with worker_dead_row_free).
    Returns 0, or -1 when msg_id is empty.  */
int worker_dead_row_build (worker_dead_row_t *row, const char *msg_id,
                           const void *info, size_t info_len,
                           const void *payload, size_t payload_len,
                           const char *dflt_service);
void worker_dead_row_free (worker_dead_row_t *row);

/*  The INSERT with $1..$7 = message_id, correlation_id, service,
    operation, envelope (binary bytea), error (jsonb text), attempts.  */
extern const char worker_dead_insert_sql[];

/*  Writes "<hostname>:<pid>" into buf.  */
void worker_process_name (char *buf, size_t size, long pid);

int worker_dead_req_test (bool verbose);
int worker_dead_row_test (bool verbose);

#endif

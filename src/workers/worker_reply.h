/*  worker_reply.h: the reply envelope to a request, built the same way
    whichever transport brought the request (ZeroMQ from the broker, or a
    Kafka request topic): the success body by result mode, the problem
    for a failed statement, and our span in the trace context.  */

#ifndef WORKER_REPLY_H_INCLUDED
#define WORKER_REPLY_H_INCLUDED

#include "envelope.h"
#include "worker_ops.h"

#include <libpq-fe.h>
#include <msgpack.h>

/*  Packs r as a reply body by result mode: one -> map of the first row,
    many -> array of row maps, exec -> {"affected": N}.  Returns 0, or -1
    when a value cannot be converted (or `one` has no row).  */
int worker_reply_pack_result (msgpack_packer *pk, const PGresult *r,
                              worker_result_t mode);

/*  The success reply to request, whose operation op ran and whose last
    step returned last (may be NULL): status op->status and the packed
    result, or a 500 problem when the result cannot be converted (logged).
    scratch is the caller's buffer, reused so that steady replies
    allocate nothing.  */
ferry_envelope_t *worker_reply_result (const ferry_envelope_t *request,
                                       const worker_op_t *op,
                                       const PGresult *last,
                                       msgpack_sbuffer *scratch);

/*  A problem reply to request (see ferry_envelope_set_problem).  */
ferry_envelope_t *worker_reply_problem (const ferry_envelope_t *request,
                                        unsigned status, const char *detail,
                                        const char *sqlstate);

/*  The problem reply for a statement that failed with sqlstate, shaped
    by worker_pgerror_classify (fixed words, the SQLSTATE only where the
    table says so).  */
ferry_envelope_t *worker_reply_failure (const ferry_envelope_t *request,
                                        const char *sqlstate);

/*  Continues the request's trace with our span into reply's traceparent
    (field and header), just before it is encoded.  */
void worker_reply_trace (const ferry_envelope_t *request,
                         ferry_envelope_t *reply);

int worker_reply_test (bool verbose);

#endif

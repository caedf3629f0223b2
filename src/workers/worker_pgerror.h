/*  worker_pgerror.h: the one place that decides what a PostgreSQL failure
    means for the client and for the connection (docs/worker.md has the
    table).  */

#ifndef WORKER_PGERROR_H_INCLUDED
#define WORKER_PGERROR_H_INCLUDED

#include <stdbool.h>

typedef struct {
    unsigned status;     /* HTTP status of the problem reply */
    const char *detail;  /* fixed words of ours, never server text */
    bool retry;          /* run the whole message once more first */
    bool reconnect;      /* the connection is unusable: drop it */
    bool show_sqlstate;  /* put the SQLSTATE into the problem body */
} worker_pgerror_t;

/*  Classifies a SQLSTATE (five characters).  NULL or "" stands for a
    connection that failed without a server error (lost, reset).  Always
    fills out.  */
void worker_pgerror_classify (const char *sqlstate, worker_pgerror_t *out);

int worker_pgerror_test (bool verbose);

#endif

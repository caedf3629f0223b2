/*  worker_ops.h: a pool's operations, read from its `operations:` config
    section, and the binding of request arguments to their parameters.

    The set is built once in the main thread, validated, and then shared
    read-only by every actor of the pool.  */

#ifndef WORKER_OPS_H_INCLUDED
#define WORKER_OPS_H_INCLUDED

#include "config.h"
#include "worker_values.h"

#include <msgpack.h>

typedef enum {
    WORKER_RESULT_ONE,  /* first row as a map; no row = not_found */
    WORKER_RESULT_MANY, /* array of row maps */
    WORKER_RESULT_EXEC  /* {"affected": N} */
} worker_result_t;

/*  The parameter name that binds the whole body (any value; nil or no
    body is absent) rather than a field of it: "$body:jsonb".  */
#define WORKER_PARAM_BODY "$body"

/*  One declared parameter: "name:type" or "name:type=default".  */
typedef struct {
    char *name;
    worker_type_t type;
    bool has_default;
    char *default_text; /* NULL with has_default: the default is SQL NULL */
} worker_param_t;

typedef struct {
    char *sql;
    size_t nparams;
    worker_param_t *params;
    unsigned *oids;             /* parameter type OIDs, nparams of them */
    worker_result_t result;
    unsigned not_found_status;  /* for `one` without a row; default 404 */
    char *not_found_detail;
    size_t index;               /* unique in the pool */
    char stmt[32];              /* prepared statement name, from index */
} worker_step_t;

typedef struct {
    char *name;
    size_t nsteps;
    worker_step_t *steps;
    unsigned status;            /* reply status on success; default 200 */
} worker_op_t;

typedef struct _worker_ops_t worker_ops_t;

/*  Reads and validates every operation below node (a map of name ->
    operation).  Returns a new set, or NULL with "file:line: path: ..." in
    ferry_config_error (config).  */
worker_ops_t *worker_ops_new (ferry_config_t *config,
                              const ferry_cnode_t *node);
void worker_ops_destroy (worker_ops_t **self_p);

/*  The operation called name, or NULL.  Borrowed.  */
const worker_op_t *worker_ops_find (const worker_ops_t *self,
                                    const char *name);
size_t worker_ops_size (const worker_ops_t *self);
/*  Steps across all operations (each one is a prepared statement).  */
size_t worker_ops_steps (const worker_ops_t *self);

/*  Parses "limit:int4=20" into out (which the caller clears with
    worker_param_clear).  Returns 0, or -1 with the reason in err.  */
int worker_param_parse (const char *spec, worker_param_t *out, char *err,
                        size_t errlen);
void worker_param_clear (worker_param_t *param);

/*  Fills values[0..nparams) with parameter text (NULL = SQL NULL) for
    step: each name is looked up in args (a map, may be NULL), then in
    body when it is a map, then the default applies.  Returns 0, or -1
    with a client-facing reason in err ("missing parameter 'email'"), in
    which case values holds nothing to free.  On success free the values
    with worker_step_values_free.  */
int worker_step_bind (const worker_step_t *step, const msgpack_object *args,
                      const msgpack_object *body, char **values, char *err,
                      size_t errlen);
void worker_step_values_free (const worker_step_t *step, char **values);

int worker_ops_param_test (bool verbose);
int worker_ops_config_test (bool verbose);
int worker_ops_bind_test (bool verbose);

#endif

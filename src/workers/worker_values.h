/*  worker_values.h: PostgreSQL values <-> msgpack.

    Results arrive in text format and become msgpack by the column's type
    OID; request arguments (msgpack) become parameter text for the type the
    operation declares, which is sent with that type's OID so PostgreSQL
    itself validates it.  docs/worker.md has the table.  */

#ifndef WORKER_VALUES_H_INCLUDED
#define WORKER_VALUES_H_INCLUDED

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

/*  Parameter types an operation may declare.  */
typedef enum {
    WORKER_T_INT2,
    WORKER_T_INT4,
    WORKER_T_INT8,
    WORKER_T_FLOAT4,
    WORKER_T_FLOAT8,
    WORKER_T_NUMERIC,
    WORKER_T_BOOL,
    WORKER_T_TEXT,
    WORKER_T_JSON,
    WORKER_T_JSONB,
    WORKER_T_TIMESTAMPTZ,
    WORKER_T_TIMESTAMP,
    WORKER_T_DATE,
    WORKER_T_UUID,
    WORKER_T_BYTEA
} worker_type_t;

/*  PostgreSQL type OIDs (pg_type.dat; stable across versions).  */
#define WORKER_OID_BOOL 16
#define WORKER_OID_BYTEA 17
#define WORKER_OID_CHAR 18
#define WORKER_OID_NAME 19
#define WORKER_OID_INT8 20
#define WORKER_OID_INT2 21
#define WORKER_OID_INT4 23
#define WORKER_OID_TEXT 25
#define WORKER_OID_OID 26
#define WORKER_OID_JSON 114
#define WORKER_OID_FLOAT4 700
#define WORKER_OID_FLOAT8 701
#define WORKER_OID_BPCHAR 1042
#define WORKER_OID_VARCHAR 1043
#define WORKER_OID_DATE 1082
#define WORKER_OID_TIMESTAMP 1114
#define WORKER_OID_TIMESTAMPTZ 1184
#define WORKER_OID_NUMERIC 1700
#define WORKER_OID_UUID 2950
#define WORKER_OID_JSONB 3802

/*  "int8" -> WORKER_T_INT8.  Returns 0, or -1 for an unknown name.  */
int worker_type_parse (const char *name, worker_type_t *out);
const char *worker_type_name (worker_type_t type);
unsigned worker_type_oid (worker_type_t type);

/*  Packs one result value: text is PostgreSQL's text output of a value of
    type oid (len bytes), isnull marks SQL NULL.  Returns 0, or -1 when the
    text does not have the form the type promises (the packer is then left
    with nothing written for this value).  */
int worker_value_pack (msgpack_packer *pk, unsigned oid, const char *text,
                       size_t len, bool isnull);

/*  Turns one argument into parameter text for type.  On success returns 0
    and stores in *text a new string the caller frees with free(), or NULL
    for SQL NULL (msgpack nil).  Returns -1 with a client-facing reason
    ("must be an integer") in err when the msgpack type cannot stand for
    the declared type.  */
int worker_param_text (worker_type_t type, const msgpack_object *obj,
                       char **text, char *err, size_t errlen);

/*  Checks a default from the configuration ("20" for int4).  Types that
    PostgreSQL alone can judge (numeric, timestamps, uuid...) pass.
    Returns 0 or -1 with the reason in err.  */
int worker_param_default_check (worker_type_t type, const char *text,
                                char *err, size_t errlen);

int worker_values_pack_test (bool verbose);
int worker_values_param_test (bool verbose);

#endif

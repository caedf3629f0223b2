/*  ferry.h: what every ferry module includes.

    Small shared pieces: the checked allocator (out-of-memory aborts in one
    place, so no caller has to handle it), clocks, identifiers, and the unit
    test registry that each component fills with its module tests.  */

#ifndef FERRY_H_INCLUDED
#define FERRY_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define FERRY_VERSION_STRING PACKAGE_VERSION

/* ---- allocation: these never return NULL ---------------------------------- */
void *ferry_malloc (size_t size);
void *ferry_calloc (size_t count, size_t size);
void *ferry_realloc (void *ptr, size_t size);
char *ferry_strdup (const char *s);
char *ferry_strndup (const char *s, size_t n);

/* ---- clocks --------------------------------------------------------------- */
/*  Wall clock, milliseconds since the Unix epoch: deadlines travel between
    processes (and later machines), so they are absolute wall-clock times.  */
uint64_t ferry_wall_ms (void);
/*  Monotonic milliseconds, for timers inside one process.  */
int64_t ferry_mono_ms (void);

/* ---- identifiers ---------------------------------------------------------- */
#define FERRY_ID_LEN 32 /* 128 random bits as lowercase hex */
/*  Writes FERRY_ID_LEN hex characters and a NUL into out.  */
void ferry_id_generate (char out[FERRY_ID_LEN + 1]);
/*  True when s is a usable X-Request-Id: 1 to 128 visible ASCII
    characters (0x21 to 0x7e).  */
bool ferry_request_id_valid (const char *s);
/*  W3C traceparent: "00-<32 hex trace>-<16 hex parent>-<2 hex flags>".
    ferry_traceparent_continue writes into out a traceparent that continues
    `incoming` (same trace id and flags, new parent span id) when it is
    valid, or starts a new sampled trace otherwise.  Returns true when the
    incoming one was continued.  out must hold 56 bytes.  */
#define FERRY_TRACEPARENT_LEN 55
bool ferry_traceparent_valid (const char *s);
bool ferry_traceparent_continue (const char *incoming,
                                 char out[FERRY_TRACEPARENT_LEN + 1]);

/* ---- parsing helpers ------------------------------------------------------ */
/*  Strict decimal parsing: the whole string, no sign games, no overflow.
    Return 0 on success, -1 otherwise.  */
int ferry_parse_int64 (const char *s, int64_t *out);
int ferry_parse_uint64 (const char *s, uint64_t *out);

/* ---- unit tests ----------------------------------------------------------- */
/*  A module test returns 0 when it passes.  It prints what failed to
    stderr as "# file:line: ..." (a TAP diagnostic) and returns 1.  */
typedef int (ferry_test_fn) (bool verbose);
typedef struct {
    const char *name;
    ferry_test_fn *fn;
} ferry_test_t;

#define FERRY_CHECK(cond)                                                     \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf (stderr, "# %s:%d: check failed: %s\n", __FILE__,         \
                     __LINE__, #cond);                                        \
            return 1;                                                         \
        }                                                                     \
    } while (0)

/*  Each component's table of tests, ended by {NULL, NULL}.  */
extern const ferry_test_t ferry_common_tests[];
extern const ferry_test_t broker_tests[];
extern const ferry_test_t worker_tests[];
extern const ferry_test_t edge_tests[];

#endif

/*  worker_pgerror.c: SQLSTATE -> HTTP status and problem detail.

    Every actor calls this one function when a statement fails, so the
    mapping lives in one table (CONVENTIONS.md: "one function classifies
    PostgreSQL failures").  The details are our own fixed words per class:
    server messages can quote table contents and connection strings, so
    none of them reaches a client (nor do constraint names: they go to
    the log).  */

#include "ferry.h"
#include "worker_pgerror.h"

#include <string.h>

/*  Exact codes first, then two-character classes; the first match wins.  */
typedef struct {
    const char *code; /* 5 characters, or a 2-character class */
    worker_pgerror_t err;
} s_rule_t;

static const s_rule_t s_rules[] = {
    {"23505", {409, "a row with this key already exists", false, false, false}},
    {"23514", {422, "a check constraint rejected the value", false, false, false}},
    {"23502", {422, "a required value is missing", false, false, false}},
    {"23503", {422, "a referenced row does not exist or is still referenced",
               false, false, false}},
    {"40001", {503, "the transaction conflicted with another; try again",
               true, false, false}},
    {"40P01", {503, "the transaction deadlocked with another; try again",
               true, false, false}},
    {"57014", {504, "the statement ran past the request deadline", false,
               false, false}},
    /*  Administrator shutdown and friends: the session is gone.  */
    {"57P01", {503, "the database is shutting down", false, true, false}},
    {"57P02", {503, "the database is shutting down", false, true, false}},
    {"57P03", {503, "the database is not accepting connections", false,
               true, false}},
    {"53300", {503, "the database has too many connections", false, true,
               false}},
    {"22", {422, "a value is not valid for its type", false, false, false}},
    {"23", {422, "the values break an integrity constraint", false, false,
            false}},
    {"08", {503, "the database connection failed", false, true, false}},
    {"53", {503, "the database is out of resources", false, false, true}},
};

void
worker_pgerror_classify (const char *sqlstate, worker_pgerror_t *out)
{
    static const worker_pgerror_t lost
        = {503, "the database connection was lost", false, true, false};
    static const worker_pgerror_t other
        = {500, "the database reported an error", false, false, true};
    if (!sqlstate || strlen (sqlstate) != 5) {
        *out = lost;
        return;
    }
    for (size_t i = 0; i < sizeof s_rules / sizeof s_rules[0]; i++) {
        size_t n = strlen (s_rules[i].code);
        if (strncmp (sqlstate, s_rules[i].code, n) == 0) {
            *out = s_rules[i].err;
            return;
        }
    }
    *out = other;
}

int
worker_pgerror_test (bool verbose)
{
    static const struct {
        const char *code;
        unsigned status;
        bool retry, reconnect, show;
    } cases[] = {
        {"23505", 409, false, false, false},
        {"23514", 422, false, false, false},
        {"23502", 422, false, false, false},
        {"23503", 422, false, false, false},
        {"23P01", 422, false, false, false},
        {"22P02", 422, false, false, false},
        {"22003", 422, false, false, false},
        {"22007", 422, false, false, false},
        {"40001", 503, true, false, false},
        {"40P01", 503, true, false, false},
        {"57014", 504, false, false, false},
        {"08006", 503, false, true, false},
        {"08001", 503, false, true, false},
        {"57P01", 503, false, true, false},
        {"42P01", 500, false, false, true},
        {"42601", 500, false, false, true},
        {"XX000", 500, false, false, true},
        {"53200", 503, false, false, true},
        {NULL, 503, false, true, false},
        {"", 503, false, true, false},
        {"2350", 503, false, true, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        worker_pgerror_t e;
        worker_pgerror_classify (cases[i].code, &e);
        if (verbose)
            printf ("# %s -> %u\n", cases[i].code ? cases[i].code : "(null)",
                    e.status);
        FERRY_CHECK (e.status == cases[i].status);
        FERRY_CHECK (e.retry == cases[i].retry);
        FERRY_CHECK (e.reconnect == cases[i].reconnect);
        FERRY_CHECK (e.show_sqlstate == cases[i].show);
        FERRY_CHECK (e.detail && *e.detail);
    }
    return 0;
}

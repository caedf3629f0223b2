/*  fuzz_routes.c: libFuzzer target for the edge's route table: template
    parsing (edge_routes_add, query declarations, Kafka keys) and matching
    of request paths with their path and query parameters.

    Templates come from the configuration and paths and query strings from
    any client, so both must be refused or handled without crashing.  The
    input is text, one command per line:

        R GET /users/{id:int}      add a route (template after "R ")
        Q limit:int!               declare a query parameter on the last
                                   route (type optional, "!" = required)
        K topic key                send the last route over Kafka, keyed
        M GET /users/42?limit=5    match a request; on a match pack args

    Other lines are ignored.  Packed args must be a msgpack map an envelope
    accepts, the way the edge uses them.  */

#include "envelope.h"
#include "edge_routes.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

#define S_MAX_PAIRS 32

/*  A parsed query string: the names and values point into text.  */
typedef struct {
    char *text;
    size_t n;
    const char *names[S_MAX_PAIRS];
    const char *values[S_MAX_PAIRS];
} s_query_t;

static void
s_fail (const char *what, const char *err)
{
    fprintf (stderr, "fuzz_routes: %s: %s\n", what, err);
    abort ();
}

static void
s_query_parse (s_query_t *q, const char *text)
{
    q->text = strdup (text ? text : "");
    if (!q->text)
        abort ();
    q->n = 0;
    char *save = NULL;
    for (char *tok = strtok_r (q->text, "&", &save);
         tok && q->n < S_MAX_PAIRS; tok = strtok_r (NULL, "&", &save)) {
        char *eq = strchr (tok, '=');
        if (eq)
            *eq++ = '\0';
        q->names[q->n] = tok;
        q->values[q->n] = eq ? eq : "";
        q->n++;
    }
}

/*  edge_query_fn over a parsed query string: the first value of name.  */
static const char *
s_query_value (void *ctx, const char *name)
{
    const s_query_t *q = ctx;
    for (size_t i = 0; i < q->n; i++)
        if (strcmp (q->names[i], name) == 0)
            return q->values[i];
    return NULL;
}

static void
s_declare_query (edge_route_t *route, char *spec)
{
    bool required = false;
    size_t len = strlen (spec);
    if (len > 0 && spec[len - 1] == '!') {
        required = true;
        spec[len - 1] = '\0';
    }
    edge_param_type_t type = EDGE_PARAM_STRING;
    char *colon = strchr (spec, ':');
    if (colon) {
        *colon++ = '\0';
        if (edge_param_type_parse (colon, &type))
            return;
        if (strcmp (edge_param_type_name (type), colon) != 0)
            s_fail ("edge_param_type_name", colon);
    }
    char err[256];
    (void) edge_route_add_query (route, spec, type, required, err,
                                 sizeof err);
}

static void
s_set_kafka (edge_route_t *route, char *spec)
{
    char *key = strchr (spec, ' ');
    if (key)
        *key++ = '\0';
    char err[256];
    (void) edge_route_set_kafka (route, *spec ? spec : NULL, key, err,
                                 sizeof err);
}

static void
s_match (const edge_routes_t *routes, char *spec)
{
    char *path = strchr (spec, ' ');
    if (!path)
        return;
    *path++ = '\0';
    char *qs = strchr (path, '?');
    if (qs)
        *qs++ = '\0';
    edge_match_t m;
    int status = edge_routes_match (routes, spec, path, &m);
    if (status == 404 || status == 405)
        return;
    if (status != 200 || !m.route)
        s_fail ("edge_routes_match", "neither 200 with a route, 404 nor 405");
    s_query_t q;
    s_query_parse (&q, qs);
    msgpack_sbuffer args;
    msgpack_sbuffer_init (&args);
    char err[256];
    if (edge_route_pack_args (&m, qs ? s_query_value : NULL, &q, &args, err,
                              sizeof err)
        == 0) {
        ferry_envelope_t *env = ferry_envelope_new (FERRY_KIND_REQUEST);
        if (ferry_envelope_set_args_raw (env, args.data, args.size, err,
                                         sizeof err))
            s_fail ("args the envelope refuses", err);
        ferry_envelope_destroy (&env);
    }
    size_t klen = 0;
    (void) edge_route_key_value (&m, qs ? s_query_value : NULL, &q, &klen);
    msgpack_sbuffer_destroy (&args);
    free (q.text);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    /*  One NUL-ended copy; a NUL inside ends the current line's text.  */
    char *text = malloc (size + 1);
    if (!text)
        return 0;
    memcpy (text, data, size);
    text[size] = '\0';

    edge_routes_t *routes = edge_routes_new ();
    edge_route_t *last = NULL;
    char *save = NULL;
    for (char *line = strtok_r (text, "\n", &save); line;
         line = strtok_r (NULL, "\n", &save)) {
        if (line[0] == '\0' || line[1] != ' ')
            continue;
        char *arg = line + 2;
        char err[256];
        switch (line[0]) {
        case 'R': {
            edge_route_t *r = edge_routes_add (routes, arg, "app", "op",
                                               1000, 65536, err, sizeof err);
            if (r) {
                last = r;
                (void) edge_route_template (r);
                (void) edge_route_retryable (r);
            }
            else if (strlen (err) == 0)
                s_fail ("edge_routes_add", "refused without a reason");
            break;
        }
        case 'Q':
            if (last)
                s_declare_query (last, arg);
            break;
        case 'K':
            if (last)
                s_set_kafka (last, arg);
            break;
        case 'M':
            s_match (routes, arg);
            break;
        default:
            break;
        }
    }
    edge_routes_destroy (&routes);
    free (text);
    return 0;
}

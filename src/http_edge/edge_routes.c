/*  edge_routes.c: the route table of ferry-edge.

    Templates are split into segments once, at start-up; matching walks the
    request path segment by segment without allocating, so it is cheap
    enough to run for every request in every loop.  The table is immutable
    after start-up and shared by all loops.

    Choices made here (docs/edge.md repeats them for users):
    - a path parameter whose text does not parse as its type means the
      route does not match, which ends in 404 (the resource does not
      exist), while a query parameter of the wrong type is a 400 naming it;
    - HEAD is served by GET routes, and Allow lists HEAD beside GET;
    - routes are tried in configuration order and the first match wins.  */

#include "ferry.h"
#include "proto.h"
#include "edge_routes.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *literal;          /* NULL for a parameter segment */
    char *name;             /* parameter name */
    edge_param_type_t type; /* parameter type */
} s_segment_t;

typedef struct {
    char *name;
    edge_param_type_t type;
    bool required;
} s_query_t;

struct _edge_route_t {
    char *method;     /* upper-case token */
    char *tmpl;       /* the template as written, for logs and errors */
    size_t nsegs;     /* path segments, at most EDGE_MAX_SEGMENTS */
    s_segment_t segs[EDGE_MAX_SEGMENTS];
    size_t nparams;   /* parameter segments among them */
    char *service;    /* broker service */
    char *operation;  /* operation inside the service */
    int64_t timeout_ms;
    uint64_t max_body;
    size_t nquery;    /* declared query parameters */
    s_query_t *query;
    edge_transport_t transport;
    char *topic;      /* Kafka request topic */
    char *key;        /* parameter keying Kafka messages, or NULL */
    edge_mode_t mode;     /* sync (the default) or async */
    bool async;           /* honours Prefer: respond-async */
    int64_t async_after;  /* sync route: 202 after this many ms; 0: never */
};

struct _edge_routes_t {
    edge_route_t **routes; /* in configuration order */
    size_t size;
};

static const char *s_methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE"};

static bool
s_param_name_valid (const char *s, size_t len)
{
    if (len == 0 || len > FERRY_NAME_MAX)
        return false;
    if (!(isalpha ((unsigned char) s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < len; i++)
        if (!(isalnum ((unsigned char) s[i]) || s[i] == '_'))
            return false;
    return true;
}

static bool
s_service_name_valid (const char *s)
{
    size_t len = s ? strlen (s) : 0;
    if (len == 0 || len > FERRY_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!(isalnum ((unsigned char) s[i]) || s[i] == '_' || s[i] == '.'
              || s[i] == '-'))
            return false;
    return true;
}

static void
s_route_destroy (edge_route_t **self_p)
{
    edge_route_t *self = *self_p;
    if (!self)
        return;
    free (self->method);
    free (self->tmpl);
    for (size_t i = 0; i < self->nsegs; i++) {
        free (self->segs[i].literal);
        free (self->segs[i].name);
    }
    free (self->service);
    free (self->operation);
    for (size_t i = 0; i < self->nquery; i++)
        free (self->query[i].name);
    free (self->query);
    free (self->topic);
    free (self->key);
    free (self);
    *self_p = NULL;
}

int
edge_param_type_parse (const char *name, edge_param_type_t *out)
{
    static const struct {
        const char *name;
        edge_param_type_t type;
    } types[] = {{"string", EDGE_PARAM_STRING}, {"int", EDGE_PARAM_INT},
                 {"number", EDGE_PARAM_NUMBER}, {"bool", EDGE_PARAM_BOOL},
                 {"uuid", EDGE_PARAM_UUID}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (name && strcmp (name, types[i].name) == 0) {
            *out = types[i].type;
            return 0;
        }
    return -1;
}

const char *
edge_param_type_name (edge_param_type_t type)
{
    switch (type) {
    case EDGE_PARAM_STRING: return "string";
    case EDGE_PARAM_INT: return "int";
    case EDGE_PARAM_NUMBER: return "number";
    case EDGE_PARAM_BOOL: return "bool";
    case EDGE_PARAM_UUID: return "uuid";
    }
    return "unknown";
}

edge_routes_t *
edge_routes_new (void)
{
    return ferry_calloc (1, sizeof (edge_routes_t));
}

void
edge_routes_destroy (edge_routes_t **self_p)
{
    edge_routes_t *self = *self_p;
    if (!self)
        return;
    for (size_t i = 0; i < self->size; i++)
        s_route_destroy (&self->routes[i]);
    free (self->routes);
    free (self);
    *self_p = NULL;
}

/*  Parses one template segment [start, start+len) into seg.  Returns 0 or
    -1 with a reason.  */
static int
s_parse_segment (const char *start, size_t len, s_segment_t *seg, char *err,
                 size_t errlen)
{
    if (len == 0) {
        snprintf (err, errlen, "empty path segment");
        return -1;
    }
    if (start[0] != '{') {
        for (size_t i = 0; i < len; i++)
            if (start[i] == '{' || start[i] == '}' || start[i] == '?'
                || start[i] == '%' || (unsigned char) start[i] <= 0x20
                || (unsigned char) start[i] >= 0x7f) {
                snprintf (err, errlen, "invalid character '%c' in path",
                          start[i]);
                return -1;
            }
        seg->literal = ferry_strndup (start, len);
        return 0;
    }
    if (len < 3 || start[len - 1] != '}') {
        snprintf (err, errlen, "a parameter segment is the whole {name:type}");
        return -1;
    }
    const char *inner = start + 1;
    size_t inner_len = len - 2;
    const char *colon = memchr (inner, ':', inner_len);
    size_t name_len = colon ? (size_t) (colon - inner) : inner_len;
    if (!s_param_name_valid (inner, name_len)) {
        snprintf (err, errlen, "invalid parameter name '%.*s'",
                  (int) name_len, inner);
        return -1;
    }
    seg->type = EDGE_PARAM_STRING;
    if (colon) {
        char type[16];
        size_t type_len = inner_len - name_len - 1;
        if (type_len == 0 || type_len >= sizeof type) {
            snprintf (err, errlen, "invalid type for parameter '%.*s'",
                      (int) name_len, inner);
            return -1;
        }
        memcpy (type, colon + 1, type_len);
        type[type_len] = '\0';
        if (edge_param_type_parse (type, &seg->type) != 0
            || (seg->type != EDGE_PARAM_STRING && seg->type != EDGE_PARAM_INT
                && seg->type != EDGE_PARAM_UUID)) {
            snprintf (err, errlen,
                      "unknown path parameter type '%s' (int, string, uuid)",
                      type);
            return -1;
        }
    }
    seg->name = ferry_strndup (inner, name_len);
    return 0;
}

/*  Same method and the same shape: equal literals and parameters of the
    same type in the same places.  Such a route could never be reached.  */
static bool
s_same_shape (const edge_route_t *a, const edge_route_t *b)
{
    if (strcmp (a->method, b->method) != 0 || a->nsegs != b->nsegs)
        return false;
    for (size_t i = 0; i < a->nsegs; i++) {
        const s_segment_t *x = &a->segs[i], *y = &b->segs[i];
        if ((x->literal == NULL) != (y->literal == NULL))
            return false;
        if (x->literal && strcmp (x->literal, y->literal) != 0)
            return false;
        if (!x->literal && x->type != y->type)
            return false;
    }
    return true;
}

static bool
s_route_has_name (const edge_route_t *self, const char *name)
{
    for (size_t i = 0; i < self->nsegs; i++)
        if (self->segs[i].name && strcmp (self->segs[i].name, name) == 0)
            return true;
    for (size_t i = 0; i < self->nquery; i++)
        if (strcmp (self->query[i].name, name) == 0)
            return true;
    return false;
}

edge_route_t *
edge_routes_add (edge_routes_t *self, const char *tmpl, const char *service,
                 const char *operation, int64_t timeout_ms, uint64_t max_body,
                 char *err, size_t errlen)
{
    if (!tmpl) {
        snprintf (err, errlen, "missing route template");
        return NULL;
    }
    const char *space = strchr (tmpl, ' ');
    if (!space) {
        snprintf (err, errlen, "expected \"METHOD /path\", got \"%s\"", tmpl);
        return NULL;
    }
    size_t method_len = (size_t) (space - tmpl);
    const char *method = NULL;
    for (size_t i = 0; i < sizeof s_methods / sizeof s_methods[0]; i++)
        if (strlen (s_methods[i]) == method_len
            && memcmp (s_methods[i], tmpl, method_len) == 0)
            method = s_methods[i];
    if (!method) {
        snprintf (err, errlen,
                  "unknown method '%.*s' (GET, POST, PUT, PATCH, DELETE)",
                  (int) method_len, tmpl);
        return NULL;
    }
    const char *path = space + 1;
    while (*path == ' ')
        path++;
    if (path[0] != '/') {
        snprintf (err, errlen, "the path must start with '/'");
        return NULL;
    }
    if (!s_service_name_valid (service)) {
        snprintf (err, errlen, "invalid service name (%s)",
                  "[A-Za-z0-9_.-], 1 to 64 characters");
        return NULL;
    }
    if (!s_service_name_valid (operation)) {
        snprintf (err, errlen, "invalid operation name (%s)",
                  "[A-Za-z0-9_.-], 1 to 64 characters");
        return NULL;
    }
    edge_route_t *route = ferry_calloc (1, sizeof *route);
    route->method = ferry_strdup (method);
    route->tmpl = ferry_strdup (tmpl);
    route->service = ferry_strdup (service);
    route->operation = ferry_strdup (operation);
    route->timeout_ms = timeout_ms;
    route->max_body = max_body;
    /*  "/" alone is the root: zero segments.  */
    const char *p = path + 1;
    while (*p) {
        const char *end = strchr (p, '/');
        size_t len = end ? (size_t) (end - p) : strlen (p);
        if (route->nsegs == EDGE_MAX_SEGMENTS) {
            snprintf (err, errlen, "more than %d path segments",
                      EDGE_MAX_SEGMENTS);
            goto fail;
        }
        s_segment_t *seg = &route->segs[route->nsegs];
        if (s_parse_segment (p, len, seg, err, errlen) != 0) {
            goto fail;
        }
        route->nsegs++;
        if (seg->name) {
            if (route->nparams == EDGE_MAX_PARAMS) {
                snprintf (err, errlen, "more than %d path parameters",
                          EDGE_MAX_PARAMS);
                goto fail;
            }
            /*  Count first so the duplicate check sees earlier names only. */
            for (size_t i = 0; i + 1 < route->nsegs; i++)
                if (route->segs[i].name
                    && strcmp (route->segs[i].name, seg->name) == 0) {
                    snprintf (err, errlen, "parameter '%s' appears twice",
                              seg->name);
                    goto fail;
                }
            route->nparams++;
        }
        if (!end)
            break;
        p = end + 1;
        if (*p == '\0') {
            snprintf (err, errlen, "the path must not end with '/'");
            goto fail;
        }
    }
    for (size_t i = 0; i < self->size; i++)
        if (s_same_shape (self->routes[i], route)) {
            snprintf (err, errlen, "duplicates route \"%s\"",
                      self->routes[i]->tmpl);
            goto fail;
        }
    self->routes = ferry_realloc (self->routes,
                                  (self->size + 1) * sizeof *self->routes);
    self->routes[self->size++] = route;
    return route;
fail:
    s_route_destroy (&route);
    return NULL;
}

int
edge_route_add_query (edge_route_t *route, const char *name,
                      edge_param_type_t type, bool required, char *err,
                      size_t errlen)
{
    if (!name || !s_param_name_valid (name, strlen (name))) {
        snprintf (err, errlen, "invalid query parameter name '%s'",
                  name ? name : "");
        return -1;
    }
    if (route->nquery == EDGE_MAX_QUERY) {
        snprintf (err, errlen, "more than %d query parameters",
                  EDGE_MAX_QUERY);
        return -1;
    }
    if (s_route_has_name (route, name)) {
        snprintf (err, errlen, "parameter '%s' is already defined", name);
        return -1;
    }
    route->query = ferry_realloc (route->query,
                                  (route->nquery + 1) * sizeof *route->query);
    route->query[route->nquery++]
        = (s_query_t) {ferry_strdup (name), type, required};
    return 0;
}

size_t
edge_routes_size (const edge_routes_t *self)
{
    return self->size;
}

const edge_route_t *
edge_routes_at (const edge_routes_t *self, size_t i)
{
    return i < self->size ? self->routes[i] : NULL;
}

static bool
s_is_uuid (const char *s, size_t len)
{
    if (len != 36)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        }
        else if (!isxdigit ((unsigned char) s[i]))
            return false;
    }
    return true;
}

/*  Does segment text [s, s+len) fit the parameter type?  */
static bool
s_segment_fits (const s_segment_t *seg, const char *s, size_t len)
{
    if (len == 0 || len > EDGE_MAX_PARAM_LEN)
        return false;
    if (seg->type == EDGE_PARAM_UUID)
        return s_is_uuid (s, len);
    if (seg->type == EDGE_PARAM_INT) {
        char buf[32];
        int64_t v;
        if (len >= sizeof buf)
            return false;
        memcpy (buf, s, len);
        buf[len] = '\0';
        return ferry_parse_int64 (buf, &v) == 0;
    }
    return true;
}

/*  Matches the path against the route's segments; fills m->params.  */
static bool
s_path_matches (const edge_route_t *route, const char *path, edge_match_t *m)
{
    if (path[0] != '/')
        return false;
    const char *p = path + 1;
    size_t nparams = 0;
    if (*p == '\0')
        return route->nsegs == 0;
    for (size_t i = 0; i < route->nsegs; i++) {
        const char *end = strchr (p, '/');
        size_t len = end ? (size_t) (end - p) : strlen (p);
        const s_segment_t *seg = &route->segs[i];
        if (seg->literal) {
            if (strlen (seg->literal) != len
                || memcmp (seg->literal, p, len) != 0)
                return false;
        }
        else {
            if (!s_segment_fits (seg, p, len))
                return false;
            m->params[nparams].value = p;
            m->params[nparams].len = len;
            nparams++;
        }
        if (i + 1 == route->nsegs)
            return end == NULL ? (m->nparams = nparams, true) : false;
        if (!end)
            return false;
        p = end + 1;
    }
    return false;
}

static void
s_allow_add (char *allow, size_t size, const char *method)
{
    /*  Each method once; the buffer holds all five and HEAD.  */
    size_t mlen = strlen (method);
    for (const char *q = allow; (q = strstr (q, method)) != NULL; q += mlen)
        if ((q == allow || q[-1] == ' ') && (q[mlen] == ',' || !q[mlen]))
            return;
    size_t used = strlen (allow);
    snprintf (allow + used, size - used, "%s%s", used ? ", " : "", method);
}

int
edge_routes_match (const edge_routes_t *self, const char *method,
                   const char *path, edge_match_t *m)
{
    m->route = NULL;
    m->nparams = 0;
    m->allow[0] = '\0';
    const char *want = strcmp (method, "HEAD") == 0 ? "GET" : method;
    bool path_seen = false;
    for (size_t i = 0; i < self->size; i++) {
        const edge_route_t *route = self->routes[i];
        if (!s_path_matches (route, path, m))
            continue;
        if (strcmp (route->method, want) == 0) {
            m->route = route;
            return 200;
        }
        path_seen = true;
        s_allow_add (m->allow, sizeof m->allow, route->method);
        if (strcmp (route->method, "GET") == 0)
            s_allow_add (m->allow, sizeof m->allow, "HEAD");
    }
    m->nparams = 0;
    return path_seen ? 405 : 404;
}

/*  Packs one typed value.  Returns 0, or -1 when text does not parse.  */
static int
s_pack_typed (msgpack_packer *pk, edge_param_type_t type, const char *text,
              size_t len)
{
    char buf[64];
    switch (type) {
    case EDGE_PARAM_INT: {
        int64_t v;
        if (len == 0 || len >= sizeof buf)
            return -1;
        memcpy (buf, text, len);
        buf[len] = '\0';
        if (ferry_parse_int64 (buf, &v) != 0)
            return -1;
        return msgpack_pack_int64 (pk, v);
    }
    case EDGE_PARAM_NUMBER: {
        if (len == 0 || len >= sizeof buf || isspace ((unsigned char) *text))
            return -1;
        memcpy (buf, text, len);
        buf[len] = '\0';
        char *end;
        double v = strtod (buf, &end);
        if (*end || !isfinite (v))
            return -1;
        return msgpack_pack_double (pk, v);
    }
    case EDGE_PARAM_BOOL:
        if ((len == 4 && memcmp (text, "true", 4) == 0)
            || (len == 1 && text[0] == '1'))
            return msgpack_pack_true (pk);
        if ((len == 5 && memcmp (text, "false", 5) == 0)
            || (len == 1 && text[0] == '0'))
            return msgpack_pack_false (pk);
        return -1;
    case EDGE_PARAM_UUID:
        if (!s_is_uuid (text, len))
            return -1;
        for (size_t i = 0; i < len; i++)
            buf[i] = (char) tolower ((unsigned char) text[i]);
        msgpack_pack_str (pk, len);
        return msgpack_pack_str_body (pk, buf, len);
    case EDGE_PARAM_STRING:
        msgpack_pack_str (pk, len);
        return msgpack_pack_str_body (pk, text, len);
    }
    return -1;
}

static void
s_pack_key (msgpack_packer *pk, const char *name)
{
    size_t len = strlen (name);
    msgpack_pack_str (pk, len);
    msgpack_pack_str_body (pk, name, len);
}

int
edge_route_pack_args (const edge_match_t *m, edge_query_fn *query, void *ctx,
                      msgpack_sbuffer *out, char *err, size_t errlen)
{
    const edge_route_t *route = m->route;
    const char *values[EDGE_MAX_QUERY];
    size_t count = m->nparams, nq = route->nquery;
    /*  Look the query parameters up first: the map header needs the count,
        and a missing one fails the request before anything is packed.  */
    for (size_t i = 0; i < nq; i++) {
        const s_query_t *q = &route->query[i];
        values[i] = query ? query (ctx, q->name) : NULL;
        if (!values[i] && q->required) {
            snprintf (err, errlen, "query parameter '%s' is required",
                      q->name);
            return 400;
        }
        if (values[i])
            count++;
    }
    msgpack_packer pk;
    msgpack_packer_init (&pk, out, msgpack_sbuffer_write);
    size_t start = out->size;
    msgpack_pack_map (&pk, count);
    size_t p = 0;
    for (size_t i = 0; i < route->nsegs; i++) {
        const s_segment_t *seg = &route->segs[i];
        if (seg->literal)
            continue;
        s_pack_key (&pk, seg->name);
        /*  The matcher already checked the type.  */
        if (s_pack_typed (&pk, seg->type, m->params[p].value, m->params[p].len)
            != 0) {
            snprintf (err, errlen, "path parameter '%s' is not a valid %s",
                      seg->name, edge_param_type_name (seg->type));
            out->size = start;
            return 400;
        }
        p++;
    }
    for (size_t i = 0; i < nq; i++) {
        const s_query_t *q = &route->query[i];
        if (!values[i])
            continue;
        s_pack_key (&pk, q->name);
        if (s_pack_typed (&pk, q->type, values[i], strlen (values[i])) != 0) {
            snprintf (err, errlen,
                      "query parameter '%s' must be of type %s", q->name,
                      edge_param_type_name (q->type));
            out->size = start;
            return 400;
        }
    }
    return 0;
}

const char *
edge_route_method (const edge_route_t *self)
{
    return self->method;
}

const char *
edge_route_template (const edge_route_t *self)
{
    return self->tmpl;
}

const char *
edge_route_service (const edge_route_t *self)
{
    return self->service;
}

const char *
edge_route_operation (const edge_route_t *self)
{
    return self->operation;
}

int64_t
edge_route_timeout_ms (const edge_route_t *self)
{
    return self->timeout_ms;
}

uint64_t
edge_route_max_body (const edge_route_t *self)
{
    return self->max_body;
}

bool
edge_route_retryable (const edge_route_t *self)
{
    return strcmp (self->method, "GET") == 0;
}

int
edge_route_set_async (edge_route_t *route, edge_mode_t mode, bool async,
                      int64_t async_after_ms, char *err, size_t errlen)
{
    if (async_after_ms < 0 || (async_after_ms && mode == EDGE_MODE_ASYNC)) {
        snprintf (err, errlen, "async_after is for routes in sync mode");
        return -1;
    }
    if (async_after_ms >= route->timeout_ms) {
        snprintf (err, errlen,
                  "async_after (%lld ms) must be shorter than the route's "
                  "timeout (%lld ms)",
                  (long long) async_after_ms, (long long) route->timeout_ms);
        return -1;
    }
    route->mode = mode;
    route->async = async;
    route->async_after = async_after_ms;
    return 0;
}

edge_mode_t
edge_route_mode (const edge_route_t *self)
{
    return self->mode;
}

bool
edge_route_async (const edge_route_t *self)
{
    return self->async || self->mode == EDGE_MODE_ASYNC;
}

int64_t
edge_route_async_after_ms (const edge_route_t *self)
{
    return self->async_after;
}

bool
edge_route_uses_jobs (const edge_route_t *self)
{
    return edge_route_async (self) || self->async_after > 0;
}

edge_transport_t
edge_route_transport (const edge_route_t *self)
{
    return self->transport;
}

const char *
edge_route_topic (const edge_route_t *self)
{
    return self->topic;
}

const char *
edge_route_key (const edge_route_t *self)
{
    return self->key;
}

/*  Kafka's own rule for topic names: [A-Za-z0-9._-], 1 to 249 bytes.  */
static bool
s_topic_valid (const char *s)
{
    size_t len = strlen (s);
    if (len == 0 || len > 249)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum ((unsigned char) s[i]) && !strchr ("._-", s[i]))
            return false;
    return true;
}

int
edge_route_set_kafka (edge_route_t *route, const char *topic,
                      const char *key, char *err, size_t errlen)
{
    char fallback[FERRY_NAME_MAX + 32];
    if (!topic) {
        snprintf (fallback, sizeof fallback, "ferry.%s.requests",
                  route->service);
        topic = fallback;
    }
    if (!s_topic_valid (topic)) {
        snprintf (err, errlen,
                  "'%s' is not a Kafka topic name ([A-Za-z0-9._-], 1 to "
                  "249 characters)", topic);
        return -1;
    }
    if (key) {
        bool found = false;
        for (size_t i = 0; i < route->nsegs && !found; i++)
            found = route->segs[i].name
                    && strcmp (route->segs[i].name, key) == 0;
        for (size_t i = 0; i < route->nquery && !found; i++)
            found = strcmp (route->query[i].name, key) == 0;
        if (!found) {
            snprintf (err, errlen,
                      "key '%s' is not a path or query parameter of the "
                      "route", key);
            return -1;
        }
    }
    route->transport = EDGE_TRANSPORT_KAFKA;
    free (route->topic);
    route->topic = ferry_strdup (topic);
    free (route->key);
    route->key = key ? ferry_strdup (key) : NULL;
    return 0;
}

const char *
edge_route_key_value (const edge_match_t *m, edge_query_fn *query, void *ctx,
                      size_t *len)
{
    const edge_route_t *route = m->route;
    if (!route->key)
        return NULL;
    size_t p = 0;
    for (size_t i = 0; i < route->nsegs; i++) {
        if (!route->segs[i].name)
            continue;
        if (strcmp (route->segs[i].name, route->key) == 0 && p < m->nparams) {
            *len = m->params[p].len;
            return m->params[p].value;
        }
        p++;
    }
    const char *value = query ? query (ctx, route->key) : NULL;
    if (value)
        *len = strlen (value);
    return value;
}

/* ---- tests --------------------------------------------------------------- */

static edge_route_t *
s_add (edge_routes_t *t, const char *tmpl)
{
    char err[256];
    return edge_routes_add (t, tmpl, "app", "op", 5000, 1 << 20, err,
                            sizeof err);
}

int
edge_routes_test (bool verbose)
{
    edge_routes_t *t = edge_routes_new ();
    char err[256];
    FERRY_CHECK (s_add (t, "GET /users/{id:int}"));
    FERRY_CHECK (s_add (t, "GET /users"));
    FERRY_CHECK (s_add (t, "POST /users"));
    FERRY_CHECK (s_add (t, "GET /"));
    FERRY_CHECK (s_add (t, "DELETE /a/{x}/b/{y:uuid}"));
    FERRY_CHECK (edge_routes_size (t) == 5);
    const edge_route_t *r = edge_routes_at (t, 0);
    FERRY_CHECK (strcmp (edge_route_method (r), "GET") == 0);
    FERRY_CHECK (strcmp (edge_route_service (r), "app") == 0);
    FERRY_CHECK (edge_route_retryable (r));
    FERRY_CHECK (!edge_route_retryable (edge_routes_at (t, 2)));
    FERRY_CHECK (edge_route_timeout_ms (r) == 5000);
    FERRY_CHECK (edge_route_max_body (r) == 1 << 20);

    /*  Bad templates, each with a reason.  */
    const char *bad[] = {
        "GET",                  "FETCH /x",         "GET users",
        "GET /a//b",            "GET /a/",          "GET /{id:float}",
        "GET /{}",              "GET /{1x}",        "GET /a{id}",
        "GET /{id}/{id}",       "GET /a b",         "get /x",
        "GET /{id:int",         "GET /x?y=1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        if (edge_routes_add (t, bad[i], "app", "op", 1, 1, err, sizeof err)) {
            fprintf (stderr, "# accepted bad template %s\n", bad[i]);
            return 1;
        }
        FERRY_CHECK (err[0] != '\0');
        if (verbose)
            printf ("# %s -> %s\n", bad[i], err);
    }
    FERRY_CHECK (!edge_routes_add (t, "GET /z", "bad service", "op", 1, 1,
                                   err, sizeof err));
    FERRY_CHECK (!edge_routes_add (t, "GET /z", "app", "", 1, 1, err,
                                   sizeof err));
    /*  Duplicates: same shape whatever the names; other types are not.  */
    FERRY_CHECK (!s_add (t, "GET /users/{uid:int}"));
    FERRY_CHECK (!edge_routes_add (t, "GET /users", "other", "x", 1, 1, err,
                                   sizeof err));
    FERRY_CHECK (strstr (err, "duplicates"));
    FERRY_CHECK (s_add (t, "GET /users/{name}"));
    FERRY_CHECK (s_add (t, "PUT /users/{id:int}"));
    FERRY_CHECK (edge_routes_size (t) == 7);

    /*  Query declarations.  */
    edge_route_t *q = s_add (t, "GET /q/{id}");
    FERRY_CHECK (q);
    FERRY_CHECK (edge_route_add_query (q, "limit", EDGE_PARAM_INT, false, err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (edge_route_add_query (q, "limit", EDGE_PARAM_INT, false, err,
                                       sizeof err)
                 == -1);
    FERRY_CHECK (edge_route_add_query (q, "id", EDGE_PARAM_INT, false, err,
                                       sizeof err)
                 == -1);
    FERRY_CHECK (edge_route_add_query (q, "a-b", EDGE_PARAM_INT, false, err,
                                       sizeof err)
                 == -1);
    edge_param_type_t type;
    FERRY_CHECK (edge_param_type_parse ("number", &type) == 0
                 && type == EDGE_PARAM_NUMBER);
    FERRY_CHECK (edge_param_type_parse ("float", &type) == -1);
    FERRY_CHECK (strcmp (edge_param_type_name (EDGE_PARAM_UUID), "uuid") == 0);
    edge_routes_destroy (&t);
    edge_routes_destroy (&t);
    FERRY_CHECK (t == NULL);
    return 0;
}

int
edge_routes_match_test (bool verbose)
{
    (void) verbose;
    edge_routes_t *t = edge_routes_new ();
    FERRY_CHECK (s_add (t, "GET /users/{id:int}"));
    FERRY_CHECK (s_add (t, "GET /users"));
    FERRY_CHECK (s_add (t, "POST /users"));
    FERRY_CHECK (s_add (t, "DELETE /users/{id:int}"));
    FERRY_CHECK (s_add (t, "GET /items/{id:uuid}/tags/{tag}"));
    FERRY_CHECK (s_add (t, "GET /"));
    edge_match_t m;
    FERRY_CHECK (edge_routes_match (t, "GET", "/users/42", &m) == 200);
    FERRY_CHECK (m.route == edge_routes_at (t, 0));
    FERRY_CHECK (m.nparams == 1 && m.params[0].len == 2
                 && memcmp (m.params[0].value, "42", 2) == 0);
    FERRY_CHECK (edge_routes_match (t, "HEAD", "/users/42", &m) == 200);
    FERRY_CHECK (edge_routes_match (t, "DELETE", "/users/-7", &m) == 200);
    FERRY_CHECK (m.route == edge_routes_at (t, 3));
    FERRY_CHECK (edge_routes_match (t, "GET", "/users", &m) == 200);
    FERRY_CHECK (m.route == edge_routes_at (t, 1) && m.nparams == 0);
    FERRY_CHECK (edge_routes_match (t, "GET", "/", &m) == 200);
    FERRY_CHECK (m.route == edge_routes_at (t, 5));
    /*  A path parameter of the wrong type does not match: 404.  */
    FERRY_CHECK (edge_routes_match (t, "GET", "/users/abc", &m) == 404);
    FERRY_CHECK (edge_routes_match (t, "GET", "/users/99999999999999999999",
                                    &m)
                 == 404);
    FERRY_CHECK (edge_routes_match (t, "GET", "/users/", &m) == 404);
    FERRY_CHECK (edge_routes_match (t, "GET", "/users/1/x", &m) == 404);
    FERRY_CHECK (edge_routes_match (t, "GET", "/nope", &m) == 404);
    FERRY_CHECK (edge_routes_match (t, "GET", "", &m) == 404);
    /*  Wrong method: 405 with every method of the path.  */
    FERRY_CHECK (edge_routes_match (t, "PUT", "/users", &m) == 405);
    FERRY_CHECK (strcmp (m.allow, "GET, HEAD, POST") == 0);
    FERRY_CHECK (edge_routes_match (t, "POST", "/users/5", &m) == 405);
    FERRY_CHECK (strcmp (m.allow, "GET, HEAD, DELETE") == 0);
    FERRY_CHECK (m.route == NULL);
    /*  A uuid in any case, and a string segment.  */
    FERRY_CHECK (edge_routes_match (
                     t, "GET",
                     "/items/0F8FAD5B-D9CB-469F-A165-70867728950E/tags/red", &m)
                 == 200);
    FERRY_CHECK (m.nparams == 2 && m.params[1].len == 3);
    FERRY_CHECK (edge_routes_match (t, "GET", "/items/0f8fad5b/tags/red", &m)
                 == 404);
    edge_routes_destroy (&t);
    return 0;
}

static const char *
s_query_lookup (void *ctx, const char *name)
{
    const char **kv = ctx;
    for (size_t i = 0; kv[i]; i += 2)
        if (strcmp (kv[i], name) == 0)
            return kv[i + 1];
    return NULL;
}

/*  Unpacks buf and checks that the map has count entries.  */
static bool
s_unpack (msgpack_sbuffer *buf, msgpack_unpacked *u, uint32_t count)
{
    msgpack_unpacked_init (u);
    size_t off = 0;
    if (msgpack_unpack_next (u, buf->data, buf->size, &off)
        != MSGPACK_UNPACK_SUCCESS)
        return false;
    return off == buf->size && u->data.type == MSGPACK_OBJECT_MAP
           && u->data.via.map.size == count;
}

static const msgpack_object *
s_map_get (const msgpack_object *map, const char *key)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR
            && kv->key.via.str.size == strlen (key)
            && memcmp (kv->key.via.str.ptr, key, kv->key.via.str.size) == 0)
            return &kv->val;
    }
    return NULL;
}

int
edge_routes_args_test (bool verbose)
{
    if (verbose)
        printf ("# typed path and query parameters to a msgpack map\n");
    edge_routes_t *t = edge_routes_new ();
    char err[256];
    edge_route_t *r = s_add (t, "GET /o/{id:int}/{u:uuid}/{s}");
    FERRY_CHECK (r);
    FERRY_CHECK (edge_route_add_query (r, "limit", EDGE_PARAM_INT, false, err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (edge_route_add_query (r, "ratio", EDGE_PARAM_NUMBER, true,
                                       err, sizeof err)
                 == 0);
    FERRY_CHECK (edge_route_add_query (r, "flag", EDGE_PARAM_BOOL, false, err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (edge_route_add_query (r, "name", EDGE_PARAM_STRING, false,
                                       err, sizeof err)
                 == 0);
    edge_match_t m;
    const char *path = "/o/-12/0F8FAD5B-D9CB-469F-A165-70867728950E/hello";
    FERRY_CHECK (edge_routes_match (t, "GET", path, &m) == 200);

    const char *q1[] = {"ratio", "2.5", "flag", "true", "limit", "10",
                        "unknown", "ignored", NULL};
    msgpack_sbuffer buf;
    msgpack_sbuffer_init (&buf);
    FERRY_CHECK (edge_route_pack_args (&m, s_query_lookup, q1, &buf, err,
                                       sizeof err)
                 == 0);
    msgpack_unpacked u;
    FERRY_CHECK (s_unpack (&buf, &u, 6));
    const msgpack_object *v = s_map_get (&u.data, "id");
    FERRY_CHECK (v && v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER
                 && v->via.i64 == -12);
    v = s_map_get (&u.data, "u");
    FERRY_CHECK (v && v->type == MSGPACK_OBJECT_STR
                 && memcmp (v->via.str.ptr, "0f8fad5b-d9cb", 13) == 0);
    v = s_map_get (&u.data, "s");
    FERRY_CHECK (v && v->type == MSGPACK_OBJECT_STR && v->via.str.size == 5);
    v = s_map_get (&u.data, "ratio");
    FERRY_CHECK (v && v->type == MSGPACK_OBJECT_FLOAT64
                 && v->via.f64 == 2.5);
    v = s_map_get (&u.data, "flag");
    FERRY_CHECK (v && v->type == MSGPACK_OBJECT_BOOLEAN && v->via.boolean);
    v = s_map_get (&u.data, "limit");
    FERRY_CHECK (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER
                 && v->via.u64 == 10);
    FERRY_CHECK (s_map_get (&u.data, "unknown") == NULL);
    FERRY_CHECK (s_map_get (&u.data, "name") == NULL);
    msgpack_unpacked_destroy (&u);

    /*  Errors name the parameter and leave the buffer as it was.  */
    const char *q2[] = {"ratio", "2.5", "limit", "ten", NULL};
    msgpack_sbuffer_clear (&buf);
    FERRY_CHECK (edge_route_pack_args (&m, s_query_lookup, q2, &buf, err,
                                       sizeof err)
                 == 400);
    FERRY_CHECK (strstr (err, "'limit'") && strstr (err, "int"));
    FERRY_CHECK (buf.size == 0);
    const char *q3[] = {"limit", "1", NULL};
    FERRY_CHECK (edge_route_pack_args (&m, s_query_lookup, q3, &buf, err,
                                       sizeof err)
                 == 400);
    FERRY_CHECK (strstr (err, "'ratio'") && strstr (err, "required"));
    const char *q4[] = {"ratio", "nan", NULL};
    FERRY_CHECK (edge_route_pack_args (&m, s_query_lookup, q4, &buf, err,
                                       sizeof err)
                 == 400);
    const char *q5[] = {"ratio", " 1", NULL};
    FERRY_CHECK (edge_route_pack_args (&m, s_query_lookup, q5, &buf, err,
                                       sizeof err)
                 == 400);
    const char *q6[] = {"ratio", "1e3", "flag", "yes", NULL};
    FERRY_CHECK (edge_route_pack_args (&m, s_query_lookup, q6, &buf, err,
                                       sizeof err)
                 == 400);
    FERRY_CHECK (strstr (err, "'flag'"));
    const char *q7[] = {"ratio", "1e3", "flag", "0", "name", "x y", NULL};
    FERRY_CHECK (edge_route_pack_args (&m, s_query_lookup, q7, &buf, err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (s_unpack (&buf, &u, 6));
    v = s_map_get (&u.data, "flag");
    FERRY_CHECK (v && v->type == MSGPACK_OBJECT_BOOLEAN && !v->via.boolean);
    msgpack_unpacked_destroy (&u);

    /*  No query string at all, and a route without parameters: {}.  */
    FERRY_CHECK (s_add (t, "GET /plain"));
    FERRY_CHECK (edge_routes_match (t, "GET", "/plain", &m) == 200);
    msgpack_sbuffer_clear (&buf);
    FERRY_CHECK (edge_route_pack_args (&m, NULL, NULL, &buf, err, sizeof err)
                 == 0);
    FERRY_CHECK (s_unpack (&buf, &u, 0));
    msgpack_unpacked_destroy (&u);
    msgpack_sbuffer_destroy (&buf);
    edge_routes_destroy (&t);
    return 0;
}

int
edge_routes_kafka_test (bool verbose)
{
    if (verbose)
        printf ("# Kafka routes: default and custom topic, message key\n");
    edge_routes_t *t = edge_routes_new ();
    char err[256];
    edge_route_t *z = s_add (t, "GET /z/{id:int}");
    edge_route_t *a = s_add (t, "GET /a/{id:int}/{name}");
    edge_route_t *b = s_add (t, "POST /b");
    FERRY_CHECK (z && a && b);
    FERRY_CHECK (edge_route_transport (z) == EDGE_TRANSPORT_ZMQ);
    FERRY_CHECK (!edge_route_topic (z));

    FERRY_CHECK (edge_route_set_kafka (a, NULL, "name", err, sizeof err)
                 == 0);
    FERRY_CHECK (edge_route_transport (a) == EDGE_TRANSPORT_KAFKA);
    FERRY_CHECK (strcmp (edge_route_topic (a), "ferry.app.requests") == 0);
    FERRY_CHECK (strcmp (edge_route_key (a), "name") == 0);

    /*  A bad topic or an unknown key leaves the route as it was.  */
    FERRY_CHECK (edge_route_set_kafka (b, "bad topic", NULL, err, sizeof err)
                 == -1);
    FERRY_CHECK (strstr (err, "not a Kafka topic name"));
    FERRY_CHECK (edge_route_set_kafka (b, NULL, "tenant", err, sizeof err)
                 == -1);
    FERRY_CHECK (strstr (err, "key 'tenant'"));
    FERRY_CHECK (edge_route_transport (b) == EDGE_TRANSPORT_ZMQ);
    FERRY_CHECK (edge_route_add_query (b, "tenant", EDGE_PARAM_STRING, false,
                                       err, sizeof err)
                 == 0);
    FERRY_CHECK (edge_route_set_kafka (b, "orders.in", "tenant", err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (strcmp (edge_route_topic (b), "orders.in") == 0);

    /*  The key's value: a path parameter, a query parameter, or none.  */
    edge_match_t m;
    size_t len = 0;
    FERRY_CHECK (edge_routes_match (t, "GET", "/a/7/bob", &m) == 200);
    const char *v = edge_route_key_value (&m, NULL, NULL, &len);
    FERRY_CHECK (v && len == 3 && memcmp (v, "bob", 3) == 0);
    FERRY_CHECK (edge_routes_match (t, "POST", "/b", &m) == 200);
    const char *q[] = {"tenant", "acme", NULL};
    v = edge_route_key_value (&m, s_query_lookup, q, &len);
    FERRY_CHECK (v && len == 4 && memcmp (v, "acme", 4) == 0);
    const char *none[] = {NULL};
    FERRY_CHECK (!edge_route_key_value (&m, s_query_lookup, none, &len));
    FERRY_CHECK (edge_routes_match (t, "GET", "/z/1", &m) == 200);
    FERRY_CHECK (!edge_route_key_value (&m, s_query_lookup, q, &len));
    edge_routes_destroy (&t);
    return 0;
}

int
edge_routes_async_test (bool verbose)
{
    if (verbose)
        printf ("# async routes: mode, async, async_after\n");
    edge_routes_t *t = edge_routes_new ();
    char err[256];
    edge_route_t *s = s_add (t, "GET /s");
    edge_route_t *a = s_add (t, "POST /a");
    edge_route_t *b = s_add (t, "POST /b");
    FERRY_CHECK (s && a && b);
    /*  The default: sync, no 202 ever.  */
    FERRY_CHECK (edge_route_mode (s) == EDGE_MODE_SYNC);
    FERRY_CHECK (!edge_route_async (s) && !edge_route_uses_jobs (s));
    FERRY_CHECK (edge_route_async_after_ms (s) == 0);
    FERRY_CHECK (edge_route_set_async (a, EDGE_MODE_ASYNC, false, 0, err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (edge_route_async (a) && edge_route_uses_jobs (a));
    FERRY_CHECK (edge_route_set_async (b, EDGE_MODE_SYNC, true, 1000, err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (edge_route_async (b) && edge_route_async_after_ms (b) == 1000);
    FERRY_CHECK (edge_route_set_async (s, EDGE_MODE_SYNC, false, 2000, err,
                                       sizeof err)
                 == 0);
    FERRY_CHECK (!edge_route_async (s) && edge_route_uses_jobs (s));
    /*  A budget on an async route, or one not below the timeout (5 s).  */
    FERRY_CHECK (edge_route_set_async (a, EDGE_MODE_ASYNC, false, 1000, err,
                                       sizeof err)
                 == -1);
    FERRY_CHECK (strstr (err, "sync mode"));
    FERRY_CHECK (edge_route_set_async (b, EDGE_MODE_SYNC, false, 5000, err,
                                       sizeof err)
                 == -1);
    FERRY_CHECK (strstr (err, "shorter than the route's timeout"));
    FERRY_CHECK (edge_route_async_after_ms (b) == 1000);
    edge_routes_destroy (&t);
    return 0;
}

/*  worker_ops.c: operations from config (statements, parameters, result
    modes) and the binding of request arguments to statement parameters.

    The main thread builds one worker_ops_t per pool at start, and every
    config error is found here, before any actor runs, naming file, line
    and key.  Afterwards the set is immutable and the pool's actors share
    it without locks.  Request data only ever becomes parameter values:
    the SQL text comes from config alone.  */

#include "ferry.h"
#include "proto.h"
#include "worker_ops.h"

#include <stdlib.h>
#include <string.h>

struct _worker_ops_t {
    size_t size;       /* operations */
    worker_op_t *ops;
    size_t steps;      /* steps across all operations */
};

static int s_op_read (worker_ops_t *self, ferry_config_t *config,
                      const ferry_cnode_t *node, worker_op_t *op);
static int s_step_read (worker_ops_t *self, ferry_config_t *config,
                        const ferry_cnode_t *node, worker_step_t *step,
                        bool in_steps);
static void s_step_clear (worker_step_t *step);
static bool s_name_valid (const char *s, size_t len);
static const msgpack_object *s_map_get (const msgpack_object *map,
                                        const char *key);

worker_ops_t *
worker_ops_new (ferry_config_t *config, const ferry_cnode_t *node)
{
    if (!node || ferry_cnode_type (node) != FERRY_CNODE_MAP
        || ferry_cnode_size (node) == 0) {
        ferry_config_fail (config, node,
                           "expected a map of one or more operations");
        return NULL;
    }
    worker_ops_t *self = ferry_calloc (1, sizeof *self);
    size_t n = ferry_cnode_size (node);
    self->ops = ferry_calloc (n, sizeof *self->ops);
    for (size_t i = 0; i < n; i++) {
        const ferry_cnode_t *child = ferry_cnode_child (node, i);
        self->size = i + 1;
        if (s_op_read (self, config, child, &self->ops[i])) {
            worker_ops_destroy (&self);
            return NULL;
        }
    }
    return self;
}

void
worker_ops_destroy (worker_ops_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    worker_ops_t *self = *self_p;
    for (size_t i = 0; i < self->size; i++) {
        worker_op_t *op = &self->ops[i];
        for (size_t s = 0; s < op->nsteps; s++)
            s_step_clear (&op->steps[s]);
        free (op->steps);
        free (op->name);
    }
    free (self->ops);
    free (self);
    *self_p = NULL;
}

const worker_op_t *
worker_ops_find (const worker_ops_t *self, const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < self->size; i++)
        if (strcmp (self->ops[i].name, name) == 0)
            return &self->ops[i];
    return NULL;
}

size_t
worker_ops_size (const worker_ops_t *self)
{
    return self->size;
}

size_t
worker_ops_steps (const worker_ops_t *self)
{
    return self->steps;
}

int
worker_param_parse (const char *spec, worker_param_t *out, char *err,
                    size_t errlen)
{
    memset (out, 0, sizeof *out);
    const char *colon = strchr (spec, ':');
    /*  "$body" is the whole body, not a field of it (worker_step_bind).  */
    bool whole = colon && (size_t) (colon - spec) == strlen (WORKER_PARAM_BODY)
                 && strncmp (spec, WORKER_PARAM_BODY, (size_t) (colon - spec))
                        == 0;
    if (!colon || (!whole && !s_name_valid (spec, (size_t) (colon - spec)))) {
        snprintf (err, errlen,
                  "parameter '%s': expected name:type or name:type=default",
                  spec);
        return -1;
    }
    const char *eq = strchr (colon + 1, '=');
    size_t tlen = eq ? (size_t) (eq - colon - 1) : strlen (colon + 1);
    char type[32];
    if (tlen == 0 || tlen >= sizeof type) {
        snprintf (err, errlen, "parameter '%s': missing type", spec);
        return -1;
    }
    memcpy (type, colon + 1, tlen);
    type[tlen] = '\0';
    if (worker_type_parse (type, &out->type)) {
        snprintf (err, errlen,
                  "parameter '%s': unknown type '%s' (int2, int4, int8, "
                  "float4, float8, numeric, bool, text, json, jsonb, "
                  "timestamptz, timestamp, date, uuid, bytea)",
                  spec, type);
        return -1;
    }
    if (eq) {
        out->has_default = true;
        if (strcmp (eq + 1, "null") != 0) {
            char why[128];
            if (worker_param_default_check (out->type, eq + 1, why,
                                            sizeof why)) {
                snprintf (err, errlen, "parameter '%s': %s", spec, why);
                return -1;
            }
            out->default_text = ferry_strdup (eq + 1);
        }
    }
    out->name = ferry_strndup (spec, (size_t) (colon - spec));
    return 0;
}

void
worker_param_clear (worker_param_t *param)
{
    free (param->name);
    free (param->default_text);
    memset (param, 0, sizeof *param);
}

int
worker_step_bind (const worker_step_t *step, const msgpack_object *args,
                  const msgpack_object *body, char **values, char *err,
                  size_t errlen)
{
    for (size_t i = 0; i < step->nparams; i++) {
        const worker_param_t *p = &step->params[i];
        const msgpack_object *v;
        if (strcmp (p->name, WORKER_PARAM_BODY) == 0)
            v = body && body->type != MSGPACK_OBJECT_NIL ? body : NULL;
        else if (!(v = s_map_get (args, p->name)))
            v = s_map_get (body, p->name);
        char why[96];
        if (v) {
            if (worker_param_text (p->type, v, &values[i], why, sizeof why)) {
                snprintf (err, errlen, "parameter '%s' %s", p->name, why);
                for (size_t j = 0; j < i; j++)
                    free (values[j]);
                return -1;
            }
        }
        else if (p->has_default)
            values[i] = p->default_text ? ferry_strdup (p->default_text)
                                        : NULL;
        else {
            snprintf (err, errlen, "missing parameter '%s'", p->name);
            for (size_t j = 0; j < i; j++)
                free (values[j]);
            return -1;
        }
    }
    return 0;
}

void
worker_step_values_free (const worker_step_t *step, char **values)
{
    for (size_t i = 0; i < step->nparams; i++) {
        free (values[i]);
        values[i] = NULL;
    }
}

/* ---- helpers ------------------------------------------------------------ */

static int
s_op_read (worker_ops_t *self, ferry_config_t *config,
           const ferry_cnode_t *node, worker_op_t *op)
{
    const char *name = ferry_cnode_key (node);
    if (!name || !s_name_valid (name, strlen (name)))
        return ferry_config_fail (config, node,
                                  "operation names are [A-Za-z0-9_.-]{1,64}");
    op->name = ferry_strdup (name);
    if (ferry_cnode_type (node) != FERRY_CNODE_MAP)
        return ferry_config_fail (config, node, "expected a map");
    int64_t status;
    if (ferry_config_int (config, node, "status", 200, 299, 200, &status))
        return -1;
    op->status = (unsigned) status;

    const ferry_cnode_t *steps = ferry_config_node (config, node, "steps");
    const ferry_cnode_t *sql = ferry_config_node (config, node, "sql");
    if (steps && sql)
        return ferry_config_fail (config, node,
                                  "give either sql or steps, not both");
    if (!steps) {
        op->steps = ferry_calloc (1, sizeof *op->steps);
        op->nsteps = 1;
        return s_step_read (self, config, node, &op->steps[0], false);
    }
    if (ferry_cnode_type (steps) != FERRY_CNODE_SEQ
        || ferry_cnode_size (steps) == 0)
        return ferry_config_fail (config, steps,
                                  "expected a list of one or more steps");
    size_t n = ferry_cnode_size (steps);
    op->steps = ferry_calloc (n, sizeof *op->steps);
    for (size_t i = 0; i < n; i++) {
        op->nsteps = i + 1;
        const ferry_cnode_t *item = ferry_cnode_child (steps, i);
        if (ferry_cnode_type (item) != FERRY_CNODE_MAP)
            return ferry_config_fail (config, item, "expected a map");
        if (s_step_read (self, config, item, &op->steps[i], true))
            return -1;
    }
    return 0;
}

/*  Reads sql, params, result (and not_found inside steps) from node.  */
static int
s_step_read (worker_ops_t *self, ferry_config_t *config,
             const ferry_cnode_t *node, worker_step_t *step, bool in_steps)
{
    step->index = self->steps++;
    snprintf (step->stmt, sizeof step->stmt, "ferry_%zu", step->index);
    step->not_found_status = 404;

    const ferry_cnode_t *sql = ferry_config_node (config, node, "sql");
    const char *text = sql ? ferry_cnode_value (sql) : NULL;
    if (!sql)
        return ferry_config_fail (config, node, "missing sql");
    if (!text || !*text)
        return ferry_config_fail (config, sql, "expected an SQL statement");
    step->sql = ferry_strdup (text);

    const char *result;
    if (ferry_config_str (config, node, "result", NULL, &result))
        return -1;
    if (!result)
        return ferry_config_fail (config, node,
                                  "missing result (one, many or exec)");
    if (strcmp (result, "one") == 0)
        step->result = WORKER_RESULT_ONE;
    else if (strcmp (result, "many") == 0)
        step->result = WORKER_RESULT_MANY;
    else if (strcmp (result, "exec") == 0)
        step->result = WORKER_RESULT_EXEC;
    else
        return ferry_config_fail (config,
                                  ferry_config_node (config, node, "result"),
                                  "expected one, many or exec");

    const ferry_cnode_t *params = ferry_config_node (config, node, "params");
    if (params) {
        if (ferry_cnode_type (params) != FERRY_CNODE_SEQ)
            return ferry_config_fail (config, params,
                                      "expected a list of name:type");
        size_t n = ferry_cnode_size (params);
        step->params = ferry_calloc (n ? n : 1, sizeof *step->params);
        step->oids = ferry_calloc (n ? n : 1, sizeof *step->oids);
        for (size_t i = 0; i < n; i++) {
            const ferry_cnode_t *item = ferry_cnode_child (params, i);
            const char *spec = ferry_cnode_value (item);
            char err[256];
            if (!spec)
                return ferry_config_fail (config, item,
                                          "expected name:type");
            if (worker_param_parse (spec, &step->params[i], err, sizeof err))
                return ferry_config_fail (config, item, "%s", err);
            step->nparams = i + 1;
            step->oids[i] = worker_type_oid (step->params[i].type);
            for (size_t j = 0; j < i; j++)
                if (strcmp (step->params[j].name, step->params[i].name) == 0)
                    return ferry_config_fail (config, item,
                                              "parameter '%s' appears twice",
                                              step->params[i].name);
        }
    }

    const ferry_cnode_t *nf = ferry_config_node (config, node, "not_found");
    if (nf) {
        if (!in_steps || step->result != WORKER_RESULT_ONE)
            return ferry_config_fail (config, nf,
                                      "not_found belongs to a step whose "
                                      "result is one");
        int64_t status;
        const char *detail;
        if (ferry_config_int (config, nf, "status", 400, 599, 404, &status)
            || ferry_config_str (config, nf, "detail", NULL, &detail))
            return -1;
        step->not_found_status = (unsigned) status;
        if (detail)
            step->not_found_detail = ferry_strdup (detail);
    }
    return 0;
}

static void
s_step_clear (worker_step_t *step)
{
    for (size_t i = 0; i < step->nparams; i++)
        worker_param_clear (&step->params[i]);
    free (step->params);
    free (step->oids);
    free (step->sql);
    free (step->not_found_detail);
}

static bool
s_name_valid (const char *s, size_t len)
{
    if (len == 0 || len > FERRY_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
              || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

/*  The value under a string key of a msgpack map, or NULL.  */
static const msgpack_object *
s_map_get (const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t klen = strlen (key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen
            && memcmp (k->via.str.ptr, key, klen) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* ---- tests -------------------------------------------------------------- */

int
worker_ops_param_test (bool verbose)
{
    (void) verbose;
    worker_param_t p;
    char err[256];
    FERRY_CHECK (worker_param_parse ("limit:int4=20", &p, err, sizeof err)
                 == 0);
    FERRY_CHECK (strcmp (p.name, "limit") == 0 && p.type == WORKER_T_INT4);
    FERRY_CHECK (p.has_default && strcmp (p.default_text, "20") == 0);
    worker_param_clear (&p);
    FERRY_CHECK (worker_param_parse ("id:int8=null", &p, err, sizeof err)
                 == 0);
    FERRY_CHECK (p.has_default && p.default_text == NULL);
    worker_param_clear (&p);
    FERRY_CHECK (worker_param_parse ("email:text", &p, err, sizeof err) == 0);
    FERRY_CHECK (!p.has_default && p.type == WORKER_T_TEXT);
    worker_param_clear (&p);
    FERRY_CHECK (worker_param_parse ("note:text=", &p, err, sizeof err) == 0);
    FERRY_CHECK (p.has_default && strcmp (p.default_text, "") == 0);
    worker_param_clear (&p);
    FERRY_CHECK (worker_param_parse ("id", &p, err, sizeof err) == -1);
    FERRY_CHECK (worker_param_parse (":int8", &p, err, sizeof err) == -1);
    FERRY_CHECK (worker_param_parse ("id:", &p, err, sizeof err) == -1);
    FERRY_CHECK (worker_param_parse ("id:integer", &p, err, sizeof err)
                 == -1);
    FERRY_CHECK (strstr (err, "unknown type 'integer'"));
    FERRY_CHECK (worker_param_parse ("limit:int4=many", &p, err, sizeof err)
                 == -1);
    FERRY_CHECK (worker_param_parse ("b a:int4", &p, err, sizeof err) == -1);
    return 0;
}

static const char s_yaml_good[]
    = "pools:\n"
      "  app:\n"
      "    operations:\n"
      "      get_user:\n"
      "        sql: SELECT id FROM users WHERE id = $1\n"
      "        params: [id:int8]\n"
      "        result: one\n"
      "      create_order:\n"
      "        steps:\n"
      "          - sql: SELECT 1 FROM users WHERE id = $1\n"
      "            params: [user_id:int8]\n"
      "            result: one\n"
      "            not_found: {status: 422, detail: user does not exist}\n"
      "          - sql: INSERT INTO orders (user_id) VALUES ($1)\n"
      "            params: [user_id:int8]\n"
      "            result: exec\n"
      "        status: 201\n";

/*  Parses yaml and reads pools.app.operations; returns the error text
    (static buffer) or NULL on success.  */
static const char *
s_config_error (const char *yaml, worker_ops_t **ops_p)
{
    static char msg[512];
    char err[256];
    ferry_config_t *config
        = ferry_config_parse (yaml, strlen (yaml), "t.yaml", err, sizeof err);
    if (!config) {
        snprintf (msg, sizeof msg, "parse: %s", err);
        return msg;
    }
    worker_ops_t *ops = worker_ops_new (
        config, ferry_config_node (config, NULL, "pools.app.operations"));
    const char *rc = NULL;
    if (!ops) {
        snprintf (msg, sizeof msg, "%s", ferry_config_error (config));
        rc = msg;
    }
    if (ops_p)
        *ops_p = ops;
    else
        worker_ops_destroy (&ops);
    ferry_config_destroy (&config);
    return rc;
}

int
worker_ops_config_test (bool verbose)
{
    worker_ops_t *ops = NULL;
    const char *e = s_config_error (s_yaml_good, &ops);
    if (e)
        fprintf (stderr, "# %s\n", e);
    FERRY_CHECK (e == NULL && ops);
    FERRY_CHECK (worker_ops_size (ops) == 2 && worker_ops_steps (ops) == 3);
    const worker_op_t *op = worker_ops_find (ops, "create_order");
    FERRY_CHECK (op && op->nsteps == 2 && op->status == 201);
    FERRY_CHECK (op->steps[0].not_found_status == 422);
    FERRY_CHECK (strcmp (op->steps[0].not_found_detail,
                         "user does not exist") == 0);
    FERRY_CHECK (op->steps[1].result == WORKER_RESULT_EXEC);
    FERRY_CHECK (strcmp (op->steps[1].stmt, "ferry_2") == 0);
    op = worker_ops_find (ops, "get_user");
    FERRY_CHECK (op && op->nsteps == 1 && op->status == 200);
    FERRY_CHECK (op->steps[0].oids[0] == WORKER_OID_INT8);
    FERRY_CHECK (op->steps[0].not_found_status == 404);
    FERRY_CHECK (worker_ops_find (ops, "nope") == NULL);
    worker_ops_destroy (&ops);
    worker_ops_destroy (&ops);

    static const struct {
        const char *yaml;
        const char *expect; /* substring of the error */
    } bad[] = {
        {"pools:\n  app:\n    operations:\n      x:\n        params: [a:int8]\n"
         "        result: one\n",
         "t.yaml:4"},
        {"pools:\n  app:\n    operations:\n      x:\n        sql: SELECT 1\n"
         "        result: all\n",
         "expected one, many or exec"},
        {"pools:\n  app:\n    operations:\n      x:\n        sql: SELECT 1\n",
         "missing result"},
        {"pools:\n  app:\n    operations:\n      x:\n        sql: SELECT $1\n"
         "        params: [a:integer]\n        result: one\n",
         "unknown type"},
        {"pools:\n  app:\n    operations:\n      x:\n        sql: SELECT $1\n"
         "        params: [\"a:int4=x\"]\n        result: one\n",
         "t.yaml:6"},
        {"pools:\n  app:\n    operations:\n      x:\n        sql: SELECT $1\n"
         "        params: [a:int4, a:int8]\n        result: one\n",
         "appears twice"},
        {"pools:\n  app:\n    operations:\n      x:\n        sql: SELECT 1\n"
         "        result: one\n        steps:\n          - sql: SELECT 1\n"
         "            result: one\n",
         "not both"},
        {"pools:\n  app:\n    operations:\n      x:\n        steps: []\n",
         "one or more steps"},
        {"pools:\n  app:\n    operations:\n      x:\n        sql: SELECT 1\n"
         "        result: many\n        status: 404\n",
         "status"},
        {"pools:\n  app:\n    operations: {}\n", "operations"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e = s_config_error (bad[i].yaml, NULL);
        if (verbose)
            printf ("# %s\n", e ? e : "(accepted)");
        FERRY_CHECK (e != NULL);
        if (!strstr (e, bad[i].expect))
            fprintf (stderr, "# case %zu: '%s' lacks '%s'\n", i, e,
                     bad[i].expect);
        FERRY_CHECK (strstr (e, bad[i].expect));
    }
    return 0;
}

int
worker_ops_bind_test (bool verbose)
{
    (void) verbose;
    worker_step_t step;
    memset (&step, 0, sizeof step);
    worker_param_t params[3];
    char err[256];
    FERRY_CHECK (worker_param_parse ("id:int8=null", &params[0], err,
                                     sizeof err) == 0);
    FERRY_CHECK (worker_param_parse ("name:text", &params[1], err,
                                     sizeof err) == 0);
    FERRY_CHECK (worker_param_parse ("limit:int4=20", &params[2], err,
                                     sizeof err) == 0);
    step.params = params;
    step.nparams = 3;

    /*  args {"name": "a"}, body {"name": "b", "limit": 5}: args win.  */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init (&sb);
    msgpack_packer pk;
    msgpack_packer_init (&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map (&pk, 1);
    msgpack_pack_str_with_body (&pk, "name", 4);
    msgpack_pack_str_with_body (&pk, "a", 1);
    msgpack_pack_map (&pk, 2);
    msgpack_pack_str_with_body (&pk, "name", 4);
    msgpack_pack_str_with_body (&pk, "b", 1);
    msgpack_pack_str_with_body (&pk, "limit", 5);
    msgpack_pack_int (&pk, 5);
    msgpack_pack_map (&pk, 1);
    msgpack_pack_str_with_body (&pk, "name", 4);
    msgpack_pack_map (&pk, 0);
    msgpack_unpacked a, b, c;
    msgpack_unpacked_init (&a);
    msgpack_unpacked_init (&b);
    msgpack_unpacked_init (&c);
    size_t off = 0;
    FERRY_CHECK (msgpack_unpack_next (&a, sb.data, sb.size, &off)
                 == MSGPACK_UNPACK_SUCCESS);
    FERRY_CHECK (msgpack_unpack_next (&b, sb.data, sb.size, &off)
                 == MSGPACK_UNPACK_SUCCESS);
    FERRY_CHECK (msgpack_unpack_next (&c, sb.data, sb.size, &off)
                 == MSGPACK_UNPACK_SUCCESS);

    char *values[3];
    FERRY_CHECK (worker_step_bind (&step, &a.data, &b.data, values, err,
                                   sizeof err) == 0);
    FERRY_CHECK (values[0] == NULL);
    FERRY_CHECK (strcmp (values[1], "a") == 0);
    FERRY_CHECK (strcmp (values[2], "5") == 0);
    worker_step_values_free (&step, values);

    FERRY_CHECK (worker_step_bind (&step, NULL, &b.data, values, err,
                                   sizeof err) == 0);
    FERRY_CHECK (strcmp (values[1], "b") == 0);
    worker_step_values_free (&step, values);

    FERRY_CHECK (worker_step_bind (&step, NULL, NULL, values, err,
                                   sizeof err) == -1);
    FERRY_CHECK (strcmp (err, "missing parameter 'name'") == 0);

    /*  A map where text belongs.  */
    FERRY_CHECK (worker_step_bind (&step, &c.data, NULL, values, err,
                                   sizeof err) == -1);
    FERRY_CHECK (strstr (err, "parameter 'name' must be a string"));

    /*  $body binds the whole body; absent, its default.  */
    worker_param_t whole;
    FERRY_CHECK (worker_param_parse ("$bod:jsonb", &whole, err, sizeof err)
                 == -1);
    FERRY_CHECK (worker_param_parse ("$body:jsonb=null", &whole, err,
                                     sizeof err) == 0);
    worker_step_t wstep = {.params = &whole, .nparams = 1};
    FERRY_CHECK (worker_step_bind (&wstep, &a.data, &b.data, values, err,
                                   sizeof err) == 0);
    FERRY_CHECK (values[0] && strstr (values[0], "\"limit\""));
    FERRY_CHECK (strstr (values[0], "\"name\""));
    worker_step_values_free (&wstep, values);
    FERRY_CHECK (worker_step_bind (&wstep, &a.data, NULL, values, err,
                                   sizeof err) == 0);
    FERRY_CHECK (values[0] == NULL);
    worker_param_clear (&whole);

    msgpack_unpacked_destroy (&a);
    msgpack_unpacked_destroy (&b);
    msgpack_unpacked_destroy (&c);
    msgpack_sbuffer_destroy (&sb);
    for (size_t i = 0; i < 3; i++)
        worker_param_clear (&params[i]);
    return 0;
}

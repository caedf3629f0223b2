/*  fuzz_config.c: libFuzzer target for the configuration parser.

    The input is YAML text, optionally followed by a NUL and command-line
    overrides, one "PATH=VALUE" per NUL-separated part (what --set and the
    per-daemon flags apply).  The text is parsed with ferry_config_parse,
    the overrides applied, then every node is walked and read with each
    typed getter, and the sections are loaded the way the daemons load
    them: broker settings, edge settings (with the route table) and each
    pool's operations.  Any of that may fail with a message; none of it
    may crash, leak or hit undefined behaviour.  */

#include "config.h"
#include "settings.h"
#include "edge_config.h"
#include "worker_ops.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/*  Deeper than any real configuration; keeps the walk's own stack small.  */
#define S_WALK_DEPTH 64

static void
s_fail (const char *what, const char *err)
{
    fprintf (stderr, "fuzz_config: %s: %s\n", what, err);
    abort ();
}

/*  Reads node and everything below it with every getter.  */
static void
s_walk (ferry_config_t *config, const ferry_cnode_t *node, size_t depth)
{
    if (!node || depth > S_WALK_DEPTH)
        return;
    (void) ferry_cnode_key (node);
    (void) ferry_cnode_line (node);
    const char *path = ferry_cnode_path (node);
    if (!path)
        s_fail ("ferry_cnode_path", "NULL path");
    if (ferry_cnode_type (node) == FERRY_CNODE_SCALAR) {
        const char *s;
        int64_t i;
        uint64_t u;
        bool b;
        if (!ferry_cnode_value (node))
            s_fail ("ferry_cnode_value", "scalar without text");
        (void) ferry_config_str (config, node, "", NULL, &s);
        (void) ferry_config_int (config, node, "", INT64_MIN, INT64_MAX, 0,
                                 &i);
        (void) ferry_config_bool (config, node, "", false, &b);
        (void) ferry_config_duration_ms (config, node, "", 0, INT64_MAX, 0,
                                         &i);
        (void) ferry_config_size (config, node, "", 0, UINT64_MAX, 0, &u);
        return;
    }
    size_t n = ferry_cnode_size (node);
    for (size_t i = 0; i < n; i++)
        s_walk (config, ferry_cnode_child (node, i), depth + 1);
}

/*  FUZZ_VERBOSE=1 in the environment prints why a section did not load
    (to check that the seeds reach the loaders at all).  */
static void
s_verbose (ferry_config_t *config, const char *section, bool failed)
{
    static int verbose = -1;
    if (verbose < 0)
        verbose = getenv ("FUZZ_VERBOSE") != NULL;
    if (verbose)
        fprintf (stderr, "fuzz_config: %s: %s\n", section,
                 failed ? ferry_config_error (config) : "loaded");
}

/*  Loads the sections the daemons read, as they read them.  */
static void
s_load_sections (ferry_config_t *config)
{
    broker_settings_t *broker = broker_settings_new ();
    s_verbose (config, "broker", broker_settings_load (broker, config) != 0);
    broker_settings_destroy (&broker);

    edge_settings_t *edge = edge_settings_load (config);
    s_verbose (config, "edge", edge == NULL);
    edge_settings_destroy (&edge);

    const ferry_cnode_t *pools = ferry_config_node (config, NULL, "pools");
    if (pools && ferry_cnode_type (pools) == FERRY_CNODE_MAP) {
        size_t n = ferry_cnode_size (pools);
        for (size_t i = 0; i < n; i++) {
            const ferry_cnode_t *ops = ferry_config_node (
                config, ferry_cnode_child (pools, i), "operations");
            if (!ops)
                continue;
            worker_ops_t *set = worker_ops_new (config, ops);
            s_verbose (config, "operations", set == NULL);
            worker_ops_destroy (&set);
        }
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    const char *text = (const char *) data;
    const uint8_t *nul = memchr (data, '\0', size);
    size_t yaml_len = nul ? (size_t) (nul - data) : size;

    char err[512];
    ferry_config_t *config = ferry_config_parse (text, yaml_len, "fuzz.yaml",
                                                 err, sizeof err);
    if (!config) {
        if (strlen (err) == 0)
            s_fail ("ferry_config_parse", "refused without a reason");
        config = ferry_config_new ();
    }
    if (nul) {
        /*  The overrides, each NUL-ended (the last one by our copy).  */
        size_t rest = size - yaml_len - 1;
        char *sets = malloc (rest + 1);
        if (!sets)
            abort ();
        memcpy (sets, nul + 1, rest);
        sets[rest] = '\0';
        for (char *a = sets; a < sets + rest + 1; a += strlen (a) + 1) {
            if (ferry_config_set (config, a)
                && strlen (ferry_config_error (config)) == 0)
                s_fail ("ferry_config_set", "refused without a reason");
        }
        free (sets);
    }
    s_load_sections (config);
    (void) ferry_config_check_unused (config, NULL);
    s_walk (config, ferry_config_root (config), 0);
    (void) ferry_config_source (config);
    ferry_config_destroy (&config);
    return 0;
}

/*  selftest.c: the unit test runner.  Runs every module test, or the ones
    named on the command line, and reports each as a TAP line so Automake
    counts them one by one.

    Usage: ferry-selftest [-v] [-l] [NAME...]   (NAME: "envelope" or
    "common/envelope")  */

#include "ferry.h"

#include <string.h>

typedef struct {
    const char *group;
    const ferry_test_t *tests;
} s_group_t;

static const s_group_t s_groups[] = {
    {"common", ferry_common_tests},
    {"broker", broker_tests},
    {"worker", worker_tests},
    {"edge", edge_tests},
};
#define GROUPS (sizeof s_groups / sizeof s_groups[0])

static bool
s_selected (const char *group, const char *name, int argc, char **argv,
            int first)
{
    if (first >= argc)
        return true;
    char full[128];
    snprintf (full, sizeof full, "%s/%s", group, name);
    for (int i = first; i < argc; i++)
        if (strcmp (argv[i], name) == 0 || strcmp (argv[i], full) == 0
            || strcmp (argv[i], group) == 0)
            return true;
    return false;
}

int
main (int argc, char **argv)
{
    bool verbose = false, list = false;
    int first = 1;
    for (; first < argc && argv[first][0] == '-'; first++) {
        if (strcmp (argv[first], "-v") == 0)
            verbose = true;
        else if (strcmp (argv[first], "-l") == 0)
            list = true;
        else {
            fprintf (stderr, "usage: %s [-v] [-l] [NAME...]\n", argv[0]);
            return 2;
        }
    }
    size_t planned = 0;
    for (size_t g = 0; g < GROUPS; g++)
        for (const ferry_test_t *t = s_groups[g].tests; t->name; t++)
            if (s_selected (s_groups[g].group, t->name, argc, argv, first)) {
                if (list)
                    printf ("%s/%s\n", s_groups[g].group, t->name);
                planned++;
            }
    if (list)
        return 0;
    if (planned == 0) {
        fprintf (stderr, "no test matches\n");
        return 2;
    }
    setvbuf (stdout, NULL, _IONBF, 0);
    printf ("1..%zu\n", planned);
    size_t n = 0, failed = 0;
    for (size_t g = 0; g < GROUPS; g++)
        for (const ferry_test_t *t = s_groups[g].tests; t->name; t++) {
            if (!s_selected (s_groups[g].group, t->name, argc, argv, first))
                continue;
            int rc = t->fn (verbose);
            n++;
            if (rc)
                failed++;
            printf ("%s %zu - %s/%s\n", rc ? "not ok" : "ok", n,
                    s_groups[g].group, t->name);
        }
    /*  Failures are in the TAP lines; a non-zero exit would count them twice. */
    (void) failed;
    return 0;
}

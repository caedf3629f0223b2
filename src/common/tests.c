/*  tests.c: the table of src/common's module tests for the unit runner
    (tests/unit/selftest.c).  */

#include "ferry.h"

int ferry_ids_test (bool verbose);
int ferry_parse_test (bool verbose);
int ferry_envelope_test (bool verbose);
int ferry_envelope_vectors_test (bool verbose);
int ferry_json_test (bool verbose);
int ferry_config_test (bool verbose);

const ferry_test_t ferry_common_tests[] = {
    {"ids", ferry_ids_test},
    {"parse", ferry_parse_test},
    {"envelope", ferry_envelope_test},
    {"envelope_vectors", ferry_envelope_vectors_test},
    {"json", ferry_json_test},
    {"config", ferry_config_test},
    {NULL, NULL},
};

/*  tests.c: the table of this component's module tests for the unit runner
    (tests/unit/selftest.c).  Each module keeps its test at its bottom.  */

#include "ferry.h"

const ferry_test_t worker_tests[] = {
    {NULL, NULL},
};

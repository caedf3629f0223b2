/*  tests.c: the table of this component's module tests for the unit runner
    (tests/unit/selftest.c).  Each module keeps its test at its bottom.  */

#include "ferry.h"
#include "worker_breaker.h"
#include "worker_dead.h"
#include "worker_jobs.h"
#include "worker_kafka.h"
#include "worker_ops.h"
#include "worker_pgerror.h"
#include "worker_pool.h"
#include "worker_reply.h"
#include "worker_values.h"

const ferry_test_t worker_tests[] = {
    {"pgerror", worker_pgerror_test},
    {"values_pack", worker_values_pack_test},
    {"values_param", worker_values_param_test},
    {"ops_param", worker_ops_param_test},
    {"ops_config", worker_ops_config_test},
    {"ops_bind", worker_ops_bind_test},
    {"pool_config", worker_pool_config_test},
    {"reply", worker_reply_test},
    {"kafka_config", worker_kafka_config_test},
    {"jobs_hash", worker_jobs_hash_test},
    {"jobs_capture", worker_jobs_capture_test},
    {"jobs_stored", worker_jobs_stored_test},
    {"jobs_config", worker_jobs_config_test},
    {"breaker", worker_breaker_test},
    {"breaker_config", worker_breaker_config_test},
    {"dead_req", worker_dead_req_test},
    {"dead_row", worker_dead_row_test},
    {NULL, NULL},
};

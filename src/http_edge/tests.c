/*  tests.c: the table of this component's module tests for the unit runner
    (tests/unit/selftest.c).  Each module keeps its test at its bottom.  */

#include "ferry.h"
#include "edge_clients.h"
#include "edge_config.h"
#include "edge_http.h"
#include "edge_jobs.h"
#include "edge_kafka.h"
#include "edge_loop.h"
#include "edge_routes.h"

const ferry_test_t edge_tests[] = {
    {"routes", edge_routes_test},
    {"routes_match", edge_routes_match_test},
    {"routes_args", edge_routes_args_test},
    {"routes_kafka", edge_routes_kafka_test},
    {"routes_async", edge_routes_async_test},
    {"http_head", edge_http_head_test},
    {"http_negotiation", edge_http_negotiation_test},
    {"http_problem", edge_http_problem_test},
    {"http_body", edge_http_body_test},
    {"http_envelope", edge_http_envelope_test},
    {"http_json", edge_http_json_test},
    {"http_prefer", edge_http_prefer_test},
    {"http_idempotency", edge_http_idempotency_test},
    {"http_job_id", edge_http_job_id_test},
    {"edge_config", edge_config_test},
    {"edge_clients", edge_clients_test},
    {"edge_kafka", edge_kafka_test},
    {"edge_jobs", edge_jobs_test},
    {"edge_loop", edge_loop_test},
    {NULL, NULL},
};

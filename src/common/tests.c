/*  tests.c: the table of src/common's module tests for the unit runner
    (tests/unit/selftest.c).  */

#include "ferry.h"

int ferry_ids_test (bool verbose);
int ferry_parse_test (bool verbose);
int ferry_envelope_test (bool verbose);
int ferry_envelope_check_test (bool verbose);
int ferry_envelope_problem_test (bool verbose);
int ferry_envelope_vectors_test (bool verbose);
int ferry_json_test (bool verbose);
int ferry_json_out_test (bool verbose);
int ferry_config_test (bool verbose);
int ferry_config_errors_test (bool verbose);
int ferry_config_units_test (bool verbose);
int ferry_config_set_test (bool verbose);
int ferry_config_unused_test (bool verbose);
int ferry_config_demo_test (bool verbose);
int ferry_config_cli_test (bool verbose);
int ferry_kafka_conf_test (bool verbose);
int ferry_kafka_produce_test (bool verbose);
int ferry_kafka_broker_down_test (bool verbose);
int ferry_kafka_retry_test (bool verbose);
int ferry_kafka_queue_full_test (bool verbose);
int ferry_kafka_flush_test (bool verbose);
int ferry_kafka_fatal_test (bool verbose);

const ferry_test_t ferry_common_tests[] = {
    {"ids", ferry_ids_test},
    {"parse", ferry_parse_test},
    {"envelope", ferry_envelope_test},
    {"envelope_check", ferry_envelope_check_test},
    {"envelope_problem", ferry_envelope_problem_test},
    {"envelope_vectors", ferry_envelope_vectors_test},
    {"json", ferry_json_test},
    {"json_out", ferry_json_out_test},
    {"config", ferry_config_test},
    {"config_errors", ferry_config_errors_test},
    {"config_units", ferry_config_units_test},
    {"config_set", ferry_config_set_test},
    {"config_unused", ferry_config_unused_test},
    {"config_demo", ferry_config_demo_test},
    {"config_cli", ferry_config_cli_test},
    {"kafka_conf", ferry_kafka_conf_test},
    {"kafka_produce", ferry_kafka_produce_test},
    {"kafka_broker_down", ferry_kafka_broker_down_test},
    {"kafka_retry", ferry_kafka_retry_test},
    {"kafka_queue_full", ferry_kafka_queue_full_test},
    {"kafka_flush", ferry_kafka_flush_test},
    {"kafka_fatal", ferry_kafka_fatal_test},
    {NULL, NULL},
};

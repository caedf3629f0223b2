/*  tests.c: the table of this component's module tests for the unit runner
    (tests/unit/selftest.c).  Each module keeps its test at its bottom.  */

#include "ferry.h"
#include "broker.h"
#include "service.h"

const ferry_test_t broker_tests[] = {
    {"service", broker_service_test},
    {"settings", broker_settings_test},
    {"dispatch", broker_dispatch_test},
    {"routing", broker_routing_test},
    {"credit", broker_credit_test},
    {"queue_full", broker_queue_full_test},
    {"ack", broker_ack_test},
    {"deadline", broker_deadline_test},
    {"no_worker", broker_no_worker_test},
    {"liveness", broker_liveness_test},
    {"unknown_worker", broker_unknown_worker_test},
    {"malformed", broker_malformed_test},
    {"worker_death", broker_worker_death_test},
    {"poison", broker_poison_test},
    {"drain", broker_drain_test},
    {"overload", broker_overload_test},
    {"inflight_expiry", broker_inflight_expiry_test},
    {"late_reply", broker_late_reply_test},
    {"duplicate_id", broker_duplicate_id_test},
    {"back", broker_back_test},
    {"attempt", broker_attempt_test},
    {"died", broker_died_test},
    {"isolation", broker_isolation_test},
    {"suspect_deadline", broker_suspect_deadline_test},
    {"process_isolation", broker_process_isolation_test},
    {"process_busy", broker_process_busy_test},
    {"process_reserve", broker_process_reserve_test},
    {"suspect_parallel", broker_suspect_parallel_test},
    {"status_json", broker_status_json_test},
    {NULL, NULL},
};

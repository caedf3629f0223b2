"""test_kafka_e2e.py: HTTP over Kafka end to end, nobody played by the test.

A real Apache Kafka broker (tests/kafka/kafka_broker.py), a real
PostgreSQL, ferry-broker, the app pool and ferry-edge (harness.Stack).
The edge gets GET /kafka/users/{id:int} with transport: kafka (service
app, operation get_user, keyed by id) beside the demo's ZeroMQ routes;
the app pool consumes ferry.app.requests with format: ferry.  The test
creates the request topic (auto-create is off on the test broker); the
edge creates its reply topic.  Checks: the Kafka route answers 200 with
the same body as GET /users/{id} over ZeroMQ, and a missing user 404 like
it; then the Kafka broker is stopped while everything runs, and within a
few seconds the Kafka route answers 503 (Retry-After: 1) in under a
second each time while the ZeroMQ route still answers 200.  Without a
broker every case reports SKIP with the reason; FERRY_KAFKA_REQUIRE=1
makes that a failure.  Prints TAP.
"""

import os
import sys
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "kafka"))
import harness  # noqa: E402
import kafka_broker  # noqa: E402
from harness import check, check_eq  # noqa: E402

REQUESTS = "ferry.app.requests"
REPLY_TOPIC = "ferry.replies.test-kafka-e2e"

# Spliced after the demo's routes: the Kafka variant of GET /users/{id},
# then edge.kafka (routes is the last key of edge:, so indent 2 continues
# edge:).
ROUTES = """
    - route: GET /kafka/users/{id:int}
      service: app
      operation: get_user
      transport: kafka
      key: id
      timeout: 5s
  kafka:
    properties: ["bootstrap.servers=%s"]
    reply_topic: %s
"""

# The app pool of etc/ferry.yaml also answers its request topic.
POOL_KAFKA = ("pools.app.kafka={properties: [\"bootstrap.servers=%s\"], "
              "topics: [{topic: %s, format: ferry}]}")

tap, broker, stack = harness.kafka_stack("ferry-kafka-e2e")


def kafka_ready(timeout=60.0):
    """Waits until /readyz says the edge's Kafka side is ready."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        stack.check_alive()
        r = harness.request(stack.http_port, "GET", "/readyz", timeout=5.0)
        last = r.describe()
        if r.status == 200 and r.json().get("kafka") is True:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise harness.TestFailure("Kafka side never ready: %s" % last)


def t_fetch():
    kafka_broker.fetch()


def t_setup():
    t0 = time.monotonic()
    broker.start()
    broker.create_topic(REQUESTS, 2)
    stack.start_postgres()
    stack.migrate()
    check(stack.migrate_error is None,
          "ferryctl migrate: %s" % stack.migrate_error)
    stack.load_users(10)
    stack.pg_ready = True
    stack.write_config(extra_routes=ROUTES % (broker.bootstrap, REPLY_TOPIC))
    stack.plan_ports()
    stack.start_broker()
    stack.start_daemon("worker-app", "worker", ["--pool", "app"],
                       sets=stack.sets + [POOL_KAFKA % (broker.bootstrap,
                                                        REQUESTS)])
    stack.start_worker("reports")
    stack.start_edge()
    stack.wait_http("/users/1", 200, 30.0)
    took = kafka_ready()
    tap.diag("Kafka %s; stack up in %.1f s, edge ready for Kafka %.1f s "
             "after its ZeroMQ side" % (broker.bootstrap,
                                        time.monotonic() - t0, took))


def t_get():
    for uid in (3, 7, 3):
        zmq = harness.request(stack.http_port, "GET", "/users/%d" % uid)
        check_eq(zmq.status, 200, "ZeroMQ route: " + zmq.describe())
        r = harness.request(stack.http_port, "GET", "/kafka/users/%d" % uid,
                            headers={"X-Request-Id": "e2e-get-%d" % uid},
                            timeout=15.0)
        check_eq(r.status, 200, "Kafka route: " + r.describe())
        check_eq(r.json(), zmq.json(), "body over Kafka vs over ZeroMQ")
        check_eq(r.header("X-Request-Id"), "e2e-get-%d" % uid,
                 "X-Request-Id")
    # The request went through PostgreSQL by way of the topic: the pool
    # kept one offset per request it answered.
    n = stack.psql("SELECT coalesce(sum(\"offset\"), 0) FROM "
                   "ferry.kafka_offsets WHERE topic = '%s'" % REQUESTS)
    check_eq(n, "3", "offsets kept for %s" % REQUESTS)


def t_missing():
    zmq = harness.request(stack.http_port, "GET", "/users/999999")
    harness.check_problem(zmq, 404, "ZeroMQ route")
    r = harness.request(stack.http_port, "GET", "/kafka/users/999999",
                        timeout=15.0)
    p = harness.check_problem(r, 404, "Kafka route")
    # The Kafka path names the step ("step 1: no such row") where the
    # ZeroMQ path does not; both say the row is missing.
    check(p["detail"].endswith(zmq.json()["detail"]),
          "detail %r vs ZeroMQ's %r" % (p["detail"], zmq.json()["detail"]))
    if p["detail"] != zmq.json()["detail"]:
        tap.diag("404 detail over Kafka %r, over ZeroMQ %r"
                 % (p["detail"], zmq.json()["detail"]))


def t_broker_down():
    check(broker.stop(), "the Kafka broker did not stop")
    t0 = time.monotonic()
    streak = 0
    seen = []
    # The edge learns that the cluster is gone from its probe (about once
    # a second) and its producer's errors; until then a request may wait
    # for its delivery report.  Then every answer must be a quick 503.
    while streak < 5:
        took = time.monotonic() - t0
        check(took < 20.0, "no streak of quick 503s within 20 s after the "
              "broker stopped: %s" % seen[-10:])
        r = harness.request(stack.http_port, "GET", "/kafka/users/3",
                            timeout=10.0)
        seen.append("%d in %.2f s" % (r.status, r.elapsed))
        if r.status == 503 and r.elapsed < 1.0:
            if streak == 0:
                first = took
            streak += 1
            harness.check_problem(r, 503, "Kafka route")
            check_eq(r.header("Retry-After"), "1", "Retry-After")
        else:
            streak = 0
            time.sleep(0.1)
    tap.diag("quick 503s from %.1f s after the broker stopped (answers: %s)"
             % (first, ", ".join(seen[:12])))
    r = harness.request(stack.http_port, "GET", "/users/3", timeout=5.0)
    check_eq(r.status, 200, "ZeroMQ route while Kafka is down: "
             + r.describe())
    r = harness.request(stack.http_port, "GET", "/readyz", timeout=5.0)
    check_eq(r.json().get("kafka"), False, "/readyz kafka")


def t_stop():
    # With the broker gone the pools' consumers cannot leave their group:
    # the worker still stops within its bounded close (a few seconds), so
    # a worker the harness had to SIGKILL is a failure like any other.
    problems = stack.stop_all()
    check(not problems, "\n".join(problems))


CASES = [
    ("fetch the Kafka jars", t_fetch),
    ("Kafka, PostgreSQL, ferry-broker, the app pool on its request topic "
     "and an edge with a Kafka route come up", t_setup),
    ("GET /kafka/users/{id} through the real broker: 200, same body as "
     "over ZeroMQ", t_get),
    ("a missing user over Kafka: 404 like over ZeroMQ", t_missing),
    ("Kafka broker stopped mid-run: quick 503s, ZeroMQ route still 200",
     t_broker_down),
    ("no sanitizer reports / clean exits", t_stop),
]

harness.run_cases(tap, CASES, kafka_broker.Unavailable,
                  (kafka_broker.BrokerError,))

"""test_kafka_http.py: HTTP routes over Kafka (transport: kafka).

A real Apache Kafka broker (tests/kafka/kafka_broker.py) and the usual
stack (PostgreSQL, ferry-broker, the app pool, ferry-edge).  The edge gets
two routes over Kafka besides the demo's ZeroMQ routes.  Checks: an edge
whose Kafka bootstrap points at a port where nothing listens answers a
Kafka route 503 within a second while its ZeroMQ route answers 200; a
synchronous request through the real broker: the test plays the worker
with kcat (reads the request topic, checks the envelope and the headers,
produces the reply envelope to the edge's reply topic with the ferry-msg-id
header) and the HTTP client gets that reply.  When no broker can be had
here (Maven Central unreachable) every case reports SKIP with the reason;
FERRY_KAFKA_REQUIRE=1 makes that a failure.  Prints TAP.
"""

import os
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "kafka"))
import harness  # noqa: E402
import kafka_broker  # noqa: E402
import msgpack  # noqa: E402
from harness import check, check_eq  # noqa: E402

REPLY_TOPIC = "ferry.replies.test-kafka-http"

# Spliced after the demo's routes: two Kafka routes, then edge.kafka (the
# routes list is the last key of edge:, so indent 2 continues edge:).
ROUTES = """
    - route: GET /k/users/{id:int}
      service: app
      operation: get_user
      transport: kafka
      key: id
      timeout: 5s
    - route: GET /k/other
      service: other
      operation: op
      transport: kafka
      topic: ferry.test.other
  kafka:
    properties: ["bootstrap.servers=%s"]
    reply_topic: %s
"""

tap, broker, stack = harness.kafka_stack("ferry-kafka-http-it")
state = {}


def kcat(args, stdin=None, timeout=60):
    try:
        p = subprocess.run(["kcat", "-b", broker.bootstrap] + args,
                           input=stdin, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise harness.TestFailure("kcat %s took longer than %d s"
                                  % (" ".join(args), timeout))
    check_eq(p.returncode, 0, "kcat status (%s)"
             % p.stderr.decode(errors="replace").strip()[-500:])
    return p


def start_edge(name, bootstrap):
    """An edge of its own on a free port with the Kafka routes."""
    main_config = stack.config
    path = stack.write_config(ROUTES % (bootstrap, REPLY_TOPIC),
                              name=name + ".yaml")
    stack.config = main_config
    port = harness.free_port()
    sets = [s for s in stack.sets if not s.startswith("edge.listen=")]
    sets.append("edge.listen=127.0.0.1:%d" % port)
    stack.start_daemon(name, "edge", config=path, sets=sets)
    stack.wait_http("/users/1", 200, 30.0, port=port)
    return port


def t_fetch():
    kafka_broker.fetch()


def t_setup():
    t0 = time.monotonic()
    broker.start()
    stack.start_postgres()
    stack.migrate()
    stack.load_users(10)
    stack.pg_ready = True
    stack.plan_ports()
    stack.start_broker()
    stack.start_worker("app")
    tap.diag("broker, PostgreSQL and worker up in %.1f s (%s)"
             % (time.monotonic() - t0, broker.bootstrap))


def t_down():
    dead = harness.free_port()
    port = start_edge("edge-nokafka", "127.0.0.1:%d" % dead)
    for path in ("/k/users/1", "/k/other"):
        r = harness.request(port, "GET", path, timeout=5.0)
        harness.check_problem(r, 503, path)
        check(r.elapsed < 1.0, "%s took %.2f s" % (path, r.elapsed))
        check_eq(r.header("Retry-After"), "1", "Retry-After")
    r = harness.request(port, "GET", "/users/1", timeout=5.0)
    check_eq(r.status, 200, "ZeroMQ route: " + r.describe())
    r = harness.request(port, "GET", "/readyz", timeout=5.0)
    check_eq(r.json().get("kafka"), False, "/readyz kafka")


def wait_kafka_ready(port, timeout=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = harness.request(port, "GET", "/readyz", timeout=5.0)
        # the demo's reports pool has no worker here: only Kafka's state
        if r.json().get("kafka") is True:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise harness.TestFailure("Kafka never ready: " + r.describe())


def t_up():
    # Request topics belong to the services (the broker here does not
    # create topics on first use).
    broker.create_topic("ferry.app.requests", 2)
    state["port"] = port = start_edge("edge-kafka", broker.bootstrap)
    took = wait_kafka_ready(port)
    tap.diag("edge ready for Kafka in %.1f s" % took)
    p = kcat(["-L", "-t", REPLY_TOPIC])
    check(REPLY_TOPIC in p.stdout.decode(), "the reply topic was not created")


def read_request(topic, timeout=30):
    """One message from topic: (headers dict, key, envelope dict)."""
    p = kcat(["-C", "-t", topic, "-o", "beginning", "-c", "1", "-e",
              "-f", "%h\\t%k\\t%S\\t%s"], timeout=timeout)
    out = p.stdout
    h, k, size, rest = out.split(b"\t", 3)
    value = rest[:int(size)]
    headers = dict(kv.split("=", 1) for kv in h.decode().split(",") if kv)
    return headers, k.decode(), msgpack.unpackb(value, raw=False)


def t_request_reply():
    port = state["port"]
    result = {}

    def client():
        result["r"] = harness.request(port, "GET", "/k/users/7",
                                      headers={"X-Request-Id": "kafka-rr-1"},
                                      timeout=15.0)
    th = threading.Thread(target=client)
    th.start()
    try:
        # kcat may start before the request is produced: retry.
        deadline = time.monotonic() + 10
        while True:
            try:
                headers, key, env = read_request("ferry.app.requests", 5)
                break
            except (harness.TestFailure, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        check_eq(env["kind"], "request", "kind")
        check_eq(env["svc"], "app", "svc")
        check_eq(env["op"], "get_user", "op")
        check_eq(env["args"], {"id": 7}, "args")
        check_eq(env["cid"], "kafka-rr-1", "cid")
        check_eq(env["rto"], REPLY_TOPIC, "rto")
        check_eq(key, "7", "message key (route parameter id)")
        check_eq(headers.get("ferry-cid"), "kafka-rr-1", "ferry-cid header")
        check_eq(headers.get("ferry-msg-id"), env["id"], "ferry-msg-id")
        check_eq(headers.get("ferry-reply-to"), REPLY_TOPIC, "reply-to")
        check_eq(headers.get("traceparent"), env["tp"], "traceparent")
        reply = {"v": 1, "kind": "reply", "id": "f" * 32, "cid": env["cid"],
                 "re": env["id"], "st": 200,
                 "ts": int(time.time() * 1000),
                 "body": {"id": 7, "name": "from kafka"}}
        path = os.path.join(stack.tmp, "reply.bin")
        with open(path, "wb") as f:
            f.write(msgpack.packb(reply, use_bin_type=True))
        kcat(["-P", "-t", REPLY_TOPIC, "-H", "ferry-msg-id=" + env["id"],
              path])
    finally:
        th.join(20)
    r = result.get("r")
    check(r is not None, "no HTTP answer")
    check_eq(r.status, 200, "status: " + r.describe())
    check_eq(r.json(), {"id": 7, "name": "from kafka"}, "body")
    check_eq(r.header("X-Request-Id"), "kafka-rr-1", "X-Request-Id")


def t_stop():
    problems = stack.stop_all()
    check(not problems, "\n".join(problems))


CASES = [
    ("fetch the Kafka jars", t_fetch),
    ("Kafka broker, PostgreSQL, ferry-broker and the app pool start",
     t_setup),
    ("Kafka unreachable: 503 within a second, ZeroMQ route 200", t_down),
    ("an edge with Kafka creates its reply topic and gets ready", t_up),
    ("GET over Kafka: request envelope, headers, key; the reply answers",
     t_request_reply),
    ("no sanitizer reports / clean exits", t_stop),
]

harness.run_cases(tap, CASES, kafka_broker.Unavailable,
                  (kafka_broker.BrokerError,))

"""test_kafka_requests.py: a worker pool answers ferry request envelopes
from a Kafka request topic on the reply topic each request names.

The test plays the edge (docs/kafka.md): it writes request envelopes
(msgpack, python3-msgpack) to ferry.app.requests with kcat, with the
headers the edge sets (ferry-cid, traceparent, ferry-reply-to,
ferry-msg-id), and reads the replies from its own reply topic.  A real
Apache Kafka broker (tests/kafka/kafka_broker.py) and a real PostgreSQL
(harness.Stack).  Checks: a create lands in PostgreSQL and answers 201
with the row, a get answers 200 with it, a missing id answers 404, an
unknown operation 404, an expired deadline 504 without running, and the
reply carries ferry-msg-id = the request's id.  Without a broker every
case reports SKIP with the reason; FERRY_KAFKA_REQUIRE=1 makes that a
failure.  Prints TAP.
"""

import os
import subprocess
import sys
import tempfile
import time
import uuid

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "kafka"))
import harness  # noqa: E402
import kafka_broker  # noqa: E402
from harness import check, check_eq  # noqa: E402

import msgpack  # noqa: E402

REQUESTS = "ferry.app.requests"
REPLIES = "ferry.test.replies"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

tap, broker, stack = harness.kafka_stack("ferry-kafka-req")

POOL = """
  requests:
    actors: 1
    operations:
      get_user:
        sql: SELECT id, name, email FROM users WHERE id = $1
        params: [id:int8]
        result: one
      create_user:
        sql: >-
          INSERT INTO users (id, name, email) VALUES ($1, $2, $3)
          RETURNING id, name, email
        params: [id:int8, name:text, email:text]
        result: one
        status: 201
    kafka:
      properties: ["bootstrap.servers=%s"]
      topics:
        - {topic: %s, format: ferry}
"""

state = {"next_reply": 0}
tmp = tempfile.mkdtemp(prefix="ferry-kafka-req-")


def kcat(args, timeout=60):
    try:
        p = subprocess.run(["kcat", "-b", broker.bootstrap] + args,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise harness.TestFailure("kcat %s took longer than %d s"
                                  % (" ".join(args), timeout))
    err = p.stderr.decode(errors="replace")
    check_eq(p.returncode, 0, "kcat status (%s)" % err.strip()[-500:])
    return p


def request(op, args, body=None, deadline_ms=30000):
    """Produces one request envelope as the edge does; returns its id."""
    mid = uuid.uuid4().hex
    env = {"v": 1, "kind": "request", "id": mid, "cid": "cid-" + mid,
           "svc": "app", "op": op, "args": args,
           "dl": int(time.time() * 1000) + deadline_ms, "tp": TP,
           "rto": REPLIES}
    if body is not None:
        env["body"] = body
    path = os.path.join(tmp, mid)
    with open(path, "wb") as f:
        f.write(msgpack.packb(env))
    kcat(["-P", "-t", REQUESTS, "-k", env["cid"], "-X", "acks=all",
          "-H", "ferry-cid=" + env["cid"], "-H", "traceparent=" + TP,
          "-H", "ferry-reply-to=" + REPLIES, "-H", "ferry-msg-id=" + mid,
          path])
    return mid


def reply():
    """The next reply on the reply topic: (envelope, headers)."""
    off = state["next_reply"]
    base = ["-C", "-t", REPLIES, "-p", "0", "-o", str(off), "-c", "1"]
    value = kcat(base + ["-f", "%s"], timeout=30).stdout
    hdrs = kcat(base + ["-f", "%h"], timeout=30).stdout.decode()
    state["next_reply"] = off + 1
    headers = dict(h.split("=", 1) for h in hdrs.split(",") if "=" in h)
    return msgpack.unpackb(value, raw=False), headers


def check_reply(mid, status):
    env, headers = reply()
    check_eq(env.get("kind"), "reply", "kind")
    check_eq(env.get("re"), mid, "re")
    check_eq(env.get("st"), status, "status (%r)" % env.get("body"))
    check_eq(headers.get("ferry-msg-id"), mid, "ferry-msg-id header")
    check_eq(headers.get("ferry-cid"), "cid-" + mid, "ferry-cid header")
    check(headers.get("traceparent", "").startswith(TP[:36]),
          "traceparent continues the trace: %r" % headers)
    return env


def t_fetch():
    kafka_broker.fetch()


def t_setup():
    t0 = time.monotonic()
    broker.start()
    broker.create_topic(REQUESTS, 3)
    broker.create_topic(REPLIES, 1)
    stack.start_postgres()
    stack.migrate()
    check(stack.migrate_error is None,
          "ferryctl migrate: %s" % stack.migrate_error)
    stack.write_config(extra_pools=POOL % (broker.bootstrap, REQUESTS))
    stack.plan_ports()
    stack.start_worker("requests")
    tap.diag("broker, PostgreSQL and worker up in %.1f s (%s)"
             % (time.monotonic() - t0, broker.bootstrap))


def t_create_get():
    mid = request("create_user", {}, {"id": 910001, "name": "Kafka Ka",
                                      "email": "ka@example.com"})
    env = check_reply(mid, 201)
    check_eq(env.get("body", {}).get("name"), "Kafka Ka", "created row")
    row = stack.psql("SELECT name, email FROM users WHERE id = 910001")
    check_eq(row, "Kafka Ka|ka@example.com", "the user row")
    mid = request("get_user", {"id": "910001"})
    env = check_reply(mid, 200)
    check_eq(env.get("body"), {"id": 910001, "name": "Kafka Ka",
                               "email": "ka@example.com"}, "body")


def t_problems():
    mid = request("get_user", {"id": "999999999"})
    env = check_reply(mid, 404)
    check_eq(env.get("body", {}).get("status"), 404, "problem body")
    mid = request("no_such_op", {})
    check_reply(mid, 404)
    mid = request("create_user", {}, {"id": 910002, "name": "late",
                                      "email": "late@example.com"},
                  deadline_ms=-1000)
    check_reply(mid, 504)
    check_eq(stack.psql("SELECT count(*) FROM users WHERE id = 910002"), "0",
             "an expired request did not run")
    # Each request was recorded once, answered or not.
    kept = int(stack.psql(
        "SELECT coalesce(sum(\"offset\"), 0) FROM ferry.kafka_offsets"
        " WHERE group_id = 'ferry.requests'"))
    check_eq(kept, 5, "offsets kept in PostgreSQL")


def t_stop():
    problems = stack.stop_all()
    check(not problems, "\n".join(problems))


CASES = [
    ("fetch the Kafka jars", t_fetch),
    ("Kafka broker, PostgreSQL and a worker on a request topic start",
     t_setup),
    ("a create and a get over Kafka answer 201 and 200 on the reply topic",
     t_create_get),
    ("a missing row, an unknown operation and an expired deadline answer "
     "404, 404 and 504", t_problems),
    ("no sanitizer reports / clean exits", t_stop),
]

harness.run_cases(tap, CASES, kafka_broker.Unavailable,
                  (kafka_broker.BrokerError,))

"""test_kafka_jobs.py: Idempotency-Key and async jobs (issue 4) on the
Kafka path of the worker (worker_kafka.c), end to end over HTTP.

The stack of jobs_common.py with a real Apache Kafka broker
(tests/kafka/kafka_broker.py): the t4 pool also consumes the request
topic ferry.t4.requests (format ferry) and the edge has Kafka routes to
its `put` operation (an INSERT into t4_items, which has no unique key: a
request that ran twice leaves two rows).  Checks: a repeat with the same
key over Kafka replays the stored response (Idempotent-Replayed: true)
and the row exists once; a key first used over ZeroMQ replays over Kafka;
another body gets 422; a repeat over Kafka while the first still runs on
ZeroMQ gets 409; a failed handler stores nothing and its async job ends
failed with the problem; two async jobs with one key both succeed with
the one stored result; a request with a job that cannot be answered (no
reply topic) goes to the dead-letter topic and its job ends dead; every
message's offset is claimed once.  Without a Kafka broker every case
reports SKIP with the reason.  Prints TAP.
"""

import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "kafka"))
import harness  # noqa: E402
import jobs_common as jc  # noqa: E402
from harness import check, check_eq, check_problem, TestFailure  # noqa: E402

REQUESTS = "ferry.t4.requests"
REPLY_TOPIC = "ferry.replies.test-kafka-jobs"
KAFKA_ROUTES = """
    - route: POST /tk/items
      service: t4
      operation: put
      transport: kafka
      timeout: 10s
    - route: POST /tk/jobs/items
      service: t4
      operation: put
      transport: kafka
      mode: async
      timeout: 10s
  kafka:
    properties: ["bootstrap.servers=%s"]
    reply_topic: %s
"""
POOL_KAFKA = ("pools.t4.kafka={properties: [\"bootstrap.servers=%s\"], "
              "topics: [{topic: %s, format: ferry, retries: 1}]}")

harness.install_guards(400)
tap = harness.Tap()
stack = harness.Stack("ferry-it-kjobs")
tap.log_sources.append(stack.live_logs)
RUN = "%06x" % random.getrandbits(24)
kafka = {"broker": None, "skip": None, "error": None}


def setup():
    kafka.update(jc.start_kafka(tap, [(REQUESTS, 2), (REQUESTS + ".dlq", 1)]))
    if not kafka["broker"]:
        return None
    bootstrap = kafka["broker"].bootstrap
    return jc.bring_up(tap, stack,
                       extra_routes=KAFKA_ROUTES % (bootstrap, REPLY_TOPIC),
                       pool_sets={"t4": [POOL_KAFKA % (bootstrap,
                                                        REQUESTS)]})


def needs_kafka(fn):
    def run():
        if kafka["error"]:
            raise TestFailure("Kafka broker: " + kafka["error"])
        if kafka["skip"]:
            raise jc.Skip(kafka["skip"])
        return fn()
    return run


def post(path, body, key=None, timeout=15.0, prefer=None):
    h = {}
    if key is not None:
        h["Idempotency-Key"] = key
    if prefer:
        h["Prefer"] = prefer
    return jc.req(stack, "POST", path, body=body, headers=h, timeout=timeout)


def rows(k):
    return int(stack.psql("SELECT count(*) FROM t4_items WHERE k = '%s'" % k))


def stored(key):
    return stack.psql("SELECT status || '|' || coalesce(response_status, 0) "
                      "FROM ferry.idempotency_keys WHERE principal = '' AND "
                      "key = '%s'" % key)


def replayed(r):
    return (r.header("Idempotent-Replayed") or "").strip().lower() == "true"


def check_original(r, what):
    check(r.status == 201, "%s: expected 201, got %s" % (what, r.describe()))
    check(not replayed(r), "%s: the first answer says Idempotent-Replayed: "
          "%s" % (what, r.describe()))


def check_replay(r, first, what):
    check(r.status == first.status, "%s: a replay answered %s, the stored "
          "response was %d" % (what, r.describe(), first.status))
    check(replayed(r), "%s: no Idempotent-Replayed: true on the replay: %s"
          % (what, r.describe()))
    check_eq(r.json(), first.json(), what + ": replayed body")


def offsets():
    """Messages whose offsets the t4 group holds in PostgreSQL."""
    return int(stack.psql("SELECT coalesce(sum(\"offset\"), 0) FROM "
                          "ferry.kafka_offsets WHERE group_id = 'ferry.t4' "
                          "AND topic = '%s'" % REQUESTS))


def wait_offsets(n, what, deadline_s=30.0):
    t0 = time.monotonic()
    while offsets() != n:
        check(time.monotonic() - t0 < deadline_s, "%s: offsets held %d, "
              "expected %d" % (what, offsets(), n))
        time.sleep(0.1)


# ---- cases -------------------------------------------------------------------------

def t_ready():
    t0 = time.monotonic()
    while True:
        r = jc.req(stack, "GET", "/readyz", timeout=5.0)
        if r.status == 200 and r.json().get("kafka") is True:
            break
        check(time.monotonic() - t0 < 60, "the edge's Kafka side not ready "
              "in 60 s: " + r.describe())
        time.sleep(0.2)
    # The consumer has its partitions once a plain request comes back.
    while True:
        r = post("/tk/items", {"k": "warm-" + RUN}, timeout=10.0)
        if r.status == 201:
            break
        check(time.monotonic() - t0 < 90, "no answer over Kafka in 90 s: "
              + r.describe())
    # A warm-up request that timed out may still be consumed: settle.
    base = offsets()
    while True:
        time.sleep(1.0)
        now = offsets()
        if now == base:
            break
        base = now
    state["base"] = base


state = {"base": 0, "sent": 0}


def t_replay():
    key = "kreplay-%s" % RUN
    body = {"k": key, "v": "first"}
    first = post("/tk/items", body, key)
    check_original(first, "first POST over Kafka")
    check_eq(first.json().get("k"), key, "body k")
    for i in range(3):
        check_replay(post("/tk/items", body, key), first, "repeat %d" % i)
    check_eq(rows(key), 1, "rows after 4 requests with one key")
    check_eq(stored(key), "completed|201", "stored key")
    # A key first used over ZeroMQ replays over Kafka and the reverse.
    zkey = "kzmq-%s" % RUN
    zbody = {"k": zkey}
    zfirst = post("/t/items", zbody, zkey)
    check_original(zfirst, "first POST over ZeroMQ")
    check_replay(post("/tk/items", zbody, zkey), zfirst,
                 "the ZeroMQ request's repeat over Kafka")
    check_eq(rows(zkey), 1, "rows after ZeroMQ then Kafka")
    state["sent"] += 5
    wait_offsets(state["base"] + state["sent"], "offsets after the replays")


def t_mismatch_busy():
    key = "kmis-%s" % RUN
    first = post("/tk/items", {"k": key, "v": "a"}, key)
    check_original(first, "first POST")
    check_problem(post("/tk/items", {"k": key, "v": "b"}, key), 422,
                  "the same key with another body over Kafka")
    check_eq(rows(key), 1, "rows (the 422 wrote nothing)")
    # 409: the first runs on ZeroMQ (2 s), the repeat comes over Kafka.
    bkey = "kbusy-%s" % RUN
    body = {"k": bkey, "delay": 2}
    got = {}
    th = threading.Thread(target=lambda: got.setdefault(
        "r", post("/t/items", body, bkey)))
    th.start()
    time.sleep(0.7)
    r = post("/tk/items", body, bkey)
    check_problem(r, 409, "a repeat over Kafka while the first still runs")
    th.join(15)
    check_original(got.get("r"), "the first request (ZeroMQ)")
    check_replay(post("/tk/items", body, bkey), got["r"],
                 "a repeat over Kafka after it finished")
    check_eq(rows(bkey), 1, "rows")
    state["sent"] += 4
    wait_offsets(state["base"] + state["sent"], "offsets after 422 and 409")


def t_failed():
    key = "kfail-%s" % RUN
    body = {"k": key, "v": "fail"}          # t4_items' CHECK refuses it
    first = post("/tk/items", body, key)
    check(first.status >= 400 and first.status < 500,
          "the failing insert over Kafka answered " + first.describe())
    again = post("/tk/items", body, key)
    check_eq(again.status, first.status, "a retry of the failed request")
    check(not replayed(again), "the failed response was replayed: "
          + again.describe())
    check_eq(stored(key), "", "a key stored for a rolled-back handler")
    # The same failure as an async job: the job ends failed with it.
    r = post("/tk/jobs/items", {"k": key + "-job", "v": "fail"})
    jid = jc.check_202(r, "POST /tk/jobs/items", prefer_applied=False)
    doc, _ = jc.wait_finished(stack, jid, 30)
    check_eq(doc["status"], "failed", "failed job (%s)" % jc.js(doc))
    check_eq(doc["result"]["status"], first.status, "the job's result "
             "status vs the synchronous answer")
    check_eq(rows(key) + rows(key + "-job"), 0, "rows of failed requests")
    state["sent"] += 3
    wait_offsets(state["base"] + state["sent"], "offsets after failures")


def t_jobs_with_key():
    key = "kjobkey-%s" % RUN
    body = {"k": key, "v": "j"}
    jids = []
    for i in range(2):
        r = post("/tk/jobs/items", body, key)
        jids.append(jc.check_202(r, "async POST %d with a key" % i,
                                 prefer_applied=False))
        jc.wait_finished(stack, jids[-1], 30)
    docs = [jc.wait_finished(stack, j, 30)[0] for j in jids]
    for d in docs:
        check_eq(d["status"], "succeeded", "job (%s)" % jc.js(d))
        check_eq(d["result"]["status"], 201, "job result status")
    check_eq(docs[1]["result"]["body"], docs[0]["result"]["body"],
             "the second job holds the stored response")
    check_eq(rows(key), 1, "rows after two jobs with one key")
    state["sent"] += 2
    wait_offsets(state["base"] + state["sent"], "offsets after the jobs")


def t_dead():
    """A request with a job but no reply topic is dead-lettered at once;
    its job (created by job_submit, as the edge does) ends dead."""
    import msgpack
    jid = str(uuid.uuid4())
    stack.psql("SELECT ferry.job_submit('%s', 't4', 'put', '', '1 hour')"
               % jid)
    mid = uuid.uuid4().hex
    env = {"v": 1, "kind": "request", "id": mid, "svc": "t4", "op": "put",
           "args": {}, "body": {"k": "kdead-" + RUN}, "job": jid,
           "dl": int(time.time() * 1000) + 30000}
    path = os.path.join(tempfile.mkdtemp(prefix="ferry-kjobs-"), mid)
    with open(path, "wb") as f:
        f.write(msgpack.packb(env))
    p = subprocess.run(["kcat", "-b", kafka["broker"].bootstrap, "-P", "-t",
                        REQUESTS, "-k", mid, "-X", "acks=all", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    check_eq(p.returncode, 0, "kcat (%s)" % p.stderr.decode()[-300:])
    doc, _ = jc.wait_finished(stack, jid, 30)
    check_eq(doc["status"], "dead", "the dead-lettered request's job (%s)"
             % jc.js(doc))
    check_eq(stack.psql("SELECT count(*) FROM ferry.dead_letters WHERE "
                        "topic = '%s' AND operation = 'put'" % REQUESTS),
             "1", "dead letters recorded")
    check_eq(rows("kdead-" + RUN), 0, "rows of the dead request")
    state["sent"] += 1
    wait_offsets(state["base"] + state["sent"], "offsets after the dead one")


def t_stop():
    problems = stack.stop_all()
    check(not problems, "\n".join(problems))


t_stop = jc.no_stack(t_stop)

CASES = [
    ("the Kafka side is ready", needs_kafka(t_ready)),
    ("over Kafka a repeat with the same key replays the stored response; "
     "one row; a ZeroMQ key replays over Kafka", needs_kafka(t_replay)),
    ("over Kafka the same key with another body: 422; a repeat while the "
     "first runs: 409", needs_kafka(t_mismatch_busy)),
    ("over Kafka a failed handler stores nothing; its async job ends failed",
     needs_kafka(t_failed)),
    ("two async jobs over Kafka with one key: both succeed with the stored "
     "result, one row", needs_kafka(t_jobs_with_key)),
    ("a request with a job that goes to the dead-letter topic: its job ends "
     "dead", needs_kafka(t_dead)),
    ("no sanitizer reports / clean exits", t_stop),
]

jc.run(tap, CASES, setup())

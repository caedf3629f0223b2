"""test_worker_jobs.py: the worker's side of asynchronous jobs and
idempotency keys (docs/worker.md, "Jobs and idempotency"), against a real
PostgreSQL, broker and workers.

Envelopes go straight to the broker's frontend from a small DEALER client
speaking FRY1 (docs/protocol.md), so each case controls exactly what the
worker sees: a `job` id, an `idem` key, the same job delivered twice.  The
HTTP contract on top (202, /jobs, Idempotency-Key headers) is tested by
test_jobs.py and test_idempotency.py.  Needs python3-zmq and
python3-msgpack; prints TAP.
"""

import os
import sys
import time
import uuid

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, check_eq, TestFailure  # noqa: E402

try:
    import msgpack
    import zmq
except ImportError as e:
    msgpack = zmq = None
    IMPORT_ERROR = str(e)

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-it-worker-jobs")

OPS = """
      add:
        sql: INSERT INTO wj_effects (tag) VALUES ($1) RETURNING id, tag
        params: [tag:text]
        result: one
        status: 201
      slow_add:
        sql: >-
          INSERT INTO wj_effects (tag) SELECT $1 FROM pg_sleep($2)
          RETURNING id, tag
        params: [tag:text, secs:float8]
        result: one
        status: 201
      divide:
        sql: SELECT 10 / $1 AS q
        params: [d:int4]
        result: one
"""
POOLS = """
  jobs:
    actors: 3
    credit: 8
    operations:%s
  crash:
    actors: 1
    operations:%s
""" % (OPS, OPS)
BATCH = 10


class Client:
    """A DEALER on the broker's frontend, as an edge would be."""

    def __init__(self, endpoint):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.replies = {}

    def close(self):
        self.sock.close()

    def send(self, service, op, body=None, job=None, idem=None, timeout=10):
        mid = uuid.uuid4().hex
        deadline = int(time.time() * 1000 + timeout * 1000)
        env = {"v": 1, "kind": "request", "id": mid, "cid": mid,
               "svc": service, "op": op, "dl": deadline,
               "ts": int(time.time() * 1000), "att": 1}
        if body is not None:
            env["body"] = body
        if job:
            env["job"] = job
        if idem:
            env["idem"] = idem
        flags = "r" if idem else ""
        self.sock.send_multipart([b"FRY1", b"REQ", service.encode(),
                                  mid.encode(), str(deadline).encode(),
                                  flags.encode(), msgpack.packb(env)])
        return mid

    def wait(self, mids, timeout=15):
        """Replies to every id in mids, as {mid: envelope}.  Sends HB while
        waiting so the broker keeps us alive."""
        want = set(mids)
        t0 = time.monotonic()
        last_hb = 0
        while not want <= set(self.replies):
            now = time.monotonic()
            if now - t0 > timeout:
                raise TestFailure("no reply for %d of %d requests in %d s"
                                  % (len(want - set(self.replies)),
                                     len(want), timeout))
            if now - last_hb > 0.1:
                self.sock.send_multipart([b"FRY1", b"HB"])
                last_hb = now
            if self.sock.poll(100) & zmq.POLLIN:
                frames = self.sock.recv_multipart()
                if len(frames) >= 4 and frames[1] == b"REP":
                    self.replies[frames[2].decode()] = msgpack.unpackb(
                        frames[3], raw=False)
        return {m: self.replies.pop(m) for m in mids}

    def call(self, service, op, **kw):
        mid = self.send(service, op, **kw)
        return self.wait([mid])[mid]


client = None


def need_client():
    global client
    if zmq is None:
        raise TestFailure("python3-zmq or python3-msgpack is missing (%s): "
                          "apt-get install python3-zmq python3-msgpack and "
                          "run with /usr/bin/python3" % IMPORT_ERROR)
    if client is None:
        client = Client(stack.frontend)
    return client


def q(sql):
    return stack.psql(sql)


def effects(tag):
    return int(q("SELECT count(*) FROM wj_effects WHERE tag = '%s'" % tag))


def header(env, name):
    return (env.get("hdrs") or {}).get(name)


def tag():
    return "t" + uuid.uuid4().hex[:12]


@tap.test("a job's effect and its result commit together")
def _():
    c = need_client()
    job, t = str(uuid.uuid4()), tag()
    r = c.call("jobs", "add", body={"tag": t}, job=job)
    check_eq(r.get("st"), 201, "reply status (%r)" % (r,))
    check_eq(r["body"]["tag"], t, "reply body tag")
    check_eq(effects(t), 1, "effect rows")
    row = q("SELECT status, attempts, result_status, finished_at IS NOT NULL,"
            " expires_at > now() + interval '1 hour',"
            " encode(result_body, 'hex') FROM ferry.jobs WHERE id = '%s'"
            % job).split("|")
    check_eq(row[:5], ["succeeded", "1", "201", "t", "t"], "job row")
    check_eq(msgpack.unpackb(bytes.fromhex(row[5]), raw=False), r["body"],
             "stored result body vs reply body")


@tap.test("a redelivered finished job replays its result, handler not rerun")
def _():
    c = need_client()
    job, t = str(uuid.uuid4()), tag()
    first = c.call("jobs", "add", body={"tag": t}, job=job)
    check_eq(first.get("st"), 201, "first reply")
    again = c.call("jobs", "add", body={"tag": t}, job=job)
    check_eq(again.get("st"), 201, "redelivery status (%r)" % (again,))
    check_eq(again.get("body"), first.get("body"), "redelivery body")
    check_eq(effects(t), 1, "effect rows after the redelivery")
    check_eq(q("SELECT status || ' ' || attempts FROM ferry.jobs "
               "WHERE id = '%s'" % job), "succeeded 1", "job after redelivery")


@tap.test("two deliveries of one job at once: one effect, the same result")
def _():
    c = need_client()
    job, t = str(uuid.uuid4()), tag()
    mids = [c.send("jobs", "slow_add", body={"tag": t, "secs": 0.5},
                   job=job) for _ in range(2)]
    replies = c.wait(mids)
    bodies = [replies[m].get("body") for m in mids]
    check(all(replies[m].get("st") == 201 for m in mids),
          "statuses: %r" % ([replies[m].get("st") for m in mids],))
    check_eq(bodies[0], bodies[1], "both deliveries' bodies")
    check_eq(effects(t), 1, "effect rows")


@tap.test("a failed handler's job is recorded failed with the problem")
def _():
    c = need_client()
    job = str(uuid.uuid4())
    r = c.call("jobs", "divide", body={"d": 0}, job=job)
    status = r.get("st")
    check(status and status >= 400, "reply: %r" % (r,))
    row = q("SELECT status, result_status, error->>'status' FROM ferry.jobs "
            "WHERE id = '%s'" % job).split("|")
    check_eq(row, ["failed", str(status), str(status)], "job row")
    # A job whose arguments do not bind is recorded too.
    job2 = str(uuid.uuid4())
    r = c.call("jobs", "divide", body={}, job=job2)
    check_eq(r.get("st"), 422, "missing parameter")
    check_eq(q("SELECT status || ' ' || result_status FROM ferry.jobs "
               "WHERE id = '%s'" % job2), "failed 422", "unbound job row")


@tap.test("Idempotency-Key: first runs, repeat replays with the header")
def _():
    c = need_client()
    key, t = "key-" + uuid.uuid4().hex, tag()
    first = c.call("jobs", "add", body={"tag": t}, idem=key)
    check_eq(first.get("st"), 201, "first (%r)" % (first,))
    check(not header(first, "idempotent-replayed"), "first is not a replay")
    again = c.call("jobs", "add", body={"tag": t}, idem=key)
    check_eq(again.get("st"), 201, "replay status (%r)" % (again,))
    check_eq(again.get("body"), first.get("body"), "replay body")
    check_eq(header(again, "idempotent-replayed"), "true", "replay header")
    check_eq(effects(t), 1, "effect rows")
    other = c.call("jobs", "add", body={"tag": t + "x"}, idem=key)
    check_eq(other.get("st"), 422, "same key, other body (%r)" % (other,))
    check_eq(effects(t + "x"), 0, "no effect for the refused request")


@tap.test("50 concurrent requests with one key: one row, 201 or 409 each")
def _():
    c = need_client()
    key, t = "key-" + uuid.uuid4().hex, tag()
    mids = [c.send("jobs", "slow_add", body={"tag": t, "secs": 0.2},
                   idem=key) for _ in range(50)]
    replies = c.wait(mids, timeout=30)
    statuses = sorted(r.get("st") for r in replies.values())
    check(set(statuses) <= {201, 409}, "statuses: %r" % (statuses,))
    check(201 in statuses, "no 201 at all: %r" % (statuses,))
    bodies = {repr(r.get("body")) for r in replies.values()
              if r.get("st") == 201}
    check_eq(len(bodies), 1, "distinct 201 bodies")
    check_eq(effects(t), 1, "effect rows")
    check_eq(q("SELECT count(*) FROM ferry.idempotency_keys WHERE key = '%s'"
               % key), "1", "key rows")


@tap.test("a failed handler stores no response: the retry runs again")
def _():
    c = need_client()
    key = "key-" + uuid.uuid4().hex
    r = c.call("jobs", "divide", body={"d": 0}, idem=key)
    check(r.get("st", 0) >= 400, "failure: %r" % (r,))
    check_eq(q("SELECT count(*) FROM ferry.idempotency_keys WHERE key = '%s'"
               % key), "0", "key rows after a failure")


@tap.test("killed after COMMIT, before the reply: the retry gets the stored "
          "response")
def _():
    c = need_client()
    key, t = "key-" + uuid.uuid4().hex, tag()
    env = dict(stack.env)
    env["FERRY_TEST_CRASH_AFTER_COMMIT"] = "add"
    log = os.path.join(stack.tmp, "worker-crash.log")
    # Without the supervisor, which would start it again.
    doomed = harness.Daemon("worker-crash", stack._argv(
        "worker", ["--pool", "crash", "--no-supervise"]), log, env)
    stack.daemons.append(doomed)
    stack.retired.append(doomed)
    # Until the worker has registered the broker answers 503; a repeat
    # with the same key is exactly what a client would send anyway.
    t0 = time.monotonic()
    while doomed.alive() and time.monotonic() - t0 < 20:
        mid = c.send("crash", "add", body={"tag": t}, idem=key, timeout=2)
        try:
            c.wait([mid], timeout=4)
        except TestFailure:
            pass
    check(not doomed.alive(), "the worker did not kill itself")
    doomed.killed = True
    doomed.proc.wait(5)
    doomed.logf.close()
    check_eq(effects(t), 1, "effect committed before the crash")
    stack.start_daemon("worker-crash2", "worker", ["--pool", "crash"])
    r = None
    t0 = time.monotonic()
    while time.monotonic() - t0 < 15:
        r = c.call("crash", "add", body={"tag": t}, idem=key)
        if r.get("st") != 503:          # until the new worker is there
            break
        time.sleep(0.2)
    check_eq(r.get("st"), 201, "retry status (%r)" % (r,))
    check_eq(header(r, "idempotent-replayed"), "true", "retry header")
    check_eq(r["body"]["tag"], t, "retry body")
    check_eq(effects(t), 1, "effect rows after the retry")


@tap.test("cleanup deletes expired jobs and keys in batches")
def _():
    q("INSERT INTO ferry.jobs (id, service, operation, status, expires_at) "
      "SELECT gen_random_uuid(), 'jobs', 'add', 'succeeded', "
      "now() - interval '1 hour' FROM generate_series(1, 35)")
    q("INSERT INTO ferry.idempotency_keys (key, request_hash, status, "
      "expires_at) SELECT 'old-' || g, '\\x00', 'completed', "
      "now() - interval '1 hour' FROM generate_series(1, 35) g")
    live = str(uuid.uuid4())
    q("INSERT INTO ferry.jobs (id, service, operation, expires_at) "
      "VALUES ('%s', 'jobs', 'add', now() + interval '1 hour')" % live)
    t0 = time.monotonic()
    left = None
    while time.monotonic() - t0 < 20:
        left = q("SELECT (SELECT count(*) FROM ferry.jobs WHERE expires_at < "
                 "now()) + (SELECT count(*) FROM ferry.idempotency_keys "
                 "WHERE expires_at < now())")
        if left == "0":
            break
        time.sleep(0.2)
    check_eq(left, "0", "expired rows left")
    check_eq(q("SELECT count(*) FROM ferry.jobs WHERE id = '%s'" % live), "1",
             "a live job stays")
    # Actor 0 of every pool cleans up, so the rows went to several.
    counts = []
    for d in stack.daemons:
        if d.name.startswith("worker"):
            with open(d.log, errors="replace") as f:
                counts += [int(line.split("rows=")[1].split()[0])
                           for line in f if "cleanup deleted rows=" in line]
    check(counts and max(counts) <= 2 * BATCH, "batches: %r" % (counts,))
    check(sum(counts) >= 70, "rows deleted in all: %r" % (counts,))


harness.sanitizer_test(tap, stack)

if zmq is None:
    setup_error = None
else:
    setup_error = harness.bring_up(
        tap, stack, pools=("app", "reports", "jobs"), extra_pools=POOLS,
        sets=("jobs.cleanup_interval=300ms", "jobs.cleanup_batch=%d" % BATCH))
    if setup_error is None:
        try:
            q("CREATE TABLE wj_effects (id bigint GENERATED ALWAYS AS "
              "IDENTITY PRIMARY KEY, tag text NOT NULL)")
        except Exception as e:
            setup_error = "cannot create wj_effects: %s" % e
tap.run(setup_error, pg_ready=stack.pg_ready)
if client is not None:
    client.close()
tap.finish()

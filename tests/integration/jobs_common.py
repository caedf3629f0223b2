"""jobs_common.py: the stack and helpers shared by test_jobs.py and
test_idempotency.py (issue 4: asynchronous jobs and Idempotency-Key).

The stack is harness.Stack with etc/ferry.yaml plus test routes and pools
spliced in (ROUTES, POOLS) and the issue's settings given with --set
(jobs.*, idempotency.*, edge.database), so that the tests do not depend on
what etc/ferry.yaml itself says about jobs.  The test pool `t4` has:

  sleep       SELECT seconds, pg_sleep(seconds)    (1 s / 3 s of work)
  put         INSERT INTO t4_items, after an optional pg_sleep(delay):
              t4_items has no unique key, so a request that ran twice
              leaves two rows: a visible, countable effect.

and `t4c` one operation, put_crash (the same INSERT), whose worker is
started with FERRY_TEST_CRASH_AFTER_COMMIT=put_crash by the crash test.

Every helper raises harness.TestFailure with the request and the answer
when the contract does not hold.
"""

import json
import os
import re
import threading
import time
import traceback

import harness
from harness import check, check_eq, TestFailure

def start_kafka(tap, topics):
    """A real Kafka broker (tests/kafka/kafka_broker.py, which the caller
    has on sys.path) with topics [(name, partitions)], its log shown when
    a case fails.  Returns {"broker", "skip", "error"}: broker None and a
    reason under "skip" (none can be had here) or "error" (it failed)."""
    import kafka_broker
    state = {"broker": None, "skip": None, "error": None}
    try:
        kafka_broker.fetch()
        b = kafka_broker.Broker()
        harness._register_cleanup(b.close)
        tap.log_sources.append(lambda: [("kafka", b.log_path())]
                               if b.dir and os.path.exists(b.log_path())
                               else [])
        b.start()
        for name, partitions in topics:
            b.create_topic(name, partitions)
        state["broker"] = b
    except kafka_broker.Unavailable as e:
        state["skip"] = "no Kafka broker here: %s" % e
    except kafka_broker.BrokerError as e:
        state["error"] = str(e)
    return state


UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                  r"[0-9a-f]{12}$")
JOB_STATES = ("queued", "running", "succeeded", "failed", "dead")
FINISHED = ("succeeded", "failed", "dead")

# Items of edge.routes (indent 4), spliced before `worker:`.
ROUTES = """
    # ---- issue 4 tests (jobs_common.py) ----
    - route: POST /t/users
      service: app
      operation: create_user
      async: true
      max_body: 64KiB
    - route: POST /t/jobs/users
      service: app
      operation: create_user
      mode: async
      max_body: 64KiB
    - route: POST /t/sleep
      service: t4
      operation: sleep
      async: true
      timeout: 10s
    - route: POST /t/sleep-sync
      service: t4
      operation: sleep
      timeout: 10s
    - route: POST /t/after
      service: t4
      operation: sleep
      async_after: 1s
      timeout: 10s
    - route: POST /t/items
      service: t4
      operation: put
      timeout: 10s
    - route: PATCH /t/items
      service: t4
      operation: put
      timeout: 10s
    - route: POST /t/items2
      service: t4
      operation: put2
      timeout: 10s
    - route: POST /t/crash
      service: t4c
      operation: put_crash
      timeout: 3s
"""

# Entries of pools: (indent 2), appended at the end of the file.
POOLS = """
  t4:
    actors: 4
    credit: 1                 # one message per actor: a repeat of a running
                              # request lands on another connection (409)
    operations:
      sleep:
        sql: SELECT $1::float8 AS seconds, pg_sleep($1) IS NOT NULL AS slept
        params: [seconds:float8]
        result: one
      put:
        sql: >-
          INSERT INTO t4_items (k, v) SELECT $1, $2 FROM pg_sleep($3)
          RETURNING n, k, v
        params: [k:text, "v:text=null", "delay:float8=0"]
        result: one
        status: 201
      put2:
        sql: INSERT INTO t4_items (k, v) VALUES ($1, $2) RETURNING n, k, v
        params: [k:text, "v:text=null"]
        result: one
        status: 201
  t4c:
    actors: 2
    credit: 1
    operations:
      put_crash:
        sql: INSERT INTO t4_items (k, v) VALUES ($1, $2) RETURNING n, k, v
        params: [k:text, "v:text=null"]
        result: one
        status: 201
"""

TEST_SQL = """
CREATE TABLE t4_items (
    n           bigserial PRIMARY KEY,
    k           text NOT NULL,
    v           text CHECK (v IS DISTINCT FROM 'fail'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX t4_items_k_idx ON t4_items (k);
"""


def job_sets(retention="1h", idem_retention="1h", interval="1s", batch=500):
    return ["jobs.retention=" + retention,
            "jobs.cleanup_interval=" + interval,
            "jobs.cleanup_batch=%d" % batch,
            "idempotency.retention=" + idem_retention]


def bring_up(tap, stack, extra_routes="", pool_sets=None, pools=None,
             worker_env=None):
    """PostgreSQL (with function call statistics on, for the cleanup
    test), migrations, 1,000 users, t4_items, then broker, workers (app,
    reports, t4, t4c unless pools says otherwise) and edge.  pool_sets:
    {pool: [extra --set]}; worker_env: {pool: {NAME: value}}.  Returns
    None or the error text."""
    try:
        stack.start_postgres()
        stack.migrate()
        check(stack.migrate_error is None,
              "ferryctl migrate: %s" % stack.migrate_error)
        stack.psql("ALTER DATABASE ferry SET track_functions = 'all'")
        stack.load_users(1000)
        stack.psql(TEST_SQL)
        stack.pg_ready = True
        stack.write_config(ROUTES + extra_routes, POOLS)
        stack.plan_ports(sets=job_sets() + ["edge.database=" + stack.conninfo])
        stack.start_broker()
        for p in pools or ("app", "reports", "t4", "t4c"):
            start_worker(stack, p, (pool_sets or {}).get(p, ()),
                         (worker_env or {}).get(p))
        stack.start_edge()
        stack.wait_http("/readyz", 200, 30.0)
        return None
    except Exception as e:
        tap.diag("stack setup failed:")
        tap.diag(traceback.format_exc())
        tap.dump_logs()
        text = str(e).strip()
        return "%s: %s" % (type(e).__name__,
                           text.splitlines()[0] if text else "")


def start_worker(stack, pool, sets=(), env=None):
    """One ferry-worker for pool, with extra --set and environment.  A
    worker with the crash hook runs without its supervisor, which would
    start it again: the crash tests wait for the process to end."""
    saved = stack.env
    extra = ["--pool", pool]
    if env and "FERRY_TEST_CRASH_AFTER_COMMIT" in env:
        extra.append("--no-supervise")
    if env:
        stack.env = dict(saved, **env)
    try:
        return stack.start_daemon("worker-" + pool, "worker", extra,
                                  sets=stack.sets + list(sets))
    finally:
        stack.env = saved


class Skip(Exception):
    """The case cannot run here (str() is the reason): reported as SKIP."""


def run(tap, cases, setup_error):
    """Runs (name, fn) cases independently (a failure does not stop the
    next one); with a setup error every case fails with it.  Skip ends
    one case as SKIP.  Ends the TAP stream and the process."""
    for name, fn in cases:
        if setup_error and not getattr(fn, "no_stack", False):
            tap.count += 1
            tap.failed += 1
            print("not ok %d - %s" % (tap.count, name), flush=True)
            tap.diag("stack setup failed (see above): %s" % setup_error[:300])
            continue
        try:
            fn()
        except Skip as e:
            tap.result(True, name, skip=str(e))
        except TestFailure as e:
            tap.result(False, name, str(e))
        except Exception:
            tap.result(False, name, traceback.format_exc())
        else:
            tap.result(True, name)
    tap.finish()


def no_stack(fn):
    fn.no_stack = True
    return fn


# ---- HTTP helpers -------------------------------------------------------------

def req(stack, method, path, body=None, headers=None, timeout=15.0,
        conn=None, port=None):
    return harness.request(port or stack.http_port, method, path, body=body,
                           headers=headers, timeout=timeout, conn=conn)


def pref_tokens(r):
    """The Preference-Applied tokens, lowercased, spaces removed."""
    values = r.header_all("Preference-Applied")
    out = []
    for v in values:
        out += [t.strip().lower().replace(" ", "") for t in v.split(",")
                if t.strip()]
    return out


def check_202(r, what, prefer_applied=True):
    """r is the contract's 202: Location /jobs/{uuid}, the body, and
    Preference-Applied: respond-async exactly when the client asked.
    Returns the job id."""
    check(r.status == 202, "%s: expected 202, got %s" % (what, r.describe()))
    loc = r.header("Location")
    check(loc and loc.startswith("/jobs/"),
          "%s: Location is %r (%s)" % (what, loc, r.describe()))
    jid = loc[len("/jobs/"):]
    check(UUID.match(jid), "%s: job id %r is not a lowercase UUID"
          % (what, jid))
    check(jid[14] in "47", "%s: job id %r is neither UUIDv4 nor v7"
          % (what, jid))
    ctype = (r.header("Content-Type") or "").split(";")[0].strip().lower()
    check_eq(ctype, "application/json", what + ": 202 Content-Type")
    b = r.json()
    check_eq(b, {"id": jid, "status": "queued", "href": "/jobs/" + jid},
             what + ": 202 body")
    applied = pref_tokens(r)
    if prefer_applied:
        check("respond-async" in applied, "%s: Preference-Applied %r lacks "
              "respond-async (%s)" % (what, applied, r.describe()))
    else:
        check("respond-async" not in applied, "%s: Preference-Applied %r "
              "names respond-async though the client did not ask (%s)"
              % (what, applied, r.describe()))
    return jid


def check_job_doc(doc, jid, what):
    """A job representation: the contract's members and types."""
    check(isinstance(doc, dict), "%s: job is not an object: %r" % (what, doc))
    for k in ("id", "status", "service", "operation", "attempts",
              "created_at", "updated_at", "finished_at"):
        check(k in doc, "%s: job lacks %r: %r" % (what, k, doc))
    check_eq(doc["id"], jid, what + ": job id")
    check(doc["status"] in JOB_STATES, "%s: status %r" % (what, doc))
    check(isinstance(doc["attempts"], int), "%s: attempts %r"
          % (what, doc["attempts"]))
    for k in ("created_at", "updated_at"):
        check(harness.RFC3339.match(str(doc[k])), "%s: %s not RFC 3339: %r"
              % (what, k, doc[k]))
    if doc["status"] in FINISHED:
        check(harness.RFC3339.match(str(doc["finished_at"])),
              "%s: finished job's finished_at %r" % (what, doc["finished_at"]))
        res = doc.get("result")
        check(isinstance(res, dict), "%s: finished job without result: %r"
              % (what, doc))
        for k in ("status", "headers", "body"):
            check(k in res, "%s: result lacks %r: %r" % (what, k, res))
        check(isinstance(res["status"], int), "%s: result.status %r"
              % (what, res))
        check(isinstance(res["headers"], dict), "%s: result.headers %r"
              % (what, res))
    else:
        check(doc["finished_at"] is None, "%s: unfinished job has "
              "finished_at %r" % (what, doc["finished_at"]))
        check("result" not in doc, "%s: unfinished job has a result: %r"
              % (what, doc))
    return doc


def get_job(stack, jid, wait=None, timeout=None, port=None, conn=None):
    """GET /jobs/{id} (with Prefer: wait=N when given): (response, doc)."""
    headers = {"Prefer": "wait=%d" % wait} if wait else {}
    r = req(stack, "GET", "/jobs/" + jid, headers=headers,
            timeout=timeout or (wait or 0) + 10.0, port=port, conn=conn)
    check(r.status == 200, "GET /jobs/%s: %s" % (jid, r.describe()))
    if wait:
        check("wait=%d" % wait in pref_tokens(r),
              "GET /jobs/%s with Prefer: wait=%d: Preference-Applied %r"
              % (jid, wait, r.header_all("Preference-Applied")))
    return r, check_job_doc(r.json(), jid, "GET /jobs/" + jid)


def wait_finished(stack, jid, deadline_s=60.0, wait=5, port=None, conn=None):
    """Polls GET /jobs/{id} with Prefer: wait (a long poll, never a tight
    loop) until the job finished.  Returns (doc, number of GETs)."""
    t0 = time.monotonic()
    n = 0
    while True:
        _, doc = get_job(stack, jid, wait=wait, port=port, conn=conn)
        n += 1
        if doc["status"] in FINISHED:
            return doc, n
        check(time.monotonic() - t0 < deadline_s,
              "job %s not finished after %.0f s: %r" % (jid, deadline_s, doc))


def parallel(fn, items, threads=16):
    """Calls fn(item) for every item on `threads` threads; returns the
    results in order; re-raises the first failure."""
    results = [None] * len(items)
    errors = []
    idx = iter(range(len(items)))
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                if errors:
                    return
                i = next(idx, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except Exception as e:
                with lock:
                    errors.append(e)
                return
    ts = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    if errors:
        raise errors[0]
    return results


def js(obj):
    return json.dumps(obj, sort_keys=True)[:600]

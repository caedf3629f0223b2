"""test_jobs.py: asynchronous jobs (issue 4) over HTTP, ZeroMQ and Kafka.

One stack (jobs_common.py: PostgreSQL, ferry-broker, pools app, reports,
t4, t4c, ferry-edge with the test routes and edge.database), plus a real
Apache Kafka broker (tests/kafka/kafka_broker.py) for the Kafka case: the
app pool then also consumes ferry.app.requests and the edge has the route
POST /tk/jobs/users (transport: kafka, mode: async).  Without a Kafka
broker here the Kafka case reports SKIP with the reason (a failure under
FERRY_KAFKA_REQUIRE=1); every other case still runs.

Cases are independent (a failure does not stop the next): 404 problems of
GET /jobs/{id}; the 202 (Location, Preference-Applied, body) and the job
resource; which requests become jobs; 1,000 jobs over ZeroMQ and 1,000
over Kafka, each succeeded with the result a synchronous call returns,
none lost or duplicated (rows in PostgreSQL); Prefer: wait on the submit
and on GET; async_after; the job surviving an edge restart; cleanup of
expired jobs and keys in batches with a concurrent writer; clean exits.
Prints TAP.
"""

import os
import random
import sys
import threading
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "kafka"))
import harness  # noqa: E402
import jobs_common as jc  # noqa: E402
from harness import check, check_eq, check_problem, TestFailure  # noqa: E402

N_JOBS = int(os.environ.get("FERRY_TEST_JOBS", "1000"))
REQUESTS = "ferry.app.requests"
REPLY_TOPIC = "ferry.replies.test-jobs"
KAFKA_ROUTES = """
    - route: POST /tk/jobs/users
      service: app
      operation: create_user
      transport: kafka
      mode: async
      max_body: 64KiB
  kafka:
    properties: ["bootstrap.servers=%s"]
    reply_topic: %s
"""
POOL_KAFKA = ("pools.app.kafka={properties: [\"bootstrap.servers=%s\"], "
              "topics: [{topic: %s, format: ferry}]}")

harness.install_guards(900)
tap = harness.Tap()
stack = harness.Stack("ferry-it-jobs")
tap.log_sources.append(stack.live_logs)
RUN = "%06x" % random.getrandbits(24)
kafka = {"broker": None, "skip": None, "error": None}


def setup():
    """Kafka first (when it can be had), then the stack."""
    kafka.update(jc.start_kafka(tap, [(REQUESTS, 2)]))
    if kafka["broker"]:
        bootstrap = kafka["broker"].bootstrap
        return jc.bring_up(tap, stack,
                           extra_routes=KAFKA_ROUTES % (bootstrap,
                                                        REPLY_TOPIC),
                           pool_sets={"app": [POOL_KAFKA % (bootstrap,
                                                             REQUESTS)]})
    return jc.bring_up(tap, stack)


def post(path, body, prefer=None, headers=None, timeout=15.0, conn=None):
    h = dict(headers or {})
    if prefer:
        h["Prefer"] = prefer
    return jc.req(stack, "POST", path, body=body, headers=h, timeout=timeout,
                  conn=conn)


def get(path, **kw):
    return jc.req(stack, "GET", path, **kw)


def user_body(tag, i):
    return {"name": "Job %s %d" % (tag, i),
            "email": "zj-%s-%s-%05d@example.com" % (tag, RUN, i)}


def submit_waited(path, body, what):
    """An async submit with Prefer: respond-async, wait=5 for quick work:
    200 with the finished job.  Returns the job."""
    r = post(path, body, prefer="respond-async, wait=5")
    check(r.status == 200, "%s with Prefer: respond-async, wait=5: expected "
          "200 with the finished job, got %s" % (what, r.describe()))
    doc = r.json()
    check(isinstance(doc, dict) and "id" in doc, "%s: body is not a job: "
          "%r" % (what, doc))
    jc.check_job_doc(doc, doc["id"], what)
    check_eq(doc["status"], "succeeded", what + ": job status")
    return doc


def daemon(name):
    for d in reversed(stack.daemons):
        if d.name == name and d not in stack.retired:
            return d
    raise TestFailure("no running daemon %s" % name)


# ---- cases -------------------------------------------------------------------------

def t_not_found():
    for path in ("/jobs/5b0e8a0e-3c1f-4d2a-9e55-2f7f0c9a1b3d",
                 "/jobs/00000000-0000-4000-8000-000000000000",
                 "/jobs/not-a-uuid", "/jobs/5b0e8a0e3c1f4d2a9e552f7f0c9a1b3d",
                 "/jobs/' OR 1=1 --".replace(" ", "%20"), "/jobs/"):
        r = get(path)
        check_problem(r, 404, "GET " + path)
        r = get(path, headers={"Prefer": "wait=1"})
        check_problem(r, 404, "GET %s with Prefer: wait=1" % path)
        check(r.elapsed < 0.9, "GET %s with Prefer: wait=1 took %.2f s for "
              "a job that does not exist" % (path, r.elapsed))


def t_submit_202():
    body = user_body("one", 0)
    t0 = time.monotonic()
    r = post("/t/users", body, prefer="respond-async")
    jid = jc.check_202(r, "POST /t/users, Prefer: respond-async")
    # The queued row is written before the 202: GET finds it at once.
    _, doc = jc.get_job(stack, jid)
    check_eq(doc["service"], "app", "job service")
    check_eq(doc["operation"], "create_user", "job operation")
    doc, _ = jc.wait_finished(stack, jid, 30)
    tap.diag("202 in %.3f s; finished %.3f s after the submit"
             % (r.elapsed, time.monotonic() - t0))
    check_eq(doc["status"], "succeeded", "job status (%s)" % jc.js(doc))
    check(doc["attempts"] >= 1, "attempts %r" % doc["attempts"])
    res = doc["result"]
    check_eq(res["status"], 201, "result status (%s)" % jc.js(doc))
    u = res["body"]
    check(isinstance(u, dict) and isinstance(u.get("id"), int),
          "result body %r" % (u,))
    check_eq(u.get("email"), body["email"], "result body email")
    # The same as a direct synchronous call: GET /users/{id}, and the
    # sync POST's status and members.
    direct = get("/users/%d" % u["id"])
    check(direct.status == 200, direct.describe())
    check_eq(u, direct.json(), "job result body vs GET /users/{id}")
    sync = post("/t/users", user_body("one", 1))
    check(sync.status == 201, "sync POST /t/users: " + sync.describe())
    check_eq(sorted(sync.json()), sorted(u), "members of the job result vs "
             "a synchronous POST's body")
    check_eq(stack.psql("SELECT count(*) FROM users WHERE email = '%s'"
                        % body["email"]), "1", "rows for the job's email")
    row = stack.psql("SELECT status || '|' || result_status || '|' || "
                     "principal FROM ferry.jobs WHERE id = '%s'" % jid)
    check_eq(row, "succeeded|201|", "ferry.jobs row (status|result|principal)")


def t_which_requests():
    # mode: async: always a job, no Preference-Applied without a Prefer.
    r = post("/t/jobs/users", user_body("mode", 0))
    jid = jc.check_202(r, "POST /t/jobs/users (mode: async), no Prefer",
                       prefer_applied=False)
    doc, _ = jc.wait_finished(stack, jid, 30)
    check_eq(doc["status"], "succeeded", "mode: async job (%s)" % jc.js(doc))
    # mode: async with the Prefer: the Prefer is applied.
    r = post("/t/jobs/users", user_body("mode", 1), prefer="respond-async")
    jc.check_202(r, "POST /t/jobs/users with Prefer: respond-async")
    # async: true without the Prefer: an ordinary synchronous answer.
    r = post("/t/users", user_body("sync", 0))
    check(r.status == 201, "POST /t/users without Prefer: " + r.describe())
    check(r.header("Location") is None, "sync answer with a Location: "
          + r.describe())
    check(not jc.pref_tokens(r), "sync answer with Preference-Applied: "
          + r.describe())
    # A route that is not async-capable ignores the Prefer (RFC 7240).
    r = post("/users", user_body("plain", 0), prefer="respond-async")
    check(r.status == 201, "POST /users (not async-capable) with Prefer: "
          "respond-async: " + r.describe())
    check("respond-async" not in jc.pref_tokens(r),
          "Preference-Applied on a route that ignored it: " + r.describe())
    # Other preferences next to respond-async, and odd spacing.
    r = post("/t/users", user_body("pref", 0),
             prefer="handling=lenient,  respond-async ;x=1")
    jc.check_202(r, "Prefer: handling=lenient,  respond-async ;x=1")


def pg_state(tag, jids):
    """What PostgreSQL holds about a batch of jobs, for a diagnostic."""
    ids = "ARRAY[%s]::uuid[]" % ",".join("'%s'" % j for j in jids)
    try:
        return stack.psql(
            "SELECT 'jobs by status/attempts: ' || coalesce((SELECT "
            "string_agg(status || '/' || attempts || ' x' || c, ', ') FROM "
            "(SELECT status, attempts, count(*) c FROM ferry.jobs WHERE id = "
            "ANY(%s) GROUP BY 1, 2) s), 'none') || '; users rows: ' || "
            "(SELECT count(*) FROM users WHERE email LIKE 'zj-%s-%s-%%') || "
            "'; kafka_offsets: ' || coalesce((SELECT string_agg(topic || '/' "
            "|| partition || '=' || \"offset\", ', ') FROM "
            "ferry.kafka_offsets), 'none') || '; dead_letters: ' || "
            "(SELECT count(*) FROM ferry.dead_letters)" % (ids, tag, RUN))
    except Exception as e:
        return "(cannot read: %s)" % e


def many_jobs(path, tag, prefer):
    bodies = [user_body(tag, i) for i in range(N_JOBS)]
    t0 = time.monotonic()

    def submit(body):
        r = post(path, body, prefer=prefer, timeout=30.0)
        return jc.check_202(r, "POST %s (%s)" % (path, body["email"]),
                            prefer_applied=prefer is not None)
    jids = jc.parallel(submit, bodies, 16)
    submit_s = time.monotonic() - t0
    check_eq(len(set(jids)), N_JOBS, "distinct job ids")
    t1 = time.monotonic()
    try:
        finished = jc.parallel(lambda jid: jc.wait_finished(
            stack, jid, 120, wait=10), jids, 16)
    except TestFailure as e:
        raise TestFailure("%s\nPostgreSQL: %s" % (e, pg_state(tag, jids)))
    gets = sum(n for _, n in finished)
    tap.diag("%s: %d submits in %.1f s (%.0f/s), all finished %.1f s "
             "later, %d GET /jobs (Prefer: wait=10)"
             % (tag, N_JOBS, submit_s, N_JOBS / submit_s,
                time.monotonic() - t1, gets))
    bad = [(jid, d) for jid, (d, _) in zip(jids, finished)
           if d["status"] != "succeeded" or d["result"]["status"] != 201]
    check(not bad, "%d of %d jobs did not succeed with 201, e.g. %s"
          % (len(bad), N_JOBS, jc.js(bad[:3])))
    wrong = [(b["email"], d["result"]["body"]) for b, (d, _) in
             zip(bodies, finished)
             if not isinstance(d["result"]["body"], dict)
             or d["result"]["body"].get("email") != b["email"]]
    check(not wrong, "%d jobs hold another request's result, e.g. %s"
          % (len(wrong), wrong[:3]))
    for d, _ in finished:
        check_eq((d["service"], d["operation"]), ("app", "create_user"),
                 "job service/operation")
    # Each result is what a direct synchronous call returns.
    def direct(d):
        u = d["result"]["body"]
        r = get("/users/%d" % u["id"])
        check(r.status == 200, "GET /users/%d: %s" % (u["id"], r.describe()))
        check_eq(u, r.json(), "job result vs GET /users/%d" % u["id"])
    jc.parallel(direct, [d for d, _ in finished], 16)
    # PostgreSQL: every effect exactly once, every job row succeeded.
    like = "zj-%s-%s-%%" % (tag, RUN)
    n = stack.psql("SELECT count(*) || '|' || count(DISTINCT email) FROM "
                   "users WHERE email LIKE '%s'" % like)
    check_eq(n, "%d|%d" % (N_JOBS, N_JOBS), "users rows|distinct emails "
             "(lost or duplicated effects)")
    ids = "ARRAY[%s]::uuid[]" % ",".join("'%s'" % j for j in jids)
    n = stack.psql("SELECT count(*) FILTER (WHERE status = 'succeeded' AND "
                   "result_status = 201) || '|' || count(*) FROM ferry.jobs "
                   "WHERE id = ANY(%s)" % ids)
    check_eq(n, "%d|%d" % (N_JOBS, N_JOBS), "ferry.jobs succeeded|rows")
    att = stack.psql("SELECT string_agg(a || 'x' || c, ' ') FROM (SELECT "
                     "attempts a, count(*) c FROM ferry.jobs WHERE id = "
                     "ANY(%s) GROUP BY 1 ORDER BY 1) s" % ids)
    tap.diag("%s: attempts per job: %s" % (tag, att))


def t_many_zmq():
    many_jobs("/t/users", "zmq", "respond-async")


def t_many_kafka():
    if kafka["error"]:
        raise TestFailure("Kafka broker: " + kafka["error"])
    if kafka["skip"]:
        raise jc.Skip(kafka["skip"])
    t0 = time.monotonic()
    while True:
        r = get("/readyz", timeout=5.0)
        if r.status == 200 and r.json().get("kafka") is True:
            break
        check(time.monotonic() - t0 < 60, "the edge's Kafka side not ready "
              "in 60 s: " + r.describe())
        time.sleep(0.2)
    many_jobs("/tk/jobs/users", "kafka", None)


def t_submit_wait():
    direct = {}
    th = threading.Thread(target=lambda: direct.setdefault(
        "r", post("/t/sleep-sync", {"seconds": 1})))
    th.start()
    r = post("/t/sleep", {"seconds": 1}, prefer="respond-async, wait=5")
    th.join(15)
    check(r.status == 200, "POST /t/sleep (1 s of work) with Prefer: "
          "respond-async, wait=5: expected 200 with the finished job in one "
          "round trip, got " + r.describe())
    check(0.9 <= r.elapsed < 4.0, "answered after %.2f s: expected about "
          "1 s (the work), not the 5 s wait" % r.elapsed)
    check("wait=5" in jc.pref_tokens(r), "Preference-Applied %r lacks "
          "wait=5" % r.header_all("Preference-Applied"))
    doc = r.json()
    check(isinstance(doc, dict) and "id" in doc, "body %r" % (doc,))
    jc.check_job_doc(doc, doc["id"], "the waited submit")
    check_eq(doc["status"], "succeeded", "status (%s)" % jc.js(doc))
    d = direct.get("r")
    check(d is not None and d.status == 200, "direct sync call: %s"
          % (d.describe() if d else "no answer"))
    check_eq(doc["result"]["status"], 200, "result status")
    check_eq(doc["result"]["body"], d.json(), "job result vs direct call")
    tap.diag("Prefer: wait=5 answered in %.2f s" % r.elapsed)


def t_get_wait():
    r = post("/t/sleep", {"seconds": 1}, prefer="respond-async")
    t0 = time.monotonic()
    jid = jc.check_202(r, "POST /t/sleep seconds=1")
    g, doc = jc.get_job(stack, jid, wait=5)
    took = time.monotonic() - t0
    check_eq(doc["status"], "succeeded", "GET with Prefer: wait=5 on a 1-s "
             "job (%s)" % jc.js(doc))
    check(took >= 0.8 and g.elapsed < 4.0, "GET with wait=5 answered after "
          "%.2f s (%.2f s after the 202): expected about 1 s"
          % (g.elapsed, took))
    check_eq(doc["result"]["body"], {"seconds": 1, "slept": True},
             "result body")
    # wait=1 on 3 s of work: the current state after about a second.
    r = post("/t/sleep", {"seconds": 3}, prefer="respond-async")
    jid = jc.check_202(r, "POST /t/sleep seconds=3")
    g, doc = jc.get_job(stack, jid, wait=1)
    check(doc["status"] in ("queued", "running"), "after wait=1 on a 3-s "
          "job: %s" % jc.js(doc))
    check(0.9 <= g.elapsed < 2.5, "GET with wait=1 answered after %.2f s"
          % g.elapsed)
    doc, _ = jc.wait_finished(stack, jid, 20)
    check_eq(doc["status"], "succeeded", "the 3-s job (%s)" % jc.js(doc))
    # Finished: a wait answers at once.
    g, _ = jc.get_job(stack, jid, wait=5)
    check(g.elapsed < 1.0, "GET with wait=5 on a finished job took %.2f s"
          % g.elapsed)


def t_async_after():
    direct = {}
    th = threading.Thread(target=lambda: direct.setdefault(
        "r", post("/t/sleep-sync", {"seconds": 3})))
    th.start()
    r = post("/t/after", {"seconds": 3})
    jid = jc.check_202(r, "POST /t/after (async_after: 1s) with 3 s of work",
                       prefer_applied=False)
    check(0.9 <= r.elapsed < 2.9, "202 after %.2f s: expected about 1 s"
          % r.elapsed)
    tap.diag("async_after 1s: 202 after %.2f s" % r.elapsed)
    _, doc = jc.get_job(stack, jid)
    check(doc["status"] in ("queued", "running"), "right after the 202: %s"
          % jc.js(doc))
    check_eq((doc["service"], doc["operation"]), ("t4", "sleep"),
             "service/operation")
    doc, _ = jc.wait_finished(stack, jid, 20)
    th.join(15)
    d = direct.get("r")
    check(d is not None and d.status == 200, "direct sync call: %s"
          % (d.describe() if d else "no answer"))
    check_eq(doc["status"], "succeeded", "job (%s)" % jc.js(doc))
    check_eq(doc["result"]["status"], d.status, "result status vs direct")
    check_eq(doc["result"]["body"], d.json(), "result body vs direct")
    # Within the budget: an ordinary synchronous answer.
    r = post("/t/after", {"seconds": 0})
    check(r.status == 200, "POST /t/after with no work: " + r.describe())
    check_eq(r.json(), {"seconds": 0, "slept": True}, "body")
    check(r.header("Location") is None, "Location on a sync answer: "
          + r.describe())


def t_edge_restart():
    done = submit_waited("/t/sleep", {"seconds": 0}, "POST /t/sleep")
    r = post("/t/sleep", {"seconds": 2}, prefer="respond-async")
    jid = jc.check_202(r, "POST /t/sleep seconds=2")
    stack.retire(stack.edge)
    check_eq(stack.edge.exit_code, 0, "edge exit status on SIGTERM")
    stack.start_edge()
    stack.wait_http("/readyz", 200, 30.0)
    _, doc = jc.get_job(stack, done["id"])
    check_eq(doc, done, "a finished job after the edge restart")
    doc, _ = jc.wait_finished(stack, jid, 20)
    check_eq(doc["status"], "succeeded", "job finished while the edge "
             "restarted (%s)" % jc.js(doc))
    check_eq(doc["result"]["body"], {"seconds": 2, "slept": True},
             "its result")


def count_expired():
    return stack.psql(
        "SELECT (SELECT count(*) FROM ferry.jobs WHERE operation = "
        "'expired') || '|' || (SELECT count(*) FROM ferry.idempotency_keys "
        "WHERE key LIKE 'exp-%')")


def cleanup_calls():
    return int(stack.psql("SELECT coalesce(sum(calls), 0) FROM "
                          "pg_stat_user_functions WHERE schemaname = 'ferry' "
                          "AND funcname = 'cleanup'"))


def t_retention():
    # A t4 worker whose results expire after a second.
    stack.retire(daemon("worker-t4"))
    jc.start_worker(stack, "t4", jc.job_sets("1s", "1s"))
    t0 = time.monotonic()
    while True:
        r = post("/t/sleep-sync", {"seconds": 0}, timeout=5.0)
        if r.status == 200:
            break
        check(time.monotonic() - t0 < 20, "t4 worker not back in 20 s: "
              + r.describe())
        time.sleep(0.2)
    jid = submit_waited("/t/sleep", {"seconds": 0}, "POST /t/sleep")["id"]
    key = "cleanup-%s" % RUN
    r = post("/t/items2", {"k": key}, headers={"Idempotency-Key": key})
    check(r.status == 201, "POST /t/items2 with a key: " + r.describe())
    left = stack.psql(
        "SELECT (SELECT expires_at - now() < interval '5 s' FROM ferry.jobs "
        "WHERE id = '%s') || '|' || (SELECT expires_at - now() < "
        "interval '5 s' FROM ferry.idempotency_keys WHERE key = '%s')"
        % (jid, key))
    check_eq(left, "true|true", "expires_at of the job|key within the 1 s "
             "retention (retention honoured)")
    t0 = time.monotonic()
    while True:
        n = stack.psql("SELECT (SELECT count(*) FROM ferry.jobs WHERE id = "
                       "'%s') + (SELECT count(*) FROM ferry.idempotency_keys "
                       "WHERE key = '%s')" % (jid, key))
        if n == "0":
            break
        check(time.monotonic() - t0 < 20, "the expired job and key still "
              "there 20 s later (jobs.cleanup_interval is 1s)")
        time.sleep(0.25)
    tap.diag("expired job and key gone %.1f s after the retention"
             % (time.monotonic() - t0))
    check_problem(get("/jobs/" + jid), 404, "GET of a cleaned-up job")
    r = post("/t/items2", {"k": key}, headers={"Idempotency-Key": key})
    check(r.status == 201 and r.header("Idempotent-Replayed") is None,
          "an expired key runs again: " + r.describe())


def t_batches():
    # Batches: 20,000 expired jobs and keys (and live ones that stay).
    # In the same transaction, one direct call deletes at most its batch
    # of each table.
    calls0 = cleanup_calls()
    n_exp = 20000
    out = stack.psql(
        "INSERT INTO ferry.jobs (id, service, operation, status, "
        "finished_at, expires_at) SELECT gen_random_uuid(), 't4', "
        "'expired', 'succeeded', now() - interval '2 h', now() - "
        "interval '1 h' - g * interval '1 ms' FROM generate_series(1, %d) g;"
        "INSERT INTO ferry.jobs (id, service, operation, status, "
        "finished_at, expires_at) SELECT gen_random_uuid(), 't4', 'live', "
        "'succeeded', now(), now() + interval '1 h' FROM "
        "generate_series(1, 50);"
        "INSERT INTO ferry.idempotency_keys (key, principal, request_hash, "
        "status, response_status, expires_at) SELECT 'exp-' || g, '', "
        "'\\x00', 'completed', 201, now() - interval '1 h' FROM "
        "generate_series(1, %d) g;"
        "INSERT INTO ferry.idempotency_keys (key, principal, request_hash, "
        "status, response_status, expires_at) SELECT 'live-' || g, '', "
        "'\\x00', 'completed', 201, now() + interval '1 h' FROM "
        "generate_series(1, 50) g;"
        "SELECT ferry.cleanup(100);" % (n_exp, n_exp), timeout=120)
    check_eq(out, "200", "SELECT ferry.cleanup(100) with 20,000 expired "
             "jobs and keys: rows deleted in one call (at most 100 of each)")
    live_job = stack.psql("SELECT id FROM ferry.jobs WHERE operation = "
                          "'live' LIMIT 1")
    t_ins = time.monotonic()
    # A concurrent writer on both tables while the workers clean up: its
    # statements run with lock_timeout = 2s, so a table locked for long
    # fails it; and HTTP requests with keys keep being answered.
    stop = threading.Event()
    stats = {"sql": 0, "http": 0, "sql_max": 0.0, "http_max": 0.0,
             "errors": []}

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            t = time.monotonic()
            try:
                stack.psql(
                    "SET lock_timeout = '2s'; BEGIN; "
                    "INSERT INTO ferry.jobs (id, service, operation) VALUES "
                    "(gen_random_uuid(), 't4', 'writer'); "
                    "INSERT INTO ferry.idempotency_keys (key, request_hash) "
                    "VALUES ('writer-' || gen_random_uuid(), '\\x00'); "
                    "UPDATE ferry.jobs SET updated_at = now() WHERE id = "
                    "'%s'; COMMIT;" % live_job, timeout=30)
                stats["sql"] += 1
                stats["sql_max"] = max(stats["sql_max"], time.monotonic() - t)
            except Exception as e:
                stats["errors"].append("SQL writer: %s" % e)
            k = "w-%s-%d" % (RUN, i)
            try:
                r = post("/t/items2", {"k": k},
                         headers={"Idempotency-Key": k}, timeout=10.0)
                if r.status != 201:
                    stats["errors"].append("HTTP writer: " + r.describe())
                stats["http"] += 1
                stats["http_max"] = max(stats["http_max"], r.elapsed)
            except TestFailure as e:
                stats["errors"].append("HTTP writer: %s" % e)
    th = threading.Thread(target=writer, daemon=True)
    th.start()
    try:
        seen = []
        while True:
            c = count_expired()
            if not seen or seen[-1] != c:
                seen.append(c)
            if c == "0|0":
                break
            check(time.monotonic() - t_ins < 60, "expired rows left 60 s "
                  "later: %s (counts seen: %s)" % (c, seen[-8:]))
            time.sleep(0.05)
        gone = time.monotonic() - t_ins
    finally:
        time.sleep(0.5)
        stop.set()
        th.join(30)
    tap.diag("20,000 + 20,000 expired rows gone %.1f s after commit; counts "
             "seen %s" % (gone, " ".join(seen[:10])))
    tap.diag("writer during cleanup: %d SQL transactions (max %.3f s), %d "
             "HTTP POSTs with keys (max %.3f s)"
             % (stats["sql"], stats["sql_max"], stats["http"],
                stats["http_max"]))
    check(not stats["errors"], "the concurrent writer failed: %s"
          % stats["errors"][:3])
    check(stats["sql"] >= 1 and stats["http"] >= 1, "the writer did not run")
    check_eq(stack.psql("SELECT (SELECT count(*) FROM ferry.jobs WHERE "
                        "operation = 'live') || '|' || (SELECT count(*) FROM "
                        "ferry.idempotency_keys WHERE key LIKE 'live-%')"),
             "50|50", "live (unexpired) jobs|keys kept")
    # Function call statistics reach pg_stat_user_functions within a few
    # seconds; the workers' calls must be batches: at least 20,000 / 500
    # calls (cleanup_batch 500), not one big delete.
    want = (n_exp - 100 + 499) // 500
    t0 = time.monotonic()
    while True:
        calls = cleanup_calls() - calls0 - 1
        if calls >= want:
            break
        if time.monotonic() - t0 > 20:
            raise TestFailure("the workers called ferry.cleanup %d times for "
                              "%d expired jobs and keys; with cleanup_batch "
                              "500 at least %d calls (batches) expected"
                              % (calls, n_exp - 100, want))
        time.sleep(0.5)
    tap.diag("ferry.cleanup called %d times by the workers" % calls)


def t_stop():
    problems = stack.stop_all()
    check(not problems, "\n".join(problems))


t_stop = jc.no_stack(t_stop)

CASES = [
    ("GET /jobs/{unknown uuid} and /jobs/not-a-uuid: 404 problems",
     t_not_found),
    ("Prefer: respond-async: 202, Location, Preference-Applied, body; the "
     "job is there at once and ends with the synchronous result",
     t_submit_202),
    ("mode: async always 202; async: true without Prefer and a plain route "
     "with Prefer answer synchronously", t_which_requests),
    ("%d async jobs over ZeroMQ: all succeeded, results as a sync call, "
     "none lost or duplicated" % N_JOBS, t_many_zmq),
    ("%d async jobs over Kafka: all succeeded, results as a sync call, "
     "none lost or duplicated" % N_JOBS, t_many_kafka),
    ("Prefer: wait=5 on the submit: the finished 1-s job in one round trip "
     "after about 1 s", t_submit_wait),
    ("GET /jobs/{id} with Prefer: wait: answers at completion, or with the "
     "current state when the wait runs out", t_get_wait),
    ("async_after: 1s with 3 s of work: 202 after about a second; the job "
     "holds the synchronous result", t_async_after),
    ("jobs live in PostgreSQL: found after an edge restart", t_edge_restart),
    ("jobs.retention / idempotency.retention of 1s: the job and the key "
     "are removed, GET /jobs/{id} then 404", t_retention),
    ("20,000 expired jobs and keys removed in batches of cleanup_batch; a "
     "concurrent writer is never blocked", t_batches),
    ("no sanitizer reports / clean exits", t_stop),
]

jc.run(tap, CASES, setup())

"""test_idempotency.py: the Idempotency-Key contract (issue 4) over HTTP
and ZeroMQ, against a real PostgreSQL and real daemons.

The stack of jobs_common.py; its t4 pool's `put` inserts a row into
t4_items (no unique key: a request that ran twice leaves two rows) after
an optional pg_sleep(delay), and the t4c pool's worker runs with
FERRY_TEST_CRASH_AFTER_COMMIT=put_crash (the worker's test-only fault
hook: SIGKILL itself after the COMMIT, before the reply leaves).

Cases are independent: a repeat replays the stored response
(Idempotent-Replayed: true) and the row exists once; 50 concurrent
identical requests with one key make one row and every answer is the
stored one or 409; a repeat while the first runs gets 409; another body
or another operation with the key gets 422; key lengths 255 / 256 and
invalid keys; the key is ignored on GET; a failed handler stores nothing;
the crash after COMMIT; clean exits.  Prints TAP.
"""

import http.client
import os
import random
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
import jobs_common as jc  # noqa: E402
from harness import check, check_eq, check_problem, TestFailure  # noqa: E402

harness.install_guards(400)
tap = harness.Tap()
stack = harness.Stack("ferry-it-idem")
tap.log_sources.append(stack.live_logs)
RUN = "%06x" % random.getrandbits(24)
CRASH_ENV = {"FERRY_TEST_CRASH_AFTER_COMMIT": "put_crash"}


def post(path, body, key=None, timeout=15.0, conn=None, headers=None,
         method="POST"):
    h = dict(headers or {})
    if key is not None:
        h["Idempotency-Key"] = key
    return jc.req(stack, method, path, body=body, headers=h, timeout=timeout,
                  conn=conn)


def rows(k):
    return int(stack.psql("SELECT count(*) FROM t4_items WHERE k = '%s'"
                          % k.replace("'", "''")))


def stored(key):
    """status|response_status of the stored key, or '' when none."""
    return stack.psql("SELECT status || '|' || coalesce(response_status, 0) "
                      "FROM ferry.idempotency_keys WHERE principal = '' AND "
                      "key = '%s'" % key.replace("'", "''"))


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
    check_eq(r.header("Content-Type"), first.header("Content-Type"),
             what + ": replayed Content-Type")


def daemon(name):
    for d in reversed(stack.daemons):
        if d.name == name and d not in stack.retired:
            return d
    raise TestFailure("no running daemon %s" % name)


# ---- cases -------------------------------------------------------------------------

def t_replay():
    key = "replay-%s" % RUN
    body = {"k": key, "v": "first"}
    first = post("/t/items", body, key)
    check_original(first, "first POST")
    check_eq(first.json().get("k"), key, "body k")
    for i in range(3):
        check_replay(post("/t/items", body, key), first, "repeat %d" % i)
    # The same payload written differently is the same request.
    raw = post("/t/items", '{ "k" :  "%s",\n "v": "first" }' % key, key,
               headers={"Content-Type": "application/json"})
    check_replay(raw, first, "the same JSON with other whitespace")
    check_eq(rows(key), 1, "rows after 5 requests with one key")
    check_eq(stored(key), "completed|201", "ferry.idempotency_keys "
             "status|response_status")
    check_eq(stack.psql("SELECT length(request_hash) FROM "
                        "ferry.idempotency_keys WHERE key = '%s'" % key),
             "32", "request_hash length (sha256)")
    # PATCH routes take keys too.
    pkey = "patch-%s" % RUN
    pbody = {"k": pkey}
    first = post("/t/items", pbody, pkey, method="PATCH")
    check_original(first, "first PATCH")
    check_replay(post("/t/items", pbody, pkey, method="PATCH"), first,
                 "repeated PATCH")
    check_eq(rows(pkey), 1, "rows after two PATCHes with one key")


def t_concurrent():
    key = "conc-%s" % RUN
    body = {"k": key, "v": "c", "delay": 0.5}
    n = 50
    barrier = threading.Barrier(n)
    answers = [None] * n

    def one(i):
        conn = http.client.HTTPConnection("127.0.0.1", stack.http_port,
                                          timeout=30)
        try:
            conn.connect()
            barrier.wait(20)
            answers[i] = post("/t/items", body, key, conn=conn, timeout=30)
        except Exception as e:
            answers[i] = e
        finally:
            conn.close()
    ts = [threading.Thread(target=one, args=(i,), daemon=True)
          for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    errors = [a for a in answers if not isinstance(a, harness.Response)]
    check(not errors, "%d of %d requests got no answer: %s"
          % (len(errors), n, errors[:3]))
    originals = [a for a in answers if a.status == 201 and not replayed(a)]
    replays = [a for a in answers if a.status == 201 and replayed(a)]
    conflicts = [a for a in answers if a.status == 409]
    other = [a for a in answers if a.status not in (201, 409)]
    tap.diag("50 concurrent: %d original, %d replayed, %d 409, %d other"
             % (len(originals), len(replays), len(conflicts), len(other)))
    check(not other, "answers other than 201 / 409: %s"
          % [a.describe() for a in other[:3]])
    check_eq(len(originals), 1, "answers that ran the request (201 without "
             "Idempotent-Replayed)")
    for a in replays:
        check_replay(a, originals[0], "a concurrent replay")
    for a in conflicts:
        check_problem(a, 409, "a concurrent repeat")
    check_eq(rows(key), 1, "rows after 50 concurrent requests with one key")
    check_eq(stored(key), "completed|201", "stored key")
    check_replay(post("/t/items", body, key), originals[0], "a late repeat")


def t_in_progress():
    key = "busy-%s" % RUN
    body = {"k": key, "delay": 2}
    first = {}
    th = threading.Thread(target=lambda: first.setdefault(
        "r", post("/t/items", body, key)))
    th.start()
    time.sleep(0.7)
    r = post("/t/items", body, key)
    p = check_problem(r, 409, "a repeat while the first still runs")
    check(r.elapsed < 1.2, "the 409 took %.2f s (it must not wait for the "
          "first)" % r.elapsed)
    tap.diag("409 detail: %r" % p.get("detail"))
    th.join(15)
    f = first.get("r")
    check(f is not None, "the first request got no answer")
    check_original(f, "the first request")
    check_replay(post("/t/items", body, key), f, "a repeat after it finished")
    check_eq(rows(key), 1, "rows")


def t_mismatch():
    key = "mismatch-%s" % RUN
    first = post("/t/items", {"k": key, "v": "a"}, key)
    check_original(first, "first POST")
    r = post("/t/items", {"k": key, "v": "b"}, key)
    check_problem(r, 422, "the same key with another body")
    r = post("/t/items", {"k": key, "v": "a", "delay": 0}, key)
    check_problem(r, 422, "the same key with an extra argument")
    r = post("/t/items2", {"k": key, "v": "a"}, key)
    check_problem(r, 422, "the same key and body on another operation")
    check_eq(rows(key), 1, "rows (the 422s wrote nothing)")
    check_replay(post("/t/items", {"k": key, "v": "a"}, key), first,
                 "the original request after the 422s")


def t_key_syntax():
    k255 = ("len-%s-" % RUN) + "x" * 200
    k255 = k255 + "z" * (255 - len(k255))
    check_eq(len(k255), 255, "test key length")
    first = post("/t/items", {"k": "len255-" + RUN}, k255)
    check_original(first, "a 255-character key")
    check_replay(post("/t/items", {"k": "len255-" + RUN}, k255), first,
                 "a repeat with the 255-character key")
    check_eq(stack.psql("SELECT count(*) FROM ferry.idempotency_keys WHERE "
                        "length(key) = 255 AND key = '%s'" % k255), "1",
             "stored 255-character key")
    # As an RFC 8941 sf-string: the key is what is between the quotes.
    q = "quoted-%s-!#$%%&'*+.^_`|~" % RUN
    first = post("/t/items", {"k": "q-" + RUN}, '"%s"' % q)
    check_original(first, "a key as an sf-string")
    check_replay(post("/t/items", {"k": "q-" + RUN}, '"%s"' % q), first,
                 "a repeat with the sf-string")
    check_replay(post("/t/items", {"k": "q-" + RUN}, q), first,
                 "a repeat with the same key as a bare token")
    check_eq(stored(q), "completed|201", "the stored key is the unquoted one")
    check_eq(rows("q-" + RUN), 1, "rows")
    k256 = k255 + "y"
    quoted255 = '"%s"' % (("sq-%s-" % RUN) + "s" * (255 - 4 - len(RUN)))
    check_eq(len(quoted255), 257, "quoted test key")
    first = post("/t/items", {"k": "sq255-" + RUN}, quoted255)
    check_original(first, "a 255-character key as an sf-string")
    bad = [(k256, "256 characters"),
           ('"%s"' % k256, "256 characters as an sf-string"),
           ("", "empty"), ('""', "an empty sf-string"),
           ("two words", "a space"), ('"two words"', "a quoted space"),
           ("k\u00e9y", "a non-ASCII byte"), ("tab\there", "a tab")]
    for key, what in bad:
        r = post("/t/items", {"k": "bad-" + RUN}, key)
        p = check_problem(r, 400, "Idempotency-Key with %s (%r)"
                          % (what, key[:40]))
        if "256" in what:
            check("255" in p.get("detail", ""), "the 400 for a 256-character"
                  " key does not say the limit: %r" % p)
    check_eq(rows("bad-" + RUN), 0, "rows written by requests with "
             "invalid keys")


def t_get_ignores_key():
    for key in ("get-%s" % RUN, "g" * 256, "two words"):
        a = jc.req(stack, "GET", "/users/7", headers={"Idempotency-Key": key})
        b = jc.req(stack, "GET", "/users/7", headers={"Idempotency-Key": key})
        for r in (a, b):
            check(r.status == 200, "GET with Idempotency-Key %r: %s"
                  % (key[:20], r.describe()))
            check(not replayed(r), "GET answered as a replay: "
                  + r.describe())
    check_eq(stack.psql("SELECT count(*) FROM ferry.idempotency_keys WHERE "
                        "key = 'get-%s'" % RUN), "0", "keys stored for GETs")


def t_failed_handler():
    key = "fail-%s" % RUN
    body = {"k": key, "v": "fail"}          # t4_items' CHECK refuses it
    first = post("/t/items", body, key)
    check(first.status >= 400, "the failing insert answered " +
          first.describe())
    again = post("/t/items", body, key)
    check_eq(again.status, first.status, "a retry of the failed request "
             "(%s)" % again.describe())
    check(not replayed(again), "the failed response was stored and "
          "replayed: " + again.describe())
    check_eq(stored(key), "", "a key stored for a rolled-back handler")
    ok = post("/t/items", {"k": key, "v": "ok"}, key)
    check_original(ok, "the key after a failed attempt, with a new body")
    check_eq(rows(key), 1, "rows")


def t_crash():
    crasher = daemon("worker-t4c")
    key = "crash-%s" % RUN
    body = {"k": key, "v": "c"}
    r = post("/t/crash", body, key, timeout=20.0)
    tap.diag("first answer, the worker crashing: %s" % r.describe())
    try:
        code = crasher.proc.wait(10)
    except Exception:
        code = None
    if code is None:
        raise TestFailure("the t4c worker (FERRY_TEST_CRASH_AFTER_COMMIT="
                          "put_crash) is still running after the request: "
                          "the hook is not honoured; answer: " + r.describe())
    stack.retired.append(crasher)
    crasher.killed = True
    crasher.logf.close()
    check_eq(code, -signal.SIGKILL, "the crashing worker's exit")
    # The transaction committed: one row and a completed key.
    check_eq(rows(key), 1, "rows after the crash (the COMMIT happened)")
    check_eq(stored(key), "completed|201", "the stored response")
    if r.status == 201:
        check(replayed(r), "201 from a worker that crashed before replying, "
              "not a replay: " + r.describe())
    jc.start_worker(stack, "t4c")
    t0 = time.monotonic()
    while True:
        p = post("/t/crash", {"k": "probe-" + RUN}, timeout=10.0)
        if p.status == 201:
            break
        check(time.monotonic() - t0 < 30, "a new t4c worker not serving in "
              "30 s: " + p.describe())
        time.sleep(0.3)
    retry = post("/t/crash", body, key)
    check(retry.status == 201 and replayed(retry), "the client's retry with "
          "the same key: expected the stored 201 with Idempotent-Replayed: "
          "true, got " + retry.describe())
    n = stack.psql("SELECT n FROM t4_items WHERE k = '%s'" % key)
    check_eq(retry.json(), {"n": int(n), "k": key, "v": "c"},
             "the replayed body is the committed row")
    check_eq(rows(key), 1, "rows after the retry")


def t_stop():
    problems = stack.stop_all()
    check(not problems, "\n".join(problems))


t_stop = jc.no_stack(t_stop)

CASES = [
    ("a repeat with the same key and payload replays the stored response "
     "(Idempotent-Replayed: true); one row", t_replay),
    ("50 concurrent identical POSTs with one key: one row; every answer "
     "the stored one or 409", t_concurrent),
    ("a repeat while the first still runs: 409 problem, then the stored "
     "response", t_in_progress),
    ("the same key with another body or operation: 422, nothing written",
     t_mismatch),
    ("Idempotency-Key of 255 characters accepted (bare, sf-string), 256 "
     "and invalid keys 400", t_key_syntax),
    ("Idempotency-Key is ignored on GET", t_get_ignores_key),
    ("a handler that failed stores nothing: a retry runs again",
     t_failed_handler),
    ("worker SIGKILLed after COMMIT, before its reply: the retry gets the "
     "stored response, the row exists once", t_crash),
    ("no sanitizer reports / clean exits", t_stop),
]

jc.run(tap, CASES, jc.bring_up(tap, stack, worker_env={"t4c": CRASH_ENV}))

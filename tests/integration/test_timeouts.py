"""test_timeouts.py: deadlines, bulkheads and services without workers.

A derived config adds GET /reports/slow400 (the slow report with a 400 ms
route timeout), makes the reports pool one actor with credit 1 and a
broker queue limit of 2, and a second edge adds GET /ghost for a service no
pool serves.  Checks: 504 at the deadline (not when the statement ends),
the edge keeps serving afterwards, a saturated reports pool sheds 503 with
Retry-After while pool app answers every request, and a service without
workers gets 503 after broker.no_worker_grace (500 ms here).  Prints TAP.
"""

import os
import sys
import threading
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, check_eq, check_problem  # noqa: E402

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-it-timeouts")

SLOW400 = """\
    - route: GET /reports/slow400
      service: reports
      operation: slow
      timeout: 400ms
      query:
        seconds: {type: number, required: true}
"""
GHOST = """\
    - route: GET /ghost
      service: ghost
      operation: nothing
"""
SETS = ["broker.services.reports.queue_limit=2", "pools.reports.actors=1",
        "pools.reports.credit=1", "edge.connection_timeout=1s"]
ghost = {}


def get(path, port=None, **kw):
    return harness.request(port or stack.http_port, "GET", path, **kw)


def parallel(jobs, timeout=20.0):
    """Runs each (path, port) in its own thread; returns the Responses (or
    the exception text) in order.  Every request has its own timeout."""
    out = [None] * len(jobs)

    def run(i, path, port):
        try:
            out[i] = get(path, port=port, timeout=timeout)
        except Exception as e:
            out[i] = "error: %s" % e

    threads = [threading.Thread(target=run, args=(i, p, port), daemon=True)
               for i, (p, port) in enumerate(jobs)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(timeout + 5)
    return out


def summary(rs):
    return ", ".join(r if isinstance(r, str) else "%d in %.2f s"
                     % (r.status, r.elapsed) for r in rs)


@tap.test("bulkhead: a saturated reports pool sheds 503 with Retry-After")
def _():
    rs = parallel([("/reports/slow?seconds=1", None)] * 8)
    statuses = [r.status if not isinstance(r, str) else r for r in rs]
    check(all(s in (200, 503) for s in statuses),
          "statuses other than 200/503: " + summary(rs))
    shed = [r for r in rs if not isinstance(r, str) and r.status == 503]
    done = [r for r in rs if not isinstance(r, str) and r.status == 200]
    check(len(shed) >= 3, "expected >= 3 of 8 shed (1 actor, credit 1, "
          "queue 2): " + summary(rs))
    check(len(done) >= 1, "no slow report succeeded: " + summary(rs))
    for r in shed:
        ra = r.header("Retry-After")
        check(ra is not None and ra.strip().isdigit(),
              "503 without a valid Retry-After: " + r.describe())
        check(r.elapsed < 0.9, "a shed request took %.2f s, not immediate: %s"
              % (r.elapsed, r.describe()))
    check_problem(shed[0], 503, "shed request")


@tap.test("bulkhead: pool app answers all requests while reports is full")
def _():
    jobs = [("/reports/slow?seconds=1.5", None)] * 6 + \
        [("/users/%d" % n, None) for n in range(100, 130)]
    rs = parallel(jobs)
    slow, fast = rs[:6], rs[6:]
    check(any(not isinstance(r, str) and r.status == 503 for r in slow),
          "reports was not saturated (no 503): " + summary(slow))
    bad = [(i, r) for i, r in enumerate(fast)
           if isinstance(r, str) or r.status != 200]
    check(not bad, "app requests failed while reports was full: %s"
          % summary([r for _, r in bad]))
    for i, r in enumerate(fast):
        check_eq(r.json().get("id"), 100 + i, "user id")
        check(r.elapsed < 1.4, "GET /users/%d took %.2f s: waited behind "
              "reports" % (100 + i, r.elapsed))


@tap.test("route timeout 400 ms on a 2 s statement: 504 at the deadline")
def _():
    time.sleep(1.6)     # let the previous test's slow reports finish
    r = get("/reports/slow400?seconds=2")
    check_problem(r, 504)
    check(r.elapsed < 1.5, "504 came after %.2f s, not at the 400 ms "
          "deadline" % r.elapsed)
    check(r.elapsed >= 0.3, "504 came after only %.2f s, before the "
          "deadline" % r.elapsed)


@tap.test("after a 504 the edge still serves normal requests")
def _():
    for n in (1, 2, 3):
        r = get("/users/%d" % n)
        check(r.status == 200, r.describe())
        check_eq(r.json().get("id"), n, "id")


@tap.test("the reports pool answers again after the timed-out statement")
def _():
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < 6.0:
        last = get("/reports/slow?seconds=0.1", timeout=10)
        if last.status == 200:
            break
        time.sleep(0.2)
    check(last.status == 200, "within 6 s: " + last.describe())
    check_eq(last.json().get("slept"), True, "slept")


@tap.test("GET /ghost (service without workers) is 503 after the grace")
def _():
    check("port" in ghost, "second edge did not start: %s"
          % ghost.get("error"))
    r = get("/ghost", port=ghost["port"], timeout=10)
    check_problem(r, 503)
    check(r.elapsed < 3.0, "503 took %.2f s (grace is 500 ms)" % r.elapsed)
    tap.diag("no-worker 503 after %.3f s" % r.elapsed)


@tap.test("/readyz is 503 on an edge with a route to a service w/o worker")
def _():
    check("port" in ghost, "second edge did not start: %s"
          % ghost.get("error"))
    r = get("/readyz", port=ghost["port"])
    check(r.status == 503, r.describe())
    r = get("/users/5", port=ghost["port"])
    check(r.status == 200, "other routes on that edge: " + r.describe())


@tap.test("a client that stalls mid-header is cut off (408 or close)")
def _():
    import socket
    s = socket.create_connection(("127.0.0.1", stack.http_port), timeout=10)
    try:
        s.sendall(b"GET /users/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slo")
        t0 = time.monotonic()
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            raise harness.TestFailure("still open after 10 s (connection_"
                                      "timeout is 1 s)")
        except ConnectionResetError:
            pass
        took = time.monotonic() - t0
        check(took < 5.0, "closed only after %.1f s" % took)
        check(data == b"" or data.startswith(b"HTTP/1.1 408"),
              "unexpected answer: %r" % data[:200])
    finally:
        s.close()
    r = get("/users/1")
    check(r.status == 200, "edge after the slow client: " + r.describe())


harness.sanitizer_test(tap, stack)


def start_ghost_edge():
    """A second edge on the same broker with GET /ghost added."""
    try:
        main_config = stack.config
        path = stack.write_config(SLOW400 + GHOST, name="ghost.yaml")
        stack.config = main_config
        port = harness.free_port()
        sets = [s for s in stack.sets if not s.startswith("edge.listen=")]
        sets.append("edge.listen=127.0.0.1:%d" % port)
        d = stack.start_daemon("edge-ghost", "edge", config=path, sets=sets)
        stack.wait_http("/healthz", 200, 20.0, port=port)
        stack.wait_http("/users/1", 200, 20.0, port=port)
        ghost["port"] = port
        ghost["daemon"] = d
    except Exception as e:
        ghost["error"] = str(e)
        tap.diag("second edge: %s" % e)


err = harness.bring_up(tap, stack, sets=SETS, extra_routes=SLOW400)
if err is None:
    start_ghost_edge()
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

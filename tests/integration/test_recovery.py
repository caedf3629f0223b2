"""test_recovery.py: a worker killed with SIGKILL, then restarted.

With broker.heartbeat 200 ms (liveness 3) the broker notices a dead worker
in well under a second.  While pool app has no worker, requests to it must
fail cleanly (503 or 504 problem, never hang past the route's deadline) and
/readyz must say 503; once the worker is back, /readyz returns to 200 and
GET /users/1 works again.  A slow report in flight when its worker is
killed must still get exactly one answer before its deadline.  The app
route timeout is 3 s here (edge.default_timeout) to bound every wait.
Prints TAP.
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
stack = harness.Stack("ferry-it-recovery")
DEADLINE = 3.0
SETS = ["edge.default_timeout=3s", "edge.routes[4].timeout=4s"]


def get(path, **kw):
    return harness.request(stack.http_port, "GET", path, **kw)


def poll(path, want, timeout):
    """Polls GET path until it answers want; returns (seconds, last)."""
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            last = get(path, timeout=DEADLINE + 3)
            if last.status == want:
                return time.monotonic() - t0, last
        except harness.TestFailure as e:
            last = str(e)
        time.sleep(0.1)
    return None, last


def describe(r):
    return r if isinstance(r, str) else r.describe()


@tap.test("GET /users/1 answers 200 before the kill")
def _():
    r = get("/users/1")
    check(r.status == 200, r.describe())


@tap.test("requests to pool app fail cleanly (503/504) after SIGKILL")
def _():
    stack.retire(stack.worker_app, kill=True)
    for i in range(5):
        r = get("/users/%d" % (i + 1), timeout=DEADLINE + 5)
        check(r.status in (503, 504), "request %d: %s" % (i, r.describe()))
        check_problem(r, r.status, "request %d" % i)
        check(r.elapsed < DEADLINE + 1.0, "request %d took %.2f s, past "
              "the %.0f s deadline" % (i, r.elapsed, DEADLINE))


@tap.test("/readyz answers 503 while pool app has no worker")
def _():
    took, last = poll("/readyz", 503, 5.0)
    check(took is not None, "/readyz never said 503 in 5 s: "
          + describe(last))


@tap.test("pool reports keeps answering while app is down")
def _():
    r = get("/reports/slow?seconds=0")
    check(r.status == 200, r.describe())


@tap.test("restarted worker: /readyz returns to 200")
def _():
    stack.start_worker("app")
    took, last = poll("/readyz", 200, 20.0)
    check(took is not None, "/readyz not 200 within 20 s: " + describe(last))
    tap.diag("ready again after %.2f s" % took)


@tap.test("restarted worker: GET /users/1 returns 200 again")
def _():
    took, last = poll("/users/1", 200, 10.0)
    check(took is not None, "not 200 within 10 s: " + describe(last))
    check_eq(last.json().get("id"), 1, "id")
    for n in range(2, 12):
        r = get("/users/%d" % n)
        check(r.status == 200, r.describe())


@tap.test("a report in flight when its worker dies is answered once, "
          "before its deadline")
def _():
    box = {}

    def run():
        try:
            box["r"] = get("/reports/slow?seconds=3", timeout=15)
        except Exception as e:
            box["r"] = "error: %s" % e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.7)     # dispatched and sleeping in PostgreSQL by now
    stack.retire(stack.worker_reports, kill=True)
    t.join(15)
    check(not t.is_alive(), "the request hung for 15 s")
    r = box["r"]
    check(not isinstance(r, str), r)
    check(r.status in (502, 503, 504), r.describe())
    check_problem(r, r.status)
    check(r.elapsed < 4.0 + 1.0, "answered after %.2f s, past the 4 s "
          "deadline" % r.elapsed)
    tap.diag("in-flight request answered %d after %.2f s"
             % (r.status, r.elapsed))


@tap.test("restarted reports worker serves again; app unaffected")
def _():
    stack.start_worker("reports")
    took, last = poll("/reports/slow?seconds=0", 200, 20.0)
    check(took is not None, "reports not 200 within 20 s: " + describe(last))
    r = get("/users/3")
    check(r.status == 200, r.describe())
    took, last = poll("/readyz", 200, 10.0)
    check(took is not None, "/readyz not 200: " + describe(last))


@tap.test("POST /orders works again once a missing table is back")
def _():
    # create_order prepares both its statements in one segment; when the
    # first Parse fails (no table users) the second is skipped, and the
    # worker must not count it as prepared.  Enough requests to reach
    # every actor of pool app while the table is gone.
    def order():
        return harness.request(stack.http_port, "POST", "/orders",
                               body=b'{"user_id": 1, "amount": "2.50"}',
                               headers={"Content-Type": "application/json"},
                               timeout=DEADLINE + 3)
    stack.psql("ALTER TABLE users RENAME TO users_away")
    try:
        for i in range(12):
            r = order()
            check(r.status == 500, "without users, order %d: %s"
                  % (i, r.describe()))
    finally:
        stack.psql("ALTER TABLE users_away RENAME TO users")
    for i in range(12):
        r = order()
        check(r.status == 201, "with users back, order %d: %s"
              % (i, r.describe()))


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack, sets=SETS)
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

"""test_breaker.py: stop PostgreSQL under load; the pool's breaker opens
and closes again.

Eight clients send GET /users/<id> (pool `app`, route timeout 5 s) in a
loop.  PostgreSQL is stopped (pg_ctl stop -m fast): the actors lose their
connections, the breaker of pool `app` opens (`breaker open pool=app` in
the worker's log) and the pool answers 503 with Retry-After at once
instead of letting requests wait for their deadline.  PostgreSQL is
started again on the same port: after the cool-down (1 s here) the
breaker is half-open, the actors reconnect, probes succeed, it closes
(`breaker closed pool=app`) and 200s come back, with no ferry daemon
restarted.  Prints the figures: time from the stop to the first fast 503,
the slowest 503 once open, time from the start to the first 200 again.
"""

import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
from faults import harness, check  # noqa: E402

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-fault-breaker")
# The route's timeout: a request that waited for PostgreSQL would take it.
DEADLINE_S = 5.0


def log_lines(d, text):
    with open(d.log, errors="replace") as f:
        return [line for line in f if text in line]


@tap.test("PostgreSQL stopped under load: the breaker opens (fast 503s "
          "with Retry-After), and closes once it is back")
def _():
    worker = stack.worker_app
    pids = [d.pid for d in stack.daemons]
    ld = faults.Load(stack.http_port,
                     lambda i: ("GET", "/users/%d" % (1 + i % 1000), None),
                     clients=8, pause=0.01, timeout=DEADLINE_S + 5).start()
    time.sleep(1.5)
    t_stop = time.monotonic()
    stack.pg_stop()
    ok = faults.wait_for(lambda: log_lines(worker, "breaker open pool=app"),
                         10)
    check(ok, "no `breaker open pool=app` in the worker's log")
    time.sleep(3.0)
    open_records = ld.snapshot()
    t_start = time.monotonic()
    stack.pg_start()
    back = faults.wait_for(
        lambda: any(r[0] >= t_start and r[2] == 200 for r in ld.snapshot()),
        30)
    time.sleep(1.0)
    records = ld.stop()
    check(back, "no 200 within 30 s of PostgreSQL's start: %s"
          % faults.summary([r for r in records if r[0] >= t_start]))

    first_503 = min((r[1] for r in open_records
                     if r[0] >= t_stop and r[2] == 503), default=None)
    check(first_503 is not None, "no 503 while PostgreSQL was down: %s"
          % faults.summary([r for r in open_records if r[0] >= t_stop]))
    # Once the breaker is open (1 s after the stop, with margin), every
    # request is answered 503 at once: none waits for its deadline.
    steady = [r for r in open_records if r[0] >= t_stop + 1.0]
    check(steady, "no requests while the breaker was open")
    bad = [r for r in steady if r[2] != 503]
    check(not bad, "%d of %d requests not 503 while the breaker was open: "
          "%r" % (len(bad), len(steady), bad[:3]))
    slowest = max(r[1] - r[0] for r in steady)
    check(slowest < DEADLINE_S / 2,
          "a 503 took %.2f s: it waited instead of failing fast" % slowest)
    r = harness.request(stack.http_port, "GET", "/users/1")
    check(r.status == 200, "after recovery GET /users/1 is %d" % r.status)
    first_200 = min(r[1] for r in records if r[0] >= t_start and r[2] == 200)
    tap.diag("breaker: first 503 %.3f s after the stop; %d requests while "
             "open, slowest %.1f ms; first 200 %.2f s after PostgreSQL's "
             "start (cool-down 1 s)"
             % (first_503 - t_stop, len(steady), slowest * 1000,
                first_200 - t_start))
    tap.diag("answers while down: %s; after the start: %s"
             % (faults.summary(steady),
                faults.summary([r for r in records if r[0] >= t_start])))
    check(log_lines(worker, "breaker closed pool=app"),
          "no `breaker closed pool=app` in the worker's log")
    check([d.pid for d in stack.daemons] == pids
          and all(d.alive() for d in stack.daemons),
          "a daemon was restarted or died")


@tap.test("a 503 of the open breaker carries Retry-After")
def _():
    stack.pg_stop()
    try:
        ok = faults.wait_for(
            lambda: harness.request(stack.http_port, "GET",
                                    "/users/2").status == 503, 10)
        check(ok, "no 503 with PostgreSQL stopped")
        r = harness.request(stack.http_port, "GET", "/users/2")
        harness.check_problem(r, 503)
        check(r.header("retry-after"), "no Retry-After: %s" % r.describe())
    finally:
        stack.pg_start()
    ok = faults.wait_for(
        lambda: harness.request(stack.http_port, "GET",
                                "/users/2").status == 200, 30)
    check(ok, "no 200 within 30 s of PostgreSQL's start")


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack,
                       sets=("pools.app.breaker.cooldown=1s",))
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

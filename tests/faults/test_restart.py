"""test_restart.py: restarts under a steady load.

Four clients send GET /users/{id} without pause (new connection each).
First the broker alone is stopped with SIGTERM and started again on the
same endpoints: the clients may see 503 or 504 problems for at most a few
seconds, then 200s again, with no other daemon restarted; the outage and
the recovery time are measured and printed.  Then every daemon in turn
(each worker, the broker, the edge) is stopped with SIGTERM and started
again: every request must get a 200 or a clean 503 problem, none may be
reset, refused or left hanging.  The edge is replaced the way a rolling
restart does it on one port: the new edge binds the same port
(SO_REUSEPORT) before the old one gets SIGTERM and drains.  Prints TAP.
"""

import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
from faults import harness, check  # noqa: E402

NETNS = faults.migrating_listeners()
harness.install_guards(300)
tap = harness.Tap()
tap.diag(NETNS)
stack = harness.Stack("ferry-fault-restart")
DEADLINE = 3.0          # edge.default_timeout
MAX_OUTAGE = 5.0        # seconds of non-200 answers allowed per restart


def users(i):
    return ("GET", "/users/%d" % (i % 1000 + 1), None)


def load():
    return faults.Load(stack.http_port, users, clients=4, pause=0.0,
                       timeout=DEADLINE + 5).start()


def wait_all_ok(ld, seconds, timeout):
    """Waits until the load's last `seconds` are all 200s."""
    def ok():
        recs = ld.snapshot()
        if not recs:
            return False
        now = time.monotonic()
        recent = [r for r in recs if r[0] >= now - seconds]
        return (recs[-1][0] - recs[0][0] > seconds and recent
                and all(r[2] == 200 for r in recent))
    return faults.wait_for(ok, timeout, 0.1)


def bad_records(records, allowed):
    return [r for r in records if r[2] != 200 and r[2] not in allowed]


@tap.test("broker restart under load: 503/504 for at most a few seconds, "
          "then 200s, no other daemon restarted")
def _():
    others = [d for d in stack.daemons if d.alive() and d is not stack.broker]
    ld = load()
    check(wait_all_ok(ld, 1.0, 10), "no steady 200s before the restart: "
          + faults.summary(ld.snapshot()))
    t_term = time.monotonic()
    stack.retire(stack.broker)
    t_stopped = time.monotonic()
    code = stack.broker.exit_code
    stack.start_broker()
    t_started = time.monotonic()
    ok = wait_all_ok(ld, 2.0, 20)
    records = ld.stop()
    check(code == 0, "the broker exited %s on SIGTERM" % code)
    after = [r for r in records if r[1] >= t_term]
    failed = [r for r in after if r[2] != 200]
    first_ok = next((r for r in records if r[0] >= t_started
                     and r[2] == 200), None)
    outage = (failed[-1][1] - failed[0][0]) if failed else 0.0
    tap.diag("broker stop took %.2f s; answers from SIGTERM on: %s"
             % (t_stopped - t_term, faults.summary(after)))
    tap.diag("outage (first to last non-200): %.2f s; first 200 sent "
             "%.2f s after the new broker started; all 200 again %.2f s "
             "after SIGTERM" % (
                 outage, (first_ok[0] - t_started) if first_ok else -1,
                 (failed[-1][1] - t_term) if failed else 0.0))
    check(ok, "never steady 200s again: " + faults.summary(records))
    bad = bad_records(after, (503, 504))
    check(not bad, "%d answers neither 200 nor a 503/504 problem, first: %r"
          % (len(bad), bad[:3]))
    check(outage <= MAX_OUTAGE, "non-200 answers for %.2f s" % outage)
    for d in others:
        check(d.alive(), "%s (pid %d) is gone" % (d.name, d.pid))


def restart_worker(pool):
    old = getattr(stack, "worker_" + pool)
    stack.retire(old)
    check(old.exit_code == 0, "worker %s exited %s" % (pool, old.exit_code))
    stack.start_worker(pool)


def restart_broker():
    stack.retire(stack.broker)
    check(stack.broker.exit_code == 0, "broker exited %s"
          % stack.broker.exit_code)
    stack.start_broker()


def restart_edge():
    old = stack.edge
    stack.start_edge()          # binds the same port beside the old one
    stack.wait_http("/readyz", 200, 20.0)
    stack.retire(old)
    check(old.exit_code == 0, "edge exited %s" % old.exit_code)


@tap.test("rolling restart of every daemon under load: only 200s and clean "
          "503s, nothing reset or hanging")
def _():
    ld = load()
    check(wait_all_ok(ld, 1.0, 10), "no steady 200s before the restarts: "
          + faults.summary(ld.snapshot()))
    steps = [("worker app", lambda: restart_worker("app")),
             ("worker reports", lambda: restart_worker("reports")),
             ("broker", restart_broker),
             ("edge", restart_edge)]
    marks = []
    try:
        for name, fn in steps:
            t = time.monotonic()
            fn()
            ok = wait_all_ok(ld, 1.0, 20)
            marks.append((name, t, time.monotonic()))
            check(ok, "no steady 200s after restarting the %s: %s"
                  % (name, faults.summary(ld.snapshot())))
    finally:
        records = ld.stop()
    for name, t, t_ok in marks:
        during = [r for r in records if r[1] >= t and r[0] < t_ok]
        tap.diag("%-15s back to steady 200s in %.2f s: %s"
                 % (name, t_ok - t, faults.summary(during)))
    bad = bad_records(records, (503,))
    check(not bad, "%d of %d answers neither 200 nor a 503 problem, "
          "first: %r" % (len(bad), len(records), bad[:3]))


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack, sets=["edge.default_timeout=3s"])
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

"""test_edge_pg_restart.py: the edge's job store connections come back
after PostgreSQL restarts, without restarting the edge.

Each edge loop keeps its own libpq connection (edge_jobs.c) for
GET /jobs/{id} and a LISTEN ferry_jobs for Prefer: wait.  PostgreSQL is
stopped (pg_ctl stop -m fast, as test_breaker.py does): GET /jobs/{id}
answers 503 with Retry-After at once.  It is started again on the same
port: GET /jobs/{id} answers 200 again within the reconnect backoff (5 s
at most), and a GET with Prefer: wait on a running job returns as soon as
the job finishes, which needs the LISTEN of the new connection (without
it the GET would wait its full 10 s).  Several GETs on new connections
cover both loops.
"""

import os
import sys
import time
import traceback

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
from faults import harness, check  # noqa: E402

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-fault-edge-pg")


def submit(seconds):
    r = harness.request(stack.http_port, "POST",
                        "/reports/slow?seconds=%s" % seconds,
                        headers={"Prefer": "respond-async"})
    check(r.status == 202 and r.header("location"),
          "async submit: %s" % r.describe())
    return r.header("location")


def job(location, wait=None, timeout=20.0):
    h = {"Prefer": "wait=%d" % wait} if wait else None
    return harness.request(stack.http_port, "GET", location, headers=h,
                           timeout=timeout)


@tap.test("GET /jobs/{id} answers 503 while PostgreSQL is down and 200 "
          "again after its restart, the edge not restarted")
def _():
    loc = submit(0.1)
    ok = faults.wait_for(lambda: job(loc).json().get("status")
                         == "succeeded", 20)
    check(ok, "the job did not finish: %s" % job(loc).describe())
    pid = stack.edge.pid
    stack.pg_stop()
    t_stop = time.monotonic()
    ok = faults.wait_for(lambda: job(loc).status == 503, 10)
    check(ok, "GET %s with PostgreSQL down: %s" % (loc, job(loc).describe()))
    r = job(loc)
    harness.check_problem(r, 503)
    check(r.header("retry-after"), "no Retry-After: %s" % r.describe())
    check(r.elapsed < 1.0, "the 503 took %.2f s" % r.elapsed)
    time.sleep(max(0.0, 2.0 - (time.monotonic() - t_stop)))
    t_start = time.monotonic()
    stack.pg_start()
    # Every loop: a streak of 200s on new connections.
    streak = [0]

    def back():
        streak[0] = streak[0] + 1 if job(loc).status == 200 else 0
        return streak[0] >= 8
    ok = faults.wait_for(back, 30)
    check(ok, "GET /jobs/{id} not 200 within 30 s of the restart: %s"
          % job(loc).describe())
    tap.diag("GET /jobs/{id}: 200 on every try %.2f s after PostgreSQL's "
             "start" % (time.monotonic() - t_start))
    check(stack.edge.pid == pid and stack.edge.alive(),
          "the edge was restarted or died")


@tap.test("after the restart, Prefer: wait returns when the job finishes "
          "(the LISTEN is back on every loop)")
def _():
    # The worker's own connections must be back too, and pool reports'
    # breaker closed, before it runs jobs: one 200 may be a half-open
    # probe, with the next messages still refused 503, so wait for a
    # streak longer than the breaker's probes (3).
    streak = [0]

    def closed():
        r = harness.request(stack.http_port, "GET",
                            "/reports/slow?seconds=0.01")
        streak[0] = streak[0] + 1 if r.status == 200 else 0
        return streak[0] >= 5
    ok = faults.wait_for(closed, 30)
    check(ok, "GET /reports/slow not steadily 200 after PostgreSQL's "
          "restart")
    for i in range(6):
        loc = submit(1)
        r = job(loc, wait=10)
        check(r.status == 200 and r.json().get("status") == "succeeded",
              "GET %s with Prefer: wait=10: %s" % (loc, r.describe()))
        check(r.elapsed < 5.0, "GET with Prefer: wait=10 took %.2f s: no "
              "notification (LISTEN lost?)" % r.elapsed)


harness.sanitizer_test(tap, stack)


def bring_up():
    tap.log_sources.append(stack.live_logs)
    try:
        stack.start_postgres()
        stack.migrate()
        stack.load_users(1000)
        stack.pg_ready = True
        stack.plan_ports(sets=["edge.database=" + stack.conninfo])
        stack.start_all()
        return None
    except Exception as e:
        tap.diag("stack setup failed:")
        tap.diag(traceback.format_exc())
        tap.dump_logs()
        return "%s: %s" % (type(e).__name__, str(e).strip()[:300])


err = bring_up()
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

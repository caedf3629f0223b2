"""test_worker_kill.py: SIGKILL a worker that holds requests in flight.

Pool `slow` runs in two worker processes (8 actors each) and sleeps in
PostgreSQL for every request.  With 50 GETs in flight (retryable), one
process is killed: every request must still get a 200 (redelivered to the
other process) or a clean 5xx problem, none past its route deadline.  Then
the surviving process takes 20 POSTs (not retryable) and is killed too:
each of them must get 502 with the "outcome unknown" problem, at once
rather than at its deadline.  Prints TAP.
"""

import os
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
from faults import harness, check, describe  # noqa: E402

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-fault-kill")
TIMEOUT = 20.0      # the slow routes' deadline
ROUTES, POOLS = faults.slow_config("20s", actors=8, credit=8)
slow = []           # the slow pool's worker processes, newest last


def live_slow():
    return [d for d in slow if d.alive()]


def start_slow():
    d = stack.start_worker("slow")
    slow.append(d)
    return d


def wait_slow_ready(count):
    """Waits until `count` slow processes have registered: that many
    concurrent naps run at once across them."""
    took = stack.wait_http("/readyz", 200, 20.0)
    r = harness.request(stack.http_port, "GET", "/slow/fast", timeout=10)
    check(r.status == 200, r.describe())
    return took


@tap.test("a second slow worker process starts")
def _():
    start_slow()          # the first one was started by bring_up
    wait_slow_ready(2)
    # Both processes must hold work before we kill one: wait for the
    # broker to have seen both READYs.
    ok = faults.wait_for(lambda: sum(1 for line in open(stack.broker.log)
                                     if "worker ready" in line
                                     and "service=slow" in line) >= 16, 20)
    check(ok, "the broker did not see 16 slow actors ready")


@tap.test("SIGKILL with 50 GETs in flight: each gets 200 or a clean 5xx "
          "before its deadline")
def _():
    port = stack.http_port
    calls = [lambda: faults.outcome(port, "GET", "/slow?seconds=1",
                                    TIMEOUT + 5) for _ in range(50)]
    box = {}

    def killer():
        # Kill the process that runs naps once both are busy.
        busy = faults.wait_for(
            lambda: (lambda h: h if len(h) == 2 else None)(
                faults.holders(stack, faults.NAP, live_slow())), 10, 0.02)
        if not busy:
            box["err"] = "the two slow processes were never both busy"
            return None
        victim = busy[0]
        box["killed_at"] = time.monotonic()
        stack.retire(victim, kill=True)
        box["victim"] = victim.pid
        return None

    results = faults.run_parallel(calls + [killer], TIMEOUT + 10)[:50]
    check("err" not in box, box.get("err", ""))
    ok = 0
    for i, r in enumerate(results):
        check(not isinstance(r, str), "request %d: %s" % (i, r))
        check(r.elapsed < TIMEOUT + 1.0, "request %d took %.2f s, past the "
              "%.0f s deadline" % (i, r.elapsed, TIMEOUT))
        if r.status == 200:
            ok += 1
        else:
            check(faults.is_problem(r, range(500, 600)),
                  "request %d: neither 200 nor a 5xx problem: %s"
                  % (i, r.describe()))
    lost = [line.strip() for line in open(stack.broker.log)
            if "worker lost" in line and "service=slow" in line]
    held = sum(int(line.split("inflight=")[1].split()[0]) for line in lost)
    tap.diag("killed pid %d: %d actors lost holding %d requests; %d of 50 "
             "answered 200, %d 5xx, slowest %.2f s"
             % (box["victim"], len(lost), held, ok, 50 - ok,
                max(r.elapsed for r in results)))
    check(held > 0, "the killed worker held nothing in flight: the test "
          "proved nothing (broker log: %r)" % lost)
    check(ok == 50, "only %d of 50 retryable GETs were redelivered "
          "successfully" % ok)


@tap.test("SIGKILL with 20 POSTs in flight: each gets 502, outcome unknown")
def _():
    port = stack.http_port
    survivors = live_slow()
    check(len(survivors) == 1, "expected one live slow worker, have %d"
          % len(survivors))
    calls = [lambda: faults.outcome(port, "POST", "/slow?seconds=5",
                                    TIMEOUT + 5) for _ in range(20)]
    box = {}

    def killer():
        if not faults.wait_for(lambda: faults.holders(stack, faults.NAP,
                                                      survivors), 10, 0.02):
            box["err"] = "the slow worker never ran a nap"
            return None
        time.sleep(0.3)     # every POST dispatched by now
        box["killed_at"] = time.monotonic()
        stack.retire(survivors[0], kill=True)
        return None

    t0 = time.monotonic()
    results = faults.run_parallel(calls + [killer], TIMEOUT + 10)[:20]
    check("err" not in box, box.get("err", ""))
    slowest = 0.0
    for i, r in enumerate(results):
        check(not isinstance(r, str), "request %d: %s" % (i, r))
        p = harness.check_problem(r, 502, "request %d" % i)
        check("outcome unknown" in p.get("detail", ""),
              "request %d: detail does not say the outcome is unknown: %r"
              % (i, p))
        slowest = max(slowest, t0 + r.elapsed - box["killed_at"])
    tap.diag("20 POSTs answered 502 at most %.2f s after the kill" % slowest)
    check(slowest < 3.0, "a 502 came %.2f s after the kill, not promptly"
          % slowest)


@tap.test("a restarted slow worker serves again")
def _():
    start_slow()
    took, last = None, None
    until = time.monotonic() + 20
    while time.monotonic() < until:
        last = faults.outcome(stack.http_port, "GET", "/slow?seconds=0", 10)
        if not isinstance(last, str) and last.status == 200:
            took = True
            break
        time.sleep(0.1)
    check(took, "GET /slow not 200 within 20 s: " + describe(last))


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack, pools=("app", "reports", "slow"),
                       extra_routes=ROUTES, extra_pools=POOLS)
if err is None:
    slow.append(stack.worker_slow)
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

"""test_worker_drain.py: SIGTERM one of two worker processes under load.

Pool `slow` runs in two worker processes (2 actors, credit 8 each, so an
actor holds messages it has not started).  Eight clients send GETs that
sleep 0.2 s in PostgreSQL; one process gets SIGTERM.  A stopping worker
sends BYE (no new work), hands the messages it has not started back to
the broker (BACK, docs/protocol.md), which gives them to the other
process, finishes those it started and exits 0, so every request gets a
200.  Before BACK it answered them 503 "the worker is shutting down" /
"the worker cannot take work now" (4 of 76 here).  Prints TAP.
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
stack = harness.Stack("ferry-fault-wdrain")
ROUTES, POOLS = faults.slow_config("20s", actors=2, credit=8)
slow = []


@tap.test("SIGTERM to one of two worker processes under load: every "
          "request still gets a 200")
def _():
    slow.append(stack.start_worker("slow"))
    ok = faults.wait_for(lambda: sum(1 for line in open(stack.broker.log)
                                     if "worker ready" in line
                                     and "service=slow" in line) >= 4, 20)
    check(ok, "the broker did not see 4 slow actors ready")
    ld = faults.Load(stack.http_port,
                     lambda i: ("GET", "/slow?seconds=0.2", None),
                     clients=8, pause=0.0, timeout=25).start()
    time.sleep(2.0)
    t = time.monotonic()
    stack.retire(slow[0])
    took = time.monotonic() - t
    time.sleep(2.0)
    records = ld.stop()
    after = [r for r in records if r[1] >= t]
    tap.diag("worker stop took %.2f s (exit %s); answers from SIGTERM on: %s"
             % (took, slow[0].exit_code, faults.summary(after)))
    check(slow[0].exit_code == 0, "the worker exited %s" % slow[0].exit_code)
    bad = [r for r in records if r[2] != 200]
    check(not bad, "%d of %d requests not 200 although another worker "
          "serves the pool, first: %r" % (len(bad), len(records), bad[:3]))


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack, pools=("app", "reports", "slow"),
                       extra_routes=ROUTES, extra_pools=POOLS)
if err is None:
    slow.append(stack.worker_slow)
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

"""test_poison.py: a request that kills every worker it reaches.

Pool `slow` runs in two worker processes.  The poison is a GET (retryable)
whose statement the test treats as fatal: whenever a worker process runs
it, the test SIGKILLs that process and starts a new one, as systemd would.
(The worker's FERRY_TEST_CRASH_AFTER_COMMIT hook cannot play this part: it
fires after COMMIT, so a redelivered Idempotency-Key request is answered
from the stored response and crashes nobody the second time.)  The broker
must stop redelivering it after broker.max_deaths (2) deaths, answer it
with a problem and log it as a dead letter, while other requests to the
same pool keep succeeding throughout.  Prints TAP.
"""

import os
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
from faults import harness, check, describe  # noqa: E402

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-fault-poison")
MAX_DEATHS = 2
# credit 1: an actor holds one message, so no other request waits
# behind the poison on its PostgreSQL connection and dies with it.
ROUTES, POOLS = faults.slow_config("20s", actors=4, credit=1)
slow = []


def live_slow():
    return [d for d in slow if d.alive()]


@tap.test("two slow worker processes serve")
def _():
    slow.append(stack.start_worker("slow"))
    ok = faults.wait_for(lambda: sum(1 for line in open(stack.broker.log)
                                     if "worker ready" in line
                                     and "service=slow" in line) >= 8, 20)
    check(ok, "the broker did not see 8 slow actors ready")
    r = harness.request(stack.http_port, "GET", "/slow/fast", timeout=10)
    check(r.status == 200, r.describe())


@tap.test("the poison kills at most broker.max_deaths workers, then gets "
          "a problem; other requests keep succeeding")
def _():
    port = stack.http_port
    load = faults.Load(port, lambda i: ("GET", "/slow/fast", None),
                       clients=3, pause=0.01, timeout=25).start()
    box = {}

    def poison():
        box["r"] = faults.outcome(port, "GET", "/slow?seconds=60", 30)

    t = threading.Thread(target=poison, daemon=True)
    t.start()
    kills = []
    until = time.monotonic() + 30
    while t.is_alive() and time.monotonic() < until:
        for d in faults.holders(stack, faults.NAP, live_slow()):
            stack.retire(d, kill=True)
            kills.append(time.monotonic())
            slow.append(stack.start_worker("slow"))   # "systemd"
        time.sleep(0.02)
    t.join(1)
    # Nothing runs the poison any more: it was not delivered again.
    time.sleep(1.5)
    again = faults.holders(stack, faults.NAP, live_slow())
    records = load.stop()
    check(not t.is_alive(), "the poison request got no answer in 30 s")
    r = box["r"]
    tap.diag("poison: %d workers killed; answer %s" % (len(kills),
                                                      describe(r)[:300]))
    tap.diag("other requests meanwhile: %s" % faults.summary(records))
    check(len(kills) == MAX_DEATHS, "the poison killed %d workers, "
          "expected %d" % (len(kills), MAX_DEATHS))
    check(not again, "the poison runs again after it was answered")
    check(not isinstance(r, str), r)
    p = harness.check_problem(r, r.status, "poison")
    check(500 <= r.status < 600, "poison answered %d" % r.status)
    check("died" in p.get("detail", ""), "detail: %r" % p)
    dead = [line for line in open(stack.broker.log) if "dead letter" in line]
    check(len(dead) == 1, "broker log has %d dead-letter lines" % len(dead))
    tap.diag(dead[0].strip())
    bad = [rec for rec in records if rec[2] != 200]
    check(len(records) > 20, "too few other requests ran: %d" % len(records))
    check(not bad, "%d of %d other requests failed, first: %r"
          % (len(bad), len(records), bad[:3]))


@tap.test("the pool still serves after the dead letter")
def _():
    for i in range(10):
        r = harness.request(stack.http_port, "GET", "/slow?seconds=0",
                            timeout=10)
        check(r.status == 200, r.describe())


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack, pools=("app", "reports", "slow"),
                       extra_routes=ROUTES, extra_pools=POOLS,
                       sets=["broker.max_deaths=%d" % MAX_DEATHS],
                       grace="3s")
if err is None:
    slow.append(stack.worker_slow)
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

"""test_poison.py: a request that kills every worker process it reaches.

Pool `slow` runs in two worker processes, each under its supervisor, with
two actors of credit 4 each, so innocent requests sit in the poison's
actor and in its sibling actor (same process) when it first strikes.  The
poison is a GET (retryable) of the operation `boom`, which the worker's
test-only hook FERRY_TEST_ABORT_OPERATION=boom turns into abort (): the
process dies by SIGABRT with whatever its actors hold, its supervisor
tells the broker (DIED) and starts a new one.  The broker must isolate
what was in flight at a crash per process (a crash, told by DIED, kills
every actor of the process: a suspect goes only to a process that holds
nothing, and no actor of that process gets anything else while it holds
it), stop
redelivering the poison after broker.max_deaths (2) deaths, answer it
with a problem and hand its dead letter to a worker, which writes it to
ferry.dead_letters with the signal; the innocent requests are redelivered
and succeed, none is dead-lettered.  Prints TAP.
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
# Two actors per process: with isolation per actor instead of per process
# an innocent suspect placed on the poison's sibling actor died with it a
# second time and was dead-lettered too (1 innocent 502 in 62).
ACTORS, CREDIT = 2, 4
ROUTES, POOLS = faults.slow_config("20s", actors=ACTORS, credit=CREDIT)
ROUTES += """\
    - route: GET /slow/boom
      service: slow
      operation: boom
      timeout: 20s
"""
POOLS += """\
      boom:
        sql: SELECT 1 AS boom
        result: one
"""
stack.env["FERRY_TEST_ABORT_OPERATION"] = "boom"
slow = []


def slow_logs():
    text = ""
    for d in stack.daemons:
        if d.name == "worker-slow":
            with open(d.log, errors="replace") as f:
                text += f.read()
    return text


@tap.test("two slow worker processes serve")
def _():
    slow.append(stack.start_worker("slow"))
    want = 2 * ACTORS
    ok = faults.wait_for(lambda: sum(1 for line in open(stack.broker.log)
                                     if "worker ready" in line
                                     and "service=slow" in line) >= want, 20)
    check(ok, "the broker did not see %d slow actors ready" % want)
    r = harness.request(stack.http_port, "GET", "/slow/fast", timeout=10)
    check(r.status == 200, r.describe())


@tap.test("the poison kills at most broker.max_deaths worker processes, "
          "then gets a problem and one dead letter; innocent requests all "
          "succeed")
def _():
    port = stack.http_port
    load = faults.Load(port, lambda i: ("GET", "/slow?seconds=0.3", None),
                       clients=8, pause=0.0, timeout=25).start()
    time.sleep(1.0)
    box = {}

    def poison():
        box["r"] = faults.outcome(port, "GET", "/slow/boom", 30)

    t = threading.Thread(target=poison, daemon=True)
    t.start()
    t.join(30)
    # Time for the supervisors to restart their workers and for the
    # redelivered innocent requests to be answered.
    time.sleep(3.0)
    records = load.stop()
    check(not t.is_alive(), "the poison request got no answer in 30 s")
    r = box["r"]
    logs = slow_logs()
    deaths = logs.count("worker process died signal=SIGABRT")
    lost = [line.strip() for line in open(stack.broker.log)
            if "worker lost" in line and "service=slow" in line]
    tap.diag("poison: %d worker processes died; answer %s"
             % (deaths, describe(r)[:300]))
    for line in lost:
        tap.diag(line)
    tap.diag("innocent requests meanwhile: %s" % faults.summary(records))
    check(1 <= deaths <= MAX_DEATHS, "%d worker processes died, expected "
          "1 to %d" % (deaths, MAX_DEATHS))
    check(logs.count("restarting the worker process") >= deaths,
          "a supervisor did not restart its worker")
    check(not isinstance(r, str), r)
    p = harness.check_problem(r, r.status, "poison")
    check(500 <= r.status < 600, "poison answered %d" % r.status)
    check("died" in p.get("detail", ""), "detail: %r" % p)
    bad = [rec for rec in records if rec[2] != 200]
    check(len(records) > 20, "too few other requests ran: %d" % len(records))
    check(not bad, "%d of %d innocent requests failed, first: %r"
          % (len(bad), len(records), bad[:3]))

    def rows():
        return stack.psql(
            "SELECT message_id, operation, service, attempts, "
            "error->>'reason', error->'signals' ? 'SIGABRT' "
            "FROM ferry.dead_letters ORDER BY id", timeout=10)

    text = faults.wait_for(rows, 10)
    check(text, "ferry.dead_letters is empty")
    lines = text.splitlines()
    tap.diag("dead letters: %r" % lines)
    check(len(lines) == 1, "%d dead letters, expected 1 (the poison): %r"
          % (len(lines), lines))
    msg_id, op, service, attempts, reason, sigabrt = lines[0].split("|")
    check(op == "boom" and service == "slow",
          "dead letter of %s/%s, expected slow/boom" % (service, op))
    check(reason == "worker deaths", "error->>'reason' = %r" % reason)
    check(int(attempts) == deaths, "attempts %s, expected %d"
          % (attempts, deaths))
    check(sigabrt == "t", "signals lack SIGABRT")
    check("dead letter written msg=%s" % msg_id in slow_logs(),
          "no worker logged 'dead letter written msg=%s'" % msg_id)


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

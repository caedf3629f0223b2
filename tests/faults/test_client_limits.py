"""test_client_limits.py: per-client limits at the edge (edge.client_limits).

The edge keys clients by the X-Client-Id header here, with a rate of 20
requests per second (burst 5) and 2 requests in flight per client.  A
greedy client (four threads without pause) gets 429s with Retry-After,
X-Request-Id and a problem body, and no more 200s than its rate allows,
while a polite client at the same time (10 requests per second) gets only
200s.  A client with three slow requests at once gets one 429 for the
third while another client is served.
"""

import os
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
from faults import harness, check  # noqa: E402

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-fault-client-limits")
RATE, BURST, SECONDS = 20, 5, 3.0


def get(path, client, timeout=10.0):
    return harness.request(stack.http_port, "GET", path,
                           headers={"X-Client-Id": client}, timeout=timeout)


@tap.test("a greedy client gets 429 with Retry-After while a polite one "
          "at the same time gets only 200s")
def _():
    greedy, polite = [], []
    stop = threading.Event()

    def hammer(i):
        while not stop.is_set():
            greedy.append(get("/users/%d" % (1 + i), "greedy"))

    def behave():
        while not stop.is_set():
            polite.append(get("/users/7", "polite"))
            time.sleep(0.1)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=behave))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join(15)
    elapsed = time.monotonic() - t0
    g200 = [r for r in greedy if r.status == 200]
    g429 = [r for r in greedy if r.status == 429]
    tap.diag("greedy: %d requests, %d 200, %d 429 in %.1f s; polite: %d "
             "requests, statuses %s" % (len(greedy), len(g200), len(g429),
                                        elapsed, len(polite),
                                        sorted({r.status for r in polite})))
    check(len(polite) >= 10, "the polite client made only %d requests"
          % len(polite))
    bad = [r for r in polite if r.status != 200]
    check(not bad, "the polite client got %s" % (bad[0].describe()
                                                  if bad else ""))
    check(g429, "the greedy client never got 429")
    check(len(g200) + len(g429) == len(greedy), "the greedy client got "
          "other statuses: %s" % sorted({r.status for r in greedy}))
    allowed = BURST + RATE * elapsed + 2
    check(len(g200) <= allowed, "the greedy client got %d 200s, more than "
          "its rate allows (%d)" % (len(g200), allowed))
    check(len(g200) >= RATE * SECONDS * 0.5, "the greedy client got only "
          "%d 200s" % len(g200))
    r = g429[0]
    harness.check_problem(r, 429)
    check(r.header("retry-after") and int(r.header("retry-after")) >= 1,
          "no Retry-After: %s" % r.describe())
    check(r.header("x-request-id"), "no X-Request-Id: %s" % r.describe())


@tap.test("the third request in flight of one client gets 429; another "
          "client is served meanwhile")
def _():
    time.sleep(1.0)     # a full bucket again
    results = [None] * 3

    def slow(i):
        results[i] = get("/slow?seconds=1.5", "patient-%d" % 0)

    threads = [threading.Thread(target=slow, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.15)
    other = get("/users/9", "bystander")
    for t in threads:
        t.join(15)
    statuses = sorted(r.status for r in results)
    check(statuses == [200, 200, 429], "statuses %s: %s" % (
        statuses, [r.describe() for r in results if r.status != 200]))
    limited = [r for r in results if r.status == 429][0]
    check(limited.elapsed < 1.0, "the 429 took %.2f s" % limited.elapsed)
    check(limited.header("retry-after") == "1", limited.describe())
    check(other.status == 200, "the bystander got %s" % other.describe())
    # Released: the client may send again.
    r = get("/slow/fast", "patient-0")
    check(r.status == 200, "after its requests ended: %s" % r.describe())


@tap.test("health checks are not limited")
def _():
    for _ in range(3 * BURST):
        r = get("/healthz", "greedy")
        check(r.status == 200, r.describe())


harness.sanitizer_test(tap, stack)

routes, pools = faults.slow_config(timeout="10s", actors=4, credit=4)
err = harness.bring_up(tap, stack, pools=("app", "reports", "slow"),
                       extra_routes=routes, extra_pools=pools,
                       sets=("edge.client_limits.key=header:X-Client-Id",
                             "edge.client_limits.rate=%d/s" % RATE,
                             "edge.client_limits.burst=%d" % BURST,
                             "edge.client_limits.inflight=2"))
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

"""test_flood.py: 20,000 requests for a pool whose workers are stopped.

Pool `reports` loses its worker (SIGTERM); then 16 clients send 20,000
GET /reports/slow over keep-alive connections.  Every answer must be a 503
problem with Retry-After, quickly (p99 under a second, none over the
route's deadline), and the resident memory (VmRSS) of every daemon,
sampled through the flood, must stay under RSS_BOUND_KIB and grow by less
than RSS_GROWTH_KIB: the queues are bounded, so the flood cannot grow
them.  The figures are printed.  Then pool app still answers.  Prints TAP.
"""

import http.client
import os
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
from faults import harness, check  # noqa: E402

harness.install_guards(400)
tap = harness.Tap()
stack = harness.Stack("ferry-fault-flood")
TOTAL = 20000
CLIENTS = 16
# The bound stated by this test: sanitizer builds included (ASan's
# shadow memory and quarantine make every daemon larger).
RSS_BOUND_KIB = 256 * 1024
RSS_GROWTH_KIB = 64 * 1024


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100.0))]


@tap.test("20,000 requests to a pool without workers: fast 503s, bounded "
          "memory")
def _():
    stack.retire(stack.worker_reports)
    stack.wait_http("/readyz", 503, 10.0, streak=3)
    daemons = [d for d in stack.daemons if d.alive()]
    before = {d.name: faults.rss_kb(d.pid) for d in daemons}
    peak = dict(before)
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.1):
            for d in daemons:
                v = faults.rss_kb(d.pid)
                if v and v > peak[d.name]:
                    peak[d.name] = v

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lock = threading.Lock()
    counts = {}
    latencies = []
    errors = []
    next_i = [0]

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", stack.http_port,
                                          timeout=10)
        mine = []
        while True:
            with lock:
                if next_i[0] >= TOTAL:
                    break
                next_i[0] += 1
            t0 = time.monotonic()
            try:
                conn.request("GET", "/reports/slow?seconds=0")
                r = conn.getresponse()
                body = r.read()
                status = r.status
                ok = (status == 503 and r.getheader("Retry-After")
                      and b'"status":503' in body)
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as e:
                status, ok = "%s: %s" % (type(e).__name__, e), False
                conn.close()
            mine.append(time.monotonic() - t0)
            with lock:
                counts[status] = counts.get(status, 0) + 1
                if not ok and len(errors) < 5:
                    errors.append(status)
        conn.close()
        with lock:
            latencies.extend(mine)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True)
               for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, t0 + 240 - time.monotonic()))
    took = time.monotonic() - t0
    time.sleep(0.3)
    sampling.set()
    sampler.join(2)
    check(not any(t.is_alive() for t in threads), "the flood did not end "
          "in 240 s")
    after = {d.name: faults.rss_kb(d.pid) for d in daemons}
    tap.diag("%d requests in %.1f s (%.0f/s): %s" % (
        len(latencies), took, len(latencies) / took, counts))
    tap.diag("latency p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
        1000 * percentile(latencies, 50), 1000 * percentile(latencies, 99),
        1000 * max(latencies)))
    for d in daemons:
        tap.diag("VmRSS %-14s before %7d KiB, peak %7d KiB, after %7d KiB "
                 "(bound %d KiB, growth bound %d KiB)"
                 % (d.name, before[d.name], peak[d.name], after[d.name] or 0,
                    RSS_BOUND_KIB, RSS_GROWTH_KIB))
    check(len(latencies) == TOTAL, "%d answers" % len(latencies))
    check(not errors, "answers other than a 503 problem with Retry-After: "
          "%r" % errors)
    check(percentile(latencies, 99) < 1.0, "p99 %.3f s" %
          percentile(latencies, 99))
    check(max(latencies) < 30.0, "an answer took %.1f s" % max(latencies))
    for d in daemons:
        check(peak[d.name] < RSS_BOUND_KIB, "%s peaked at %d KiB"
              % (d.name, peak[d.name]))
        check(peak[d.name] - before[d.name] < RSS_GROWTH_KIB,
              "%s grew by %d KiB" % (d.name, peak[d.name] - before[d.name]))


@tap.test("pool app answers after the flood; reports again with a worker")
def _():
    for i in range(10):
        r = harness.request(stack.http_port, "GET", "/users/%d" % (i + 1))
        check(r.status == 200, r.describe())
    stack.start_worker("reports")
    stack.wait_http("/readyz", 200, 20.0)
    r = harness.request(stack.http_port, "GET", "/reports/slow?seconds=0")
    check(r.status == 200, r.describe())


harness.sanitizer_test(tap, stack)

# In a sanitizer build AddressSanitizer keeps freed memory in a
# quarantine of 256 MiB by default, which a flood fills: that would be
# counted as growth.  A small quarantine keeps the figures about ferry's
# own memory (the checks stay on; other builds ignore ASAN_OPTIONS).
stack.env["ASAN_OPTIONS"] = ":".join(
    [o for o in [stack.env.get("ASAN_OPTIONS", "")] if o]
    + ["quarantine_size_mb=8", "thread_local_quarantine_size_kb=64"])
err = harness.bring_up(tap, stack)
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

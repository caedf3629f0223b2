"""test_slow_clients.py: 500 slow-header clients against the edge.

Each of 500 connections sends a request head one byte per second, so it
is never idle but never finishes its head (slowloris).  With
edge.connection_timeout 2 s the edge must cut every one of them off within
a few seconds of that timeout, while another client keeps being served
normally: its latency is measured and printed.  Prints TAP.
"""

import os
import select
import socket
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
from faults import harness, check  # noqa: E402

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-fault-slow")
SLOW = 500
TIMEOUT_S = 2           # edge.connection_timeout
CUT_BY = TIMEOUT_S + 4  # every slow connection closed by then
HEAD = b"GET /users/1 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100.0))]


@tap.test("500 slow-header connections are cut off while others are served")
def _():
    port = stack.http_port
    socks = {}
    for i in range(SLOW):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setblocking(False)
        socks[s] = [time.monotonic(), 0, None]   # opened, sent, closed
    t0 = time.monotonic()
    latencies = []
    failures = []
    next_byte = t0
    while time.monotonic() - t0 < CUT_BY + 2:
        now = time.monotonic()
        if now >= next_byte:
            next_byte += 1.0
            for s, st in socks.items():
                if st[2] is None and st[1] < len(HEAD):
                    try:
                        s.send(HEAD[st[1]:st[1] + 1])
                        st[1] += 1
                    except OSError:
                        st[2] = now
        open_socks = [s for s, st in socks.items() if st[2] is None]
        if not open_socks:
            break
        readable, _, _ = select.select(open_socks, [], [], 0)
        for s in readable:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data or data.startswith(b"HTTP/1.1 408"):
                socks[s][2] = time.monotonic()
        # The normal client: one request at a time, new connection.
        r = faults.outcome(port, "GET", "/users/%d" % (len(latencies) % 900
                                                      + 1), 5)
        if isinstance(r, str) or r.status != 200:
            failures.append(faults.describe(r))
            time.sleep(0.01)
        else:
            latencies.append(r.elapsed)
            time.sleep(0.01)
    cut = sorted(st[2] - st[0] for st in socks.values() if st[2] is not None)
    still = sum(1 for st in socks.values() if st[2] is None)
    for s in socks:
        s.close()
    tap.diag("slow connections cut: %d of %d, after %.2f s (first) to "
             "%.2f s (last); bytes sent each: up to %d"
             % (len(cut), SLOW, cut[0] if cut else -1, cut[-1] if cut else -1,
                max(st[1] for st in socks.values())))
    if latencies:
        tap.diag("normal client meanwhile: %d requests, p50 %.1f ms, p99 "
                 "%.1f ms, max %.1f ms" % (
                     len(latencies), 1000 * percentile(latencies, 50),
                     1000 * percentile(latencies, 99),
                     1000 * max(latencies)))
    check(still == 0, "%d of %d slow connections still open after %d s"
          % (still, SLOW, CUT_BY))
    check(cut[-1] <= CUT_BY, "the last slow connection was cut after "
          "%.2f s" % cut[-1])
    check(not failures, "%d normal requests failed, first: %s"
          % (len(failures), failures[0] if failures else ""))
    check(len(latencies) >= 20, "only %d normal requests" % len(latencies))
    check(percentile(latencies, 99) < 1.0, "normal p99 latency %.3f s"
          % percentile(latencies, 99))


@tap.test("the edge serves normally afterwards")
def _():
    for i in range(20):
        r = harness.request(stack.http_port, "GET", "/users/%d" % (i + 1))
        check(r.status == 200, r.describe())


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack, sets=[
    "edge.connection_timeout=%ds" % TIMEOUT_S])
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

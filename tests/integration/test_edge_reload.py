"""test_edge_reload.py: SIGHUP makes ferry-edge read its configuration
again (docs/edge.md "Reload").

The configuration file is rewritten and the edge gets SIGHUP: a route
added is served and a route removed answers 404, also on a keep-alive
connection opened before the reload (the same socket: no reconnect), and
a request in flight across the reload finishes with its 200.  Per-client
limits switched on by a reload apply at once, and go away with the next
one.  An invalid file is logged and the running configuration kept.
"""

import os
import signal
import sys
import threading
import time
import http.client

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check  # noqa: E402

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-it-reload")

BEFORE = """\
    - route: GET /reload/before/{id:int}
      service: app
      operation: get_user
"""
ADDED = """\
    - route: GET /reload/added/{id:int}
      service: app
      operation: get_user
"""
LIMITS = """\
  client_limits:
    key: header:X-Client-Id
    rate: 1/s
    burst: 1
"""


def log_count(text):
    with open(stack.edge.log, errors="replace") as f:
        return sum(1 for line in f if text in line)


def reload(edit, expect="reloaded routes="):
    """Rewrites the config with edit(text), sends SIGHUP, waits for the
    edge's log line expect."""
    with open(stack.config) as f:
        text = f.read()
    new = edit(text)
    check(new != text, "the edit changed nothing")
    with open(stack.config, "w") as f:
        f.write(new)
    before = log_count(expect)
    os.kill(stack.edge.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if log_count(expect) > before:
            return
        time.sleep(0.05)
    raise harness.TestFailure("no `%s` in the edge's log within 10 s"
                              % expect)


def get(conn, path, headers=None):
    return harness.request(stack.http_port, "GET", path, headers=headers,
                           conn=conn)


@tap.test("SIGHUP adds and removes routes; a keep-alive connection from "
          "before and a request in flight carry on")
def _():
    conn = http.client.HTTPConnection("127.0.0.1", stack.http_port,
                                      timeout=10)
    try:
        r = get(conn, "/reload/before/3")
        check(r.status == 200, r.describe())
        r = get(conn, "/reload/added/3")
        check(r.status == 404, r.describe())
        sock = conn.sock
        slow = []
        t = threading.Thread(target=lambda: slow.append(harness.request(
            stack.http_port, "GET", "/reports/slow?seconds=1.5",
            timeout=20)))
        t.start()
        time.sleep(0.3)
        reload(lambda text: text.replace(BEFORE, ADDED))
        r = get(conn, "/reload/added/4")
        check(r.status == 200 and r.json().get("id") == 4, r.describe())
        r = get(conn, "/reload/before/4")
        harness.check_problem(r, 404)
        check(conn.sock is sock, "the keep-alive connection was replaced")
        t.join(20)
        check(slow and slow[0].status == 200,
              "the request in flight across the reload: %s"
              % (slow[0].describe() if slow else "no answer"))
        # New connections see the new routes on every loop.
        for i in range(8):
            r = harness.request(stack.http_port, "GET", "/reload/added/5")
            check(r.status == 200, r.describe())
    finally:
        conn.close()


@tap.test("client limits switched on by SIGHUP apply, and go with the next "
          "one")
def _():
    reload(lambda text: text.replace("\nedge:\n", "\nedge:\n" + LIMITS, 1))
    h = {"X-Client-Id": "reloaded"}
    statuses = [harness.request(stack.http_port, "GET", "/users/1",
                                headers=h).status for _ in range(4)]
    check(statuses.count(429) >= 2 and statuses[0] == 200,
          "statuses with 1/s: %s" % statuses)
    r = harness.request(stack.http_port, "GET", "/users/1",
                        headers={"X-Client-Id": "someone-else"})
    check(r.status == 200, r.describe())
    reload(lambda text: text.replace(LIMITS, "", 1))
    statuses = [harness.request(stack.http_port, "GET", "/users/1",
                                headers=h).status for _ in range(4)]
    check(statuses == [200] * 4, "statuses without limits: %s" % statuses)


@tap.test("an invalid configuration is logged and the running one kept")
def _():
    reload(lambda text: text.replace(ADDED, ADDED.replace("GET", "FETCH")),
           expect="reload failed")
    with open(stack.edge.log, errors="replace") as f:
        failed = [line for line in f if "reload failed" in line]
    check("unknown method" in failed[-1] or "FETCH" in failed[-1],
          failed[-1])
    r = harness.request(stack.http_port, "GET", "/reload/added/6")
    check(r.status == 200, "the running routes were lost: %s"
          % r.describe())
    # A route needing the job store's absence/presence change is refused
    # too; and a YAML syntax error.
    reload(lambda text: text.replace("FETCH /reload", "GET /reload") +
           "\n  : [\n", expect="reload failed")
    r = harness.request(stack.http_port, "GET", "/reload/added/7")
    check(r.status == 200, r.describe())
    check(stack.edge.alive(), "the edge died")


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack, extra_routes=BEFORE)
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

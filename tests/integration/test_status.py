"""test_status.py: `ferryctl status` against a running stack.

The broker's control socket (broker.control, a free port here) answers
STATUS with its services and workers as JSON.  Checks: --json lists pools
app and reports with their workers, credit and breaker "closed" (no pool
has seen a failure), the edges and the in-flight counters; the table
names the same services and workers when the endpoint comes from a
configuration file (-c); a broker that does not answer, or a configuration
without broker.control, makes ferryctl exit 1 with a message, quickly;
with PostgreSQL stopped pool app's breaker shows "open" (its workers report
it in their heartbeats), and "closed" once PostgreSQL is back.  Prints TAP.
"""

import json
import os
import re
import subprocess
import sys
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, check_eq  # noqa: E402

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-it-status")


def ctl(*args, timeout=10):
    """Runs ferryctl status ARGS; returns (exit code, stdout, stderr,
    seconds)."""
    t0 = time.monotonic()
    p = subprocess.run([harness.BINARIES["ctl"], "status"] + list(args),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout, env=stack.env)
    return (p.returncode, p.stdout.decode(errors="replace"),
            p.stderr.decode(errors="replace"), time.monotonic() - t0)


def status_json():
    code, out, err, _ = ctl("--endpoint", stack.control, "--json")
    check(code == 0, "ferryctl status --json exited %d: %s" % (code, err))
    try:
        return json.loads(out)
    except ValueError as e:
        raise harness.TestFailure("not JSON (%s): %r" % (e, out[:500]))


def settled(pred, what, timeout=10.0):
    """Polls status until pred(status) holds; returns that status."""
    t0 = time.monotonic()
    while True:
        s = status_json()
        if pred(s):
            return s
        if time.monotonic() - t0 > timeout:
            raise harness.TestFailure("%s: last status %s"
                                      % (what, json.dumps(s)[:1500]))
        time.sleep(0.2)


def pool_workers(s, name):
    return [w for w in s["workers"] if w.get("service") == name]


@tap.test("status --json: services, workers with credit, breakers closed")
def _():
    # Workers register within a heartbeat of the stack's readiness.
    s = settled(lambda s: all(pool_workers(s, p) for p in ("app", "reports")),
                "workers of app and reports")
    services = {svc["name"]: svc for svc in s["services"]}
    for name in ("app", "reports"):
        check(name in services, "service %s missing: %s" % (name, services))
        svc = services[name]
        workers = pool_workers(s, name)
        check_eq(svc["workers"], len(workers), "%s workers" % name)
        check_eq(svc["breaker"], "closed", "%s breaker" % name)
        for key in ("queued", "queue_max", "ready", "inflight"):
            check(isinstance(svc.get(key), int), "%s.%s: %r"
                  % (name, key, svc.get(key)))
        for w in workers:
            check(isinstance(w.get("credit"), int) and w["credit"] > 0,
                  "worker without credit: %r" % w)
            check_eq(w.get("breaker"), "closed", "worker breaker")
            check(isinstance(w.get("id"), str) and w["id"],
                  "worker id: %r" % w)
            check(isinstance(w.get("idle_ms"), int) and w["idle_ms"] >= 0,
                  "idle_ms: %r" % w)
    check_eq(services["reports"]["queue_max"], 4, "reports queue_max")
    check(s["edges"] >= 1, "no edge counted: %r" % s["edges"])
    check(s["inflight_max"] > 0 and s["inflight"] >= 0,
          "in-flight counters: %r" % s)
    check(s["draining"] is False, "draining: %r" % s["draining"])
    # Workers that name their process (when the worker sends it) say
    # "host:pid", one process per pool (the pid is the worker daemon's
    # child when it runs under its supervisor).
    for name in ("app", "reports"):
        named = set(w["process"] for w in pool_workers(s, name)
                    if w.get("process"))
        for p in named:
            check(re.match(r"^[^:\s]+:[0-9]+$", p), "process %r" % p)
        check(len(named) <= 1, "%s workers name several processes: %r"
              % (name, named))


@tap.test("status: a request in flight is counted")
def _():
    import threading
    out = {}

    def slow():
        out["r"] = harness.request(stack.http_port, "GET",
                                   "/reports/slow?seconds=1.5", timeout=10)

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    s = settled(lambda s: s["inflight"] >= 1 and any(
        svc["name"] == "reports" and svc["inflight"] >= 1
        for svc in s["services"]), "reports in flight", timeout=5.0)
    held = [w for w in pool_workers(s, "reports") if w["inflight"] > 0]
    check(held and held[0]["idle_ms"] == 0, "busy worker: %r" % held)
    t.join(15)
    check("r" in out and out["r"].status == 200,
          "slow report: %s" % (out["r"].describe() if "r" in out else "none"))


@tap.test("status (table) from -c FILE names services and workers")
def _():
    path = os.path.join(stack.tmp, "ctl.yaml")
    with open(path, "w") as f:
        f.write("broker:\n  control: %s\n" % stack.control)
    code, out, err, _ = ctl("-c", path)
    check(code == 0, "exit %d: %s" % (code, err))
    for text in ("SERVICE", "WORKER", "app", "reports", "closed", "CREDIT"):
        check(text in out, "%r not in the table:\n%s" % (text, out))
    s = status_json()
    for w in s["workers"]:
        check(w["id"] in out, "worker %s not in the table:\n%s"
              % (w["id"], out))


@tap.test("status: no broker answering, or no control socket: exit 1",
          needs="none")
def _():
    dead = "tcp://127.0.0.1:%d" % harness.free_port()
    code, out, err, took = ctl("--endpoint", dead)
    check_eq(code, 1, "exit code with nobody listening")
    check("no answer" in err, "message: %r" % err)
    check(took < 5.0, "took %.1f s" % took)
    path = os.path.join(stack.tmp, "off.yaml")
    with open(path, "w") as f:
        f.write("broker:\n  frontend: tcp://127.0.0.1:1\n")
    code, out, err, _ = ctl("-c", path)
    check_eq(code, 1, "exit code without broker.control")
    check("broker.control" in err, "message: %r" % err)
    code, out, err, _ = ctl("--bogus")
    check_eq(code, 2, "exit code of a usage error")


def breaker_is(want, timeout):
    """Sends GET /users/1 (the breaker moves on calls) until status says
    pool app's breaker is want; returns the last status."""
    t0 = time.monotonic()
    while True:
        try:
            harness.request(stack.http_port, "GET", "/users/1", timeout=5)
        except harness.TestFailure:
            pass
        s = status_json()
        svc = [x for x in s["services"] if x["name"] == "app"]
        if svc and svc[0]["breaker"] == want:
            return s
        if time.monotonic() - t0 > timeout:
            raise harness.TestFailure("breaker of app not %s: %s"
                                      % (want, json.dumps(s)[:1500]))
        time.sleep(0.1)


@tap.test("status: pool app's breaker is open with PostgreSQL stopped, "
          "closed once it is back")
def _():
    stack.pg_stop()
    try:
        s = breaker_is("open", 15)
        # A worker reports its breaker in its heartbeats, which it sends
        # when idle: one that has not reported yet counts as closed.
        check(any(w["breaker"] == "open" for w in pool_workers(s, "app")),
              "app workers: %r" % pool_workers(s, "app"))
        reports = [x for x in s["services"] if x["name"] == "reports"]
        check(reports and reports[0]["breaker"] in ("closed", "open"),
              "reports: %r" % reports)
    finally:
        stack.pg_start()
    breaker_is("closed", 30)


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack, sets=("pools.app.breaker.cooldown=1s",))
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

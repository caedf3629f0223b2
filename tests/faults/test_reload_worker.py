"""test_reload_worker.py: SIGHUP resizes a worker's pool under load.

Pool `slow` runs in one worker process, 2 actors of credit 4.  Eight
clients send GETs that sleep 0.2 s in PostgreSQL throughout.  The test
rewrites the configuration file and sends SIGHUP to the worker (its
supervisor forwards it): growing the pool to 6 actors starts 4 new
actors (4 new READYs at the broker, more statements running at once),
shrinking it to 1 drains 5 of them the way SIGTERM drains one, and a
configuration that does not load changes nothing.  Each reload compares
against the configuration in effect: going back to the original file
(2 actors, credit 4) after a reload that asked for credit 5 grows the
pool to 2 and reports nothing (credit 4 is what runs), reloading the same
file again changes nothing, and growing to 4 then at once back to 2
keeps the 2 actors that were there.  Every request gets a 200
throughout, and no PostgreSQL connection of an actor that stays is
dropped.  Prints TAP.
"""

import os
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
from faults import harness, check  # noqa: E402

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-fault-wreload")
ROUTES, _ = faults.slow_config("20s")
state = {}


def pools(actors, credit=4):
    return faults.SLOW_POOL % {"actors": actors, "credit": credit}


def ready_count():
    return sum(1 for line in open(stack.broker.log)
               if "worker ready" in line and "service=slow" in line)


def log_has(text, since=0):
    with open(stack.worker_slow.log, errors="replace") as f:
        f.seek(since)
        return text in f.read()


def log_size():
    return os.path.getsize(stack.worker_slow.log)


def running_naps():
    return int(stack.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND query LIKE '%%%s%%' AND pid <> pg_backend_pid()" % faults.NAP,
        timeout=10))


def backends():
    rows = stack.psql(
        "SELECT pid FROM pg_stat_activity WHERE datname = 'ferry' "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
        timeout=10)
    return {int(p) for p in rows.split()}


def most_naps(seconds):
    """The most NAP statements seen running at once over seconds."""
    top = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        top = max(top, running_naps())
        time.sleep(0.05)
    return top


def reload(actors, credit=4, text=None):
    """Rewrites the configuration and sends SIGHUP; returns the worker
    log's size before, to look for what the reload logged."""
    if text is None:
        stack.write_config(ROUTES, pools(actors, credit))
    else:
        with open(stack.config, "w") as f:
            f.write(text)
    since = log_size()
    os.kill(stack.worker_slow.pid, signal.SIGHUP)
    return since


@tap.test("under load, SIGHUP grows the pool from 2 to 6 actors")
def _():
    ok = faults.wait_for(lambda: ready_count() >= 2, 20)
    check(ok, "the broker did not see 2 slow actors ready")
    state["load"] = faults.Load(
        stack.http_port, lambda i: ("GET", "/slow?seconds=0.2", None),
        clients=8, pause=0.0, timeout=25).start()
    before = most_naps(1.5)
    check(before <= 2, "%d statements at once from 2 actors" % before)
    readies = ready_count()
    conns = backends()
    since = reload(6)
    ok = faults.wait_for(lambda: ready_count() >= readies + 4, 15)
    check(ok, "the broker saw %d new READYs, expected 4"
          % (ready_count() - readies))
    check(log_has("pool grown pool=slow actors=6", since),
          "no 'pool grown' in the worker log")
    after = most_naps(2.0)
    tap.diag("statements at once: %d with 2 actors, %d with 6"
             % (before, after))
    check(after > 2, "still at most %d statements at once" % after)
    gone = conns - backends()
    check(not gone, "connections dropped by the reload: %r" % sorted(gone))
    check(stack.worker_slow.alive(), "the worker exited")


@tap.test("under load, SIGHUP shrinks the pool from 6 to 1 actor")
def _():
    conns = backends()
    since = reload(1)
    ok = faults.wait_for(lambda: log_has("pool shrunk pool=slow actors=1",
                                         since), 20)
    check(ok, "no 'pool shrunk' in the worker log")
    time.sleep(0.5)
    top = most_naps(2.0)
    check(top <= 1, "%d statements at once from 1 actor" % top)
    gone = conns - backends()
    tap.diag("%d connections closed by the shrink" % len(gone))
    check(len(gone) == 5, "%d connections closed, expected the 5 of the "
          "drained actors" % len(gone))
    check(stack.worker_slow.alive(), "the worker exited")


@tap.test("a change beyond the size is reported as needing a restart")
def _():
    since = reload(1, credit=5)
    ok = faults.wait_for(lambda: log_has("reloaded", since), 10)
    check(ok, "the reload did not finish")
    check(log_has("pools.slow changed beyond its size, needs a restart",
                  since), "no 'needs a restart' in the worker log")


@tap.test("a configuration that does not load is rejected, the running "
          "one kept")
def _():
    conns = backends()
    with open(stack.config) as f:
        good = f.read()
    since = reload(0, text=good.replace("actors: 1", "actors: 0"))
    ok = faults.wait_for(lambda: log_has("reload failed", since), 10)
    check(ok, "no 'reload failed' in the worker log")
    since = reload(0, text="pools: [this is: not: yaml\n")
    ok = faults.wait_for(lambda: log_has("reload failed", since), 10)
    check(ok, "no 'reload failed' for broken YAML")
    time.sleep(1.0)
    check(stack.worker_slow.alive(), "the worker exited")
    check(backends() == conns, "connections changed after a bad reload")
    with open(stack.config, "w") as f:
        f.write(good)


@tap.test("under load, SIGHUP back to the original configuration grows "
          "the pool to 2 and reports nothing")
def _():
    conns = backends()
    readies = ready_count()
    since = reload(2)
    ok = faults.wait_for(lambda: log_has("reloaded", since), 10)
    check(ok, "the reload did not finish")
    check(log_has("pool grown pool=slow actors=2 was=1", since),
          "no 'pool grown ... actors=2 was=1' in the worker log")
    check(not log_has("needs a restart", since),
          "the original configuration was reported as needing a restart")
    ok = faults.wait_for(lambda: ready_count() >= readies + 1, 15)
    check(ok, "no new READY at the broker")
    gone = conns - backends()
    check(not gone, "connections dropped by the reload: %r" % sorted(gone))
    top = most_naps(1.5)
    check(top == 2, "%d statements at once from 2 actors" % top)


@tap.test("under load, a SIGHUP that changes nothing changes nothing")
def _():
    conns = backends()
    readies = ready_count()
    since = reload(2)
    ok = faults.wait_for(lambda: log_has("reloaded", since), 10)
    check(ok, "the reload did not finish")
    for text in ("pool grown", "pool shrunk", "needs a restart"):
        check(not log_has(text, since), "'%s' after a reload of the same "
              "configuration" % text)
    time.sleep(1.0)
    check(ready_count() == readies, "new READYs after a reload that "
          "changes nothing")
    check(backends() == conns, "connections changed after a reload that "
          "changes nothing")


@tap.test("under load, SIGHUP grows the pool to 4 and a second one "
          "reverts it to 2")
def _():
    conns = backends()
    since = reload(4)
    ok = faults.wait_for(lambda: log_has("pool grown pool=slow actors=4 "
                                         "was=2", since), 10)
    check(ok, "no 'pool grown ... actors=4 was=2' in the worker log")
    since = reload(2)
    ok = faults.wait_for(lambda: log_has("pool shrunk pool=slow actors=2 "
                                         "was=4", since), 20)
    check(ok, "no 'pool shrunk ... actors=2 was=4' in the worker log")
    check(not log_has("needs a restart", since),
          "the revert was reported as needing a restart")
    time.sleep(0.5)
    top = most_naps(2.0)
    check(top <= 2, "%d statements at once from 2 actors" % top)
    gone = conns - backends()
    check(not gone, "connections of the 2 actors that stay dropped: %r"
          % sorted(gone))
    check(stack.worker_slow.alive(), "the worker exited")


@tap.test("every request during the reloads got a 200")
def _():
    records = state["load"].stop()
    tap.diag("requests during the reloads: %s" % faults.summary(records))
    bad = [r for r in records if r[2] != 200]
    check(len(records) > 50, "too few requests ran: %d" % len(records))
    check(not bad, "%d of %d requests not 200, first: %r"
          % (len(bad), len(records), bad[:3]))
    r = harness.request(stack.http_port, "GET", "/slow/fast", timeout=10)
    check(r.status == 200, r.describe())


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack, pools=("app", "reports", "slow"),
                       extra_routes=ROUTES, extra_pools=pools(2))
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

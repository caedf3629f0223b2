"""faults.py: what the fault tests share on top of ../integration/harness.py.

The fault tests start the same private stack as the integration tests
(PostgreSQL in a temporary directory, the real daemons on free ports) and
then break it on purpose: SIGKILL a worker, restart the broker, flood a
pool without workers, hold connections open with slow clients.  This
module adds what they need for that: a slow pool and its routes, request
load from many threads with every outcome recorded, the worker process
that holds a given PostgreSQL statement, and resident memory figures.
Standard library only; every wait is bounded.
"""

import os
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import harness  # noqa: E402
from harness import TestFailure, check  # noqa: E402

NETNS_ENV = "FERRY_TEST_NETNS"


def migrating_listeners():
    """Runs this test in a network namespace of its own, where closing a
    listening socket hands the connections still in its queues to the
    other sockets on the port (net.ipv4.tcp_migrate_req, Linux 5.14).
    Without it a rolling restart of the edge on one port resets the few
    connections whose handshake completes between the old edge's last
    accept and its close, whatever the edge does.  The setting is per
    namespace, so the host's is left alone.  Re-executes the test under
    `unshare --net` (root only; elsewhere, or when that fails, the test
    runs as it is and says so).  Returns a line for tap.diag."""
    if os.environ.get(NETNS_ENV) == "1":
        import fcntl
        import socket
        import struct
        siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifr = fcntl.ioctl(s, siocgifflags, struct.pack("16sh", b"lo", 0))
            flags = struct.unpack("16sh", ifr[:18])[1]
            fcntl.ioctl(s, siocsifflags,
                        struct.pack("16sh", b"lo", flags | iff_up))
        with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
            f.write("1\n")
        return "own network namespace, net.ipv4.tcp_migrate_req=1"
    if os.environ.get(NETNS_ENV) != "0" and os.geteuid() == 0 \
            and os.path.exists("/proc/sys/net/ipv4/tcp_migrate_req"):
        import subprocess
        try:
            probe = subprocess.run(["unshare", "--net", "true"],
                                   stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=10)
            if probe.returncode == 0:
                env = dict(os.environ, **{NETNS_ENV: "1"})
                os.execvpe("unshare", ["unshare", "--net", "--",
                                       sys.executable] + sys.argv, env)
        except (OSError, subprocess.SubprocessError):
            pass
    return "host network namespace (no tcp_migrate_req): a reset during " \
           "the edge's restart is then possible"


# A pool `slow` with an operation that sleeps in PostgreSQL (its SQL
# holds the marker NAP, found in pg_stat_activity), a GET route
# (retryable) and a POST route (not retryable) for it, and a fast
# operation on the same pool.
SLOW_ROUTES = """\
    - route: GET /slow
      service: slow
      operation: nap
      timeout: %(timeout)s
      query:
        seconds: {type: number, required: true}
    - route: POST /slow
      service: slow
      operation: nap
      timeout: %(timeout)s
      query:
        seconds: {type: number, required: true}
    - route: GET /slow/fast
      service: slow
      operation: fast
      timeout: %(timeout)s
"""
SLOW_POOL = """\
  slow:
    actors: %(actors)d
    credit: %(credit)d
    operations:
      nap:
        sql: SELECT $1::float8 AS seconds, pg_sleep($1) IS NOT NULL AS napped
        params: [seconds:float8]
        result: one
      fast:
        sql: SELECT 1 AS one
        result: one
"""


NAP = "AS napped"


def slow_config(timeout="15s", actors=4, credit=16):
    """(extra_routes, extra_pools) for harness.bring_up."""
    return (SLOW_ROUTES % {"timeout": timeout},
            SLOW_POOL % {"actors": actors, "credit": credit})


def outcome(port, method, path, timeout, headers=None, body=None):
    """One request on a new connection: a harness.Response, or the error
    text when there was no response (reset, refused, timeout)."""
    try:
        return harness.request(port, method, path, body=body,
                               headers=headers, timeout=timeout)
    except TestFailure as e:
        return str(e)


def run_parallel(calls, timeout):
    """Runs each callable of calls on its own thread; returns their
    results in order.  Fails when one is still running after timeout."""
    results = [None] * len(calls)

    def run(i):
        try:
            results[i] = calls[i]()
        except Exception as e:     # recorded, judged by the caller
            results[i] = "exception: %r" % (e,)

    threads = [threading.Thread(target=run, args=(i,), daemon=True)
               for i in range(len(calls))]
    for t in threads:
        t.start()
    until = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, until - time.monotonic()))
    hung = sum(1 for t in threads if t.is_alive())
    check(hung == 0, "%d of %d requests still running after %.0f s"
          % (hung, len(calls), timeout))
    return results


def is_problem(r, statuses):
    """True when r is a Response with one of statuses and a well-formed
    problem body (harness.check_problem)."""
    if isinstance(r, str) or r.status not in statuses:
        return False
    try:
        harness.check_problem(r, r.status)
        return True
    except TestFailure:
        return False


def describe(r):
    return r if isinstance(r, str) else r.describe()


class Load:
    """Steady load: `clients` threads, each sending requests one after
    another on new connections (a short pause between them) until stop().
    Every request is recorded as (start, end, status or error text)."""

    def __init__(self, port, make_request, clients=4, pause=0.02,
                 timeout=10.0):
        self.port = port
        self.make_request = make_request   # i -> (method, path, headers)
        self.clients = clients
        self.pause = pause
        self.timeout = timeout
        self.records = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = []

    def _client(self, n):
        i = n
        while not self.stopping.is_set():
            method, path, headers = self.make_request(i)
            i += self.clients
            t0 = time.monotonic()
            r = outcome(self.port, method, path, self.timeout, headers)
            t1 = time.monotonic()
            if isinstance(r, str):
                what = r
            elif r.status == 200 or is_problem(r, (r.status,)):
                what = r.status
            else:
                what = "malformed %s" % r.describe()
            with self.lock:
                self.records.append((t0, t1, what))
            self.stopping.wait(self.pause)

    def start(self):
        for n in range(self.clients):
            t = threading.Thread(target=self._client, args=(n,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self):
        self.stopping.set()
        until = time.monotonic() + self.timeout + 5
        for t in self.threads:
            t.join(max(0.0, until - time.monotonic()))
        check(not any(t.is_alive() for t in self.threads),
              "a load client is still waiting for a response")
        return sorted(self.records)

    def snapshot(self):
        with self.lock:
            return sorted(self.records)


def summary(records):
    counts = {}
    for _, _, what in records:
        key = what if isinstance(what, int) else what.split(":")[0][:60]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join("%s: %d" % (k, v) for k, v in
                     sorted(counts.items(), key=lambda kv: str(kv[0])))


def family(pid):
    """pid and its descendants: ferry-worker is a supervisor process with
    the real worker as its child."""
    pids = [pid]
    for p in pids:
        try:
            with open("/proc/%d/task/%d/children" % (p, p)) as f:
                pids.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def rss_kb(pid):
    """VmRSS of pid and its descendants in KiB (None when pid is gone)."""
    total = None
    for p in family(pid):
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total = (total or 0) + int(line.split()[1])
        except OSError:
            if p == pid:
                return None
    return total


def _socket_inodes(pid):
    """Socket inodes of pid and its descendants."""
    inodes = set()
    for p in family(pid):
        fd_dir = "/proc/%d/fd" % p
        try:
            for fd in os.listdir(fd_dir):
                try:
                    target = os.readlink(os.path.join(fd_dir, fd))
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    return inodes


def _local_port_inodes():
    """{inode: local port} of every IPv4 TCP socket."""
    out = {}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                port = int(parts[1].split(":")[1], 16)
                out[parts[9]] = port
    except OSError:
        pass
    return out


def holders(stack, marker, daemons):
    """The daemons (among `daemons`) whose PostgreSQL connection runs an
    active statement containing marker, found through the backend's
    client_port and the daemon's sockets."""
    rows = stack.psql(
        "SELECT client_port FROM pg_stat_activity WHERE state = 'active' "
        "AND query LIKE '%%%s%%' AND pid <> pg_backend_pid()" % marker,
        timeout=10)
    ports = {int(p) for p in rows.split() if p.strip().lstrip("-").isdigit()}
    if not ports:
        return []
    by_inode = _local_port_inodes()
    found = []
    for d in daemons:
        if not d.alive():
            continue
        mine = {by_inode.get(i) for i in _socket_inodes(d.pid)}
        if mine & ports:
            found.append(d)
    return found


def wait_for(cond, timeout, step=0.05):
    """Polls cond() until it returns something true; returns it, or None
    after timeout."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return None

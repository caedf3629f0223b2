"""harness.py: the integration tests' stack and TAP reporter.

Every test file starts its own private stack: a PostgreSQL cluster made
with initdb in a temporary directory (as the `postgres` OS user when we run
as root, since initdb refuses root), the ferry migrations, 1,000 demo users,
then ferry-broker, one ferry-worker per pool and ferry-edge on free ports,
driven over real sockets.  Nothing here may hang: every wait has a timeout,
a watchdog ends the whole file, and cleanup (atexit and signal handlers)
stops every process we started by its PID and removes the temporary
directory.  Daemons may be sanitizer builds, so each one we stop with
SIGTERM must exit 0 and leave no sanitizer report in its log.

Standard library only (plus python3-msgpack in the tests that need it);
run with /usr/bin/python3.  Environment: FERRY_SRCDIR, FERRY_BUILDDIR
(make check sets both; they default to this file's tree and its build/).
Set FERRY_IT_KEEP=1 to keep the temporary directory for inspection.
"""

import atexit
import ctypes
import glob
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("FERRY_SRCDIR") or os.path.dirname(os.path.dirname(HERE))
BUILDDIR = os.environ.get("FERRY_BUILDDIR") or os.path.join(SRCDIR, "build")
BINARIES = {
    "broker": os.path.join(BUILDDIR, "src/broker/ferry-broker"),
    "worker": os.path.join(BUILDDIR, "src/workers/ferry-worker"),
    "edge": os.path.join(BUILDDIR, "src/http_edge/ferry-edge"),
    "ctl": os.path.join(BUILDDIR, "src/ctl/ferryctl"),
}
CONFIG = os.path.join(SRCDIR, "etc/ferry.yaml")
MIGRATIONS = os.path.join(SRCDIR, "schemas/sql")
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "WARNING: ThreadSanitizer",
                   "ERROR: ThreadSanitizer")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?"
                     r"([Zz]|[+-]\d{2}:\d{2})$")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _find_pg_bindir():
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(d, "initdb")):
            return d
    return None


PG_BINDIR = _find_pg_bindir()


class TestFailure(Exception):
    """A check that did not hold; the message is the TAP diagnostic."""


def check(cond, message):
    if not cond:
        raise TestFailure(message)


def check_eq(actual, expected, what):
    if actual != expected:
        raise TestFailure("%s: expected %r, got %r" % (what, expected, actual))


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path, lines=25):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return ["(cannot read %s: %s)" % (path, e)]
    return data.splitlines()[-lines:]


# ---- cleanup: every process and directory we made -------------------------

_cleanups = []
_cleanup_lock = threading.Lock()
_cleaned = False


def _register_cleanup(fn):
    _cleanups.append(fn)


def cleanup():
    global _cleaned
    with _cleanup_lock:
        if _cleaned:
            return
        _cleaned = True
        for fn in reversed(_cleanups):
            try:
                fn()
            except Exception:
                traceback.print_exc(file=sys.stderr)


def _on_signal(signum, frame):
    print("Bail out! killed by signal %d" % signum, flush=True)
    cleanup()
    os._exit(128 + signum)


def install_guards(watchdog_s=300):
    """atexit cleanup, signal handlers and a watchdog for the whole file."""
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    def fire():
        print("Bail out! watchdog: the test file ran longer than %d s"
              % watchdog_s, flush=True)
        cleanup()
        os._exit(1)

    t = threading.Timer(watchdog_s, fire)
    t.daemon = True
    t.start()


def _pdeathsig():
    # Daemons die with us even if we are SIGKILLed (Linux only, best effort).
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# ---- TAP -------------------------------------------------------------------

class Tap:
    """Collects named test functions and runs them in order as TAP."""

    def __init__(self):
        self.tests = []
        self.count = 0
        self.failed = 0
        self.log_sources = []   # callables returning [(name, path)]

    def test(self, name, needs="stack"):
        """Registers fn as a test.  needs: "stack" (every daemon up), "pg"
        (PostgreSQL migrated and loaded) or "none"."""
        def register(fn):
            self.tests.append((name, fn, needs))
            return fn
        return register

    def diag(self, text):
        for line in str(text).splitlines() or [""]:
            print("# " + line, flush=True)

    def result(self, ok, name, diag=None, skip=None):
        self.count += 1
        if skip:
            print("ok %d - %s # SKIP %s" % (self.count, name, skip), flush=True)
            return
        print("%s %d - %s" % ("ok" if ok else "not ok", self.count, name),
              flush=True)
        if not ok:
            self.failed += 1
            if diag:
                self.diag(diag)
            self.dump_logs()

    def dump_logs(self):
        for source in self.log_sources:
            try:
                pairs = source()
            except Exception:
                continue
            for name, path in pairs:
                self.diag("---- tail of %s (%s)" % (name, path))
                for line in _tail(path, 15):
                    self.diag("  " + line)

    def run_one(self, name, fn):
        try:
            fn()
        except TestFailure as e:
            self.result(False, name, str(e))
        except Exception:
            self.result(False, name, traceback.format_exc())
        else:
            self.result(True, name)

    def run(self, setup_error=None, pg_ready=True):
        """Runs every registered test; when the stack did not come up, the
        tests that need it fail with the setup error (already printed in
        full) so the plan stays the same."""
        for name, fn, needs in self.tests:
            blocked = setup_error is not None and (
                needs == "stack" or (needs == "pg" and not pg_ready))
            if blocked:
                self.count += 1
                self.failed += 1
                print("not ok %d - %s" % (self.count, name), flush=True)
                self.diag("stack setup failed (see above): %s"
                          % setup_error.strip().splitlines()[-1][:300])
            else:
                self.run_one(name, fn)

    def finish(self):
        print("1..%d" % self.count, flush=True)
        cleanup()
        sys.stdout.flush()
        os._exit(1 if self.failed else 0)


def kafka_stack(name, guard_seconds=300):
    """The common start of a real-broker test file: guards, a Tap, a Kafka
    broker (tests/kafka/kafka_broker.py, cleaned up at exit) and a Stack,
    with both logs shown when a case fails.  Returns (tap, broker, stack)."""
    import kafka_broker
    install_guards(guard_seconds)
    tap = Tap()
    broker = kafka_broker.Broker()
    _register_cleanup(broker.close)
    stack = Stack(name)
    tap.log_sources.append(stack.live_logs)
    tap.log_sources.append(lambda: [("kafka", broker.log_path())]
                           if broker.dir and os.path.exists(broker.log_path())
                           else [])
    return tap, broker, stack


def run_cases(tap, cases, unavailable, failures=()):
    """Runs (name, fn) cases in order, each depending on the ones before:
    after a failure the rest are reported "not ok ... not run", and once a
    case raises `unavailable` (a real peer such as a Kafka broker cannot be
    had) the rest are SKIPs with the reason, never passes.  Ends the TAP
    stream and the process."""
    skip = None
    blocked = None
    for name, fn in cases:
        if skip:
            tap.result(True, name, skip=skip)
            continue
        if blocked:
            tap.count += 1
            tap.failed += 1
            print("not ok %d - %s" % (tap.count, name), flush=True)
            tap.diag("not run: %s failed" % blocked)
            continue
        try:
            fn()
            tap.result(True, name)
        except unavailable as e:
            skip = "cannot run here: %s" % e
            tap.result(True, name, skip=skip)
        except (TestFailure,) + tuple(failures) as e:
            tap.result(False, name, str(e))
            blocked = name
        except Exception:
            tap.result(False, name, traceback.format_exc())
            blocked = name
    tap.finish()


# ---- HTTP --------------------------------------------------------------------

class Response:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers          # list of (name, value)
        self.body = body
        self.elapsed = elapsed

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except Exception as e:
            raise TestFailure("body is not JSON (%s): %r" % (e, self.body[:300]))

    def describe(self):
        return "HTTP %s in %.3f s, headers %r, body %r" % (
            self.status, self.elapsed, self.headers, self.body[:400])


def request(port, method, path, body=None, headers=None, timeout=10.0,
         conn=None):
    """One request; a new connection unless conn is given.  Returns a
    Response.  Raises TestFailure on timeout or connection errors."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, r.getheaders(), data, time.monotonic() - t0)
    except (OSError, http.client.HTTPException) as e:
        raise TestFailure("%s %s: no response after %.3f s: %s: %s" % (
            method, path, time.monotonic() - t0, type(e).__name__, e))
    finally:
        if own:
            conn.close()


def http_raw(port, raw, timeout=10.0):
    """Sends raw request bytes (ignoring a peer that closes early, as a
    server may after an early error) and parses one response.  Returns a
    Response, or None when the server closed without answering."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()
    try:
        try:
            s.sendall(raw)
        except OSError:
            pass
        r = http.client.HTTPResponse(s, method="GET")
        try:
            r.begin()
            data = r.read()
        except (http.client.RemoteDisconnected, ConnectionResetError,
                http.client.BadStatusLine):
            return None
        except socket.timeout:
            raise TestFailure("no response within %.1f s" % timeout)
        return Response(r.status, r.getheaders(), data, time.monotonic() - t0)
    finally:
        s.close()


def check_problem(r, status, what=""):
    """r is an RFC 9457 problem with this status and the request id."""
    check(r.status == status, "%sexpected %d, got %s" % (
        what + ": " if what else "", status, r.describe()))
    ctype = (r.header("Content-Type") or "").split(";")[0].strip().lower()
    check_eq(ctype, "application/problem+json", "problem Content-Type")
    p = r.json()
    check(isinstance(p, dict), "problem body is not an object: %r" % (p,))
    for key in ("type", "title", "status", "detail"):
        check(key in p, "problem body lacks %r: %r" % (key, p))
    check_eq(p["status"], status, "problem status member")
    check(isinstance(p["title"], str) and p["title"],
          "problem title is empty: %r" % (p,))
    rid = r.header("X-Request-Id")
    check(rid, "no X-Request-Id on the problem response")
    check_eq(p.get("request_id"), rid, "problem request_id vs X-Request-Id")
    return p


# ---- the stack ---------------------------------------------------------------

class Daemon:
    def __init__(self, name, argv, log, env):
        self.name = name
        self.argv = argv
        self.log = log
        self.exit_code = None
        self.stopped_by_us = False
        self.killed = False
        self.logf = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_pdeathsig)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM, wait, then SIGKILL.  Returns the exit code."""
        if self.proc.poll() is None:
            self.stopped_by_us = True
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.exit_code = self.proc.returncode
        self.logf.close()
        return self.exit_code

    def sigkill(self):
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(5)
        self.exit_code = self.proc.returncode
        self.killed = True
        self.logf.close()

    def sanitizer_report(self):
        try:
            with open(self.log, "r", errors="replace") as f:
                text = f.read()
        except OSError:
            return None
        for mark in SANITIZER_MARKS:
            i = text.find(mark)
            if i >= 0:
                return text[max(0, i - 200):i + 1500]
        return None


class Stack:
    """PostgreSQL + broker + workers + edge for one test file."""

    def __init__(self, name="ferry-it"):
        self.tmp = tempfile.mkdtemp(prefix=name + "-")
        os.chmod(self.tmp, 0o755)
        self.keep = os.environ.get("FERRY_IT_KEEP") == "1"
        self.daemons = []           # every daemon ever started, in order
        self.retired = []           # (daemon) stopped or killed on purpose
        self.pg_port = None
        self.pg_data = None
        self.pg_started = False
        self.config = CONFIG
        self.sets = []
        self.migrate_error = None   # ferryctl migrate's failure, if any
        self.pg_ready = False       # migrated and loaded
        self.env = dict(os.environ)
        self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        self.env.pop("FERRY_CONFIG", None)
        _register_cleanup(self._cleanup)

    # -- PostgreSQL --

    def _as_pg(self, argv):
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--"] + argv
        return argv

    def _run(self, argv, timeout=60, what=None, input=None):
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL if input is None
                               else None, input=input,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired:
            raise RuntimeError("%s timed out after %d s" % (what or argv[0],
                                                             timeout))
        if r.returncode != 0:
            raise RuntimeError("%s exited %d: %s %s" % (
                what or " ".join(argv), r.returncode,
                r.stdout.decode(errors="replace")[-2000:],
                r.stderr.decode(errors="replace")[-2000:]))
        return r.stdout.decode(errors="replace")

    def start_postgres(self):
        if PG_BINDIR is None:
            raise RuntimeError("no PostgreSQL server binaries under "
                               "/usr/lib/postgresql/*/bin")
        pgdir = os.path.join(self.tmp, "pg")
        os.mkdir(pgdir, 0o700)
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres")
            os.chown(pgdir, pw.pw_uid, pw.pw_gid)
        self.pg_data = os.path.join(pgdir, "data")
        self.pg_log = os.path.join(pgdir, "postgresql.log")
        self.pg_sock = pgdir
        self._run(self._as_pg([os.path.join(PG_BINDIR, "initdb"), "-D",
                               self.pg_data, "-A", "trust", "-U", "postgres",
                               "-E", "UTF8", "--locale=C", "--no-sync"]),
                  timeout=120, what="initdb")
        self.pg_port = free_port()
        self.pg_logf = open(self.pg_log, "ab")
        self._pg_spawn()
        self.pg_started = True
        self.pg_wait(db="postgres")
        self.psql("CREATE DATABASE ferry", db="postgres")
        self.conninfo = ("host=127.0.0.1 port=%d dbname=ferry user=postgres"
                         % self.pg_port)
        self.pg_uri = "postgresql://postgres@127.0.0.1:%d/ferry" % self.pg_port

    def _pg_spawn(self):
        """Starts the server on pg_data, pg_port and pg_sock.  postgres
        runs in the foreground as our child with a parent-death signal
        (setpriv keeps it across the switch to the postgres user), so even
        a SIGKILLed test leaves no server behind."""
        argv = [os.path.join(PG_BINDIR, "postgres"), "-D", self.pg_data,
                "-p", str(self.pg_port), "-k", self.pg_sock,
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
                "-c", "max_connections=200"]
        if os.geteuid() == 0:
            argv = ["setpriv", "--reuid=postgres", "--regid=postgres",
                    "--clear-groups", "--pdeathsig", "KILL"] + argv
        self.pg_proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=self.pg_logf,
                                        stderr=subprocess.STDOUT,
                                        env=self.env, preexec_fn=_pdeathsig)

    def pg_wait(self, db="ferry", timeout=30.0):
        """Waits until the server answers a query."""
        t0 = time.monotonic()
        while True:
            if self.pg_proc.poll() is not None:
                raise RuntimeError("postgres exited %s: %s" % (
                    self.pg_proc.returncode, "\n".join(_tail(self.pg_log))))
            try:
                self.psql("SELECT 1", db=db, timeout=5)
                return
            except RuntimeError:
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError("postgres not ready in %g s: %s"
                                       % (timeout,
                                          "\n".join(_tail(self.pg_log))))
                time.sleep(0.1)

    def pg_stop(self):
        """Stops PostgreSQL (fast shutdown: sessions are cut), for the
        tests of what ferry does while it is away."""
        self._run(self._as_pg([os.path.join(PG_BINDIR, "pg_ctl"), "stop",
                               "-D", self.pg_data, "-m", "fast", "-w",
                               "-t", "30"]),
                  timeout=40, what="pg_ctl stop")
        self.pg_proc.wait(10)

    def pg_start(self, wait=False):
        """Starts the same server again (port, data, socket) after
        pg_stop; with wait, returns once it answers."""
        self._pg_spawn()
        if wait:
            self.pg_wait()

    def psql(self, sql, db="ferry", timeout=30):
        """Runs SQL, returns the unaligned, tuples-only output."""
        return self._run([os.path.join(PG_BINDIR, "psql"), "-X", "-q", "-A",
                          "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                          "-p", str(self.pg_port), "-U", "postgres", "-d", db,
                          "-c", sql], timeout=timeout, what="psql").strip()

    def ctl_migrate(self):
        """ferryctl migrate; returns None or the error text."""
        argv = [BINARIES["ctl"], "migrate", "--dir", MIGRATIONS,
                "--database", self.conninfo]
        try:
            self._run(argv, timeout=60, what="ferryctl migrate")
            return None
        except Exception as e:
            return str(e)

    def migrate(self):
        """Applies schemas/sql with ferryctl; if ferryctl fails, records why
        (a test reports it) and applies the files with psql so the other
        tests can still run."""
        self.migrate_error = self.ctl_migrate()
        if self.migrate_error is None:
            return
        files = sorted(glob.glob(os.path.join(MIGRATIONS, "*.sql")))
        if not files:
            raise RuntimeError("no migrations in %s (and ferryctl migrate "
                               "failed: %s)" % (MIGRATIONS, self.migrate_error))
        for f in files:
            self._run([os.path.join(PG_BINDIR, "psql"), "-X", "-q", "-v",
                       "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p",
                       str(self.pg_port), "-U", "postgres", "-d", "ferry",
                       "-f", f], timeout=60, what="psql -f " + f)

    def load_users(self, n=1000):
        self.psql(
            "INSERT INTO users (id, name, email, created_at) "
            "OVERRIDING SYSTEM VALUE "
            "SELECT g, 'User ' || g, 'user' || g || '@example.com', "
            "now() - g * interval '1 minute' FROM generate_series(1, %d) g; "
            "SELECT setval(pg_get_serial_sequence('users', 'id'), %d);"
            % (n, n))

    # -- daemons --

    def write_config(self, extra_routes="", extra_pools="", name="ferry.yaml"):
        """A derived config: etc/ferry.yaml with YAML text spliced in:
        extra_routes (items of edge.routes, indented 4) before `worker:`,
        extra_pools (entries of `pools:`, indented 2) at the end."""
        with open(CONFIG) as f:
            text = f.read()
        if extra_routes:
            m = re.search(r"^worker:", text, re.M)
            if not m:
                raise RuntimeError("cannot find `worker:` in " + CONFIG)
            text = text[:m.start()] + extra_routes.rstrip("\n") + "\n\n" + \
                text[m.start():]
        if extra_pools:
            if not re.search(r"^pools:", text, re.M):
                raise RuntimeError("cannot find `pools:` in " + CONFIG)
            text = text.rstrip("\n") + "\n" + extra_pools.rstrip("\n") + "\n"
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        self.config = path
        return path

    def plan_ports(self, heartbeat="200ms", grace="500ms", sets=()):
        self.frontend = "tcp://127.0.0.1:%d" % free_port()
        self.backend = "tcp://127.0.0.1:%d" % free_port()
        self.control = "tcp://127.0.0.1:%d" % free_port()
        self.http_port = free_port()
        self.sets = [
            "broker.frontend=" + self.frontend,
            "broker.backend=" + self.backend,
            "broker.control=" + self.control,
            "broker.heartbeat=" + heartbeat,
            "broker.no_worker_grace=" + grace,
            "edge.broker=" + self.frontend,
            "edge.listen=127.0.0.1:%d" % self.http_port,
            "edge.loops=2",
            "worker.database=" + self.conninfo,
            "log.level=info",
        ] + list(sets)

    def _argv(self, binary, extra=(), config=None, sets=None):
        argv = [BINARIES[binary], "--config", config or self.config]
        for s in (self.sets if sets is None else sets):
            argv += ["--set", s]
        return argv + list(extra)

    def start_daemon(self, name, binary, extra=(), config=None, sets=None):
        path = BINARIES[binary]
        if not os.access(path, os.X_OK):
            raise RuntimeError("%s is not built (%s)" % (binary, path))
        log = os.path.join(self.tmp, "%s.%d.log" % (name, len(self.daemons)))
        d = Daemon(name, self._argv(binary, extra, config, sets), log,
                   self.env)
        self.daemons.append(d)
        return d

    def start_broker(self):
        self.broker = self.start_daemon("broker", "broker")
        return self.broker

    def start_worker(self, pool):
        d = self.start_daemon("worker-" + pool, "worker", ["--pool", pool])
        setattr(self, "worker_" + pool, d)
        return d

    def start_edge(self, **kw):
        self.edge = self.start_daemon("edge", "edge", **kw)
        return self.edge

    def live_logs(self):
        """(name, path) of the daemons that matter for diagnostics."""
        seen = {}
        for d in self.daemons:
            seen[d.name] = d.log     # the newest instance of each name
        return sorted(seen.items())

    def check_alive(self):
        for d in self.daemons:
            if d not in self.retired and not d.alive():
                raise RuntimeError("%s (pid %d) exited with %s; log tail:\n%s"
                                   % (d.name, d.pid, d.proc.returncode,
                                      "\n".join(_tail(d.log))))

    def wait_http(self, path="/readyz", want=200, timeout=20.0, port=None,
                  streak=6):
        """Polls GET path until it answers want `streak` times in a row;
        returns the seconds it took.  Raises RuntimeError on timeout or
        when a daemon died.  Each edge loop keeps its own view of the
        broker (its own heartbeats), and a new connection lands on any
        loop, so one 200 from /readyz says only that one loop is ready:
        a streak spread over more than a heartbeat (200 ms here) covers
        them all."""
        port = port or self.http_port
        t0 = time.monotonic()
        last = None
        run = 0
        while time.monotonic() - t0 < timeout:
            self.check_alive()
            try:
                r = request(port, "GET", path, timeout=2.0)
                last = "%d %r" % (r.status, r.body[:200])
                run = run + 1 if r.status == want else 0
                if run >= streak:
                    return time.monotonic() - t0
            except TestFailure as e:
                last = str(e)
                run = 0
            time.sleep(0.05 if run else 0.1)
        raise RuntimeError("GET %s did not answer %d within %.0f s (last: %s)"
                           % (path, want, timeout, last))

    def start_all(self, pools=("app", "reports"), ready=True):
        self.start_broker()
        for p in pools:
            self.start_worker(p)
        self.start_edge()
        if ready:
            self.wait_http("/readyz", 200, 20.0)

    def retire(self, d, kill=False):
        """Stops one daemon on purpose (SIGTERM, or SIGKILL when kill)."""
        self.retired.append(d)
        if kill:
            d.sigkill()
        else:
            d.stop()

    def stop_all(self):
        """Stops every daemon still running (edge first, broker last) and
        returns a list of problems: unclean exits and sanitizer reports."""
        problems = []
        order = sorted(self.daemons, key=lambda d: {"edge": 0, "broker": 2}
                       .get(d.name.split("-")[0], 1))
        for d in order:
            was_running = d.alive()
            code = d.stop() if was_running else d.proc.wait(5)
            if d.killed and d in self.retired:
                pass                    # SIGKILLed on purpose
            elif d.killed:
                problems.append("%s (pid %d) ignored SIGTERM for 10 s and was "
                                "killed" % (d.name, d.pid))
            elif code != 0:
                problems.append("%s (pid %d) exited %s%s" % (
                    d.name, d.pid, code, "" if was_running else
                    " before we stopped it"))
            report = d.sanitizer_report()
            if report:
                problems.append("%s (pid %d) sanitizer report:\n%s" % (
                    d.name, d.pid, report))
        return problems

    def _cleanup(self):
        for d in self.daemons:
            try:
                if d.alive():
                    d.stop(5)
            except Exception:
                pass
        if self.pg_started and self.pg_proc.poll() is None:
            self.pg_proc.send_signal(signal.SIGQUIT)    # immediate shutdown
            try:
                self.pg_proc.wait(20)
            except subprocess.TimeoutExpired:
                self.pg_proc.kill()
                self.pg_proc.wait(5)
        if self.pg_started:
            self.pg_logf.close()
        if self.keep:
            sys.stderr.write("FERRY_IT_KEEP: kept %s\n" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def bring_up(tap, stack, pools=("app", "reports"), ready=True, sets=(),
             extra_routes="", extra_pools="", heartbeat="200ms",
             grace="500ms"):
    """PostgreSQL, migrations, demo users, daemons.  Returns None, or the
    error text when something did not come up."""
    tap.log_sources.append(stack.live_logs)
    try:
        stack.start_postgres()
        stack.migrate()
        stack.load_users(1000)
        stack.pg_ready = True
        if extra_routes or extra_pools:
            stack.write_config(extra_routes, extra_pools)
        stack.plan_ports(heartbeat=heartbeat, grace=grace, sets=sets)
        stack.start_all(pools=pools, ready=ready)
        return None
    except Exception as e:
        tap.diag("stack setup failed:")
        tap.diag(traceback.format_exc())
        tap.dump_logs()
        return "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0]
                           if str(e).strip() else "")


def sanitizer_test(tap, stack):
    """The last test of every file: stop everything, expect clean exits
    and no sanitizer report."""
    @tap.test("no sanitizer reports / clean exits", needs="none")
    def _():
        problems = stack.stop_all()
        check(not problems, "\n".join(problems))

"""test_config.py: the command line and config errors of every binary.

--help and --version exit 0 and print something; a bad value or an
unknown key in the YAML file makes the daemon exit non-zero at once with a
message naming the file, the line and the key.  No PostgreSQL needed: the
config is checked before anything connects.  Prints TAP.
"""

import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, TestFailure  # noqa: E402

harness.install_guards(120)
tap = harness.Tap()
tmp = tempfile.mkdtemp(prefix="ferry-it-config-")
harness._register_cleanup(lambda: __import__("shutil").rmtree(
    tmp, ignore_errors=True))
_started = []


def _kill_started():
    for p in _started:
        if p.poll() is None:
            p.kill()
            p.wait(5)


harness._register_cleanup(_kill_started)


def run(binary, args, timeout=10.0):
    """Runs a binary; a daemon that does not exit in time is killed and
    that is a failure.  Returns (code, stdout+stderr text)."""
    path = harness.BINARIES[binary]
    if not os.access(path, os.X_OK):
        raise TestFailure("%s is not built (%s)" % (binary, path))
    env = dict(os.environ)
    env.pop("FERRY_CONFIG", None)
    p = subprocess.Popen([path] + args, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=env, preexec_fn=harness._pdeathsig)
    _started.append(p)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate(timeout=5)
        raise TestFailure("%s %s still running after %.0f s; output: %s" % (
            binary, " ".join(args), timeout, out.decode(errors="replace")
            [-1500:]))
    text = out.decode(errors="replace")
    for mark in harness.SANITIZER_MARKS:
        if mark in text:
            raise TestFailure("sanitizer report:\n" + text[-3000:])
    return p.returncode, text


def safe_sets():
    """Free ports, so a daemon that wrongly starts binds nothing shared."""
    return ["--set", "broker.frontend=tcp://127.0.0.1:%d" % harness.free_port(),
            "--set", "broker.backend=tcp://127.0.0.1:%d" % harness.free_port(),
            "--set", "broker.control=tcp://127.0.0.1:%d" % harness.free_port(),
            "--set", "edge.listen=127.0.0.1:%d" % harness.free_port(),
            "--set", "worker.database=host=127.0.0.1 port=1 dbname=none "
            "connect_timeout=1"]


def bad_config(name, old, new):
    """etc/ferry.yaml with one line replaced; returns (path, line no)."""
    with open(harness.CONFIG) as f:
        lines = f.read().split("\n")
    hits = [i for i, line in enumerate(lines) if line.startswith(old)]
    if len(hits) != 1:
        raise TestFailure("cannot find a unique line %r in %s"
                          % (old, harness.CONFIG))
    lines[hits[0]] = new
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path, hits[0] + 1


for b in ("broker", "worker", "edge", "ctl"):
    def t_help(b=b):
        code, out = run(b, ["--help"])
        check(code == 0, "--help exited %s: %s" % (code, out[-800:]))
        check("--help" in out or "usage" in out.lower(),
              "--help printed no usage: %r" % out[-800:])

    def t_version(b=b):
        code, out = run(b, ["--version"])
        check(code == 0, "--version exited %s: %s" % (code, out[-800:]))
        check(any(c.isdigit() for c in out),
              "--version printed no version: %r" % out[-300:])

    tap.test("%s --help exits 0" % b)(t_help)
    tap.test("%s --version exits 0" % b)(t_version)


def config_error(binary, extra, name, old, new, key):
    path, line = bad_config(name, old, new)
    code, out = run(binary, ["--config", path] + safe_sets() + extra)
    check(code != 0, "exited 0 with a bad config: %r" % out[-800:])
    tap.diag("%s exited %d: %s" % (binary, code, out.strip()[-300:]))
    check(path in out, "message does not name the file %s: %r"
          % (path, out[-800:]))
    check("%s:%d" % (path, line) in out or ":%d:" % line in out,
          "message does not name line %d: %r" % (line, out[-800:]))
    check(key in out, "message does not name the key %s: %r"
          % (key, out[-800:]))


@tap.test("broker: a bad duration names file, line and key, exits non-zero")
def _():
    config_error("broker", [], "bad-heartbeat.yaml", "  heartbeat: 1s",
                 "  heartbeat: often", "broker.heartbeat")


@tap.test("edge: a bad size names file, line and key, exits non-zero")
def _():
    config_error("edge", [], "bad-maxbody.yaml", "  default_max_body: 1MiB",
                 "  default_max_body: huge", "edge.default_max_body")


@tap.test("worker: a bad actor count names file, line and key")
def _():
    config_error("worker", ["--pool", "app"], "bad-actors.yaml",
                 "    actors: 4", "    actors: many", "pools.app.actors")


@tap.test("broker: an unknown key is rejected with file, line and key")
def _():
    config_error("broker", [], "unknown-broker.yaml", "  liveness: 3",
                 "  liveliness: 3", "broker.liveliness")


@tap.test("edge: an unknown key is rejected with file, line and key")
def _():
    config_error("edge", [], "unknown-edge.yaml", "  max_header_count: 100",
                 "  max_header_cnt: 100", "edge.max_header_cnt")


@tap.test("edge: a missing config file is an error naming it")
def _():
    missing = os.path.join(tmp, "does-not-exist.yaml")
    code, out = run("edge", ["--config", missing] + safe_sets())
    check(code != 0, "exited 0: %r" % out[-500:])
    check(missing in out, "message does not name the file: %r" % out[-500:])


@tap.test("a bad --set value is an error naming the key")
def _():
    code, out = run("broker", ["--config", harness.CONFIG] + safe_sets()
                    + ["--set", "broker.liveness=zero"])
    check(code != 0, "exited 0: %r" % out[-500:])
    check("broker.liveness" in out, "message does not name the key: %r"
          % out[-500:])


tap.run()
tap.finish()

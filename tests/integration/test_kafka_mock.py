"""test_kafka_mock.py: a pool's Kafka consumer under faults, against
librdkafka's mock cluster and a real PostgreSQL, with exactly-once effect.

Starts PostgreSQL (initdb in a temporary directory, via harness.Stack),
applies the migrations with ferryctl, and runs tests/kafka/ferry-kafka-mock
(tests/kafka/mock_consumer.c) with its conninfo.  That program runs the
pool's consumer (src/workers/worker_kafka.c, through worker_kafka.h) in
process against an in-process mock Kafka cluster, and prints one TAP line
per case: a stream, the broker down and back, injected request errors, a
rebalance in the middle of a stream, PostgreSQL stopped and started again
(the pool's circuit breaker).  This file runs each case in its own
process, relays its TAP line, reports a case whose process died before
reporting as a failure, and checks that every process exited 0 without a
sanitizer report.  For the breaker case it stops and starts PostgreSQL
when the program asks ("pg stop" / "pg start" on its stdout, "ok" back on
its stdin), and checks that the breaker's state changes are in its log.
Needs no network: it never skips.
Prints TAP.
"""

import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
from harness import check, check_eq  # noqa: E402

CASES = ["stream", "down", "errors", "rebalance", "breaker"]
# FERRY_KMOCK_CASES=breaker,stream runs only those.
if os.environ.get("FERRY_KMOCK_CASES"):
    CASES = [c for c in CASES
             if c in os.environ["FERRY_KMOCK_CASES"].split(",")]
PROGRAM = os.path.join(harness.BUILDDIR, "tests/kafka/ferry-kafka-mock")
TIMEOUT = 240        # one case; each takes 10 to 40 s

harness.install_guards(900)
tap = harness.Tap()
stack = harness.Stack("ferry-kmock")
log_path = os.path.join(stack.tmp, "ferry-kafka-mock.log")
tap.log_sources.append(lambda: [("ferry-kafka-mock stderr", log_path)]
                       if os.path.exists(log_path) else [])
state = {}


def setup():
    stack.start_postgres()
    err = stack.ctl_migrate()
    check(err is None, "ferryctl migrate: %s" % err)
    check(os.access(PROGRAM, os.X_OK),
          "%s is not built (make check builds it)" % PROGRAM)


def pg_control(proc, what):
    """Runs the program's "pg stop" / "pg start" and answers it."""
    try:
        stack.pg_stop() if what == "stop" else stack.pg_start(wait=True)
        answer = "ok"
    except Exception as e:
        answer = "failed: %s" % str(e).replace("\n", " ")[:200]
    print("# pg %s: %s" % (what, answer), flush=True)
    proc.stdin.write(answer + "\n")
    proc.stdin.flush()


def case_log(name):
    """The part of the program's stderr that case name wrote."""
    with open(log_path, errors="replace") as f:
        text = f.read()
    start = text.rfind("==== %s\n" % name)
    if start < 0:
        return ""
    end = text.find("\n==== ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def breaker_logged():
    """The breaker case: its state changes in the log, and no lane went
    to PostgreSQL between the breaker's opening and its first half-open
    (but those already on their way)."""
    text = case_log("breaker")
    for state in ("open", "half-open", "closed"):
        check("breaker %s pool=kmock" % state in text,
              "no `breaker %s pool=kmock` in the breaker case's log"
              % state)
    lines = text.splitlines()
    first_open = next(i for i, line in enumerate(lines)
                      if "breaker open pool=kmock" in line)
    half = next((i for i, line in enumerate(lines)
                 if i > first_open and "breaker half-open pool=kmock"
                 in line), len(lines))
    # A lane that was connecting as another one's failure opened it may
    # log after the opening: one per lane (4) at most.  Without the breaker
    # each lane tries again every 0.1 to 1.6 s of its backoff in the 2 s
    # cool-down.
    tries = [line for line in lines[first_open + 1:half]
             if "cannot connect to PostgreSQL" in line
             or "connected to PostgreSQL" in line]
    check(len(tries) <= 4, "lanes went to PostgreSQL while the breaker was "
          "open:\n%s" % "\n".join(tries[:10]))


def run_case(name):
    """Runs one case in its own process (a crash cannot hide the others),
    relaying its TAP line and diagnostics."""
    argv = [PROGRAM, stack.conninfo, name]
    if os.environ.get("FERRY_KMOCK_VERBOSE") == "1":
        argv.insert(1, "-v")
    seen = False
    line_re = re.compile(r"^(ok|not ok) \d+ - (\w+): (.*)$")
    with open(log_path, "ab") as log:
        log.write(("==== %s\n" % name).encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log,
                                env=stack.env, text=True)
        timer = harness.threading.Timer(TIMEOUT, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                m = line_re.match(line)
                if m and m.group(2) == name and not seen:
                    seen = True
                    ok = m.group(1) == "ok"
                    result = (ok, "%s: %s" % (name, m.group(3)))
                elif line.startswith("#"):
                    print(line, flush=True)
                elif line in ("pg stop", "pg start"):
                    pg_control(proc, line[3:])
            code = proc.wait()
        finally:
            timer.cancel()
    if not seen:
        tap.result(False, "%s: never reported" % name,
                   "ferry-kafka-mock exited %s before reporting it" % code)
    elif result[0] and code != 0:
        tap.result(False, result[1], "but ferry-kafka-mock exited %s" % code)
    else:
        tap.result(result[0], result[1])
    state.setdefault("codes", []).append((name, code))


def program_clean():
    for name, code in state.get("codes", []):
        check_eq(code, 0, "ferry-kafka-mock %s: exit status" % name)
    with open(log_path, errors="replace") as f:
        text = f.read()
    for mark in harness.SANITIZER_MARKS:
        check(mark not in text, "sanitizer report in %s:\n%s"
              % (log_path, text[-3000:]))


try:
    setup()
    setup_error = None
except Exception as e:
    setup_error = str(e)

if setup_error is not None:
    tap.result(False, "PostgreSQL started and migrated", setup_error)
    for name in CASES:
        tap.result(False, "%s: not run" % name, "setup failed")
else:
    tap.result(True, "PostgreSQL started and migrated")
    for case in CASES:
        run_case(case)
    if "breaker" in CASES:
        tap.run_one("breaker: its state changes logged, no PostgreSQL calls "
                    "while open", breaker_logged)
    tap.run_one("ferry-kafka-mock exits 0 without sanitizer reports",
                program_clean)
tap.finish()

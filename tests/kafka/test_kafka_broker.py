"""test_kafka_broker.py: the real Apache Kafka broker the Kafka tests use.

Fetches the Kafka jars (cached after the first run), starts one KRaft
broker on free ports in a temporary directory, creates a topic, produces
100 JSON messages with kcat, consumes them back (by offset, then in a
consumer group, which needs the group coordinator and its offsets topic)
and checks all 100 arrive in order, then stops the broker by its PID and
checks nothing is left.  When the broker cannot be had here (Maven Central
unreachable, tools missing) every case reports SKIP with the reason; with
FERRY_KAFKA_REQUIRE=1 that is a failure instead.  Prints TAP.
"""

import json
import os
import subprocess
import sys
import time
import traceback

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import harness  # noqa: E402
import kafka_broker  # noqa: E402
from harness import check, check_eq  # noqa: E402

COUNT = 100
TOPIC = "ferry.test.events"

harness.install_guards(300)
tap = harness.Tap()
broker = kafka_broker.Broker()
harness._register_cleanup(broker.close)
tap.log_sources.append(lambda: [("kafka", broker.log_path())]
                       if broker.dir and os.path.exists(broker.log_path())
                       else [])


def kcat(args, stdin=None, timeout=30):
    try:
        p = subprocess.run(["kcat", "-b", broker.bootstrap] + args,
                           input=stdin, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise harness.TestFailure("kcat %s took longer than %d s"
                                  % (" ".join(args), timeout))
    return p


def events():
    return [{"id": i, "kind": "test", "payload": {"n": i, "text": "é %d" % i}}
            for i in range(COUNT)]


def check_in_order(out, what):
    """out: kcat lines '<partition> <offset> <value>'."""
    lines = out.splitlines()
    check_eq(len(lines), COUNT, what + ": messages consumed")
    want = events()
    for i, line in enumerate(lines):
        part, offset, value = line.split(" ", 2)
        check_eq((part, offset), ("0", str(i)),
                 "%s: partition and offset of message %d" % (what, i))
        check_eq(json.loads(value), want[i], "%s: message %d" % (what, i))


def t_fetch():
    t0 = time.monotonic()
    kafka_broker.fetch()
    tap.diag("fetch: %.1f s" % (time.monotonic() - t0))


def t_start():
    t0 = time.monotonic()
    bootstrap = broker.start()
    tap.diag("start to ready: %.1f s (%s)" % (time.monotonic() - t0,
                                               bootstrap))
    check(bootstrap.startswith("127.0.0.1:"), "bootstrap " + bootstrap)
    check(broker.alive(), "broker pid %s not running" % broker.pid)
    p = kcat(["-L", "-m", "5"], timeout=15)
    check_eq(p.returncode, 0, "kcat -L status (%s)" % p.stderr.strip())
    check("broker 1 at %s" % bootstrap in p.stdout, "metadata: " + p.stdout)


def t_topic():
    t0 = time.monotonic()
    broker.create_topic(TOPIC, 1)
    tap.diag("create topic: %.1f s" % (time.monotonic() - t0))
    p = kcat(["-L", "-t", TOPIC, "-m", "5"], timeout=15)
    check('topic "%s" with 1 partitions' % TOPIC in p.stdout,
          "metadata: " + p.stdout + p.stderr)


def t_produce():
    data = "".join(json.dumps(e, ensure_ascii=False) + "\n"
                   for e in events())
    p = kcat(["-P", "-t", TOPIC, "-X", "acks=all",
              "-X", "enable.idempotence=true"], stdin=data)
    check_eq(p.returncode, 0, "kcat -P status (%s)" % p.stderr.strip())
    # librdkafka logs retried conditions (such as "coordinator load in
    # progress" for the idempotent producer id) as warnings; a message that
    # was not delivered is an error.
    for mark in ("Delivery failed", "ERROR"):
        check(mark not in p.stderr, "kcat -P: " + p.stderr.strip())


def t_consume():
    p = kcat(["-C", "-t", TOPIC, "-o", "beginning", "-c", str(COUNT), "-e",
              "-q", "-f", "%p %o %s\\n"])
    check_eq(p.returncode, 0, "kcat -C status (%s)" % p.stderr.strip())
    check_in_order(p.stdout, "by offset")


def t_group():
    t0 = time.monotonic()
    p = kcat(["-G", "ferry-test", TOPIC, "-X", "auto.offset.reset=earliest",
              "-c", str(COUNT), "-q", "-f", "%p %o %s\\n"], timeout=60)
    check_eq(p.returncode, 0, "kcat -G status (%s)" % p.stderr.strip())
    check_in_order(p.stdout, "consumer group")
    tap.diag("group consume: %.1f s" % (time.monotonic() - t0))


def t_stop():
    pid = broker.pid
    check(pid is not None, "no broker pid")
    t0 = time.monotonic()
    check(broker.stop(), "broker pid %d still running after stop" % pid)
    tap.diag("stop: %.1f s" % (time.monotonic() - t0))
    check(not os.path.exists(os.path.join(broker.dir, "kafka.pid")),
          "kafka.pid left behind")
    with open(broker.log_path(), encoding="utf-8", errors="replace") as f:
        log = f.read()
    check("shut down completed" in log,
          "the broker did not log a clean shutdown")


CASES = [
    ("fetch the Kafka jars", t_fetch),
    ("start a KRaft broker on free ports", t_start),
    ("create topic " + TOPIC, t_topic),
    ("produce %d JSON messages with kcat" % COUNT, t_produce),
    ("consume all %d back in order" % COUNT, t_consume),
    ("consume all %d in a consumer group" % COUNT, t_group),
    ("stop the broker by its PID", t_stop),
]

# Each case needs the ones before it: after a failure the rest fail as
# not run (the plan stays the same), after Unavailable the rest skip.
skip = None
blocked = None
for name, fn in CASES:
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
    except kafka_broker.Unavailable as e:
        skip = "no real Kafka broker: %s" % e
        tap.result(True, name, skip=skip)
    except (harness.TestFailure, kafka_broker.BrokerError) as e:
        tap.result(False, name, str(e))
        blocked = name
    except Exception:
        tap.result(False, name, traceback.format_exc())
        blocked = name
tap.finish()

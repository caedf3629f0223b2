"""test_kafka_dlq.py: dead-letter topics of a pool's Kafka consumer and
`ferryctl dlq list` / `dlq replay`.

A real Apache Kafka broker (tests/kafka/kafka_broker.py), a real
PostgreSQL (harness.Stack) and the pool `dlq` consuming ferry.dlq.events
(one partition, so "the messages after it" are behind the poison in the
same partition) into the demo's events table, with `retries: 2`.  The
test creates ferry.dlq.events.dlq itself: the test broker does not create
topics on demand.  Checks: a message that does not decode and one that
does not bind go to the dead-letter topic at once with their ferry-*
headers while the next message lands; a retriable failure (the events
table renamed away) goes there after 1 + retries attempts and the partition
goes on; each dead letter also has its ferry.dead_letters row and its
offset recorded in PostgreSQL; `ferryctl dlq replay --offset N` produces
the message back once the cause is fixed and it lands exactly once.  When
no broker can be had here every case reports SKIP with the reason
(FERRY_KAFKA_REQUIRE=1 makes that a failure).  Prints TAP.
"""

import json
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "kafka"))
import harness  # noqa: E402
import kafka_broker  # noqa: E402
from harness import check, check_eq  # noqa: E402

TOPIC = "ferry.dlq.events"
DLQ = TOPIC + ".dlq"
RETRIES = 2

tap, broker, stack = harness.kafka_stack("ferry-kafka-dlq")

POOL = """
  dlq:
    actors: 1
    operations:
      insert_event:
        sql: >-
          INSERT INTO events (id, kind, payload, topic, partition, "offset")
          VALUES ($1, $2, $3, $4, $5, $6)
        params: ["id:int8", kind:text, "payload:jsonb=null",
                 kafka_topic:text, kafka_partition:int4, kafka_offset:int8]
        result: exec
    kafka:
      properties: ["bootstrap.servers=%s"]
      topics:
        - {topic: %s, format: json, operation: insert_event, retries: %d}
"""

state = {"produced": 0}


def kcat(args, stdin=None, timeout=60):
    try:
        p = subprocess.run(["kcat", "-b", broker.bootstrap] + args,
                           input=stdin, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise harness.TestFailure("kcat %s took longer than %d s"
                                  % (" ".join(args), timeout))
    check_eq(p.returncode, 0, "kcat status (%s)" % p.stderr.strip()[-500:])
    return p


def produce(lines):
    data = "".join("k%d|%s\n" % (state["produced"] + i, line)
                   for i, line in enumerate(lines))
    kcat(["-P", "-t", TOPIC, "-K", "|", "-H", "origin=test",
          "-X", "acks=all"], stdin=data)
    state["produced"] += len(lines)


def ctl(*args, want=0, timeout=90):
    argv = [harness.BINARIES["ctl"], "dlq"] + list(args)
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise harness.TestFailure("%s took longer than %d s"
                                  % (" ".join(argv), timeout))
    check_eq(p.returncode, want, "%s: status (stderr %s)"
             % (" ".join(args), p.stderr.strip()[-500:]))
    return p.stdout


def dlq_list():
    """The dead letters, parsed from `ferryctl dlq list`."""
    out = ctl("list", DLQ, "--bootstrap", broker.bootstrap)
    letters = []
    for line in out.splitlines():
        if line.startswith("partition="):
            f = dict(x.split("=", 1) for x in line.split(" "))
            letters.append({"partition": int(f["partition"]),
                            "offset": int(f["offset"]), "key": f["key"]})
        elif line.startswith("  ") and letters:
            name, _, value = line.strip().partition(": ")
            letters[-1][name] = value
    return letters


def wait(what, fn, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        stack.check_alive()
        v = fn()
        if v:
            return v
        time.sleep(0.2)
    raise harness.TestFailure("%s: not within %.0f s" % (what, timeout))


def ids():
    return stack.psql("SELECT coalesce(string_agg(id::text, ',' ORDER BY id),"
                      " '') FROM events")


def kept_offset():
    return int(stack.psql(
        "SELECT coalesce(max(\"offset\"), 0) FROM ferry.kafka_offsets"
        " WHERE group_id = 'ferry.dlq' AND topic = '%s'" % TOPIC) or 0)


def t_fetch():
    kafka_broker.fetch()


def t_setup():
    t0 = time.monotonic()
    broker.start()
    broker.create_topic(TOPIC, 1)
    broker.create_topic(DLQ, 1)
    stack.start_postgres()
    stack.migrate()
    check(stack.migrate_error is None,
          "ferryctl migrate: %s" % stack.migrate_error)
    stack.write_config(extra_pools=POOL % (broker.bootstrap, TOPIC, RETRIES))
    stack.plan_ports()
    stack.start_worker("dlq")
    out = ctl("list", DLQ, "--bootstrap", broker.bootstrap)
    check("no dead letters" in out, "empty dead-letter topic: " + out)
    tap.diag("broker, PostgreSQL and worker up in %.1f s (%s)"
             % (time.monotonic() - t0, broker.bootstrap))


def t_poison():
    produce(["this is not JSON",
             json.dumps({"id": "not a number", "kind": "test"}),
             json.dumps({"id": 1, "kind": "after the poison"})])
    wait("event 1 after the poison", lambda: ids() == "1", 30)
    letters = wait("two dead letters", lambda: len(dlq_list()) >= 2 and
                   dlq_list(), 30)
    tap.diag(json.dumps(letters))
    check_eq(len(letters), 2, "dead letters")
    a, b = letters
    check_eq(a["ferry-error"], "undecodable value", "first error")
    # "not a number" binds as text; PostgreSQL refuses it as int8.
    check_eq(b["ferry-error"], "statement failed (SQLSTATE 22P02)",
             "second error")
    for i, d in enumerate(letters):
        check_eq(d["ferry-original-topic"], TOPIC, "original topic")
        check_eq(d["ferry-original-partition"], "0", "original partition")
        check_eq(d["ferry-original-offset"], str(i), "original offset")
        check_eq(d["ferry-attempts"], "1", "attempts")
        check_eq(d["key"], "k%d" % i, "key kept")
    check_eq(a["value"], "this is not JSON", "value preview")
    rows = stack.psql("SELECT \"offset\", attempts, error->>'error'"
                      " FROM ferry.dead_letters ORDER BY \"offset\"")
    check_eq(rows, "0|1|undecodable value\n1|1|" + b["ferry-error"],
             "ferry.dead_letters rows")
    wait("offsets kept", lambda: kept_offset() == 3, 10)


def t_retries():
    stack.psql("ALTER TABLE events RENAME TO events_away")
    t0 = time.monotonic()
    produce([json.dumps({"id": 2, "kind": "while the table is away"})])
    letters = wait("the retried event in the dead-letter topic",
                   lambda: len(dlq_list()) >= 3 and dlq_list(), 60)
    took = time.monotonic() - t0
    stack.psql("ALTER TABLE events_away RENAME TO events")
    d = letters[2]
    tap.diag("dead-lettered after %.1f s: %s" % (took, json.dumps(d)))
    check_eq(d["ferry-error"], "retries exhausted (SQLSTATE 42P01)", "error")
    check_eq(d["ferry-attempts"], str(RETRIES + 1), "attempts")
    check_eq(d["ferry-original-offset"], "3", "original offset")
    check("relation" not in json.dumps(d), "no server text in the headers")
    wait("offset of the dead letter kept", lambda: kept_offset() == 4, 10)
    log = open(stack.worker_dlq.log, errors="replace").read()
    check(log.count("will be retried") == RETRIES,
          "%d retries logged" % RETRIES)
    # The partition goes on past it.
    produce([json.dumps({"id": 3, "kind": "after the retries"})])
    wait("event 3", lambda: ids() == "1,3", 30)


def t_replay():
    out = ctl("replay", DLQ, "--offset", "2", "--bootstrap", broker.bootstrap)
    tap.diag(out.strip())
    check("replayed partition=0 offset=2 to " + TOPIC in out, out)
    wait("the replayed event", lambda: ids() == "1,2,3", 30)
    # The replayed copy kept the original's headers, not the error ones.
    p = kcat(["-C", "-t", TOPIC, "-o", "-1", "-e", "-f", "%k %h\\n"])
    last = p.stdout.strip().splitlines()[-1]
    check("origin=test" in last and "ferry-" not in last, "headers: " + last)
    check(last.startswith("k3 "), "key kept: " + last)
    # No such offset: status 1.
    ctl("replay", DLQ, "--offset", "99", "--bootstrap", broker.bootstrap,
        want=1)
    ctl("replay", DLQ, "--offset", "x", want=2)
    time.sleep(1.0)
    check_eq(ids(), "1,2,3", "exactly once")
    check_eq(len(dlq_list()), 3, "nothing new dead-lettered")


def t_stop():
    problems = stack.stop_all()
    check(not problems, "\n".join(problems))


CASES = [
    ("fetch the Kafka jars", t_fetch),
    ("Kafka broker, PostgreSQL and a consuming worker start", t_setup),
    ("poison messages go to the dead-letter topic, the next one lands",
     t_poison),
    ("a retriable failure goes there after the retries, the partition "
     "goes on", t_retries),
    ("ferryctl dlq replay lands the message once the cause is fixed",
     t_replay),
    ("no sanitizer reports / clean exits", t_stop),
]

harness.run_cases(tap, CASES, kafka_broker.Unavailable,
                  (kafka_broker.BrokerError,))

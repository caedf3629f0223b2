"""kafka_broker.py: a real Apache Kafka broker for the Python tests.

A thin wrapper over kafka.sh (next to this file), which fetches the Kafka
jars with Maven into a cache and runs one KRaft broker+controller on free
ports of 127.0.0.1 in a temporary directory.  Tests call fetch() first:
it raises Unavailable when the broker cannot be had here (Maven Central
unreachable, or java/mvn/kcat missing), which the test reports as SKIP
with the reason, never as a pass.  With FERRY_KAFKA_REQUIRE=1 in the
environment Unavailable becomes a failure, for CI that must run against
the real broker.

Every subprocess has a timeout.  Broker.close() stops the broker by its
PID (kafka.sh stop: SIGTERM, then SIGKILL) and removes the directory
(FERRY_IT_KEEP=1 keeps it); register it with the test's cleanup so that it
also runs on failure, signals and the watchdog.
"""

import os
import shutil
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "kafka.sh")


class Unavailable(Exception):
    """No real broker can be had on this machine; str() is the reason."""


class BrokerError(Exception):
    """kafka.sh failed for a reason that is a test failure."""


def _tail(text, lines=20):
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(args, timeout, what):
    try:
        p = subprocess.run(["bash", SCRIPT] + args, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BrokerError("%s: kafka.sh %s took longer than %d s"
                          % (what, args[0], timeout))
    return p


def fetch(timeout=900):
    """Makes sure the jars are in the cache (a download the first time)."""
    missing = [tool + " (Debian: " + pkg + ")" for tool, pkg in
               (("java", "openjdk-17-jre-headless"), ("mvn", "maven"),
                ("kcat", "kcat"))
               if shutil.which(tool) is None]
    reason = None
    if missing:
        reason = "not installed: " + ", ".join(missing)
    else:
        p = _run(["fetch"], timeout, "fetch")
        if p.returncode == 2:
            reason = (_tail(p.stderr, 1).replace("kafka.sh: ", "", 1)
                      or "Maven Central cannot be reached")
        elif p.returncode != 0:
            raise BrokerError("kafka.sh fetch failed (status %d):\n%s"
                              % (p.returncode, _tail(p.stderr)))
    if reason is None:
        return
    if os.environ.get("FERRY_KAFKA_REQUIRE") == "1":
        raise BrokerError("FERRY_KAFKA_REQUIRE=1 but no real Kafka broker: "
                          + reason)
    raise Unavailable(reason)


class Broker:
    """One broker in its own temporary directory."""

    def __init__(self, prefix="ferry-kafka-"):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.bootstrap = None
        self.pid = None

    def start(self, *props, timeout=180):
        """Formats storage and starts the broker; returns once it answers
        metadata requests.  props: extra "key=value" server properties."""
        p = _run(["start", self.dir] + list(props), timeout, "start")
        try:
            with open(os.path.join(self.dir, "kafka.pid")) as f:
                self.pid = int(f.read().strip())
        except (OSError, ValueError):
            self.pid = None
        if p.returncode != 0:
            raise BrokerError("kafka.sh start failed (status %d):\n%s"
                              % (p.returncode, _tail(p.stderr, 40)))
        self.bootstrap = p.stdout.strip().splitlines()[-1]
        return self.bootstrap

    def create_topic(self, name, partitions=1, timeout=120):
        p = _run(["topic", self.dir, name, str(partitions)], timeout,
                 "topic")
        if p.returncode != 0:
            raise BrokerError("creating topic %s failed:\n%s"
                              % (name, _tail(p.stderr)))

    def log_path(self):
        return os.path.join(self.dir, "kafka.log")

    def alive(self):
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, timeout=120):
        """Stops the broker by its PID; True when it is gone."""
        p = _run(["stop", self.dir], timeout, "stop")
        if p.returncode != 0:
            raise BrokerError("kafka.sh stop failed:\n%s" % _tail(p.stderr))
        return not self.alive()

    def close(self):
        """Idempotent: stop (if running) and remove the directory."""
        if self.dir is None:
            return
        try:
            if os.path.exists(os.path.join(self.dir, "kafka.pid")):
                self.stop()
        finally:
            if os.environ.get("FERRY_IT_KEEP") == "1":
                print("# kept %s" % self.dir, flush=True)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

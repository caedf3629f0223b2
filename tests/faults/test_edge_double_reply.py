"""test_edge_double_reply.py: the edge answers each request exactly once,
whatever the broker sends back.

No PostgreSQL and no real broker: a fake broker (a python3-zmq ROUTER
speaking FRY1, docs/protocol.md) takes ferry-edge's DEALER connection and
misbehaves on purpose.  It answers one request twice, sends a REP for a
msg id the edge never sent, and sends a REP after the edge answered 504.
Each time the client gets exactly one response, and the next request on
the same keep-alive connection gets its own reply (the body names the
msg id it answers), not a leftover.  The edge must neither crash nor leak
(run it from a sanitizer build: the last test stops it and reads its log).
Standard library and python3-zmq; the reply envelopes are built here with
a few lines of msgpack encoding (schemas/envelope-v1.md).
"""

import os
import socket
import struct
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "integration"))
import harness  # noqa: E402
from harness import check  # noqa: E402

try:
    import zmq
except ImportError:
    print("1..0 # SKIP python3-zmq is not installed")
    sys.exit(0)

harness.install_guards(120)
tap = harness.Tap()
stack = harness.Stack("ferry-fault-double-reply")


def mp_str(s):
    b = s.encode()
    if len(b) < 32:
        return bytes([0xa0 | len(b)]) + b
    return b"\xd9" + bytes([len(b)]) + b


def mp_uint(n):
    if n < 128:
        return bytes([n])
    return b"\xcd" + struct.pack(">H", n)


def reply_envelope(msg_id, status, tag):
    """A reply envelope {v, kind, id, re, st, body: {"re": msg_id,
    "tag": tag}}."""
    fields = [("v", mp_uint(1)), ("kind", mp_str("reply")),
              ("id", mp_str(os.urandom(16).hex())), ("re", mp_str(msg_id)),
              ("st", mp_uint(status)),
              ("body", b"\x82" + mp_str("re") + mp_str(msg_id)
               + mp_str("tag") + mp_str(tag))]
    out = bytes([0x80 | len(fields)])
    for k, v in fields:
        out += mp_str(k) + v
    return out


class FakeBroker:
    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = "tcp://127.0.0.1:%d" % self.port

    def next_req(self, timeout=5.0):
        """(identity, msg_id, op-less path) of the next REQ; answers the
        edge's heartbeats so it believes in us."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if not self.sock.poll(100):
                continue
            frames = self.sock.recv_multipart()
            ident, rest = frames[0], frames[1:]
            if len(rest) >= 2 and rest[0] == b"FRY1" and rest[1] == b"HB":
                self.sock.send_multipart([ident, b"FRY1", b"HB", b"app"])
                continue
            if len(rest) >= 7 and rest[0] == b"FRY1" and rest[1] == b"REQ":
                return ident, rest[3].decode()
        raise harness.TestFailure("no REQ from the edge within %.0f s"
                                  % timeout)

    def rep(self, ident, msg_id, status=200, tag="first"):
        self.sock.send_multipart([ident, b"FRY1", b"REP", msg_id.encode(),
                                  reply_envelope(msg_id, status, tag)])

    def close(self):
        self.sock.close()
        self.ctx.term()


broker = FakeBroker()
harness._register_cleanup(broker.close)
CONFIG = """\
log:
  level: debug
broker:
  heartbeat: 200ms
edge:
  listen: 127.0.0.1:%(port)d
  broker: %(broker)s
  loops: 2
  routes:
    - route: GET /items/{id:int}
      service: app
      operation: get_item
      timeout: 3s
    - route: GET /late
      service: app
      operation: late
      timeout: 300ms
"""


def start_edge():
    stack.http_port = harness.free_port()
    path = os.path.join(stack.tmp, "edge.yaml")
    with open(path, "w") as f:
        f.write(CONFIG % {"port": stack.http_port,
                          "broker": broker.endpoint})
    stack.start_edge(config=path, sets=[])
    stack.wait_http("/healthz", 200, 20.0)


class KeepAlive:
    """One raw keep-alive connection: send a request, read exactly one
    response, and check that nothing more arrives."""

    def __init__(self):
        self.sock = socket.create_connection(("127.0.0.1", stack.http_port),
                                             timeout=5)
        self.buf = b""

    def send(self, path):
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)
                          .encode())

    def read_one(self, timeout=5.0):
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            check(chunk, "the edge closed the connection")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(rest) < n:
            chunk = self.sock.recv(65536)
            check(chunk, "the edge closed the connection mid-body")
            rest += chunk
        body, self.buf = rest[:n], rest[n:]
        return status, headers, body

    def nothing_more(self, wait=0.5):
        self.sock.settimeout(wait)
        try:
            extra = self.sock.recv(65536)
        except socket.timeout:
            extra = None
        self.buf += extra or b""
        check(not self.buf, "a second response on the connection: %r"
              % self.buf[:300])

    def close(self):
        self.sock.close()


@tap.test("a request answered twice gets one response; the next request "
          "on the connection gets its own reply", needs="none")
def _():
    start_edge()
    c = KeepAlive()
    try:
        c.send("/items/1")
        ident, msg_id = broker.next_req()
        broker.rep(ident, msg_id, 200, "first")
        broker.rep(ident, msg_id, 200, "second")
        status, headers, body = c.read_one()
        check(status == 200, "status %d: %r" % (status, body))
        check(b'"tag":"first"' in body and msg_id.encode() in body,
              "not the first reply: %r" % body)
        c.nothing_more()
        # The duplicate must not answer the next request on the connection.
        c.send("/items/2")
        ident, msg_id2 = broker.next_req()
        check(msg_id2 != msg_id, "the edge reused msg id %s" % msg_id)
        broker.rep(ident, msg_id2, 201, "next")
        status, headers, body = c.read_one()
        check(status == 201 and msg_id2.encode() in body
              and b'"tag":"next"' in body,
              "the next request got %d %r" % (status, body))
        c.nothing_more()
    finally:
        c.close()


@tap.test("a REP for an unknown msg id is dropped", needs="none")
def _():
    c = KeepAlive()
    try:
        c.send("/items/3")
        ident, msg_id = broker.next_req()
        broker.rep(ident, "0" * 32, 200, "stranger")
        broker.rep(ident, "f" * 31 + "e", 500, "stranger")
        broker.rep(ident, msg_id, 200, "mine")
        status, headers, body = c.read_one()
        check(status == 200 and b'"tag":"mine"' in body,
              "got %d %r" % (status, body))
        c.nothing_more()
    finally:
        c.close()


@tap.test("a REP after the 504 is dropped; the connection's next request "
          "gets its own reply", needs="none")
def _():
    c = KeepAlive()
    try:
        c.send("/late")
        ident, msg_id = broker.next_req()
        status, headers, body = c.read_one()
        check(status == 504, "expected 504, got %d %r" % (status, body))
        check(headers.get("x-request-id"), "no X-Request-Id on the 504")
        broker.rep(ident, msg_id, 200, "too-late")
        broker.rep(ident, msg_id, 200, "too-late-again")
        c.nothing_more()
        c.send("/items/4")
        ident, msg_id2 = broker.next_req()
        broker.rep(ident, msg_id2, 200, "fresh")
        status, headers, body = c.read_one()
        check(status == 200 and b'"tag":"fresh"' in body
              and msg_id2.encode() in body, "got %d %r" % (status, body))
        c.nothing_more()
    finally:
        c.close()


@tap.test("many requests, each answered three times: one response each",
          needs="none")
def _():
    conns = [KeepAlive() for _ in range(8)]
    try:
        for rnd in range(5):
            for i, c in enumerate(conns):
                c.send("/items/%d" % (100 + i))
            reqs = [broker.next_req() for _ in conns]
            for ident, msg_id in reqs:
                for tag in ("a", "b", "c"):
                    broker.rep(ident, msg_id, 200, tag)
            for c in conns:
                status, headers, body = c.read_one()
                check(status == 200 and b'"tag":"a"' in body,
                      "round %d: %d %r" % (rnd, status, body))
        for c in conns:
            c.nothing_more(0.2)
    finally:
        for c in conns:
            c.close()
    check(stack.edge.alive(), "the edge died")


harness.sanitizer_test(tap, stack)
tap.run()
tap.finish()

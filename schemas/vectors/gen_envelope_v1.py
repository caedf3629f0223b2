#!/usr/bin/env python3
"""Generates envelope-v1.json, the test vectors of schemas/envelope-v1.md.

Run from anywhere: python3 schemas/vectors/gen_envelope_v1.py
Writes envelope-v1.json next to this script.

The bytes are packed by hand with a few lines of struct so that the vectors
can hold what no well-behaved packer writes (duplicate keys, lying lengths,
non-canonical integer sizes).  Every vector is checked against the default
limits of the specification.  Standard library only.
"""

import json
import os
import struct


class Raw(bytes):
    """Bytes inserted as they are."""


class Pairs(list):
    """A map given as (key, value) pairs: keeps order, allows duplicates."""


def pack(o):
    if isinstance(o, Raw):
        return bytes(o)
    if o is None:
        return b"\xc0"
    if o is True:
        return b"\xc3"
    if o is False:
        return b"\xc2"
    if isinstance(o, int):
        if 0 <= o <= 0x7F:
            return bytes([o])
        if -32 <= o < 0:
            return struct.pack(">b", o)
        if 0 <= o <= 0xFF:
            return b"\xcc" + struct.pack(">B", o)
        if 0 <= o <= 0xFFFF:
            return b"\xcd" + struct.pack(">H", o)
        if 0 <= o <= 0xFFFFFFFF:
            return b"\xce" + struct.pack(">I", o)
        if 0 <= o:
            return b"\xcf" + struct.pack(">Q", o)
        if o >= -0x80:
            return b"\xd0" + struct.pack(">b", o)
        if o >= -0x8000:
            return b"\xd1" + struct.pack(">h", o)
        if o >= -0x80000000:
            return b"\xd2" + struct.pack(">i", o)
        return b"\xd3" + struct.pack(">q", o)
    if isinstance(o, float):
        return b"\xcb" + struct.pack(">d", o)
    if isinstance(o, str):
        b = o.encode("utf-8")
        n = len(b)
        if n < 32:
            return bytes([0xA0 | n]) + b
        if n <= 0xFF:
            return b"\xd9" + bytes([n]) + b
        if n <= 0xFFFF:
            return b"\xda" + struct.pack(">H", n) + b
        return b"\xdb" + struct.pack(">I", n) + b
    if isinstance(o, bytes):
        n = len(o)
        if n <= 0xFF:
            return b"\xc4" + bytes([n]) + o
        return b"\xc5" + struct.pack(">H", n) + o
    if isinstance(o, list) and not isinstance(o, Pairs):
        n = len(o)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(pack(x) for x in o)
    if isinstance(o, (dict, Pairs)):
        items = list(o.items()) if isinstance(o, dict) else list(o)
        n = len(items)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(pack(k) + pack(v) for k, v in items)
    raise TypeError(type(o))


ID = "0123456789abcdef0123456789abcdef"
RE = "fedcba9876543210fedcba9876543210"
DL = 1700000005000
TS = 1700000000000
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def request(**extra):
    m = {"v": 1, "kind": "request", "id": ID, "svc": "app", "op": "get_user",
         "dl": DL}
    m.update(extra)
    return m


def reply(**extra):
    m = {"v": 1, "kind": "reply", "id": ID, "re": RE, "st": 200}
    m.update(extra)
    return m


def without(m, key):
    return {k: v for k, v in m.items() if k != key}


vectors = []


def valid(name, value, expect=None):
    data = pack(value)
    if expect is None:
        expect = value
    vectors.append({"name": name, "hex": data.hex(), "valid": True,
                    "expect": expect})


def invalid(name, value, error):
    data = value if isinstance(value, (bytes, Raw)) else pack(value)
    vectors.append({"name": name, "hex": bytes(data).hex(), "valid": False,
                    "error": error})


# ---- valid ----------------------------------------------------------------
valid("request, required fields only", request())
valid("request, every field",
      request(cid="req-42", ts=TS, att=1, prin="user:ada", idem="idem-1",
              tp=TP, rto="ferry.replies",
              job="0190f3c2-7d4e-4a1b-9c2d-3e4f5a6b7c8d", hdrs={"accept": "application/json"},
              args={"id": 42}, body={"name": "Ada", "tags": ["a", "b"]}))
valid("reply, required fields only", reply())
valid("reply, problem body",
      reply(st=404, cid="req-42", hdrs={"content-type":
                                        "application/problem+json"},
            body={"type": "about:blank", "title": "Not Found", "status": 404,
                  "detail": "no user 42"}))
valid("event, required fields only", {"v": 1, "kind": "event", "id": ID})
valid("event with service, operation and body",
      {"v": 1, "kind": "event", "id": ID, "svc": "billing",
       "op": "order.created", "ts": TS, "body": {"order": 7}})
valid("unknown keys are ignored",
      request(future={"x": [1, 2, 3]}, zz="later"), request())
valid("keys in any order",
      Pairs([("dl", DL), ("op", "get_user"), ("svc", "app"), ("id", ID),
             ("kind", "request"), ("v", 1)]), request())
valid("integers in wider encodings than needed",
      Pairs([("v", Raw(b"\xcc\x01")), ("kind", "reply"), ("id", ID),
             ("re", RE), ("st", Raw(b"\xcf" + struct.pack(">Q", 201))),
             ("att", Raw(b"\xd0\x02"))]),
      reply(st=201, att=2))
valid("keys and values as str8", Pairs(
    [(Raw(b"\xd9\x01v"), 1), (Raw(b"\xd9\x04kind"), Raw(b"\xd9\x05reply")),
     ("id", ID), ("re", RE), ("st", 204)]), reply(st=204))
valid("nil body is a body", reply(body=None))
valid("body with unicode, negative, float and bool values",
      reply(body={"name": "Zoë ✓ 🚢", "n": -5, "big": -9000000000,
                  "pi": 3.25, "ok": True, "none": None}))
valid("bin body becomes base64 in JSON", reply(body=b"\x00\x01\xfe\xff"),
      reply(body="AAH+/w=="))
valid("empty args map", request(args={}))
valid("status 100 and name limits",
      reply(st=100, cid="x" * 128), reply(st=100, cid="x" * 128))
valid("status 599", reply(st=599))
valid("idempotency key of 255 characters", request(idem="k" * 255))
valid("service and operation of 64 characters",
      request(svc="A-z_0.9" + "s" * 57, op="o" * 64))
valid("deadline in a uint64 encoding",
      request(dl=Raw(b"\xcf" + struct.pack(">Q", DL))), request())
nested = 0
for _ in range(31):
    nested = [nested]
valid("nesting of exactly 32 levels", reply(body=nested))
valid("empty hdrs", reply(hdrs={}), reply())

# ---- invalid ---------------------------------------------------------------
good = pack(request())
invalid("empty input", b"", "truncated input")
invalid("truncated input", good[:-1], "truncated input")
invalid("truncated inside a string", good[:12], "runs past the end of input")
invalid("trailing bytes", good + b"\xc0", "trailing bytes")
invalid("map declaring 2^32-1 entries in 5 bytes", b"\xdf\xff\xff\xff\xff",
        "map of 4294967295 entries exceeds the limit of 65536")
invalid("9 bytes declaring a map of 4 billion entries",
        b"\xdf\xff\xff\xff\xff\xa1v\x01\xa4",
        "map of 4294967295 entries exceeds the limit")
invalid("array declaring 65537 entries",
        pack(request(body=Raw(b"\xdd\x00\x01\x00\x01\xc0\xc0"))),
        "array of 65537 entries exceeds the limit of 65536")
invalid("array declaring more entries than bytes remain",
        pack(request(body=Raw(b"\xdc\x03\xe8\x01\x02"))),
        "array of 1000 entries runs past the end of input")
invalid("map declaring more entries than bytes remain",
        pack(request(body=Raw(b"\x83\x01\x02\x03\x04"))),
        "map of 3 entries runs past the end of input")
invalid("str length beyond the buffer",
        pack(request(body=Raw(b"\xd9\xc8abc"))),
        "str of 200 bytes runs past the end of input")
invalid("bin length beyond the buffer",
        pack(request(body=Raw(b"\xc6\x00\x01\x00\x00abc"))),
        "bin of 65536 bytes runs past the end of input")
invalid("str longer than the limit",
        pack(request(body=Raw(b"\xdb\x01\x40\x00\x01abc"))),
        "str of 20971521 bytes exceeds the limit")
invalid("nesting of 33 levels", pack(reply(body=[nested])),
        "nesting deeper than 32 levels")
invalid("reserved byte 0xc1", pack(request(body=Raw(b"\xc1"))),
        "invalid msgpack byte 0xc1")
invalid("top level is an array", ["v", 1], "envelope is not a map")
invalid("top level is nil", None, "envelope is not a map")
invalid("missing version", without(request(), "v"), "missing field 'v'")
invalid("version 2", request(v=2), "unsupported envelope version 2")
invalid("version 0", request(v=0), "unsupported envelope version 0")
invalid("version as a string", request(v="1"),
        "field 'v': expected unsigned integer")
invalid("duplicate key", Pairs(list(request().items()) + [("id", "again")]),
        "duplicate key 'id'")
invalid("duplicate unknown key", Pairs(list(request().items())
                                       + [("x", 1), ("x", 2)]),
        "duplicate key 'x'")
invalid("integer key", Pairs(list(request().items()) + [(7, 1)]),
        "key is not a string")
invalid("bin key",
        Pairs([(Raw(b"\xc4\x01v"), 1)] + list(request().items())[1:]),
        "key is not a string")
invalid("missing kind", without(request(), "kind"), "missing field 'kind'")
invalid("unknown kind", request(kind="command"), "field 'kind': unknown kind")
invalid("request without id", without(request(), "id"), "missing field 'id'")
invalid("request without svc", without(request(), "svc"),
        "missing field 'svc'")
invalid("request without op", without(request(), "op"), "missing field 'op'")
invalid("request without dl", without(request(), "dl"), "missing field 'dl'")
invalid("reply without re", without(reply(), "re"), "missing field 're'")
invalid("reply without st", without(reply(), "st"), "missing field 'st'")
invalid("negative deadline", request(dl=-1),
        "field 'dl': expected unsigned integer")
invalid("deadline as a float", request(dl=1.5),
        "field 'dl': expected unsigned integer")
invalid("deadline as a string", request(dl="1700000005000"),
        "field 'dl': expected unsigned integer")
invalid("id as an integer", request(id=42), "field 'id': expected string")
invalid("id of 129 characters", request(id="i" * 129),
        "field 'id': expected 1 to 128 visible ASCII characters")
invalid("idempotency key of 256 characters", request(idem="k" * 256),
        "field 'idem': expected 1 to 255 visible ASCII characters")
invalid("job id with a space", request(job="a b"),
        "field 'job': expected 1 to 128 visible ASCII characters")
invalid("empty id", request(id=""),
        "field 'id': expected 1 to 128 visible ASCII characters")
invalid("id with a space", request(id="a b"),
        "field 'id': expected 1 to 128 visible ASCII characters")
invalid("bad service name", request(svc="app/users"),
        "field 'svc': expected a name")
invalid("operation of 65 characters", request(op="o" * 65),
        "field 'op': expected a name")
invalid("status 600", reply(st=600), "field 'st': 600 is out of range")
invalid("status 99", reply(st=99), "field 'st': 99 is out of range")
invalid("attempt beyond 32 bits", request(att=2**32),
        "field 'att': 4294967296 is out of range")
invalid("args not a map", request(args=[1, 2]), "field 'args': expected map")
invalid("args with an integer key", request(args=Pairs([(1, 2)])),
        "field 'args': key is not a string")
invalid("args with a duplicate key",
        request(args=Pairs([("id", 1), ("id", 2)])),
        "field 'args': duplicate key 'id'")
invalid("header value not a string", request(hdrs={"accept": 1}),
        "field 'hdrs': expected string values")
invalid("header name in uppercase", request(hdrs={"Accept": "x"}),
        "field 'hdrs': invalid header name")
invalid("header value with CR LF", request(hdrs={"x-a": "a\r\nb: c"}),
        "field 'hdrs': invalid value for header 'x-a'")
invalid("hdrs not a map", request(hdrs="accept"),
        "field 'hdrs': expected map")
invalid("principal with NUL", request(prin="ada\x00root"),
        "field 'prin': expected 1 to 1024 bytes without NUL")
invalid("traceparent as bin", request(tp=TP.encode()),
        "field 'tp': expected string")

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "envelope-v1.json"), "w", encoding="utf-8") as f:
    json.dump(vectors, f, indent=1, ensure_ascii=False)
    f.write("\n")
print("%d valid, %d invalid" % (sum(v["valid"] for v in vectors),
                                sum(not v["valid"] for v in vectors)))

#!/usr/bin/env python3
"""make-seeds.py: writes the seed corpora of the fuzz targets.

Run from anywhere: python3 tests/fuzz/make-seeds.py.  It (re)writes
tests/fuzz/corpus/NAME/ from the project's own examples: the envelope test
vectors (schemas/vectors/envelope-v1.json, valid and invalid alike), a few
JSON bodies, the route templates of etc/*.yaml with requests that match
them, and etc/*.yaml themselves (also with --set overrides).  The seeds are
committed; run this again when the vectors or etc/ change.  Standard
library only."""

import json
import os
import re
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


def write(name, fname, data):
    d = os.path.join(CORPUS, name)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, fname), "wb") as f:
        f.write(data)


def envelope():
    with open(os.path.join(ROOT, "schemas/vectors/envelope-v1.json")) as f:
        vectors = json.load(f)
    for i, v in enumerate(vectors):
        write("envelope", "vector-%02d" % i, bytes.fromhex(v["hex"]))


JSON_BODIES = [
    '{"name": "Ada", "email": "ada@example.com"}',
    '{"user_id": 1, "amount": "12.50"}',
    '[1, -2, 3.5, 1e300, -0.0, 9223372036854775807, -9223372036854775808]',
    '{"a": {"b": {"c": [true, false, null, "\\u00e9\\ud83d\\ude00"]}}}',
    '"just a string"',
    '18446744073709551615',
    '{"dup": 1, "dup": 2}',
    '{"nul": "a\\u0000b"}',
    '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]',
    '{"tags": ["a", "b"], "n": 0.1, "big": 123456789012345678901234567890}',
]


def json_seeds():
    for i, body in enumerate(JSON_BODIES):
        write("json", "body-%02d" % i, body)


def routes():
    templates = []
    for yaml in sorted(os.listdir(os.path.join(ROOT, "etc"))):
        if yaml.endswith(".yaml"):
            with open(os.path.join(ROOT, "etc", yaml)) as f:
                templates += re.findall(r"^\s*- route:\s*(.+?)\s*$",
                                        f.read(), re.M)
    table = "".join("R %s\n" % t for t in templates)
    write("routes", "etc-routes", table + "M GET /users/42\nM GET /nope\n")
    write("routes", "query",
          "R GET /users\nQ limit:int\nQ after:int\nQ q\n"
          "M GET /users?limit=5&after=10&q=x\nM HEAD /users?limit=x\n")
    write("routes", "required",
          "R GET /reports/slow\nQ seconds:number!\nQ flag:bool\n"
          "M GET /reports/slow?seconds=1.5&flag=true\n"
          "M GET /reports/slow\nM POST /reports/slow\n")
    write("routes", "uuid",
          "R PUT /jobs/{id:uuid}/steps/{n:int}\nR DELETE /jobs/{id:uuid}\n"
          "M PUT /jobs/0190F3C2-7D4E-4A1B-9C2D-3E4F5A6B7C8D/steps/3\n"
          "M DELETE /jobs/0190f3c2-7d4e-4a1b-9c2d-3e4f5a6b7c8d\n"
          "M GET /jobs/x\n")
    write("routes", "kafka",
          "R POST /events/{kind}\nQ tenant\nK ferry.events kind\n"
          "M POST /events/click?tenant=t1\n"
          "R PATCH /things/{a}/{b:string}\nQ k!\nK  k\n"
          "M PATCH /things/1/2?k=v\n")


def config():
    for yaml in sorted(os.listdir(os.path.join(ROOT, "etc"))):
        if yaml.endswith(".yaml"):
            with open(os.path.join(ROOT, "etc", yaml), "rb") as f:
                text = f.read()
            write("config", yaml, text)
            sets = [
                "edge.listen=127.0.0.1:9090",
                "edge.routes[5]={route: GET /x/{id:uuid}, service: app, "
                "operation: x, query: {q: {type: bool, required: true}}}",
                "pools.app.actors=8",
                "log.level=debug",
                "broker.services.app.queue_limit=10",
                "pools.app.operations.get_user.params=[id:int4]",
            ]
            write("config", yaml + "+set",
                  text + b"\0" + b"\0".join(s.encode() for s in sets))
    write("config", "sets-only",
          b"\0edge.routes=[]\0edge.routes[0].route=GET /a\0a.b.c=[1, {x: y}]")
    write("config", "anchors",
          "x: &a {k: 1s}\ny: *a\nz: [*a, *a]\n"
          "edge: {max_header_line: 8KiB, connection_timeout: 250ms}\n")


if __name__ == "__main__":
    shutil.rmtree(CORPUS, ignore_errors=True)
    envelope()
    json_seeds()
    routes()
    config()

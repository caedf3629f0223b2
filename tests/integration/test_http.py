"""test_http.py: every demo route and the HTTP contract of ferry-edge,
against a real PostgreSQL and real daemons (harness.py starts them).

Covers the 200/201 paths, the 400/404/405/409/413/415/422/431 problems,
msgpack in and out, X-Request-Id, traceparent continued into the worker
(traceresponse), keep-alive, /healthz and /readyz.  Prints TAP.
"""

import os
import random
import sys

sys.dont_write_bytecode = True     # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import check, check_eq, check_problem, TestFailure  # noqa: E402

try:
    import msgpack
except ImportError:
    msgpack = None

harness.install_guards(300)
tap = harness.Tap()
stack = harness.Stack("ferry-it-http")
RUN = "%06x" % random.getrandbits(24)     # unique emails per run


def get(path, **kw):
    return harness.request(stack.http_port, "GET", path, **kw)


def post(path, body, **kw):
    return harness.request(stack.http_port, "POST", path, body=body, **kw)


def need_msgpack():
    if msgpack is None:
        raise TestFailure("the msgpack module is missing: apt-get install "
                          "python3-msgpack and run with /usr/bin/python3")


def ctype(r):
    return (r.header("Content-Type") or "").split(";")[0].strip().lower()


@tap.test("ferryctl migrate applies schemas/sql", needs="pg")
def _():
    check(stack.migrate_error is None, "ferryctl migrate failed (the suite "
          "fell back to psql): %s" % stack.migrate_error)


@tap.test("ferryctl migrate is idempotent (second run, data intact)",
          needs="pg")
def _():
    err = stack.ctl_migrate()
    check(err is None, "second ferryctl migrate failed: %s" % err)
    check_eq(stack.psql("SELECT count(*) FROM users"), "1000",
             "users after a second migrate")


@tap.test("GET /healthz answers 200")
def _():
    r = get("/healthz")
    check_eq(r.status, 200, "status")


@tap.test("GET /readyz answers 200 with broker and both pools up")
def _():
    r = get("/readyz")
    check(r.status == 200, r.describe())


@tap.test("GET /users/42 returns the user as JSON")
def _():
    r = get("/users/42")
    check(r.status == 200, r.describe())
    check_eq(ctype(r), "application/json", "Content-Type")
    u = r.json()
    check(isinstance(u, dict), "body is not an object: %r" % (u,))
    check_eq(u.get("id"), 42, "id (a JSON integer)")
    check_eq(u.get("name"), "User 42", "name")
    check_eq(u.get("email"), "user42@example.com", "email")
    check(isinstance(u.get("created_at"), str)
          and harness.RFC3339.match(u["created_at"]),
          "created_at is not RFC 3339: %r" % (u.get("created_at"),))
    check(r.header("X-Request-Id"), "no X-Request-Id on a 200")


@tap.test("GET /users/999999 is a 404 problem with request_id")
def _():
    check_problem(get("/users/999999"), 404)


@tap.test("GET /users/abc (not an int) is a 404 problem")
def _():
    check_problem(get("/users/abc"), 404)


@tap.test("GET /users?limit=3 returns 3 users in id order")
def _():
    r = get("/users?limit=3")
    check(r.status == 200, r.describe())
    rows = r.json()
    check(isinstance(rows, list), "body is not an array: %r" % (rows,))
    check_eq([u.get("id") for u in rows], [1, 2, 3], "ids")


@tap.test("GET /users?limit=2&after=500 pages after an id")
def _():
    r = get("/users?limit=2&after=500")
    check(r.status == 200, r.describe())
    check_eq([u.get("id") for u in r.json()], [501, 502], "ids")


@tap.test("GET /users?limit=x is a 400 problem")
def _():
    check_problem(get("/users?limit=x"), 400)


@tap.test("POST /users (JSON) creates the row: 201, visible in PostgreSQL")
def _():
    email = "ada-%s@example.com" % RUN
    r = post("/users", {"name": "Ada Lovelace", "email": email})
    check(r.status == 201, r.describe())
    u = r.json()
    check(isinstance(u.get("id"), int) and u["id"] > 1000,
          "id from the sequence expected (> 1000): %r" % (u,))
    check_eq(u.get("email"), email, "email")
    check(harness.RFC3339.match(str(u.get("created_at"))),
          "created_at is not RFC 3339: %r" % (u,))
    row = stack.psql("SELECT name || '|' || email FROM users WHERE id = %d"
                     % u["id"])
    check_eq(row, "Ada Lovelace|" + email, "row in PostgreSQL")


@tap.test("POST /users with a duplicate email is a 409 problem")
def _():
    email = "dup-%s@example.com" % RUN
    r = post("/users", {"name": "First", "email": email})
    check(r.status == 201, "first insert: " + r.describe())
    p = check_problem(post("/users", {"name": "Second", "email": email}), 409)
    check("duplicate key value" not in str(p) and "users_email_key"
          not in str(p), "raw server text leaked into the problem: %r" % p)
    check_eq(stack.psql("SELECT count(*) FROM users WHERE email = '%s'"
                        % email), "1", "rows with that email")


@tap.test("POST /users without name (NOT NULL) is a 422 problem")
def _():
    check_problem(post("/users", {"email": "noname-%s@example.com" % RUN}),
                  422)


@tap.test("POST /users without email: 201 with null email, or 422")
def _():
    r = post("/users", {"name": "No Email %s" % RUN})
    if r.status == 201:
        check("email" in r.json() and r.json()["email"] is None,
              "email should be null: " + r.describe())
    else:
        check_problem(r, 422)


@tap.test("POST /users with invalid JSON is a 400 problem")
def _():
    check_problem(post("/users", '{"name": "x", "email": ',
                       headers={"Content-Type": "application/json"}), 400)


@tap.test("POST /users with a body over max_body (64 KiB) is a 413 problem")
def _():
    body = ('{"name": "%s", "email": "big@example.com"}'
            % ("x" * 100000)).encode()
    raw = (b"POST /users HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n"
           b"Connection: close\r\n\r\n" % len(body)) + body
    r = harness.http_raw(stack.http_port, raw)
    check(r is not None, "connection closed without a response")
    check_problem(r, 413)
    check_eq(stack.psql("SELECT count(*) FROM users WHERE email = "
                        "'big@example.com'"), "0", "rows inserted")


@tap.test("POST /users with Content-Type text/plain is a 415 problem")
def _():
    check_problem(post("/users", '{"name": "x"}',
                       headers={"Content-Type": "text/plain"}), 415)


@tap.test("DELETE /users/1 is a 405 problem with Allow: GET")
def _():
    r = harness.request(stack.http_port, "DELETE", "/users/1")
    check_problem(r, 405)
    allow = [m.strip() for m in (r.header("Allow") or "").split(",")]
    check("GET" in allow, "Allow header %r lacks GET" % r.header("Allow"))
    check("DELETE" not in allow, "Allow header %r has DELETE"
          % r.header("Allow"))
    check_eq(stack.psql("SELECT count(*) FROM users WHERE id = 1"), "1",
             "user 1 still there")


@tap.test("GET /no/such/path is a 404 problem")
def _():
    check_problem(get("/no/such/path"), 404)


@tap.test("POST /orders for user 42 is 201 with amount \"12.50\"")
def _():
    r = post("/orders", {"user_id": 42, "amount": "12.50"})
    check(r.status == 201, r.describe())
    o = r.json()
    check_eq(o.get("user_id"), 42, "user_id")
    check_eq(o.get("amount"), "12.50", "amount (numeric as a string)")
    check(isinstance(o.get("id"), int), "order id: %r" % (o,))
    check_eq(stack.psql("SELECT amount FROM orders WHERE id = %d" % o["id"]),
             "12.50", "amount in PostgreSQL")


@tap.test("POST /orders for an unknown user is a 422 problem, no row")
def _():
    before = stack.psql("SELECT count(*) FROM orders")
    check_problem(post("/orders", {"user_id": 999999, "amount": "1.00"}), 422)
    check_eq(stack.psql("SELECT count(*) FROM orders"), before, "orders")


@tap.test("POST /orders with a negative amount is a 422 problem")
def _():
    before = stack.psql("SELECT count(*) FROM orders")
    check_problem(post("/orders", {"user_id": 42, "amount": "-5.00"}), 422)
    check_eq(stack.psql("SELECT count(*) FROM orders"), before, "orders")


@tap.test("POST /users with a msgpack body and msgpack response")
def _():
    need_msgpack()
    email = "mp-%s@example.com" % RUN
    r = post("/users", msgpack.packb({"name": "Msg Pack", "email": email}),
             headers={"Content-Type": "application/msgpack",
                      "Accept": "application/msgpack"})
    check(r.status == 201, r.describe())
    check_eq(ctype(r), "application/msgpack", "Content-Type")
    u = msgpack.unpackb(r.body, raw=False)
    check_eq(u.get("name"), "Msg Pack", "name")
    check_eq(u.get("email"), email, "email")
    check(isinstance(u.get("id"), int), "id: %r" % (u,))
    check_eq(stack.psql("SELECT name FROM users WHERE email = '%s'" % email),
             "Msg Pack", "row in PostgreSQL")


@tap.test("GET /users/42 with Accept: application/msgpack")
def _():
    need_msgpack()
    r = get("/users/42", headers={"Accept": "application/msgpack"})
    check(r.status == 200, r.describe())
    check_eq(ctype(r), "application/msgpack", "Content-Type")
    u = msgpack.unpackb(r.body, raw=False)
    check_eq(u.get("id"), 42, "id")
    check_eq(u.get("email"), "user42@example.com", "email")


@tap.test("POST /users with an invalid msgpack body is a 400 problem")
def _():
    for bad in (b"\xc1", b"\x82\xa4name", b"\x81\xa4name\xa1x\xff"):
        check_problem(post("/users", bad, headers={
            "Content-Type": "application/msgpack"}), 400,
            "body %r" % bad)


@tap.test("a valid X-Request-Id is echoed (200 and problem)")
def _():
    for path, status in (("/users/7", 200), ("/users/999998", 404)):
        rid = "it-%s-%s" % (RUN, status)
        r = get(path, headers={"X-Request-Id": rid})
        check_eq(r.status, status, "status of " + path)
        check_eq(r.header("X-Request-Id"), rid, "X-Request-Id on " + path)
        if status != 200:
            check_eq(r.json().get("request_id"), rid, "problem request_id")


@tap.test("an invalid X-Request-Id is replaced; one is always present")
def _():
    seen = set()
    for bad in ("x" * 200, "has spaces in it", None):
        r = get("/users/8", headers={"X-Request-Id": bad} if bad else {})
        check_eq(r.status, 200, "status")
        rid = r.header("X-Request-Id")
        check(rid and rid != bad, "X-Request-Id %r for incoming %r"
              % (rid, bad))
        check(len(rid) <= 128 and all(0x21 <= ord(c) <= 0x7e for c in rid),
              "generated X-Request-Id is not valid: %r" % rid)
        seen.add(rid)
    check_eq(len(seen), 3, "distinct generated request ids")


@tap.test("traceparent is continued into the worker (traceresponse)")
def _():
    trace = "%032x" % random.getrandbits(128)
    parent = "%016x" % random.getrandbits(64)
    r = get("/users/9", headers={"traceparent": "00-%s-%s-01"
                                 % (trace, parent)})
    check_eq(r.status, 200, "status")
    tr = r.header("traceresponse")
    check(tr, "no traceresponse header: " + r.describe())
    m = harness.TRACEPARENT.match(tr)
    check(m, "traceresponse is not a traceparent: %r" % tr)
    check_eq(m.group(1), trace, "trace id in traceresponse")
    check(m.group(2) != parent and m.group(2) != "0" * 16,
          "traceresponse parent id should be the worker's span: %r" % tr)


@tap.test("without traceparent a new trace appears in traceresponse")
def _():
    ids = set()
    for _ in range(2):
        r = get("/users/10")
        check_eq(r.status, 200, "status")
        tr = r.header("traceresponse")
        m = harness.TRACEPARENT.match(tr or "")
        check(m, "traceresponse missing or invalid: %r" % tr)
        check(m.group(1) != "0" * 32, "all-zero trace id")
        ids.add(m.group(1))
    check_eq(len(ids), 2, "distinct new trace ids")


@tap.test("POST /users with an explicit id keeps it")
def _():
    r = post("/users", {"id": 5000, "name": "Chosen",
                        "email": "chosen-%s@example.com" % RUN})
    check(r.status == 201, r.describe())
    check_eq(r.json().get("id"), 5000, "id")
    check_eq(stack.psql("SELECT name FROM users WHERE id = 5000"), "Chosen",
             "row in PostgreSQL")


@tap.test("GET /reports/slow?seconds=0.01 (pool reports) answers 200")
def _():
    r = get("/reports/slow?seconds=0.01")
    check(r.status == 200, r.describe())
    b = r.json()
    check_eq(b.get("seconds"), 0.01, "seconds (a JSON number)")
    check_eq(b.get("slept"), True, "slept (a JSON boolean)")


@tap.test("GET /reports/slow without the required query or with a bad "
          "number is a 400 problem")
def _():
    check_problem(get("/reports/slow"), 400, "missing seconds")
    check_problem(get("/reports/slow?seconds=abc"), 400, "seconds=abc")


@tap.test("400 concurrent requests on 16 keep-alive connections each get "
          "their own reply")
def _():
    import threading
    errors = []

    def client(k):
        conn = harness.http.client.HTTPConnection(
            "127.0.0.1", stack.http_port, timeout=15)
        try:
            for i in range(25):
                n = 1 + (k * 25 + i) % 1000
                rid = "c%d-%d-%s" % (k, i, RUN)
                r = harness.request(stack.http_port, "GET", "/users/%d" % n,
                                    headers={"X-Request-Id": rid}, conn=conn)
                if (r.status != 200 or r.json().get("id") != n
                        or r.header("X-Request-Id") != rid):
                    errors.append("GET /users/%d as %s: %s"
                                  % (n, rid, r.describe()))
                    return
        except Exception as e:
            errors.append("client %d: %s" % (k, e))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True)
               for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check(not any(t.is_alive() for t in threads), "clients hung for 60 s")
    check(not errors, "\n".join(errors[:5]))


@tap.test("keep-alive: 5 requests on one connection")
def _():
    conn = harness.http.client.HTTPConnection("127.0.0.1", stack.http_port,
                                              timeout=10)
    try:
        first = None
        for i in range(1, 6):
            r = harness.request(stack.http_port, "GET", "/users/%d" % i,
                                conn=conn)
            check_eq(r.status, 200, "status of request %d" % i)
            check_eq(r.json().get("id"), i, "id of request %d" % i)
            check((r.header("Connection") or "").lower() != "close",
                  "server closed the connection after request %d" % i)
            if first is None:
                first = conn.sock
            check(conn.sock is first and conn.sock is not None,
                  "the client had to reconnect at request %d" % i)
    finally:
        conn.close()


@tap.test("a header line over 8 KiB is answered 431")
def _():
    raw = (b"GET /users/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
           + b"a" * 9000 + b"\r\nConnection: close\r\n\r\n")
    r = harness.http_raw(stack.http_port, raw)
    check(r is not None, "connection closed without a response")
    check(r.status == 431, r.describe())


@tap.test("more than 100 header fields are answered 431")
def _():
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(120))
    raw = (b"GET /users/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n" + fields
           + b"Connection: close\r\n\r\n")
    r = harness.http_raw(stack.http_port, raw)
    check(r is not None, "connection closed without a response")
    check(r.status == 431, r.describe())


@tap.test("the edge still serves after the limit tests")
def _():
    r = get("/users/11")
    check(r.status == 200, r.describe())


harness.sanitizer_test(tap, stack)

err = harness.bring_up(tap, stack)
tap.run(setup_error=err, pg_ready=stack.pg_ready)
tap.finish()

#!/usr/bin/env bash
# migrate-test.sh: TAP test of `ferryctl migrate` against a real PostgreSQL.
#
# Starts a throwaway cluster (initdb in a temp dir, Unix socket only, so no
# TCP port can clash), migrates the schemas/sql files into fresh databases
# and checks the ledger's promises: idempotent reruns, a changed file
# refused, a failing file rolled back, two concurrent runs serialised.
# Skips (exit 77) when the PostgreSQL server binaries are not installed.
set -uo pipefail

srcdir=${FERRY_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
builddir=${FERRY_BUILDDIR:-$srcdir}
ferryctl=$builddir/src/ctl/ferryctl
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$pgbin" ] || [ ! -x "$pgbin/initdb" ]; then
    echo "1..0 # SKIP PostgreSQL server binaries not installed"
    exit 77
fi

tmp=$(mktemp -d /tmp/ferry-migrate.XXXXXX)
runas=()
if [ "$(id -u)" = 0 ]; then
    runas=(runuser -u postgres --)
    chown postgres "$tmp"
fi
cleanup() {
    "${runas[@]}" "$pgbin/pg_ctl" -D "$tmp/data" -m immediate -w -t 30 \
        stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }
check() { # description command...
    local what=$1
    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}
echo "1..12"

if ! "${runas[@]}" "$pgbin/initdb" -D "$tmp/data" -A trust -U postgres \
        >"$tmp/initdb.log" 2>&1 ||
   ! "${runas[@]}" "$pgbin/pg_ctl" -D "$tmp/data" -l "$tmp/pg.log" -w -t 60 \
        -o "-c listen_addresses='' -k $tmp -p 5432" start >/dev/null 2>&1; then
    echo "Bail out! cannot start PostgreSQL (see $tmp)"
    cat "$tmp"/*.log >&2
    exit 1
fi
export PGHOST=$tmp PGPORT=5432 PGUSER=postgres
psql_q() { psql -X -q -tA -v ON_ERROR_STOP=1 "$@"; }
psql_q -d postgres -c 'CREATE DATABASE m1' -c 'CREATE DATABASE m2' \
    -c 'CREATE DATABASE m3'

out=$("$ferryctl" --version)
check "--version prints the version" grep -q '^ferryctl [0-9]' <<<"$out"
"$ferryctl" >/dev/null 2>&1
check "no command is a usage error (2)" test $? = 2
"$ferryctl" migrate --no-such-option >/dev/null 2>&1
check "an unknown option is a usage error (2)" test $? = 2

# Every file of schemas/sql, in order (later issues add files).
want=$(cd "$srcdir/schemas/sql" && for f in *.sql; do echo "applied ${f%.sql}"; done)
nfiles=$(printf '%s\n' "$want" | wc -l)
out=$("$ferryctl" migrate --database dbname=m1 --dir "$srcdir/schemas/sql")
rc=$?
check "first run applies every file" test $rc = 0 -a "$out" = "$want"
out=$(PGDATABASE=m1 "$ferryctl" migrate --dir "$srcdir/schemas/sql")
check "second run is up to date" test $? = 0 -a "$out" = "up to date"
tables=$(psql_q -d m1 -c "SELECT count(*) FROM pg_class WHERE oid IN (
    to_regclass('ferry.jobs'), to_regclass('ferry.idempotency_keys'),
    to_regclass('ferry.kafka_offsets'), to_regclass('ferry.dead_letters'),
    to_regclass('ferry.outbox'), to_regclass('public.users'),
    to_regclass('public.orders'), to_regclass('public.users_id_seq'))")
check "ferry and demo tables exist" test "$tables" = 8
psql_q -d m1 -c "INSERT INTO users (id, name) VALUES (nextval('users_id_seq'), 'a')" \
    -c "INSERT INTO orders (user_id, amount) VALUES (1, 9.99)" >/dev/null
psql_q -d m1 -c "INSERT INTO orders (user_id, amount) VALUES (1, 0)" \
    >/dev/null 2>&1
check "orders.amount must be positive" test $? != 0

mkdir "$tmp/sql"
cp "$srcdir"/schemas/sql/*.sql "$tmp/sql/"
chmod u+w "$tmp"/sql/*.sql
echo "-- edited" >>"$tmp/sql/0002_demo.sql"
"$ferryctl" migrate --database dbname=m1 --dir "$tmp/sql" 2>"$tmp/err"
check "a changed applied file is refused (1)" \
    test $? = 1 -a -n "$(grep 'changed after it was applied' "$tmp/err")"

cp "$srcdir/schemas/sql/0002_demo.sql" "$tmp/sql/"
printf 'CREATE TABLE t3 (x int);\nSELECT 1/0;\n' >"$tmp/sql/0099_bad.sql"
"$ferryctl" migrate --database dbname=m1 --dir "$tmp/sql" >/dev/null 2>&1
rc=$?
left=$(psql_q -d m1 -c "SELECT (to_regclass('t3') IS NULL)::int +
    (SELECT count(*) FROM ferry.migrations WHERE version = 99)")
check "a failing file is rolled back and not recorded" test $rc = 1 -a "$left" = 1
rm "$tmp/sql/0099_bad.sql"

"$ferryctl" migrate --database dbname=m2 --dir "$tmp/sql" >"$tmp/a" 2>&1 &
pid=$!
"$ferryctl" migrate --database dbname=m2 --dir "$tmp/sql" >"$tmp/b" 2>&1
rc_b=$?
wait $pid
rc_a=$?
applied=$(cat "$tmp/a" "$tmp/b" | grep -c '^applied')
check "two concurrent runs apply each file once" \
    test $rc_a = 0 -a $rc_b = 0 -a "$applied" = "$nfiles"

FERRY_SQLDIR=$tmp/sql "$ferryctl" migrate --database dbname=m3 >/dev/null
check "FERRY_SQLDIR sets the directory" \
    test $? = 0 -a "$(psql_q -d m3 -c 'SELECT count(*) FROM ferry.migrations')" = "$nfiles"
"$ferryctl" migrate --database "host=$tmp port=1" --dir "$tmp/sql" \
    >/dev/null 2>&1
check "an unreachable database is a failure (1)" test $? = 1

[ $failed = 0 ]

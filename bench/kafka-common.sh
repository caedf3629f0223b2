# shellcheck shell=bash
# bench/kafka-common.sh: the stack the Kafka benchmarks measure.  Sourced by
# bench/kafka-events and bench/kafka-http; not run on its own.
#
# kstack_up POOL...: a private PostgreSQL (initdb in a temporary directory,
# 127.0.0.1 on a free port, fsync on as in production), ferry's migrations
# and 100,000 users, one Kafka broker (tests/kafka/kafka.sh, its jars
# fetched with Maven the first time) with the demo's topics, then
# ferry-broker, one ferry-worker per POOL and ferry-edge with
# etc/ferry-kafka.yaml merged over etc/ferry.yaml.  Everything runs from
# $FERRY_BUILD (default build/, an optimised build) and is stopped by PID
# at exit, Kafka and PostgreSQL included.  Every wait has a timeout.
#
# Before kstack_up a script may define ks_configure CONFIG DB (merge its
# own YAML into CONFIG, add --set arguments to KS_EXTRA_SETS).
# After kstack_up: KS_BOOTSTRAP, KS_HTTP_PORT, KS_PSQL (array: psql to the
# database), KS_PID_<name> for broker, edge, worker_<pool>, kafka.

# shellcheck source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

FERRY_BUILD=${FERRY_BUILD:-$FERRY_ROOT/build}
KS_BIN=$FERRY_BUILD/src
KS_TMP=$(mktemp -d /tmp/ferry-kbench.XXXXXX)
chmod 755 "$KS_TMP"
KS_PIDS=() KS_NAMES=() KS_PG_PID="" KS_KAFKA=0

kstack_down() {
    local i
    trap - EXIT INT TERM
    for ((i = ${#KS_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${KS_NAMES[i]}" "${KS_PIDS[i]}" 15
    done
    [ "$KS_KAFKA" = 1 ] && ferry_kafka_stop "$KS_TMP/kafka"
    [ -n "$KS_PG_PID" ] && stop_pid postgres "$KS_PG_PID" 30
    if [ "${FERRY_BENCH_KEEP:-0}" = 1 ]; then
        say "kept $KS_TMP"
    else
        rm -rf "$KS_TMP"
    fi
}
trap 'kstack_down' EXIT
trap 'exit 1' INT TERM

# cpu_ticks PID...: user+system CPU clock ticks of the processes, summed.
cpu_ticks() {
    local pid total=0 f
    for pid in "$@"; do
        # Fields 14 and 15 of /proc/PID/stat; the name (field 2) may hold
        # spaces, so count after its closing parenthesis.
        f=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        set -- $f
        total=$((total + ${12} + ${13}))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

kstack_up() {
    local pools=("$@")
    [ -x "$KS_BIN/workers/ferry-worker" ] ||
        die "no $KS_BIN/workers/ferry-worker: build first (FERRY_BUILD=$FERRY_BUILD)"
    need_packages "${FERRY_KAFKA_PACKAGES[@]}"
    local pgbin
    pgbin=$(pg_bindir) || die "no PostgreSQL server binaries"

    # ---- PostgreSQL: a foreground postmaster, our child, stopped by PID
    local pgdir=$KS_TMP/pg runas=()
    mkdir -p "$pgdir"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$pgdir"
        runas=(runuser -u postgres --)
    fi
    (cd / && "${runas[@]}" "$pgbin/initdb" -D "$pgdir/data" -A trust \
        -U postgres -E UTF8 --locale=C >"$KS_TMP/initdb.log" 2>&1) ||
        die "initdb failed (see $KS_TMP/initdb.log)"
    local pgport
    pgport=$(free_port)
    (cd / && exec "${runas[@]}" "$pgbin/postgres" -D "$pgdir/data" \
        -p "$pgport" -k "$pgdir" -c listen_addresses=127.0.0.1 \
        -c max_connections=100 -c shared_buffers=256MB) \
        >"$KS_TMP/postgresql.log" 2>&1 </dev/null &
    KS_PG_PID=$!
    KS_PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pgport"
        -U postgres)
    wait_until 60 "${KS_PSQL[@]}" -d postgres -c 'SELECT 1' >/dev/null 2>&1 ||
        die "PostgreSQL did not start (see $KS_TMP/postgresql.log)"
    "${KS_PSQL[@]}" -d postgres -c 'CREATE DATABASE ferry' >/dev/null
    KS_PSQL+=(-d ferry)
    local db="postgresql://postgres@127.0.0.1:$pgport/ferry"
    "$KS_BIN/ctl/ferryctl" migrate --database "$db" \
        --dir "$FERRY_ROOT/schemas/sql" >/dev/null || die "ferryctl migrate failed"
    "${KS_PSQL[@]}" >/dev/null <<'EOF' || die "cannot load the users"
INSERT INTO users (id, name, email)
SELECT g, 'User ' || g, 'user' || g || '@example.com'
FROM generate_series(1, 100000) AS g;
SELECT setval('users_id_seq', 100000);
VACUUM ANALYZE users;
EOF

    # ---- Kafka
    say "starting Kafka"
    KS_KAFKA=1
    KS_BOOTSTRAP=$(ferry_kafka_start "$KS_TMP/kafka") && [ -n "$KS_BOOTSTRAP" ] ||
        die "Kafka did not start (see $KS_TMP/kafka/kafka.log)"
    KS_PID_kafka=$(cat "$KS_TMP/kafka/kafka.pid")
    ferry_kafka_topics "$KS_TMP/kafka" 4 ferry.app.requests \
        ferry.events.requests ferry.demo.events ||
        die "cannot create the topics"
    ferry_kafka_topics "$KS_TMP/kafka" 1 ferry.app.requests.dlq \
        ferry.events.requests.dlq ferry.demo.events.dlq ||
        die "cannot create the dead-letter topics"

    # ---- ferry
    local config=$KS_TMP/ferry-kafka.yaml
    ferry_kafka_config "$FERRY_ROOT/etc/ferry.yaml" \
        "$FERRY_ROOT/etc/ferry-kafka.yaml" "$config" || die "config merge failed"
    # A benchmark may adapt the stack: ks_configure CONFIG DB (when it
    # defines one) may merge more YAML into CONFIG and fill KS_EXTRA_SETS.
    if declare -F ks_configure >/dev/null; then
        ks_configure "$config" "$db" || die "ks_configure failed"
    fi
    local front back
    front=$(free_port)
    back=$(free_port)
    while [ "$back" = "$front" ]; do back=$(free_port); done
    KS_HTTP_PORT=${HTTP_PORT:-$(free_port)}
    local sets=(--config "$config"
        --set "broker.frontend=tcp://127.0.0.1:$front"
        --set "broker.backend=tcp://127.0.0.1:$back"
        --set "broker.control=tcp://127.0.0.1:$(free_port)"
        --set "edge.broker=tcp://127.0.0.1:$front"
        --set "edge.listen=127.0.0.1:$KS_HTTP_PORT"
        --set "worker.database=$db"
        --set "log.level=warn")
    mapfile -t -O ${#sets[@]} sets < <(ferry_kafka_sets "$KS_BOOTSTRAP" app events)
    sets+=(${KS_EXTRA_SETS[@]+"${KS_EXTRA_SETS[@]}"})
    ks_start broker "$KS_BIN/broker/ferry-broker" "${sets[@]}"
    KS_PID_broker=$!
    local p
    for p in "${pools[@]}"; do
        ks_start "worker-$p" "$KS_BIN/workers/ferry-worker" "${sets[@]}" \
            --set "worker.pool=$p"
        printf -v "KS_PID_worker_$p" '%s' "$!"
    done
    ks_start edge "$KS_BIN/http_edge/ferry-edge" "${sets[@]}"
    KS_PID_edge=$!
}

# ks_start NAME COMMAND...: one daemon in the background, log in KS_TMP.
ks_start() {
    local name=$1
    shift
    setsid "$@" >"$KS_TMP/$name.log" 2>&1 </dev/null &
    KS_PIDS+=($!)
    KS_NAMES+=("$name")
}

# ks_alive: every daemon still runs (else says which one died).
ks_alive() {
    local i
    for i in "${!KS_PIDS[@]}"; do
        kill -0 "${KS_PIDS[i]}" 2>/dev/null && continue
        say "${KS_NAMES[i]} exited:"
        tail -n 20 "$KS_TMP/${KS_NAMES[i]}.log" >&2
        return 1
    done
}

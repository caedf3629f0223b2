# shellcheck shell=bash
# scripts/lib.sh: helpers shared by scripts/demo and scripts/test.
# Source it; do not execute it.  Everything here is plain bash and the base
# Debian 12 tools; every wait has a timeout and processes are stopped by PID.

FERRY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# What a fresh Debian 12 needs to build ferry, run its tests and the demo.
# The Java runtime, Maven and kcat run the real Kafka broker of the Kafka
# tests (tests/kafka/kafka.sh) and produce to it from outside ferry.
# clang and libclang-rt-14-dev (libclang_rt.fuzzer) build the libFuzzer
# targets of tests/fuzz/.
FERRY_PACKAGES=(build-essential autoconf automake libtool pkg-config
    autoconf-archive libzmq3-dev libczmq-dev libpq-dev libmsgpack-dev
    libmicrohttpd-dev librdkafka-dev libjansson-dev libyaml-dev
    libsystemd-dev postgresql postgresql-contrib curl python3
    python3-msgpack python3-zmq openjdk-17-jre-headless maven kcat
    clang libclang-rt-14-dev)

say() { printf '[ferry] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# need_packages pkg...: installs the Debian packages that are missing,
# running apt-get update once and only when something is missing.
need_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
            grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null ||
        die "missing packages ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null ||
        die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" </dev/null >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

# ferry_configure BUILDDIR ARGS...: makes sure BUILDDIR is configured with
# exactly ARGS, generating ./configure first on a fresh clone.  An existing
# build directory configured with other arguments is configured again.
# Returns 1 (after saying why) when autogen.sh or configure fails.
ferry_configure() {
    local dir=$1
    shift
    if [ ! -x "$FERRY_ROOT/configure" ] || [ ! -f "$FERRY_ROOT/build-aux/install-sh" ]; then
        say "generating ./configure (autogen.sh)"
        (cd "$FERRY_ROOT" && ./autogen.sh) || { say "autogen.sh failed"; return 1; }
    fi
    mkdir -p "$dir"
    local want have=""
    want=$([ $# -eq 0 ] || printf "'%s' " "$@")
    if [ -f "$dir/Makefile" ] && [ -x "$dir/config.status" ]; then
        have=$(cd "$dir" && ./config.status --config)
        # config.status quotes only arguments that need it.
        [ "$have" = "${want% }" ] || [ "$have" = "$*" ] && return 0
        say "reconfiguring $dir (was: $have)"
    fi
    say "configuring $dir: $*"
    (cd "$dir" && "$FERRY_ROOT/configure" "$@" >configure.out 2>&1) || {
        tail -n 30 "$dir/configure.out" >&2
        say "configure failed in $dir (see $dir/config.log)"
        return 1
    }
}

# port_in_use PORT: true when something accepts TCP connections on it.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: prints a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# pick_port PREFERRED: PREFERRED if it is free, else some free port.
pick_port() {
    if port_in_use "$1"; then free_port; else echo "$1"; fi
}

pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] && [ -x "$d/initdb" ] || return 1
    echo "$d"
}

# wait_until TIMEOUT_S COMMAND...: runs COMMAND every 0.1 s until it
# succeeds (0) or TIMEOUT_S seconds have passed (1).
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    while ! "$@"; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.1
    done
}

# stop_pid NAME PID [TIMEOUT_S]: SIGTERM, wait, then SIGKILL if needed.
stop_pid() {
    local name=$1 pid=$2 t=${3:-15}
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until "$t" eval "! kill -0 $pid 2>/dev/null"; then
        say "$name (pid $pid) ignored SIGTERM for ${t}s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# ---- Kafka (scripts/demo --kafka, bench/kafka-*) --------------------------------

# What the Kafka parts need beyond FERRY_PACKAGES' build and test tools:
# the broker's runtime, Maven to fetch its jars, kcat to produce from
# outside ferry, and PyYAML to merge etc/ferry-kafka.yaml over ferry.yaml.
FERRY_KAFKA_PACKAGES=(openjdk-17-jre-headless maven kcat python3-yaml)
FERRY_KAFKA_SH=$FERRY_ROOT/tests/kafka/kafka.sh

# ferry_kafka_config BASE OVERLAY OUT: writes OUT, BASE with OVERLAY merged
# over it: maps key by key, edge.routes appended, anything else replaced.
ferry_kafka_config() {
    python3 - "$1" "$2" "$3" <<'PY'
import sys, yaml
base, overlay, out = sys.argv[1:4]

def merge(a, b, path):
    if isinstance(a, dict) and isinstance(b, dict):
        for k, v in b.items():
            a[k] = merge(a[k], v, path + (k,)) if k in a else v
        return a
    if path == ("edge", "routes") and isinstance(a, list) \
            and isinstance(b, list):
        return a + b
    return b

with open(base) as f:
    cfg = yaml.safe_load(f)
with open(overlay) as f:
    cfg = merge(cfg, yaml.safe_load(f), ())
with open(out, "w") as f:
    f.write("# Generated from %s and %s; edit those.\n" % (base, overlay))
    yaml.safe_dump(cfg, f, sort_keys=False, default_flow_style=False)
PY
}

# ferry_kafka_start DIR: fetches the Kafka jars (first time: Maven Central)
# and starts one KRaft broker under DIR; prints its bootstrap address.
# kafka.sh waits (with its own timeouts) until the broker answers.
ferry_kafka_start() {
    local dir=$1
    bash "$FERRY_KAFKA_SH" fetch ||
        { say "cannot fetch the Kafka jars (see ~/.cache/ferry)"; return 1; }
    bash "$FERRY_KAFKA_SH" start "$dir" | tail -n 1
}

# ferry_kafka_topics DIR PARTITIONS TOPIC...: creates each topic (they must
# not exist yet: the broker in DIR was just formatted).
ferry_kafka_topics() {
    local dir=$1 parts=$2 t
    shift 2
    for t in "$@"; do
        bash "$FERRY_KAFKA_SH" topic "$dir" "$t" "$parts" ||
            { say "cannot create topic $t"; return 1; }
    done
}

# ferry_kafka_stop DIR: stops the broker of DIR by its PID (kafka.sh stop:
# SIGTERM, then SIGKILL after its timeout).
ferry_kafka_stop() { bash "$FERRY_KAFKA_SH" stop "$1" || true; }

# ferry_kafka_sets BOOTSTRAP POOL...: the --set arguments pointing the
# edge and each POOL's consumer at BOOTSTRAP.
ferry_kafka_sets() {
    local bs=$1 p
    shift
    printf '%s\n' --set "edge.kafka.properties=[\"bootstrap.servers=$bs\"]"
    for p in "$@"; do
        printf '%s\n' --set "pools.$p.kafka.properties=[\"bootstrap.servers=$bs\"]"
    done
}

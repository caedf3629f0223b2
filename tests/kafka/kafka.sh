#!/bin/bash
# kafka.sh: one real Apache Kafka broker for ferry's tests.
#
# The Kafka tests need a real broker (librdkafka's mock cluster covers the
# unit level only), and this machine reaches Maven Central, so the broker
# is the released Kafka jars fetched with Maven and run with a Debian Java
# runtime: no tarball, no system service, nothing outside a cache
# directory and the test's own temporary directory.
#
#   kafka.sh fetch            resolve the jars into the cache (once; later
#                             calls only check the cache's completion mark,
#                             which names the version and pom.xml's hash)
#   kafka.sh start DIR [K=V]  format KRaft storage under DIR, start one
#                             combined broker+controller on 127.0.0.1 with
#                             free ports, wait until it answers metadata,
#                             print the bootstrap address; writes
#                             DIR/kafka.pid, DIR/bootstrap, DIR/kafka.log.
#                             K=V pairs are extra server.properties lines.
#   kafka.sh wait DIR [SECS]  wait until the broker in DIR answers a
#                             metadata request (kcat -L) naming itself
#   kafka.sh topic DIR NAME [PARTITIONS]
#                             create a topic and wait until every
#                             partition has a leader
#   kafka.sh stop DIR         SIGTERM the broker by its PID, SIGKILL it
#                             when it has not exited in time
#   kafka.sh libs             print the classpath directory (after fetch)
#
# Environment: FERRY_KAFKA_VERSION (default 3.9.1), FERRY_KAFKA_CACHE
# (default ~/.cache/ferry/kafka-VERSION; jars in its libs/), FERRY_KAFKA_M2
# (Maven's local repository, default ~/.cache/ferry/m2), FERRY_KAFKA_TIMEOUT
# (seconds for start and stop, default 60), JAVA, MVN, KCAT (programs).
#
# Exit status: 0 on success; 2 when fetch fails and Maven Central cannot be
# reached (the caller reports SKIP with the message printed on stderr);
# 1 on any other failure.  Nothing waits without a deadline.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VERSION=${FERRY_KAFKA_VERSION:-3.9.1}
CACHE_ROOT=${XDG_CACHE_HOME:-$HOME/.cache}/ferry
CACHE=${FERRY_KAFKA_CACHE:-$CACHE_ROOT/kafka-$VERSION}
LIBS=$CACHE/libs
M2=${FERRY_KAFKA_M2:-$CACHE_ROOT/m2}
TIMEOUT=${FERRY_KAFKA_TIMEOUT:-60}
JAVA=${JAVA:-java}
MVN=${MVN:-mvn}
KCAT=${KCAT:-kcat}
CENTRAL=https://repo.maven.apache.org/maven2/
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.6.1

say() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

need() {
    command -v "$1" >/dev/null 2>&1 ||
        die "$1 not found (Debian: apt-get install $2)"
}

# A TCP port nobody listens on right now.  The broker binds it a moment
# later; start retries with new ports if someone else got there first.
free_port() {
    python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Reachability of Maven Central, to tell "offline" (skip) from "broken"
# (fail) when a fetch fails: any HTTP answer for the broker's metadata
# counts, a DNS, connect or TLS failure or a timeout does not.
central_reachable() {
    local url=${CENTRAL}org/apache/kafka/kafka_2.13/maven-metadata.xml
    if command -v curl >/dev/null 2>&1; then
        curl -sS -o /dev/null --max-time 15 "$url" 2>/dev/null
    else
        python3 -c 'import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=15)
except urllib.error.HTTPError:
    pass' "$url" 2>/dev/null
    fi
}

# ---- fetch -----------------------------------------------------------------

# What the completion mark of a cache made from this pom.xml says.
fetch_mark() {
    printf '%s %s\n' "$VERSION" "$(sha256sum <"$HERE/pom.xml" | cut -c1-64)"
}

fetched() {
    [ "$(cat "$LIBS/.complete" 2>/dev/null)" = "$(fetch_mark)" ]
}

cmd_fetch() {
    fetched && return 0
    need "$MVN" maven
    need "$JAVA" openjdk-17-jre-headless
    mkdir -p "$CACHE" "$M2"
    # One fetch at a time per cache: parallel tests share it.
    exec 9>"$CACHE/.lock"
    flock -w 600 9 || die "timed out waiting for $CACHE/.lock"
    fetched && return 0
    # Maven runs in the cache, never in the (possibly read-only) source
    # tree, and fills a fresh directory that replaces libs only when
    # complete, so an interrupted fetch leaves no half cache behind.
    cp "$HERE/pom.xml" "$CACHE/pom.xml"
    rm -rf "$LIBS.tmp"
    local log=$CACHE/fetch.log
    say "fetching Apache Kafka $VERSION jars from Maven Central into $LIBS"
    if ! (cd "$CACHE" && timeout 900 "$MVN" -B -q -f pom.xml \
            -Dmaven.repo.local="$M2" -Dkafka.version="$VERSION" \
            "$DEPENDENCY_PLUGIN:copy-dependencies" -DincludeScope=runtime \
            -DoutputDirectory="$LIBS.tmp") >"$log" 2>&1; then
        rm -rf "$LIBS.tmp"
        if ! central_reachable; then
            say "Maven Central ($CENTRAL) cannot be reached; see $log"
            exit 2
        fi
        sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -v '^$' | tail -n 20 >&2 ||
            true
        die "mvn failed although Maven Central is reachable; see $log"
    fi
    [ -f "$LIBS.tmp/kafka_2.13-$VERSION.jar" ] ||
        die "mvn succeeded but kafka_2.13-$VERSION.jar is missing"
    rm -rf "$LIBS"
    mv "$LIBS.tmp" "$LIBS"
    fetch_mark >"$LIBS/.complete"
}

need_libs() {
    fetched || die "no jars for Kafka $VERSION in $LIBS: run '$0 fetch' first"
}

# ---- start / wait / stop ---------------------------------------------------

# A Kafka cluster id: 16 random bytes in URL-safe base64 without padding
# (what StorageTool random-uuid prints), without another JVM start.  Like
# Kafka's Uuid.randomUuid, never one that starts with "-": the command line
# parser would take it for an option.
cluster_id() {
    local id=-
    while [ "${id#-}" != "$id" ]; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    done
    printf '%s' "$id"
}

pid_alive() {
    local pid
    pid=$(cat "$1/kafka.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

write_config() {
    local dir=$1 port=$2 cport=$3
    shift 3
    cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
EOF
    local kv
    for kv in "$@"; do
        case $kv in
            *=*) printf '%s\n' "$kv" >>"$dir/server.properties" ;;
            *) die "not a key=value server property: $kv" ;;
        esac
    done
    # Log to stdout, which start sends to DIR/kafka.log.
    cat >"$dir/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
EOF
}

# The JVM options of every Kafka program we run: a modest heap, the
# fetched jars, and our log4j configuration.
java_opts() {
    JAVA_OPTS=(-Xmx512m -Xms128m -XX:+UseG1GC -Djava.awt.headless=true
        "-Dlog4j.configuration=file:$1/log4j.properties" -cp "$LIBS/*")
}

# ready DIR: one metadata request; true when the broker names itself.
ready() {
    local out
    out=$(timeout 10 "$KCAT" -L -b "$(cat "$1/bootstrap")" -m 3 2>/dev/null) ||
        return 1
    grep -q 'broker 1 at ' <<<"$out"
}

cmd_wait() {
    local dir=${1:?usage: wait DIR [SECS]} secs=${2:-$TIMEOUT}
    need "$KCAT" kcat
    [ -f "$dir/bootstrap" ] && [ -f "$dir/kafka.pid" ] ||
        die "no broker started in $dir"
    local deadline=$((SECONDS + secs))
    until ready "$dir"; do
        if ! pid_alive "$dir"; then
            tail -n 30 "$dir/kafka.log" >&2 2>/dev/null || true
            die "broker in $dir exited before it answered"
        fi
        [ $SECONDS -lt $deadline ] ||
            die "broker in $dir did not answer within ${secs}s"
        sleep 0.2
    done
}

# launch DIR K=V...: format and start one broker; status 3 when a port was
# taken in the meantime (the caller retries with new ports).
launch() {
    local dir=$1
    shift
    local port cport id
    port=$(free_port) && cport=$(free_port) || die "no free port"
    [ "$port" != "$cport" ] || return 3
    id=$(cluster_id) && [ ${#id} -eq 22 ] || die "no cluster id"
    rm -rf "$dir/data" || die "cannot clear $dir/data"
    write_config "$dir" "$port" "$cport" "$@" || die "cannot write config"
    echo "127.0.0.1:$port" >"$dir/bootstrap" || die "cannot write $dir"
    java_opts "$dir"
    timeout 120 "$JAVA" "${JAVA_OPTS[@]}" kafka.tools.StorageTool format \
        -t "$id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 || {
        cat "$dir/format.log" >&2
        die "formatting KRaft storage in $dir failed"
    }
    # Own session and no inherited descriptors: the broker must not hold
    # the test's stdout open (a TAP driver would wait for EOF) nor get the
    # terminal's signals.  setsid execs java in place (a background job is
    # no group leader), so $! is the broker's PID.
    setsid "$JAVA" "${JAVA_OPTS[@]}" kafka.Kafka "$dir/server.properties" \
        </dev/null >"$dir/kafka.log" 2>&1 &
    echo $! >"$dir/kafka.pid" || die "cannot write $dir/kafka.pid"
    local deadline=$((SECONDS + TIMEOUT))
    until ready "$dir"; do
        if ! pid_alive "$dir"; then
            if grep -q 'Address already in use' "$dir/kafka.log"; then
                rm -f "$dir/kafka.pid"
                return 3
            fi
            tail -n 30 "$dir/kafka.log" >&2
            die "broker exited at start; log in $dir/kafka.log"
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 30 "$dir/kafka.log" >&2
            cmd_stop "$dir"
            die "broker did not answer within ${TIMEOUT}s"
        fi
        sleep 0.2
    done
}

cmd_start() {
    local dir=${1:?usage: start DIR [KEY=VALUE...]}
    shift
    need_libs
    need "$JAVA" openjdk-17-jre-headless
    need "$KCAT" kcat
    need python3 python3
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if pid_alive "$dir"; then
        die "a broker already runs in $dir (pid $(cat "$dir/kafka.pid"))"
    fi
    local try rc
    for try in 1 2 3; do
        rc=0
        launch "$dir" "$@" || rc=$?
        [ $rc -eq 3 ] || break
        say "a port was taken, retrying with new ports ($try)"
    done
    [ $rc -eq 0 ] || die "could not start a broker in $dir"
    cat "$dir/bootstrap"
}

cmd_topic() {
    local dir=${1:?usage: topic DIR NAME [PARTITIONS]} name=${2:?topic name}
    local parts=${3:-1}
    need_libs
    [ -f "$dir/bootstrap" ] || die "$dir/bootstrap missing: no broker started"
    local bs
    bs=$(cat "$dir/bootstrap")
    java_opts "$dir"
    # A short-lived client: the C1 compiler alone starts it faster.
    timeout 120 "$JAVA" "${JAVA_OPTS[@]}" -XX:TieredStopAtLevel=1 \
        org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$bs" --create --topic "$name" \
        --partitions "$parts" --replication-factor 1 >"$dir/topic.log" 2>&1 || {
        cat "$dir/topic.log" >&2
        die "creating topic $name failed"
    }
    # The controller has committed the topic; wait until the broker serves
    # a leader for every partition so that producers see it at once.
    local deadline=$((SECONDS + 30)) out n
    while :; do
        out=$(timeout 10 "$KCAT" -L -b "$bs" -t "$name" -m 3 2>/dev/null) || out=
        n=$(grep -c 'partition [0-9]*, leader 1,' <<<"$out" || true)
        [ "$n" -ge "$parts" ] && break
        [ $SECONDS -lt $deadline ] ||
            die "topic $name has no leader for all $parts partitions"
        sleep 0.1
    done
}

cmd_stop() {
    local dir=${1:?usage: stop DIR}
    local pid
    pid=$(cat "$dir/kafka.pid" 2>/dev/null) || return 0
    [ -n "$pid" ] || { rm -f "$dir/kafka.pid"; return 0; }
    # Only a java process is ours to stop: the PID file may be stale.
    if kill -0 "$pid" 2>/dev/null &&
        grep -q 'kafka\.Kafka' "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + TIMEOUT))
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "broker $pid ignored SIGTERM for ${TIMEOUT}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 10))
            while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
                sleep 0.1
            done
        fi
    fi
    rm -f "$dir/kafka.pid"
}

case ${1:-} in
    fetch) cmd_fetch ;;
    start) shift; cmd_start "$@" ;;
    wait) shift; cmd_wait "$@" ;;
    topic) shift; cmd_topic "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    libs) need_libs; echo "$LIBS" ;;
    *) sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2; exit 1 ;;
esac

#!/bin/sh
# run.sh SECONDS SRCDIR TARGET...: runs each libFuzzer target (`make fuzz`).
#
# For a target tests/fuzz/fuzz_NAME it first runs every input kept in
# SRCDIR/regressions/NAME/ once (each was a crash once: it must not be
# again), then fuzzes for SECONDS from the seeds in SRCDIR/corpus/NAME/
# (read-only) plus what earlier runs found in tests/fuzz/out/NAME/corpus/
# of the build directory, with SRCDIR/NAME.dict when it exists.  A crash,
# leak, sanitizer report or timeout is saved under tests/fuzz/out/NAME/ and
# fails the target.  Prints one "PASS: target ..." or "FAIL: target ..."
# line per target with its figures, and exits 1 when one failed.
set -u
seconds=$1 src=$2
shift 2
passed=0 failed=0
for bin in "$@"; do
    target=$(basename "$bin")
    name=${target#fuzz_}
    out=tests/fuzz/out/$name
    mkdir -p "$out/corpus" "$out/artifacts"
    ok=1 why=
    # Regressions: each kept input run once, all in one process.
    set --
    for f in "$src/regressions/$name"/*; do
        [ -f "$f" ] && [ "$(basename "$f")" != README ] && set -- "$@" "$f"
    done
    nreg=$#
    if [ "$nreg" -gt 0 ] &&
        ! "./$bin" -timeout=10 "$@" >"$out/regressions.log" 2>&1; then
        ok=0 why="a kept regression input fails (see $out/regressions.log)"
        tail -n 40 "$out/regressions.log" >&2
    fi
    dict=
    [ -f "$src/$name.dict" ] && dict="-dict=$src/$name.dict"
    if [ "$ok" = 1 ]; then
        # shellcheck disable=SC2086
        if ! "./$bin" -max_total_time="$seconds" -timeout=10 \
            -rss_limit_mb=2048 -print_final_stats=1 \
            -artifact_prefix="$out/artifacts/" $dict \
            "$out/corpus" "$src/corpus/$name" >"$out/fuzz.log" 2>&1; then
            ok=0
            why="crash or report (see $out/fuzz.log; input in $out/artifacts/; keep it in $src/regressions/$name/ once fixed)"
            grep -v '^#' "$out/fuzz.log" | tail -n 60 >&2
        fi
    fi
    execs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/fuzz.log" 2>/dev/null | tail -n 1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/fuzz.log" 2>/dev/null | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$out/fuzz.log" 2>/dev/null | tail -n 1)
    corp=$(grep -o 'corp: [0-9]*' "$out/fuzz.log" 2>/dev/null | tail -n 1)
    figures="${seconds} s, ${runs:-0} runs, ${execs:-0} exec/s, ${cov:-cov: ?}, ${corp:-corp: ?}, $nreg regression input(s)"
    if [ "$ok" = 1 ]; then
        echo "PASS: $target: $figures"
        passed=$((passed + 1))
    else
        echo "FAIL: $target: $why; $figures"
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

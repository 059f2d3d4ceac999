#!/usr/bin/env bash
# fuzz.sh — build the libFuzzer targets (tests/fuzz/fuzz_*.c) with clang under
# ASan+UBSan into build-fuzz/, then run them.
#
#   scripts/fuzz.sh [TARGET...]             each target for FUZZ_SECONDS (default 60), or
#                                           until FUZZ_RUNS executions when that is set
#                                           (the long run: FUZZ_SECONDS=1800 FUZZ_RUNS=10000000)
#   scripts/fuzz.sh --seeds-only [TARGET...] each target once over its committed
#                                           corpus tests/fuzz/corpus/TARGET/ (seconds; make test)
#   scripts/fuzz.sh --build-only
#
# The engine, kernel and server sources a target needs are compiled here with
# clang (objects in build-fuzz/obj/, rebuilt when a source or one of its headers
# changes), not through the Makefile: the Makefile's objects are gcc's and carry
# no fuzzer instrumentation.  New inputs a run finds go to build-fuzz/corpus/TARGET/
# (never into the committed seeds); crashes to build-fuzz/crashes/TARGET/.
# Targets that need the default model read PPD_TEST_MODEL (default
# models/SmolLM2-135M-Instruct.Q4_1.gguf).
#
# Not here: minimising crashes or corpora (use the binaries' -minimize_crash=1 /
# -merge=1 by hand), and any coverage report.
set -euo pipefail
cd "$(dirname "$0")/.."

CLANG=${CLANG:-clang}
OUT=build-fuzz
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_RUNS=${FUZZ_RUNS:--1}   # libFuzzer's -runs: -1 = no bound
JOBS=${FUZZ_JOBS:-2}
export PPD_TEST_MODEL=${PPD_TEST_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}

mode=run
case "${1:-}" in
    --seeds-only) mode=seeds; shift ;;
    --build-only) mode=build; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
esac

ALL_TARGETS=""
for f in tests/fuzz/fuzz_*.c; do f=${f##*/}; ALL_TARGETS="$ALL_TARGETS ${f%.c}"; done
TARGETS=${*:-$ALL_TARGETS}

# Largest input per target: enough for every structure the parser knows, small
# enough to keep executions fast.
max_len() {
    case "$1" in
        fuzz_gguf|fuzz_adapter) echo 8192 ;;
        fuzz_request) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

if ! command -v "$CLANG" >/dev/null 2>&1; then
    # CI must run every test: a missing tool fails the run there, by name
    if [ "${CI:-}" = true ]; then
        echo "fuzz.sh: $CLANG not found (scripts/install-deps.sh installs it); CI=true runs every test" >&2
        exit 1
    fi
    echo "fuzz.sh: SKIPPED: $CLANG not found (apt-get install clang)" >&2
    exit 0
fi

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
PKG_CFLAGS=$(pkg-config --cflags libpcre2-8 jansson libuv libmicrohttpd)
PKG_LIBS=$(pkg-config --libs libpcre2-8 jansson)
CFLAGS="-std=c11 -O1 -g -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE -pthread -ffp-contract=off \
 -fno-math-errno -I. $PKG_CFLAGS $SAN"

# Library sources: what the Makefile puts in libppd.a on a CUDA-less build,
# plus server/api.c (the request parser; its other server dependencies are headers)
# and server/config.c with the flag parser and shared settings it uses
# (server/flags.c, server/settings.c).
LIB_SRC=""
for f in common/*.c engine/*.c engine/*/*.c kernels/cpu/*.c server/api.c server/config.c server/flags.c server/settings.c; do
    [ "$f" = engine/model/backend_cuda.c ] || LIB_SRC="$LIB_SRC $f"
done

# stale OBJ SRC: true when OBJ is missing or older than SRC or a header it used.
stale() {
    local obj=$1 src=$2 dep=${1%.o}.d f
    [ -f "$obj" ] && [ -f "$dep" ] || return 0
    [ "$src" -nt "$obj" ] && return 0
    # shellcheck disable=SC2013  # make-style dependency words, one path each
    for f in $(sed -e 's/\\$//' -e 's/^[^:]*://' "$dep"); do
        case "$f" in *:) continue ;; esac
        [ -e "$f" ] || return 0
        [ "$f" -nt "$obj" ] && return 0
    done
    return 1
}

# Sources compiled with gcc and left uninstrumented instead: the SIMD matmul
# kernels, whose many inlined tile variants take clang minutes each under
# ASan at -O1 (make asan leaves them uninstrumented too; test_matmul holds
# them to the instrumented plain C reference, bit for bit).  They ask
# cpu_isa.c, which clang builds, for their path.
GCC_SRC=" kernels/cpu/matmul_avx2.c kernels/cpu/matmul_avx512.c kernels/cpu/matmul_k_avx2.c kernels/cpu/matmul_k_avx512.c "

compile() {   # compile SRC OBJ EXTRA_FLAGS
    mkdir -p "$(dirname "$2")"
    case "$GCC_SRC" in
        *" $1 "*)
            # shellcheck disable=SC2086
            ${GCC:-gcc} -std=c11 -O2 -g -D_GNU_SOURCE -pthread -ffp-contract=off -fno-math-errno -I. \
                -MMD -MP -c "$1" -o "$2"
            return ;;
    esac
    # shellcheck disable=SC2086
    "$CLANG" $CFLAGS $3 -MMD -MP -c "$1" -o "$2"
}

build() {
    mkdir -p "$OUT/obj"
    local todo=() src obj
    for src in $LIB_SRC; do
        obj=$OUT/obj/${src%.c}.o
        if stale "$obj" "$src"; then todo+=("$src"); fi
    done
    if [ ${#todo[@]} -gt 0 ]; then
        echo "fuzz.sh: compiling ${#todo[@]} library sources with $CLANG"
        export -f compile
        export CLANG CFLAGS OUT GCC_SRC
        # shellcheck disable=SC2016  # $1 is the inner shell's
        printf '%s\n' "${todo[@]}" |
            xargs -P "$JOBS" -I{} bash -c 'compile "$1" "$OUT/obj/${1%.c}.o" -fsanitize=fuzzer-no-link' _ {}
        rm -f "$OUT/libppd-fuzz.a"
    fi
    if [ ! -f "$OUT/libppd-fuzz.a" ]; then
        local objs=()
        for src in $LIB_SRC; do objs+=("$OUT/obj/${src%.c}.o"); done
        ar rcs "$OUT/libppd-fuzz.a" "${objs[@]}"
    fi
    local t
    for t in $TARGETS; do
        src=tests/fuzz/$t.c
        obj=$OUT/obj/tests/fuzz/$t.o
        [ -f "$src" ] || { echo "fuzz.sh: no target $t ($src)" >&2; exit 2; }
        if stale "$obj" "$src" || [ ! -x "$OUT/$t" ] || [ "$OUT/libppd-fuzz.a" -nt "$OUT/$t" ]; then
            compile "$src" "$obj" "-Werror -fsanitize=fuzzer-no-link"
            # shellcheck disable=SC2086
            "$CLANG" -fsanitize=fuzzer $SAN -o "$OUT/$t" "$obj" "$OUT/libppd-fuzz.a" $PKG_LIBS -lm -pthread
        fi
    done
}

build
[ "$mode" = build ] && exit 0

# The sanitizers stop at the first report, with a non-zero exit status.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

fail=0
if [ "$mode" = seeds ]; then
    for t in $TARGETS; do
        seeds=("tests/fuzz/corpus/$t"/*)
        if [ ! -e "${seeds[0]}" ]; then echo "fuzz.sh: $t: no seeds in tests/fuzz/corpus/$t" >&2; fail=1; continue; fi
        log=$OUT/$t.seeds.log
        if "./$OUT/$t" "${seeds[@]}" >"$log" 2>&1; then
            echo "fuzz $t: ${#seeds[@]} seeds ok"
        else
            echo "fuzz $t: FAILED on its seeds (log: $log)"; tail -n 30 "$log"; fail=1
        fi
    done
    exit $fail
fi

printf '%-16s %8s %12s %9s %7s %7s %8s\n' target seconds executions exec/s cov ft crashes
for t in $TARGETS; do
    work=$OUT/corpus/$t
    crashes=$OUT/crashes/$t
    mkdir -p "$work" "$crashes"
    log=$OUT/$t.log
    touch "$OUT/$t.start"   # crashes of earlier runs stay, but are not counted
    set +e
    t0=$(date +%s)
    "./$OUT/$t" -max_total_time="$FUZZ_SECONDS" -runs="$FUZZ_RUNS" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$crashes/" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    secs=$(( $(date +%s) - t0 ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    n_crash=$(find "$crashes" -type f -newer "$OUT/$t.start" | wc -l)
    printf '%-16s %8s %12s %9s %7s %7s %8s\n' "$t" "$secs" "${execs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "$n_crash"
    if [ $rc -ne 0 ] || [ "$n_crash" -ne 0 ]; then
        echo "  $t: exit status $rc; log $log; inputs in $crashes/"
        grep -m 3 -E 'ERROR|runtime error|SUMMARY' "$log" | sed 's/^/  /' || true
        fail=1
    fi
done
exit $fail

#!/usr/bin/env bash
# check-deep.sh BIN MODEL — `make check-deep`: ppd under valgrind memcheck.
#
# Runs, each under memcheck with full leak checking (any error, or a definitely or
# indirectly lost block, fails):
#   1. `ppd generate` greedy, plain decoding, 1 thread;
#   2. `ppd generate` with PPD (the adapter committed next to the model, when there
#      is one) and seeded sampling, 2 threads;
#   3. `ppd serve`: one chat request and one streamed completion, then SIGTERM.
# Cases 1 and 2 must also print the very tokens the same command prints natively.
#
# BIN should be built without CUDA (the Makefile uses build-deep/, CUDA=0): the CUDA
# runtime's dlopen path trips memcheck inside glibc's loader, which is not ours.
# --vex-guest-max-insns=16: the AVX2 matmul tiles are long straight-line blocks that
# exhaust valgrind's translation storage at its default superblock size.
set -euo pipefail
BIN=${1:?usage: check-deep.sh BIN MODEL}
MODEL=${2:?usage: check-deep.sh BIN MODEL}
command -v valgrind >/dev/null || { echo "check-deep: valgrind not found (apt-get install valgrind)" >&2; exit 2; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
VG=(valgrind --vex-guest-max-insns=16 --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect --track-origins=yes)
ADAPTER=$(echo "$MODEL" | sed -E 's/(\.Q[A-Za-z0-9_]+)?\.gguf$/.ppd.gguf/')
fail=0

tokens() { python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"])'; }

run_generate() {   # NAME ARGS...
    local name=$1; shift
    local t0=$SECONDS
    if "${VG[@]}" --log-file="$TMP/$name.vg" "$BIN" generate -m "$MODEL" "$@" --json >"$TMP/$name.json" 2>"$TMP/$name.err"; then
        local native
        native=$("$BIN" generate -m "$MODEL" "$@" --json 2>/dev/null | tokens)
        if [ "$(tokens <"$TMP/$name.json")" = "$native" ]; then
            echo "check-deep $name: memcheck clean ($(grep -o 'total heap usage.*' "$TMP/$name.vg")), tokens as native, $((SECONDS - t0)) s"
            return
        fi
        echo "check-deep $name: tokens differ from the native run"
    else
        echo "check-deep $name: FAILED under memcheck"
    fi
    grep -v '^==[0-9]*== *$' "$TMP/$name.vg" | tail -n 60
    tail -n 5 "$TMP/$name.err"
    fail=1
}

run_generate plain -t 1 --chat -p "Name a colour." -n 8 --no-ppd
if [ -f "$ADAPTER" ]; then
    run_generate ppd-sampled -t 2 --chat -p "Name a colour." -n 8 --ppd "$ADAPTER" --temp 0.7 --seed 3
else
    echo "check-deep: no adapter at $ADAPTER; the PPD case runs with a text-initialised one"
    "$BIN" adapter init -m "$MODEL" -o "$TMP/init.ppd.gguf" 2>/dev/null
    run_generate ppd-sampled -t 2 --chat -p "Name a colour." -n 8 --ppd "$TMP/init.ppd.gguf" --temp 0.7 --seed 3
fi

# The server: start, one request of each kind, SIGTERM, and memcheck's verdict at exit.
t0=$SECONDS
PPD_CALIBRATE=off "${VG[@]}" --log-file="$TMP/serve.vg" "$BIN" serve -m "$MODEL" --host 127.0.0.1 --port 0 -t 1 \
    -np 2 -c 256 --no-ppd >"$TMP/serve.log" 2>&1 &
pid=$!
port=""
for _ in $(seq 1 600); do
    port=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$TMP/serve.log" | head -n 1)
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
done
if [ -z "$port" ]; then
    echo "check-deep serve: did not start"; tail -n 40 "$TMP/serve.log" "$TMP/serve.vg"; kill "$pid" 2>/dev/null || true
    exit 1
fi
if ! python3 - "$port" <<'EOF'
import json, sys, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
def post(path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.status, r.read().decode()
st, body = post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
assert st == 200 and json.loads(body)["usage"]["completion_tokens"] == 4, body
st, body = post("/v1/completions", {"prompt": "The sky is", "max_tokens": 4, "stream": True})
assert st == 200 and body.rstrip().endswith("data: [DONE]"), body
EOF
then
    echo "check-deep serve: a request failed"; fail=1
fi
kill -TERM "$pid"
if wait "$pid"; then
    echo "check-deep serve: memcheck clean ($(grep -o 'total heap usage.*' "$TMP/serve.vg")), exit 0 after SIGTERM, $((SECONDS - t0)) s"
else
    echo "check-deep serve: FAILED under memcheck (exit $?)"; grep -v '^==[0-9]*== *$' "$TMP/serve.vg" | tail -n 60; fail=1
fi
exit $fail

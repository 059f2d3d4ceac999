#!/usr/bin/env bash
# tests/gpu/run.sh — the CUDA backend's check on a machine with a GPU, in one
# command: build with CUDA, then these parts (PPD_GPU_PARTS, comma-separated;
# default all of them):
#   ops   every op against the CPU reference (tests/gpu/test_cuda_ops.c: NMSE
#         bounds, tree masks, GQA, odd sizes, long contexts, batch invariance
#         of attention), a random-weight model of the default model's shape
#         built in memory, and the default model end to end (logits NMSE,
#         greedy tokens CPU vs CUDA)
#   ppd   greedy PPD == greedy plain on the GPU (ppd generate; and ppd bench on
#         PPD_GPU_PROMPTS when that file exists: tokens/s, plain vs PPD)
#   rows  step latency vs rows for the default model (ppd bench --rows), and
#         ppd calibrate --device cuda
#   serve ppd serve --device cuda -np 8: 8 concurrent greedy chat completions,
#         each equal to plain ppd generate (tests/gpu/serve_check.py)
#   load  the batch-aware check: ppd serve -np 8 under 8 concurrent
#         clients, plain vs calibrated vs the batch-1 tree forced
#         (tests/gpu/serve_load.py, PPD_GPU_PROMPTS)
#   ncu   (diagnosis, not in the default list) ncu on bench_7b's 64-row step:
#         the attention kernel (throughput, occupancy, warp states)
#   nsys  (diagnosis, not in the default list) nsys kernel and API summary of
#         bench_7b's 1-row steps
#   7b    tests/gpu/bench_7b.c: a Llama-2-7B-shaped model with random f16
#         weights: copy bandwidth, step latency for 1..512 rows, the two
#         targets of the CUDA step, calibration's choice of L, the cuBLASLt choice
#         per shape, and (same machine) 1 and 64 rows unfused and at a
#         2048-entry prefix
# Writes a markdown report to $OUT/gpu-report.md when $OUT is set, else
# build/gpu-report.md, and exits 1 when any check fails (0 when all pass; 77
# when no GPU is usable).  Each part runs under a time limit, so one hang
# cannot take the whole run.
# Without the default model (98 MB; fetched by `make model`) the model checks
# are skipped and the report says so; a GPU machine that cannot fetch it gets it
# in two halves: tests/gpu/carry-model.sh split here, join there.
# Env: PPD_TEST_MODEL (model), PPD_GPU_NO_BUILD=1 (use the binaries in build/,
#      e.g. built on a machine with the Debian packages and carried: shared
#      libraries the GPU machine lacks may come along in build/gpu/syslib),
#      PPD_GPU_ROWS (row counts for the bench, default 1,2,4,8,16,32,64,128,256),
#      PPD_GPU_PARTS, PPD_GPU_PROMPTS (default build/gpu/prompts.jsonl).
set -uo pipefail
cd "$(dirname "$0")/../.."
MODEL=${PPD_TEST_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
ROWS=${PPD_GPU_ROWS:-1,2,4,8,16,32,64,128,256}
REPORT=build/gpu-report.md
[ -n "${OUT:-}" ] && REPORT=$OUT/gpu-report.md
PARTS=,${PPD_GPU_PARTS:-ops,ppd,rows,serve,load,7b},
PROMPTS=${PPD_GPU_PROMPTS:-build/gpu/prompts.jsonl}
part() { case $PARTS in *",$1,"*) return 0 ;; esac; return 1; }
mkdir -p build/gpu "$(dirname "$REPORT")"
# Carried shared libraries: only those this machine lacks join the search path
# (its own libffi, gmp, ... stay in charge of everything else, python3 included).
rm -rf build/gpu/lib && mkdir -p build/gpu/lib
for f in build/gpu/syslib/*.so*; do
    [ -e "$f" ] || continue
    ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$(basename "$f") " || ln -sf "$PWD/$f" build/gpu/lib/
done
export LD_LIBRARY_PATH=$PWD/build/gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fail=0
log() { printf '%s\n' "$*" | tee -a "$REPORT"; }
bad() { log "**FAIL**: $*"; fail=1; }

: > "$REPORT"
card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
log "# CUDA backend check ($(date -u +%Y-%m-%dT%H:%MZ))"
log ""
log "- card: ${card:-unknown (nvidia-smi failed)}"
log "- commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (+ local changes)')"
log "- model: $MODEL"
log ""

# ---- build ----
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}
if [ "${PPD_GPU_NO_BUILD:-0}" != 1 ]; then
    if ! make -j"$(nproc)" WERROR=1 all > build/gpu/build.log 2>&1; then
        bad "make all (see build/gpu/build.log)"; tail -20 build/gpu/build.log
        exit 1
    fi
fi
grep -q "CUDA backend built" build/gpu/build.log 2>/dev/null || [ "${PPD_GPU_NO_BUILD:-0}" = 1 ] || bad "the build did not include the CUDA backend"
for b in build/ppd build/gpu/test_cuda_ops build/gpu/bench_7b; do
    if [ ! -x $b ] || ldd $b | grep -q "not found"; then
        bad "$b cannot run here: $(ldd $b 2>&1 | grep 'not found' | tr '\n' ' ')"; exit 1
    fi
done
log "- libraries: $(ldd build/ppd | grep -o 'libcu[a-zA-Z]*\.so[.0-9]* => [^ ]*' | tr '\n' ' ')"
log ""

have_model=1
[ -f "$MODEL" ] || { have_model=0; log "(model $MODEL not present: its checks SKIPPED)"; }

# ---- ops and the model, CPU vs CUDA ----
if part ops; then
    log "## Ops and model: CUDA vs the CPU backend"
    log ""
    m=$MODEL; [ $have_model = 1 ] || m=/nonexistent
    PPD_TEST_MODEL=$m timeout 300 build/gpu/test_cuda_ops "$m" > build/gpu/ops.txt 2>build/gpu/ops.err; rc=$?
    cat build/gpu/ops.txt >> "$REPORT"; cat build/gpu/ops.txt
    if [ $rc = 77 ]; then log "no usable GPU: nothing checked"; exit 77; fi
    [ $rc = 0 ] || bad "test_cuda_ops exit $rc ($(tail -3 build/gpu/ops.err | tr '\n' ' '))"
    log ""
fi

# ---- greedy PPD == greedy plain on the GPU ----
if part ppd && [ $have_model = 1 ]; then
    log "## Greedy PPD == greedy plain (CUDA)"
    log ""
    ADP=build/gpu/test.ppd.gguf
    TRAINED=${MODEL%.Q4_1.gguf}.ppd.gguf
    if ! build/ppd adapter init -m "$MODEL" -o "$ADP" --force > build/gpu/adapter.log 2>&1; then
        bad "ppd adapter init (build/gpu/adapter.log)"
    else
        for p in "The capital of France is" "Write a Python function that reverses a list." "List three colours:"; do
          for adp in "$ADP" "$TRAINED"; do
            [ -f "$adp" ] || continue
            a=$(timeout 60 build/ppd generate --device cuda -m "$MODEL" --no-ppd --chat -p "$p" -n 64 --json 2>>build/gpu/gen.err)
            b=$(timeout 60 build/ppd generate --device cuda -m "$MODEL" --ppd "$adp" --tree-size 60 --chat -p "$p" -n 64 --json 2>>build/gpu/gen.err)
            ta=$(printf '%s' "$a" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens"])' 2>/dev/null)
            tb=$(printf '%s' "$b" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["tokens"])' 2>/dev/null)
            mb=$(printf '%s' "$b" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("mean_accepted_per_step"))' 2>/dev/null)
            if [ -n "$ta" ] && [ "$ta" = "$tb" ]; then log "- ok: \"$p\", $(basename "$adp"), L = 60: identical ($mb accepted/step)"
            else bad "\"$p\", $(basename "$adp"): PPD tokens differ from plain (or a run failed: build/gpu/gen.err: $(tail -2 build/gpu/gen.err | tr '\n' ' '))"; fi
          done
        done
    fi
    log ""
    if [ -f "$PROMPTS" ]; then
        for L in 2 20 60 105; do
            log "ppd bench on $PROMPTS, CUDA, tree L = $L (plain and PPD, same run; exit 1 if tokens differ):"
            log '```'
            if timeout 120 build/ppd bench --device cuda -m "$MODEL" -f "$PROMPTS" --count 10 -n 128 --tree-size $L \
                    >> "$REPORT" 2>build/gpu/bench-ppd.err; then :; else bad "ppd bench L = $L: $(tail -2 build/gpu/bench-ppd.err | tr '\n' ' ')"; fi
            log '```'
        done
        log ""
    fi
fi

# ---- step latency vs rows ----
if part rows && [ $have_model = 1 ]; then
    log "## Step latency vs rows (ppd bench --rows $ROWS --device cuda, prefix 256)"
    log ""
    log '```'
    if timeout 120 build/ppd bench -m "$MODEL" --device cuda --rows "$ROWS" --repeat 20 --json > build/gpu/bench.txt 2>build/gpu/bench.err; then
        cat build/gpu/bench.txt >> "$REPORT"
    else
        bad "ppd bench --rows (build/gpu/bench.err)"
    fi
    log '```'
    log ""
    log "CPU for comparison (same machine, 8 threads, rows 1,8,64):"
    log '```'
    timeout 60 build/ppd bench -m "$MODEL" --device cpu -t 8 --rows 1,8,64 --repeat 5 --json >> "$REPORT" 2>/dev/null || log "(failed)"
    log '```'
    log ""
    log "Calibration on the GPU (ppd calibrate --device cuda -np 8, committed adapter):"
    log '```'
    timeout 120 build/ppd calibrate --device cuda -m "$MODEL" -np 8 --force >> "$REPORT" 2>build/gpu/calib.err || bad "ppd calibrate --device cuda: $(tail -2 build/gpu/calib.err | tr '\n' ' ')"
    log '```'
fi

# ---- the server on the GPU ----
if part serve && [ $have_model = 1 ]; then
    log ""
    log "## ppd serve --device cuda -np 8: 8 concurrent greedy requests vs plain ppd generate"
    log ""
    PORT=18080
    build/ppd serve --device cuda -m "$MODEL" --port $PORT -np 8 > build/gpu/serve.log 2>&1 &
    spid=$!
    up=0
    for _ in $(seq 1 120); do
        python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2).status == 200 else 1)" 2>/dev/null && { up=1; break; }
        kill -0 $spid 2>/dev/null || break
        sleep 0.5
    done
    if [ $up = 1 ]; then
        timeout 300 python3 tests/gpu/serve_check.py $PORT "$MODEL" 64 >> "$REPORT" 2>build/gpu/serve-check.err || bad "serve_check ($(tail -2 build/gpu/serve-check.err | tr '\n' ' '))"
    else
        bad "ppd serve --device cuda did not become ready: $(tail -3 build/gpu/serve.log | tr '\n' ' ')"
    fi
    kill $spid 2>/dev/null; wait $spid 2>/dev/null
fi

# ---- batch-aware tree choice under load ----
if part load && [ $have_model = 1 ] && [ -f "$PROMPTS" ]; then
    log ""
    log "## ppd serve -np 8, 8 concurrent clients: plain vs calibrated vs the batch-1 tree forced"
    log ""
    timeout 400 python3 tests/gpu/serve_load.py build/ppd "$MODEL" "$PROMPTS" --device cuda -np 8 --rounds 2 -n 128 \
        >> "$REPORT" 2>build/gpu/load.err || bad "serve_load: $(tail -2 build/gpu/load.err | tr '\n' ' ')"
fi

# ---- the 7B-shaped model ----
if part 7b; then
    log ""
    log "## Llama-2-7B shape, random f16 weights (tests/gpu/bench_7b.c)"
    log ""
    PPD_CUDA_GEMM_VERBOSE=1 timeout 300 build/gpu/bench_7b > build/gpu/7b.txt 2>build/gpu/7b.err; rc=$?
    cat build/gpu/7b.txt >> "$REPORT"; cat build/gpu/7b.txt
    log ""
    log "cuBLASLt algorithm per weight shape (matmul.cu's timed, bit-checked choice):"
    log '```'
    grep "^ppd gemm:" build/gpu/7b.err | tee -a "$REPORT"
    log '```'
    log ""
    log "Without fusing q/k/v and gate/up (PPD_CUDA_FUSE=0), same machine:"
    log ""
    PPD_CUDA_FUSE=0 timeout 120 build/gpu/bench_7b --rows 1,64 --no-calib --no-profile 2>/dev/null | grep "^| [0-9]\|^- [16]" | tee -a "$REPORT"
    log ""
    log "A longer context (prefix 2048):"
    log ""
    timeout 150 build/gpu/bench_7b --rows 1,64 --prefix 2048 --no-calib 2>/dev/null | grep "^| [0-9]\|^| attention\|^| \*\*" | tee -a "$REPORT"
    case $rc in
        0) ;;
        1) log "(a target is not met: see above)"; fail=1 ;;
        *) bad "bench_7b exit $rc ($(tail -3 build/gpu/7b.err | tr '\n' ' '))" ;;
    esac
fi

# ---- a profile of the 7B model's tree attention (diagnosis; not a check) ----
if part ncu; then
    NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    log ""
    log "## ncu: attention, 7B shape, 64 rows"
    log ""
    if [ -n "$NCU" ]; then
        log '```'
        timeout 240 "$NCU" -k regex:attention_rows -c 1 --launch-skip 100 \
            --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
            --section MemoryWorkloadAnalysis --section InstructionStats \
            build/gpu/bench_7b --rows 64 --repeat 1 --no-calib --no-profile > build/gpu/ncu.txt 2>&1
        grep -v "^==PROF==\|^ *$\|^ *---\|OPT \|^ *[a-z]" build/gpu/ncu.txt | cut -c1-160 | head -150 | tee -a "$REPORT"
        log '```'
    else
        log "(ncu not found)"
    fi
fi

# ---- a timeline summary of the 7B model's 1-row step (diagnosis; not a check) ----
if part nsys; then
    NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
    log ""
    log "## nsys: the 7B shape's 1-row step (kernels and CUDA API calls)"
    log ""
    if [ -n "$NSYS" ]; then
        log '```'
        timeout 240 "$NSYS" profile -o build/gpu/step1 --force-overwrite true -t cuda --stats=false \
            build/gpu/bench_7b --rows 1 --repeat 30 --no-calib --no-profile > build/gpu/nsys.log 2>&1
        timeout 120 "$NSYS" stats -r cuda_gpu_kern_sum,cuda_api_sum -f csv build/gpu/step1.nsys-rep 2>/dev/null \
            | cut -c1-220 | head -60 | tee -a "$REPORT"
        log '```'
    else
        log "(nsys not found)"
    fi
fi

log ""
if [ $fail = 0 ]; then log "RESULT: all checks passed"; else log "RESULT: FAILED"; fi
exit $fail

#!/usr/bin/env bash
# bench.sh — the figures in BENCHMARKS.md, measured in one run on this machine.
#
#   scripts/bench.sh [ROUNDS]        (make bench runs it with 3 rounds)
#
# 1. Decode and prefill speed, batch 1, 2 threads, 128 new tokens (end-of-turn ignored so
#    every prompt decodes exactly 128), the first 10 MT-Bench first turns: ppd, then
#    llama.cpp (through llama-cpp-python, its own perf counters) in alternating rounds;
#    medians over rounds, and the ratio.  llama.cpp needs the golden venv
#    (tests/golden/setup-venv.sh, built once); without it only ppd is measured.
# 2. One forward pass with 1..64 rows over a 256-entry prefix (the shape of a PPD step).
# 3. The matmul kernels against their floors (build/bench/bench_matmul).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
prompts=${PPD_BENCH_PROMPTS:-../shared/data/eval-mt_bench.jsonl}
threads=${PPD_BENCH_THREADS:-2}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

py=""
if [ -x "${GOLDEN_VENV:-/tmp/ppd-golden-venv}/bin/python" ]; then py="${GOLDEN_VENV:-/tmp/ppd-golden-venv}/bin/python"; fi
[ -n "${GOLDEN_PY:-}" ] && py=$GOLDEN_PY

if [ -f "$prompts" ]; then
  for r in $(seq "$rounds"); do
    echo "bench: round $r/$rounds: ppd" >&2
    build/ppd bench -f "$prompts" --count 10 -n 128 --ignore-eos --no-ppd --json -t "$threads" 2>/dev/null | tee -a "$out"
    if [ -n "$py" ]; then
      echo "bench: round $r/$rounds: llama.cpp" >&2
      "$py" scripts/bench-llamacpp.py --prompts "$prompts" --count 10 -n 128 -t "$threads" 2>/dev/null | tee -a "$out"
    fi
  done
  python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(sel, key):
    v = [r[key] for r in rows if sel(r)]
    return statistics.median(v) if v else None
ppd_d = med(lambda r: r.get("engine") == "ppd", "decode_tokens_per_s")
ppd_p = med(lambda r: r.get("engine") == "ppd", "prefill_tokens_per_s")
print(json.dumps({"summary": "ppd", "decode_tokens_per_s": ppd_d, "prefill_tokens_per_s": ppd_p}))
for cfg in ("f16-kv", "f16-kv-fa"):
    d = med(lambda r: r.get("config") == cfg, "decode_tokens_per_s")
    p = med(lambda r: r.get("config") == cfg, "prefill_tokens_per_s")
    if d:
        print(json.dumps({"summary": "llama.cpp " + cfg, "decode_tokens_per_s": d, "prefill_tokens_per_s": p,
                          "ppd_decode_ratio": round(ppd_d / d, 3), "ppd_prefill_ratio": round(ppd_p / p, 3)}))
PY
else
  echo "bench: $prompts not found (set PPD_BENCH_PROMPTS); skipping the prompt-set run" >&2
fi

build/ppd bench --rows 1,2,4,8,16,32,64 --prefix 256 --repeat 15 -t "$threads" 2>/dev/null
if [ -x build/bench/bench_matmul ]; then build/bench/bench_matmul; fi

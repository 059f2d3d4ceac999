#!/usr/bin/env bash
# bench-adapter.sh — what training buys (`make bench-adapter`): for each
# evaluation prompt set, plain decoding vs PPD with the trained adapter and
# with an untrained (text-initialised) one, measured in the same `ppd bench`
# run per adapter (prompts alternate plain/PPD, greedy, outputs checked equal).
# Writes build/bench-adapter/results.jsonl, a Markdown table (table.md) and
# the chart docs/ppd-speedup.png (gnuplot).
#   PPD_BENCH_COUNT  prompts per set (default 20)   PPD_BENCH_N  tokens (default 256)
#   PPD_BENCH_TREE   tree family file (default: the committed one for the adapter)
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${PPD_DATA_DIR:-../shared/data}
COUNT=${PPD_BENCH_COUNT:-20}
N=${PPD_BENCH_N:-256}
MODEL=${PPD_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
ADAPTER=${PPD_ADAPTER:-models/SmolLM2-135M-Instruct.ppd.gguf}
TREE=${PPD_BENCH_TREE:-config/trees/smollm2-135m-cpu.json}
OUT=build/bench-adapter
PPD=build/ppd
mkdir -p "$OUT" docs
[ -f "$ADAPTER" ] || { echo "bench-adapter: no adapter at $ADAPTER (make adapter)" >&2; exit 1; }
# The untrained adapter gets the trained one's K, so that one tree file serves both.
K=$("$PPD" adapter show "$ADAPTER" | awk '$1 == "K" { print $2 }')
"$PPD" adapter init -m "$MODEL" -o "$OUT/untrained.ppd.gguf" --topk "${K:-10}" --force >/dev/null
tree_args=()
[ -f "$TREE" ] && tree_args=(--tree "$TREE")

: > "$OUT/results.jsonl"
for set in mt_bench humaneval gsm8k alpaca_eval; do
  f="$DATA/eval-$set.jsonl"
  [ -f "$f" ] || { echo "bench-adapter: $f missing" >&2; exit 1; }
  for which in trained untrained; do
    a=$ADAPTER; [ $which = untrained ] && a=$OUT/untrained.ppd.gguf
    "$PPD" bench -m "$MODEL" -f "$f" --count "$COUNT" -n "$N" --ppd "$a" "${tree_args[@]}" --json \
      | python3 -c 'import json,sys
for l in sys.stdin:
    o=json.loads(l); o["set"]=sys.argv[1]; o["which"]=sys.argv[2]; print(json.dumps(o))' "$set" "$which" \
      >> "$OUT/results.jsonl"
  done
done

python3 - "$OUT" "$ADAPTER" <<'PY'
import json, sys
out, adapter = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(f"{out}/results.jsonl")]
with open(f"{out}/table.md", "w") as t, open(f"{out}/chart.dat", "w") as d:
    t.write("| set | adapter | prompts | tokens | accepted/step | plain tok/s | PPD tok/s | speed-up | mismatches |\n")
    t.write("|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        t.write(f"| {r['set']} | {r['which']} | {r['prompts']} | {r['ppd_generated']} | {r['mean_accepted_per_step']:.3f} | "
                f"{r['baseline_decode_tokens_per_s']:.1f} | {r['ppd_decode_tokens_per_s']:.1f} | {r['speedup']:.2f}x | {r['mismatches']} |\n")
    for s in dict.fromkeys(r["set"] for r in rows):
        tr = next(r for r in rows if r["set"] == s and r["which"] == "trained")
        un = next(r for r in rows if r["set"] == s and r["which"] == "untrained")
        d.write(f"{s} {tr['speedup']:.4f} {un['speedup']:.4f} {tr['mean_accepted_per_step']:.4f} {un['mean_accepted_per_step']:.4f}\n")
print(open(f"{out}/table.md").read())
PY

gnuplot <<EOF2
set terminal pngcairo size 900,420 font ",11" noenhanced
set output "docs/ppd-speedup.png"
set multiplot layout 1,2 title "PPD on $(nproc) CPU threads, $(basename "$MODEL"), greedy, -n $N, $COUNT prompts per set"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set yrange [0:*]
set grid ytics
set key top left
set title "decode speed-up over plain decoding"
plot "$OUT/chart.dat" using 2:xtic(1) title "trained", "" using 3 title "untrained"
set title "accepted tokens per step"
plot "$OUT/chart.dat" using 4:xtic(1) title "trained", "" using 5 title "untrained"
unset multiplot
EOF2
echo "bench-adapter: wrote $OUT/table.md and docs/ppd-speedup.png"

#!/usr/bin/env bash
# make-adapter.sh — reproduce the committed PPD adapter of the default model
# and its tree (`make adapter`), from the training prompts only:
#   1. ppd distill  the model answers PPD_DISTILL_COUNT training prompts greedily
#   2. ppd train    prompt tokens trained on those answers (deep prompts: a vector
#                   per layer too; PPD_TRAIN_DEEP=0 trains the paper's shallow ones)
#   3. measure      the model answers PPD_HELDOUT_COUNT further training prompts
#                   (the next ones of the same shuffle: never trained on), and
#                   `ppd train --measure-only` stores the prompt tokens' hit rates
#                   and rank joint on them in the adapter (the tree builder's input)
#   4. ppd tree tune  the tree budget with the best measured speed-up on this
#                   machine, on other training prompts, written under config/trees/
# Every step is seeded and resumable (re-running continues where it stopped).
# Times and figures go to build/adapter/report.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

PROMPTS=${PPD_TRAIN_PROMPTS:-../shared/data/train-prompts.jsonl}
COUNT=${PPD_DISTILL_COUNT:-2400}
EPOCHS=${PPD_TRAIN_EPOCHS:-2}
LR=${PPD_TRAIN_LR:-5e-2}
HELDOUT=${PPD_HELDOUT_COUNT:-150}
DEEP=()
[ "${PPD_TRAIN_DEEP:-1}" = 1 ] && DEEP=(--deep)
MODEL=${PPD_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
ADAPTER=${PPD_ADAPTER_OUT:-models/SmolLM2-135M-Instruct.ppd.gguf}
TREE=${PPD_TREE_OUT:-config/trees/smollm2-135m-cpu.json}
WORK=build/adapter
PPD=build/ppd

case "$(basename "$PROMPTS")" in
  eval-*) echo "make-adapter: refusing to train on an evaluation file ($PROMPTS)" >&2; exit 1 ;;
esac
[ -f "$PROMPTS" ] || { echo "make-adapter: $PROMPTS not found (set PPD_TRAIN_PROMPTS)" >&2; exit 1; }
mkdir -p "$WORK"
start=$(date +%s)

t0=$(date +%s)
"$PPD" distill -m "$MODEL" -f "$PROMPTS" -o "$WORK/distill.jsonl" --count "$COUNT" -n 256 --seed 1
t1=$(date +%s)
# One held-out evaluation per epoch: the training split is the answers less the
# 48 held out, taken 4 at a time.
answers=$(($(wc -l < "$WORK/distill.jsonl") - 1))
EVAL_EVERY=$(((answers - 48 + 3) / 4))
[ "$EVAL_EVERY" -ge 1 ] || EVAL_EVERY=0   # few answers: evaluate at the end only
"$PPD" train -m "$MODEL" -d "$WORK/distill.jsonl" -o "$WORK/adapter.ppd.gguf" --force \
  --epochs "$EPOCHS" --batch 4 --cuts 16 --lr "$LR" --seed 1 --val 0.05 --val-max 48 \
  --checkpoint "$WORK/train.ckpt" --resume --save-every 25 --eval-every "$EVAL_EVERY" "${DEEP[@]}" | tee "$WORK/train.json"
t2=$(date +%s)
"$PPD" distill -m "$MODEL" -f "$PROMPTS" -o "$WORK/heldout.jsonl" --skip "$COUNT" --count "$HELDOUT" -n 256 --seed 1
"$PPD" train -m "$MODEL" -d "$WORK/heldout.jsonl" --measure-only --init "$WORK/adapter.ppd.gguf" \
  -o "$WORK/adapter.ppd.gguf" --force --val 1 --val-max 100000 --cuts 32 --topk 20 --seed 1 | tee "$WORK/measure.json"
t25=$(date +%s)
# Tune on training prompts from the end of the file (the distilled ones are a
# seeded sample of the whole file; these are for choosing L, not for reporting).
"$PPD" tree tune -m "$MODEL" -a "$WORK/adapter.ppd.gguf" -f "$PROMPTS" --skip 13200 --count 6 -n 128 \
  -o "$WORK/tree.json" --set-adapter | tee "$WORK/tune.txt"
t3=$(date +%s)
cp "$WORK/adapter.ppd.gguf" "$ADAPTER"
cp "$WORK/tree.json" "$TREE"
{
  echo "make adapter: $(date -u +%FT%TZ) on $(nproc) CPUs"
  echo "distill: $((t1 - t0)) s  train: $((t2 - t1)) s  measure: $((t25 - t2)) s  tree tune: $((t3 - t25)) s  total: $((t3 - start)) s"
  echo "data: $(($(wc -l < "$WORK/distill.jsonl") - 1)) sequences from $PROMPTS"
  cat "$WORK/train.json" "$WORK/measure.json" "$WORK/tune.txt"
} | tee "$WORK/report.txt"
echo "make-adapter: wrote $ADAPTER and $TREE"

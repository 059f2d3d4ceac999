#!/usr/bin/env bash
# tests/gpu/carry-model.sh — copy the default model (98 MB) to a GPU machine
# that cannot fetch it and takes files in transfers of limited size (64 MiB,
# say): split it here into two ignored halves, copy one per transfer, join
# them there.  The sha256 of the joined file is checked against
# scripts/fetch-model.sh's pinned one.
#   tests/gpu/carry-model.sh split [MiB]  # here: build/carry/model.part1 (MiB of
#                                          # it; default half), model.part2
#   tests/gpu/carry-model.sh join    # there: models/SmolLM2-135M-Instruct.Q4_1.gguf
# (copy build/carry/model.part1 in the first transfer and build/carry/model.part2
# in the second, then run `join` and tests/gpu/run.sh there.  A smaller first
# part leaves room in the first transfer for binaries built here:
# tests/gpu/carry-libs.sh.)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
DIR=build/carry
want=$(grep -o '[0-9a-f]\{64\}' scripts/fetch-model.sh | head -1)
case "${1:-}" in
  split)
    [ -f "$MODEL" ] || { echo "carry-model: $MODEL missing (make model)" >&2; exit 1; }
    mkdir -p "$DIR"
    half=$(( ($(stat -c %s "$MODEL") + 1) / 2 ))
    [ -n "${2:-}" ] && half=$(( $2 * 1048576 ))
    head -c "$half" "$MODEL" > "$DIR/model.part1"
    tail -c +"$((half + 1))" "$MODEL" > "$DIR/model.part2"
    ls -l "$DIR" ;;
  join)
    [ -f "$DIR/model.part1" ] && [ -f "$DIR/model.part2" ] || { echo "carry-model: $DIR/model.part1 and .part2 needed" >&2; exit 1; }
    mkdir -p models
    cat "$DIR/model.part1" "$DIR/model.part2" > "$MODEL.tmp"
    got=$(sha256sum "$MODEL.tmp" | cut -d' ' -f1)
    if [ -n "$want" ] && [ "$got" != "$want" ]; then
      echo "carry-model: joined file has sha256 $got, expected $want" >&2; rm -f "$MODEL.tmp"; exit 1
    fi
    mv "$MODEL.tmp" "$MODEL"
    echo "carry-model: $MODEL joined (sha256 $got)" ;;
  *) echo "usage: tests/gpu/carry-model.sh split|join" >&2; exit 2 ;;
esac

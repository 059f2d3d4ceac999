#!/usr/bin/env python3
"""check-ppd.py — the lossless check at scale: PPD output equals plain decoding, token for token.

  python3 scripts/check-ppd.py [--count N] [-n 256] [--temps 0,0.7,1.0] [--adapter FILE]

For the first N prompts of each set (first turn of MT-Bench and HumanEval, from
../shared/data), runs `build/ppd generate --chat --json` with --no-ppd and with --ppd at
each temperature (same seed), and compares the token ids.  Prints one line per prompt and
a summary (identical count, mean accepted tokens per step); exits 1 on any difference.
Without --adapter an untrained adapter is made with `ppd adapter init` in a temporary file.
(`make check-ppd` runs it; `make test` runs the same comparison on a few prompts.)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PPD = os.path.join(ROOT, "build", "ppd")


def gen(prompt, extra, n, temp, seed=1234):
    cmd = [PPD, "generate", "--chat", "-p", prompt, "-n", str(n), "--json", "--temp", str(temp),
           "--seed", str(seed)] + extra
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=50, help="prompts per set")
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--temps", default="0,0.7,1.0")
    ap.add_argument("--adapter")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    a = ap.parse_args()
    adapter = a.adapter
    if not adapter:
        adapter = os.path.join(tempfile.mkdtemp(), "untrained.ppd.gguf")
        subprocess.run([PPD, "adapter", "init", "-o", adapter], check=True, capture_output=True)
    prompts = []
    for name in ("eval-mt_bench.jsonl", "eval-humaneval.jsonl"):
        with open(os.path.join(a.data, name), encoding="utf-8") as f:
            prompts += [(name.split("-")[1].split(".")[0], json.loads(l)) for l in f][: a.count]
    temps = [float(t) for t in a.temps.split(",")]
    bad = 0
    for temp in temps:
        same = steps = toks = 0
        for i, (src, row) in enumerate(prompts):
            text = row["turns"][0]
            plain = gen(text, ["--no-ppd"], a.n, temp)
            ppd = gen(text, ["--ppd", adapter], a.n, temp)
            ok = plain["tokens"] == ppd["tokens"]
            same += ok
            bad += not ok
            steps += ppd["steps"]
            toks += ppd["n_gen"]
            print(f"T={temp} {src} {row['id']}: {'identical' if ok else 'DIFFERENT'} "
                  f"({ppd['n_gen']} tokens, {ppd['mean_accepted_per_step']:.3f} per step)", flush=True)
        print(f"T={temp}: {same}/{len(prompts)} identical; mean accepted tokens per step "
              f"{toks / max(steps, 1):.3f}", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

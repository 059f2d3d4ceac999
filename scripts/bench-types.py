#!/usr/bin/env python3
"""Decode speed of ppd against llama.cpp on the default model in every weight type users
download, for BENCHMARKS.md.

Run:  $(tests/golden/setup-venv.sh) scripts/bench-types.py [--reps 3] [--count 5] [-n 128] [TYPE ...]

The files come from scripts/requantize.py (made first when missing). For each type and
repetition, ppd (`ppd bench --no-ppd --ignore-eos`, plain decoding) and llama.cpp
(scripts/bench-llamacpp.py's loop, the faster of flash attention on and off) decode the same
MT-Bench first turns one after the other, so both see the same machine load; the table gives
the median tokens/s of each and the median of the per-repetition ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import importlib.util  # noqa: E402

spec = importlib.util.spec_from_file_location("bench_llamacpp", os.path.join(ROOT, "scripts", "bench-llamacpp.py"))
bench_llamacpp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_llamacpp)

TYPES = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", "Q8_0", "Q4_0", "Q4_1",
         "F16", "BF16"]


def ppd_decode(model, prompts_file, count, n, threads):
    out = subprocess.run([os.path.join(ROOT, "build", "ppd"), "bench", "-m", model, "-f", prompts_file, "--no-ppd",
                          "--count", str(count), "-n", str(n), "--ignore-eos", "--json", "-t", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["decode_tokens_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default=os.path.join(ROOT, "..", "shared", "data", "eval-mt_bench.jsonl"))
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("types", nargs="*", default=TYPES)
    a = ap.parse_args()
    qdir = os.path.join(ROOT, "models", "quants")
    missing = [t for t in a.types if not os.path.exists(os.path.join(qdir, f"SmolLM2-135M-Instruct.{t}.gguf"))]
    if missing:
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "requantize.py")] + missing, check=True)
    prompts = [json.loads(line)["turns"][0] for line in open(a.prompts, encoding="utf-8")][: a.count]
    print("| type | ppd tok/s | llama.cpp tok/s | ppd / llama.cpp |")
    print("|---|---|---|---|")
    for t in a.types:
        model = os.path.join(qdir, f"SmolLM2-135M-Instruct.{t}.gguf")
        ours, theirs, ratios = [], [], []
        for _ in range(a.reps):
            p = ppd_decode(model, a.prompts, a.count, a.n, a.t)
            ll = max(bench_llamacpp.run(model, prompts, a.n, a.t, flash)[1] for flash in (False, True))
            ours.append(p)
            theirs.append(ll)
            ratios.append(p / ll)
        print(f"| {t} | {statistics.median(ours):.1f} | {statistics.median(theirs):.1f} | "
              f"{statistics.median(ratios):.2f}x |", flush=True)


if __name__ == "__main__":
    main()

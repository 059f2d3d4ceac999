#!/usr/bin/env python3
"""bench-serve.py — `ppd serve` measured through HTTP streaming (`make bench-serve`).

For plain decoding and for PPD, alternating in each round: a server with
-np = the largest client count; at each concurrency (default 1, 4 and 16
streaming clients) every client sends MT-Bench first turns (greedy, -n tokens,
ignore_eos so every request decodes exactly n) and the script records time to
first token (TTFT), the gaps between chunks that carry text (ITL; a PPD step
may release several tokens in one chunk), and the aggregate tokens/s (all
completion tokens over the wall time of the phase).  With plain decoding it
also runs `ppd generate` on the same prompts: HTTP at 1 client is compared
with it by decode tokens/s (first to last token, prefill excluded on both
sides).  Medians over rounds; a Markdown table on stdout, all samples with
--json FILE.

Runs with the integration tests' venv (requests): build/itest-venv/bin/python.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

import requests


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def load_prompts(path, count):
    out = []
    with open(path) as f:
        for line in f:
            o = json.loads(line)
            out.append(o["turns"][0])
            if len(out) == count:
                break
    return out


def start_server(a, ppd_args, log_path):
    cmd = [a.bin, "serve", "-m", a.model, "--host", "127.0.0.1", "--port", "0", "-t", str(a.threads),
           "-np", str(max(a.clients)), "-c", str(a.ctx), "-b", str(a.batch_size), "--max-queue", "1024", *ppd_args]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench-serve: the server exited:\n{open(log_path).read()}")
        m = re.search(r"listening on http://[^:]+:(\d+)", open(log_path).read())
        if m:
            return proc, f"http://127.0.0.1:{m.group(1)}"
        time.sleep(0.05)
    proc.kill()
    sys.exit("bench-serve: the server did not start")


def stream_one(url, prompt, n):
    """One greedy streamed chat completion: (ttft, chunk gaps, tokens, decode seconds)."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": n, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    gaps, tokens = [], 0
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            o = json.loads(line[6:])
            if o.get("usage"):
                tokens = o["usage"]["completion_tokens"]
            if o["choices"] and o["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
    return first - t0, gaps, tokens, last - first


def run_phase(url, prompts, clients, n, min_requests):
    """`clients` threads share a queue of requests (the prompts, repeated)."""
    total = max(min_requests, clients)
    todo = [prompts[i % len(prompts)] for i in range(total)]
    lock = threading.Lock()
    res = []

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                p = todo.pop(0)
            r = stream_one(url, p, n)
            with lock:
                res.append(r)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r[0] for r in res]
    gaps = [g for r in res for g in r[1]]
    tokens = sum(r[2] for r in res)
    dec_tokens = sum(r[2] - 1 for r in res)
    dec_s = sum(r[3] for r in res)
    return {"clients": clients, "requests": len(res), "tokens": tokens, "wall_s": wall,
            "aggregate_tok_s": tokens / wall, "decode_tok_s_per_stream": dec_tokens / dec_s if dec_s else 0,
            "ttft_p50_ms": 1e3 * percentile(ttft, 50), "ttft_p99_ms": 1e3 * percentile(ttft, 99),
            "itl_p50_ms": 1e3 * percentile(gaps, 50), "itl_p99_ms": 1e3 * percentile(gaps, 99),
            "tokens_per_chunk": tokens / (len(gaps) + len(res)) if res else 0}


def generate_baseline(a, prompts):
    """`ppd generate` decode tokens/s on the same prompts (total tokens over total decode time)."""
    toks = secs = 0.0
    for p in prompts:
        out = subprocess.run([a.bin, "generate", "-m", a.model, "-t", str(a.threads), "-c", str(a.ctx), "-n", str(a.n),
                              "--ignore-eos", "--no-ppd", "--chat", "--json", "-p", p],
                             check=True, capture_output=True, text=True).stdout
        o = json.loads(out)
        toks += o["decode_tokens_per_s"] * o["decode_s"]
        secs += o["decode_s"]
    return toks / secs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="build/ppd")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--ppd", default="models/SmolLM2-135M-Instruct.ppd.gguf", help="adapter for the PPD runs")
    ap.add_argument("--tree", default=None, help="tree file for the PPD runs (default: the adapter's tuned budget)")
    ap.add_argument("--prompts", default="../shared/data/eval-mt_bench.jsonl")
    ap.add_argument("--count", type=int, default=10, help="prompts (first turns)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256, help="rows per step (-b)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, help="write every sample here")
    ap.add_argument("--modes", default="plain,ppd",
                    help="comma list of plain, ppd (fixed tree), calibrated, batch1 (after calibrated)")
    a = ap.parse_args()
    a.clients = [int(x) for x in a.clients.split(",")]
    prompts = load_prompts(a.prompts, a.count)
    # plain: no PPD; ppd: the adapter with a fixed tree (--tree, else its tuned
    # budget); calibrated: start-up calibration's tree per number of sequences;
    # batch1: the tree calibration chose for one sequence, forced at every
    # batch size (does choosing per batch size pay?).
    fixed = ["--ppd", a.ppd, "--calibrate", "off"] + (["--tree", a.tree] if a.tree else [])
    all_modes = {"plain": ["--no-ppd"], "ppd": fixed,
                 "calibrated": ["--ppd", a.ppd, "--calibrate", "auto"], "batch1": None}
    modes = {m: all_modes[m] for m in a.modes.split(",")}
    samples = []
    batch1_L = None
    os.makedirs("build/bench-serve", exist_ok=True)
    for rnd in range(a.rounds):
        for mode, args in modes.items():
            if mode == "batch1":
                if batch1_L is None:
                    sys.exit("bench-serve: batch1 needs calibrated before it in --modes")
                args = ["--ppd", a.ppd, "--calibrate", "off", "--tree-size", str(batch1_L)] if batch1_L else ["--no-ppd"]
            proc, url = start_server(a, args, f"build/bench-serve/server-{mode}.log")
            try:
                while requests.get(url + "/health", timeout=10).status_code != 200:   # calibrating
                    time.sleep(0.2)
                if mode == "calibrated":
                    m = re.search(r'ppd_tree_budget\{batch_size="1"\} (\d+)', requests.get(url + "/metrics").text)
                    batch1_L = int(m.group(1)) if m else 0
                    budgets = re.findall(r'ppd_tree_budget\{batch_size="(\d+)"\} (\d+)', requests.get(url + "/metrics").text)
                    print("calibrated: L per number of sequences: " + ", ".join(f"{b}: {L}" for b, L in budgets),
                          file=sys.stderr)
                stream_one(url, prompts[0], 8)   # warm-up
                for c in a.clients:
                    s = run_phase(url, prompts, c, a.n, min_requests=len(prompts) if c == 1 else 2 * c)
                    s.update(mode=mode, round=rnd)
                    samples.append(s)
                    print(f"round {rnd} {mode:5} {c:2} clients: {s['aggregate_tok_s']:.1f} tok/s, "
                          f"TTFT p50 {s['ttft_p50_ms']:.0f} ms, ITL p50 {s['itl_p50_ms']:.1f} ms", file=sys.stderr)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
        if "plain" in modes and 1 in a.clients:
            gen = generate_baseline(a, prompts)
            samples.append({"mode": "generate", "round": rnd, "decode_tok_s": gen})
            print(f"round {rnd} ppd generate: {gen:.1f} tok/s decode", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(samples, f, indent=1)

    med = lambda xs: statistics.median(xs) if xs else float("nan")
    gen = med([s["decode_tok_s"] for s in samples if s["mode"] == "generate"])
    print(f"Prompts: first {a.count} MT-Bench first turns, {a.n} tokens each (ignore_eos), greedy, "
          f"{a.threads} threads, -np {max(a.clients)}; medians of {a.rounds} rounds.\n")
    print("| decoding | clients | aggregate tok/s | decode tok/s per stream | TTFT p50 ms | TTFT p99 ms | "
          "ITL p50 ms | ITL p99 ms | tokens per chunk |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        for c in a.clients:
            ss = [s for s in samples if s["mode"] == mode and s["clients"] == c]
            print(f"| {mode} | {c} | {med([s['aggregate_tok_s'] for s in ss]):.1f} | "
                  f"{med([s['decode_tok_s_per_stream'] for s in ss]):.1f} | {med([s['ttft_p50_ms'] for s in ss]):.0f} | "
                  f"{med([s['ttft_p99_ms'] for s in ss]):.0f} | {med([s['itl_p50_ms'] for s in ss]):.1f} | "
                  f"{med([s['itl_p99_ms'] for s in ss]):.1f} | {med([s['tokens_per_chunk'] for s in ss]):.2f} |")
    http1 = [s["decode_tok_s_per_stream"] for s in samples if s["mode"] == "plain" and s["clients"] == 1] or [0]
    per_round = [h / g["decode_tok_s"] for h, g in zip(http1, [s for s in samples if s["mode"] == "generate"])]
    print(f"\nHTTP streaming at 1 client vs `ppd generate` (plain, decode tok/s): {med(http1):.1f} vs {gen:.1f} = "
          f"{med(per_round):.3f} (per round: {', '.join(f'{x:.3f}' for x in per_round)})")
    if "plain" in modes:
        agg = {(m, c): med([s["aggregate_tok_s"] for s in samples if s["mode"] == m and s["clients"] == c])
               for m in modes for c in a.clients}
        for m in modes:
            if m != "plain":
                print(f"{m} ÷ plain, aggregate tok/s: " +
                      ", ".join(f"{c} clients {agg[(m, c)] / agg[('plain', c)]:.2f}x" for c in a.clients))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""tests/gpu/serve_load.py — the batch-aware check on the device at hand,
from the standard library only: `ppd serve -np N` under N concurrent greedy
clients, three ways in one run, each a fresh server:
  plain       --no-ppd
  calibrated  start-up calibration's tree per number of decoding sequences
  batch1      the tree calibration chose for one sequence, forced at every
              batch size (--calibrate off --tree-size L1)
Aggregate tokens/s = completion tokens of all requests / wall time of the round.
Prints a markdown table; exit 1 when a server fails or a request errors.
usage: serve_load.py PPD_BIN MODEL PROMPTS.jsonl [--device cuda] [-np 8]
                     [--rounds 2] [-n 128] [--port 18090]"""
import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

import chat_client


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def start(a, extra):
    cmd = [a.bin, "serve", "-m", a.model, "--device", a.device, "--port", str(a.port), "-np", str(a.np)] + extra
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if p.poll() is not None:
            sys.exit(f"serve_load: {' '.join(cmd)} exited: {p.stderr.read()[-400:]}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{a.port}/health", timeout=2).status == 200:
                return p
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    p.kill()
    sys.exit("serve_load: server not ready in 300 s")


def run_round(a, model_id, prompts):
    done = [0] * a.np
    errors = []

    def client(i):
        for j in range(a.rounds):
            p = prompts[(i * a.rounds + j) % len(prompts)]
            try:
                done[i] += chat_client.chat(a.port, model_id, p, a.n, timeout=600)["usage"]["completion_tokens"]
            except Exception as e:  # noqa: BLE001 - counted
                errors.append(str(e))

    t0 = time.time()
    ts = [threading.Thread(target=client, args=(i,)) for i in range(a.np)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(done), time.time() - t0, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("-np", "--np", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--port", type=int, default=18090)
    a = ap.parse_args()
    prompts = [json.loads(line)["turns"][0] for line in open(a.prompts) if line.strip()]
    rows, L1, bad = [], None, 0
    for mode in ("plain", "calibrated", "batch1"):
        if mode == "plain":
            extra = ["--no-ppd"]
        elif mode == "calibrated":
            extra = ["--calibrate", "auto"]
        else:
            extra = ["--calibrate", "off", "--tree-size", str(L1)] if L1 else ["--no-ppd"]
        p = start(a, extra)
        try:
            model_id = chat_client.model_id(a.port)
            budgets = ""
            if mode == "calibrated":
                m = dict(re.findall(r'ppd_tree_budget\{batch_size="(\d+)"\} (\d+)', get(f"http://127.0.0.1:{a.port}/metrics")))
                L1 = int(m.get("1", 0))
                budgets = " ".join(f"{b}:{m[b]}" for b in sorted(m, key=int))
            tokens, secs, errors = run_round(a, model_id, prompts)
            bad += len(errors)
            rows.append((mode, tokens, secs, budgets, errors[:1]))
        finally:
            p.terminate()
            p.wait(timeout=60)
    plain = rows[0][1] / rows[0][2]
    print(f"| mode ({a.np} clients x {a.rounds} requests, {a.n} tokens, {a.device}) | tokens | s | tok/s | vs plain | L per batch size |")
    print("|---|---|---|---|---|---|")
    for mode, tokens, secs, budgets, err in rows:
        tps = tokens / secs
        extra = budgets if mode == "calibrated" else (f"{L1} forced" if mode == "batch1" else "")
        print(f"| {mode} | {tokens} | {secs:.1f} | {tps:.1f} | {tps / plain:.2f}x | {extra}{' ERR ' + err[0] if err else ''} |")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

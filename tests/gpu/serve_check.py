#!/usr/bin/env python3
"""tests/gpu/serve_check.py — `ppd serve --device cuda` end to end, from the
standard library only (the GPU machine has no openai package): N concurrent
greedy chat completions against a running server, each compared with the
text `ppd generate --device cuda --no-ppd` gives for the same prompt (batched
PPD on the GPU must equal plain decoding), then the calibration lines of
/metrics.  Prints markdown; exit 1 on any difference or error.
usage: serve_check.py PORT MODEL N_TOKENS"""
import json
import os
import subprocess
import sys
import threading
import urllib.request

import chat_client

PROMPTS = [
    "The capital of France is",
    "Write a Python function that reverses a list.",
    "List three colours:",
    "Explain what a hash table is in two sentences.",
    "What is 17 times 23?",
    "Give me a haiku about autumn.",
    "Name the planets of the solar system.",
    "How do I boil an egg?",
]


def post(port, model_id, prompt, n, out, i):
    try:
        out[i] = chat_client.chat(port, model_id, prompt, n)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        out[i] = {"error": str(e)}


def main():
    port, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model_id = chat_client.model_id(port)
    out = [None] * len(PROMPTS)
    threads = [threading.Thread(target=post, args=(port, model_id, p, n, out, i)) for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = 0
    for i, p in enumerate(PROMPTS):
        r = out[i]
        if not r or "choices" not in r:
            print(f"- **FAIL** {p!r}: {r}")
            bad += 1
            continue
        text = r["choices"][0]["message"]["content"]
        g = subprocess.run(["build/ppd", "generate", "--device", os.environ.get("PPD_DEVICE", "cuda"), "-m", model, "--no-ppd", "--chat",
                            "-p", p, "-n", str(n), "--json"], capture_output=True, text=True, timeout=120)
        try:
            ref = json.loads(g.stdout)["text"]
        except Exception:  # noqa: BLE001
            ref = None
        ok = ref is not None and ref == text
        bad += not ok
        print(f"- {'ok' if ok else '**FAIL**'}: {p!r}: served {r['usage']['completion_tokens']} tokens"
              f"{' == plain generate' if ok else ' differ from plain generate: ' + repr(text[:80]) + ' vs ' + repr((ref or '')[:80])}")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            if not line.startswith("#") and ("calib" in line or "accepted" in line or "tree" in line):
                print(f"    {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

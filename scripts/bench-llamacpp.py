#!/usr/bin/env python3
"""llama.cpp's decode and prefill speed on the same prompts, for BENCHMARKS.md ratios.

Run:  $(tests/golden/setup-venv.sh) scripts/bench-llamacpp.py [--prompts FILE] [-n 128] [-t 2]

For each of the first --count prompts (first turn, rendered with the model's own chat
template through jinja2): prefill, then --n greedy tokens one per llama_decode call (batch 1),
not stopping at end-of-turn.  Speeds come from llama.cpp's own counters
(llama_perf_context: t_p_eval_ms, t_eval_ms), so Python's per-call overhead is not charged to
llama.cpp.  Prints one JSON line per configuration with median tokens/s:
  f16-kv   llama.cpp's default cache type (F16), flash attention off
  f16-kv-fa  the same with flash attention (llama.cpp's CLI default 'auto' picks it on CPU)
"""
import argparse
import json
import os
import statistics
import sys

import jinja2.sandbox
import llama_cpp
import numpy as np
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def render(src, text):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(src).render(messages=[{"role": "user", "content": text}], add_generation_prompt=True,
                                       bos_token="", eos_token="")


def run(model, prompts, n_gen, threads, flash):
    llm = Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads,
                flash_attn=flash, verbose=False)
    src = llm.metadata["tokenizer.chat_template"]
    n_vocab = llm.n_vocab()
    dec, pre = [], []
    for text in prompts:
        ids = llm.tokenize(render(src, text).encode(), add_bos=False, special=True)
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        llm.eval(ids)
        for _ in range(n_gen - 1):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
            llm.eval([int(np.argmax(logits))])
        perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
        pre.append(perf.n_p_eval / (perf.t_p_eval_ms / 1e3))
        dec.append(perf.n_eval / (perf.t_eval_ms / 1e3))
    return statistics.median(pre), statistics.median(dec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--prompts", default=os.path.join(ROOT, "..", "shared", "data", "eval-mt_bench.jsonl"))
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", type=int, default=2)
    a = ap.parse_args()
    prompts = [json.loads(l)["turns"][0] for l in open(a.prompts, encoding="utf-8")][: a.count]
    for name, flash in (("f16-kv", False), ("f16-kv-fa", True)):
        p, d = run(a.model, prompts, a.n, a.t, flash)
        print(json.dumps({"engine": "llama.cpp", "config": name, "threads": a.t, "n_gen": a.n,
                          "prompts": len(prompts), "prefill_tokens_per_s": round(p, 1),
                          "decode_tokens_per_s": round(d, 1)}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()

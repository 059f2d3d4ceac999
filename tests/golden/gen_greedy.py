#!/usr/bin/env python3
"""Greedy token ids and logits of the default model, produced by llama.cpp.

Run:  $(tests/golden/setup-venv.sh) tests/golden/gen_greedy.py [--prompts ../shared/data/eval-mt_bench.jsonl]

For the first turn of each of the first 24 MT-Bench questions: render it with the
model's own Jinja chat template (jinja2, as transformers does), tokenize it with
llama.cpp (special tokens parsed), then let llama.cpp decode 128 tokens greedily
(argmax, lowest id on ties, not stopping at end-of-turn).  Recorded per prompt:
the prompt ids, the 128 generated ids and the top-2 logits at every step; and the
full logits of the first step for the first 3 prompts (float32 little-endian).

llama.cpp settings: 2 threads, one batch for the prompt, K/V cache in F32 and no
flash attention, so the reference is the model's arithmetic with as little
rounding as llama.cpp allows (its default F16 cache rounds K, V and the softmax).
Only the question ids go into the committed file, not the question texts.
"""
import argparse
import ctypes
import json
import os
import sys

import jinja2
import jinja2.sandbox
import numpy as np
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
N_PROMPTS = 24
N_GEN = 128
N_FULL_LOGITS = 3
GGML_TYPE_F32 = 0


def render(template_src, messages, bos, eos):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template_src).render(messages=messages, add_generation_prompt=True,
                                                bos_token=bos, eos_token=eos)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--prompts", default=os.path.join(ROOT, "..", "shared", "data", "eval-mt_bench.jsonl"))
    ap.add_argument("--out", default=os.path.join(HERE, "data"))
    a = ap.parse_args()

    llm = Llama(model_path=a.model, n_ctx=2048, n_batch=2048, n_ubatch=2048, n_threads=2,
                n_threads_batch=2, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False,
                logits_all=False, verbose=False)
    tmpl = llm.metadata["tokenizer.chat_template"]
    n_vocab = llm.n_vocab()
    bos = llm.detokenize([llm.token_bos()], special=True).decode()
    eos = llm.detokenize([llm.token_eos()], special=True).decode()

    rows = [json.loads(l) for l in open(a.prompts, encoding="utf-8")][:N_PROMPTS]
    cases = []
    full = []
    for qi, row in enumerate(rows):
        text = render(tmpl, [{"role": "user", "content": row["turns"][0]}], bos, eos)
        prompt = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(prompt)
        gen, top2 = [], []
        for step in range(N_GEN):
            ptr = llm._ctx.get_logits()
            logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()
            if step == 0 and qi < N_FULL_LOGITS:
                full.append(logits)
            order = np.argsort(-logits, kind="stable")
            tok = int(order[0])
            top2.append([int(order[0]), float(logits[order[0]]), int(order[1]), float(logits[order[1]])])
            gen.append(tok)
            llm.eval([tok])
        cases.append({"id": row["id"], "prompt_ids": [int(t) for t in prompt], "gen_ids": gen, "top2": top2})
        print(f"{qi + 1}/{len(rows)} id={row['id']} prompt={len(prompt)} tokens", file=sys.stderr)

    os.makedirs(a.out, exist_ok=True)
    meta = {"model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "reference": "llama.cpp via llama-cpp-python 0.3.36, 2 threads, F32 KV, no flash attention",
            "n_gen": N_GEN, "n_vocab": n_vocab, "full_logits_file": "greedy_logits0.f32",
            "full_logits_cases": N_FULL_LOGITS, "cases": cases}
    with open(os.path.join(a.out, "greedy.json"), "w") as f:
        json.dump(meta, f, separators=(",", ":"))
    np.stack(full).astype("<f4").tofile(os.path.join(a.out, "greedy_logits0.f32"))
    print("wrote greedy.json and greedy_logits0.f32", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""llama.cpp's logprobs for prompts and their greedy continuations: the reference
tests/integration/test_logprobs_llamacpp.py compares the server's logprobs with.

Run:  $(tests/golden/setup-venv.sh) tests/golden/llamacpp_logprobs.py --model M.gguf --n-gen N --top K < prompts.json

stdin: a JSON list of prompt strings.  For each, llama.cpp (through
llama-cpp-python, F32 KV cache, every row's logits) tokenizes the prompt as
ppd's /v1/completions does (the vocabulary's add_bos, special tokens parsed),
decodes N tokens greedily, and reports, for every position j >= 1 of prompt +
continuation, the log-softmax (in float64 over the float32 logits) of token j
at the row of position j - 1 and the K most likely tokens there.  stdout: one
JSON object {"cases": [{"prompt_ids", "gen_ids", "rows": [{"logprob", "top":
[[id, logprob], ...]}]}]}; rows[j - 1] belongs to token j.
"""
import argparse
import json
import sys

import numpy as np
from llama_cpp import GGML_TYPE_F32, Llama


def log_softmax(row):
    x = row.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n-gen", type=int, default=16)
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args()
    prompts = json.load(sys.stdin)
    llm = Llama(model_path=a.model, n_ctx=2048, n_batch=2048, n_ubatch=2048, n_threads=2, n_threads_batch=2,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False, logits_all=True, verbose=False)
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    cases = []
    for text in prompts:
        ids = llm.tokenize(text.encode(), add_bos=add_bos, special=True)
        llm.reset()
        llm.eval(ids)
        gen = []
        for _ in range(a.n_gen):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            gen.append(tok)
            llm.eval([tok])
        seq = ids + gen
        rows = []
        for j in range(1, len(seq)):
            lp = log_softmax(llm.scores[j - 1])
            top = np.argsort(-lp, kind="stable")[:a.top]
            rows.append({"logprob": float(lp[seq[j]]), "top": [[int(t), float(lp[t])] for t in top]})
        cases.append({"prompt_ids": ids, "gen_ids": gen, "rows": rows})
    json.dump({"cases": cases}, sys.stdout)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Greedy token ids and logits of the default model and two variants of it, produced by llama.cpp.

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

Why variants: the model's matmuls quantize their inputs to int8 (as llama.cpp does), and
that rounding is discontinuous, so float-order differences of one ulp anywhere (summation
order, exp implementation) flip some roundings, and the flips grow layer by layer.  Our
logits and llama.cpp's are then both ~0.7 away from an exact float64 evaluation of the
same weights and ~1 away from each other.  To test our arithmetic tightly we also record:
  * greedy_f32.json / greedy_f32_logits0.f32: the same model with every weight
    dequantized to F32 (no activation quantization anywhere: only float rounding);
  * cut1_logits0.f32: the Q4_1 model cut to its first layer (one layer of quantized
    matmuls, before rounding flips can compound).
The C tests derive both variants from the Q4_1 file in memory.
"""
import argparse
import json
import os
import sys
import tempfile

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


def write_variant(src_path, dst_path, n_layers=None, to_f32=False):
    """The Q4_1 file with fewer layers and/or every tensor dequantized to F32."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, GGMLQuantizationType
    from gguf.quants import dequantize
    r = GGUFReader(src_path)
    w = GGUFWriter(dst_path, "llama")
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        t = f.types[0]
        if k == "llama.block_count" and n_layers is not None:
            w.add_uint32(k, n_layers)
        elif t == GGUFValueType.STRING:
            w.add_string(k, bytes(f.parts[f.data[0]]).decode())
        elif t == GGUFValueType.ARRAY and f.types[1] == GGUFValueType.STRING:
            w.add_array(k, [bytes(f.parts[i]).decode("utf-8", "surrogateescape") for i in f.data])
        elif t == GGUFValueType.ARRAY:
            w.add_array(k, [f.parts[i].tolist()[0] for i in f.data])
        elif t == GGUFValueType.UINT32:
            w.add_uint32(k, int(f.parts[f.data[0]][0]))
        elif t == GGUFValueType.FLOAT32:
            w.add_float32(k, float(f.parts[f.data[0]][0]))
        elif t == GGUFValueType.BOOL:
            w.add_bool(k, bool(f.parts[f.data[0]][0]))
        else:
            raise SystemExit(f"unexpected metadata type for {k}")
    for t in r.tensors:
        if n_layers is not None and t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layers:
            continue
        if to_f32 and t.tensor_type != GGMLQuantizationType.F32:
            shape = [int(x) for x in reversed(t.shape.tolist())]
            w.add_tensor(t.name, dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape))
        else:
            raw = np.array(t.data)
            w.add_tensor(t.name, raw, raw_shape=raw.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def greedy(model, cases_in, n_gen, n_full, tmpl=None, n_batch=2048):
    """llama.cpp greedy decoding of each prompt; returns (cases, full first-step logits).
    n_batch: prompt tokens per forward pass (the golden files: the whole prompt at once)."""
    llm = Llama(model_path=model, n_ctx=2048, n_batch=n_batch, n_ubatch=n_batch, n_threads=2,
                n_threads_batch=2, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False,
                logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()
    cases, full = [], []
    for qi, (cid, prompt) in enumerate(cases_in):
        llm.reset()
        llm.eval(prompt)
        gen, top2 = [], []
        for step in range(n_gen):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).astype(np.float32).copy()
            if step == 0 and qi < n_full:
                full.append(logits)
            order = np.argsort(-logits, kind="stable")
            tok = int(order[0])
            top2.append([int(order[0]), float(logits[order[0]]), int(order[1]), float(logits[order[1]])])
            gen.append(tok)
            if step + 1 < n_gen:
                llm.eval([tok])
        cases.append({"id": cid, "prompt_ids": [int(t) for t in prompt], "gen_ids": gen, "top2": top2})
        print(f"{model}: {qi + 1}/{len(cases_in)} id={cid} prompt={len(prompt)} tokens", file=sys.stderr)
    return cases, full


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--prompts", default=os.path.join(ROOT, "..", "shared", "data", "eval-mt_bench.jsonl"))
    ap.add_argument("--out", default=os.path.join(HERE, "data"))
    a = ap.parse_args()


    llm = Llama(model_path=a.model, n_ctx=2048, vocab_only=True, verbose=False)
    tmpl = llm.metadata["tokenizer.chat_template"]
    bos = llm.detokenize([llm.token_bos()], special=True).decode()
    eos = llm.detokenize([llm.token_eos()], special=True).decode()
    rows = [json.loads(l) for l in open(a.prompts, encoding="utf-8")][:N_PROMPTS]
    prompts = []
    for row in rows:
        text = render(tmpl, [{"role": "user", "content": row["turns"][0]}], bos, eos)
        prompts.append((row["id"], llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)))
    del llm
    os.makedirs(a.out, exist_ok=True)

    def save(name, cases, full, what):
        meta = {"model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                "variant": what,
                "reference": "llama.cpp via llama-cpp-python 0.3.36, 2 threads, F32 KV, no flash attention",
                "n_gen": len(cases[0]["gen_ids"]) if cases else 0, "full_logits_file": name + "_logits0.f32",
                "full_logits_cases": len(full), "cases": cases}
        if cases:
            with open(os.path.join(a.out, name + ".json"), "w") as f:
                json.dump(meta, f, separators=(",", ":"))
        np.stack(full).astype("<f4").tofile(os.path.join(a.out, name + "_logits0.f32"))

    cases, full = greedy(a.model, prompts, N_GEN, N_FULL_LOGITS)
    save("greedy", cases, full, "the Q4_1 file as it is")

    tmpdir = tempfile.mkdtemp()
    f32_path = os.path.join(tmpdir, "f32.gguf")
    write_variant(a.model, f32_path, to_f32=True)
    cases, full = greedy(f32_path, prompts, N_GEN, N_FULL_LOGITS)
    save("greedy_f32", cases, full, "every tensor dequantized to F32")
    os.unlink(f32_path)

    cut_path = os.path.join(tmpdir, "cut1.gguf")
    write_variant(a.model, cut_path, n_layers=1)
    _, full = greedy(cut_path, prompts[:N_FULL_LOGITS], 1, N_FULL_LOGITS)
    np.stack(full).astype("<f4").tofile(os.path.join(a.out, "cut1_logits0.f32"))
    os.unlink(cut_path)
    print("wrote greedy*.json, greedy*_logits0.f32, cut1_logits0.f32", file=sys.stderr)

if __name__ == "__main__":
    main()

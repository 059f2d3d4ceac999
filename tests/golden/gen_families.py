#!/usr/bin/env python3
"""llama.cpp's greedy decoding of the tiny random-weight models of every family and RoPE variant.

Run:  $(tests/golden/setup-venv.sh) tests/golden/gen_families.py [--build BUILD]
(it builds BUILD/tests/test_families first; BUILD as the Makefile's, default build)

The models come from ppd's own generator (tests/unit/family_model.c, run through
`test_families --write`), so the C test can rebuild each file bit for bit from its
seed and check its SHA-256.  For each variant this script:
  1. picks the first seed (from --seed-start) for which llama.cpp's greedy decoding
     of all prompts never meets a near tie (top-2 logit gap >= --min-gap at every
     step), so that float summation order cannot decide a token;
  2. checks that llama.cpp reads the variant as meant (its printed hyper-parameters);
  3. checks llama.cpp's first-step logits against a float64 NumPy evaluation written
     here from the GGUF semantics (RoPE layouts, rope_freqs, linear and YaRN scaling,
     q/k/v biases, q/k head norms), and that turning the variant's feature off in
     that evaluation moves the logits far past the test's bound (so the feature is
     visible in the test);
  4. records the 64 greedy ids per prompt, llama.cpp's logit of each chosen token and
     its gap to the runner-up, and the full first-step logits of the longest prompt.
Prompts: the 24 token-id sequences of greedy_f32.json (so no tokenizer is involved).
llama.cpp settings as gen_greedy.py: 2 threads, the prompt in one batch, F32 K/V cache,
no flash attention, not stopping at end of turn.

Output: tests/golden/data/families.json and families_logits0.f32 (float32, one row
of n_vocab per variant, in the JSON's variant order).
"""
import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader, GGUFValueType
from llama_cpp import Llama

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
N_GEN = 64
GGML_TYPE_F32 = 0
VARIANTS = ["llama", "llama3-rope", "llama-linear", "qwen2", "qwen2-yarn", "qwen3"]

# What llama.cpp must print for each variant (print_info lines, spaces collapsed).
EXPECT = {
    "llama": ["arch = llama", "n_head_kv = 4", "n_rot = 16", "rope type = 0", "freq_base_train = 10000.0",
              "freq_scale_train = 1"],
    "llama3-rope": ["arch = llama", "n_head_kv = 2", "rope type = 0", "freq_base_train = 500000.0",
                    "freq_scale_train = 1"],
    "llama-linear": ["arch = llama", "n_head_kv = 1", "rope type = 0", "rope scaling = linear",
                     "freq_scale_train = 0.25"],
    "qwen2": ["arch = qwen2", "n_head_kv = 2", "rope type = 2", "freq_base_train = 1000000.0",
              "freq_scale_train = 1"],
    "qwen2-yarn": ["arch = qwen2", "rope type = 2", "rope scaling = yarn", "freq_scale_train = 0.25",
                   "n_ctx_orig_yarn = 128"],
    "qwen3": ["arch = qwen3", "n_head_kv = 2", "n_embd_head_k = 32", "n_embd_head_v = 32", "n_rot = 32",
              "rope type = 2"],
}
# The variant's own feature, turned off in the NumPy evaluation to show the logits depend on it.
FEATURE_OFF = {
    "llama": {"neox": True},           # the other pair layout
    "llama3-rope": {"freq_factors": False},
    "llama-linear": {"scaling": None},
    "qwen2": {"biases": False},
    "qwen2-yarn": {"scaling": "linear"},   # no YaRN ramp nor magnitude
    "qwen3": {"head_norms": False},
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_model(binary, variant, seed, path, source):
    out = subprocess.run([binary, "--write", path, "--variant", variant, "--seed", str(seed), "--source", source],
                         check=True, capture_output=True, text=True).stdout
    return out.split()[0]


def llama_reads(path, variant):
    """llama.cpp's printed hyper-parameters must be the variant's."""
    code = ("from llama_cpp import Llama\n"
            f"Llama(model_path={path!r}, n_ctx=512, verbose=True)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = {re.sub(r"\s+", " ", l.split("print_info:", 1)[1]).strip()
             for l in (p.stdout + p.stderr).splitlines() if "print_info:" in l}
    missing = [e for e in EXPECT[variant] if e not in lines]
    if p.returncode or missing:
        raise SystemExit(f"{variant}: llama.cpp does not read the file as meant: missing {missing}\n"
                         + "\n".join(sorted(lines)))


def greedy(path, prompts, min_gap):
    """llama.cpp's greedy decoding; None at the first step whose top-2 gap is under min_gap."""
    llm = Llama(model_path=path, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False, logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()
    gens, tops, gaps, first = [], [], [], []
    for pi, prompt in enumerate(prompts):
        llm.reset()
        llm.eval(prompt)
        gen, top, gap = [], [], []
        for step in range(N_GEN):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).astype(np.float32).copy()
            if step == 0:
                first.append(logits.copy())
            tok = int(np.argmax(logits))
            l1 = float(logits[tok])
            logits[tok] = -np.inf
            g = l1 - float(logits.max())
            if g < min_gap:
                print(f"  near tie: prompt {pi} step {step}: gap {g:.2e}", file=sys.stderr)
                return None
            gen.append(tok)
            top.append(round(l1, 5))
            gap.append(round(g, 5))
            if step + 1 < N_GEN:
                llm.eval([tok])
        gens.append(gen)
        tops.append(top)
        gaps.append(gap)
    del llm
    return gens, tops, gaps, first


# ---- a float64 evaluation of the GGUF semantics, independent of llama.cpp and ppd ----

def meta(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    if f.types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    return f.parts[f.data[0]][0].item()


def rope(x, pos, n_rot, base, neox, ff, freq_scale, yarn, n_ctx_orig):
    """x: [T, H, D] rotated in place over its first n_rot dims, as ggml's rope_yarn does."""
    half = n_rot // 2
    i = np.arange(half, dtype=np.float64)
    theta_extrap = pos[:, None].astype(np.float64) * base ** (-2.0 * i / n_rot)
    if ff is not None:
        theta_extrap = theta_extrap / ff[None, :]
    theta = freq_scale * theta_extrap
    mscale = 1.0
    if yarn:
        def corr_dim(n_rotations):
            return n_rot * math.log(n_ctx_orig / (n_rotations * 2 * math.pi)) / (2 * math.log(base))
        low = max(0.0, math.floor(corr_dim(32.0)))
        high = min(n_rot - 1.0, math.ceil(corr_dim(1.0)))
        ramp = 1.0 - np.clip((i - low) / max(0.001, high - low), 0.0, 1.0)
        theta = theta * (1 - ramp) + theta_extrap * ramp
        mscale = 1.0 + 0.1 * math.log(1.0 / freq_scale)
    c, s = np.cos(theta)[:, None, :] * mscale, np.sin(theta)[:, None, :] * mscale
    if neox:
        a, b = x[..., :half].copy(), x[..., half:n_rot].copy()
        x[..., :half], x[..., half:n_rot] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., 0:n_rot:2].copy(), x[..., 1:n_rot:2].copy()
        x[..., 0:n_rot:2], x[..., 1:n_rot:2] = a * c - b * s, a * s + b * c


def reference_logits(path, prompt, neox=None, freq_factors=True, scaling="file", biases=True, head_norms=True):
    """Last-position logits of the prompt in float64; the keyword arguments turn features off."""
    r = GGUFReader(path)
    t = {x.name: np.array(x.data, dtype=np.float64) for x in r.tensors}
    a = meta(r, "general.architecture")
    n_embd, n_head = meta(r, f"{a}.embedding_length"), meta(r, f"{a}.attention.head_count")
    n_head_kv, n_layer = meta(r, f"{a}.attention.head_count_kv"), meta(r, f"{a}.block_count")
    hd = meta(r, f"{a}.attention.key_length", n_embd // n_head)
    n_rot = meta(r, f"{a}.rope.dimension_count", hd)
    base, eps = meta(r, f"{a}.rope.freq_base"), meta(r, f"{a}.attention.layer_norm_rms_epsilon")
    kind = meta(r, f"{a}.rope.scaling.type") if scaling == "file" else scaling
    factor = meta(r, f"{a}.rope.scaling.factor", 1.0)
    freq_scale = 1.0 / factor if kind in ("linear", "yarn") else 1.0
    n_ctx_orig = meta(r, f"{a}.rope.scaling.original_context_length", meta(r, f"{a}.context_length"))
    ff = t.get("rope_freqs.weight") if freq_factors else None
    if neox is None:
        neox = a != "llama"

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    n = len(prompt)
    pos = np.arange(n)
    x = t["token_embd.weight"][prompt]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(n_layer):
        p = f"blk.{l}."
        xn = rms(x, t[p + "attn_norm.weight"])
        q, k, v = (xn @ t[p + m + ".weight"].T for m in ("attn_q", "attn_k", "attn_v"))
        if biases and p + "attn_q.bias" in t:
            q, k, v = q + t[p + "attn_q.bias"], k + t[p + "attn_k.bias"], v + t[p + "attn_v.bias"]
        q, k, v = q.reshape(n, n_head, hd), k.reshape(n, n_head_kv, hd), v.reshape(n, n_head_kv, hd)
        if head_norms and p + "attn_q_norm.weight" in t:
            q, k = rms(q, t[p + "attn_q_norm.weight"]), rms(k, t[p + "attn_k_norm.weight"])
        rope(q, pos, n_rot, base, neox, ff, freq_scale, kind == "yarn", n_ctx_orig)
        rope(k, pos, n_rot, base, neox, ff, freq_scale, kind == "yarn", n_ctx_orig)
        out = np.empty((n, n_head, hd))
        for h in range(n_head):
            kh = h // (n_head // n_head_kv)
            s = q[:, h, :] @ k[:, kh, :].T / math.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, h, :] = (s / s.sum(-1, keepdims=True)) @ v[:, kh, :]
        x = x + out.reshape(n, n_head * hd) @ t[p + "attn_output.weight"].T
        xn = rms(x, t[p + "ffn_norm.weight"])
        g, u = xn @ t[p + "ffn_gate.weight"].T, xn @ t[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ t[p + "ffn_down.weight"].T
    return rms(x[-1], t["output_norm.weight"]) @ t.get("output.weight", t["token_embd.weight"]).T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("BUILD", "build"), help="the Makefile's BUILD directory")
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"),
                    help="the file whose tokenizer.* keys the models carry")
    ap.add_argument("--out", default=os.path.join(HERE, "data"))
    ap.add_argument("--seed-start", type=int, default=1)
    ap.add_argument("--min-gap", type=float, default=1e-3)
    a = ap.parse_args()

    binary = os.path.join(a.build, "tests", "test_families")
    subprocess.run(["make", "--no-print-directory", f"BUILD={a.build}", binary], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, binary)
    golden = json.load(open(os.path.join(HERE, "data", "greedy_f32.json")))
    prompts = [c["prompt_ids"] for c in golden["cases"]]
    logits_prompt = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    tmp = tempfile.mkdtemp()
    out = {"reference": "llama.cpp via llama-cpp-python 0.3.36, 2 threads, F32 KV, no flash attention",
           "generator": "tests/unit/family_model.c", "prompts_from": "greedy_f32.json",
           "source_model_sha256": sha256(a.model), "n_gen": N_GEN, "min_gap": a.min_gap,
           "logits_prompt": logits_prompt, "logits_file": "families_logits0.f32", "prompts": prompts,
           "variants": []}
    rows = []
    for variant in VARIANTS:
        path = os.path.join(tmp, variant + ".gguf")
        for seed in range(a.seed_start, a.seed_start + 200):
            digest = write_model(binary, variant, seed, path, a.model)
            print(f"{variant}: seed {seed}", file=sys.stderr)
            res = greedy(path, prompts, a.min_gap)
            if res:
                break
        else:
            raise SystemExit(f"{variant}: no seed without a near tie")
        gens, tops, gaps, first = res
        llama_reads(path, variant)
        ours = first[logits_prompt]
        sd = float(ours.std())
        bound = 1e-3 * sd
        ref = reference_logits(path, prompts[logits_prompt])
        ref_diff = float(np.abs(ref - ours).max())
        off_diff = float(np.abs(reference_logits(path, prompts[logits_prompt], **FEATURE_OFF[variant]) - ours).max())
        print(f"{variant}: seed {seed}, logit sd {sd:.3f}, min gap {min(min(g) for g in gaps):.2e}; "
              f"llama.cpp vs float64 reference {ref_diff:.2e}, with {FEATURE_OFF[variant]} {off_diff:.2e}",
              file=sys.stderr)
        if not ref_diff <= bound:
            raise SystemExit(f"{variant}: llama.cpp is {ref_diff:.2e} from the float64 reference (bound {bound:.1e})")
        if not off_diff > 100 * bound:
            raise SystemExit(f"{variant}: the feature {FEATURE_OFF[variant]} changes the logits by only {off_diff:.2e}")
        out["variants"].append({"name": variant, "seed": seed, "sha256": digest, "logit_sd": round(sd, 4),
                                "min_gap": round(min(min(g) for g in gaps), 5),
                                "float64_reference_max_diff": float(f"{ref_diff:.3e}"),
                                "feature_off": FEATURE_OFF[variant], "feature_off_max_diff": round(off_diff, 4),
                                "gen": gens, "top_logit": tops, "gap": gaps})
        rows.append(ours)
        os.unlink(path)
    os.rmdir(tmp)
    with open(os.path.join(a.out, "families.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
    np.stack(rows).astype("<f4").tofile(os.path.join(a.out, "families_logits0.f32"))
    print("wrote families.json, families_logits0.f32", file=sys.stderr)


if __name__ == "__main__":
    main()

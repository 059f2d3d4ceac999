#!/usr/bin/env python3
"""gen_peft_adapter.py -- tiny PPD adapters in the paper's PEFT layout, written
by the real `safetensors` package, for `ppd adapter import` (engine/ppd/ppd_import.c)
and the safetensors reader (engine/load/safetensors.c).

Each directory under tests/golden/data/peft/ is what PEFT's save_pretrained
leaves for a PPD PromptConfig: adapter_model.safetensors (one tensor,
`prompt_embeddings` [N*V, H]) and adapter_config.json (the PEFT
prompt-tuning fields plus PPD's; docs/ppd.md).  H = 576, SmolLM2-135M's
hidden size, so the C test can import them for the default model.

  f32/   N=3 V=1 F32   config as PEFT writes it (peft_type PROMPT_TUNING)
  f16/   N=3 V=1 F16   vt_attention_type "decoder"
  bf16/  N=3 V=1 BF16  no peft_type (the PPD loader deletes it from the file)
  v2/    N=3 V=2 F16   aggregation "mean": rows (i, 0) are f16/'s rows, rows
                       (i, 1) their negation (row r = i*V + j)

expected.f32 in f32/, f16/ and bf16/ holds the f32 values the importer must
produce (row-major [3, 576], little-endian), computed here in numpy: the F16
values widened by numpy, the BF16 ones by shifting the 16 bits up.  The values
include -0, F16 subnormals, F32/BF16 subnormals and rounding ties.

Usage: python tests/golden/gen_peft_adapter.py  (needs numpy and safetensors)
"""
import json
import os

import numpy as np
import safetensors
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "peft")
N, H = 3, 576


def base_values():
    rng = np.random.default_rng(20240603)
    x = (rng.standard_normal((N, H)) * 0.02).astype(np.float32)
    special = [
        -0.0,
        65504.0,            # F16 max
        -60000.0,
        6.0e-8,             # F16 subnormal (2^-24 ~ 5.96e-8)
        1.0e-5,             # F16 subnormal
        -3.1e-5,            # F16 subnormal
        1.0e-39,            # F32 (and BF16) subnormal, F16 zero
        -2.5e-38,
        1.0009765625,       # 1 + 2^-10: exact in F16, BF16 rounds it
        1.00390625,         # 1 + 2^-8: BF16 tie, rounds to even (1.0)
        1.01171875,         # 1 + 3*2^-8: BF16 tie, rounds to even (1.015625)
        0.1,
        -1.0 / 3.0,
    ]
    x[0, : len(special)] = np.array(special, dtype=np.float32)
    x[2, H - 4 :] = np.array([1.5, -2.75, 1e-3, -7e-4], dtype=np.float32)
    return x


def to_bf16_bits(x):
    """Round-to-nearest-even F32 -> BF16, as torch does for finite values."""
    u = x.view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype(np.uint16)


def config(n, v, **extra):
    c = {
        "aggregation_type": "mean",
        "auto_mapping": None,
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "inference_mode": True,
        "num_attention_heads": 9,
        "num_exits": 1,
        "num_layers": 30,
        "num_special_tokens": n,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": n * v,
        "peft_type": "PROMPT_TUNING",
        "prefix_virtual_tokens": None,
        "prompt_tuning_init": "TEXT",
        "prompt_tuning_init_text": "Next 2 word",
        "revision": None,
        "task_type": "CAUSAL_LM",
        "token_dim": H,
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
        "use_cache": True,
        "use_custom_lm_head": False,
        "use_prefix_tuning": False,
        "virtual_tokens_per_special_token": v,
        "vt_attention_type": "ensemble",
    }
    c.update(extra)
    return {k: c[k] for k in sorted(c) if c[k] != "__drop__"}


def write_dir(name, tensor_writer, cfg, expected):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tensor_writer(os.path.join(d, "adapter_model.safetensors"))
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    if expected is not None:
        expected.astype("<f4").tofile(os.path.join(d, "expected.f32"))


def main():
    meta = {"format": "pt"}
    x = base_values()
    h16 = x.astype(np.float16)
    assert np.all(np.isfinite(h16))
    b16 = to_bf16_bits(x)

    write_dir("f32", lambda p: save_file({"prompt_embeddings": x}, p, metadata=meta), config(N, 1), x)
    write_dir("f16", lambda p: save_file({"prompt_embeddings": h16}, p, metadata=meta),
              config(N, 1, vt_attention_type="decoder"), h16.astype(np.float32))

    # numpy has no bfloat16: hand safetensors the raw 16-bit words with dtype "bfloat16".
    def write_bf16(p):
        buf = np.ascontiguousarray(b16)
        spec = safetensors.TensorSpec(dtype="bfloat16", shape=[N, H], data_ptr=buf.ctypes.data, data_len=buf.nbytes)
        safetensors.serialize_file({"prompt_embeddings": spec}, p, metadata=meta)

    bf16_f32 = (b16.astype(np.uint32) << 16).view(np.float32)
    write_dir("bf16", write_bf16, config(N, 1, peft_type="__drop__"), bf16_f32)

    v2 = np.empty((N * 2, H), dtype=np.float16)
    v2[0::2] = h16
    v2[1::2] = -h16
    write_dir("v2", lambda p: save_file({"prompt_embeddings": v2}, p, metadata=meta), config(N, 2), None)

    # Read everything back through the real reader: what the C test will check.
    from safetensors.numpy import load_file
    assert np.array_equal(load_file(os.path.join(OUT, "f32", "adapter_model.safetensors"))["prompt_embeddings"].view(np.uint32),
                          x.view(np.uint32))
    assert np.array_equal(load_file(os.path.join(OUT, "f16", "adapter_model.safetensors"))["prompt_embeddings"].view(np.uint16),
                          h16.view(np.uint16))
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT}: {total} bytes; f16 max |x - f16(x)| = {np.max(np.abs(x - h16.astype(np.float32))):.3g}, "
          f"bf16 max |x - bf16(x)| = {np.max(np.abs(x - bf16_f32)):.3g}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The default model in the quantization types users download, made by llama.cpp's own
quantizer (llama_model_quantize, what the llama-quantize tool runs).

Run:  $(tests/golden/setup-venv.sh) scripts/requantize.py [--model FILE] [--out DIR] [TYPE ...]

The source is the model with every tensor dequantized to F32 (so each type is quantized
from the same values); TYPE is a llama.cpp file type name (Q4_K_M, Q5_K_M, Q6_K, Q3_K_M,
Q2_K, Q5_0, Q5_1, IQ4_NL, IQ4_XS, Q8_0, Q4_0, Q4_1, F16, BF16; default: all of them).
llama.cpp itself decides each tensor's type: rows whose length is not a multiple of 256
fall back to Q5_0, Q5_1, Q8_0 or IQ4_NL, so one file holds several types.
"""
import argparse
import os
import sys

import llama_cpp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
from gen_greedy import write_variant  # noqa: E402

TYPES = ["Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS",
         "Q8_0", "Q4_0", "Q4_1", "F16", "BF16"]


def ftype_of(name):
    attr = "LLAMA_FTYPE_MOSTLY_" + name
    if not hasattr(llama_cpp, attr):
        raise SystemExit(f"unknown type {name} (llama_cpp has no {attr})")
    return getattr(llama_cpp, attr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "quants"))
    ap.add_argument("types", nargs="*", default=TYPES)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    base = os.path.basename(a.model).split(".")[0]
    src = os.path.join(a.out, f"{base}.F32.gguf")
    if not os.path.exists(src):
        write_variant(a.model, src, to_f32=True)
    for name in a.types:
        dst = os.path.join(a.out, f"{base}.{name}.gguf")
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = ftype_of(name)
        p.nthread = os.cpu_count() or 1
        rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
        if rc != 0:
            raise SystemExit(f"{name}: llama_model_quantize returned {rc}")
        print(dst)


if __name__ == "__main__":
    main()

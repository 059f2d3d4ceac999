#!/usr/bin/env python3
"""Activation quantization bytes (Q8_0, Q8_1, Q8_K) produced by llama.cpp's CPU backend.

Run:  $(tests/golden/setup-venv.sh) tests/golden/gen_act_quant.py

Our matmuls quantize their float inputs to 8-bit blocks exactly as llama.cpp does
before its quantized dot products, so that greedy decoding can match llama.cpp
token for token.  This script feeds fixed inputs through the quantizers that
llama.cpp's CPU backend itself uses (ggml_get_type_traits_cpu(type)->from_float,
i.e. the AVX2 quantize_row_q8_0 / quantize_row_q8_1 and quantize_row_q8_K on
this kind of machine) and records input and output bytes in
tests/golden/data/act_quant.bin; tests/unit/test_matmul.c requires our
kq_act_quantize to produce the same bytes.

The inputs include rounding ties (x*127/amax exactly k+0.5), where llama.cpp's
AVX2 quantizer (round half to even) and its scalar reference (roundf, half away
from zero) disagree: the file records what the x86 build does.

File format (little-endian): b"PPDAQ1\\0\\0", uint32 n_sections, then per section
int32 act_type (GGML id: 8 Q8_0, 9 Q8_1, 15 Q8_K), int32 n_rows, int32 n_in,
float32 x[n_rows*n_in], then the n_rows quantized rows (GGUF block layout).
"""
import ctypes
import glob
import os
import struct

import numpy as np
import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "data", "act_quant.bin")

Q8_0, Q8_1, Q8_K = 8, 9, 15
BLOCK = {Q8_0: (32, 34), Q8_1: (32, 36), Q8_K: (256, 292)}


class TraitsCPU(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


FromFloat = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64)


def load_ggml_cpu():
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    ctypes.CDLL(glob.glob(os.path.join(libdir, "libggml-base.so*"))[0], mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(glob.glob(os.path.join(libdir, "libggml-cpu.so*"))[0], mode=ctypes.RTLD_GLOBAL)
    cpu.ggml_cpu_init.restype = None
    cpu.ggml_cpu_init()
    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(TraitsCPU)
    cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]
    for f in ("ggml_cpu_has_avx2", "ggml_cpu_has_f16c"):
        getattr(cpu, f).restype = ctypes.c_int
        if not getattr(cpu, f)():
            raise SystemExit(f"llama.cpp built without {f[13:]}: not the x86 AVX2 build the tests expect")
    return cpu


def quantize(cpu, act_type, x):
    fn = FromFloat(cpu.ggml_get_type_traits_cpu(act_type).contents.from_float)
    qk, bb = BLOCK[act_type]
    n_rows, n_in = x.shape
    out = bytearray()
    for r in range(n_rows):
        row = np.ascontiguousarray(x[r], dtype=np.float32)
        buf = ctypes.create_string_buffer(n_in // qk * bb)  # zeroed: Q8_K leaves bsums of a zero block unset
        fn(row.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ctypes.cast(buf, ctypes.c_void_p), n_in)
        out += buf.raw
    return bytes(out)


def inputs(n_in, qk, seed):
    rng = np.random.default_rng(seed)
    rows = []
    rows.append(rng.standard_normal(n_in))                                   # plain
    r = rng.standard_normal(n_in) * 50.0                                     # outliers
    r[rng.integers(0, n_in, n_in // 40)] *= 30.0
    rows.append(r)
    # ties: per block one element of magnitude 31.75 (127/amax = 4 exactly, and
    # for Q8_K iscale = -127/-31.75 = 4), the rest (k + 0.5) / 4, so x*scale = k + 0.5
    r = (rng.integers(-120, 120, n_in) + 0.5) / 4.0
    r[::qk] = -31.75
    rows.append(r)
    r = rng.standard_normal(n_in) * 1e-6                                     # tiny, and a zero block
    r[qk:2 * qk] = 0.0
    rows.append(r)
    rows.append(rng.uniform(-1.0, 1.0, n_in))
    rows.append(rng.standard_normal(n_in) * np.exp(rng.standard_normal(n_in)))  # per-channel scales
    return np.array(rows, dtype=np.float32)


def main():
    cpu = load_ggml_cpu()
    sections = []
    x32 = inputs(576, 32, 1)
    sections.append((Q8_0, x32))
    sections.append((Q8_1, x32))
    sections.append((Q8_K, inputs(512, 256, 2)))
    blob = bytearray(b"PPDAQ1\0\0")
    blob += struct.pack("<I", len(sections))
    for act_type, x in sections:
        blob += struct.pack("<iii", act_type, x.shape[0], x.shape[1])
        blob += x.astype("<f4").tobytes()
        blob += quantize(cpu, act_type, x)
    with open(OUT, "wb") as f:
        f.write(blob)
    print(f"wrote {OUT} ({len(blob)} bytes)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Weight blocks of every quantized type ppd reads, and their values as the gguf
Python package dequantizes them.

Run:  $(tests/golden/setup-venv.sh) tests/golden/gen_dequant.py

For each type: random bytes for a few blocks, with the f16 scale fields replaced by
finite random halves (any bit pattern of the other fields is a valid block), then
gguf.quants.dequantize.  tests/unit/test_matmul.c requires kq_weight_row_f32 to give
the same floats bit for bit.

File format (little-endian): b"PPDDQ1\\0\\0", uint32 n_sections, then per section
int32 type (GGML id), int32 n_elems, the row's bytes (GGUF block layout), float32
values[n_elems].
"""
import os
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "data", "dequant.bin")

# type: (block elems, block bytes, byte offsets of its f16 fields, scale of those fields)
TYPES = {
    T.Q4_0: (32, 18, [0], 0.05),
    T.Q4_1: (32, 20, [0, 2], 0.05),
    T.Q5_0: (32, 22, [0], 0.05),
    T.Q5_1: (32, 24, [0, 2], 0.05),
    T.Q8_0: (32, 34, [0], 0.01),
    T.IQ4_NL: (32, 18, [0], 0.002),
    T.Q2_K: (256, 84, [80, 82], 0.01),
    T.Q3_K: (256, 110, [108], 0.01),
    T.Q4_K: (256, 144, [0, 2], 0.01),
    T.Q5_K: (256, 176, [0, 2], 0.01),
    T.Q6_K: (256, 210, [208], 0.001),
    T.IQ4_XS: (256, 136, [0], 0.001),
}
N_BLOCKS = 3


def main():
    rng = np.random.default_rng(20261205)
    sections = []
    for t, (elems, nbytes, halves, scale) in TYPES.items():
        raw = rng.integers(0, 256, size=(N_BLOCKS, nbytes), dtype=np.uint8)
        for b in range(N_BLOCKS):
            for off in halves:
                h = np.float16(scale * rng.uniform(-1.0, 1.0))
                raw[b, off:off + 2] = np.frombuffer(h.tobytes(), dtype=np.uint8)
        values = quants.dequantize(raw.reshape(-1), t).astype(np.float32).reshape(-1)
        assert values.size == N_BLOCKS * elems and np.all(np.isfinite(values))
        sections.append(struct.pack("<ii", int(t), N_BLOCKS * elems) + raw.tobytes() + values.tobytes())
    with open(OUT, "wb") as f:
        f.write(b"PPDDQ1\0\0" + struct.pack("<I", len(sections)) + b"".join(sections))
    print(f"{OUT}: {len(sections)} types")


if __name__ == "__main__":
    main()

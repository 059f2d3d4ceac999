/* swiglu.cu — out = silu(gate) * up elementwise: the twin of kq_swiglu (the
 * CPU's exp is its own polynomial; here expf, within 2 ulp of it).
 * With out16 it also writes out as f16 (as kc_f32_to_f16 would): the down
 * projection's input.  It does not compute the gate or up projections.
 */
#include <cuda_fp16.h>

#include "kernels/cuda/kcuda.h"

static __global__ void swiglu_elems(const float *gate, const float *up, int64_t n, float *out, uint16_t *out16) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        const float y = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[i]);
        out[i] = y;
        if (out16) out16[i] = __half_as_ushort(__float2half_rn(y));
    }
}

extern "C" void kc_swiglu(const float *gate, const float *up, int n_tok, int n, float *out, uint16_t *out16,
                          cudaStream_t st) {
    const int64_t total = (int64_t)n_tok * n;
    if (total < 1) return;
    const int64_t blocks = (total + 255) / 256;
    swiglu_elems<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, st>>>(gate, up, total, out, out16);
}

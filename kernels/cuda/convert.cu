/* convert.cu — f32 activations to f16 for the cuBLAS products (round to
 * nearest even).  The twin of the CPU's activation quantization (quant_act.c):
 * one conversion of the input shared by every weight that reads it.
 */
#include <cuda_fp16.h>

#include "kernels/cuda/kcuda.h"

static __global__ void f32_to_f16_elems(const float *x, int64_t n, uint16_t *out) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = __half_as_ushort(__float2half_rn(x[i]));
}

extern "C" void kc_f32_to_f16(const float *x, int64_t n, uint16_t *out, cudaStream_t st) {
    if (n < 1) return;
    const int64_t blocks = (n + 255) / 256;
    f32_to_f16_elems<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, st>>>(x, n, out);
}

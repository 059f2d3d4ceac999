/* rmsnorm.cu — RMSNorm of activation rows times the norm weight: the twin of
 * kq_rmsnorm_row.  One block of 256 threads per row; the sum of squares is
 * taken in double (as the CPU's) in a fixed tree, so a row's result depends on
 * the row alone.  With out16 it also writes the output as f16 (rounded to
 * nearest even, as kc_f32_to_f16): the input of the matrix products that
 * follow, one launch fewer.  It does not fuse anything else.
 */
#include <cuda_fp16.h>

#include "kernels/cuda/kcuda.h"

#define RMS_THREADS 256

static __global__ void rmsnorm_rows(const float *x, const float *w, int n, float eps, float *out, uint16_t *out16) {
    __shared__ double part[RMS_THREADS];
    const float *xr = x + (int64_t)blockIdx.x * n;
    float *o = out + (int64_t)blockIdx.x * n;
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += RMS_THREADS) s += (double)__fmul_rn(xr[i], xr[i]);
    part[threadIdx.x] = s;
    __syncthreads();
    for (int stride = RMS_THREADS / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) part[threadIdx.x] += part[threadIdx.x + stride];
        __syncthreads();
    }
    const float mean = (float)(part[0] / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    uint16_t *o16 = out16 ? out16 + (int64_t)blockIdx.x * n : NULL;
    for (int i = threadIdx.x; i < n; i += RMS_THREADS) {
        const float y = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
        o[i] = y;
        if (o16) o16[i] = __half_as_ushort(__float2half_rn(y));
    }
}

extern "C" void kc_rmsnorm(const float *x, const float *w, int n_tok, int n, float eps, float *out, uint16_t *out16,
                           cudaStream_t st) {
    if (n_tok < 1) return;
    rmsnorm_rows<<<n_tok, RMS_THREADS, 0, st>>>(x, w, n, eps, out, out16);
}

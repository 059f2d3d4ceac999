/* add.cu — the residual add x += y (the twin of kq_add), the bias add and the
 * deep-prompt rows. */
#include "kernels/cuda/kcuda.h"

static __global__ void add_elems(float *x, const float *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = __fadd_rn(x[i], y[i]);
}

/* x[r] += rows[map[r]] where map[r] >= 0: one block per batch row. */
static __global__ void add_mapped_rows(float *x, const int32_t *map, const float *rows, int n) {
    const int r = blockIdx.x, k = map[r];
    if (k < 0) return;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        x[(int64_t)r * n + j] = __fadd_rn(x[(int64_t)r * n + j], rows[(int64_t)k * n + j]);
}

extern "C" void kc_add_rows(float *x, const int32_t *map, int n_tok, const float *rows, int n, cudaStream_t st) {
    if (n_tok < 1) return;
    add_mapped_rows<<<(unsigned)n_tok, 256, 0, st>>>(x, map, rows, n);
}

extern "C" void kc_add(float *x, const float *y, int n_tok, int n, cudaStream_t st) {
    const int64_t total = (int64_t)n_tok * n;
    if (total < 1) return;
    const int64_t blocks = (total + 255) / 256;
    add_elems<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, st>>>(x, y, total);
}

static __global__ void add_bias_elems(float *x, const float *bias, int64_t total, int n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = __fadd_rn(x[i], bias[i % n]);
}

extern "C" void kc_add_bias(float *x, const float *bias, int n_tok, int n, cudaStream_t st) {
    const int64_t total = (int64_t)n_tok * n;
    if (total < 1) return;
    const int64_t blocks = (total + 255) / 256;
    add_bias_elems<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, st>>>(x, bias, total, n);
}

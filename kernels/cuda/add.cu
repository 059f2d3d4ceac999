/* add.cu — the residual add x += y: the twin of kq_add. */
#include "kernels/cuda/kcuda.h"

static __global__ void add_elems(float *x, const float *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = __fadd_rn(x[i], y[i]);
}

extern "C" void kc_add(float *x, const float *y, int n_tok, int n, cudaStream_t st) {
    const int64_t total = (int64_t)n_tok * n;
    if (total < 1) return;
    const int64_t blocks = (total + 255) / 256;
    add_elems<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, st>>>(x, y, total);
}

/* split.cu — the columns of a fused product's rows dealt out to its parts:
 * out[i][r][j] = src[r][offset_i + j], parts of width[i] side by side.  The
 * CUDA backend multiplies q/k/v (or gate/up) as one matrix (one product of
 * n_in x sum(width), nearer the memory bandwidth than three smaller ones) and
 * the forward pass wants the parts in their own buffers.
 */
#include "kernels/cuda/kcuda.h"

static __global__ void split_cols(const float *src, int total, struct kc_split parts) {
    const int64_t r = blockIdx.y;
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= total) return;
    const float v = src[r * total + j];
    /* Unrolled so every parts field is read at a constant index: indexed at
     * run time, the whole argument was copied to local memory per thread (a
     * 56-byte stack frame), which made this copy cost 25 us at 64 rows of a
     * 7B model's gate/up on an H200, near half the product itself. */
#pragma unroll
    for (int i = 0; i < KC_SPLIT_MAX; i++) {
        if (i < parts.n && j < parts.width[i]) {
            parts.out[i][r * parts.width[i] + j] = v;
            return;
        }
        j -= parts.width[i];
    }
}

/* One block row per batch row (at most 65535: the forward pass's batches are
 * far smaller), 256 columns a block. */
extern "C" void kc_split(const float *src, int n_tok, const struct kc_split *parts, cudaStream_t st) {
    int total = 0;
    for (int i = 0; i < parts->n; i++) total += parts->width[i];
    if (n_tok < 1 || total < 1) return;
    for (int r0 = 0; r0 < n_tok; r0 += 65535) {
        const int n = n_tok - r0 < 65535 ? n_tok - r0 : 65535;
        struct kc_split p = *parts;
        for (int i = 0; i < p.n; i++) p.out[i] += (size_t)r0 * (size_t)p.width[i];
        split_cols<<<dim3((unsigned)((total + 255) / 256), (unsigned)n), 256, 0, st>>>(src + (size_t)r0 * total, total, p);
    }
}

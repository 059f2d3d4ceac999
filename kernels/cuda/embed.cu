/* embed.cu — token rows of the f16 embedding table, or PPD prompt-token rows
 * of an f32 extra table, as f32 activations: the twin of cpu_embed.
 * One block per row.  It does not look at the vocabulary size (forward.c
 * checked the ids).
 */
#include <cuda_fp16.h>

#include "kernels/cuda/kcuda.h"

static __global__ void embed_rows(const uint16_t *table, int64_t n, const int32_t *ids, const float *extra,
                                  int n_extra, float *out) {
    const int r = blockIdx.x;
    const int32_t id = ids[r];
    float *o = out + (int64_t)r * n;
    if (id >= 0) {
        const uint16_t *t = table + (int64_t)id * n;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o[i] = __half2float(__ushort_as_half(t[i]));
    } else if (-1 - (int64_t)id < n_extra) {
        const float *e = extra + (-1 - (int64_t)id) * n;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o[i] = e[i];
    } else {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o[i] = 0.0f;
    }
}

extern "C" void kc_embed(const uint16_t *table, int64_t n, const int32_t *ids, int n_tok, const float *extra,
                         int n_extra, float *out, cudaStream_t st) {
    if (n_tok < 1) return;
    embed_rows<<<n_tok, 256, 0, st>>>(table, n, ids, extra, n_extra, out);
}

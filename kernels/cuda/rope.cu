/* rope.cu — RoPE on the q and k rows of a batch and the store of k and v into
 * the KV cache: the twin of cpu_rope_kv_store (kq_rope_angles + kq_rope_apply).
 * Angles by repeated multiplication as the CPU computes them (theta_i =
 * pos * base^(-2/n_rot)^i), then accurate cosf/sinf (no fast-math).  Both
 * pair layouts: GGUF llama's (2i, 2i+1) and NeoX's (i, i + n_rot/2).
 * One block per row.  It does not compute attention.
 */
#include "kernels/cuda/kcuda.h"

#define ROPE_MAX_PAIRS 128

static __global__ void rope_rows(float *q, float *k, const float *v, struct kc_batch b, struct kc_kv kv, int layer,
                                 int n_head, int n_head_kv, int head_dim, int n_rot, float theta_scale, int neox) {
    __shared__ float cs[2 * ROPE_MAX_PAIRS];
    const int r = blockIdx.x, half = n_rot / 2;
    if (threadIdx.x == 0) {
        float theta = (float)b.pos[r];
        for (int i = 0; i < half; i++) {
            cs[2 * i] = cosf(theta);
            cs[2 * i + 1] = sinf(theta);
            theta = __fmul_rn(theta, theta_scale);
        }
    }
    __syncthreads();
    const int q_dim = n_head * head_dim, kv_dim = n_head_kv * head_dim;
    float *qr = q + (int64_t)r * q_dim, *kr = k + (int64_t)r * kv_dim;
    const int n_pairs = (n_head + n_head_kv) * half;
    for (int t = threadIdx.x; t < n_pairs; t += blockDim.x) {
        const int h = t / half, i = t % half;
        float *hx = h < n_head ? qr + (int64_t)h * head_dim : kr + (int64_t)(h - n_head) * head_dim;
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const int a = neox ? i : 2 * i, bb = neox ? i + half : 2 * i + 1;
        const float x0 = hx[a], x1 = hx[bb];
        hx[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        hx[bb] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
    __syncthreads();
    const size_t off = (((size_t)layer * kv.n_slot + b.slot[r]) * kv.max_seq + b.kv_idx[r]) * (size_t)kv.kv_dim;
    const float *vr = v + (int64_t)r * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kv.k[off + i] = kr[i];
        kv.v[off + i] = vr[i];
    }
}

extern "C" void kc_rope_kv_store(float *q, float *k, const float *v, const struct kc_batch *b, const struct kc_kv *kv,
                                 int layer, int n_head, int n_head_kv, int head_dim, int n_rot, float freq_base,
                                 int neox, cudaStream_t st) {
    if (b->n_tok < 1) return;
    if (n_rot > 2 * ROPE_MAX_PAIRS) n_rot = 2 * ROPE_MAX_PAIRS;
    if (n_rot > head_dim) n_rot = head_dim;
    /* Same float expression as kq_rope_angles' theta_scale, on the host. */
    const float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    rope_rows<<<b->n_tok, 128, 0, st>>>(q, k, v, *b, *kv, layer, n_head, n_head_kv, head_dim, n_rot, theta_scale,
                                        neox);
}

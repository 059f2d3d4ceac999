/* rope.cu — RoPE on the q and k rows of a batch and the store of k and v into
 * the KV cache: the twin of cpu_rope_kv_store (kq_rope_angles + kq_rope_apply).
 * Angles by repeated multiplication as the CPU computes them (theta_i =
 * pos * base^(-2/n_rot)^i), then the same frequency factors, linear scaling
 * and YaRN ramp as kq_rope_angles, and accurate cosf/sinf (no fast-math).
 * Both pair layouts: GGUF llama's (2i, 2i+1) and NeoX's (i, i + n_rot/2).
 * Blocks of ROPE_HEADS heads of one row (grid: rows x head groups): each
 * block makes the row's angles (one thread runs the multiplication chain, then
 * all take cos/sin in parallel), rotates its heads, and stores the K and V
 * heads it holds.  One block per row with one thread making every cos/sin
 * took 22 us a layer for one 7B row on an H200 (now a few).  It does not
 * compute attention.
 */
#include "kernels/cuda/kcuda.h"

#define ROPE_MAX_PAIRS 128
#define ROPE_HEADS 4

static __global__ void rope_rows(float *q, float *k, const float *v, struct kc_batch b, struct kc_kv kv, int layer,
                                 int n_head, int n_head_kv, int head_dim, struct kc_rope rp) {
    const int n_rot = rp.n_rot, neox = rp.neox;
    const float theta_scale = rp.theta_scale;
    __shared__ float theta_sh[ROPE_MAX_PAIRS];
    __shared__ float cs[2 * ROPE_MAX_PAIRS];
    const int r = blockIdx.x, half = n_rot / 2, h0 = blockIdx.y * ROPE_HEADS;
    if (threadIdx.x == 0) {
        float theta = (float)b.pos[r];
        for (int i = 0; i < half; i++) {
            theta_sh[i] = theta;
            theta = __fmul_rn(theta, theta_scale);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float extrap = rp.freq_factors ? __fdiv_rn(theta_sh[i], rp.freq_factors[i]) : theta_sh[i];
        float t = __fmul_rn(rp.freq_scale, extrap);
        if (rp.ext_factor != 0.0f) {
            const float span = __fsub_rn(rp.corr1, rp.corr0);
            const float y = __fdiv_rn(__fsub_rn((float)i, rp.corr0), span > 0.001f ? span : 0.001f);
            const float ramp = __fmul_rn(__fsub_rn(1.0f, y < 0.0f ? 0.0f : y > 1.0f ? 1.0f : y), rp.ext_factor);
            t = __fadd_rn(__fmul_rn(t, __fsub_rn(1.0f, ramp)), __fmul_rn(extrap, ramp));
        }
        cs[2 * i] = __fmul_rn(cosf(t), rp.mscale);
        cs[2 * i + 1] = __fmul_rn(sinf(t), rp.mscale);
    }
    __syncthreads();
    const int q_dim = n_head * head_dim, kv_dim = n_head_kv * head_dim, n_h = n_head + n_head_kv;
    float *qr = q + (int64_t)r * q_dim, *kr = k + (int64_t)r * kv_dim;
    const int h_end = h0 + ROPE_HEADS < n_h ? h0 + ROPE_HEADS : n_h;
    const int n_pairs = (h_end - h0) * half;
    for (int t = threadIdx.x; t < n_pairs; t += blockDim.x) {
        const int h = h0 + t / half, i = t % half;
        float *hx = h < n_head ? qr + (int64_t)h * head_dim : kr + (int64_t)(h - n_head) * head_dim;
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const int a = neox ? i : 2 * i, bb = neox ? i + half : 2 * i + 1;
        const float x0 = hx[a], x1 = hx[bb];
        hx[a] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        hx[bb] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
    __syncthreads();
    /* The K heads of this block (rotated above, by this block) and their V heads. */
    const int k_first = h0 > n_head ? h0 - n_head : 0, k_end = h_end > n_head ? h_end - n_head : 0;
    if (k_end <= k_first) return;
    const size_t off = (((size_t)layer * kv.n_slot + b.slot[r]) * kv.max_seq + b.kv_idx[r]) * (size_t)kv.kv_dim;
    const float *vr = v + (int64_t)r * kv_dim;
    for (int i = k_first * head_dim + threadIdx.x; i < k_end * head_dim; i += blockDim.x) {
        kv.k[off + i] = kr[i];
        kv.v[off + i] = vr[i];
    }
}

extern "C" void kc_rope_kv_store(float *q, float *k, const float *v, const struct kc_batch *b, const struct kc_kv *kv,
                                 int layer, int n_head, int n_head_kv, int head_dim, const struct kc_rope *rope,
                                 cudaStream_t st) {
    if (b->n_tok < 1) return;
    struct kc_rope rp = *rope;
    if (rp.n_rot > 2 * ROPE_MAX_PAIRS) rp.n_rot = 2 * ROPE_MAX_PAIRS;
    if (rp.n_rot > head_dim) rp.n_rot = head_dim;
    const dim3 grid((unsigned)b->n_tok, (unsigned)((n_head + n_head_kv + ROPE_HEADS - 1) / ROPE_HEADS));
    rope_rows<<<grid, 128, 0, st>>>(q, k, v, *b, *kv, layer, n_head, n_head_kv, head_dim, rp);
}

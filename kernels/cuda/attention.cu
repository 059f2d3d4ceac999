/* attention.cu — attention of each batch row over the KV entries it may see:
 * the twin of cpu_attention (kq_attn_run).  One kernel serves prefill chunks,
 * decode rows and PPD trees: row r sees its slot's committed prefix
 * [0, n_prefix[r]) and those of the batch's entries [grp_first, grp_first +
 * grp_len) whose bit is set in its visibility words (batch.h).
 *
 * One warp per (row, query head), four per block.  Keys go by in chunks of 32
 * candidates (one per lane): each lane scores its key against q (in shared
 * memory), the warp takes the chunk's max and the online-softmax correction
 * (flash-style: running max m, running sum l, running output acc rescaled by
 * exp(m_old - m_new)), then adds the chunk's visible V rows in ascending key
 * order, each lane owning head_dim / 32 output dimensions.  A (row, head) is
 * always computed by one warp in this order, so it does not depend on the
 * other rows of the batch.  GQA: query head h reads KV head h / n_rep.
 * It does not split long contexts over several blocks (flash-decoding): one
 * warp walks the whole context, which is slow for one row at long contexts.
 */
#include <math.h>

#include "kernels/cuda/kcuda.h"

#define ATT_WARPS 4
#define ATT_DPL (KC_ATTN_MAX_HEAD_DIM / 32)   /* output dimensions per lane, at most */
#define FULL 0xffffffffu

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

struct att_state {
    float m, l, acc[ATT_DPL];
};

/* One chunk: this lane's candidate key `key` (valid or not). */
static __device__ __forceinline__ void att_chunk(struct att_state *st, const float *qs, const float *kb,
                                                 const float *vb, int kv_dim, int hd, float scale, int key,
                                                 bool valid, int lane) {
    const unsigned mask = __ballot_sync(FULL, valid);
    if (!mask) return;
    float s = -INFINITY;
    if (valid) {
        const float *kr = kb + (size_t)key * kv_dim;
        float dot = 0.0f;
        if ((hd & 3) == 0 && (kv_dim & 3) == 0) {
            const float4 *k4 = (const float4 *)kr;
            const float4 *q4 = (const float4 *)qs;
            for (int d = 0; d < hd / 4; d++) {
                const float4 a = q4[d], b = k4[d];
                dot += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
            }
        } else {
            for (int d = 0; d < hd; d++) dot += qs[d] * kr[d];
        }
        s = dot * scale;
    }
    const float m_new = fmaxf(st->m, warp_max(s));
    const float corr = st->m == -INFINITY ? 0.0f : expf(st->m - m_new);
    const float p = valid ? expf(s - m_new) : 0.0f;
    st->l = st->l * corr + warp_sum(p);
#pragma unroll
    for (int i = 0; i < ATT_DPL; i++) st->acc[i] *= corr;
    unsigned left = mask;
    while (left) {
        const int t = __ffs((int)left) - 1;
        left &= left - 1;
        const float pt = __shfl_sync(FULL, p, t);
        const int kt = __shfl_sync(FULL, key, t);
        const float *vr = vb + (size_t)kt * kv_dim;
#pragma unroll
        for (int i = 0; i < ATT_DPL; i++) {
            const int d = lane + 32 * i;
            if (d < hd) st->acc[i] += pt * vr[d];
        }
    }
    st->m = m_new;
}

static __global__ void attention_rows(const float *q, struct kc_batch b, struct kc_kv kv, int layer, int n_head,
                                      int n_head_kv, int hd, float scale, float *out) {
    __shared__ __align__(16) float q_sh[ATT_WARPS][KC_ATTN_MAX_HEAD_DIM];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int r = blockIdx.x, h = blockIdx.y * ATT_WARPS + warp;
    if (h >= n_head) return;    /* whole warps only: the shuffles below stay full */
    const float *qr = q + ((size_t)r * n_head + h) * hd;
    float *qs = q_sh[warp];
    for (int d = lane; d < hd; d += 32) qs[d] = qr[d];
    __syncwarp();

    const int kvh = h / (n_head / n_head_kv);
    const size_t base = (((size_t)layer * kv.n_slot + b.slot[r]) * kv.max_seq) * (size_t)kv.kv_dim + (size_t)kvh * hd;
    const float *kb = kv.k + base, *vb = kv.v + base;
    struct att_state st;
    st.m = -INFINITY;
    st.l = 0.0f;
#pragma unroll
    for (int i = 0; i < ATT_DPL; i++) st.acc[i] = 0.0f;

    const int n_prefix = b.n_prefix[r], grp_first = b.grp_first[r], grp_len = b.grp_len[r];
    for (int j0 = 0; j0 < n_prefix; j0 += 32) {
        const int j = j0 + lane;
        att_chunk(&st, qs, kb, vb, kv.kv_dim, hd, scale, j, j < n_prefix, lane);
    }
    const uint64_t *vis = b.vis + (size_t)r * b.vis_words;
    for (int g0 = 0; g0 < grp_len; g0 += 32) {
        const int g = g0 + lane;
        const bool valid = g < grp_len && ((vis[g >> 6] >> (g & 63)) & 1);
        att_chunk(&st, qs, kb, vb, kv.kv_dim, hd, scale, grp_first + g, valid, lane);
    }

    float *o = out + ((size_t)r * n_head + h) * hd;
    const float inv = st.l > 0.0f ? 1.0f / st.l : 0.0f;
#pragma unroll
    for (int i = 0; i < ATT_DPL; i++) {
        const int d = lane + 32 * i;
        if (d < hd) o[d] = st.acc[i] * inv;
    }
}

extern "C" void kc_attention(const float *q, const struct kc_batch *b, const struct kc_kv *kv, int layer, int n_head,
                             int n_head_kv, int head_dim, float scale, float *out, cudaStream_t st) {
    if (b->n_tok < 1 || head_dim > KC_ATTN_MAX_HEAD_DIM || n_head_kv < 1 || n_head % n_head_kv) return;
    const dim3 grid((unsigned)b->n_tok, (unsigned)((n_head + ATT_WARPS - 1) / ATT_WARPS));
    attention_rows<<<grid, ATT_WARPS * 32, 0, st>>>(q, *b, *kv, layer, n_head, n_head_kv, head_dim, scale, out);
}

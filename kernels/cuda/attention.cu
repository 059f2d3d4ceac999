/* attention.cu — attention of each batch row over the KV entries it may see:
 * the twin of cpu_attention (kq_attn_run).  One kernel serves prefill chunks,
 * decode rows and PPD trees: row r sees its slot's committed prefix
 * [0, n_prefix[r]) and those of the batch's entries [grp_first, grp_first +
 * grp_len) whose bit is set in its visibility words (batch.h).
 *
 * One block per (tile of ATT_TILE consecutive rows, query head), ATT_WARPS
 * warps.  A row's candidate keys (prefix, then group) go in chunks of 32, one
 * key per lane; chunk c belongs to warp c % ATT_WARPS (split-K, as in
 * flash-decoding: a single decode row still keeps several warps busy).  Per
 * chunk a warp scores its keys against q (in shared memory), takes the
 * chunk's max and the online-softmax correction (running max m, sum l, output
 * acc rescaled by exp(m_old - m_new)), then adds the chunk's V rows, each lane
 * owning head_dim / 32 output dimensions.  The V loop runs over all 32 keys
 * with a fixed trip count (an invisible key adds exactly +0: p = 0, its index
 * clamped to a visible one), so several keys' loads are in flight at once.
 * The warps' partial states are merged in warp order.
 *
 * Rows that share a slot, prefix and group (the rows of one PPD tree or one
 * prefill chunk) are done together: each K and V row is loaded once for the
 * whole tile and used for each row's own scores and sums.  A tile whose rows
 * differ (decode rows of several sequences) is done one row at a time.  Either
 * way every row goes through the same operations in the same order (same
 * chunks, same warps, same merge), so a row's bits never depend on the other
 * rows of the batch; tests/gpu checks a row alone against the row in a batch.
 * GQA: query head h reads KV head h / n_rep.
 *
 * Known gap (measured on an H200): chunks are counted separately over the
 * prefix and over the group, so a tree row at depth d (prefix P, then its d
 * ancestors) and the same token in plain decoding (prefix P + d) round
 * differently and greedy PPD drifted from plain decoding on 3 of 40 prompts.
 * PPD_CUDA_ATTN_VISIBLE=1 chunks over each row's visible keys in order
 * instead (att_rows); it has not run on a GPU yet (tests/gpu/run.sh's
 * "visible" part).  The tile path left 64 tree rows of a 7B model at 146 us a
 * layer (151 before): loading K/V is not what limits it.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels/cuda/kcuda.h"

#define ATT_WARPS 8
#define ATT_TILE 4
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

/* The k-th (from 0) set bit among the first n bits of vis: a group offset. */
static __device__ __forceinline__ int vis_select(const uint64_t *vis, int n, int k) {
    for (int w = 0; w * 64 < n; w++) {
        uint64_t x = vis[w];
        if (n - w * 64 < 64) x &= (1ull << (n - w * 64)) - 1;
        const int c = __popcll(x);
        if (k < c) {
            for (int j = 0; j < k; j++) x &= x - 1;
            return w * 64 + __ffsll((long long)x) - 1;
        }
        k -= c;
    }
    return 0;
}

/* Set bits among the first n bits of vis. */
static __device__ __forceinline__ int vis_count(const uint64_t *vis, int n) {
    int c = 0;
    for (int w = 0; w * 64 < n; w++) {
        uint64_t x = vis[w];
        if (n - w * 64 < 64) x &= (1ull << (n - w * 64)) - 1;
        c += __popcll(x);
    }
    return c;
}

/* One chunk for NR rows: this lane's candidate key key[i] and valid[i] for row
 * i.  shared: every row has the same key on every lane (one load serves all). */
template <int NR>
static __device__ __forceinline__ void att_chunk(struct att_state *st, const float *const *qs, const float *kb,
                                                 const float *vb, int kv_dim, int hd, float scale, const int *key,
                                                 const bool *valid, bool shared, int lane) {
    unsigned mask[NR], any = 0;
#pragma unroll
    for (int i = 0; i < NR; i++) {
        mask[i] = __ballot_sync(FULL, valid[i]);
        any |= mask[i];
    }
    if (!any) return;
    const bool mine = (any >> lane) & 1u;
    float s[NR];
    {
        float dot[NR];
#pragma unroll
        for (int i = 0; i < NR; i++) dot[i] = 0.0f;
        if (shared && mine) {
            const float *kr = kb + (size_t)key[0] * kv_dim;
            if ((hd & 3) == 0 && (kv_dim & 3) == 0) {
                const float4 *k4 = (const float4 *)kr;
                for (int d = 0; d < hd / 4; d++) {
                    const float4 b = k4[d];
#pragma unroll
                    for (int i = 0; i < NR; i++) {
                        const float4 a = ((const float4 *)qs[i])[d];
                        dot[i] += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
                    }
                }
            } else {
                for (int d = 0; d < hd; d++) {
                    const float b = kr[d];
#pragma unroll
                    for (int i = 0; i < NR; i++) dot[i] += qs[i][d] * b;
                }
            }
        } else if (!shared) {
            /* rows with keys of their own: the same sums, one row at a time */
#pragma unroll
            for (int i = 0; i < NR; i++) {
                if (!valid[i]) continue;
                const float *kr = kb + (size_t)key[i] * kv_dim;
                if ((hd & 3) == 0 && (kv_dim & 3) == 0) {
                    const float4 *k4 = (const float4 *)kr;
                    for (int d = 0; d < hd / 4; d++) {
                        const float4 b = k4[d], a = ((const float4 *)qs[i])[d];
                        dot[i] += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
                    }
                } else {
                    for (int d = 0; d < hd; d++) dot[i] += qs[i][d] * kr[d];
                }
            }
        }
#pragma unroll
        for (int i = 0; i < NR; i++) s[i] = valid[i] ? dot[i] * scale : -INFINITY;
    }
    float p[NR];
#pragma unroll
    for (int i = 0; i < NR; i++) {
        if (!mask[i]) { p[i] = 0.0f; continue; }   /* warp-uniform: this row has no key here */
        const float m_new = fmaxf(st[i].m, warp_max(s[i]));
        const float corr = st[i].m == -INFINITY ? 0.0f : expf(st[i].m - m_new);
        p[i] = valid[i] ? expf(s[i] - m_new) : 0.0f;
        st[i].l = st[i].l * corr + warp_sum(p[i]);
#pragma unroll
        for (int k = 0; k < ATT_DPL; k++) st[i].acc[k] *= corr;
        st[i].m = m_new;
    }
    /* An invisible lane reads a visible key's row and weighs it by 0 (the
     * shuffles run on all lanes: inside a branch one read garbage). */
    if (shared) {
        const int first_key = __shfl_sync(FULL, key[0], __ffs((int)any) - 1);
        const int key_safe = mine ? key[0] : first_key;
#pragma unroll 8
        for (int t = 0; t < 32; t++) {
            const int kt = __shfl_sync(FULL, key_safe, t);
            const float *vr = vb + (size_t)kt * kv_dim;
            float pt[NR];
#pragma unroll
            for (int i = 0; i < NR; i++) pt[i] = __shfl_sync(FULL, p[i], t);
#pragma unroll
            for (int k = 0; k < ATT_DPL; k++) {
                const int d = lane + 32 * k;
                if (d < hd) {
                    const float v = vr[d];
#pragma unroll
                    for (int i = 0; i < NR; i++)
                        if (mask[i]) st[i].acc[k] += pt[i] * v;
                }
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < NR; i++) {
        if (!mask[i]) continue;   /* warp-uniform */
        const int first_key = __shfl_sync(FULL, key[i], __ffs((int)mask[i]) - 1);
        const int key_safe = valid[i] ? key[i] : first_key;
#pragma unroll 8
        for (int t = 0; t < 32; t++) {
            const int kt = __shfl_sync(FULL, key_safe, t);
            const float pt = __shfl_sync(FULL, p[i], t);
            const float *vr = vb + (size_t)kt * kv_dim;
#pragma unroll
            for (int k = 0; k < ATT_DPL; k++) {
                const int d = lane + 32 * k;
                if (d < hd) st[i].acc[k] += pt * vr[d];
            }
        }
    }
}

/* Rows r0 .. r0+NR-1 (same slot, prefix and group) for head h: their outputs. */
template <int NR>
static __device__ void att_rows(const float *q, const struct kc_batch &b, const struct kc_kv &kv, int layer,
                                int n_head, int n_head_kv, int hd, float scale, float *out, int r0, int h, int visible,
                                float (*q_sh)[KC_ATTN_MAX_HEAD_DIM], float *m_sh, float *l_sh, float *acc_sh) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = 0; i < NR; i++) {
        const float *qr = q + ((size_t)(r0 + i) * n_head + h) * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) q_sh[i][d] = qr[d];
    }
    __syncthreads();
    const float *qs[NR];
#pragma unroll
    for (int i = 0; i < NR; i++) qs[i] = q_sh[i];

    const int kvh = h / (n_head / n_head_kv);
    const size_t base = (((size_t)layer * kv.n_slot + b.slot[r0]) * kv.max_seq) * (size_t)kv.kv_dim + (size_t)kvh * hd;
    const float *kb = kv.k + base, *vb = kv.v + base;
    struct att_state st[NR];
#pragma unroll
    for (int i = 0; i < NR; i++) {
        st[i].m = -INFINITY;
        st[i].l = 0.0f;
#pragma unroll
        for (int k = 0; k < ATT_DPL; k++) st[i].acc[k] = 0.0f;
    }
    const int n_prefix = b.n_prefix[r0], grp_first = b.grp_first[r0], grp_len = b.grp_len[r0];
    if (visible) {
        /* Chunks over the row's visible keys in order (the prefix, then the
         * visible group entries): chunk c holds visible keys [32c, 32c + 32),
         * wherever the prefix ends, so a tree row and the same token decoded
         * plainly (its ancestors committed) sum alike. */
        int n_vis[NR], n_c = 0;
#pragma unroll
        for (int i = 0; i < NR; i++) {
            n_vis[i] = n_prefix + vis_count(b.vis + (size_t)(r0 + i) * b.vis_words, grp_len);
            n_c = max(n_c, (n_vis[i] + 31) / 32);
        }
        for (int c = warp; c < n_c; c += ATT_WARPS) {
            const int v = c * 32 + lane;
            bool valid[NR];
            int key[NR];
#pragma unroll
            for (int i = 0; i < NR; i++) {
                valid[i] = v < n_vis[i];
                key[i] = v < n_prefix ? v
                         : valid[i] ? grp_first + vis_select(b.vis + (size_t)(r0 + i) * b.vis_words, grp_len, v - n_prefix)
                                    : 0;
            }
            att_chunk<NR>(st, qs, kb, vb, kv.kv_dim, hd, scale, key, valid, (c + 1) * 32 <= n_prefix, lane);
        }
    } else {
        /* Chunks are numbered over the prefix, then over the group, each part
         * starting a new chunk; chunk c is this warp's when c % ATT_WARPS == warp. */
        const int n_cp = (n_prefix + 31) / 32, n_cg = (grp_len + 31) / 32;
        for (int c = warp; c < n_cp + n_cg; c += ATT_WARPS) {
            bool valid[NR];
            int key[NR];
            if (c < n_cp) {
#pragma unroll
                for (int i = 0; i < NR; i++) key[i] = c * 32 + lane, valid[i] = key[i] < n_prefix;
            } else {
                const int g = (c - n_cp) * 32 + lane;
#pragma unroll
                for (int i = 0; i < NR; i++) {
                    const uint64_t *vis = b.vis + (size_t)(r0 + i) * b.vis_words;
                    key[i] = grp_first + g;
                    valid[i] = g < grp_len && ((vis[g >> 6] >> (g & 63)) & 1);
                }
            }
            att_chunk<NR>(st, qs, kb, vb, kv.kv_dim, hd, scale, key, valid, true, lane);
        }
    }

    /* Merge the warps' states in warp order, row by row. */
    for (int i = 0; i < NR; i++) {
        if (lane == 0) {
            m_sh[i * ATT_WARPS + warp] = st[i].m;
            l_sh[i * ATT_WARPS + warp] = st[i].l;
        }
#pragma unroll
        for (int k = 0; k < ATT_DPL; k++) {
            const int d = lane + 32 * k;
            if (d < hd) acc_sh[((size_t)i * ATT_WARPS + warp) * KC_ATTN_MAX_HEAD_DIM + d] = st[i].acc[k];
        }
    }
    __syncthreads();
    for (int i = 0; i < NR; i++) {
        float m = -INFINITY;
        for (int w = 0; w < ATT_WARPS; w++) m = fmaxf(m, m_sh[i * ATT_WARPS + w]);
        float l = 0.0f, f[ATT_WARPS];
        for (int w = 0; w < ATT_WARPS; w++) {
            f[w] = m_sh[i * ATT_WARPS + w] == -INFINITY ? 0.0f : expf(m_sh[i * ATT_WARPS + w] - m);
            l += l_sh[i * ATT_WARPS + w] * f[w];
        }
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *o = out + ((size_t)(r0 + i) * n_head + h) * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float a = 0.0f;
            for (int w = 0; w < ATT_WARPS; w++) a += acc_sh[((size_t)i * ATT_WARPS + w) * KC_ATTN_MAX_HEAD_DIM + d] * f[w];
            o[d] = a * inv;
        }
    }
    __syncthreads();   /* the shared buffers are reused by the next rows */
}

static __global__ void __launch_bounds__(ATT_WARPS * 32)
attention_rows(const float *q, struct kc_batch b, struct kc_kv kv, int layer, int n_head, int n_head_kv, int hd,
               float scale, float *out, int visible) {
    __shared__ __align__(16) float q_sh[ATT_TILE][KC_ATTN_MAX_HEAD_DIM];
    __shared__ float m_sh[ATT_TILE * ATT_WARPS], l_sh[ATT_TILE * ATT_WARPS];
    __shared__ float acc_sh[ATT_TILE * ATT_WARPS * KC_ATTN_MAX_HEAD_DIM];
    const int r0 = blockIdx.x * ATT_TILE, h = blockIdx.y;
    const int n = b.n_tok - r0 < ATT_TILE ? b.n_tok - r0 : ATT_TILE;
    bool same = n == ATT_TILE;
    for (int i = 1; i < n && same; i++)
        same = b.slot[r0 + i] == b.slot[r0] && b.n_prefix[r0 + i] == b.n_prefix[r0] &&
               b.grp_first[r0 + i] == b.grp_first[r0] && b.grp_len[r0 + i] == b.grp_len[r0];
    if (same) {
        att_rows<ATT_TILE>(q, b, kv, layer, n_head, n_head_kv, hd, scale, out, r0, h, visible, q_sh, m_sh, l_sh,
                           acc_sh);
    } else {
        for (int i = 0; i < n; i++)
            att_rows<1>(q, b, kv, layer, n_head, n_head_kv, hd, scale, out, r0 + i, h, visible, q_sh, m_sh, l_sh,
                        acc_sh);
    }
}

extern "C" void kc_attention(const float *q, const struct kc_batch *b, const struct kc_kv *kv, int layer, int n_head,
                             int n_head_kv, int head_dim, float scale, float *out, cudaStream_t st) {
    if (b->n_tok < 1 || head_dim > KC_ATTN_MAX_HEAD_DIM || n_head_kv < 1 || n_head % n_head_kv) return;
    const dim3 grid((unsigned)((b->n_tok + ATT_TILE - 1) / ATT_TILE), (unsigned)n_head);
    /* PPD_CUDA_ATTN_VISIBLE=1: chunks over the visible keys (see att_rows), not
     * yet run on a GPU; the default keeps the prefix/group chunks that were. */
    static int visible = -1;
    if (visible < 0) {
        const char *e = getenv("PPD_CUDA_ATTN_VISIBLE");
        visible = e && atoi(e) > 0;
    }
    attention_rows<<<grid, ATT_WARPS * 32, 0, st>>>(q, *b, *kv, layer, n_head, n_head_kv, head_dim, scale, out,
                                                    visible);
}

/* attention.cu — attention of each batch row over the KV entries it may see:
 * the twin of cpu_attention (kq_attn_run).  One kernel serves prefill chunks,
 * decode rows and PPD trees: row r sees its slot's committed prefix
 * [prefix_lo[r], n_prefix[r]) and those of the batch's entries [grp_first,
 * grp_first + grp_len) whose bit is set in its visibility words (batch.h; the
 * host has already cut both to a sliding window where the model has one).
 *
 * One block per (tile of consecutive rows, query head, split), ATT_WARPS
 * warps.  A row's visible keys go in chunks of 32, one key per lane; chunk c
 * belongs to warp c % ATT_WARPS (split-K, as in
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
 * Chunks are counted over each row's visible keys in order (the prefix, then
 * its visible group entries): chunk c holds visible keys [32c, 32c + 32)
 * wherever the prefix ends, so a tree row at depth d (prefix P, then its d
 * ancestors) and the same token decoded plainly (prefix P + d) sum alike,
 * and greedy PPD equals plain decoding on the GPU (an H200: 0 of 40 prompts
 * differ; counting prefix and group chunks apart, 3 of 40 did).
 *
 * Long rows.  A row with 1024 or more visible keys has its chunks split over
 * kc_attn_splits(n_vis) blocks (contiguous ranges, att_range); each writes
 * its merged state to ws and att_merge combines them in split order.  The
 * split depends on the row's visible keys alone, so the properties above
 * hold.  1 row at 2048 keys of a 7B model: 77 -> 43 us a layer (H200).
 *
 * Speed.  A block takes one row (decode rows of different sequences) or a
 * tile of 8 rows sharing slot, prefix and group (a PPD tree, a prefill
 * chunk): the caller says which from the batch's runs (kc_attention's
 * tile_rows).  Each chunk's K and V rows are prefetched, the next chunk's to
 * L2; scores and sums are explicit FMAs (the build has -fmad=false); the
 * per-lane state is sized by the head dimension (DPL: 2, 4 or 8 dimensions a
 * lane).  Still, 64 tree rows of a 7B model take 116 us a layer against 15
 * for one row: ncu finds it latency-bound (0.14 instructions issued per
 * cycle per scheduler, 1% of DRAM bandwidth), one lane per key doing f32
 * work (BENCHMARKS.md, "NVIDIA H200").
 */
#include <cuda_fp16.h>
#include <math.h>
#include <stdlib.h>

#include "kernels/cuda/kcuda.h"

#define ATT_WARPS 8
#define ATT_TILE 8                            /* rows a block shares K/V loads among */
#define FULL 0xffffffffu

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL, v, o));
    return v;
}

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

template <int DPL>
struct att_state {
    float m, l, acc[DPL];   /* acc: dimensions lane + 32k, k < DPL */
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

/* dot + a . b as four fused multiply-adds, x first: every path below sums a
 * score this way (the build has -fmad=false, so nothing is fused unless said;
 * half the instructions of separate multiplies and adds). */
static __device__ __forceinline__ float dot4(float dot, float4 a, float4 b) {
    return __fmaf_rn(a.w, b.w, __fmaf_rn(a.z, b.z, __fmaf_rn(a.y, b.y, __fmaf_rn(a.x, b.x, dot))));
}

/* Ask for the K and V rows of `key` (hd floats each) to come into L1 (level
 * 1) or L2 (2): a lane's loads of its key's row then wait for one memory
 * round trip, not one per 16 bytes. */
template <int LEVEL>
static __device__ __forceinline__ void att_prefetch(const float *kb, const float *vb, int key, int kv_dim, int hd) {
    const char *k = (const char *)(kb + (size_t)key * kv_dim), *v = (const char *)(vb + (size_t)key * kv_dim);
    for (int off = 0; off < hd * (int)sizeof(float); off += 128) {
        if (LEVEL == 1) {
            asm volatile("prefetch.global.L1 [%0];" ::"l"(k + off));
            asm volatile("prefetch.global.L1 [%0];" ::"l"(v + off));
        } else {
            asm volatile("prefetch.global.L2 [%0];" ::"l"(k + off));
            asm volatile("prefetch.global.L2 [%0];" ::"l"(v + off));
        }
    }
}

/* One chunk for NR rows: this lane's candidate key key[i] and valid[i] for row
 * i; row i's query at qs + i * DPL * 32 (shared memory).  shared: every row
 * has the same key on every lane (one load serves all). */
template <int NR, int DPL>
static __device__ __forceinline__ void att_chunk(struct att_state<DPL> *st, const float *qs, const float *kb,
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
    if (shared) {
        if (mine) att_prefetch<1>(kb, vb, key[0], kv_dim, hd);
    } else {
#pragma unroll
        for (int i = 0; i < NR; i++)
            if (valid[i] && (i == 0 || key[i] != key[0])) att_prefetch<1>(kb, vb, key[i], kv_dim, hd);
    }
    float s[NR];
    {
        float dot[NR];
#pragma unroll
        for (int i = 0; i < NR; i++) dot[i] = 0.0f;
        if (shared && mine) {
            const float *kr = kb + (size_t)key[0] * kv_dim;
            if ((hd & 3) == 0 && (kv_dim & 3) == 0) {
                const float4 *k4 = (const float4 *)kr;
#pragma unroll 8
                for (int d = 0; d < hd / 4; d++) {
                    const float4 b = k4[d];
#pragma unroll
                    for (int i = 0; i < NR; i++) {
                        const float4 a = ((const float4 *)(qs + i * DPL * 32))[d];
                        dot[i] = dot4(dot[i], a, b);
                    }
                }
            } else {
#pragma unroll 8
                for (int d = 0; d < hd; d++) {
                    const float b = kr[d];
#pragma unroll
                    for (int i = 0; i < NR; i++) dot[i] = __fmaf_rn(qs[i * DPL * 32 + d], b, dot[i]);
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
#pragma unroll 8
                    for (int d = 0; d < hd / 4; d++) {
                        const float4 b = k4[d], a = ((const float4 *)(qs + i * DPL * 32))[d];
                        dot[i] = dot4(dot[i], a, b);
                    }
                } else {
#pragma unroll 8
                    for (int d = 0; d < hd; d++) dot[i] = __fmaf_rn(qs[i * DPL * 32 + d], kr[d], dot[i]);
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
        for (int k = 0; k < DPL; k++) st[i].acc[k] *= corr;
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
            for (int k = 0; k < DPL; k++) {
                const int d = lane + 32 * k;
                if (d < hd) {
                    const float v = vr[d];
#pragma unroll
                    for (int i = 0; i < NR; i++)
                        if (mask[i]) st[i].acc[k] = __fmaf_rn(pt[i], v, st[i].acc[k]);
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
            for (int k = 0; k < DPL; k++) {
                const int d = lane + 32 * k;
                if (d < hd) st[i].acc[k] = __fmaf_rn(pt, vr[d], st[i].acc[k]);
            }
        }
    }
}

/* Where a block's results go: out (and out16) for rows whose keys one block
 * takes, else partial states in ws for att_merge: per (row, head, split) the
 * block's max m, sum l and unnormalised output a (hd floats), n_split splits
 * a (row, head). */
struct att_dst {
    float *out;
    uint16_t *out16;
    float *ws;
    int n_split;
};

static __device__ __forceinline__ float *att_ws(const struct att_dst &dst, int row, int n_head, int h, int s, int hd) {
    return dst.ws + (((size_t)row * n_head + h) * dst.n_split + s) * (size_t)(hd + 2);
}

/* A row's chunks that split s of kc_attn_splits(n_vis) takes: [lo, hi). */
static __device__ __forceinline__ void att_range(int n_vis, int s, int *lo, int *hi) {
    const int n_c = (n_vis + 31) / 32, S = kc_attn_splits(n_vis);
    if (s >= S) { *lo = *hi = 0; return; }
    *lo = (s * n_c + S - 1) / S;
    *hi = ((s + 1) * n_c + S - 1) / S;
}

/* Rows r0 .. r0+NR-1 (same slot, prefix and group) for head h, split s: their
 * outputs, or their partial states when their keys take several blocks. */
template <int NR, int DPL>
static __device__ void att_rows(const float *q, const struct kc_batch &b, const struct kc_kv &kv, int layer,
                                int n_head, int n_head_kv, int hd, float scale, const struct att_dst &dst, int r0,
                                int h, int s, float (*q_sh)[DPL * 32], float *m_sh, float *l_sh, float *acc_sh) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    /* n_prefix: the prefix entries the rows see, from entry p_lo on (a sliding
     * window starts it above 0) */
    const int p_lo = b.prefix_lo[r0], n_prefix = b.n_prefix[r0] - p_lo;
    const int grp_first = b.grp_first[r0], grp_len = b.grp_len[r0];
    /* Chunks over the row's visible keys in order (the prefix, then the
     * visible group entries); split s takes [lo, hi) of them, and chunk c is
     * this warp's when c % ATT_WARPS == warp. */
    int n_vis[NR], lo[NR], hi[NR], c_lo = INT32_MAX, c_hi = 0;
#pragma unroll
    for (int i = 0; i < NR; i++) {
        n_vis[i] = n_prefix + vis_count(b.vis + (size_t)(r0 + i) * b.vis_words, grp_len);
        att_range(n_vis[i], s, &lo[i], &hi[i]);
        if (lo[i] < hi[i]) c_lo = min(c_lo, lo[i]), c_hi = max(c_hi, hi[i]);
    }
    if (c_hi == 0) return;   /* block-uniform: no row has keys in this split */
    for (int i = 0; i < NR; i++) {
        const float *qr = q + ((size_t)(r0 + i) * n_head + h) * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) q_sh[i][d] = qr[d];
    }
    __syncthreads();

    const int kvh = h / (n_head / n_head_kv);
    const size_t base = (((size_t)layer * kv.n_slot + b.slot[r0]) * kv.max_seq) * (size_t)kv.kv_dim + (size_t)kvh * hd;
    const float *kb = kv.k + base, *vb = kv.v + base;
    struct att_state<DPL> st[NR];
#pragma unroll
    for (int i = 0; i < NR; i++) {
        st[i].m = -INFINITY;
        st[i].l = 0.0f;
#pragma unroll
        for (int k = 0; k < DPL; k++) st[i].acc[k] = 0.0f;
    }
    for (int c = c_lo + (warp - c_lo % ATT_WARPS + ATT_WARPS) % ATT_WARPS; c < c_hi; c += ATT_WARPS) {
        const int v = c * 32 + lane;
        /* this warp's next chunk, while this one computes (prefix keys: known without the mask) */
        if (v + 32 * ATT_WARPS < n_prefix && c + ATT_WARPS < c_hi)
            att_prefetch<2>(kb, vb, p_lo + v + 32 * ATT_WARPS, kv.kv_dim, hd);
        bool valid[NR];
        int key[NR];
        bool all_prefix = (c + 1) * 32 <= n_prefix;
#pragma unroll
        for (int i = 0; i < NR; i++) {
            const bool mine = c >= lo[i] && c < hi[i];
            all_prefix &= mine;
            valid[i] = mine && v < n_vis[i];
            key[i] = v < n_prefix ? p_lo + v
                     : valid[i] ? grp_first + vis_select(b.vis + (size_t)(r0 + i) * b.vis_words, grp_len, v - n_prefix)
                                : 0;
        }
        att_chunk<NR, DPL>(st, &q_sh[0][0], kb, vb, kv.kv_dim, hd, scale, key, valid, all_prefix, lane);
    }

    /* Merge the warps' states in warp order, one row at a time. */
#pragma unroll
    for (int i = 0; i < NR; i++) {
        if (lo[i] >= hi[i]) continue;   /* block-uniform */
        if (lane == 0) {
            m_sh[warp] = st[i].m;
            l_sh[warp] = st[i].l;
        }
#pragma unroll
        for (int k = 0; k < DPL; k++) {
            const int d = lane + 32 * k;
            if (d < hd) acc_sh[warp * DPL * 32 + d] = st[i].acc[k];
        }
        __syncthreads();
        float m = -INFINITY;
        for (int w = 0; w < ATT_WARPS; w++) m = fmaxf(m, m_sh[w]);
        float l = 0.0f, f[ATT_WARPS];
        for (int w = 0; w < ATT_WARPS; w++) {
            f[w] = m_sh[w] == -INFINITY ? 0.0f : expf(m_sh[w] - m);
            l += l_sh[w] * f[w];
        }
        const int row = r0 + i;
        if (kc_attn_splits(n_vis[i]) == 1) {
            const float inv = l > 0.0f ? 1.0f / l : 0.0f;
            float *o = dst.out + ((size_t)row * n_head + h) * hd;
            for (int d = threadIdx.x; d < hd; d += blockDim.x) {
                float a = 0.0f;
                for (int w = 0; w < ATT_WARPS; w++) a += acc_sh[w * DPL * 32 + d] * f[w];
                o[d] = a * inv;
                if (dst.out16) dst.out16[((size_t)row * n_head + h) * hd + d] = __half_as_ushort(__float2half_rn(a * inv));
            }
        } else {
            float *ws = att_ws(dst, row, n_head, h, s, hd);
            if (threadIdx.x == 0) ws[0] = m, ws[1] = l;
            for (int d = threadIdx.x; d < hd; d += blockDim.x) {
                float a = 0.0f;
                for (int w = 0; w < ATT_WARPS; w++) a += acc_sh[w * DPL * 32 + d] * f[w];
                ws[2 + d] = a;
            }
        }
        __syncthreads();   /* the shared buffers are reused by the next row */
    }
}

/* One block per (TILE rows, head, split): the tile's rows together when they
 * share slot, prefix and group, else one after another. */
template <int TILE, int DPL>
static __global__ void __launch_bounds__(ATT_WARPS * 32, 2)   /* 2 blocks an SM: 8 rows at 1 block ran 1.6x slower */
attention_rows(const float *q, struct kc_batch b, struct kc_kv kv, int layer, int n_head, int n_head_kv, int hd,
               float scale, struct att_dst dst) {
    __shared__ __align__(16) float q_sh[TILE][DPL * 32];
    __shared__ float m_sh[ATT_WARPS], l_sh[ATT_WARPS];
    __shared__ float acc_sh[ATT_WARPS * DPL * 32];
    const int r0 = blockIdx.x * TILE, h = blockIdx.y, s = blockIdx.z;
    const int n = b.n_tok - r0 < TILE ? b.n_tok - r0 : TILE;
    bool same = n == TILE;
    for (int i = 1; i < n && same; i++)
        same = b.slot[r0 + i] == b.slot[r0] && b.n_prefix[r0 + i] == b.n_prefix[r0] &&
               b.grp_first[r0 + i] == b.grp_first[r0] && b.grp_len[r0 + i] == b.grp_len[r0] &&
               b.prefix_lo[r0 + i] == b.prefix_lo[r0];
    if (same) {
        att_rows<TILE, DPL>(q, b, kv, layer, n_head, n_head_kv, hd, scale, dst, r0, h, s, q_sh, m_sh, l_sh, acc_sh);
    } else {
        for (int i = 0; i < n; i++)
            att_rows<1, DPL>(q, b, kv, layer, n_head, n_head_kv, hd, scale, dst, r0 + i, h, s, q_sh, m_sh, l_sh, acc_sh);
    }
}

/* The rows whose keys several blocks took: their splits' states merged in
 * split order (as the warps' within a block), then normalised.  One block
 * per (row, head). */
static __global__ void att_merge(struct kc_batch b, int n_head, int hd, struct att_dst dst) {
    const int row = blockIdx.x, h = blockIdx.y;
    const int n_vis = b.n_prefix[row] - b.prefix_lo[row] + vis_count(b.vis + (size_t)row * b.vis_words, b.grp_len[row]);
    const int S = kc_attn_splits(n_vis);
    if (S == 1) return;   /* written by its one block */
    float m = -INFINITY;
    for (int s = 0; s < S; s++) m = fmaxf(m, att_ws(dst, row, n_head, h, s, hd)[0]);
    float l = 0.0f, f[KC_ATTN_MAX_SPLIT];
    for (int s = 0; s < S; s++) {
        const float *ws = att_ws(dst, row, n_head, h, s, hd);
        f[s] = ws[0] == -INFINITY ? 0.0f : expf(ws[0] - m);
        l += ws[1] * f[s];
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < S; s++) a += att_ws(dst, row, n_head, h, s, hd)[2 + d] * f[s];
        dst.out[((size_t)row * n_head + h) * hd + d] = a * inv;
        if (dst.out16) dst.out16[((size_t)row * n_head + h) * hd + d] = __half_as_ushort(__float2half_rn(a * inv));
    }
}

template <int TILE, int DPL>
static void att_launch(const float *q, const struct kc_batch *b, const struct kc_kv *kv, int layer, int n_head,
                       int n_head_kv, int hd, float scale, const struct att_dst &dst, cudaStream_t st) {
    const dim3 grid((unsigned)((b->n_tok + TILE - 1) / TILE), (unsigned)n_head, (unsigned)dst.n_split);
    attention_rows<TILE, DPL><<<grid, ATT_WARPS * 32, 0, st>>>(q, *b, *kv, layer, n_head, n_head_kv, hd, scale, dst);
}

/* PPD_CUDA_ATTN_TILE=1 caps the tile at one row (for measuring; default 8).
 * Tiles of 4 were measured slower than 8 (7B, 64 tree rows: 131.6 against
 * 103-116 us a layer) and are not built: each instance costs compile time. */
template <int DPL>
static void att_launch_tile(int tile_rows, const float *q, const struct kc_batch *b, const struct kc_kv *kv, int layer,
                            int n_head, int n_head_kv, int hd, float scale, const struct att_dst &dst,
                            cudaStream_t st) {
    static int cap = 0;
    if (!cap) {
        const char *e = getenv("PPD_CUDA_ATTN_TILE");
        cap = e && atoi(e) == 1 ? 1 : ATT_TILE;
    }
    if (tile_rows > cap) tile_rows = cap;
    if (tile_rows >= ATT_TILE)
        att_launch<ATT_TILE, DPL>(q, b, kv, layer, n_head, n_head_kv, hd, scale, dst, st);
    else
        att_launch<1, DPL>(q, b, kv, layer, n_head, n_head_kv, hd, scale, dst, st);
}

extern "C" void kc_attention(const float *q, const struct kc_batch *b, const struct kc_kv *kv, int layer, int n_head,
                             int n_head_kv, int head_dim, float scale, int tile_rows, int n_split, float *ws, float *out,
                             uint16_t *out16, cudaStream_t st) {
    if (b->n_tok < 1 || head_dim > KC_ATTN_MAX_HEAD_DIM || n_head_kv < 1 || n_head % n_head_kv) return;
    if (n_split < 1 || n_split > KC_ATTN_MAX_SPLIT || (n_split > 1 && !ws)) return;
    const struct att_dst dst = {out, out16, ws, n_split};
    if (head_dim <= 64)
        att_launch_tile<2>(tile_rows, q, b, kv, layer, n_head, n_head_kv, head_dim, scale, dst, st);
    else if (head_dim <= 128)
        att_launch_tile<4>(tile_rows, q, b, kv, layer, n_head, n_head_kv, head_dim, scale, dst, st);
    else
        att_launch_tile<8>(tile_rows, q, b, kv, layer, n_head, n_head_kv, head_dim, scale, dst, st);
    if (n_split > 1)
        att_merge<<<dim3((unsigned)b->n_tok, (unsigned)n_head), 128, 0, st>>>(*b, n_head, head_dim, dst);
}

/* matmul_k_avx512.c — the AVX-512 VNNI kernel for the k-quants (Q2_K, Q3_K,
 * Q4_K, Q5_K, Q6_K, IQ4_XS) on K panels (matmul_layout.h).  Bit-identical to
 * matmul_ref.c: the integer sums are exact, and the float work per
 * super-block is the reference's, in its order.
 *
 * One 512-bit vector, one load from the finely interleaved pair layout,
 * holds a group (4 elements) of the 16 outputs of a panel pair.  Per 16- or 32-element unit of one scale, vpdpbusd adds u*a into an
 * int32 sum per row (the activation bytes broadcast from memory); one
 * vpmulld by the unit's scales adds it into A.  B comes from the Q8_K block's
 * bsums: one vpmaddwd per two halves (int16 scale or min pairs times int16
 * bsum pairs).  Tiles are up to KQK512_TILE_ROWS rows; the first streams the
 * weights and prefetches ahead, the others reread them from cache.
 *
 * No FMA: the reference multiplies and adds separately, and so must we.
 */
#include "matmul_k_avx512.h"

#include <immintrin.h>
#include <string.h>

#include "cpu_isa.h"

#define KQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,f16c")))
#define KQ_INLINE static inline __attribute__((always_inline))

#define KQK512_TILE_ROWS 8
#define KQK512_PREFETCH_BLOCKS 2
#define KQK_ACT_QS 4     /* offsetof(kq_block_q8_K, qs) */
#define KQK_ACT_BSUMS 260 /* offsetof(kq_block_q8_K, bsums) */

_Static_assert(sizeof(kq_block_q8_K) == 292, "q8_K layout");

struct ktile512 {
    const uint8_t *pw;   /* super-block 0 of the pair */
    size_t bstep;
    const uint8_t *act;  /* row r0's first Q8_K block */
    size_t stride;       /* bytes between rows */
    int64_t nb;
    float *y;
    int64_t ldy, o0;
    __mmask16 lanes;
    int r0, prefetch;
};

/* Vector `off` (a panel-block offset) of both panels of the pair: one load
 * (kq_kpanel_pair_off(off, 0) = 2*off). */
KQ_INLINE KQ_AVX512 __m512i load_pair(const uint8_t *pw, size_t off) {
    return _mm512_loadu_si512(pw + 2 * off);
}

/* The 8 f16 values at `off` of both panels, as 16 floats. */
KQ_INLINE KQ_AVX512 __m512 load_pair_f16(const uint8_t *pw, size_t off) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pw + 2 * off)));
}

KQ_INLINE KQ_AVX512 __m512i bcast32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

KQ_INLINE KQ_AVX512 __m512 bcast_f32(const uint8_t *p) {
    float v;
    memcpy(&v, p, 4);
    return _mm512_set1_ps(v);
}

/* The unsigned weight bytes of group k (elements 4k..4k+3) of both panels. */
KQ_INLINE KQ_AVX512 __m512i group_u(const uint8_t *pw, const int type, int k, __m512i lut) {
    const size_t qoff = kq_kpanel_quant_off(type);
    if (!kq_kpanel_nibbles(type)) return load_pair(pw, qoff + 32 * (size_t)k);
    const int c = k / 16, kk = k % 16;
    const __m512i n = load_pair(pw, qoff + 256 * (size_t)c + 32 * (size_t)(kk % 8));
    const __m512i nib = _mm512_and_si512(kk >= 8 ? _mm512_srli_epi16(n, 4) : n, _mm512_set1_epi8(0x0F));
    return type == KQ_IQ4_XS ? _mm512_shuffle_epi8(lut, nib) : nib;
}

KQ_INLINE KQ_AVX512 void ktile(const struct ktile512 *t, const int type, const int R) {
    const int sub32 = kq_kpanel_sub32(type), has_min = kq_kpanel_has_min(type);
    const int unit = sub32 ? 8 : 4; /* groups per scale */
    const size_t stride = t->stride;
    /* kv + 128 for each IQ4_XS nibble, in every 128-bit lane */
    uint8_t lut_b[16];
    for (int i = 0; i < 16; i++) lut_b[i] = (uint8_t)(kq_iq4nl_values[i] + 128);
    const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)lut_b));
    __m512 acc[KQK512_TILE_ROWS];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const uint8_t *pw = t->pw, *ab = t->act;
    for (int64_t b = 0; b < t->nb; b++, pw += t->bstep, ab += sizeof(kq_block_q8_K)) {
        if (t->prefetch) {
            const uintptr_t a = (uintptr_t)pw + KQK512_PREFETCH_BLOCKS * t->bstep;
            for (size_t l = 0; l < t->bstep; l += 64) _mm_prefetch((const char *)(a + l), _MM_HINT_T0);
        }
        __m512i A[KQK512_TILE_ROWS], s[KQK512_TILE_ROWS];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) A[r] = _mm512_setzero_si512();
#pragma GCC unroll 1
        for (int u = 0; u < 64 / unit; u++) {
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) s[r] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int gi = 0; gi < unit; gi++) {
                const int k = u * unit + gi;
                const __m512i w = group_u(pw, type, k, lut);
#pragma GCC unroll 8
                for (int r = 0; r < R; r++)
                    s[r] = _mm512_dpbusd_epi32(s[r], w, bcast32(ab + (size_t)r * stride + KQK_ACT_QS + 4 * (size_t)k));
            }
            /* the unit's scale: half h = 16u/16 (sub32: halves 2u, 2u+1 share it) */
            const int h = sub32 ? 2 * u : u;
            const __m512i pair = load_pair(pw, KQ_KP_SC + 32 * (size_t)(h / 2));
            const __m512i sc = h % 2 ? _mm512_srai_epi32(pair, 16) : _mm512_srai_epi32(_mm512_slli_epi32(pair, 16), 16);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) A[r] = _mm512_add_epi32(A[r], _mm512_mullo_epi32(s[r], sc));
        }
        /* B: (scale or min) pairs times bsum pairs; s[] holds it */
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) s[r] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            const __m512i pair = load_pair(pw, (has_min ? KQ_KP_MC : KQ_KP_SC) + 32 * (size_t)k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                s[r] = _mm512_add_epi32(s[r], _mm512_madd_epi16(pair, bcast32(ab + (size_t)r * stride + KQK_ACT_BSUMS + 4 * (size_t)k)));
        }
        const __m512 d = load_pair_f16(pw, 0);
        if (has_min) {
            const __m512 dmin = load_pair_f16(pw, KQ_KP_DMIN);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                /* acc + ((d*da)*(float)A - (dmin*da)*(float)B), as the reference */
                const __m512 da = bcast_f32(ab + (size_t)r * stride);
                const __m512 x = _mm512_mul_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(A[r]));
                const __m512 m = _mm512_mul_ps(_mm512_mul_ps(dmin, da), _mm512_cvtepi32_ps(s[r]));
                acc[r] = _mm512_add_ps(acc[r], _mm512_sub_ps(x, m));
            }
        } else {
            const int bias = kq_kpanel_bias_log2(type);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                const __m512i isum = _mm512_sub_epi32(A[r], _mm512_slli_epi32(s[r], bias));
                const __m512 dd = _mm512_mul_ps(d, bcast_f32(ab + (size_t)r * stride));
                acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(dd, _mm512_cvtepi32_ps(isum)));
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        _mm512_mask_storeu_ps(t->y + (size_t)(t->r0 + r) * (size_t)t->ldy + t->o0, t->lanes, acc[r]);
}

KQ_INLINE int tile_rows(int n_rows, int r0) {
    const int n_tiles = (n_rows + KQK512_TILE_ROWS - 1) / KQK512_TILE_ROWS;
    const int base = n_rows / n_tiles, extra = n_rows % n_tiles;
    return r0 < extra * (base + 1) ? base + 1 : base;
}

#define KQK512_LOOP(NAME, TYPE)                                                                           \
    static KQ_AVX512 void NAME(const struct kq_weight *w, const uint8_t *act, size_t stride, int n_rows,  \
                               float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {                    \
        const int64_t nb = w->n_in / KQ_QK_K, per_pair = KQ_PANEL * KQ_PANEL_PAIR;                       \
        const size_t pbb = kq_panel_block_bytes(TYPE);                                                    \
        for (int64_t pair = o_begin / per_pair; pair * per_pair < o_end; pair++) {                        \
            const int64_t o0 = pair * per_pair;                                                           \
            const int lo = o_begin > o0 ? (int)(o_begin - o0) : 0;                                        \
            const int hi = o_end < o0 + per_pair ? (int)(o_end - o0) : (int)per_pair;                     \
            struct ktile512 t = {.pw = (const uint8_t *)w->packed + kq_packed_block_offset(TYPE, nb, 2 * pair, 0), \
                                 .bstep = KQ_PANEL_PAIR * pbb, .stride = stride, .nb = nb, \
                                 .y = y, .ldy = ldy, .o0 = o0,                                            \
                                 .lanes = (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u))};             \
            for (int r0 = 0, R; r0 < n_rows; r0 += R) {                                                   \
                R = tile_rows(n_rows, r0);                                                                \
                t.act = act + (size_t)r0 * stride;                                                        \
                t.r0 = r0;                                                                                \
                t.prefetch = r0 == 0;                                                                     \
                switch (R) {                                                                              \
                case 8: ktile(&t, TYPE, 8); break;                                                        \
                case 7: ktile(&t, TYPE, 7); break;                                                        \
                case 6: ktile(&t, TYPE, 6); break;                                                        \
                case 5: ktile(&t, TYPE, 5); break;                                                        \
                case 4: ktile(&t, TYPE, 4); break;                                                        \
                case 3: ktile(&t, TYPE, 3); break;                                                        \
                case 2: ktile(&t, TYPE, 2); break;                                                        \
                default: ktile(&t, TYPE, 1); break;                                                       \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }

KQK512_LOOP(mmk512_q2_k, KQ_Q2_K)
KQK512_LOOP(mmk512_q3_k, KQ_Q3_K)
KQK512_LOOP(mmk512_q4_k, KQ_Q4_K)
KQK512_LOOP(mmk512_q5_k, KQ_Q5_K)
KQK512_LOOP(mmk512_q6_k, KQ_Q6_K)
KQK512_LOOP(mmk512_iq4_xs, KQ_IQ4_XS)

int kq_k_avx512_matmul(const struct kq_weight *w, const void *act, int n_rows,
                       float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {
    if (!w->packed || !kq_kpanel_type(w->type)) return -1;
    const uint8_t *a = act;
    const size_t stride = (size_t)((const uint8_t *)kq_act_row(w->type, act, w->n_in, 1) - a);
    switch (w->type) {
    case KQ_Q2_K: mmk512_q2_k(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q3_K: mmk512_q3_k(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q4_K: mmk512_q4_k(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q5_K: mmk512_q5_k(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q6_K: mmk512_q6_k(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    default:      mmk512_iq4_xs(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    }
}

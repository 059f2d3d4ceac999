/* matmul_k_avx2.c — the AVX2 kernel for the k-quants (Q2_K, Q3_K, Q4_K, Q5_K,
 * Q6_K, IQ4_XS) on K panels (matmul_layout.h).  Bit-identical to
 * matmul_ref.c: the integer sums are exact, and the float work per
 * super-block is the reference's, in its order.
 *
 * One 256-bit vector holds a group (4 elements) of a panel's 8 outputs.
 * vpmaddubsw multiplies the unsigned weight bytes with the row's broadcast
 * activation bytes into int16 pairs, and vpmaddwd by the unit's scale
 * (duplicated into both int16 halves of each lane) both widens them and
 * applies the scale: A accumulates sc*u*a in int32 directly.  The int16 pairs
 * are exact: u <= 63 for every type but IQ4_XS, so a pair is at most
 * 2*63*127.  IQ4_XS (u up to 241) takes its signed values kv instead, with
 * the sign trick of the Q8_0 kernel (|kv| x sign(a, kv), a pair at most
 * 2*127*127), which gives A - B itself.  B comes from the Q8_K block's bsums
 * with one vpmaddwd per two halves.  Tiles are up to 2 rows of both panels of
 * a pair, which the finely interleaved K panel layout keeps in one stream.
 *
 * No FMA: the reference multiplies and adds separately, and so must we.
 */
#include "matmul_k_avx2.h"

#include <immintrin.h>
#include <string.h>

#include "cpu_isa.h"

#define KQ_AVX2 __attribute__((target("avx2,f16c")))
#define KQ_INLINE static inline __attribute__((always_inline))

#define KQK2_TILE_ROWS 4
#define KQK2_PREFETCH_BLOCKS 2
#define KQK_ACT_QS 4      /* offsetof(kq_block_q8_K, qs) */
#define KQK_ACT_BSUMS 260 /* offsetof(kq_block_q8_K, bsums) */

struct ktile2 {
    const uint8_t *pw;  /* super-block 0 of the pair */
    int half0;          /* the first panel of the pair this tile computes (0, 1) */
    size_t bstep;       /* bytes from one super-block of the pair to the next */
    const uint8_t *act; /* row r0's first Q8_K block */
    size_t stride;
    int64_t nb;
    float *y;
    int64_t ldy;
    int64_t o0[KQ_PANEL_PAIR];  /* first output of each computed panel */
    int lo[KQ_PANEL_PAIR], hi[KQ_PANEL_PAIR];
    int r0, prefetch;
};

KQ_INLINE KQ_AVX2 __m256i bcast32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

KQ_INLINE KQ_AVX2 __m256 bcast_f32(const uint8_t *p) {
    float v;
    memcpy(&v, p, 4);
    return _mm256_set1_ps(v);
}

KQ_INLINE KQ_AVX2 __m256i load(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* This panel's vector / f16 row at panel-block offset `off` inside its pair's
 * block (kq_kpanel_pair_off). */
#define KPV(off) (pw + 2 * (size_t)(off) + 32 * (size_t)half)
#define KPH(off) (pw + 2 * (size_t)(off) + 16 * (size_t)half)

/* The weight bytes of group k (elements 4k..4k+3): unsigned u, or for IQ4_XS
 * the signed kv. */
KQ_INLINE KQ_AVX2 __m256i group_w(const uint8_t *pw, int half, const int type, int k, __m256i lut) {
    const size_t qoff = kq_kpanel_quant_off(type);
    if (!kq_kpanel_nibbles(type)) return load(KPV(qoff + 32 * (size_t)k));
    const int c = k / 16, kk = k % 16;
    const __m256i n = load(KPV(qoff + 256 * (size_t)c + 32 * (size_t)(kk % 8)));
    const __m256i nib = _mm256_and_si256(kk >= 8 ? _mm256_srli_epi16(n, 4) : n, _mm256_set1_epi8(0x0F));
    return type == KQ_IQ4_XS ? _mm256_shuffle_epi8(lut, nib) : nib;
}

/* R rows x P panels (P = 2: both panels of the pair, read as one stream). */
KQ_INLINE KQ_AVX2 void ktile(const struct ktile2 *t, const int type, const int R, const int P) {
    const int sub32 = kq_kpanel_sub32(type), has_min = kq_kpanel_has_min(type), iq4 = type == KQ_IQ4_XS;
    const int unit = sub32 ? 8 : 4; /* groups per scale */
    const size_t stride = t->stride;
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)kq_iq4nl_values));
    /* int16 scale of the even / odd half of a pair, into both halves of each
     * lane (vpshufb indexes bytes within each 128-bit half) */
    const __m256i dup_even = _mm256_setr_epi32(0x01000100, 0x05040504, 0x09080908, 0x0D0C0D0C,
                                               0x01000100, 0x05040504, 0x09080908, 0x0D0C0D0C);
    const __m256i dup_odd = _mm256_add_epi8(dup_even, _mm256_set1_epi8(2));
    __m256 acc[KQK2_TILE_ROWS][KQ_PANEL_PAIR];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int p = 0; p < P; p++) acc[r][p] = _mm256_setzero_ps();
    const uint8_t *pw = t->pw, *ab = t->act;
    for (int64_t b = 0; b < t->nb; b++, pw += t->bstep, ab += sizeof(kq_block_q8_K)) {
        if (t->prefetch) {
            const uintptr_t a = (uintptr_t)pw + KQK2_PREFETCH_BLOCKS * t->bstep;
            for (size_t l = 0; l < t->bstep; l += 64) _mm_prefetch((const char *)(a + l), _MM_HINT_T0);
        }
        __m256i A[KQK2_TILE_ROWS][KQ_PANEL_PAIR];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 2
            for (int p = 0; p < P; p++) A[r][p] = _mm256_setzero_si256();
#pragma GCC unroll 1
        for (int u = 0; u < 64 / unit; u++) {
            const int h = sub32 ? 2 * u : u;
            __m256i sc[KQ_PANEL_PAIR];
#pragma GCC unroll 2
            for (int p = 0; p < P; p++) {
                const int half = t->half0 + p;
                sc[p] = _mm256_shuffle_epi8(load(KPV(KQ_KP_SC + 32 * (size_t)(h / 2))), h % 2 ? dup_odd : dup_even);
            }
#pragma GCC unroll 8
            for (int gi = 0; gi < unit; gi++) {
                const int k = u * unit + gi;
                __m256i w[KQ_PANEL_PAIR], aw[KQ_PANEL_PAIR];
#pragma GCC unroll 2
                for (int p = 0; p < P; p++) {
                    w[p] = group_w(pw, t->half0 + p, type, k, lut);
                    aw[p] = iq4 ? _mm256_abs_epi8(w[p]) : w[p];
                }
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    const __m256i av = bcast32(ab + (size_t)r * stride + KQK_ACT_QS + 4 * (size_t)k);
#pragma GCC unroll 2
                    for (int p = 0; p < P; p++) {
                        const __m256i x = _mm256_maddubs_epi16(aw[p], iq4 ? _mm256_sign_epi8(av, w[p]) : av);
                        A[r][p] = _mm256_add_epi32(A[r][p], _mm256_madd_epi16(x, sc[p]));
                    }
                }
            }
        }
#pragma GCC unroll 2
        for (int p = 0; p < P; p++) {
            const int half = t->half0 + p;
            const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)KPH(0)));
            if (has_min) {
                __m256i B[KQK2_TILE_ROWS];
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) B[r] = _mm256_setzero_si256();
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++) {
                    const __m256i mc = load(KPV(KQ_KP_MC + 32 * (size_t)k));
#pragma GCC unroll 4
                    for (int r = 0; r < R; r++)
                        B[r] = _mm256_add_epi32(B[r], _mm256_madd_epi16(mc, bcast32(ab + (size_t)r * stride + KQK_ACT_BSUMS + 4 * (size_t)k)));
                }
                const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)KPH(KQ_KP_DMIN)));
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    /* acc + ((d*da)*(float)A - (dmin*da)*(float)B), as the reference */
                    const __m256 da = bcast_f32(ab + (size_t)r * stride);
                    const __m256 x = _mm256_mul_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(A[r][p]));
                    const __m256 m = _mm256_mul_ps(_mm256_mul_ps(dmin, da), _mm256_cvtepi32_ps(B[r]));
                    acc[r][p] = _mm256_add_ps(acc[r][p], _mm256_sub_ps(x, m));
                }
            } else {
                if (!iq4) { /* A - bias * sum_h sc_h * bsum_h */
                    const int bias = kq_kpanel_bias_log2(type);
#pragma GCC unroll 8
                    for (int k = 0; k < 8; k++) {
                        const __m256i scp = load(KPV(KQ_KP_SC + 32 * (size_t)k));
#pragma GCC unroll 4
                        for (int r = 0; r < R; r++) {
                            const __m256i bs = _mm256_madd_epi16(scp, bcast32(ab + (size_t)r * stride + KQK_ACT_BSUMS + 4 * (size_t)k));
                            A[r][p] = _mm256_sub_epi32(A[r][p], _mm256_slli_epi32(bs, bias));
                        }
                    }
                }
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    const __m256 dd = _mm256_mul_ps(d, bcast_f32(ab + (size_t)r * stride));
                    acc[r][p] = _mm256_add_ps(acc[r][p], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(A[r][p])));
                }
            }
        }
    }
#pragma GCC unroll 2
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            float *yr = t->y + (size_t)(t->r0 + r) * (size_t)t->ldy + t->o0[p];
            if (t->lo[p] == 0 && t->hi[p] == KQ_PANEL) {
                _mm256_storeu_ps(yr, acc[r][p]);
            } else {
                float tmp[KQ_PANEL];
                _mm256_storeu_ps(tmp, acc[r][p]);
                for (int i = t->lo[p]; i < t->hi[p]; i++) yr[i] = tmp[i];
            }
        }
}

KQ_INLINE int tile_rows(int n_rows, int r0, int max_rows) {
    const int n_tiles = (n_rows + max_rows - 1) / max_rows;
    const int base = n_rows / n_tiles, extra = n_rows % n_tiles;
    return r0 < extra * (base + 1) ? base + 1 : base;
}

#define KQK2_CASE(TYPE, r, p) \
    case (r) * 4 + (p): ktile(&tp, TYPE, r, p); break;

/* Per panel pair: up to 2 rows, both its panels inside [o_begin, o_end)
 * together (one stream through the pair's blocks: what a decode step needs);
 * from 3 rows on, one panel at a time in tiles of up to 4 rows, which unpack
 * each weight vector for more rows. */
#define KQK2_LOOP(NAME, TYPE)                                                                            \
    static KQ_AVX2 void NAME(const struct kq_weight *w, const uint8_t *act, size_t stride, int n_rows,    \
                             float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {                     \
        const int64_t nb = w->n_in / KQ_QK_K;                                                            \
        const size_t pbb = kq_panel_block_bytes(TYPE);                                                   \
        const int64_t p_begin = o_begin / KQ_PANEL, p_end = (o_end + KQ_PANEL - 1) / KQ_PANEL;           \
        for (int64_t pair = p_begin / 2; pair * 2 < p_end; pair++) {                                     \
            const int64_t pa = pair * 2 > p_begin ? pair * 2 : p_begin;                                  \
            const int64_t pz = pair * 2 + 2 < p_end ? pair * 2 + 2 : p_end;                              \
            const int P = (int)(pz - pa);                                                                \
            struct ktile2 t = {.pw = (const uint8_t *)w->packed + kq_packed_block_offset(TYPE, nb, pair * 2, 0), \
                               .half0 = (int)(pa - pair * 2), .bstep = KQ_PANEL_PAIR * pbb,              \
                               .stride = stride, .nb = nb, .y = y, .ldy = ldy};                          \
            for (int p = 0; p < P; p++) {                                                                \
                const int64_t o0 = (pa + p) * KQ_PANEL;                                                  \
                t.o0[p] = o0;                                                                            \
                t.lo[p] = o_begin > o0 ? (int)(o_begin - o0) : 0;                                        \
                t.hi[p] = o_end < o0 + KQ_PANEL ? (int)(o_end - o0) : KQ_PANEL;                          \
            }                                                                                            \
            const int by_panel = n_rows >= 3, max_rows = by_panel ? KQK2_TILE_ROWS : 2;                  \
            for (int p0 = 0; p0 < P; p0 += by_panel ? 1 : P) {                                           \
                struct ktile2 tp = t;                                                                    \
                const int PP = by_panel ? 1 : P;                                                         \
                tp.half0 = t.half0 + p0;                                                                 \
                tp.o0[0] = t.o0[p0], tp.lo[0] = t.lo[p0], tp.hi[0] = t.hi[p0];                           \
                for (int r0 = 0, R; r0 < n_rows; r0 += R) {                                              \
                    R = tile_rows(n_rows, r0, max_rows);                                                 \
                    tp.act = act + (size_t)r0 * stride;                                                  \
                    tp.r0 = r0;                                                                          \
                    tp.prefetch = r0 == 0 && p0 == 0;                                                    \
                    switch (R * 4 + PP) {                                                                \
                    KQK2_CASE(TYPE, 4, 1) KQK2_CASE(TYPE, 3, 1) KQK2_CASE(TYPE, 2, 2)                    \
                    KQK2_CASE(TYPE, 2, 1) KQK2_CASE(TYPE, 1, 2)                                          \
                    default: ktile(&tp, TYPE, 1, 1); break;                                              \
                    }                                                                                    \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
    }

KQK2_LOOP(mmk2_q2_k, KQ_Q2_K)
KQK2_LOOP(mmk2_q3_k, KQ_Q3_K)
KQK2_LOOP(mmk2_q4_k, KQ_Q4_K)
KQK2_LOOP(mmk2_q5_k, KQ_Q5_K)
KQK2_LOOP(mmk2_q6_k, KQ_Q6_K)
KQK2_LOOP(mmk2_iq4_xs, KQ_IQ4_XS)

int kq_k_avx2_matmul(const struct kq_weight *w, const void *act, int n_rows,
                     float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {
    if (!w->packed || !kq_kpanel_type(w->type)) return -1;
    const uint8_t *a = act;
    const size_t stride = (size_t)((const uint8_t *)kq_act_row(w->type, act, w->n_in, 1) - a);
    switch (w->type) {
    case KQ_Q2_K: mmk2_q2_k(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q3_K: mmk2_q3_k(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q4_K: mmk2_q4_k(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q5_K: mmk2_q5_k(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q6_K: mmk2_q6_k(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    default:      mmk2_iq4_xs(w, a, stride, n_rows, y, ldy, o_begin, o_end); return 0;
    }
}

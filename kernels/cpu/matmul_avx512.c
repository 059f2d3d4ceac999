/* matmul_avx512.c — the AVX-512 VNNI kernels for the 32-block weight types
 * (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL), and their AMX-INT8 tile variant
 * (the amx path, at the end of the file).  Every function here reproduces
 * matmul_ref.c bit for bit; only the schedule differs.
 *
 * Same packed panels as the AVX2 kernels (matmul_layout.h), read a pair at a
 * time: one 512-bit vector holds group g (elements 4g..4g+3) of both panels of
 * a pair, so its 16 lanes are 16 consecutive outputs.  The row's 4 activation
 * bytes are broadcast from memory and multiplied with vpdpbusd (unsigned
 * weight bytes x signed activation bytes, 4 products added into each int32
 * lane): one instruction per 64 multiply-adds, where AVX2 needs vpmaddubsw and
 * an add per 32.  The sums are exact int32, so their order is free; the float
 * work after them is the reference's, per block, in its order.
 *
 * Weight bytes must be unsigned for vpdpbusd:
 *   Q4_1  the nibbles q in 0..15 as they are: sumi = sum q*a;
 *   Q4_0  the same nibbles, then sumi = sum q*a - 8*sum a;
 *   Q8_0  w xor 0x80 = w+128 in 0..255, then sumi = sum (w+128)*a - 128*sum a.
 * sum a is the int32 the quantized input row already stores per block (Q8_0
 * act layout), and the identities are exact in int32 (|sum| < 32*255*127).
 *
 * Schedule: tiles of up to KQ512_TILE_ROWS rows x one panel pair.  Per block
 * the loop runs over the 8 groups: form the group's weight vector once (two
 * 256-bit loads joined, and for Q4 a shift and a mask), then one vpdpbusd per
 * row with the broadcast folded into the instruction's memory operand.  An
 * 8-row tile keeps 8 int32 sums and 8 float accumulators in registers (of
 * 32); the weight vector is formed once per 8 rows.  Per (row, block, 16
 * outputs) = 512 multiply-adds: 8 vpdpbusd, then 1 convert, 3 multiplies and
 * 2 adds of float work (Q4_1; Q4_0 and Q8_0 one multiply and one add fewer,
 * one integer subtract more).
 *
 * Memory: the first row tile of a pair streams the weights; the others
 * reread them from L1/L2.  A call of 1 to 3 rows leaves the stream to the
 * hardware prefetchers: on Zen 4 a software prefetch 8 blocks ahead into L1
 * (what the AVX2 kernels do) made the 1-row step of the Q8_0 model slower,
 * 1 thread 15.8 -> 12.2 ms median without it, interleaved on a busy
 * machine (bench_matmul -w Q8_0).  From 4 rows, where the kernel spends
 * more time per byte, a prefetch into L2 24 blocks ahead (13 KB of Q8_0)
 * keeps the stream ahead of the compute (16 rows: 35.9 -> 28.1 ms median).
 *
 * No FMA: the reference multiplies and adds separately, and so must we.
 * This file does not choose paths (matmul.c does).
 */
#include "matmul_avx512.h"
#include "matmul_k_avx512.h"

#include <immintrin.h>
#include <string.h>

#include "cpu_isa.h"

#define KQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,f16c")))
#define KQ_INLINE static inline __attribute__((always_inline))

#define KQ512_TILE_ROWS 8
#define KQ512_PREFETCH_BLOCKS 24
#define KQ512_PREFETCH_MIN_ROWS 4

int kq_avx512_usable(void) { return kq_isa() >= KQ_ISA_AVX512VNNI; }

/* One tile's operands.  pw: block 0 of the pair's first panel; the second
 * panel's block b sits pstride bytes after the first one's, block b+1 bstep
 * bytes after block b.  q, d, s: row r0's block-0 qs, d[0] and s[0] (for the
 * Q8_0 act layout, the int32 sum of the block's bytes); row r0+r is at
 * r*stride.  Results go to y[r*ldy + o0 + lane] for the lanes in `lanes`. */
struct tile512 {
    const uint8_t *pw;
    size_t pstride, bstep;
    const uint8_t *q, *d, *s;
    size_t stride, qstep;
    int64_t nb;
    float *y;
    int64_t ldy, o0;
    __mmask16 lanes;
    int r0;
    int prefetch;
};

/* Bytes off..off+31 of both panels' current block, as lanes 0-7 and 8-15. */
KQ_INLINE KQ_AVX512 __m512i load_pair(const uint8_t *pw, size_t pstride, size_t off) {
    const __m256i a = _mm256_loadu_si256((const __m256i *)(pw + off));
    const __m256i b = _mm256_loadu_si256((const __m256i *)(pw + pstride + off));
    return _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
}

/* The 8 f16 values at off of both panels' current block, as 16 floats. */
KQ_INLINE KQ_AVX512 __m512 load_pair_f16(const uint8_t *pw, size_t pstride, size_t off) {
    const __m128i a = _mm_loadu_si128((const __m128i *)(pw + off));
    const __m128i b = _mm_loadu_si128((const __m128i *)(pw + pstride + off));
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1));
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

KQ_INLINE void prefetch_block(const uint8_t *pw, size_t bstep) {
    const uintptr_t a = (uintptr_t)pw + KQ512_PREFETCH_BLOCKS * bstep;
    for (size_t l = 0; l < bstep; l += 64) _mm_prefetch((const char *)(a + l), _MM_HINT_T1);
}

enum { W_Q4_1, W_Q4_0, W_Q8_0, W_Q5_0, W_Q5_1, W_IQ4_NL };

/* The weight vector of group g (elements 4g..4g+3 of each output) as
 * unsigned bytes; `quant` is where the quants start in a panel block, qh the
 * pair's Q5 fifth-bit words, nl IQ4_NL's kv + 128 per nibble.  Q5: bits
 * 4g..4g+3 of qh index a 16-entry table (vpermd uses the low 4 bits) of the
 * 4 bytes' 0x10. */
KQ_INLINE KQ_AVX512 __m512i group_weights(const uint8_t *pw, size_t pstride, int kind, size_t quant, int g,
                                          __m512i qh, __m512i nl) {
    if (kind == W_Q8_0)
        return _mm512_xor_si512(load_pair(pw, pstride, quant + 32 * (size_t)g), _mm512_set1_epi8((char)0x80));
    /* low nibbles of vector g for g < 4, high nibbles of vector g-4 after */
    const __m512i n = load_pair(pw, pstride, quant + 32 * (size_t)(g & 3));
    const __m512i nib = _mm512_and_si512(g < 4 ? n : _mm512_srli_epi16(n, 4), _mm512_set1_epi8(0x0F));
    if (kind == W_IQ4_NL) return _mm512_shuffle_epi8(nl, nib);
    if (kind != W_Q5_0 && kind != W_Q5_1) return nib;
    const __m512i tab = _mm512_setr_epi32(0, 0x10, 0x1000, 0x1010, 0x100000, 0x100010, 0x101000, 0x101010,
                                          0x10000000, 0x10000010, 0x10001000, 0x10001010, 0x10100000,
                                          0x10100010, 0x10101000, 0x10101010);
    return _mm512_or_si512(nib, _mm512_permutexvar_epi32(_mm512_srli_epi32(qh, 4 * g), tab));
}

/* The reference's float work for one row and block, added to acc: with a
 * min (Q4_1, Q5_1) acc + ((dw*da)*(float)sumi + mw*sa); otherwise acc +
 * (dw*da)*(float)(sumi - bias*sum a), the bias 8, 16 or 128 (Q4_0, Q5_0;
 * Q8_0's w xor 0x80 and IQ4_NL's kv + 128).  d and s: the row's block d and
 * s (the int32 sum of a's bytes in the Q8_0 act layout). */
KQ_INLINE KQ_AVX512 __m512 block_float(int kind, __m512 acc, __m512i sumi, __m512 dw, __m512 mw, const uint8_t *d,
                                       const uint8_t *s) {
    if (kind == W_Q4_1 || kind == W_Q5_1) {
        const __m512 x = _mm512_mul_ps(_mm512_mul_ps(dw, bcast_f32(d)), _mm512_cvtepi32_ps(sumi));
        return _mm512_add_ps(acc, _mm512_add_ps(x, _mm512_mul_ps(mw, bcast_f32(s))));
    }
    const int shift = kind == W_Q4_0 ? 3 : kind == W_Q5_0 ? 4 : 7;
    const __m512 si = _mm512_cvtepi32_ps(_mm512_sub_epi32(sumi, _mm512_slli_epi32(bcast32(s), shift)));
    return _mm512_add_ps(acc, _mm512_mul_ps(_mm512_mul_ps(dw, bcast_f32(d)), si));
}

/* Rows per tile for a call of n rows: ceil(n/max_rows) tiles as even as
 * possible, larger first, because a small tile forms each weight vector for
 * few rows. */
KQ_INLINE int tile_rows(int n_rows, int r0, int max_rows) {
    const int n_tiles = (n_rows + max_rows - 1) / max_rows;
    const int base = n_rows / n_tiles, extra = n_rows % n_tiles;
    return r0 < extra * (base + 1) ? base + 1 : base;
}

KQ_INLINE KQ_AVX512 void tile(const struct tile512 *t, const int kind, const int R) {
    const size_t stride = t->stride, pstride = t->pstride;
    const int has_min = kind == W_Q4_1 || kind == W_Q5_1;
    /* after the f16 d (and m) of 8 outputs, and Q5's qh words */
    const size_t qh_off = kind == W_Q5_1 ? KQ_Q5_1_QH : KQ_Q5_0_QH;
    const size_t quant = kind == W_Q5_0 || kind == W_Q5_1 ? qh_off + 32 : has_min ? 32 : 16;
    /* IQ4_NL's kv + 128 for each nibble, in every 128-bit lane */
    uint8_t nl_b[16];
    for (int i = 0; i < 16; i++) nl_b[i] = (uint8_t)(kq_iq4nl_values[i] + 128);
    const __m512i nl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)nl_b));
    const uint8_t *q = t->q, *rd = t->d, *rs = t->s;
    __m512 acc[KQ512_TILE_ROWS];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const uint8_t *pw = t->pw;
    for (int64_t b = 0; b < t->nb; b++, pw += t->bstep, q += t->qstep, rd += 4, rs += 4) {
        if (t->prefetch) prefetch_block(pw, t->bstep);
        __m512i s[KQ512_TILE_ROWS];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) s[r] = _mm512_setzero_si512();
        const __m512i qh = kind == W_Q5_0 || kind == W_Q5_1 ? load_pair(pw, pstride, qh_off) : _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            const __m512i w = group_weights(pw, pstride, kind, quant, g, qh, nl);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) s[r] = _mm512_dpbusd_epi32(s[r], w, bcast32(q + (size_t)r * stride + 4 * g));
        }
        const __m512 dw = load_pair_f16(pw, pstride, 0);
        const __m512 mw = has_min ? load_pair_f16(pw, pstride, 16) : _mm512_setzero_ps();
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            acc[r] = block_float(kind, acc[r], s[r], dw, mw, rd + (size_t)r * stride, rs + (size_t)r * stride);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        _mm512_mask_storeu_ps(t->y + (size_t)(t->r0 + r) * (size_t)t->ldy + t->o0, t->lanes, acc[r]);
}

/* One function per weight type so that each row count is compiled with the
 * tile inlined and its accumulators in registers. */
#define KQ512_LOOP(NAME, KIND, QS_OFF)                                                                  \
    static KQ_AVX512 void NAME(const struct kq_weight *w, const struct kq_act_geom *g, const uint8_t *act, \
                               int n_rows, float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {        \
        const int64_t nb = w->n_in / KQ_QK, per_pair = KQ_PANEL * KQ_PANEL_PAIR;                          \
        const size_t pbb = kq_panel_block_bytes(w->type);                                                 \
        for (int64_t pair = o_begin / per_pair; pair * per_pair < o_end; pair++) {                        \
            const int64_t o0 = pair * per_pair;                                                           \
            const int lo = o_begin > o0 ? (int)(o_begin - o0) : 0;                                        \
            const int hi = o_end < o0 + per_pair ? (int)(o_end - o0) : (int)per_pair;                     \
            struct tile512 t = {.pw = (const uint8_t *)w->packed + kq_packed_block_offset(w->type, nb, 2 * pair, 0), \
                                .pstride = pbb, .bstep = KQ_PANEL_PAIR * pbb, .stride = g->stride,        \
                                .qstep = g->blk_bytes, .nb = nb, .y = y, .ldy = ldy, .o0 = o0,             \
                                .lanes = (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u))};             \
            for (int r0 = 0, R; r0 < n_rows; r0 += R) {                                                   \
                R = tile_rows(n_rows, r0, KQ512_TILE_ROWS);                                                                \
                const uint8_t *row = act + (size_t)r0 * g->stride;                                        \
                t.q = row + (QS_OFF);                                                                     \
                t.d = row + g->off_d;                                                                     \
                t.s = row + g->off_s;                                                                     \
                t.r0 = r0;                                                                                \
                t.prefetch = r0 == 0 && n_rows >= KQ512_PREFETCH_MIN_ROWS;                                \
                switch (R) {                                                                              \
                case 8: tile(&t, KIND, 8); break;                                                         \
                case 7: tile(&t, KIND, 7); break;                                                         \
                case 6: tile(&t, KIND, 6); break;                                                         \
                case 5: tile(&t, KIND, 5); break;                                                         \
                case 4: tile(&t, KIND, 4); break;                                                         \
                case 3: tile(&t, KIND, 3); break;                                                         \
                case 2: tile(&t, KIND, 2); break;                                                         \
                default: tile(&t, KIND, 1); break;                                                        \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
    }

/* The qs of a Q8_1 block follow its d and s (4 bytes), those of a Q8_0 block its d. */
KQ512_LOOP(mm512_q4_1, W_Q4_1, 4)
KQ512_LOOP(mm512_q4_0, W_Q4_0, 2)
KQ512_LOOP(mm512_q8_0, W_Q8_0, 2)
KQ512_LOOP(mm512_q5_0, W_Q5_0, 2)
KQ512_LOOP(mm512_iq4_nl, W_IQ4_NL, 2)
KQ512_LOOP(mm512_q5_1, W_Q5_1, 4)

int kq_avx512_matmul(const struct kq_weight *w, const void *act, int n_rows,
                     float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {
    if (!w->packed) return -1;
    if (kq_kpanel_type(w->type)) return kq_k_avx512_matmul(w, act, n_rows, y, ldy, o_begin, o_end);
    const struct kq_act_geom g = kq_act_geom_q32(w->type, w->n_in);
    switch (w->type) {
    case KQ_Q4_1: mm512_q4_1(w, &g, act, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q4_0: mm512_q4_0(w, &g, act, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q8_0: mm512_q8_0(w, &g, act, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_IQ4_NL: mm512_iq4_nl(w, &g, act, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q5_0: mm512_q5_0(w, &g, act, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q5_1: mm512_q5_1(w, &g, act, n_rows, y, ldy, o_begin, o_end); return 0;
    default:      return -1; /* the other types take the AVX2 kernels */
    }
}

/* ---- activation quantization (same bytes as kq_act_quantize_q32_scalar) ---- */

/* Blocks of a row whose scales are computed together: each pass below works
 * on this many blocks (a row of 1536 is 48 blocks: three groups). */
#define KQ512_QGROUP 16
/* round to nearest even, no exceptions: an immediate operand, so a macro */
#define KQ512_NEAREST (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* Per row, in three passes over groups of 16 blocks: (1) each block's
 * largest |x| (max(|x|, m) keeps m when |x| is NaN, as the scalar loop
 * does); (2) the 16 blocks' d = amax/127 and 1/d = 127/amax with one
 * vector division each, and their f16 forms; (3) each block's bytes: x*id
 * clamped to [-127, 127] (NaN -> 127: min returns its second operand),
 * rounded to nearest even, and its sum; then the 16 sums' f16 s = d*sum.
 * The same IEEE operations as the scalar loop, element by element. */
KQ_AVX512 void kq_avx512_act_quantize_q32(int wtype, const float *x, int64_t n_in, int r_begin, int r_end,
                                          void *act) {
    const struct kq_act_geom g = kq_act_geom_q32(wtype, n_in);
    const int64_t nb = n_in / KQ_QK;
    const __m512 hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f), zero = _mm512_setzero_ps();
    for (int r = r_begin; r < r_end; r++) {
        const float *xr = x + (size_t)r * (size_t)n_in;
        uint8_t *row = (uint8_t *)act + (size_t)r * g.stride;
        for (int64_t b0 = 0; b0 < nb; b0 += KQ512_QGROUP) {
            const int n = nb - b0 < KQ512_QGROUP ? (int)(nb - b0) : KQ512_QGROUP;
            const __mmask16 live = (__mmask16)((1u << n) - 1u);
            float amax[KQ512_QGROUP] = {0}, id[KQ512_QGROUP];
            int32_t sum[KQ512_QGROUP] = {0};
            for (int i = 0; i < n; i++) {
                const float *xb = xr + (b0 + i) * KQ_QK;
                __m512 m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb)), zero);
                m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb + 16)), m);
                amax[i] = _mm512_reduce_max_ps(m);
            }
            const __m512 av = _mm512_loadu_ps(amax);
            const __m512 d = _mm512_div_ps(av, hi);
            const __m512 idv = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(av, zero, _CMP_NEQ_UQ), hi, av);
            _mm512_storeu_ps(id, idv);
            const __m256i dh = _mm512_cvtps_ph(d, KQ512_NEAREST);
            _mm512_mask_storeu_ps((float *)(row + g.off_d) + b0, live, _mm512_cvtph_ps(dh));
            uint16_t dh16[KQ512_QGROUP];
            _mm256_storeu_si256((__m256i *)dh16, dh);
            for (int i = 0; i < n; i++) {
                const float *xb = xr + (b0 + i) * KQ_QK;
                const __m512 s = _mm512_set1_ps(id[i]);
                const __m512 t0 = _mm512_max_ps(_mm512_min_ps(_mm512_mul_ps(_mm512_loadu_ps(xb), s), hi), lo);
                const __m512 t1 = _mm512_max_ps(_mm512_min_ps(_mm512_mul_ps(_mm512_loadu_ps(xb + 16), s), hi), lo);
                const __m512i q0 = _mm512_cvt_roundps_epi32(t0, KQ512_NEAREST),
                              q1 = _mm512_cvt_roundps_epi32(t1, KQ512_NEAREST);
                sum[i] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                uint8_t *blk = row + (size_t)(b0 + i) * g.blk_bytes;
                memcpy(blk, &dh16[i], 2);
                int8_t *qs = (int8_t *)(blk + (g.blk_bytes == sizeof(kq_block_q8_1) ? 4 : 2));
                _mm_storeu_si128((__m128i *)qs, _mm512_cvtsepi32_epi8(q0));
                _mm_storeu_si128((__m128i *)(qs + 16), _mm512_cvtsepi32_epi8(q1));
            }
            if (g.blk_bytes == sizeof(kq_block_q8_1)) {
                const __m512 sv = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_loadu_si512(sum)));
                const __m256i sh = _mm512_cvtps_ph(sv, KQ512_NEAREST);
                _mm512_mask_storeu_ps((float *)(row + g.off_s) + b0, live, _mm512_cvtph_ps(sh));
                _mm512_mask_storeu_epi32((int32_t *)(row + g.off_a) + b0, live, _mm512_loadu_si512(sum));
                uint16_t sh16[KQ512_QGROUP];
                _mm256_storeu_si256((__m256i *)sh16, sh);
                for (int i = 0; i < n; i++) memcpy(row + (size_t)(b0 + i) * g.blk_bytes + 2, &sh16[i], 2);
            } else {
                _mm512_mask_storeu_epi32((int32_t *)(row + g.off_s) + b0, live, _mm512_loadu_si512(sum));
            }
        }
    }
}

/* ---- AMX-INT8 tiles (the amx path) ----
 * The same panels and the same per-block float work as tile() above; only the
 * int32 block sums of up to 16 rows x 16 outputs come from one tile multiply
 * instead of 8 vpdpbusd per row.  Per block:
 *   B tile (tmm1, 8 rows x 64 bytes): the pair's 8 group vectors
 *     (group_weights), stored one after the other: row g holds elements
 *     4g..4g+3 of each of the 16 outputs, the layout TDPBSUD reads;
 *   A tile (tmm0, R rows x 32 bytes): the block's 32 activation bytes of each
 *     row, loaded in place at the quantized input's row stride;
 *   C tile (tmm2, R rows x 16 int32): zeroed, then TDPBSUD (signed activation
 *     bytes x unsigned weight bytes, four products added per int32) leaves
 *     exactly the sums the vpdpbusd loop forms; stored, then read back row by
 *     row into the reference's float work.
 * So the results are the same bits as every other path.  Memory: nothing
 * beyond the panels; 1.5 KB of tile staging per thread.  The float work per
 * (row, block, 16 outputs) stays, so the gain over avx512vnni is the int8
 * part: worth it from a few rows up (KQ_AMX_MIN_ROWS), where tree steps and
 * prefill live; one-row decoding is memory-bound and keeps the VNNI kernels. */
#define KQ_AMX __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,f16c,amx-tile,amx-int8")))
#define KQ_AMX_TILE_ROWS 16

int kq_amx_usable(void) { return kq_isa() >= KQ_ISA_AMX; }

/* The 64-byte LDTILECFG operand (palette 1). */
struct amx_tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* Per thread, in static storage so that the memory barriers below order the
 * plain stores to them against the tile instructions that read them: the
 * configuration (for amx_rows rows), the B tile and C's copy. */
static _Thread_local struct amx_tilecfg amx_cfg __attribute__((aligned(64)));
static _Thread_local int amx_rows;
static _Thread_local uint8_t amx_b[8 * 64] __attribute__((aligned(64)));
static _Thread_local int32_t amx_c[KQ_AMX_TILE_ROWS * 16] __attribute__((aligned(64)));

/* GCC's tile load and configuration statements do not declare that they
 * read memory; without this the compiler could move the stores of the B
 * tile or the configuration past them. */
#define AMX_MEMORY_BARRIER() __asm__ volatile("" ::: "memory")

/* Configure the tiles for R rows; a no-op while this thread's configuration
 * already is for R (it stays loaded between calls). */
KQ_AMX static void amx_configure(int R) {
    if (amx_rows == R) return;
    memset(&amx_cfg, 0, sizeof amx_cfg);
    amx_cfg.palette = 1;
    amx_cfg.rows[0] = (uint8_t)R;
    amx_cfg.colsb[0] = 32;
    amx_cfg.rows[1] = 8;
    amx_cfg.colsb[1] = 64;
    amx_cfg.rows[2] = (uint8_t)R;
    amx_cfg.colsb[2] = 64;
    AMX_MEMORY_BARRIER();
    _tile_loadconfig(&amx_cfg);
    amx_rows = R;
}

KQ_INLINE KQ_AMX void tile_amx(const struct tile512 *t, const int kind, const int R) {
    const size_t stride = t->stride, pstride = t->pstride;
    const int has_min = kind == W_Q4_1 || kind == W_Q5_1;
    const size_t qh_off = kind == W_Q5_1 ? KQ_Q5_1_QH : KQ_Q5_0_QH;
    const size_t quant = kind == W_Q5_0 || kind == W_Q5_1 ? qh_off + 32 : has_min ? 32 : 16;
    uint8_t nl_b[16];
    for (int i = 0; i < 16; i++) nl_b[i] = (uint8_t)(kq_iq4nl_values[i] + 128);
    const __m512i nl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)nl_b));
    amx_configure(R);
    const uint8_t *q = t->q, *rd = t->d, *rs = t->s;
    __m512 acc[KQ_AMX_TILE_ROWS];
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    const uint8_t *pw = t->pw;
    for (int64_t b = 0; b < t->nb; b++, pw += t->bstep, q += t->qstep, rd += 4, rs += 4) {
        if (t->prefetch) prefetch_block(pw, t->bstep);
        const __m512i qh = kind == W_Q5_0 || kind == W_Q5_1 ? load_pair(pw, pstride, qh_off) : _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++)
            _mm512_store_si512((__m512i *)(amx_b + 64 * g), group_weights(pw, pstride, kind, quant, g, qh, nl));
        AMX_MEMORY_BARRIER();
        _tile_loadd(1, amx_b, 64);
        _tile_loadd(0, q, (long)stride);
        _tile_zero(2);
        _tile_dpbsud(2, 0, 1);
        _tile_stored(2, amx_c, 64);
        const __m512 dw = load_pair_f16(pw, pstride, 0);
        const __m512 mw = has_min ? load_pair_f16(pw, pstride, 16) : _mm512_setzero_ps();
        for (int r = 0; r < R; r++)
            acc[r] = block_float(kind, acc[r], _mm512_load_si512((const __m512i *)(amx_c + 16 * r)), dw, mw,
                                 rd + (size_t)r * stride, rs + (size_t)r * stride);
    }
    for (int r = 0; r < R; r++)
        _mm512_mask_storeu_ps(t->y + (size_t)(t->r0 + r) * (size_t)t->ldy + t->o0, t->lanes, acc[r]);
}

KQ_INLINE KQ_AMX void amx_loop(const struct kq_weight *w, int kind, size_t qs_off, const struct kq_act_geom *g,
                            const uint8_t *act, int n_rows, float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {
    const int64_t nb = w->n_in / KQ_QK, per_pair = KQ_PANEL * KQ_PANEL_PAIR;
    const size_t pbb = kq_panel_block_bytes(w->type);
    for (int64_t pair = o_begin / per_pair; pair * per_pair < o_end; pair++) {
        const int64_t o0 = pair * per_pair;
        const int lo = o_begin > o0 ? (int)(o_begin - o0) : 0;
        const int hi = o_end < o0 + per_pair ? (int)(o_end - o0) : (int)per_pair;
        struct tile512 t = {.pw = (const uint8_t *)w->packed + kq_packed_block_offset(w->type, nb, 2 * pair, 0),
                            .pstride = pbb, .bstep = KQ_PANEL_PAIR * pbb, .stride = g->stride,
                            .qstep = g->blk_bytes, .nb = nb, .y = y, .ldy = ldy, .o0 = o0,
                            .lanes = (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u))};
        for (int r0 = 0, R; r0 < n_rows; r0 += R) {
            R = tile_rows(n_rows, r0, KQ_AMX_TILE_ROWS);
            const uint8_t *row = act + (size_t)r0 * g->stride;
            t.q = row + qs_off;
            t.d = row + g->off_d;
            t.s = row + g->off_s;
            t.r0 = r0;
            t.prefetch = r0 == 0;
            tile_amx(&t, kind, R);
        }
    }
}

KQ_AMX int kq_amx_matmul(const struct kq_weight *w, const void *act, int n_rows,
                  float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {
    if (!w->packed || n_rows < KQ_AMX_MIN_ROWS || kq_kpanel_type(w->type)) return -1;
    const struct kq_act_geom g = kq_act_geom_q32(w->type, w->n_in);
    const uint8_t *a = act;
    /* one call per type, so that each is compiled with its kind constant;
     * the qs of a Q8_1 block follow its d and s, those of a Q8_0 block its d */
    switch (w->type) {
    case KQ_Q4_1:   amx_loop(w, W_Q4_1, 4, &g, a, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q5_1:   amx_loop(w, W_Q5_1, 4, &g, a, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q4_0:   amx_loop(w, W_Q4_0, 2, &g, a, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q8_0:   amx_loop(w, W_Q8_0, 2, &g, a, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q5_0:   amx_loop(w, W_Q5_0, 2, &g, a, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_IQ4_NL: amx_loop(w, W_IQ4_NL, 2, &g, a, n_rows, y, ldy, o_begin, o_end); return 0;
    default:        return -1;
    }
}

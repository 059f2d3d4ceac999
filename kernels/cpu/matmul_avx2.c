/* matmul_avx2.c — the AVX2 kernels: weight repacking into 8-output panels,
 * the Q4_1/Q4_0/Q8_0 integer kernels, the float-weight kernel and the AVX2
 * activation quantizer.  Every function here reproduces matmul_ref.c /
 * quant_act.c bit for bit; only the schedule differs.
 *
 * Design (architecture.md, "CPU kernels"): 8-bit activations with exact int32
 * block sums, then the block's scales applied in f32 in the reference's fixed
 * order.  The vector lanes hold 8 (output, row) pairs: here the 8 outputs of a
 * panel for one row.  Per 32-block, the panel's nibbles are unpacked once into
 * eight 32-byte vectors (vector g, lane o = elements 4g..4g+3 of output o) and
 * reused for R rows (R = 4 per pass); for each row, group g's 4 activation
 * bytes are broadcast straight from memory and multiplied with vpmaddubsw
 * (unsigned weights x signed activations, 2 products per int16), the eight
 * groups summed in int16 and widened once with vpmaddwd: that is exactly the
 * 4-byte-per-lane dot product that VNNI's vpdpbusd would give.  The float work
 * (5 operations for 8 pairs) is paid once per block per 8 pairs, as with rows in
 * the lanes, and the same kernel serves one row (decode, bandwidth-bound: no
 * horizontal sums) and many rows (compute-bound).  Putting outputs rather than
 * rows in the lanes keeps the activation rows in their plain layout and lets
 * each (row, panel) result be stored as one vector.
 *
 * Exactness of the int16 sums: Q4 weights are 0..15 and activations -127..127,
 * so a pair is at most 3,810 and eight pairs 30,480 < 32,767 (still true for
 * -128, 30,720).  Q8_0 weights need the sign trick (|w| x sign(a, w), a pair at
 * most 2*128*127 = 32,512), so each group is widened on its own.  Q4_0 uses the
 * unsigned nibble q and subtracts 8*sum(a), an exact integer identity.
 *
 * No FMA: the reference multiplies and adds separately, and so must we.
 * This file does not choose paths (matmul.c does) and holds no scalar
 * fallback.
 */
#include "matmul_internal.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

#define KQ_AVX2 __attribute__((target("avx2,f16c")))
#define KQ_INLINE static inline __attribute__((always_inline))
#ifndef KQ_ROWS_PER_PASS
#define KQ_ROWS_PER_PASS 4
#endif

int kq_avx2_usable(void) {
    /* F16C for the f16 scales; FMA is deliberately not used (see above). */
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}

/* ---- repacking ---------------------------------------------------------- */

int kq_avx2_repack(struct kq_weight *w) {
    const size_t pbb = kq_panel_block_bytes(w->type);
    if (!pbb || w->n_out == 0) return 0;
    const int64_t nb = w->n_in / KQ_QK, n_panels = (w->n_out + KQ_PANEL - 1) / KQ_PANEL;
    const size_t bytes = (size_t)n_panels * (size_t)nb * pbb;
    uint8_t *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p) return ENG_E_NOMEM;
    memset(p, 0, bytes); /* padding outputs: zero scales and quants */
    const size_t rb = kq_row_bytes(w->type, w->n_in);
    for (int64_t o = 0; o < w->n_out; o++) {
        const uint8_t *src = (const uint8_t *)w->data + (size_t)o * rb;
        const int lane = (int)(o % KQ_PANEL);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *dst = p + ((size_t)(o / KQ_PANEL) * (size_t)nb + (size_t)b) * pbb;
            if (w->type == KQ_Q4_1) {
                const kq_block_q4_1 *blk = (const kq_block_q4_1 *)src + b;
                memcpy(dst + 2 * lane, &blk->d, 2);
                memcpy(dst + 16 + 2 * lane, &blk->m, 2);
                for (int v = 0; v < 4; v++) memcpy(dst + 32 + 32 * v + 4 * lane, blk->qs + 4 * v, 4);
            } else if (w->type == KQ_Q4_0) {
                const kq_block_q4_0 *blk = (const kq_block_q4_0 *)src + b;
                memcpy(dst + 2 * lane, &blk->d, 2);
                for (int v = 0; v < 4; v++) memcpy(dst + 16 + 32 * v + 4 * lane, blk->qs + 4 * v, 4);
            } else {
                const kq_block_q8_0 *blk = (const kq_block_q8_0 *)src + b;
                memcpy(dst + 2 * lane, &blk->d, 2);
                for (int g = 0; g < 8; g++) memcpy(dst + 16 + 32 * g + 4 * lane, blk->qs + 4 * g, 4);
            }
        }
    }
    w->packed = p;
    w->packed_bytes = bytes;
    return 0;
}

/* ---- helpers ------------------------------------------------------------- */

KQ_INLINE KQ_AVX2 __m256i bcast32(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Unpack one Q4 panel block's 4 nibble vectors into the 8 group vectors. */
KQ_INLINE KQ_AVX2 void unpack_q4(const uint8_t *qs, __m256i wv[8]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * v));
        wv[v] = _mm256_and_si256(q, m4);
        wv[v + 4] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    }
}

/* sum_g maddubs(wv[g], a[4g..4g+3]) widened to int32: the exact block dot
 * product of 8 outputs with one activation block (Q4 weights only). */
KQ_INLINE KQ_AVX2 __m256i dot_q4_block(const __m256i wv[8], const int8_t *aq) {
    __m256i s = _mm256_maddubs_epi16(wv[0], bcast32(aq));
#pragma GCC unroll 8
    for (int g = 1; g < 8; g++) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(wv[g], bcast32(aq + 4 * g)));
    return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

/* Store the lanes [lo, hi) of a panel result to y[o0 + lo .. o0 + hi). */
KQ_INLINE KQ_AVX2 void store_panel(float *y, int64_t o0, __m256 v, int lo, int hi) {
    if (lo == 0 && hi == KQ_PANEL) {
        _mm256_storeu_ps(y + o0, v);
        return;
    }
    float tmp[KQ_PANEL];
    _mm256_storeu_ps(tmp, v);
    for (int i = lo; i < hi; i++) y[o0 + i] = tmp[i];
}

/* Where a panel's results go: y[r*ldy + o0 + lane] for lanes [lo, hi). */
struct panel_out {
    float *y;
    int64_t ldy, o0;
    int lo, hi;
};

KQ_INLINE KQ_AVX2 void panel_store(const struct panel_out *out, int r0, const int R, const __m256 *acc) {
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        store_panel(out->y + (size_t)(r0 + r) * (size_t)out->ldy, out->o0, acc[r], out->lo, out->hi);
}

struct act_view {
    const uint8_t *base;  /* row 0 */
    size_t stride, blk, off_d, off_s;
};

/* Pointers to the rows r0.. of a pass: the block qs, d and s arrays of row
 * r0, the other rows at multiples of the stride (kept in locals so that the
 * compiler forms addresses without reloading the view). */
struct pass_ptrs {
    const uint8_t *q;   /* qs of block 0 of row r0 */
    const float *d, *s; /* d[0], s[0] of row r0 (s: int32 asum for Q8_0) */
    size_t stride;
};

KQ_INLINE struct pass_ptrs pass_begin(const struct act_view *a, int r0, size_t qs_off) {
    const uint8_t *row = a->base + (size_t)r0 * a->stride;
    struct pass_ptrs p = {row + qs_off, (const float *)(row + a->off_d), (const float *)(row + a->off_s), a->stride};
    return p;
}

#define ROW_F(ptr, r, stride, b) (*(const float *)((const uint8_t *)(ptr) + (size_t)(r) * (stride) + 4 * (size_t)(b)))

/* ---- Q4_1 x Q8_1 ------------------------------------------------------- */

KQ_INLINE KQ_AVX2 void panel_q4_1(const uint8_t *pw, int64_t nb, const struct act_view *a,
                                  int r0, const int R, const struct panel_out *out) {
    __m256 acc[KQ_ROWS_PER_PASS];
    const struct pass_ptrs pp = pass_begin(a, r0, 4);
    const size_t stride = pp.stride, blk = sizeof(kq_block_q8_1);
    const uint8_t *q = pp.q;
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, pw += KQ_PANEL_Q4_1_BYTES, q += blk) {
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)pw));
        const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pw + 16)));
        __m256i wv[8];
        unpack_q4(pw + 32, wv);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const __m256i si = dot_q4_block(wv, (const int8_t *)(q + (size_t)r * stride));
            const __m256 da = _mm256_set1_ps(ROW_F(pp.d, r, stride, b));
            const __m256 sa = _mm256_set1_ps(ROW_F(pp.s, r, stride, b));
            const __m256 t = _mm256_mul_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(si));
            const __m256 u = _mm256_mul_ps(mw, sa);
            acc[r] = _mm256_add_ps(acc[r], _mm256_add_ps(t, u));
        }
    }
    panel_store(out, r0, R, acc);
}

/* ---- Q4_0 x Q8_0 ------------------------------------------------------- */

KQ_INLINE KQ_AVX2 void panel_q4_0(const uint8_t *pw, int64_t nb, const struct act_view *a,
                                  int r0, const int R, const struct panel_out *out) {
    __m256 acc[KQ_ROWS_PER_PASS];
    const struct pass_ptrs pp = pass_begin(a, r0, 2);
    const size_t stride = pp.stride, blk = sizeof(kq_block_q8_0);
    const uint8_t *q = pp.q;
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, pw += KQ_PANEL_Q4_0_BYTES, q += blk) {
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)pw));
        __m256i wv[8];
        unpack_q4(pw + 16, wv);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256i si = dot_q4_block(wv, (const int8_t *)(q + (size_t)r * stride));
            /* sum (q-8)*a = sum q*a - 8*sum a */
            const int32_t *asum = (const int32_t *)((const uint8_t *)pp.s + (size_t)r * stride) + b;
            si = _mm256_sub_epi32(si, _mm256_slli_epi32(bcast32(asum), 3));
            const __m256 da = _mm256_set1_ps(ROW_F(pp.d, r, stride, b));
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(si)));
        }
    }
    panel_store(out, r0, R, acc);
}

/* ---- Q8_0 x Q8_0 ------------------------------------------------------- */

KQ_INLINE KQ_AVX2 void panel_q8_0(const uint8_t *pw, int64_t nb, const struct act_view *a,
                                  int r0, const int R, const struct panel_out *out) {
    __m256 acc[KQ_ROWS_PER_PASS];
    const struct pass_ptrs pp = pass_begin(a, r0, 2);
    const size_t stride = pp.stride, blk = sizeof(kq_block_q8_0);
    const uint8_t *q = pp.q;
    const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, pw += KQ_PANEL_Q8_0_BYTES, q += blk) {
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)pw));
        const __m256i *wq = (const __m256i *)(pw + 16);
        __m256i aw[8];
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) aw[g] = _mm256_abs_epi8(_mm256_loadu_si256(wq + g));
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const int8_t *aq = (const int8_t *)(q + (size_t)r * stride);
            __m256i si = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int g = 0; g < 8; g++) {
                const __m256i sa = _mm256_sign_epi8(bcast32(aq + 4 * g), _mm256_loadu_si256(wq + g));
                si = _mm256_add_epi32(si, _mm256_madd_epi16(_mm256_maddubs_epi16(aw[g], sa), ones));
            }
            const __m256 da = _mm256_set1_ps(ROW_F(pp.d, r, stride, b));
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(si)));
        }
    }
    panel_store(out, r0, R, acc);
}

/* ---- the panel loop ------------------------------------------------------ */

#if KQ_ROWS_PER_PASS > 6
#error "the switch in KQ_PANEL_LOOP covers R = 1..6"
#endif
#define KQ_CASE(KERNEL, n) \
    case n: if (n <= KQ_ROWS_PER_PASS) KERNEL(pw, nb, a, r0, n <= KQ_ROWS_PER_PASS ? n : 1, &out); break;

/* One function per weight type so that each R case is compiled with the kernel
 * inlined and its accumulators in registers. */
#define KQ_PANEL_LOOP(NAME, KERNEL)                                                          \
    static KQ_AVX2 void NAME(const struct kq_weight *w, const struct act_view *a, int n_rows, \
                             float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {         \
        const int64_t nb = w->n_in / KQ_QK;                                                  \
        const size_t pstride = (size_t)nb * kq_panel_block_bytes(w->type);                   \
        for (int64_t p = o_begin / KQ_PANEL; p * KQ_PANEL < o_end; p++) {                    \
            const uint8_t *pw = (const uint8_t *)w->packed + (size_t)p * pstride;            \
            const int64_t o0 = p * KQ_PANEL;                                                 \
            const int lo = o_begin > o0 ? (int)(o_begin - o0) : 0;                           \
            const int hi = o_end < o0 + KQ_PANEL ? (int)(o_end - o0) : KQ_PANEL;             \
            const struct panel_out out = {y, ldy, o0, lo, hi};                               \
            for (int r0 = 0; r0 < n_rows; r0 += KQ_ROWS_PER_PASS) {                          \
                const int R = n_rows - r0 < KQ_ROWS_PER_PASS ? n_rows - r0 : KQ_ROWS_PER_PASS; \
                switch (R) {                                                                 \
                KQ_CASE(KERNEL, 6) KQ_CASE(KERNEL, 5) KQ_CASE(KERNEL, 4)                     \
                KQ_CASE(KERNEL, 3) KQ_CASE(KERNEL, 2)                                        \
                default: KERNEL(pw, nb, a, r0, 1, &out); break;                              \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }

KQ_PANEL_LOOP(mm_q4_1, panel_q4_1)
KQ_PANEL_LOOP(mm_q4_0, panel_q4_0)
KQ_PANEL_LOOP(mm_q8_0, panel_q8_0)

/* ---- float weights --------------------------------------------------------- */

/* 8 weights of row w (type F32/F16/BF16) from element k, as f32. */
KQ_INLINE KQ_AVX2 __m256 load_w8(int type, const uint8_t *w, int64_t k) {
    switch (type) {
    case KQ_F32: return _mm256_loadu_ps((const float *)w + k);
    case KQ_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 2 * k)));
    default:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + 2 * k))), 16));
    }
}

KQ_INLINE float scalar_w(int type, const uint8_t *w, int64_t k) {
    switch (type) {
    case KQ_F32: { float f; memcpy(&f, w + 4 * k, 4); return f; }
    case KQ_F16: { kq_f16 h; memcpy(&h, w + 2 * k, 2); return kq_f16_to_f32(h); }
    default:     { kq_bf16 h; memcpy(&h, w + 2 * k, 2); return kq_bf16_to_f32(h); }
    }
}

/* The reference's 8-lane order (matmul_ref.c): lane j holds elements k = j mod 8. */
KQ_INLINE KQ_AVX2 float dot_float(int type, const uint8_t *w, const float *x, int64_t n) {
    const int64_t n8 = n & ~(int64_t)7;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t k = 0; k < n8; k += 8)
        acc = _mm256_add_ps(acc, _mm256_mul_ps(load_w8(type, w, k), _mm256_loadu_ps(x + k)));
    float lane[8];
    _mm256_storeu_ps(lane, acc);
    for (int64_t k = n8; k < n; k++) lane[k - n8] = lane[k - n8] + scalar_w(type, w, k) * x[k];
    return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

#define KQ_FLOAT_LOOP(NAME, TYPE)                                                            \
    static KQ_AVX2 void NAME(const struct kq_weight *w, const float *x, int n_rows, float *y, \
                             int64_t ldy, int64_t o_begin, int64_t o_end) {                   \
        const size_t rb = kq_row_bytes(TYPE, w->n_in);                                       \
        for (int64_t o = o_begin; o < o_end; o++) {                                          \
            const uint8_t *wr = (const uint8_t *)w->data + (size_t)o * rb;                   \
            for (int r = 0; r < n_rows; r++)                                                 \
                y[(size_t)r * (size_t)ldy + (size_t)o] =                                     \
                    dot_float(TYPE, wr, x + (size_t)r * (size_t)w->n_in, w->n_in);           \
        }                                                                                    \
    }

KQ_FLOAT_LOOP(mm_f32, KQ_F32)
KQ_FLOAT_LOOP(mm_f16, KQ_F16)
KQ_FLOAT_LOOP(mm_bf16, KQ_BF16)

int kq_avx2_matmul(const struct kq_weight *w, const void *act, int n_rows,
                   float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {
    switch (w->type) {
    case KQ_F32:  mm_f32(w, act, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_F16:  mm_f16(w, act, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_BF16: mm_bf16(w, act, n_rows, y, ldy, o_begin, o_end); return 0;
    case KQ_Q4_1: case KQ_Q4_0: case KQ_Q8_0:
        break;
    default:
        return -1; /* k-quants: the reference is the fast path for now */
    }
    if (!w->packed) return -1;
    const struct kq_act_geom g = kq_act_geom_q32(w->type, w->n_in);
    const struct act_view a = {act, g.stride, g.blk_bytes, g.off_d, g.off_s};
    if (w->type == KQ_Q4_1)      mm_q4_1(w, &a, n_rows, y, ldy, o_begin, o_end);
    else if (w->type == KQ_Q4_0) mm_q4_0(w, &a, n_rows, y, ldy, o_begin, o_end);
    else                         mm_q8_0(w, &a, n_rows, y, ldy, o_begin, o_end);
    return 0;
}

/* ---- activation quantization (same bytes as kq_act_quantize_q32_scalar) ---- */

KQ_AVX2 void kq_avx2_act_quantize_q32(int wtype, const float *x, int64_t n_in, int r_begin,
                                      int r_end, void *act) {
    const struct kq_act_geom g = kq_act_geom_q32(wtype, n_in);
    const int64_t nb = n_in / KQ_QK;
    const __m256 sign = _mm256_set1_ps(-0.0f), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int r = r_begin; r < r_end; r++) {
        const float *xr = x + (size_t)r * (size_t)n_in;
        uint8_t *row = (uint8_t *)act + (size_t)r * g.stride;
        for (int64_t b = 0; b < nb; b++) {
            __m256 v[4];
            __m256 m = _mm256_setzero_ps();
            for (int i = 0; i < 4; i++) {
                v[i] = _mm256_loadu_ps(xr + b * KQ_QK + 8 * i);
                /* max(|x|, m) keeps m when |x| is NaN, as the scalar loop does */
                m = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), m);
            }
            __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            const float amax = _mm_cvtss_f32(m4);
            const float d = amax / 127.0f;
            const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
            const __m256 idv = _mm256_set1_ps(id);
            __m256i q[4];
            for (int i = 0; i < 4; i++) {
                __m256 t = _mm256_min_ps(_mm256_mul_ps(v[i], idv), hi);
                t = _mm256_max_ps(t, lo);
                q[i] = _mm256_cvtps_epi32(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
            __m256i s8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
            s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
            const int sum = _mm_cvtsi128_si32(s4);
            const __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
            const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), perm);
            const kq_f16 dh = kq_f32_to_f16(d);
            ((float *)(row + g.off_d))[b] = kq_f16_to_f32(dh);
            if (wtype == KQ_Q4_1) {
                kq_block_q8_1 *blk = (kq_block_q8_1 *)(row + (size_t)b * g.blk_bytes);
                blk->d = dh;
                blk->s = kq_f32_to_f16(d * (float)sum);
                _mm256_storeu_si256((__m256i *)blk->qs, p8);
                ((float *)(row + g.off_s))[b] = kq_f16_to_f32(blk->s);
            } else {
                kq_block_q8_0 *blk = (kq_block_q8_0 *)(row + (size_t)b * g.blk_bytes);
                blk->d = dh;
                _mm256_storeu_si256((__m256i *)blk->qs, p8);
                ((int32_t *)(row + g.off_s))[b] = sum;
            }
        }
    }
}

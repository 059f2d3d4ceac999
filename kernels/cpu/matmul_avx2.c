/* matmul_avx2.c — the AVX2 kernels: weight repacking into 8-output panels,
 * the Q4_1/Q4_0/Q8_0 integer kernels, the float-weight kernel and the AVX2
 * activation quantizer.  Every function here reproduces matmul_ref.c /
 * quant_act.c bit for bit; only the schedule differs.
 *
 * Design (docs/architecture.md, "CPU kernels"): 8-bit activations with exact int32
 * block sums, then the block's scales applied in f32 in the reference's fixed
 * order.  The vector lanes hold the 8 outputs of a panel for one row: group g
 * of a 32-block (elements 4g..4g+3) is one vector whose lane o holds output
 * o's 4 weight bytes; the row's 4 activation bytes are broadcast straight from
 * memory and multiplied with vpmaddubsw (unsigned weights x signed
 * activations, 2 products per int16); the eight groups are summed in int16 and
 * widened once with vpmaddwd, which is exactly the 4-byte-per-lane dot product
 * that VNNI's vpdpbusd would give.  The float work (madd, cvt, 3 mul, 2 add for
 * Q4_1) is paid once per block per 8 (output, row) pairs, and each (row, panel)
 * result is stored as one vector.
 *
 * Schedule: tiles of up to KQ_TILE_ROWS = 4 rows x KQ_TILE_PANELS = 2 panels.
 * Per block the loop runs over the 8 groups outermost: load (and for Q4
 * unpack) the group's weight vector of each of the 2 panels, then for each of
 * the 4 rows broadcast the row's 4 activation bytes once and multiply them
 * with both panels' vectors into 8 int16 (Q8_0: int32) accumulators that stay
 * in registers (8 accumulators + 2 weight vectors + 1 broadcast + the nibble
 * mask = 12 of the 16 ymm registers).  Per (row, panel, block) = 256 MACs the
 * Q4_1 tile issues 8 vpmaddubsw (32 MACs each), 7 vpaddw, 1 vpmaddwd, 1
 * vcvtdq2ps, 3 vmulps, 2 vaddps (the irreducible 22), plus 4 broadcast loads
 * (each serves 2 panels), 3 unpack operations (each nibble vector serves 4
 * rows), 1 scale broadcast, 1/2 vcvtph2ps and the accumulator's load and
 * store: 34 instructions in all.  A 1-panel x 4-row pass that keeps its 8
 * unpacked weight vectors in registers across rows needs 45: it spills its
 * accumulators and weights to the stack and broadcasts every activation group
 * for every panel.  On a Zen 3 core the tile runs at ~8.3 cycles per 256 MACs
 * (single thread, weights in cache; 11.3 for that pass), which is the
 * throughput of the bare instruction mix: vpmaddubsw and vpmaddwd share two
 * pipes, and the int16 adds and float work fill the rest.  (Q8_0 needs
 * vpsignb and a widening per group, 4 operations per group: 13 cycles.)
 *
 * The accumulation order of the int16/int32 sums does not matter (they are
 * exact), but the compiler's re-association of them into a tree keeps all 64
 * products of a block alive and spills them; an empty asm on each accumulator
 * after each group keeps the sums serial and in registers.
 *
 * Memory: the packed layout puts the blocks of the two panels of a tile side
 * by side (matmul_layout.h), so a tile reads one sequential stream, and the
 * tiles of one panel pair reread it from L1 for every 4 rows: each weight byte
 * comes from memory once per call whatever the row count.  The first row tile
 * of each pair prefetches 8 blocks ahead; at 1 to 4 rows, where the stream
 * is the bottleneck, that makes a model step 6.2 ms instead of 6.7 (1 row)
 * and 7.5 ms instead of 8.6 (4 rows) on one Zen 3 thread.
 *
 * Exactness of the int16 sums: Q4 weights are 0..15 and activations -127..127,
 * so a pair is at most 3,810 and eight pairs 30,480 < 32,767 in any order
 * (still true for -128, 30,720).  Q8_0 weights need the sign trick (|w| x
 * sign(a, w), a pair at most 2*128*127 = 32,512), so each group is widened on
 * its own.  Q4_0 uses the unsigned nibble q and subtracts 8*sum(a), an exact
 * integer identity.
 *
 * No FMA: the reference multiplies and adds separately, and so must we.
 * This file does not choose paths (matmul.c does) and holds no scalar
 * fallback.
 */
#include "matmul_avx2.h"
#include "matmul_k_avx2.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_isa.h"

#define KQ_AVX2 __attribute__((target("avx2,f16c")))
#define KQ_INLINE static inline __attribute__((always_inline))

#define KQ_TILE_ROWS 4
#define KQ_TILE_PANELS KQ_PANEL_PAIR

int kq_avx2_usable(void) {
    /* F16C for the f16 scales; FMA is deliberately not used (see above). */
    return kq_isa() >= KQ_ISA_AVX2;
}

/* ---- repacking ---------------------------------------------------------- */

int kq_avx2_repack(struct kq_weight *w) {
    const size_t pbb = kq_panel_block_bytes(w->type);
    if (!pbb || w->n_out == 0) return 0;
    const int64_t nb = w->n_in / KQ_QK;
    const size_t bytes = kq_packed_bytes(w->type, w->n_in, w->n_out);
    uint8_t *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p) return KQ_E_NOMEM;
    memset(p, 0, bytes); /* padding outputs: zero scales and quants */
    const size_t rb = kq_row_bytes(w->type, w->n_in);
    for (int64_t o = 0; o < w->n_out; o++) {
        const uint8_t *src = (const uint8_t *)w->data + (size_t)o * rb;
        const int lane = (int)(o % KQ_PANEL);
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *dst = p + kq_packed_block_offset(w->type, nb, o / KQ_PANEL, b);
            if (w->type == KQ_Q4_1) {
                const kq_block_q4_1 *blk = (const kq_block_q4_1 *)src + b;
                memcpy(dst + 2 * lane, &blk->d, 2);
                memcpy(dst + 16 + 2 * lane, &blk->m, 2);
                for (int v = 0; v < 4; v++) memcpy(dst + 32 + 32 * v + 4 * lane, blk->qs + 4 * v, 4);
            } else if (w->type == KQ_Q4_0 || w->type == KQ_IQ4_NL) { /* the same block layout */
                const kq_block_q4_0 *blk = (const kq_block_q4_0 *)src + b;
                memcpy(dst + 2 * lane, &blk->d, 2);
                for (int v = 0; v < 4; v++) memcpy(dst + 16 + 32 * v + 4 * lane, blk->qs + 4 * v, 4);
            } else if (w->type == KQ_Q5_0) {
                const kq_block_q5_0 *blk = (const kq_block_q5_0 *)src + b;
                memcpy(dst + 2 * lane, &blk->d, 2);
                memcpy(dst + KQ_Q5_0_QH + 4 * lane, blk->qh, 4);
                for (int v = 0; v < 4; v++) memcpy(dst + KQ_Q5_0_QH + 32 + 32 * v + 4 * lane, blk->qs + 4 * v, 4);
            } else if (w->type == KQ_Q5_1) {
                const kq_block_q5_1 *blk = (const kq_block_q5_1 *)src + b;
                memcpy(dst + 2 * lane, &blk->d, 2);
                memcpy(dst + 16 + 2 * lane, &blk->m, 2);
                memcpy(dst + KQ_Q5_1_QH + 4 * lane, blk->qh, 4);
                for (int v = 0; v < 4; v++) memcpy(dst + KQ_Q5_1_QH + 32 + 32 * v + 4 * lane, blk->qs + 4 * v, 4);
            } else {
                /* Q8_0: one byte per element, group g (elements 4g..4g+3) at 16 + 32*g */
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

KQ_INLINE KQ_AVX2 __m256 bcast_f32(const uint8_t *p) {
    float v;
    memcpy(&v, p, 4);
    return _mm256_set1_ps(v);
}

/* Keep v in a register here, in this order: see "re-association" above. */
#define KQ_PIN(v) __asm__("" : "+x"(v))

/* Blocks ahead that the first row tile of a pair prefetches (both panels'
 * blocks, bstep bytes each step): ~2.5 KB for Q4_1, a few hundred cycles of
 * work ahead at any row count, past the memory latency.  Prefetch never
 * faults, so running past the end of the packed copy is harmless (the
 * address is formed as an integer for that reason). */
#define KQ_PREFETCH_BLOCKS 8

KQ_INLINE void prefetch_block(const uint8_t *pw, size_t bstep) {
    const uintptr_t a = (uintptr_t)pw + KQ_PREFETCH_BLOCKS * bstep;
    for (size_t l = 0; l < bstep; l += 64) _mm_prefetch((const char *)(a + l), _MM_HINT_T0);
}

/* Where a panel's results go: y[r*ldy + o0 + lane] for lanes [lo, hi). */
struct panel_out {
    float *y;
    int64_t ldy, o0;
    int lo, hi;
};

/* Store the lanes [lo, hi) of row r's result of one panel. */
KQ_INLINE KQ_AVX2 void panel_store(const struct panel_out *out, int r, __m256 v) {
    float *y = out->y + (size_t)r * (size_t)out->ldy + out->o0;
    if (out->lo == 0 && out->hi == KQ_PANEL) {
        _mm256_storeu_ps(y, v);
        return;
    }
    float tmp[KQ_PANEL];
    _mm256_storeu_ps(tmp, v);
    for (int i = out->lo; i < out->hi; i++) y[i] = tmp[i];
}

/* One tile's operands.  pw: block 0 of the tile's first panel; the second
 * panel's block b is pstride bytes after the first one's, block b+1 bstep
 * bytes after block b.  q, d, s: row r0's block-0 qs, d[0] and s[0] (Q8_0:
 * int32 asum[0]); row r0+r is at r*stride. */
struct tile_args {
    const uint8_t *pw;
    size_t pstride, bstep;
    const uint8_t *q, *d, *s, *a; /* a: int32 asum[0] (Q8_1 act layout) */
    size_t stride, qstep;
    int64_t nb;
    const struct panel_out *out; /* one per panel */
    int r0;
    int prefetch; /* 1 for the first row tile of a pair: it streams the weights from memory */
};

/* ---- Q4_1 x Q8_1 ------------------------------------------------------- */

KQ_INLINE KQ_AVX2 void tile_q4_1(const struct tile_args *t, const int R, const int P) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const size_t stride = t->stride;
    const uint8_t *q = t->q, *rd = t->d, *rs = t->s;
    __m256 acc[KQ_TILE_ROWS][KQ_TILE_PANELS];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int p = 0; p < P; p++) acc[r][p] = _mm256_setzero_ps();
    const uint8_t *pw = t->pw;
    for (int64_t b = 0; b < t->nb; b++, pw += t->bstep, q += t->qstep, rd += 4, rs += 4) {
        if (t->prefetch) prefetch_block(pw, t->bstep);
        __m256i s[KQ_TILE_ROWS][KQ_TILE_PANELS];
        /* group g: low nibbles of vector g for g < 4, high nibbles of g-4
         * after; either way the activation bytes are 4g..4g+3 */
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            __m256i wv[KQ_TILE_PANELS];
#pragma GCC unroll 2
            for (int p = 0; p < P; p++) {
                const __m256i n = _mm256_loadu_si256((const __m256i *)(pw + (size_t)p * t->pstride + 32 + 32 * (g & 3)));
                wv[p] = _mm256_and_si256(g < 4 ? n : _mm256_srli_epi16(n, 4), m4);
            }
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256i av = bcast32(q + (size_t)r * stride + 4 * g);
#pragma GCC unroll 2
                for (int p = 0; p < P; p++) {
                    const __m256i x = _mm256_maddubs_epi16(wv[p], av);
                    s[r][p] = g == 0 ? x : _mm256_add_epi16(s[r][p], x);
                    KQ_PIN(s[r][p]);
                }
            }
        }
        __m256 dw[KQ_TILE_PANELS], mw[KQ_TILE_PANELS];
#pragma GCC unroll 2
        for (int p = 0; p < P; p++) {
            dw[p] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pw + (size_t)p * t->pstride)));
            mw[p] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pw + (size_t)p * t->pstride + 16)));
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256 da = bcast_f32(rd + (size_t)r * stride), sa = bcast_f32(rs + (size_t)r * stride);
#pragma GCC unroll 2
            for (int p = 0; p < P; p++) {
                /* acc + ((dw*da)*(float)sumi + mw*sa), as the reference */
                const __m256 si = _mm256_cvtepi32_ps(_mm256_madd_epi16(s[r][p], ones));
                const __m256 x = _mm256_mul_ps(_mm256_mul_ps(dw[p], da), si);
                acc[r][p] = _mm256_add_ps(acc[r][p], _mm256_add_ps(x, _mm256_mul_ps(mw[p], sa)));
            }
        }
    }
#pragma GCC unroll 2
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) panel_store(&t->out[p], t->r0 + r, acc[r][p]);
}

/* ---- Q4_0 x Q8_0 ------------------------------------------------------- */

KQ_INLINE KQ_AVX2 void tile_q4_0(const struct tile_args *t, const int R, const int P) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const size_t stride = t->stride;
    const uint8_t *q = t->q, *rd = t->d, *rs = t->s;
    __m256 acc[KQ_TILE_ROWS][KQ_TILE_PANELS];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int p = 0; p < P; p++) acc[r][p] = _mm256_setzero_ps();
    const uint8_t *pw = t->pw;
    for (int64_t b = 0; b < t->nb; b++, pw += t->bstep, q += t->qstep, rd += 4, rs += 4) {
        if (t->prefetch) prefetch_block(pw, t->bstep);
        __m256i s[KQ_TILE_ROWS][KQ_TILE_PANELS];
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            __m256i wv[KQ_TILE_PANELS];
#pragma GCC unroll 2
            for (int p = 0; p < P; p++) {
                const __m256i n = _mm256_loadu_si256((const __m256i *)(pw + (size_t)p * t->pstride + 16 + 32 * (g & 3)));
                wv[p] = _mm256_and_si256(g < 4 ? n : _mm256_srli_epi16(n, 4), m4);
            }
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256i av = bcast32(q + (size_t)r * stride + 4 * g);
#pragma GCC unroll 2
                for (int p = 0; p < P; p++) {
                    const __m256i x = _mm256_maddubs_epi16(wv[p], av);
                    s[r][p] = g == 0 ? x : _mm256_add_epi16(s[r][p], x);
                    KQ_PIN(s[r][p]);
                }
            }
        }
        __m256 dw[KQ_TILE_PANELS];
#pragma GCC unroll 2
        for (int p = 0; p < P; p++)
            dw[p] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pw + (size_t)p * t->pstride)));
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256 da = bcast_f32(rd + (size_t)r * stride);
            /* sum (q-8)*a = sum q*a - 8*sum a */
            const __m256i a8 = _mm256_slli_epi32(bcast32(rs + (size_t)r * stride), 3);
#pragma GCC unroll 2
            for (int p = 0; p < P; p++) {
                const __m256i si = _mm256_sub_epi32(_mm256_madd_epi16(s[r][p], ones), a8);
                acc[r][p] = _mm256_add_ps(acc[r][p], _mm256_mul_ps(_mm256_mul_ps(dw[p], da), _mm256_cvtepi32_ps(si)));
            }
        }
    }
#pragma GCC unroll 2
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) panel_store(&t->out[p], t->r0 + r, acc[r][p]);
}

/* ---- Q5_0 x Q8_0 and Q5_1 x Q8_1 ----------------------------------------- */

/* The fifth bits of group g (bits 4g..4g+3 of each lane's qh) as 0x10 in the
 * group's 4 bytes: vpermd looks the low 3 bits up in an 8-entry table, and a
 * shift moves bit 3 to byte 3. */
KQ_INLINE KQ_AVX2 __m256i q5_high(__m256i qh, int g, __m256i tab) {
    const __m256i h = _mm256_srli_epi32(qh, 4 * g);
    return _mm256_or_si256(_mm256_permutevar8x32_epi32(tab, h),
                           _mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(8)), 25));
}

/* The weights enter as q - 16 in -16..15 with the sign trick of the Q8_0
 * kernel (|w| x sign(a, w)): a pair is at most 2*16*127, so the eight groups
 * of a block still add up exactly in int16.  Q5_0's sum is then the
 * reference's sum (q-16)*a; Q5_1 (MIN) adds 16*sum a back to get sum q*a,
 * and its float work is Q4_1's. */
KQ_INLINE KQ_AVX2 void tile_q5(const struct tile_args *t, const int R, const int P, const int MIN) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi8(16);
    const __m256i tab = _mm256_setr_epi32(0, 0x10, 0x1000, 0x1010, 0x100000, 0x100010, 0x101000, 0x101010);
    const size_t stride = t->stride, qh_off = MIN ? KQ_Q5_1_QH : KQ_Q5_0_QH, quant = qh_off + 32;
    const uint8_t *q = t->q, *rd = t->d, *rs = t->s, *ra = t->a;
    __m256 acc[KQ_TILE_ROWS][KQ_TILE_PANELS];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int p = 0; p < P; p++) acc[r][p] = _mm256_setzero_ps();
    const uint8_t *pw = t->pw;
    for (int64_t b = 0; b < t->nb; b++, pw += t->bstep, q += t->qstep, rd += 4, rs += 4, ra += 4) {
        if (t->prefetch) prefetch_block(pw, t->bstep);
        __m256i s[KQ_TILE_ROWS][KQ_TILE_PANELS], qh[KQ_TILE_PANELS];
#pragma GCC unroll 2
        for (int p = 0; p < P; p++) qh[p] = _mm256_loadu_si256((const __m256i *)(pw + (size_t)p * t->pstride + qh_off));
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            __m256i wv[KQ_TILE_PANELS], aw[KQ_TILE_PANELS];
#pragma GCC unroll 2
            for (int p = 0; p < P; p++) {
                const __m256i n = _mm256_loadu_si256((const __m256i *)(pw + (size_t)p * t->pstride + quant + 32 * (g & 3)));
                const __m256i nib = _mm256_and_si256(g < 4 ? n : _mm256_srli_epi16(n, 4), m4);
                wv[p] = _mm256_sub_epi8(_mm256_or_si256(nib, q5_high(qh[p], g, tab)), sixteen);
                aw[p] = _mm256_abs_epi8(wv[p]);
            }
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256i av = bcast32(q + (size_t)r * stride + 4 * g);
#pragma GCC unroll 2
                for (int p = 0; p < P; p++) {
                    const __m256i x = _mm256_maddubs_epi16(aw[p], _mm256_sign_epi8(av, wv[p]));
                    s[r][p] = g == 0 ? x : _mm256_add_epi16(s[r][p], x);
                    KQ_PIN(s[r][p]);
                }
            }
        }
        __m256 dw[KQ_TILE_PANELS], mw[KQ_TILE_PANELS];
#pragma GCC unroll 2
        for (int p = 0; p < P; p++) {
            dw[p] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pw + (size_t)p * t->pstride)));
            if (MIN) mw[p] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pw + (size_t)p * t->pstride + 16)));
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256 da = bcast_f32(rd + (size_t)r * stride);
#pragma GCC unroll 2
            for (int p = 0; p < P; p++) {
                __m256i si = _mm256_madd_epi16(s[r][p], ones);
                if (MIN) si = _mm256_add_epi32(si, _mm256_slli_epi32(bcast32(ra + (size_t)r * stride), 4));
                const __m256 x = _mm256_mul_ps(_mm256_mul_ps(dw[p], da), _mm256_cvtepi32_ps(si));
                if (MIN) /* acc + ((dw*da)*(float)sumi + mw*sa), as the reference */
                    acc[r][p] = _mm256_add_ps(acc[r][p], _mm256_add_ps(x, _mm256_mul_ps(mw[p], bcast_f32(rs + (size_t)r * stride))));
                else
                    acc[r][p] = _mm256_add_ps(acc[r][p], x);
            }
        }
    }
#pragma GCC unroll 2
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) panel_store(&t->out[p], t->r0 + r, acc[r][p]);
}

/* ---- Q8_0 and IQ4_NL x Q8_0 ---------------------------------------------------- */

/* NL: the panel holds IQ4_NL nibbles (Q4_0's layout), looked up into their
 * signed values kv; then the same arithmetic as Q8_0's bytes. */
KQ_INLINE KQ_AVX2 void tile_q8(const struct tile_args *t, const int R, const int P, const int NL) {
    const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0F);
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)kq_iq4nl_values));
    const size_t stride = t->stride, quant = 16;
    const uint8_t *q = t->q, *rd = t->d;
    __m256 acc[KQ_TILE_ROWS][KQ_TILE_PANELS];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int p = 0; p < P; p++) acc[r][p] = _mm256_setzero_ps();
    const uint8_t *pw = t->pw;
    for (int64_t b = 0; b < t->nb; b++, pw += t->bstep, q += t->qstep, rd += 4) {
        if (t->prefetch) prefetch_block(pw, t->bstep);
        __m256i s[KQ_TILE_ROWS][KQ_TILE_PANELS];
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            __m256i wv[KQ_TILE_PANELS], aw[KQ_TILE_PANELS];
#pragma GCC unroll 2
            for (int p = 0; p < P; p++) {
                if (NL) {
                    const __m256i n = _mm256_loadu_si256((const __m256i *)(pw + (size_t)p * t->pstride + quant + 32 * (g & 3)));
                    wv[p] = _mm256_shuffle_epi8(lut, _mm256_and_si256(g < 4 ? n : _mm256_srli_epi16(n, 4), m4));
                } else {
                    wv[p] = _mm256_loadu_si256((const __m256i *)(pw + (size_t)p * t->pstride + quant + 32 * g));
                }
                aw[p] = _mm256_abs_epi8(wv[p]);
            }
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const __m256i av = bcast32(q + (size_t)r * stride + 4 * g);
#pragma GCC unroll 2
                for (int p = 0; p < P; p++) {
                    /* |w| x sign(a, w): a pair is at most 32,512, so widen per group */
                    const __m256i x = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[p], _mm256_sign_epi8(av, wv[p])), ones);
                    s[r][p] = g == 0 ? x : _mm256_add_epi32(s[r][p], x);
                    KQ_PIN(s[r][p]);
                }
            }
        }
        __m256 dw[KQ_TILE_PANELS];
#pragma GCC unroll 2
        for (int p = 0; p < P; p++)
            dw[p] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pw + (size_t)p * t->pstride)));
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256 da = bcast_f32(rd + (size_t)r * stride);
#pragma GCC unroll 2
            for (int p = 0; p < P; p++)
                acc[r][p] = _mm256_add_ps(acc[r][p], _mm256_mul_ps(_mm256_mul_ps(dw[p], da), _mm256_cvtepi32_ps(s[r][p])));
        }
    }
#pragma GCC unroll 2
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) panel_store(&t->out[p], t->r0 + r, acc[r][p]);
}

/* ---- the tile loop --------------------------------------------------------- */

/* Rows per tile for a call of n rows: ceil(n/4) tiles as even as possible,
 * larger first (5 = 3+2, 6 = 3+3, 7 = 4+3, 9 = 3+3+3), because a 1-row tile
 * unpacks each weight block for a single row. */
KQ_INLINE int tile_rows(int n_rows, int r0) {
    const int n_tiles = (n_rows + KQ_TILE_ROWS - 1) / KQ_TILE_ROWS;
    const int base = n_rows / n_tiles, extra = n_rows % n_tiles;
    /* the first `extra` tiles have base+1 rows, the others base */
    return r0 < extra * (base + 1) ? base + 1 : base;
}

#define KQ_TILE_CASE(KERNEL, r, p) \
    case (r) * 4 + (p): KERNEL(&t, r, p); break;

/* One function per weight type so that each (R, P) case is compiled with the
 * kernel inlined and its accumulators in registers. */
#define KQ_TILE_LOOP(NAME, KERNEL, QS_OFF)                                                       \
    static KQ_AVX2 void NAME(const struct kq_weight *w, const struct kq_act_geom *g,             \
                             const uint8_t *act, int n_rows, float *y, int64_t ldy,               \
                             int64_t o_begin, int64_t o_end) {                                    \
        const int64_t nb = w->n_in / KQ_QK;                                                      \
        const size_t pbb = kq_panel_block_bytes(w->type);                                        \
        const int64_t p_begin = o_begin / KQ_PANEL, p_end = (o_end + KQ_PANEL - 1) / KQ_PANEL;   \
        for (int64_t pair = p_begin / 2; pair * 2 < p_end; pair++) {                             \
            /* the panels of this pair inside [p_begin, p_end) */                                \
            const int64_t pa = pair * 2 > p_begin ? pair * 2 : p_begin;                          \
            const int64_t pz = pair * 2 + 2 < p_end ? pair * 2 + 2 : p_end;                      \
            const int P = (int)(pz - pa);                                                        \
            struct panel_out out[KQ_TILE_PANELS];                                                \
            for (int p = 0; p < P; p++) {                                                        \
                const int64_t o0 = (pa + p) * KQ_PANEL;                                          \
                out[p] = (struct panel_out){y, ldy, o0, o_begin > o0 ? (int)(o_begin - o0) : 0, \
                                            o_end < o0 + KQ_PANEL ? (int)(o_end - o0) : KQ_PANEL}; \
            }                                                                                    \
            struct tile_args t = {.pw = (const uint8_t *)w->packed + kq_packed_block_offset(w->type, nb, pa, 0), \
                                  .pstride = pbb, .bstep = KQ_TILE_PANELS * pbb, .stride = g->stride,   \
                                  .qstep = g->blk_bytes, .nb = nb, .out = out};                         \
            for (int r0 = 0, R; r0 < n_rows; r0 += R) {                                          \
                R = tile_rows(n_rows, r0);                                                       \
                const uint8_t *row = act + (size_t)r0 * g->stride;                               \
                t.q = row + (QS_OFF);                                                            \
                t.d = row + g->off_d;                                                            \
                t.s = row + g->off_s;                                                            \
                t.a = row + g->off_a;                                                            \
                t.r0 = r0;                                                                       \
                t.prefetch = r0 == 0;                                                            \
                switch (R * 4 + P) {                                                             \
                KQ_TILE_CASE(KERNEL, 4, 2) KQ_TILE_CASE(KERNEL, 4, 1)                            \
                KQ_TILE_CASE(KERNEL, 3, 2) KQ_TILE_CASE(KERNEL, 3, 1)                            \
                KQ_TILE_CASE(KERNEL, 2, 2) KQ_TILE_CASE(KERNEL, 2, 1)                            \
                KQ_TILE_CASE(KERNEL, 1, 2)                                                       \
                default: KERNEL(&t, 1, 1); break;                                                \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }

/* The qs of a Q8_1 block follow its d and s (4 bytes), those of a Q8_0 block its d. */
KQ_TILE_LOOP(mm_q4_1, tile_q4_1, 4)
KQ_TILE_LOOP(mm_q4_0, tile_q4_0, 2)
#define tile_q8_0(t, R, P) tile_q8(t, R, P, 0)
#define tile_iq4_nl(t, R, P) tile_q8(t, R, P, 1)
#define tile_q5_0(t, R, P) tile_q5(t, R, P, 0)
#define tile_q5_1(t, R, P) tile_q5(t, R, P, 1)
KQ_TILE_LOOP(mm_q8_0, tile_q8_0, 2)
KQ_TILE_LOOP(mm_iq4_nl, tile_iq4_nl, 2)
KQ_TILE_LOOP(mm_q5_0, tile_q5_0, 2)
KQ_TILE_LOOP(mm_q5_1, tile_q5_1, 4)

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
    case KQ_Q4_1: case KQ_Q4_0: case KQ_Q8_0: case KQ_Q5_0: case KQ_Q5_1: case KQ_IQ4_NL:
        break;
    default:
        return kq_k_avx2_matmul(w, act, n_rows, y, ldy, o_begin, o_end);
    }
    if (!w->packed) return -1;
    const struct kq_act_geom g = kq_act_geom_q32(w->type, w->n_in);
    if (w->type == KQ_Q4_1)      mm_q4_1(w, &g, act, n_rows, y, ldy, o_begin, o_end);
    else if (w->type == KQ_Q4_0) mm_q4_0(w, &g, act, n_rows, y, ldy, o_begin, o_end);
    else if (w->type == KQ_Q5_0) mm_q5_0(w, &g, act, n_rows, y, ldy, o_begin, o_end);
    else if (w->type == KQ_Q5_1) mm_q5_1(w, &g, act, n_rows, y, ldy, o_begin, o_end);
    else if (w->type == KQ_IQ4_NL) mm_iq4_nl(w, &g, act, n_rows, y, ldy, o_begin, o_end);
    else                         mm_q8_0(w, &g, act, n_rows, y, ldy, o_begin, o_end);
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
            /* F16C's conversions, round to nearest even: the same bits as
             * kq_f32_to_f16 / kq_f16_to_f32, at a fraction of their cost */
            const kq_f16 dh = (kq_f16)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            ((float *)(row + g.off_d))[b] = _cvtsh_ss(dh);
            if (g.blk_bytes == sizeof(kq_block_q8_1)) {
                kq_block_q8_1 *blk = (kq_block_q8_1 *)(row + (size_t)b * g.blk_bytes);
                blk->d = dh;
                blk->s = (kq_f16)_cvtss_sh(d * (float)sum, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                _mm256_storeu_si256((__m256i *)blk->qs, p8);
                ((float *)(row + g.off_s))[b] = _cvtsh_ss(blk->s);
                ((int32_t *)(row + g.off_a))[b] = sum;
            } else {
                kq_block_q8_0 *blk = (kq_block_q8_0 *)(row + (size_t)b * g.blk_bytes);
                blk->d = dh;
                _mm256_storeu_si256((__m256i *)blk->qs, p8);
                ((int32_t *)(row + g.off_s))[b] = sum;
            }
        }
    }
}

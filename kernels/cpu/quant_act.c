/* quant_act.c — quantization of matmul inputs to 8-bit blocks (Q8_0, Q8_1,
 * Q8_K) and the layout of the quantized input buffer (matmul_layout.h).
 *
 * The numerics follow llama.cpp's x86 build, because our greedy output is
 * compared token for token with it:
 *   Q8_0/Q8_1 (per 32-block): amax = max|x|, d = amax/127, id = 127/amax (0 when
 *     amax is 0), q = round-to-nearest-even(x*id) (llama.cpp's AVX2 quantizer
 *     uses _mm256_round_ps; its scalar reference uses roundf, which differs only
 *     on exact .5 ties; we follow the AVX2 build, which is what runs on x86),
 *     d stored as f16; Q8_1 also stores s = f16(d * sum(q)) with the unrounded
 *     f32 d, as llama.cpp does.
 *   Q8_K (per 256-block): max = the element of largest magnitude (sign kept),
 *     iscale = -127/max, q = nearest-even(iscale*x), d = 1/iscale (float),
 *     bsums = sums of 16.
 * One addition: x*id is clamped to [-127, 127] before rounding, with NaN sent to
 * 127 (the semantics of minps/maxps).  For finite inputs the clamp never
 * changes a value (|x*id| <= 127 up to rounding); it makes non-finite inputs
 * give defined, identical bytes in the scalar and SIMD quantizers.
 *
 * This file does not compute dot products, and holds no SIMD code (the SIMD
 * quantizers sit with their kernels in matmul_avx2.c and matmul_avx512.c).
 */
#include "quant_act.h"
#include "matmul_avx2.h"
#include "matmul_avx512.h"

#include <math.h>
#include <string.h>

/* Round to nearest, ties to even, for |v| <= 2^22: adding 1.5*2^23 leaves no
 * fraction bits, so the float adder does the rounding (and -ffp-contract=off
 * plus no -ffast-math keep the two operations as written). */
static inline float act_round_even(float v) {
    const float magic = 12582912.0f;
    return (v + magic) - magic;
}

static inline float act_clamp127(float v) {
    v = v < 127.0f ? v : 127.0f;    /* NaN -> 127, like minps(v, 127) */
    return v > -127.0f ? v : -127.0f;
}

void kq_act_quantize_q32_scalar(int wtype, const float *x, int64_t n_in, int r_begin,
                                int r_end, void *act) {
    const struct kq_act_geom g = kq_act_geom_q32(wtype, n_in);
    const int64_t nb = n_in / KQ_QK;
    for (int r = r_begin; r < r_end; r++) {
        const float *xr = x + (size_t)r * (size_t)n_in;
        uint8_t *row = (uint8_t *)act + (size_t)r * g.stride;
        float *dv = (float *)(row + g.off_d);
        for (int64_t b = 0; b < nb; b++) {
            const float *xb = xr + b * KQ_QK;
            float amax = 0.0f;
            for (int j = 0; j < KQ_QK; j++) {
                float ax = fabsf(xb[j]);
                if (ax > amax) amax = ax;
            }
            const float d = amax / 127.0f;
            const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
            int8_t qs[KQ_QK];
            int sum = 0;
            for (int j = 0; j < KQ_QK; j++) {
                int q = (int)act_round_even(act_clamp127(xb[j] * id));
                qs[j] = (int8_t)q;
                sum += q;
            }
            kq_f16 dh = kq_f32_to_f16(d);
            dv[b] = kq_f16_to_f32(dh);
            if (g.blk_bytes == sizeof(kq_block_q8_1)) {
                kq_block_q8_1 *blk = (kq_block_q8_1 *)(row + (size_t)b * g.blk_bytes);
                blk->d = dh;
                blk->s = kq_f32_to_f16(d * (float)sum);
                memcpy(blk->qs, qs, KQ_QK);
                ((float *)(row + g.off_s))[b] = kq_f16_to_f32(blk->s);
                ((int32_t *)(row + g.off_a))[b] = sum;
            } else {
                kq_block_q8_0 *blk = (kq_block_q8_0 *)(row + (size_t)b * g.blk_bytes);
                blk->d = dh;
                memcpy(blk->qs, qs, KQ_QK);
                ((int32_t *)(row + g.off_s))[b] = sum;
            }
        }
    }
}

static void act_quantize_q8_k(const float *x, int64_t n_in, int r_begin, int r_end,
                              void *act) {
    const size_t stride = kq_act_row_bytes(KQ_Q4_K, n_in);
    const int64_t nb = n_in / KQ_QK_K;
    for (int r = r_begin; r < r_end; r++) {
        const float *xr = x + (size_t)r * (size_t)n_in;
        kq_block_q8_K *blk = (kq_block_q8_K *)((uint8_t *)act + (size_t)r * stride);
        for (int64_t b = 0; b < nb; b++, blk++) {
            const float *xb = xr + b * KQ_QK_K;
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < KQ_QK_K; j++) {
                float ax = fabsf(xb[j]);
                if (ax > amax) { amax = ax; max = xb[j]; }
            }
            memset(blk->bsums, 0, sizeof blk->bsums);
            if (amax == 0.0f) {
                blk->d = 0.0f;
                memset(blk->qs, 0, sizeof blk->qs);
                continue;
            }
            const float iscale = -127.0f / max;
            for (int j = 0; j < KQ_QK_K; j++) {
                int q = (int)act_round_even(act_clamp127(iscale * xb[j]));
                blk->qs[j] = (int8_t)q;
                blk->bsums[j / 16] = (int16_t)(blk->bsums[j / 16] + q);
            }
            blk->d = 1.0f / iscale;
        }
    }
}

void kq_act_quantize(int wtype, const float *x, int64_t n_in, int r_begin, int r_end,
                     void *act) {
    if (r_begin >= r_end) return;
    switch (kq_act_type(wtype)) {
    case KQ_Q8_0: case KQ_Q8_1:
        if (kq_avx512_usable())
            kq_avx512_act_quantize_q32(wtype, x, n_in, r_begin, r_end, act);
        else if (kq_avx2_usable())
            kq_avx2_act_quantize_q32(wtype, x, n_in, r_begin, r_end, act);
        else
            kq_act_quantize_q32_scalar(wtype, x, n_in, r_begin, r_end, act);
        break;
    case KQ_Q8_K:
        act_quantize_q8_k(x, n_in, r_begin, r_end, act);
        break;
    case KQ_F32: {
        /* act is x itself; copy only when the caller gave a separate buffer */
        size_t off = (size_t)r_begin * (size_t)n_in;
        if ((const void *)(x + off) != (void *)((float *)act + off))
            memmove((float *)act + off, x + off,
                    (size_t)(r_end - r_begin) * (size_t)n_in * sizeof(float));
        break;
    }
    default:
        break;
    }
}

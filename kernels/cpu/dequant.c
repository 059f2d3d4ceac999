/* dequant.c — one weight row back to floats, for every weight type, exactly as
 * ggml defines each block (same float operations in the same order, so an
 * embedding row equals what llama.cpp's get_rows produces).
 *
 * Block definitions (GGML):
 *   Q4_0  x = (q - 8) * d,        q = nibble; qs[j] low = element j, high = j+16
 *   Q4_1  x = q * d + m
 *   Q8_0  x = q * d
 *   Q4_K  256 elements in 8 sub-blocks of 32, 6-bit scale sc and min m per
 *         sub-block packed in 12 bytes; x = (d*sc) * q - (dmin*m); sub-blocks
 *         2i and 2i+1 share qs[32i .. 32i+31] (low, then high nibbles)
 *   Q5_K  as Q4_K with a fifth bit from qh: bit 2i of qh[l] for sub-block 2i,
 *         bit 2i+1 for sub-block 2i+1 (element l of each)
 *   Q6_K  x = d * sc * (q - 32), 16 int8 scales of 16 elements, q from ql
 *         (4 bits) and qh (2 bits) in two halves of 128 elements
 *   Q5_0  x = (q - 16) * d, q = nibble as Q4_0 plus bit j of the 32-bit qh
 *   Q5_1  x = q * d + m, q as Q5_0
 *   IQ4_NL x = d * kv[nibble], kv = kq_iq4nl_values, nibbles placed as Q4_0
 *   Q2_K  x = (d * (sc & 15)) * q - dmin * (sc >> 4), q 2 bits, one scale
 *         byte per 16 elements; element e is bits 2*((e%128)/32) of
 *         qs[32*(e/128) + e%32]
 *   Q3_K  x = (d * (s - 32)) * (q - (h ? 0 : 4)), q 2 bits placed as Q2_K, h
 *         bit e/32 of hmask[e%32], 16 6-bit scales s packed in 12 bytes
 *   IQ4_XS x = (d * (ls - 32)) * kv[nibble], 8 sub-blocks of 32 with 6-bit
 *         ls (4 low bits in scales_l, 2 high in scales_h), nibbles as IQ4_NL
 * It does not compute dot products (matmul_ref.c works on the integers).
 */
#include "dequant.h"

#include <string.h>

/* Scale and min of sub-block j (0..7) of a Q4_K/Q5_K block: j < 4 are the low
 * 6 bits of bytes j and j+4; j >= 4 take their low 4 bits from byte j+4 and
 * their top 2 bits from the top bits of bytes j-4 (scale) and j (min). */
void kq_k4_scale_min(const uint8_t *scales, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = scales[j] & 63;
        *m = scales[j + 4] & 63;
    } else {
        *sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
        *m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

int kq_q5_value(const uint8_t *qh, const uint8_t *qs, int e) {
    const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    const int lo = e < KQ_QK / 2 ? qs[e] & 0xF : qs[e - KQ_QK / 2] >> 4;
    return lo | (int)((h >> e) & 1) << 4;
}

int kq_iq4nl_nibble(const uint8_t *qs, int e) {
    return e < KQ_QK / 2 ? qs[e] & 0xF : qs[e - KQ_QK / 2] >> 4;
}

int kq_q2_k_value(const kq_block_q2_K *x, int e) {
    return (x->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}

int kq_q3_k_value(const kq_block_q3_K *x, int e) {
    const int lo = (x->qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    return lo - ((x->hmask[e % 32] >> (e / 32)) & 1 ? 0 : 4);
}

/* Scale s (0..15) of a Q3_K block minus 32: groups of 4 scales take their low
 * 4 bits from the low or high nibbles of bytes 0..7 and their top 2 bits from
 * bytes 8..11, two bits per group. */
int kq_q3_k_scale(const uint8_t *scales, int s) {
    const int i = s % 4, grp = s / 4;
    const int lo = (grp & 1 ? scales[4 + i] : scales[i]) >> (grp & 2 ? 4 : 0) & 0xF;
    const int hi = (scales[8 + i] >> (2 * grp)) & 3;
    return (lo | hi << 4) - 32;
}

int kq_iq4_xs_scale(const kq_block_iq4_xs *x, int j) {
    const int lo = (x->scales_l[j / 2] >> (4 * (j % 2))) & 0xF, hi = (x->scales_h >> (2 * j)) & 3;
    return (lo | hi << 4) - 32;
}

static void deq_q5_0(const kq_block_q5_0 *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d);
        for (int e = 0; e < KQ_QK; e++) y[i * KQ_QK + e] = (float)(kq_q5_value(x[i].qh, x[i].qs, e) - 16) * d;
    }
}

static void deq_q5_1(const kq_block_q5_1 *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d), m = kq_f16_to_f32(x[i].m);
        for (int e = 0; e < KQ_QK; e++) y[i * KQ_QK + e] = (float)kq_q5_value(x[i].qh, x[i].qs, e) * d + m;
    }
}

static void deq_iq4_nl(const kq_block_iq4_nl *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d);
        for (int e = 0; e < KQ_QK; e++) y[i * KQ_QK + e] = d * (float)kq_iq4nl_values[kq_iq4nl_nibble(x[i].qs, e)];
    }
}

static void deq_q2_k(const kq_block_q2_K *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d), dmin = kq_f16_to_f32(x[i].dmin);
        for (int e = 0; e < KQ_QK_K; e++) {
            const int sc = x[i].scales[e / 16];
            const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
            y[i * KQ_QK_K + e] = dl * (float)kq_q2_k_value(&x[i], e) - ml;
        }
    }
}

static void deq_q3_k(const kq_block_q3_K *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d);
        for (int e = 0; e < KQ_QK_K; e++) {
            const float dl = d * (float)kq_q3_k_scale(x[i].scales, e / 16);
            y[i * KQ_QK_K + e] = dl * (float)kq_q3_k_value(&x[i], e);
        }
    }
}

static void deq_iq4_xs(const kq_block_iq4_xs *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d);
        for (int e = 0; e < KQ_QK_K; e++) {
            const float dl = d * (float)kq_iq4_xs_scale(&x[i], e / 32);
            const int nib = kq_iq4nl_nibble(x[i].qs + 16 * (e / 32), e % 32);
            y[i * KQ_QK_K + e] = dl * (float)kq_iq4nl_values[nib];
        }
    }
}

static void deq_q4_0(const kq_block_q4_0 *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d);
        for (int j = 0; j < KQ_QK / 2; j++) {
            const int x0 = (x[i].qs[j] & 0x0F) - 8, x1 = (x[i].qs[j] >> 4) - 8;
            y[i * KQ_QK + j] = (float)x0 * d;
            y[i * KQ_QK + j + KQ_QK / 2] = (float)x1 * d;
        }
    }
}

static void deq_q4_1(const kq_block_q4_1 *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d), m = kq_f16_to_f32(x[i].m);
        for (int j = 0; j < KQ_QK / 2; j++) {
            const int x0 = x[i].qs[j] & 0x0F, x1 = x[i].qs[j] >> 4;
            y[i * KQ_QK + j] = (float)x0 * d + m;
            y[i * KQ_QK + j + KQ_QK / 2] = (float)x1 * d + m;
        }
    }
}

static void deq_q8_0(const kq_block_q8_0 *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d);
        for (int j = 0; j < KQ_QK; j++) y[i * KQ_QK + j] = (float)x[i].qs[j] * d;
    }
}

static void deq_q4_k(const kq_block_q4_K *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d), dmin = kq_f16_to_f32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        for (int j = 0; j < KQ_QK_K / 64; j++, q += 32) {
            int sc, m;
            kq_k4_scale_min(x[i].scales, 2 * j, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            kq_k4_scale_min(x[i].scales, 2 * j + 1, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

static void deq_q5_k(const kq_block_q5_K *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d), dmin = kq_f16_to_f32(x[i].dmin);
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        unsigned u1 = 1, u2 = 2;
        for (int j = 0; j < KQ_QK_K / 64; j++, ql += 32, u1 <<= 2, u2 <<= 2) {
            int sc, m;
            kq_k4_scale_min(x[i].scales, 2 * j, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            kq_k4_scale_min(x[i].scales, 2 * j + 1, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

/* Element e (0..255) of a Q6_K block as an integer in [-32, 31]. */
int kq_q6_k_value(const kq_block_q6_K *x, int e) {
    const int half = e / 128, l = e % 32, quarter = (e % 128) / 32;
    const uint8_t *ql = x->ql + 64 * half, *qh = x->qh + 32 * half;
    const int low = quarter & 1 ? ql[l + 32] : ql[l];
    const int lo4 = quarter < 2 ? (low & 0xF) : (low >> 4);
    const int hi2 = (qh[l] >> (2 * quarter)) & 3;
    return (lo4 | (hi2 << 4)) - 32;
}

static void deq_q6_k(const kq_block_q6_K *x, int64_t nb, float *y) {
    for (int64_t i = 0; i < nb; i++) {
        const float d = kq_f16_to_f32(x[i].d);
        for (int e = 0; e < KQ_QK_K; e++)
            y[i * KQ_QK_K + e] = d * (float)x[i].scales[e / 16] * (float)kq_q6_k_value(&x[i], e);
    }
}

void kq_weight_row_f32(const struct kq_weight *w, int64_t row, float *out) {
    const size_t rb = kq_row_bytes(w->type, w->n_in);
    const uint8_t *src = (const uint8_t *)w->data + (size_t)row * rb;
    const int64_t n = w->n_in;
    switch (w->type) {
    case KQ_F32:
        memcpy(out, src, (size_t)n * sizeof(float));
        break;
    case KQ_F16:
        for (int64_t k = 0; k < n; k++) {
            kq_f16 h;
            memcpy(&h, src + 2 * k, 2);
            out[k] = kq_f16_to_f32(h);
        }
        break;
    case KQ_BF16:
        for (int64_t k = 0; k < n; k++) {
            kq_bf16 h;
            memcpy(&h, src + 2 * k, 2);
            out[k] = kq_bf16_to_f32(h);
        }
        break;
    case KQ_Q4_0: deq_q4_0((const kq_block_q4_0 *)src, n / KQ_QK, out); break;
    case KQ_Q4_1: deq_q4_1((const kq_block_q4_1 *)src, n / KQ_QK, out); break;
    case KQ_Q8_0: deq_q8_0((const kq_block_q8_0 *)src, n / KQ_QK, out); break;
    case KQ_Q4_K: deq_q4_k((const kq_block_q4_K *)src, n / KQ_QK_K, out); break;
    case KQ_Q5_K: deq_q5_k((const kq_block_q5_K *)src, n / KQ_QK_K, out); break;
    case KQ_Q6_K: deq_q6_k((const kq_block_q6_K *)src, n / KQ_QK_K, out); break;
    case KQ_Q5_0: deq_q5_0((const kq_block_q5_0 *)src, n / KQ_QK, out); break;
    case KQ_Q5_1: deq_q5_1((const kq_block_q5_1 *)src, n / KQ_QK, out); break;
    case KQ_IQ4_NL: deq_iq4_nl((const kq_block_iq4_nl *)src, n / KQ_QK, out); break;
    case KQ_Q2_K: deq_q2_k((const kq_block_q2_K *)src, n / KQ_QK_K, out); break;
    case KQ_Q3_K: deq_q3_k((const kq_block_q3_K *)src, n / KQ_QK_K, out); break;
    case KQ_IQ4_XS: deq_iq4_xs((const kq_block_iq4_xs *)src, n / KQ_QK_K, out); break;
    default:
        memset(out, 0, (size_t)n * sizeof(float));
        break;
    }
}

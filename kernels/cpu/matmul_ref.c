/* matmul_ref.c — the plain C reference for kq_matmul: one (output, row) dot
 * product at a time, reading the weights in their GGUF layout and the input
 * from its GGUF-layout blocks only.
 *
 * This file defines the arithmetic every fast path must reproduce bit for bit:
 *   per block, an exact int32 sum of integer products; then, in f32 and in this
 *   order, per block b = 0, 1, ... (acc starts at 0.0f):
 *     Q4_1·Q8_1  acc = acc + ((dw*da)*(float)sumi + mw*sa)
 *     Q4_0·Q8_0  acc = acc + (dw*da)*(float)sumi        sumi = sum (q-8)*a
 *     Q8_0·Q8_0  acc = acc + (dw*da)*(float)sumi
 *     Q4_K/Q5_K·Q8_K (per 256-block)
 *                acc = acc + ((d*da)*(float)isd - (dmin*da)*(float)ism)
 *                isd = sum_j sc_j*sum(q*a), ism = sum_j m_j*sum(a) over the 8 sub-blocks
 *     Q6_K·Q8_K  acc = acc + (d*da)*(float)isum,  isum = sum_j sc_j*sum(q*a) over 16
 *     Q5_0·Q8_0  acc = acc + (dw*da)*(float)sumi        sumi = sum (q-16)*a
 *     Q5_1·Q8_1  as Q4_1, with the 5-bit q
 *     IQ4_NL·Q8_0 acc = acc + (dw*da)*(float)sumi       sumi = sum kv*a
 *     Q2_K·Q8_K  as Q4_K over 16 sub-blocks of 16, sc_j = scale & 15, m_j = scale >> 4
 *     Q3_K·Q8_K  as Q6_K, sc_j = the 6-bit scale - 32, q in [-4, 3]
 *     IQ4_XS·Q8_K as Q6_K over 8 sub-blocks of 32, sc_j = ls_j - 32, q = kv
 *   where dw, mw, d, dmin, da, sa are the stored f16 values converted to f32.
 *   Float weights (F32/F16/BF16, input f32): element k goes to lane k%8,
 *     lane = lane + w*x in element order, then
 *     ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) — the order an 8-wide SIMD loop
 *     with the usual halving reduction produces.
 * No fused multiply-adds anywhere (-ffp-contract=off): a fused path could not
 * match this one.  It deliberately has no speed tricks; it is what the tests
 * trust.
 */
#include "matmul_ref.h"
#include "dequant.h"

#include <string.h>

static float ref_dot_q4_1(const kq_block_q4_1 *w, const kq_block_q8_1 *a, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int j = 0; j < KQ_QK / 2; j++)
            sumi += (w[b].qs[j] & 0xF) * a[b].qs[j] + (w[b].qs[j] >> 4) * a[b].qs[j + KQ_QK / 2];
        const float dd = kq_f16_to_f32(w[b].d) * kq_f16_to_f32(a[b].d);
        const float t = dd * (float)sumi;
        const float u = kq_f16_to_f32(w[b].m) * kq_f16_to_f32(a[b].s);
        acc = acc + (t + u);
    }
    return acc;
}

static float ref_dot_q4_0(const kq_block_q4_0 *w, const kq_block_q8_0 *a, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int j = 0; j < KQ_QK / 2; j++)
            sumi += ((w[b].qs[j] & 0xF) - 8) * a[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * a[b].qs[j + KQ_QK / 2];
        const float dd = kq_f16_to_f32(w[b].d) * kq_f16_to_f32(a[b].d);
        acc = acc + dd * (float)sumi;
    }
    return acc;
}

static float ref_dot_q8_0(const kq_block_q8_0 *w, const kq_block_q8_0 *a, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int j = 0; j < KQ_QK; j++) sumi += w[b].qs[j] * a[b].qs[j];
        const float dd = kq_f16_to_f32(w[b].d) * kq_f16_to_f32(a[b].d);
        acc = acc + dd * (float)sumi;
    }
    return acc;
}

/* Q4_K and Q5_K differ only in where the 5th bit comes from (qh == NULL: none). */
static float ref_dot_q45_k(const void *wrow, size_t wblk, int is_q5, const kq_block_q8_K *a,
                           int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = (const uint8_t *)wrow + (size_t)b * wblk;
        kq_f16 dh, dminh;
        const uint8_t *scales, *qs, *qh = NULL;
        if (is_q5) {
            const kq_block_q5_K *x = (const kq_block_q5_K *)blk;
            dh = x->d; dminh = x->dmin; scales = x->scales; qs = x->qs; qh = x->qh;
        } else {
            const kq_block_q4_K *x = (const kq_block_q4_K *)blk;
            dh = x->d; dminh = x->dmin; scales = x->scales; qs = x->qs;
        }
        int32_t isd = 0, ism = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            kq_k4_scale_min(scales, j, &sc, &m);
            int32_t dot = 0, asum = 0;
            for (int l = 0; l < 32; l++) {
                const uint8_t byte = qs[32 * (j / 2) + l];
                int q = j & 1 ? byte >> 4 : byte & 0xF;
                if (qh) q += ((qh[l] >> j) & 1) << 4;
                const int av = a[b].qs[32 * j + l];
                dot += q * av;
                asum += av;
            }
            isd += sc * dot;
            ism += m * asum;
        }
        const float t = (kq_f16_to_f32(dh) * a[b].d) * (float)isd;
        const float u = (kq_f16_to_f32(dminh) * a[b].d) * (float)ism;
        acc = acc + (t - u);
    }
    return acc;
}

static float ref_dot_q6_k(const kq_block_q6_K *w, const kq_block_q8_K *a, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int s = 0; s < 16; s++) {
            int32_t dot = 0;
            for (int e = 16 * s; e < 16 * s + 16; e++) dot += kq_q6_k_value(&w[b], e) * a[b].qs[e];
            isum += w[b].scales[s] * dot;
        }
        acc = acc + (kq_f16_to_f32(w[b].d) * a[b].d) * (float)isum;
    }
    return acc;
}

static float ref_dot_q5_0(const kq_block_q5_0 *w, const kq_block_q8_0 *a, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int e = 0; e < KQ_QK; e++) sumi += (kq_q5_value(w[b].qh, w[b].qs, e) - 16) * a[b].qs[e];
        const float dd = kq_f16_to_f32(w[b].d) * kq_f16_to_f32(a[b].d);
        acc = acc + dd * (float)sumi;
    }
    return acc;
}

static float ref_dot_q5_1(const kq_block_q5_1 *w, const kq_block_q8_1 *a, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int e = 0; e < KQ_QK; e++) sumi += kq_q5_value(w[b].qh, w[b].qs, e) * a[b].qs[e];
        const float dd = kq_f16_to_f32(w[b].d) * kq_f16_to_f32(a[b].d);
        const float t = dd * (float)sumi;
        const float u = kq_f16_to_f32(w[b].m) * kq_f16_to_f32(a[b].s);
        acc = acc + (t + u);
    }
    return acc;
}

static float ref_dot_iq4_nl(const kq_block_iq4_nl *w, const kq_block_q8_0 *a, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int e = 0; e < KQ_QK; e++) sumi += kq_iq4nl_values[kq_iq4nl_nibble(w[b].qs, e)] * a[b].qs[e];
        const float dd = kq_f16_to_f32(w[b].d) * kq_f16_to_f32(a[b].d);
        acc = acc + dd * (float)sumi;
    }
    return acc;
}

static float ref_dot_q2_k(const kq_block_q2_K *w, const kq_block_q8_K *a, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t isd = 0, ism = 0;
        for (int s = 0; s < 16; s++) {
            int32_t dot = 0, asum = 0;
            for (int e = 16 * s; e < 16 * s + 16; e++) {
                dot += kq_q2_k_value(&w[b], e) * a[b].qs[e];
                asum += a[b].qs[e];
            }
            isd += (w[b].scales[s] & 0xF) * dot;
            ism += (w[b].scales[s] >> 4) * asum;
        }
        const float t = (kq_f16_to_f32(w[b].d) * a[b].d) * (float)isd;
        const float u = (kq_f16_to_f32(w[b].dmin) * a[b].d) * (float)ism;
        acc = acc + (t - u);
    }
    return acc;
}

static float ref_dot_q3_k(const kq_block_q3_K *w, const kq_block_q8_K *a, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int s = 0; s < 16; s++) {
            int32_t dot = 0;
            for (int e = 16 * s; e < 16 * s + 16; e++) dot += kq_q3_k_value(&w[b], e) * a[b].qs[e];
            isum += kq_q3_k_scale(w[b].scales, s) * dot;
        }
        acc = acc + (kq_f16_to_f32(w[b].d) * a[b].d) * (float)isum;
    }
    return acc;
}

static float ref_dot_iq4_xs(const kq_block_iq4_xs *w, const kq_block_q8_K *a, int64_t nb) {
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t isum = 0;
        for (int j = 0; j < 8; j++) {
            int32_t dot = 0;
            for (int l = 0; l < 32; l++)
                dot += kq_iq4nl_values[kq_iq4nl_nibble(w[b].qs + 16 * j, l)] * a[b].qs[32 * j + l];
            isum += kq_iq4_xs_scale(&w[b], j) * dot;
        }
        acc = acc + (kq_f16_to_f32(w[b].d) * a[b].d) * (float)isum;
    }
    return acc;
}

static float ref_weight_f(int type, const uint8_t *row, int64_t k) {
    switch (type) {
    case KQ_F32: { float f; memcpy(&f, row + 4 * k, 4); return f; }
    case KQ_F16: { kq_f16 h; memcpy(&h, row + 2 * k, 2); return kq_f16_to_f32(h); }
    default:     { kq_bf16 h; memcpy(&h, row + 2 * k, 2); return kq_bf16_to_f32(h); }
    }
}

static float ref_dot_float(int type, const uint8_t *wrow, const float *x, int64_t n) {
    float lane[8] = {0};
    for (int64_t k = 0; k < n; k++) lane[k % 8] = lane[k % 8] + ref_weight_f(type, wrow, k) * x[k];
    return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

void kq_matmul_ref(const struct kq_weight *w, const void *act, int n_rows,
                   float *y, int64_t ldy, int64_t o_begin, int64_t o_end) {
    const size_t rb = kq_row_bytes(w->type, w->n_in);
    const int64_t nb32 = w->n_in / KQ_QK, nbk = w->n_in / KQ_QK_K;
    for (int64_t o = o_begin; o < o_end; o++) {
        const uint8_t *wrow = (const uint8_t *)w->data + (size_t)o * rb;
        for (int r = 0; r < n_rows; r++) {
            const void *arow = kq_act_row(w->type, act, w->n_in, r);
            float v = 0.0f;
            switch (w->type) {
            case KQ_Q4_1: v = ref_dot_q4_1((const kq_block_q4_1 *)wrow, arow, nb32); break;
            case KQ_Q4_0: v = ref_dot_q4_0((const kq_block_q4_0 *)wrow, arow, nb32); break;
            case KQ_Q8_0: v = ref_dot_q8_0((const kq_block_q8_0 *)wrow, arow, nb32); break;
            case KQ_Q4_K: v = ref_dot_q45_k(wrow, sizeof(kq_block_q4_K), 0, arow, nbk); break;
            case KQ_Q5_K: v = ref_dot_q45_k(wrow, sizeof(kq_block_q5_K), 1, arow, nbk); break;
            case KQ_Q6_K: v = ref_dot_q6_k((const kq_block_q6_K *)wrow, arow, nbk); break;
            case KQ_Q5_0: v = ref_dot_q5_0((const kq_block_q5_0 *)wrow, arow, nb32); break;
            case KQ_Q5_1: v = ref_dot_q5_1((const kq_block_q5_1 *)wrow, arow, nb32); break;
            case KQ_IQ4_NL: v = ref_dot_iq4_nl((const kq_block_iq4_nl *)wrow, arow, nb32); break;
            case KQ_Q2_K: v = ref_dot_q2_k((const kq_block_q2_K *)wrow, arow, nbk); break;
            case KQ_Q3_K: v = ref_dot_q3_k((const kq_block_q3_K *)wrow, arow, nbk); break;
            case KQ_IQ4_XS: v = ref_dot_iq4_xs((const kq_block_iq4_xs *)wrow, arow, nbk); break;
            case KQ_F32: case KQ_F16: case KQ_BF16:
                v = ref_dot_float(w->type, wrow, arow, w->n_in);
                break;
            default: break;
            }
            y[(size_t)r * (size_t)ldy + (size_t)o] = v;
        }
    }
}

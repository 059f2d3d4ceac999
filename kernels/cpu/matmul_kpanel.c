/* matmul_kpanel.c — repacking of k-quant weights (Q2_K, Q3_K, Q4_K, Q5_K,
 * Q6_K, IQ4_XS) into K panels (layout: matmul_layout.h), which the AVX2 and
 * AVX-512 k-quant kernels read.
 *
 * Every k-quant becomes the same shape: per 16-element half of a super-block
 * an integer scale (and, for the types with mins, an integer min), and per
 * element an unsigned byte or nibble.  That is the reference's arithmetic
 * (matmul_ref.c) rewritten with exact integer identities, so one kernel per
 * path serves all six types and gives the reference's bits.  The scales and
 * element values come from the block helpers the reference and the
 * dequantization use (dequant.c), so the three cannot drift apart.
 *
 * It holds no arithmetic on activations.
 */
#include "matmul_kpanel.h"
#include "dequant.h"

#include <stdlib.h>
#include <string.h>


/* The values one super-block contributes to a K panel: u[e] (the unsigned
 * byte, or for the nibble types the nibble), sc[h], mc[h], d, dmin. */
struct kp_block {
    uint8_t u[KQ_QK_K];
    int16_t sc[16], mc[16];
    kq_f16 d, dmin;
};

static void kp_decode(int type, const uint8_t *blk, struct kp_block *k) {
    memset(k, 0, sizeof *k);
    switch (type) {
    case KQ_Q4_K: case KQ_Q5_K: {
        const kq_block_q4_K *x4 = (const kq_block_q4_K *)blk;
        const kq_block_q5_K *x5 = (const kq_block_q5_K *)blk;
        const uint8_t *scales = type == KQ_Q4_K ? x4->scales : x5->scales;
        const uint8_t *qs = type == KQ_Q4_K ? x4->qs : x5->qs;
        k->d = type == KQ_Q4_K ? x4->d : x5->d;
        k->dmin = type == KQ_Q4_K ? x4->dmin : x5->dmin;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            kq_k4_scale_min(scales, j, &sc, &m);
            k->sc[2 * j] = k->sc[2 * j + 1] = (int16_t)sc;
            k->mc[2 * j] = k->mc[2 * j + 1] = (int16_t)m;
            for (int l = 0; l < 32; l++) {
                const uint8_t byte = qs[32 * (j / 2) + l];
                int q = j & 1 ? byte >> 4 : byte & 0xF;
                if (type == KQ_Q5_K) q += ((x5->qh[l] >> j) & 1) << 4;
                k->u[32 * j + l] = (uint8_t)q;
            }
        }
        break;
    }
    case KQ_Q2_K: {
        const kq_block_q2_K *x = (const kq_block_q2_K *)blk;
        k->d = x->d;
        k->dmin = x->dmin;
        for (int h = 0; h < 16; h++) {
            k->sc[h] = (int16_t)(x->scales[h] & 0xF);
            k->mc[h] = (int16_t)(x->scales[h] >> 4);
        }
        for (int e = 0; e < KQ_QK_K; e++) k->u[e] = (uint8_t)kq_q2_k_value(x, e);
        break;
    }
    case KQ_Q3_K: {
        const kq_block_q3_K *x = (const kq_block_q3_K *)blk;
        k->d = x->d;
        for (int h = 0; h < 16; h++) k->sc[h] = (int16_t)kq_q3_k_scale(x->scales, h);
        for (int e = 0; e < KQ_QK_K; e++) k->u[e] = (uint8_t)(kq_q3_k_value(x, e) + 4);
        break;
    }
    case KQ_Q6_K: {
        const kq_block_q6_K *x = (const kq_block_q6_K *)blk;
        k->d = x->d;
        for (int h = 0; h < 16; h++) k->sc[h] = x->scales[h];
        for (int e = 0; e < KQ_QK_K; e++) k->u[e] = (uint8_t)(kq_q6_k_value(x, e) + 32);
        break;
    }
    default: { /* IQ4_XS: the nibble (index into kq_iq4nl_values) */
        const kq_block_iq4_xs *x = (const kq_block_iq4_xs *)blk;
        k->d = x->d;
        for (int h = 0; h < 16; h++) k->sc[h] = (int16_t)kq_iq4_xs_scale(x, h / 2);
        for (int e = 0; e < KQ_QK_K; e++) k->u[e] = (uint8_t)kq_iq4nl_nibble(x->qs + 16 * (e / 32), e % 32);
        break;
    }
    }
}

/* Write `n` bytes at byte `off` of panel p's block, in its pair's block. */
static void kp_put(uint8_t *pair, int p, size_t off, const void *src, size_t n) {
    memcpy(pair + kq_kpanel_pair_off(off, p), src, n);
}

/* Write lane `lane` of panel p (0, 1) into its pair's block. */
static void kp_store(int type, const struct kp_block *k, int p, int lane, uint8_t *pair) {
    kp_put(pair, p, 2 * (size_t)lane, &k->d, 2);
    kp_put(pair, p, KQ_KP_DMIN + 2 * (size_t)lane, &k->dmin, 2);
    for (int v = 0; v < 8; v++) {
        kp_put(pair, p, KQ_KP_SC + 32 * (size_t)v + 4 * (size_t)lane, &k->sc[2 * v], 4);
        if (kq_kpanel_has_min(type)) kp_put(pair, p, KQ_KP_MC + 32 * (size_t)v + 4 * (size_t)lane, &k->mc[2 * v], 4);
    }
    const size_t q = kq_kpanel_quant_off(type);
    if (kq_kpanel_nibbles(type)) {
        for (int c = 0; c < 4; c++)
            for (int v = 0; v < 8; v++)
                for (int i = 0; i < 4; i++) {
                    const uint8_t byte = (uint8_t)(k->u[64 * c + 4 * v + i] | k->u[64 * c + 32 + 4 * v + i] << 4);
                    kp_put(pair, p, q + 256 * (size_t)c + 32 * (size_t)v + 4 * (size_t)lane + (size_t)i, &byte, 1);
                }
    } else {
        for (int g = 0; g < 64; g++) kp_put(pair, p, q + 32 * (size_t)g + 4 * (size_t)lane, &k->u[4 * g], 4);
    }
}

int kq_kpanel_repack(struct kq_weight *w) {
    if (!kq_kpanel_type(w->type) || w->n_out == 0) return 0;
    const int64_t nb = w->n_in / KQ_QK_K;
    const size_t bytes = kq_packed_bytes(w->type, w->n_in, w->n_out);
    uint8_t *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p) return KQ_E_NOMEM;
    memset(p, 0, bytes); /* padding outputs: zero scales and quants */
    const size_t rb = kq_row_bytes(w->type, w->n_in), bb = kq_type_block_bytes(w->type);
    struct kp_block k;
    for (int64_t o = 0; o < w->n_out; o++) {
        const uint8_t *src = (const uint8_t *)w->data + (size_t)o * rb;
        for (int64_t b = 0; b < nb; b++) {
            kp_decode(w->type, src + (size_t)b * bb, &k);
            const int64_t panel = o / KQ_PANEL;
            kp_store(w->type, &k, (int)(panel % 2), (int)(o % KQ_PANEL),
                     p + kq_packed_block_offset(w->type, nb, panel & ~(int64_t)1, b));
        }
    }
    w->packed = p;
    w->packed_bytes = bytes;
    return 0;
}

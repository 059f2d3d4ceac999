/* dequant.h — one quantized element or scale at a time (dequant.c): the block
 * helpers the plain C matmul and the K-panel repacking read weights through,
 * and a weight row dequantized to floats (the embedding lookup). */
#ifndef PPD_DEQUANT_H
#define PPD_DEQUANT_H

#include <stdint.h>

#include "matmul_layout.h"

/* Dequantize row `row` of W into n_in floats (embedding lookup, tests). */
void kq_weight_row_f32(const struct kq_weight *w, int64_t row, float *out);

void kq_k4_scale_min(const uint8_t *scales, int j, int *sc, int *m); /* Q4_K/Q5_K sub-block j */
int kq_q6_k_value(const kq_block_q6_K *x, int e);                    /* element e, in [-32, 31] */
int kq_q5_value(const uint8_t *qh, const uint8_t *qs, int e);       /* Q5_0/Q5_1 element e, in [0, 31] */
int kq_iq4nl_nibble(const uint8_t *qs, int e);                       /* index into kq_iq4nl_values */
int kq_q2_k_value(const kq_block_q2_K *x, int e);                    /* element e, in [0, 3] */
int kq_q3_k_value(const kq_block_q3_K *x, int e);                    /* element e, in [-4, 3] */
int kq_q3_k_scale(const uint8_t *scales, int s);                    /* scale s (of 16), in [-32, 31] */
int kq_iq4_xs_scale(const kq_block_iq4_xs *x, int j);                /* scale j (of 8), in [-32, 31] */

#endif

/* quant_act.h — quantizing matmul inputs to 8-bit blocks (quant_act.c).  Their
 * sizes and layout (kq_act_bytes, kq_act_row, kq_act_type) are inline in
 * matmul_layout.h, so the kernels read rows without depending on this file. */
#ifndef PPD_QUANT_ACT_H
#define PPD_QUANT_ACT_H

#include <stdint.h>

#include "matmul_layout.h"

/* Quantize input rows [r_begin, r_end) of x (row stride n_in) into act, on the
 * fastest path this CPU has; every path gives the same bytes. */
void kq_act_quantize(int wtype, const float *x, int64_t n_in, int r_begin, int r_end, void *act);

/* The scalar quantizer for the 32-block types; the SIMD ones equal it. */
void kq_act_quantize_q32_scalar(int wtype, const float *x, int64_t n_in, int r_begin,
                                int r_end, void *act);

#endif

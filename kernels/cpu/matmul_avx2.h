/* matmul_avx2.h — the AVX2 path (matmul_avx2.c): repacking into panels, the
 * kernels on them and the AVX2 input quantizer.  Each kernel returns 0 when it
 * handled the call. */
#ifndef PPD_MATMUL_AVX2_H
#define PPD_MATMUL_AVX2_H

#include <stdint.h>

#include "matmul_layout.h"

int kq_avx2_usable(void);
int kq_avx2_repack(struct kq_weight *w);      /* KQ_OK, or KQ_E_NOMEM; no-op for other types */
int kq_avx2_matmul(const struct kq_weight *w, const void *act, int n_rows,
                   float *y, int64_t ldy, int64_t o_begin, int64_t o_end);
void kq_avx2_act_quantize_q32(int wtype, const float *x, int64_t n_in, int r_begin,
                              int r_end, void *act);

#endif

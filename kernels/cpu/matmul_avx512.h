/* matmul_avx512.h — the AVX-512 VNNI path and the AMX tile path
 * (matmul_avx512.c), on the AVX2 path's packed panels, and the input
 * quantizer.  Each kernel returns 0 when it handled the call. */
#ifndef PPD_MATMUL_AVX512_H
#define PPD_MATMUL_AVX512_H

#include <stdint.h>

#include "matmul_layout.h"

int kq_avx512_usable(void);
int kq_avx512_matmul(const struct kq_weight *w, const void *act, int n_rows,
                     float *y, int64_t ldy, int64_t o_begin, int64_t o_end);
void kq_avx512_act_quantize_q32(int wtype, const float *x, int64_t n_in, int r_begin,
                                int r_end, void *act);

/* The AMX-INT8 kernels: the 32-block types at KQ_AMX_MIN_ROWS rows and more;
 * -1 for anything else (the caller falls through).  Fewer rows are
 * memory-bound, where the VNNI kernels are as fast. */
#define KQ_AMX_MIN_ROWS 4
int kq_amx_usable(void);
int kq_amx_matmul(const struct kq_weight *w, const void *act, int n_rows,
                  float *y, int64_t ldy, int64_t o_begin, int64_t o_end);

#endif

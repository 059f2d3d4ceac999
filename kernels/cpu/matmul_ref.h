/* matmul_ref.h — the plain C matmul (matmul_ref.c): the reference every SIMD
 * path equals bit for bit, and the path of last resort. */
#ifndef PPD_MATMUL_REF_H
#define PPD_MATMUL_REF_H

#include <stdint.h>

#include "matmul_layout.h"

/* What kq_matmul computes, in plain C, with identical results. */
void kq_matmul_ref(const struct kq_weight *w, const void *act, int n_rows,
                   float *y, int64_t ldy, int64_t o_begin, int64_t o_end);

#endif

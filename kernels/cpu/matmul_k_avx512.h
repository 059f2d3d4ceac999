/* matmul_k_avx512.h — the AVX-512 VNNI kernel on K panels (matmul_k_avx512.c);
 * it returns 0 when it handled the call. */
#ifndef PPD_MATMUL_K_AVX512_H
#define PPD_MATMUL_K_AVX512_H

#include <stdint.h>

#include "matmul_layout.h"

int kq_k_avx512_matmul(const struct kq_weight *w, const void *act, int n_rows,
                       float *y, int64_t ldy, int64_t o_begin, int64_t o_end);

#endif

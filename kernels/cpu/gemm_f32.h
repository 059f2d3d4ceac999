/* gemm_f32.h — float matrix products for training: y = x · Bᵀ over many rows.
 *
 * Training the PPD prompt tokens runs a float forward and backward pass
 * through the frozen model for a few hundred rows at a time; both directions
 * are this one product (the backward pass multiplies by a transposed copy of
 * each weight).  Every output element is summed by one thread in a fixed
 * order (8-lane partial sums over K blocks of KQ_GEMM_KBLOCK, then the lanes,
 * then the tail), so results do not depend on the thread split and training
 * is reproducible.
 *
 * Not here: quantized weights (matmul.h: inference), threading (the caller
 * splits [o_begin, o_end)).
 */
#ifndef PPD_GEMM_F32_H
#define PPD_GEMM_F32_H

#include <stdint.h>

#define KQ_GEMM_KBLOCK 1024

/* y[r*ldy + o] = (accumulate ? y[r*ldy + o] : 0) + Σ_k x[r*ldx + k] · b[o*ldb + k]
 * for r < n_rows and o in [o_begin, o_end). */
void kq_gemm_f32_nt(const float *x, int64_t ldx, int n_rows, const float *b, int64_t ldb, int64_t k,
                    float *y, int64_t ldy, int64_t o_begin, int64_t o_end, int accumulate);

/* The plain C version, same summation order, for tests. */
void kq_gemm_f32_nt_ref(const float *x, int64_t ldx, int n_rows, const float *b, int64_t ldb, int64_t k,
                        float *y, int64_t ldy, int64_t o_begin, int64_t o_end, int accumulate);

#endif

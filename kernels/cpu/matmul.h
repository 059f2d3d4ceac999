/* matmul.h — y = x · Wᵀ for a quantized or float weight matrix W, many rows at once.
 *
 * W has n_out rows of n_in elements in a GGUF type (kq_type).  Inputs x are
 * float rows; they are first quantized once per matmul (for the quantized
 * weight types, to 8-bit blocks as llama.cpp does: Q8_1 for Q4_1, Q8_0 for
 * Q4_0/Q8_0, Q8_K for the k-quants) so that each block's dot product is an exact
 * int32 sum; the block scales are then applied in float in one fixed order per
 * (output, row).  Hence every row's result is bit-identical whatever the number
 * of rows in the call, and kq_matmul (fast, SIMD, chosen at run time from the
 * CPU's features) is bit-identical to kq_matmul_ref (plain C).
 *
 * The input's quantization is quant_act.h, the reference matmul_ref.h, a row
 * dequantized to floats dequant.h.
 *
 * Threading is the caller's: split [o_begin, o_end) across threads, each thread
 * calling kq_matmul on its own output range with the same quantized input.
 */
#ifndef PPD_MATMUL_H
#define PPD_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "matmul_layout.h"


/* Prepare W (may repack into an owned layout).  KQ_OK, KQ_E_UNSUPPORTED for a
 * type with no kernel, KQ_E_INVALID for n_in not a multiple of the block size,
 * KQ_E_NOMEM. */
int kq_weight_init(struct kq_weight *w, int type, const void *data, int64_t n_in, int64_t n_out);
void kq_weight_free(struct kq_weight *w);   /* accepts NULL; frees only `packed` */


/* y[r * ldy + o] = sum_k W[o][k] * x[r][k] for r < n_rows, o in [o_begin, o_end).
 * act is the quantized x (for float weight types act is x itself). */
void kq_matmul(const struct kq_weight *w, const void *act, int n_rows,
               float *y, int64_t ldy, int64_t o_begin, int64_t o_end);


/* Which SIMD path kq_matmul uses on this CPU ("avx512vnni", "avx2", "scalar"):
 * the cpu_isa.h path; a type without a kernel on it takes the next lower one. */
const char *kq_matmul_path(void);
/* How many kq_matmul calls of this thread each path (enum kq_isa) handled. */
uint64_t kq_matmul_path_calls(int isa);

/* Output ranges split at multiples of this share no work between threads (the
 * fast kernels compute tiles of 2 panels x 8 outputs; any split is still
 * correct, only slower). */
#define KQ_MATMUL_OUT_ALIGN 16


#endif

/* matmul.cu — out = x · Wᵀ through cuBLAS: f16 weights (dequantized at load)
 * and f16 activations, f32 accumulation, f32 output.  The twin of kq_matmul.
 * Row-major out[n_tok][n_out] is column-major (n_out x n_tok) with ld n_out:
 * out = op(W)ᵀ·X with W column-major (n_in x n_out) and X (n_in x n_tok).
 * It does not convert the activations (convert.cu) or own the handle.
 * cuBLAS picks its algorithm by shape, so a row's sums may be taken in another
 * order when the batch has another number of rows: tests/gpu checks greedy
 * PPD against plain decoding on the GPU.
 */
#include <cublas_v2.h>

#include "kernels/cuda/kcuda.h"

extern "C" int kc_matmul(void *cublas_handle, const uint16_t *w16, int64_t n_in, int64_t n_out, const uint16_t *x16,
                         int n_tok, float *out) {
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t s = cublasGemmEx((cublasHandle_t)cublas_handle, CUBLAS_OP_T, CUBLAS_OP_N, (int)n_out, n_tok,
                                    (int)n_in, &one, w16, CUDA_R_16F, (int)n_in, x16, CUDA_R_16F, (int)n_in, &zero,
                                    out, CUDA_R_32F, (int)n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return s == CUBLAS_STATUS_SUCCESS ? 0 : (int)s;
}

/* matmul.cu — out = x · Wᵀ through cuBLASLt: f16 weights (dequantized at load)
 * and f16 activations, f32 accumulation, f32 output.  The twin of kq_matmul.
 * Row-major out[n_tok][n_out] is column-major (n_out x n_tok) with ld n_out:
 * out = op(W)ᵀ·X with W column-major (n_in x n_out) and X (n_in x n_tok).
 *
 * Batch invariance.  cuBLAS picks its kernel (tile, split-K) by shape, so the
 * same row could be summed in another order when the batch has another
 * number of rows, and greedy PPD (many rows) then drifted from plain decoding
 * (one row) on an H200: 1 prompt in 10 differed.  Here the algorithm is
 * chosen once per weight shape, for pin_n columns (64), checked at 1 and
 * pin_n, and every call runs it on column blocks of at most pin_n rows: one
 * kernel, one K order and one split-K for every output element whatever the
 * batch, with no in-place (atomic) split-K reduction allowed, and a split-K
 * workspace bounded by pin_n columns (a check at 512 columns rejected every
 * split-K algorithm of the 49152-wide vocabulary product, whose fallback then
 * broke the invariance).  tests/gpu checks the bits (a row alone == in a
 * batch) on the default model's shapes.
 * PPD_CUDA_GEMM=cublas selects plain cublasGemmEx instead (for comparison).
 * It does not convert the activations (convert.cu).
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kcuda.h"

#define KC_GEMM_MAX_SHAPES 32
#define KC_GEMM_WORKSPACE ((size_t)64 << 20)

struct kc_gemm_shape {
    int64_t n_in, n_out;
    cublasLtMatrixLayout_t a, b, c;     /* b and c: columns set per call */
    cublasLtMatmulAlgo_t algo;
    int gemmex;                         /* no algorithm served every row count: cublasGemmEx */
};

struct kc_gemm {
    cublasLtHandle_t lt;
    cublasHandle_t blas;                /* not owned: the GemmEx path */
    cublasLtMatmulDesc_t op;
    cudaStream_t st;
    void *ws;
    int use_gemmex, pin_n;
    int n_shape;
    struct kc_gemm_shape shape[KC_GEMM_MAX_SHAPES];
    char why[160];
};

extern "C" const char *kc_gemm_describe(const struct kc_gemm *g) { return g->why; }

extern "C" int kc_gemm_init(struct kc_gemm **out, void *cublas_handle, cudaStream_t st) {
    struct kc_gemm *g = (struct kc_gemm *)calloc(1, sizeof *g);
    if (!g) return -1;
    g->blas = (cublasHandle_t)cublas_handle;
    g->st = st;
    const char *mode = getenv("PPD_CUDA_GEMM");
    g->use_gemmex = mode && !strcmp(mode, "cublas");
    const char *pin = getenv("PPD_CUDA_GEMM_PIN_N");
    g->pin_n = pin && atoi(pin) > 0 ? atoi(pin) : 64;
    snprintf(g->why, sizeof g->why, g->use_gemmex ? "cublasGemmEx (algorithm chosen per call)"
                                                  : "cuBLASLt, one algorithm per weight shape (chosen at %d columns)",
             g->pin_n);
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    if (cublasLtCreate(&g->lt) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescCreate(&g->op, CUBLAS_COMPUTE_32F, CUDA_R_32F) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) != CUBLAS_STATUS_SUCCESS ||
        cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) != CUBLAS_STATUS_SUCCESS ||
        cudaMalloc(&g->ws, KC_GEMM_WORKSPACE) != cudaSuccess) {
        kc_gemm_free(g);
        return -1;
    }
    *out = g;
    return 0;
}

extern "C" void kc_gemm_free(struct kc_gemm *g) {
    if (!g) return;
    for (int i = 0; i < g->n_shape; i++) {
        cublasLtMatrixLayoutDestroy(g->shape[i].a);
        cublasLtMatrixLayoutDestroy(g->shape[i].b);
        cublasLtMatrixLayoutDestroy(g->shape[i].c);
    }
    if (g->op) cublasLtMatmulDescDestroy(g->op);
    if (g->lt) cublasLtDestroy(g->lt);
    if (g->ws) cudaFree(g->ws);
    free(g);
}

static int set_cols(cublasLtMatrixLayout_t l, int64_t cols) {
    uint64_t c = (uint64_t)cols;
    return cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_COLS, &c, sizeof c) != CUBLAS_STATUS_SUCCESS;
}

/* The shape's entry, its algorithm chosen at pin_n columns and checked at 1
 * column too (when none serves both, the entry falls back to cublasGemmEx,
 * said on stderr and in g->why); NULL only on a cuBLASLt failure. */
static struct kc_gemm_shape *gemm_shape(struct kc_gemm *g, int64_t n_in, int64_t n_out) {
    for (int i = 0; i < g->n_shape; i++)
        if (g->shape[i].n_in == n_in && g->shape[i].n_out == n_out) return &g->shape[i];
    if (g->n_shape == KC_GEMM_MAX_SHAPES) return NULL;
    struct kc_gemm_shape *s = &g->shape[g->n_shape];
    memset(s, 0, sizeof *s);
    s->n_in = n_in;
    s->n_out = n_out;
    if (cublasLtMatrixLayoutCreate(&s->a, CUDA_R_16F, (uint64_t)n_in, (uint64_t)n_out, n_in) ||
        cublasLtMatrixLayoutCreate(&s->b, CUDA_R_16F, (uint64_t)n_in, (uint64_t)g->pin_n, n_in) ||
        cublasLtMatrixLayoutCreate(&s->c, CUDA_R_32F, (uint64_t)n_out, (uint64_t)g->pin_n, n_out))
        return NULL;
    cublasLtMatmulPreference_t pref;
    uint64_t ws = KC_GEMM_WORKSPACE;
    uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |
                       CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;   /* no in-place (atomic) reduction */
    if (cublasLtMatmulPreferenceCreate(&pref)) return NULL;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes);
    cublasLtMatmulHeuristicResult_t res[16];
    int n = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(g->lt, g->op, s->a, s->b, s->c, s->c, pref, 16, res, &n);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS) n = 0;
    int found = -1;
    for (int i = 0; i < n && found < 0; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > KC_GEMM_WORKSPACE) continue;
        int ok = 1;
        const int64_t cols[2] = {1, g->pin_n};
        for (int k = 0; k < 2 && ok; k++) {
            cublasLtMatmulHeuristicResult_t chk;
            ok = !set_cols(s->b, cols[k]) && !set_cols(s->c, cols[k]) &&
                 cublasLtMatmulAlgoCheck(g->lt, g->op, s->a, s->b, s->c, s->c, &res[i].algo, &chk) ==
                     CUBLAS_STATUS_SUCCESS &&
                 chk.workspaceSize <= KC_GEMM_WORKSPACE;
        }
        if (ok) found = i;
    }
    if (found < 0) {
        s->gemmex = 1;
        fprintf(stderr, "ppd warn: cuBLASLt has no fixed algorithm for %lld x %lld: cublasGemmEx, whose rows depend on "
                        "the batch\n", (long long)n_out, (long long)n_in);
        size_t len = strlen(g->why);
        snprintf(g->why + len, sizeof g->why - len, "; %lld x %lld: no fixed algorithm, cublasGemmEx",
                 (long long)n_out, (long long)n_in);
    } else {
        s->algo = res[found].algo;
    }
    g->n_shape++;
    return s;
}

extern "C" int kc_gemm_run(struct kc_gemm *g, const uint16_t *w16, int64_t n_in, int64_t n_out, const uint16_t *x16,
                           int n_tok, float *out) {
    const float one = 1.0f, zero = 0.0f;
    struct kc_gemm_shape *s = g->use_gemmex ? NULL : gemm_shape(g, n_in, n_out);
    if (g->use_gemmex || (s && s->gemmex)) {
        cublasStatus_t s = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n_out, n_tok, (int)n_in, &one, w16,
                                        CUDA_R_16F, (int)n_in, x16, CUDA_R_16F, (int)n_in, &zero, out, CUDA_R_32F,
                                        (int)n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        return s == CUBLAS_STATUS_SUCCESS ? 0 : (int)s;
    }
    if (!s) return (int)CUBLAS_STATUS_NOT_SUPPORTED;
    for (int c0 = 0; c0 < n_tok; c0 += g->pin_n) {
        const int nc = n_tok - c0 < g->pin_n ? n_tok - c0 : g->pin_n;
        if (set_cols(s->b, nc) || set_cols(s->c, nc)) return (int)CUBLAS_STATUS_INVALID_VALUE;
        cublasStatus_t st = cublasLtMatmul(g->lt, g->op, &one, w16, s->a, x16 + (size_t)c0 * (size_t)n_in, s->b, &zero,
                                           out + (size_t)c0 * (size_t)n_out, s->c, out + (size_t)c0 * (size_t)n_out,
                                           s->c, &s->algo, g->ws, KC_GEMM_WORKSPACE, g->st);
        if (st != CUBLAS_STATUS_SUCCESS) return (int)st;
    }
    return 0;
}

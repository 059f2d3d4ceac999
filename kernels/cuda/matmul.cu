/* matmul.cu — out = x · Wᵀ through cuBLASLt: f16 weights (dequantized at load)
 * and f16 activations, f32 accumulation, f32 output.  The twin of kq_matmul.
 * Row-major out[n_tok][n_out] is column-major (n_out x n_tok) with ld n_out:
 * out = op(W)ᵀ·X with W column-major (n_in x n_out) and X (n_in x n_tok).
 *
 * Batch invariance.  cuBLAS picks its kernel (tile, split-K) by shape, so the
 * same row could be summed in another order when the batch has another
 * number of rows, and greedy PPD (many rows) would drift from plain decoding
 * (one row): with cublasGemmEx on an H200, 1 prompt in 10 differs.  Here the algorithm is
 * chosen once per weight shape, when the weight is loaded (kc_gemm_prepare),
 * and every call runs it on column blocks of at most pin_n (64) rows: one
 * kernel, one K order and one split-K for every output element whatever the
 * batch.  No in-place (atomic) split-K reduction is allowed, the split-K
 * workspace is bounded by pin_n columns (a check at 512 columns rejected every
 * split-K algorithm of the 49152-wide vocabulary product), and each candidate
 * must give a column the same bits alone, among 5 and among pin_n columns
 * before it may be chosen.  Among those, the fastest on the weight itself at
 * 1 and pin_n columns wins: cuBLASLt's heuristic pick for 64 columns took a
 * 7B model's 4096 x 4096 product 16.4 us for one row, the timed choice 12.4
 * (its bytes over the copy bandwidth: 8.0; an H200).  tests/gpu checks the bits (a row alone == in a batch) again.
 * PPD_CUDA_GEMM=cublas selects plain cublasGemmEx instead (for comparison).
 * It does not convert the activations (convert.cu).
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kcuda.h"

#define KC_GEMM_MAX_SHAPES 128
#define KC_GEMM_WORKSPACE ((size_t)64 << 20)

struct kc_gemm_shape {
    int64_t n_in, n_out;
    cublasLtMatrixLayout_t a, b, c;     /* b and c: columns set per call */
    cublasLtMatmulAlgo_t algo;
    float t1_us, tp_us;                 /* its time at 1 and pin_n columns */
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
                                                  : "cuBLASLt, one algorithm per weight shape (timed at 1 and %d columns, bit-checked)",
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

/* Random f16 values of magnitude 1/8 .. 1 with random signs: inputs for the
 * timing and the bit check below (all-equal inputs would hide a reordering). */
static void fill_f16(uint16_t *h, size_t n) {
    uint32_t x = 0x9E3779B9u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        h[i] = (uint16_t)((x & 0x8000u) | (0x3000u + (x >> 16) % 0x0C00u));
    }
}

static int lt_run(struct kc_gemm *g, struct kc_gemm_shape *s, const cublasLtMatmulAlgo_t *algo, const uint16_t *w16,
                  const uint16_t *x16, int cols, float *out) {
    const float one = 1.0f, zero = 0.0f;
    if (set_cols(s->b, cols) || set_cols(s->c, cols)) return -1;
    return cublasLtMatmul(g->lt, g->op, &one, w16, s->a, x16, s->b, &zero, out, s->c, out, s->c, algo, g->ws,
                          KC_GEMM_WORKSPACE, g->st) != CUBLAS_STATUS_SUCCESS;
}

/* Mean microseconds of `algo` on `cols` columns over 5 back-to-back calls,
 * the better of two rounds; < 0 when it fails. */
static float lt_time(struct kc_gemm *g, struct kc_gemm_shape *s, const cublasLtMatmulAlgo_t *algo,
                     const uint16_t *w16, const uint16_t *x16, int cols, float *out, cudaEvent_t e0, cudaEvent_t e1) {
    float best = -1.0f;
    if (lt_run(g, s, algo, w16, x16, cols, out)) return -1.0f;
    for (int round = 0; round < 2; round++) {
        float ms = 0.0f;
        cudaEventRecord(e0, g->st);
        for (int i = 0; i < 5; i++)
            if (lt_run(g, s, algo, w16, x16, cols, out)) return -1.0f;
        cudaEventRecord(e1, g->st);
        if (cudaEventSynchronize(e1) != cudaSuccess || cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) return -1.0f;
        if (best < 0.0f || ms * 200.0f < best) best = ms * 200.0f;   /* ms / 5 calls, in us */
    }
    return best;
}

/* Whether `algo` gives a column the same bits alone, among 5 and among pin_n
 * columns (what greedy PPD == plain needs): checked, not assumed, because a
 * kernel that spreads its work by the number of tiles (stream-K) would not. */
static int lt_invariant(struct kc_gemm *g, struct kc_gemm_shape *s, const cublasLtMatmulAlgo_t *algo,
                        const uint16_t *w16, const uint16_t *x16, float *out, float *h_all, float *h_few) {
    const size_t col = (size_t)s->n_out * sizeof(float);
    const int few = g->pin_n < 5 ? g->pin_n : 5;
    if (lt_run(g, s, algo, w16, x16, g->pin_n, out) ||
        cudaMemcpyAsync(h_all, out, col * (size_t)few, cudaMemcpyDeviceToHost, g->st) != cudaSuccess ||
        cudaMemsetAsync(out, 0, col * (size_t)few, g->st) != cudaSuccess || lt_run(g, s, algo, w16, x16, few, out) ||
        cudaMemcpyAsync(h_few, out, col * (size_t)few, cudaMemcpyDeviceToHost, g->st) != cudaSuccess ||
        cudaStreamSynchronize(g->st) != cudaSuccess || memcmp(h_all, h_few, col * (size_t)few))
        return 0;
    if (lt_run(g, s, algo, w16, x16, 1, out) ||
        cudaMemcpyAsync(h_few, out, col, cudaMemcpyDeviceToHost, g->st) != cudaSuccess ||
        cudaStreamSynchronize(g->st) != cudaSuccess)
        return 0;
    return !memcmp(h_all, h_few, col);
}

/* The candidates: cuBLASLt's heuristic picks for 1 and for pin_n columns (no
 * in-place split-K, workspace within bounds), each valid at both counts. */
static int lt_candidates(struct kc_gemm *g, struct kc_gemm_shape *s, cublasLtMatmulAlgo_t *cand, int cap) {
    cublasLtMatmulPreference_t pref;
    uint64_t ws = KC_GEMM_WORKSPACE;
    uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |
                       CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;   /* no in-place (atomic) reduction */
    if (cublasLtMatmulPreferenceCreate(&pref)) return 0;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof schemes);
    int n_cand = 0;
    const int64_t at[2] = {g->pin_n, 1};   /* the pin_n picks first: the heuristic's own pick is candidate 0 */
    for (int a = 0; a < 2; a++) {
        cublasLtMatmulHeuristicResult_t res[16];
        int n = 0;
        if (set_cols(s->b, at[a]) || set_cols(s->c, at[a]) ||
            cublasLtMatmulAlgoGetHeuristic(g->lt, g->op, s->a, s->b, s->c, s->c, pref, 16, res, &n) !=
                CUBLAS_STATUS_SUCCESS)
            n = 0;
        for (int i = 0; i < n && n_cand < cap; i++) {
            if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > KC_GEMM_WORKSPACE) continue;
            int dup = 0;
            for (int j = 0; j < n_cand && !dup; j++) dup = !memcmp(&cand[j], &res[i].algo, sizeof res[i].algo);
            int ok = !dup;
            const int64_t cols[2] = {1, g->pin_n};
            for (int k = 0; k < 2 && ok; k++) {
                cublasLtMatmulHeuristicResult_t chk;
                ok = !set_cols(s->b, cols[k]) && !set_cols(s->c, cols[k]) &&
                     cublasLtMatmulAlgoCheck(g->lt, g->op, s->a, s->b, s->c, s->c, &res[i].algo, &chk) ==
                         CUBLAS_STATUS_SUCCESS &&
                     chk.workspaceSize <= KC_GEMM_WORKSPACE;
            }
            if (ok) cand[n_cand++] = res[i].algo;
        }
    }
    cublasLtMatmulPreferenceDestroy(pref);
    return n_cand;
}

/* Choose s->algo among the candidates: each is timed on w16 at 1 and pin_n
 * columns and its bits checked (lt_invariant); the fastest by the sum of the
 * two times wins (1 column: plain decoding; pin_n: a PPD tree or a batch).
 * PPD_CUDA_GEMM_PICK=first takes the first candidate that passes the bit
 * check, untimed (the choice before timing).  Returns the candidates that
 * passed, 0 when none did. */
static int lt_choose(struct kc_gemm *g, struct kc_gemm_shape *s, const uint16_t *w16) {
    cublasLtMatmulAlgo_t cand[32];
    const int n_cand = lt_candidates(g, s, cand, 32);
    const char *pick = getenv("PPD_CUDA_GEMM_PICK");
    const int first_only = pick && !strcmp(pick, "first");
    const size_t x_elems = (size_t)s->n_in * (size_t)g->pin_n, out_bytes = (size_t)s->n_out * g->pin_n * sizeof(float);
    uint16_t *x_host = (uint16_t *)malloc(x_elems * sizeof(uint16_t));
    float *h_all = (float *)malloc((size_t)s->n_out * 5 * sizeof(float));
    float *h_few = (float *)malloc((size_t)s->n_out * 5 * sizeof(float));
    uint16_t *x_dev = NULL;
    float *out_dev = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    int n_ok = 0, best = -1;
    float best_t = 0.0f, t1_first = -1.0f, tp_first = -1.0f;
    if (!n_cand || !x_host || !h_all || !h_few || cudaMalloc((void **)&x_dev, x_elems * sizeof(uint16_t)) ||
        cudaMalloc((void **)&out_dev, out_bytes) || cudaEventCreate(&e0) || cudaEventCreate(&e1))
        goto done;
    fill_f16(x_host, x_elems);
    if (cudaMemcpyAsync(x_dev, x_host, x_elems * sizeof(uint16_t), cudaMemcpyHostToDevice, g->st) != cudaSuccess)
        goto done;
    for (int i = 0; i < n_cand; i++) {
        if (!lt_invariant(g, s, &cand[i], w16, x_dev, out_dev, h_all, h_few)) continue;
        n_ok++;
        if (first_only) { best = i; break; }
        const float t1 = lt_time(g, s, &cand[i], w16, x_dev, 1, out_dev, e0, e1);
        const float tp = lt_time(g, s, &cand[i], w16, x_dev, g->pin_n, out_dev, e0, e1);
        if (t1 < 0.0f || tp < 0.0f) continue;
        if (t1_first < 0.0f) t1_first = t1, tp_first = tp;
        if (best < 0 || t1 + tp < best_t) best = i, best_t = t1 + tp, s->t1_us = t1, s->tp_us = tp;
    }
    if (best >= 0) s->algo = cand[best];
    if (best >= 0 && getenv("PPD_CUDA_GEMM_VERBOSE"))
        fprintf(stderr, "ppd gemm: %lld x %lld: %d candidates, %d bit-invariant; chose #%d: %.1f us at 1 column, "
                        "%.1f at %d (the first: %.1f, %.1f)\n",
                (long long)s->n_out, (long long)s->n_in, n_cand, n_ok, best, s->t1_us, s->tp_us, g->pin_n, t1_first,
                tp_first);
done:
    (void)cudaGetLastError();
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaStreamSynchronize(g->st);
    cudaFree(x_dev);
    cudaFree(out_dev);
    free(x_host);
    free(h_all);
    free(h_few);
    return best >= 0 ? n_ok : 0;
}

/* The shape's entry, its algorithm chosen on first sight (lt_choose, with the
 * weight w16 itself); when none passes, the entry falls back to cublasGemmEx,
 * said on stderr and in g->why.  NULL only on a cuBLASLt failure. */
static struct kc_gemm_shape *gemm_shape(struct kc_gemm *g, const uint16_t *w16, int64_t n_in, int64_t n_out) {
    for (int i = 0; i < g->n_shape; i++)
        if (g->shape[i].n_in == n_in && g->shape[i].n_out == n_out) return &g->shape[i];
    if (g->n_shape == KC_GEMM_MAX_SHAPES) return NULL;
    struct kc_gemm_shape *s = &g->shape[g->n_shape];
    memset(s, 0, sizeof *s);
    s->n_in = n_in;
    s->n_out = n_out;
    if (cublasLtMatrixLayoutCreate(&s->a, CUDA_R_16F, (uint64_t)n_in, (uint64_t)n_out, n_in) ||
        cublasLtMatrixLayoutCreate(&s->b, CUDA_R_16F, (uint64_t)n_in, (uint64_t)g->pin_n, n_in) ||
        cublasLtMatrixLayoutCreate(&s->c, CUDA_R_32F, (uint64_t)n_out, (uint64_t)g->pin_n, n_out)) {
        if (s->a) cublasLtMatrixLayoutDestroy(s->a);
        if (s->b) cublasLtMatrixLayoutDestroy(s->b);
        return NULL;
    }
    if (!lt_choose(g, s, w16)) {
        s->gemmex = 1;
        fprintf(stderr, "ppd warn: cuBLASLt has no fixed algorithm for %lld x %lld: cublasGemmEx, whose rows depend on "
                        "the batch\n", (long long)n_out, (long long)n_in);
        size_t len = strlen(g->why);
        snprintf(g->why + len, sizeof g->why - len, "; %lld x %lld: no fixed algorithm, cublasGemmEx",
                 (long long)n_out, (long long)n_in);
    }
    g->n_shape++;
    return s;
}

extern "C" int kc_gemm_prepare(struct kc_gemm *g, const uint16_t *w16, int64_t n_in, int64_t n_out) {
    if (g->use_gemmex) return 0;
    return gemm_shape(g, w16, n_in, n_out) ? 0 : (int)CUBLAS_STATUS_NOT_SUPPORTED;
}

extern "C" int kc_gemm_run(struct kc_gemm *g, const uint16_t *w16, int64_t n_in, int64_t n_out, const uint16_t *x16,
                           int n_tok, float *out) {
    const float one = 1.0f, zero = 0.0f;
    struct kc_gemm_shape *s = g->use_gemmex ? NULL : gemm_shape(g, w16, n_in, n_out);
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

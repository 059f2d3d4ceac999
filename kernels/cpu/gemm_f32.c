/* gemm_f32.c — y = x · Bᵀ in float, a register-blocked AVX2/FMA kernel and its
 * plain C twin (see gemm_f32.h for the summation order both follow).
 *
 * The AVX2 kernel computes tiles of 4 rows × 3 outputs: per 8 elements of K it
 * loads 3 vectors of B and 4 of x and issues 12 FMAs, so B is streamed once per
 * 4 rows and x once per 3 outputs, both from cache for the training shapes
 * (K = 576..1536; the 49152-wide logits product is split into K blocks so its
 * rows stay in L2).
 */
#include "gemm_f32.h"

#include <immintrin.h>
#include <math.h>

#include "cpu_isa.h"

/* The order every path uses: lane j of 8 accumulates elements k ≡ j (mod 8)
 * with fused multiply-adds; lanes are folded (j, j+4), then (j, j+2), then
 * (0, 1); the block sum is added to the output; a K tail is added last,
 * element by element, with separate multiply and add. */
static float gemm_fold8(const float l[8]) {
    float s4[4], s2[2];
    for (int j = 0; j < 4; j++) s4[j] = l[j] + l[j + 4];
    for (int j = 0; j < 2; j++) s2[j] = s4[j] + s4[j + 2];
    return s2[0] + s2[1];
}

static float gemm_block_ref(const float *x, const float *b, int64_t n) {
    float lane[8] = {0};
    int64_t n8 = n & ~(int64_t)7;
    for (int64_t k = 0; k < n8; k += 8)
        for (int j = 0; j < 8; j++) lane[j] = fmaf(x[k + j], b[k + j], lane[j]);
    float s = gemm_fold8(lane);
    for (int64_t k = n8; k < n; k++) s = s + x[k] * b[k];
    return s;
}

void kq_gemm_f32_nt_ref(const float *x, int64_t ldx, int n_rows, const float *b, int64_t ldb, int64_t k,
                        float *y, int64_t ldy, int64_t o_begin, int64_t o_end, int accumulate) {
    for (int r = 0; r < n_rows; r++)
        for (int64_t o = o_begin; o < o_end; o++) {
            float acc = accumulate ? y[r * ldy + o] : 0.0f;
            for (int64_t kb = 0; kb < k; kb += KQ_GEMM_KBLOCK) {
                int64_t n = k - kb < KQ_GEMM_KBLOCK ? k - kb : KQ_GEMM_KBLOCK;
                acc += gemm_block_ref(x + r * ldx + kb, b + o * ldb + kb, n);
            }
            y[r * ldy + o] = acc;
        }
}

/* gemm_fold8's order with three vector adds: (j, j+4), then (j, j+2), then (0, 1). */
__attribute__((target("avx2,fma"))) static inline float gemm_fold8_avx2(__m256 v) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

/* MR rows × NR outputs over one K block of n elements; sums added into y.
 * The unroll pragmas keep the MR × NR accumulators in registers: without them
 * GCC -O2 left the array on the stack, and every multiply-add loaded and
 * stored its accumulator (11 instead of 28-30 G MAC/s on one core,
 * build/bench/bench_gemm_f32). */
#define GEMM_TILE(MR, NR)                                                                                   \
    __attribute__((target("avx2,fma"))) static void gemm_tile_##MR##x##NR(                                  \
        const float *x, int64_t ldx, const float *b, int64_t ldb, int64_t n, float *y, int64_t ldy) {       \
        __m256 acc[MR][NR];                                                                                 \
        _Pragma("GCC unroll 4") for (int i = 0; i < MR; i++)                                                \
            _Pragma("GCC unroll 3") for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_ps();           \
        int64_t n8 = n & ~(int64_t)7;                                                                       \
        for (int64_t kk = 0; kk < n8; kk += 8) {                                                            \
            __m256 bv[NR];                                                                                  \
            _Pragma("GCC unroll 3") for (int j = 0; j < NR; j++) bv[j] = _mm256_loadu_ps(b + j * ldb + kk); \
            _Pragma("GCC unroll 4") for (int i = 0; i < MR; i++) {                                          \
                __m256 xv = _mm256_loadu_ps(x + i * ldx + kk);                                              \
                _Pragma("GCC unroll 3") for (int j = 0; j < NR; j++)                                        \
                    acc[i][j] = _mm256_fmadd_ps(xv, bv[j], acc[i][j]);                                      \
            }                                                                                               \
        }                                                                                                   \
        for (int i = 0; i < MR; i++)                                                                        \
            for (int j = 0; j < NR; j++) {                                                                  \
                float s = gemm_fold8_avx2(acc[i][j]);                                                       \
                for (int64_t kk = n8; kk < n; kk++) s = s + x[i * ldx + kk] * b[j * ldb + kk];              \
                y[i * ldy + j] += s;                                                                        \
            }                                                                                               \
    }

#define GEMM_RBLOCK 64

GEMM_TILE(4, 3)
GEMM_TILE(1, 3)
GEMM_TILE(4, 1)
GEMM_TILE(1, 1)

__attribute__((target("avx2,fma"))) static void gemm_avx2(const float *x, int64_t ldx, int n_rows, const float *b,
                                                          int64_t ldb, int64_t k, float *y, int64_t ldy,
                                                          int64_t o_begin, int64_t o_end, int accumulate) {
    if (!accumulate)
        for (int r = 0; r < n_rows; r++)
            for (int64_t o = o_begin; o < o_end; o++) y[r * ldy + o] = 0.0f;
    /* Row blocks of GEMM_RBLOCK keep their x slice (≤ 256 KB) in L2 while
     * every output triple streams past it; the order of each element's sum
     * does not depend on this blocking. */
    for (int64_t kb = 0; kb < k; kb += KQ_GEMM_KBLOCK) {
        int64_t n = k - kb < KQ_GEMM_KBLOCK ? k - kb : KQ_GEMM_KBLOCK;
        for (int rb = 0; rb < n_rows; rb += GEMM_RBLOCK) {
            const int re = n_rows - rb < GEMM_RBLOCK ? n_rows : rb + GEMM_RBLOCK;
            int64_t o = o_begin;
            for (; o + 3 <= o_end; o += 3) {
                int r = rb;
                for (; r + 4 <= re; r += 4)
                    gemm_tile_4x3(x + r * ldx + kb, ldx, b + o * ldb + kb, ldb, n, y + r * ldy + o, ldy);
                for (; r < re; r++)
                    gemm_tile_1x3(x + r * ldx + kb, ldx, b + o * ldb + kb, ldb, n, y + r * ldy + o, ldy);
            }
            for (; o < o_end; o++) {
                int r = rb;
                for (; r + 4 <= re; r += 4)
                    gemm_tile_4x1(x + r * ldx + kb, ldx, b + o * ldb + kb, ldb, n, y + r * ldy + o, ldy);
                for (; r < re; r++)
                    gemm_tile_1x1(x + r * ldx + kb, ldx, b + o * ldb + kb, ldb, n, y + r * ldy + o, ldy);
            }
        }
    }
}

void kq_gemm_f32_nt(const float *x, int64_t ldx, int n_rows, const float *b, int64_t ldb, int64_t k, float *y,
                    int64_t ldy, int64_t o_begin, int64_t o_end, int accumulate) {
    if (kq_isa() >= KQ_ISA_AVX2)
        gemm_avx2(x, ldx, n_rows, b, ldb, k, y, ldy, o_begin, o_end, accumulate);
    else
        kq_gemm_f32_nt_ref(x, ldx, n_rows, b, ldb, k, y, ldy, o_begin, o_end, accumulate);
}

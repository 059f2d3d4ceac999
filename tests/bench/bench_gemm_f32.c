/* bench_gemm_f32.c — how close the float product of `ppd train`
 * (kernels/cpu/gemm_f32.c) comes to this CPU's peak, on the training shapes
 * of the default model.
 *
 * One thread (the trainer splits each product over threads by output, so the
 * per-thread rate is what counts).  Measures:
 *   1. the FMA peak, register only: 12 independent chains of 8-lane fused
 *      multiply-adds, the same instruction the kernel's 4 x 3 tile issues;
 *   2. y = x · Bᵀ for R = 192 rows (4 sequences x 16 cut points x 3 prompt
 *      tokens, a training step's prompt rows) and each shape of a layer and
 *      the output matrix, forward ([n_out, k] = the weight) and backward (its
 *      transpose): best of 5 calls, as G multiply-adds/s and as a share of
 *      the peak.  The memory floor (B read once) is far below the compute
 *      floor for every shape at 192 rows, so the peak is the floor to beat.
 * Before timing it checks the kernel against its plain C twin, bit for bit
 * (exit 1 otherwise; the full test is tests/unit/test_train_model.c).
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/gemm_f32.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 12345;
static float rng_sym(void) {
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng_state >> 40) & 0xFFFFFF) * (2.0f / 16777216.0f) - 1.0f;
}

/* G multiply-adds per second of 12 independent FMA chains (8 lanes each). */
__attribute__((target("avx2,fma"))) static double fma_peak(void) {
    __m256 a[12], m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-3f);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    const long iters = 20000000;
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        const double t0 = now_s();
        for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
            for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
            __asm__ volatile("" : "+x"(a[0]), "+x"(a[1]), "+x"(a[2]), "+x"(a[3]), "+x"(a[4]), "+x"(a[5]));
            __asm__ volatile("" : "+x"(a[6]), "+x"(a[7]), "+x"(a[8]), "+x"(a[9]), "+x"(a[10]), "+x"(a[11]));
        }
        const double t = now_s() - t0;
        if (t < best) best = t;
    }
    float sink[8];
    _mm256_storeu_ps(sink, a[0]);
    if (sink[0] == 12345.0f) printf(" ");
    return (double)iters * 12 * 8 / best / 1e9;
}

static double time_gemm(const float *x, int R, const float *b, long k, long n_out, float *y) {
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        const double t0 = now_s();
        kq_gemm_f32_nt(x, k, R, b, k, k, y, n_out, 0, n_out, 0);
        const double t = now_s() - t0;
        if (t < best) best = t;
    }
    return best;
}

int main(void) {
    const int R = 192;
    const struct { const char *name; long k, n_out; } shapes[] = {
        {"q, o        576 -> 576", 576, 576},        {"k, v        576 -> 192", 576, 192},
        {"gate, up    576 -> 1536", 576, 1536},      {"down        1536 -> 576", 1536, 576},
        {"k, v back   192 -> 576", 192, 576},        {"gate back   1536 -> 576", 1536, 576},
        {"down back   576 -> 1536", 576, 1536},      {"output      576 -> 49152", 576, 49152},
        {"output back 49152 -> 576", 49152, 576},
    };
    const long max_k = 49152, max_elems = 576 * 49152;
    float *x = malloc(sizeof(float) * (size_t)R * (size_t)max_k), *b = malloc(sizeof(float) * (size_t)max_elems);
    float *y = malloc(sizeof(float) * (size_t)R * 49152), *y2 = malloc(sizeof(float) * (size_t)R * 49152);
    if (!x || !b || !y || !y2) { fprintf(stderr, "bench_gemm_f32: out of memory\n"); return 1; }
    for (long i = 0; i < (long)R * max_k; i++) x[i] = rng_sym();
    for (long i = 0; i < max_elems; i++) b[i] = rng_sym() * 0.05f;

    /* the fast kernel == its plain twin, bit for bit, on an odd shape */
    kq_gemm_f32_nt(x, 1541, 7, b, 1541, 1541, y, 53, 0, 53, 0);
    kq_gemm_f32_nt_ref(x, 1541, 7, b, 1541, 1541, y2, 53, 0, 53, 0);
    if (memcmp(y, y2, sizeof(float) * 7 * 53) != 0) {
        fprintf(stderr, "bench_gemm_f32: the AVX2 kernel differs from the reference\n");
        return 1;
    }

    const double peak = fma_peak();
    printf("FMA peak, one thread, register only: %.1f G multiply-adds/s\n\n", peak);
    printf("| product (R = %d rows) | ms | G MAC/s | share of peak |\n|---|---|---|---|\n", R);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const double t = time_gemm(x, R, b, shapes[s].k, shapes[s].n_out, y);
        const double gmacs = (double)R * (double)shapes[s].k * (double)shapes[s].n_out / t / 1e9;
        printf("| %s | %.2f | %.1f | %.2f |\n", shapes[s].name, t * 1e3, gmacs, gmacs / peak);
    }
    free(x); free(b); free(y); free(y2);
    return 0;
}

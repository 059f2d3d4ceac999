/* test_matmul.c — the CPU matmul kernels (kernels/cpu/matmul*.c, quant_act.c,
 * dequant.c).
 *
 * What must hold, and is checked here:
 *   - kq_matmul on every SIMD path this CPU has (avx2, avx512vnni, amx: each run
 *     in turn, each asserted to be the kernel that handled the call, the
 *     paths the CPU lacks printed as not run) equals kq_matmul_ref bit for bit
 *     (memcmp), for every weight type, every n_rows from 1 to 40 and 64 (the
 *     AVX2 kernel cuts rows into tiles of up to 4 and outputs into pairs of
 *     8-output panels, so this covers every tile shape and remainder), and
 *     output ranges starting and ending at odd places, inside one panel, on
 *     either panel of a pair, across pairs; outputs outside the range are left
 *     untouched;
 *   - on the model's shapes (n_in 576 and 1536, n_out not a multiple of 16),
 *     the outputs assembled from a split into 2..5 ranges (at multiples of 8,
 *     of 16 and anywhere, as threads would take them) equal the reference;
 *   - row independence: each row computed alone equals the same row computed
 *     in a batch of 64, bit for bit (this is what makes PPD lossless);
 *   - the reference agrees with a float64 dequantize-then-dot within a stated
 *     tolerance (max relative error printed);
 *   - dequantization of hand-built blocks gives hand-computed values (a wrong
 *     nibble order or scale unpacking fails);
 *   - activation quantization: hand-computed bytes (ties to even, Q8_1's s,
 *     Q8_K's signed max), the AVX2 quantizer equals the scalar one, and both
 *     equal llama.cpp's bytes (tests/golden/data/act_quant.bin).
 * Seeds are fixed; nothing here depends on the machine except which path runs.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_isa.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/matmul_avx2.h"
#include "kernels/cpu/matmul_avx512.h"
#include "kernels/cpu/matmul_layout.h"
#include "kernels/cpu/matmul_ref.h"
#include "kernels/cpu/quant_act.h"
#include "common/qtypes.h"
#include "tests/unit/common_test.h"

/* ---- deterministic data ---------------------------------------------------- */

static uint64_t rng_state;

static void rng_seed(uint64_t s) { rng_state = s; }

static uint64_t rng_next(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_unit(void) { return (float)(rng_next() >> 40) * (1.0f / 16777216.0f); }
static float rng_sym(void) { return 2.0f * rng_unit() - 1.0f; }

struct type_case {
    int type;
    int64_t n_in;
};

/* n_in values: odd for float types (SIMD tail), several blocks otherwise */
static const struct type_case cases[] = {
    {KQ_F32, 37},   {KQ_F16, 70},   {KQ_BF16, 53},
    {KQ_Q4_0, 96},  {KQ_Q4_1, 160}, {KQ_Q8_0, 96},
    {KQ_Q4_K, 512}, {KQ_Q5_K, 512}, {KQ_Q6_K, 512},
    {KQ_Q5_0, 96},  {KQ_Q5_1, 160}, {KQ_IQ4_NL, 128},
    {KQ_Q2_K, 512}, {KQ_Q3_K, 768}, {KQ_IQ4_XS, 512},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))
#define N_OUT 45

/* Random weights of any type, with sane (finite, small) scales. */
static void *make_weights(int type, int64_t n_in, int64_t n_out) {
    const size_t rb = kq_row_bytes(type, n_in), total = rb * (size_t)n_out;
    uint8_t *buf = malloc(total);
    ck_assert_ptr_nonnull(buf);
    for (size_t i = 0; i < total; i++) buf[i] = (uint8_t)rng_next();
    const int64_t n = n_in * n_out;
    switch (type) {
    case KQ_F32:
        for (int64_t k = 0; k < n; k++) { float f = rng_sym(); memcpy(buf + 4 * k, &f, 4); }
        break;
    case KQ_F16:
        for (int64_t k = 0; k < n; k++) { kq_f16 h = kq_f32_to_f16(rng_sym()); memcpy(buf + 2 * k, &h, 2); }
        break;
    case KQ_BF16:
        for (int64_t k = 0; k < n; k++) {
            float f = rng_sym();
            uint32_t u;
            memcpy(&u, &f, 4);
            kq_bf16 h = (kq_bf16)(u >> 16);
            memcpy(buf + 2 * k, &h, 2);
        }
        break;
    case KQ_Q4_0: {
        kq_block_q4_0 *b = (kq_block_q4_0 *)buf;
        for (int64_t i = 0; i < n / KQ_QK; i++) b[i].d = kq_f32_to_f16(0.05f * rng_sym());
        break;
    }
    case KQ_Q4_1: {
        kq_block_q4_1 *b = (kq_block_q4_1 *)buf;
        for (int64_t i = 0; i < n / KQ_QK; i++) {
            float d = 0.001f + 0.02f * rng_unit();
            b[i].d = kq_f32_to_f16(d);
            b[i].m = kq_f32_to_f16(-8.0f * d * (0.5f + rng_unit()));
        }
        break;
    }
    case KQ_Q8_0: { /* random qs include -128, which a GGUF may hold */
        kq_block_q8_0 *b = (kq_block_q8_0 *)buf;
        for (int64_t i = 0; i < n / KQ_QK; i++) b[i].d = kq_f32_to_f16(0.003f * rng_sym());
        break;
    }
    case KQ_Q4_K: {
        kq_block_q4_K *b = (kq_block_q4_K *)buf;
        for (int64_t i = 0; i < n / KQ_QK_K; i++) {
            b[i].d = kq_f32_to_f16(0.002f * rng_unit());
            b[i].dmin = kq_f32_to_f16(0.002f * rng_unit());
        }
        break;
    }
    case KQ_Q5_K: {
        kq_block_q5_K *b = (kq_block_q5_K *)buf;
        for (int64_t i = 0; i < n / KQ_QK_K; i++) {
            b[i].d = kq_f32_to_f16(0.001f * rng_unit());
            b[i].dmin = kq_f32_to_f16(0.002f * rng_unit());
        }
        break;
    }
    case KQ_Q6_K: {
        kq_block_q6_K *b = (kq_block_q6_K *)buf;
        for (int64_t i = 0; i < n / KQ_QK_K; i++) b[i].d = kq_f32_to_f16(0.0005f * rng_sym());
        break;
    }
    case KQ_Q5_0: {
        kq_block_q5_0 *b = (kq_block_q5_0 *)buf;
        for (int64_t i = 0; i < n / KQ_QK; i++) b[i].d = kq_f32_to_f16(0.03f * rng_sym());
        break;
    }
    case KQ_Q5_1: {
        kq_block_q5_1 *b = (kq_block_q5_1 *)buf;
        for (int64_t i = 0; i < n / KQ_QK; i++) {
            float d = 0.001f + 0.01f * rng_unit();
            b[i].d = kq_f32_to_f16(d);
            b[i].m = kq_f32_to_f16(-16.0f * d * (0.5f + rng_unit()));
        }
        break;
    }
    case KQ_IQ4_NL: {
        kq_block_iq4_nl *b = (kq_block_iq4_nl *)buf;
        for (int64_t i = 0; i < n / KQ_QK; i++) b[i].d = kq_f32_to_f16(0.002f * rng_sym());
        break;
    }
    case KQ_Q2_K: {
        kq_block_q2_K *b = (kq_block_q2_K *)buf;
        for (int64_t i = 0; i < n / KQ_QK_K; i++) {
            b[i].d = kq_f32_to_f16(0.01f * rng_unit());
            b[i].dmin = kq_f32_to_f16(0.005f * rng_unit());
        }
        break;
    }
    case KQ_Q3_K: {
        kq_block_q3_K *b = (kq_block_q3_K *)buf;
        for (int64_t i = 0; i < n / KQ_QK_K; i++) b[i].d = kq_f32_to_f16(0.002f * rng_sym());
        break;
    }
    case KQ_IQ4_XS: {
        kq_block_iq4_xs *b = (kq_block_iq4_xs *)buf;
        for (int64_t i = 0; i < n / KQ_QK_K; i++) b[i].d = kq_f32_to_f16(0.0002f * rng_sym());
        break;
    }
    default:
        ck_abort_msg("no generator for type %d", type);
    }
    return buf;
}

/* Inputs: mostly in [-3, 3], every 53rd element an outlier, and one all-zero
 * 32-element stretch in row 0 (the amax == 0 path). */
static float *make_inputs(int64_t n_in, int n_rows) {
    float *x = malloc(sizeof(float) * (size_t)n_in * (size_t)n_rows);
    ck_assert_ptr_nonnull(x);
    for (int64_t k = 0; k < n_in * n_rows; k++) {
        x[k] = 3.0f * rng_sym();
        if (k % 53 == 7) x[k] *= 20.0f;
    }
    if (n_in >= 64)
        for (int k = 32; k < 64; k++) x[k] = 0.0f;
    return x;
}

static void *quantize(int type, const float *x, int64_t n_in, int n_rows) {
    void *act = malloc(kq_act_bytes(type, n_in, n_rows) + 1);
    ck_assert_ptr_nonnull(act);
    kq_act_quantize(type, x, n_in, 0, n_rows, act);
    return act;
}

/* ---- the paths -------------------------------------------------------------- */

/* The best path with a kernel for this weight type and row count (kq_matmul
 * falls through to the next lower path for a call its kernel does not take). */
static int type_best_path(int type, int n_rows) {
    switch (type) {
    case KQ_Q4_0: case KQ_Q4_1: case KQ_Q8_0:
    case KQ_Q5_0: case KQ_Q5_1: case KQ_IQ4_NL:
        return n_rows >= KQ_AMX_MIN_ROWS ? KQ_ISA_AMX : KQ_ISA_AVX512VNNI;
    case KQ_Q2_K: case KQ_Q3_K: case KQ_Q4_K: case KQ_Q5_K: case KQ_Q6_K: case KQ_IQ4_XS:
        return KQ_ISA_AVX512VNNI;
    case KQ_F32: case KQ_F16: case KQ_BF16:   return KQ_ISA_AVX2;
    default:                                  return KQ_ISA_SCALAR;
    }
}

/* Run kq_matmul under path isa and assert that the expected kernel handled it. */
static void matmul_on_path(int isa, const struct kq_weight *w, const void *act, int n_rows, float *y,
                           int64_t ldy, int64_t ob, int64_t oe) {
    const int best = type_best_path(w->type, n_rows), want = isa < best ? isa : best;
    const uint64_t before = kq_matmul_path_calls(want);
    kq_matmul(w, act, n_rows, y, ldy, ob, oe);
    ck_assert_msg(kq_matmul_path_calls(want) == before + 1, "%s on path %s: the %s kernel did not run",
                  kq_type_name(w->type), kq_isa_name(isa), kq_isa_name(want));
}

/* The path the process started on (PPD_CPU_ISA may cap it); each test that
 * walks the paths returns to it. */
static int initial_isa;

/* The SIMD paths to compare with the reference: every one this CPU has. */
#define FOR_EACH_SIMD_PATH(isa) for (int isa = KQ_ISA_AVX2; isa <= kq_isa_detected() && kq_isa_set(isa) == 0; isa++)

/* ---- fast == reference ------------------------------------------------------ */

#define MAX_ROWS_ALL 40 /* every row count 1..MAX_ROWS_ALL, then 64 */
static int row_count(int i) { return i < MAX_ROWS_ALL ? i + 1 : 64; }
/* N_OUT = 45: panels 0..5 (the last one 5 lanes wide), pairs {0,1} {2,3} {4,5} */
static const int64_t ranges[][2] = {{0, N_OUT}, {3, 42}, {5, 6}, {1, 9}, {8, 16}, {17, N_OUT},
                                    {40, 45}, {8, 24}, {16, 32}, {9, 31}, {24, 40}, {0, 8}};

START_TEST(test_fast_equals_ref) {
    const struct type_case *tc = &cases[_i];
    rng_seed(1000 + (uint64_t)_i);
    void *wd = make_weights(tc->type, tc->n_in, N_OUT);
    struct kq_weight w;
    ck_assert_int_eq(kq_weight_init(&w, tc->type, wd, tc->n_in, N_OUT), 0);
    const int64_t ldy = N_OUT + 3;
    for (int ri = 0; ri <= MAX_ROWS_ALL; ri++) {
        const int n_rows = row_count(ri);
        float *x = make_inputs(tc->n_in, n_rows);
        void *act = quantize(tc->type, x, tc->n_in, n_rows);
        float *yref = malloc(sizeof(float) * (size_t)ldy * (size_t)n_rows);
        float *yf = malloc(sizeof(float) * (size_t)ldy * (size_t)n_rows);
        kq_matmul_ref(&w, act, n_rows, yref, ldy, 0, N_OUT);
        FOR_EACH_SIMD_PATH(isa)
        for (size_t gi = 0; gi < sizeof ranges / sizeof ranges[0]; gi++) {
            const int64_t ob = ranges[gi][0], oe = ranges[gi][1];
            memset(yf, 0x7f, sizeof(float) * (size_t)ldy * (size_t)n_rows); /* sentinel */
            matmul_on_path(isa, &w, act, n_rows, yf, ldy, ob, oe);
            for (int r = 0; r < n_rows; r++) {
                const float *a = yref + (size_t)r * (size_t)ldy, *b = yf + (size_t)r * (size_t)ldy;
                ck_assert_msg(memcmp(a + ob, b + ob, sizeof(float) * (size_t)(oe - ob)) == 0,
                              "%s on %s n_rows=%d range [%lld,%lld) row %d: fast != ref",
                              kq_type_name(tc->type), kq_isa_name(isa), n_rows, (long long)ob, (long long)oe, r);
                for (int64_t o = 0; o < ldy; o++) {
                    if (o >= ob && o < oe) continue;
                    uint32_t u;
                    memcpy(&u, b + o, 4);
                    ck_assert_msg(u == 0x7f7f7f7fu, "%s: output %lld outside [%lld,%lld) written",
                                  kq_type_name(tc->type), (long long)o, (long long)ob, (long long)oe);
                }
            }
        }
        free(x); free(act); free(yref); free(yf);
    }
    kq_isa_set(initial_isa);
    kq_weight_free(&w);
    free(wd);
}
END_TEST

/* ---- splits on the model's shapes ------------------------------------------ */

static const struct { int type; int64_t n_in, n_out; } split_cases[] = {
    {KQ_Q4_1, 576, 88}, {KQ_Q4_1, 1536, 40}, {KQ_Q4_0, 576, 72}, {KQ_Q8_0, 576, 104},
    {KQ_Q5_0, 576, 72}, {KQ_Q5_1, 576, 40}, {KQ_IQ4_NL, 576, 56},
    {KQ_Q4_K, 1536, 40}, {KQ_Q6_K, 1536, 24}, {KQ_Q5_K, 1536, 24},
    {KQ_Q2_K, 768, 24}, {KQ_Q3_K, 768, 24}, {KQ_IQ4_XS, 1536, 24},
};
#define N_SPLIT_CASES ((int)(sizeof split_cases / sizeof split_cases[0]))

START_TEST(test_fast_splits) {
    const int type = split_cases[_i].type;
    const int64_t n_in = split_cases[_i].n_in, n_out = split_cases[_i].n_out;
    rng_seed(5000 + (uint64_t)_i);
    void *wd = make_weights(type, n_in, n_out);
    struct kq_weight w;
    ck_assert_int_eq(kq_weight_init(&w, type, wd, n_in, n_out), 0);
    static const int rows[] = {1, 2, 3, 4, 5, 7, 8, 13, 16, 24};
    for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++) {
        const int n_rows = rows[ri];
        float *x = make_inputs(n_in, n_rows);
        void *act = quantize(type, x, n_in, n_rows);
        const size_t ny = (size_t)n_rows * (size_t)n_out;
        float *yref = malloc(sizeof(float) * ny), *yf = malloc(sizeof(float) * ny);
        kq_matmul_ref(&w, act, n_rows, yref, n_out, 0, n_out);
        FOR_EACH_SIMD_PATH(isa)
        for (int parts = 2; parts <= 5; parts++) {
            static const int aligns[] = {1, 8, 16};
            for (int ai = 0; ai < 3; ai++) {
                const int align = aligns[ai];
                memset(yf, 0x7f, sizeof(float) * ny);
                int64_t cut[6];
                cut[0] = 0;
                cut[parts] = n_out;
                for (int k = 1; k < parts; k++) { /* random, sorted, aligned cuts */
                    int64_t c = (int64_t)(rng_next() % (uint64_t)(n_out + 1)) / align * align;
                    cut[k] = c < cut[k - 1] ? cut[k - 1] : c;
                }
                for (int k = 0; k < parts; k++)
                    if (cut[k] < cut[k + 1]) matmul_on_path(isa, &w, act, n_rows, yf, n_out, cut[k], cut[k + 1]);
                ck_assert_msg(memcmp(yref, yf, sizeof(float) * ny) == 0,
                              "%s on %s %lldx%lld n_rows=%d split into %d (align %d): fast != ref",
                              kq_type_name(type), kq_isa_name(isa), (long long)n_in, (long long)n_out, n_rows, parts,
                              align);
            }
        }
        free(x); free(act); free(yref); free(yf);
    }
    kq_isa_set(initial_isa);
    kq_weight_free(&w);
    free(wd);
}
END_TEST

/* ---- row independence ------------------------------------------------------- */

START_TEST(test_row_independence) {
    const struct type_case *tc = &cases[_i];
    rng_seed(2000 + (uint64_t)_i);
    const int n_rows = 64;
    void *wd = make_weights(tc->type, tc->n_in, N_OUT);
    struct kq_weight w;
    ck_assert_int_eq(kq_weight_init(&w, tc->type, wd, tc->n_in, N_OUT), 0);
    float *x = make_inputs(tc->n_in, n_rows);
    void *act = quantize(tc->type, x, tc->n_in, n_rows);
    float *ybatch = malloc(sizeof(float) * N_OUT * n_rows), *yrefb = malloc(sizeof(float) * N_OUT * n_rows);
    kq_matmul_ref(&w, act, n_rows, yrefb, N_OUT, 0, N_OUT);
    for (int r = 0; r < n_rows; r++) {
        void *act1 = quantize(tc->type, x + (size_t)r * (size_t)tc->n_in, tc->n_in, 1);
        float y1ref[N_OUT];
        kq_matmul_ref(&w, act1, 1, y1ref, N_OUT, 0, N_OUT);
        ck_assert_msg(memcmp(y1ref, yrefb + (size_t)r * N_OUT, sizeof y1ref) == 0,
                      "%s row %d alone != in a batch of 64 (ref)", kq_type_name(tc->type), r);
        free(act1);
    }
    FOR_EACH_SIMD_PATH(isa) {
        matmul_on_path(isa, &w, act, n_rows, ybatch, N_OUT, 0, N_OUT);
        for (int r = 0; r < n_rows; r++) {
            void *act1 = quantize(tc->type, x + (size_t)r * (size_t)tc->n_in, tc->n_in, 1);
            float y1[N_OUT];
            matmul_on_path(isa, &w, act1, 1, y1, N_OUT, 0, N_OUT);
            ck_assert_msg(memcmp(y1, ybatch + (size_t)r * N_OUT, sizeof y1) == 0,
                          "%s on %s: row %d alone != in a batch of 64", kq_type_name(tc->type), kq_isa_name(isa), r);
            free(act1);
        }
    }
    kq_isa_set(initial_isa);
    free(x); free(act); free(ybatch); free(yrefb);
    kq_weight_free(&w);
    free(wd);
}
END_TEST

/* ---- reference vs float64 ------------------------------------------------- */

/* Row r of the quantized input, dequantized to doubles (the values the integer
 * kernels multiply by).  Q8_1's s is handled by the caller. */
static void act_row_f64(int type, const void *act, int64_t n_in, int r, double *out) {
    const void *row = kq_act_row(type, act, n_in, r);
    switch (kq_act_type(type)) {
    case KQ_Q8_0: {
        const kq_block_q8_0 *b = row;
        for (int64_t k = 0; k < n_in; k++) out[k] = (double)kq_f16_to_f32(b[k / 32].d) * b[k / 32].qs[k % 32];
        break;
    }
    case KQ_Q8_1: {
        const kq_block_q8_1 *b = row;
        for (int64_t k = 0; k < n_in; k++) out[k] = (double)kq_f16_to_f32(b[k / 32].d) * b[k / 32].qs[k % 32];
        break;
    }
    case KQ_Q8_K: {
        const kq_block_q8_K *b = row;
        for (int64_t k = 0; k < n_in; k++) out[k] = (double)b[k / 256].d * b[k / 256].qs[k % 256];
        break;
    }
    default:
        for (int64_t k = 0; k < n_in; k++) out[k] = ((const float *)row)[k];
        break;
    }
}

#define REF_F64_TOL 1e-5   /* relative to sum |w*a|: f32 accumulation over <= 20 blocks */
#define QUANT_F64_TOL 5e-2 /* relative to sum |w*x|: 8-bit activations, with outliers
                            * (every 53rd input is x20) coarsening their blocks */

START_TEST(test_ref_vs_f64) {
    const struct type_case *tc = &cases[_i];
    rng_seed(3000 + (uint64_t)_i);
    const int n_rows = 5;
    const int64_t n_in = tc->n_in;
    void *wd = make_weights(tc->type, n_in, N_OUT);
    struct kq_weight w;
    ck_assert_int_eq(kq_weight_init(&w, tc->type, wd, n_in, N_OUT), 0);
    float *x = make_inputs(n_in, n_rows);
    void *act = quantize(tc->type, x, n_in, n_rows);
    float *y = malloc(sizeof(float) * N_OUT * n_rows);
    kq_matmul_ref(&w, act, n_rows, y, N_OUT, 0, N_OUT);
    float *wrow = malloc(sizeof(float) * (size_t)n_in);
    double *a = malloc(sizeof(double) * (size_t)n_in);
    double max_rel = 0.0, max_rel_x = 0.0;
    for (int r = 0; r < n_rows; r++) {
        act_row_f64(tc->type, act, n_in, r, a);
        for (int64_t o = 0; o < N_OUT; o++) {
            kq_weight_row_f32(&w, o, wrow);
            double s = 0.0, mag = 0.0, sx = 0.0, magx = 0.0;
            for (int64_t k = 0; k < n_in; k++) {
                s += (double)wrow[k] * a[k];
                mag += fabs((double)wrow[k] * a[k]);
                sx += (double)wrow[k] * x[(size_t)r * (size_t)n_in + (size_t)k];
                magx += fabs((double)wrow[k] * x[(size_t)r * (size_t)n_in + (size_t)k]);
            }
            if (kq_act_type(tc->type) == KQ_Q8_1) { /* Q8_1's s is stored in f16: the format's value */
                const uint8_t *wr = (const uint8_t *)wd + (size_t)o * kq_row_bytes(tc->type, n_in);
                const size_t wbb = kq_type_block_bytes(tc->type);
                const kq_block_q8_1 *ab = kq_act_row(tc->type, act, n_in, r);
                for (int64_t b = 0; b < n_in / 32; b++) {
                    int sq = 0;
                    for (int j = 0; j < 32; j++) sq += ab[b].qs[j];
                    kq_f16 mh; /* m follows d in both Q4_1 and Q5_1 blocks */
                    memcpy(&mh, wr + (size_t)b * wbb + 2, 2);
                    double c = (double)kq_f16_to_f32(mh) *
                               ((double)kq_f16_to_f32(ab[b].s) - (double)kq_f16_to_f32(ab[b].d) * sq);
                    s += c;
                    mag += fabs(c);
                }
            }
            const double got = y[(size_t)r * N_OUT + (size_t)o];
            const double rel = fabs(got - s) / (mag + 1e-30), relx = fabs(got - sx) / (magx + 1e-30);
            if (rel > max_rel) max_rel = rel;
            if (relx > max_rel_x) max_rel_x = relx;
        }
    }
    printf("matmul %-4s ref vs f64 (same quantized input): max rel err %.3g (tol %.0e); "
           "vs unquantized input: %.3g (tol %.0e)\n",
           kq_type_name(tc->type), max_rel, REF_F64_TOL, max_rel_x, QUANT_F64_TOL);
    ck_assert_msg(max_rel <= REF_F64_TOL, "%s: ref vs f64 rel err %g", kq_type_name(tc->type), max_rel);
    ck_assert_msg(max_rel_x <= QUANT_F64_TOL, "%s: vs unquantized rel err %g", kq_type_name(tc->type), max_rel_x);
    free(wrow); free(a); free(x); free(act); free(y);
    kq_weight_free(&w);
    free(wd);
}
END_TEST

/* ---- dequantization of hand-built blocks ----------------------------------- */

static void row_of(int type, const void *blk, int64_t n, float *out) {
    struct kq_weight w;
    ck_assert_int_eq(kq_weight_init(&w, type, blk, n, 1), 0);
    kq_weight_row_f32(&w, 0, out);
    kq_weight_free(&w);
}

#define F16_HALF 0x3800 /* 0.5 */
#define F16_ONE 0x3C00
#define F16_MONE 0xBC00 /* -1 */
#define F16_QUARTER 0x3400

START_TEST(test_dequant_q4_0_q4_1_q8_0) {
    float y[32];
    kq_block_q4_0 b0 = {.d = F16_HALF};
    for (int j = 0; j < 16; j++) b0.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    row_of(KQ_Q4_0, &b0, 32, y);
    for (int j = 0; j < 16; j++) {
        ck_assert_float_eq(y[j], (float)(j - 8) * 0.5f);        /* low nibble: element j */
        ck_assert_float_eq(y[j + 16], (float)(7 - j) * 0.5f);   /* high nibble: element j+16 */
    }
    ck_assert_float_eq(y[0], -4.0f);
    ck_assert_float_eq(y[16], 3.5f);

    kq_block_q4_1 b1 = {.d = F16_HALF, .m = F16_MONE};
    memcpy(b1.qs, b0.qs, 16);
    row_of(KQ_Q4_1, &b1, 32, y);
    for (int j = 0; j < 16; j++) {
        ck_assert_float_eq(y[j], (float)j * 0.5f - 1.0f);
        ck_assert_float_eq(y[j + 16], (float)(15 - j) * 0.5f - 1.0f);
    }

    kq_block_q8_0 b8 = {.d = F16_QUARTER};
    for (int j = 0; j < 32; j++) b8.qs[j] = (int8_t)(j * 9 - 128);
    row_of(KQ_Q8_0, &b8, 32, y);
    for (int j = 0; j < 32; j++) ck_assert_float_eq(y[j], (float)(int8_t)(j * 9 - 128) * 0.25f);
}
END_TEST

/* Pack 8 (scale, min) pairs of 6 bits as GGML's Q4_K/Q5_K quantizer does. */
static void pack_k4_scales(const int sc[8], const int mn[8], uint8_t out[12]) {
    memset(out, 0, 12);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            out[j] = (uint8_t)sc[j];
            out[j + 4] = (uint8_t)mn[j];
        } else {
            out[j + 4] = (uint8_t)((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
            out[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            out[j] |= (uint8_t)((mn[j] >> 4) << 6);
        }
    }
}

START_TEST(test_dequant_q4_k_q5_k) {
    static const int sc[8] = {1, 2, 63, 17, 33, 58, 47, 5}, mn[8] = {5, 0, 9, 63, 25, 40, 1, 62};
    kq_block_q4_K b = {.d = F16_ONE, .dmin = F16_HALF};
    pack_k4_scales(sc, mn, b.scales);
    /* literal bytes for two sub-blocks, worked by hand: sub-block 0 has
     * sc = byte0 & 63, m = byte4 & 63; sub-block 5 takes its low 4 bits from
     * byte 9 and its top 2 from bytes 1 (scale) and 5 (min). */
    ck_assert_int_eq(b.scales[0] & 63, 1);
    ck_assert_int_eq(b.scales[4] & 63, 5);
    ck_assert_int_eq((b.scales[9] & 0xF) | ((b.scales[1] >> 6) << 4), 58);
    ck_assert_int_eq((b.scales[9] >> 4) | ((b.scales[5] >> 6) << 4), 40);
    for (int i = 0; i < 128; i++) b.qs[i] = (uint8_t)((i % 16) | ((15 - i % 16) << 4));
    float y[256];
    row_of(KQ_Q4_K, &b, 256, y);
    for (int e = 0; e < 256; e++) {
        const int j = e / 32, l = e % 32; /* sub-block j: bytes 32*(j/2).., low nibble if j even */
        const int byte = b.qs[32 * (j / 2) + l], q = j % 2 ? byte >> 4 : byte & 0xF;
        ck_assert_float_eq(y[e], 1.0f * (float)sc[j] * (float)q - 0.5f * (float)mn[j]);
    }
    ck_assert_float_eq(y[0], 1.0f * 1 * 0 - 0.5f * 5);        /* qs[0] low = 0 */
    ck_assert_float_eq(y[32], 1.0f * 2 * 15 - 0.0f);          /* qs[0] high = 15 */
    ck_assert_float_eq(y[5 * 32 + 1], 58.0f * 14 - 0.5f * 40); /* qs[65] high = 14 */

    kq_block_q5_K b5 = {.d = F16_HALF, .dmin = F16_ONE};
    pack_k4_scales(sc, mn, b5.scales);
    memcpy(b5.qs, b.qs, 128);
    memset(b5.qh, 0, 32);
    b5.qh[0] = 0x01; /* element 0 (sub-block 0) + 16 */
    b5.qh[1] = 0x02; /* element 33 (sub-block 1, l=1) + 16 */
    b5.qh[3] = 0x80; /* element 227 (sub-block 7, l=3) + 16 */
    row_of(KQ_Q5_K, &b5, 256, y);
    for (int e = 0; e < 256; e++) {
        const int j = e / 32, l = e % 32;
        const int byte = b5.qs[32 * (j / 2) + l];
        int q = j % 2 ? byte >> 4 : byte & 0xF;
        if ((e == 0) || (e == 33) || (e == 227)) q += 16;
        ck_assert_msg(y[e] == 0.5f * (float)sc[j] * (float)q - 1.0f * (float)mn[j], "q5_K element %d", e);
    }
}
END_TEST

START_TEST(test_dequant_q6_k) {
    kq_block_q6_K b;
    memset(&b, 0, sizeof b);
    b.d = F16_HALF;
    b.ql[0] = 0x21;  /* element 0: low 1; element 64: high 2 */
    b.ql[32] = 0x43; /* element 32: low 3; element 96: high 4 */
    b.qh[0] = 0xE4;  /* 2-bit fields 0,1,2,3 for elements 0, 32, 64, 96 */
    b.ql[64] = 0x0F; /* second half: element 128 low 15 */
    b.qh[32] = 0x03; /* element 128 high bits 3 */
    b.scales[0] = 3; b.scales[2] = -2; b.scales[4] = 5; b.scales[6] = 1; b.scales[8] = -128;
    float y[256];
    row_of(KQ_Q6_K, &b, 256, y);
    ck_assert_float_eq(y[0], 0.5f * 3 * (1 - 32));          /* -46.5 */
    ck_assert_float_eq(y[32], 0.5f * -2 * ((3 | 16) - 32));  /* 13 */
    ck_assert_float_eq(y[64], 0.5f * 5 * ((2 | 32) - 32));   /* 5 */
    ck_assert_float_eq(y[96], 0.5f * 1 * ((4 | 48) - 32));   /* 10 */
    ck_assert_float_eq(y[128], 0.5f * -128 * ((15 | 48) - 32)); /* -1984 */
    ck_assert_float_eq(y[1], 0.5f * 3 * -32);               /* all-zero bits: -32 */
}
END_TEST

/* ---- activation quantization ------------------------------------------------ */

START_TEST(test_act_quant_hand) {
    float x[32] = {0};
    x[0] = 127.0f; /* amax 127: d = 1, id = 1 */
    x[1] = 2.5f; x[2] = 3.5f; x[3] = -2.5f; x[4] = -0.4f; x[5] = 126.6f; x[6] = -127.0f;
    x[7] = 0.5f; x[8] = 1.5f;
    static const int8_t want[9] = {127, 2, 4, -2, 0, 127, -127, 0, 2}; /* ties to even */
    void *a8 = quantize(KQ_Q8_0, x, 32, 1);
    const kq_block_q8_0 *b8 = kq_act_row(KQ_Q8_0, a8, 32, 0);
    ck_assert_uint_eq(b8->d, F16_ONE);
    for (int j = 0; j < 9; j++) ck_assert_int_eq(b8->qs[j], want[j]);
    void *a1 = quantize(KQ_Q4_1, x, 32, 1);
    const kq_block_q8_1 *b1 = kq_act_row(KQ_Q4_1, a1, 32, 0);
    ck_assert_int_eq(memcmp(b1->qs, b8->qs, 32), 0);
    int sum = 0;
    for (int j = 0; j < 32; j++) sum += b1->qs[j];
    ck_assert_int_eq(sum, 127 + 2 + 4 - 2 + 0 + 127 - 127 + 0 + 2);
    ck_assert_uint_eq(b1->s, kq_f32_to_f16((float)sum));
    free(a8); free(a1);

    /* Q8_K: the largest magnitude is negative, so iscale = -127/max > 0 */
    float xk[256];
    for (int j = 0; j < 256; j++) xk[j] = 0.01f * (float)(j % 7);
    xk[10] = -4.0f; xk[11] = 1.0f; xk[12] = 2.0f;
    void *ak = quantize(KQ_Q4_K, xk, 256, 1);
    const kq_block_q8_K *bk = kq_act_row(KQ_Q4_K, ak, 256, 0);
    ck_assert_int_eq(bk->qs[10], -127);
    ck_assert_int_eq(bk->qs[11], 32);  /* 31.75 */
    ck_assert_int_eq(bk->qs[12], 64);  /* 63.5 -> 64 (even) */
    ck_assert_float_eq(bk->d, 1.0f / (-127.0f / -4.0f));
    int bs = 0;
    for (int j = 0; j < 16; j++) bs += bk->qs[j];
    ck_assert_int_eq(bk->bsums[0], bs);
    free(ak);
}
END_TEST

/* The SIMD quantizers this CPU has give the scalar one's bytes on x. */
static void expect_quantizers_equal(const float *x, int64_t n_in, int n_rows) {
    const int types[2] = {KQ_Q8_0, KQ_Q4_1};
    for (int t = 0; t < 2; t++) {
        const size_t bytes = kq_act_bytes(types[t], n_in, n_rows);
        uint8_t *a = calloc(1, bytes), *b = calloc(1, bytes);
        kq_act_quantize_q32_scalar(types[t], x, n_in, 0, n_rows, a);
        kq_avx2_act_quantize_q32(types[t], x, n_in, 0, n_rows, b);
        ck_assert_msg(memcmp(a, b, bytes) == 0, "AVX2 quantizer != scalar for %s, %d rows of %lld",
                      kq_type_name(types[t]), n_rows, (long long)n_in);
        if (kq_isa_detected() >= KQ_ISA_AVX512VNNI) {
            memset(b, 0, bytes);
            kq_avx512_act_quantize_q32(types[t], x, n_in, 0, n_rows, b);
            ck_assert_msg(memcmp(a, b, bytes) == 0, "AVX-512 quantizer != scalar for %s, %d rows of %lld",
                          kq_type_name(types[t]), n_rows, (long long)n_in);
        }
        free(a); free(b);
    }
}

START_TEST(test_act_quant_simd_equals_scalar) {
    if (kq_isa_detected() < KQ_ISA_AVX2) {
        printf("activation quantizers: NOT RUN (no SIMD path on this CPU)\n");
        return;
    }
    /* 8, 18 and 48 blocks a row: the AVX-512 quantizer's groups of 16 part
     * full, full plus a remainder, and several full; with NaN, infinities,
     * denormals and a huge value */
    static const int64_t sizes[] = {256, 576, 1536};
    for (int si = 0; si < 3; si++) {
        rng_seed(4000 + (uint64_t)si);
        const int64_t n_in = sizes[si];
        float *x = make_inputs(n_in, 6);
        x[100] = NAN; x[101] = INFINITY; x[300] = -INFINITY; x[400] = 1e-40f; x[401] = -0.0f;
        for (int k = 512; k < 544; k++) x[k] = 1e-42f; /* a block of denormals */
        x[600] = 1e30f;
        expect_quantizers_equal(x, n_in, 6);
        free(x);
    }
    /* 98,304 blocks with scales over 24 octaves: the rounding cases of the
     * division, the clamp and the f16 conversions many times over */
    const int64_t n_in = 1536;
    const int n_rows = 2048;
    float *x = malloc(sizeof(float) * (size_t)n_in * n_rows);
    rng_seed(4100);
    for (int64_t k = 0; k < n_in * n_rows; k++) x[k] = rng_sym() * ldexpf(1.0f, (int)(rng_next() % 24) - 12);
    expect_quantizers_equal(x, n_in, n_rows);
    free(x);
    printf("activation quantizers: avx2%s equal to the scalar one\n",
           kq_isa_detected() >= KQ_ISA_AVX512VNNI ? " and avx512vnni" : " (avx512vnni NOT RUN: this CPU lacks it)");
}
END_TEST

/* Our quantizers against llama.cpp's own (tests/golden/gen_act_quant.py):
 * the same bytes for Q8_0, Q8_1 and Q8_K, ties included. */
static int read_exact(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }

/* Every quantized weight type dequantizes to the floats the gguf Python package
 * gives for the same blocks (tests/golden/gen_dequant.py), bit for bit. */
START_TEST(test_dequant_golden_gguf_py) {
    FILE *f = fopen("tests/golden/data/dequant.bin", "rb");
    ck_assert_msg(f != NULL, "tests/golden/data/dequant.bin missing (run from the repo root)");
    char magic[8];
    uint32_t n_sec = 0;
    ck_assert(read_exact(f, magic, 8) && memcmp(magic, "PPDDQ1\0\0", 8) == 0);
    ck_assert(read_exact(f, &n_sec, 4) && n_sec >= 12);
    for (uint32_t s = 0; s < n_sec; s++) {
        int32_t hdr[2];
        ck_assert(read_exact(f, hdr, sizeof hdr));
        const int type = hdr[0];
        const int64_t n = hdr[1];
        const size_t rb = kq_row_bytes(type, n);
        ck_assert_msg(rb > 0, "type %d: unknown to qtypes", type);
        uint8_t *blocks = malloc(rb);
        float *want = malloc(sizeof(float) * (size_t)n), *got = malloc(sizeof(float) * (size_t)n);
        ck_assert(read_exact(f, blocks, rb) && read_exact(f, want, sizeof(float) * (size_t)n));
        row_of(type, blocks, n, got);
        for (int64_t k = 0; k < n; k++)
            ck_assert_msg(memcmp(&got[k], &want[k], 4) == 0, "%s element %lld: %.9g, gguf-py %.9g",
                          kq_type_name(type), (long long)k, got[k], want[k]);
        printf("dequant %-6s %lld values equal to gguf-py's\n", kq_type_name(type), (long long)n);
        free(blocks); free(want); free(got);
    }
    fclose(f);
}
END_TEST

START_TEST(test_act_quant_golden_llama_cpp) {
    FILE *f = fopen("tests/golden/data/act_quant.bin", "rb");
    ck_assert_msg(f != NULL, "tests/golden/data/act_quant.bin missing (run from the repo root)");
    char magic[8];
    uint32_t n_sec = 0;
    ck_assert(read_exact(f, magic, 8) && memcmp(magic, "PPDAQ1\0\0", 8) == 0);
    ck_assert(read_exact(f, &n_sec, 4) && n_sec >= 3);
    for (uint32_t s = 0; s < n_sec; s++) {
        int32_t hdr[3];
        ck_assert(read_exact(f, hdr, sizeof hdr));
        const int act_type = hdr[0], n_rows = hdr[1];
        const int64_t n_in = hdr[2];
        const int wtype = act_type == KQ_Q8_0 ? KQ_Q8_0 : act_type == KQ_Q8_1 ? KQ_Q4_1 : KQ_Q4_K;
        ck_assert_int_eq(kq_act_type(wtype), act_type);
        const size_t row_bytes = kq_row_bytes(act_type, n_in);
        float *x = malloc(sizeof(float) * (size_t)n_rows * (size_t)n_in);
        uint8_t *want = malloc(row_bytes * (size_t)n_rows);
        ck_assert(read_exact(f, x, sizeof(float) * (size_t)n_rows * (size_t)n_in));
        ck_assert(read_exact(f, want, row_bytes * (size_t)n_rows));
        void *act = quantize(wtype, x, n_in, n_rows);
        void *act_scalar = calloc(1, kq_act_bytes(wtype, n_in, n_rows));
        if (act_type != KQ_Q8_K) kq_act_quantize_q32_scalar(wtype, x, n_in, 0, n_rows, act_scalar);
        for (int r = 0; r < n_rows; r++) {
            ck_assert_msg(memcmp(kq_act_row(wtype, act, n_in, r), want + (size_t)r * row_bytes, row_bytes) == 0,
                          "%s row %d differs from llama.cpp", kq_type_name(act_type), r);
            if (act_type != KQ_Q8_K)
                ck_assert_msg(memcmp(kq_act_row(wtype, act_scalar, n_in, r), want + (size_t)r * row_bytes, row_bytes) == 0,
                              "%s row %d (scalar quantizer) differs from llama.cpp", kq_type_name(act_type), r);
        }
        printf("activation quantization %s: %d rows x %lld equal to llama.cpp's bytes\n",
               kq_type_name(act_type), n_rows, (long long)n_in);
        free(x); free(want); free(act); free(act_scalar);
    }
    fclose(f);
}
END_TEST

START_TEST(test_init_errors) {
    struct kq_weight w;
    uint8_t dummy[64] = {0};
    ck_assert_int_eq(kq_weight_init(&w, KQ_Q8_1, dummy, 32, 1), KQ_E_UNSUPPORTED);
    ck_assert_int_eq(kq_weight_init(&w, KQ_Q8_K, dummy, 256, 1), KQ_E_UNSUPPORTED);
    ck_assert_int_eq(kq_weight_init(&w, KQ_Q4_1, dummy, 33, 1), KQ_E_INVALID);
    ck_assert_int_eq(kq_weight_init(&w, KQ_Q4_K, dummy, 32, 1), KQ_E_INVALID);
    kq_weight_free(NULL);
    ck_assert_int_eq(kq_weight_init(&w, KQ_Q4_1, dummy, 32, 0), 0);
    kq_weight_free(&w);
    kq_weight_free(&w);
}
END_TEST

/* Which paths the tests above ran here and which this CPU lacks: a path not
 * run is reported, never counted as passed. */
START_TEST(test_paths_reported) {
    ck_assert_str_eq(kq_matmul_path(), kq_isa_name(kq_isa()));
    for (int isa = KQ_ISA_SCALAR; isa < KQ_ISA_COUNT; isa++) {
        ck_assert_ptr_nonnull(kq_isa_name(isa));
        ck_assert_int_eq(kq_isa_from_name(kq_isa_name(isa)), isa);
        printf("matmul path %-10s %s\n", kq_isa_name(isa),
               isa == KQ_ISA_SCALAR ? "the reference itself" : isa <= kq_isa_detected() ? "run, equal to the reference" : "NOT RUN: this CPU lacks it");
    }
    ck_assert_int_eq(kq_isa_set(KQ_ISA_COUNT), -1);
    ck_assert_int_eq(kq_isa_from_name("avx9"), -1);
}
END_TEST

static Suite *matmul_suite(void) {
    Suite *s = suite_create("matmul");
    TCase *tc = tcase_create("kernels");
    test_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_fast_equals_ref, 0, N_CASES);
    tcase_add_loop_test(tc, test_fast_splits, 0, N_SPLIT_CASES);
    tcase_add_loop_test(tc, test_row_independence, 0, N_CASES);
    tcase_add_loop_test(tc, test_ref_vs_f64, 0, N_CASES);
    tcase_add_test(tc, test_dequant_q4_0_q4_1_q8_0);
    tcase_add_test(tc, test_dequant_q4_k_q5_k);
    tcase_add_test(tc, test_dequant_q6_k);
    tcase_add_test(tc, test_act_quant_hand);
    tcase_add_test(tc, test_act_quant_simd_equals_scalar);
    tcase_add_test(tc, test_dequant_golden_gguf_py);
    tcase_add_test(tc, test_act_quant_golden_llama_cpp);
    tcase_add_test(tc, test_init_errors);
    tcase_add_test(tc, test_paths_reported);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    initial_isa = kq_isa();
    SRunner *sr = srunner_create(matmul_suite());
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

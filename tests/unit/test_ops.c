/* test_ops.c — the non-matmul CPU ops: SIMD versions equal the plain ones bit
 * for bit, and each op computes what it should on hand-checked inputs. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/common_test.h"

#include "kernels/cpu/cpu_isa.h"
#include "kernels/cpu/ops.h"

static float frand(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return ((float)(*s >> 8) / 16777216.0f) * 2.0f - 1.0f;
}

START_TEST(test_dot_axpy_match_reference) {
    uint32_t seed = 7;
    float a[203], b[203], o1[203], o2[203];
    for (int n = 0; n <= 203; n++) {
        for (int i = 0; i < n; i++) { a[i] = frand(&seed) * 3; b[i] = frand(&seed) * 5; o1[i] = o2[i] = frand(&seed); }
        float d1 = kq_dot_f32(a, b, n), d2 = kq_dot_f32_ref(a, b, n);
        ck_assert_int_eq(memcmp(&d1, &d2, sizeof d1), 0);
        float w = frand(&seed);
        kq_axpy_f32(o1, w, a, n);
        kq_axpy_f32_ref(o2, w, a, n);
        ck_assert_int_eq(memcmp(o1, o2, sizeof(float) * (size_t)n), 0);
    }
}
END_TEST

/* The exponential: within 2e-7 relative of libm's expf over its range, the
 * documented ends, and softmax / SwiGLU / RMSNorm's AVX2 paths equal the
 * plain ones bit for bit for every length (the vector body and the scalar
 * tail). */
START_TEST(test_exp_softmax_swiglu_match_reference) {
    double max_rel = 0;
    for (float x = -87.0f; x < 88.3f; x += 0.00731f) {
        const double r = expf(x), rel = fabs((double)kq_expf(x) - r) / r;
        if (rel > max_rel) max_rel = rel;
    }
    printf("kq_expf: max relative error %.3e vs expf on [-87, 88.3]\n", max_rel);
    ck_assert(max_rel < 2e-7);
    ck_assert(kq_expf(0.0f) == 1.0f);
    ck_assert(kq_expf(-INFINITY) == 0.0f);
    ck_assert(kq_expf(-90.0f) == 0.0f);
    ck_assert(kq_expf(NAN) == 0.0f);
    ck_assert(kq_expf(1000.0f) == kq_expf(88.3762626647949f));
    uint32_t seed = 5;
    static float x[300], y[300], a[300], b[300];
    for (int isa = KQ_ISA_AVX2; isa <= KQ_ISA_AVX512VNNI; isa++) {   /* amx runs the avx512vnni code here */
        if (kq_isa_set(isa) != 0) {
            printf("softmax, SwiGLU: %s path NOT RUN (this CPU lacks it)\n", kq_isa_name(isa));
            continue;
        }
        printf("softmax, SwiGLU: %s path == plain bit for bit\n", kq_isa_name(isa));
        for (int n = 0; n <= 300; n++) {
            for (int i = 0; i < n; i++) { x[i] = frand(&seed) * 40; y[i] = frand(&seed) * 3; }
            if (n > 9) x[9] = -INFINITY;
            memcpy(a, x, sizeof(float) * (size_t)n);
            memcpy(b, x, sizeof(float) * (size_t)n);
            kq_softmax(a, n);
            kq_softmax_ref(b, n);
            ck_assert_msg(memcmp(a, b, sizeof(float) * (size_t)n) == 0, "softmax n=%d", n);
            kq_swiglu(x, y, n, a);
            kq_swiglu_ref(x, y, n, b);
            ck_assert_msg(memcmp(a, b, sizeof(float) * (size_t)n) == 0, "swiglu n=%d", n);
        }
    }
    kq_isa_set(kq_isa_detected());
    /* rmsnorm: AVX2 == plain, for every length, in place too */
    static float w[300];
    for (int i = 0; i < 300; i++) w[i] = frand(&seed) * 2;
    for (int n = 1; n <= 300; n++) {
        kq_rmsnorm_row(x, w, n, 1e-5f, a);
        kq_rmsnorm_row_ref(x, w, n, 1e-5f, b);
        ck_assert_msg(memcmp(a, b, sizeof(float) * (size_t)n) == 0, "rmsnorm n=%d", n);
        memcpy(a, x, sizeof(float) * (size_t)n);
        kq_rmsnorm_row(a, w, n, 1e-5f, a);
        ck_assert_msg(memcmp(a, b, sizeof(float) * (size_t)n) == 0, "rmsnorm in place n=%d", n);
    }
    /* all -inf: all zeros */
    float m[3] = {-INFINITY, -INFINITY, -INFINITY};
    kq_softmax(m, 3);
    ck_assert(m[0] == 0.0f && m[1] == 0.0f && m[2] == 0.0f);
}
END_TEST

START_TEST(test_dot_value) {
    float a[10], b[10];
    for (int i = 0; i < 10; i++) { a[i] = (float)(i + 1); b[i] = 0.5f; }
    ck_assert_float_eq(kq_dot_f32(a, b, 10), 27.5f);   /* (1+...+10)/2, exact in float */
}
END_TEST

START_TEST(test_rmsnorm_softmax_swiglu) {
    float x[4] = {1, -2, 3, -4}, w[4] = {1, 1, 2, 0.5f}, out[4];
    kq_rmsnorm_row(x, w, 4, 0.0f, out);
    const float inv = 1.0f / sqrtf(7.5f);  /* mean of squares = 30/4 */
    ck_assert_float_eq_tol(out[0], 1 * inv, 1e-6);
    ck_assert_float_eq_tol(out[2], 3 * inv * 2, 1e-6);
    ck_assert_float_eq_tol(out[3], -4 * inv * 0.5f, 1e-6);
    float s[3] = {0.0f, logf(3.0f), -INFINITY};
    kq_softmax(s, 3);
    ck_assert_float_eq_tol(s[0], 0.25f, 1e-7);
    ck_assert_float_eq_tol(s[1], 0.75f, 1e-7);
    ck_assert_float_eq(s[2], 0.0f);
    float g[2] = {0.0f, 2.0f}, u[2] = {5.0f, 3.0f}, o[2];
    kq_swiglu(g, u, 2, o);
    ck_assert_float_eq(o[0], 0.0f);
    ck_assert_float_eq_tol(o[1], 2.0f / (1.0f + expf(-2.0f)) * 3.0f, 1e-6);
}
END_TEST

/* RoPE at position 0 is the identity; at position p it rotates pair (0,1) of
 * every head by p radians (theta_0 = p); neox pairs dimension i with i + n/2. */
START_TEST(test_rope) {
    float x[8] = {1, 0, 0, 1, 1, 0, 0, 1};
    float y[8];
    memcpy(y, x, sizeof x);
    const struct kq_rope plain4 = kq_rope_plain(4, 0, 10000.0f), neox4 = kq_rope_plain(4, 1, 10000.0f);
    kq_rope_row(y, 2, 4, 0, &plain4);
    ck_assert_int_eq(memcmp(x, y, sizeof x), 0);
    kq_rope_row(y, 2, 4, 1, &plain4);
    ck_assert_float_eq_tol(y[0], cosf(1.0f), 1e-6);
    ck_assert_float_eq_tol(y[1], sinf(1.0f), 1e-6);
    ck_assert_float_eq_tol(y[4], cosf(1.0f), 1e-6);
    float z[4] = {1, 0, 0, 0};
    kq_rope_row(z, 1, 4, 1, &neox4);
    ck_assert_float_eq_tol(z[0], cosf(1.0f), 1e-6);
    ck_assert_float_eq_tol(z[2], sinf(1.0f), 1e-6);
    /* angles once, applied to several head groups: the same as kq_rope_row */
    uint32_t seed = 3;
    float h1[9 * 64], h2[9 * 64], cs[64];
    for (int i = 0; i < 9 * 64; i++) h1[i] = h2[i] = frand(&seed);
    for (int neox = 0; neox < 2; neox++) {
        const struct kq_rope r = kq_rope_plain(64, neox, 100000.0f);
        kq_rope_row(h1, 9, 64, 1234, &r);
        kq_rope_angles(1234, &r, cs);
        kq_rope_apply(h2, 9, 64, 64, cs, neox);
        ck_assert_int_eq(memcmp(h1, h2, sizeof h1), 0);
    }
}
END_TEST

/* Scaled RoPE: linear scaling turns every pair by freq_scale times its angle;
 * frequency factors divide a pair's angle; YaRN leaves the fastest pairs (below
 * its ramp) at their unscaled angle, moves the slowest (above it) to the
 * interpolated one, and scales cos and sin by 1 + 0.1 ln(factor).  Turning by
 * -pos undoes a rotation at pos up to that scale (the training backward pass
 * relies on it). */
START_TEST(test_rope_scaled) {
    const int n_rot = 64, pos = 300;
    const float base = 10000.0f, theta_scale = powf(base, -2.0f / (float)n_rot);
    float cs[64], cs_plain[64];
    struct kq_rope r = kq_rope_plain(n_rot, 1, base);
    kq_rope_angles(pos, &r, cs_plain);
    r.freq_scale = 0.25f;
    kq_rope_angles(pos, &r, cs);
    ck_assert_float_eq_tol(cs[0], cosf(0.25f * pos), 1e-6);
    ck_assert_float_eq_tol(cs[1], sinf(0.25f * pos), 1e-6);
    float ff[32];
    for (int i = 0; i < 32; i++) ff[i] = 1.0f + (float)i;
    r = kq_rope_plain(n_rot, 1, base);
    r.freq_factors = ff;
    kq_rope_angles(pos, &r, cs);
    float theta = (float)pos;
    for (int i = 0; i < 32; i++, theta *= theta_scale) {
        ck_assert_float_eq_tol(cs[2 * i], cosf(theta / ff[i]), 1e-6);
        ck_assert_float_eq_tol(cs[2 * i + 1], sinf(theta / ff[i]), 1e-6);
    }
    r = kq_rope_plain(n_rot, 1, base);
    kq_rope_set_yarn(&r, 4.0f, 4096, 32.0f, 1.0f);   /* ramp over pairs 10..23 */
    ck_assert(r.corr_dims[0] > 0.0f && r.corr_dims[1] < 31.0f && r.corr_dims[0] < r.corr_dims[1]);
    kq_rope_angles(pos, &r, cs);
    const float mscale = 1.0f + 0.1f * logf(4.0f);
    ck_assert_float_eq_tol(cs[0], cosf((float)pos) * mscale, 1e-5);   /* pair 0: below the ramp */
    theta = (float)pos;
    for (int i = 0; i < 31; i++) theta *= theta_scale;
    ck_assert_float_eq_tol(cs[62], cosf(0.25f * theta) * mscale, 1e-5);   /* pair 31: above it */
    ck_assert_float_eq_tol(cs[63], sinf(0.25f * theta) * mscale, 1e-5);
    /* -pos is the transpose: rotating there and back scales by mscale^2 only */
    uint32_t seed = 9;
    float x[2 * 64], y[2 * 64];
    for (int i = 0; i < 128; i++) x[i] = y[i] = frand(&seed);
    r.freq_factors = ff;
    kq_rope_row(y, 2, 64, pos, &r);
    kq_rope_row(y, 2, 64, -pos, &r);
    for (int i = 0; i < 128; i++) ck_assert_float_eq_tol(y[i], x[i] * mscale * mscale, 1e-5);
    (void)cs_plain;
}
END_TEST

int main(void) {
    kq_isa_set(kq_isa_detected());   /* the best path this CPU has, whatever PPD_CPU_ISA says */
    printf("ops: %s\n", kq_isa() >= KQ_ISA_AVX2 ? "the AVX2 code against the plain one"
                                                : "AVX2 NOT RUN (this CPU lacks it): the plain code against itself");
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("ops");
    tcase_add_test(tc, test_dot_axpy_match_reference);
    tcase_add_test(tc, test_dot_value);
    tcase_add_test(tc, test_exp_softmax_swiglu_match_reference);
    tcase_add_test(tc, test_rmsnorm_softmax_swiglu);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_rope_scaled);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}

/* test_ops.c — the non-matmul CPU ops: SIMD versions equal the plain ones bit
 * for bit, and each op computes what it should on hand-checked inputs. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/common_test.h"

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

START_TEST(test_dot8_matches_dot) {
    uint32_t seed = 11;
    static float a[8][136], b[136];
    for (int n = 0; n <= 136; n++) {
        for (int i = 0; i < n; i++) {
            b[i] = frand(&seed) * 4;
            for (int d = 0; d < 8; d++) a[d][i] = frand(&seed) * (float)(d + 1);
        }
        const float *ap[8] = {a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]};
        float out[8];
        kq_dot8_f32(ap, b, n, out);
        for (int d = 0; d < 8; d++) {
            float want = kq_dot_f32_ref(a[d], b, n);
            ck_assert_msg(memcmp(&out[d], &want, sizeof want) == 0, "n=%d d=%d: %a vs %a", n, d, out[d], want);
        }
    }
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
    kq_rope_row(y, 2, 4, 4, 0, 10000.0f, 0);
    ck_assert_int_eq(memcmp(x, y, sizeof x), 0);
    kq_rope_row(y, 2, 4, 4, 1, 10000.0f, 0);
    ck_assert_float_eq_tol(y[0], cosf(1.0f), 1e-6);
    ck_assert_float_eq_tol(y[1], sinf(1.0f), 1e-6);
    ck_assert_float_eq_tol(y[4], cosf(1.0f), 1e-6);
    float z[4] = {1, 0, 0, 0};
    kq_rope_row(z, 1, 4, 4, 1, 10000.0f, 1);
    ck_assert_float_eq_tol(z[0], cosf(1.0f), 1e-6);
    ck_assert_float_eq_tol(z[2], sinf(1.0f), 1e-6);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("ops");
    tcase_add_test(tc, test_dot_axpy_match_reference);
    tcase_add_test(tc, test_dot_value);
    tcase_add_test(tc, test_dot8_matches_dot);
    tcase_add_test(tc, test_rmsnorm_softmax_swiglu);
    tcase_add_test(tc, test_rope);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}

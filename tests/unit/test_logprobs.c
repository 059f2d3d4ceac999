/* test_logprobs.c — log-softmax of a logits row and its top alternatives
 * (engine/decode/logprobs.c): hand-computed cases, a brute-force reference in long
 * double on a full-size random row, ties, NaN, infinities and the floor.
 * Where the tokens' logprobs come from in a decode (plain and PPD give the
 * same bits) is test_sched.c's. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/common_test.h"

#include "engine/decode/logprobs.h"

/* probabilities 0.5, 0.3, 0.15, 0.05 at ids 3, 0, 4, 1; id 2 masked */
START_TEST(test_hand_computed) {
    float l[5] = {logf(0.3f) + 7, logf(0.05f) + 7, -INFINITY, logf(0.5f) + 7, logf(0.15f) + 7};
    struct eng_logprob lp;
    eng_logprobs_compute(l, 5, 4, 5, &lp);
    ck_assert_int_eq(lp.id, 4);
    ck_assert_double_eq_tol(lp.logprob, log(0.15), 2e-6);
    ck_assert_int_eq(lp.n_top, 5);
    const int32_t want_ids[5] = {3, 0, 4, 1, 2};
    const double want_p[4] = {0.5, 0.3, 0.15, 0.05};
    for (int i = 0; i < 5; i++) ck_assert_int_eq(lp.top_id[i], want_ids[i]);
    for (int i = 0; i < 4; i++) ck_assert_double_eq_tol(lp.top_logprob[i], log(want_p[i]), 2e-6);
    ck_assert_float_eq(lp.top_logprob[4], ENG_LOGPROBS_FLOOR);   /* probability 0: the floor, not -inf */
    ck_assert_float_eq(lp.top_logprob[2], lp.logprob);            /* the same formula, the same bits */
    /* the masked token itself */
    eng_logprobs_compute(l, 5, 2, 0, &lp);
    ck_assert_float_eq(lp.logprob, ENG_LOGPROBS_FLOOR);
    ck_assert_int_eq(lp.n_top, 0);
    /* more alternatives than tokens, or than the bound: clipped */
    eng_logprobs_compute(l, 5, 3, 100, &lp);
    ck_assert_int_eq(lp.n_top, 5);
}
END_TEST

/* Equal logits rank the lower id first; NaN never enters the list and
 * counts as probability 0; a row without a finite logit gives the floor. */
START_TEST(test_ties_nan_and_empty_rows) {
    float l[6] = {1, 2, NAN, 2, 1, 2};
    struct eng_logprob lp;
    eng_logprobs_compute(l, 6, 5, 6, &lp);
    ck_assert_int_eq(lp.n_top, 5);
    const int32_t want[5] = {1, 3, 5, 0, 4};
    for (int i = 0; i < 5; i++) ck_assert_int_eq(lp.top_id[i], want[i]);
    double lse = 2 + log(3 + 2 * exp(-1.0));
    ck_assert_double_eq_tol(lp.logprob, 2 - lse, 1e-6);
    ck_assert_float_eq(lp.top_logprob[0], lp.top_logprob[2]);
    eng_logprobs_compute(l, 6, 2, 0, &lp);
    ck_assert_float_eq(lp.logprob, ENG_LOGPROBS_FLOOR);
    float none[3] = {-INFINITY, -INFINITY, NAN};
    eng_logprobs_compute(none, 3, 0, 2, &lp);
    ck_assert_float_eq(lp.logprob, ENG_LOGPROBS_FLOOR);
    ck_assert_int_eq(lp.n_top, 2);
    for (int i = 0; i < 2; i++) ck_assert_float_eq(lp.top_logprob[i], ENG_LOGPROBS_FLOOR);
    /* a token far below the rest: clamped to the floor */
    float far[2] = {0, -20000};
    eng_logprobs_compute(far, 2, 1, 2, &lp);
    ck_assert_float_eq(lp.logprob, ENG_LOGPROBS_FLOOR);
    ck_assert_float_eq(lp.top_logprob[0], 0.0f);
}
END_TEST

static int cmp_desc(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* A full-size row (49152 logits, spread like a model's) against long double
 * brute force: every requested token, and the top 20 equal a full sort. */
START_TEST(test_against_brute_force) {
    enum { V = 49152 };
    float *l = malloc(sizeof *l * V), *sorted = malloc(sizeof *sorted * V);
    unsigned long long x = 88172645463325252ull;
    for (int v = 0; v < V; v++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        l[v] = (float)((double)(x >> 11) * 0x1.0p-53 * 30.0 - 20.0);
    }
    l[777] = 14.5f;   /* a clear favourite */
    long double mx = -INFINITY, sum = 0;
    for (int v = 0; v < V; v++) if (l[v] > mx) mx = l[v];
    for (int v = 0; v < V; v++) sum += expl((long double)l[v] - mx);
    const long double lse = mx + logl(sum);
    double max_diff = 0;
    struct eng_logprob lp;
    for (int id = 0; id < V; id += 997) {
        eng_logprobs_compute(l, V, id, ENG_LOGPROBS_MAX_TOP, &lp);
        double d = fabs((double)lp.logprob - (double)((long double)l[id] - lse));
        if (d > max_diff) max_diff = d;
    }
    eng_logprobs_compute(l, V, 777, ENG_LOGPROBS_MAX_TOP, &lp);
    memcpy(sorted, l, sizeof *l * V);
    qsort(sorted, V, sizeof *sorted, cmp_desc);
    ck_assert_int_eq(lp.n_top, ENG_LOGPROBS_MAX_TOP);
    ck_assert_int_eq(lp.top_id[0], 777);
    for (int i = 0; i < ENG_LOGPROBS_MAX_TOP; i++) {
        ck_assert_float_eq(l[lp.top_id[i]], sorted[i]);
        double d = fabs((double)lp.top_logprob[i] - (double)((long double)sorted[i] - lse));
        if (d > max_diff) max_diff = d;
        if (i > 0) ck_assert(lp.top_logprob[i] <= lp.top_logprob[i - 1]);
    }
    printf("logprobs: max |difference| from long double %.3g\n", max_diff);
    ck_assert(max_diff < 1e-5);
    free(l);
    free(sorted);
}
END_TEST

int main(void) {
    Suite *s = suite_create("logprobs");
    TCase *tc = tcase_create("logprobs");
    tcase_add_test(tc, test_hand_computed);
    tcase_add_test(tc, test_ties_nan_and_empty_rows);
    tcase_add_test(tc, test_against_brute_force);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}

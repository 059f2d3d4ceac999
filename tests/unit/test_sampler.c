/* test_sampler.c — greedy, the sampling distribution (hand-computed cases and
 * a brute-force reference on a full-size vocabulary), the seeded RNG and
 * the one-draw-per-token contract. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/decode/sampler.h"
#include "tests/unit/common_test.h"

static struct eng_sampler_params params(float temperature, int top_k, float top_p, float min_p)
{
    struct eng_sampler_params p;
    eng_sampler_params_default(&p);
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    return p;
}

static struct eng_sampler_scratch *scratch(int n_vocab)
{
    struct eng_sampler_scratch *s = NULL;
    ck_assert_int_eq(eng_sampler_scratch_init(&s, n_vocab), 0);
    return s;
}

/* probs [0.5, 0.3, 0.15, 0.05] at ids 3, 0, 4, 1; id 2 masked with -inf */
static void four_token_logits(float l[5])
{
    l[3] = logf(0.5f);
    l[0] = logf(0.3f);
    l[4] = logf(0.15f);
    l[1] = logf(0.05f);
    l[2] = -INFINITY;
}

static void expect_dist(const struct eng_sampler_scratch *s, int n, const int32_t *ids,
                        const double *probs, double tol)
{
    ck_assert_int_eq(s->n_cand, n);
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(s->cand_id[i], ids[i]);
        ck_assert_msg(fabs(s->cand_p[i] - probs[i]) <= tol, "cand %d (id %d): p=%.9f want %.9f", i,
                      ids[i], s->cand_p[i], probs[i]);
    }
}

START_TEST(test_greedy_argmax_ties)
{
    const float l[] = { 1.0f, 3.0f, -2.0f, 3.0f, 2.0f };
    ck_assert_int_eq(eng_sampler_argmax(l, 5), 1);
    const float nan_first[] = { NAN, 0.5f, 0.5f };
    ck_assert_int_eq(eng_sampler_argmax(nan_first, 3), 1);
    const float masked[] = { -INFINITY, -INFINITY };
    ck_assert_int_eq(eng_sampler_argmax(masked, 2), ENG_E_INVALID);

    struct eng_sampler_scratch *s = scratch(5);
    struct eng_sampler_params p = params(0.0f, 0, 1.0f, 0.0f);
    struct eng_rng rng, before;
    eng_rng_seed(&rng, 7);
    before = rng;
    ck_assert_int_eq(eng_sample(&p, &rng, l, 5, s), 1);
    ck_assert_msg(!memcmp(&rng, &before, sizeof rng), "greedy must not consume a draw");
    /* the greedy distribution is one candidate with probability 1 */
    ck_assert_int_eq(eng_sampler_dist(&p, l, 5, s), 1);
    ck_assert_int_eq(s->cand_id[0], 1);
    ck_assert(s->cand_p[0] == 1.0);
    eng_sampler_scratch_free(s);
}
END_TEST

START_TEST(test_top_k1_is_greedy)
{
    enum { N = 1000 };
    float *l = malloc(N * sizeof *l);
    struct eng_sampler_scratch *s = scratch(N);
    struct eng_rng rng, seq;
    eng_rng_seed(&rng, 1);
    eng_rng_seed(&seq, 99);
    struct eng_sampler_params p = params(0.8f, 1, 1.0f, 0.0f);
    for (int trial = 0; trial < 200; trial++) {
        /* coarse values so that ties for the maximum are common */
        for (int i = 0; i < N; i++)
            l[i] = (float)(eng_rng_next(&rng) % 64) * 0.25f;
        struct eng_rng before = seq;
        ck_assert_int_eq(eng_sample(&p, &seq, l, N, s), eng_sampler_argmax(l, N));
        eng_rng_next(&before);
        ck_assert_msg(!memcmp(&seq, &before, sizeof seq), "a sampled token takes exactly one draw");
    }
    free(l);
    eng_sampler_scratch_free(s);
}
END_TEST

START_TEST(test_seed_determinism)
{
    enum { N = 64, T = 2000 };
    float l[N];
    for (int i = 0; i < N; i++)
        l[i] = sinf((float)i) * 2.0f;
    struct eng_sampler_scratch *s = scratch(N);
    struct eng_sampler_params p = params(1.0f, 40, 0.95f, 0.01f);
    int32_t a[T], b[T], c[T];
    struct eng_rng r1, r2, r3;
    eng_rng_seed(&r1, 42);
    eng_rng_seed(&r2, 42);
    eng_rng_seed(&r3, 43);
    for (int t = 0; t < T; t++) {
        a[t] = eng_sample(&p, &r1, l, N, s);
        b[t] = eng_sample(&p, &r2, l, N, s);
        c[t] = eng_sample(&p, &r3, l, N, s);
        ck_assert_int_ge(a[t], 0);
    }
    ck_assert_msg(!memcmp(a, b, sizeof a), "same seed, same sequence");
    int differ = 0;
    for (int t = 0; t < T; t++)
        differ += a[t] != c[t];
    printf("sampler: seeds 42 and 43 differ at %d of %d tokens\n", differ, T);
    ck_assert_int_gt(differ, T / 4);

    /* the stream itself: first outputs of xoshiro256** seeded by splitmix64(42),
     * from an independent Python implementation of both published algorithms */
    struct eng_rng x;
    eng_rng_seed(&x, 42);
    ck_assert(eng_rng_next(&x) == 0x15780b2e0c2ec716ull);
    ck_assert(eng_rng_next(&x) == 0x6104d9866d113a7eull);
    ck_assert(eng_rng_next(&x) == 0xae17533239e499a1ull);
    double sum = 0.0, lo = 1.0, hi = 0.0;
    for (int i = 0; i < 1000000; i++) {
        double u = eng_rng_uniform(&x);
        ck_assert(u >= 0.0 && u < 1.0);
        sum += u;
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
    }
    printf("sampler: 1e6 uniforms: mean %.5f min %.2e max 1-%.2e\n", sum / 1e6, lo, 1.0 - hi);
    ck_assert(fabs(sum / 1e6 - 0.5) < 0.002);
    eng_sampler_scratch_free(s);
}
END_TEST

START_TEST(test_top_p_hand)
{
    float l[5];
    four_token_logits(l);
    struct eng_sampler_scratch *s = scratch(5);
    /* 0.5 < 0.75 <= 0.5 + 0.3: ids 3 and 0, renormalized 0.625 / 0.375 */
    struct eng_sampler_params p = params(1.0f, 0, 0.75f, 0.0f);
    ck_assert_int_eq(eng_sampler_dist(&p, l, 5, s), 2);
    expect_dist(s, 2, (const int32_t[]){ 0, 3 }, (const double[]){ 0.375, 0.625 }, 1e-6);
    /* 0.8 < 0.9 <= 0.95: three tokens */
    p.top_p = 0.9f;
    ck_assert_int_eq(eng_sampler_dist(&p, l, 5, s), 3);
    expect_dist(s, 3, (const int32_t[]){ 0, 3, 4 },
                (const double[]){ 0.3 / 0.95, 0.5 / 0.95, 0.15 / 0.95 }, 1e-6);
    /* 0.4: the top token alone; 0: one token as well */
    p.top_p = 0.4f;
    ck_assert_int_eq(eng_sampler_dist(&p, l, 5, s), 1);
    ck_assert_int_eq(s->cand_id[0], 3);
    p.top_p = 0.0f;
    ck_assert_int_eq(eng_sampler_dist(&p, l, 5, s), 1);
    ck_assert_int_eq(s->cand_id[0], 3);
    /* 1: off, the masked id stays out */
    p.top_p = 1.0f;
    ck_assert_int_eq(eng_sampler_dist(&p, l, 5, s), 4);
    expect_dist(s, 4, (const int32_t[]){ 0, 1, 3, 4 }, (const double[]){ 0.3, 0.05, 0.5, 0.15 }, 1e-6);
    ck_assert(fabs(eng_sampler_prob(s, 4) - 0.15) < 1e-6);
    ck_assert(eng_sampler_prob(s, 2) == 0.0);
    /* top-k 2 then top-p 0.9: top-p sees only the two survivors (0.625 < 0.9) */
    p.top_k = 2;
    p.top_p = 0.9f;
    ck_assert_int_eq(eng_sampler_dist(&p, l, 5, s), 2);
    expect_dist(s, 2, (const int32_t[]){ 0, 3 }, (const double[]){ 0.375, 0.625 }, 1e-6);
    eng_sampler_scratch_free(s);
}
END_TEST

START_TEST(test_min_p_hand)
{
    float l[5];
    four_token_logits(l);
    struct eng_sampler_scratch *s = scratch(5);
    /* threshold 0.2 * 0.5 = 0.1: drops 0.05 */
    struct eng_sampler_params p = params(1.0f, 0, 1.0f, 0.2f);
    ck_assert_int_eq(eng_sampler_dist(&p, l, 5, s), 3);
    expect_dist(s, 3, (const int32_t[]){ 0, 3, 4 },
                (const double[]){ 0.3 / 0.95, 0.5 / 0.95, 0.15 / 0.95 }, 1e-6);
    /* threshold 0.35 * 0.5 = 0.175: keeps 0.5 and 0.3 */
    p.min_p = 0.35f;
    ck_assert_int_eq(eng_sampler_dist(&p, l, 5, s), 2);
    expect_dist(s, 2, (const int32_t[]){ 0, 3 }, (const double[]){ 0.375, 0.625 }, 1e-6);
    /* 1: only the max */
    p.min_p = 1.0f;
    ck_assert_int_eq(eng_sampler_dist(&p, l, 5, s), 1);
    ck_assert_int_eq(s->cand_id[0], 3);
    eng_sampler_scratch_free(s);
}
END_TEST

START_TEST(test_temperature_hand)
{
    const float l[3] = { 1.0f, 2.0f, 3.0f };
    struct eng_sampler_scratch *s = scratch(3);
    /* T = 2: softmax(0.5, 1, 1.5) = (e^.5, e^1, e^1.5) / 8.8486921695 */
    struct eng_sampler_params p = params(2.0f, 0, 1.0f, 0.0f);
    ck_assert_int_eq(eng_sampler_dist(&p, l, 3, s), 3);
    expect_dist(s, 3, (const int32_t[]){ 0, 1, 2 },
                (const double[]){ 1.6487212707 / 8.8486921695, 2.7182818285 / 8.8486921695,
                                  4.4816890703 / 8.8486921695 }, 1e-9);
    /* T = 0.5: softmax(2, 4, 6) = (e^-4, e^-2, 1) / 1.1536509221 */
    p.temperature = 0.5f;
    ck_assert_int_eq(eng_sampler_dist(&p, l, 3, s), 3);
    expect_dist(s, 3, (const int32_t[]){ 0, 1, 2 },
                (const double[]){ 0.0183156389 / 1.1536509221, 0.1353352832 / 1.1536509221,
                                  1.0 / 1.1536509221 }, 1e-9);

    /* llama.cpp's order: top-p on the raw distribution, temperature after.
     * At T = 10 the nucleus for 0.75 is still {0.5, 0.3}, then flattened to
     * 0.5^0.1 : 0.3^0.1. */
    float f[5];
    four_token_logits(f);
    struct eng_sampler_scratch *s5 = scratch(5);
    p = params(10.0f, 0, 0.75f, 0.0f);
    ck_assert_int_eq(eng_sampler_dist(&p, f, 5, s5), 2);
    double a = pow(0.3, 0.1), b = pow(0.5, 0.1);
    expect_dist(s5, 2, (const int32_t[]){ 0, 3 }, (const double[]){ a / (a + b), b / (a + b) }, 1e-6);
    eng_sampler_scratch_free(s5);
    eng_sampler_scratch_free(s);
}
END_TEST

START_TEST(test_empirical_frequencies)
{
    enum { N = 200000 };
    const double want[5] = { 0.1, 0.2, 0.3, 0.25, 0.15 };
    float l[5];
    for (int i = 0; i < 5; i++)
        l[i] = logf((float)want[i]) + 3.0f;   /* an offset the softmax must cancel */
    struct eng_sampler_scratch *s = scratch(5);
    struct eng_sampler_params p = params(1.0f, 0, 1.0f, 0.0f);
    struct eng_rng rng;
    eng_rng_seed(&rng, 12345);
    int count[5] = { 0 };
    for (int t = 0; t < N; t++) {
        int32_t id = eng_sample(&p, &rng, l, 5, s);
        ck_assert(id >= 0 && id < 5);
        count[id]++;
    }
    double max_z = 0.0;
    for (int i = 0; i < 5; i++) {
        double sigma = sqrt(N * want[i] * (1.0 - want[i]));
        double z = fabs(count[i] - N * want[i]) / sigma;
        max_z = z > max_z ? z : max_z;
        ck_assert_msg(z < 3.0, "token %d: %d draws, expected %.0f (z = %.2f)", i, count[i], N * want[i], z);
    }
    printf("sampler: 200k draws from a 5-token distribution, max |z| = %.2f (limit 3)\n", max_z);
    eng_sampler_scratch_free(s);
}
END_TEST

START_TEST(test_draw_boundaries)
{
    float l[5];
    four_token_logits(l);
    struct eng_sampler_scratch *s = scratch(5);
    struct eng_sampler_params p = params(1.0f, 0, 1.0f, 0.0f);
    eng_sampler_dist(&p, l, 5, s);
    /* cumulative in id order: 0:0.3 1:0.35 3:0.85 4:1.0 */
    ck_assert_int_eq(eng_sampler_draw(s, 0.0), 0);
    ck_assert_int_eq(eng_sampler_draw(s, 0.29), 0);
    ck_assert_int_eq(eng_sampler_draw(s, 0.31), 1);
    ck_assert_int_eq(eng_sampler_draw(s, 0.36), 3);
    ck_assert_int_eq(eng_sampler_draw(s, 0.86), 4);
    ck_assert_int_eq(eng_sampler_draw(s, 1.0 - 0x1.0p-53), 4);
    eng_sampler_scratch_free(s);
}
END_TEST

static int ref_cmp_rank(const void *a, const void *b)
{
    const struct eng_sampler_cand *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int ref_cmp_id(const void *a, const void *b)
{
    const struct eng_sampler_cand *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

/* Reference: sort everything by (logit desc, id asc), cut by k, p, min-p,
 * apply T, back to id order. */
static int ref_dist(const struct eng_sampler_params *p, const float *l, int n, int32_t *ids, double *pr)
{
    struct eng_sampler_cand *c = malloc((size_t)n * sizeof *c);
    for (int i = 0; i < n; i++)
        c[i] = (struct eng_sampler_cand){ l[i], i };
    qsort(c, (size_t)n, sizeof *c, ref_cmp_rank);
    int m = p->top_k > 0 && p->top_k < n ? p->top_k : n;
    double lmax = c[0].logit, tot = 0.0;
    for (int i = 0; i < m; i++)
        tot += exp(c[i].logit - lmax);
    if (p->top_p < 1.0f) {
        double cum = 0.0;
        for (int i = 0; i < m; i++) {
            cum += exp(c[i].logit - lmax);
            if (cum >= p->top_p * tot) {
                m = i + 1;
                break;
            }
        }
    }
    int k = 0;
    for (int i = 0; i < m; i++)
        if (p->min_p <= 0.0f || c[i].logit >= lmax + log(p->min_p))
            c[k++] = c[i];
    qsort(c, (size_t)k, sizeof *c, ref_cmp_id);
    double z = 0.0;
    for (int i = 0; i < k; i++)
        z += exp((c[i].logit - lmax) / p->temperature);
    for (int i = 0; i < k; i++) {
        ids[i] = c[i].id;
        pr[i] = exp((c[i].logit - lmax) / p->temperature) / z;
    }
    free(c);
    return k;
}

START_TEST(test_full_vocab_against_reference)
{
    enum { N = 49152 };
    float *l = malloc(N * sizeof *l);
    int32_t *ids = malloc(N * sizeof *ids);
    double *pr = malloc(N * sizeof *pr);
    struct eng_sampler_scratch *s = scratch(N);
    struct eng_rng rng;
    eng_rng_seed(&rng, 3);
    const struct { float t; int k; float p, mp; } cfg[] = {
        { 1.0f, 0, 0.9f, 0.0f }, { 0.7f, 40, 0.95f, 0.05f }, { 1.3f, 0, 0.5f, 0.0f },
        { 1.0f, 100, 1.0f, 0.0f }, { 0.8f, 0, 1.0f, 0.02f }, { 1.0f, 0, 0.999f, 0.0f },
    };
    int n_checked = 0;
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        for (int rep = 0; rep < 2; rep++) {
            /* logits like a model's: a heavy head over a broad tail, with ties */
            for (int i = 0; i < N; i++)
                l[i] = (float)((int)(eng_rng_uniform(&rng) * 2000.0) / 100.0 - 10.0);
            if (rep)
                l[17] = l[1234] = 25.0f;
            struct eng_sampler_params p = params(cfg[c].t, cfg[c].k, cfg[c].p, cfg[c].mp);
            int n = eng_sampler_dist(&p, l, N, s);
            int nr = ref_dist(&p, l, N, ids, pr);
            ck_assert_int_eq(n, nr);
            for (int i = 0; i < n; i++) {
                ck_assert_int_eq(s->cand_id[i], ids[i]);
                ck_assert_msg(fabs(s->cand_p[i] - pr[i]) < 1e-12, "p %.17g vs %.17g", s->cand_p[i], pr[i]);
            }
            n_checked++;
        }
    }
    printf("sampler: %d full-vocab (49152) distributions equal the sort-everything reference\n",
           n_checked);
    free(l);
    free(ids);
    free(pr);
    eng_sampler_scratch_free(s);
}
END_TEST

START_TEST(test_penalties)
{
    float l[5] = { 0, 0, 0, 0, 0 };
    struct eng_sampler_scratch *s = scratch(5);
    struct eng_sampler_params p = params(1.0f, 0, 1.0f, 0.0f);
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    const int32_t hist[] = { 2, 2, 3, 2 };
    ck_assert_int_eq(eng_sampler_penalize(&p, l, 5, hist, 4, s), 0);
    ck_assert(l[0] == 0.0f && l[1] == 0.0f && l[4] == 0.0f);
    ck_assert(l[2] == -(3 * 0.5f + 0.25f));
    ck_assert(l[3] == -(1 * 0.5f + 0.25f));
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(s->count[i], 0);
    const int32_t bad[] = { 1, 5 };
    ck_assert_int_eq(eng_sampler_penalize(&p, l, 5, bad, 2, s), ENG_E_RANGE);
    ck_assert(l[1] == 0.0f);
    eng_sampler_scratch_free(s);
}
END_TEST

START_TEST(test_params_and_errors)
{
    struct eng_sampler_params p;
    char err[128];
    eng_sampler_params_default(&p);
    ck_assert_int_eq(eng_sampler_params_check(&p, err, sizeof err), 0);
    p.top_p = 1.5f;
    ck_assert_int_eq(eng_sampler_params_check(&p, err, sizeof err), ENG_E_RANGE);
    ck_assert_ptr_nonnull(strstr(err, "top_p"));
    eng_sampler_params_default(&p);
    p.temperature = NAN;
    ck_assert_int_eq(eng_sampler_params_check(&p, err, sizeof err), ENG_E_RANGE);
    eng_sampler_params_default(&p);
    p.frequency_penalty = 3.0f;
    ck_assert_int_eq(eng_sampler_params_check(&p, NULL, 0), ENG_E_RANGE);

    struct eng_sampler_scratch *s = scratch(3);
    eng_sampler_params_default(&p);
    const float bad[3] = { 0.0f, NAN, 1.0f };
    ck_assert_int_eq(eng_sampler_dist(&p, bad, 3, s), ENG_E_INVALID);
    const float inf[3] = { 0.0f, INFINITY, 1.0f };
    ck_assert_int_eq(eng_sampler_dist(&p, inf, 3, s), ENG_E_INVALID);
    const float masked[3] = { -INFINITY, -INFINITY, -INFINITY };
    ck_assert_int_eq(eng_sampler_dist(&p, masked, 3, s), ENG_E_INVALID);
    ck_assert_int_eq(eng_sampler_dist(&p, masked, 4, s), ENG_E_INVALID);
    struct eng_sampler_scratch *none = NULL;
    ck_assert_int_eq(eng_sampler_scratch_init(&none, 0), ENG_E_INVALID);
    eng_sampler_scratch_free(NULL);
    eng_sampler_scratch_free(s);
}
END_TEST

static Suite *sampler_suite(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("core");
    test_set_timeout(tc, 60);
    tcase_add_test(tc, test_greedy_argmax_ties);
    tcase_add_test(tc, test_top_k1_is_greedy);
    tcase_add_test(tc, test_seed_determinism);
    tcase_add_test(tc, test_top_p_hand);
    tcase_add_test(tc, test_min_p_hand);
    tcase_add_test(tc, test_temperature_hand);
    tcase_add_test(tc, test_empirical_frequencies);
    tcase_add_test(tc, test_draw_boundaries);
    tcase_add_test(tc, test_full_vocab_against_reference);
    tcase_add_test(tc, test_penalties);
    tcase_add_test(tc, test_params_and_errors);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sampler_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

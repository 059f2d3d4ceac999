/* test_train_model.c — the float training pass through the prompt rows:
 * the analytic gradient against finite differences on a tiny random model,
 * results independent of the thread count, and the float product kernel
 * equal to its plain C twin bit for bit. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common_test.h"
#include "engine/train/train_model.h"
#include "kernels/cpu/gemm_f32.h"

static uint64_t rng_state = 88172645463325252ULL;
static float frand(void) {   /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

START_TEST(gemm_matches_reference) {
    const int shapes[][3] = {{1, 1, 1}, {5, 7, 13}, {4, 3, 8}, {9, 10, 576}, {7, 5, 1030}, {3, 4, 2100}, {13, 11, 64}, {130, 7, 600}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int R = shapes[s][0], O = shapes[s][1], K = shapes[s][2];
        float *x = malloc(sizeof(float) * R * K), *b = malloc(sizeof(float) * O * K);
        float *y1 = malloc(sizeof(float) * R * O), *y2 = malloc(sizeof(float) * R * O);
        for (int i = 0; i < R * K; i++) x[i] = frand();
        for (int i = 0; i < O * K; i++) b[i] = frand();
        float *y3 = malloc(sizeof(float) * R * O);
        for (int acc = 0; acc < 2; acc++) {
            for (int i = 0; i < R * O; i++) y1[i] = y2[i] = y3[i] = frand();
            kq_gemm_f32_nt(x, K, R, b, K, K, y1, O, 0, O, acc);
            kq_gemm_f32_nt_ref(x, K, R, b, K, K, y2, O, 0, O, acc);
            ck_assert_msg(!memcmp(y1, y2, sizeof(float) * R * O), "shape %dx%dx%d acc %d differs", R, O, K, acc);
            /* any split of the outputs (threads) gives the same bits */
            kq_gemm_f32_nt(x, K, R, b, K, K, y3, O, 0, O / 2, acc);
            kq_gemm_f32_nt(x, K, R, b, K, K, y3, O, O / 2, O, acc);
            ck_assert_msg(!memcmp(y1, y3, sizeof(float) * R * O), "split shape %dx%dx%d differs", R, O, K);
        }
        free(y3);
        /* and the sum is right */
        kq_gemm_f32_nt(x, K, R, b, K, K, y1, O, 0, O, 0);
        for (int r = 0; r < R; r++)
            for (int o = 0; o < O; o++) {
                double ref = 0;
                for (int k = 0; k < K; k++) ref += (double)x[r * K + k] * b[o * K + k];
                ck_assert_msg(fabs(ref - y1[r * O + o]) < 1e-4 * sqrt((double)K), "value %f vs %f", y1[r * O + o], ref);
            }
        free(x), free(b), free(y1), free(y2);
    }
}
END_TEST

/* A tiny problem: model, prefix K/V for 2 layers, teacher logits, cuts. */
#define T_N 3
#define T_CUTS 3
#define T_MAXP 9
struct tiny {
    struct eng_hparams hp;
    struct eng_tm *tm;
    struct eng_tm_work *w;
    float *kv_k, *kv_v, *teacher, *emb;
    struct eng_tm_cut cuts[T_CUTS];
    float wt[T_N];
};

static const float tiny_freq_factors[4] = {1.0f, 1.5f, 3.0f, 8.0f};
static int tiny_window;   /* hp.n_swa of the next tiny model (0: none) */

/* arch: the llama shape; qwen2 adds q/k/v biases and NeoX RoPE; qwen3 a head
 * size of its own (8, with n_embd 16 and 4 heads), per-head q/k norms, and
 * YaRN with frequency factors (scaled RoPE in the backward pass too). */
static void tiny_init_arch(struct tiny *t, int n_threads, int arch) {
    memset(t, 0, sizeof *t);
    rng_state = 88172645463325252ULL;
    t->hp = (struct eng_hparams){.n_vocab = 40, .n_embd = 16, .n_layer = 2, .n_head = 4, .n_head_kv = 2,
                                 .head_dim = 4, .n_ff = 24, .n_ctx_train = 64, .n_rot = 4, .rope_neox = 0,
                                 .rope_freq_base = 10000.0f, .rms_eps = 1e-5f, .arch = arch,
                                 .n_swa = tiny_window};
    if (arch != ENG_ARCH_LLAMA) t->hp.rope_neox = 1;
    if (arch == ENG_ARCH_QWEN3) {
        t->hp.head_dim = t->hp.n_rot = 8;
        t->hp.rope_scale_factor = 4.0f;
        t->hp.rope_yarn = 1;
        t->hp.rope_ctx_orig = 16;
        t->hp.rope_freq_factors = tiny_freq_factors;
    }
    ck_assert_int_eq(eng_tm_random(&t->tm, &t->hp, 7, 0.5f, n_threads), 0);
    ck_assert_int_eq(eng_tm_work_init(&t->w, t->tm, T_N, T_CUTS, T_MAXP), 0);
    const int KV = t->hp.n_head_kv * t->hp.head_dim, L = t->hp.n_layer, V = t->hp.n_vocab, H = t->hp.n_embd;
    t->kv_k = malloc(sizeof(float) * L * T_MAXP * KV);
    t->kv_v = malloc(sizeof(float) * L * T_MAXP * KV);
    t->teacher = malloc(sizeof(float) * T_CUTS * T_N * V);
    t->emb = malloc(sizeof(float) * T_N * H * L);   /* room for deep prompts */
    for (int i = 0; i < L * T_MAXP * KV; i++) t->kv_k[i] = 2.0f * frand(), t->kv_v[i] = frand();
    for (int i = 0; i < T_CUTS * T_N * V; i++) t->teacher[i] = 3.0f * frand();
    for (int i = 0; i < T_N * H * L; i++) t->emb[i] = frand();
    const int prefix[T_CUTS] = {1, 5, T_MAXP};
    for (int c = 0; c < T_CUTS; c++)
        t->cuts[c] = (struct eng_tm_cut){prefix[c], t->kv_k, t->kv_v, (size_t)T_MAXP * KV, t->teacher + (size_t)c * T_N * V};
    for (int i = 0; i < T_N; i++) t->wt[i] = powf(0.8f, (float)i);
}

static void tiny_init(struct tiny *t, int n_threads) { tiny_init_arch(t, n_threads, ENG_ARCH_LLAMA); }

static void tiny_free(struct tiny *t) {
    eng_tm_work_free(t->w);
    eng_tm_free(t->tm);
    free(t->kv_k), free(t->kv_v), free(t->teacher), free(t->emb);
}

static double tiny_loss(struct tiny *t) {
    struct eng_tm_result res;
    ck_assert_int_eq(eng_tm_run(t->tm, t->w, t->emb, T_N, t->cuts, T_CUTS, t->wt, NULL, 0.0f, 5, &res, NULL), 0);
    return res.loss;
}

/* Tolerance: central differences with step 1e-2 in float arithmetic; the
 * loss is O(1), so truncation (h² · f''') and rounding (1e-7 / h) errors are
 * both around 1e-4 relative; we ask for 2% per component with |g| > 1e-3 and
 * a cosine above 0.9999 over the whole gradient. */
static void check_gradient(enum eng_tm_loss loss, int deep, int arch) {
    struct tiny t;
    tiny_init_arch(&t, 1, arch);
    eng_tm_work_set_loss(t.w, loss);
    eng_tm_work_set_deep(t.w, deep);
    const int H = t.hp.n_embd, P = T_N * H * (deep ? t.hp.n_layer : 1);   /* P trained numbers */
    float *grad = calloc((size_t)P, sizeof(float));
    struct eng_tm_result res;
    ck_assert_int_eq(eng_tm_run(t.tm, t.w, t.emb, T_N, t.cuts, T_CUTS, t.wt, grad, 1.0f, 5, &res, NULL), 0);
    ck_assert(res.loss > 0.01);
    double dot = 0, na = 0, nn = 0;
    int checked = 0;
    for (int j = 0; j < P; j++) {
        const float keep = t.emb[j], h = 1e-2f;
        t.emb[j] = keep + h;
        double lp = tiny_loss(&t);
        t.emb[j] = keep - h;
        double lm = tiny_loss(&t);
        t.emb[j] = keep;
        double num = (lp - lm) / (2.0 * h);
        dot += num * grad[j], na += (double)grad[j] * grad[j], nn += num * num;
        if (fabs(num) > 1e-3) {
            ck_assert_msg(fabs(num - grad[j]) <= 0.02 * fabs(num), "component %d: analytic %g, numeric %g", j, grad[j], num);
            checked++;
        }
    }
    double cosine = dot / sqrt(na * nn);
    printf("gradient check (%s, %s loss%s): %d components above 1e-3, cosine %.7f, |g| %.4g\n", eng_arch_name(arch),
           loss == ENG_TM_LOSS_CE ? "CE" : "KL", deep ? ", deep prompts" : "", checked, cosine, sqrt(na));
    ck_assert_msg(cosine > 0.9999, "cosine %f", cosine);
    ck_assert_int_ge(checked, P / 2);
    /* the last prompt row does not influence earlier rows, and every row gets a gradient */
    for (int i = 0; i < T_N; i++) {
        double n2 = 0;
        for (int j = 0; j < H; j++) n2 += (double)grad[i * H + j] * grad[i * H + j];
        ck_assert_msg(n2 > 0, "prompt row %d has no gradient", i);
    }
    free(grad);
    tiny_free(&t);
}

/* Both losses: the paper's KL and the hard-label cross-entropy. */
START_TEST(gradient_matches_finite_differences) {
    check_gradient(ENG_TM_LOSS_KL, 0, ENG_ARCH_LLAMA);
    check_gradient(ENG_TM_LOSS_CE, 0, ENG_ARCH_LLAMA);
    check_gradient(ENG_TM_LOSS_KL, 1, ENG_ARCH_LLAMA);   /* the per-layer vectors of deep prompts too */
}
END_TEST

/* Through qwen2's biases, and qwen3's head norms, head size and scaled RoPE. */
START_TEST(gradient_matches_finite_differences_qwen) {
    check_gradient(ENG_TM_LOSS_KL, 0, ENG_ARCH_QWEN2);
    check_gradient(ENG_TM_LOSS_KL, 1, ENG_ARCH_QWEN3);
}
END_TEST

/* Through a sliding attention window of 3 positions, which hides most of
 * each cut's prefix and the first prompt rows from the last: the gradient
 * still matches, and the loss is not the unwindowed one. */
START_TEST(gradient_matches_finite_differences_window) {
    struct tiny t;
    tiny_init(&t, 1);
    const double full = tiny_loss(&t);
    tiny_free(&t);
    tiny_window = 3;
    tiny_init(&t, 1);
    const double windowed = tiny_loss(&t);
    tiny_free(&t);
    printf("training loss: %.6f without a window, %.6f with a window of 3\n", full, windowed);
    ck_assert(fabs(full - windowed) > 1e-4);
    check_gradient(ENG_TM_LOSS_KL, 0, ENG_ARCH_LLAMA);
    check_gradient(ENG_TM_LOSS_CE, 1, ENG_ARCH_LLAMA);
    tiny_window = 0;
}
END_TEST

START_TEST(results_do_not_depend_on_threads) {
    float *g[2];
    double loss[2];
    for (int k = 0; k < 2; k++) {
        struct tiny t;
        tiny_init(&t, k + 1);
        g[k] = calloc((size_t)T_N * t.hp.n_embd, sizeof(float));
        struct eng_tm_result res;
        ck_assert_int_eq(eng_tm_run(t.tm, t.w, t.emb, T_N, t.cuts, T_CUTS, t.wt, g[k], 0.5f, 5, &res, NULL), 0);
        loss[k] = res.loss;
        tiny_free(&t);
    }
    ck_assert(loss[0] == loss[1]);
    ck_assert(!memcmp(g[0], g[1], sizeof(float) * T_N * 16));
    free(g[0]), free(g[1]);
}
END_TEST

START_TEST(bad_cuts_are_refused) {
    struct tiny t;
    tiny_init(&t, 1);
    struct eng_tm_result res;
    struct eng_tm_cut c = t.cuts[0];
    c.n_prefix = T_MAXP + 1;
    ck_assert_int_lt(eng_tm_run(t.tm, t.w, t.emb, T_N, &c, 1, t.wt, NULL, 0.0f, 5, &res, NULL), 0);
    c.n_prefix = 0;
    ck_assert_int_lt(eng_tm_run(t.tm, t.w, t.emb, T_N, &c, 1, t.wt, NULL, 0.0f, 5, &res, NULL), 0);
    ck_assert_int_lt(eng_tm_run(t.tm, t.w, t.emb, T_N, t.cuts, T_CUTS + 1, t.wt, NULL, 0.0f, 5, &res, NULL), 0);
    ck_assert_int_lt(eng_tm_run(t.tm, t.w, t.emb, T_N - 1, t.cuts, 1, t.wt, NULL, 0.0f, 5, &res, NULL), 0);
    tiny_free(&t);
}
END_TEST

int main(void) {
    Suite *s = suite_create("train_model");
    TCase *tc = tcase_create("core");
    test_set_timeout(tc, 120);
    tcase_add_test(tc, gemm_matches_reference);
    tcase_add_test(tc, gradient_matches_finite_differences);
    tcase_add_test(tc, gradient_matches_finite_differences_qwen);
    tcase_add_test(tc, gradient_matches_finite_differences_window);
    tcase_add_test(tc, results_do_not_depend_on_threads);
    tcase_add_test(tc, bad_cuts_are_refused);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}

/* test_ppd.c — PPD decoding is lossless: on the golden chat prompts, greedy
 * PPD emits exactly the tokens of plain greedy decoding, and seeded sampling
 * PPD exactly those of plain seeded sampling; with the untrained adapter, with
 * a random adapter, and with "oracle" guesses (the known continuation put in
 * the guess lists, mostly right) so that long accepted runs, KV compaction,
 * state switches, EOS inside an accepted block, max_tokens inside a step and
 * the KV capacity check are all exercised.
 * PPD_TEST_PPD_CASES (default 2; the CPU is slow) sets how many golden prompts
 * are used; `PPD_TEST_PPD_CASES=24` runs them all.  The committed adapter,
 * the one users get, is checked on PPD_TEST_LOSSLESS_CASES prompts (default
 * 20; one under the sanitizers, two on the plain C path).
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/common_test.h"

#include "engine/model/backend.h"
#include "engine/err.h"
#include "engine/model/forward.h"
#include "engine/decode/generate.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "engine/ppd/ppd.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/ppd/ppd_tree.h"
#include "engine/load/tokenizer.h"

static const double acc7b[30] = {
    0.48335, 0.14342, 0.0736, 0.0454, 0.03087, 0.02155, 0.01658, 0.01323, 0.00932, 0.00845,
    0.26256, 0.14561, 0.08114, 0.0576, 0.04283, 0.0323, 0.0257, 0.02152, 0.01903, 0.0155,
    0.16413, 0.11756, 0.08092, 0.05784, 0.04586, 0.03672, 0.03128, 0.02317, 0.02372, 0.01789};

struct fx {
    struct eng_backend be;
    struct eng_model *m;
    struct tok *tok;
    struct eng_kv kv;
    struct eng_forward f;
    struct eng_ppd_adapter *ad;
    struct eng_ppd_tree_family *fam;
    struct eng_ppd ppd;
    int n_case;
    int32_t *prompts[32];
    int n_prompt[32];
};

/* The fixture with the first n_case golden prompts (0: PPD_TEST_PPD_CASES, default 2). */
static void fx_open_cases(struct fx *x, int max_seq, int tree_L, int n_case) {
    memset(x, 0, sizeof *x);
    char err[512];
    ck_assert_int_eq(eng_backend_cpu_init(&x->be, 2), 0);
    ck_assert_msg(eng_model_load(&x->m, test_model_path(), &x->be, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(tok_load(&x->tok, x->m->gguf, err, sizeof err) == 0, "%s", err);
    const struct eng_hparams *hp = &x->m->hp;
    ck_assert_int_eq(eng_kv_init(&x->kv, &x->be, hp->n_layer, 1, max_seq, hp->n_head_kv * hp->head_dim), 0);
    ck_assert_int_eq(eng_forward_init(&x->f, x->m, 256), 0);
    ck_assert_int_eq(eng_ppd_adapter_init_text(&x->ad, x->m, x->tok, 3, 10, ENG_PPD_INIT_TEXT, err, sizeof err), 0);
    ck_assert_int_eq(eng_ppd_tree_build(&x->fam, acc7b, 3, 10, tree_L, NULL), 0);
    ck_assert_msg(eng_ppd_init(&x->ppd, x->ad, x->fam, err, sizeof err) == 0, "%s", err);
    /* prompts: the golden chat prompts */
    json_error_t je;
    json_t *root = json_load_file("tests/golden/data/greedy.json", 0, &je);
    ck_assert_msg(root != NULL, "greedy.json: %s", je.text);
    json_t *cases = json_object_get(root, "cases");
    int want = n_case > 0 ? n_case : test_case_count("PPD_TEST_PPD_CASES", 2);
    for (size_t i = 0; i < json_array_size(cases) && x->n_case < want && x->n_case < 32; i++) {
        json_t *c = json_array_get(cases, i), *ids = json_object_get(c, "prompt_ids");
        json_t *arr = json_is_string(ids) ? json_loads(json_string_value(ids), JSON_DECODE_ANY, &je) : json_incref(ids);
        ck_assert(json_is_array(arr));
        int n = (int)json_array_size(arr);
        x->prompts[x->n_case] = malloc(sizeof(int32_t) * (size_t)n);
        for (int k = 0; k < n; k++) x->prompts[x->n_case][k] = (int32_t)json_integer_value(json_array_get(arr, k));
        x->n_prompt[x->n_case++] = n;
        json_decref(arr);
    }
    json_decref(root);
    ck_assert_int_ge(x->n_case, 1);
}

static void fx_open(struct fx *x, int max_seq, int tree_L) { fx_open_cases(x, max_seq, tree_L, 0); }

static void fx_close(struct fx *x) {
    for (int i = 0; i < x->n_case; i++) free(x->prompts[i]);
    eng_ppd_free(&x->ppd);
    eng_ppd_tree_family_free(x->fam);
    eng_ppd_adapter_free(x->ad);
    eng_forward_free(&x->f);
    eng_kv_free(&x->kv);
    tok_free(x->tok);
    eng_model_free(x->m);
    eng_backend_free(&x->be);
}

/* Guesses from a known continuation: the token t places after the root goes
 * to rank (n_emitted + t) % 3 of prompt token t, except every 7th. */
struct oracle { const int32_t *ids; int n; };

static void oracle_guess(void *user, int32_t *cand, int d, int K, int n_emitted) {
    const struct oracle *o = user;
    for (int t = 1; t <= d; t++) {
        int at = n_emitted - 1 + t;
        if (at >= o->n || (n_emitted + t) % 7 == 0) continue;
        int rank = (n_emitted + t) % 3;
        int32_t *row = cand + 1 + (size_t)K * (t - 1);
        for (int r = 0; r < K; r++)   /* keep the siblings distinct */
            if (row[r] == o->ids[at]) row[r] = row[rank];
        row[rank] = o->ids[at];
    }
}

static int run_plain(struct fx *x, int c, const struct eng_gen_params *gp, int32_t *out, struct eng_gen_stats *st) {
    int rc = eng_generate(&x->f, &x->kv, 0, x->tok, x->prompts[c], x->n_prompt[c], gp, NULL, NULL, out, st);
    ck_assert_int_eq(rc, 0);
    return st->n_gen;
}

static int run_ppd(struct fx *x, int c, const struct eng_gen_params *gp, int32_t *out, struct eng_ppd_gen_stats *st,
                   struct oracle *o) {
    struct eng_ppd_gen_opts opts = {.accept = ENG_PPD_ACCEPT_EXACT, .guess_fn = o ? oracle_guess : NULL, .guess_user = o};
    int rc = eng_ppd_generate(&x->f, &x->kv, 0, x->tok, &x->ppd, x->prompts[c], x->n_prompt[c], gp, NULL, NULL, out,
                              NULL, st, &opts);
    ck_assert_int_eq(rc, 0);
    return st->gen.n_gen;
}

static void expect_same(const int32_t *a, int na, const int32_t *b, int nb, const char *what, int c) {
    int i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    ck_assert_msg(na == nb && i == na, "%s, prompt %d: plain %d tokens, PPD %d, first difference at %d", what, c, na,
                  nb, i);
}

static double mean_acc(const struct eng_ppd_gen_stats *st) {
    long tok = 0, steps = 0;
    for (int a = 0; a < ENG_PPD_MAX_PROMPT + 2; a++) { tok += (long)a * st->hist[a]; steps += st->hist[a]; }
    return steps ? (double)tok / steps : 0;
}

static void equivalence(float temp, int n_predict, int tree_L) {
    struct fx x;
    fx_open(&x, 1024, tree_L);
    struct eng_gen_params gp = {.n_predict = n_predict, .ignore_eog = false};
    eng_sampler_params_default(&gp.sp);
    gp.sp.temperature = temp;
    gp.sp.top_p = temp > 0 ? 0.95f : 1.0f;
    int32_t *plain = malloc(sizeof(int32_t) * (size_t)n_predict), *ppd = malloc(sizeof(int32_t) * (size_t)n_predict);
    double sum_untrained = 0, sum_oracle = 0;
    for (int c = 0; c < x.n_case; c++) {
        gp.sp.seed = 1000 + (uint64_t)c;
        struct eng_gen_stats ps;
        struct eng_ppd_gen_stats qs;
        int np = run_plain(&x, c, &gp, plain, &ps);
        int nq = run_ppd(&x, c, &gp, ppd, &qs, NULL);
        expect_same(plain, np, ppd, nq, "untrained adapter", c);
        ck_assert_int_eq(qs.gen.finish, ps.finish);
        sum_untrained += mean_acc(&qs);
        struct oracle o = {plain, np};
        nq = run_ppd(&x, c, &gp, ppd, &qs, &o);
        expect_same(plain, np, ppd, nq, "oracle guesses", c);
        ck_assert_int_eq(qs.gen.finish, ps.finish);
        sum_oracle += mean_acc(&qs);
        /* max_tokens inside an accepted block */
        for (int cut = 5; c == 0 && cut < np; cut += 13) {
            struct eng_gen_params g2 = gp;
            g2.n_predict = cut;
            nq = run_ppd(&x, c, &g2, ppd, &qs, &o);
            expect_same(plain, cut, ppd, nq, "n_predict cut", c);
            ck_assert_int_eq(qs.gen.finish, ENG_FINISH_LENGTH);
        }
    }
    printf("temp %.1f, tree L=%d, %d prompts x %d tokens: identical; mean accepted/step untrained %.3f, oracle %.3f\n",
           temp, tree_L, x.n_case, n_predict, sum_untrained / x.n_case, sum_oracle / x.n_case);
    ck_assert(sum_oracle / x.n_case > 2.0);   /* the oracle really drove long accepted runs */
    free(plain);
    free(ppd);
    fx_close(&x);
}

START_TEST(test_greedy_equals_plain) { equivalence(0.0f, 64, 20); }
END_TEST

START_TEST(test_sampling_equals_plain) { equivalence(0.8f, 64, 20); }
END_TEST

START_TEST(test_greedy_equals_plain_big_tree) { equivalence(0.0f, 48, 60); }
END_TEST

/* A random adapter guesses garbage: still lossless. */
/* n uniform values in [-scale/2, scale/2) from a seeded LCG. */
static void fill_random(float *v, size_t n, uint64_t seed, float scale) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        v[i] = (float)((double)(seed >> 11) / 9007199254740992.0 - 0.5) * scale;
    }
}

/* Greedy PPD with the fixture's adapter equals plain decoding (40 tokens) on
 * its first max_cases prompts. */
static void expect_greedy_lossless(struct fx *x, int max_cases, const char *what) {
    struct eng_gen_params gp = {.n_predict = 40};
    eng_sampler_params_default(&gp.sp);
    gp.sp.temperature = 0;
    int32_t plain[40], ppd[40];
    for (int c = 0; c < x->n_case && c < max_cases; c++) {
        struct eng_gen_stats ps;
        struct eng_ppd_gen_stats qs;
        int np = run_plain(x, c, &gp, plain, &ps), nq = run_ppd(x, c, &gp, ppd, &qs, NULL);
        expect_same(plain, np, ppd, nq, what, c);
    }
}

START_TEST(test_random_adapter) {
    struct fx x;
    fx_open(&x, 1024, 20);
    fill_random(x.ad->emb, (size_t)x.ad->n_prompt * x.ad->n_embd, 7, 0.2f);
    expect_greedy_lossless(&x, 3, "random adapter");
    fx_close(&x);
}
END_TEST

/* Deep prompts (a vector per layer added to the prompt rows): they change what
 * the prompt rows guess and nothing else (a normal row's logits are the same
 * bits), and PPD with them is still exactly plain decoding. */
START_TEST(test_deep_adapter) {
    struct fx x;
    fx_open(&x, 1024, 20);
    const struct eng_hparams *hp = &x.m->hp;
    const int N = x.ad->n_prompt, H = hp->n_embd, V = hp->n_vocab;
    x.ad->n_deep = hp->n_layer - 1;
    x.ad->deep = malloc(sizeof(float) * (size_t)x.ad->n_deep * N * H);
    fill_random(x.ad->deep, (size_t)x.ad->n_deep * N * H, 11, 0.5f);
    struct eng_batch b;
    ck_assert_int_eq(eng_batch_init(&b, 64, 64), 0);
    int32_t rows[4] = {x.prompts[0][0], -1, -2, -3};
    float *logits[2];
    for (int k = 0; k < 2; k++) {
        eng_batch_clear(&b);
        ck_assert_int_eq(eng_batch_add_causal(&b, 0, 0, rows, 4, false), 0);
        for (int r = 0; r < 4; r++) b.want_logits[r] = true;
        ck_assert_int_eq(eng_forward_run_deep(&x.f, &b, &x.kv, x.ad->emb, N, k ? x.ad->deep : NULL, x.ad->n_deep), 0);
        logits[k] = malloc(sizeof(float) * 4 * (size_t)V);
        memcpy(logits[k], x.f.logits, sizeof(float) * 4 * (size_t)V);
    }
    ck_assert_msg(!memcmp(logits[0], logits[1], sizeof(float) * (size_t)V), "the normal row changed");
    for (int r = 1; r < 4; r++)
        ck_assert_msg(memcmp(logits[0] + (size_t)r * V, logits[1] + (size_t)r * V, sizeof(float) * (size_t)V),
                      "prompt row %d did not change", r);
    free(logits[0]), free(logits[1]);
    eng_batch_free(&b);
    expect_greedy_lossless(&x, 2, "deep adapter");
    fx_close(&x);
}
END_TEST

/* Small KV slots: near the end the tree no longer fits and PPD finishes with
 * plain one-row steps, stopping with ENG_FINISH_CONTEXT exactly where plain
 * decoding does, with the same tokens; also when not even the prompt rows fit
 * after the prompt. */
START_TEST(test_kv_capacity) {
    struct fx x;
    fx_open(&x, 1024, 20);
    int c = 0;
    const struct eng_hparams *hp = &x.m->hp;
    const int room[3] = {30, 2, 1};
    for (int k = 0; k < 3; k++) {
        eng_kv_free(&x.kv);
        ck_assert_int_eq(eng_kv_init(&x.kv, &x.be, hp->n_layer, 1, x.n_prompt[c] + room[k], hp->n_head_kv * hp->head_dim), 0);
        struct eng_gen_params gp = {.n_predict = 100, .ignore_eog = true};
        eng_sampler_params_default(&gp.sp);
        gp.sp.temperature = 0;
        int32_t plain[100], ppd[100];
        struct eng_gen_stats ps;
        struct eng_ppd_gen_stats qs;
        int np = run_plain(&x, c, &gp, plain, &ps);
        ck_assert_int_eq(ps.finish, ENG_FINISH_CONTEXT);
        struct oracle o = {plain, np};
        int nq = run_ppd(&x, c, &gp, ppd, &qs, &o);
        ck_assert_int_eq(qs.gen.finish, ENG_FINISH_CONTEXT);
        expect_same(plain, np, ppd, nq, "KV capacity", k);
    }
    fx_close(&x);
}
END_TEST

/* Typical acceptance (opt-in, not lossless): at a temperature near 0 only the
 * argmax passes the threshold, so with oracle guesses it must reproduce greedy
 * decoding while accepting long runs; at 0.7 it runs and accepts. */
START_TEST(test_typical_acceptance) {
    struct fx x;
    fx_open(&x, 1024, 20);
    struct eng_gen_params gp = {.n_predict = 40};
    eng_sampler_params_default(&gp.sp);
    gp.sp.temperature = 0;
    int32_t plain[40], ppd[40];
    struct eng_gen_stats ps;
    struct eng_ppd_gen_stats qs;
    int np = run_plain(&x, 0, &gp, plain, &ps);
    struct oracle o = {plain, np};
    struct eng_ppd_gen_opts opts = {.accept = ENG_PPD_ACCEPT_TYPICAL, .typical = {0.09f, 0.3f},
                                    .guess_fn = oracle_guess, .guess_user = &o};
    gp.sp.temperature = 0.01f;
    ck_assert_int_eq(eng_ppd_generate(&x.f, &x.kv, 0, x.tok, &x.ppd, x.prompts[0], x.n_prompt[0], &gp, NULL, NULL,
                                      ppd, NULL, &qs, &opts), 0);
    expect_same(plain, np, ppd, qs.gen.n_gen, "typical at temperature 0.01", 0);
    double low = mean_acc(&qs);
    ck_assert(low > 2.0);
    gp.sp.temperature = 0.7f;
    opts.guess_fn = NULL;
    ck_assert_int_eq(eng_ppd_generate(&x.f, &x.kv, 0, x.tok, &x.ppd, x.prompts[1 % x.n_case], x.n_prompt[1 % x.n_case],
                                      &gp, NULL, NULL, ppd, NULL, &qs, &opts), 0);
    ck_assert_int_ge(qs.gen.n_gen, 1);
    printf("typical acceptance: oracle at temperature 0.01 %.3f tokens/step; untrained at 0.7 %.3f\n", low,
           mean_acc(&qs));
    fx_close(&x);
}
END_TEST

/* The scheduler's shape: two sequences on two slots share every forward pass
 * (prefill tails together, then one tree each per step, in different depth
 * states) and each still emits exactly its plain greedy tokens. */
START_TEST(test_two_sequences_one_batch) {
    struct fx x;
    fx_open(&x, 512, 20);
    const struct eng_hparams *hp = &x.m->hp;
    struct eng_kv kv2;
    ck_assert_int_eq(eng_kv_init(&kv2, &x.be, hp->n_layer, 2, 512, hp->n_head_kv * hp->head_dim), 0);
    enum { NP = 40 };
    struct eng_gen_params gp = {.n_predict = NP, .ignore_eog = true};
    eng_sampler_params_default(&gp.sp);
    gp.sp.temperature = 0;
    int32_t plain[2][NP], got[2][NP];
    int n_plain[2], n_got[2] = {0, 0};
    const int ca[2] = {0, 1 % x.n_case};
    struct oracle o[2];
    for (int i = 0; i < 2; i++) {
        struct eng_gen_stats ps;
        n_plain[i] = run_plain(&x, ca[i], &gp, plain[i], &ps);
        o[i] = (struct oracle){plain[i], n_plain[i]};
    }
    struct eng_batch b;
    ck_assert_int_eq(eng_batch_init(&b, 256, 256), 0);
    struct eng_ppd_seq sq[2];
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(eng_ppd_seq_init(&sq[i], &x.ppd, i, &gp.sp, NP, x.tok, true, hp->n_vocab), 0);
        if (i == 1) { sq[i].guess_fn = oracle_guess; sq[i].guess_user = &o[i]; }   /* different states */
        kv2.len[i] = 0;
        eng_batch_clear(&b);
        ck_assert_int_eq(eng_batch_add_causal(&b, i, 0, x.prompts[ca[i]], x.n_prompt[ca[i]] - 1, false), 0);
        ck_assert_int_eq(eng_forward_run(&x.f, &b, &kv2, NULL, 0), 0);
        kv2.len[i] = x.n_prompt[ca[i]] - 1;
    }
    eng_batch_clear(&b);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(eng_ppd_seq_prefill_add(&sq[i], &b, &kv2, x.prompts[ca[i]] + x.n_prompt[ca[i]] - 1, 1), 0);
    ck_assert_int_eq(eng_forward_run(&x.f, &b, &kv2, x.ad->emb, x.ad->n_prompt), 0);
    for (int i = 0; i < 2; i++) {
        int n;
        ck_assert_int_eq(eng_ppd_seq_prefill_finish(&sq[i], &x.f, &kv2, got[i] + n_got[i], &n), 0);
        n_got[i] += n;
    }
    int mixed = 0;
    while (!sq[0].done || !sq[1].done) {
        eng_batch_clear(&b);
        for (int i = 0; i < 2; i++)
            if (!sq[i].done) ck_assert_int_eq(eng_ppd_seq_step_add(&sq[i], &b, &kv2), 0);
        if (!sq[0].done && !sq[1].done && sq[0].d != sq[1].d) mixed++;
        ck_assert_int_eq(eng_forward_run(&x.f, &b, &kv2, x.ad->emb, x.ad->n_prompt), 0);
        for (int i = 0; i < 2; i++) {
            if (sq[i].pending != 2) continue;
            int n;
            ck_assert_int_eq(eng_ppd_seq_step_finish(&sq[i], &x.f, &kv2, got[i] + n_got[i], &n), 0);
            n_got[i] += n;
        }
    }
    for (int i = 0; i < 2; i++) {
        expect_same(plain[i], n_plain[i], got[i], n_got[i], "two sequences in one batch", i);
        eng_ppd_seq_free(&sq[i]);
    }
    printf("two sequences in one batch: identical; %d steps with the two in different depth states\n", mixed);
    eng_batch_free(&b);
    eng_kv_free(&kv2);
    fx_close(&x);
}
END_TEST

/* The adapter users get: the committed one next to the default model, at its
 * tuned tree and at a 64-row tree, greedy and seeded sampling at two
 * temperatures, PPD_TEST_LOSSLESS_CASES golden prompts (default 20) x 64
 * tokens: PPD emits exactly plain decoding's tokens. */
static void committed_adapter_lossless(int big) {
    const int n_case = test_case_count("PPD_TEST_LOSSLESS_CASES", 20);
    struct fx x;
    fx_open_cases(&x, 1024, 20, n_case);
    ck_assert_int_eq(x.n_case, n_case < 24 ? n_case : 24);
    char path[1024], err[512];
    ck_assert_int_eq(eng_ppd_adapter_default_path(test_model_path(), path, sizeof path), 0);
    struct eng_ppd_adapter *ad = NULL;
    ck_assert_msg(eng_ppd_adapter_load(&ad, path, x.m, err, sizeof err) == 0, "%s", err);
    ck_assert_ptr_nonnull(ad->accuracy);
    const int N = ad->n_prompt, K = ad->topk, nj = ad->joint ? eng_ppd_joint_size(N, K) : 0;
    double *acc = malloc(sizeof(double) * ((size_t)N * K + (size_t)nj));
    for (int i = 0; i < N * K; i++) acc[i] = ad->accuracy[i];
    for (int i = 0; i < nj; i++) acc[N * K + i] = ad->joint[i];
    /* its tuned budget, or the budget whose largest tree state feeds 64 rows */
    int L = ad->tree_budget > 0 ? ad->tree_budget : 2;
    struct eng_ppd_tree_family *fam = NULL;
    for (;;) {
        ck_assert_int_eq(eng_ppd_tree_build_joint(&fam, acc, nj ? acc + N * K : NULL, N, K, L, NULL), 0);
        eng_ppd_free(&x.ppd);
        ck_assert_msg(eng_ppd_init(&x.ppd, ad, fam, err, sizeof err) == 0, "%s", err);
        eng_ppd_tree_family_free(fam);
        if (!big || x.ppd.trees.max_T >= 64) break;
        L++;
    }
    ck_assert(!big || x.ppd.trees.max_T <= 72);
    enum { NP = 64 };
    static const float temps[3] = {0.0f, 0.7f, 1.0f};
    long tokens = 0, steps = 0;
    for (int ti = 0; ti < 3; ti++)
        for (int c = 0; c < x.n_case; c++) {
            struct eng_gen_params gp = {.n_predict = NP, .ignore_eog = false};
            eng_sampler_params_default(&gp.sp);
            gp.sp.temperature = temps[ti];
            gp.sp.seed = 77 + (uint64_t)c;
            int32_t plain[NP], ppd[NP];
            struct eng_gen_stats ps;
            struct eng_ppd_gen_stats qs;
            const int np = run_plain(&x, c, &gp, plain, &ps), nq = run_ppd(&x, c, &gp, ppd, &qs, NULL);
            char what[96];
            snprintf(what, sizeof what, "committed adapter, L=%d (%d rows), temperature %.1f", L, x.ppd.trees.max_T,
                     (double)temps[ti]);
            expect_same(plain, np, ppd, nq, what, c);
            ck_assert_int_eq(qs.gen.finish, ps.finish);
            tokens += nq;
            steps += qs.gen.steps;
        }
    printf("committed adapter, tree L=%d (%d rows at most), %d prompts x %d tokens x temperatures 0, 0.7, 1.0: "
           "identical to plain decoding; %.3f tokens per step\n", L, x.ppd.trees.max_T, x.n_case, NP,
           steps ? (double)tokens / (double)steps : 0.0);
    free(acc);
    eng_ppd_adapter_free(ad);
    fx_close(&x);
}

START_TEST(test_committed_adapter_tuned_tree) { committed_adapter_lossless(0); }
END_TEST

START_TEST(test_committed_adapter_64_row_tree) { committed_adapter_lossless(1); }
END_TEST

START_TEST(test_tree_adapter_mismatch) {
    struct fx x;
    fx_open(&x, 64, 20);
    struct eng_ppd_tree_family *f2 = NULL;
    double acc[20] = {0.5, 0.2};
    ck_assert_int_eq(eng_ppd_tree_build(&f2, acc, 2, 10, 20, NULL), 0);
    struct eng_ppd p2;
    char err[256];
    ck_assert_int_eq(eng_ppd_init(&p2, x.ad, f2, err, sizeof err), ENG_E_INVALID);
    ck_assert_ptr_nonnull(strstr(err, "N=2"));
    eng_ppd_tree_family_free(f2);
    fx_close(&x);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ppd");
    TCase *tc = tcase_create("basic"), *te = tcase_create("equivalence");   /* CK_RUN_CASE picks one */
    test_set_timeout(tc, 900);
    test_set_timeout(te, 900);
    tcase_add_test(tc, test_tree_adapter_mismatch);
    tcase_add_test(tc, test_kv_capacity);
    tcase_add_test(tc, test_random_adapter);
    tcase_add_test(tc, test_deep_adapter);
    tcase_add_test(tc, test_typical_acceptance);
    tcase_add_test(tc, test_two_sequences_one_batch);
    tcase_add_test(te, test_greedy_equals_plain);
    tcase_add_test(te, test_sampling_equals_plain);
    tcase_add_test(te, test_greedy_equals_plain_big_tree);
    tcase_add_test(te, test_committed_adapter_tuned_tree);
    tcase_add_test(te, test_committed_adapter_64_row_tree);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, te);
    return test_run_suite(s);
}

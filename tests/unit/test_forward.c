/* test_forward.c — the forward pass against llama.cpp, and row independence.
 *
 * Golden data (tests/golden/gen_greedy.py): for 24 chat prompts, llama.cpp's
 * 128 greedy token ids and top-2 logits per step, and the full first-step
 * logits of 3 prompts, for three variants of the default model:
 *   f32   every weight dequantized to F32 (derived here in memory): no int8
 *         rounding of activations, so llama.cpp and we differ only by float
 *         summation order.  Strict: logits within 2e-3, and a prompt may only
 *         diverge where llama.cpp's own top-2 logits are within 1e-3.
 *   cut1  the Q4_1 model cut to its first layer: one layer of int8-quantized
 *         matmuls, the same rounding as llama.cpp's: logits within 1e-5 unless a
 *         rounding flip occurs (then ~0.1).
 *   q4_1  the file as it is.  30 layers of int8 activation rounding turn
 *         one-ulp float differences into rounding flips that compound, so both
 *         we and llama.cpp land ~0.7 from an exact float64 evaluation and ~1 from
 *         each other (see gen_greedy.py).  Reported, and bounded loosely.
 * Independently of llama.cpp: a prompt prefilled as one batch must give
 * bit-identical logits to the same prompt fed one token per pass.
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/common_test.h"

#include "engine/model/backend.h"
#include "engine/model/batch.h"
#include "engine/model/forward.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/dequant.h"
#include "common/qtypes.h"

#define GOLDEN_DIR "tests/golden/data/"

enum variant { VAR_Q4_1, VAR_F32, VAR_CUT1 };

struct fx {
    struct eng_backend be; struct eng_model *m; struct eng_kv kv; struct eng_forward f;
    int n_layer_file;       /* restored before freeing (VAR_CUT1 lowers hp.n_layer) */
    float *f32_bufs[512];   /* dequantized weights (VAR_F32) */
    int n_f32;
};

/* Replace w by an F32 copy of its dequantized rows. */
static void to_f32(struct fx *x, struct eng_weight *w) {
    float *buf = malloc(sizeof(float) * (size_t)w->n_in * (size_t)w->n_out);
    ck_assert_ptr_nonnull(buf);
    for (int64_t r = 0; r < w->n_out; r++) kq_weight_row_f32(w->impl, r, buf + r * w->n_in);
    int64_t n_in = w->n_in, n_out = w->n_out;
    x->be.iface->weight_free(x->be.ctx, w);
    ck_assert_int_eq(x->be.iface->weight_init(x->be.ctx, w, KQ_F32, buf, n_in, n_out), 0);
    x->f32_bufs[x->n_f32++] = buf;
}

static void fx_variant(struct fx *x, enum variant v) {
    x->n_layer_file = x->m->hp.n_layer;
    if (v == VAR_CUT1) x->m->hp.n_layer = 1;
    if (v != VAR_F32) return;
    to_f32(x, &x->m->output);
    for (int l = 0; l < x->m->hp.n_layer; l++) {
        struct eng_layer *L = &x->m->layers[l];
        struct eng_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (unsigned i = 0; i < 7; i++) to_f32(x, ws[i]);
    }
}

static void fx_open(struct fx *x, int max_rows) {
    char err[512];
    ck_assert_int_eq(eng_backend_cpu_init(&x->be, 2), 0);
    int rc = eng_model_load(&x->m, test_model_path(), &x->be, err, sizeof err);
    ck_assert_msg(rc == 0, "load: %s", err);
    const struct eng_hparams *hp = &x->m->hp;
    ck_assert_int_eq(eng_kv_init(&x->kv, &x->be, hp->n_layer, 1, 512, hp->n_head_kv * hp->head_dim), 0);
    ck_assert_int_eq(eng_forward_init(&x->f, x->m, max_rows), 0);
    x->n_layer_file = 0;
    x->n_f32 = 0;
}

static void fx_close(struct fx *x) {
    if (x->n_layer_file) x->m->hp.n_layer = x->n_layer_file;
    eng_forward_free(&x->f);
    eng_kv_free(&x->kv);
    eng_model_free(x->m);
    eng_backend_free(&x->be);
    for (int i = 0; i < x->n_f32; i++) free(x->f32_bufs[i]);
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (v[i] > v[best]) best = i;
    return best;
}

/* Prefill ids as one batch; returns the number of the logits row (0). */
static void prefill(struct fx *x, struct eng_batch *b, const int32_t *ids, int n) {
    x->kv.len[0] = 0;
    eng_batch_clear(b);
    ck_assert_int_eq(eng_batch_add_causal(b, 0, 0, ids, n, true), 0);
    ck_assert_int_eq(eng_forward_run(&x->f, b, &x->kv, NULL, 0), 0);
    x->kv.len[0] = n;
}

static void step(struct fx *x, struct eng_batch *b, int32_t id) {
    eng_batch_clear(b);
    ck_assert_int_eq(eng_batch_add_causal(b, 0, x->kv.len[0], &id, 1, true), 0);
    ck_assert_int_eq(eng_forward_run(&x->f, b, &x->kv, NULL, 0), 0);
    x->kv.len[0] += 1;
}

static json_t *load_golden(const char *name) {
    json_error_t je;
    char path[256];
    snprintf(path, sizeof path, GOLDEN_DIR "%s.json", name);
    json_t *g = json_load_file(path, 0, &je);
    ck_assert_msg(g != NULL, "%s: %s", path, je.text);
    return g;
}

static const char *variant_name(enum variant v) { return v == VAR_F32 ? "f32" : v == VAR_CUT1 ? "cut1" : "q4_1"; }

static int json_ids(json_t *arr, int32_t *out, int cap) {
    int n = (int)json_array_size(arr);
    ck_assert_int_le(n, cap);
    for (int i = 0; i < n; i++) out[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return n;
}

/* Greedy decoding of the golden prompts; returns how many diverge at a gap
 * larger than tie_gap (asserted zero by the strict variants). */
static int greedy_vs_llamacpp(enum variant v, const char *golden, int max_cases, double tie_gap,
                              double *frac_equal, double *runner_up_frac) {
    struct fx x;
    fx_open(&x, 256);
    fx_variant(&x, v);
    json_t *g = load_golden(golden);
    json_t *cases = json_object_get(g, "cases");
    const int n_vocab = x.m->hp.n_vocab;
    int n_cases = (int)json_array_size(cases);
    if (max_cases > 0 && n_cases > max_cases) n_cases = max_cases;
    int not_tie = 0, runner_up = 0;
    struct eng_batch b;
    ck_assert_int_eq(eng_batch_init(&b, 256, 256), 0);
    int identical = 0, near_tie = 0, tokens_equal = 0, tokens_total = 0;
    for (int c = 0; c < n_cases; c++) {
        json_t *cs = json_array_get(cases, (size_t)c);
        int32_t prompt[256], want[128];
        int np = json_ids(json_object_get(cs, "prompt_ids"), prompt, 256);
        int ng = json_ids(json_object_get(cs, "gen_ids"), want, 128);
        prefill(&x, &b, prompt, np);
        int first_diff = -1, got = -1;
        for (int s = 0; s < ng; s++) {
            got = argmax(x.f.logits, n_vocab);
            if (got != want[s]) { first_diff = s; break; }
            tokens_equal++;
            if (s + 1 < ng) step(&x, &b, got);
        }
        tokens_total += ng;
        if (first_diff < 0) { identical++; continue; }
        json_t *t2 = json_array_get(json_object_get(cs, "top2"), (size_t)first_diff);
        double l0 = json_real_value(json_array_get(t2, 1)), l1 = json_real_value(json_array_get(t2, 3));
        printf("greedy %s: %s diverges at step %d: llama.cpp top-2 logits %.6f vs %.6f (gap %.2e)\n",
               variant_name(v), json_string_value(json_object_get(cs, "id")), first_diff, l0, l1, l0 - l1);
        if (fabs(l0 - l1) <= tie_gap) near_tie++;
        else not_tie++;
        if (got == (int)json_integer_value(json_array_get(t2, 2))) runner_up++;
    }
    printf("greedy %s: %d/%d prompts identical to llama.cpp for 128 tokens, %d diverge at a near tie "
           "(gap <= %.0e), %d elsewhere; %d/%d tokens before the first divergence\n", variant_name(v), identical,
           n_cases, near_tie, tie_gap, not_tie, tokens_equal, tokens_total);
    if (near_tie + not_tie)
        printf("greedy %s: at %d of %d first divergences our token is llama.cpp's runner-up\n", variant_name(v),
               runner_up, near_tie + not_tie);
    eng_batch_free(&b);
    json_decref(g);
    fx_close(&x);
    *frac_equal = tokens_total ? (double)tokens_equal / tokens_total : 0;
    if (runner_up_frac) *runner_up_frac = near_tie + not_tie ? (double)runner_up / (near_tie + not_tie) : 1.0;
    return not_tie;
}

static int env_cases(int dflt) { return test_case_count("PPD_TEST_GOLDEN_CASES", dflt); }

START_TEST(test_greedy_f32_matches_llamacpp) {
    double frac;
    /* the exactness test: every golden prompt (one under the sanitizers) */
    ck_assert_int_eq(greedy_vs_llamacpp(VAR_F32, "greedy_f32", env_cases(24), 1e-3, &frac, NULL), 0);
}
END_TEST

START_TEST(test_greedy_q4_1_vs_llamacpp) {
    /* Reported.  Divergences are expected (see the header); what a wrong op
     * would break: at a divergence we pick llama.cpp's own second choice (the
     * two were close), and on average we agree for several tokens first
     * (measured 2026-11-25: 15% of all tokens precede the first divergence,
     * 22 of 23 divergences at llama.cpp's runner-up).  llama.cpp is no
     * steadier: fed the prompt a token at a time instead of in one batch, it
     * keeps 2 of its own 24 continuations, 935/3072 tokens before the first
     * difference, first-step logits up to 0.67 apart, no first difference at
     * a gap under 1e-3 (tests/golden/llamacpp_batch_agreement.py, 2026-11-26). */
    double frac, runner_up;
    greedy_vs_llamacpp(VAR_Q4_1, "greedy", 24, 1e-3, &frac, &runner_up);  /* cheap: stops at divergence */
    ck_assert_double_ge(runner_up, 0.75);
    ck_assert_double_ge(frac, 0.05);
}
END_TEST

static void logits_vs_llamacpp(enum variant v, const char *logits_file, double bound) {
    struct fx x;
    fx_open(&x, 256);
    fx_variant(&x, v);
    json_t *g = load_golden("greedy");   /* prompts */
    json_t *cases = json_object_get(g, "cases");
    const int n_vocab = x.m->hp.n_vocab;
    int n_full = 3;
    char path[256];
    snprintf(path, sizeof path, GOLDEN_DIR "%s", logits_file);
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    float *ref = malloc(sizeof(float) * (size_t)n_vocab);
    struct eng_batch b;
    ck_assert_int_eq(eng_batch_init(&b, 256, 256), 0);
    double worst = 0;
    int top1 = 0;
    for (int c = 0; c < n_full; c++) {
        ck_assert_int_eq((int)fread(ref, sizeof(float), (size_t)n_vocab, fp), n_vocab);
        json_t *cs = json_array_get(cases, (size_t)c);
        int32_t prompt[256];
        int np = json_ids(json_object_get(cs, "prompt_ids"), prompt, 256);
        prefill(&x, &b, prompt, np);
        double maxd = 0, maxref = 0;
        for (int i = 0; i < n_vocab; i++) {
            double d = fabs((double)x.f.logits[i] - ref[i]);
            if (d > maxd) maxd = d;
            if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
        }
        int agree = argmax(x.f.logits, n_vocab) == argmax(ref, n_vocab);
        top1 += agree;
        printf("logits %s: case %d: max |ours - llama.cpp| = %.3e (max |logit| %.2f), top-1 %s\n", variant_name(v), c,
               maxd, maxref, agree ? "agrees" : "DIFFERS");
        if (maxd > worst) worst = maxd;
    }
    printf("logits %s: max abs difference %.3e over %d prompts (bound %.0e), top-1 agreement %d/%d\n",
           variant_name(v), worst, n_full, bound, top1, n_full);
    ck_assert_double_le(worst, bound);
    ck_assert_int_eq(top1, n_full);
    fclose(fp);
    free(ref);
    eng_batch_free(&b);
    json_decref(g);
    fx_close(&x);
}

START_TEST(test_logits_f32_close) { logits_vs_llamacpp(VAR_F32, "greedy_f32_logits0.f32", 2e-3); }
END_TEST
/* One layer of int8-quantized matmuls already shows a rounding flip now and
 * then (one of the three prompts: 0.09; the others 1e-5); a wrong op is off by
 * the size of the logits. */
START_TEST(test_logits_cut1_close) { logits_vs_llamacpp(VAR_CUT1, "cut1_logits0.f32", 0.25); }
END_TEST
/* Loose: see the header; a wrong op gives errors of the size of the logits. */
START_TEST(test_logits_q4_1_close) { logits_vs_llamacpp(VAR_Q4_1, "greedy_logits0.f32", 2.0); }
END_TEST

/* The lossless property everything else relies on: a row's result does not
 * depend on the other rows of its batch. */
START_TEST(test_batch_equals_sequential_bitwise) {
    struct fx x;
    fx_open(&x, 64);
    const int n_vocab = x.m->hp.n_vocab;
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = (int32_t)((i * 7919 + 13) % 40000 + 100);
    struct eng_batch b;
    ck_assert_int_eq(eng_batch_init(&b, 64, 64), 0);
    /* all 40 at once, logits for every row */
    x.kv.len[0] = 0;
    eng_batch_clear(&b);
    ck_assert_int_eq(eng_batch_add_causal(&b, 0, 0, ids, 40, false), 0);
    for (int r = 0; r < 40; r++) b.want_logits[r] = true;
    ck_assert_int_eq(eng_forward_run(&x.f, &b, &x.kv, NULL, 0), 0);
    ck_assert_int_eq(x.f.n_logits, 40);
    float *batched = malloc(sizeof(float) * (size_t)n_vocab * 40);
    memcpy(batched, x.f.logits, sizeof(float) * (size_t)n_vocab * 40);
    /* one at a time */
    x.kv.len[0] = 0;
    int mismatched_rows = 0;
    for (int r = 0; r < 40; r++) {
        step(&x, &b, ids[r]);
        if (memcmp(x.f.logits, batched + (size_t)r * n_vocab, sizeof(float) * (size_t)n_vocab) != 0) mismatched_rows++;
    }
    printf("row independence: %d of 40 rows differ between one batch and one row per pass\n", mismatched_rows);
    ck_assert_int_eq(mismatched_rows, 0);
    free(batched);
    eng_batch_free(&b);
    fx_close(&x);
}
END_TEST

/* A batch whose rows see only part of the group (a tree) gives each row the
 * same logits as the equivalent causal sequence: row 2 sees rows 0 and 2 but
 * not row 1, so it must equal the sequence (ids[0], ids[2]). */
START_TEST(test_visibility_mask_equals_sequence) {
    struct fx x;
    fx_open(&x, 8);
    const int n_vocab = x.m->hp.n_vocab;
    int32_t ids[3] = {504, 2685, 314};
    struct eng_batch b;
    ck_assert_int_eq(eng_batch_init(&b, 8, 8), 0);
    x.kv.len[0] = 0;
    eng_batch_clear(&b);
    ck_assert_int_eq(eng_batch_add_causal(&b, 0, 0, ids, 3, false), 0);
    b.vis[2 * b.vis_words] = 0x5;  /* row 2 sees rows 0 and 2 */
    b.pos[2] = 1;                   /* and sits at position 1, like row 1 */
    b.want_logits[2] = true;
    ck_assert_int_eq(eng_forward_run(&x.f, &b, &x.kv, NULL, 0), 0);
    float *tree = malloc(sizeof(float) * (size_t)n_vocab);
    memcpy(tree, x.f.logits, sizeof(float) * (size_t)n_vocab);
    x.kv.len[0] = 0;
    step(&x, &b, ids[0]);
    step(&x, &b, ids[2]);
    ck_assert_int_eq(memcmp(tree, x.f.logits, sizeof(float) * (size_t)n_vocab), 0);
    free(tree);
    eng_batch_free(&b);
    fx_close(&x);
}
END_TEST

/* The same with a tree of 8 rows over a committed prefix of 5, which takes the
 * grouped attention path (rows of one slot sharing K/V loads): row 3 sees rows
 * 0 and 3, row 7 sees rows 0, 3 and 7, at positions 5, 6, 7; so row 7 must equal
 * the sequence prefix + (t0, t3, t7), bit for bit. */
START_TEST(test_visibility_mask_grouped_path) {
    struct fx x;
    fx_open(&x, 16);
    const int n_vocab = x.m->hp.n_vocab;
    int32_t prefix[5] = {504, 2685, 314, 1100, 28}, tree[8] = {42, 77, 901, 3300, 12, 8, 640, 2000};
    struct eng_batch b;
    ck_assert_int_eq(eng_batch_init(&b, 16, 16), 0);
    prefill(&x, &b, prefix, 5);
    eng_batch_clear(&b);
    ck_assert_int_eq(eng_batch_add_causal(&b, 0, 5, tree, 8, false), 0);
    b.vis[3 * b.vis_words] = (1u << 0) | (1u << 3);
    b.vis[7 * b.vis_words] = (1u << 0) | (1u << 3) | (1u << 7);
    b.pos[3] = 6;
    b.pos[7] = 7;
    b.want_logits[7] = true;
    ck_assert_int_eq(eng_forward_run(&x.f, &b, &x.kv, NULL, 0), 0);
    float *t = malloc(sizeof(float) * (size_t)n_vocab);
    memcpy(t, x.f.logits, sizeof(float) * (size_t)n_vocab);
    prefill(&x, &b, prefix, 5);
    step(&x, &b, tree[0]);
    step(&x, &b, tree[3]);
    step(&x, &b, tree[7]);
    ck_assert_int_eq(memcmp(t, x.f.logits, sizeof(float) * (size_t)n_vocab), 0);
    free(t);
    eng_batch_free(&b);
    fx_close(&x);
}
END_TEST

START_TEST(test_bad_batch_rejected) {
    struct fx x;
    fx_open(&x, 4);
    struct eng_batch b;
    ck_assert_int_eq(eng_batch_init(&b, 8, 8), 0);
    int32_t ids[5] = {1, 2, 3, 4, 5};
    eng_batch_add_causal(&b, 0, 0, ids, 5, true);
    ck_assert_int_lt(eng_forward_run(&x.f, &b, &x.kv, NULL, 0), 0);   /* more rows than max_rows */
    eng_batch_clear(&b);
    int32_t bad = 1 << 20;
    eng_batch_add_causal(&b, 0, 0, &bad, 1, true);
    ck_assert_int_lt(eng_forward_run(&x.f, &b, &x.kv, NULL, 0), 0);   /* token id past the vocabulary */
    eng_batch_clear(&b);
    eng_batch_add_causal(&b, 0, 511, ids, 2, true);
    ck_assert_int_lt(eng_forward_run(&x.f, &b, &x.kv, NULL, 0), 0);   /* past the end of the cache */
    eng_batch_free(&b);
    fx_close(&x);
}
END_TEST

int main(void) {
    Suite *s = suite_create("forward");
    TCase *tc = tcase_create("forward");
    test_set_timeout(tc, 900);
    tcase_add_test(tc, test_bad_batch_rejected);
    tcase_add_test(tc, test_batch_equals_sequential_bitwise);
    tcase_add_test(tc, test_visibility_mask_equals_sequence);
    tcase_add_test(tc, test_visibility_mask_grouped_path);
    tcase_add_test(tc, test_logits_cut1_close);
    tcase_add_test(tc, test_logits_f32_close);
    tcase_add_test(tc, test_logits_q4_1_close);
    tcase_add_test(tc, test_greedy_f32_matches_llamacpp);
    tcase_add_test(tc, test_greedy_q4_1_vs_llamacpp);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}

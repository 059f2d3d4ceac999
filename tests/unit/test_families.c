/* test_families.c — every model family and RoPE variant against llama.cpp, on
 * tiny random-weight models (family_model.h).
 *
 * Golden data (tests/golden/gen_families.py): for each variant, the seed and
 * SHA-256 of its model file, llama.cpp's 64 greedy token ids for each of the
 * 24 golden prompts (greedy_f32.json's ids, so no tokenizer enters), the
 * logit of its token and the gap to its runner-up at every step, and the full
 * first-step logits of the longest prompt.  The seeds are chosen so that no
 * step of llama.cpp's decoding is a near tie (gap >= 1e-3), and the models are
 * F32, so float summation order is the only difference allowed: the tokens
 * must be identical, and the logits within 1e-3 of the logits' standard
 * deviation.
 * Also for each variant: one batch gives the same logits, bit for bit, as
 * one row per pass; and where a CUDA GPU exists, the CUDA backend follows the
 * CPU along llama.cpp's tokens (f16 weights: within 5% of the logits' spread).
 * The loader's refusals: an unknown architecture, an unsupported tensor type,
 * a family tensor missing, an unimplemented RoPE scaling, a rope_freqs tensor
 * of the wrong length; each error names what is wrong.
 *
 * `test_families --write PATH --variant NAME --seed N [--source GGUF]` writes
 * one model and prints its SHA-256 (the golden script makes the files so).
 */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/unit/common_test.h"
#include "tests/unit/family_model.h"

#include "engine/model/backend.h"
#include "engine/model/batch.h"
#include "engine/err.h"
#include "engine/model/forward.h"
#include "engine/load/gguf.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"
#include "engine/decode/generate.h"
#include "engine/ppd/ppd.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/ppd/ppd_tree.h"
#include "engine/load/tokenizer.h"

#define GOLDEN_DIR "tests/golden/data/"
#define GOLDEN_JSON GOLDEN_DIR "families.json"
#define REGEN_CMD "$(tests/golden/setup-venv.sh) tests/golden/gen_families.py"
#define MAX_PROMPT 256
#define MAX_GEN 128
#define MAX_SEQ 512
#define ERR_CAP 1024

/* Where the binary lives ($(BUILD)/tests/): generated models go to families/ beside it. */
static char out_dir[4096] = ".";

static const char *out_path(const char *name) {
    static char buf[4096 + 128];
    mkdir(out_dir, 0755);
    ck_assert_int_lt(snprintf(buf, sizeof buf, "%s/%s.gguf", out_dir, name), (int)sizeof buf);
    return buf;
}

static json_t *golden_load(void) {
    json_error_t je;
    json_t *g = json_load_file(GOLDEN_JSON, 0, &je);
    ck_assert_msg(g != NULL, "%s: %s (regenerate: %s)", GOLDEN_JSON, je.text, REGEN_CMD);
    return g;
}

static json_t *golden_variant(json_t *g, const char *name, int *index) {
    json_t *vs = json_object_get(g, "variants");
    for (size_t i = 0; i < json_array_size(vs); i++) {
        json_t *v = json_array_get(vs, i);
        if (!strcmp(json_string_value(json_object_get(v, "name")), name)) {
            *index = (int)i;
            return v;
        }
    }
    ck_abort_msg("%s has no variant '%s': regenerate the goldens (%s)", GOLDEN_JSON, name, REGEN_CMD);
    return NULL;
}

static int json_ids(json_t *arr, int32_t *out, int cap) {
    int n = (int)json_array_size(arr);
    ck_assert_int_le(n, cap);
    for (int i = 0; i < n; i++) out[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return n;
}

static double json_num(json_t *arr, int i) { return json_number_value(json_array_get(arr, (size_t)i)); }

/* Write the variant's model and check its bytes are the ones the goldens were made from. */
static const char *make_model(int variant, json_t *g, json_t *gv) {
    char err[ERR_CAP], hex[ENG_SHA256_HEX];
    const char *path = out_path(fam_variant_name(variant));
    const uint64_t seed = (uint64_t)json_integer_value(json_object_get(gv, "seed"));
    int rc = fam_model_write(test_model_path(), path, variant, seed, NULL, err, sizeof err);
    ck_assert_msg(rc == 0, "writing %s: %s", path, err);
    ck_assert_msg(fam_file_sha256(path, hex, err, sizeof err) == 0, "%s", err);
    const char *want = json_string_value(json_object_get(gv, "sha256"));
    if (strcmp(hex, want)) {
        char src_hex[ENG_SHA256_HEX];
        const char *src_want = json_string_value(json_object_get(g, "source_model_sha256"));
        ck_assert_msg(fam_file_sha256(test_model_path(), src_hex, err, sizeof err) == 0, "%s", err);
        ck_assert_msg(!strcmp(src_hex, src_want),
                      "%s: the tokenizer source %s is not the file the goldens were made from (SHA-256 %s, not %s)",
                      fam_variant_name(variant), test_model_path(), src_hex, src_want);
        ck_abort_msg("%s: the generator changed (SHA-256 %s, the goldens have %s): regenerate the goldens with: %s",
                     fam_variant_name(variant), hex, want, REGEN_CMD);
    }
    return path;
}


struct fx {
    struct eng_backend be;
    struct eng_model *m;
    struct eng_kv kv;
    struct eng_forward f;
    struct eng_batch b;
};

static void fx_open_on(struct fx *x, const char *path, const char *what, int cuda) {
    char err[ERR_CAP];
    if (cuda) ck_assert_msg(eng_backend_cuda_init(&x->be, 0, err, sizeof err) == 0, "CUDA: %s", err);
    else ck_assert_int_eq(eng_backend_cpu_init(&x->be, 2), 0);
    int rc = eng_model_load(&x->m, path, &x->be, err, sizeof err);
    ck_assert_msg(rc == 0, "%s: ppd cannot load it: %s", what, err);
    const struct eng_hparams *hp = &x->m->hp;
    ck_assert_int_eq(eng_kv_init(&x->kv, &x->be, hp->n_layer, 1, MAX_SEQ, hp->n_head_kv * hp->head_dim), 0);
    ck_assert_int_eq(eng_forward_init(&x->f, x->m, MAX_PROMPT), 0);
    ck_assert_int_eq(eng_batch_init(&x->b, MAX_PROMPT, MAX_PROMPT), 0);
}

static void fx_open(struct fx *x, const char *path, const char *what) { fx_open_on(x, path, what, 0); }

static void fx_close(struct fx *x) {
    eng_batch_free(&x->b);
    eng_forward_free(&x->f);
    eng_kv_free(&x->kv);
    eng_model_free(x->m);
    eng_backend_free(&x->be);
}

static void prefill(struct fx *x, const int32_t *ids, int n) {
    x->kv.len[0] = 0;
    eng_batch_clear(&x->b);
    ck_assert_int_eq(eng_batch_add_causal(&x->b, 0, 0, ids, n, true), 0);
    ck_assert_int_eq(eng_forward_run(&x->f, &x->b, &x->kv, NULL, 0), 0);
    x->kv.len[0] = n;
}

static void step(struct fx *x, int32_t id) {
    eng_batch_clear(&x->b);
    ck_assert_int_eq(eng_batch_add_causal(&x->b, 0, x->kv.len[0], &id, 1, true), 0);
    ck_assert_int_eq(eng_forward_run(&x->f, &x->b, &x->kv, NULL, 0), 0);
    x->kv.len[0] += 1;
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* The model of a variant: the golden variants' bytes are checked against the
 * goldens; llama-swa has no llama.cpp goldens and is written from a fixed
 * seed (its reference is computed here, from the file). */
#define SWA_SEED 5
static const char *model_for(int variant, json_t *g, json_t **gv, int *vi) {
    if (variant >= FAM_N_LLAMACPP) {
        char err[ERR_CAP];
        const char *path = out_path(fam_variant_name(variant));
        const int rc = fam_model_write(test_model_path(), path, variant, SWA_SEED, NULL, err, sizeof err);
        ck_assert_msg(rc == 0, "writing %s: %s", path, err);
        *gv = NULL;
        *vi = -1;
        return path;
    }
    *gv = golden_variant(g, fam_variant_name(variant), vi);
    return make_model(variant, g, *gv);
}

/* ---- a float64 reference of the llama forward pass with a sliding window ----
 * Written from the definitions, sharing nothing with the engine but the GGUF
 * reader: weights straight from the F32 tensors, every sum in double, plain
 * (interleaved-pair) RoPE, row p attending to the positions j with
 * p - window < j <= p (window 0: all j <= p). */
struct swa_ref {
    const struct gguf_file *g;
    int n_embd, n_layer, n_head, n_head_kv, hd, n_ff, n_vocab, window, n;
    double base, eps;
    double *k, *v;      /* [n_layer][MAX_SEQ][kv_dim] */
};

static const float *swa_t(const struct swa_ref *r, const char *name, int layer) {
    char nm[96];
    if (layer >= 0) snprintf(nm, sizeof nm, "blk.%d.%s", layer, name);
    else snprintf(nm, sizeof nm, "%s", name);
    const struct gguf_tensor *t = gguf_find_tensor(r->g, nm);
    ck_assert_msg(t && t->type == 0, "reference: tensor %s is not F32", nm);
    return t->data;
}

static void swa_norm(const double *x, const float *w, int n, double eps, double *out) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    const double s = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * s * w[i];
}

/* out[o] = sum_i W[o][i] x[i], W of n_out rows of n_in. */
static void swa_mv(const float *w, const double *x, int n_in, int n_out, double *out) {
    for (int o = 0; o < n_out; o++) {
        double s = 0;
        for (int i = 0; i < n_in; i++) s += (double)w[(size_t)o * n_in + i] * x[i];
        out[o] = s;
    }
}

static void swa_rope(double *x, int n_heads, int hd, int pos, double base) {
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < hd; i += 2) {
            const double th = pos * pow(base, -(double)i / hd), c = cos(th), s = sin(th);
            double *p = x + h * hd + i;
            const double a = p[0], b = p[1];
            p[0] = a * c - b * s;
            p[1] = a * s + b * c;
        }
}

/* Feed token `id` at position r->n; logits (when not NULL) of that position. */
static void swa_ref_step(struct swa_ref *r, int32_t id, double *logits) {
    const int E = r->n_embd, HD = r->hd, QD = r->n_head * HD, KV = r->n_head_kv * HD, F = r->n_ff, p = r->n;
    double x[256], xn[256], q[256], att[256], gate[512], up[512], tmp[256], sc[MAX_SEQ];
    ck_assert(E <= 256 && QD <= 256 && F <= 512 && p < MAX_SEQ);
    const float *emb = swa_t(r, "token_embd.weight", -1);
    for (int i = 0; i < E; i++) x[i] = emb[(size_t)id * E + i];
    for (int l = 0; l < r->n_layer; l++) {
        double *kl = r->k + (size_t)l * MAX_SEQ * KV, *vl = r->v + (size_t)l * MAX_SEQ * KV;
        swa_norm(x, swa_t(r, "attn_norm.weight", l), E, r->eps, xn);
        swa_mv(swa_t(r, "attn_q.weight", l), xn, E, QD, q);
        swa_mv(swa_t(r, "attn_k.weight", l), xn, E, KV, kl + (size_t)p * KV);
        swa_mv(swa_t(r, "attn_v.weight", l), xn, E, KV, vl + (size_t)p * KV);
        swa_rope(q, r->n_head, HD, p, r->base);
        swa_rope(kl + (size_t)p * KV, r->n_head_kv, HD, p, r->base);
        const int j0 = r->window > 0 && p - r->window + 1 > 0 ? p - r->window + 1 : 0;
        for (int h = 0; h < r->n_head; h++) {
            const int g = h / (r->n_head / r->n_head_kv);
            double m = -INFINITY, sum = 0;
            for (int j = j0; j <= p; j++) {
                double d = 0;
                for (int i = 0; i < HD; i++) d += q[h * HD + i] * kl[(size_t)j * KV + g * HD + i];
                sc[j] = d / sqrt((double)HD);
                if (sc[j] > m) m = sc[j];
            }
            for (int j = j0; j <= p; j++) sum += (sc[j] = exp(sc[j] - m));
            for (int i = 0; i < HD; i++) {
                double a = 0;
                for (int j = j0; j <= p; j++) a += sc[j] / sum * vl[(size_t)j * KV + g * HD + i];
                att[h * HD + i] = a;
            }
        }
        swa_mv(swa_t(r, "attn_output.weight", l), att, QD, E, tmp);
        for (int i = 0; i < E; i++) x[i] += tmp[i];
        swa_norm(x, swa_t(r, "ffn_norm.weight", l), E, r->eps, xn);
        swa_mv(swa_t(r, "ffn_gate.weight", l), xn, E, F, gate);
        swa_mv(swa_t(r, "ffn_up.weight", l), xn, E, F, up);
        for (int i = 0; i < F; i++) gate[i] = gate[i] / (1.0 + exp(-gate[i])) * up[i];
        swa_mv(swa_t(r, "ffn_down.weight", l), gate, F, E, tmp);
        for (int i = 0; i < E; i++) x[i] += tmp[i];
    }
    r->n++;
    if (!logits) return;
    swa_norm(x, swa_t(r, "output_norm.weight", -1), E, r->eps, xn);
    swa_mv(emb, xn, E, r->n_vocab, logits);   /* tied output */
}

static void swa_ref_init(struct swa_ref *r, const struct eng_model *m, int window) {
    const struct eng_hparams *hp = &m->hp;
    *r = (struct swa_ref){.g = m->gguf, .n_embd = hp->n_embd, .n_layer = hp->n_layer, .n_head = hp->n_head,
                          .n_head_kv = hp->n_head_kv, .hd = hp->head_dim, .n_ff = hp->n_ff, .n_vocab = hp->n_vocab,
                          .window = window, .base = hp->rope_freq_base, .eps = hp->rms_eps};
    const size_t kv = (size_t)hp->n_layer * MAX_SEQ * hp->n_head_kv * hp->head_dim;
    r->k = calloc(kv, sizeof(double));
    r->v = calloc(kv, sizeof(double));
    ck_assert(r->k && r->v);
}

static void swa_ref_free(struct swa_ref *r) { free(r->k); free(r->v); }

/* llama-swa: ppd's greedy tokens and logits along 4 golden prompts x 32
 * tokens against the float64 reference with the window the file declares
 * (read here from the metadata, not from the loader): identical tokens, and
 * every step's logits within 1e-3 of their standard deviation.  The window
 * must matter: the same reference without it differs by far more. */
START_TEST(test_window_matches_reference) {
    const int variant = FAM_LLAMA_SWA;
    const char *name = fam_variant_name(variant);
    json_t *g = golden_load(), *gv;
    int vi;
    const char *path = model_for(variant, g, &gv, &vi);
    struct fx x;
    fx_open(&x, path, name);
    char err[ERR_CAP];
    uint32_t window = 0;
    ck_assert_msg(gguf_get_u32(x.m->gguf, "llama.attention.sliding_window", &window, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq((int)window, FAM_SWA_WINDOW);
    const int n_vocab = x.m->hp.n_vocab;
    double *ref = malloc(sizeof(double) * (size_t)n_vocab), *full = malloc(sizeof(double) * (size_t)n_vocab);
    ck_assert(ref && full);
    enum { N_PROMPTS = 4, N_GEN = 32 };
    int identical = 0;
    double worst = 0, worst_rel = 0, full_diff = 0, min_gap = INFINITY;
    for (int c = 0; c < N_PROMPTS; c++) {
        int32_t ids[MAX_PROMPT];
        const int np = json_ids(json_array_get(json_object_get(g, "prompts"), (size_t)c), ids, MAX_PROMPT);
        struct swa_ref r, rf;
        swa_ref_init(&r, x.m, (int)window);
        swa_ref_init(&rf, x.m, 0);
        for (int i = 0; i < np; i++) {
            swa_ref_step(&r, ids[i], i + 1 == np ? ref : NULL);
            swa_ref_step(&rf, ids[i], i + 1 == np ? full : NULL);
        }
        prefill(&x, ids, np);
        int s = 0;
        for (; s < N_GEN; s++) {
            double sum = 0, sum2 = 0, d = 0, df = 0;
            for (int i = 0; i < n_vocab; i++) {
                sum += ref[i], sum2 += ref[i] * ref[i];
                const double e = fabs(x.f.logits[i] - ref[i]), ef = fabs(full[i] - ref[i]);
                if (e > d || isnan(e)) d = isnan(e) ? INFINITY : e;
                if (ef > df) df = ef;
            }
            const double sd = sqrt(sum2 / n_vocab - (sum / n_vocab) * (sum / n_vocab));
            if (d > worst) worst = d;
            if (d / sd > worst_rel) worst_rel = d / sd;
            if (df / sd > full_diff) full_diff = df / sd;
            int best = 0, second = -1;
            for (int i = 1; i < n_vocab; i++)
                if (ref[i] > ref[best]) second = best, best = i;
                else if (second < 0 || ref[i] > ref[second]) second = i;
            if (ref[best] - ref[second] < min_gap) min_gap = ref[best] - ref[second];
            const int got = argmax(x.f.logits, n_vocab);
            if (got != best) {
                printf("families %s: prompt %d diverges at step %d (position %d): reference %d (%.3e above its "
                       "runner-up), ppd %d\n", name, c, s, np + s, best, ref[best] - ref[second], got);
                break;
            }
            if (s + 1 < N_GEN) {
                step(&x, got);
                swa_ref_step(&r, got, ref);
                swa_ref_step(&rf, got, full);
            }
        }
        identical += s == N_GEN;
        swa_ref_free(&r);
        swa_ref_free(&rf);
    }
    printf("families %s (window %u): %d/%d prompts identical to the float64 reference for %d tokens; max |ppd - "
           "reference| = %.3e (%.2e of the logits' sd, bound 1e-3); smallest top-2 gap %.3e; the reference without "
           "the window differs by %.2f sd\n", name, window, identical, N_PROMPTS, N_GEN, worst, worst_rel, min_gap,
           full_diff);
    free(ref);
    free(full);
    fx_close(&x);
    json_decref(g);
    ck_assert_msg(worst_rel <= 1e-3, "%s: logits %.2e sd from the reference", name, worst_rel);
    ck_assert_int_eq(identical, N_PROMPTS);
    ck_assert_msg(full_diff > 0.1, "%s: the window changes nothing (%.2e sd)", name, full_diff);
}
END_TEST

/* The first-step logits of the golden's logits prompt against llama.cpp's:
 * returns the max absolute difference and sets *sd to the reference's
 * standard deviation. */
static double first_logits_diff(struct fx *x, json_t *g, int vi, int prompt, double *sd) {
    const int n_vocab = x->m->hp.n_vocab;
    char path[512];
    snprintf(path, sizeof path, GOLDEN_DIR "%s", json_string_value(json_object_get(g, "logits_file")));
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    float *ref = malloc(sizeof(float) * (size_t)n_vocab);
    ck_assert_ptr_nonnull(ref);
    ck_assert_int_eq(fseek(fp, (long)vi * n_vocab * (long)sizeof(float), SEEK_SET), 0);
    ck_assert_int_eq((int)fread(ref, sizeof(float), (size_t)n_vocab, fp), n_vocab);
    fclose(fp);
    int32_t ids[MAX_PROMPT];
    const int n = json_ids(json_array_get(json_object_get(g, "prompts"), (size_t)prompt), ids, MAX_PROMPT);
    prefill(x, ids, n);
    double maxd = 0, sum = 0, sum2 = 0;
    for (int i = 0; i < n_vocab; i++) {
        const double d = fabs((double)x->f.logits[i] - ref[i]);
        if (d > maxd || isnan(d)) maxd = isnan(d) ? INFINITY : d;
        sum += ref[i];
        sum2 += (double)ref[i] * ref[i];
    }
    *sd = sqrt(sum2 / n_vocab - (sum / n_vocab) * (sum / n_vocab));
    free(ref);
    return maxd;
}

START_TEST(test_variant_matches_llamacpp) {
    const int variant = _i;
    const char *name = fam_variant_name(variant);
    json_t *g = golden_load();
    int vi;
    json_t *gv = golden_variant(g, name, &vi);
    const char *path = make_model(variant, g, gv);
    struct fx x;
    fx_open(&x, path, name);
    const int n_vocab = x.m->hp.n_vocab;

    double sd;
    const int logits_prompt = (int)json_integer_value(json_object_get(g, "logits_prompt"));
    const double logits_diff = first_logits_diff(&x, g, vi, logits_prompt, &sd);
    const double bound = 1e-3 * sd;

    json_t *prompts = json_object_get(g, "prompts"), *gens = json_object_get(gv, "gen");
    json_t *tops = json_object_get(gv, "top_logit"), *gaps = json_object_get(gv, "gap");
    ck_assert_int_eq((int)json_array_size(prompts), 24);
    ck_assert_int_eq((int)json_array_size(gens), 24);
    /* every prompt; under the sanitizers (PPD_TEST_GOLDEN_CASES=1) and on the plain C path fewer */
    int n_prompts = test_case_count("PPD_TEST_GOLDEN_CASES", 24);
    if (n_prompts < 1 || n_prompts > 24) n_prompts = 24;
    int identical = 0, tokens_equal = 0, tokens_total = 0;
    double step_diff = 0;
    for (int c = 0; c < n_prompts; c++) {
        int32_t ids[MAX_PROMPT], want[MAX_GEN];
        const int np = json_ids(json_array_get(prompts, (size_t)c), ids, MAX_PROMPT);
        const int ng = json_ids(json_array_get(gens, (size_t)c), want, MAX_GEN);
        json_t *top = json_array_get(tops, (size_t)c), *gap = json_array_get(gaps, (size_t)c);
        prefill(&x, ids, np);
        int s = 0;
        for (; s < ng; s++) {
            const float *lg = x.f.logits;
            const int got = argmax(lg, n_vocab);
            const double d = fabs(lg[want[s]] - json_num(top, s));
            if (d > step_diff || isnan(d)) step_diff = isnan(d) ? INFINITY : d;
            if (got != want[s]) {
                printf("families %s: prompt %d diverges at step %d (position %d): llama.cpp %d (logit %.5f, %.5f "
                       "above its runner-up), ppd %d; ppd's logits: %d -> %.5f, %d -> %.5f\n",
                       name, c, s, np + s, want[s], json_num(top, s), json_num(gap, s), got, want[s], lg[want[s]],
                       got, lg[got]);
                break;
            }
            tokens_equal++;
            if (s + 1 < ng) step(&x, got);
        }
        tokens_total += ng;
        identical += s == ng;
    }
    printf("families %s: %d/%d prompts identical to llama.cpp for 64 tokens (%d/%d tokens before a divergence); "
           "first-step logits of prompt %d: max |ppd - llama.cpp| = %.3e (logit sd %.3f, bound %.1e); "
           "llama.cpp's token at every step compared: max |ppd - llama.cpp| = %.3e\n",
           name, identical, n_prompts, tokens_equal, tokens_total, logits_prompt, logits_diff, sd, bound, step_diff);
    fx_close(&x);
    json_decref(g);
    ck_assert_msg(logits_diff <= bound, "%s: first-step logits %.3e from llama.cpp's (bound %.1e)", name,
                  logits_diff, bound);
    ck_assert_msg(identical == n_prompts, "%s: %d of %d prompts diverge from llama.cpp", name, n_prompts - identical,
                  n_prompts);
    ck_assert_msg(step_diff <= bound, "%s: a step's logit is %.3e from llama.cpp's (bound %.1e)", name, step_diff,
                  bound);
}
END_TEST

/* What PPD's losslessness rests on, for each family's own operations too: a
 * row's logits do not depend on the other rows of its batch, bit for bit
 * (a prompt in two chunks against one row per pass). */
START_TEST(test_variant_batch_equals_sequential) {
    const int variant = _i;
    const char *name = fam_variant_name(variant);
    json_t *g = golden_load(), *gv;
    int vi;
    const char *path = model_for(variant, g, &gv, &vi);
    struct fx x;
    fx_open(&x, path, name);
    const int n_vocab = x.m->hp.n_vocab;
    int32_t ids[MAX_PROMPT];
    const int n = json_ids(json_array_get(json_object_get(g, "prompts"), 0), ids, MAX_PROMPT);
    float *batched = malloc(sizeof(float) * (size_t)n_vocab * (size_t)n);
    ck_assert_ptr_nonnull(batched);
    /* two chunks: the second over a committed prefix, as prefill runs */
    x.kv.len[0] = 0;
    for (int c0 = 0, c1; c0 < n; c0 = c1) {
        c1 = c0 ? n : n / 3;
        eng_batch_clear(&x.b);
        ck_assert_int_eq(eng_batch_add_causal(&x.b, 0, c0, ids + c0, c1 - c0, false), 0);
        for (int r = 0; r < c1 - c0; r++) x.b.want_logits[r] = true;
        ck_assert_int_eq(eng_forward_run(&x.f, &x.b, &x.kv, NULL, 0), 0);
        ck_assert_int_eq(x.f.n_logits, c1 - c0);
        memcpy(batched + (size_t)c0 * n_vocab, x.f.logits, sizeof(float) * (size_t)n_vocab * (size_t)(c1 - c0));
        x.kv.len[0] = c1;
    }
    x.kv.len[0] = 0;
    int differ = 0;
    for (int r = 0; r < n; r++) {
        step(&x, ids[r]);
        differ += memcmp(x.f.logits, batched + (size_t)r * n_vocab, sizeof(float) * (size_t)n_vocab) != 0;
    }
    printf("families %s: %d of %d rows differ between one batch and one row per pass\n", name, differ, n);
    free(batched);
    fx_close(&x);
    json_decref(g);
    ck_assert_int_eq(differ, 0);
}
END_TEST

/* PPD on each family: an adapter initialised from the model's own embeddings
 * (as `ppd adapter init` makes it), a 20-row tree, and guesses that follow
 * plain decoding's own continuation (so long runs are accepted and the
 * family's operations run on many-row tree steps): PPD's tokens equal plain
 * decoding's, greedy and seeded sampling, on 4 prompts x 48 tokens. */
static const double fam_acc[30] = {
    0.48335, 0.14342, 0.0736, 0.0454, 0.03087, 0.02155, 0.01658, 0.01323, 0.00932, 0.00845,
    0.26256, 0.14561, 0.08114, 0.0576, 0.04283, 0.0323, 0.0257, 0.02152, 0.01903, 0.0155,
    0.16413, 0.11756, 0.08092, 0.05784, 0.04586, 0.03672, 0.03128, 0.02317, 0.02372, 0.01789};

struct fam_oracle { const int32_t *ids; int n; };

/* The token t places after the root goes to rank (n_emitted + t) % 3 of prompt token t. */
static void fam_oracle_guess(void *user, int32_t *cand, int d, int K, int n_emitted) {
    const struct fam_oracle *o = user;
    for (int t = 1; t <= d; t++) {
        const int at = n_emitted - 1 + t;
        if (at >= o->n) continue;
        const int rank = (n_emitted + t) % 3;
        int32_t *row = cand + 1 + (size_t)K * (t - 1);
        for (int r = 0; r < K; r++)
            if (row[r] == o->ids[at]) row[r] = row[rank];
        row[rank] = o->ids[at];
    }
}

START_TEST(test_variant_ppd_lossless) {
    const int variant = _i;
    const char *name = fam_variant_name(variant);
    json_t *g = golden_load(), *gv;
    int vi;
    const char *path = model_for(variant, g, &gv, &vi);
    struct fx x;
    fx_open(&x, path, name);
    char err[ERR_CAP];
    struct tok *tk = NULL;
    struct eng_ppd_adapter *ad = NULL;
    struct eng_ppd_tree_family *fam = NULL;
    struct eng_ppd ppd;
    ck_assert_msg(tok_load(&tk, x.m->gguf, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(eng_ppd_adapter_init_text(&ad, x.m, tk, 3, 10, ENG_PPD_INIT_TEXT, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(eng_ppd_tree_build(&fam, fam_acc, 3, 10, 20, NULL), 0);
    ck_assert_msg(eng_ppd_init(&ppd, ad, fam, err, sizeof err) == 0, "%s", err);
    enum { N_GEN = 48, N_PROMPTS = 4 };
    int32_t ids[MAX_PROMPT], plain[N_GEN], out[N_GEN];
    long accepted = 0, steps = 0;
    for (int temp_i = 0; temp_i < 2; temp_i++) {
        for (int c = 0; c < N_PROMPTS; c++) {
            const int n = json_ids(json_array_get(json_object_get(g, "prompts"), (size_t)c), ids, MAX_PROMPT);
            struct eng_gen_params gp = {.n_predict = N_GEN, .ignore_eog = true};
            eng_sampler_params_default(&gp.sp);
            gp.sp.temperature = temp_i ? 0.8f : 0.0f;
            gp.sp.seed = 77 + (uint64_t)c;
            struct eng_gen_stats ps;
            ck_assert_int_eq(eng_generate(&x.f, &x.kv, 0, tk, ids, n, &gp, NULL, NULL, plain, &ps), 0);
            struct fam_oracle o = {plain, ps.n_gen};
            struct eng_ppd_gen_opts opts = {.accept = ENG_PPD_ACCEPT_EXACT, .guess_fn = fam_oracle_guess, .guess_user = &o};
            struct eng_ppd_gen_stats qs;
            ck_assert_int_eq(eng_ppd_generate(&x.f, &x.kv, 0, tk, &ppd, ids, n, &gp, NULL, NULL, out, NULL, &qs, &opts), 0);
            int i = 0;
            while (i < ps.n_gen && i < qs.gen.n_gen && plain[i] == out[i]) i++;
            ck_assert_msg(ps.n_gen == qs.gen.n_gen && i == ps.n_gen,
                          "%s, temp %.1f, prompt %d: plain %d tokens, PPD %d, first difference at %d", name,
                          gp.sp.temperature, c, ps.n_gen, qs.gen.n_gen, i);
            for (int a = 0; a < ENG_PPD_MAX_PROMPT + 2; a++) { accepted += (long)a * qs.hist[a]; steps += qs.hist[a]; }
        }
    }
    printf("families %s: PPD equals plain decoding on %d prompts x %d tokens, greedy and sampled; %.2f tokens per step\n",
           name, N_PROMPTS, N_GEN, (double)accepted / (double)steps);
    ck_assert((double)accepted / (double)steps > 1.8);   /* the guesses really ran multi-token tree steps */
    eng_ppd_free(&ppd);
    eng_ppd_tree_family_free(fam);
    eng_ppd_adapter_free(ad);
    tok_free(tk);
    fx_close(&x);
    json_decref(g);
}
END_TEST

/* The CUDA backend (f16 weights and matmul inputs, so not bit-comparable)
 * against the CPU along llama.cpp's own continuation of every prompt: at each
 * step the logits within 5% of their standard deviation of the CPU's, where a
 * wrong RoPE, bias or head norm moves them by about their whole spread, and
 * the same top token wherever llama.cpp's top-2 gap is wider than twice that.
 * Without a CUDA GPU there is nothing to compare and the test says so. */
START_TEST(test_variant_cuda_matches_cpu) {
    const int variant = _i;
    const char *name = fam_variant_name(variant);
    if (!eng_backend_cuda_built() || eng_backend_cuda_count() < 1) {
        printf("families %s: CUDA: not compared (%s)\n", name,
               eng_backend_cuda_built() ? "no CUDA GPU" : "a build without the CUDA backend");
        return;
    }
    json_t *g = golden_load(), *gv;
    int vi;
    const char *path = model_for(variant, g, &gv, &vi);
    struct fx cpu, gpu;
    fx_open_on(&cpu, path, name, 0);
    fx_open_on(&gpu, path, name, 1);
    const int n_vocab = cpu.m->hp.n_vocab;
    json_t *prompts = json_object_get(g, "prompts"), *gens = gv ? json_object_get(gv, "gen") : NULL;
    json_t *gaps = gv ? json_object_get(gv, "gap") : NULL;
    /* llama-swa has no llama.cpp goldens: the CPU's own greedy tokens, gaps
     * and spread (its first step's) take their place */
    double bound = gv ? 0.05 * json_number_value(json_object_get(gv, "logit_sd")) : 0;
    double worst = 0;
    int top_same = 0, top_checked = 0, top_wrong = 0;
    for (int c = 0; c < (int)json_array_size(prompts); c++) {
        int32_t ids[MAX_PROMPT], want[MAX_GEN];
        const int np = json_ids(json_array_get(prompts, (size_t)c), ids, MAX_PROMPT);
        const int ng = gv ? json_ids(json_array_get(gens, (size_t)c), want, MAX_GEN) : 64;
        prefill(&cpu, ids, np);
        prefill(&gpu, ids, np);
        if (!gv && c == 0) {
            double sum = 0, sum2 = 0;
            for (int i = 0; i < n_vocab; i++) sum += cpu.f.logits[i], sum2 += (double)cpu.f.logits[i] * cpu.f.logits[i];
            bound = 0.05 * sqrt(sum2 / n_vocab - (sum / n_vocab) * (sum / n_vocab));
        }
        for (int s = 0; s < ng; s++) {
            double gap_s = INFINITY;
            if (gv) {
                gap_s = json_num(json_array_get(gaps, (size_t)c), s);
            } else {
                const float *lg = cpu.f.logits;
                int best = argmax(lg, n_vocab), second = best ? 0 : 1;
                for (int i = 0; i < n_vocab; i++)
                    if (i != best && lg[i] > lg[second]) second = i;
                want[s] = best;
                gap_s = lg[best] - lg[second];
            }
            double d = 0;
            for (int i = 0; i < n_vocab; i++) {
                const double e = fabs((double)gpu.f.logits[i] - cpu.f.logits[i]);
                if (e > d || isnan(e)) d = isnan(e) ? INFINITY : e;
            }
            if (d > worst) worst = d;
            const int top = argmax(gpu.f.logits, n_vocab);
            top_same += top == want[s];
            if (gap_s > 2 * bound) {
                top_checked++;
                if (top != want[s]) {
                    if (!top_wrong++)
                        printf("families %s: CUDA: prompt %d step %d: top token %d, the reference's %d (gap %.4f)\n",
                               name, c, s, top, want[s], gap_s);
                }
            }
            if (s + 1 < ng) {
                step(&cpu, want[s]);
                step(&gpu, want[s]);
            }
        }
    }
    printf("families %s: CUDA vs CPU along %s tokens: max |cuda - cpu| = %.3e (bound %.2e); top token = "
           "the reference's at %d steps, differs at %d of the %d steps with a gap over %.2e\n",
           name, gv ? "llama.cpp's" : "the CPU's greedy", worst, bound, top_same, top_wrong, top_checked, 2 * bound);
    fx_close(&gpu);
    fx_close(&cpu);
    json_decref(g);
    ck_assert_msg(worst <= bound, "%s: CUDA logits %.3e from the CPU's (bound %.2e)", name, worst, bound);
    ck_assert_int_eq(top_wrong, 0);
}
END_TEST

/* Load a defective variant: expect code `want` and an error naming each of needles[]. */
static void expect_refusal(int variant, const struct fam_defect *d, const char *patch_tensor, uint32_t patch_type,
                           int want, const char *const *needles) {
    char err[ERR_CAP], name[128];
    snprintf(name, sizeof name, "defect-%s-%s", fam_variant_name(variant), needles[0]);
    for (char *p = name; *p; p++)
        if (*p == '/' || *p == ' ') *p = '_';
    const char *path = out_path(name);
    ck_assert_msg(fam_model_write(test_model_path(), path, variant, 1, d, err, sizeof err) == 0, "%s", err);
    if (patch_tensor)
        ck_assert_msg(fam_patch_tensor_type(path, patch_tensor, patch_type, err, sizeof err) == 0, "%s", err);
    struct eng_backend be;
    struct eng_model *m = NULL;
    ck_assert_int_eq(eng_backend_cpu_init(&be, 1), 0);
    err[0] = 0;
    const int rc = eng_model_load(&m, path, &be, err, sizeof err);
    printf("families: %s: %s (%s)\n", name, err, eng_err_name(rc));
    eng_model_free(m);
    eng_backend_free(&be);
    ck_assert_msg(rc == want, "%s: eng_model_load returned %s, expected %s (%s)", name, eng_err_name(rc),
                  eng_err_name(want), err);
    for (int i = 0; needles[i]; i++)
        ck_assert_msg(strstr(err, needles[i]), "%s: the error does not name '%s': %s", name, needles[i], err);
    remove(path);
}

START_TEST(test_unknown_architecture_refused) {
    const struct fam_defect d = {.arch = "gemma"};
    expect_refusal(FAM_LLAMA, &d, NULL, 0, ENG_E_UNSUPPORTED, (const char *const[]){"gemma", NULL});
}
END_TEST

/* Types GGUF files use that ppd has no kernels for, in a family other than llama. */
START_TEST(test_unsupported_tensor_type_refused) {
    expect_refusal(FAM_QWEN3, &(struct fam_defect){0}, "blk.1.ffn_down.weight", 16, ENG_E_UNSUPPORTED,
                   (const char *const[]){"blk.1.ffn_down.weight", "IQ2_XXS", NULL});
    expect_refusal(FAM_QWEN2, &(struct fam_defect){0}, "blk.0.attn_q.weight", 35, ENG_E_UNSUPPORTED,
                   (const char *const[]){"blk.0.attn_q.weight", "TQ2_0", NULL});
}
END_TEST

/* A family's own tensors are required: without them the model computes
 * something else. */
START_TEST(test_missing_family_tensor_refused) {
    expect_refusal(FAM_QWEN2, &(struct fam_defect){.omit_tensor = "blk.1.attn_v.bias"}, NULL, 0, ENG_E_FORMAT,
                   (const char *const[]){"blk.1.attn_v.bias", NULL});
    expect_refusal(FAM_QWEN3, &(struct fam_defect){.omit_tensor = "blk.0.attn_k_norm.weight"}, NULL, 0, ENG_E_FORMAT,
                   (const char *const[]){"blk.0.attn_k_norm.weight", NULL});
}
END_TEST

/* A scaling ppd does not implement must stop the load rather than be ignored. */
START_TEST(test_unknown_rope_scaling_refused) {
    expect_refusal(FAM_LLAMA_LINEAR, &(struct fam_defect){.scaling_type = "longrope"}, NULL, 0, ENG_E_UNSUPPORTED,
                   (const char *const[]){"longrope", NULL});
}
END_TEST

START_TEST(test_bad_rope_freqs_refused) {
    expect_refusal(FAM_LLAMA3_ROPE, &(struct fam_defect){.rope_freqs_extra = 1}, NULL, 0, ENG_E_FORMAT,
                   (const char *const[]){"rope_freqs.weight", NULL});
}
END_TEST

/* --write PATH --variant NAME --seed N [--source GGUF] */
static int write_main(int argc, char **argv) {
    const char *path = NULL, *vname = NULL, *src = test_model_path();
    unsigned long long seed = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--write")) path = argv[i + 1];
        else if (!strcmp(argv[i], "--variant")) vname = argv[i + 1];
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--source")) src = argv[i + 1];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    const int v = vname ? fam_variant_by_name(vname) : -1;
    if (!path || v < 0) {
        fprintf(stderr, "usage: %s --write PATH --variant NAME --seed N [--source GGUF]\n", argv[0]);
        return 2;
    }
    char err[ERR_CAP], hex[ENG_SHA256_HEX];
    if (fam_model_write(src, path, v, seed, NULL, err, sizeof err) || fam_file_sha256(path, hex, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("%s  %s\n", hex, path);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--write")) return write_main(argc, argv);
    const char *slash = strrchr(argv[0], '/');
    if (slash) snprintf(out_dir, sizeof out_dir, "%.*s/families", (int)(slash - argv[0]), argv[0]);
    else snprintf(out_dir, sizeof out_dir, "families");
    Suite *s = suite_create("families");
    TCase *tc = tcase_create("llama.cpp");
    test_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_variant_matches_llamacpp, 0, FAM_N_LLAMACPP);
    tcase_add_test(tc, test_window_matches_reference);
    tcase_add_loop_test(tc, test_variant_batch_equals_sequential, 0, FAM_N_VARIANTS);
    tcase_add_loop_test(tc, test_variant_ppd_lossless, 0, FAM_N_VARIANTS);
    tcase_add_loop_test(tc, test_variant_cuda_matches_cpu, 0, FAM_N_VARIANTS);
    suite_add_tcase(s, tc);
    TCase *te = tcase_create("refusals");
    test_set_timeout(te, 120);
    tcase_add_test(te, test_unknown_architecture_refused);
    tcase_add_test(te, test_unsupported_tensor_type_refused);
    tcase_add_test(te, test_missing_family_tensor_refused);
    tcase_add_test(te, test_unknown_rope_scaling_refused);
    tcase_add_test(te, test_bad_rope_freqs_refused);
    suite_add_tcase(s, te);
    return test_run_suite(s);
}

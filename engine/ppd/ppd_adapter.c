/* ppd_adapter.c — reading, writing and text-initialising PPD adapter files
 * (ppd_adapter.h).  Every field is validated before use; a bad file is an
 * error naming the file and the field, never a crash. */
#include "engine/ppd/ppd_adapter.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine/err.h"
#include "engine/load/gguf.h"
#include "engine/model/model.h"
#include "engine/load/tokenizer.h"

#define ADAPTER_KQ_F32 0   /* enum kq_type's F32: the only tensor type an adapter holds */

void eng_ppd_adapter_free(struct eng_ppd_adapter *a) {
    if (!a) return;
    free(a->emb);
    free(a->accuracy);
    free(a->joint);
    free(a->deep);
    free(a);
}

static void adapter_copy_str(char *dst, size_t cap, const char *src) {
    snprintf(dst, cap, "%s", src ? src : "");
}

/* A required unsigned scalar in [lo, hi]. */
static int adapter_get_u32(const struct gguf_file *g, const char *key, uint32_t lo, uint32_t hi, int *out,
                           char *err, size_t cap) {
    uint32_t v;
    int rc = gguf_get_u32(g, key, &v, err, cap);
    if (rc == ENG_E_NOT_FOUND) {
        snprintf(err, cap, "%s: %s: missing (not a PPD adapter?)", g->path, key);
        return ENG_E_FORMAT;
    }
    if (rc) return ENG_E_FORMAT;
    if (v < lo || v > hi) {
        snprintf(err, cap, "%s: %s: %u is outside [%u, %u]", g->path, key, v, lo, hi);
        return ENG_E_FORMAT;
    }
    *out = (int)v;
    return 0;
}

/* A F32 tensor of exactly ne0 x ne1, all values finite. */
static int adapter_get_f32_tensor(const struct gguf_file *g, const char *name, int ne0, int ne1,
                                  const float **out, char *err, size_t cap) {
    const struct gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) {
        snprintf(err, cap, "%s: tensor %s: missing", g->path, name);
        return ENG_E_NOT_FOUND;
    }
    if (t->type != ADAPTER_KQ_F32) {
        snprintf(err, cap, "%s: tensor %s: type %d, want F32", g->path, name, t->type);
        return ENG_E_FORMAT;
    }
    if (t->n_dims > 2 || t->ne[0] != ne0 || t->ne[1] != ne1) {
        snprintf(err, cap, "%s: tensor %s: shape [%lld, %lld], want [%d, %d]", g->path, name,
                 (long long)t->ne[1], (long long)t->ne[0], ne1, ne0);
        return ENG_E_FORMAT;
    }
    const float *d = t->data;
    for (int64_t i = 0; i < (int64_t)ne0 * ne1; i++) {
        float v;
        memcpy(&v, d + i, sizeof v);
        if (!isfinite(v)) {
            snprintf(err, cap, "%s: tensor %s: element %lld is not finite", g->path, name, (long long)i);
            return ENG_E_FORMAT;
        }
    }
    *out = d;
    return 0;
}

int eng_ppd_joint_size(int n_prompt, int topk) {
    if (n_prompt < 1 || topk < 1) return 0;
    long n = 1;
    for (int i = 0; i < n_prompt; i++)
        if ((n *= topk + 1) > ENG_PPD_JOINT_MAX) return 0;
    return (int)n;
}

int eng_ppd_adapter_load(struct eng_ppd_adapter **out, const char *path, const struct eng_model *m,
                         char *err, size_t cap) {
    *out = NULL;
    err[0] = 0;
    struct gguf_file *g = NULL;
    struct eng_ppd_adapter *a = NULL;
    int rc = gguf_open(&g, path, err, cap);
    if (rc) {
        if (!err[0]) snprintf(err, cap, "%s: cannot open the adapter: %s", path, eng_err_msg(rc));
        return rc;
    }
    if (!(a = calloc(1, sizeof *a))) { rc = ENG_E_NOMEM; goto err; }
    if ((rc = adapter_get_u32(g, "ppd.n_prompt", 1, ENG_PPD_MAX_PROMPT, &a->n_prompt, err, cap))) goto err;
    if ((rc = adapter_get_u32(g, "ppd.topk", 1, ENG_PPD_MAX_TOPK, &a->topk, err, cap))) goto err;

    const struct gguf_str *s;
    rc = gguf_get_str(g, "ppd.base.name", &s, err, cap);
    if (rc) {
        if (rc == ENG_E_NOT_FOUND) snprintf(err, cap, "%s: ppd.base.name: missing", path);
        rc = ENG_E_FORMAT;
        goto err;
    }
    adapter_copy_str(a->base_name, sizeof a->base_name, s->s);
    const struct gguf_kv *fp = gguf_find_kv(g, "ppd.base.fingerprint");
    if (!fp || fp->type != GGUF_VT_UINT64) {
        snprintf(err, cap, "%s: ppd.base.fingerprint: %s", path, fp ? "not a uint64" : "missing");
        rc = ENG_E_FORMAT;
        goto err;
    }
    a->base_fingerprint = fp->v.u;
    if (gguf_get_str(g, "ppd.provenance", &s, err, cap) == 0) adapter_copy_str(a->provenance, sizeof a->provenance, s->s);
    if (gguf_get_str(g, "ppd.init_text", &s, err, cap) == 0) adapter_copy_str(a->init_text, sizeof a->init_text, s->s);
    if (gguf_find_kv(g, "ppd.tree_L") && (rc = adapter_get_u32(g, "ppd.tree_L", 1, 4096, &a->tree_budget, err, cap))) goto err;
    if (gguf_find_kv(g, "ppd.tuned_speedup") &&
        (gguf_get_f32(g, "ppd.tuned_speedup", &a->tuned_speedup, err, cap) || !(a->tuned_speedup >= 0.0f) ||
         a->tuned_speedup > 1000.0f)) {
        if (!err[0]) snprintf(err, cap, "%s: ppd.tuned_speedup: not a speed-up", path);
        rc = ENG_E_FORMAT;
        goto err;
    }
    err[0] = 0;

    const struct gguf_tensor *te = gguf_find_tensor(g, "ppd.prompt_embeddings");
    if (!te) {
        snprintf(err, cap, "%s: tensor ppd.prompt_embeddings: missing", path);
        rc = ENG_E_FORMAT;
        goto err;
    }
    if (te->ne[0] < 1 || te->ne[0] > (1 << 20)) {
        snprintf(err, cap, "%s: tensor ppd.prompt_embeddings: hidden size %lld", path, (long long)te->ne[0]);
        rc = ENG_E_FORMAT;
        goto err;
    }
    a->n_embd = (int)te->ne[0];
    const float *emb;
    if ((rc = adapter_get_f32_tensor(g, "ppd.prompt_embeddings", a->n_embd, a->n_prompt, &emb, err, cap))) {
        rc = ENG_E_FORMAT;
        goto err;
    }
    if (!(a->emb = malloc(sizeof(float) * (size_t)a->n_embd * (size_t)a->n_prompt))) { rc = ENG_E_NOMEM; goto err; }
    memcpy(a->emb, emb, sizeof(float) * (size_t)a->n_embd * (size_t)a->n_prompt);
    if (gguf_find_tensor(g, "ppd.accuracy")) {
        const float *acc;
        if ((rc = adapter_get_f32_tensor(g, "ppd.accuracy", a->topk, a->n_prompt, &acc, err, cap))) {
            rc = ENG_E_FORMAT;
            goto err;
        }
        for (int i = 0; i < a->topk * a->n_prompt; i++)
            if (acc[i] < 0 || acc[i] > 1) {
                snprintf(err, cap, "%s: tensor ppd.accuracy: element %d = %g is not a probability", path, i, acc[i]);
                rc = ENG_E_FORMAT;
                goto err;
            }
        if (!(a->accuracy = malloc(sizeof(float) * (size_t)a->topk * (size_t)a->n_prompt))) { rc = ENG_E_NOMEM; goto err; }
        memcpy(a->accuracy, acc, sizeof(float) * (size_t)a->topk * (size_t)a->n_prompt);
    }

    const struct gguf_tensor *td = gguf_find_tensor(g, "ppd.deep_prompts");
    if (td) {
        if (td->type != ADAPTER_KQ_F32 || td->n_dims != 3 || td->ne[0] != a->n_embd || td->ne[1] != a->n_prompt ||
            td->ne[2] < 1 || td->ne[2] > 4096) {
            snprintf(err, cap, "%s: tensor ppd.deep_prompts: want F32 [layers, %d, %d] (type %d, %u dims)", path,
                     a->n_prompt, a->n_embd, td->type, td->n_dims);
            rc = ENG_E_FORMAT;
            goto err;
        }
        a->n_deep = (int)td->ne[2];
        const size_t nd = (size_t)a->n_deep * (size_t)a->n_prompt * (size_t)a->n_embd;
        if (!(a->deep = malloc(sizeof(float) * nd))) { rc = ENG_E_NOMEM; goto err; }
        memcpy(a->deep, td->data, sizeof(float) * nd);
        for (size_t i = 0; i < nd; i++)
            if (!isfinite(a->deep[i])) {
                snprintf(err, cap, "%s: tensor ppd.deep_prompts: element %zu is not finite", path, i);
                rc = ENG_E_FORMAT;
                goto err;
            }
    }
    if (gguf_find_tensor(g, "ppd.rank_joint")) {
        const int nj = eng_ppd_joint_size(a->n_prompt, a->topk);
        const float *j;
        if (!nj) {
            snprintf(err, cap, "%s: tensor ppd.rank_joint: not supported for N=%d, K=%d ((K+1)^N over %d)", path,
                     a->n_prompt, a->topk, ENG_PPD_JOINT_MAX);
            rc = ENG_E_FORMAT;
            goto err;
        }
        if ((rc = adapter_get_f32_tensor(g, "ppd.rank_joint", nj, 1, &j, err, cap))) {
            rc = ENG_E_FORMAT;
            goto err;
        }
        double sum = 0;
        for (int i = 0; i < nj; i++) {
            if (j[i] < 0 || j[i] > 1) {
                snprintf(err, cap, "%s: tensor ppd.rank_joint: element %d = %g is not a probability", path, i, j[i]);
                rc = ENG_E_FORMAT;
                goto err;
            }
            sum += j[i];
        }
        if (fabs(sum - 1.0) > 1e-3) {
            snprintf(err, cap, "%s: tensor ppd.rank_joint: sums to %g, not 1", path, sum);
            rc = ENG_E_FORMAT;
            goto err;
        }
        if (!(a->joint = malloc(sizeof(float) * (size_t)nj))) { rc = ENG_E_NOMEM; goto err; }
        memcpy(a->joint, j, sizeof(float) * (size_t)nj);
    }

    if (m && a->deep && a->n_deep != m->hp.n_layer - 1) {
        snprintf(err, cap, "%s: tensor ppd.deep_prompts: %d layers of vectors, the model '%s' needs %d", path, a->n_deep,
                 m->name, m->hp.n_layer - 1);
        rc = ENG_E_INVALID;
        goto err;
    }
    if (m && (a->base_fingerprint != m->fingerprint || a->n_embd != m->hp.n_embd)) {
        snprintf(err, cap,
                 "%s: this adapter was made for model '%s' (fingerprint %016llx, hidden size %d), "
                 "not for the loaded model '%s' (fingerprint %016llx, hidden size %d)",
                 path, a->base_name, (unsigned long long)a->base_fingerprint, a->n_embd, m->name,
                 (unsigned long long)m->fingerprint, m->hp.n_embd);
        rc = ENG_E_INVALID;
        goto err;
    }
    gguf_close(g);
    *out = a;
    return 0;
err:
    if (!err[0]) snprintf(err, cap, "%s: %s", path, eng_err_msg(rc));
    eng_ppd_adapter_free(a);
    gguf_close(g);
    return rc;
}

int eng_ppd_adapter_save(const struct eng_ppd_adapter *a, const char *path, char *err, size_t cap) {
    err[0] = 0;
    if (a->n_prompt < 1 || a->n_prompt > ENG_PPD_MAX_PROMPT || a->topk < 1 || a->topk > ENG_PPD_MAX_TOPK ||
        a->n_embd < 1 || !a->emb) {
        snprintf(err, cap, "%s: refusing to write an adapter with N=%d K=%d H=%d", path, a->n_prompt, a->topk, a->n_embd);
        return ENG_E_INVALID;
    }
    struct gguf_writer *w = gguf_writer_new();
    if (!w) return ENG_E_NOMEM;
    int rc = 0;
    uint64_t fp = a->base_fingerprint;
    int64_t ne_e[2] = {a->n_embd, a->n_prompt}, ne_a[2] = {a->topk, a->n_prompt};
    int64_t ne_j[1] = {eng_ppd_joint_size(a->n_prompt, a->topk)};
    int64_t ne_d[3] = {a->n_embd, a->n_prompt, a->n_deep};
    if (a->joint && !ne_j[0]) {
        snprintf(err, cap, "%s: refusing to write a rank joint for N=%d K=%d", path, a->n_prompt, a->topk);
        gguf_writer_free(w);
        return ENG_E_INVALID;
    }
    if ((rc = gguf_writer_set_str(w, "general.architecture", "ppd-adapter")) ||
        (rc = gguf_writer_set_u32(w, "ppd.n_prompt", (uint32_t)a->n_prompt)) ||
        (rc = gguf_writer_set_u32(w, "ppd.topk", (uint32_t)a->topk)) ||
        (rc = gguf_writer_set_str(w, "ppd.base.name", a->base_name)) ||
        (rc = gguf_writer_set_scalar(w, "ppd.base.fingerprint", GGUF_VT_UINT64, &fp)) ||
        (rc = gguf_writer_set_str(w, "ppd.provenance", a->provenance)) ||
        (a->init_text[0] && (rc = gguf_writer_set_str(w, "ppd.init_text", a->init_text))) ||
        (a->tree_budget > 0 && (rc = gguf_writer_set_u32(w, "ppd.tree_L", (uint32_t)a->tree_budget))) ||
        (a->tuned_speedup > 0 && (rc = gguf_writer_set_f32(w, "ppd.tuned_speedup", a->tuned_speedup))) ||
        (rc = gguf_writer_add_tensor(w, "ppd.prompt_embeddings", ADAPTER_KQ_F32, 2, ne_e, a->emb)) ||
        (a->accuracy && (rc = gguf_writer_add_tensor(w, "ppd.accuracy", ADAPTER_KQ_F32, 2, ne_a, a->accuracy))) ||
        (a->joint && (rc = gguf_writer_add_tensor(w, "ppd.rank_joint", ADAPTER_KQ_F32, 1, ne_j, a->joint))) ||
        (a->deep && a->n_deep > 0 && (rc = gguf_writer_add_tensor(w, "ppd.deep_prompts", ADAPTER_KQ_F32, 3, ne_d, a->deep))))
        goto out;
    rc = gguf_writer_write(w, path, err, cap);
out:
    if (rc && !err[0]) snprintf(err, cap, "%s: %s", path, eng_err_msg(rc));
    gguf_writer_free(w);
    return rc;
}

int eng_ppd_adapter_init_text(struct eng_ppd_adapter **out, const struct eng_model *m, const struct tok *t,
                              int n_prompt, int topk, const char *text, char *err, size_t cap) {
    *out = NULL;
    err[0] = 0;
    if (n_prompt < 1 || n_prompt > ENG_PPD_MAX_PROMPT || topk < 1 || topk > ENG_PPD_MAX_TOPK) {
        snprintf(err, cap, "N must be in [1, %d] and K in [1, %d] (got N=%d, K=%d)", ENG_PPD_MAX_PROMPT,
                 ENG_PPD_MAX_TOPK, n_prompt, topk);
        return ENG_E_RANGE;
    }
    int32_t *ids = NULL;
    int n_ids = 0;
    struct eng_ppd_adapter *a = NULL;
    float *dev = NULL;
    const struct eng_backend *be = m->be;
    int rc = tok_encode_alloc(t, text, strlen(text), true, false, &ids, &n_ids);
    if (rc || n_ids < 1) {
        snprintf(err, cap, "cannot tokenize the init text '%s'", text);
        rc = rc ? rc : ENG_E_INVALID;
        goto err;
    }
    if (!(a = calloc(1, sizeof *a))) { rc = ENG_E_NOMEM; goto err; }
    a->n_prompt = n_prompt;
    a->topk = topk;
    a->n_embd = m->hp.n_embd;
    const size_t bytes = sizeof(float) * (size_t)n_prompt * (size_t)a->n_embd;
    int32_t rows[ENG_PPD_MAX_PROMPT];
    for (int i = 0; i < n_prompt; i++) rows[i] = ids[i % n_ids];   /* PEFT repeats a short list */
    /* The embedding rows go through the backend's own lookup, so the copy is
     * exactly what the forward pass feeds for those tokens. */
    if (!(a->emb = malloc(bytes)) || !(dev = be->iface->buf_alloc(be->ctx, bytes))) { rc = ENG_E_NOMEM; goto err; }
    be->iface->embed(be->ctx, &m->tok_embd, rows, n_prompt, NULL, 0, dev);
    be->iface->buf_download(be->ctx, a->emb, dev, bytes);
    be->iface->sync(be->ctx);
    adapter_copy_str(a->base_name, sizeof a->base_name, m->name);
    a->base_fingerprint = m->fingerprint;
    adapter_copy_str(a->init_text, sizeof a->init_text, text);
    char ids_txt[128] = "";
    for (int i = 0; i < n_prompt; i++)
        snprintf(ids_txt + strlen(ids_txt), sizeof ids_txt - strlen(ids_txt), "%s%d", i ? "," : "", rows[i]);
    snprintf(a->provenance, sizeof a->provenance, "untrained: text init from token ids [%s]", ids_txt);
    be->iface->buf_free(be->ctx, dev);
    free(ids);
    *out = a;
    return 0;
err:
    if (dev) be->iface->buf_free(be->ctx, dev);
    free(ids);
    eng_ppd_adapter_free(a);
    if (!err[0]) snprintf(err, cap, "%s", eng_err_msg(rc));
    return rc;
}

/* A GGUF file-name quantization tag: Q4_1, Q8_0, Q4_K_M, IQ2_XS, TQ1_0, F16, F32, BF16. */
static int adapter_is_quant_tag(const char *s, size_t n) {
    size_t i = 0;
    if (n >= 2 && (s[0] == 'I' || s[0] == 'i' || s[0] == 'T' || s[0] == 't') && (s[1] == 'Q' || s[1] == 'q')) i = 2;
    else if (n >= 1 && (s[0] == 'Q' || s[0] == 'q')) i = 1;
    if (i) return i < n && s[i] >= '0' && s[i] <= '9';
    return (n == 3 && (!strncasecmp(s, "F16", 3) || !strncasecmp(s, "F32", 3))) || (n == 4 && !strncasecmp(s, "BF16", 4));
}

int eng_ppd_adapter_default_path(const char *model_path, char *out, size_t cap) {
    size_t n = strlen(model_path);
    if (n >= 5 && !strcmp(model_path + n - 5, ".gguf")) n -= 5;
    /* An adapter belongs to the model, whichever file of it: drop a trailing ".Q4_1"-style tag. */
    const char *slash = strrchr(model_path, '/');
    const size_t base = slash ? (size_t)(slash - model_path) + 1 : 0;
    for (size_t i = n; i > base; i--)
        if (model_path[i - 1] == '.') {
            if (i - 1 > base && adapter_is_quant_tag(model_path + i, n - i)) n = i - 1;
            break;
        }
    int k = snprintf(out, cap, "%.*s.ppd.gguf", (int)n, model_path);
    return k < 0 || (size_t)k >= cap ? ENG_E_RANGE : 0;
}

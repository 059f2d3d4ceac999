/* model.c — reading Llama-family hyper-parameters and weights out of a GGUF file. */
#include "engine/model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/load/gguf.h"
#include "engine/log.h"
#include "common/qtypes.h"

static int model_get_u32(const struct gguf_file *g, const char *arch, const char *suffix, int required,
                         int *out, char *err, size_t cap) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v;
    int rc = gguf_get_u32(g, key, &v, err, cap);
    if (rc == ENG_E_NOT_FOUND && !required) return 0;
    if (rc == ENG_E_NOT_FOUND) {
        snprintf(err, cap, "%s: metadata key '%s' is missing", g->path, key);
        return ENG_E_FORMAT;
    }
    if (rc) return rc;
    if (v == 0 || v > (1u << 24)) {
        snprintf(err, cap, "%s: metadata key '%s' = %u is out of range", g->path, key, v);
        return ENG_E_FORMAT;
    }
    *out = (int)v;
    return 0;
}

static int model_get_f32(const struct gguf_file *g, const char *arch, const char *suffix, float *out,
                         char *err, size_t cap) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = gguf_get_f32(g, key, out, err, cap);
    return rc == ENG_E_NOT_FOUND ? 0 : rc;
}

/* Find tensor `name` with shape [n0, n1] (n1 = 1 for vectors) and one of the allowed types. */
static int model_tensor(const struct gguf_file *g, const char *name, int64_t n0, int64_t n1, int want_float,
                        const struct gguf_tensor **out, char *err, size_t cap) {
    const struct gguf_tensor *t = gguf_find_tensor(g, name);
    if (!t) {
        snprintf(err, cap, "%s: tensor '%s' is missing", g->path, name);
        return ENG_E_FORMAT;
    }
    if (t->ne[0] != n0 || t->ne[1] != n1 || t->ne[2] != 1 || t->ne[3] != 1) {
        snprintf(err, cap, "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", g->path,
                 name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                 (long long)n0, (long long)n1);
        return ENG_E_FORMAT;
    }
    if (want_float && t->type != KQ_F32) {
        snprintf(err, cap, "%s: tensor '%s' has type %s, expected F32", g->path, name,
                 kq_type_name(t->type) ? kq_type_name(t->type) : "?");
        return ENG_E_UNSUPPORTED;
    }
    *out = t;
    return 0;
}

static int model_weight(struct eng_model *m, const char *name, int64_t n_in, int64_t n_out,
                        struct eng_weight *w, char *err, size_t cap) {
    const struct gguf_tensor *t;
    int rc = model_tensor(m->gguf, name, n_in, n_out, 0, &t, err, cap);
    if (rc) return rc;
    rc = m->be->iface->weight_init(m->be->ctx, w, t->type, t->data, n_in, n_out);
    if (rc) {
        snprintf(err, cap, "%s: tensor '%s': type %s cannot be used as a weight (%s)", m->gguf->path, name,
                 kq_type_name(t->type) ? kq_type_name(t->type) : "?", eng_err_msg(rc));
        return rc;
    }
    m->weight_bytes += t->size;
    return 0;
}

static int model_vector(struct eng_model *m, const char *name, int64_t n, float **out, char *err, size_t cap) {
    const struct gguf_tensor *t;
    int rc = model_tensor(m->gguf, name, n, 1, 1, &t, err, cap);
    if (rc) return rc;
    *out = m->be->iface->buf_alloc(m->be->ctx, t->size);
    if (!*out) return ENG_E_NOMEM;
    m->be->iface->buf_upload(m->be->ctx, *out, t->data, t->size);
    return 0;
}

static uint64_t model_fnv(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
    return h;
}

/* A fingerprint that changes when the weights do, cheap enough for every load:
 * shapes and types of all tensors plus the first 4 KiB of each one's data. */
static uint64_t model_fingerprint(const struct gguf_file *g) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        h = model_fnv(h, t->name, strlen(t->name));
        h = model_fnv(h, t->ne, sizeof t->ne);
        h = model_fnv(h, &t->type, sizeof t->type);
        h = model_fnv(h, t->data, t->size < 4096 ? t->size : 4096);
    }
    return h;
}

/* RoPE scaling as llama.cpp reads it: rope.scaling.type (none, linear, yarn)
 * with rope.scaling.factor (or the older rope.scale_linear), the YaRN
 * training context and attention factor, and Llama 3's rope_freqs tensor. */
static int model_read_rope_scaling(const struct gguf_file *g, const char *a, struct eng_hparams *hp, char *err,
                                   size_t cap) {
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    const struct gguf_str *type = NULL;
    int rc;
    if (gguf_find_kv(g, key) && (rc = gguf_get_str(g, key, &type, err, cap))) return rc;
    float factor = 0.0f;
    if ((rc = model_get_f32(g, a, "rope.scale_linear", &factor, err, cap))) return rc;
    if ((rc = model_get_f32(g, a, "rope.scaling.factor", &factor, err, cap))) return rc;
    const int linear = !type || !strcmp(type->s, "linear"), yarn = type && !strcmp(type->s, "yarn");
    if (type && strcmp(type->s, "none") && !linear && !yarn) {
        snprintf(err, cap, "%s: %s is '%s'; ppd supports none, linear and yarn", g->path, key, type->s);
        return ENG_E_UNSUPPORTED;
    }
    if (!(factor >= 0.0f && factor < 1e6f)) {
        snprintf(err, cap, "%s: %s.rope.scaling.factor %g is out of range", g->path, a, factor);
        return ENG_E_FORMAT;
    }
    if ((linear || yarn) && factor != 0.0f && factor != 1.0f) {
        hp->rope_scale_factor = factor;
        hp->rope_yarn = yarn;
    }
    if ((rc = model_get_u32(g, a, "rope.scaling.original_context_length", 0, &hp->rope_ctx_orig, err, cap))) return rc;
    if ((rc = model_get_f32(g, a, "rope.scaling.attn_factor", &hp->rope_attn_factor, err, cap))) return rc;
    if (!(hp->rope_attn_factor >= 0.0f && hp->rope_attn_factor < 100.0f)) {
        snprintf(err, cap, "%s: %s.rope.scaling.attn_factor %g is out of range", g->path, a, hp->rope_attn_factor);
        return ENG_E_FORMAT;
    }
    const struct gguf_tensor *ff = gguf_find_tensor(g, "rope_freqs.weight");
    if (ff) {
        if (ff->type != KQ_F32 || ff->ne[0] != hp->n_rot / 2 || ff->ne[1] != 1 || ff->ne[2] != 1 || ff->ne[3] != 1) {
            snprintf(err, cap, "%s: tensor 'rope_freqs.weight' must be F32 with %d values", g->path, hp->n_rot / 2);
            return ENG_E_FORMAT;
        }
        const float *f = ff->data;
        for (int i = 0; i < hp->n_rot / 2; i++)
            if (!(f[i] > 0.0f && f[i] < 1e30f)) {
                snprintf(err, cap, "%s: tensor 'rope_freqs.weight' value %d is %g (must be positive)", g->path, i, f[i]);
                return ENG_E_FORMAT;
            }
        hp->rope_freq_factors = f;
    }
    return 0;
}

struct kq_rope eng_hparams_rope(const struct eng_hparams *hp) {
    struct kq_rope r = kq_rope_plain(hp->n_rot, hp->rope_neox, hp->rope_freq_base);
    r.freq_factors = hp->rope_freq_factors;
    if (hp->rope_attn_factor > 0.0f) r.attn_factor = hp->rope_attn_factor;
    if (hp->rope_scale_factor > 0.0f) {
        if (hp->rope_yarn)
            /* llama.cpp's YaRN betas for these architectures, whatever a file says */
            kq_rope_set_yarn(&r, hp->rope_scale_factor, hp->rope_ctx_orig ? hp->rope_ctx_orig : hp->n_ctx_train,
                             32.0f, 1.0f);
        else
            r.freq_scale = 1.0f / hp->rope_scale_factor;
    }
    return r;
}

const char *eng_arch_name(int arch) {
    switch (arch) {
    case ENG_ARCH_QWEN2: return "qwen2";
    case ENG_ARCH_QWEN3: return "qwen3";
    default:             return "llama";
    }
}

static int model_read_hparams(struct eng_model *m, char *err, size_t cap) {
    const struct gguf_file *g = m->gguf;
    const struct gguf_str *arch;
    int rc = gguf_get_str(g, "general.architecture", &arch, err, cap);
    if (rc == ENG_E_NOT_FOUND) {
        snprintf(err, cap, "%s: metadata key 'general.architecture' is missing", g->path);
        return ENG_E_FORMAT;
    }
    if (rc) return rc;
    struct eng_hparams *hp = &m->hp;
    if (!strcmp(arch->s, "llama")) hp->arch = ENG_ARCH_LLAMA;
    else if (!strcmp(arch->s, "qwen2")) hp->arch = ENG_ARCH_QWEN2;
    else if (!strcmp(arch->s, "qwen3")) hp->arch = ENG_ARCH_QWEN3;
    else {
        snprintf(err, cap, "%s: general.architecture is '%s'; ppd supports 'llama', 'qwen2' and 'qwen3'", g->path,
                 arch->s);
        return ENG_E_UNSUPPORTED;
    }
    const char *a = arch->s;
    if ((rc = model_get_u32(g, a, "embedding_length", 1, &hp->n_embd, err, cap))) return rc;
    if ((rc = model_get_u32(g, a, "block_count", 1, &hp->n_layer, err, cap))) return rc;
    if ((rc = model_get_u32(g, a, "attention.head_count", 1, &hp->n_head, err, cap))) return rc;
    hp->n_head_kv = hp->n_head;
    if ((rc = model_get_u32(g, a, "attention.head_count_kv", 0, &hp->n_head_kv, err, cap))) return rc;
    if ((rc = model_get_u32(g, a, "feed_forward_length", 1, &hp->n_ff, err, cap))) return rc;
    hp->n_ctx_train = 4096;
    if ((rc = model_get_u32(g, a, "context_length", 0, &hp->n_ctx_train, err, cap))) return rc;
    hp->head_dim = 0;
    if ((rc = model_get_u32(g, a, "attention.key_length", 0, &hp->head_dim, err, cap))) return rc;
    if ((!hp->head_dim && hp->n_embd % hp->n_head) || hp->n_head % hp->n_head_kv) {
        snprintf(err, cap, "%s: embedding_length %d, head_count %d and head_count_kv %d are inconsistent",
                 g->path, hp->n_embd, hp->n_head, hp->n_head_kv);
        return ENG_E_FORMAT;
    }
    if (!hp->head_dim) hp->head_dim = hp->n_embd / hp->n_head;
    int v_len = hp->head_dim;
    if ((rc = model_get_u32(g, a, "attention.value_length", 0, &v_len, err, cap))) return rc;
    if (v_len != hp->head_dim || hp->head_dim > 1024) {
        snprintf(err, cap, "%s: %s.attention.key_length %d and value_length %d: ppd needs them equal and at most 1024",
                 g->path, a, hp->head_dim, v_len);
        return ENG_E_UNSUPPORTED;
    }
    hp->n_rot = hp->head_dim;
    if ((rc = model_get_u32(g, a, "rope.dimension_count", 0, &hp->n_rot, err, cap))) return rc;
    if (hp->n_rot > hp->head_dim || hp->n_rot % 2 || hp->n_rot > 1024) {
        snprintf(err, cap, "%s: %s.rope.dimension_count %d does not fit head size %d", g->path, a, hp->n_rot,
                 hp->head_dim);
        return ENG_E_FORMAT;
    }
    hp->rope_freq_base = 10000.0f;
    if ((rc = model_get_f32(g, a, "rope.freq_base", &hp->rope_freq_base, err, cap))) return rc;
    hp->rms_eps = 1e-5f;
    if ((rc = model_get_f32(g, a, "attention.layer_norm_rms_epsilon", &hp->rms_eps, err, cap))) return rc;
    if (!(hp->rope_freq_base > 0.0f) || !(hp->rms_eps > 0.0f) || !(hp->rms_eps < 1.0f)) {
        snprintf(err, cap, "%s: rope.freq_base %g or layer_norm_rms_epsilon %g out of range", g->path,
                 hp->rope_freq_base, hp->rms_eps);
        return ENG_E_FORMAT;
    }
    /* llama GGUFs store Q/K permuted for the interleaved layout; Qwen's are NeoX */
    hp->rope_neox = hp->arch != ENG_ARCH_LLAMA;
    if ((rc = model_read_rope_scaling(g, a, hp, err, cap))) return rc;
    /* llama.cpp reads this key only for the architectures it builds with
     * windowed layers and ignores it in llama, qwen2 and qwen3 files; ppd
     * applies it, as the model was trained with it (docs/architecture.md). */
    hp->n_swa = 0;
    {
        char key[128];
        uint32_t w;
        snprintf(key, sizeof key, "%s.attention.sliding_window", a);
        rc = gguf_get_u32(g, key, &w, err, cap);
        if (rc && rc != ENG_E_NOT_FOUND) return rc;
        if (!rc && w > (1u << 24)) {
            snprintf(err, cap, "%s: metadata key '%s' = %u is out of range", g->path, key, w);
            return ENG_E_FORMAT;
        }
        if (!rc) hp->n_swa = (int)w;   /* 0: no window, as converters write for none */
    }
    const struct gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
    if (!emb) {
        snprintf(err, cap, "%s: tensor 'token_embd.weight' is missing", g->path);
        return ENG_E_FORMAT;
    }
    if (emb->ne[1] < 1 || emb->ne[1] > (1 << 24)) {
        snprintf(err, cap, "%s: tensor 'token_embd.weight' has %lld rows", g->path, (long long)emb->ne[1]);
        return ENG_E_FORMAT;
    }
    hp->n_vocab = (int)emb->ne[1];
    const struct gguf_str *name;
    if (gguf_get_str(g, "general.name", &name, err, cap) == 0) snprintf(m->name, sizeof m->name, "%s", name->s);
    else {
        const char *base = strrchr(g->path, '/');
        snprintf(m->name, sizeof m->name, "%s", base ? base + 1 : g->path);
    }
    err[0] = 0;
    return 0;
}

int eng_model_load(struct eng_model **out, const char *path, struct eng_backend *be, char *err, size_t cap) {
    *out = NULL;
    struct eng_model *m = calloc(1, sizeof *m);
    if (!m) return ENG_E_NOMEM;
    m->be = be;
    int rc = gguf_open(&m->gguf, path, err, cap);
    if (rc) goto err;
    if ((rc = model_read_hparams(m, err, cap))) goto err;
    const struct eng_hparams *hp = &m->hp;
    const int kv_dim = hp->n_head_kv * hp->head_dim, q_dim = eng_hparams_q_dim(hp);
    if ((rc = model_weight(m, "token_embd.weight", hp->n_embd, hp->n_vocab, &m->tok_embd, err, cap))) goto err;
    m->weight_bytes = 0; /* a pass reads one embedding row per token, not the table */
    if ((rc = model_vector(m, "output_norm.weight", hp->n_embd, &m->output_norm, err, cap))) goto err;
    if (gguf_find_tensor(m->gguf, "output.weight")) {
        if ((rc = model_weight(m, "output.weight", hp->n_embd, hp->n_vocab, &m->output, err, cap))) goto err;
    } else {
        m->output_tied = 1;
        if ((rc = model_weight(m, "token_embd.weight", hp->n_embd, hp->n_vocab, &m->output, err, cap))) goto err;
    }
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) { rc = ENG_E_NOMEM; goto err; }
    for (int l = 0; l < hp->n_layer; l++) {
        struct eng_layer *L = &m->layers[l];
        char nm[96];
#define LAYER_NAME(s) (snprintf(nm, sizeof nm, "blk.%d.%s", l, s), nm)
        if ((rc = model_vector(m, LAYER_NAME("attn_norm.weight"), hp->n_embd, &L->attn_norm, err, cap))) goto err;
        if ((rc = model_vector(m, LAYER_NAME("ffn_norm.weight"), hp->n_embd, &L->ffn_norm, err, cap))) goto err;
        if ((rc = model_weight(m, LAYER_NAME("attn_q.weight"), hp->n_embd, q_dim, &L->wq, err, cap))) goto err;
        if ((rc = model_weight(m, LAYER_NAME("attn_k.weight"), hp->n_embd, kv_dim, &L->wk, err, cap))) goto err;
        if ((rc = model_weight(m, LAYER_NAME("attn_v.weight"), hp->n_embd, kv_dim, &L->wv, err, cap))) goto err;
        if ((rc = model_weight(m, LAYER_NAME("attn_output.weight"), q_dim, hp->n_embd, &L->wo, err, cap))) goto err;
        if (hp->arch == ENG_ARCH_QWEN2) {
            if ((rc = model_vector(m, LAYER_NAME("attn_q.bias"), q_dim, &L->bq, err, cap))) goto err;
            if ((rc = model_vector(m, LAYER_NAME("attn_k.bias"), kv_dim, &L->bk, err, cap))) goto err;
            if ((rc = model_vector(m, LAYER_NAME("attn_v.bias"), kv_dim, &L->bv, err, cap))) goto err;
        }
        if (hp->arch == ENG_ARCH_QWEN3) {
            if ((rc = model_vector(m, LAYER_NAME("attn_q_norm.weight"), hp->head_dim, &L->q_norm, err, cap))) goto err;
            if ((rc = model_vector(m, LAYER_NAME("attn_k_norm.weight"), hp->head_dim, &L->k_norm, err, cap))) goto err;
        }
        if ((rc = model_weight(m, LAYER_NAME("ffn_gate.weight"), hp->n_embd, hp->n_ff, &L->w_gate, err, cap))) goto err;
        if ((rc = model_weight(m, LAYER_NAME("ffn_up.weight"), hp->n_embd, hp->n_ff, &L->w_up, err, cap))) goto err;
        if ((rc = model_weight(m, LAYER_NAME("ffn_down.weight"), hp->n_ff, hp->n_embd, &L->w_down, err, cap))) goto err;
#undef LAYER_NAME
    }
    eng_model_fuse_weights(m);
    m->fingerprint = model_fingerprint(m->gguf);
    LOG_INFO("model '%s' (%s): %d layers, n_embd %d, %d/%d heads of %d, n_ff %d, vocab %d, %.1f MB of weights%s%s%s",
             m->name, eng_arch_name(hp->arch), hp->n_layer, hp->n_embd, hp->n_head, hp->n_head_kv, hp->head_dim,
             hp->n_ff, hp->n_vocab, m->weight_bytes / 1e6, m->output_tied ? ", tied output" : "",
             hp->rope_scale_factor > 0.0f ? (hp->rope_yarn ? ", YaRN RoPE" : ", linear RoPE scaling")
             : hp->rope_freq_factors ? ", RoPE frequency factors" : "",
             hp->n_swa ? ", sliding attention window" : "");
    if (hp->n_swa) LOG_INFO("attention window: each position sees the %d positions up to itself", hp->n_swa);
    *out = m;
    return 0;
err:
    if (!err[0]) snprintf(err, cap, "%s: %s", path, eng_err_msg(rc));
    eng_model_free(m);
    return rc;
}

void eng_model_fuse_weights(struct eng_model *m) {
    if (!m->be->iface->weight_fuse) return;
    for (int l = 0; l < m->hp.n_layer; l++) {
        struct eng_layer *L = &m->layers[l];
        struct eng_weight *qkv[3] = {&L->wq, &L->wk, &L->wv}, *gu[2] = {&L->w_gate, &L->w_up};
        m->be->iface->weight_fuse(m->be->ctx, qkv, 3);   /* the groups forward.c multiplies together */
        m->be->iface->weight_fuse(m->be->ctx, gu, 2);
    }
}

static void model_weight_free(struct eng_model *m, struct eng_weight *w) {
    if (w->impl) m->be->iface->weight_free(m->be->ctx, w);
}

void eng_model_free(struct eng_model *m) {
    if (!m) return;
    if (m->be) {
        model_weight_free(m, &m->tok_embd);
        model_weight_free(m, &m->output);
        if (m->output_norm) m->be->iface->buf_free(m->be->ctx, m->output_norm);
        for (int l = 0; m->layers && l < m->hp.n_layer; l++) {
            struct eng_layer *L = &m->layers[l];
            if (L->attn_norm) m->be->iface->buf_free(m->be->ctx, L->attn_norm);
            float *vecs[] = {L->ffn_norm, L->bq, L->bk, L->bv, L->q_norm, L->k_norm};
            for (unsigned i = 0; i < sizeof vecs / sizeof vecs[0]; i++)
                if (vecs[i]) m->be->iface->buf_free(m->be->ctx, vecs[i]);
            struct eng_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
            for (unsigned i = 0; i < sizeof ws / sizeof ws[0]; i++) model_weight_free(m, ws[i]);
        }
    }
    free(m->layers);
    gguf_close(m->gguf);
    free(m);
}

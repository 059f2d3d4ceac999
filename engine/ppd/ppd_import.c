/* ppd_import.c — the paper's PEFT adapters as ppd adapters (ppd_import.h).
 * Reads the config first (it says how many rows the tensor must have), then
 * the safetensors file, checks every size against the other and against the
 * model, and only then converts the rows. */
#include "engine/ppd/ppd_import.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "engine/err.h"
#include "engine/model/model.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/load/safetensors.h"

#define IMPORT_TENSOR "prompt_embeddings"
#define IMPORT_ST_NAME "adapter_model.safetensors"
#define IMPORT_CFG_NAME "adapter_config.json"

/* What the config says (or the defaults of PPD's PromptConfig when a field is absent). */
struct import_cfg {
    int n_special;               /* N; 0 when absent */
    int n_virtual_per;           /* V */
    long long n_virtual;         /* PEFT's num_virtual_tokens (N*V), -1 when absent */
    long long token_dim;         /* PEFT's token_dim (H), -1 when absent */
    char vt_attention[32];
    char aggregation[32];
    char base_model[128];
};

static int import_is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int import_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* An optional integer field (absent or null: def) in [lo, hi]. */
static int import_cfg_int(const json_t *root, const char *key, long long lo, long long hi, long long def,
                          long long *out, const char *path, char *err, size_t cap) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v)) return eng_err_set(err, cap, ENG_E_FORMAT, "%s: %s: not an integer", path, key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: %s: %lld is outside [%lld, %lld]", path, key, x, lo, hi);
    *out = x;
    return 0;
}

/* An optional string field (absent or null: def), copied into out[cap_out]. */
static int import_cfg_str(const json_t *root, const char *key, const char *def, char *out, size_t out_cap,
                          const char *path, char *err, size_t cap) {
    const json_t *v = json_object_get(root, key);
    if (v && !json_is_null(v) && !json_is_string(v))
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: %s: not a string", path, key);
    snprintf(out, out_cap, "%s", v && json_is_string(v) ? json_string_value(v) : def);
    return 0;
}

static int import_cfg_bool(const json_t *root, const char *key, int *out, const char *path, char *err, size_t cap) {
    const json_t *v = json_object_get(root, key);
    *out = 0;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return eng_err_set(err, cap, ENG_E_FORMAT, "%s: %s: not true or false", path, key);
    *out = json_is_true(v);
    return 0;
}

static int import_one_of(const char *s, const char *const *allowed) {
    for (; *allowed; allowed++)
        if (!strcasecmp(s, *allowed)) return 1;
    return 0;
}

static int import_cfg_read(struct import_cfg *c, const char *path, char *err, size_t cap) {
    static const char *const vt_types[] = {"decoder", "encoder", "ensemble", NULL};
    static const char *const agg_types[] = {"mean", "weighted", "adaptive_weighted", NULL};
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    int rc = 0;
    long long n, v, exits;
    int flag;
    char peft_type[64];
    if (!root) {
        if (!import_exists(path)) return eng_err_set(err, cap, ENG_E_IO, "%s: cannot open: %s", path, je.text);
        return eng_err_set(err, cap, ENG_E_FORMAT, "%s: JSON error at line %d column %d: %s", path, je.line,
                           je.column, je.text);
    }
    if (!json_is_object(root)) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: not a JSON object", path);
        goto out;
    }
    /* The reference's loader deletes peft_type from the file (docs/ppd.md, "Pitfalls"), so
     * absence is fine; another PEFT method is not a PPD adapter. */
    if ((rc = import_cfg_str(root, "peft_type", "", peft_type, sizeof peft_type, path, err, cap))) goto out;
    if (peft_type[0] && strcmp(peft_type, "PROMPT_TUNING")) {
        rc = eng_err_set(err, cap, ENG_E_UNSUPPORTED, "%s: peft_type: '%s' is not a prompt-tuning (PPD) adapter", path,
                         peft_type);
        goto out;
    }
    if ((rc = import_cfg_int(root, "num_special_tokens", 1, INT_MAX, 0, &n, path, err, cap)) ||
        (rc = import_cfg_int(root, "virtual_tokens_per_special_token", 1, INT_MAX, 1, &v, path, err, cap)) ||
        (rc = import_cfg_int(root, "num_virtual_tokens", 0, LLONG_MAX, -1, &c->n_virtual, path, err, cap)) ||
        (rc = import_cfg_int(root, "token_dim", 0, LLONG_MAX, -1, &c->token_dim, path, err, cap)) ||
        (rc = import_cfg_int(root, "num_exits", 1, INT_MAX, 1, &exits, path, err, cap)) ||
        (rc = import_cfg_str(root, "vt_attention_type", "decoder", c->vt_attention, sizeof c->vt_attention, path, err,
                             cap)) ||
        (rc = import_cfg_str(root, "aggregation_type", "mean", c->aggregation, sizeof c->aggregation, path, err,
                             cap)) ||
        (rc = import_cfg_str(root, "base_model_name_or_path", "", c->base_model, sizeof c->base_model, path, err,
                             cap)))
        goto out;
    c->n_special = (int)n;
    c->n_virtual_per = (int)v;
    if (!import_one_of(c->vt_attention, vt_types)) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: vt_attention_type: '%s' is not decoder, encoder or ensemble", path,
                         c->vt_attention);
        goto out;
    }
    if (!import_one_of(c->aggregation, agg_types)) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: aggregation_type: '%s' is not mean, weighted or adaptive_weighted",
                         path, c->aggregation);
        goto out;
    }
    /* These change what the prompt tokens' logits are made of, with weights
     * that are not in prompt_embeddings. */
    if ((rc = import_cfg_bool(root, "use_prefix_tuning", &flag, path, err, cap))) goto out;
    if (flag) {
        rc = eng_err_set(err, cap, ENG_E_UNSUPPORTED, "%s: use_prefix_tuning: prefix-tuned PPD adapters are not supported",
                         path);
        goto out;
    }
    if ((rc = import_cfg_bool(root, "use_custom_lm_head", &flag, path, err, cap))) goto out;
    if (flag) {
        rc = eng_err_set(err, cap, ENG_E_UNSUPPORTED,
                         "%s: use_custom_lm_head: adapters with their own LM head are not supported", path);
        goto out;
    }
    if (exits > 1)
        rc = eng_err_set(err, cap, ENG_E_UNSUPPORTED,
                         "%s: num_exits: %lld (prompt logits averaged over several layers) is not supported", path, exits);
out:
    json_decref(root);
    return rc;
}

/* Where the two files are: st_path (must exist) and cfg_path ("" when none). */
static int import_locate(const char *path, const struct eng_ppd_import_opts *o, char *st_path, char *cfg_path,
                         size_t cap_path, char *err, size_t cap) {
    int k;
    cfg_path[0] = 0;
    if (import_is_dir(path)) {
        k = snprintf(st_path, cap_path, "%s/%s", path, IMPORT_ST_NAME);
        if (k < 0 || (size_t)k >= cap_path) return eng_err_set(err, cap, ENG_E_RANGE, "%s: path too long", path);
        if (!import_exists(st_path)) {
            char bin[PATH_MAX];
            snprintf(bin, sizeof bin, "%s/adapter_model.bin", path);
            if (import_exists(bin))
                return eng_err_set(err, cap, ENG_E_UNSUPPORTED,
                                   "%s: only a PyTorch pickle (adapter_model.bin) is there; convert it to "
                                   "adapter_model.safetensors first (pickles are not read)", path);
            return eng_err_set(err, cap, ENG_E_NOT_FOUND, "%s: no %s in this directory", path, IMPORT_ST_NAME);
        }
        if (!o->config_path) snprintf(cfg_path, cap_path, "%s/%s", path, IMPORT_CFG_NAME);
    } else {
        if (!import_exists(path)) return eng_err_set(err, cap, ENG_E_IO, "%s: no such file or directory", path);
        k = snprintf(st_path, cap_path, "%s", path);
        if (k < 0 || (size_t)k >= cap_path) return eng_err_set(err, cap, ENG_E_RANGE, "%s: path too long", path);
        if (!o->config_path) {
            const char *slash = strrchr(path, '/');
            int dir_len = slash ? (int)(slash - path) : 1;
            snprintf(cfg_path, cap_path, "%.*s/%s", dir_len, slash ? path : ".", IMPORT_CFG_NAME);
        }
    }
    if (o->config_path) {
        k = snprintf(cfg_path, cap_path, "%s", o->config_path);
        if (k < 0 || (size_t)k >= cap_path) return eng_err_set(err, cap, ENG_E_RANGE, "%s: path too long", o->config_path);
        if (!import_exists(cfg_path)) return eng_err_set(err, cap, ENG_E_IO, "%s: no such file", cfg_path);
    } else if (!import_exists(cfg_path)) {
        cfg_path[0] = 0;   /* the config beside it is optional when N is given */
    }
    return 0;
}

/* The names of the first few tensors, for "not found" messages. */
static void import_tensor_list(const struct st_file *f, char *out, size_t cap) {
    out[0] = 0;
    for (int i = 0; i < f->n_tensors && i < 4; i++)
        snprintf(out + strlen(out), cap - strlen(out), "%s%s", i ? ", " : "", f->tensors[i].name);
    if (f->n_tensors > 4) snprintf(out + strlen(out), cap - strlen(out), ", ...");
    if (!f->n_tensors) snprintf(out, cap, "none");
}

int eng_ppd_adapter_import(struct eng_ppd_adapter **out, const char *path, const struct eng_model *m,
                           const struct eng_ppd_import_opts *o, char *err, size_t cap) {
    static const struct eng_ppd_import_opts defaults = ENG_PPD_IMPORT_OPTS_DEFAULT;
    char st_path[PATH_MAX], cfg_path[PATH_MAX];
    struct import_cfg c = {.n_virtual_per = 1, .n_virtual = -1, .token_dim = -1};
    struct st_file *f = NULL;
    struct eng_ppd_adapter *a = NULL;
    float *all = NULL;
    int rc;

    *out = NULL;
    err[0] = 0;
    if (!o) o = &defaults;
    if (!m) return eng_err_set(err, cap, ENG_E_INVALID, "%s: importing needs the base model", path);
    if (o->topk < 1 || o->topk > ENG_PPD_MAX_TOPK)
        return eng_err_set(err, cap, ENG_E_RANGE, "top-k %d is outside [1, %d]", o->topk, ENG_PPD_MAX_TOPK);
    if ((rc = import_locate(path, o, st_path, cfg_path, sizeof st_path, err, cap))) return rc;

    /* N and V: from the config, or N from the caller with V = 1. */
    if (cfg_path[0]) {
        if ((rc = import_cfg_read(&c, cfg_path, err, cap))) return rc;
        if (!c.n_special && !o->n_prompt)
            return eng_err_set(err, cap, ENG_E_FORMAT,
                               "%s: num_special_tokens: missing (not a PPD adapter? give N explicitly: --n-prompt N)",
                               cfg_path);
        if (c.n_special && o->n_prompt && c.n_special != o->n_prompt)
            return eng_err_set(err, cap, ENG_E_INVALID, "%s: num_special_tokens is %d, but %d prompt tokens were asked for",
                               cfg_path, c.n_special, o->n_prompt);
        if (!c.n_special) c.n_special = o->n_prompt;
    } else {
        if (o->n_prompt < 1)
            return eng_err_set(err, cap, ENG_E_NOT_FOUND,
                               "%s: no %s beside it: give the number of prompt tokens (--n-prompt N; V = 1 is then "
                               "assumed) or the config file", st_path, IMPORT_CFG_NAME);
        c.n_special = o->n_prompt;
    }
    const int n = c.n_special, v = c.n_virtual_per;
    if (n > ENG_PPD_MAX_PROMPT)
        return eng_err_set(err, cap, ENG_E_RANGE, "%s: %d prompt tokens, at most %d are supported",
                           cfg_path[0] ? cfg_path : st_path, n, ENG_PPD_MAX_PROMPT);
    if (c.n_virtual >= 0 && c.n_virtual != (long long)n * v)
        return eng_err_set(err, cap, ENG_E_FORMAT,
                           "%s: num_virtual_tokens: %lld, but num_special_tokens x virtual_tokens_per_special_token "
                           "= %d x %d", cfg_path, c.n_virtual, n, v);
    if (v > 1 && o->ensemble_member < 0)
        return eng_err_set(err, cap, ENG_E_UNSUPPORTED,
                           "%s: %d virtual tokens per prompt token (aggregation %s): ppd runs V = 1 only, as the "
                           "paper's inference does (docs/ppd.md); importing one ensemble member alone "
                           "(--ensemble-member J, J in 0..%d) approximates what was trained",
                           cfg_path, v, c.aggregation, v - 1);
    if (o->ensemble_member >= v)
        return eng_err_set(err, cap, ENG_E_RANGE, "%s: ensemble member %d, but there are %d (0..%d)",
                           cfg_path[0] ? cfg_path : st_path, o->ensemble_member, v, v - 1);

    /* The tensor: shape [N*V, H], H the model's hidden size. */
    if ((rc = st_open(&f, st_path, err, cap))) goto err;
    const struct st_tensor *t = st_find_tensor(f, IMPORT_TENSOR);
    if (!t) {
        char names[256];
        import_tensor_list(f, names, sizeof names);
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: missing (the file has: %s)", st_path, IMPORT_TENSOR,
                         names);
        goto err;
    }
    if (t->n_dims != 2) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: %d dimensions, want 2 ([N*V, H])", st_path,
                         IMPORT_TENSOR, t->n_dims);
        goto err;
    }
    if (t->shape[1] < 1 || t->shape[1] > (1u << 20)) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: hidden size %llu is implausible", st_path,
                         IMPORT_TENSOR, (unsigned long long)t->shape[1]);
        goto err;
    }
    const int h = (int)t->shape[1];
    if (t->shape[0] != (uint64_t)n * (uint64_t)v) {
        if (cfg_path[0])
            rc = eng_err_set(err, cap, ENG_E_FORMAT,
                             "%s: tensor %s: %llu rows, but %s says N x V = %d x %d", st_path, IMPORT_TENSOR,
                             (unsigned long long)t->shape[0], cfg_path, n, v);
        else
            rc = eng_err_set(err, cap, ENG_E_FORMAT,
                             "%s: tensor %s: %llu rows, but %d prompt tokens were given (V > 1 needs the config)",
                             st_path, IMPORT_TENSOR, (unsigned long long)t->shape[0], n);
        goto err;
    }
    if (c.token_dim >= 0 && c.token_dim != h) {
        rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: token_dim: %lld, but tensor %s has hidden size %d", cfg_path,
                         c.token_dim, IMPORT_TENSOR, h);
        goto err;
    }
    if (h != m->hp.n_embd) {
        rc = eng_err_set(err, cap, ENG_E_INVALID,
                         "%s: hidden size %d%s%s%s, but model '%s' has hidden size %d: this adapter is for another model",
                         path, h, c.base_model[0] ? " (base_model_name_or_path " : "", c.base_model,
                         c.base_model[0] ? ")" : "", m->name, m->hp.n_embd);
        goto err;
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        rc = eng_err_set(err, cap, ENG_E_UNSUPPORTED, "%s: tensor %s: dtype %s, want F32, F16 or BF16", st_path,
                         IMPORT_TENSOR, st_dtype_name(t->dtype));
        goto err;
    }

    /* Convert every row, keep row i*V + j of each prompt token i. */
    const int member = o->ensemble_member < 0 ? 0 : o->ensemble_member;
    if (!(all = malloc(sizeof(float) * (size_t)t->n_elem)) || !(a = calloc(1, sizeof *a)) ||
        !(a->emb = malloc(sizeof(float) * (size_t)n * (size_t)h))) {
        rc = eng_err_set(err, cap, ENG_E_NOMEM, "%s: out of memory", st_path);
        goto err;
    }
    if ((rc = st_tensor_to_f32(f, t, all, t->n_elem, err, cap))) goto err;
    for (int i = 0; i < n; i++) {
        const float *row = all + ((size_t)i * (size_t)v + (size_t)member) * (size_t)h;
        for (int k = 0; k < h; k++)
            if (!isfinite(row[k])) {
                rc = eng_err_set(err, cap, ENG_E_FORMAT, "%s: tensor %s: element [%lld, %d] is not finite", st_path,
                                 IMPORT_TENSOR, (long long)i * v + member, k);
                goto err;
            }
        memcpy(a->emb + (size_t)i * (size_t)h, row, sizeof(float) * (size_t)h);
    }
    a->n_prompt = n;
    a->topk = o->topk;
    a->n_embd = h;
    snprintf(a->base_name, sizeof a->base_name, "%s", m->name);
    a->base_fingerprint = m->fingerprint;
    int k = snprintf(a->provenance, sizeof a->provenance, "imported from %s (base_model_name_or_path=%s)", path,
                     c.base_model[0] ? c.base_model : "unknown");
    if (v > 1 && k > 0 && (size_t)k < sizeof a->provenance)
        snprintf(a->provenance + k, sizeof a->provenance - (size_t)k,
                 "; ensemble member %d of V=%d alone (trained with %s aggregation)", member, v, c.aggregation);
    free(all);
    st_close(f);
    *out = a;
    return 0;
err:
    if (!err[0]) eng_err_set(err, cap, rc, "%s: %s", path, eng_err_msg(rc));
    free(all);
    eng_ppd_adapter_free(a);
    st_close(f);
    return rc;
}

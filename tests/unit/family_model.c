/* family_model.c — see family_model.h. */
#include "family_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/load/gguf.h"
#include "common/qtypes.h"

#define FAM_N_LAYER 2
#define FAM_N_EMBD 64
#define FAM_N_FF 128
#define FAM_N_HEAD 4

/* What distinguishes the variants; everything else is shared. */
struct fam_spec {
    const char *name;
    const char *arch;
    int n_head_kv;
    int head_dim;           /* written as attention.key_length/value_length when not n_embd/n_head */
    float freq_base;
    float rms_eps;
    int n_ctx;
    int rope_dim_key;       /* write rope.dimension_count (llama converters do, Qwen's do not) */
    int biases;             /* qwen2: attn_q/k/v.bias */
    int head_norms;         /* qwen3: attn_q_norm/attn_k_norm */
    int rope_freqs;         /* Llama 3: rope_freqs.weight */
    const char *scaling;    /* rope.scaling.type, or NULL */
    int ctx_orig;           /* rope.scaling.original_context_length (YaRN), or 0 */
    const char *pre;        /* tokenizer.ggml.pre override, or NULL: the source's */
    int window;             /* attention.sliding_window, or 0: not written */
};

/* Head counts differ on purpose: multi-head, grouped and multi-query
 * attention each appear once at least. */
static const struct fam_spec fam_specs[FAM_N_VARIANTS] = {
    [FAM_LLAMA] = {"llama", "llama", 4, 16, 10000.0f, 1e-5f, 2048, 1, 0, 0, 0, NULL, 0, NULL, 0},
    [FAM_LLAMA3_ROPE] = {"llama3-rope", "llama", 2, 16, 500000.0f, 1e-5f, 8192, 1, 0, 0, 1, NULL, 0, NULL, 0},
    [FAM_LLAMA_LINEAR] = {"llama-linear", "llama", 1, 16, 10000.0f, 1e-5f, 2048, 1, 0, 0, 0, "linear", 0, NULL, 0},
    [FAM_QWEN2] = {"qwen2", "qwen2", 2, 16, 1000000.0f, 1e-6f, 2048, 0, 1, 0, 0, NULL, 0, "qwen2", 0},
    /* An original context of 128 puts the golden prompts' later positions
     * (up to ~200) past it, and the correction range across the 8 pairs. */
    [FAM_QWEN2_YARN] = {"qwen2-yarn", "qwen2", 2, 16, 1000000.0f, 1e-6f, 1024, 0, 1, 0, 0, "yarn", 128, "qwen2", 0},
    [FAM_QWEN3] = {"qwen3", "qwen3", 2, 32, 1000000.0f, 1e-6f, 2048, 0, 0, 1, 0, NULL, 0, "qwen2", 0},
    [FAM_LLAMA_SWA] = {"llama-swa", "llama", 2, 16, 10000.0f, 1e-5f, 2048, 1, 0, 0, 0, NULL, 0, NULL, FAM_SWA_WINDOW},
};

#define FAM_SCALE_FACTOR 4.0f

const char *fam_variant_name(int variant) {
    return variant >= 0 && variant < FAM_N_VARIANTS ? fam_specs[variant].name : "?";
}

int fam_variant_by_name(const char *name) {
    for (int v = 0; v < FAM_N_VARIANTS; v++)
        if (!strcmp(fam_specs[v].name, name)) return v;
    return -1;
}

/* ---- random numbers: integer operations, then exact float ones ---- */

static uint64_t fam_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Uniform in [-1, 1) on a 2^-23 grid: exactly representable, so the same on every IEEE machine. */
static float fam_frand(uint64_t *s) { return (float)((fam_next(s) >> 40) * (1.0 / 8388608.0)) - 1.0f; }

/* Mixes the seed (splitmix64) so that neighbouring seeds give unrelated streams. */
static uint64_t fam_seed_state(uint64_t seed) {
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z ? z : 1;
}

/* centre + amp * U[-1, 1) into p[0..n). */
static void fam_fill(float *p, size_t n, float centre, float amp, uint64_t *rng) {
    for (size_t i = 0; i < n; i++) p[i] = centre + amp * fam_frand(rng);
}

/* ---- writing ---- */

struct fam_writer {
    struct gguf_writer *w;
    const struct fam_defect *defect;
    uint64_t rng;
    float *buf;             /* scratch for the largest tensor */
    char *err;
    size_t err_cap;
};

static int fam_check(struct fam_writer *fw, int rc, const char *what) {
    if (rc) eng_err_set(fw->err, fw->err_cap, rc, "family model: %s: %s", what, eng_err_msg(rc));
    return rc;
}

/* A tensor of n0 x n1 F32 values (n1 = 0: a vector of n0), centre + amp * U. */
static int fam_tensor(struct fam_writer *fw, const char *name, int64_t n0, int64_t n1, float centre, float amp) {
    const size_t n = (size_t)n0 * (size_t)(n1 ? n1 : 1);
    /* The values are drawn even for an omitted tensor, so that the others stay
     * the same as in the intact file. */
    fam_fill(fw->buf, n, centre, amp, &fw->rng);
    if (fw->defect->omit_tensor && !strcmp(fw->defect->omit_tensor, name)) return 0;
    const int64_t ne[2] = {n0, n1};
    return fam_check(fw, gguf_writer_add_tensor(fw->w, name, KQ_F32, n1 ? 2 : 1, ne, fw->buf), name);
}

/* A matrix [n_in -> n_out]: entries of standard deviation 1/sqrt(n_in), so a
 * unit-scale input gives a unit-scale output and every layer matters. */
static int fam_matrix(struct fam_writer *fw, const char *name, int64_t n_in, int64_t n_out) {
    return fam_tensor(fw, name, n_in, n_out, 0.0f, sqrtf(3.0f / (float)n_in));
}

/* Copy one metadata value, whatever its type, exactly as the source stores it. */
static int fam_copy_kv(struct gguf_writer *w, const struct gguf_kv *kv) {
    if (kv->type == GGUF_VT_STRING) {
        if (strlen(kv->str.s) != kv->str.len) return ENG_E_UNSUPPORTED;   /* an embedded NUL */
        return gguf_writer_set_str(w, kv->key, kv->str.s);
    }
    if (kv->type == GGUF_VT_ARRAY && kv->arr_type == GGUF_VT_STRING) {
        const char **v = malloc(sizeof *v * (kv->arr_n ? kv->arr_n : 1));
        if (!v) return ENG_E_NOMEM;
        for (uint64_t i = 0; i < kv->arr_n; i++) {
            if (strlen(kv->arr_str[i].s) != kv->arr_str[i].len) {
                free(v);
                return ENG_E_UNSUPPORTED;
            }
            v[i] = kv->arr_str[i].s;
        }
        int rc = gguf_writer_set_arr_str(w, kv->key, v, kv->arr_n);
        free(v);
        return rc;
    }
    if (kv->type == GGUF_VT_ARRAY) return gguf_writer_set_arr(w, kv->key, kv->arr_type, kv->arr_data, kv->arr_n);
    if (kv->type == GGUF_VT_FLOAT32) return gguf_writer_set_f32(w, kv->key, (float)kv->v.f);
    if (kv->type == GGUF_VT_FLOAT64) return gguf_writer_set_scalar(w, kv->key, kv->type, &kv->v.f);
    if (kv->type == GGUF_VT_BOOL) {
        uint8_t b = kv->v.b ? 1 : 0;
        return gguf_writer_set_scalar(w, kv->key, kv->type, &b);
    }
    /* Integers are widened into a 64-bit union member: on a little-endian host
     * its first bytes are the value at its own width, signed or not. */
    return gguf_writer_set_scalar(w, kv->key, kv->type, &kv->v.u);
}

/* Copy the tokenizer.* keys of src (in its order) and return its vocabulary size. */
static int fam_copy_tokenizer(struct fam_writer *fw, const char *src, int64_t *n_vocab) {
    struct gguf_file *g;
    int rc = gguf_open(&g, src, fw->err, fw->err_cap);
    if (rc) return rc;
    for (uint64_t i = 0; i < g->n_kv && !rc; i++) {
        const struct gguf_kv *kv = &g->kv[i];
        if (strncmp(kv->key, "tokenizer.", 10)) continue;
        if ((rc = fam_copy_kv(fw->w, kv)))
            eng_err_set(fw->err, fw->err_cap, rc, "%s: %s: cannot be copied (%s)", src, kv->key, eng_err_msg(rc));
    }
    const struct gguf_kv *tok = gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!rc && (!tok || tok->type != GGUF_VT_ARRAY || tok->arr_n < 1 || tok->arr_n > (1u << 20)))
        rc = eng_err_set(fw->err, fw->err_cap, ENG_E_FORMAT, "%s: no usable tokenizer.ggml.tokens to copy", src);
    if (!rc) *n_vocab = (int64_t)tok->arr_n;
    gguf_close(g);
    return rc;
}

static int fam_hparams(struct fam_writer *fw, const struct fam_spec *sp, const char *arch) {
    char key[128];
    int rc = 0;
#define FAM_KEY(s) (snprintf(key, sizeof key, "%s.%s", arch, s), key)
    rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("context_length"), (uint32_t)sp->n_ctx);
    rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("embedding_length"), FAM_N_EMBD);
    rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("block_count"), FAM_N_LAYER);
    rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("feed_forward_length"), FAM_N_FF);
    rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("attention.head_count"), FAM_N_HEAD);
    rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("attention.head_count_kv"), (uint32_t)sp->n_head_kv);
    rc = rc ? rc : gguf_writer_set_f32(fw->w, FAM_KEY("rope.freq_base"), sp->freq_base);
    rc = rc ? rc : gguf_writer_set_f32(fw->w, FAM_KEY("attention.layer_norm_rms_epsilon"), sp->rms_eps);
    if (sp->rope_dim_key) rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("rope.dimension_count"), (uint32_t)sp->head_dim);
    if (sp->head_dim != FAM_N_EMBD / FAM_N_HEAD) {
        rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("attention.key_length"), (uint32_t)sp->head_dim);
        rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("attention.value_length"), (uint32_t)sp->head_dim);
    }
    const char *scaling = fw->defect->scaling_type ? fw->defect->scaling_type : sp->scaling;
    if (scaling) {
        rc = rc ? rc : gguf_writer_set_str(fw->w, FAM_KEY("rope.scaling.type"), scaling);
        rc = rc ? rc : gguf_writer_set_f32(fw->w, FAM_KEY("rope.scaling.factor"), FAM_SCALE_FACTOR);
    }
    if (sp->window)
        rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("attention.sliding_window"), (uint32_t)sp->window);
    if (sp->ctx_orig)
        rc = rc ? rc : gguf_writer_set_u32(fw->w, FAM_KEY("rope.scaling.original_context_length"), (uint32_t)sp->ctx_orig);
#undef FAM_KEY
    return fam_check(fw, rc, "hyper-parameters");
}

/* Tensors in the order llama.cpp's converter writes them.  Norm weights sit
 * around 1, biases and embeddings are spread enough to matter: embedding
 * entries of standard deviation ~0.46 give logits of standard deviation ~3.7
 * over the tied output, wide enough that greedy decoding rarely meets a near
 * tie. */
static int fam_tensors(struct fam_writer *fw, const struct fam_spec *sp, int64_t n_vocab) {
    const int64_t E = FAM_N_EMBD, F = FAM_N_FF, HD = sp->head_dim;
    const int64_t QD = FAM_N_HEAD * HD, KV = sp->n_head_kv * HD;
    int rc;
    if ((rc = fam_tensor(fw, "token_embd.weight", E, n_vocab, 0.0f, 0.8f))) return rc;
    if (sp->rope_freqs) {
        /* Divisors of each pair's frequency in [1, 8] (Llama 3.1's range), drawn
         * at random rather than by its formula, so that the fast pairs, which a
         * short context exercises, get divisors other than 1 too. */
        if ((rc = fam_tensor(fw, "rope_freqs.weight", HD / 2 + fw->defect->rope_freqs_extra, 0, 4.5f, 3.5f))) return rc;
    }
    if ((rc = fam_tensor(fw, "output_norm.weight", E, 0, 1.0f, 0.1f))) return rc;
    for (int l = 0; l < FAM_N_LAYER; l++) {
        char nm[64];
#define FAM_NAME(s) (snprintf(nm, sizeof nm, "blk.%d.%s", l, s), nm)
        if ((rc = fam_tensor(fw, FAM_NAME("attn_norm.weight"), E, 0, 1.0f, 0.1f))) return rc;
        if ((rc = fam_matrix(fw, FAM_NAME("attn_q.weight"), E, QD))) return rc;
        if ((rc = fam_matrix(fw, FAM_NAME("attn_k.weight"), E, KV))) return rc;
        if ((rc = fam_matrix(fw, FAM_NAME("attn_v.weight"), E, KV))) return rc;
        if ((rc = fam_matrix(fw, FAM_NAME("attn_output.weight"), QD, E))) return rc;
        if (sp->biases) {
            if ((rc = fam_tensor(fw, FAM_NAME("attn_q.bias"), QD, 0, 0.0f, 0.6f))) return rc;
            if ((rc = fam_tensor(fw, FAM_NAME("attn_k.bias"), KV, 0, 0.0f, 0.6f))) return rc;
            if ((rc = fam_tensor(fw, FAM_NAME("attn_v.bias"), KV, 0, 0.0f, 0.6f))) return rc;
        }
        if (sp->head_norms) {
            if ((rc = fam_tensor(fw, FAM_NAME("attn_q_norm.weight"), HD, 0, 1.0f, 0.3f))) return rc;
            if ((rc = fam_tensor(fw, FAM_NAME("attn_k_norm.weight"), HD, 0, 1.0f, 0.3f))) return rc;
        }
        if ((rc = fam_tensor(fw, FAM_NAME("ffn_norm.weight"), E, 0, 1.0f, 0.1f))) return rc;
        if ((rc = fam_matrix(fw, FAM_NAME("ffn_gate.weight"), E, F))) return rc;
        if ((rc = fam_matrix(fw, FAM_NAME("ffn_up.weight"), E, F))) return rc;
        if ((rc = fam_matrix(fw, FAM_NAME("ffn_down.weight"), F, E))) return rc;
#undef FAM_NAME
    }
    return 0;
}

int fam_model_write(const char *src, const char *dst, int variant, uint64_t seed, const struct fam_defect *defect,
                    char *err, size_t err_cap) {
    static const struct fam_defect none;
    if (err && err_cap) err[0] = 0;
    if (variant < 0 || variant >= FAM_N_VARIANTS)
        return eng_err_set(err, err_cap, ENG_E_INVALID, "family model: no variant %d", variant);
    const struct fam_spec *sp = &fam_specs[variant];
    struct fam_writer fw = {.defect = defect ? defect : &none, .rng = fam_seed_state(seed), .err = err,
                            .err_cap = err_cap};
    const char *arch = fw.defect->arch ? fw.defect->arch : sp->arch;
    int64_t n_vocab = 0;
    int rc = ENG_E_NOMEM;
    if (!(fw.w = gguf_writer_new())) goto done;
    char name[64];
    snprintf(name, sizeof name, "ppd-family-%s", sp->name);
    if ((rc = fam_check(&fw, gguf_writer_set_str(fw.w, "general.architecture", arch), "general.architecture"))) goto done;
    if ((rc = fam_check(&fw, gguf_writer_set_str(fw.w, "general.name", name), "general.name"))) goto done;
    if ((rc = fam_check(&fw, gguf_writer_set_u32(fw.w, "general.file_type", 0), "general.file_type"))) goto done;
    if ((rc = fam_hparams(&fw, sp, arch))) goto done;
    if ((rc = fam_copy_tokenizer(&fw, src, &n_vocab))) goto done;
    if (sp->pre && (rc = fam_check(&fw, gguf_writer_set_str(fw.w, "tokenizer.ggml.pre", sp->pre), "tokenizer.ggml.pre")))
        goto done;
    rc = ENG_E_NOMEM;
    if (!(fw.buf = malloc(sizeof(float) * (size_t)n_vocab * FAM_N_EMBD))) goto done;
    if ((rc = fam_tensors(&fw, sp, n_vocab))) goto done;
    rc = gguf_writer_write(fw.w, dst, err, err_cap);
done:
    if (rc == ENG_E_NOMEM && err && err_cap && !err[0]) eng_err_set(err, err_cap, rc, "family model: out of memory");
    free(fw.buf);
    gguf_writer_free(fw.w);
    return rc;
}

static int fam_read_file(const char *path, uint8_t **out, size_t *size, char *err, size_t err_cap) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return eng_err_set(err, err_cap, ENG_E_IO, "%s: cannot open", path);
    int rc = ENG_E_IO;
    uint8_t *buf = NULL;
    long n = fseek(fp, 0, SEEK_END) ? -1 : ftell(fp);
    if (n < 0 || fseek(fp, 0, SEEK_SET)) goto done;
    rc = ENG_E_NOMEM;
    if (!(buf = malloc(n ? (size_t)n : 1))) goto done;
    rc = ENG_E_IO;
    if (fread(buf, 1, (size_t)n, fp) != (size_t)n) goto done;
    *out = buf;
    *size = (size_t)n;
    buf = NULL;
    rc = 0;
done:
    if (rc) eng_err_set(err, err_cap, rc, "%s: cannot read (%s)", path, eng_err_msg(rc));
    free(buf);
    fclose(fp);
    return rc;
}

int fam_patch_tensor_type(const char *path, const char *name, uint32_t type, char *err, size_t err_cap) {
    /* The tensor's info is its name (u64 length, bytes), n_dims (u32), ne
     * (n_dims u64) and then the type (u32): find the length-prefixed name,
     * which occurs once in a file whose strings hold no tensor names. */
    struct gguf_file *g;
    int rc = gguf_open(&g, path, err, err_cap);
    if (rc) return rc;
    const struct gguf_tensor *t = gguf_find_tensor(g, name);
    const uint32_t n_dims = t ? t->n_dims : 0;
    const size_t header = (size_t)g->data_offset;
    gguf_close(g);
    if (!t) return eng_err_set(err, err_cap, ENG_E_NOT_FOUND, "%s: no tensor '%s'", path, name);
    uint8_t *buf;
    size_t size;
    if ((rc = fam_read_file(path, &buf, &size, err, err_cap))) return rc;
    const uint64_t len = strlen(name);
    uint8_t pat[8 + 256];
    if (len > 256) {
        free(buf);
        return eng_err_set(err, err_cap, ENG_E_INVALID, "tensor name too long");
    }
    memcpy(pat, &len, 8);
    memcpy(pat + 8, name, (size_t)len);
    size_t at = 0, hits = 0;
    for (size_t i = 0; i + 8 + len <= header; i++)
        if (!memcmp(buf + i, pat, 8 + (size_t)len)) {
            at = i;
            hits++;
        }
    if (hits != 1) {
        free(buf);
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: the info of tensor '%s' found %zu times", path, name, hits);
    }
    memcpy(buf + at + 8 + len + 4 + 8 * (size_t)n_dims, &type, 4);
    FILE *fp = fopen(path, "wb");
    rc = fp && fwrite(buf, 1, size, fp) == size ? 0 : ENG_E_IO;
    if (fp && fclose(fp)) rc = ENG_E_IO;
    free(buf);
    if (rc) eng_err_set(err, err_cap, rc, "%s: cannot rewrite", path);
    return rc;
}

int fam_file_sha256(const char *path, char hex[ENG_SHA256_HEX], char *err, size_t err_cap) {
    uint8_t *buf;
    size_t size;
    int rc = fam_read_file(path, &buf, &size, err, err_cap);
    if (rc) return rc;
    eng_sha256_hex(buf, size, hex);
    free(buf);
    return 0;
}

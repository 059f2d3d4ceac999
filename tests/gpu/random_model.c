/* random_model.c — see random_model.h. */
#include "random_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "common/qtypes.h"

static uint64_t rm_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static float rm_frand(uint64_t *s) { return (float)((rm_next(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

static void put_f16(uint8_t *p, float f) {
    kq_f16 h = kq_f32_to_f16(f);
    memcpy(p, &h, 2);
}

void rm_fill_weight(uint8_t *p, int type, int64_t n_in, int64_t n_out, uint64_t *rng) {
    const size_t bytes = kq_row_bytes(type, n_in) * (size_t)n_out;
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        uint64_t v = rm_next(rng);
        memcpy(p + i, &v, 8);
    }
    for (size_t i = bytes & ~(size_t)7; i < bytes; i++) p[i] = (uint8_t)rm_next(rng);
    /* Float payloads and block scales are rewritten so none is NaN, Inf or
     * huge, and so an element has mean ~0 and standard deviation ~1/sqrt(n_in):
     * a product with a unit-scale input stays unit-scale, layer after layer
     * (uncentred Q4_1 weights overflowed a 30-layer model to Inf).  The
     * K-quants keep plain small scales: only single products use them. */
    const float sd = 1.0f / sqrtf((float)n_in);
    const size_t bb = kq_type_block_bytes(type), nb = bytes / bb;
    for (size_t b = 0; b < nb; b++) {
        uint8_t *q = p + b * bb;
        const float jitter = 1.0f + 0.25f * rm_frand(rng);
        switch (type) {
        case KQ_F32: { float f = rm_frand(rng) * 1.732f * sd; memcpy(q, &f, 4); break; }
        case KQ_F16: put_f16(q, rm_frand(rng) * 1.732f * sd); break;
        case KQ_BF16: {
            float f = rm_frand(rng) * 1.732f * sd;
            uint32_t u;
            memcpy(&u, &f, 4);
            uint16_t h = (uint16_t)(u >> 16);
            memcpy(q, &h, 2);
            break;
        }
        case KQ_Q4_0: put_f16(q, sd / 4.61f * jitter); break;                 /* d * (q - 8), q uniform 0..15 */
        case KQ_Q8_0: put_f16(q, sd / 73.9f * jitter); break;                 /* d * q, q uniform int8 */
        case KQ_Q4_1: {                                                       /* d * q + m */
            const float d = sd / 4.61f * jitter;
            put_f16(q, d);
            put_f16(q + 2, -7.5f * d * (1.0f + 0.05f * rm_frand(rng)));
            break;
        }
        case KQ_Q4_K: case KQ_Q5_K:
            put_f16(q, 0.002f + 0.001f * rm_frand(rng));
            put_f16(q + 2, 0.002f + 0.001f * rm_frand(rng));
            break;
        case KQ_Q6_K: put_f16(q + 208, 0.0005f + 0.0002f * rm_frand(rng)); break;
        default: break;
        }
    }
}

struct eng_hparams rm_shape_smollm2_135m(void) {
    return (struct eng_hparams){.n_vocab = 49152, .n_embd = 576, .n_layer = 30, .n_head = 9, .n_head_kv = 3,
                                .head_dim = 64, .n_ff = 1536, .n_ctx_train = 8192, .n_rot = 64, .rope_neox = 0,
                                .rope_freq_base = 100000.0f, .rms_eps = 1e-5f};
}

struct eng_hparams rm_shape_llama2_7b(void) {
    return (struct eng_hparams){.n_vocab = 32000, .n_embd = 4096, .n_layer = 32, .n_head = 32, .n_head_kv = 32,
                                .head_dim = 128, .n_ff = 11008, .n_ctx_train = 4096, .n_rot = 128, .rope_neox = 0,
                                .rope_freq_base = 10000.0f, .rms_eps = 1e-5f};
}

/* The matrices in load order, as (n_in, n_out) pairs through a callback. */
struct rm_mat { struct eng_weight *w; int64_t n_in, n_out; };

static int rm_list(struct eng_model *m, int tied, struct rm_mat *out) {
    const struct eng_hparams *hp = &m->hp;
    const int64_t E = hp->n_embd, KV = (int64_t)hp->n_head_kv * hp->head_dim, F = hp->n_ff;
    int n = 0;
    out[n++] = (struct rm_mat){&m->tok_embd, E, hp->n_vocab};
    if (!tied) out[n++] = (struct rm_mat){&m->output, E, hp->n_vocab};
    for (int l = 0; l < hp->n_layer; l++) {
        struct eng_layer *L = &m->layers[l];
        out[n++] = (struct rm_mat){&L->wq, E, E};
        out[n++] = (struct rm_mat){&L->wk, E, KV};
        out[n++] = (struct rm_mat){&L->wv, E, KV};
        out[n++] = (struct rm_mat){&L->wo, E, E};
        out[n++] = (struct rm_mat){&L->w_gate, E, F};
        out[n++] = (struct rm_mat){&L->w_up, E, F};
        out[n++] = (struct rm_mat){&L->w_down, F, E};
    }
    return n;
}

static float *rm_norm(struct eng_backend *be, int n, uint64_t *rng) {
    float *h = malloc(sizeof(float) * (size_t)n);
    if (!h) return NULL;
    for (int i = 0; i < n; i++) h[i] = 1.0f + 0.1f * rm_frand(rng);
    float *d = be->iface->buf_alloc(be->ctx, sizeof(float) * (size_t)n);
    if (d) {
        be->iface->buf_upload(be->ctx, d, h, sizeof(float) * (size_t)n);
        be->iface->sync(be->ctx);
    }
    free(h);
    return d;
}

int rm_build(struct rm_model *rm, struct eng_backend *be, const struct eng_hparams *hp, int type, int tied,
             uint64_t seed, size_t pool_cap) {
    memset(rm, 0, sizeof *rm);
    uint64_t rng = seed | 1;
    struct eng_model *m = calloc(1, sizeof *m);
    if (!m) return ENG_E_NOMEM;
    rm->m = m;
    m->be = be;
    m->hp = *hp;
    m->output_tied = tied;
    snprintf(m->name, sizeof m->name, "random %d-layer %d-wide", hp->n_layer, hp->n_embd);
    if (!(m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers))) return ENG_E_NOMEM;
    struct rm_mat *mats = calloc((size_t)hp->n_layer * 7 + 2, sizeof *mats);
    if (!mats) return ENG_E_NOMEM;
    const int n_mat = rm_list(m, tied, mats);
    size_t total = 0, largest = 0;
    for (int i = 0; i < n_mat; i++) {
        const size_t b = kq_row_bytes(type, mats[i].n_in) * (size_t)mats[i].n_out;
        total += b;
        if (b > largest) largest = b;
    }
    const int shared = total > pool_cap;
    const size_t row0 = kq_row_bytes(type, mats[0].n_in), pool_rows = (largest + row0 - 1) / row0;
    int rc = ENG_E_NOMEM;
    if (!(rm->pool = malloc(shared ? pool_rows * row0 : total))) goto done;
    if (shared) rm_fill_weight(rm->pool, type, mats[0].n_in, (int64_t)pool_rows, &rng);
    size_t off = 0;
    for (int i = 0; i < n_mat; i++) {
        const size_t b = kq_row_bytes(type, mats[i].n_in) * (size_t)mats[i].n_out;
        uint8_t *p = rm->pool + (shared ? 0 : off);
        if (!shared) rm_fill_weight(p, type, mats[i].n_in, mats[i].n_out, &rng);
        off += b;
        if ((rc = be->iface->weight_init(be->ctx, mats[i].w, type, p, mats[i].n_in, mats[i].n_out))) goto done;
        if (i > 0) rm->gpu_f16_bytes += (size_t)mats[i].n_in * (size_t)mats[i].n_out * 2;   /* the embedding is read a row at a time */
    }
    if (tied) {
        m->output = m->tok_embd;
        rm->gpu_f16_bytes += (size_t)hp->n_embd * (size_t)hp->n_vocab * 2;
    }
    m->weight_bytes = rm->gpu_f16_bytes;
    rc = ENG_E_NOMEM;
    if (!(m->output_norm = rm_norm(be, hp->n_embd, &rng))) goto done;
    for (int l = 0; l < hp->n_layer; l++)
        if (!(m->layers[l].attn_norm = rm_norm(be, hp->n_embd, &rng)) ||
            !(m->layers[l].ffn_norm = rm_norm(be, hp->n_embd, &rng)))
            goto done;
    eng_model_fuse_weights(m);
    be->iface->sync(be->ctx);
    rc = 0;
done:
    free(mats);
    return rc;
}

void rm_free(struct rm_model *rm) {
    if (rm->m && rm->m->output_tied) rm->m->output.impl = NULL;   /* freed once, through tok_embd */
    eng_model_free(rm->m);
    free(rm->pool);
    memset(rm, 0, sizeof *rm);
}

/* forward.c — embed, n_layer × (attention + SwiGLU MLP), final norm, logits.
 * The families differ only inside attention: qwen2 adds biases to q, k and v;
 * qwen3 normalises each head of q and k before RoPE. */
#include "engine/model/forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

#define BE(f) ((f)->be->iface)
#define BCTX(f) ((f)->be->ctx)

int eng_forward_init(struct eng_forward *f, struct eng_model *m, int max_rows) {
    memset(f, 0, sizeof *f);
    if (max_rows < 1) return ENG_E_RANGE;
    f->m = m;
    f->be = m->be;
    f->max_rows = max_rows;
    const struct eng_hparams *hp = &m->hp;
    const size_t R = (size_t)max_rows, E = (size_t)hp->n_embd, KV = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t FF = (size_t)hp->n_ff, NV = (size_t)hp->n_vocab, QD = (size_t)eng_hparams_q_dim(hp);
    float **bufs[] = {&f->x, &f->xn, &f->q, &f->k, &f->v, &f->attn, &f->gate, &f->up, &f->proj, &f->logits_dev};
    size_t sizes[] = {R * E, R * E, R * QD, R * KV, R * KV, R * QD, R * FF, R * FF, R * E, R * NV};
    for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        *bufs[i] = BE(f)->buf_alloc(BCTX(f), sizes[i] * sizeof(float));
        if (!*bufs[i]) goto err;
    }
    f->ids_dev = BE(f)->buf_alloc(BCTX(f), R * sizeof(int32_t));
    f->logits = calloc(R * NV, sizeof(float));
    f->logit_rows = calloc(R, sizeof(int32_t));
    f->row_logit = calloc(R, sizeof(int32_t));
    if (!f->ids_dev || !f->logits || !f->logit_rows || !f->row_logit) goto err;
    return 0;
err:
    eng_forward_free(f);
    return ENG_E_NOMEM;
}

void eng_forward_free(struct eng_forward *f) {
    if (!f || !f->be) return;
    float *bufs[] = {f->x, f->xn, f->q, f->k, f->v, f->attn, f->gate, f->up, f->proj, f->logits_dev};
    for (unsigned i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) BE(f)->buf_free(BCTX(f), bufs[i]);
    if (f->ids_dev) BE(f)->buf_free(BCTX(f), f->ids_dev);
    free(f->logits);
    free(f->logit_rows);
    free(f->row_logit);
    memset(f, 0, sizeof *f);
}

static int forward_check_batch(const struct eng_forward *f, const struct eng_batch *b, const struct eng_kv *kv,
                               int n_extra) {
    if (b->n_tok < 1 || b->n_tok > f->max_rows) return ENG_E_RANGE;
    for (int r = 0; r < b->n_tok; r++) {
        if (b->slot[r] < 0 || b->slot[r] >= kv->n_slot) return ENG_E_RANGE;
        if (b->kv_idx[r] < 0 || b->kv_idx[r] >= kv->max_seq) return ENG_E_TOO_LONG;
        if (b->n_prefix[r] < 0 || b->grp_first[r] < b->n_prefix[r] || b->grp_len[r] > b->vis_words * 64 ||
            b->grp_first[r] + b->grp_len[r] > kv->max_seq)
            return ENG_E_RANGE;
        if (b->token[r] >= f->m->hp.n_vocab || b->token[r] < -n_extra) return ENG_E_RANGE;
    }
    return 0;
}

int eng_forward_run(struct eng_forward *f, const struct eng_batch *b, struct eng_kv *kv,
                    const float *extra, int n_extra) {
    return eng_forward_run_deep(f, b, kv, extra, n_extra, NULL, 0);
}

int eng_forward_run_deep(struct eng_forward *f, const struct eng_batch *b, struct eng_kv *kv, const float *extra,
                         int n_extra, const float *deep, int n_deep) {
    int rc = forward_check_batch(f, b, kv, n_extra);
    if (rc) return rc;
    if (deep && (!BE(f)->add_rows || n_deep < 1)) return ENG_E_UNSUPPORTED;
    const struct eng_model *m = f->m;
    const struct eng_hparams *hp = &m->hp;
    const int n = b->n_tok, E = hp->n_embd, KV = hp->n_head_kv * hp->head_dim;
    const float scale = 1.0f / sqrtf((float)hp->head_dim);
    const struct kq_rope rope = eng_hparams_rope(hp);

    BE(f)->embed(BCTX(f), &m->tok_embd, b->token, n, extra, n_extra, f->x);

    for (int l = 0; l < hp->n_layer; l++) {
        const struct eng_layer *L = &m->layers[l];
        if (deep && l >= 1 && l <= n_deep)   /* deep prompts: this layer's vector joins the prompt rows */
            BE(f)->add_rows(BCTX(f), f->x, b->token, n, deep + (size_t)(l - 1) * n_extra * E, n_extra, E);
        /* attention */
        BE(f)->rmsnorm(BCTX(f), f->x, L->attn_norm, n, E, hp->rms_eps, f->xn);
        const struct eng_weight *qkv_w[3] = {&L->wq, &L->wk, &L->wv};
        float *qkv_out[3] = {f->q, f->k, f->v};
        BE(f)->matmul(BCTX(f), qkv_w, qkv_out, 3, f->xn, n);
        if (L->bq) {
            BE(f)->add_bias(BCTX(f), f->q, L->bq, n, eng_hparams_q_dim(hp));
            BE(f)->add_bias(BCTX(f), f->k, L->bk, n, KV);
            BE(f)->add_bias(BCTX(f), f->v, L->bv, n, KV);
        }
        if (L->q_norm) {   /* each head a row of head_dim */
            BE(f)->rmsnorm(BCTX(f), f->q, L->q_norm, n * hp->n_head, hp->head_dim, hp->rms_eps, f->q);
            BE(f)->rmsnorm(BCTX(f), f->k, L->k_norm, n * hp->n_head_kv, hp->head_dim, hp->rms_eps, f->k);
        }
        BE(f)->rope_kv_store(BCTX(f), f->q, f->k, f->v, b, kv, l, hp->n_head, hp->n_head_kv, hp->head_dim, &rope);
        BE(f)->attention(BCTX(f), f->q, b, kv, l, hp->n_head, hp->n_head_kv, hp->head_dim, scale, hp->n_swa,
                          f->attn);
        const struct eng_weight *o_w[1] = {&L->wo};
        float *o_out[1] = {f->proj};
        BE(f)->matmul(BCTX(f), o_w, o_out, 1, f->attn, n);
        BE(f)->add(BCTX(f), f->x, f->proj, n, E);
        /* feed-forward */
        BE(f)->rmsnorm(BCTX(f), f->x, L->ffn_norm, n, E, hp->rms_eps, f->xn);
        const struct eng_weight *gu_w[2] = {&L->w_gate, &L->w_up};
        float *gu_out[2] = {f->gate, f->up};
        BE(f)->matmul(BCTX(f), gu_w, gu_out, 2, f->xn, n);
        BE(f)->swiglu(BCTX(f), f->gate, f->up, n, hp->n_ff, f->gate);
        const struct eng_weight *d_w[1] = {&L->w_down};
        float *d_out[1] = {f->proj};
        BE(f)->matmul(BCTX(f), d_w, d_out, 1, f->gate, n);
        BE(f)->add(BCTX(f), f->x, f->proj, n, E);
    }

    /* Gather the rows that want logits (usually the last of each sequence, or
     * every tree row for PPD) so the vocabulary matmul runs only for them. */
    int n_out = 0;
    for (int r = 0; r < n; r++) {
        f->row_logit[r] = b->want_logits[r] ? n_out : -1;
        if (!b->want_logits[r]) continue;
        if (n_out != r)
            BE(f)->buf_copy(BCTX(f), f->x + (size_t)n_out * E, f->x + (size_t)r * E, sizeof(float) * (size_t)E);
        f->logit_rows[n_out++] = r;
    }
    f->n_logits = n_out;
    if (n_out == 0) return 0;
    BE(f)->rmsnorm(BCTX(f), f->x, m->output_norm, n_out, E, hp->rms_eps, f->xn);
    const struct eng_weight *out_w[1] = {&m->output};
    float *out_out[1] = {f->logits_dev};
    BE(f)->matmul(BCTX(f), out_w, out_out, 1, f->xn, n_out);
    BE(f)->buf_download(BCTX(f), f->logits, f->logits_dev, sizeof(float) * (size_t)n_out * hp->n_vocab);
    BE(f)->sync(BCTX(f));
    return 0;
}

/* train_model.c — float forward and backward through the prompt-token rows
 * (see train_model.h for what is computed and why only these rows).
 *
 * Rows are ordered cut by cut: row c*N + i is prompt token i of cut c.  Per
 * layer the forward pass keeps what the backward pass needs (the layer input,
 * q/k/v after RoPE, attention probabilities, attention output, the mid
 * residual, gate and up); the backward pass walks the layers in reverse.
 * Products go through kq_gemm_f32_nt split over threads by output; attention
 * and the loss are split by cut or row, each item done wholly by one thread,
 * so nothing depends on the thread count.
 */
#include "engine/train/train_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "kernels/cpu/gemm_f32.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/ops.h"
#include "engine/model/threadpool.h"

/* ---------------------------------------------------------------- weights -- */

static float *tm_alloc(struct eng_tm *tm, size_t n) {
    float *p = malloc(n * sizeof(float));
    if (p) tm->bytes += n * sizeof(float);
    return p;
}

static float *tm_transpose(struct eng_tm *tm, const float *w, int64_t n_out, int64_t n_in) {
    float *t = tm_alloc(tm, (size_t)(n_out * n_in));
    if (!t) return NULL;
    for (int64_t o = 0; o < n_out; o++)
        for (int64_t i = 0; i < n_in; i++) t[i * n_out + o] = w[o * n_in + i];
    return t;
}

/* A matrix and its transpose; from a CPU weight when src is not NULL. */
static int tm_matrix(struct eng_tm *tm, const struct eng_weight *src, int64_t n_out, int64_t n_in, float **w,
                     float **wT, uint64_t *rng, float scale) {
    *w = tm_alloc(tm, (size_t)(n_out * n_in));
    if (!*w) return ENG_E_NOMEM;
    if (src) {
        if (src->n_out != n_out || src->n_in != n_in || !src->impl) return ENG_E_INVALID;
        for (int64_t o = 0; o < n_out; o++) kq_weight_row_f32(src->impl, o, *w + o * n_in);
    } else {
        for (int64_t j = 0; j < n_out * n_in; j++) {
            *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
            (*w)[j] = scale * (2.0f * (float)((*rng >> 40) & 0xFFFFFF) / 16777216.0f - 1.0f);
        }
    }
    *wT = tm_transpose(tm, *w, n_out, n_in);
    return *wT ? 0 : ENG_E_NOMEM;
}

static int tm_norm(struct eng_tm *tm, const float *src, int n, float **out, uint64_t *rng) {
    *out = tm_alloc(tm, (size_t)n);
    if (!*out) return ENG_E_NOMEM;
    for (int i = 0; i < n; i++) {
        if (src) { (*out)[i] = src[i]; continue; }
        *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
        (*out)[i] = 1.0f + 0.25f * ((float)((*rng >> 40) & 0xFFFFFF) / 16777216.0f - 0.5f);
    }
    return 0;
}

/* A bias vector: the model's, or uniform in ±scale. */
static int tm_bias(struct eng_tm *tm, const float *src, int n, float **out, uint64_t *rng, float scale) {
    *out = tm_alloc(tm, (size_t)n);
    if (!*out) return ENG_E_NOMEM;
    for (int i = 0; i < n; i++) {
        if (src) { (*out)[i] = src[i]; continue; }
        *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
        (*out)[i] = scale * (2.0f * (float)((*rng >> 40) & 0xFFFFFF) / 16777216.0f - 1.0f);
    }
    return 0;
}

static int tm_build(struct eng_tm **out, const struct eng_model *m, const struct eng_hparams *hp, uint64_t seed,
                    float scale, int n_threads) {
    *out = NULL;
    struct eng_tm *tm = calloc(1, sizeof *tm);
    if (!tm) return ENG_E_NOMEM;
    tm->hp = *hp;
    tm->kv_dim = hp->n_head_kv * hp->head_dim;
    tm->q_dim = eng_hparams_q_dim(hp);
    int rc = eng_pool_init(&tm->pool, n_threads);
    if (rc) goto err;
    rc = ENG_E_NOMEM;
    if (hp->rope_freq_factors) {   /* the model may be closed before training ends */
        if (!(tm->rope_ff = tm_alloc(tm, (size_t)(hp->n_rot / 2)))) goto err;
        memcpy(tm->rope_ff, hp->rope_freq_factors, sizeof(float) * (size_t)(hp->n_rot / 2));
        tm->hp.rope_freq_factors = tm->rope_ff;
    }
    tm->layers = calloc((size_t)hp->n_layer, sizeof *tm->layers);
    if (!tm->layers) goto err;
    uint64_t rng = seed * 2654435761ULL + 1;
    const int64_t H = hp->n_embd, KV = tm->kv_dim, F = hp->n_ff, QD = tm->q_dim;
    for (int l = 0; l < hp->n_layer; l++) {
        struct eng_tm_layer *L = &tm->layers[l];
        const struct eng_layer *ml = m ? &m->layers[l] : NULL;
        if ((rc = tm_norm(tm, ml ? ml->attn_norm : NULL, (int)H, &L->attn_norm, &rng)) ||
            (rc = tm_norm(tm, ml ? ml->ffn_norm : NULL, (int)H, &L->ffn_norm, &rng)) ||
            (rc = tm_matrix(tm, ml ? &ml->wq : NULL, QD, H, &L->wq, &L->wqT, &rng, scale)) ||
            (rc = tm_matrix(tm, ml ? &ml->wk : NULL, KV, H, &L->wk, &L->wkT, &rng, scale)) ||
            (rc = tm_matrix(tm, ml ? &ml->wv : NULL, KV, H, &L->wv, &L->wvT, &rng, scale)) ||
            (rc = tm_matrix(tm, ml ? &ml->wo : NULL, H, QD, &L->wo, &L->woT, &rng, scale)) ||
            (rc = tm_matrix(tm, ml ? &ml->w_gate : NULL, F, H, &L->wg, &L->wgT, &rng, scale)) ||
            (rc = tm_matrix(tm, ml ? &ml->w_up : NULL, F, H, &L->wu, &L->wuT, &rng, scale)) ||
            (rc = tm_matrix(tm, ml ? &ml->w_down : NULL, H, F, &L->wd, &L->wdT, &rng, scale)))
            goto err;
        if (hp->arch == ENG_ARCH_QWEN2 &&
            ((rc = tm_bias(tm, ml ? ml->bq : NULL, (int)QD, &L->bq, &rng, 0.5f)) ||
             (rc = tm_bias(tm, ml ? ml->bk : NULL, (int)KV, &L->bk, &rng, 0.5f)) ||
             (rc = tm_bias(tm, ml ? ml->bv : NULL, (int)KV, &L->bv, &rng, 0.5f))))
            goto err;
        if (hp->arch == ENG_ARCH_QWEN3 &&
            ((rc = tm_norm(tm, ml ? ml->q_norm : NULL, hp->head_dim, &L->q_norm, &rng)) ||
             (rc = tm_norm(tm, ml ? ml->k_norm : NULL, hp->head_dim, &L->k_norm, &rng))))
            goto err;
    }
    if ((rc = tm_norm(tm, m ? m->output_norm : NULL, (int)H, &tm->out_norm, &rng)) ||
        (rc = tm_matrix(tm, m ? &m->output : NULL, hp->n_vocab, H, &tm->wout, &tm->woutT, &rng, scale)))
        goto err;
    *out = tm;
    return 0;
err:
    eng_tm_free(tm);
    return rc;
}

int eng_tm_from_model(struct eng_tm **out, const struct eng_model *m, int n_threads, char *err, size_t err_cap) {
    if (strcmp(m->be->iface->name, "cpu") != 0) {
        snprintf(err, err_cap, "training needs the model on the CPU backend (it is on %s)", m->be->iface->name);
        return ENG_E_UNSUPPORTED;
    }
    int rc = tm_build(out, m, &m->hp, 0, 0.0f, n_threads);
    if (rc) snprintf(err, err_cap, "cannot prepare %s's weights for training: %s", m->name, eng_err_msg(rc));
    return rc;
}

int eng_tm_random(struct eng_tm **out, const struct eng_hparams *hp, uint64_t seed, float scale, int n_threads) {
    return tm_build(out, NULL, hp, seed, scale, n_threads);
}

void eng_tm_free(struct eng_tm *tm) {
    if (!tm) return;
    if (tm->layers) {
        for (int l = 0; l < tm->hp.n_layer; l++) {
            struct eng_tm_layer *L = &tm->layers[l];
            float *p[] = {L->attn_norm, L->ffn_norm, L->wq, L->wk, L->wv, L->wo, L->wg, L->wu, L->wd,
                          L->wqT, L->wkT, L->wvT, L->woT, L->wgT, L->wuT, L->wdT,
                          L->bq, L->bk, L->bv, L->q_norm, L->k_norm};
            for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
        }
        free(tm->layers);
    }
    free(tm->rope_ff);
    free(tm->out_norm);
    free(tm->wout);
    free(tm->woutT);
    eng_pool_free(tm->pool);
    free(tm);
}

/* ------------------------------------------------------------------ scratch -- */

struct tm_act {             /* what one layer keeps for the backward pass */
    float *hin, *q, *k, *v, *p, *o, *hmid, *g, *u;
    float *qpre, *kpre;     /* qwen3: q and k before their head norms */
};

struct eng_tm_work {
    int n_prompt, max_cuts, max_prefix, max_rows, p_stride;
    int n_layer;
    struct tm_act *act;     /* [n_layer] */
    float *hfin, *a, *s, *logits, *dh, *da, *dq, *dk, *dv, *dsub, *dg, *du, *dtmp;
    float *dp;              /* [threads, p_stride] attention backward scratch */
    int32_t *row_pos;
    void *block;            /* one allocation for all of the above */
    enum eng_tm_loss loss;
    int deep;               /* emb and grad are [n_layer][N][H]: a prompt vector per layer */
};

void eng_tm_work_set_loss(struct eng_tm_work *w, enum eng_tm_loss loss) { w->loss = loss; }
void eng_tm_work_set_deep(struct eng_tm_work *w, int deep) { w->deep = deep; }

int eng_tm_work_init(struct eng_tm_work **out, const struct eng_tm *tm, int n_prompt, int max_cuts, int max_prefix) {
    *out = NULL;
    if (n_prompt < 1 || n_prompt > ENG_PPD_MAX_PROMPT || max_cuts < 1 || max_prefix < 1) return ENG_E_INVALID;
    struct eng_tm_work *w = calloc(1, sizeof *w);
    if (!w) return ENG_E_NOMEM;
    const struct eng_hparams *hp = &tm->hp;
    w->n_prompt = n_prompt;
    w->max_cuts = max_cuts;
    w->max_prefix = max_prefix;
    w->max_rows = n_prompt * max_cuts;
    w->p_stride = max_prefix + n_prompt;
    w->n_layer = hp->n_layer;
    const size_t R = (size_t)w->max_rows, H = (size_t)hp->n_embd, KV = (size_t)tm->kv_dim, F = (size_t)hp->n_ff;
    const size_t QD = (size_t)tm->q_dim, HQ = H > QD ? H : QD, NQ = hp->arch == ENG_ARCH_QWEN3;
    const size_t P = R * (size_t)hp->n_head * (size_t)w->p_stride;
    const size_t per_layer = R * (2 * H + 2 * QD + 2 * KV + 2 * F + NQ * (QD + KV)) + P;
    const size_t common = R * (2 * H + F + (size_t)hp->n_vocab + 2 * H + QD + 2 * KV + 3 * F + HQ);
    w->act = calloc((size_t)hp->n_layer, sizeof *w->act);
    w->block = malloc((per_layer * (size_t)hp->n_layer + common) * sizeof(float));
    w->row_pos = malloc(R * sizeof(int32_t));
    w->dp = malloc((size_t)eng_pool_n_threads(tm->pool) * (size_t)w->p_stride * sizeof(float));
    if (!w->act || !w->block || !w->row_pos || !w->dp) { eng_tm_work_free(w); return ENG_E_NOMEM; }
    float *p = w->block;
#define TAKE(dst, n) do { (dst) = p; p += (n); } while (0)
    for (int l = 0; l < hp->n_layer; l++) {
        struct tm_act *A = &w->act[l];
        TAKE(A->hin, R * H); TAKE(A->q, R * QD); TAKE(A->k, R * KV); TAKE(A->v, R * KV);
        TAKE(A->p, P); TAKE(A->o, R * QD); TAKE(A->hmid, R * H); TAKE(A->g, R * F); TAKE(A->u, R * F);
        if (NQ) { TAKE(A->qpre, R * QD); TAKE(A->kpre, R * KV); }
    }
    TAKE(w->hfin, R * H); TAKE(w->a, R * H); TAKE(w->s, R * F); TAKE(w->logits, R * (size_t)hp->n_vocab);
    TAKE(w->dh, R * H); TAKE(w->da, R * H); TAKE(w->dq, R * QD); TAKE(w->dk, R * KV); TAKE(w->dv, R * KV);
    TAKE(w->dsub, R * F); TAKE(w->dg, R * F); TAKE(w->du, R * F); TAKE(w->dtmp, R * HQ);
#undef TAKE
    *out = w;
    return 0;
}

void eng_tm_work_free(struct eng_tm_work *w) {
    if (!w) return;
    free(w->act);
    free(w->block);
    free(w->row_pos);
    free(w->dp);
    free(w);
}

/* ------------------------------------------------------------- parallel ops -- */

struct tm_gemm_job {
    const float *x, *b;
    int64_t ldx, ldb, k, ldy, n_out;
    float *y;
    int n_rows, accumulate;
};

static void tm_gemm_region(void *arg, int ith, int nth) {
    const struct tm_gemm_job *j = arg;
    long b, e;
    eng_split(j->n_out, ith, nth, 3, &b, &e);
    if (b < e) kq_gemm_f32_nt(j->x, j->ldx, j->n_rows, j->b, j->ldb, j->k, j->y, j->ldy, b, e, j->accumulate);
}

/* y [R, n_out] (+)= x [R, k] · bᵀ, b = [n_out, k]. */
static void tm_gemm(const struct eng_tm *tm, const float *x, int n_rows, const float *b, int64_t k, int64_t n_out,
                    float *y, int accumulate) {
    struct tm_gemm_job j = {x, b, k, k, k, n_out, n_out, y, n_rows, accumulate};
    eng_pool_run(tm->pool, tm_gemm_region, &j);
}

/* dx = rmsnorm'(x, w) applied to dy (one row of n), added to out. */
static void tm_rmsnorm_back_add(const float *x, const float *w, const float *dy, int n, float eps, float *out) {
    double ss = 0.0, dot = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    const double r = 1.0 / sqrt(ss / n + (double)eps);
    for (int i = 0; i < n; i++) dot += (double)x[i] * (double)w[i] * (double)dy[i];
    const double c = r * r * r * dot / n;
    for (int i = 0; i < n; i++) out[i] += (float)(r * (double)w[i] * (double)dy[i] - (double)x[i] * c);
}

/* ---------------------------------------------------------------- attention -- */

struct tm_run {
    const struct eng_tm *tm;
    struct eng_tm_work *w;
    const struct eng_tm_cut *cuts;
    int n_cut, N, layer, topk;
    const float *wt;
    int backward;                    /* the loss pass replaces logits by their gradient */
    int ce;                          /* cross-entropy on the teacher's top token instead of KL */
    float grad_scale;
    struct tm_act *A;
    double *row_kl;                  /* [R] */
    int *row_rank;                   /* [R] */
};

/* The first key a row with n_keys keys (positions 0 .. n_keys - 1, its own
 * last) sees: under a sliding window of W, the positions > its own - W. */
static inline int tm_first_key(const struct eng_hparams *hp, int n_keys) {
    return hp->n_swa > 0 && n_keys > hp->n_swa ? n_keys - hp->n_swa : 0;
}

/* Key j of head group g as row r sees it: prefix entries, then prompt rows. */
static inline const float *tm_key(const struct tm_run *t, const struct eng_tm_cut *c, int cut, int j, int g,
                                  const float *prompt_kv, const float *prefix_kv) {
    const int KV = t->tm->kv_dim, hd = t->tm->hp.head_dim;
    if (j < c->n_prefix) return prefix_kv + (size_t)t->layer * c->layer_stride + (size_t)j * KV + (size_t)g * hd;
    return prompt_kv + ((size_t)cut * t->N + (size_t)(j - c->n_prefix)) * KV + (size_t)g * hd;
}

static void tm_attn_fwd_region(void *arg, int ith, int nth) {
    struct tm_run *t = arg;
    const struct eng_hparams *hp = &t->tm->hp;
    const int hd = hp->head_dim, H = t->tm->q_dim, grp = hp->n_head / hp->n_head_kv;
    const float scale = 1.0f / sqrtf((float)hd);
    long cb, ce;
    eng_split(t->n_cut, ith, nth, 1, &cb, &ce);
    for (long c = cb; c < ce; c++) {
        const struct eng_tm_cut *cut = &t->cuts[c];
        for (int i = 0; i < t->N; i++) {
            const long r = c * t->N + i;
            const int n_keys = cut->n_prefix + i + 1, j0 = tm_first_key(hp, n_keys);
            for (int h = 0; h < hp->n_head; h++) {
                const int g = h / grp;
                const float *q = t->A->q + r * H + (long)h * hd;
                float *p = t->A->p + ((size_t)r * hp->n_head + (size_t)h) * t->w->p_stride;
                for (int j = j0; j < n_keys; j++)
                    p[j] = scale * kq_dot_f32(q, tm_key(t, cut, (int)c, j, g, t->A->k, cut->k), hd);
                kq_softmax(p + j0, n_keys - j0);
                float *o = t->A->o + r * H + (long)h * hd;
                memset(o, 0, (size_t)hd * sizeof(float));
                for (int j = j0; j < n_keys; j++) kq_axpy_f32(o, p[j], tm_key(t, cut, (int)c, j, g, t->A->v, cut->v), hd);
            }
        }
    }
}

/* Given dO (w->dtmp), the gradients of q (w->dq) and of the prompt rows' own
 * keys and values (w->dk, w->dv); prefix keys and values are constants. */
static void tm_attn_bwd_region(void *arg, int ith, int nth) {
    struct tm_run *t = arg;
    const struct eng_hparams *hp = &t->tm->hp;
    const int hd = hp->head_dim, H = t->tm->q_dim, KV = t->tm->kv_dim, grp = hp->n_head / hp->n_head_kv;
    const float scale = 1.0f / sqrtf((float)hd);
    struct eng_tm_work *w = t->w;
    float *dp = w->dp + (size_t)ith * w->p_stride;   /* this thread's dO · v_j */
    long cb, ce;
    eng_split(t->n_cut, ith, nth, 1, &cb, &ce);
    for (long c = cb; c < ce; c++) {
        const struct eng_tm_cut *cut = &t->cuts[c];
        memset(w->dk + c * t->N * KV, 0, (size_t)t->N * KV * sizeof(float));
        memset(w->dv + c * t->N * KV, 0, (size_t)t->N * KV * sizeof(float));
        for (int i = 0; i < t->N; i++) {
            const long r = c * t->N + i;
            const int n_keys = cut->n_prefix + i + 1, j0 = tm_first_key(hp, n_keys);
            for (int h = 0; h < hp->n_head; h++) {
                const int g = h / grp;
                const float *p = t->A->p + ((size_t)r * hp->n_head + (size_t)h) * w->p_stride;
                const float *dout = w->dtmp + r * H + (long)h * hd;
                const float *q = t->A->q + r * H + (long)h * hd;
                float *dq = w->dq + r * H + (long)h * hd;
                double sum = 0.0;
                memset(dq, 0, (size_t)hd * sizeof(float));
                for (int j = j0; j < n_keys; j++) {
                    dp[j] = kq_dot_f32(dout, tm_key(t, cut, (int)c, j, g, t->A->v, cut->v), hd);
                    sum += (double)p[j] * (double)dp[j];
                }
                for (int j = j0; j < n_keys; j++) {
                    const float dsj = (float)((double)p[j] * ((double)dp[j] - sum));
                    kq_axpy_f32(dq, scale * dsj, tm_key(t, cut, (int)c, j, g, t->A->k, cut->k), hd);
                    if (j >= cut->n_prefix) {
                        const long rj = c * t->N + (j - cut->n_prefix);
                        kq_axpy_f32(w->dk + rj * KV + (long)g * hd, scale * dsj, q, hd);
                        kq_axpy_f32(w->dv + rj * KV + (long)g * hd, p[j], dout, hd);
                    }
                }
            }
        }
    }
}

/* ---------------------------------------------------------------------- loss -- */

/* Per row: the teacher's and the student's distributions come from the
 * vectorised kq_softmax (float probabilities; about 100x faster than four
 * double exp() calls per vocabulary entry, which cost ~7% of a training step);
 * the log-sum-exps follow from the probability of each argmax (exp(0) / sum),
 * and KL = sum_v p_t (l_t - l_s) is taken as
 * sum_v p_t (t_v - s_v) - (lse_t - lse_s) sum_v p_t, in double. */
static void tm_loss_region(void *arg, int ith, int nth) {
    struct tm_run *t = arg;
    const int V = t->tm->hp.n_vocab;
    const long R = (long)t->n_cut * t->N;
    long rb, re;
    eng_split(R, ith, nth, 1, &rb, &re);
    if (rb >= re) return;
    float *pt = malloc((size_t)V * sizeof(float));
    if (!pt) abort(); /* 200 KB in the middle of a step: nothing sensible to return */
    for (long r = rb; r < re; r++) {
        const int i = (int)(r % t->N);
        const float *tl = t->cuts[r / t->N].teacher + (size_t)i * V;
        float *sl = t->w->logits + (size_t)r * V;
        float tmax = -INFINITY, smax = -INFINITY;
        int targ = 0, sarg = 0;
        for (int v = 0; v < V; v++) {
            if (tl[v] > tmax) { tmax = tl[v]; targ = v; }
            if (sl[v] > smax) { smax = sl[v]; sarg = v; }
        }
        const float s_top = sl[targ];
        int rank = 0;
        for (int v = 0; v < V; v++)
            if (sl[v] > s_top || (sl[v] == s_top && v < targ)) rank++;
        double cross = 0.0, mass = 1.0, tlse = 0.0;
        if (!t->ce) {
            memcpy(pt, tl, (size_t)V * sizeof(float));
            kq_softmax(pt, V);
            tlse = (double)tmax - log((double)pt[targ]);
            mass = 0.0;
            for (int v = 0; v < V; v++) {
                cross += (double)pt[v] * ((double)tl[v] - (double)sl[v]);
                mass += (double)pt[v];
            }
        }
        kq_softmax(sl, V);   /* from here sl holds the student's probabilities */
        const double slse = (double)smax - log((double)sl[sarg]);
        t->row_kl[r] = t->ce ? slse - (double)s_top : cross - (tlse - slse) * mass;
        t->row_rank[r] = rank;
        if (t->backward) {   /* the gradient replaces the logits */
            const double g = (double)t->wt[i] * (double)t->grad_scale;
            for (int v = 0; v < V; v++) {
                const double target = t->ce ? (v == targ) : (double)pt[v];
                sl[v] = (float)(g * ((double)sl[v] - target));
            }
        }
    }
    free(pt);
}

/* ------------------------------------------------------------------- driver -- */

int eng_tm_run(const struct eng_tm *tm, struct eng_tm_work *w, const float *emb, int n_prompt,
               const struct eng_tm_cut *cuts, int n_cut, const float *wt, float *grad, float grad_scale, int topk,
               struct eng_tm_result *res, int *ranks) {
    const struct eng_hparams *hp = &tm->hp;
    if (n_prompt != w->n_prompt || n_cut < 1 || n_cut > w->max_cuts || topk < 1 || topk > ENG_PPD_MAX_TOPK)
        return ENG_E_RANGE;
    for (int c = 0; c < n_cut; c++)
        if (cuts[c].n_prefix < 1 || cuts[c].n_prefix > w->max_prefix) return ENG_E_RANGE;
    const int N = n_prompt, R = n_cut * N, H = hp->n_embd, KV = tm->kv_dim, F = hp->n_ff, V = hp->n_vocab;
    const int QD = tm->q_dim, hd = hp->head_dim;
    const struct kq_rope rope = eng_hparams_rope(hp);
    const int backward = grad != NULL;
    double *row_kl = malloc((size_t)R * sizeof(double));
    int *row_rank = malloc((size_t)R * sizeof(int));
    if (!row_kl || !row_rank) { free(row_kl); free(row_rank); return ENG_E_NOMEM; }
    struct tm_run t = {tm, w, cuts, n_cut, N, 0, topk, wt, backward, w->loss == ENG_TM_LOSS_CE, grad_scale, NULL, row_kl,
                       row_rank};
    for (int r = 0; r < R; r++) w->row_pos[r] = cuts[r / N].n_prefix + r % N;

    /* forward */
    float *h = w->act[0].hin;
    for (int r = 0; r < R; r++) memcpy(h + (size_t)r * H, emb + (size_t)(r % N) * H, (size_t)H * sizeof(float));
    for (int l = 0; l < hp->n_layer; l++) {
        const struct eng_tm_layer *L = &tm->layers[l];
        struct tm_act *A = &w->act[l];
        if (l > 0) memcpy(A->hin, w->hfin, (size_t)R * H * sizeof(float));
        if (l > 0 && w->deep)   /* deep prompts: layer l's own vector joins the prompt rows' residual */
            for (int r = 0; r < R; r++) {
                const float *dv = emb + ((size_t)l * N + (size_t)(r % N)) * H;
                float *x = A->hin + (size_t)r * H;
                for (int j = 0; j < H; j++) x[j] += dv[j];
            }
        for (int r = 0; r < R; r++) kq_rmsnorm_row(A->hin + (size_t)r * H, L->attn_norm, H, hp->rms_eps, w->a + (size_t)r * H);
        tm_gemm(tm, w->a, R, L->wq, H, QD, A->q, 0);
        tm_gemm(tm, w->a, R, L->wk, H, KV, A->k, 0);
        tm_gemm(tm, w->a, R, L->wv, H, KV, A->v, 0);
        if (L->bq)
            for (int r = 0; r < R; r++) {
                kq_add(A->q + (size_t)r * QD, L->bq, QD);
                kq_add(A->k + (size_t)r * KV, L->bk, KV);
                kq_add(A->v + (size_t)r * KV, L->bv, KV);
            }
        if (L->q_norm) {   /* each head normalised on its own; the inputs kept for the backward pass */
            memcpy(A->qpre, A->q, (size_t)R * QD * sizeof(float));
            memcpy(A->kpre, A->k, (size_t)R * KV * sizeof(float));
            for (int e = 0; e < R * hp->n_head; e++) kq_rmsnorm_row(A->q + (size_t)e * hd, L->q_norm, hd, hp->rms_eps, A->q + (size_t)e * hd);
            for (int e = 0; e < R * hp->n_head_kv; e++) kq_rmsnorm_row(A->k + (size_t)e * hd, L->k_norm, hd, hp->rms_eps, A->k + (size_t)e * hd);
        }
        for (int r = 0; r < R; r++) {
            kq_rope_row(A->q + (size_t)r * QD, hp->n_head, hd, w->row_pos[r], &rope);
            kq_rope_row(A->k + (size_t)r * KV, hp->n_head_kv, hd, w->row_pos[r], &rope);
        }
        t.layer = l;
        t.A = A;
        eng_pool_run(tm->pool, tm_attn_fwd_region, &t);
        memcpy(A->hmid, A->hin, (size_t)R * H * sizeof(float));
        tm_gemm(tm, A->o, R, L->wo, QD, H, A->hmid, 1);
        for (int r = 0; r < R; r++) kq_rmsnorm_row(A->hmid + (size_t)r * H, L->ffn_norm, H, hp->rms_eps, w->a + (size_t)r * H);
        tm_gemm(tm, w->a, R, L->wg, H, F, A->g, 0);
        tm_gemm(tm, w->a, R, L->wu, H, F, A->u, 0);
        for (int r = 0; r < R; r++) kq_swiglu(A->g + (size_t)r * F, A->u + (size_t)r * F, F, w->s + (size_t)r * F);
        memcpy(w->hfin, A->hmid, (size_t)R * H * sizeof(float));
        tm_gemm(tm, w->s, R, L->wd, F, H, w->hfin, 1);
    }
    for (int r = 0; r < R; r++) kq_rmsnorm_row(w->hfin + (size_t)r * H, tm->out_norm, H, hp->rms_eps, w->a + (size_t)r * H);
    tm_gemm(tm, w->a, R, tm->wout, H, V, w->logits, 0);
    eng_pool_run(tm->pool, tm_loss_region, &t);

    memset(res, 0, sizeof *res);
    res->n_cut = n_cut;
    for (int r = 0; r < R; r++) {
        res->loss += (double)wt[r % N] * row_kl[r];
        res->kl[r % N] += row_kl[r];
        if (row_rank[r] < topk) res->hits[r % N][row_rank[r]]++;
        if (ranks) ranks[r] = row_rank[r] < topk ? row_rank[r] : topk;
    }
    free(row_kl);
    free(row_rank);
    if (!backward) return 0;

    /* backward: w->logits now holds ∂(scaled loss)/∂logits */
    tm_gemm(tm, w->logits, R, tm->woutT, V, H, w->dtmp, 0);
    memset(w->dh, 0, (size_t)R * H * sizeof(float));
    for (int r = 0; r < R; r++)
        tm_rmsnorm_back_add(w->hfin + (size_t)r * H, tm->out_norm, w->dtmp + (size_t)r * H, H, hp->rms_eps, w->dh + (size_t)r * H);
    for (int l = hp->n_layer - 1; l >= 0; l--) {
        const struct eng_tm_layer *L = &tm->layers[l];
        struct tm_act *A = &w->act[l];
        /* feed-forward: hout = hmid + swiglu(g, u) · wdᵀ */
        tm_gemm(tm, w->dh, R, L->wdT, H, F, w->dsub, 0);
        for (size_t j = 0; j < (size_t)R * F; j++) {
            const float g = A->g[j], u = A->u[j];
            const float sg = 1.0f / (1.0f + expf(-g));
            w->du[j] = w->dsub[j] * g * sg;
            w->dg[j] = w->dsub[j] * u * sg * (1.0f + g * (1.0f - sg));
        }
        tm_gemm(tm, w->dg, R, L->wgT, F, H, w->da, 0);
        tm_gemm(tm, w->du, R, L->wuT, F, H, w->da, 1);
        for (int r = 0; r < R; r++)   /* dh becomes ∂/∂hmid */
            tm_rmsnorm_back_add(A->hmid + (size_t)r * H, L->ffn_norm, w->da + (size_t)r * H, H, hp->rms_eps, w->dh + (size_t)r * H);
        /* attention: hmid = hin + o · woᵀ */
        tm_gemm(tm, w->dh, R, L->woT, H, QD, w->dtmp, 0);
        t.layer = l;
        t.A = A;
        eng_pool_run(tm->pool, tm_attn_bwd_region, &t);
        for (int r = 0; r < R; r++) {   /* RoPE turns and scales: its transpose turns back by -angle */
            kq_rope_row(w->dq + (size_t)r * QD, hp->n_head, hd, -w->row_pos[r], &rope);
            kq_rope_row(w->dk + (size_t)r * KV, hp->n_head_kv, hd, -w->row_pos[r], &rope);
        }
        if (L->q_norm) {   /* through the head norms, into dtmp (free again) and back */
            memset(w->dtmp, 0, (size_t)R * QD * sizeof(float));
            for (int e = 0; e < R * hp->n_head; e++)
                tm_rmsnorm_back_add(A->qpre + (size_t)e * hd, L->q_norm, w->dq + (size_t)e * hd, hd, hp->rms_eps, w->dtmp + (size_t)e * hd);
            memcpy(w->dq, w->dtmp, (size_t)R * QD * sizeof(float));
            memset(w->dtmp, 0, (size_t)R * KV * sizeof(float));
            for (int e = 0; e < R * hp->n_head_kv; e++)
                tm_rmsnorm_back_add(A->kpre + (size_t)e * hd, L->k_norm, w->dk + (size_t)e * hd, hd, hp->rms_eps, w->dtmp + (size_t)e * hd);
            memcpy(w->dk, w->dtmp, (size_t)R * KV * sizeof(float));
        }
        tm_gemm(tm, w->dq, R, L->wqT, QD, H, w->da, 0);
        tm_gemm(tm, w->dk, R, L->wkT, KV, H, w->da, 1);
        tm_gemm(tm, w->dv, R, L->wvT, KV, H, w->da, 1);
        for (int r = 0; r < R; r++)   /* dh becomes ∂/∂hin */
            tm_rmsnorm_back_add(A->hin + (size_t)r * H, L->attn_norm, w->da + (size_t)r * H, H, hp->rms_eps, w->dh + (size_t)r * H);
        if (l > 0 && w->deep)   /* hin = previous output + this layer's prompt vector */
            for (int r = 0; r < R; r++) {
                float *gi = grad + ((size_t)l * N + (size_t)(r % N)) * H;
                const float *d = w->dh + (size_t)r * H;
                for (int j = 0; j < H; j++) gi[j] += d[j];
            }
    }
    for (int r = 0; r < R; r++) {
        float *gi = grad + (size_t)(r % N) * H;
        const float *d = w->dh + (size_t)r * H;
        for (int j = 0; j < H; j++) gi[j] += d[j];
    }
    return 0;
}

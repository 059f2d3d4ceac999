/* backend_cpu.c — the CPU implementation of backend.h: the reference backend.
 *
 * Memory is host memory; weights point into the GGUF mapping (kq_weight may add
 * a repacked copy).  Parallel work goes through one thread pool; each op is
 * one pool region, and rows are split so that a row's arithmetic never depends
 * on which thread computed it or on how many rows share the batch.
 * Scratch (quantized activations, attention scores) grows on first use to the
 * largest batch seen and is then reused: the decode loop does not allocate.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "batch.h"
#include "err.h"
#include "kv_cache.h"
#include "threadpool.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/qtypes.h"

#define CPU_MAX_MATMUL_GROUP 4

struct cpu_ctx {
    struct eng_pool *pool;
    int n_threads;
    void *act;              /* quantized activations */
    size_t act_cap;
    float *scores;          /* [n_threads][scores_cap] attention scratch */
    size_t scores_cap;
    int32_t *pieces;        /* grouped attention: first row of each piece, then n_tok */
    size_t pieces_cap;
    int n_pieces;
};

static void *cpu_buf_alloc(void *vctx, size_t bytes) { (void)vctx; return calloc(1, bytes ? bytes : 1); }
static void cpu_buf_free(void *vctx, void *buf) { (void)vctx; free(buf); }
static void cpu_buf_copy(void *vctx, void *dst, const void *src, size_t bytes) { (void)vctx; memcpy(dst, src, bytes); }
static void cpu_sync(void *vctx) { (void)vctx; }

static int cpu_weight_init(void *vctx, struct eng_weight *w, int type, const void *data, int64_t n_in, int64_t n_out) {
    (void)vctx;
    struct kq_weight *kw = calloc(1, sizeof *kw);
    if (!kw) return ENG_E_NOMEM;
    int rc = kq_weight_init(kw, type, data, n_in, n_out);
    if (rc) { free(kw); return rc; }
    w->type = type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->impl = kw;
    return 0;
}

static void cpu_weight_free(void *vctx, struct eng_weight *w) {
    (void)vctx;
    if (!w || !w->impl) return;
    kq_weight_free(w->impl);
    free(w->impl);
    w->impl = NULL;
}

static int cpu_grow(void **buf, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    void *p = realloc(*buf, need);
    if (!p) return ENG_E_NOMEM;
    *buf = p;
    *cap = need;
    return 0;
}

/* ---- embed ---- */

static void cpu_embed(void *vctx, const struct eng_weight *table, const int32_t *ids, int n_tok,
                      const float *extra, int n_extra, float *out) {
    (void)vctx;
    const int64_t n = table->n_in;
    for (int r = 0; r < n_tok; r++) {
        if (ids[r] >= 0) {
            kq_weight_row_f32(table->impl, ids[r], out + r * n);
        } else {
            int e = -1 - ids[r];
            if (e < n_extra) memcpy(out + r * n, extra + (int64_t)e * n, sizeof(float) * (size_t)n);
            else memset(out + r * n, 0, sizeof(float) * (size_t)n);
        }
    }
}

/* ---- rmsnorm ---- */

struct rmsnorm_job { const float *x, *w; int n_tok, n; float eps; float *out; };

static void rmsnorm_region(void *arg, int ith, int nth) {
    struct rmsnorm_job *j = arg;
    long r0, r1;
    eng_split(j->n_tok, ith, nth, 1, &r0, &r1);
    for (long r = r0; r < r1; r++) kq_rmsnorm_row(j->x + r * j->n, j->w, j->n, j->eps, j->out + r * j->n);
}

static void cpu_rmsnorm(void *vctx, const float *x, const float *w, int n_tok, int n, float eps, float *out) {
    struct cpu_ctx *c = vctx;
    struct rmsnorm_job j = {x, w, n_tok, n, eps, out};
    if (n_tok < 4) rmsnorm_region(&j, 0, 1);
    else eng_pool_run(c->pool, rmsnorm_region, &j);
}

/* ---- matmul ---- */

struct matmul_job {
    struct cpu_ctx *c;
    const struct kq_weight *w[CPU_MAX_MATMUL_GROUP];
    float *out[CPU_MAX_MATMUL_GROUP];
    const void *act[CPU_MAX_MATMUL_GROUP];
    int quantize_here[CPU_MAX_MATMUL_GROUP];
    int n_w;
    const float *x;
    int n_tok;
    int64_t n_out_total;
};

/* Outputs per work unit: a multiple of every kernel's output tile. */
#define MATMUL_OUT_ALIGN 16

static void matmul_region(void *arg, int ith, int nth) {
    struct matmul_job *j = arg;
    /* Phase 1: quantize the input rows once per distinct activation format. */
    int any = 0;
    for (int i = 0; i < j->n_w; i++) {
        if (!j->quantize_here[i]) continue;
        long r0, r1;
        eng_split(j->n_tok, ith, nth, 1, &r0, &r1);
        if (r1 > r0) kq_act_quantize(j->w[i]->type, j->x, j->w[i]->n_in, (int)r0, (int)r1, (void *)j->act[i]);
        any = 1;
    }
    if (any) eng_pool_barrier(j->c->pool);
    /* Phase 2: this thread's share of all outputs of all weights. */
    long o0, o1;
    eng_split(j->n_out_total, ith, nth, MATMUL_OUT_ALIGN, &o0, &o1);
    int64_t base = 0;
    for (int i = 0; i < j->n_w; i++) {
        const int64_t n_out = j->w[i]->n_out;
        int64_t b = o0 > base ? o0 - base : 0, e = o1 - base < n_out ? o1 - base : n_out;
        if (e > b) kq_matmul(j->w[i], j->act[i], j->n_tok, j->out[i], n_out, b, e);
        base += n_out;
    }
}

static void cpu_matmul(void *vctx, const struct eng_weight *const *w, float *const *out, int n_w,
                       const float *x, int n_tok) {
    struct cpu_ctx *c = vctx;
    struct matmul_job j;
    memset(&j, 0, sizeof j);
    j.c = c;
    j.n_w = n_w;
    j.x = x;
    j.n_tok = n_tok;
    /* One quantized copy of x per distinct weight type (usually just one). */
    size_t need = 0;
    for (int i = 0; i < n_w; i++) {
        int first = 1;
        for (int k = 0; k < i; k++) if (w[k]->type == w[i]->type) first = 0;
        if (first) need += kq_act_bytes(w[i]->type, w[i]->n_in, n_tok) + 64;
    }
    if (cpu_grow(&c->act, &c->act_cap, need)) abort(); /* out of memory mid-step: cannot continue */
    size_t off = 0;
    for (int i = 0; i < n_w && i < CPU_MAX_MATMUL_GROUP; i++) {
        j.w[i] = w[i]->impl;
        j.out[i] = out[i];
        j.n_out_total += w[i]->n_out;
        int k;
        for (k = 0; k < i; k++) if (w[k]->type == w[i]->type) break;
        if (k < i) {
            j.act[i] = j.act[k];
        } else if (w[i]->type == KQ_F32 || w[i]->type == KQ_F16 || w[i]->type == KQ_BF16) {
            j.act[i] = x;   /* float weights read the float input */
        } else {
            j.act[i] = (char *)c->act + off;
            j.quantize_here[i] = 1;
            off += (kq_act_bytes(w[i]->type, w[i]->n_in, n_tok) + 63) & ~(size_t)63;
        }
    }
    eng_pool_run(c->pool, matmul_region, &j);
}

/* ---- rope + kv store ---- */

struct rope_job {
    float *q, *k; const float *v; const struct eng_batch *b; struct eng_kv *kv;
    int layer, n_head, n_head_kv, head_dim, n_rot, neox; float freq_base;
};

static void rope_region(void *arg, int ith, int nth) {
    struct rope_job *j = arg;
    const int q_dim = j->n_head * j->head_dim, kv_dim = j->n_head_kv * j->head_dim;
    long r0, r1;
    eng_split(j->b->n_tok, ith, nth, 1, &r0, &r1);
    for (long r = r0; r < r1; r++) {
        float *qr = j->q + r * q_dim, *kr = j->k + r * kv_dim;
        kq_rope_row(qr, j->n_head, j->head_dim, j->n_rot, j->b->pos[r], j->freq_base, j->neox);
        kq_rope_row(kr, j->n_head_kv, j->head_dim, j->n_rot, j->b->pos[r], j->freq_base, j->neox);
        size_t off = eng_kv_offset(j->kv, j->layer, j->b->slot[r], j->b->kv_idx[r]);
        memcpy(j->kv->k + off, kr, sizeof(float) * (size_t)kv_dim);
        memcpy(j->kv->v + off, j->v + r * kv_dim, sizeof(float) * (size_t)kv_dim);
    }
}

static void cpu_rope_kv_store(void *vctx, float *q, float *k, const float *v, const struct eng_batch *b,
                              struct eng_kv *kv, int layer, int n_head, int n_head_kv, int head_dim,
                              int n_rot, float freq_base, int neox) {
    struct cpu_ctx *c = vctx;
    struct rope_job j = {q, k, v, b, kv, layer, n_head, n_head_kv, head_dim, n_rot, neox, freq_base};
    if (b->n_tok < 4) rope_region(&j, 0, 1);
    else eng_pool_run(c->pool, rope_region, &j);
}

/* ---- attention ---- */

struct attn_job {
    struct cpu_ctx *c; const float *q; const struct eng_batch *b; const struct eng_kv *kv;
    int layer, n_head, n_head_kv, head_dim; float scale; float *out;
};

/* One (row, head): scores over the visible entries, softmax, weighted sum of V. */
static void attn_row_head(const struct attn_job *j, int r, int h, float *scores, int32_t *idx) {
    const struct eng_batch *b = j->b;
    const struct eng_kv *kv = j->kv;
    const int hd = j->head_dim, kvh = h / (j->n_head / j->n_head_kv);
    const float *q = j->q + ((size_t)r * j->n_head + h) * hd;
    int n = 0;
    for (int e = 0; e < b->n_prefix[r]; e++) idx[n++] = e;
    const uint64_t *vis = b->vis + (size_t)r * b->vis_words;
    for (int g = 0; g < b->grp_len[r]; g++)
        if (vis[g >> 6] >> (g & 63) & 1) idx[n++] = b->grp_first[r] + g;
    for (int i = 0; i < n; i++) {
        const float *k = kv->k + eng_kv_offset(kv, j->layer, b->slot[r], idx[i]) + (size_t)kvh * hd;
        scores[i] = kq_dot_f32(q, k, hd) * j->scale;
    }
    kq_softmax(scores, n);
    float *o = j->out + ((size_t)r * j->n_head + h) * hd;
    memset(o, 0, sizeof(float) * (size_t)hd);
    for (int i = 0; i < n; i++) {
        const float *v = kv->v + eng_kv_offset(kv, j->layer, b->slot[r], idx[i]) + (size_t)kvh * hd;
        kq_axpy_f32(o, scores[i], v, hd);
    }
}

static void attn_region(void *arg, int ith, int nth) {
    struct attn_job *j = arg;
    float *scores = j->c->scores + (size_t)ith * j->c->scores_cap;
    int32_t *idx = (int32_t *)(scores + j->c->scores_cap / 2);
    long t0, t1;
    eng_split((long)j->b->n_tok * j->n_head, ith, nth, 1, &t0, &t1);
    for (long t = t0; t < t1; t++) attn_row_head(j, (int)(t / j->n_head), (int)(t % j->n_head), scores, idx);
}

/* Many rows (a PPD tree, a prefill chunk): rows of one slot that see the same
 * committed prefix are taken ATTN_ROWS_PER_TASK at a time, with all the query
 * heads that share one KV head, so each K and V entry of the prefix is loaded
 * once per task instead of once per (row, head).  Per (row, head) the scores,
 * the softmax and the accumulation of V happen in exactly the order of
 * attn_row_head (prefix entries, then the row's visible group entries), so the
 * results are bit-identical to it. */
#define ATTN_ROWS_PER_TASK 4
#define ATTN_MAX_REP 16       /* query heads per KV head the grouped path takes (else: per row) */

static void attn_rows_kvhead(const struct attn_job *j, int r0, int r1, int kvh, float *sc, int32_t *gidx) {
    const struct eng_batch *b = j->b;
    const struct eng_kv *kv = j->kv;
    const int hd = j->head_dim, n_rep = j->n_head / j->n_head_kv, nr = r1 - r0;
    const int slot = b->slot[r0], P = b->n_prefix[r0];
    const size_t cap = (size_t)kv->max_seq, gcap = (size_t)b->vis_words * 64;
    int n_vis[ATTN_ROWS_PER_TASK];
#define ATTN_Q(rr, g) (j->q + ((size_t)(r0 + (rr)) * j->n_head + (size_t)kvh * n_rep + (g)) * hd)
#define ATTN_O(rr, g) (j->out + ((size_t)(r0 + (rr)) * j->n_head + (size_t)kvh * n_rep + (g)) * hd)
#define ATTN_S(rr, g) (sc + ((size_t)(rr) * n_rep + (g)) * cap)
    /* The (row, head) pairs of this task, eight dots per kq_dot8_f32 call (the
     * last call padded with repeats of pair 0, whose results are dropped). */
    const int n_pair = nr * n_rep;
    const float *qp[ATTN_ROWS_PER_TASK * ATTN_MAX_REP + 8];
    float *sp[ATTN_ROWS_PER_TASK * ATTN_MAX_REP + 8];
    for (int t = 0; t < n_pair; t++) {
        qp[t] = ATTN_Q(t / n_rep, t % n_rep);
        sp[t] = ATTN_S(t / n_rep, t % n_rep);
    }
    for (int t = n_pair; t % 8; t++) qp[t] = qp[0];
    for (int e = 0; e < P; e++) {
        const float *k = kv->k + eng_kv_offset(kv, j->layer, slot, e) + (size_t)kvh * hd;
        for (int t0 = 0; t0 < n_pair; t0 += 8) {
            float d8[8];
            kq_dot8_f32(qp + t0, k, hd, d8);
            for (int t = t0; t < n_pair && t < t0 + 8; t++) sp[t][e] = d8[t - t0] * j->scale;
        }
    }
    for (int rr = 0; rr < nr; rr++) {
        const int r = r0 + rr;
        const uint64_t *vis = b->vis + (size_t)r * b->vis_words;
        int n = P;
        int32_t *gi = gidx + (size_t)rr * gcap;
        for (int g2 = 0; g2 < b->grp_len[r]; g2++) {
            if (!(vis[g2 >> 6] >> (g2 & 63) & 1)) continue;
            const int e = b->grp_first[r] + g2;
            const float *k = kv->k + eng_kv_offset(kv, j->layer, slot, e) + (size_t)kvh * hd;
            for (int g = 0; g < n_rep; g++) ATTN_S(rr, g)[n] = kq_dot_f32(ATTN_Q(rr, g), k, hd) * j->scale;
            gi[n - P] = e;
            n++;
        }
        n_vis[rr] = n;
        for (int g = 0; g < n_rep; g++) {
            kq_softmax(ATTN_S(rr, g), n);
            memset(ATTN_O(rr, g), 0, sizeof(float) * (size_t)hd);
        }
    }
    for (int e = 0; e < P; e++) {
        const float *v = kv->v + eng_kv_offset(kv, j->layer, slot, e) + (size_t)kvh * hd;
        for (int rr = 0; rr < nr; rr++)
            for (int g = 0; g < n_rep; g++) kq_axpy_f32(ATTN_O(rr, g), ATTN_S(rr, g)[e], v, hd);
    }
    for (int rr = 0; rr < nr; rr++) {
        const int32_t *gi = gidx + (size_t)rr * gcap;
        for (int t = P; t < n_vis[rr]; t++) {
            const float *v = kv->v + eng_kv_offset(kv, j->layer, slot, gi[t - P]) + (size_t)kvh * hd;
            for (int g = 0; g < n_rep; g++) kq_axpy_f32(ATTN_O(rr, g), ATTN_S(rr, g)[t], v, hd);
        }
    }
#undef ATTN_Q
#undef ATTN_O
#undef ATTN_S
}

static void attn_grouped_region(void *arg, int ith, int nth) {
    struct attn_job *j = arg;
    struct cpu_ctx *c = j->c;
    float *sc = c->scores + (size_t)ith * c->scores_cap;
    const size_t per_rows = (size_t)ATTN_ROWS_PER_TASK * (size_t)(j->n_head / j->n_head_kv) * (size_t)j->kv->max_seq;
    int32_t *gidx = (int32_t *)(sc + per_rows);
    long t0, t1;
    eng_split((long)c->n_pieces * j->n_head_kv, ith, nth, 1, &t0, &t1);
    for (long t = t0; t < t1; t++) {
        const int p = (int)(t / j->n_head_kv), kvh = (int)(t % j->n_head_kv);
        attn_rows_kvhead(j, c->pieces[p], c->pieces[p + 1], kvh, sc, gidx);
    }
}

static void cpu_attention(void *vctx, const float *q, const struct eng_batch *b, const struct eng_kv *kv,
                          int layer, int n_head, int n_head_kv, int head_dim, float scale, float *out) {
    struct cpu_ctx *c = vctx;
    struct attn_job j = {c, q, b, kv, layer, n_head, n_head_kv, head_dim, scale, out};
    const int grouped = b->n_tok >= ATTN_ROWS_PER_TASK && n_head / n_head_kv <= ATTN_MAX_REP;
    /* Per-thread scratch: scores of up to ATTN_ROWS_PER_TASK rows x n_rep heads
     * over max_seq entries, then the rows' visible group entries (grouped
     * path); or one row's scores and entry list (per-row path). */
    size_t need = grouped ? (size_t)ATTN_ROWS_PER_TASK * (size_t)(n_head / n_head_kv) * (size_t)kv->max_seq +
                                (size_t)ATTN_ROWS_PER_TASK * (size_t)b->vis_words * 64 + 16
                          : 2 * (size_t)kv->max_seq + 16;
    if (need > c->scores_cap) {
        float *s = realloc(c->scores, sizeof(float) * need * (size_t)c->n_threads);
        if (!s) abort(); /* out of memory mid-step: cannot continue */
        c->scores = s;
        c->scores_cap = need;
    }
    if (!grouped) {
        eng_pool_run(c->pool, attn_region, &j);
        return;
    }
    /* Pieces: runs of rows with the same slot and committed prefix, cut every
     * ATTN_ROWS_PER_TASK rows; pieces[p] .. pieces[p + 1] is piece p. */
    if ((size_t)b->n_tok + 1 > c->pieces_cap) {
        int32_t *np = realloc(c->pieces, sizeof *np * ((size_t)b->n_tok + 1));
        if (!np) abort();
        c->pieces = np;
        c->pieces_cap = (size_t)b->n_tok + 1;
    }
    c->n_pieces = 0;
    for (int r = 0; r < b->n_tok; r++) {
        const int start = c->n_pieces ? c->pieces[c->n_pieces - 1] : -1;
        if (start < 0 || r - start >= ATTN_ROWS_PER_TASK || b->slot[r] != b->slot[start] ||
            b->n_prefix[r] != b->n_prefix[start])
            c->pieces[c->n_pieces++] = r;
    }
    c->pieces[c->n_pieces] = b->n_tok;
    eng_pool_run(c->pool, attn_grouped_region, &j);
}

/* ---- elementwise ---- */

struct ew_job { const float *a; const float *b; float *out; long n; int op; };

static void ew_region(void *arg, int ith, int nth) {
    struct ew_job *j = arg;
    long i0, i1;
    eng_split(j->n, ith, nth, 64, &i0, &i1);
    if (i1 <= i0) return;
    if (j->op == 0) kq_swiglu(j->a + i0, j->b + i0, (int)(i1 - i0), j->out + i0);
    else kq_add(j->out + i0, j->b + i0, (int)(i1 - i0));
}

static void cpu_swiglu(void *vctx, const float *gate, const float *up, int n_tok, int n, float *out) {
    struct cpu_ctx *c = vctx;
    struct ew_job j = {gate, up, out, (long)n_tok * n, 0};
    if (j.n < 8192) ew_region(&j, 0, 1);
    else eng_pool_run(c->pool, ew_region, &j);
}

static void cpu_add(void *vctx, float *x, const float *y, int n_tok, int n) {
    struct cpu_ctx *c = vctx;
    struct ew_job j = {NULL, y, x, (long)n_tok * n, 1};
    if (j.n < 16384) ew_region(&j, 0, 1);
    else eng_pool_run(c->pool, ew_region, &j);
}

static void cpu_free(void *vctx) {
    struct cpu_ctx *c = vctx;
    if (!c) return;
    eng_pool_free(c->pool);
    free(c->act);
    free(c->scores);
    free(c->pieces);
    free(c);
}

static const struct eng_backend_i cpu_iface = {
    .name = "cpu",
    .free = cpu_free,
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .buf_upload = cpu_buf_copy,
    .buf_download = cpu_buf_copy,
    .buf_copy = cpu_buf_copy,
    .sync = cpu_sync,
    .weight_init = cpu_weight_init,
    .weight_free = cpu_weight_free,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .rope_kv_store = cpu_rope_kv_store,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
};

int eng_backend_cpu_init(struct eng_backend *be, int n_threads) {
    be->iface = NULL;
    be->ctx = NULL;
    struct cpu_ctx *c = calloc(1, sizeof *c);
    if (!c) return ENG_E_NOMEM;
    int rc = eng_pool_init(&c->pool, n_threads);
    if (rc) { free(c); return rc; }
    c->n_threads = n_threads;
    be->iface = &cpu_iface;
    be->ctx = c;
    return 0;
}

void eng_backend_free(struct eng_backend *be) {
    if (!be || !be->iface) return;
    be->iface->free(be->ctx);
    be->iface = NULL;
    be->ctx = NULL;
}

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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/backend.h"
#include "engine/model/batch.h"
#include "engine/err.h"
#include "engine/model/kv_cache.h"
#include "engine/log.h"
#include "engine/model/threadpool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/dequant.h"
#include "kernels/cpu/quant_act.h"
#include "kernels/cpu/ops.h"
#include "common/qtypes.h"

#define CPU_MAX_MATMUL_GROUP 4

struct cpu_ctx {
    struct eng_pool *pool;
    int n_threads;
    void *act;              /* quantized activations */
    size_t act_cap;
    float *scores;          /* [n_threads][scores_cap] attention scratch */
    size_t scores_cap;
    int32_t *pieces;        /* attention: first row of each piece, then n_tok */
    int32_t *piece_common;  /* [n_pieces] leading step entries all rows of the piece see */
    int64_t *piece_cum;     /* [n_pieces + 1] cumulative cost of the pieces (work split) */
    size_t pieces_cap;
    int n_pieces;
    int32_t *iota;          /* [iota_cap] 0, 1, 2, ...: the shared entry list */
    size_t iota_cap;
    int32_t *win_lo;        /* [win_cap] sliding window: each row's first visible committed entry */
    uint64_t *win_vis;      /* [win_cap][vis_words] the batch's visibility cut to the window */
    size_t win_cap;         /* rows of win_lo (win_vis: win_cap * win_words words) */
    int win_words;
    int32_t *rope_pos;      /* [rope_cap] positions whose RoPE angles rope_cs holds */
    float *rope_cs;         /* [rope_cap][KQ_ROPE_MAX_ROT] cos, sin per pair */
    size_t rope_cap;
    int rope_n;             /* rows of the table (0: none) */
    struct kq_rope rope_of; /* the RoPE it was made for */
    /* The last rmsnorm or SwiGLU output when the calling thread wrote it
     * alone (else NULL; in parallel they split by rows, as the quantization
     * does).  The matmul that reads it next quantizes it where it already
     * is: a thread reading lines another thread just wrote waits on every
     * one of them.  Only speed depends on this, never a result. */
    const float *hot_serial;
};

static void *cpu_buf_alloc(void *vctx, size_t bytes) { (void)vctx; return calloc(1, bytes ? bytes : 1); }
static void cpu_buf_free(void *vctx, void *buf) { (void)vctx; free(buf); }
static void cpu_buf_copy(void *vctx, void *dst, const void *src, size_t bytes) { (void)vctx; memcpy(dst, src, bytes); }
static void cpu_sync(void *vctx) { (void)vctx; }

/* The kernels' status codes as the engine's. */
static int cpu_err_from_kq(int rc) {
    switch (rc) {
    case KQ_OK:            return 0;
    case KQ_E_NOMEM:       return ENG_E_NOMEM;
    case KQ_E_UNSUPPORTED: return ENG_E_UNSUPPORTED;
    case KQ_E_INVALID:     return ENG_E_INVALID;
    default:               return ENG_E_INTERNAL;
    }
}

static int cpu_weight_init(void *vctx, struct eng_weight *w, int type, const void *data, int64_t n_in, int64_t n_out) {
    (void)vctx;
    struct kq_weight *kw = calloc(1, sizeof *kw);
    if (!kw) return ENG_E_NOMEM;
    int rc = kq_weight_init(kw, type, data, n_in, n_out);
    if (rc) { free(kw); return cpu_err_from_kq(rc); }
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

static void cpu_add_rows(void *vctx, float *x, const int32_t *ids, int n_tok, const float *table, int n_table,
                         int n) {
    (void)vctx;
    for (int r = 0; r < n_tok; r++) {
        const int e = -1 - ids[r];
        if (ids[r] >= 0 || e >= n_table) continue;
        float *xr = x + (size_t)r * n;
        const float *t = table + (size_t)e * n;
        for (int j = 0; j < n; j++) xr[j] += t[j];
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
    /* A row of 576 takes about 0.1 µs: below 32 rows one thread is quicker
     * than starting the region. */
    if ((long)n_tok * n < 32 * 576) {
        rmsnorm_region(&j, 0, 1);
        c->hot_serial = out;
    } else {
        eng_pool_run(c->pool, rmsnorm_region, &j);
        c->hot_serial = NULL;
    }
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
    eng_split(j->n_out_total, ith, nth, KQ_MATMUL_OUT_ALIGN, &o0, &o1);
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
    /* The input is quantized here, before the region, when this thread
     * wrote it (hot_serial) or when it is one or two rows: less time than the
     * barrier between the region's two phases would take (a microsecond, far
     * more when the machine is busy and the peer thread has lost its core).
     * Otherwise all threads quantize their rows: one thread reading lines
     * the others just wrote waits on each of them (16 rows of 576 quantized
     * by one thread took 9% of a 16-row step on Zen 4, nearly all of it in
     * the loads). */
    const int here = x == c->hot_serial;
    c->hot_serial = NULL;
    for (int i = 0; i < n_w && i < CPU_MAX_MATMUL_GROUP; i++) {
        if (!j.quantize_here[i] || (!here && (long)n_tok * w[i]->n_in > 2 * 1536)) continue;
        kq_act_quantize(w[i]->type, x, w[i]->n_in, 0, n_tok, (void *)j.act[i]);
        j.quantize_here[i] = 0;
    }
    eng_pool_run(c->pool, matmul_region, &j);
}

/* ---- rope + kv store ----
 * RoPE's angles depend on the position alone, and every layer of a forward
 * pass rotates the same positions: the cos/sin table of each row is computed
 * at the first layer and kept while the batch's positions stay the same
 * (kq_rope_row would compute 32 sincos per head group per layer). */

struct rope_job {
    float *q, *k; const float *v; const struct eng_batch *b; struct eng_kv *kv; float *cs;
    int layer, n_head, n_head_kv, head_dim, fill; const struct kq_rope *rope;
};

static void rope_region(void *arg, int ith, int nth) {
    struct rope_job *j = arg;
    const int q_dim = j->n_head * j->head_dim, kv_dim = j->n_head_kv * j->head_dim;
    long r0, r1;
    eng_split(j->b->n_tok, ith, nth, 1, &r0, &r1);
    for (long r = r0; r < r1; r++) {
        const int n_rot = j->rope->n_rot;
        float *qr = j->q + r * q_dim, *kr = j->k + r * kv_dim, *cs = j->cs + r * n_rot;
        if (j->fill) kq_rope_angles(j->b->pos[r], j->rope, cs);
        kq_rope_apply(qr, j->n_head, j->head_dim, n_rot, cs, j->rope->neox);
        kq_rope_apply(kr, j->n_head_kv, j->head_dim, n_rot, cs, j->rope->neox);
        size_t off = eng_kv_offset(j->kv, j->layer, j->b->slot[r], j->b->kv_idx[r]);
        memcpy(j->kv->k + off, kr, sizeof(float) * (size_t)kv_dim);
        memcpy(j->kv->v + off, j->v + r * kv_dim, sizeof(float) * (size_t)kv_dim);
    }
}

static void cpu_rope_kv_store(void *vctx, float *q, float *k, const float *v, const struct eng_batch *b,
                              struct eng_kv *kv, int layer, int n_head, int n_head_kv, int head_dim,
                              const struct kq_rope *rope_in) {
    struct cpu_ctx *c = vctx;
    const int n = b->n_tok;
    struct kq_rope rope = *rope_in;
    if (rope.n_rot > KQ_ROPE_MAX_ROT) rope.n_rot = KQ_ROPE_MAX_ROT;
    const struct kq_rope *o = &c->rope_of;
    const int same_rope = rope.n_rot == o->n_rot && rope.neox == o->neox && rope.freq_base == o->freq_base &&
                          rope.freq_scale == o->freq_scale && rope.ext_factor == o->ext_factor &&
                          rope.attn_factor == o->attn_factor && rope.corr_dims[0] == o->corr_dims[0] &&
                          rope.corr_dims[1] == o->corr_dims[1] && rope.freq_factors == o->freq_factors;
    const int fill = !(n == c->rope_n && same_rope && !memcmp(b->pos, c->rope_pos, sizeof(int32_t) * (size_t)n));
    if (fill) {
        if ((size_t)n > c->rope_cap) {
            int32_t *p = realloc(c->rope_pos, sizeof *p * (size_t)n);
            if (p) c->rope_pos = p;
            float *t = realloc(c->rope_cs, sizeof *t * (size_t)n * KQ_ROPE_MAX_ROT);
            if (t) c->rope_cs = t;
            if (!p || !t) abort(); /* out of memory mid-step: cannot continue */
            c->rope_cap = (size_t)n;
        }
        memcpy(c->rope_pos, b->pos, sizeof(int32_t) * (size_t)n);
        c->rope_n = n;
        c->rope_of = rope;
    }
    struct rope_job j = {q, k, v, b, kv, c->rope_cs, layer, n_head, n_head_kv, head_dim, fill, &rope};
    /* Below 16 rows (about 1.5 µs a row once the angles are known) the
     * region's start and end cost more than a second thread saves. */
    if (n < 16) rope_region(&j, 0, 1);
    else eng_pool_run(c->pool, rope_region, &j);
}

/* ---- attention ----
 * The batch is cut into pieces: runs of up to ATTN_PIECE_ROWS consecutive rows
 * of one slot with the same committed prefix (a PPD tree, a prefill chunk, or
 * a lone decode row).  A piece's rows share the prefix and, where they all see
 * it, a leading run of this step's entries (the tree root; most of a prefill
 * chunk); kq_attn_run walks those K/V entries once, front to back, for all the
 * rows and query heads of its task.  Work units are (piece, query head), split
 * evenly over the threads; each thread makes one task of each piece's heads in
 * its share.  Heads as the finest unit keep 1..4-row steps balanced (9 units
 * for one row of SmolLM2), and a many-row step gives each thread whole pieces.
 * Whatever the cut, a (row, head) gets the same entry list in the same order
 * (prefix, then its visible entries of the step, ascending) and kq_attn_run's
 * result depends on nothing else: attention.h.
 * A sliding window (batch.h) first cuts the batch's visibility
 * (eng_batch_window): a row's committed entries start at lo[r] instead of 0,
 * and its bits lose the step's entries outside the window.  A piece's rows
 * then also share lo, so the shared list is lo .. n_prefix + common - 1 for
 * all of them; below the window's length nothing changes. */
#define ATTN_PIECE_ROWS 8

struct attn_job {
    struct cpu_ctx *c; const float *q; const struct eng_batch *b; const struct eng_kv *kv;
    int layer, n_head, n_head_kv, head_dim; float scale; float *out;
    const int32_t *lo;      /* [n_tok] first visible committed entry per row, or NULL: 0 */
};

/* Query heads [h0, h1) for the rows of piece p. */
static void attn_task(const struct attn_job *j, int p, int h0, int h1, float *sc, int32_t *own_buf) {
    const struct cpu_ctx *c = j->c;
    const struct eng_batch *b = j->b;
    const int r0 = c->pieces[p], r1 = c->pieces[p + 1], nr = r1 - r0, common = c->piece_common[p];
    const int lo = j->lo ? j->lo[r0] : 0;
    const int hd = j->head_dim, gcap = b->vis_words * 64;
    const int32_t *own[ATTN_PIECE_ROWS];
    int n_own[ATTN_PIECE_ROWS];
    for (int rr = 0; rr < nr; rr++) {
        const int r = r0 + rr;
        const uint64_t *vis = b->vis + (size_t)r * b->vis_words;
        int32_t *list = own_buf + (size_t)rr * gcap;
        int n = 0;
        for (int g = common; g < b->grp_len[r]; g++)
            if (vis[g >> 6] >> (g & 63) & 1) list[n++] = b->grp_first[r] + g;
        own[rr] = list;
        n_own[rr] = n;
    }
    const size_t row_stride = (size_t)j->n_head * hd;
    const size_t kv0 = eng_kv_offset(j->kv, j->layer, b->slot[r0], 0);
    struct kq_attn_task t = {
        .k = j->kv->k + kv0, .v = j->kv->v + kv0, .kv_stride = (size_t)j->kv->kv_dim,
        .head_dim = hd, .scale = j->scale, .n_rep = j->n_head / j->n_head_kv, .head0 = h0, .n_head = h1 - h0,
        .q = j->q + (size_t)r0 * row_stride, .q_stride = row_stride,
        .out = j->out + (size_t)r0 * row_stride, .out_stride = row_stride,
        .n_row = nr, .shared = c->iota + lo, .n_shared = b->n_prefix[r0] - lo + common,
        .own = own, .n_own = n_own,
    };
    kq_attn_run(&t, sc);
}

/* Units are (piece, head) in that order; unit (p, h) costs piece_cost[p]
 * (its rows' visible entries, plus a little per row) and belongs to the thread
 * whose equal share of the total cost holds the unit's midpoint.  A thread's
 * units are consecutive, so each piece gives it at most one task. */
static void attn_region(void *arg, int ith, int nth) {
    struct attn_job *j = arg;
    struct cpu_ctx *c = j->c;
    float *sc = c->scores + (size_t)ith * c->scores_cap;
    int32_t *own_buf = (int32_t *)(sc + c->scores_cap) - (size_t)ATTN_PIECE_ROWS * (size_t)j->b->vis_words * 64;
    const int64_t total2 = 2 * (int64_t)j->n_head * c->piece_cum[c->n_pieces];
    for (int p = 0; p < c->n_pieces; p++) {
        const int64_t cost = c->piece_cum[p + 1] - c->piece_cum[p], base = (int64_t)j->n_head * c->piece_cum[p];
        int h0 = -1, h1 = -1;
        for (int h = 0; h < j->n_head; h++) {
            const int64_t mid2 = 2 * (base + h * cost) + cost;
            if (mid2 * nth / total2 == ith) {
                if (h0 < 0) h0 = h;
                h1 = h + 1;
            }
        }
        if (h0 >= 0) attn_task(j, p, h0, h1, sc, own_buf);
    }
}

/* Entries 0 .. grp_len of row r's step entries that it sees, counted from the first. */
static int attn_leading_visible(const struct eng_batch *b, int r) {
    const uint64_t *vis = b->vis + (size_t)r * b->vis_words;
    int n = 0;
    while (n < b->grp_len[r] && (vis[n >> 6] >> (n & 63) & 1)) n++;
    return n;
}

/* The window's cut of b into c->win_lo and c->win_vis, and a view of b with
 * those bits in *bw; NULL when the window hides nothing (or there is none). */
static const int32_t *attn_window(struct cpu_ctx *c, const struct eng_batch *b, int window, struct eng_batch *bw) {
    if (window <= 0) return NULL;
    int bites = 0;
    for (int r = 0; r < b->n_tok && !bites; r++) bites = b->pos[r] >= window;
    if (!bites) return NULL;
    if ((size_t)b->n_tok > c->win_cap || b->vis_words > c->win_words) {
        const size_t rows = (size_t)b->n_tok > c->win_cap ? (size_t)b->n_tok : c->win_cap;
        const int words = b->vis_words > c->win_words ? b->vis_words : c->win_words;
        int32_t *l = realloc(c->win_lo, sizeof *l * rows);
        if (l) c->win_lo = l;
        uint64_t *v = realloc(c->win_vis, sizeof *v * rows * (size_t)words);
        if (v) c->win_vis = v;
        if (!l || !v) abort(); /* out of memory mid-step: cannot continue */
        c->win_cap = rows;
        c->win_words = words;
    }
    if (!eng_batch_window(b, window, c->win_lo, c->win_vis)) return NULL;
    *bw = *b;
    bw->vis = c->win_vis;
    return c->win_lo;
}

static void cpu_attention(void *vctx, const float *q, const struct eng_batch *b_in, const struct eng_kv *kv,
                          int layer, int n_head, int n_head_kv, int head_dim, float scale, int window, float *out) {
    struct cpu_ctx *c = vctx;
    struct eng_batch bw;
    const int32_t *lo = attn_window(c, b_in, window, &bw);
    const struct eng_batch *b = lo ? &bw : b_in;
    const int n = b->n_tok;
    int piece_rows = ATTN_PIECE_ROWS;
    while (piece_rows > 1 && piece_rows * n_head > KQ_ATTN_MAX_QUERIES) piece_rows--;
    if ((size_t)n + 1 > c->pieces_cap) {
        int32_t *np = realloc(c->pieces, sizeof *np * 2 * ((size_t)n + 1));
        int64_t *nc = realloc(c->piece_cum, sizeof *nc * ((size_t)n + 1));
        if (np) c->pieces = np;
        if (nc) c->piece_cum = nc;
        if (!np || !nc) abort(); /* out of memory mid-step: cannot continue */
        c->piece_common = np + n + 1;
        c->pieces_cap = (size_t)n + 1;
    }
    /* Runs of rows with the same slot, prefix and step entries, each cut into
     * pieces of near-equal size (12 rows: 6 + 6, not 8 + 4); per piece the
     * leading step entries all its rows see and the piece's cost. */
    c->n_pieces = 0;
    c->piece_cum[0] = 0;
    int n_keys_max = 0;
    for (int r = 0; r < n;) {
        int e = r + 1;
        while (e < n && b->slot[e] == b->slot[r] && b->n_prefix[e] == b->n_prefix[r] &&
               b->grp_first[e] == b->grp_first[r] && (!lo || lo[e] == lo[r]))
            e++;
        const int k = (e - r + piece_rows - 1) / piece_rows;
        for (int i = 0; i < k; i++) {
            const int p0 = r + (int)((long)(e - r) * i / k), p1 = r + (int)((long)(e - r) * (i + 1) / k);
            int common = INT32_MAX;
            int64_t cost = 0;
            for (int rr = p0; rr < p1; rr++) {
                const int lead = b->grp_first[rr] == b->n_prefix[rr] ? attn_leading_visible(b, rr) : 0;
                if (lead < common) common = lead;
                cost += eng_batch_row_visible(b, rr) - (lo ? lo[rr] : 0) + 32;
                if (b->n_prefix[rr] + b->grp_len[rr] > n_keys_max) n_keys_max = b->n_prefix[rr] + b->grp_len[rr];
            }
            c->pieces[c->n_pieces] = p0;
            c->piece_common[c->n_pieces] = common;
            c->piece_cum[c->n_pieces + 1] = c->piece_cum[c->n_pieces] + cost;
            c->n_pieces++;
        }
        r = e;
    }
    c->pieces[c->n_pieces] = n;
    /* Shared entries are 0 .. n_prefix + common - 1: one list of 0, 1, 2, ... */
    if ((size_t)n_keys_max > c->iota_cap) {
        int32_t *ni = realloc(c->iota, sizeof *ni * (size_t)n_keys_max);
        if (!ni) abort();
        for (int i = (int)c->iota_cap; i < n_keys_max; i++) ni[i] = i;
        c->iota = ni;
        c->iota_cap = (size_t)n_keys_max;
    }
    /* Per-thread scratch: the task's scores, then its rows' own entry lists. */
    const size_t own_ints = (size_t)ATTN_PIECE_ROWS * (size_t)b->vis_words * 64;
    const size_t need = kq_attn_scratch_floats(piece_rows * n_head, n_keys_max) + own_ints + 16;
    if (need > c->scores_cap) {
        float *sc = realloc(c->scores, sizeof(float) * need * (size_t)c->n_threads);
        if (!sc) abort();
        c->scores = sc;
        c->scores_cap = need;
    }
    struct attn_job j = {c, q, b, kv, layer, n_head, n_head_kv, head_dim, scale, out, lo};
    eng_pool_run(c->pool, attn_region, &j);
}

/* ---- elementwise ---- */

struct ew_job { const float *a; const float *b; float *out; long n; int op; long row; };

/* SwiGLU splits by rows (as the next matmul quantizes), the residual add by
 * elements. */
static void ew_region(void *arg, int ith, int nth) {
    struct ew_job *j = arg;
    long i0, i1;
    if (j->op == 0) {
        eng_split(j->n / j->row, ith, nth, 1, &i0, &i1);
        i0 *= j->row, i1 *= j->row;
    } else {
        eng_split(j->n, ith, nth, 64, &i0, &i1);
    }
    if (i1 <= i0) return;
    if (j->op == 0) kq_swiglu(j->a + i0, j->b + i0, (int)(i1 - i0), j->out + i0);
    else kq_add(j->out + i0, j->b + i0, (int)(i1 - i0));
}

static void cpu_swiglu(void *vctx, const float *gate, const float *up, int n_tok, int n, float *out) {
    struct cpu_ctx *c = vctx;
    struct ew_job j = {gate, up, out, (long)n_tok * n, 0, n};
    if (j.n < 8192 || n_tok < 2) {
        ew_region(&j, 0, 1);
        c->hot_serial = out;
    } else {
        eng_pool_run(c->pool, ew_region, &j);
        c->hot_serial = NULL;
    }
}

static void cpu_add(void *vctx, float *x, const float *y, int n_tok, int n) {
    struct cpu_ctx *c = vctx;
    struct ew_job j = {NULL, y, x, (long)n_tok * n, 1, n};
    if (j.n < 16384) ew_region(&j, 0, 1);
    else eng_pool_run(c->pool, ew_region, &j);
}

static void cpu_add_bias(void *vctx, float *x, const float *bias, int n_tok, int n) {
    (void)vctx;
    for (int r = 0; r < n_tok; r++) kq_add(x + (size_t)r * (size_t)n, bias, n);
}

static void cpu_free(void *vctx) {
    struct cpu_ctx *c = vctx;
    if (!c) return;
    eng_pool_free(c->pool);
    free(c->act);
    free(c->scores);
    free(c->pieces);
    free(c->piece_cum);
    free(c->iota);
    free(c->win_lo);
    free(c->win_vis);
    free(c->rope_pos);
    free(c->rope_cs);
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
    .add_bias = cpu_add_bias,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .add_rows = cpu_add_rows,
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
    char why[160];
    if (kq_isa_env_error(why, sizeof why)) LOG_WARN("%s", why);
    LOG_INFO("CPU kernels: the %s path (this CPU has up to %s), %d threads", kq_isa_name(kq_isa()),
             kq_isa_name(kq_isa_detected()), n_threads);
    return 0;
}

void eng_backend_free(struct eng_backend *be) {
    if (!be || !be->iface) return;
    be->iface->free(be->ctx);
    be->iface = NULL;
    be->ctx = NULL;
}

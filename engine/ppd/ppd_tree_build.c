/* ppd_tree_build.c — the two-stage sparse-tree builder (docs/ppd.md,
 * "Building trees"), for any N and K (the reference hard-codes N = 3 in its
 * Markov solve; here the chain has N + 1 states and is solved by Gaussian
 * elimination).  Fed the paper's Vicuna-7B hit rates it reproduces the
 * reference's Vicuna-7B trees exactly; the tests check that.
 *
 * Deliberately kept from the reference because exact reproduction depends on
 * them: stage-1 scores rounded to 5 decimals, a stable descending sort over
 * the depth-first enumeration, the first maximum wherever there are ties, and
 * the phantom root-only state of the objective.  Fixed: the loop that prunes
 * prompt tokens stops when every node is down to one (the reference then
 * corrupts node 0).
 *
 * Beyond the reference: a path's probability may come from the measured joint
 * distribution of the ranks instead of the product of per-offset marginals
 * (the prompt tokens' guesses are not independent), and the build info also
 * reports the expected tokens per step over the true state distribution.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/ppd/ppd_tree.h"

#define BUILD_MAX_PATHS 2000000

const double eng_ppd_acc_vicuna7b[30] = {
    0.48335, 0.14342, 0.0736, 0.0454, 0.03087, 0.02155, 0.01658, 0.01323, 0.00932, 0.00845,
    0.26256, 0.14561, 0.08114, 0.0576, 0.04283, 0.0323, 0.0257, 0.02152, 0.01903, 0.0155,
    0.16413, 0.11756, 0.08092, 0.05784, 0.04586, 0.03672, 0.03128, 0.02317, 0.02372, 0.01789};

struct build_path {
    int8_t p[ENG_PPD_MAX_PROMPT];
    int8_t len;
    int idx;        /* enumeration order: the tie-breaker of the stable sort */
    double q;       /* path probability (rounded once kept) */
};

/* The first stage for one depth limit: paths sorted by probability, the first L kept. */
struct build_stage1 {
    int n;                   /* kept paths */
    struct build_path *p;    /* [n] */
    double *val;             /* [n + 1]: val[s] = sum of the first s scores */
    double *acc;             /* [n] scratch: exclusive probabilities for the current size */
    int *parent;             /* [n]: index of the parent path among the kept, -1 at depth 1 */
};

static int build_path_cmp(const void *x, const void *y) {
    const struct build_path *a = x, *b = y;
    if (a->q != b->q) return a->q > b->q ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* How a path's probability is scored: the product of the marginals acc, or,
 * when prefix[] is set, the measured probability that the truth's ranks begin
 * with the path (prefix[l][sum_t p_t (K+1)^t] for paths of length l). */
struct build_model {
    const double *acc;
    int K;
    double *prefix[ENG_PPD_MAX_PROMPT + 1];
};

static double build_q(const struct build_model *bm, const struct build_path *path) {
    double q = 1.0;
    if (bm->prefix[path->len]) {
        long idx = 0, w = 1;
        for (int t = 0; t < path->len; t++, w *= bm->K + 1) idx += w * path->p[t];
        return bm->prefix[path->len][idx];
    }
    for (int t = 0; t < path->len; t++) q *= bm->acc[t * bm->K + path->p[t]];
    return q;
}

static void build_enum(struct build_path *out, int *n, struct build_path *cur, int d, const struct build_model *bm) {
    for (int r = 0; r < bm->K; r++) {
        cur->p[cur->len] = (int8_t)r;
        cur->len++;
        const double q = build_q(bm, cur);
        out[*n] = *cur;
        out[*n].q = q;
        out[*n].idx = *n;
        (*n)++;
        if (cur->len < d) build_enum(out, n, cur, d, bm);
        cur->len--;
    }
}

/* Python's round(x, 5): correctly rounded to the nearest 5-decimal value. */
static double build_round5(double x) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.5f", x);
    return strtod(buf, NULL);
}

static void build_stage1_free(struct build_stage1 *s) {
    free(s->p); free(s->val); free(s->acc); free(s->parent);
    memset(s, 0, sizeof *s);
}

static int build_stage1(struct build_stage1 *s, const struct build_model *bm, int d, int L) {
    const int K = bm->K;
    memset(s, 0, sizeof *s);
    long total = 0, pw = 1;
    for (int l = 1; l <= d; l++) { pw *= K; total += pw; if (total > BUILD_MAX_PATHS) return ENG_E_RANGE; }
    struct build_path *all = malloc(sizeof *all * (size_t)total), cur;
    if (!all) return ENG_E_NOMEM;
    memset(&cur, 0, sizeof cur);
    int n = 0;
    build_enum(all, &n, &cur, d, bm);
    qsort(all, (size_t)n, sizeof *all, build_path_cmp);
    s->n = n < L ? n : L;
    s->p = all;
    s->val = calloc((size_t)s->n + 1, sizeof *s->val);
    s->acc = calloc((size_t)s->n + 1, sizeof *s->acc);
    s->parent = calloc((size_t)s->n + 1, sizeof *s->parent);
    if (!s->val || !s->acc || !s->parent) { build_stage1_free(s); return ENG_E_NOMEM; }
    for (int i = 0; i < s->n; i++) {
        s->p[i].q = build_round5(s->p[i].q);
        s->val[i + 1] = s->val[i] + s->p[i].q;
        s->parent[i] = -1;
        for (int j = 0; j < i && s->p[i].len > 1; j++)
            if (s->p[j].len == s->p[i].len - 1 && !memcmp(s->p[j].p, s->p[i].p, (size_t)s->p[j].len)) s->parent[i] = j;
    }
    return 0;
}

/* Exclusive probabilities of Tree(d, size): q minus the listed children's q. */
static void build_exclusive(struct build_stage1 *s, int size) {
    for (int i = 0; i < size; i++) s->acc[i] = s->p[i].q;
    for (int i = 0; i < size; i++)
        if (s->parent[i] >= 0) s->acc[s->parent[i]] -= s->p[i].q;
}

/* The second stage's candidates: node i at its current prompt-token count, scored by
 * v = what removing one of its prompt tokens costs.  A binary max-heap on
 * (v, then the lower node index), so a pop is the node the reference's scan
 * picks (the first maximum in node order) and the result is the same, in
 * O(log s) a removal instead of O(s): the calibration builds every budget's
 * tree, and the scans were half a second of a cached start. */
struct build_cand { double v; int i; };

static int build_cand_before(const struct build_cand *a, const struct build_cand *b) {
    return a->v > b->v || (a->v == b->v && a->i < b->i);
}

static void build_heap_push(struct build_cand *h, int *n, struct build_cand c) {
    int k = (*n)++;
    while (k > 0 && build_cand_before(&c, &h[(k - 1) / 2])) {
        h[k] = h[(k - 1) / 2];
        k = (k - 1) / 2;
    }
    h[k] = c;
}

static struct build_cand build_heap_pop(struct build_cand *h, int *n) {
    const struct build_cand top = h[0], last = h[--*n];
    int k = 0;
    for (;;) {
        int c = 2 * k + 1;
        if (c >= *n) break;
        if (c + 1 < *n && build_cand_before(&h[c + 1], &h[c])) c++;
        if (!build_cand_before(&h[c], &last)) break;
        h[k] = h[c];
        k = c;
    }
    if (*n > 0) h[k] = last;
    return top;
}

/* Cost of taking node i from n to n - 1 prompt tokens (n >= 2). */
static double build_cand_v(const struct build_stage1 *st, const int *sz, int i, int d, int n) {
    return st[d].acc[i] * (st[n - 1].val[sz[n - 1]] - st[n].val[sz[n]]);
}

/* The second stage for state d with node counts sz[1..N]: prompt tokens per node into
 * n[]; heap: scratch for sz[d] candidates.  Every node starts with N prompt
 * tokens and the cheapest one to lose goes until the step fits L rows. */
static void build_stage2(struct build_stage1 *st, const int *sz, int d, int N, int L, int *n, struct build_cand *heap) {
    const int s_d = sz[d];
    build_exclusive(&st[d], s_d);
    int nh = 0;
    for (int i = 0; i < s_d; i++) {
        n[i] = N;
        if (N > 1) build_heap_push(heap, &nh, (struct build_cand){build_cand_v(st, sz, i, d, N), i});
    }
    long total = (long)N * s_d;
    while (total > L - s_d && nh > 0) {   /* none left: every node at one, over budget but valid */
        const int best = build_heap_pop(heap, &nh).i;
        n[best]--;
        total--;
        if (n[best] > 1) build_heap_push(heap, &nh, (struct build_cand){build_cand_v(st, sz, best, d, n[best]), best});
    }
}

/* Stationary distribution of the state chain into x[0..N]; -1 if singular. */
static int build_stationary(const double *e, int N, double *x) {
    /* e[d * (N + 1) + k]: probability that a step in state d ends in a node with k
     * prompt tokens (k = 0: only the root).  Unknowns x_0..x_N. */
    const int n = N + 1;
    double A[(ENG_PPD_MAX_PROMPT + 1) * (ENG_PPD_MAX_PROMPT + 2)];
    memset(A, 0, sizeof A);
#define AT(r, c) A[(r) * (n + 1) + (c)]
    for (int k = 1; k <= N; k++) {       /* x_k = sum_d x_d e[d][k] (+ x_0 for k = N) */
        AT(k - 1, k) += 1.0;
        for (int d = 1; d <= N; d++) AT(k - 1, d) -= e[d * (N + 1) + k];
        if (k == N) AT(k - 1, 0) -= 1.0;
    }
    for (int c = 0; c <= N; c++) AT(N, c) = 1.0;
    AT(N, n) = 1.0;
    for (int c = 0; c < n; c++) {
        int piv = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(AT(r, c)) > fabs(AT(piv, c))) piv = r;
        if (fabs(AT(piv, c)) < 1e-12) return -1;
        if (piv != c)
            for (int j = 0; j <= n; j++) { double t = AT(c, j); AT(c, j) = AT(piv, j); AT(piv, j) = t; }
        for (int r = 0; r < n; r++) {
            if (r == c) continue;
            double f = AT(r, c) / AT(c, c);
            for (int j = c; j <= n; j++) AT(r, j) -= f * AT(c, j);
        }
    }
    for (int c = 0; c < n; c++) x[c] = AT(c, n) / AT(c, c);
#undef AT
    return 0;
}

/* Objective of one configuration: sum_d x_d Val(d, s_d). */
static int build_score(struct build_stage1 *st, const int *sz, int N, int L, int *nbuf, struct build_cand *heap, double *x,
                       double *score) {
    double e[(ENG_PPD_MAX_PROMPT + 1) * (ENG_PPD_MAX_PROMPT + 1)];
    memset(e, 0, sizeof e);
    for (int d = 1; d <= N; d++) {
        build_stage2(st, sz, d, N, L, nbuf, heap);
        double sum = 0;
        for (int i = 0; i < sz[d]; i++) e[d * (N + 1) + nbuf[i]] += st[d].acc[i];
        for (int k = 1; k <= N; k++) sum += e[d * (N + 1) + k];
        e[d * (N + 1)] = 1.0 - sum;
    }
    if (build_stationary(e, N, x)) return -1;
    *score = 0;
    for (int d = 1; d <= N; d++) *score += x[d] * st[d].val[sz[d]];
    return 0;
}

int eng_ppd_tree_build(struct eng_ppd_tree_family **out, const double *acc, int N, int K, int L,
                       struct eng_ppd_tree_build_info *info) {
    return eng_ppd_tree_build_joint(out, acc, NULL, N, K, L, info);
}

/* prefix[l] for l = 1..N from the joint (prefix[N] a copy of it): the ranks'
 * index is little-endian in base K+1, so a length-l prefix is idx mod (K+1)^l. */
static int build_prefix_tables(struct build_model *bm, const double *joint, int N) {
    const long B = bm->K + 1;
    long size = 1;
    for (int l = 0; l < N; l++) size *= B;
    for (int i = 0; i < size; i++)
        if (!(joint[i] >= 0 && joint[i] <= 1)) return ENG_E_RANGE;
    if (!(bm->prefix[N] = malloc(sizeof(double) * (size_t)size))) return ENG_E_NOMEM;
    memcpy(bm->prefix[N], joint, sizeof(double) * (size_t)size);
    for (int l = N - 1; l >= 1; l--) {
        size /= B;
        if (!(bm->prefix[l] = calloc((size_t)size, sizeof(double)))) return ENG_E_NOMEM;
        for (long r = 0; r < B; r++)
            for (long j = 0; j < size; j++) bm->prefix[l][j] += bm->prefix[l + 1][j + r * size];
    }
    return 0;
}

int eng_ppd_tree_build_joint(struct eng_ppd_tree_family **out, const double *acc, const double *joint, int N, int K,
                             int L, struct eng_ppd_tree_build_info *info) {
    *out = NULL;
    if (N < 1 || N > ENG_PPD_MAX_PROMPT || K < 1 || K > ENG_PPD_MAX_TOPK || L < 1) return ENG_E_RANGE;
    if (joint && !eng_ppd_joint_size(N, K)) return ENG_E_RANGE;
    for (int i = 0; i < N * K; i++)
        if (!(acc[i] >= 0 && acc[i] <= 1)) return ENG_E_RANGE;
    struct build_stage1 st[ENG_PPD_MAX_PROMPT + 1];
    memset(st, 0, sizeof st);
    struct build_model bm = {.acc = acc, .K = K};
    struct eng_ppd_tree_family *f = NULL;
    int *nbuf = NULL, rc = 0;
    struct build_cand *heap = NULL;
    if (joint && (rc = build_prefix_tables(&bm, joint, N))) goto out;
    for (int d = 1; d <= N; d++)
        if ((rc = build_stage1(&st[d], &bm, d, L))) goto out;
    if (!(nbuf = malloc(sizeof *nbuf * (size_t)(L + 1))) || !(heap = malloc(sizeof *heap * (size_t)(L + 1)))) {
        rc = ENG_E_NOMEM;
        goto out;
    }

    /* search s_2..s_N over [L/(N+1), L/2] (clamped to what the first stage kept), s_2 outermost */
    int sz[ENG_PPD_MAX_PROMPT + 1], lo[ENG_PPD_MAX_PROMPT + 1], hi[ENG_PPD_MAX_PROMPT + 1];
    int best_sz[ENG_PPD_MAX_PROMPT + 1];
    double best = -INFINITY, x[ENG_PPD_MAX_PROMPT + 1], best_x[ENG_PPD_MAX_PROMPT + 1];
    sz[1] = K < st[1].n ? K : st[1].n;
    lo[1] = hi[1] = sz[1];
    for (int d = 2; d <= N; d++) {
        lo[d] = L / (N + 1) < 1 ? 1 : L / (N + 1);
        hi[d] = L / 2 < st[d].n ? L / 2 : st[d].n;
        if (lo[d] > hi[d]) lo[d] = hi[d];
        sz[d] = lo[d];
    }
    memcpy(best_sz, sz, sizeof sz);
    memset(best_x, 0, sizeof best_x);
    for (;;) {
        double score;
        if (build_score(st, sz, N, L, nbuf, heap, x, &score) == 0 && score > best) {
            best = score;
            memcpy(best_sz, sz, sizeof sz);
            memcpy(best_x, x, sizeof x);
        }
        int d = N;
        while (d >= 2 && sz[d] == hi[d]) { sz[d] = lo[d]; d--; }
        if (d < 2) break;
        sz[d]++;
    }

    if (!(f = calloc(1, sizeof *f))) { rc = ENG_E_NOMEM; goto out; }
    f->n_prompt = N;
    f->topk = K;
    f->L = L;
    for (int d = 1; d <= N; d++) {
        build_stage2(st, best_sz, d, N, L, nbuf, heap);
        f->n_nodes[d] = best_sz[d];
        if (!(f->nodes[d] = calloc((size_t)best_sz[d] + 1, sizeof *f->nodes[d]))) { rc = ENG_E_NOMEM; goto out; }
        for (int i = 0; i < best_sz[d]; i++) {
            struct eng_ppd_tree_node *nd = &f->nodes[d][i];
            memcpy(nd->path, st[d].p[i].p, sizeof nd->path);
            nd->len = st[d].p[i].len;
            nd->acc = build_round5(st[d].acc[i]);
            nd->n = (int8_t)nbuf[i];
        }
    }
    if (info) {
        memset(info, 0, sizeof *info);
        memcpy(info->s, best_sz, sizeof best_sz);
        memcpy(info->x, best_x, sizeof best_x);
        info->objective = best;
        info->tokens_per_step = 1.0 + (best_x[0] < 1.0 ? best / (1.0 - best_x[0]) : 0.0);
    }
    *out = f;
    f = NULL;
out:
    eng_ppd_tree_family_free(f);
    free(nbuf);
    free(heap);
    for (int d = 1; d <= N; d++) build_stage1_free(&st[d]);
    for (int l = 0; l <= N; l++) free(bm.prefix[l]);
    return rc;
}

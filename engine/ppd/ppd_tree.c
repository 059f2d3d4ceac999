/* ppd_tree.c — tree-family files (JSON) and the per-state buffers of
 * ppd_tree.h (docs/ppd.md, "The buffers of a state").  The builder is in
 * ppd_tree_build.c.
 *
 * Buffers are built once at start-up, so this file favours plain code over
 * speed: tree items live as short paths and positions are found by binary
 * search in the sorted item list.
 */
#include "engine/ppd/ppd_tree.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

/* A tree item: a candidate path optionally followed by prompt markers -1..-j. */
struct tree_item {
    int8_t p[2 * ENG_PPD_MAX_PROMPT];
    int8_t len;
    int8_t n;
};

/* Order by (length, path), comparing entries as integers (so -2 < -1 < 0 < 1),
 * which is Python's order for the reference's sort key (len(p), p). */
static int tree_path_cmp(const int8_t *a, int la, const int8_t *b, int lb) {
    if (la != lb) return la < lb ? -1 : 1;
    for (int i = 0; i < la; i++)
        if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
    return 0;
}

static int tree_item_cmp(const void *x, const void *y) {
    const struct tree_item *a = x, *b = y;
    return tree_path_cmp(a->p, a->len, b->p, b->len);
}

static int tree_node_cmp(const void *x, const void *y) {
    const struct eng_ppd_tree_node *a = x, *b = y;
    return tree_path_cmp(a->path, a->len, b->path, b->len);
}

void eng_ppd_tree_family_free(struct eng_ppd_tree_family *f) {
    if (!f) return;
    for (int d = 0; d <= ENG_PPD_MAX_PROMPT; d++) free(f->nodes[d]);
    free(f);
}

/* Every rule of the file format; name and the state/index go into err. */
static int tree_family_check(const struct eng_ppd_tree_family *f, const char *name, char *err, size_t cap) {
    if (f->n_prompt < 1 || f->n_prompt > ENG_PPD_MAX_PROMPT || f->topk < 1 || f->topk > ENG_PPD_MAX_TOPK) {
        snprintf(err, cap, "%s: N=%d, K=%d: N must be in [1, %d], K in [1, %d]", name, f->n_prompt, f->topk,
                 ENG_PPD_MAX_PROMPT, ENG_PPD_MAX_TOPK);
        return ENG_E_FORMAT;
    }
    for (int d = 1; d <= f->n_prompt; d++) {
        const struct eng_ppd_tree_node *nd = f->nodes[d];
        for (int i = 0; i < f->n_nodes[d]; i++) {
            const struct eng_ppd_tree_node *x = &nd[i];
            if (x->len < 1 || x->len > d) {
                snprintf(err, cap, "%s: states.%d[%d]: path of depth %d; state %d allows 1..%d", name, d, i, x->len, d, d);
                return ENG_E_FORMAT;
            }
            for (int t = 0; t < x->len; t++)
                if (x->path[t] < 0 || x->path[t] >= f->topk) {
                    snprintf(err, cap, "%s: states.%d[%d]: rank %d outside [0, %d)", name, d, i, x->path[t], f->topk);
                    return ENG_E_FORMAT;
                }
            if (x->n < 1) {
                snprintf(err, cap, "%s: states.%d[%d]: %d prompt tokens; at least 1", name, d, i, x->n);
                return ENG_E_FORMAT;
            }
            /* prefix-closed and no duplicates (quadratic, but trees are small) */
            int have_parent = x->len == 1;
            for (int j = 0; j < f->n_nodes[d]; j++) {
                if (j == i) continue;
                if (!tree_path_cmp(nd[j].path, nd[j].len, x->path, x->len)) {
                    snprintf(err, cap, "%s: states.%d[%d]: path listed twice", name, d, i);
                    return ENG_E_FORMAT;
                }
                if (nd[j].len == x->len - 1 && !memcmp(nd[j].path, x->path, (size_t)nd[j].len)) have_parent = 1;
            }
            if (!have_parent) {
                snprintf(err, cap, "%s: states.%d[%d]: the path's parent is not listed", name, d, i);
                return ENG_E_FORMAT;
            }
        }
    }
    return 0;
}

static int tree_get_int(json_t *o, const char *key, int lo, int hi, int *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) return -1;
    *out = (int)json_integer_value(v);
    return 0;
}

int eng_ppd_tree_family_parse(struct eng_ppd_tree_family **out, const char *json, size_t len, const char *name,
                              char *err, size_t cap) {
    *out = NULL;
    json_error_t je;
    json_t *root = json_loadb(json, len, 0, &je);
    struct eng_ppd_tree_family *f = NULL;
    int rc = ENG_E_FORMAT;
    if (!root) {
        snprintf(err, cap, "%s: line %d: %s", name, je.line, je.text);
        return ENG_E_FORMAT;
    }
    if (!(f = calloc(1, sizeof *f))) { rc = ENG_E_NOMEM; goto err; }
    if (tree_get_int(root, "N", 1, ENG_PPD_MAX_PROMPT, &f->n_prompt)) {
        snprintf(err, cap, "%s: N: want an integer in [1, %d]", name, ENG_PPD_MAX_PROMPT);
        goto err;
    }
    if (tree_get_int(root, "K", 1, ENG_PPD_MAX_TOPK, &f->topk)) {
        snprintf(err, cap, "%s: K: want an integer in [1, %d]", name, ENG_PPD_MAX_TOPK);
        goto err;
    }
    if (json_object_get(root, "L") && tree_get_int(root, "L", 0, 1 << 20, &f->L)) {
        snprintf(err, cap, "%s: L: want a non-negative integer", name);
        goto err;
    }
    json_t *states = json_object_get(root, "states");
    if (!json_is_object(states)) { snprintf(err, cap, "%s: states: missing or not an object", name); goto err; }
    for (int d = 1; d <= f->n_prompt; d++) {
        char key[16];
        snprintf(key, sizeof key, "%d", d);
        json_t *arr = json_object_get(states, key);
        if (!json_is_array(arr)) { snprintf(err, cap, "%s: states.%d: missing or not an array", name, d); goto err; }
        size_t n = json_array_size(arr);
        if (n > 100000) { snprintf(err, cap, "%s: states.%d: %zu nodes is too many", name, d, n); goto err; }
        f->n_nodes[d] = (int)n;
        if (n && !(f->nodes[d] = calloc(n, sizeof *f->nodes[d]))) { rc = ENG_E_NOMEM; goto err; }
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(arr, i), *p = json_array_get(e, 0), *a = json_array_get(e, 1),
                   *c = json_array_get(e, 2);
            if (!json_is_array(e) || json_array_size(e) != 3 || !json_is_array(p) || !json_is_number(a) ||
                !json_is_integer(c)) {
                snprintf(err, cap, "%s: states.%d[%zu]: want [path, acc, n]", name, d, i);
                goto err;
            }
            struct eng_ppd_tree_node *x = &f->nodes[d][i];
            size_t pl = json_array_size(p);
            if (pl < 1 || pl > (size_t)d) {
                snprintf(err, cap, "%s: states.%d[%zu]: path of depth %zu; state %d allows 1..%d", name, d, i, pl, d, d);
                goto err;
            }
            x->len = (int8_t)pl;
            for (size_t t = 0; t < pl; t++) {
                json_t *r = json_array_get(p, t);
                if (!json_is_integer(r) || json_integer_value(r) < 0 || json_integer_value(r) >= f->topk) {
                    snprintf(err, cap, "%s: states.%d[%zu]: rank %s outside [0, %d)", name, d, i,
                             json_is_integer(r) ? "value" : "(not an integer)", f->topk);
                    goto err;
                }
                x->path[t] = (int8_t)json_integer_value(r);
            }
            x->acc = json_number_value(a);
            json_int_t nv = json_integer_value(c);
            if (nv < 1) { snprintf(err, cap, "%s: states.%d[%zu]: %lld prompt tokens; at least 1", name, d, i, (long long)nv); goto err; }
            x->n = (int8_t)(nv > f->n_prompt ? f->n_prompt : nv);   /* the reference clamps */
        }
    }
    if ((rc = tree_family_check(f, name, err, cap))) goto err;
    json_decref(root);
    *out = f;
    return 0;
err:
    json_decref(root);
    eng_ppd_tree_family_free(f);
    return rc;
}

int eng_ppd_tree_family_load(struct eng_ppd_tree_family **out, const char *path, char *err, size_t cap) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) { snprintf(err, cap, "%s: cannot open the tree file", path); return ENG_E_IO; }
    char *buf = NULL;
    size_t n = 0, c = 0;
    for (;;) {
        if (n == c) {
            size_t nc = c ? c * 2 : 65536;
            char *nb = nc <= (64u << 20) ? realloc(buf, nc) : NULL;
            if (!nb) { free(buf); fclose(fp); snprintf(err, cap, "%s: too large", path); return ENG_E_NOMEM; }
            buf = nb;
            c = nc;
        }
        size_t k = fread(buf + n, 1, c - n, fp);
        if (!k) break;
        n += k;
    }
    fclose(fp);
    int rc = eng_ppd_tree_family_parse(out, buf, n, path, err, cap);
    free(buf);
    return rc;
}

int eng_ppd_tree_family_save(const struct eng_ppd_tree_family *f, const char *path, char *err, size_t cap) {
    /* One node per line keeps the files readable and diffs small. */
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) return ENG_E_RANGE;
    FILE *fp = fopen(tmp, "w");
    if (!fp) { snprintf(err, cap, "%s: cannot write", tmp); return ENG_E_IO; }
    fprintf(fp, "{\"N\": %d, \"K\": %d, \"L\": %d,\n \"states\": {", f->n_prompt, f->topk, f->L);
    for (int d = 1; d <= f->n_prompt; d++) {
        fprintf(fp, "%s\n  \"%d\": [", d > 1 ? "," : "", d);
        for (int i = 0; i < f->n_nodes[d]; i++) {
            const struct eng_ppd_tree_node *x = &f->nodes[d][i];
            fprintf(fp, "%s\n    [[", i ? "," : "");
            for (int t = 0; t < x->len; t++) fprintf(fp, "%s%d", t ? ", " : "", x->path[t]);
            char num[40];   /* the shortest of %.15g / %.17g that reads back exactly */
            snprintf(num, sizeof num, "%.15g", x->acc);
            if (strtod(num, NULL) != x->acc) snprintf(num, sizeof num, "%.17g", x->acc);
            fprintf(fp, "], %s, %d]", num, x->n);
        }
        fprintf(fp, "]");
    }
    fprintf(fp, "}}\n");
    int bad = ferror(fp);
    if (fclose(fp) || bad || rename(tmp, path)) {
        remove(tmp);
        snprintf(err, cap, "%s: cannot write", path);
        return ENG_E_IO;
    }
    return 0;
}

/* ---- buffers ---- */

static void tree_free_state(struct eng_ppd_tree *s) {
    free(s->mask); free(s->src); free(s->pos_off); free(s->normal_pos); free(s->node_cand); free(s->rows);
    free(s->n_special); free(s->special); free(s->child_first); free(s->child_ids);
    memset(s, 0, sizeof *s);
}

void eng_ppd_trees_free(struct eng_ppd_trees *t) {
    if (!t) return;
    for (int d = 0; d <= ENG_PPD_MAX_PROMPT; d++) tree_free_state(&t->st[d]);
    t->max_T = 0;
}

/* Position of an item path in the sorted list S (n items, position = index + 1); 0 for the root, -1 if absent. */
static int tree_pos(const struct tree_item *S, int n, const int8_t *p, int len) {
    if (len == 0) return 0;
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = tree_path_cmp(S[mid].p, S[mid].len, p, len);
        if (!c) return mid + 1;
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
}

static int tree_build_state(struct eng_ppd_tree *s, int d, const struct eng_ppd_tree_node *nodes, int n_nodes,
                            int N, int K) {
    int rc = ENG_E_NOMEM;
    struct eng_ppd_tree_node *C = NULL;
    struct tree_item *items = NULL;
    memset(s, 0, sizeof *s);
    s->d = d;
    /* 1. candidates in (length, path) order: node id k >= 1 is C[k - 1] */
    if (n_nodes && !(C = malloc(sizeof *C * (size_t)n_nodes))) goto err;
    if (n_nodes) memcpy(C, nodes, sizeof *C * (size_t)n_nodes);
    if (n_nodes) qsort(C, (size_t)n_nodes, sizeof *C, tree_node_cmp);
    /* 2. every item: candidates, then prompt chains (at most N per node and root) */
    int cap = (n_nodes + 1) * (N + 1), n = 0;
    if (!(items = calloc((size_t)cap, sizeof *items))) goto err;
    for (int i = 0; i < n_nodes; i++) {
        memcpy(items[n].p, C[i].path, (size_t)C[i].len);
        items[n].len = C[i].len;
        items[n++].n = C[i].n;
    }
    for (int i = 0, m = n; i < m; i++) {
        items[n] = items[i];
        items[n].p[items[n].len++] = -1;
        n++;
    }
    items[n].len = 1;
    items[n].p[0] = -1;
    items[n++].n = (int8_t)N;
    for (int j = 2; j <= N; j++)
        for (int i = 0, m = n; i < m; i++)
            if (items[i].p[items[i].len - 1] == -(j - 1) && j <= items[i].n) {
                items[n] = items[i];
                items[n].p[items[n].len++] = (int8_t)-j;
                n++;
            }
    qsort(items, (size_t)n, sizeof *items, tree_item_cmp);
    const int T = n + 1, M = n_nodes + 1, W = (T + 63) / 64;
    s->T = T;
    s->M = M;
    s->vis_words = W;
    s->mask = calloc((size_t)T * W, sizeof *s->mask);
    s->src = calloc((size_t)T, sizeof *s->src);
    s->pos_off = calloc((size_t)T, sizeof *s->pos_off);
    s->normal_pos = calloc((size_t)M, sizeof *s->normal_pos);
    s->node_cand = calloc((size_t)M, sizeof *s->node_cand);
    s->n_special = calloc((size_t)M, sizeof *s->n_special);
    s->special = calloc((size_t)M * N, sizeof *s->special);
    s->child_first = calloc((size_t)M + 1, sizeof *s->child_first);
    s->child_ids = calloc((size_t)M, sizeof *s->child_ids);
    s->rows = calloc((size_t)M * (d + 1), sizeof *s->rows);   /* R <= M - 1 rows (one for the bare root) */
    if (!s->mask || !s->src || !s->pos_off || !s->normal_pos || !s->node_cand || !s->n_special || !s->special ||
        !s->child_first || !s->child_ids || !s->rows)
        goto err;
    /* 3. mask, sources, position offsets */
    s->mask[0] = 1;
    for (int t = 1; t < T; t++) {
        const struct tree_item *q = &items[t - 1];
        uint64_t *row = s->mask + (size_t)t * W;
        row[0] |= 1;
        row[t >> 6] |= 1ull << (t & 63);
        for (int l = 1; l < q->len; l++) {
            int a = tree_pos(items, n, q->p, l);
            if (a < 0) { rc = ENG_E_FORMAT; goto err; }
            row[a >> 6] |= 1ull << (a & 63);
        }
        int last = q->p[q->len - 1];
        s->src[t] = last >= 0 ? last + K * (q->len - 1) + 1 : last;   /* prompt j (last = -j) -> row j - 1 */
        s->pos_off[t] = q->len;
    }
    /* 4. nodes: positions, tokens, parents -> children */
    int *parent = calloc((size_t)M, sizeof *parent);
    if (!parent) goto err;
    parent[0] = -1;
    for (int k = 1; k < M; k++) {
        const struct eng_ppd_tree_node *x = &C[k - 1];
        s->normal_pos[k] = tree_pos(items, n, x->path, x->len);
        s->node_cand[k] = s->src[s->normal_pos[k]];
        parent[k] = 0;
        for (int j = 1; j < k && x->len > 1; j++)   /* parents sort before children */
            if (C[j - 1].len == x->len - 1 && !memcmp(C[j - 1].path, x->path, (size_t)x->len - 1)) parent[k] = j;
        s->child_first[parent[k] + 1]++;
    }
    for (int k = 0; k < M; k++) s->child_first[k + 1] += s->child_first[k];
    int *fill = calloc((size_t)M, sizeof *fill);
    if (!fill) { free(parent); goto err; }
    for (int k = 1; k < M; k++) s->child_ids[s->child_first[parent[k]] + fill[parent[k]]++] = k;
    free(fill);
    /* 5. retrieve rows: longest / largest path first, skipping covered ones */
    char *covered = calloc((size_t)M, 1);
    if (!covered) { free(parent); goto err; }
    int R = 0, D = 0;
    for (int k = M - 1; k >= 1; k--) {
        if (covered[k]) continue;
        int len = C[k - 1].len;
        int32_t *row = s->rows + (size_t)R * (d + 1);
        for (int c = 0; c <= d; c++) row[c] = ENG_PPD_PAD;
        for (int c = len, a = k; c >= 1; c--, a = parent[a]) { row[c] = a; covered[a] = 1; }
        row[0] = 0;
        if (len > D) D = len;
        R++;
    }
    if (M == 1) { s->rows[0] = 0; R = 1; }
    free(covered);
    free(parent);
    /* rows were written with stride d + 1; repack to D + 1 (D <= d, so an
     * ascending copy never overwrites what it still has to read) */
    for (int r = 0; r < R; r++)
        for (int c = 0; c <= D; c++) s->rows[r * (D + 1) + c] = s->rows[r * (d + 1) + c];
    s->R = R;
    s->D = D;
    /* 6. prompt tokens below every node */
    for (int k = 0; k < M; k++) {
        int8_t p[2 * ENG_PPD_MAX_PROMPT];
        int len = k ? C[k - 1].len : 0;
        if (k) memcpy(p, C[k - 1].path, (size_t)len);
        for (int j = 1; j <= N; j++) {
            p[len + j - 1] = (int8_t)-j;
            int a = tree_pos(items, n, p, len + j);
            if (a < 0) break;
            s->special[(size_t)k * N + s->n_special[k]++] = a;
        }
    }
    free(items);
    free(C);
    return 0;
err:
    free(items);
    free(C);
    tree_free_state(s);
    return rc;
}

int eng_ppd_trees_init(struct eng_ppd_trees *t, const struct eng_ppd_tree_family *f, char *err, size_t cap) {
    memset(t, 0, sizeof *t);
    int rc = tree_family_check(f, "tree family", err, cap);
    if (rc) return rc;
    t->n_prompt = f->n_prompt;
    t->topk = f->topk;
    for (int d = 1; d <= f->n_prompt; d++) {
        if ((rc = tree_build_state(&t->st[d], d, f->nodes[d], f->n_nodes[d], f->n_prompt, f->topk))) {
            snprintf(err, cap, "tree state %d: %s", d, eng_err_msg(rc));
            eng_ppd_trees_free(t);
            return rc;
        }
        if (t->st[d].T > t->max_T) t->max_T = t->st[d].T;
    }
    return 0;
}

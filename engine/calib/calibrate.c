/* calibrate.c — step latency table and the per-batch-size tree choice (see
 * calibrate.h).
 */
#include "engine/calib/calibrate.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/batch.h"
#include "engine/err.h"
#include "engine/decode/generate.h"
#include "engine/ppd/ppd_tree.h"
#include "engine/calib/stats.h"

/* Rows per sequence: dense up to 8 (where a CPU turns from bandwidth- to
 * compute-bound), then about 1.5x apart up to 256. */
static const int calib_r_grid[] = {1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256};
/* Past this many rows per sequence, batch sizes above 1 are not measured:
 * trees shrink as the batch grows, so those points would never be used. */
#define CALIB_R_MAX_BATCHED 64

/* Median of n step times of batch b (the first pass is a warm-up). */
static int calib_time(struct eng_forward *f, struct eng_kv *kv, struct eng_batch *batch, double *ms_out) {
    double t[7];
    int n = 0;
    double t0 = eng_now_s();
    int rc = eng_forward_run(f, batch, kv, NULL, 0);
    if (rc) return rc;
    double first = eng_now_s() - t0;
    /* More passes where a pass is short, so noise and cost both stay small. */
    const int passes = first < 0.02 ? 7 : first < 0.1 ? 5 : 3;
    for (; n < passes; n++) {
        t0 = eng_now_s();
        if ((rc = eng_forward_run(f, batch, kv, NULL, 0))) return rc;
        t[n] = eng_now_s() - t0;
    }
    *ms_out = 1e3 * eng_median(t, n);
    return 0;
}

int eng_calib_measure(struct eng_calib_table *t, struct eng_forward *f, struct eng_kv *kv, int n_slot, int prefix,
                      double stop_ratio, eng_calib_progress_fn progress, void *user) {
    memset(t, 0, sizeof *t);
    if (n_slot < 1 || n_slot > kv->n_slot) n_slot = kv->n_slot;
    const int max_rows = f->max_rows;
    if (prefix + (max_rows < 256 ? max_rows : 256) > kv->max_seq) prefix = kv->max_seq - (max_rows < 256 ? max_rows : 256);
    if (prefix < 0) return ENG_E_RANGE;
    t->prefix = prefix;
    t->max_rows = max_rows;
    t->stop_ratio = stop_ratio > 0 ? stop_ratio : 0;
    for (int b = 1; t->n_b < ENG_CALIB_MAX_B; b *= 2) {
        if (b >= n_slot) {
            t->b[t->n_b++] = n_slot;
            break;
        }
        t->b[t->n_b++] = b;
    }
    for (size_t i = 0; i < sizeof calib_r_grid / sizeof calib_r_grid[0] && calib_r_grid[i] <= max_rows; i++)
        t->r[t->n_r++] = calib_r_grid[i];
    int total = 0;
    for (int i = 0; i < t->n_b; i++)
        for (int j = 0; j < t->n_r; j++)
            total += t->b[i] * t->r[j] <= max_rows && (t->b[i] == 1 || t->r[j] <= CALIB_R_MAX_BATCHED);

    int32_t *saved_len = malloc(sizeof *saved_len * (size_t)kv->n_slot);
    int32_t *ids = malloc(sizeof *ids * (size_t)max_rows);
    struct eng_batch batch;
    int rc = eng_batch_init(&batch, max_rows, max_rows);
    if (rc || !saved_len || !ids) {
        if (!rc) eng_batch_free(&batch);
        free(saved_len);
        free(ids);
        return rc ? rc : ENG_E_NOMEM;
    }
    memcpy(saved_len, kv->len, sizeof *saved_len * (size_t)kv->n_slot);
    for (int i = 0; i < max_rows; i++) ids[i] = (int32_t)(1000 + (i * 7919) % 20000);
    for (int s = 0; s < n_slot; s++) kv->len[s] = prefix;
    const double t_start = eng_now_s();
    int done = 0;
    for (int i = 0; i < t->n_b && !rc; i++) {
        int over = 0;   /* consecutive points past stop_ratio one-row steps */
        for (int j = 0; j < t->n_r && !rc; j++) {
            const int b = t->b[i], r = t->r[j];
            if (b * r > max_rows || (b > 1 && r > CALIB_R_MAX_BATCHED)) continue;
            if (over < 2) {
                eng_batch_clear(&batch);
                for (int s = 0; s < b && !rc; s++) rc = eng_batch_add_causal(&batch, s, prefix, ids, r, false);
                for (int k = 0; k < batch.n_tok; k++) batch.want_logits[k] = true;
                if (!rc) rc = calib_time(f, kv, &batch, &t->ms[i][j]);
                /* two in a row, so one noisy median does not end the sweep */
                over = j > 0 && stop_ratio > 0 && t->ms[i][j] > stop_ratio * t->ms[i][0] ? over + 1 : 0;
            }
            if (progress) progress(user, ++done, total);
        }
    }
    t->seconds = eng_now_s() - t_start;
    memcpy(kv->len, saved_len, sizeof *saved_len * (size_t)kv->n_slot);
    eng_batch_free(&batch);
    free(saved_len);
    free(ids);
    return rc;
}

/* Row j of batch index i, linear in r; -1 outside the measured part. */
static double calib_row_ms(const struct eng_calib_table *t, int i, double r) {
    if (r < t->r[0]) return -1;
    for (int j = 0; j < t->n_r; j++) {
        if (t->ms[i][j] <= 0) return -1;
        if (r == t->r[j]) return t->ms[i][j];
        if (j + 1 < t->n_r && r < t->r[j + 1]) {
            if (t->ms[i][j + 1] <= 0) return -1;
            const double w = (r - t->r[j]) / (double)(t->r[j + 1] - t->r[j]);
            return t->ms[i][j] + w * (t->ms[i][j + 1] - t->ms[i][j]);
        }
    }
    return -1;
}

double eng_calib_step_ms(const struct eng_calib_table *t, int b, double r) {
    if (b < 1 || r < 1 || b * r > t->max_rows + 1e-9 || t->n_b == 0) return -1;
    int i = 0;
    while (i + 1 < t->n_b && t->b[i + 1] <= b) i++;
    double lo = calib_row_ms(t, i, r);
    if (t->b[i] == b) {
        if (lo >= 0) return lo;
        /* r past the batched grid: the same total rows from one sequence */
        return i > 0 ? calib_row_ms(t, 0, r * b) : -1;
    }
    if (lo < 0) lo = calib_row_ms(t, 0, r * b);
    if (lo < 0) return -1;
    double hi = i + 1 < t->n_b ? calib_row_ms(t, i + 1, r) : -1;
    if (hi < 0) {
        /* the larger measured batch cannot hold r rows each: scale the smaller
         * one's cost at the same total rows */
        double same_total = calib_row_ms(t, i, r * b / t->b[i]);
        return same_total >= 0 ? same_total : lo * b / t->b[i];
    }
    const double w = (double)(b - t->b[i]) / (double)(t->b[i + 1] - t->b[i]);
    return lo + w * (hi - lo);
}

int eng_calib_candidates(int *L, int cap, int L_max) {
    int n = 0;
    for (int l = 1; l <= L_max && n < cap; l += l < 8 ? 1 : l < 16 ? 2 : l < 32 ? 4 : l < 64 ? 8 : l < 128 ? 16 : 32)
        L[n++] = l;
    return n;
}

int eng_calib_predict(struct eng_calib_pick *pick, const struct eng_calib_table *t, const double *acc, const double *joint, int N, int K,
                      int L, int b) {
    memset(pick, 0, sizeof *pick);
    pick->L = L;
    if (L == 0) {
        pick->max_T = 1;
        pick->rows = 1;
        pick->tokens_per_step = 1;
    } else {
        struct eng_ppd_tree_family *fam = NULL;
        struct eng_ppd_tree_build_info info;
        struct eng_ppd_trees trees;
        char err[256];
        int rc = eng_ppd_tree_build_joint(&fam, acc, joint, N, K, L, &info);
        if (rc) return rc;
        rc = eng_ppd_trees_init(&trees, fam, err, sizeof err);
        eng_ppd_tree_family_free(fam);
        if (rc) return rc;
        /* rows over the true stationary distribution of the states: x[1..N]
         * renormalised without the reference's phantom root-only state x[0],
         * which is not a step (see eng_ppd_tree_build_info) */
        double rows = 0, wsum = 0;
        for (int d = 1; d <= N; d++) {
            rows += info.x[d] * trees.st[d].T;
            wsum += info.x[d];
        }
        pick->rows = wsum > 0 ? rows / wsum : trees.max_T;
        pick->max_T = trees.max_T > N + 1 ? trees.max_T : N + 1;
        pick->tokens_per_step = info.tokens_per_step;
        eng_ppd_trees_free(&trees);
    }
    pick->step_ms = b * pick->max_T <= t->max_rows ? eng_calib_step_ms(t, b, pick->rows) : -1;
    pick->tokens_per_s = pick->step_ms > 0 ? 1e3 * b * pick->tokens_per_step / pick->step_ms : 0;
    return 0;
}

int eng_calib_max_tokens_per_step(const double *acc, const double *joint, int N, int K, int L_max, double *out) {
    int Ls[64];
    const int nL = eng_calib_candidates(Ls, 64, L_max);
    double best = 1;   /* plain decoding */
    for (int k = 0; k < nL; k++) {
        struct eng_ppd_tree_family *fam = NULL;
        struct eng_ppd_tree_build_info info;
        int rc = eng_ppd_tree_build_joint(&fam, acc, joint, N, K, Ls[k], &info);
        eng_ppd_tree_family_free(fam);
        if (rc) return rc;
        if (info.tokens_per_step > best) best = info.tokens_per_step;
    }
    *out = best;
    return 0;
}

int eng_calib_choose(struct eng_calib_choice *c, const struct eng_calib_table *t, const double *acc, const double *joint, int N, int K,
                     int n_slot, int L_max) {
    memset(c, 0, sizeof *c);
    if (n_slot < 1 || n_slot > ENG_CALIB_MAX_SLOTS) return ENG_E_RANGE;
    c->n_slot = n_slot;
    int Ls[64];
    const int nL = eng_calib_candidates(Ls, 64, L_max);
    /* Build each tree once: its prediction per b only changes the step time. */
    struct eng_calib_pick *base = calloc((size_t)nL + 1, sizeof *base);
    if (!base) return ENG_E_NOMEM;
    int rc = eng_calib_predict(&base[0], t, acc, joint, N, K, 0, 1);
    for (int k = 0; k < nL && !rc; k++) rc = eng_calib_predict(&base[k + 1], t, acc, joint, N, K, Ls[k], 1);
    for (int b = 1; b <= n_slot && !rc; b++) {
        struct eng_calib_pick best = {0};
        for (int k = 0; k <= nL; k++) {
            struct eng_calib_pick p = base[k];
            p.step_ms = b * p.max_T <= t->max_rows ? eng_calib_step_ms(t, b, p.rows) : -1;
            if (p.step_ms <= 0) continue;
            p.tokens_per_s = 1e3 * b * p.tokens_per_step / p.step_ms;
            if (p.tokens_per_s > best.tokens_per_s) best = p;
        }
        if (best.tokens_per_s <= 0) rc = ENG_E_RANGE;   /* not even plain decoding fits */
        c->by_batch[b] = best;
        const double plain_ms = eng_calib_step_ms(t, b, 1);
        c->plain_tokens_per_s[b] = plain_ms > 0 ? 1e3 * b / plain_ms : 0;
    }
    free(base);
    return rc;
}

int eng_calib_table_save(const struct eng_calib_table *t, const char *fingerprint, const char *path, char *err,
                         size_t err_cap) {
    json_t *o = json_object(), *b = json_array(), *r = json_array(), *ms = json_array();
    if (!o || !b || !r || !ms) {
        json_decref(o), json_decref(b), json_decref(r), json_decref(ms);
        return eng_err_set(err, err_cap, ENG_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < t->n_b; i++) json_array_append_new(b, json_integer(t->b[i]));
    for (int j = 0; j < t->n_r; j++) json_array_append_new(r, json_integer(t->r[j]));
    for (int i = 0; i < t->n_b; i++) {
        json_t *row = json_array();
        for (int j = 0; j < t->n_r; j++) json_array_append_new(row, json_real(t->ms[i][j]));
        json_array_append_new(ms, row);
    }
    json_object_set_new(o, "fingerprint", json_string(fingerprint));
    json_object_set_new(o, "prefix", json_integer(t->prefix));
    json_object_set_new(o, "max_rows", json_integer(t->max_rows));
    json_object_set_new(o, "seconds", json_real(t->seconds));
    json_object_set_new(o, "stop_ratio", json_real(t->stop_ratio));
    json_object_set_new(o, "b", b);
    json_object_set_new(o, "r", r);
    json_object_set_new(o, "ms", ms);
    /* write then rename: a reader never sees half a file */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = json_dump_file(o, tmp, JSON_INDENT(1));
    json_decref(o);
    if (rc || rename(tmp, path)) {
        remove(tmp);
        return eng_err_set(err, err_cap, ENG_E_IO, "%s: cannot write the calibration table", path);
    }
    return 0;
}

static int calib_int_array(json_t *a, int *out, int cap, int lo, int hi) {
    if (!json_is_array(a) || json_array_size(a) < 1 || json_array_size(a) > (size_t)cap) return -1;
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) return -1;
        out[i] = (int)json_integer_value(v);
        if (i > 0 && out[i] <= out[i - 1]) return -1;
    }
    return (int)json_array_size(a);
}

int eng_calib_table_load(struct eng_calib_table *t, const char *fingerprint, const char *path, char *err,
                         size_t err_cap) {
    memset(t, 0, sizeof *t);
    FILE *fp = fopen(path, "rb");
    if (!fp) return eng_err_set(err, err_cap, ENG_E_NOT_FOUND, "%s: no calibration table", path);
    json_error_t je;
    json_t *o = json_loadf(fp, 0, &je);
    fclose(fp);
    if (!o) return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: not JSON: %s (line %d)", path, je.text, je.line);
    int rc = ENG_E_FORMAT;
    const char *what = "fingerprint";
    json_t *fpj = json_object_get(o, "fingerprint");
    if (!json_is_string(fpj)) goto bad;
    if (strcmp(json_string_value(fpj), fingerprint)) {
        json_decref(o);
        return eng_err_set(err, err_cap, ENG_E_NOT_FOUND, "%s: measured for another device, model, adapter or build",
                           path);
    }
    json_t *v = json_object_get(o, "prefix");
    what = "prefix";
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 24)) goto bad;
    t->prefix = (int)json_integer_value(v);
    v = json_object_get(o, "max_rows");
    what = "max_rows";
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65536) goto bad;
    t->max_rows = (int)json_integer_value(v);
    v = json_object_get(o, "seconds");
    t->seconds = json_is_number(v) ? json_number_value(v) : 0;
    v = json_object_get(o, "stop_ratio");   /* absent before the sweep could stop: 0 */
    t->stop_ratio = json_is_number(v) && json_number_value(v) > 0 ? json_number_value(v) : 0;
    what = "b";
    if ((t->n_b = calib_int_array(json_object_get(o, "b"), t->b, ENG_CALIB_MAX_B, 1, ENG_CALIB_MAX_SLOTS)) < 0) goto bad;
    what = "r";
    if ((t->n_r = calib_int_array(json_object_get(o, "r"), t->r, ENG_CALIB_MAX_R, 1, 65536)) < 0) goto bad;
    what = "ms";
    json_t *ms = json_object_get(o, "ms");
    if (!json_is_array(ms) || json_array_size(ms) != (size_t)t->n_b) goto bad;
    for (int i = 0; i < t->n_b; i++) {
        json_t *row = json_array_get(ms, (size_t)i);
        if (!json_is_array(row) || json_array_size(row) != (size_t)t->n_r) goto bad;
        for (int j = 0; j < t->n_r; j++) {
            json_t *x = json_array_get(row, (size_t)j);
            if (!json_is_number(x) || !isfinite(json_number_value(x)) || json_number_value(x) < 0) goto bad;
            t->ms[i][j] = json_number_value(x);
        }
    }
    if (t->ms[0][0] <= 0) goto bad;   /* one row of one sequence is always measured */
    json_decref(o);
    return 0;
bad:
    json_decref(o);
    memset(t, 0, sizeof *t);
    eng_err_set(err, err_cap, rc, "%s: damaged calibration table (field %s)", path, what);
    return rc;
}

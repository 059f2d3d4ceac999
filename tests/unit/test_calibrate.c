/* test_calibrate.c — the hardware-aware choice (engine/calib/calibrate.c): latency
 * interpolation, the per-batch-size choice on synthetic latency curves whose
 * right answer is known (a flat curve rewards big trees, a curve linear from
 * the first row never pays for PPD, trees shrink as the batch grows), the
 * early stop of the sweep (its bound, and that a table cut there chooses the
 * same), the table file (round trip, another fingerprint, damaged files), and
 * a real measurement on the default model (shape, the slots' lengths
 * restored, the stop). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#include "engine/calib/calibrate.h"
#include "engine/engine.h"
#include "engine/err.h"
#include "engine/ppd/ppd_tree.h"

/* A table over b = 1, 2, 4 and the usual r grid from a cost model:
 * t(b, r) = base + per_row * max(0, b * r - free_rows). */
static void synth(struct eng_calib_table *t, double base, double per_row, int free_rows, int max_rows) {
    static const int rs[] = {1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256};
    memset(t, 0, sizeof *t);
    t->prefix = 256;
    t->max_rows = max_rows;
    t->n_b = 3;
    t->b[0] = 1, t->b[1] = 2, t->b[2] = 4;
    t->n_r = (int)(sizeof rs / sizeof rs[0]);
    for (int j = 0; j < t->n_r; j++) t->r[j] = rs[j];
    for (int i = 0; i < t->n_b; i++)
        for (int j = 0; j < t->n_r; j++) {
            const int rows = t->b[i] * t->r[j];
            if (rows > max_rows) continue;
            t->ms[i][j] = base + per_row * (rows > free_rows ? rows - free_rows : 0);
        }
}

START_TEST(test_interpolation) {
    struct eng_calib_table t;
    synth(&t, 10, 1, 0, 256);
    ck_assert_double_eq_tol(eng_calib_step_ms(&t, 1, 1), 11, 1e-9);
    ck_assert_double_eq_tol(eng_calib_step_ms(&t, 1, 7), 17, 1e-9);      /* between 6 and 8 */
    ck_assert_double_eq_tol(eng_calib_step_ms(&t, 2, 10), 30, 1e-9);     /* b measured, r between 8 and 12 */
    ck_assert_double_eq_tol(eng_calib_step_ms(&t, 3, 4), 22, 1e-9);      /* b between 2 and 4: linear */
    ck_assert_double_eq_tol(eng_calib_step_ms(&t, 4, 64), 266, 1e-9);    /* 256 rows */
    ck_assert(eng_calib_step_ms(&t, 4, 65) < 0);                           /* past max_rows */
    ck_assert(eng_calib_step_ms(&t, 0, 1) < 0);
    /* a batch size beyond the measured ones: the same total rows */
    ck_assert_double_eq_tol(eng_calib_step_ms(&t, 8, 4), 42, 1e-9);
}
END_TEST

START_TEST(test_choice_follows_the_curve) {
    struct eng_calib_table t;
    struct eng_calib_choice *c = calloc(1, sizeof *c);
    const int N = 3, K = 10;
    /* Flat up to 64 rows (a GPU-like, memory-bound device): a big tree, and
     * more tokens per step than plain decoding's 1. */
    synth(&t, 10, 0.5, 64, 256);
    ck_assert_int_eq(eng_calib_choose(c, &t, eng_ppd_acc_vicuna7b, NULL, N, K, 4, 256), 0);
    ck_assert_int_ge(c->by_batch[1].L, 32);
    ck_assert(c->by_batch[1].tokens_per_step > 1.8);
    ck_assert(c->by_batch[1].tokens_per_s > c->plain_tokens_per_s[1]);
    /* trees shrink (never grow) as sequences are added, and always fit */
    for (int b = 2; b <= 4; b++) {
        ck_assert_int_le(c->by_batch[b].L, c->by_batch[b - 1].L);
        ck_assert_int_le(b * c->by_batch[b].max_T, 256);
    }
    ck_assert_int_lt(c->by_batch[4].L, c->by_batch[1].L);
    /* Every row costs from the first (compute-bound): no tree predicts more
     * than one token per row, so plain decoding wins everywhere. */
    synth(&t, 0, 1, 0, 256);
    ck_assert_int_eq(eng_calib_choose(c, &t, eng_ppd_acc_vicuna7b, NULL, N, K, 4, 256), 0);
    for (int b = 1; b <= 4; b++) {
        ck_assert_int_eq(c->by_batch[b].L, 0);
        ck_assert_int_eq(c->by_batch[b].max_T, 1);
    }
    /* the prediction of a budget agrees with the builder's objective */
    struct eng_calib_pick p;
    struct eng_ppd_tree_build_info info;
    struct eng_ppd_tree_family *fam = NULL;
    ck_assert_int_eq(eng_ppd_tree_build(&fam, eng_ppd_acc_vicuna7b, N, K, 60, &info), 0);
    eng_ppd_tree_family_free(fam);
    synth(&t, 10, 0.5, 64, 256);
    ck_assert_int_eq(eng_calib_predict(&p, &t, eng_ppd_acc_vicuna7b, NULL, N, K, 60, 1), 0);
    ck_assert_double_eq_tol(p.tokens_per_step, info.tokens_per_step, 1e-12);
    ck_assert(p.rows > 4 && p.rows <= p.max_T);
    free(c);
}
END_TEST

/* The bound the sweep stops at is the largest predicted tokens per step of
 * any candidate, and a table cut where steps cost more than that many plain
 * steps (the rule of eng_calib_measure) leads to the very same choices. */
START_TEST(test_stop_bound_keeps_the_choice) {
    const int N = 3, K = 10;
    double most = 0;
    ck_assert_int_eq(eng_calib_max_tokens_per_step(eng_ppd_acc_vicuna7b, NULL, N, K, 256, &most), 0);
    int Ls[64];
    const int nL = eng_calib_candidates(Ls, 64, 256);
    struct eng_calib_table t;
    synth(&t, 10, 0.5, 64, 256);
    double seen = 1;
    for (int k = 0; k < nL; k++) {
        struct eng_calib_pick p;
        ck_assert_int_eq(eng_calib_predict(&p, &t, eng_ppd_acc_vicuna7b, NULL, N, K, Ls[k], 1), 0);
        if (p.tokens_per_step > seen) seen = p.tokens_per_step;
    }
    ck_assert_double_eq_tol(most, seen, 1e-12);
    ck_assert(most > 2 && most < N + 1);
    /* Curves from GPU-like (flat for 16 rows) to CPU-like (dear from the
     * second row): cut each batch size after two points past 1.25 * most
     * one-row steps, as the sweep does, and choose again. */
    static const double per_row[] = {0.05, 0.5, 2, 8};
    static const int free_rows[] = {16, 4, 1, 0};
    struct eng_calib_choice *full = calloc(1, sizeof *full), *cut = calloc(1, sizeof *cut);
    for (int v = 0; v < 4; v++) {
        synth(&t, 10, per_row[v], free_rows[v], 256);
        ck_assert_int_eq(eng_calib_choose(full, &t, eng_ppd_acc_vicuna7b, NULL, N, K, 4, 256), 0);
        int zeroed = 0;
        for (int i = 0; i < t.n_b; i++) {
            int over = 0;
            for (int j = 1; j < t.n_r; j++) {
                if (over >= 2 && t.ms[i][j] > 0) t.ms[i][j] = 0, zeroed++;
                else over = t.ms[i][j] > 1.25 * most * t.ms[i][0] ? over + 1 : 0;
            }
        }
        if (per_row[v] >= 2) ck_assert_int_gt(zeroed, 0);   /* the CPU-like curves are cut */
        ck_assert_int_eq(eng_calib_choose(cut, &t, eng_ppd_acc_vicuna7b, NULL, N, K, 4, 256), 0);
        for (int b = 1; b <= 4; b++) {
            ck_assert_int_eq(cut->by_batch[b].L, full->by_batch[b].L);
            ck_assert_double_eq_tol(cut->by_batch[b].tokens_per_s, full->by_batch[b].tokens_per_s, 1e-9);
        }
    }
    free(full);
    free(cut);
}
END_TEST

START_TEST(test_candidates) {
    int L[64];
    int n = eng_calib_candidates(L, 64, 256);
    ck_assert_int_ge(n, 20);
    ck_assert_int_eq(L[0], 1);
    ck_assert_int_eq(L[n - 1], 256);
    for (int i = 1; i < n; i++) ck_assert_int_gt(L[i], L[i - 1]);
    ck_assert_int_eq(eng_calib_candidates(L, 64, 5), 5);
}
END_TEST

START_TEST(test_table_file) {
    char dir[] = "/tmp/ppd-calib-XXXXXX", path[256], err[512];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/t.json", dir);
    struct eng_calib_table t, u;
    synth(&t, 3, 0.25, 8, 128);
    t.seconds = 1.5;
    t.stop_ratio = 2.75;
    ck_assert_int_eq(eng_calib_table_save(&t, "fp-1", path, err, sizeof err), 0);
    ck_assert_int_eq(eng_calib_table_load(&u, "fp-1", path, err, sizeof err), 0);
    ck_assert_double_eq_tol(u.stop_ratio, 2.75, 1e-12);
    ck_assert_int_eq(u.n_b, t.n_b);
    ck_assert_int_eq(u.n_r, t.n_r);
    ck_assert_int_eq(u.max_rows, 128);
    for (int i = 0; i < t.n_b; i++)
        for (int j = 0; j < t.n_r; j++) ck_assert_double_eq_tol(u.ms[i][j], t.ms[i][j], 1e-9);
    /* another device/model/adapter/build: measure again */
    ck_assert_int_eq(eng_calib_table_load(&u, "fp-2", path, err, sizeof err), ENG_E_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(err, "another"));
    char missing[300];
    snprintf(missing, sizeof missing, "%s/none.json", dir);
    ck_assert_int_eq(eng_calib_table_load(&u, "fp-1", missing, err, sizeof err), ENG_E_NOT_FOUND);
    /* damaged files name the problem */
    static const char *bad[] = {
        "not json",
        "{\"fingerprint\": \"fp-1\", \"prefix\": 256, \"max_rows\": 128, \"b\": [1], \"r\": [1, 2], \"ms\": [[1.0]]}",
        "{\"fingerprint\": \"fp-1\", \"prefix\": 256, \"max_rows\": 128, \"b\": [2, 1], \"r\": [1], \"ms\": [[1.0], [1.0]]}",
        "{\"fingerprint\": \"fp-1\", \"prefix\": 256, \"max_rows\": 128, \"b\": [1], \"r\": [1], \"ms\": [[-1.0]]}",
        "{\"fingerprint\": \"fp-1\", \"prefix\": -5, \"max_rows\": 128, \"b\": [1], \"r\": [1], \"ms\": [[1.0]]}",
        "{\"fingerprint\": \"fp-1\", \"prefix\": 256, \"max_rows\": 128, \"b\": [1], \"r\": [1], \"ms\": [[0]]}",
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        FILE *fp = fopen(path, "w");
        fputs(bad[k], fp);
        fclose(fp);
        ck_assert_int_eq(eng_calib_table_load(&u, "fp-1", path, err, sizeof err), ENG_E_FORMAT);
        ck_assert_msg(strstr(err, path) != NULL, "case %zu: %s", k, err);
    }
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(test_measure_real_model) {
    struct eng_engine_params ep = {.model_path = test_model_path(), .n_threads = 1, .n_ctx = 512, .n_slot = 2,
                                   .max_rows = 16};
    char err[512];
    struct eng_engine *e = NULL;
    ck_assert_msg(eng_engine_open(&e, &ep, err, sizeof err) == 0, "%s", err);
    e->kv.len[0] = 7, e->kv.len[1] = 3;
    struct eng_calib_table t;
    ck_assert_int_eq(eng_calib_measure(&t, &e->fwd, &e->kv, 2, 64, 0, NULL, NULL), 0);
    ck_assert_int_eq(e->kv.len[0], 7);
    ck_assert_int_eq(e->kv.len[1], 3);
    ck_assert_int_eq(t.prefix, 64);
    ck_assert_int_eq(t.n_b, 2);
    ck_assert_int_eq(t.b[1], 2);
    ck_assert_int_eq(t.r[t.n_r - 1], 16);
    for (int i = 0; i < t.n_b; i++)
        for (int j = 0; j < t.n_r; j++) {
            if (t.b[i] * t.r[j] > 16) ck_assert(t.ms[i][j] == 0);
            else ck_assert_msg(t.ms[i][j] > 0 && t.ms[i][j] < 10000, "b=%d r=%d: %g ms", t.b[i], t.r[j], t.ms[i][j]);
        }
    /* sixteen rows cost more than one (a loose bound: the machine is shared) */
    ck_assert(t.ms[0][t.n_r - 1] > t.ms[0][0]);
    printf("calibrate (1 thread, prefix 64): 1 row %.2f ms, 16 rows %.2f ms, 2x8 rows %.2f ms; %.1f s\n", t.ms[0][0],
           t.ms[0][t.n_r - 1], eng_calib_step_ms(&t, 2, 8), t.seconds);
    /* A stop ratio no step can stay under: every batch size measures r = 1
     * and the two points past it (both over), then stops. */
    ck_assert_int_eq(eng_calib_measure(&t, &e->fwd, &e->kv, 2, 64, 1e-9, NULL, NULL), 0);
    ck_assert_double_eq(t.stop_ratio, 1e-9);
    for (int i = 0; i < t.n_b; i++)
        for (int j = 0; j < t.n_r; j++) {
            if (j < 3) ck_assert_msg(t.ms[i][j] > 0, "b=%d r=%d not measured", t.b[i], t.r[j]);
            else ck_assert_msg(t.ms[i][j] == 0, "b=%d r=%d measured past the stop", t.b[i], t.r[j]);
        }
    ck_assert(eng_calib_step_ms(&t, 1, 3) > 0);
    ck_assert(eng_calib_step_ms(&t, 1, 4) < 0);   /* past the stop: no prediction, never chosen */
    eng_engine_close(e);
}
END_TEST

int main(void) {
    Suite *s = suite_create("calibrate");
    TCase *tc = tcase_create("calibrate");
    test_set_timeout(tc, 300);
    tcase_add_test(tc, test_interpolation);
    tcase_add_test(tc, test_choice_follows_the_curve);
    tcase_add_test(tc, test_stop_bound_keeps_the_choice);
    tcase_add_test(tc, test_candidates);
    tcase_add_test(tc, test_table_file);
    tcase_add_test(tc, test_measure_real_model);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}

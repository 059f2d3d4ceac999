/* test_ppd_tree.c — PPD trees: the per-state buffers against the worked
 * example of docs/ppd.md ("Reference checks") array for array, the two-stage
 * builder against the reference's shipped Vicuna-7B trees, the tree-file
 * format (round trip, and bad files refused with a message). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/common_test.h"

#include "engine/err.h"
#include "engine/ppd/ppd_tree.h"

static struct eng_ppd_tree_family *parse_ok(const char *json) {
    struct eng_ppd_tree_family *f = NULL;
    char err[512];
    int rc = eng_ppd_tree_family_parse(&f, json, strlen(json), "test.json", err, sizeof err);
    ck_assert_msg(rc == 0, "parse: %s", err);
    return f;
}

/* The reference's tree_indices: candidates as cand index, prompt j as -(N - j + 1). */
static int ref_index(const struct eng_ppd_tree *s, int t, int N) {
    return s->src[t] >= 0 ? s->src[t] : -(N - (-1 - s->src[t]));
}

static void check_mask(const struct eng_ppd_tree *s, const char *const *rows) {
    for (int t = 0; t < s->T; t++)
        for (int j = 0; j < s->T; j++) {
            int bit = (int)((s->mask[(size_t)t * s->vis_words + (j >> 6)] >> (j & 63)) & 1);
            ck_assert_msg(bit == rows[t][j] - '0', "mask[%d][%d] = %d", t, j, bit);
        }
}

static const char *example_json =
    "{\"N\": 2, \"K\": 10, \"states\": {"
    "\"1\": [[[0], 0.5, 2], [[1], 0.1, 1]],"
    "\"2\": [[[0], 0.5, 2], [[1], 0.1, 1], [[0, 0], 0.2, 1]]}}";

START_TEST(test_worked_example_state2) {
    struct eng_ppd_tree_family *f = parse_ok(example_json);
    struct eng_ppd_trees tr;
    char err[256];
    ck_assert_int_eq(eng_ppd_trees_init(&tr, f, err, sizeof err), 0);
    const struct eng_ppd_tree *s = &tr.st[2];
    ck_assert_int_eq(s->T, 10);
    static const int idx[10] = {0, -2, 1, 2, -1, -2, 11, -2, -1, -2}, off[10] = {0, 1, 1, 1, 2, 2, 2, 2, 3, 3};
    for (int t = 0; t < 10; t++) {
        ck_assert_int_eq(ref_index(s, t, 2), idx[t]);
        ck_assert_int_eq(s->pos_off[t], off[t]);
    }
    ck_assert_int_eq(s->M, 4);
    static const int np[4] = {0, 2, 3, 6};
    for (int k = 0; k < 4; k++) ck_assert_int_eq(s->normal_pos[k], np[k]);
    ck_assert_int_eq(s->R, 2);
    ck_assert_int_eq(s->D, 2);
    static const int rows[2][3] = {{0, 1, 3}, {0, 2, ENG_PPD_PAD}};
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 3; c++) ck_assert_int_eq(s->rows[r * 3 + c], rows[r][c]);
    static const int ns[4] = {2, 2, 1, 1}, sp[4][2] = {{1, 4}, {5, 8}, {7, -1}, {9, -1}};
    for (int k = 0; k < 4; k++) {
        ck_assert_int_eq(s->n_special[k], ns[k]);
        for (int j = 0; j < ns[k]; j++) ck_assert_int_eq(s->special[k * 2 + j], sp[k][j]);
    }
    static const char *mask[10] = {"1000000000", "1100000000", "1010000000", "1001000000", "1100100000",
                                   "1010010000", "1010001000", "1001000100", "1010010010", "1010001001"};
    check_mask(s, mask);
    /* children: root -> [0], [1]; [0] -> [0,0] */
    ck_assert_int_eq(s->child_first[1] - s->child_first[0], 2);
    ck_assert_int_eq(s->child_ids[s->child_first[0]], 1);
    ck_assert_int_eq(s->child_ids[s->child_first[0] + 1], 2);
    ck_assert_int_eq(s->child_first[2] - s->child_first[1], 1);
    ck_assert_int_eq(s->child_ids[s->child_first[1]], 3);
    ck_assert_int_eq(s->child_first[4] - s->child_first[2], 0);
    ck_assert_int_eq(s->node_cand[3], 11);
    ck_assert_int_eq(tr.max_T, 10);
    eng_ppd_trees_free(&tr);
    eng_ppd_tree_family_free(f);
}
END_TEST

START_TEST(test_worked_example_state1) {
    struct eng_ppd_tree_family *f = parse_ok(example_json);
    struct eng_ppd_trees tr;
    char err[256];
    ck_assert_int_eq(eng_ppd_trees_init(&tr, f, err, sizeof err), 0);
    const struct eng_ppd_tree *s = &tr.st[1];
    ck_assert_int_eq(s->T, 8);
    static const int idx[8] = {0, -2, 1, 2, -1, -2, -2, -1}, off[8] = {0, 1, 1, 1, 2, 2, 2, 3};
    for (int t = 0; t < 8; t++) {
        ck_assert_int_eq(ref_index(s, t, 2), idx[t]);
        ck_assert_int_eq(s->pos_off[t], off[t]);
    }
    static const int np[3] = {0, 2, 3};
    for (int k = 0; k < 3; k++) ck_assert_int_eq(s->normal_pos[k], np[k]);
    ck_assert_int_eq(s->R, 2);
    ck_assert_int_eq(s->D, 1);
    static const int rows[2][2] = {{0, 2}, {0, 1}};
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 2; c++) ck_assert_int_eq(s->rows[r * 2 + c], rows[r][c]);
    static const int ns[3] = {2, 2, 1}, sp[3][2] = {{1, 4}, {5, 7}, {6, -1}};
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(s->n_special[k], ns[k]);
        for (int j = 0; j < ns[k]; j++) ck_assert_int_eq(s->special[k * 2 + j], sp[k][j]);
    }
    static const char *mask[8] = {"10000000", "11000000", "10100000", "10010000",
                                  "11001000", "10100100", "10010010", "10100101"};
    check_mask(s, mask);
    eng_ppd_trees_free(&tr);
    eng_ppd_tree_family_free(f);
}
END_TEST

/* docs/ppd.md, "Reference checks": the 7B accuracy rows recovered from the shipped trees. */
static const double acc7b[30] = {
    0.48335, 0.14342, 0.0736, 0.0454, 0.03087, 0.02155, 0.01658, 0.01323, 0.00932, 0.00845,
    0.26256, 0.14561, 0.08114, 0.0576, 0.04283, 0.0323, 0.0257, 0.02152, 0.01903, 0.0155,
    0.16413, 0.11756, 0.08092, 0.05784, 0.04586, 0.03672, 0.03128, 0.02317, 0.02372, 0.01789};

/* "path:n" words (path as digits) of a state, in stage-1 order. */
static void compact(const struct eng_ppd_tree_family *f, int d, char *out, size_t cap) {
    out[0] = 0;
    for (int i = 0; i < f->n_nodes[d]; i++) {
        const struct eng_ppd_tree_node *x = &f->nodes[d][i];
        size_t l = strlen(out);
        if (i) out[l++] = ' ';
        for (int t = 0; t < x->len; t++) out[l++] = (char)('0' + x->path[t]);
        snprintf(out + l, cap - l, ":%d", x->n);
    }
}

START_TEST(test_builder_vicuna7b_105) {
    struct eng_ppd_tree_family *f = NULL;
    struct eng_ppd_tree_build_info info;
    ck_assert_int_eq(eng_ppd_tree_build(&f, acc7b, 3, 10, 105, &info), 0);
    printf("L=105: s = %d/%d/%d, objective %.4f, x = (%.3f, %.3f, %.3f, %.3f)\n", info.s[1], info.s[2], info.s[3],
           info.objective, info.x[0], info.x[1], info.x[2], info.x[3]);
    static const char *want[4] = {
        NULL,
        "0:3 1:3 2:3 3:3 4:3 5:3 6:3 7:3 8:3 9:3",
        "0:3 1:3 00:3 2:2 01:3 3:2 02:3 10:3 4:2 03:2 5:2 11:2 04:2 20:2 6:2 05:2 7:2 06:2 30:2 12:2 21:2 07:2 "
        "8:2 08:2 9:2 13:2 40:2 09:2 31:2 14:2 22:2 50:2 15:2",
        "0:3 1:3 00:3 2:2 01:2 3:2 02:2 10:2 4:2 03:2 5:2 11:2 000:2 04:2 20:2 6:2 05:2 001:2 7:2 06:2 30:2 12:2 "
        "010:2 21:2 07:2 002:2 8:2 08:2 9:2 011:2 13:2 40:2 09:2 003:2"};
    char buf[2048];
    for (int d = 1; d <= 3; d++) {
        compact(f, d, buf, sizeof buf);
        ck_assert_msg(!strcmp(buf, want[d]), "state %d:\n got %s\nwant %s", d, buf, want[d]);
    }
    ck_assert_int_eq(info.s[2], 33);
    ck_assert_int_eq(info.s[3], 34);
    ck_assert(fabs(info.objective - 1.1841) < 5e-4);
    struct eng_ppd_trees tr;
    char err[256];
    ck_assert_int_eq(eng_ppd_trees_init(&tr, f, err, sizeof err), 0);
    static const int T[4] = {0, 44, 109, 109}, R[4] = {0, 10, 27, 27};
    for (int d = 1; d <= 3; d++) {
        ck_assert_int_eq(tr.st[d].T, T[d]);
        ck_assert_int_eq(tr.st[d].R, R[d]);
        ck_assert_int_eq(tr.st[d].D, d);
    }
    eng_ppd_trees_free(&tr);
    eng_ppd_tree_family_free(f);
}
END_TEST

START_TEST(test_builder_vicuna7b_60) {
    struct eng_ppd_tree_family *f = NULL;
    struct eng_ppd_tree_build_info info;
    ck_assert_int_eq(eng_ppd_tree_build(&f, acc7b, 3, 10, 60, &info), 0);
    printf("L=60: s = %d/%d/%d, objective %.4f, x = (%.3f, %.3f, %.3f, %.3f)\n", info.s[1], info.s[2], info.s[3],
           info.objective, info.x[0], info.x[1], info.x[2], info.x[3]);
    ck_assert_int_eq(info.s[2], 20);
    ck_assert_int_eq(info.s[3], 20);
    ck_assert(fabs(info.objective - 1.0619) < 5e-4);
    ck_assert(fabs(info.x[0] - 0.147) < 1e-3 && fabs(info.x[1]) < 1e-9 && fabs(info.x[2] - 0.707) < 1e-3 &&
              fabs(info.x[3] - 0.147) < 1e-3);
    for (int d = 2; d <= 3; d++)
        for (int i = 0; i < f->n_nodes[d]; i++) ck_assert_int_eq(f->nodes[d][i].n, 2);   /* the 60-token trees: all n = 2 */
    struct eng_ppd_trees tr;
    char err[256];
    ck_assert_int_eq(eng_ppd_trees_init(&tr, f, err, sizeof err), 0);
    static const int T[4] = {0, 44, 64, 64}, R[4] = {0, 10, 16, 16}, M[4] = {0, 11, 21, 21};
    for (int d = 1; d <= 3; d++) {
        ck_assert_int_eq(tr.st[d].T, T[d]);
        ck_assert_int_eq(tr.st[d].R, R[d]);
        ck_assert_int_eq(tr.st[d].M, M[d]);
    }
    eng_ppd_trees_free(&tr);
    eng_ppd_tree_family_free(f);
}
END_TEST

/* tokens_per_step is the expected emission of the real state chain: simulate
 * it by power iteration from the family's own nodes (state d's outcome: the
 * deepest accepted node, exclusive probability acc, accepting len candidates
 * and moving to state n; only the root: state N) and compare. */
START_TEST(test_tokens_per_step_is_the_chain_expectation) {
    for (int L = 10; L <= 105; L += 25) {
        struct eng_ppd_tree_family *f = NULL;
        struct eng_ppd_tree_build_info info;
        ck_assert_int_eq(eng_ppd_tree_build(&f, acc7b, 3, 10, L, &info), 0);
        double P[4][4] = {{0}}, gain[4] = {0}, pi[4] = {0, 1.0 / 3, 1.0 / 3, 1.0 / 3};
        for (int d = 1; d <= 3; d++) {
            double rest = 1.0;
            for (int i = 0; i < f->n_nodes[d]; i++) {
                const struct eng_ppd_tree_node *x = &f->nodes[d][i];
                P[d][x->n] += x->acc;
                gain[d] += x->acc * x->len;
                rest -= x->acc;
            }
            P[d][3] += rest;
        }
        for (int it = 0; it < 2000; it++) {
            double nx[4] = {0};
            for (int d = 1; d <= 3; d++)
                for (int k = 1; k <= 3; k++) nx[k] += pi[d] * P[d][k];
            memcpy(pi, nx, sizeof pi);
        }
        double expect = 1.0;
        for (int d = 1; d <= 3; d++) expect += pi[d] * gain[d];
        printf("L=%d: chain %.4f, tokens_per_step %.4f, 1 + objective %.4f\n", L, expect, info.tokens_per_step,
               1 + info.objective);
        /* the node probabilities are rounded to 5 decimals in the family */
        ck_assert_msg(fabs(expect - info.tokens_per_step) < 1e-3, "L=%d: %g vs %g", L, expect, info.tokens_per_step);
        ck_assert(info.tokens_per_step > 1 + info.objective);
        eng_ppd_tree_family_free(f);
    }
}
END_TEST

/* Other N and K build valid, loadable families within budget where possible. */
START_TEST(test_builder_any_n) {
    for (int N = 1; N <= 5; N++)
        for (int K = 2; K <= 10; K += 4) {
            double acc[5 * 10];
            for (int i = 0; i < N; i++)
                for (int k = 0; k < K; k++) acc[i * K + k] = 0.5 / (i + 1) / (k + 1) / 2.0;
            struct eng_ppd_tree_family *f = NULL;
            ck_assert_int_eq(eng_ppd_tree_build(&f, acc, N, K, 40, NULL), 0);
            struct eng_ppd_trees tr;
            char err[256];
            ck_assert_msg(eng_ppd_trees_init(&tr, f, err, sizeof err) == 0, "N=%d K=%d: %s", N, K, err);
            for (int d = 1; d <= N; d++) {
                ck_assert_int_le(tr.st[d].D, d);
                ck_assert_int_ge(tr.st[d].T, 1 + N + 2 * f->n_nodes[d]);
            }
            eng_ppd_trees_free(&tr);
            eng_ppd_tree_family_free(f);
        }
}
END_TEST

/* The joint of independent ranks with the 7B marginals: the joint builder must
 * give the marginal builder's trees (the same paths, probabilities and prompt
 * tokens), since q(path) is then the same product. */
static void joint_of_marginals(const double *acc, int N, int K, double *joint) {
    long size = 1;
    for (int i = 0; i < N; i++) size *= K + 1;
    for (long idx = 0; idx < size; idx++) {
        double p = 1.0;
        long x = idx;
        for (int i = 0; i < N; i++, x /= K + 1) {
            const int r = (int)(x % (K + 1));
            double miss = 1.0;
            for (int k = 0; k < K; k++) miss -= acc[i * K + k];
            p *= r < K ? acc[i * K + r] : miss;
        }
        joint[idx] = p;
    }
}

START_TEST(test_builder_joint_independent_is_marginal) {
    static double joint[11 * 11 * 11];
    joint_of_marginals(acc7b, 3, 10, joint);
    for (int L = 20; L <= 105; L += 85) {
        struct eng_ppd_tree_family *f = NULL, *g = NULL;
        struct eng_ppd_tree_build_info fi, gi;
        ck_assert_int_eq(eng_ppd_tree_build(&f, acc7b, 3, 10, L, &fi), 0);
        ck_assert_int_eq(eng_ppd_tree_build_joint(&g, acc7b, joint, 3, 10, L, &gi), 0);
        char a[2048], b[2048];
        for (int d = 1; d <= 3; d++) {
            compact(f, d, a, sizeof a);
            compact(g, d, b, sizeof b);
            ck_assert_msg(!strcmp(a, b), "L=%d state %d:\nmarginal %s\n   joint %s", L, d, a, b);
        }
        ck_assert(fabs(fi.objective - gi.objective) < 1e-9);
        eng_ppd_tree_family_free(f);
        eng_ppd_tree_family_free(g);
    }
}
END_TEST

/* Correlated guesses: when prompt token 2 is right exactly when prompt token 1
 * is (rank 0 at both, 30% of the time), the marginals say a two-deep path is
 * worth 0.3 x 0.3 = 0.09, the joint says 0.3.  The joint builder must put the
 * deep top-1 chain first in the deeper states and expect more accepted tokens. */
START_TEST(test_builder_joint_correlated_goes_deeper) {
    const int N = 2, K = 4;
    double acc[2 * 4] = {0.3, 0.1, 0.05, 0.05, 0.3, 0.1, 0.05, 0.05};
    double joint[5 * 5];
    for (int i = 0; i < 25; i++) joint[i] = 0;
    /* index r1 + 5 r2 */
    joint[0 + 5 * 0] = 0.3;                        /* both right at rank 0 */
    joint[1 + 5 * 4] = 0.1, joint[2 + 5 * 4] = 0.05, joint[3 + 5 * 4] = 0.05;   /* 1 right, 2 missed */
    joint[4 + 5 * 1] = 0.1, joint[4 + 5 * 2] = 0.05, joint[4 + 5 * 3] = 0.05;   /* only 2 right */
    joint[4 + 5 * 4] = 0.3;
    struct eng_ppd_tree_family *f = NULL, *g = NULL;
    struct eng_ppd_tree_build_info fi, gi;
    ck_assert_int_eq(eng_ppd_tree_build(&f, acc, N, K, 6, &fi), 0);
    ck_assert_int_eq(eng_ppd_tree_build_joint(&g, acc, joint, N, K, 6, &gi), 0);
    char a[256], b[256];
    compact(f, 2, a, sizeof a);
    compact(g, 2, b, sizeof b);
    printf("correlated, state 2: marginal %s (objective %.4f), joint %s (objective %.4f)\n", a, fi.objective, b,
           gi.objective);
    ck_assert_int_eq(g->nodes[2][1].len, 2);   /* [0,0] right after [0] */
    ck_assert_int_eq(g->nodes[2][1].path[0], 0);
    ck_assert_int_eq(g->nodes[2][1].path[1], 0);
    ck_assert(fabs(g->nodes[2][1].acc - 0.3) < 1e-9);   /* deepest-accepted probability of [0,0] */
    ck_assert(gi.objective > fi.objective + 0.05);
    eng_ppd_tree_family_free(f);
    eng_ppd_tree_family_free(g);
    /* a joint that is not a distribution is refused */
    joint[0] = -0.5;
    ck_assert_int_eq(eng_ppd_tree_build_joint(&g, acc, joint, N, K, 6, NULL), ENG_E_RANGE);
    ck_assert_ptr_null(g);
}
END_TEST

START_TEST(test_file_round_trip) {
    struct eng_ppd_tree_family *f = NULL, *g = NULL;
    ck_assert_int_eq(eng_ppd_tree_build(&f, acc7b, 3, 10, 105, NULL), 0);
    char path[] = "/tmp/ppd-tree-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    char err[512];
    ck_assert_int_eq(eng_ppd_tree_family_save(f, path, err, sizeof err), 0);
    ck_assert_msg(eng_ppd_tree_family_load(&g, path, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(g->L, 105);
    for (int d = 1; d <= 3; d++) {
        ck_assert_int_eq(g->n_nodes[d], f->n_nodes[d]);
        for (int i = 0; i < f->n_nodes[d]; i++) {
            ck_assert_int_eq(g->nodes[d][i].len, f->nodes[d][i].len);
            ck_assert_int_eq(memcmp(g->nodes[d][i].path, f->nodes[d][i].path, (size_t)f->nodes[d][i].len), 0);
            ck_assert_int_eq(g->nodes[d][i].n, f->nodes[d][i].n);
            ck_assert(g->nodes[d][i].acc == f->nodes[d][i].acc);
        }
    }
    unlink(path);
    eng_ppd_tree_family_free(g);
    ck_assert_int_lt(eng_ppd_tree_family_load(&g, "/nonexistent/tree.json", err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/tree.json"));
    eng_ppd_tree_family_free(f);
}
END_TEST

START_TEST(test_bad_files) {
    static const struct { const char *json, *want; } cases[] = {
        {"{\"N\": 2, \"K\": 10, \"states\": {\"1\": [[[10], 0.1, 1]], \"2\": []}}", "rank"},
        {"{\"N\": 2, \"K\": 10, \"states\": {\"1\": [[[-1], 0.1, 1]], \"2\": []}}", "rank"},
        {"{\"N\": 2, \"K\": 10, \"states\": {\"1\": [[[0, 0], 0.1, 1]], \"2\": []}}", "depth"},
        {"{\"N\": 2, \"K\": 10, \"states\": {\"1\": [], \"2\": [[[1, 0], 0.1, 1]]}}", "parent"},
        {"{\"N\": 2, \"K\": 10, \"states\": {\"1\": [[[0], 0.1, 1], [[0], 0.1, 1]], \"2\": []}}", "twice"},
        {"{\"N\": 2, \"K\": 10, \"states\": {\"1\": [[[0], 0.1, 0]], \"2\": []}}", "prompt tokens"},
        {"{\"N\": 2, \"K\": 10, \"states\": {\"1\": []}}", "states.2"},
        {"{\"N\": 0, \"K\": 10, \"states\": {}}", "N:"},
        {"{\"N\": 2, \"K\": 99999, \"states\": {}}", "K:"},
        {"{\"N\": 2, \"K\": 10, \"states\": {\"1\": [[[0], 0.1]], \"2\": []}}", "[path, acc, n]"},
        {"{\"N\": 2, \"K\": 10, \"states\": {\"1\": [[[], 0.1, 1]], \"2\": []}}", "depth"},
        {"{\"N\": 2, \"K\": 10, \"states\": {\"1\": [[[0], 0.1, 1]], \"2\": [", "line"},
        {"", "line"},
    };
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct eng_ppd_tree_family *f = NULL;
        char err[512] = "";
        int rc = eng_ppd_tree_family_parse(&f, cases[i].json, strlen(cases[i].json), "bad.json", err, sizeof err);
        ck_assert_msg(rc == ENG_E_FORMAT, "case %u: rc %d", i, rc);
        ck_assert_ptr_null(f);
        ck_assert_msg(strstr(err, "bad.json") && strstr(err, cases[i].want), "case %u: '%s' lacks '%s'", i, err,
                      cases[i].want);
    }
    /* n above N is clamped to N, as the reference's buffer builder does */
    struct eng_ppd_tree_family *f =
        parse_ok("{\"N\": 2, \"K\": 10, \"states\": {\"1\": [[[0], 0.1, 7]], \"2\": [[[0], 0.1, 7]]}}");
    ck_assert_int_eq(f->nodes[1][0].n, 2);
    eng_ppd_tree_family_free(f);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ppd_tree");
    TCase *tc = tcase_create("ppd_tree");
    test_set_timeout(tc, 120);
    tcase_add_test(tc, test_worked_example_state2);
    tcase_add_test(tc, test_worked_example_state1);
    tcase_add_test(tc, test_builder_vicuna7b_105);
    tcase_add_test(tc, test_builder_vicuna7b_60);
    tcase_add_test(tc, test_builder_any_n);
    tcase_add_test(tc, test_tokens_per_step_is_the_chain_expectation);
    tcase_add_test(tc, test_builder_joint_independent_is_marginal);
    tcase_add_test(tc, test_builder_joint_correlated_goes_deeper);
    tcase_add_test(tc, test_file_round_trip);
    tcase_add_test(tc, test_bad_files);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}

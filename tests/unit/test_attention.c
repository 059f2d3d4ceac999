/* test_attention.c — the attention kernel (kernels/cpu/attention.h) and the
 * row independence it gives the forward pass.
 *
 * Kernel: the AVX2 path equals the plain definition bit for bit over many
 * shapes; a (row, head) computed alone equals the same (row, head) inside a
 * task of many rows and heads, whichever entries are passed as shared and which
 * as the row's own; and the result is softmax·V within float noise of a double
 * evaluation.
 * Forward pass: rows of several slots (trees, causal runs, cut points with a
 * shorter prefix than their slot's) give the same logits bit for bit whether a
 * row runs alone or inside batches of 2..40 mixed rows in any order.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/common_test.h"

#include "engine/model/batch.h"
#include "engine/engine.h"
#include "engine/model/forward.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu_isa.h"

static uint32_t rnd(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

static float frand(uint32_t *s) { return ((float)rnd(s) / 16777216.0f) * 2.0f - 1.0f; }

/* A random problem: n_ent cache entries of n_kvh KV heads, n_row rows ×
 * n_kvh * n_rep query heads, each row seeing n_shared shared entries (a random
 * list) plus its own random list. */
struct prob {
    int hd, n_ent, n_row, n_rep, n_kvh, n_shared;
    size_t kv_stride, q_stride;
    float *k, *v, *q;
    int32_t *shared, *own_store;
    const int32_t *own[KQ_ATTN_MAX_QUERIES];
    int n_own[KQ_ATTN_MAX_QUERIES];
};

static void prob_init(struct prob *p, uint32_t *s, int hd, int n_row, int n_kvh, int n_rep, int n_shared, int max_own) {
    p->hd = hd;
    p->n_row = n_row;
    p->n_kvh = n_kvh;
    p->n_rep = n_rep;
    p->n_shared = n_shared;
    p->n_ent = n_shared + max_own + 5;
    p->kv_stride = (size_t)hd * n_kvh + 4;     /* a gap between entries too */
    p->q_stride = (size_t)hd * n_kvh * n_rep + 8;
    p->k = malloc(sizeof(float) * p->kv_stride * (size_t)p->n_ent);
    p->v = malloc(sizeof(float) * p->kv_stride * (size_t)p->n_ent);
    p->q = malloc(sizeof(float) * p->q_stride * (size_t)n_row);
    for (size_t i = 0; i < p->kv_stride * (size_t)p->n_ent; i++) { p->k[i] = frand(s) * 2; p->v[i] = frand(s); }
    for (size_t i = 0; i < p->q_stride * (size_t)n_row; i++) p->q[i] = frand(s) * 2;
    p->shared = malloc(sizeof(int32_t) * (size_t)(n_shared + 1));
    for (int i = 0; i < n_shared; i++) p->shared[i] = (int32_t)(rnd(s) % (uint32_t)p->n_ent);
    p->own_store = malloc(sizeof(int32_t) * (size_t)(n_row * (max_own + 1)));
    for (int r = 0; r < n_row; r++) {
        int32_t *l = p->own_store + (size_t)r * (max_own + 1);
        p->n_own[r] = max_own ? (int)(rnd(s) % (uint32_t)(max_own + 1)) : 0;
        for (int i = 0; i < p->n_own[r]; i++) l[i] = (int32_t)(rnd(s) % (uint32_t)p->n_ent);
        p->own[r] = l;
    }
}

static void prob_free(struct prob *p) {
    free(p->k); free(p->v); free(p->q); free(p->shared); free(p->own_store);
}

/* All rows, query heads [head0, head0 + n_head). */
static struct kq_attn_task prob_task(const struct prob *p, float *out, int head0, int n_head) {
    struct kq_attn_task t = {
        .k = p->k + 3, .v = p->v + 1, .kv_stride = p->kv_stride, .head_dim = p->hd, .scale = 0.37f,
        .n_rep = p->n_rep, .head0 = head0, .n_head = n_head,
        .q = p->q, .q_stride = p->q_stride, .out = out, .out_stride = p->q_stride,
        .n_row = p->n_row, .shared = p->shared, .n_shared = p->n_shared, .own = p->own, .n_own = p->n_own,
    };
    return t;
}

static float *scratch_for(const struct prob *p) {
    int m = 0;
    for (int r = 0; r < p->n_row; r++) if (p->n_own[r] > m) m = p->n_own[r];
    return malloc(sizeof(float) * kq_attn_scratch_floats(p->n_row * p->n_kvh * p->n_rep, p->n_shared + m));
}

/* One pass of test_kernel_matches_reference on the current path. */
static int kernel_matches_reference_on_path(void) {
    static const int hds[] = {8, 16, 24, 40, 64, 72, 96, 128, 12};
    static const int shared_lens[] = {0, 1, 3, 8, 63, 64, 65, 130, 200};
    uint32_t s = 12345;
    int cases = 0;
    for (unsigned h = 0; h < sizeof hds / sizeof hds[0]; h++)
        for (unsigned k = 0; k < sizeof shared_lens / sizeof shared_lens[0]; k++) {
            const int n_rep = 1 + (int)(rnd(&s) % 4) * ((k & 1) ? 1 : 2), n_kvh = 1 + (int)(rnd(&s) % 3);
            const int n_row = 1 + (int)(rnd(&s) % 7), n_q = n_kvh * n_rep;
            const int max_own = (int)(rnd(&s) % 3) == 0 ? 0 : 1 + (int)(rnd(&s) % 70);
            /* some head range: all heads, or one starting and ending anywhere */
            const int head0 = k % 3 == 0 ? 0 : (int)(rnd(&s) % (uint32_t)n_q);
            const int n_head = k % 3 == 0 ? n_q : 1 + (int)(rnd(&s) % (uint32_t)(n_q - head0));
            struct prob p;
            prob_init(&p, &s, hds[h], n_row, n_kvh, n_rep, shared_lens[k], max_own);
            const size_t n_out = p.q_stride * (size_t)n_row;
            float *o1 = calloc(n_out, sizeof(float)), *o2 = calloc(n_out, sizeof(float)), *sc = scratch_for(&p);
            struct kq_attn_task t1 = prob_task(&p, o1, head0, n_head), t2 = prob_task(&p, o2, head0, n_head);
            kq_attn_run(&t1, sc);
            kq_attn_run_ref(&t2, sc);
            ck_assert_msg(memcmp(o1, o2, sizeof(float) * n_out) == 0,
                          "hd %d, %d shared, %d rows x heads %d..%d of %d x %d: differs", hds[h], shared_lens[k], n_row,
                          head0, head0 + n_head - 1, n_kvh, n_rep);
            free(o1); free(o2); free(sc);
            prob_free(&p);
            cases++;
        }
    return cases;
}

/* Every SIMD path this CPU has equals the plain definition bit for bit (the
 * AVX-512 path runs its own score and weighted-sum kernels); a path the CPU
 * lacks is reported as not run. */
START_TEST(test_kernel_matches_reference) {
    for (int isa = KQ_ISA_AVX2; isa <= KQ_ISA_AVX512VNNI; isa++) {   /* amx runs the avx512vnni code here */
        if (kq_isa_set(isa) != 0) {
            printf("attention kernel: %s path NOT RUN (this CPU lacks it)\n", kq_isa_name(isa));
            continue;
        }
        const int cases = kernel_matches_reference_on_path();
        printf("attention kernel: %d shapes, %s path == plain definition bit for bit\n", cases, kq_isa_name(isa));
    }
    kq_isa_set(kq_isa_detected());
}
END_TEST

/* Every (row, head) alone (a one-row, one-head task) equals its value in the
 * task of all rows and heads; so does the task with the shared list cut short
 * and the rest moved to the front of each row's own list. */
START_TEST(test_kernel_row_alone_equals_grouped) {
    uint32_t s = 777;
    for (int it = 0; it < 24; it++) {
        const int hd = it % 3 == 0 ? 128 : 64, n_rep = 1 + it % 4, n_kvh = 1 + it % 3, n_row = 1 + (it * 5) % 8;
        const int n_q = n_kvh * n_rep;
        struct prob p;
        prob_init(&p, &s, hd, n_row, n_kvh, n_rep, (int)(rnd(&s) % 150), (int)(rnd(&s) % 20));
        const size_t n_out = p.q_stride * (size_t)n_row;
        float *grouped = calloc(n_out, sizeof(float)), *sc = malloc(sizeof(float) * kq_attn_scratch_floats(128, 400));
        struct kq_attn_task t = prob_task(&p, grouped, 0, n_q);
        kq_attn_run(&t, sc);
        /* moved: shared = first `cut` entries, the rest prepended to each own list */
        const int cut = p.n_shared / 3;
        int32_t *moved = malloc(sizeof(int32_t) * (size_t)n_row * 400);
        const int32_t *own2[KQ_ATTN_MAX_QUERIES];
        int n_own2[KQ_ATTN_MAX_QUERIES];
        for (int r = 0; r < n_row; r++) {
            int32_t *l = moved + (size_t)r * 400;
            int n = 0;
            for (int i = cut; i < p.n_shared; i++) l[n++] = p.shared[i];
            for (int i = 0; i < p.n_own[r]; i++) l[n++] = p.own[r][i];
            own2[r] = l;
            n_own2[r] = n;
        }
        float *moved_out = calloc(n_out, sizeof(float)), *alone = calloc(n_out, sizeof(float));
        struct kq_attn_task tm = prob_task(&p, moved_out, 0, n_q);
        tm.n_shared = cut;
        tm.own = own2;
        tm.n_own = n_own2;
        kq_attn_run(&tm, sc);
        for (int r = 0; r < n_row; r++)
            for (int hq = 0; hq < n_q; hq++) {
                const size_t off = (size_t)r * p.q_stride + (size_t)hq * hd;
                const int32_t *ol[1] = {own2[r]};
                int nl[1] = {n_own2[r]};
                struct kq_attn_task ta = prob_task(&p, alone + (size_t)r * p.q_stride, hq, 1);
                ta.q = p.q + (size_t)r * p.q_stride;
                ta.n_row = 1;
                ta.n_shared = cut;
                ta.own = ol;
                ta.n_own = nl;
                kq_attn_run(&ta, sc);
                ck_assert_msg(memcmp(alone + off, grouped + off, sizeof(float) * (size_t)hd) == 0,
                              "case %d row %d head %d: alone differs from grouped", it, r, hq);
                ck_assert_msg(memcmp(moved_out + off, grouped + off, sizeof(float) * (size_t)hd) == 0,
                              "case %d row %d head %d: shared/own split changes the result", it, r, hq);
            }
        free(grouped); free(moved_out); free(alone); free(moved); free(sc);
        prob_free(&p);
    }
}
END_TEST

/* softmax(q·K·scale)·V against a double evaluation; a row with no entries gives zeros. */
START_TEST(test_kernel_value) {
    uint32_t s = 99;
    struct prob p;
    prob_init(&p, &s, 64, 3, 3, 3, 100, 10);
    const size_t n_out = p.q_stride * 3;
    float *o = calloc(n_out, sizeof(float)), *sc = scratch_for(&p);
    struct kq_attn_task t = prob_task(&p, o, 0, 9);
    kq_attn_run(&t, sc);
    double max_err = 0;
    for (int r = 0; r < 3; r++)
        for (int hq = 0; hq < 9; hq++) {
            const float *q = p.q + (size_t)r * p.q_stride + (size_t)hq * 64;
            const float *k = t.k + (size_t)(hq / 3) * 64, *v = t.v + (size_t)(hq / 3) * 64;
            const int n = p.n_shared + p.n_own[r];
            double w[128], m = -1e300, sum = 0;
            for (int i = 0; i < n; i++) {
                const int32_t e = i < p.n_shared ? p.shared[i] : p.own[r][i - p.n_shared];
                double d = 0;
                for (int c = 0; c < 64; c++) d += (double)q[c] * k[(size_t)e * p.kv_stride + c];
                w[i] = d * 0.37;
                if (w[i] > m) m = w[i];
            }
            for (int i = 0; i < n; i++) { w[i] = exp(w[i] - m); sum += w[i]; }
            for (int c = 0; c < 64; c++) {
                double acc = 0;
                for (int i = 0; i < n; i++) {
                    const int32_t e = i < p.n_shared ? p.shared[i] : p.own[r][i - p.n_shared];
                    acc += w[i] / sum * v[(size_t)e * p.kv_stride + c];
                }
                const double err = fabs(acc - o[(size_t)r * p.q_stride + (size_t)hq * 64 + c]);
                if (err > max_err) max_err = err;
            }
        }
    printf("attention kernel vs double: max abs error %.3e\n", max_err);
    ck_assert(max_err < 1e-5);
    /* no entries at all */
    int zero[3] = {0, 0, 0};
    t.n_shared = 0;
    t.n_own = zero;
    for (size_t i = 0; i < n_out; i++) o[i] = 1.0f;
    kq_attn_run(&t, sc);
    for (int c = 0; c < 64; c++) ck_assert(o[c] == 0.0f);
    free(o); free(sc);
    prob_free(&p);
}
END_TEST

/* ---- forward pass ---- */

#define FW_SLOTS 4
#define FW_MAX_ROWS 64

/* One row of the test batch, as it sits in any batch. */
struct fw_row { int slot, pos, kv_idx, n_prefix, grp_first, grp_len; uint64_t vis; int32_t token; };

static int fw_rows_build(struct fw_row *rows, uint32_t *s, const int *prefix) {
    int n = 0;
    /* slot 0: a tree of 8 rows (each sees the root, itself and random earlier rows) */
    for (int i = 0; i < 8; i++) {
        uint64_t vis = 1ull | (1ull << i);
        for (int j = 1; j < i; j++) if (rnd(s) & 1) vis |= 1ull << j;
        rows[n++] = (struct fw_row){0, prefix[0] + __builtin_popcountll(vis) - 1, prefix[0] + i, prefix[0], prefix[0], 8,
                                    vis, (int32_t)(200 + rnd(s) % 30000)};
    }
    /* slot 0: three cut points that see only part of the slot's prefix, each
     * with its own one-entry group after the tree */
    const int cuts[3] = {prefix[0] / 2, prefix[0] - 3, 5};
    for (int i = 0; i < 3; i++)
        rows[n++] = (struct fw_row){0, cuts[i], prefix[0] + 8 + i, cuts[i], prefix[0] + 8 + i, 1, 1,
                                    (int32_t)(200 + rnd(s) % 30000)};
    /* slot 1: a causal run of 6 */
    for (int i = 0; i < 6; i++)
        rows[n++] = (struct fw_row){1, prefix[1] + i, prefix[1] + i, prefix[1], prefix[1], 6, (2ull << i) - 1,
                                    (int32_t)(200 + rnd(s) % 30000)};
    /* slot 2: a bushier tree of 12 */
    for (int i = 0; i < 12; i++) {
        uint64_t vis = 1ull | (1ull << i);
        for (int j = 1; j < i; j++) if (rnd(s) % 3 == 0) vis |= 1ull << j;
        rows[n++] = (struct fw_row){2, prefix[2] + __builtin_popcountll(vis) - 1, prefix[2] + i, prefix[2], prefix[2], 12,
                                    vis, (int32_t)(200 + rnd(s) % 30000)};
    }
    /* slot 3: a causal run of 11 with no prefix (a first prefill chunk) */
    for (int i = 0; i < 11; i++)
        rows[n++] = (struct fw_row){3, i, i, 0, 0, 11, (2ull << i) - 1, (int32_t)(200 + rnd(s) % 30000)};
    return n;
}

static void fw_run(struct eng_engine *e, struct eng_batch *b, const struct fw_row *rows, const int *pick, int n) {
    eng_batch_clear(b);
    for (int i = 0; i < n; i++) {
        const struct fw_row *w = &rows[pick[i]];
        b->token[i] = w->token;
        b->pos[i] = w->pos;
        b->slot[i] = w->slot;
        b->kv_idx[i] = w->kv_idx;
        b->n_prefix[i] = w->n_prefix;
        b->grp_first[i] = w->grp_first;
        b->grp_len[i] = w->grp_len;
        memset(b->vis + (size_t)i * b->vis_words, 0, sizeof(uint64_t) * (size_t)b->vis_words);
        b->vis[(size_t)i * b->vis_words] = w->vis;
        b->want_logits[i] = true;
    }
    b->n_tok = n;
    ck_assert_int_eq(eng_forward_run(&e->fwd, b, &e->kv, NULL, 0), 0);
}

START_TEST(test_forward_row_alone_equals_mixed_batches) {
    struct eng_engine_params ep = {.model_path = test_model_path(), .n_threads = 2, .n_ctx = 160,
                                   .n_slot = FW_SLOTS, .max_rows = FW_MAX_ROWS};
    char err[512];
    struct eng_engine *e = NULL;
    ck_assert_msg(eng_engine_open(&e, &ep, err, sizeof err) == 0, "open: %s", err);
    struct eng_batch b;
    ck_assert_int_eq(eng_batch_init(&b, FW_MAX_ROWS, 64), 0);
    uint32_t s = 4242;
    /* committed prefixes of different lengths (slot 3 has none) */
    const int prefix[FW_SLOTS] = {40, 3, 70, 0};
    int32_t ids[128];
    for (int sl = 0; sl < FW_SLOTS; sl++) {
        if (!prefix[sl]) continue;
        for (int i = 0; i < prefix[sl]; i++) ids[i] = (int32_t)(100 + rnd(&s) % 40000);
        for (int i = 0; i < prefix[sl]; i += 32) {
            const int n = prefix[sl] - i < 32 ? prefix[sl] - i : 32;
            eng_batch_clear(&b);
            ck_assert_int_eq(eng_batch_add_causal(&b, sl, i, ids + i, n, false), 0);
            ck_assert_int_eq(eng_forward_run(&e->fwd, &b, &e->kv, NULL, 0), 0);
        }
        e->kv.len[sl] = prefix[sl];
    }
    struct fw_row rows[64];
    const int n_rows = fw_rows_build(rows, &s, prefix);
    const int n_vocab = e->model->hp.n_vocab;
    /* every row alone; the whole set first, so each row's group entries
     * written by other rows are in the cache (their values do not depend on
     * the batch either: that is what is being tested) */
    int pick[64];
    for (int i = 0; i < n_rows; i++) pick[i] = i;
    fw_run(e, &b, rows, pick, n_rows);
    float *alone = malloc(sizeof(float) * (size_t)n_vocab * (size_t)n_rows);
    for (int i = 0; i < n_rows; i++) {
        fw_run(e, &b, rows, &i, 1);
        memcpy(alone + (size_t)i * n_vocab, e->fwd.logits, sizeof(float) * (size_t)n_vocab);
    }
    /* the whole set, then random subsets of 2..40 rows in random order */
    int differ = 0, checked = 0;
    for (int it = 0; it < 24; it++) {
        int n = it == 0 ? n_rows : 2 + (int)(rnd(&s) % (uint32_t)(n_rows - 1));
        for (int i = 0; i < n_rows; i++) pick[i] = i;
        if (it > 0)
            for (int i = n_rows - 1; i > 0; i--) {
                int j = (int)(rnd(&s) % (uint32_t)(i + 1)), x = pick[i];
                pick[i] = pick[j];
                pick[j] = x;
            }
        /* half the time keep each slot's rows together and in order (the
         * shape the scheduler builds), else any order */
        if (it % 2 == 1) {
            for (int i = 1; i < n; i++)
                for (int k = i; k > 0 && pick[k] < pick[k - 1]; k--) { int x = pick[k]; pick[k] = pick[k - 1]; pick[k - 1] = x; }
        }
        fw_run(e, &b, rows, pick, n);
        for (int i = 0; i < n; i++) {
            checked++;
            if (memcmp(e->fwd.logits + (size_t)i * n_vocab, alone + (size_t)pick[i] * n_vocab,
                       sizeof(float) * (size_t)n_vocab) != 0)
                differ++;
        }
    }
    printf("forward: %d rows of 4 slots; %d (row, batch) results in batches of 2..%d: %d differ from the row alone\n",
           n_rows, checked, n_rows, differ);
    ck_assert_int_eq(differ, 0);
    free(alone);
    eng_batch_free(&b);
    eng_engine_close(e);
}
END_TEST

int main(void) {
    kq_isa_set(kq_isa_detected());   /* the best path this CPU has, whatever PPD_CPU_ISA says */
    Suite *s = suite_create("attention");
    TCase *tc = tcase_create("attention");
    test_set_timeout(tc, 600);
    tcase_add_test(tc, test_kernel_matches_reference);
    tcase_add_test(tc, test_kernel_row_alone_equals_grouped);
    tcase_add_test(tc, test_kernel_value);
    tcase_add_test(tc, test_forward_row_alone_equals_mixed_batches);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}

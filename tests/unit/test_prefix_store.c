/* test_prefix_store.c — the prefix block store (engine/decode/prefix_store.c)
 * on a small KV cache of the CPU backend, no model: every entry holds a value
 * made of its layer, position and token (and K or V), so a copy from the
 * wrong block or to the wrong position shows.
 *
 * Checked: full blocks are stored and found, a partial block never; a block
 * held already is not stored again; a lookup stops at the first block whose
 * tokens differ; a match copies exactly the chain's entries into another
 * slot, at the same positions.  Eviction with a store of a few blocks: least
 * recently used leaves go first, a parent only once its children are gone;
 * after many random inserts the block count stays within the limit and every
 * block held hangs on a whole chain from block 0 whose references add up.
 * Collisions: with every hash made equal, tokens and parent links still pick
 * the right block.
 */
#include <check.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/common_test.h"

#include "engine/decode/prefix_store.h"
#include "engine/model/backend.h"
#include "engine/model/kv_cache.h"

#define B ENG_PSTORE_BLOCK
#define N_LAYER 2
#define KV_DIM 4
#define MAX_SEQ 256

struct fx {
    struct eng_backend be;
    struct eng_kv kv;
};

static void fx_open(struct fx *x) {
    ck_assert_int_eq(eng_backend_cpu_init(&x->be, 1), 0);
    ck_assert_int_eq(eng_kv_init(&x->kv, &x->be, N_LAYER, 2, MAX_SEQ, KV_DIM), 0);
}

static void fx_close(struct fx *x) {
    eng_kv_free(&x->kv);
    eng_backend_free(&x->be);
}

static float entry_value(int layer, int pos, int32_t tok, int d, bool v) {
    return (float)(layer * 1000000 + pos * 1000 + (tok % 100) * 10 + d) + (v ? 0.5f : 0.0f);
}

/* Write the entries of tokens tok[0, n) into `slot` as a prefill would. */
static void fill_slot(struct fx *x, int slot, const int32_t *tok, int n) {
    for (int l = 0; l < N_LAYER; l++)
        for (int p = 0; p < n; p++)
            for (int d = 0; d < KV_DIM; d++) {
                x->kv.k[eng_kv_offset(&x->kv, l, slot, p) + (size_t)d] = entry_value(l, p, tok[p], d, false);
                x->kv.v[eng_kv_offset(&x->kv, l, slot, p) + (size_t)d] = entry_value(l, p, tok[p], d, true);
            }
}

/* Entries [0, n) of slot are those of tok. */
static void check_slot(struct fx *x, int slot, const int32_t *tok, int n) {
    for (int l = 0; l < N_LAYER; l++)
        for (int p = 0; p < n; p++)
            for (int d = 0; d < KV_DIM; d++) {
                ck_assert_msg(x->kv.k[eng_kv_offset(&x->kv, l, slot, p) + (size_t)d] == entry_value(l, p, tok[p], d, false),
                              "K layer %d pos %d", l, p);
                ck_assert_msg(x->kv.v[eng_kv_offset(&x->kv, l, slot, p) + (size_t)d] == entry_value(l, p, tok[p], d, true),
                              "V layer %d pos %d", l, p);
            }
}

static void clear_slot(struct fx *x, int slot) {
    for (int l = 0; l < N_LAYER; l++)
        for (int p = 0; p < MAX_SEQ; p++)
            for (int d = 0; d < KV_DIM; d++) {
                x->kv.k[eng_kv_offset(&x->kv, l, slot, p) + (size_t)d] = -1;
                x->kv.v[eng_kv_offset(&x->kv, l, slot, p) + (size_t)d] = -1;
            }
}

/* Tokens of a chain: block b holds ids seed * 1000 + b * 100 + i, except that
 * blocks listed in `same` (a bit per block) take seed 0's ids. */
static void chain_tokens(int32_t *tok, int n, int seed, unsigned same) {
    for (int p = 0; p < n; p++) {
        const int b = p / B;
        const int sd = (same >> b) & 1 ? 0 : seed;
        tok[p] = sd * 1000 + b * 100 + p % B;
    }
}

/* Store tok[0, n) through slot 0, as the scheduler does before reusing it. */
static int save(struct fx *x, struct eng_pstore *ps, const int32_t *tok, int n) {
    fill_slot(x, 0, tok, n);
    return eng_pstore_save(ps, 0, tok, n);
}

/* The store's invariants: at most cap blocks; each block held has a parent
 * held (or is block 0 of its chain), reaches block 0 in fewer than cap steps,
 * is found by a lookup of its own chain's tokens at its depth, and is
 * referenced exactly by its children (no pin outside a match). */
static void check_whole(const struct eng_pstore *ps) {
    ck_assert_int_le(ps->n_used, ps->cap);
    int n_used = 0;
    for (int i = 0; i < ps->cap; i++) {
        if (!ps->used[i]) continue;
        n_used++;
        int chain[MAX_SEQ / B], depth = 0;
        for (int j = i; j >= 0; j = ps->parent[j]) {
            ck_assert_msg(ps->used[j], "block %d hangs on a parent %d that is not held", i, j);
            ck_assert_int_lt(depth, ps->cap);
            ck_assert_int_lt(depth, MAX_SEQ / B);
            chain[depth++] = j;
        }
        int32_t tok[MAX_SEQ];
        for (int b = 0; b < depth; b++) memcpy(tok + b * B, ps->tok + (size_t)chain[depth - 1 - b] * B, sizeof *tok * B);
        ck_assert_int_eq(eng_pstore_peek(ps, tok, depth * B), depth);
        int children = 0;
        for (int j = 0; j < ps->cap; j++) children += ps->used[j] && ps->parent[j] == i;
        ck_assert_int_eq(ps->ref[i], children);
    }
    ck_assert_int_eq(n_used, ps->n_used);
}

START_TEST(test_store_find_copy) {
    struct fx x;
    fx_open(&x);
    struct eng_pstore ps;
    ck_assert_int_eq(eng_pstore_init(&ps, &x.kv, 64 * eng_pstore_block_bytes(&x.kv)), 0);
    ck_assert_int_eq(ps.cap, 64);
    ck_assert_uint_eq(ps.block_bytes, 2 * N_LAYER * B * KV_DIM * sizeof(float));
    int32_t a[MAX_SEQ], b[MAX_SEQ];
    chain_tokens(a, 5 * B + 7, 1, 0);
    ck_assert_int_eq(save(&x, &ps, a, 5 * B + 7), 5);   /* the partial block is not stored */
    ck_assert_int_eq(ps.n_used, 5);
    ck_assert_int_eq(eng_pstore_save(&ps, 0, a, 5 * B + 7), 0);   /* held already */
    ck_assert_int_eq(ps.n_stored, 5);
    ck_assert_int_eq(eng_pstore_peek(&ps, a, 5 * B + 7), 5);
    ck_assert_int_eq(eng_pstore_peek(&ps, a, 3 * B - 1), 2);   /* only blocks that end within n */
    ck_assert_int_eq(eng_pstore_peek(&ps, a, B - 1), 0);
    memcpy(b, a, sizeof b);
    b[2 * B + 5]++;   /* block 2 differs */
    ck_assert_int_eq(eng_pstore_peek(&ps, b, 5 * B), 2);
    /* a match copies blocks [b0, nb) to the same positions of another slot */
    clear_slot(&x, 1);
    ck_assert_int_eq(eng_pstore_match(&ps, b, 5 * B), 2);
    const int last = ps.walk[1];
    ck_assert_int_eq(ps.ref[last], 2);   /* its child, and the pin */
    eng_pstore_take(&ps, 1, 0, 2);
    ck_assert_int_eq(ps.ref[last], 1);
    check_slot(&x, 1, a, 2 * B);
    ck_assert_float_eq(x.kv.k[eng_kv_offset(&x.kv, 0, 1, 2 * B)], -1);   /* nothing past the match */
    clear_slot(&x, 1);
    ck_assert_int_eq(eng_pstore_match(&ps, a, MAX_SEQ), 5);
    eng_pstore_take(&ps, 1, 3, 5);   /* only blocks 3 and 4 */
    ck_assert_float_eq(x.kv.k[eng_kv_offset(&x.kv, 1, 1, 3 * B - 1)], -1);
    check_slot(&x, 1, a, 0);
    for (int p = 3 * B; p < 5 * B; p++)
        ck_assert_float_eq(x.kv.v[eng_kv_offset(&x.kv, 1, 1, p) + 2], entry_value(1, p, a[p], 2, true));
    /* a second chain sharing block 0 branches from it */
    chain_tokens(b, 3 * B, 2, 0);
    memcpy(b, a, sizeof *b * B);
    ck_assert_int_eq(save(&x, &ps, b, 3 * B), 2);
    ck_assert_int_eq(ps.n_used, 7);
    check_whole(&ps);
    clear_slot(&x, 1);
    ck_assert_int_eq(eng_pstore_match(&ps, b, 3 * B + 1), 3);
    eng_pstore_take(&ps, 1, 0, 3);
    check_slot(&x, 1, b, 3 * B);
    eng_pstore_free(&ps);
    /* less than a block: a store that holds nothing */
    ck_assert_int_eq(eng_pstore_init(&ps, &x.kv, eng_pstore_block_bytes(&x.kv) - 1), 0);
    ck_assert_int_eq(ps.cap, 0);
    ck_assert_int_eq(save(&x, &ps, a, 5 * B), 0);
    ck_assert_int_eq(eng_pstore_match(&ps, a, 5 * B), 0);
    eng_pstore_drop(&ps);
    eng_pstore_free(&ps);
    fx_close(&x);
}
END_TEST

START_TEST(test_store_evicts_lru_leaves) {
    struct fx x;
    fx_open(&x);
    struct eng_pstore ps;
    ck_assert_int_eq(eng_pstore_init(&ps, &x.kv, 4 * eng_pstore_block_bytes(&x.kv) + 100), 0);
    ck_assert_int_eq(ps.cap, 4);
    int32_t a[MAX_SEQ], b[MAX_SEQ], c[MAX_SEQ], d[MAX_SEQ];
    chain_tokens(a, 3 * B, 1, 0);
    chain_tokens(b, B, 2, 0);
    chain_tokens(c, B, 3, 0);
    chain_tokens(d, 2 * B, 4, 0);
    ck_assert_int_eq(save(&x, &ps, a, 3 * B), 3);
    ck_assert_int_eq(save(&x, &ps, b, B), 1);
    ck_assert_int_eq(eng_pstore_match(&ps, b, B), 1);   /* b is used again: a is the older */
    eng_pstore_drop(&ps);
    ck_assert_int_eq(save(&x, &ps, c, B), 1);   /* evicts a's leaf, block 2, not its inner blocks */
    ck_assert_int_eq(ps.n_evicted, 1);
    ck_assert_int_eq(eng_pstore_peek(&ps, a, 3 * B), 2);
    ck_assert_int_eq(eng_pstore_peek(&ps, b, B), 1);
    check_whole(&ps);
    ck_assert_int_eq(save(&x, &ps, d, 2 * B), 2);   /* a's blocks 1 then 0: each a leaf by then */
    ck_assert_int_eq(ps.n_evicted, 3);
    ck_assert_int_eq(eng_pstore_peek(&ps, a, 3 * B), 0);
    ck_assert_int_eq(eng_pstore_peek(&ps, b, B), 1);
    ck_assert_int_eq(eng_pstore_peek(&ps, c, B), 1);
    ck_assert_int_eq(eng_pstore_peek(&ps, d, 2 * B), 2);
    check_whole(&ps);
    /* a match's pin survives a store that needs room: the pinned chain stays */
    ck_assert_int_eq(eng_pstore_match(&ps, d, 2 * B), 2);
    ck_assert_int_eq(save(&x, &ps, a, 3 * B), 2);   /* room for two (b and c go), then none: a stays whole */
    ck_assert_int_eq(eng_pstore_peek(&ps, a, 3 * B), 2);
    ck_assert_int_eq(eng_pstore_peek(&ps, b, B) + eng_pstore_peek(&ps, c, B), 0);
    clear_slot(&x, 1);
    eng_pstore_take(&ps, 1, 0, 2);
    check_slot(&x, 1, d, 2 * B);
    check_whole(&ps);
    /* many random chains branching from a few shared blocks: always whole, within the limit */
    srand(7);
    for (int it = 0; it < 400; it++) {
        const int n = (1 + rand() % 6) * B + rand() % B;
        chain_tokens(a, n, 10 + rand() % 50, (unsigned)rand() & 3u);
        if (rand() % 3 == 0) {
            const int m = eng_pstore_match(&ps, a, n);
            clear_slot(&x, 1);
            eng_pstore_take(&ps, 1, 0, m);
            check_slot(&x, 1, a, m * B);
        }
        save(&x, &ps, a, n);
        check_whole(&ps);
    }
    ck_assert_int_gt(ps.n_evicted, 100);
    eng_pstore_free(&ps);
    fx_close(&x);
}
END_TEST

START_TEST(test_store_collisions_checked) {
    struct fx x;
    fx_open(&x);
    struct eng_pstore ps;
    ck_assert_int_eq(eng_pstore_init(&ps, &x.kv, 16 * eng_pstore_block_bytes(&x.kv)), 0);
    ps.hash_mask = 0;   /* every block has the same hash: one bucket */
    int32_t p[MAX_SEQ], q[MAX_SEQ], w[MAX_SEQ];
    chain_tokens(p, 2 * B, 1, 0);   /* [p0, p1] */
    chain_tokens(q, 2 * B, 2, 0);   /* [q0, q1] */
    ck_assert_int_eq(save(&x, &ps, p, 2 * B), 2);
    ck_assert_int_eq(save(&x, &ps, q, 2 * B), 2);
    /* [p0, q1]: q1's tokens are held, but under q0 */
    memcpy(w, p, sizeof *w * B);
    memcpy(w + B, q + B, sizeof *w * B);
    ck_assert_int_eq(eng_pstore_peek(&ps, w, 2 * B), 1);
    /* [p0, p1 with one token changed] */
    memcpy(w, p, sizeof *w * 2 * B);
    w[B + 31]++;
    ck_assert_int_eq(eng_pstore_peek(&ps, w, 2 * B), 1);
    ck_assert_int_eq(save(&x, &ps, w, 2 * B), 1);   /* a block of its own, beside p1 */
    ck_assert_int_eq(ps.n_used, 5);
    check_whole(&ps);
    const int32_t *chains[3] = {p, q, w};
    for (int i = 0; i < 3; i++) {
        clear_slot(&x, 1);
        ck_assert_int_eq(eng_pstore_match(&ps, chains[i], 2 * B), 2);
        eng_pstore_take(&ps, 1, 0, 2);
        check_slot(&x, 1, chains[i], 2 * B);
    }
    eng_pstore_free(&ps);
    fx_close(&x);
}
END_TEST

int main(void) {
    Suite *s = suite_create("prefix_store");
    TCase *tc = tcase_create("prefix_store");
    tcase_add_test(tc, test_store_find_copy);
    tcase_add_test(tc, test_store_evicts_lru_leaves);
    tcase_add_test(tc, test_store_collisions_checked);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}

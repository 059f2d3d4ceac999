/* fuzz_tree.c — libFuzzer target: the tree-family JSON parser
 * (eng_ppd_tree_family_parse), then the per-state buffers
 * (eng_ppd_trees_init) of every family that parses.
 *
 * The header promises that a parsed family never fails eng_ppd_trees_init, so
 * such a failure aborts here; so does a state whose buffers break their own
 * invariants (node ids, positions and retrieve rows in range).
 *
 * Not here: the builder (eng_ppd_tree_build; its inputs are numbers, not text).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/ppd/ppd_tree.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_check_state(const struct eng_ppd_tree *st, int n_prompt) {
    if (st->T < 1 || st->M < 1 || st->M > st->T || st->R < 1 || st->D < 0) abort();
    for (int k = 0; k < st->M; k++) {
        if (st->normal_pos[k] < 0 || st->normal_pos[k] >= st->T) abort();
        if (st->n_special[k] < 0 || st->n_special[k] > n_prompt) abort();
        for (int j = 0; j < st->n_special[k]; j++) {
            int32_t p = st->special[(size_t)k * n_prompt + j];
            if (p < 0 || p >= st->T) abort();
        }
        if (st->child_first[k] > st->child_first[k + 1]) abort();
    }
    if (st->child_first[0] < 0 || st->child_first[st->M] > st->M - 1) abort();
    for (int i = 0; i < st->M - 1; i++)
        if (st->child_ids[i] < 1 || st->child_ids[i] >= st->M) abort();
    for (int r = 0; r < st->R; r++)
        for (int j = 0; j <= st->D; j++) {
            int32_t v = st->rows[(size_t)r * (st->D + 1) + j];
            if (v != ENG_PPD_PAD && (v < 0 || v >= st->M)) abort();
        }
    volatile uint64_t sink = 0;
    for (size_t i = 0; i < (size_t)st->T * st->vis_words; i++) sink += st->mask[i];
    for (int t = 0; t < st->T; t++) sink += (uint64_t)st->src[t] + (uint64_t)st->pos_off[t];
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = malloc(size ? size : 1);   /* exactly size bytes, no terminator */
    if (!json) return 0;
    memcpy(json, data, size);
    struct eng_ppd_tree_family *f = NULL;
    char err[512];
    if (eng_ppd_tree_family_parse(&f, json, size, "fuzz", err, sizeof err) == 0) {
        struct eng_ppd_trees t;
        memset(&t, 0, sizeof t);
        if (eng_ppd_trees_init(&t, f, err, sizeof err)) {
            fprintf(stderr, "a parsed family failed eng_ppd_trees_init: %s\n", err);
            abort();
        }
        for (int d = 1; d <= f->n_prompt; d++) fuzz_check_state(&t.st[d], f->n_prompt);
        eng_ppd_trees_free(&t);
    } else if (!err[0]) {
        abort();
    }
    eng_ppd_tree_family_free(f);
    free(json);
    return 0;
}

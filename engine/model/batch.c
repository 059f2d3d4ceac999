/* batch.c — allocation and the causal-run builder of batch.h. */
#include "engine/model/batch.h"

#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

int eng_batch_init(struct eng_batch *b, int cap, int max_grp) {
    memset(b, 0, sizeof *b);
    if (cap < 1 || max_grp < 1) return ENG_E_RANGE;
    b->cap = cap;
    b->vis_words = (max_grp + 63) / 64;
    b->token = calloc((size_t)cap, sizeof *b->token);
    b->pos = calloc((size_t)cap, sizeof *b->pos);
    b->slot = calloc((size_t)cap, sizeof *b->slot);
    b->kv_idx = calloc((size_t)cap, sizeof *b->kv_idx);
    b->n_prefix = calloc((size_t)cap, sizeof *b->n_prefix);
    b->grp_first = calloc((size_t)cap, sizeof *b->grp_first);
    b->grp_len = calloc((size_t)cap, sizeof *b->grp_len);
    b->vis = calloc((size_t)cap * (size_t)b->vis_words, sizeof *b->vis);
    b->want_logits = calloc((size_t)cap, sizeof *b->want_logits);
    if (!b->token || !b->pos || !b->slot || !b->kv_idx || !b->n_prefix || !b->grp_first ||
        !b->grp_len || !b->vis || !b->want_logits) {
        eng_batch_free(b);
        return ENG_E_NOMEM;
    }
    return 0;
}

void eng_batch_free(struct eng_batch *b) {
    if (!b) return;
    free(b->token); free(b->pos); free(b->slot); free(b->kv_idx); free(b->n_prefix);
    free(b->grp_first); free(b->grp_len); free(b->vis); free(b->want_logits);
    memset(b, 0, sizeof *b);
}

void eng_batch_clear(struct eng_batch *b) { b->n_tok = 0; }

int eng_batch_row_visible(const struct eng_batch *b, int r) {
    const uint64_t *vis = b->vis + (size_t)r * b->vis_words;
    int n = b->n_prefix[r];
    for (int w = 0; w < b->vis_words && w * 64 < b->grp_len[r]; w++) {
        const int bits = b->grp_len[r] - w * 64;
        n += __builtin_popcountll(bits >= 64 ? vis[w] : vis[w] & ((1ull << bits) - 1));
    }
    return n;
}

int eng_batch_add_causal(struct eng_batch *b, int slot, int n_past, const int32_t *tokens, int n,
                         bool last_logits) {
    if (n < 0 || b->n_tok + n > b->cap || n > b->vis_words * 64) return ENG_E_RANGE;
    for (int i = 0; i < n; i++) {
        int r = b->n_tok + i;
        b->token[r] = tokens[i];
        b->pos[r] = n_past + i;
        b->slot[r] = slot;
        b->kv_idx[r] = n_past + i;
        b->n_prefix[r] = n_past;
        b->grp_first[r] = n_past;
        b->grp_len[r] = n;
        uint64_t *v = b->vis + (size_t)r * b->vis_words;
        memset(v, 0, sizeof *v * (size_t)b->vis_words);
        for (int j = 0; j <= i; j++) v[j >> 6] |= 1ull << (j & 63);
        b->want_logits[r] = last_logits && i == n - 1;
    }
    b->n_tok += n;
    return 0;
}

/* The position of entry e of row r's group: that of the row of the batch
 * that writes it (the rows writing a group sit together: a causal run, a PPD
 * tree), else e itself. */
static int32_t batch_entry_pos(const struct eng_batch *b, int r, int32_t e) {
    const int32_t d = e - b->kv_idx[r];
    const int w = r + d;   /* the rows of a group write its entries in row order */
    if (w >= 0 && w < b->n_tok && b->slot[w] == b->slot[r] && b->kv_idx[w] == e) return b->pos[w];
    for (int i = 0; i < b->n_tok; i++)
        if (b->slot[i] == b->slot[r] && b->kv_idx[i] == e) return b->pos[i];
    return e;
}

int eng_batch_window(const struct eng_batch *b, int window, int32_t *lo, uint64_t *vis_out) {
    const size_t W = (size_t)b->vis_words;
    memcpy(vis_out, b->vis, sizeof *vis_out * W * (size_t)b->n_tok);
    int cut = 0;
    for (int r = 0; r < b->n_tok; r++) {
        lo[r] = 0;
        if (window <= 0) continue;
        const int32_t first = b->pos[r] - window + 1;   /* the lowest position row r sees */
        if (first <= 0) continue;
        lo[r] = first < b->n_prefix[r] ? first : b->n_prefix[r];
        cut |= lo[r] > 0;
        uint64_t *v = vis_out + (size_t)r * W;
        for (int g = 0; g < b->grp_len[r]; g++) {
            if (!(v[g >> 6] >> (g & 63) & 1)) continue;
            if (batch_entry_pos(b, r, b->grp_first[r] + g) < first) {
                v[g >> 6] &= ~(1ull << (g & 63));
                cut = 1;
            }
        }
    }
    return cut;
}

/* batch.h — the unit the forward pass consumes: rows of (slot, token, position)
 * plus, for each row, which KV entries of its slot it may see.
 *
 * Row r writes its K/V at kv_idx[r] of its slot and sees the slot's entries
 * [0, n_prefix[r]) (the committed prefix) and, of the entries
 * [grp_first[r], grp_first[r] + grp_len[r]) written by this batch, those whose
 * bit is set in vis[r * vis_words ...].  A causal prefill chunk, a single decode
 * row, a PPD tree and a training cut point are all this one shape; the forward
 * pass knows nothing about trees.
 * A token id < 0 means "embedding row -1 - id of the extra embedding table"
 * (PPD prompt-token rows).
 *
 * Sliding window.  A model with an attention window of W (Mistral's) lets a
 * row at position p see, of the entries above, only those at positions
 * > p - W.  The committed entry i of a slot is at position i (the prefix is
 * the accepted tokens in order); an entry written by this batch is at the
 * position of the row that writes it.  The batch itself never holds the
 * window: the attention op applies it (eng_batch_window), so one batch shape
 * serves every model, and a PPD tree row sees exactly what the same token
 * decoded plainly would see.
 */
#ifndef PPD_BATCH_H
#define PPD_BATCH_H

#include <stdbool.h>
#include <stdint.h>

struct eng_batch {
    int n_tok;              /* rows in use */
    int cap;                /* rows allocated */
    int vis_words;          /* 64-bit words of visibility per row (cap of grp_len / 64) */
    int32_t *token;         /* [cap] */
    int32_t *pos;           /* [cap] RoPE position */
    int32_t *slot;          /* [cap] KV slot */
    int32_t *kv_idx;        /* [cap] where the row's K/V goes in its slot */
    int32_t *n_prefix;      /* [cap] committed entries visible: [0, n_prefix) */
    int32_t *grp_first;     /* [cap] first KV index of this batch's entries for the slot */
    int32_t *grp_len;       /* [cap] how many such entries */
    uint64_t *vis;          /* [cap][vis_words] bit j: entry grp_first + j visible */
    bool *want_logits;      /* [cap] compute logits for this row */
};

/* Allocate for cap rows whose groups hold at most max_grp entries. */
int eng_batch_init(struct eng_batch *b, int cap, int max_grp);
void eng_batch_free(struct eng_batch *b);   /* accepts NULL */
void eng_batch_clear(struct eng_batch *b);
/* The KV entries row r sees: its prefix plus the set bits among its group's. */
int eng_batch_row_visible(const struct eng_batch *b, int r);

/* The window W's cut of b's visibility: for each row r, lo[r] = the first
 * committed entry it sees (0 .. n_prefix[r]; entries [lo[r], n_prefix[r])),
 * and vis_out[r * vis_words ...] = its bits of b->vis, cleared for this
 * batch's entries outside the window.  W <= 0: no window (lo 0, bits copied).
 * Returns 1 when the window hides some entry from some row, else 0. */
int eng_batch_window(const struct eng_batch *b, int window, int32_t *lo, uint64_t *vis_out);

/* Append a causal run of n tokens for `slot` whose committed length is n_past:
 * rows see the prefix plus all earlier rows of this run.  Logits only for the
 * last row when last_logits.  Returns ENG_E_RANGE when it does not fit. */
int eng_batch_add_causal(struct eng_batch *b, int slot, int n_past, const int32_t *tokens, int n,
                         bool last_logits);

#endif

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

/* Append a causal run of n tokens for `slot` whose committed length is n_past:
 * rows see the prefix plus all earlier rows of this run.  Logits only for the
 * last row when last_logits.  Returns ENG_E_RANGE when it does not fit. */
int eng_batch_add_causal(struct eng_batch *b, int slot, int n_past, const int32_t *tokens, int n,
                         bool last_logits);

#endif

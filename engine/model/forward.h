/* forward.h — the Llama forward pass over a batch, written once against backend.h.
 *
 * It knows batches and visibility masks, never trees: PPD, prefill and plain
 * decoding all hand it an eng_batch.  Scratch activations are allocated once
 * for the largest batch (max_rows) at init; a run never allocates.
 */
#ifndef PPD_FORWARD_H
#define PPD_FORWARD_H

#include "engine/model/batch.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"

struct eng_forward {
    struct eng_model *m;
    struct eng_backend *be;
    int max_rows;
    /* backend scratch, rows x width */
    float *x;        /* [max_rows, n_embd] residual stream */
    float *xn;       /* [max_rows, n_embd] normalised input of a sublayer */
    float *q;        /* [max_rows, n_embd] */
    float *k, *v;    /* [max_rows, kv_dim] */
    float *attn;     /* [max_rows, n_embd] */
    float *gate, *up;/* [max_rows, n_ff] */
    float *proj;     /* [max_rows, n_embd] sublayer output before the residual add */
    float *logits_dev;   /* [max_rows, n_vocab] backend */
    float *logits;       /* [max_rows, n_vocab] host copy */
    int32_t *logit_rows; /* [max_rows] batch row of each logits row */
    int32_t *row_logit;  /* [max_rows] logits row of each batch row, -1 when it has none */
    int32_t *ids_dev;    /* [max_rows] token ids in backend memory */
    int n_logits;
};

int eng_forward_init(struct eng_forward *f, struct eng_model *m, int max_rows);
void eng_forward_free(struct eng_forward *f);  /* accepts NULL */

/* Run the batch: writes K/V of every row into kv (not committing anything: the
 * caller updates kv->len), leaves logits of the rows with want_logits in
 * f->logits (host), in batch order, and their batch rows in f->logit_rows.
 * extra holds n_extra embedding rows for token ids < 0 (PPD prompt tokens). */
int eng_forward_run(struct eng_forward *f, const struct eng_batch *b, struct eng_kv *kv,
                    const float *extra, int n_extra);
/* The same with deep prompts: deep [n_deep][n_extra][n_embd] (NULL: none); at the
 * input of layer l (1 <= l <= n_deep) each prompt row gets its layer's vector
 * added.  ENG_E_UNSUPPORTED on a backend without the op. */
int eng_forward_run_deep(struct eng_forward *f, const struct eng_batch *b, struct eng_kv *kv, const float *extra,
                         int n_extra, const float *deep, int n_deep);

#endif

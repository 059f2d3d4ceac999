/* logprobs.c — log-softmax of one logits row at a token, and its top
 * alternatives (logprobs.h).
 *
 * Cost: two passes over the row (the max, then the normaliser, one exp in
 * double per entry) and one for the top list, which tests a block of 32
 * logits against the current n-th best before walking it entry by entry.
 * Only requests that ask for logprobs pay for it.
 */
#include "engine/decode/logprobs.h"

#include <math.h>

#define LOGPROBS_BLOCK 32

static float logprobs_clamp(double lp) {
    return lp >= (double)ENG_LOGPROBS_FLOOR ? (float)lp : ENG_LOGPROBS_FLOOR;   /* NaN too */
}

/* Insert (x, v) into the best-first list of *n <= cap entries: below the
 * entries >= x, so equal logits keep the lower id first. */
static void logprobs_top_push(float *val, int32_t *ids, int *n, int cap, float x, int32_t v) {
    int i = *n < cap ? (*n)++ : cap - 1;
    while (i > 0 && val[i - 1] < x) {
        val[i] = val[i - 1];
        ids[i] = ids[i - 1];
        i--;
    }
    val[i] = x;
    ids[i] = v;
}

/* The cap best ids of the row into ids (their logits into val); returns how
 * many (fewer than cap only when the row has fewer non-NaN entries). */
static int logprobs_top(const float *logits, int n_vocab, int cap, float *val, int32_t *ids) {
    int n = 0, v = 0;
    if (cap <= 0) return 0;
    for (; v < n_vocab && n < cap; v++)
        if (logits[v] == logits[v]) logprobs_top_push(val, ids, &n, cap, logits[v], v);
    for (; v + LOGPROBS_BLOCK <= n_vocab; v += LOGPROBS_BLOCK) {
        const float thr = val[cap - 1];
        int any = 0;
        for (int j = 0; j < LOGPROBS_BLOCK; j++) any |= logits[v + j] > thr;
        if (!any) continue;
        for (int j = 0; j < LOGPROBS_BLOCK; j++)
            if (logits[v + j] > val[cap - 1]) logprobs_top_push(val, ids, &n, cap, logits[v + j], v + j);
    }
    for (; v < n_vocab; v++)
        if (logits[v] > val[cap - 1]) logprobs_top_push(val, ids, &n, cap, logits[v], v);
    return n;
}

void eng_logprobs_compute(const float *logits, int n_vocab, int32_t id, int n_top, struct eng_logprob *out) {
    if (n_top > ENG_LOGPROBS_MAX_TOP) n_top = ENG_LOGPROBS_MAX_TOP;
    if (n_top > n_vocab) n_top = n_vocab;
    if (n_top < 0) n_top = 0;
    float mx = -INFINITY;
    for (int v = 0; v < n_vocab; v++)
        if (logits[v] > mx) mx = logits[v];
    /* The log of the normaliser: -inf (nothing finite) and +inf (a +inf
     * logit) leave no usable distribution, so every token gets the floor. */
    double lse = NAN;
    if (isfinite(mx)) {
        double sum = 0.0;
        for (int v = 0; v < n_vocab; v++)
            if (logits[v] == logits[v]) sum += exp((double)logits[v] - (double)mx);
        lse = (double)mx + log(sum);
    }
    out->id = id;
    out->logprob = id >= 0 && id < n_vocab ? logprobs_clamp((double)logits[id] - lse) : ENG_LOGPROBS_FLOOR;
    float val[ENG_LOGPROBS_MAX_TOP];
    out->n_top = logprobs_top(logits, n_vocab, n_top, val, out->top_id);
    for (int i = 0; i < out->n_top; i++) out->top_logprob[i] = logprobs_clamp((double)val[i] - lse);
}

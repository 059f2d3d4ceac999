/* logprobs.h — what a client may ask about a token beyond its id: its
 * log-probability under the model, and the most likely alternatives at the
 * same position.
 *
 * The distribution is the model's own: log-softmax of the raw logits row the
 * token was chosen from, before penalties, temperature, top-k, top-p or min-p
 * (vLLM's default "raw" logprobs).  It is a pure function of the row, so
 * whatever computes the same row (plain decoding, a PPD tree row, any batch)
 * gives the same bits.
 *
 * Not here: choosing tokens (sampler.c), which row a token came from (the
 * scheduler and ppd.c know that), any text or JSON.
 */
#ifndef PPD_LOGPROBS_H
#define PPD_LOGPROBS_H

#include <stdint.h>

#define ENG_LOGPROBS_MAX_TOP 20    /* OpenAI's top_logprobs bound */
#define ENG_LOGPROBS_FLOOR (-9999.0f)   /* what OpenAI reports for a token of probability 0 */

struct eng_logprob {
    int32_t id;                              /* the token */
    float logprob;                           /* its log-probability, >= ENG_LOGPROBS_FLOOR */
    int n_top;
    int32_t top_id[ENG_LOGPROBS_MAX_TOP];    /* the n_top most likely tokens, most likely first */
    float top_logprob[ENG_LOGPROBS_MAX_TOP]; /* (equal logits: lower id first) */
};

/* Fill *out for token id at a logits row of n_vocab entries, with the n_top
 * (0..ENG_LOGPROBS_MAX_TOP, at most n_vocab) most likely tokens.  The
 * normaliser is summed in double in ascending id; a NaN logit never enters
 * the top list and counts as probability 0; a row with no finite logit gives
 * every token the floor.  Log-probabilities below the floor (and -inf) are
 * reported as the floor. */
void eng_logprobs_compute(const float *logits, int n_vocab, int32_t id, int n_top, struct eng_logprob *out);

#endif

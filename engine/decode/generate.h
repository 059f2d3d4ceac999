/* generate.h — one sequence, start to end: prefill in chunks, then decode one
 * token per step (plain decoding; PPD's steps are engine/ppd/ppd.c's).
 *
 * Used by `ppd generate` and `ppd bench`; the server's scheduler drives the
 * same forward pass for many sequences at once and does not use this loop.
 */
#ifndef PPD_GENERATE_H
#define PPD_GENERATE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/forward.h"
#include "engine/model/kv_cache.h"
#include "engine/decode/sampler.h"

struct tok;

enum eng_finish { ENG_FINISH_LENGTH = 0, ENG_FINISH_EOG, ENG_FINISH_STOPPED, ENG_FINISH_CONTEXT };

struct eng_gen_params {
    int n_predict;                 /* max new tokens */
    bool ignore_eog;               /* keep going past end-of-generation tokens (tests, benchmarks) */
    int prefill_chunk;             /* rows per prefill forward pass (<= forward max_rows) */
    struct eng_sampler_params sp;
};

struct eng_gen_stats {
    int n_prompt, n_gen, steps;
    double prefill_s, decode_s;
    enum eng_finish finish;
};

/* Called with the tokens a step produced; return nonzero to stop. */
typedef int (*eng_gen_token_fn)(void *user, const int32_t *ids, int n);

/* Generate into out_ids (capacity p->n_predict) for `slot` of kv, starting from
 * an empty slot.  logits_cb, when set, sees every step's logits row (tests). */
int eng_generate(struct eng_forward *f, struct eng_kv *kv, int slot, const struct tok *t,
                 const int32_t *prompt, int n_prompt, const struct eng_gen_params *p,
                 eng_gen_token_fn on_tokens, void *user, int32_t *out_ids, struct eng_gen_stats *st);

double eng_now_s(void);

#endif

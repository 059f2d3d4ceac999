/* generate.c — the single-sequence prefill + decode loop of generate.h. */
#include "engine/decode/generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/err.h"
#include "engine/load/tokenizer.h"

double eng_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int eng_generate(struct eng_forward *f, struct eng_kv *kv, int slot, const struct tok *t,
                 const int32_t *prompt, int n_prompt, const struct eng_gen_params *p,
                 eng_gen_token_fn on_tokens, void *user, int32_t *out_ids, struct eng_gen_stats *st) {
    memset(st, 0, sizeof *st);
    st->n_prompt = n_prompt;
    if (n_prompt < 1) return ENG_E_INVALID;
    if (n_prompt + 1 > kv->max_seq) return ENG_E_TOO_LONG;
    const int n_vocab = f->m->hp.n_vocab;
    int chunk = p->prefill_chunk > 0 && p->prefill_chunk <= f->max_rows ? p->prefill_chunk : f->max_rows;
    struct eng_batch b;
    int rc = eng_batch_init(&b, chunk, chunk);
    if (rc) return rc;
    struct eng_sampler_scratch *scratch = NULL;
    rc = eng_sampler_scratch_init(&scratch, n_vocab);
    if (rc) goto out;
    struct eng_rng rng;
    eng_rng_seed(&rng, p->sp.seed);

    /* prefill */
    double t0 = eng_now_s();
    kv->len[slot] = 0;
    for (int i = 0; i < n_prompt; i += chunk) {
        int n = n_prompt - i < chunk ? n_prompt - i : chunk;
        eng_batch_clear(&b);
        eng_batch_add_causal(&b, slot, kv->len[slot], prompt + i, n, i + n == n_prompt);
        if ((rc = eng_forward_run(f, &b, kv, NULL, 0))) goto out;
        kv->len[slot] += n;
    }
    st->prefill_s = eng_now_s() - t0;

    /* decode */
    t0 = eng_now_s();
    st->finish = ENG_FINISH_LENGTH;
    for (int g = 0; g < p->n_predict; g++) {
        int32_t id = eng_sample(&p->sp, &rng, f->logits, n_vocab, scratch);
        if (id < 0) { rc = id; goto out; }   /* no finite logit: never store an error as a token */
        out_ids[st->n_gen++] = id;
        st->steps++;
        int stop = on_tokens ? on_tokens(user, &id, 1) : 0;
        if (!p->ignore_eog && t && tok_is_eog(t, id)) { st->finish = ENG_FINISH_EOG; break; }
        if (stop) { st->finish = ENG_FINISH_STOPPED; break; }
        if (g + 1 == p->n_predict) break;
        if (kv->len[slot] + 1 > kv->max_seq) { st->finish = ENG_FINISH_CONTEXT; break; }
        eng_batch_clear(&b);
        eng_batch_add_causal(&b, slot, kv->len[slot], &id, 1, true);
        if ((rc = eng_forward_run(f, &b, kv, NULL, 0))) goto out;
        kv->len[slot] += 1;
    }
    st->decode_s = eng_now_s() - t0;
out:
    eng_sampler_scratch_free(scratch);
    eng_batch_free(&b);
    return rc;
}

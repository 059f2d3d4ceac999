/* sched.c — the continuous-batching step of sched.h. */
#include "sched.h"

#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "generate.h"
#include "tokenizer.h"

const char *eng_sched_finish_reason(enum eng_sched_finish f) {
    switch (f) {
    case ENG_SCHED_FINISH_EOG:
    case ENG_SCHED_FINISH_STOP: return "stop";
    case ENG_SCHED_FINISH_LENGTH:
    case ENG_SCHED_FINISH_CONTEXT: return "length";
    default: return NULL;
    }
}

int eng_sched_req_init(struct eng_sched_req **out, const struct tok *tok, const int32_t *prompt, int n_prompt,
                       int max_tokens, const struct eng_sampler_params *sp, const char *const *stop, int n_stop) {
    *out = NULL;
    if (n_prompt < 1 || max_tokens < 1) return ENG_E_RANGE;
    struct eng_sched_req *r = calloc(1, sizeof *r);
    if (!r) return ENG_E_NOMEM;
    int rc = ENG_E_NOMEM;
    r->prompt = malloc(sizeof *r->prompt * (size_t)n_prompt);
    r->out_ids = malloc(sizeof *r->out_ids * (size_t)max_tokens);
    if (!r->prompt || !r->out_ids) goto err;
    if ((rc = eng_textout_init(&r->text, tok, stop, n_stop))) goto err;
    memcpy(r->prompt, prompt, sizeof *r->prompt * (size_t)n_prompt);
    r->n_prompt = n_prompt;
    r->max_tokens = max_tokens;
    r->sp = *sp;
    r->slot = -1;
    atomic_init(&r->cancel, false);
    *out = r;
    return 0;
err:
    eng_sched_req_free(r);
    return rc;
}

void eng_sched_req_free(struct eng_sched_req *r) {
    if (!r) return;
    eng_textout_free(&r->text);
    free(r->prompt);
    free(r->out_ids);
    free(r);
}

int eng_sched_init(struct eng_sched *s, struct eng_forward *f, struct eng_kv *kv, const struct tok *tok,
                   const struct eng_sched_params *p) {
    memset(s, 0, sizeof *s);
    s->f = f;
    s->kv = kv;
    s->tok = tok;
    s->p = *p;
    if (s->p.n_slot <= 0 || s->p.n_slot > kv->n_slot) s->p.n_slot = kv->n_slot;
    if (s->p.max_rows <= 0 || s->p.max_rows > f->max_rows) s->p.max_rows = f->max_rows;
    if (s->p.prefill_chunk <= 0 || s->p.prefill_chunk > s->p.max_rows) s->p.prefill_chunk = s->p.max_rows;
    /* Every decoding sequence needs its row in every step. */
    int rc = ENG_E_RANGE;
    if (s->p.n_slot > s->p.max_rows) goto err;
    rc = eng_batch_init(&s->batch, s->p.max_rows, s->p.max_rows);
    if (rc) goto err;
    if ((rc = eng_sampler_scratch_init(&s->scratch, f->m->hp.n_vocab))) goto err;
    rc = ENG_E_NOMEM;
    s->pen_logits = malloc(sizeof *s->pen_logits * (size_t)f->m->hp.n_vocab);
    s->active = calloc((size_t)s->p.n_slot, sizeof *s->active);
    s->slot_busy = calloc((size_t)s->p.n_slot, sizeof *s->slot_busy);
    if (!s->pen_logits || !s->active || !s->slot_busy) goto err;
    return 0;
err:
    eng_sched_free(s);
    return rc;
}

void eng_sched_free(struct eng_sched *s) {
    if (!s) return;
    eng_batch_free(&s->batch);
    eng_sampler_scratch_free(s->scratch);
    free(s->pen_logits);
    free(s->active);
    free(s->slot_busy);
    memset(s, 0, sizeof *s);
}

void eng_sched_submit(struct eng_sched *s, struct eng_sched_req *r) {
    r->state = ENG_SEQ_WAITING;
    r->next = NULL;
    r->t_submit = eng_now_s();
    if (s->wait_tail) s->wait_tail->next = r;
    else s->wait_head = r;
    s->wait_tail = r;
    s->n_waiting++;
}

bool eng_sched_idle(const struct eng_sched *s) { return s->n_active == 0 && s->n_waiting == 0; }
int eng_sched_n_running(const struct eng_sched *s) { return s->n_active; }
int eng_sched_n_waiting(const struct eng_sched *s) { return s->n_waiting; }

long eng_sched_kv_used(const struct eng_sched *s) {
    long n = 0;
    for (int i = 0; i < s->n_active; i++) n += s->kv->len[s->active[i]->slot];
    return n;
}

long eng_sched_kv_total(const struct eng_sched *s) { return (long)s->p.n_slot * s->kv->max_seq; }

/* Emit the request's step event; with a finish, it is the last one. */
static void sched_emit(struct eng_sched *s, struct eng_sched_req *r, int n_new, enum eng_sched_finish fin, int err) {
    if (fin != ENG_SCHED_RUNNING && fin != ENG_SCHED_FINISH_STOP) eng_textout_finish(&r->text);
    struct eng_sched_event ev = {.req = r, .ids = r->out_ids + r->n_gen - n_new, .n_ids = n_new,
                                 .finish = fin, .err = err, .n_prompt = r->n_prompt, .n_gen = r->n_gen,
                                 .queue_s = r->t_admit > 0 ? r->t_admit - r->t_submit : 0};
    ev.text = eng_textout_take(&r->text, &ev.n_text);
    if (fin != ENG_SCHED_RUNNING) r->state = ENG_SEQ_DONE;
    if (s->p.emit) s->p.emit(s->p.user, &ev);
}

/* Remove an admitted request: free its slot, keep the admission order. */
static void sched_retire(struct eng_sched *s, int i) {
    struct eng_sched_req *r = s->active[i];
    s->slot_busy[r->slot] = false;
    s->kv->len[r->slot] = 0;
    memmove(s->active + i, s->active + i + 1, sizeof *s->active * (size_t)(s->n_active - i - 1));
    s->n_active--;
}

static void sched_drop_cancelled(struct eng_sched *s) {
    for (struct eng_sched_req **pp = &s->wait_head, *prev = NULL; *pp;) {
        struct eng_sched_req *r = *pp;
        if (!atomic_load_explicit(&r->cancel, memory_order_relaxed)) { prev = r; pp = &r->next; continue; }
        *pp = r->next;
        if (s->wait_tail == r) s->wait_tail = prev;
        s->n_waiting--;
        sched_emit(s, r, 0, ENG_SCHED_FINISH_CANCELLED, 0);
    }
    for (int i = 0; i < s->n_active;) {
        struct eng_sched_req *r = s->active[i];
        if (!atomic_load_explicit(&r->cancel, memory_order_relaxed)) { i++; continue; }
        sched_retire(s, i);
        sched_emit(s, r, 0, ENG_SCHED_FINISH_CANCELLED, 0);
    }
}

static void sched_admit(struct eng_sched *s) {
    while (s->wait_head && s->n_active < s->p.n_slot) {
        struct eng_sched_req *r = s->wait_head;
        s->wait_head = r->next;
        if (!s->wait_head) s->wait_tail = NULL;
        s->n_waiting--;
        int slot = 0;
        while (s->slot_busy[slot]) slot++;
        s->slot_busy[slot] = true;
        r->slot = slot;
        r->state = ENG_SEQ_PREFILL;
        r->n_prefilled = 0;
        r->n_gen = 0;
        r->t_admit = eng_now_s();
        eng_rng_seed(&r->rng, r->sp.seed);
        s->kv->len[slot] = 0;
        s->active[s->n_active++] = r;
    }
}

/* ---- per-sequence hooks: add rows to the step's batch, consume logits ---- */

/* Plain decoding: one row, the last sampled token, logits wanted. */
static int seq_add_decode(struct eng_sched *s, struct eng_sched_req *r) {
    r->row0 = s->batch.n_tok;
    r->n_rows = 1;
    return eng_batch_add_causal(&s->batch, r->slot, s->kv->len[r->slot], &r->out_ids[r->n_gen - 1], 1, true);
}

/* The next prompt chunk of n rows; logits only when it ends the prompt. */
static int seq_add_prefill(struct eng_sched *s, struct eng_sched_req *r, int n) {
    r->row0 = s->batch.n_tok;
    r->n_rows = n;
    return eng_batch_add_causal(&s->batch, r->slot, s->kv->len[r->slot], r->prompt + r->n_prefilled, n,
                                r->n_prefilled + n == r->n_prompt);
}

/* Sample one token from logits row `lrow`, with the request's penalties. */
static int32_t seq_sample(struct eng_sched *s, struct eng_sched_req *r, int lrow) {
    const int n_vocab = s->f->m->hp.n_vocab;
    const float *logits = s->f->logits + (size_t)lrow * (size_t)n_vocab;
    if (r->sp.presence_penalty != 0.0f || r->sp.frequency_penalty != 0.0f) {
        memcpy(s->pen_logits, logits, sizeof *s->pen_logits * (size_t)n_vocab);
        eng_sampler_penalize(&r->sp, s->pen_logits, n_vocab, r->out_ids, r->n_gen, s->scratch);
        logits = s->pen_logits;
    }
    return eng_sample(&r->sp, &r->rng, logits, n_vocab, s->scratch);
}

/* After the forward pass: commit this step's rows, and when they carried
 * logits, sample and detokenize.  (PPD replaces this for decoding sequences:
 * verify the tree, compact the accepted rows' K/V, then push the accepted
 * tokens one at a time through the same checks below, stopping at the first
 * end-of-generation token, completed stop string or max_tokens, so that usage
 * counts only delivered tokens; the event then carries n_new > 1.)  Returns -1 when there is nothing to emit
 * (a prompt chunk that does not end the prompt), else the finish to emit with
 * one new token (ERROR: the sampler failed, *err holds its code). */
static int seq_consume(struct eng_sched *s, struct eng_sched_req *r, int *err) {
    s->kv->len[r->slot] += r->n_rows;
    if (r->state == ENG_SEQ_PREFILL) {
        r->n_prefilled += r->n_rows;
        if (r->n_prefilled < r->n_prompt) return -1;
        r->state = ENG_SEQ_DECODE;
    }
    int lrow = s->f->row_logit[r->row0 + r->n_rows - 1];
    int32_t id = seq_sample(s, r, lrow);
    if (id < 0) { *err = id; return ENG_SCHED_FINISH_ERROR; }
    r->out_ids[r->n_gen++] = id;
    bool stopped = eng_textout_push(&r->text, id);
    if (!r->ignore_eog && tok_is_eog(s->tok, id)) return ENG_SCHED_FINISH_EOG;
    if (stopped) return ENG_SCHED_FINISH_STOP;
    if (r->n_gen >= r->max_tokens) return ENG_SCHED_FINISH_LENGTH;
    if (s->kv->len[r->slot] + 1 > s->kv->max_seq) return ENG_SCHED_FINISH_CONTEXT;
    return ENG_SCHED_RUNNING;
}

int eng_sched_step(struct eng_sched *s) {
    double t0 = eng_now_s();
    sched_drop_cancelled(s);
    sched_admit(s);
    eng_batch_clear(&s->batch);
    int n_decode = 0, n_prefill = 0;
    for (int i = 0; i < s->n_active; i++) {
        struct eng_sched_req *r = s->active[i];
        r->n_rows = 0;
        if (r->state == ENG_SEQ_DECODE) {
            if (seq_add_decode(s, r)) return ENG_E_INTERNAL;
            n_decode++;
        } else {
            n_prefill++;
        }
    }
    /* What is left is shared evenly by the prefilling sequences, in admission
     * order; a share a sequence does not need goes to those after it. */
    int budget = s->p.max_rows - s->batch.n_tok, left = n_prefill;
    for (int i = 0; i < s->n_active && budget > 0; i++) {
        struct eng_sched_req *r = s->active[i];
        if (r->state != ENG_SEQ_PREFILL) continue;
        int share = budget / left > 0 ? budget / left : 1;
        int n = r->n_prompt - r->n_prefilled;
        if (n > share) n = share;
        if (n > s->p.prefill_chunk) n = s->p.prefill_chunk;
        if (seq_add_prefill(s, r, n)) return ENG_E_INTERNAL;
        budget -= n;
        left--;
    }
    s->stats.n_rows = s->batch.n_tok;
    s->stats.n_decode = n_decode;
    s->stats.n_prefill = n_prefill;
    if (s->batch.n_tok == 0) return 0;
    int rc = eng_forward_run(s->f, &s->batch, s->kv, NULL, 0);
    if (rc) {
        for (int i = 0; i < s->n_active;) {
            struct eng_sched_req *r = s->active[i];
            if (r->n_rows == 0) { i++; continue; }
            sched_retire(s, i);
            sched_emit(s, r, 0, ENG_SCHED_FINISH_ERROR, rc);
        }
        return rc;
    }
    for (int i = 0; i < s->n_active;) {
        struct eng_sched_req *r = s->active[i];
        int err = 0, fin = r->n_rows > 0 ? seq_consume(s, r, &err) : -1;
        if (fin < 0) { i++; continue; }
        int n_new = fin == ENG_SCHED_FINISH_ERROR ? 0 : 1;
        /* The last event hands the request back: retire it first. */
        if (fin != ENG_SCHED_RUNNING) sched_retire(s, i);
        else i++;
        sched_emit(s, r, n_new, (enum eng_sched_finish)fin, err);
    }
    s->stats.step_s = eng_now_s() - t0;
    s->stats.n_steps++;
    return s->batch.n_tok;
}

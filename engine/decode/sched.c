/* sched.c — the continuous-batching step of sched.h, plain and PPD sequences. */
#include "engine/decode/sched.h"

#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/decode/generate.h"
#include "engine/log.h"
#include "engine/load/tokenizer.h"

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
    r->use_ppd = true;
    r->n_top_logprobs = -1;
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
    eng_ppd_seq_free(&r->ppd);   /* a request freed while still inside (see eng_sched_free) */
    free(r->prompt);
    free(r->out_ids);
    free(r->lp_step);
    free(r->lp_prompt);
    free(r);
}

int eng_sched_req_want_logprobs(struct eng_sched_req *r, int n_top, bool prompt) {
    if (n_top < 0 || n_top > ENG_LOGPROBS_MAX_TOP) return ENG_E_RANGE;
    if (!r->lp_step && !(r->lp_step = calloc(ENG_PPD_MAX_PROMPT + 2, sizeof *r->lp_step))) return ENG_E_NOMEM;
    if (prompt && !r->lp_prompt) {
        if (!(r->lp_prompt = calloc((size_t)r->n_prompt, sizeof *r->lp_prompt))) return ENG_E_NOMEM;
        /* the first prompt token has no distribution to come from: only its id */
        for (int i = 0; i < r->n_prompt; i++) r->lp_prompt[i].id = r->prompt[i];
    }
    r->n_top_logprobs = n_top;
    return 0;
}

/* Rows one PPD sequence may need in a step (ppd.h). */
static int sched_ppd_rows_max(const struct eng_ppd *ppd) { return eng_ppd_seq_rows(ppd); }

/* The sizing rule: every step's trees fit (see eng_sched_params). */
static int sched_ppd_check(const struct eng_sched_params *p) {
    if (p->ppd && p->ppd_by_batch) {
        for (int b = 1; b <= p->n_slot; b++) {
            const struct eng_ppd *t = p->ppd_by_batch[b];
            const int per = t ? sched_ppd_rows_max(t) : p->ppd->n_prompt + 1;
            if (b * per > p->max_rows || (t && (t->ad != p->ppd->ad || t->trees.max_T > p->ppd->trees.max_T))) {
                LOG_ERROR("PPD: the tree for %d sequences (%d rows each) does not fit %d rows per step, or is not "
                          "of the same adapter and at most as wide as the widest", b, per, p->max_rows);
                return ENG_E_RANGE;
            }
        }
    } else if (p->ppd) {
        const int per = sched_ppd_rows_max(p->ppd);
        if (per > p->max_rows / p->n_slot) {
            LOG_ERROR("PPD needs %d slots x %d rows (the largest tree) = %d rows per step, but a step has %d: "
                      "raise the rows per step, use fewer slots or a smaller tree", p->n_slot, per,
                      p->n_slot * per, p->max_rows);
            return ENG_E_RANGE;
        }
    }
    return 0;
}

int eng_sched_set_ppd(struct eng_sched *s, const struct eng_ppd *widest, const struct eng_ppd *const *by_batch) {
    if (s->n_active > 0) return ENG_E_BUSY;
    struct eng_sched_params p = s->p;
    p.ppd = widest;
    p.ppd_by_batch = widest ? by_batch : NULL;
    int rc = sched_ppd_check(&p);
    if (rc) return rc;
    s->p = p;
    eng_sched_prefix_clear(s);   /* calibration ran its own steps in the slots */
    return 0;
}

void eng_sched_prefix_clear(struct eng_sched *s) {
    if (!s->pc_len) return;
    memset(s->pc_len, 0, sizeof *s->pc_len * (size_t)s->p.n_slot);
    s->stats.pc_slots = 0;
    s->stats.pc_tokens = 0;
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
    /* Every decoding sequence needs its row in every step; with PPD its whole
     * tree (or the N + 1 rows of its prefill tail). */
    int rc = ENG_E_RANGE;
    if (s->p.n_slot > s->p.max_rows) goto err;
    if (sched_ppd_check(&s->p)) goto err;
    rc = eng_batch_init(&s->batch, s->p.max_rows, s->p.max_rows);
    if (rc) goto err;
    if ((rc = eng_sampler_scratch_init(&s->scratch, f->m->hp.n_vocab))) goto err;
    rc = ENG_E_NOMEM;
    s->pen_logits = malloc(sizeof *s->pen_logits * (size_t)f->m->hp.n_vocab);
    s->active = calloc((size_t)s->p.n_slot, sizeof *s->active);
    s->slot_busy = calloc((size_t)s->p.n_slot, sizeof *s->slot_busy);
    if (!s->pen_logits || !s->active || !s->slot_busy) goto err;
    if (s->p.prefix_cache) {
        s->pc_tok = malloc(sizeof *s->pc_tok * (size_t)s->p.n_slot * (size_t)kv->max_seq);
        s->pc_len = calloc((size_t)s->p.n_slot, sizeof *s->pc_len);
        s->pc_stamp = calloc((size_t)s->p.n_slot, sizeof *s->pc_stamp);
        if (!s->pc_tok || !s->pc_len || !s->pc_stamp) goto err;
        if ((rc = eng_pstore_init(&s->store, kv, s->p.prefix_store_bytes))) goto err;
        s->stats.pc_store_cap = s->store.cap;
        s->stats.pc_store_block_bytes = s->store.cap ? s->store.block_bytes : 0;
    }
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
    free(s->pc_tok);
    free(s->pc_len);
    free(s->pc_stamp);
    eng_pstore_free(&s->store);
    memset(s, 0, sizeof *s);
}

void eng_sched_submit(struct eng_sched *s, struct eng_sched_req *r) {
    r->state = ENG_SEQ_WAITING;
    r->next = NULL;
    r->hold_left = 0;
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
                                 .queue_s = r->t_admit > 0 ? r->t_admit - r->t_submit : 0,
                                 .t_admit = r->t_admit, .t_emit = eng_now_s(), .ppd_steps = r->ppd_steps,
                                 .ppd_drafted = r->ppd_drafted, .ppd_accepted = r->ppd_accepted,
                                 .n_cached = r->n_cached};
    if (n_new > 0 && r->t_first == 0) r->t_first = ev.t_emit;
    ev.t_first = r->t_first;
    if (r->lp_step && n_new > 0) ev.lp = r->lp_step;
    if (r->lp_prompt && n_new > 0 && n_new == r->n_gen) ev.lp_prompt = r->lp_prompt;
    ev.text = eng_textout_take(&r->text, &ev.n_text);
    if (fin != ENG_SCHED_RUNNING) r->state = ENG_SEQ_DONE;
    if (s->p.emit) s->p.emit(s->p.user, &ev);
}

/* Keep the tokens of r's committed KV entries in its slot.  Committed
 * entries are always a prefix of the prompt followed by the delivered tokens
 * (a PPD step commits its root and accepted path in order; tokens a stop
 * string cut off may be committed past what was delivered, and are not kept). */
static void sched_prefix_keep(struct eng_sched *s, const struct eng_sched_req *r) {
    int n = s->kv->len[r->slot];
    if (n > r->n_prompt + r->n_gen) n = r->n_prompt + r->n_gen;
    int32_t *dst = s->pc_tok + (size_t)r->slot * (size_t)s->kv->max_seq;
    const int n_p = n < r->n_prompt ? n : r->n_prompt;
    memcpy(dst, r->prompt, sizeof *dst * (size_t)n_p);
    if (n > n_p) memcpy(dst + n_p, r->out_ids, sizeof *dst * (size_t)(n - n_p));
    s->pc_len[r->slot] = n;
    s->pc_stamp[r->slot] = ++s->pc_clock;
    if (n > 0) {
        s->stats.pc_slots++;
        s->stats.pc_tokens += n;
    }
}

/* Remove an admitted request: free its slot, keep the admission order.
 * keep: its committed entries are valid and stay for the prefix cache. */
static void sched_retire(struct eng_sched *s, int i, bool keep) {
    struct eng_sched_req *r = s->active[i];
    if (r->ppd_on) eng_ppd_seq_free(&r->ppd);
    if (s->pc_len && keep) sched_prefix_keep(s, r);
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
        sched_retire(s, i, true);
        sched_emit(s, r, 0, ENG_SCHED_FINISH_CANCELLED, 0);
    }
}

/* Decide whether r decodes with PPD and set up its sequence state: the same
 * seed, sampler and token limit as the plain path, so the same tokens. */
static void sched_ppd_admit(struct eng_sched *s, struct eng_sched_req *r) {
    r->ppd_on = false;
    if (!s->p.ppd || !r->use_ppd || r->sp.presence_penalty != 0.0f || r->sp.frequency_penalty != 0.0f) return;
    int rc = eng_ppd_seq_init(&r->ppd, s->p.ppd, r->slot, &r->sp, r->max_tokens, s->tok, r->ignore_eog,
                              s->f->m->hp.n_vocab);
    if (rc) {
        LOG_WARN("cannot set up PPD for a request (%s); it decodes plainly", eng_err_msg(rc));
        return;
    }
    if (s->p.ppd_accept == ENG_PPD_ACCEPT_TYPICAL && r->sp.temperature > 0) {
        r->ppd.accept = ENG_PPD_ACCEPT_TYPICAL;
        if (s->p.ppd_typical.eps > 0) r->ppd.typical = s->p.ppd_typical;
    }
    r->ppd.guess_fn = s->p.ppd_guess_fn;
    r->ppd.guess_user = r->user;
    r->ppd_on = true;
    s->stats.ppd_seqs++;
}

/* How many of r's prompt tokens (at most all but the last) the kept entries
 * of free slot `slot` hold. */
static int sched_match_kept(const struct eng_sched *s, int slot, const struct eng_sched_req *r) {
    const int32_t *t = s->pc_tok + (size_t)slot * (size_t)s->kv->max_seq;
    const int lim = s->pc_len[slot] < r->n_prompt - 1 ? s->pc_len[slot] : r->n_prompt - 1;
    int n = 0;
    while (n < lim && t[n] == r->prompt[n]) n++;
    return n;
}

/* The same for admitted sequence a: its committed entries (prompt, then
 * delivered tokens), or with `planned` its whole prompt, committed or not. */
static int sched_match_active(const struct eng_sched *s, const struct eng_sched_req *a,
                              const struct eng_sched_req *r, bool planned) {
    int lim = planned ? a->n_prompt : s->kv->len[a->slot];
    if (lim > a->n_prompt + a->n_gen) lim = a->n_prompt + a->n_gen;
    if (lim > r->n_prompt - 1) lim = r->n_prompt - 1;
    int n = 0;
    while (n < lim && (n < a->n_prompt ? a->prompt[n] : a->out_ids[n - a->n_prompt]) == r->prompt[n]) n++;
    return n;
}

/* Whether r waits (see the design note): a sequence still prefilling will
 * hold at least ENG_SCHED_HOLD_MIN more of r's prompt than the cache and
 * the running sequences hold now; once held, r waits until nothing more is
 * to come.  A hold is given a number of steps when it starts (twice what the
 * prefill needs at full chunks, plus two) and never outlasts them, so a
 * stalled prefill cannot starve r. */
static bool sched_hold(struct eng_sched *s, struct eng_sched_req *r) {
    if (!s->pc_len || r->lp_prompt || r->hold_left < 0) return false;
    int now = 0, planned = 0;
    for (int slot = 0; slot < s->p.n_slot; slot++) {
        if (s->slot_busy[slot]) continue;
        const int n = sched_match_kept(s, slot, r);
        if (n > now) now = n;
    }
    for (int i = 0; i < s->n_active; i++) {
        const struct eng_sched_req *a = s->active[i];
        int n = sched_match_active(s, a, r, false);
        if (n > now) now = n;
        if (a->state != ENG_SEQ_PREFILL) continue;
        n = sched_match_active(s, a, r, true);
        if (n > planned) planned = n;
    }
    const int stored = eng_pstore_peek(&s->store, r->prompt, r->n_prompt - 1) * ENG_PSTORE_BLOCK;
    if (stored > now) now = stored;
    if (planned - now < (r->hold_left > 0 ? 1 : ENG_SCHED_HOLD_MIN)) {
        r->hold_left = -1;   /* nothing worth waiting for: admit, and never hold it again */
        return false;
    }
    if (r->hold_left == 0) {   /* the first step held */
        const int chunk = s->p.prefill_chunk;
        r->hold_left = 2 * ((planned - now + chunk - 1) / chunk) + 2;
        s->stats.pc_held++;
    }
    if (--r->hold_left == 0) r->hold_left = -1;   /* its last step held */
    return true;
}

/* The block store's figures into the stats. */
static void sched_store_stats(struct eng_sched *s) {
    s->stats.pc_store_blocks = s->store.n_used;
    s->stats.pc_store_saved = s->store.n_stored;
    s->stats.pc_store_evicted = s->store.n_evicted;
}

/* Free slot `slot` is about to be overwritten past its first `reuse`
 * entries: when a full block of its kept entries reaches past them, its kept
 * blocks go to the block store first (those held already are skipped), so
 * they stay whole chains from block 0. */
static void sched_store_kept(struct eng_sched *s, int slot, int reuse) {
    const int n = s->pc_len[slot];
    if (s->store.cap == 0 || n / ENG_PSTORE_BLOCK * ENG_PSTORE_BLOCK <= reuse) return;
    eng_pstore_save(&s->store, slot, s->pc_tok + (size_t)slot * (size_t)s->kv->max_seq, n);
    sched_store_stats(s);
}

/* A free slot for r, and how many of its prompt tokens it holds once
 * admitted: from its kept entries, a running sequence's or the block store's
 * (see the design note). */
static int sched_pick_slot(struct eng_sched *s, const struct eng_sched_req *r, int *n_hit) {
    *n_hit = 0;
    if (!s->pc_len) {
        int slot = 0;
        while (s->slot_busy[slot]) slot++;
        return slot;
    }
    const bool lookup = !r->lp_prompt;
    int best = -1, best_n = -1;
    for (int slot = 0; slot < s->p.n_slot; slot++) {
        if (s->slot_busy[slot]) continue;
        const int n = lookup ? sched_match_kept(s, slot, r) : 0;
        if (n > best_n || (n == best_n && s->pc_stamp[slot] < s->pc_stamp[best])) {
            best = slot;
            best_n = n;
        }
    }
    /* A running sequence may hold a longer match in its committed entries
     * (the same system prompt, admitted a moment ago): copy them over. */
    int src = -1, src_n = 0;
    for (int i = 0; lookup && i < s->n_active; i++) {
        const int n = sched_match_active(s, s->active[i], r, false);
        if (n > src_n) { src = s->active[i]->slot; src_n = n; }
    }
    /* The block store's longest chain, pinned until it is copied or dropped
     * (never the prompt's last token: at most n_prompt - 1 entries). */
    const int st_n = lookup ? eng_pstore_match(&s->store, r->prompt, r->n_prompt - 1) * ENG_PSTORE_BLOCK : 0;
    /* A short match (a chat template's system prompt) would throw away more
     * kept entries than it reuses, and a copy needs no kept entries: an
     * empty slot serves better while there is one. */
    if (best_n < s->pc_len[best] - best_n || src_n > best_n || st_n > best_n)
        for (int slot = 0; slot < s->p.n_slot; slot++)
            if (!s->slot_busy[slot] && s->pc_len[slot] == 0) { best = slot; best_n = 0; break; }
    sched_store_kept(s, best, best_n);
    if (src_n > best_n && src_n >= st_n) {   /* a tie goes to the copy: one call per layer */
        const struct eng_kv *kv = s->kv;
        const size_t bytes = sizeof(float) * (size_t)src_n * (size_t)kv->kv_dim;
        for (int l = 0; l < kv->n_layer; l++) {
            const size_t d = eng_kv_offset(kv, l, best, 0), o = eng_kv_offset(kv, l, src, 0);
            kv->be->iface->buf_copy(kv->be->ctx, kv->k + d, kv->k + o, bytes);
            kv->be->iface->buf_copy(kv->be->ctx, kv->v + d, kv->v + o, bytes);
        }
        best_n = src_n;
    } else if (st_n > best_n) {   /* the blocks past those the slot holds */
        eng_pstore_take(&s->store, best, best_n / ENG_PSTORE_BLOCK, st_n / ENG_PSTORE_BLOCK);
        best_n = st_n;
        s->stats.pc_store_hits += st_n;
    }
    eng_pstore_drop(&s->store);
    if (lookup) {
        s->stats.pc_queries += r->n_prompt;
        s->stats.pc_hits += best_n;
    }
    if (s->pc_len[best] > 0) {   /* the slot is taken: its entries are no longer kept */
        s->stats.pc_slots--;
        s->stats.pc_tokens -= s->pc_len[best];
        s->pc_len[best] = 0;
    }
    *n_hit = best_n;
    return best;
}

/* Admit waiting requests into free slots in arrival order; a request held
 * back (sched_hold) keeps its place and those behind it go first. */
static void sched_admit(struct eng_sched *s) {
    for (struct eng_sched_req **pp = &s->wait_head, *prev = NULL; *pp && s->n_active < s->p.n_slot;) {
        struct eng_sched_req *r = *pp;
        if (sched_hold(s, r)) { prev = r; pp = &r->next; continue; }
        *pp = r->next;
        if (s->wait_tail == r) s->wait_tail = prev;
        s->n_waiting--;
        int n_hit = 0, slot = sched_pick_slot(s, r, &n_hit);
        s->slot_busy[slot] = true;
        r->slot = slot;
        r->state = ENG_SEQ_PREFILL;
        r->n_prefilled = n_hit;
        r->n_cached = n_hit;
        r->n_gen = 0;
        r->t_admit = eng_now_s();
        r->t_first = 0;
        r->ppd_steps = r->ppd_drafted = r->ppd_accepted = 0;
        eng_rng_seed(&r->rng, r->sp.seed);
        sched_ppd_admit(s, r);
        s->kv->len[slot] = n_hit;
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

/* The next prompt chunk of n rows; logits only when it ends the prompt (a
 * PPD sequence's chunks stop before the last token: see seq_prefill_left). */
static int seq_add_prefill(struct eng_sched *s, struct eng_sched_req *r, int n) {
    r->row0 = s->batch.n_tok;
    r->n_rows = n;
    int rc = eng_batch_add_causal(&s->batch, r->slot, s->kv->len[r->slot], r->prompt + r->n_prefilled, n,
                                  !r->ppd_on && r->n_prefilled + n == r->n_prompt);
    if (!rc && r->lp_prompt)   /* prompt logprobs: every row's logits */
        for (int i = 0; i < n; i++) s->batch.want_logits[r->row0 + i] = true;
    return rc;
}

/* Prompt logprobs of the chunk just run: the row of prompt token j holds the
 * distribution of token j + 1. */
static void seq_prompt_logprobs(struct eng_sched *s, struct eng_sched_req *r) {
    if (!r->lp_prompt) return;
    const int n_vocab = s->f->m->hp.n_vocab;
    for (int i = 0; i < r->n_rows; i++) {
        const int j = r->n_prefilled + i, lrow = s->f->row_logit[r->row0 + i];
        if (j + 1 >= r->n_prompt || lrow < 0) continue;
        eng_logprobs_compute(s->f->logits + (size_t)lrow * (size_t)n_vocab, n_vocab, r->prompt[j + 1],
                             r->n_top_logprobs, &r->lp_prompt[j + 1]);
    }
}

/* The logprobs entry of the k-th token delivered this step, chosen from the
 * logits of batch row `row`. */
static void seq_token_logprobs(struct eng_sched *s, struct eng_sched_req *r, int k, int row, int32_t id) {
    if (!r->lp_step) return;
    const int n_vocab = s->f->m->hp.n_vocab, lrow = s->f->row_logit[row];
    eng_logprobs_compute(s->f->logits + (size_t)lrow * (size_t)n_vocab, n_vocab, id, r->n_top_logprobs,
                         &r->lp_step[k]);
}

/* Prompt tokens still to go through ordinary chunks: all of them for plain
 * decoding, all but the last for PPD (the last goes with the prompt rows). */
static int seq_prefill_left(const struct eng_sched_req *r) {
    return r->n_prompt - (r->ppd_on ? 1 : 0) - r->n_prefilled;
}

/* A PPD sequence's rows: the prefill tail (with whatever prompt tokens are
 * still to go) once the chunks before it are done, then one tree per step.
 * Leaves r->n_rows = 0 when nothing was added. */
static int seq_add_ppd(struct eng_sched *s, struct eng_sched_req *r) {
    const int before = s->batch.n_tok;
    r->row0 = before;
    int rc = r->state == ENG_SEQ_PREFILL
                 ? eng_ppd_seq_prefill_add(&r->ppd, &s->batch, s->kv, r->prompt + r->n_prefilled,
                                           r->n_prompt - r->n_prefilled)
                 : eng_ppd_seq_step_add(&r->ppd, &s->batch, s->kv);
    r->n_rows = s->batch.n_tok - before;
    r->ppd_depth = r->ppd.pending == 3 ? 0 : r->ppd.ppd->trees.st[r->ppd.d].D;
    return rc;
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

/* Deliver one new token: record, detokenize, and check the end conditions in
 * the order plain decoding always has.  Returns the finish (RUNNING: go on). */
static int seq_deliver(struct eng_sched *s, struct eng_sched_req *r, int32_t id) {
    r->out_ids[r->n_gen++] = id;
    bool stopped = eng_textout_push(&r->text, id);
    if (!r->ignore_eog && tok_is_eog(s->tok, id)) return ENG_SCHED_FINISH_EOG;
    if (stopped) return ENG_SCHED_FINISH_STOP;
    if (r->n_gen >= r->max_tokens) return ENG_SCHED_FINISH_LENGTH;
    return ENG_SCHED_RUNNING;
}

/* The slot cannot take the next token's row: the same test after one token
 * (plain) or after a PPD step's last token, since a step's earlier tokens
 * sit inside its tree, which fitted in the slot. */
static int seq_check_context(const struct eng_sched *s, const struct eng_sched_req *r, int fin) {
    if (fin == ENG_SCHED_RUNNING && s->kv->len[r->slot] + 1 > s->kv->max_seq) return ENG_SCHED_FINISH_CONTEXT;
    return fin;
}

/* Count a finished PPD step (see eng_sched_stats). */
static void sched_ppd_count(struct eng_sched *s, struct eng_sched_req *r, int n_out) {
    struct eng_sched_stats *st = &s->stats;
    const int acc = r->ppd.last_acc - 1;
    st->ppd_steps++;
    st->ppd_draft_tokens += r->ppd_depth;
    st->ppd_emitted += n_out;
    if (n_out >= 0 && n_out <= ENG_PPD_MAX_PROMPT + 1) st->ppd_hist[n_out]++;
    for (int i = 1; i <= acc && i <= ENG_PPD_MAX_PROMPT; i++) st->ppd_accepted_pos[i]++;
    st->ppd_accepted += acc;
    r->ppd_steps++;
    r->ppd_drafted += r->ppd_depth;
    r->ppd_accepted += acc;
}

/* A PPD sequence after the forward pass: commit its rows (ppd.c moves the
 * KV length itself for the tail and the trees), then deliver the step's
 * tokens in order until one finishes the request; the rest are dropped. */
static int seq_consume_ppd(struct eng_sched *s, struct eng_sched_req *r, int *n_new, int *err) {
    if (r->state == ENG_SEQ_PREFILL && r->ppd.pending != 1) {   /* an ordinary chunk */
        seq_prompt_logprobs(s, r);
        s->kv->len[r->slot] += r->n_rows;
        r->n_prefilled += r->n_rows;
        return -1;
    }
    int32_t toks[ENG_PPD_MAX_PROMPT + 2];
    int n_out = 0, rc;
    if (r->state == ENG_SEQ_PREFILL) {
        rc = eng_ppd_seq_prefill_finish(&r->ppd, s->f, s->kv, toks, &n_out);
        r->n_prefilled = r->n_prompt;
        r->state = ENG_SEQ_DECODE;
    } else {
        rc = eng_ppd_seq_step_finish(&r->ppd, s->f, s->kv, toks, &n_out);
        if (!rc) sched_ppd_count(s, r, n_out);
    }
    if (rc) { *err = rc; return ENG_SCHED_FINISH_ERROR; }
    int fin = ENG_SCHED_RUNNING;
    for (int i = 0; i < n_out && fin == ENG_SCHED_RUNNING; i++) {
        seq_token_logprobs(s, r, *n_new, r->ppd.emit_row[i], toks[i]);
        fin = seq_deliver(s, r, toks[i]);
        (*n_new)++;
    }
    /* ppd.c stops at end-of-generation and max_tokens exactly as the checks
     * above do, so a finished sequence has always been finished here too. */
    if (fin == ENG_SCHED_RUNNING && r->ppd.done) fin = ENG_SCHED_FINISH_LENGTH;
    return seq_check_context(s, r, fin);
}

/* After the forward pass: commit this step's rows, and when they carried
 * logits, sample and deliver.  Returns -1 when there is nothing to emit (a
 * prompt chunk that does not end the prompt), else the finish to emit with
 * *n_new new tokens (ERROR: the sampler failed, *err holds its code). */
static int seq_consume(struct eng_sched *s, struct eng_sched_req *r, int *n_new, int *err) {
    *n_new = 0;
    if (r->ppd_on) return seq_consume_ppd(s, r, n_new, err);
    if (r->state == ENG_SEQ_PREFILL) seq_prompt_logprobs(s, r);
    s->kv->len[r->slot] += r->n_rows;
    if (r->state == ENG_SEQ_PREFILL) {
        r->n_prefilled += r->n_rows;
        if (r->n_prefilled < r->n_prompt) return -1;
        r->state = ENG_SEQ_DECODE;
    }
    int lrow = s->f->row_logit[r->row0 + r->n_rows - 1];
    int32_t id = seq_sample(s, r, lrow);
    if (id < 0) { *err = id; return ENG_SCHED_FINISH_ERROR; }
    seq_token_logprobs(s, r, 0, r->row0 + r->n_rows - 1, id);
    *n_new = 1;
    return seq_check_context(s, r, seq_deliver(s, r, id));
}

int eng_sched_step(struct eng_sched *s) {
    double t0 = eng_now_s();
    sched_drop_cancelled(s);
    sched_admit(s);
    const double t_admitted = eng_now_s();
    eng_batch_clear(&s->batch);
    int n_decode = 0, n_prefill = 0;
    /* The tree of this step: chosen for the sequences that hold slots now. */
    const struct eng_ppd *tree = s->p.ppd;
    bool plain_step = false;
    if (s->p.ppd_by_batch && s->n_active > 0) {
        tree = s->p.ppd_by_batch[s->n_active];
        plain_step = tree == NULL;
    }
    for (int i = 0; i < s->n_active; i++) {
        struct eng_sched_req *r = s->active[i];
        r->n_rows = 0;
        r->add_err = 0;
        if (r->ppd_on) {
            r->ppd.plain_next = plain_step;
            if (tree) r->ppd.ppd = tree;
        }
        if (r->state == ENG_SEQ_DECODE) {
            if (r->ppd_on) r->add_err = seq_add_ppd(s, r);
            else if (seq_add_decode(s, r)) return ENG_E_INTERNAL;
            n_decode++;
        } else {
            n_prefill++;
        }
    }
    /* What is left is shared evenly by the prefilling sequences, in admission
     * order; a share a sequence does not need goes to those after it.  A PPD
     * prefill tail is one unit of N + 1 rows (the sizing rule of init makes
     * every share at least that large); when the prompt's last chunk fits in
     * the share with it, they go as one run, saving a step before the first
     * token (rows do not depend on how the prompt was cut). */
    int budget = s->p.max_rows - s->batch.n_tok, left = n_prefill;
    for (int i = 0; i < s->n_active && budget > 0; i++) {
        struct eng_sched_req *r = s->active[i];
        if (r->state != ENG_SEQ_PREFILL) continue;
        int share = budget / left > 0 ? budget / left : 1;
        int n = seq_prefill_left(r);
        const int tail = r->ppd_on ? r->ppd.ppd->n_prompt + 1 : 0;
        const int lim = share < s->p.prefill_chunk ? share : s->p.prefill_chunk;
        if (n == 0 || (r->ppd_on && !r->lp_prompt && n + tail <= lim)) {   /* PPD: the tail */
            r->add_err = seq_add_ppd(s, r);
            if (r->add_err == ENG_E_RANGE) r->add_err = 0;   /* no room this step: it waits */
        } else {
            if (n > share) n = share;
            if (n > s->p.prefill_chunk) n = s->p.prefill_chunk;
            if (seq_add_prefill(s, r, n)) return ENG_E_INTERNAL;
        }
        budget -= r->n_rows;
        left--;
    }
    /* Sequences whose rows could not be added end here: a decoding slot is
     * full (ppd.c's ENG_E_TOO_LONG; the context check after each step
     * normally catches it first), or a prompt does not fit its slot, or ppd.c
     * refused (errors). */
    for (int i = 0; i < s->n_active;) {
        struct eng_sched_req *r = s->active[i];
        int e = r->add_err;
        if (!e || e == ENG_E_RANGE) { i++; continue; }
        bool full = e == ENG_E_TOO_LONG && r->state == ENG_SEQ_DECODE;
        sched_retire(s, i, false);
        if (full) sched_emit(s, r, 0, ENG_SCHED_FINISH_CONTEXT, 0);
        else sched_emit(s, r, 0, ENG_SCHED_FINISH_ERROR, e);
    }
    s->stats.n_rows = s->batch.n_tok;
    s->stats.n_decode = n_decode;
    s->stats.n_prefill = n_prefill;
    if (s->batch.n_tok == 0) return 0;
    const float *extra = s->p.ppd ? s->p.ppd->ad->emb : NULL;
    const double t_forward = eng_now_s();
    int rc = eng_forward_run_deep(s->f, &s->batch, s->kv, extra, s->p.ppd ? s->p.ppd->n_prompt : 0,
                                  s->p.ppd ? s->p.ppd->ad->deep : NULL, s->p.ppd ? s->p.ppd->ad->n_deep : 0);
    const double t_forwarded = eng_now_s();
    if (rc) {
        for (int i = 0; i < s->n_active;) {
            struct eng_sched_req *r = s->active[i];
            if (r->n_rows == 0) { i++; continue; }
            sched_retire(s, i, false);
            sched_emit(s, r, 0, ENG_SCHED_FINISH_ERROR, rc);
        }
        return rc;
    }
    for (int i = 0; i < s->n_active;) {
        struct eng_sched_req *r = s->active[i];
        int err = 0, n_new = 0, fin = r->n_rows > 0 ? seq_consume(s, r, &n_new, &err) : -1;
        if (fin < 0) { i++; continue; }
        if (fin == ENG_SCHED_FINISH_ERROR) n_new = 0;
        /* The last event hands the request back: retire it first. */
        if (fin != ENG_SCHED_RUNNING) sched_retire(s, i, fin != ENG_SCHED_FINISH_ERROR);
        else i++;
        sched_emit(s, r, n_new, (enum eng_sched_finish)fin, err);
    }
    s->stats.step_s = eng_now_s() - t0;
    s->stats.n_steps++;
    LOG_DEBUG("step %lld: %d rows (%d decoding, %d prefilling); admission %.2f ms, rows %.2f ms, forward %.2f ms, "
              "results %.2f ms", s->stats.n_steps, s->batch.n_tok, n_decode, n_prefill,
              (t_admitted - t0) * 1e3, (t_forward - t_admitted) * 1e3, (t_forwarded - t_forward) * 1e3,
              (s->stats.step_s - (t_forwarded - t0)) * 1e3);
    return s->batch.n_tok;
}

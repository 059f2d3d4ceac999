/* events.c — what the engine thread hands the loop thread: the scheduler's
 * events become srv_events in the outbox, and each step ends with a stats
 * event and one wake-up of the loop.
 *
 * The engine thread itself is engine/decode/runner.c; this file gives it the
 * server's scheduler settings and the callbacks.  Events of one step are
 * collected into a list on the engine thread and pushed with one lock and
 * one uv_async_send.  An event is malloc'd here and freed by the loop thread;
 * the scheduler itself never allocates.
 *
 * Not here: HTTP, JSON, metrics arithmetic (the loop thread does those).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "engine/decode/prefix_store.h"
#include "engine/err.h"
#include "engine/log.h"
#include "engine/model/kv_cache.h"
#include "serve.h"

static void events_append(struct srv *s, struct srv_event *ev) {
    ev->node.next = NULL;
    if (s->step_last) s->step_last->next = &ev->node;
    else s->step_first = &ev->node;
    s->step_last = &ev->node;
}

/* A malloc'd copy of n entries (NULL when there are none, or on out of memory). */
static struct eng_logprob *events_copy_lp(const struct eng_logprob *lp, int n) {
    if (!lp || n <= 0) return NULL;
    struct eng_logprob *c = malloc(sizeof *c * (size_t)n);
    if (c) memcpy(c, lp, sizeof *c * (size_t)n);
    return c;
}

static void events_on_event(void *user, const struct eng_sched_event *e) {
    struct srv *s = user;
    struct srv_choice *c = e->req->user;
    struct srv_event *ev = malloc(sizeof *ev + e->n_text + 1);
    size_t n_text = e->n_text;
    struct eng_logprob *lp = events_copy_lp(e->lp, e->n_ids), *lp_prompt = events_copy_lp(e->lp_prompt, e->n_prompt);
    if (ev && ((e->lp && e->n_ids > 0 && !lp) || (e->lp_prompt && !lp_prompt))) {
        free(ev);   /* logprobs asked for and lost: handled as lost text */
        ev = NULL;
    }
    if (!ev) {
        free(lp);
        free(lp_prompt);
        lp = lp_prompt = NULL;
        if (e->finish == ENG_SCHED_RUNNING) {
            /* This step's text is lost; cancel rather than send a stream
             * with a hole in it.  The final event will use the spare. */
            LOG_ERROR("out of memory: cancelling a request whose text could not be passed on");
            atomic_store(&e->req->cancel, true);
            return;
        }
        /* The final event must arrive, or the request would never be freed:
         * it travels in the carrier allocated with the request, without text. */
        ev = c->spare;
        n_text = 0;
    }
    memset(ev, 0, sizeof *ev);
    ev->kind = SRV_EV_SEQ;
    ev->choice = c;
    ev->lp = lp;
    ev->n_lp = lp ? e->n_ids : 0;
    ev->lp_prompt = lp_prompt;
    ev->t_admit = e->t_admit;
    ev->t_first = e->t_first;
    ev->t_emit = e->t_emit;
    ev->ppd_steps = e->ppd_steps;
    ev->ppd_drafted = e->ppd_drafted;
    ev->ppd_accepted = e->ppd_accepted;
    ev->n_cached = e->n_cached;
    ev->finish = e->finish;
    ev->err = e->err;
    ev->n_ids = e->n_ids;
    ev->n_prompt = e->n_prompt;
    ev->n_gen = e->n_gen;
    ev->queue_s = e->queue_s;
    ev->n_text = n_text;
    memcpy(ev->text, e->text, n_text);
    ev->text[n_text] = 0;
    events_append(s, ev);
}

/* After every step: the stats event, then the whole step's list to the loop. */
static void events_on_step(void *user, int rc) {
    struct srv *s = user;
    const struct eng_sched *sc = &s->runner.sched;
    struct srv_event *st = calloc(1, sizeof *st + 1);
    if (st) {
        st->kind = SRV_EV_STATS;
        st->n_running = eng_sched_n_running(sc);
        st->n_waiting = eng_sched_n_waiting(sc);
        st->n_rows = rc > 0 ? rc : 0;
        st->kv_used = eng_sched_kv_used(sc);
        st->kv_total = eng_sched_kv_total(sc);
        st->step_s = sc->stats.step_s;
        st->stats = sc->stats;
        events_append(s, st);
    }
    if (s->step_first) srv_queue_push_list(&s->outbox, s->step_first, s->step_last);
    s->step_first = s->step_last = NULL;
    uv_async_send(&s->wake);
}

static void events_prepare(void *user) { srv_calibrate(user); }

int srv_engine_start(struct srv *s) {
    struct eng_sched_params p = {.n_slot = (int)s->cfg.n_parallel, .max_rows = (int)s->cfg.batch,
                                 .prefill_chunk = (int)s->cfg.prefill_chunk, .emit = events_on_event, .user = s};
    if (s->ppd.src != ENG_PPD_OFF) {
        p.ppd = &s->ppd.ppd;
        p.ppd_accept = strcmp(s->cfg.ppd_accept, "typical") ? ENG_PPD_ACCEPT_EXACT : ENG_PPD_ACCEPT_TYPICAL;
    }
    /* The prefix cache relies on rows that do not depend on the batch, which
     * the CPU backend guarantees; CUDA's kernels are not checked for it. */
    p.prefix_cache = !strcmp(s->cfg.prefix_cache, "on") && !strcmp(s->eng->be.iface->name, "cpu");
    if (!strcmp(s->cfg.prefix_cache, "on") && !p.prefix_cache)
        LOG_INFO("prefix cache: off on the %s backend", s->eng->be.iface->name);
    if (p.prefix_cache) {
        const struct eng_kv *kv = &s->eng->kv;
        p.prefix_store_bytes = s->cfg.prefix_cache_mb >= 0 ? (size_t)s->cfg.prefix_cache_mb << 20
                                                           : eng_kv_bytes(kv->n_layer, kv->n_slot, kv->max_seq, kv->kv_dim) / 4;
        const size_t block = eng_pstore_block_bytes(kv);
        LOG_INFO("prefix cache: the slots, and a block store of %zu blocks of %d tokens (%.1f MB)",
                 p.prefix_store_bytes / block, ENG_PSTORE_BLOCK, (double)(p.prefix_store_bytes / block * block) / 1048576.0);
    }
    const struct eng_runner_hooks h = {.prepare = events_prepare, .step_done = events_on_step, .user = s};
    int rc = eng_runner_start(&s->runner, &s->eng->fwd, &s->eng->kv, s->eng->tok, &p, &h);
    if (rc) return rc;
    s->runner_started = true;
    return 0;
}

void srv_engine_stop(struct srv *s) {
    if (!s->runner_started) return;
    eng_runner_stop(&s->runner);
    s->runner_started = false;
}

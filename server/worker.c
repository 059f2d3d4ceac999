/* worker.c — the engine thread: drain the inbox into the scheduler, run one
 * step, post what it produced to the outbox, wake the loop.
 *
 * It sleeps on the inbox only when the scheduler is idle.  Events of one step
 * are collected into a local list and pushed with one lock and one
 * uv_async_send, followed by one stats event.  An event is malloc'd here and
 * freed by the loop thread; the scheduler itself never allocates.
 *
 * Not here: HTTP, JSON, metrics arithmetic (the loop thread does those).
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/log.h"
#include "serve.h"

struct worker_batch {
    struct srv_qnode *first, *last;
};

static void worker_append(struct worker_batch *wb, struct srv_event *ev) {
    ev->node.next = NULL;
    if (wb->last) wb->last->next = &ev->node;
    else wb->first = &ev->node;
    wb->last = &ev->node;
}

static struct worker_batch *worker_cur;   /* the batch of the step running (engine thread) */

/* A malloc'd copy of n entries (NULL when there are none, or on out of memory). */
static struct eng_logprob *worker_copy_lp(const struct eng_logprob *lp, int n) {
    if (!lp || n <= 0) return NULL;
    struct eng_logprob *c = malloc(sizeof *c * (size_t)n);
    if (c) memcpy(c, lp, sizeof *c * (size_t)n);
    return c;
}

static void worker_on_event(void *user, const struct eng_sched_event *e) {
    (void)user;
    struct srv_choice *c = e->req->user;
    struct srv_event *ev = malloc(sizeof *ev + e->n_text + 1);
    size_t n_text = e->n_text;
    struct eng_logprob *lp = worker_copy_lp(e->lp, e->n_ids), *lp_prompt = worker_copy_lp(e->lp_prompt, e->n_prompt);
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
    worker_append(worker_cur, ev);
}

static void *worker_main(void *arg) {
    struct srv *s = arg;
    srv_calibrate(s);   /* before the first step; requests wait in the inbox meanwhile */
    for (;;) {
        bool closed;
        struct srv_qnode *n = srv_queue_wait(&s->inbox, !eng_sched_idle(&s->sched), &closed);
        while (n) {
            struct srv_qnode *next = n->next;
            struct eng_sched_req *job = ((struct srv_choice *)((char *)n - offsetof(struct srv_choice, submit)))->job;
            eng_sched_submit(&s->sched, job);
            n = next;
        }
        if (eng_sched_idle(&s->sched)) {
            if (closed) break;
            continue;
        }
        struct worker_batch wb = {0};
        worker_cur = &wb;
        int rc = eng_sched_step(&s->sched);
        worker_cur = NULL;
        if (rc < 0) LOG_ERROR("engine step failed: %s", eng_err_msg(rc));
        struct srv_event *st = calloc(1, sizeof *st + 1);
        if (st) {
            st->kind = SRV_EV_STATS;
            st->n_running = eng_sched_n_running(&s->sched);
            st->n_waiting = eng_sched_n_waiting(&s->sched);
            st->n_rows = rc > 0 ? rc : 0;
            st->kv_used = eng_sched_kv_used(&s->sched);
            st->kv_total = eng_sched_kv_total(&s->sched);
            st->step_s = s->sched.stats.step_s;
            st->stats = s->sched.stats;
            worker_append(&wb, st);
        }
        srv_queue_push_list(&s->outbox, wb.first, wb.last);
        uv_async_send(&s->wake);
    }
    return NULL;
}

int srv_worker_start(struct srv *s) {
    struct eng_sched_params p = {.n_slot = (int)s->cfg.n_parallel, .max_rows = (int)s->cfg.batch,
                                 .prefill_chunk = (int)s->cfg.prefill_chunk, .emit = worker_on_event, .user = s};
    if (s->ppd.src != ENG_PPD_OFF) {
        p.ppd = &s->ppd.ppd;
        p.ppd_accept = strcmp(s->cfg.ppd_accept, "typical") ? ENG_PPD_ACCEPT_EXACT : ENG_PPD_ACCEPT_TYPICAL;
    }
    /* The prefix cache relies on rows that do not depend on the batch, which
     * the CPU backend guarantees; CUDA's kernels are not checked for it. */
    p.prefix_cache = !strcmp(s->cfg.prefix_cache, "on") && !strcmp(s->eng->be.iface->name, "cpu");
    if (!strcmp(s->cfg.prefix_cache, "on") && !p.prefix_cache)
        LOG_INFO("prefix cache: off on the %s backend", s->eng->be.iface->name);
    int rc = eng_sched_init(&s->sched, &s->eng->fwd, &s->eng->kv, s->eng->tok, &p);
    if (rc) return rc;
    if (pthread_create(&s->worker, NULL, worker_main, s)) {
        eng_sched_free(&s->sched);
        return ENG_E_NOMEM;
    }
    s->worker_started = true;
    return 0;
}

void srv_worker_stop(struct srv *s) {
    if (!s->worker_started) return;
    srv_queue_close(&s->inbox);
    pthread_join(s->worker, NULL);
    s->worker_started = false;
    eng_sched_free(&s->sched);
}

/* runner.c — the engine thread (runner.h): drain the inbox into the
 * scheduler, run one step, tell the caller, repeat; sleep only when idle. */
#include <string.h>

#include "engine/err.h"
#include "engine/log.h"
#include "engine/decode/runner.h"

/* Take the whole inbox, sleeping while it is empty unless the scheduler has
 * work.  *closed reports that eng_runner_stop was called. */
static struct eng_sched_req *runner_take(struct eng_runner *r, bool busy, bool *closed) {
    pthread_mutex_lock(&r->mu);
    while (!busy && !r->in_head && !r->closed) pthread_cond_wait(&r->cv, &r->mu);
    struct eng_sched_req *first = r->in_head;
    r->in_head = r->in_tail = NULL;
    *closed = r->closed;
    pthread_mutex_unlock(&r->mu);
    return first;
}

static void *runner_main(void *arg) {
    struct eng_runner *r = arg;
    if (r->hooks.prepare) r->hooks.prepare(r->hooks.user);
    for (;;) {
        bool closed;
        struct eng_sched_req *q = runner_take(r, !eng_sched_idle(&r->sched), &closed);
        while (q) {
            struct eng_sched_req *next = q->next;   /* eng_sched_submit reuses the link */
            eng_sched_submit(&r->sched, q);
            q = next;
        }
        if (eng_sched_idle(&r->sched)) {
            if (closed) break;
            continue;
        }
        int rc = eng_sched_step(&r->sched);
        if (rc < 0) LOG_ERROR("engine step failed: %s", eng_err_msg(rc));
        if (r->hooks.step_done) r->hooks.step_done(r->hooks.user, rc);
    }
    return NULL;
}

int eng_runner_start(struct eng_runner *r, struct eng_forward *fwd, struct eng_kv *kv, const struct tok *tok,
                     const struct eng_sched_params *p, const struct eng_runner_hooks *hooks) {
    memset(r, 0, sizeof *r);
    if (hooks) r->hooks = *hooks;
    int rc = eng_sched_init(&r->sched, fwd, kv, tok, p);
    if (rc) return rc;
    if (pthread_mutex_init(&r->mu, NULL)) goto fail_sched;
    if (pthread_cond_init(&r->cv, NULL)) goto fail_mu;
    if (pthread_create(&r->thread, NULL, runner_main, r)) goto fail_cv;
    r->started = true;
    return 0;
fail_cv:
    pthread_cond_destroy(&r->cv);
fail_mu:
    pthread_mutex_destroy(&r->mu);
fail_sched:
    eng_sched_free(&r->sched);
    return ENG_E_NOMEM;
}

void eng_runner_submit(struct eng_runner *r, struct eng_sched_req *const *reqs, int n) {
    if (n <= 0) return;
    for (int i = 0; i < n; i++) reqs[i]->next = i + 1 < n ? reqs[i + 1] : NULL;
    pthread_mutex_lock(&r->mu);
    if (r->in_tail) r->in_tail->next = reqs[0];
    else r->in_head = reqs[0];
    r->in_tail = reqs[n - 1];
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

void eng_runner_stop(struct eng_runner *r) {
    if (!r->started) return;
    pthread_mutex_lock(&r->mu);
    r->closed = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    eng_sched_free(&r->sched);
    r->started = false;
}

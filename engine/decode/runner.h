/* runner.h — the engine thread: a scheduler stepped on a thread of its own,
 * fed through a mutex-protected inbox, reporting through callbacks.
 *
 * Any thread submits requests (eng_runner_submit); the engine thread moves
 * them into the scheduler between steps, runs one step, and then calls
 * hooks.step_done.  Everything a step produces reaches the caller through the
 * scheduler's own emit callback (eng_sched_params.emit), called on the engine
 * thread during the step; step_done follows it, so a caller that collects a
 * step's events there can hand them on together.  The thread sleeps only when
 * the scheduler has nothing to do.
 *
 * Between start and stop the scheduler (runner.sched) belongs to the engine
 * thread: callbacks may read it, other threads may not.  A submitted request
 * belongs to the scheduler until its final event; only its atomic cancel flag
 * may be touched meanwhile.
 *
 * Not here: what the caller does with events (the HTTP server, for one), the
 * scheduling itself (sched.h).
 */
#ifndef PPD_ENGINE_RUNNER_H
#define PPD_ENGINE_RUNNER_H

#include <pthread.h>
#include <stdbool.h>

#include "engine/decode/sched.h"

struct eng_runner_hooks {
    /* Once, on the engine thread, before the first step; submissions wait in
     * the inbox meanwhile (the server calibrates here).  May be NULL. */
    void (*prepare)(void *user);
    /* After every step, on the engine thread; rc is the step's result (rows
     * run, or an ENG_E_* code, already logged).  May be NULL. */
    void (*step_done)(void *user, int rc);
    void *user;
};

struct eng_runner {
    struct eng_sched sched;          /* the engine thread's, between start and stop */
    struct eng_runner_hooks hooks;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct eng_sched_req *in_head, *in_tail;   /* the inbox, linked through req->next */
    bool closed;                     /* eng_runner_stop was called */
    bool started;
};

/* Initialise the scheduler (eng_sched_init's arguments and errors) and start
 * the engine thread.  On failure nothing is left to free. */
int eng_runner_start(struct eng_runner *r, struct eng_forward *fwd, struct eng_kv *kv,
                     const struct tok *tok, const struct eng_sched_params *p,
                     const struct eng_runner_hooks *hooks);

/* Queue n requests (each prepared by eng_sched_req_init) for the scheduler,
 * in order and together: they join the same step.  Any thread. */
void eng_runner_submit(struct eng_runner *r, struct eng_sched_req *const *reqs, int n);

/* Close the inbox, let the engine thread finish every request it holds or
 * has queued, join it and free the scheduler.  Callers that want a quick stop
 * cancel their requests first.  Accepts a runner that never started. */
void eng_runner_stop(struct eng_runner *r);

#endif

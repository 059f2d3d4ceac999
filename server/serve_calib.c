/* serve_calib.c — `ppd serve`'s start-up calibration (docs/calibration.md):
 * on the engine thread, before its first step, load the cached latency table of this
 * device or measure it, choose the tree for every number of sequences
 * holding slots (engine/calibrate.c), and hand the trees to the scheduler.
 * The choice is logged as a table and exported in /metrics (metrics.c reads
 * s->calib_choice once calib_pending is 0).  A failure leaves the fixed tree
 * serve_ppd_open chose, with a warning: calibration is an optimisation.
 *
 * Not here: measuring and choosing (engine/calibrate.c), the cache and the
 * fingerprint (calib_setup.c), /health (http.c reads calib_pending).
 */
#include <stdlib.h>

#include "engine/err.h"
#include "engine/generate.h"
#include "engine/log.h"
#include "serve.h"

static void serve_calib_progress(void *user, int done, int total) {
    int *last = user;
    const int pct = total ? 100 * done / total : 100;
    if (pct / 25 > *last / 25 || done == total) {
        LOG_INFO("calibration: measuring step latency, %d%%", pct);
        *last = pct;
    }
}

void srv_calibrate(struct srv *s) {
    if (!s->calibrate) return;
    const double t0 = eng_now_s();
    struct eng_calib_table *t = calloc(1, sizeof *t);
    struct eng_calib_choice *c = calloc(1, sizeof *c);
    struct calib_trees *ct = calloc(1, sizeof *ct);
    double *acc = cli_ppd_accuracy(s->ppd.ad);
    int last = -1, rc = ENG_E_NOMEM;
    char path[4096] = "", err[768] = "";
    bool cached = false;
    if (!t || !c || !ct || !acc) goto fail;
    struct calib_setup_opts o = {.model_path = s->cfg.model, .adapter_path = s->ppd.src == CLI_PPD_FILE ? s->ppd.path : NULL,
                                 .cache_dir = s->cfg.calib_cache, .n_threads = (int)s->cfg.n_threads,
                                 .n_slot = (int)s->cfg.n_parallel, .progress = serve_calib_progress,
                                 .progress_user = &last, .ad = s->ppd.ad, .stop_L_max = CALIB_L_MAX_DEFAULT};
    if ((rc = calib_setup_table(t, s->eng, &o, &cached, path, sizeof path))) goto fail;
    if ((rc = eng_calib_choose(c, t, acc, cli_ppd_joint(s->ppd.ad, acc), s->ppd.ad->n_prompt, s->ppd.ad->topk, (int)s->cfg.n_parallel,
                               CALIB_L_MAX_DEFAULT)))
        goto fail;
    if ((rc = calib_trees_init(ct, c, s->ppd.ad, err, sizeof err))) goto fail;
    if ((rc = eng_sched_set_ppd(&s->sched, ct->widest, ct->by_batch))) goto fail;
    LOG_INFO("calibration: %s in %.1f s (%s)", cached ? "cached table loaded" : "measured", eng_now_s() - t0,
             path[0] ? path : "not cached");
    LOG_INFO("calibration: sequences | L (0: plain) | rows per step | predicted tokens/step | predicted tokens/s | plain tokens/s");
    for (int b = 1; b <= c->n_slot; b++) {
        const struct eng_calib_pick *p = &c->by_batch[b];
        LOG_INFO("calibration: %9d | %13d | %13d | %21.3f | %18.1f | %14.1f", b, p->L, b * p->max_T,
                 p->tokens_per_step, p->tokens_per_s, c->plain_tokens_per_s[b]);
    }
    if (!ct->widest) LOG_INFO("calibration: plain decoding predicted fastest at every batch size: PPD stays off");
    s->calib = ct;
    s->calib_choice = c;
    s->calib_cached = cached;
    s->calib_seconds = cached ? 0 : t->seconds;
    free(t);
    free(acc);
    atomic_store(&s->calib_pending, 0);
    uv_async_send(&s->wake);
    return;
fail:
    LOG_WARN("calibration failed (%s%s%s); keeping the fixed tree", eng_err_msg(rc), err[0] ? ": " : "", err);
    calib_trees_free(ct);
    free(ct);
    free(c);
    free(t);
    free(acc);
    atomic_store(&s->calib_pending, 0);
    uv_async_send(&s->wake);
}

void srv_calibration_free(struct srv *s) {
    calib_trees_free(s->calib);
    free(s->calib);
    free(s->calib_choice);
    s->calib = NULL;
    s->calib_choice = NULL;
}

/* serve_calib.c — `ppd serve`'s start-up calibration (docs/calibration.md):
 * on the engine thread, before its first step, load the cached latency table of this
 * device or measure it, choose the tree for every number of sequences
 * holding slots (engine/calib/calibrate.c), and hand the trees to the scheduler.
 * The choice is logged as a table and exported in /metrics (metrics.c reads
 * s->calib once calib_pending is 0).  A failure leaves the fixed tree
 * serve_ppd_open chose, with a warning: calibration is an optimisation.
 *
 * Not here: measuring, choosing, the cache and the fingerprint
 * (engine/calib/calib_setup.h), /health (http.c reads calib_pending).
 */
#include <stdlib.h>

#include "engine/err.h"
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
    int last = -1;
    char err[768] = "";
    struct eng_calib_setup_opts o = {.model_path = s->cfg.model,
                                     .adapter_path = s->ppd.src == ENG_PPD_FILE ? s->ppd.path : NULL,
                                     .cache_dir = s->cfg.calib_cache, .n_threads = (int)s->cfg.n_threads,
                                     .n_slot = (int)s->cfg.n_parallel, .progress = serve_calib_progress,
                                     .progress_user = &last, .ad = s->ppd.ad,
                                     .stop_budget_max = ENG_CALIB_BUDGET_MAX_DEFAULT};
    int rc = eng_calib_setup_sched(&s->calib, s->eng, &s->runner.sched, &s->ppd, &o, err, sizeof err);
    if (rc) LOG_WARN("calibration failed (%s%s%s); keeping the fixed tree", eng_err_msg(rc), err[0] ? ": " : "", err);
    atomic_store(&s->calib_pending, 0);
    uv_async_send(&s->wake);
}

void srv_calibration_free(struct srv *s) {
    eng_calib_result_free(s->calib);
    s->calib = NULL;
}

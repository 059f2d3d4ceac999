/* calib_setup.h — calibration as the commands use it: the fingerprint of what
 * a latency table depends on, where the table is cached, load-or-measure, the
 * budget for one sequence (`ppd generate`, `ppd bench`), and the trees of the
 * per-batch-size choice handed to the scheduler (`ppd serve`).
 *
 * Fingerprint: device (backend, CPU model, threads), model (path, size, mtime,
 * SHA-256 of its first and last 64 KiB), adapter (SHA-256 of the file, or
 * "untrained"), build (SHA-256 of this executable) and the table's shape
 * (slots, rows per step, prefix).  Cache: $PPD_CALIB_CACHE, else
 * $XDG_CACHE_HOME/ppd, else ~/.cache/ppd; file calib-<first 16 hex>.json.
 * Not here: measuring and choosing (calibrate.c), printing (the callers; the
 * scheduler's choice is logged through log.h).
 */
#ifndef PPD_ENGINE_CALIB_SETUP_H
#define PPD_ENGINE_CALIB_SETUP_H

#include <stdbool.h>

#include "engine/calib/calibrate.h"
#include "engine/engine.h"
#include "engine/ppd/ppd.h"
#include "engine/ppd/ppd_setup.h"
#include "engine/decode/sched.h"

#define ENG_CALIB_PREFIX_DEFAULT 256
#define ENG_CALIB_BUDGET_MAX_DEFAULT 256
/* The sweep's stop is this times the adapter's best predicted tokens per
 * step: a median 25% past the break-even, twice in a row, is a step too
 * slow to win, not a noisy one. */
#define ENG_CALIB_STOP_MARGIN 1.25
#define ENG_CALIB_TREES_MAX 64        /* distinct budgets in one choice (eng_calib_candidates gives fewer) */

struct eng_calib_setup_opts {
    const char *model_path;
    const char *adapter_path;    /* NULL: an untrained adapter */
    const char *cache_dir;       /* NULL: the default above; "" : no cache */
    int n_threads, n_slot, prefix;
    bool force;                  /* measure even when a cached table matches */
    /* Where the sweep may stop (eng_calib_measure's stop_ratio): past what a
     * tree of adapter ad with a budget up to stop_budget_max could gain, times
     * ENG_CALIB_STOP_MARGIN.  ad NULL or stop_budget_max 0: every point.  The rule is
     * part of the fingerprint, so a cached table is only reused under it. */
    const struct eng_ppd_adapter *ad;
    int stop_budget_max;
    eng_calib_progress_fn progress;
    void *progress_user;
};

/* The table: from the cache when its fingerprint matches (*cached = true),
 * else measured and saved (a cache that cannot be written is a warning).
 * path_out (cap bytes) gets the cache file ("" when none).  0 or ENG_E_*. */
int eng_calib_setup_table(struct eng_calib_table *t, struct eng_engine *e, const struct eng_calib_setup_opts *o,
                          bool *cached, char *path_out, size_t cap);

/* One eng_ppd per distinct tree budget of the choice, and which serves each batch size:
 * by_batch[b] (b = 1..n_slot) points into ppd[] or is NULL for plain decoding
 * (budget 0).  widest: the member with the largest tree (sequences are sized for
 * it), NULL when every choice is plain. */
struct eng_calib_trees {
    int n;
    struct eng_ppd ppd[ENG_CALIB_TREES_MAX];
    int tree_budget[ENG_CALIB_TREES_MAX];
    const struct eng_ppd *by_batch[ENG_CALIB_MAX_SLOTS + 1];
    const struct eng_ppd *widest;
};

/* The tree budget this device's calibration chooses for one sequence with
 * s's adapter (0: plain decoding is faster): the cached table, else measured
 * now (a few seconds) and cached.  *gain: the predicted speed over plain
 * decoding; *cached and path (cap bytes) say where the table came from.
 * `ppd generate` and `ppd bench` use it when the adapter was found next to the
 * model and no tree or budget was named.  0 or ENG_E_*. */
int eng_calib_setup_budget_one(struct eng_engine *e, const struct eng_ppd_setup *s, const char *model_path,
                               int n_threads, int *tree_budget, double *gain, bool *cached, char *path, size_t cap);

int eng_calib_trees_init(struct eng_calib_trees *ct, const struct eng_calib_choice *c, const struct eng_ppd_adapter *ad,
                         char *err, size_t err_cap);
void eng_calib_trees_free(struct eng_calib_trees *ct);   /* accepts NULL, and a zeroed struct */

/* What the serving calibration chose, kept while the scheduler uses it. */
struct eng_calib_result {
    struct eng_calib_trees trees;        /* handed to the scheduler */
    struct eng_calib_choice choice;
    bool cached;
    double seconds;                      /* measuring time (0 when cached) */
};

/* `ppd serve`'s calibration: the table (eng_calib_setup_table), the tree per
 * number of sequences for s's adapter, those trees handed to the scheduler
 * (eng_sched_set_ppd), and the choice logged as a table.  *out is malloc'd
 * and stays alive while sched uses its trees; on failure the scheduler keeps
 * its fixed tree.  0 or ENG_E_* with err. */
int eng_calib_setup_sched(struct eng_calib_result **out, struct eng_engine *e, struct eng_sched *sched,
                          const struct eng_ppd_setup *s, const struct eng_calib_setup_opts *o, char *err,
                          size_t err_cap);
void eng_calib_result_free(struct eng_calib_result *r);   /* accepts NULL */

#endif

/* calib_setup.h — calibration as `ppd serve` and `ppd calibrate` use it: the
 * fingerprint of what a latency table depends on, where the table is cached,
 * load-or-measure, and the trees of the per-batch-size choice.
 *
 * Fingerprint: device (backend, CPU model, threads), model (path, size, mtime,
 * SHA-256 of its first and last 64 KiB), adapter (SHA-256 of the file, or
 * "untrained"), build (SHA-256 of this executable) and the table's shape
 * (slots, rows per step, prefix).  Cache: $PPD_CALIB_CACHE, else
 * $XDG_CACHE_HOME/ppd, else ~/.cache/ppd; file calib-<first 16 hex>.json.
 * Not here: measuring and choosing (engine/calibrate.c), printing (the callers).
 */
#ifndef PPD_CALIB_SETUP_H
#define PPD_CALIB_SETUP_H

#include <stdbool.h>

#include "cli_ppd.h"
#include "engine/calibrate.h"
#include "engine/engine.h"
#include "engine/ppd.h"

#define CALIB_PREFIX_DEFAULT 256
#define CALIB_L_MAX_DEFAULT 256
/* The sweep's stop is this times the adapter's best predicted tokens per
 * step: a median 25% past the break-even, twice in a row, is a step too
 * slow to win, not a noisy one. */
#define CALIB_STOP_MARGIN 1.25
#define CALIB_TREES_MAX 64        /* distinct budgets in one choice (eng_calib_candidates gives fewer) */

struct calib_setup_opts {
    const char *model_path;
    const char *adapter_path;    /* NULL: an untrained adapter */
    const char *cache_dir;       /* NULL: the default above; "" : no cache */
    int n_threads, n_slot, prefix;
    bool force;                  /* measure even when a cached table matches */
    /* Where the sweep may stop (eng_calib_measure's stop_ratio): past what a
     * tree of adapter ad with a budget up to stop_L_max could gain, times
     * CALIB_STOP_MARGIN.  ad NULL or stop_L_max 0: every point.  The rule is
     * part of the fingerprint, so a cached table is only reused under it. */
    const struct eng_ppd_adapter *ad;
    int stop_L_max;
    eng_calib_progress_fn progress;
    void *progress_user;
};

/* The table: from the cache when its fingerprint matches (*cached = true),
 * else measured and saved (a cache that cannot be written is a warning).
 * path_out (cap bytes) gets the cache file ("" when none).  0 or ENG_E_*. */
int calib_setup_table(struct eng_calib_table *t, struct eng_engine *e, const struct calib_setup_opts *o,
                      bool *cached, char *path_out, size_t cap);

/* One eng_ppd per distinct L of the choice, and which serves each batch size:
 * by_batch[b] (b = 1..n_slot) points into ppd[] or is NULL for plain decoding
 * (L = 0).  widest: the member with the largest tree (sequences are sized for
 * it), NULL when every choice is plain. */
struct calib_trees {
    int n;
    struct eng_ppd ppd[CALIB_TREES_MAX];
    int L[CALIB_TREES_MAX];
    const struct eng_ppd *by_batch[ENG_CALIB_MAX_SLOTS + 1];
    const struct eng_ppd *widest;
};

/* `ppd generate` and `ppd bench`: PPD as cli_ppd_open sets it up, except
 * that when the adapter was found next to the model (not named) and the tree
 * is automatic (no --tree, no --tree-size), this device's calibration for
 * one sequence chooses the budget: its cached table, else measured now (a
 * few seconds) and cached.  Plain decoding chosen: with keep_tree (bench,
 * which compares the two) the adapter's own tree stays, else PPD is turned
 * off (c->src == CLI_PPD_OFF) with a line saying why.  PPD_CALIBRATE=off
 * skips the measurement and keeps the adapter's tree.  who prefixes the
 * messages.  0, or 1 after printing why; c must then still be closed. */
int calib_setup_ppd_open(struct cli_ppd *c, struct cli_ppd_opts *o, struct eng_engine *e, int n_threads,
                         bool keep_tree, const char *who);

int calib_trees_init(struct calib_trees *ct, const struct eng_calib_choice *c, const struct eng_ppd_adapter *ad,
                     char *err, size_t err_cap);
void calib_trees_free(struct calib_trees *ct);   /* accepts NULL, and a zeroed struct */

#endif

/* calibrate.h — the hardware-aware part of PPD (docs/calibration.md): measure the
 * step latency of this device, then choose, for every number of decoding
 * sequences, the tree budget L (or plain decoding) that gives the most tokens
 * per second.
 *
 * Latency: the real forward pass (same kernels, same threads) with b
 * sequences of r rows each, every sequence seeing a committed prefix of
 * `prefix` entries and its own rows causally, logits for every row (as tree
 * rows want them): b = 1, 2, 4, ... up to the slots, r on a grid dense where
 * the curve bends, b * r within the rows a step may hold.  After one warm-up
 * pass, the median of a few passes (more where a pass is short).  The KV
 * entries are whatever the slots hold (latency does not depend on values);
 * the slots' committed lengths are restored afterwards.
 *
 * Choice: for each L of a candidate list, the tree family built from the
 * adapter's accuracy table (docs/ppd.md, "Building trees") predicts tokens
 * per step and rows per step (each state's T weighted by the stationary
 * distribution of the states, without the reference's phantom root-only
 * state).
 * For b decoding sequences, predicted tokens/s = b * tokens_per_step /
 * t(b, rows), t interpolated in the table; plain decoding (L = 0) is one row
 * and one token.  The largest tree of a choice must fit b * T <= max_rows.
 *
 * Saved as JSON together with a fingerprint string the caller makes (device,
 * model, adapter, build): a table whose fingerprint differs is not loaded.
 * Not here: running trees (ppd.c, sched.c), where the cache file lives and
 * what goes into the fingerprint (the caller), printing (the CLI).
 */
#ifndef PPD_CALIBRATE_H
#define PPD_CALIBRATE_H

#include <stddef.h>

#include "engine/model/forward.h"
#include "engine/model/kv_cache.h"

#define ENG_CALIB_MAX_B 16        /* batch sizes measured */
#define ENG_CALIB_MAX_R 32        /* rows-per-sequence grid points */
#define ENG_CALIB_MAX_SLOTS 256   /* batch sizes chosen for: 1..this */

struct eng_calib_table {
    int prefix;                       /* committed entries each row saw */
    int max_rows;                     /* rows per step the table covers */
    int n_b, b[ENG_CALIB_MAX_B];      /* batch sizes, ascending */
    int n_r, r[ENG_CALIB_MAX_R];      /* rows per sequence, ascending */
    double ms[ENG_CALIB_MAX_B][ENG_CALIB_MAX_R];   /* median step ms; 0: not measured (b * r > max_rows) */
    double seconds;                   /* how long measuring took */
    double stop_ratio;                /* the sweep's stop (eng_calib_measure); 0: every point */
};

/* done/total passes so far (for a progress bar); may be NULL. */
typedef void (*eng_calib_progress_fn)(void *user, int done, int total);

/* Measure with slots 0..n_slot-1 of kv (n_slot <= kv->n_slot) and batches of at
 * most f->max_rows rows.  ENG_E_RANGE when prefix + 256 rows do not fit a
 * slot (prefix is lowered to fit when possible: see t->prefix).
 *
 * stop_ratio > 0: a batch size's sweep stops after the first two consecutive
 * grid points whose step costs more than stop_ratio one-row steps of that
 * batch size; the rest stay 0 (not measured, so never chosen).  A tree that
 * emits at most E tokens per step cannot beat plain decoding once its step
 * costs more than E plain steps, and steps only get dearer with more rows;
 * callers pass E (eng_calib_max_tokens_per_step) times a margin for noise.
 * On a CPU this skips the costly many-row points (the first measurement
 * goes from ~30 s to a few); on a GPU, whose curve stays flat, nothing.
 * stop_ratio <= 0: every point. */
int eng_calib_measure(struct eng_calib_table *t, struct eng_forward *f, struct eng_kv *kv, int n_slot, int prefix,
                      double stop_ratio, eng_calib_progress_fn progress, void *user);

/* Step milliseconds for b sequences of r rows each, interpolated (linear in r
 * between grid points, then in b between measured batch sizes; a batch size
 * whose r is past the table is taken at the same total rows from the largest
 * smaller batch size).  -1 where the table cannot say (b * r > max_rows). */
double eng_calib_step_ms(const struct eng_calib_table *t, int b, double r);

struct eng_calib_pick {
    int L;                   /* 0: plain decoding */
    int max_T;               /* rows per sequence of the largest state's tree (1 for plain) */
    double rows;             /* predicted rows per sequence per step (stationary mean) */
    double tokens_per_step;  /* predicted, per sequence */
    double step_ms;          /* predicted, b sequences */
    double tokens_per_s;     /* predicted, all b sequences */
};

struct eng_calib_choice {
    int n_slot;
    struct eng_calib_pick by_batch[ENG_CALIB_MAX_SLOTS + 1];   /* [b], b = 1..n_slot */
    double plain_tokens_per_s[ENG_CALIB_MAX_SLOTS + 1];        /* [b]: predicted for plain decoding */
};

/* The candidate budgets: 1..8, then denser-to-sparser steps up to L_max. */
int eng_calib_candidates(int *L, int cap, int L_max);

/* Prediction for one budget (tree built from acc[i*K + k], N prompt tokens)
 * at b sequences; L = 0 is plain decoding.  -1 (ENG_E_*) on failure; pick->step_ms
 * < 0 when the tree does not fit or the table cannot say. */
int eng_calib_predict(struct eng_calib_pick *pick, const struct eng_calib_table *t, const double *acc, const double *joint, int N, int K,
                      int L, int b);

/* The most tokens per step any candidate budget up to L_max is predicted to
 * emit (>= 1: plain decoding's), into *out.  0 or ENG_E_*. */
int eng_calib_max_tokens_per_step(const double *acc, const double *joint, int N, int K, int L_max, double *out);

/* Choose for b = 1..n_slot among the candidates up to L_max (and plain). */
int eng_calib_choose(struct eng_calib_choice *c, const struct eng_calib_table *t, const double *acc, const double *joint, int N, int K,
                     int n_slot, int L_max);

/* JSON file: {"fingerprint": ..., "prefix":, "max_rows":, "seconds":, "b": [...],
 * "r": [...], "ms": [[...], ...]}.  Load: ENG_E_NOT_FOUND when the file is
 * missing or its fingerprint differs (then measure again); ENG_E_FORMAT, with
 * a message, when it is damaged. */
int eng_calib_table_save(const struct eng_calib_table *t, const char *fingerprint, const char *path, char *err,
                         size_t err_cap);
int eng_calib_table_load(struct eng_calib_table *t, const char *fingerprint, const char *path, char *err,
                         size_t err_cap);

#endif

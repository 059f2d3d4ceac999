/* ppd_setup.h — PPD opened for an engine: which adapter (a named file, else
 * the model's conventional one next to it, else none or an untrained
 * text-initialised one in memory), the accuracy table trees are built from,
 * and the tree family (a JSON file, else built from that table with a tree
 * budget, lowered where asked until one sequence's rows fit a row budget).
 *
 * Every command that decodes with PPD opens it here, so `ppd generate`,
 * `ppd bench`, `ppd calibrate` and `ppd serve` decode with the same tree for
 * the same settings.  Errors go into the caller's buffer; nothing here prints
 * or decodes (engine/ppd/ppd.h decodes; calib_setup.h chooses trees per batch).
 */
#ifndef PPD_ENGINE_PPD_SETUP_H
#define PPD_ENGINE_PPD_SETUP_H

#include <stdbool.h>
#include <stddef.h>

#include "engine/engine.h"
#include "engine/ppd/ppd.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/ppd/ppd_tree.h"

#define ENG_PPD_TREE_BUDGET_DEFAULT 20   /* tree budget when neither the caller nor the adapter names one */
#define ENG_PPD_UNTRAINED_N 3            /* prompt tokens of an in-memory untrained adapter */
#define ENG_PPD_UNTRAINED_K 10           /* guesses per prompt token, likewise */

struct eng_ppd_setup_opts {
    const char *model_path;  /* the default adapter sits next to it */
    const char *adapter;     /* an adapter file, or NULL for the default */
    const char *tree_file;   /* a tree family file, or NULL: build one */
    int tree_budget;         /* budget of the built tree; 0: the adapter's ppd.tree_L, else the default */
    bool untrained;          /* no adapter file: text-init one in memory instead of plain decoding */
    /* Rows one sequence may take per step; 0: the engine's rows per step, -1:
     * no limit (the caller sizes the steps).  A
     * tree that does not fit is an error, unless fit_budget: then a built
     * tree's budget is lowered (the adapter is kept) until it fits, and
     * ENG_E_RANGE only when not even a budget of 1 fits. */
    int max_rows;
    bool fit_budget;
};

enum eng_ppd_source {
    ENG_PPD_OFF = 0,         /* no adapter: plain decoding */
    ENG_PPD_FILE,            /* loaded from path */
    ENG_PPD_TEXT_INIT,       /* made in memory, untrained */
};

struct eng_ppd_setup {
    enum eng_ppd_source src;
    char path[1024];                      /* the adapter file (ENG_PPD_FILE) */
    struct eng_ppd_adapter *ad;
    struct eng_ppd_tree_family *fam;
    int tree_budget;                      /* budget the tree was built with (0: from a tree file) */
    struct eng_ppd ppd;                   /* ready when src != ENG_PPD_OFF */
};

/* The adapter's accuracy table as doubles (N*K) for building trees: measured,
 * else the paper's Vicuna-7B rows when N = 3 and K = 10, else a decaying prior
 * (an untrained adapter still gets a reasonable tree); followed by its rank
 * joint when it has one (eng_ppd_accuracy_joint).  malloc'd; NULL when out of
 * memory. */
double *eng_ppd_accuracy(const struct eng_ppd_adapter *ad);
/* The rank joint inside eng_ppd_accuracy's array, NULL when the adapter has none. */
static inline const double *eng_ppd_accuracy_joint(const struct eng_ppd_adapter *ad, const double *acc) {
    return ad->joint ? acc + (size_t)ad->n_prompt * (size_t)ad->topk : NULL;
}

/* Set s up for e's model.  0 (s->src says whether PPD is on), or ENG_E_* with
 * a message naming the file or the problem in err; s must then still be
 * closed. */
int eng_ppd_setup_open(struct eng_ppd_setup *s, const struct eng_ppd_setup_opts *o, const struct eng_engine *e,
                       char *err, size_t err_cap);
/* Rebuild the tree with another budget, keeping the adapter (s was built, not
 * read from a tree file).  0 or ENG_E_* with err. */
int eng_ppd_setup_rebuild(struct eng_ppd_setup *s, int tree_budget, char *err, size_t err_cap);
/* Back to plain decoding: the adapter and tree are freed, src becomes ENG_PPD_OFF. */
void eng_ppd_setup_close(struct eng_ppd_setup *s);   /* accepts NULL */

#endif

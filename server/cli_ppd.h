/* cli_ppd.h — how the subcommands set PPD up from their flags: which adapter
 * (--ppd FILE, else the model's conventional one next to it, else none or an
 * untrained text-initialised one in memory) and which tree family (--tree
 * FILE, else built from the adapter's accuracy table with budget L).
 *
 * Shared by `ppd generate` and `ppd bench` so both decode with the same tree
 * for the same flags.  Not here: the decoding itself (engine/ppd.h), flag
 * parsing (each subcommand parses its own).
 */
#ifndef PPD_CLI_PPD_H
#define PPD_CLI_PPD_H

#include <stdbool.h>

#include "engine/engine.h"
#include "engine/ppd.h"
#include "engine/ppd_adapter.h"
#include "engine/ppd_tree.h"

#define CLI_PPD_TREE_L_DEFAULT 20   /* tree budget when no --tree file is given */
#define CLI_PPD_N_DEFAULT 3         /* prompt tokens of an in-memory untrained adapter */
#define CLI_PPD_K_DEFAULT 10        /* guesses per prompt token, likewise */

struct cli_ppd_opts {
    const char *model;       /* model path: the default adapter sits next to it */
    const char *adapter;     /* --ppd FILE, or NULL for the default */
    const char *tree_file;   /* --tree FILE, or NULL: build one */
    long tree_L;             /* budget of the built tree; 0: the adapter's ppd.tree_L, else the default */
    bool untrained;          /* no adapter file: text-init one in memory (bench) instead of plain decoding */
    bool caller_fits_rows;   /* the caller checks the tree against its rows per step (serve lowers L
                                until every slot's tree fits); else a tree wider than the engine's
                                max_rows is an error here */
};

enum cli_ppd_source {
    CLI_PPD_OFF = 0,         /* no adapter: plain decoding */
    CLI_PPD_FILE,            /* loaded from path */
    CLI_PPD_TEXT_INIT,       /* made in memory, untrained */
};

struct cli_ppd {
    enum cli_ppd_source src;
    char path[1024];                      /* the adapter file (CLI_PPD_FILE) */
    struct eng_ppd_adapter *ad;
    struct eng_ppd_tree_family *fam;
    long tree_L;                          /* budget the tree was built with (0: from --tree FILE) */
    struct eng_ppd ppd;                   /* ready when src != CLI_PPD_OFF */
};

/* Set c up for e's model.  Returns 0 (c->src says whether PPD is on), or 1
 * after printing "ppd: ..." naming the file or the problem; c must then still
 * be closed. */
/* The adapter's accuracy table as doubles (N*K) for building trees: measured,
 * else the paper's Vicuna-7B rows when N = 3 and K = 10, else a decaying prior
 * (an untrained adapter still gets a reasonable tree); followed by its rank
 * joint when it has one (cli_ppd_joint).  malloc'd; NULL when out of memory. */
double *cli_ppd_accuracy(const struct eng_ppd_adapter *ad);
/* The rank joint inside cli_ppd_accuracy's array, NULL when the adapter has none. */
static inline const double *cli_ppd_joint(const struct eng_ppd_adapter *ad, const double *acc) {
    return ad->joint ? acc + (size_t)ad->n_prompt * (size_t)ad->topk : NULL;
}

int cli_ppd_open(struct cli_ppd *c, const struct cli_ppd_opts *o, const struct eng_engine *e);
void cli_ppd_close(struct cli_ppd *c);   /* accepts NULL */

#endif

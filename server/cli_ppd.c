/* cli_ppd.c — PPD set-up from the subcommands' flags (see cli_ppd.h).
 *
 * Messages go to stderr prefixed "ppd: "; nothing here decodes.
 */
#include "cli_ppd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

double *cli_ppd_accuracy(const struct eng_ppd_adapter *ad) {
    const int N = ad->n_prompt, K = ad->topk, nj = ad->joint ? eng_ppd_joint_size(N, K) : 0;
    double *acc = malloc(sizeof *acc * ((size_t)N * (size_t)K + (size_t)nj));
    if (!acc) return NULL;
    for (int i = 0; i < nj; i++) acc[N * K + i] = ad->joint[i];
    for (int i = 0; i < N; i++)
        for (int k = 0; k < K; k++)
            acc[i * K + k] = ad->accuracy ? ad->accuracy[i * K + k]
                           : N == 3 && K == 10 ? eng_ppd_acc_vicuna7b[i * K + k]
                           : 0.5 / (double)(i + 1) / (double)(k + 1) / (double)K;
    return acc;
}

/* The tree from --tree, else built from the adapter's accuracy table (the
 * paper's Vicuna-7B table when it has none and its shape matches, else a
 * decaying prior), so an untrained adapter still gets a reasonable tree. */
static int cli_ppd_tree(struct cli_ppd *c, const struct cli_ppd_opts *o) {
    char err[768];
    if (o->tree_file) {
        if (eng_ppd_tree_family_load(&c->fam, o->tree_file, err, sizeof err)) {
            fprintf(stderr, "ppd: %s\n", err);
            return 1;
        }
        return 0;
    }
    const int N = c->ad->n_prompt, K = c->ad->topk;
    double *acc = cli_ppd_accuracy(c->ad);
    if (!acc) return 1;
    /* budget: the flag, else the one `ppd tree tune` measured best for this adapter */
    c->tree_L = o->tree_L > 0 ? o->tree_L : c->ad->tree_L > 0 ? c->ad->tree_L : CLI_PPD_TREE_L_DEFAULT;
    int rc = eng_ppd_tree_build_joint(&c->fam, acc, cli_ppd_joint(c->ad, acc), N, K, (int)c->tree_L, NULL);
    free(acc);
    if (rc) {
        fprintf(stderr, "ppd: cannot build a tree with L=%ld: %s\n", c->tree_L, eng_err_msg(rc));
        return 1;
    }
    return 0;
}

int cli_ppd_open(struct cli_ppd *c, const struct cli_ppd_opts *o, const struct eng_engine *e) {
    char err[768];
    memset(c, 0, sizeof *c);
    if (o->adapter) {
        snprintf(c->path, sizeof c->path, "%s", o->adapter);
    } else {
        FILE *fp = NULL;
        if (!eng_ppd_adapter_default_path(o->model, c->path, sizeof c->path) && (fp = fopen(c->path, "rb")))
            fclose(fp);
        if (!fp) c->path[0] = 0;
    }
    if (c->path[0]) {
        if (eng_ppd_adapter_load(&c->ad, c->path, e->model, err, sizeof err)) {
            fprintf(stderr, "ppd: %s\n", err);
            return 1;
        }
        if (c->ad->deep && !e->be.iface->add_rows) {
            fprintf(stderr, "ppd: %s has deep prompts, which the %s backend cannot run yet (use --device cpu)\n",
                    c->path, e->be.iface->name);
            return 1;
        }
    } else if (o->untrained) {
        if (eng_ppd_adapter_init_text(&c->ad, e->model, e->tok, CLI_PPD_N_DEFAULT, CLI_PPD_K_DEFAULT,
                                      ENG_PPD_INIT_TEXT, err, sizeof err)) {
            fprintf(stderr, "ppd: cannot make an untrained adapter: %s\n", err);
            return 1;
        }
    } else {
        if (o->tree_file) {
            fprintf(stderr, "ppd: --tree needs an adapter (--ppd FILE)\n");
            return 1;
        }
        return 0;
    }
    if (cli_ppd_tree(c, o)) return 1;
    if (eng_ppd_init(&c->ppd, c->ad, c->fam, err, sizeof err)) {
        fprintf(stderr, "ppd: %s\n", err);
        return 1;
    }
    if (!o->caller_fits_rows && c->ppd.trees.max_T > e->fwd.max_rows) {
        fprintf(stderr, "ppd: the tree feeds %d rows per step; at most %d\n", c->ppd.trees.max_T, e->fwd.max_rows);
        return 1;
    }
    c->src = c->path[0] ? CLI_PPD_FILE : CLI_PPD_TEXT_INIT;
    return 0;
}

void cli_ppd_close(struct cli_ppd *c) {
    if (!c) return;
    eng_ppd_free(&c->ppd);
    eng_ppd_tree_family_free(c->fam);
    eng_ppd_adapter_free(c->ad);
    memset(c, 0, sizeof *c);
}

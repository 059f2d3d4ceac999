/* ppd_setup.c — PPD opened for an engine (see ppd_setup.h).
 *
 * It reads the adapter once: lowering the tree budget to fit a row budget
 * rebuilds only the tree.
 */
#include "engine/ppd/ppd_setup.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"

double *eng_ppd_accuracy(const struct eng_ppd_adapter *ad) {
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

/* The tree of budget L built from the adapter's accuracy table, and the PPD
 * state on it (any previous one freed first). */
static int setup_build(struct eng_ppd_setup *s, int L, char *err, size_t err_cap) {
    eng_ppd_free(&s->ppd);
    eng_ppd_tree_family_free(s->fam);
    s->fam = NULL;
    double *acc = eng_ppd_accuracy(s->ad);
    if (!acc) return eng_err_set(err, err_cap, ENG_E_NOMEM, "out of memory");
    s->tree_budget = L;
    int rc = eng_ppd_tree_build_joint(&s->fam, acc, eng_ppd_accuracy_joint(s->ad, acc), s->ad->n_prompt,
                                      s->ad->topk, L, NULL);
    free(acc);
    if (rc) return eng_err_set(err, err_cap, rc, "cannot build a tree with budget %d: %s", L, eng_err_msg(rc));
    return eng_ppd_init(&s->ppd, s->ad, s->fam, err, err_cap);
}

int eng_ppd_setup_rebuild(struct eng_ppd_setup *s, int tree_budget, char *err, size_t err_cap) {
    if (!s->ad || s->tree_budget <= 0)
        return eng_err_set(err, err_cap, ENG_E_INVALID, "the tree is read from a file: no budget to change");
    return setup_build(s, tree_budget, err, err_cap);
}

/* The adapter: the named file, else the model's default next to it when it
 * exists, else an untrained one when asked; *none when there is none. */
static int setup_adapter(struct eng_ppd_setup *s, const struct eng_ppd_setup_opts *o, const struct eng_engine *e,
                         bool *none, char *err, size_t err_cap) {
    *none = false;
    if (o->adapter) {
        snprintf(s->path, sizeof s->path, "%s", o->adapter);
    } else {
        FILE *fp = NULL;
        if (!eng_ppd_adapter_default_path(o->model_path, s->path, sizeof s->path) && (fp = fopen(s->path, "rb")))
            fclose(fp);
        if (!fp) s->path[0] = 0;
    }
    if (s->path[0]) {
        int rc = eng_ppd_adapter_load(&s->ad, s->path, e->model, err, err_cap);
        if (rc) return rc;
        if (s->ad->deep && !e->be.iface->add_rows)
            return eng_err_set(err, err_cap, ENG_E_UNSUPPORTED, "%s has deep prompts, which the %s backend cannot "
                               "run yet (use --device cpu)", s->path, e->be.iface->name);
        return 0;
    }
    if (o->untrained) {
        char why[768];
        int rc = eng_ppd_adapter_init_text(&s->ad, e->model, e->tok, ENG_PPD_UNTRAINED_N, ENG_PPD_UNTRAINED_K,
                                           ENG_PPD_INIT_TEXT, why, sizeof why);
        return rc ? eng_err_set(err, err_cap, rc, "cannot make an untrained adapter: %s", why) : 0;
    }
    if (o->tree_file) return eng_err_set(err, err_cap, ENG_E_INVALID, "a tree file needs an adapter (--ppd FILE)");
    *none = true;
    return 0;
}

int eng_ppd_setup_open(struct eng_ppd_setup *s, const struct eng_ppd_setup_opts *o, const struct eng_engine *e,
                       char *err, size_t err_cap) {
    memset(s, 0, sizeof *s);
    bool none;
    int rc = setup_adapter(s, o, e, &none, err, err_cap);
    if (rc || none) return rc;
    const int max_rows = o->max_rows > 0 ? o->max_rows : o->max_rows < 0 ? INT_MAX : e->fwd.max_rows;
    if (o->tree_file) {
        if ((rc = eng_ppd_tree_family_load(&s->fam, o->tree_file, err, err_cap))) return rc;
        if ((rc = eng_ppd_init(&s->ppd, s->ad, s->fam, err, err_cap))) return rc;
    } else {
        /* budget: the caller's, else the one `ppd tree tune` measured best for this adapter */
        int L = o->tree_budget > 0 ? o->tree_budget : s->ad->tree_budget > 0 ? s->ad->tree_budget
                                                                             : ENG_PPD_TREE_BUDGET_DEFAULT;
        if ((rc = setup_build(s, L, err, err_cap))) return rc;
        while (o->fit_budget && eng_ppd_seq_rows(&s->ppd) > max_rows && L > 1)   /* smaller, still lossless */
            if ((rc = setup_build(s, --L, err, err_cap))) return rc;
    }
    if (eng_ppd_seq_rows(&s->ppd) > max_rows)
        return eng_err_set(err, err_cap, ENG_E_RANGE, "the tree feeds %d rows per step; at most %d",
                           eng_ppd_seq_rows(&s->ppd), max_rows);
    s->src = s->path[0] ? ENG_PPD_FILE : ENG_PPD_TEXT_INIT;
    return 0;
}

void eng_ppd_setup_close(struct eng_ppd_setup *s) {
    if (!s) return;
    eng_ppd_free(&s->ppd);
    eng_ppd_tree_family_free(s->fam);
    eng_ppd_adapter_free(s->ad);
    memset(s, 0, sizeof *s);
}

/* ppd_tree.h — PPD sparse trees: the tree-family file, the two-stage builder,
 * and the per-depth-state buffers one decoding step reads (docs/ppd.md,
 * "Trees" and "Building trees"), for any N (prompt tokens) and K (guesses per
 * prompt token).
 *
 * A tree family maps each depth state d = 1..N to a list of candidate nodes
 * (path of ranks, exclusive acceptance probability, prompt tokens attached).
 * File format (JSON files under config/trees/):
 *   {"N": 3, "K": 10, "L": 105,
 *    "states": {"1": [[[0], 0.48335, 3], [[1], 0.14342, 3], ...], "2": [...], "3": [...]}}
 * Paths are ranks 0..K-1, 1 <= length <= d, the set prefix-closed; n in 1..N
 * (larger n is clamped to N, as the reference's buffer builder does).
 *
 * The buffers of a state follow the reference's order exactly (candidates
 * sorted by (length, path); tree items sorted by (length, path) with prompt
 * token j written as -j), so positions, masks and retrieve rows compare with
 * the reference array for array (docs/ppd.md, "Reference checks").  The root
 * is node 0 at position 0.
 *
 * Not here: the decode loop (ppd.c), choosing L for a device (calibration).
 */
#ifndef PPD_PPD_TREE_H
#define PPD_PPD_TREE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/ppd/ppd_adapter.h"

#define ENG_PPD_PAD (-1)         /* an empty retrieve-row entry: never a node, never accepted */

struct eng_ppd_tree_node {
    int8_t path[ENG_PPD_MAX_PROMPT];   /* ranks, len of them */
    int8_t len;
    int8_t n;                          /* prompt tokens attached (1..N) */
    double acc;                        /* probability this is the deepest accepted node (builder only) */
};

struct eng_ppd_tree_family {
    int n_prompt;                      /* N */
    int topk;                          /* K */
    int L;                             /* input length limit the family was built for (0: unknown) */
    int n_nodes[ENG_PPD_MAX_PROMPT + 1];              /* [d], d = 1..N */
    struct eng_ppd_tree_node *nodes[ENG_PPD_MAX_PROMPT + 1];
};

/* Parse JSON text (name is used in messages) or a file.  Errors: ENG_E_FORMAT
 * with "NAME: states.D[I]: problem" for bad JSON, ranks outside [0, K), paths
 * longer than d, a path whose prefix is not listed, duplicates, n < 1, a
 * missing state. */
int eng_ppd_tree_family_parse(struct eng_ppd_tree_family **out, const char *json, size_t len, const char *name,
                              char *err, size_t err_cap);
int eng_ppd_tree_family_load(struct eng_ppd_tree_family **out, const char *path, char *err, size_t err_cap);
int eng_ppd_tree_family_save(const struct eng_ppd_tree_family *f, const char *path, char *err, size_t err_cap);
void eng_ppd_tree_family_free(struct eng_ppd_tree_family *f);   /* accepts NULL */

/* What the builder chose (for logs and tests). */
struct eng_ppd_tree_build_info {
    int s[ENG_PPD_MAX_PROMPT + 1];     /* candidate nodes per state */
    double x[ENG_PPD_MAX_PROMPT + 1];  /* stationary distribution; x[0] the phantom root-only state */
    double objective;                  /* the reference's objective, which chose the tree */
    /* What the tree is expected to emit per step, root included: 1 + sum_d pi_d Val(d) over
     * the true stationary distribution pi_d = x_d / (1 - x_0).  The reference's phantom
     * root-only state counts a step that never happens (a step that accepts only the root
     * is already a step of its state, earning nothing beyond the root), so 1 + objective
     * underestimates it by the factor 1 - x_0. */
    double tokens_per_step;
};

/* The two-stage builder (docs/ppd.md, "Building trees") for accuracy a[i*K + k]
 * (rank-k guess of prompt token i+1 right), N prompt tokens, budget L: the
 * first stage keeps the L most probable paths per depth limit; the second attaches N
 * prompt tokens per node and removes the least valuable ones until each state
 * fits L; node counts s_2..s_N are searched in [L/(N+1), L/2] for the best
 * stationary expected acceptance.  s_1 = min(K, L).  info may be NULL. */
int eng_ppd_tree_build(struct eng_ppd_tree_family **out, const double *acc, int n_prompt, int topk, int L,
                       struct eng_ppd_tree_build_info *info);
/* The same with a path's probability read from the measured joint distribution
 * of the ranks (ppd_adapter.h ppd.rank_joint, [(K+1)^N]; NULL: the product of
 * the marginals acc, as above).  The product of marginals underestimates deep
 * paths: a right guess at one offset makes a right guess at the next likelier. */
int eng_ppd_tree_build_joint(struct eng_ppd_tree_family **out, const double *acc, const double *joint, int n_prompt,
                             int topk, int L, struct eng_ppd_tree_build_info *info);

/* The paper's Vicuna-7B accuracy rows (docs/ppd.md, "Reference checks"; N = 3, K = 10), a
 * prior for building trees when an adapter has no measured accuracy. */
extern const double eng_ppd_acc_vicuna7b[30];

/* The buffers of one depth state d (docs/ppd.md, "The buffers of a state"). */
struct eng_ppd_tree {
    int d;
    int T;                  /* tree positions (rows fed per step) */
    int M;                  /* normal nodes incl. the root */
    int R, D;               /* retrieve rows, candidate depth */
    int vis_words;          /* 64-bit words per mask row */
    uint64_t *mask;         /* [T][vis_words]: bit j of row t: position t sees position j */
    int32_t *src;           /* [T]: >= 0 index into cand (token), < 0: prompt row -1 - src */
    int32_t *pos_off;       /* [T] */
    int32_t *normal_pos;    /* [M] node id -> tree position */
    int32_t *node_cand;     /* [M] node id -> index into cand of its token (root: 0) */
    int32_t *rows;          /* [R][D + 1] node ids, ENG_PPD_PAD where shorter */
    int32_t *n_special;     /* [M] prompt tokens below the node */
    int32_t *special;       /* [M][N] their tree positions, prompt 1 first */
    int32_t *child_first;   /* [M + 1] children of node k: child_ids[child_first[k] .. child_first[k + 1]) */
    int32_t *child_ids;     /* [M - 1] */
};

struct eng_ppd_trees {
    int n_prompt, topk;
    int max_T;              /* largest T over the states */
    struct eng_ppd_tree st[ENG_PPD_MAX_PROMPT + 1];   /* [d], d = 1..N */
};

/* Build every state's buffers.  ENG_E_FORMAT (message) for a family that
 * violates the rules above (a family from eng_ppd_tree_family_parse never does). */
int eng_ppd_trees_init(struct eng_ppd_trees *t, const struct eng_ppd_tree_family *f, char *err, size_t err_cap);
void eng_ppd_trees_free(struct eng_ppd_trees *t);   /* accepts NULL, and a zeroed struct */

#endif

/* ppd.h — Parallel Prompt Decoding for one sequence, shaped for batching
 * (docs/ppd.md, "Prefill" and "A decoding step"; "Pitfalls" there lists the
 * reference's pitfalls this code avoids).
 *
 * A sequence's decoding is a chain of steps, each exactly one forward pass:
 *   eng_ppd_seq_step_add     append this step's rows to a shared eng_batch: the
 *                            root, the candidate nodes of the current depth
 *                            state's tree and their prompt-token rows, at
 *                            positions P + pos_off, each row seeing the
 *                            committed prefix plus its tree ancestors;
 *   (the caller runs eng_forward_run over the batch, possibly holding many
 *    sequences)
 *   eng_ppd_seq_step_finish  read this sequence's logits rows, verify by walking
 *                            the tree, emit the accepted tokens, compact their
 *                            K/V to the front in ascending order, take the next
 *                            guesses from the accepted node's prompt rows and
 *                            switch to its depth state.
 * Prefill is the caller's: ordinary causal chunks for prompt[0 .. P-1), then
 * eng_ppd_seq_prefill_add / _finish for the last prompt token (with the last
 * chunk, when it fits in the same step) plus the N prompt-token rows, which
 * yields the first root and guesses.
 *
 * Verification (one rule for greedy and sampling, both lossless): at the root
 * and then at every accepted node, choose the next token from the model's own
 * logits there exactly as plain decoding would (eng_sample: argmax at
 * temperature 0, else one uniform draw from the temperature/top-k/top-p/min-p
 * distribution); if it is one of the node's children, accept that child and
 * go on, otherwise it becomes the next step's root.  Every emitted token costs
 * one draw, in emission order, so a seed gives the same text as plain
 * sampling.  Retrieve rows are never consulted, so the reference's padding
 * sentinel cannot be accepted.  Emission stops at the first
 * end-of-generation token and at n_predict, inside a step if need be.
 *
 * Opt-in instead: the reference's Medusa-style typical acceptance (not
 * lossless, no random draws): roots are argmax; along each retrieve row a candidate is
 * accepted while its probability under softmax(logits / temperature) exceeds
 * min(eps, alpha * exp(-entropy)); the longest row wins, ties by the largest
 * sum of log-probabilities, then the first row.
 *
 * Not here: penalties (presence/frequency need the per-node history; the
 * plain loop does not apply them either), scheduling many sequences
 * (engine/decode/sched.c).
 */
#ifndef PPD_PPD_H
#define PPD_PPD_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/model/batch.h"
#include "engine/model/forward.h"
#include "engine/decode/generate.h"
#include "engine/model/kv_cache.h"
#include "engine/ppd/ppd_adapter.h"
#include "engine/ppd/ppd_tree.h"
#include "engine/decode/sampler.h"

struct tok;

/* What sequences share: the adapter and the tree buffers of every state. */
struct eng_ppd {
    const struct eng_ppd_adapter *ad;    /* not owned */
    struct eng_ppd_trees trees;
    int n_prompt, topk;
};

/* The tree family must match the adapter's N and K. */
int eng_ppd_init(struct eng_ppd *p, const struct eng_ppd_adapter *ad, const struct eng_ppd_tree_family *fam,
                 char *err, size_t err_cap);
void eng_ppd_free(struct eng_ppd *p);    /* accepts NULL */

/* Rows one PPD sequence may need in a step: its largest tree, or the prefill
 * tail (last prompt token + N prompt rows).  The scheduler sizes steps by it
 * and PPD set-up fits trees to it. */
static inline int eng_ppd_seq_rows(const struct eng_ppd *p) {
    return p->trees.max_T > p->n_prompt + 1 ? p->trees.max_T : p->n_prompt + 1;
}

enum eng_ppd_accept {
    ENG_PPD_ACCEPT_EXACT = 0,    /* lossless: greedy, or sampling one draw per token */
    ENG_PPD_ACCEPT_TYPICAL,      /* Medusa typical acceptance (opt-in, not lossless) */
};

struct eng_ppd_typical {
    float eps;                   /* posterior_threshold, 0.09 in the reference */
    float alpha;                 /* posterior_alpha, 0.3 */
};

/* Called after each step's guesses are chosen, before the next step is built:
 * cand[0] is the root, cand[1 + K*t + r] the rank-r guess of prompt token t+1
 * for t < d.  Tests replace guesses through it (e.g. with a known
 * continuation) to drive acceptance; verification keeps the output exact. */
typedef void (*eng_ppd_guess_fn)(void *user, int32_t *cand, int d, int topk, int n_emitted);

struct eng_ppd_seq {
    const struct eng_ppd *ppd;
    int slot;
    struct eng_sampler_params sp;
    struct eng_rng rng;
    struct eng_sampler_scratch *scratch;
    const struct tok *tok;       /* end-of-generation test; NULL: none */
    bool ignore_eog;
    int n_predict;               /* tokens to emit at most */
    int n_emitted;
    bool done;
    enum eng_finish finish;
    /* step state */
    int d;                       /* depth state of the next step */
    int32_t *cand;               /* [1 + K*N]: root, then the guesses of each prompt token */
    int b_first;                 /* first batch row of the pending step */
    int pending;                 /* 0: none, 1: prefill tail, 2: tree step, 3: plain step */
    bool plain;                  /* near the end of the KV slot: one-row steps from now on */
    bool plain_next;             /* set by the caller: the next step is one plain row (the
                                    calibrated choice for this batch size); tree steps resume
                                    after it with the guesses they had (verification decides) */
    int n_past;                  /* committed entries when the pending step was built */
    int32_t emit_row[ENG_PPD_MAX_PROMPT + 2];   /* the batch row whose logits chose each token the last
                                                   prefill_finish / step_finish emitted (valid until the
                                                   next forward pass: logprobs are read there) */
    eng_ppd_guess_fn guess_fn;
    void *guess_user;
    enum eng_ppd_accept accept;  /* set after init; EXACT by default */
    struct eng_ppd_typical typical;
    double *node_lse;            /* [max_T] typical acceptance: per-node log-sum-exp, */
    double *node_tau;            /* [max_T] threshold, */
    int32_t *node_seen;          /* [max_T] and the step they were computed in */
    /* statistics */
    int steps;                               /* tree steps finished */
    int last_acc;                            /* root + accepted candidates of the last step */
    int hist[ENG_PPD_MAX_PROMPT + 2];        /* [a]: steps that emitted a tokens (root included) */
};

int eng_ppd_seq_init(struct eng_ppd_seq *s, const struct eng_ppd *ppd, int slot, const struct eng_sampler_params *sp,
                     int n_predict, const struct tok *tok, bool ignore_eog, int n_vocab);
void eng_ppd_seq_free(struct eng_ppd_seq *s);   /* accepts NULL */

/* Prefill tail: the prompt's last n_rest >= 1 tokens (the slot's committed
 * entries are the ones before them; usually n_rest = 1, the last token alone,
 * more when the caller folds the last prefill chunk into this step) and the N
 * prompt-token rows, one causal run (only the tokens when the slot cannot
 * hold P + N entries: the sequence then decodes plainly).  ENG_E_RANGE if the
 * batch is full, ENG_E_TOO_LONG if the slot cannot hold the P prompt entries. */
int eng_ppd_seq_prefill_add(struct eng_ppd_seq *s, struct eng_batch *b, const struct eng_kv *kv, const int32_t *rest,
                            int n_rest);
/* After the forward: commit P entries, choose (and emit) the first root, take
 * the first guesses.  Emitted tokens go to out (room for ENG_PPD_MAX_PROMPT + 2). */
int eng_ppd_seq_prefill_finish(struct eng_ppd_seq *s, const struct eng_forward *f, struct eng_kv *kv, int32_t *out,
                               int *n_out);

/* This step's rows.  Near the end of the slot, where the tree's T entries no
 * longer fit after P, the step is one plain row (the root), and so are all
 * later steps: PPD then stops exactly where plain decoding would.
 * ENG_E_TOO_LONG when not even that fits (the caller finishes the sequence
 * with ENG_FINISH_CONTEXT); ENG_E_RANGE when the batch has no room. */
int eng_ppd_seq_step_add(struct eng_ppd_seq *s, struct eng_batch *b, const struct eng_kv *kv);
/* Verify, emit (into out, at most N + 1 tokens), compact, next state. */
int eng_ppd_seq_step_finish(struct eng_ppd_seq *s, const struct eng_forward *f, struct eng_kv *kv, int32_t *out,
                            int *n_out);

/* Rows a step of the current state feeds (for batch planning). */
int eng_ppd_seq_step_rows(const struct eng_ppd_seq *s);

/* ---- one sequence start to end (ppd generate, bench, tests) ---- */

struct eng_ppd_gen_stats {
    struct eng_gen_stats gen;    /* steps = tree steps */
    double forward_s;            /* decode time inside eng_forward_run */
    double build_s;              /* decode time in eng_ppd_seq_step_add (the step's rows) */
    double verify_s;             /* decode time in eng_ppd_seq_step_finish (verification,
                                    compaction, next guesses); the rest of decode_s is
                                    the loop and the caller's on_tokens */
    int hist[ENG_PPD_MAX_PROMPT + 2];
};

/* Like eng_generate, with PPD.  acc_len, when not NULL, receives each tree
 * step's accepted length, root included (capacity p->n_predict). */
struct eng_ppd_gen_opts {
    enum eng_ppd_accept accept;
    struct eng_ppd_typical typical;
    eng_ppd_guess_fn guess_fn;   /* tests */
    void *guess_user;
};

/* opts may be NULL: exact acceptance, no guess hook. */
int eng_ppd_generate(struct eng_forward *f, struct eng_kv *kv, int slot, const struct tok *t,
                     const struct eng_ppd *ppd, const int32_t *prompt, int n_prompt, const struct eng_gen_params *p,
                     eng_gen_token_fn on_tokens, void *user, int32_t *out_ids, int *acc_len,
                     struct eng_ppd_gen_stats *st, const struct eng_ppd_gen_opts *opts);

#endif

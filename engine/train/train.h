/* train.h — training the PPD prompt tokens on distilled sequences (`ppd train`).
 *
 * Input: a `ppd distill` file (JSONL: a header naming the model's fingerprint,
 * then one record per prompt with the rendered prompt ids and the model's own
 * greedy answer).  For each sequence the trainer runs one ordinary inference
 * prefill (the teacher pass: it yields the prefix K/V and, at every chosen
 * position, the teacher's logits), picks random cut points inside the answer,
 * and runs the N prompt rows of every cut forward and backward through the
 * float model (train_model.h; docs/training.md).  Loss: per cut,
 * (1/N) Σ_i 0.8^i KL(teacher_i ‖ student_i), averaged over the cuts of a step.
 * AdamW on the N·H prompt embeddings, cosine learning-rate schedule.
 *
 * Reproducible: the split, the order and every cut are functions of the seed,
 * the epoch and the sequence's index, and every product is summed in an
 * order independent of the thread count, so a seed gives the same adapter —
 * also across a checkpoint and resume.  A held-out split measures the prompt
 * tokens' per-offset, per-rank hit rates and the joint distribution of
 * their ranks, stored in the adapter as ppd.accuracy and ppd.rank_joint for the
 * tree builder.  eval_only measures an existing adapter on other data (all of
 * it held out) without training it.
 *
 * Not here: distillation (cli/distill.c), the float model (train_model.c).
 */
#ifndef PPD_TRAIN_H
#define PPD_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "engine/ppd/ppd_adapter.h"

struct eng_train_params {
    const char *model_path;
    const char *data_path;         /* ppd distill JSONL */
    const char *out_path;          /* adapter to write */
    const char *init_path;         /* adapter to start from; NULL: the paper's text init */
    const char *checkpoint_path;   /* NULL: no checkpoints */
    int resume;                    /* continue from checkpoint_path */
    int n_prompt, topk;            /* N, K */
    int epochs;
    long max_steps;                /* > 0: stop after this many steps (cosine spans them) */
    long max_seqs;                 /* > 0: use only the first max_seqs records */
    long stop_after;               /* > 0: stop once this many steps are done (resume later) */
    int batch_seqs;                /* sequences per optimiser step */
    int cuts_per_seq;              /* cut points per sequence per step */
    double lr, weight_decay, beta1, beta2, adam_eps;
    double decay;                  /* prompt row i's loss weight decay^i (0.8) */
    int loss_ce;                   /* 1: cross-entropy on the teacher's top token; 0: KL (the paper's) */
    double val_frac;               /* held-out share of the sequences */
    int val_max_seqs;              /* at most this many held-out sequences (0: no cap) */
    int eval_every;                /* steps between validations (0: only at the end) */
    int save_every;                /* steps between checkpoints (0: only at the end) */
    uint64_t seed;
    int n_threads;
    int progress;                  /* 1: redraw a progress line on stderr; 0: a line per eval */
    int deep;                      /* deep prompts: a trained vector per layer and prompt token,
                                    * added to the prompt rows' residual stream (layers 1..) */
    int eval_only;                 /* no training: measure init_path's held-out hit rates and rank
                                    * joint, and write it with them */
};

void eng_train_params_default(struct eng_train_params *p);

struct eng_train_report {
    long steps, cuts;
    int n_train, n_val;
    double train_loss;             /* mean over the last eval interval */
    double val_loss;               /* mean per cut */
    double acc[ENG_PPD_MAX_PROMPT][ENG_PPD_MAX_TOPK];   /* held-out hit rates */
    double val_loss_init;          /* before training */
    double acc_init[ENG_PPD_MAX_PROMPT];                /* top-1 before training */
    double seconds;
    double teacher_s, student_s;   /* inside the teacher prefills / the float passes */
    long tokens;                   /* tokens in the used sequences */
};

int eng_train_run(const struct eng_train_params *p, struct eng_train_report *rep, char *err, size_t err_cap);

#endif

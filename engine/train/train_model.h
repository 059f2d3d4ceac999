/* train_model.h — the frozen model in float, run forward and backward through
 * the PPD prompt-token rows only (docs/training.md).
 *
 * Because the prompt tokens are appended after the text and attention is
 * causal, nothing the text rows compute depends on the prompt embeddings E:
 * their keys and values are constants, taken from an ordinary inference
 * prefill (the caller's KV cache).  So a training example — a "cut" at text
 * length L — is just N rows: prompt token i at position L + i, seeing the L
 * prefix entries and prompt rows 0..i, trained towards the teacher's
 * distribution of the token after position L + i (the teacher logits of the
 * row at L + i in the same prefill).  This file runs those rows for many
 * cuts at once:
 *   loss = Σ_cuts Σ_i w_i · KL(softmax(teacher_i) ‖ softmax(student_i))
 * and, on request, adds grad_scale · ∂loss/∂E to a gradient buffer.
 *
 * The weights are dequantized to float once (and kept transposed too, so the
 * backward products use the same kernel, kernels/cpu/gemm_f32.h); the student
 * rows are computed in float throughout, so the analytic gradient is the exact
 * derivative of this float function (tests check it against finite
 * differences on a tiny random model).  Results do not depend on the thread
 * count.
 *
 * Not here: choosing cut points, the optimiser, files (engine/train/train.c).
 */
#ifndef PPD_TRAIN_MODEL_H
#define PPD_TRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model/model.h"
#include "engine/ppd/ppd_adapter.h"

struct eng_pool;

struct eng_tm_layer {
    float *attn_norm, *ffn_norm;                   /* [H] */
    float *wq, *wk, *wv, *wo, *wg, *wu, *wd;       /* [n_out, n_in] */
    float *wqT, *wkT, *wvT, *woT, *wgT, *wuT, *wdT;/* [n_in, n_out] */
    float *bq, *bk, *bv;                           /* qwen2: [QD], [KV], [KV]; else NULL */
    float *q_norm, *k_norm;                        /* qwen3: [head_dim]; else NULL */
};

struct eng_tm {
    struct eng_hparams hp;         /* rope_freq_factors points at rope_ff */
    int kv_dim, q_dim;
    float *rope_ff;                /* [n_rot/2] copy of the model's, or NULL */
    struct eng_tm_layer *layers;   /* [n_layer] */
    float *out_norm;               /* [H] */
    float *wout, *woutT;           /* [V, H], [H, V] */
    struct eng_pool *pool;
    size_t bytes;                  /* memory held for weights */
};

/* Dequantize m's weights (CPU backend).  n_threads >= 1. */
int eng_tm_from_model(struct eng_tm **out, const struct eng_model *m, int n_threads, char *err, size_t err_cap);
/* A random model of the given shape (tests): weights uniform in ±scale, norm
 * weights near 1. */
int eng_tm_random(struct eng_tm **out, const struct eng_hparams *hp, uint64_t seed, float scale, int n_threads);
void eng_tm_free(struct eng_tm *tm);   /* accepts NULL */

/* One training example: the N prompt rows after a text prefix of n_prefix tokens. */
struct eng_tm_cut {
    int n_prefix;              /* L >= 1 */
    const float *k, *v;        /* layer 0's prefix K (after RoPE) and V, rows of kv_dim */
    size_t layer_stride;       /* floats from one layer's prefix K (or V) to the next */
    const float *teacher;      /* [N, n_vocab] teacher logits for prompt rows 0..N-1 */
};

struct eng_tm_result {
    double loss;                               /* Σ_cuts Σ_i w_i KL */
    double kl[ENG_PPD_MAX_PROMPT];             /* Σ_cuts KL per prompt row (unweighted) */
    long hits[ENG_PPD_MAX_PROMPT][ENG_PPD_MAX_TOPK];  /* teacher's top token at student rank k */
    long n_cut;
};

struct eng_tm_work;

/* The training loss per prompt row: the paper's KL(teacher ‖ student) over the
 * vocabulary, or the cross-entropy of the student on the teacher's top token
 * (the reference's hard-label variant; greedy
 * acceptance only needs that token ranked first). */
enum eng_tm_loss { ENG_TM_LOSS_KL, ENG_TM_LOSS_CE };

/* Scratch for up to max_cuts cuts of n_prompt rows and prefixes up to max_prefix. */
int eng_tm_work_init(struct eng_tm_work **out, const struct eng_tm *tm, int n_prompt, int max_cuts, int max_prefix);
void eng_tm_work_free(struct eng_tm_work *w);   /* accepts NULL */
void eng_tm_work_set_loss(struct eng_tm_work *w, enum eng_tm_loss loss);   /* KL unless set */
/* Deep prompts (experiment): emb and grad become [n_layer][N][H]; layer 0 is the
 * prompt embedding, layer l > 0's vector is added to the prompt rows' input of layer l. */
void eng_tm_work_set_deep(struct eng_tm_work *w, int deep);

/* Forward over n_cut cuts with prompt embeddings emb [N, H]; w[i] weights the
 * KL of prompt row i.  When grad is not NULL, backward too: grad [N, H] +=
 * grad_scale · ∂loss/∂emb.  res (not NULL) is overwritten; hits count ranks
 * below topk (<= ENG_PPD_MAX_TOPK).  ranks (NULL or [n_cut * N]) receives, per
 * cut and prompt row, the rank of the teacher's top token (topk: not in the top
 * topk), for the joint statistics of the tree builder.  ENG_E_RANGE if the cuts
 * exceed the scratch. */
int eng_tm_run(const struct eng_tm *tm, struct eng_tm_work *w, const float *emb, int n_prompt,
               const struct eng_tm_cut *cuts, int n_cut, const float *wt, float *grad, float grad_scale, int topk,
               struct eng_tm_result *res, int *ranks);

#endif

/* ppd_adapter.h — the PPD adapter file (`*.ppd.gguf`): the trained prompt-token
 * embeddings of one base model, and what is known about them.
 *
 * Contents (docs/ppd.md, "Prompt tokens and the adapter file"):
 *   tensor ppd.prompt_embeddings  F32, ne = {H, N}: row i is prompt token i (V = 1)
 *   tensor ppd.accuracy           F32, ne = {K, N}: a[i][k], the probability that the
 *                                 rank-k guess of prompt token i+1 is right (optional:
 *                                 an untrained adapter has none); the tree builder's input
 *   tensor ppd.deep_prompts       F32, ne = {H, N, n_layer - 1} optional: deep prompts, a vector
 *                                 per layer l >= 1 and prompt token, added to that prompt
 *                                 row's input of layer l (ppd train --deep; not in the paper)
 *   tensor ppd.rank_joint         F32, ne = {(K+1)^N} optional: the joint distribution of the
 *                                 ranks (r_1..r_N) at which the N prompt tokens hold the
 *                                 truth (rank K: not in the top K), index sum_i r_i (K+1)^i;
 *                                 when present the tree builder scores paths with it instead
 *                                 of the product of marginals (right guesses are correlated)
 *   ppd.n_prompt (u32) N, ppd.topk (u32) K, ppd.base.name (str),
 *   ppd.base.fingerprint (u64) = eng_model.fingerprint of the base model,
 *   ppd.provenance (str) how the embeddings were made, ppd.init_text (str) optional,
 *   ppd.tree_L (u32) optional: the tree budget measured best (`ppd tree tune`); the
 *   default tree is built from ppd.accuracy with it; ppd.tuned_speedup (f32) optional:
 *   the speed-up measured with it on the machine that ran the tune (a record: whether
 *   PPD is on is decided by calibration on the device that runs it, never by this).
 * Loading checks shapes and, when a model is given, the fingerprint: an adapter
 * made for another model is refused with a message naming both models.
 *
 * Not here: training (engine/train/train.c), importing the paper's PEFT safetensors
 * files (engine/ppd/ppd_import.h), V > 1 ensembles (inference uses V = 1 only,
 * as the paper's does).
 */
#ifndef PPD_PPD_ADAPTER_H
#define PPD_PPD_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

struct eng_model;
struct tok;

#define ENG_PPD_MAX_PROMPT 16    /* N at most: keeps per-node arrays small and fixed */
#define ENG_PPD_MAX_TOPK 64
/* The rank joint is stored only while (K+1)^N stays this small (N = 3, K = 10: 1331). */
#define ENG_PPD_JOINT_MAX 65536

/* (K+1)^N, or 0 when that exceeds ENG_PPD_JOINT_MAX (then no joint is kept). */
int eng_ppd_joint_size(int n_prompt, int topk);
/* The paper's init text, used for every N, as the reference does (docs/ppd.md). */
#define ENG_PPD_INIT_TEXT "Next 2 word"

struct eng_ppd_adapter {
    int n_prompt;                /* N */
    int topk;                    /* K */
    int n_embd;                  /* H */
    float *emb;                  /* [N, H] host memory */
    float *accuracy;             /* [N, K], or NULL when not measured */
    float *joint;                /* [(K+1)^N] rank joint, or NULL when not measured */
    float *deep;                 /* [n_deep][N][H] deep prompts, or NULL (shallow, as the paper) */
    int n_deep;                  /* layers 1..n_deep each add their vector: the model's n_layer - 1 */
    char base_name[128];
    uint64_t base_fingerprint;
    char provenance[256];
    char init_text[128];         /* empty when not from a text init */
    int tree_budget;             /* tree budget chosen for this adapter (ppd tree tune); 0: none */
    float tuned_speedup;         /* decode speed-up ppd tree tune measured with tree_budget (0: not measured) */
};

/* Load and validate path.  When m is not NULL the adapter must belong to it
 * (same fingerprint and hidden size); otherwise ENG_E_INVALID with a message
 * naming the adapter's base model and m.  Bad files: ENG_E_FORMAT with
 * "PATH: FIELD: problem". */
int eng_ppd_adapter_load(struct eng_ppd_adapter **out, const char *path, const struct eng_model *m,
                         char *err, size_t err_cap);
/* Write a (version 3) GGUF atomically. */
int eng_ppd_adapter_save(const struct eng_ppd_adapter *a, const char *path, char *err, size_t err_cap);
/* An untrained adapter for m by the paper's text initialisation: tokenize text
 * (BOS as the model's tokenizer asks), take the first n_prompt ids, repeating
 * the list cyclically when it is shorter, and copy those rows of the token
 * embedding matrix (dequantized to f32). */
int eng_ppd_adapter_init_text(struct eng_ppd_adapter **out, const struct eng_model *m, const struct tok *t,
                              int n_prompt, int topk, const char *text, char *err, size_t err_cap);
void eng_ppd_adapter_free(struct eng_ppd_adapter *a);   /* accepts NULL */

/* The conventional adapter path for a model file: "DIR/STEM.ppd.gguf" where the
 * model is "DIR/STEM.gguf" or "DIR/STEM.QUANT.gguf" (QUANT a tag such as Q4_1,
 * Q4_K_M, F16: an adapter belongs to the model, not to one of its files).  ENG_E_RANGE when it does not fit in cap. */
int eng_ppd_adapter_default_path(const char *model_path, char *out, size_t cap);

#endif

/* model.h — a Llama-family model loaded from GGUF: hyper-parameters and weights.
 *
 * One loader for the decoder-only models built like Llama (RMSNorm, RoPE,
 * grouped-query attention, SwiGLU, tied or untied output), in the GGUF
 * architectures:
 *   llama  Llama 2/3/3.1/3.2, TinyLlama, SmolLM, Mistral-style, Vicuna
 *   qwen2  Qwen 2/2.5: biases on q, k and v; NeoX RoPE
 *   qwen3  Qwen 3: RMSNorm on each head of q and k before RoPE, a head size
 *          of its own (attention.key_length); NeoX RoPE
 * and RoPE scaling as llama.cpp reads it (Llama 3's rope_freqs, linear, YaRN).
 * A sliding attention window (Mistral's) is applied wherever the metadata
 * declares one, in any of these architectures (docs/architecture.md).
 * Shapes are checked against the metadata before anything is used; a bad
 * file is an error naming the tensor or key.  The tokenizer and chat template
 * are loaded separately from the same file.
 */
#ifndef PPD_MODEL_H
#define PPD_MODEL_H

#include <stdint.h>

#include "engine/model/backend.h"
#include "kernels/cpu/ops.h"

struct gguf_file;

enum eng_arch { ENG_ARCH_LLAMA, ENG_ARCH_QWEN2, ENG_ARCH_QWEN3 };

/* Zero in any of the rope_* scaling fields means "none" / the default, so a
 * shape written out field by field is plain RoPE. */
struct eng_hparams {
    int n_vocab;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;        /* attention.key_length, else n_embd / n_head */
    int n_ff;
    int n_ctx_train;
    int n_rot;           /* RoPE dimensions per head */
    int rope_neox;       /* 0: pairs (2i, 2i+1) as GGUF llama stores Q/K */
    float rope_freq_base;
    float rms_eps;
    int arch;                     /* enum eng_arch */
    float rope_scale_factor;      /* linear or YaRN stretch (0: none) */
    int rope_yarn;                /* 1: YaRN, 0: linear */
    int rope_ctx_orig;            /* YaRN: the training context (0: n_ctx_train) */
    float rope_attn_factor;       /* cos/sin magnitude (0: 1) */
    const float *rope_freq_factors;  /* [n_rot/2] host floats (Llama 3's rope_freqs), or NULL */
    int n_swa;                    /* attention.sliding_window: a row at position p sees the
                                     positions > p - n_swa (0: all; every layer alike) */
};

struct eng_layer {
    float *attn_norm;    /* [n_embd], backend memory */
    float *ffn_norm;     /* [n_embd] */
    struct eng_weight wq, wk, wv, wo;        /* [n_embd -> q_dim], [n_embd -> kv_dim] x2, [q_dim -> n_embd] */
    struct eng_weight w_gate, w_up, w_down;  /* [n_embd -> n_ff] x2, [n_ff -> n_embd] */
    float *bq, *bk, *bv;                     /* qwen2: [q_dim], [kv_dim] x2; else NULL */
    float *q_norm, *k_norm;                  /* qwen3: [head_dim] each; else NULL */
};

/* Output width of the q projection: n_head * head_dim (n_embd for Llama). */
static inline int eng_hparams_q_dim(const struct eng_hparams *hp) { return hp->n_head * hp->head_dim; }
/* The model's RoPE (kernels/cpu/ops.h) from its hyper-parameters. */
struct kq_rope eng_hparams_rope(const struct eng_hparams *hp);
/* "llama", "qwen2", "qwen3". */
const char *eng_arch_name(int arch);

struct eng_model {
    struct gguf_file *gguf;      /* kept open: CPU weights point into its mapping */
    struct eng_backend *be;      /* not owned */
    struct eng_hparams hp;
    struct eng_weight tok_embd;  /* [n_embd] rows, n_vocab of them */
    struct eng_weight output;    /* [n_embd -> n_vocab]; same data as tok_embd when tied */
    int output_tied;
    float *output_norm;          /* [n_embd] */
    struct eng_layer *layers;    /* [n_layer] */
    char name[128];              /* general.name, or the file name */
    uint64_t fingerprint;        /* FNV-1a over the shapes and a sample of the weights */
    size_t weight_bytes;         /* bytes of all matrices read by one forward pass */
};

int eng_model_load(struct eng_model **out, const char *path, struct eng_backend *be, char *err, size_t err_cap);
void eng_model_free(struct eng_model *m);   /* accepts NULL */
/* Offer each layer's q/k/v and gate/up to the backend's weight_fuse (done by
 * eng_model_load; for models built by other means). */
void eng_model_fuse_weights(struct eng_model *m);

#endif

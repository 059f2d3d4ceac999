/* model.h — a Llama-family model loaded from GGUF: hyper-parameters and weights.
 *
 * One loader for every model of the Llama architecture (SmolLM2, TinyLlama,
 * Llama-2/3, Vicuna, MobileLLaMA): RMSNorm, RoPE, grouped-query attention,
 * SwiGLU, tied or untied output.  Shapes are checked against the metadata
 * before anything is used; a bad file is an error naming the tensor or key.
 * The tokenizer and chat template are loaded separately from the same file.
 */
#ifndef PPD_MODEL_H
#define PPD_MODEL_H

#include <stdint.h>

#include "backend.h"

struct gguf_file;

struct eng_hparams {
    int n_vocab;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int head_dim;        /* n_embd / n_head */
    int n_ff;
    int n_ctx_train;
    int n_rot;           /* RoPE dimensions per head */
    int rope_neox;       /* 0: pairs (2i, 2i+1) as GGUF llama stores Q/K */
    float rope_freq_base;
    float rms_eps;
};

struct eng_layer {
    float *attn_norm;    /* [n_embd], backend memory */
    float *ffn_norm;     /* [n_embd] */
    struct eng_weight wq, wk, wv, wo;        /* [n_embd -> n_embd], [n_embd -> kv_dim] x2, [n_embd -> n_embd] */
    struct eng_weight w_gate, w_up, w_down;  /* [n_embd -> n_ff] x2, [n_ff -> n_embd] */
};

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

/* random_model.h — a Llama model with random weights built in memory on a
 * backend, for the GPU checks: the default model's shape (CPU vs CUDA end to
 * end without the 98 MB download) and a Llama-2-7B shape (the step-latency
 * bench).  No GGUF file and no tokenizer: the caller feeds token ids.
 */
#ifndef PPD_TESTS_GPU_RANDOM_MODEL_H
#define PPD_TESTS_GPU_RANDOM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model/backend.h"
#include "engine/model/model.h"

/* Random GGUF bytes of n_out rows of n_in elements of `type` into p, with the
 * block scales kept in a sane range (no NaN/Inf halves). */
void rm_fill_weight(uint8_t *p, int type, int64_t n_in, int64_t n_out, uint64_t *rng);

/* SmolLM2-135M's shape, and Llama-2-7B's (untied output). */
struct eng_hparams rm_shape_smollm2_135m(void);
struct eng_hparams rm_shape_llama2_7b(void);

struct rm_model {
    struct eng_model *m;     /* eng_model_free()-compatible; gguf is NULL */
    uint8_t *pool;           /* host bytes the weights were made from (the CPU backend points into them) */
    size_t gpu_f16_bytes;    /* bytes of the matrices one 1-row pass reads when stored as f16 */
};

/* Build on `be`: every matrix of `type`, norms near 1, tied output when `tied`.
 * When all matrices need more than pool_cap bytes, one pool of the largest
 * matrix's size is filled and every matrix is made from its start (fine for
 * timing on a GPU, which copies each; not for correctness).  0 or an ENG_E_ code. */
int rm_build(struct rm_model *rm, struct eng_backend *be, const struct eng_hparams *hp, int type, int tied,
             uint64_t seed, size_t pool_cap);
void rm_free(struct rm_model *rm);

#endif

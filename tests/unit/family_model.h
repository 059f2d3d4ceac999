/* family_model.h — tiny random-weight GGUF models of every model family and
 * RoPE variant the loader reads, for comparing ppd with llama.cpp on them
 * (tests/unit/test_families.c, tests/golden/gen_families.py).
 *
 * Each model is F32, 2 layers, n_embd 64, n_ff 128, 4 heads, tied output, and
 * carries the default model's tokenizer metadata (tokenizer.*), so llama.cpp
 * loads it like a real checkpoint; keys and tensor names follow llama.cpp's
 * GGUF conventions.  The same variant, seed and source file always give the
 * same bytes: the weights come from one xorshift stream through float
 * operations IEEE 754 rounds exactly (products, sums, sqrtf; no exp or pow),
 * so a SHA-256 of the file pins the model on every machine.
 *
 * It does not make quantized models, and it says nothing about what a loader
 * should do with the files: the tests decide that.
 */
#ifndef PPD_TESTS_FAMILY_MODEL_H
#define PPD_TESTS_FAMILY_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/load/sha256.h"

enum fam_variant {
    FAM_LLAMA,          /* plain llama, 4/4 heads, rope.freq_base 10000 */
    FAM_LLAMA3_ROPE,    /* llama + rope_freqs.weight (divisors in [1, 8]), base 500000, 4/2 heads */
    FAM_LLAMA_LINEAR,   /* llama + rope.scaling.type linear, factor 4, 4/1 heads */
    FAM_QWEN2,          /* qwen2: q/k/v biases, NeoX RoPE, 4/2 heads */
    FAM_QWEN2_YARN,     /* qwen2 + YaRN, factor 4, original context 128 of 1024 */
    FAM_QWEN3,          /* qwen3: head size 32 (q_dim 128 != n_embd), q/k head norms */
    FAM_N_LLAMACPP,     /* the variants above are the ones llama.cpp decodes as ppd does */
    /* llama + attention.sliding_window 4, 4/2 heads: Mistral's windowed
     * attention, which llama.cpp ignores in llama files, so the tests compare
     * it with a float64 reference of their own instead */
    FAM_LLAMA_SWA = FAM_N_LLAMACPP,
    FAM_N_VARIANTS,
};

/* The window of FAM_LLAMA_SWA. */
#define FAM_SWA_WINDOW 4

/* "llama", "llama3-rope", "llama-linear", "qwen2", "qwen2-yarn", "qwen3", "llama-swa". */
const char *fam_variant_name(int variant);
/* The variant of that name, or -1. */
int fam_variant_by_name(const char *name);

/* Deliberate defects, for the loader's error paths; zero-initialised: none. */
struct fam_defect {
    const char *arch;           /* general.architecture (and the key prefix) instead of the variant's */
    const char *omit_tensor;    /* this tensor is left out */
    const char *scaling_type;   /* rope.scaling.type (factor 4) instead of the variant's */
    int rope_freqs_extra;       /* rope_freqs.weight gets this many values beyond n_rot/2 */
};

/* Write variant `variant` made from `seed` to dst, with the tokenizer.* keys
 * of the GGUF file src.  defect may be NULL.  0, or an ENG_E_ code with a
 * message in err. */
int fam_model_write(const char *src, const char *dst, int variant, uint64_t seed, const struct fam_defect *defect,
                    char *err, size_t err_cap);

/* Rewrite the type id of tensor `name` in the GGUF file at path, in place (the
 * file keeps its size: for types the reader must refuse before it looks at
 * the data). */
int fam_patch_tensor_type(const char *path, const char *name, uint32_t type, char *err, size_t err_cap);

/* The SHA-256 of a file's bytes as lower-case hex. */
int fam_file_sha256(const char *path, char hex[ENG_SHA256_HEX], char *err, size_t err_cap);

#endif

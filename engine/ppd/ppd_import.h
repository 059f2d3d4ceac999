/* ppd_import.h — importing the paper's released PPD adapters (PEFT format)
 * as ppd adapters (ppd_adapter.h).
 *
 * Input: a directory holding adapter_model.safetensors (tensor
 * `prompt_embeddings` [N*V, H], F32/F16/BF16; row i*V + j is virtual token j
 * of prompt token i) and adapter_config.json (PEFT's prompt-tuning fields plus
 * PPD's: num_special_tokens N, virtual_tokens_per_special_token V,
 * vt_attention_type, aggregation_type, base_model_name_or_path, ...;
 * docs/ppd.md), or the safetensors file itself (its config is then
 * looked for beside it, or given explicitly, or replaced by an explicit N with
 * V = 1 assumed).
 *
 * The result belongs to the model given: its hidden size must equal H (an
 * adapter for another model is refused naming both sizes) and the adapter
 * carries that model's name and fingerprint; the provenance records the source
 * and the config's base_model_name_or_path.
 *
 * V > 1: inference uses V = 1 only (as the paper's: the reference slices
 * exactly N prompt logits), so an ensemble adapter is refused unless
 * the caller names one member j, whose rows i*V + j are then taken alone — an
 * approximation of what was trained (the aggregated logits of all V members),
 * recorded as such in the provenance.
 *
 * Not here: PyTorch pickle files (adapter_model.bin; convert them to
 * safetensors first), prefix tuning, custom LM heads and multi-exit
 * adapters (refused: their prompt logits need weights this file lacks).
 */
#ifndef PPD_PPD_IMPORT_H
#define PPD_PPD_IMPORT_H

#include <stddef.h>

struct eng_model;
struct eng_ppd_adapter;

struct eng_ppd_import_opts {
    const char *config_path;   /* adapter_config.json; NULL: the one beside the safetensors file, if any */
    int n_prompt;              /* N when there is no config (V = 1 then); 0: from the config */
    int topk;                  /* K recorded in the adapter (the paper's trees use 10) */
    int ensemble_member;       /* -1: refuse V > 1; j in [0, V): take virtual token j of every prompt token */
};

#define ENG_PPD_IMPORT_OPTS_DEFAULT { NULL, 0, 10, -1 }

/* Import path (a directory or a .safetensors file) for model m.  Errors:
 * ENG_E_FORMAT (bad safetensors or config, with "FILE: FIELD: problem"),
 * ENG_E_INVALID (hidden size differs from m's, or flags contradict the config),
 * ENG_E_UNSUPPORTED (V > 1 without a member, pickle files, prefix tuning, ...),
 * ENG_E_NOT_FOUND (no safetensors file, or neither a config nor n_prompt),
 * ENG_E_RANGE (N, K or the member out of range), ENG_E_IO. */
int eng_ppd_adapter_import(struct eng_ppd_adapter **out, const char *path, const struct eng_model *m,
                           const struct eng_ppd_import_opts *o, char *err, size_t err_cap);

#endif

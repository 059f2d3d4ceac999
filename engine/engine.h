/* engine.h — everything one model needs to run, opened and closed together:
 * backend, weights, tokenizer, chat template, KV cache and forward scratch.
 *
 * The CLI commands and the server open one of these; the pieces stay
 * reachable for code that needs them individually (tests, the scheduler).
 */
#ifndef PPD_ENGINE_H
#define PPD_ENGINE_H

#include "engine/model/backend.h"
#include "engine/load/chat.h"
#include "engine/model/forward.h"
#include "engine/model/kv_cache.h"
#include "engine/model/model.h"

struct tok;

/* Where the model runs.  0 (CPU) is the default of a zeroed eng_engine_params. */
enum eng_device {
    ENG_DEVICE_CPU = 0,
    ENG_DEVICE_AUTO,        /* CUDA when a usable GPU exists, else the CPU (one log line) */
    ENG_DEVICE_CUDA,        /* CUDA or an error */
};

/* "auto", "cpu", "cuda" to enum eng_device; -1 for anything else. */
int eng_device_parse(const char *s);

struct eng_engine_params {
    const char *model_path;
    int device;             /* enum eng_device */
    int n_threads;          /* CPU threads (>= 1) */
    int n_ctx;              /* KV entries per slot; 0: min(model's context, 4096) */
    int n_slot;             /* sequences served at once */
    int max_rows;           /* largest forward batch (prefill chunk, trees) */
    const char *chat_template;  /* NULL: detect from the model */
};

struct eng_engine {
    struct eng_backend be;
    struct eng_model *model;
    struct tok *tok;
    struct chat_template chat;
    int chat_ok;            /* 0 when the model's template is unknown and none was named */
    struct eng_kv kv;
    struct eng_forward fwd;
};

int eng_engine_open(struct eng_engine **out, const struct eng_engine_params *p, char *err, size_t err_cap);
void eng_engine_close(struct eng_engine *e);   /* accepts NULL */

/* Render messages with the engine's chat template and tokenize (special tokens
 * parsed).  *ids is malloc'd. */
int eng_engine_chat_tokens(const struct eng_engine *e, const struct chat_msg *msgs, int n, int32_t **ids,
                           int *n_ids, char *err, size_t err_cap);
/* Tokenize raw text (special tokens parsed, BOS as the model asks). *ids is malloc'd. */
int eng_engine_text_tokens(const struct eng_engine *e, const char *text, int32_t **ids, int *n_ids);

#endif

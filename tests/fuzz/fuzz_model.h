/* fuzz_model.h — what the fuzz targets that need a real vocabulary share:
 * the default model's tokenizer and chat template, loaded once per process
 * from PPD_TEST_MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf).
 *
 * Only the GGUF metadata is read (the reader maps the file; no weights are
 * dequantized and no engine is opened), so start-up takes well under a second.
 * A missing model aborts: a fuzz run without its vocabulary would test nothing.
 * Header-only (static functions) because every target is one .c file.
 */
#ifndef PPD_FUZZ_MODEL_H
#define PPD_FUZZ_MODEL_H

#include <stdio.h>
#include <stdlib.h>

#include "engine/chat.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"

static const char *fuzz_model_path(void) {
    const char *p = getenv("PPD_TEST_MODEL");
    return p && p[0] ? p : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

/* The tokenizer, and (when chat is not NULL) the model's chat template with its
 * BOS/EOS texts, as eng_engine_open sets them up.  *chat_ok: whether the template
 * was recognised. */
static struct tok *fuzz_model_load(struct chat_template *chat, int *chat_ok) {
    struct gguf_file *g = NULL;
    struct tok *t = NULL;
    char err[512];
    if (gguf_open(&g, fuzz_model_path(), err, sizeof err) || tok_load(&t, g, err, sizeof err)) {
        fprintf(stderr, "fuzz: cannot load the tokenizer of %s: %s\n", fuzz_model_path(), err);
        abort();
    }
    if (chat) {
        const struct gguf_str *src;
        *chat_ok = gguf_get_str(g, "tokenizer.chat_template", &src, err, sizeof err) == 0 &&
                   chat_template_detect(src->s, chat, err, sizeof err) == 0;
        if (*chat_ok)
            chat_template_set_tokens(chat, tok_text(t, tok_bos(t), NULL), tok_text(t, tok_eos(t), NULL));
    }
    gguf_close(g);
    return t;
}

#endif

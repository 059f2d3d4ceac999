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

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/load/chat.h"
#include "engine/load/gguf.h"
#include "engine/load/tokenizer.h"

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF). */
static inline bool fuzz_utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) { k = 1; cp = c & 0x1f; min = 0x80; }
        else if (c >= 0xe0 && c <= 0xef) { k = 2; cp = c & 0x0f; min = 0x800; }
        else if (c >= 0xf0 && c <= 0xf4) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return false;
        if (n - i <= k) return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += k + 1;
    }
    return true;
}

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

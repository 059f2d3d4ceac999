/* tokenizer_spm.h — SentencePiece BPE (tokenizer_spm.c). */
#ifndef PPD_TOKENIZER_SPM_H
#define PPD_TOKENIZER_SPM_H

#include <stddef.h>

#include "engine/load/tokenizer_vocab.h"

/* Encode text, whose spaces have been escaped to U+2581. */
int tok_spm_encode(const struct tok *t, const char *text, size_t len, struct tok_vec *out);

#endif

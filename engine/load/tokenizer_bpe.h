/* tokenizer_bpe.h — byte-level BPE (tokenizer_bpe.c): the pre-tokenizer
 * regexes and the merge loop. */
#ifndef PPD_TOKENIZER_BPE_H
#define PPD_TOKENIZER_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/load/tokenizer_vocab.h"

int tok_bpe_init(struct tok *t, const char *pre_name, char *err, size_t err_cap);
void tok_bpe_free(struct tok *t);
int tok_bpe_encode(const struct tok *t, const char *text, size_t len, struct tok_vec *out);
/* GPT-2's byte <-> printable code point mapping: byte b is code point tok_byte_cpt(b). */
uint32_t tok_byte_cpt(unsigned char b);
/* Inverse: the byte for code point c, or -1 when c is not in the table. */
int tok_cpt_byte(uint32_t c);

#endif

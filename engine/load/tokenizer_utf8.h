/* tokenizer_utf8.h — the UTF-8 helpers the tokenizer's files share
 * (tokenizer_utf8.c). */
#ifndef PPD_TOKENIZER_UTF8_H
#define PPD_TOKENIZER_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* llama.cpp's lenient decoder: one code point from s[*i..n), advancing *i;
 * a malformed sequence gives U+FFFD and advances one byte. */
uint32_t tok_utf8_next_lenient(const unsigned char *s, size_t n, size_t *i);
/* Encode c (any value below 2^21) into out (4 bytes); returns the length. */
size_t tok_utf8_put(uint32_t c, char *out);

#endif

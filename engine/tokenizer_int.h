/* tokenizer_int.h — what the tokenizer's own files share: the vocabulary
 * struct, its hash maps and the growable buffers of one encode call.
 *
 * Only engine/tokenizer*.c include this; everything else uses tokenizer.h.
 * It holds no algorithm: the BPE merge loop lives in tokenizer_bpe.c, the
 * SentencePiece one in tokenizer_spm.c, decoding in tokenizer_detok.c.
 */
#ifndef PPD_TOKENIZER_INT_H
#define PPD_TOKENIZER_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

/* Private attribute bit: the token ends generation (kept beside the public
 * TOK_ATTR_* bits so one array answers every per-token question). */
#define TOK_ATTR_EOG_ 0x8000u

/* Pre-tokenizer families: each is one list of regexes applied in sequence,
 * exactly as llama.cpp's llm_tokenizer_bpe chooses them from tokenizer.ggml.pre. */
enum tok_pre {
    TOK_PRE_DEFAULT = 0,
    TOK_PRE_GPT2,
    TOK_PRE_SMOLLM,     /* also starcoder, refact, command-r, codeshell, exaone, minerva */
    TOK_PRE_LLAMA3,
    TOK_PRE_QWEN2,
};

#define TOK_MAX_REGEX 4

/* Open-addressing map from byte strings to entry indices.  The keys are not
 * stored: entry i's key is base + off[i], len[i] bytes, so the vocabulary and
 * the merge list each keep one copy of their strings. */
struct tok_map {
    int32_t *slot;          /* entry index, or -1 for empty */
    uint32_t mask;          /* slot count - 1 (a power of two) */
    const char *base;
    const uint32_t *off;
    const uint32_t *len;
};

struct tok {
    enum tok_kind kind;
    enum tok_pre pre;
    int32_t n_vocab;

    char *text;             /* token texts, each NUL-terminated */
    uint32_t *text_off, *text_len;
    float *score;
    uint16_t *attr;         /* TOK_ATTR_* | TOK_ATTR_EOG_ */
    struct tok_map vocab;   /* text -> id */

    char *piece;            /* each token's decoded bytes (special tokens as text) */
    uint32_t *piece_off, *piece_len;
    size_t piece_max;

    /* BPE merges: "left right" strings, rank = index */
    char *merge;
    uint32_t *merge_off, *merge_len;
    int32_t n_merge;
    struct tok_map merges;

    int32_t *special;       /* CONTROL / USER_DEFINED / UNKNOWN ids, longest text first */
    int32_t n_special;

    int32_t byte_tok[256];  /* SPM byte fallback: id of <0xNN> (or the 1-byte token), -1 */

    int32_t bos, eos, eot, eom, unk, pad;
    bool add_bos, add_eos, add_space_prefix, ignore_merges;

    int n_regex;
    pcre2_code *regex[TOK_MAX_REGEX];
};

/* Growable id list of one encode call. */
struct tok_vec {
    int32_t *v;
    size_t n, cap;
};

int tok_vec_push(struct tok_vec *v, int32_t id);

/* Map helpers (tokenizer.c).  tok_map_init sizes the table for n entries. */
uint64_t tok_hash(const char *s, size_t len);
int tok_map_init(struct tok_map *m, size_t n, const char *base, const uint32_t *off, const uint32_t *len);
void tok_map_free(struct tok_map *m);
/* Insert entry i; returns i, or the index already holding an equal key. */
int32_t tok_map_insert(struct tok_map *m, int32_t i);
int32_t tok_map_find(const struct tok_map *m, const char *key, size_t len);

/* Byte-level BPE (tokenizer_bpe.c). */
int tok_bpe_init(struct tok *t, const char *pre_name, char *err, size_t err_cap);
void tok_bpe_free(struct tok *t);
int tok_bpe_encode(const struct tok *t, const char *text, size_t len, struct tok_vec *out);
/* GPT-2's byte <-> printable code point mapping: byte b is code point tok_byte_cpt(b). */
uint32_t tok_byte_cpt(unsigned char b);
/* Inverse: the byte for code point c, or -1 when c is not in the table. */
int tok_cpt_byte(uint32_t c);

/* SentencePiece BPE (tokenizer_spm.c); text has had spaces escaped to U+2581. */
int tok_spm_encode(const struct tok *t, const char *text, size_t len, struct tok_vec *out);

/* UTF-8 helpers (tokenizer_detok.c). */
/* llama.cpp's lenient decoder: one code point from s[*i..n), advancing *i;
 * a malformed sequence gives U+FFFD and advances one byte. */
uint32_t tok_utf8_next_lenient(const unsigned char *s, size_t n, size_t *i);
/* Encode c (any value below 2^21) into out (4 bytes); returns the length. */
size_t tok_utf8_put(uint32_t c, char *out);

#endif

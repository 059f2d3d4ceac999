/* tokenizer_vocab.h — the vocabulary as the tokenizer's files share it: the
 * struct behind tokenizer.h's opaque struct tok, its hash maps and the
 * growable id list of one encode call.
 *
 * Only engine/tokenizer*.c include this; everything else uses tokenizer.h.
 * It includes nothing of the tokenizer, so the merge loops (tokenizer_bpe.c,
 * tokenizer_spm.c) read the vocabulary without depending on the file that
 * calls them (tokenizer.c).  It holds no algorithm.
 */
#ifndef PPD_TOKENIZER_VOCAB_H
#define PPD_TOKENIZER_VOCAB_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
    int kind;               /* enum tok_kind (tokenizer.h) */
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

#endif

/* tokenizer.h — text <-> token ids for the two vocabulary kinds found in GGUF
 * files: "gpt2" (byte-level BPE, pre-tokenized by regex per tokenizer.ggml.pre)
 * and "llama" (SentencePiece BPE with byte fallback).
 *
 * The reference is llama.cpp: for the same GGUF, tok_encode gives the ids
 * llama_tokenize gives (the golden tests check this on the default model, its
 * vocabulary under four other pre-tokenizers, and a SentencePiece vocabulary),
 * and tok_piece gives what llama_token_to_piece gives.  That includes its
 * quirks: invalid UTF-8 in BPE text becomes U+FFFD before pre-tokenization,
 * bytes without a token are dropped, and tokens llama.cpp treats as
 * end-of-generation are turned into control tokens.
 *
 * It does not do chat templates (chat.c), sampling, WordPiece/Unigram/RWKV
 * vocabularies, or llama.cpp's clean_up_tokenization_spaces step on decode.
 * A loaded struct tok is read-only: any number of threads may encode and
 * decode with it at once.
 */
#ifndef PPD_TOKENIZER_H
#define PPD_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/load/gguf.h"

#define TOK_NULL (-1)           /* "no such token" (an absent bos, a failed lookup) */

enum tok_kind { TOK_KIND_BPE = 1, TOK_KIND_SPM = 2 };

/* Token attributes, as llama.cpp derives them from tokenizer.ggml.token_type. */
enum tok_attr {
    TOK_ATTR_UNDEFINED = 0,
    TOK_ATTR_UNKNOWN = 1u << 0,
    TOK_ATTR_UNUSED = 1u << 1,
    TOK_ATTR_NORMAL = 1u << 2,
    TOK_ATTR_CONTROL = 1u << 3,
    TOK_ATTR_USER_DEFINED = 1u << 4,
    TOK_ATTR_BYTE = 1u << 5,
};

/* Flags of tok_piece, tok_decode and tok_detok_init. */
#define TOK_PIECE_SPECIAL 1u    /* render control and unknown tokens as their text (else: nothing) */
#define TOK_DECODE_STRIP_SPACE 2u /* drop one leading space from the first token's piece when the
                                   * vocabulary has add_space_prefix (what llama_detokenize does) */

struct tok;

/* Build a tokenizer from a GGUF's tokenizer.ggml.* keys.  Everything needed is
 * copied: the gguf may be closed afterwards.  Errors: ENG_E_FORMAT (missing
 * key, wrong type, id out of range, duplicate token, merge without a space),
 * ENG_E_UNSUPPORTED (a tokenizer.ggml.model other than gpt2/llama), ENG_E_NOMEM;
 * err gets "PATH: KEY: what is wrong".  An unknown tokenizer.ggml.pre is not an
 * error: the default pre-tokenizer is used and a warning logged. */
int tok_load(struct tok **out, const struct gguf_file *g, char *err, size_t err_cap);
void tok_free(struct tok *t);   /* accepts NULL */

/* Encode len bytes of text.  add_special: prepend BOS / append EOS as the
 * vocabulary's add_bos_token / add_eos_token say (llama.cpp's add_special).
 * parse_special: text equal to a control token (<|im_start|>, </s>) becomes
 * that token; user-defined tokens are always split out first, as llama.cpp does.
 * Writes at most cap ids; returns 0 with *n_out = count, or ENG_E_RANGE with
 * *n_out = the count needed when cap is too small (nothing useful written). */
int tok_encode(const struct tok *t, const char *text, size_t len, bool add_special,
               bool parse_special, int32_t *ids, int cap, int *n_out);
/* The same into a malloc'd array (*ids, free() it); *ids may be NULL when *n_out == 0. */
int tok_encode_alloc(const struct tok *t, const char *text, size_t len, bool add_special,
                     bool parse_special, int32_t **ids, int *n_out);

enum tok_kind tok_kind(const struct tok *t);
int tok_n_vocab(const struct tok *t);
int32_t tok_bos(const struct tok *t);   /* TOK_NULL when the vocabulary has none */
int32_t tok_eos(const struct tok *t);
int32_t tok_eot(const struct tok *t);   /* end of turn (<|im_end|>, <|eot_id|>, ...) */
int32_t tok_unk(const struct tok *t);
int32_t tok_pad(const struct tok *t);
bool tok_add_bos(const struct tok *t);
bool tok_add_eos(const struct tok *t);
/* End of generation: eos plus what llama.cpp adds (eot, <|im_end|>, <|endoftext|>,
 * </s>, <end_of_turn>, <|eot_id|>, FIM separators, ...). False out of range. */
bool tok_is_eog(const struct tok *t, int32_t id);
unsigned tok_attr(const struct tok *t, int32_t id);    /* TOK_ATTR_* bits; 0 out of range */
bool tok_is_control(const struct tok *t, int32_t id);

/* Exact vocabulary lookup of a NUL-terminated text (or len bytes); TOK_NULL if absent. */
int32_t tok_id_of(const struct tok *t, const char *text);
int32_t tok_id_of_n(const struct tok *t, const char *text, size_t len);
/* The token's text as stored in the vocabulary (NUL-terminated); NULL out of range. */
const char *tok_text(const struct tok *t, int32_t id, size_t *len);

/* The raw bytes token id decodes to (gpt2: byte-level mapping reversed; llama:
 * U+2581 -> space, <0xNN> -> that byte).  Control and unknown tokens give their
 * text with TOK_PIECE_SPECIAL and nothing without it; unused tokens give nothing.
 * Copies min(length, cap) bytes (no NUL) and returns the full length. */
size_t tok_piece(const struct tok *t, int32_t id, unsigned flags, char *buf, size_t cap);
size_t tok_piece_max(const struct tok *t);      /* longest piece of any token */

/* Decode a whole sequence into valid UTF-8 (bytes that do not form a character
 * become U+FFFD, one per maximal ill-formed subpart).  Equals feeding the ids to
 * a tok_detok and flushing.  Copies min(length, cap) bytes and returns the length. */
size_t tok_decode(const struct tok *t, const int32_t *ids, size_t n, unsigned flags,
                  char *out, size_t cap);

/* Incremental decoder for streaming: never emits part of a UTF-8 character.
 * Bytes of an unfinished character are held (at most 3) until the next push. */
struct tok_detok {
    unsigned char pend[4];
    uint8_t n_pend;
    uint8_t flags;
    bool started;
};

void tok_detok_init(struct tok_detok *d, unsigned flags);
/* Output room one push may need: tok_detok_push needs cap >= this. */
size_t tok_detok_cap(const struct tok *t);
#define TOK_DETOK_FLUSH_CAP 4   /* output room tok_detok_flush needs */
/* Append the complete characters now available; returns bytes written, or
 * SIZE_MAX (and changes nothing) when cap < tok_detok_cap(t). */
size_t tok_detok_push(const struct tok *t, struct tok_detok *d, int32_t id, char *out, size_t cap);
/* End of stream: held bytes become U+FFFD.  Returns bytes written (SIZE_MAX if cap < 4). */
size_t tok_detok_flush(struct tok_detok *d, char *out, size_t cap);

#endif

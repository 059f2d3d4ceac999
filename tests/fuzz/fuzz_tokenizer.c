/* fuzz_tokenizer.c — libFuzzer target: the default model's tokenizer, encode
 * then decode.
 *
 * Every input is encoded (plain text, and with special tokens parsed and BOS
 * added) and the ids decoded; none may crash or yield an out-of-range id.  For
 * valid UTF-8 the round trip must give back the input bytes exactly, for both
 * encodings (the special tokens decode to their text with TOK_PIECE_SPECIAL) —
 * unless the input holds a byte the vocabulary cannot represent.  SmolLM2's
 * byte-level vocabulary lacks a few: control bytes such as 0x13, and 0xf1 and
 * 0xf2, lead bytes of U+40000..U+BFFFF (fuzzing found one); its encoder drops
 * them, as llama.cpp's does (same ids).  Those bytes are found once at start by
 * looking each byte's character up in the vocabulary, and inputs holding one
 * are checked only for not crashing.
 *
 * Not here: comparing ids with llama.cpp (tests/golden does, on fixed texts).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_model.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tok *fuzz_tok;
static bool fuzz_byte_ok[256];

/* Encode then decode; true when the decoded bytes equal the input (minus the
 * BOS text when add_special put one in front). */
static bool fuzz_round_trip(const uint8_t *s, size_t n, bool special) {
    int32_t *ids = NULL;
    int n_ids = 0;
    if (tok_encode_alloc(fuzz_tok, (const char *)s, n, special, special, &ids, &n_ids)) abort();
    for (int i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= tok_n_vocab(fuzz_tok)) abort();
    int skip = special && n_ids > 0 && tok_add_bos(fuzz_tok) && ids[0] == tok_bos(fuzz_tok);
    unsigned flags = special ? TOK_PIECE_SPECIAL : 0;
    const int32_t *from = n_ids ? ids + skip : ids;   /* ids is NULL when there are none */
    size_t len = tok_decode(fuzz_tok, from, (size_t)(n_ids - skip), flags, NULL, 0);
    char *out = malloc(len + 1);
    if (!out) abort();
    if (tok_decode(fuzz_tok, from, (size_t)(n_ids - skip), flags, out, len + 1) != len) abort();
    bool same = len == n && !memcmp(out, s, n);
    free(out);
    free(ids);
    return same;
}

/* Whether the byte-level (gpt2) vocabulary has a token for byte b.  The
 * byte-to-character map of GPT-2: the printable Latin-1 bytes 0x21..0x7e,
 * 0xa1..0xac and 0xae..0xff stand for themselves; the other 68 bytes, in
 * order, for U+0100 onwards. */
static bool fuzz_byte_kept(int b) {
    int printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    unsigned cp = (unsigned)b;
    if (!printable) {
        cp = 0x100;
        for (int x = 0; x < b; x++)
            if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff))) cp++;
    }
    char u[3];
    size_t n = 0;
    if (cp < 0x80) u[n++] = (char)cp;
    else { u[n++] = (char)(0xc0 | cp >> 6); u[n++] = (char)(0x80 | (cp & 0x3f)); }
    return tok_id_of_n(fuzz_tok, u, n) != TOK_NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_tok = fuzz_model_load(NULL, NULL);
    int n_bad = 0;
    if (tok_kind(fuzz_tok) != TOK_KIND_BPE) {
        fprintf(stderr, "fuzz_tokenizer: %s is not a byte-level (gpt2) vocabulary\n", fuzz_model_path());
        abort();
    }
    for (int b = 0; b < 256; b++)
        if (!(fuzz_byte_ok[b] = fuzz_byte_kept(b))) {
            if (!n_bad++) fprintf(stderr, "fuzz_tokenizer: bytes the vocabulary drops (inputs holding one are not compared):");
            fprintf(stderr, " 0x%02x", b);
        }
    if (n_bad) fprintf(stderr, "\n");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *s = malloc(size ? size : 1);   /* exactly size bytes */
    if (!s) return 0;
    memcpy(s, data, size);
    bool check = fuzz_utf8_valid(s, size);
    for (size_t i = 0; i < size && check; i++) check = fuzz_byte_ok[s[i]];
    if (!fuzz_round_trip(s, size, false) && check) {
        fprintf(stderr, "plain encode/decode does not round-trip\n");
        abort();
    }
    if (!fuzz_round_trip(s, size, true) && check) {
        fprintf(stderr, "encode/decode with special tokens does not round-trip\n");
        abort();
    }
    free(s);
    return 0;
}

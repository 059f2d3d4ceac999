/* tokenizer.c — the vocabulary: loading and validating tokenizer.ggml.* from a
 * GGUF, the text -> id map, special tokens (which ones split the input before
 * BPE, which ones end generation), each token's decoded piece, and the encode
 * driver that splits text on special tokens and hands the rest to the BPE or
 * SentencePiece merge loop.
 *
 * Special-token handling follows llama.cpp's llama_vocab::impl::load and
 * tokenizer_st_partition step by step, because which token texts are "special"
 * changes the ids: llama.cpp promotes tokens whose text looks like an end of
 * turn or a fill-in-the-middle marker to CONTROL, and splits user-defined
 * tokens out even when special parsing is off.
 *
 * It does not do the merges (tokenizer_bpe.c, tokenizer_spm.c), UTF-8-safe
 * decoding (tokenizer_detok.c), or llama.cpp's per-model-name attribute hacks
 * (Phi-3 rstrip, jina/modern-bert mask lstrip).
 */
#include "engine/load/tokenizer.h"
#include "engine/load/tokenizer_bpe.h"
#include "engine/load/tokenizer_spm.h"
#include "engine/load/tokenizer_utf8.h"
#include "engine/load/tokenizer_vocab.h"
#include "engine/err.h"
#include "engine/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOK_VOCAB_MAX (1 << 24)         /* far above any real vocabulary; keeps offsets in 32 bits */
#define TOK_SHOW_MAX 40                 /* bytes of a token text quoted in messages */

/* ---------------------------------------------------------------- loading */

static const char *tok_path(const struct gguf_file *g) {
    return g && g->path ? g->path : "(gguf)";
}

/* An optional integer id key: absent keeps *id; present must be < n_vocab. */
static int tok_load_id(const struct gguf_file *g, const char *key, int32_t n_vocab, int32_t *id,
                       char *err, size_t err_cap) {
    const struct gguf_kv *kv = gguf_find_kv(g, key);
    if (!kv) return 0;
    int64_t v;
    int rc = gguf_get_i64(g, key, &v, err, err_cap);
    if (rc) return rc;
    if (v < 0 || v >= n_vocab)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: %s: id %lld out of range (n_vocab %d)",
                       tok_path(g), key, (long long)v, n_vocab);
    *id = (int32_t)v;
    return 0;
}

static int tok_load_bool(const struct gguf_file *g, const char *key, bool *b, char *err, size_t err_cap) {
    if (!gguf_find_kv(g, key)) return 0;
    return gguf_get_bool(g, key, b, err, err_cap);
}

/* Token texts: one arena, each NUL-terminated.  Empty texts become
 * "[EMPTY_<id>]" as in llama.cpp (an empty key could never be looked up). */
static int tok_load_tokens(struct tok *t, const struct gguf_file *g, char *err, size_t err_cap) {
    const struct gguf_kv *kv;
    int rc = gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_VT_STRING, &kv, err, err_cap);
    if (rc == ENG_E_NOT_FOUND)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: tokenizer.ggml.tokens: missing", tok_path(g));
    if (rc) return rc;
    if (kv->arr_n == 0 || kv->arr_n > TOK_VOCAB_MAX)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: tokenizer.ggml.tokens: %llu tokens (want 1..%d)",
                       tok_path(g), (unsigned long long)kv->arr_n, TOK_VOCAB_MAX);
    int32_t n = (int32_t)kv->arr_n;
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) total += (kv->arr_str[i].len ? kv->arr_str[i].len : 24) + 1;
    if (total > UINT32_MAX)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: tokenizer.ggml.tokens: texts too large", tok_path(g));
    t->n_vocab = n;
    t->text = malloc(total);
    t->text_off = malloc((size_t)n * sizeof *t->text_off);
    t->text_len = malloc((size_t)n * sizeof *t->text_len);
    t->score = calloc((size_t)n, sizeof *t->score);
    t->attr = malloc((size_t)n * sizeof *t->attr);
    t->piece_off = malloc((size_t)n * sizeof *t->piece_off);
    t->piece_len = malloc((size_t)n * sizeof *t->piece_len);
    if (!t->text || !t->text_off || !t->text_len || !t->score || !t->attr || !t->piece_off || !t->piece_len)
        return ENG_E_NOMEM;
    size_t pos = 0;
    for (int32_t i = 0; i < n; i++) {
        const struct gguf_str *s = &kv->arr_str[i];
        t->text_off[i] = (uint32_t)pos;
        if (s->len == 0) {
            int k = snprintf(t->text + pos, 24, "[EMPTY_%d]", i);
            t->text_len[i] = (uint32_t)k;
            pos += (size_t)k + 1;
        } else {
            memcpy(t->text + pos, s->s, s->len);
            t->text[pos + s->len] = 0;
            t->text_len[i] = (uint32_t)s->len;
            pos += s->len + 1;
        }
        t->attr[i] = TOK_ATTR_NORMAL;
    }
    rc = tok_map_init(&t->vocab, (size_t)n, t->text, t->text_off, t->text_len);
    if (rc) return rc;
    for (int32_t i = 0; i < n; i++) {
        int32_t j = tok_map_insert(&t->vocab, i);
        if (j != i)
            return eng_err_set(err, err_cap, ENG_E_FORMAT,
                           "%s: tokenizer.ggml.tokens: duplicate token \"%.*s\" at ids %d and %d", tok_path(g),
                           (int)(t->text_len[i] < TOK_SHOW_MAX ? t->text_len[i] : TOK_SHOW_MAX),
                           t->text + t->text_off[i], j, i);
    }
    return 0;
}

static int tok_load_scores_types(struct tok *t, const struct gguf_file *g, char *err, size_t err_cap) {
    const struct gguf_kv *kv = gguf_find_kv(g, "tokenizer.ggml.scores");
    if (kv) {
        if (kv->type != GGUF_VT_ARRAY || (kv->arr_type != GGUF_VT_FLOAT32 && kv->arr_type != GGUF_VT_INT32))
            return eng_err_set(err, err_cap, ENG_E_FORMAT,
                           "%s: tokenizer.ggml.scores: want an array of FLOAT32 or INT32", tok_path(g));
        if (kv->arr_n < (uint64_t)t->n_vocab)
            return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: tokenizer.ggml.scores: %llu scores for %d tokens",
                           tok_path(g), (unsigned long long)kv->arr_n, t->n_vocab);
        for (int32_t i = 0; i < t->n_vocab; i++)
            t->score[i] = kv->arr_type == GGUF_VT_FLOAT32 ? gguf_arr_f32(kv, (uint64_t)i)
                                                          : (float)gguf_arr_i32(kv, (uint64_t)i);
    }
    kv = gguf_find_kv(g, "tokenizer.ggml.token_type");
    if (kv) {
        int rc = gguf_get_arr(g, "tokenizer.ggml.token_type", GGUF_VT_INT32, &kv, err, err_cap);
        if (rc) return rc;
        if (kv->arr_n < (uint64_t)t->n_vocab)
            return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: tokenizer.ggml.token_type: %llu types for %d tokens",
                           tok_path(g), (unsigned long long)kv->arr_n, t->n_vocab);
        for (int32_t i = 0; i < t->n_vocab; i++) {
            /* llama_token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte */
            static const uint16_t map[7] = {TOK_ATTR_UNDEFINED, TOK_ATTR_NORMAL, TOK_ATTR_UNKNOWN,
                                            TOK_ATTR_CONTROL, TOK_ATTR_USER_DEFINED, TOK_ATTR_UNUSED,
                                            TOK_ATTR_BYTE};
            int32_t ty = gguf_arr_i32(kv, (uint64_t)i);
            t->attr[i] = ty >= 0 && ty <= 6 ? map[ty] : TOK_ATTR_UNDEFINED;
        }
    }
    return 0;
}

/* Merges "left right": split at the first space after the first byte, as
 * llama.cpp does; the whole string is the key the BPE loop looks up. */
static int tok_load_merges(struct tok *t, const struct gguf_file *g, char *err, size_t err_cap) {
    const struct gguf_kv *kv;
    int rc = gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_VT_STRING, &kv, err, err_cap);
    if (rc == ENG_E_NOT_FOUND)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: tokenizer.ggml.merges: missing (needed by a gpt2 vocabulary)",
                       tok_path(g));
    if (rc) return rc;
    if (kv->arr_n > INT32_MAX)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: tokenizer.ggml.merges: too many", tok_path(g));
    int32_t n = (int32_t)kv->arr_n;
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        const struct gguf_str *s = &kv->arr_str[i];
        if (s->len < 2 || !memchr(s->s + 1, ' ', s->len - 1))
            return eng_err_set(err, err_cap, ENG_E_FORMAT,
                           "%s: tokenizer.ggml.merges[%d]: \"%.*s\" is not two symbols separated by a space",
                           tok_path(g), i, (int)(s->len < TOK_SHOW_MAX ? s->len : TOK_SHOW_MAX), s->s);
        total += s->len;
    }
    if (total > UINT32_MAX)
        return eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: tokenizer.ggml.merges: too large", tok_path(g));
    t->n_merge = n;
    t->merge = malloc(total ? total : 1);
    t->merge_off = malloc((size_t)(n ? n : 1) * sizeof *t->merge_off);
    t->merge_len = malloc((size_t)(n ? n : 1) * sizeof *t->merge_len);
    if (!t->merge || !t->merge_off || !t->merge_len) return ENG_E_NOMEM;
    size_t pos = 0;
    for (int32_t i = 0; i < n; i++) {
        const struct gguf_str *s = &kv->arr_str[i];
        memcpy(t->merge + pos, s->s, s->len);
        t->merge_off[i] = (uint32_t)pos;
        t->merge_len[i] = (uint32_t)s->len;
        pos += s->len;
    }
    rc = tok_map_init(&t->merges, (size_t)n, t->merge, t->merge_off, t->merge_len);
    if (rc) return rc;
    for (int32_t i = 0; i < n; i++) tok_map_insert(&t->merges, i);  /* a repeated merge keeps its first rank */
    return 0;
}

static int32_t tok_find_text(const struct tok *t, const char *s) {
    return tok_map_find(&t->vocab, s, strlen(s));
}

static bool tok_text_in(const struct tok *t, int32_t id, const char *const *list) {
    const char *s = t->text + t->text_off[id];
    for (; *list; list++)
        if (strlen(*list) == t->text_len[id] && memcmp(*list, s, t->text_len[id]) == 0) return true;
    return false;
}

/* The token texts llama.cpp recognises (llama-vocab.cpp, "auto-detect special tokens by text"). */
static const char *const tok_eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "[EOT]", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "<end_of_utterance>",
    NULL};
static const char *const tok_eom_texts[] = {"<|eom_id|>", NULL};
static const char *const tok_fim_pre_texts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
    "<PRE>", "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
static const char *const tok_fim_suf_texts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>",
    "<SUF>", "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
static const char *const tok_fim_mid_texts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
    "<MID>", "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL};
static const char *const tok_fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const tok_fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>",
                                                "<reponame>", NULL};
static const char *const tok_fim_sep_texts[] = {"<|file_sep|>", NULL};
static const char *const tok_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~[", NULL};
static const char *const tok_always_user_texts[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>",
                                                    NULL};

/* Find-by-text for one special role: the first matching token (in id order;
 * llama.cpp walks a hash map, so with several candidates its pick may differ,
 * which only changes tok_eot(), never the EOG set) becomes a control token. */
static void tok_detect(struct tok *t, int32_t *id, const char *const *texts) {
    if (*id != TOK_NULL) return;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (tok_text_in(t, i, texts)) {
            *id = i;
            t->attr[i] |= TOK_ATTR_CONTROL;
            return;
        }
}

static void tok_eog_remove_text(struct tok *t, const char *text, uint16_t new_attr) {
    int32_t id = tok_find_text(t, text);
    if (id >= 0 && (t->attr[id] & TOK_ATTR_EOG_)) t->attr[id] = new_attr;
}

static bool tok_eog_has_text(const struct tok *t, const char *text) {
    int32_t id = tok_find_text(t, text);
    return id >= 0 && (t->attr[id] & TOK_ATTR_EOG_);
}

static void tok_mark_special(struct tok *t, int32_t fim_pad, int32_t fim_rep, int32_t fim_sep) {
    int32_t fim_pre = TOK_NULL, fim_suf = TOK_NULL, fim_mid = TOK_NULL;
    tok_detect(t, &t->eot, tok_eot_texts);
    tok_detect(t, &t->eom, tok_eom_texts);
    tok_detect(t, &fim_pre, tok_fim_pre_texts);
    tok_detect(t, &fim_suf, tok_fim_suf_texts);
    tok_detect(t, &fim_mid, tok_fim_mid_texts);
    tok_detect(t, &fim_pad, tok_fim_pad_texts);
    tok_detect(t, &fim_rep, tok_fim_rep_texts);
    tok_detect(t, &fim_sep, tok_fim_sep_texts);

    for (int32_t i = 0; i < t->n_vocab; i++)   /* control tokens named "unused" are unused */
        if ((t->attr[i] & TOK_ATTR_CONTROL) && strstr(t->text + t->text_off[i], "unused"))
            t->attr[i] |= TOK_ATTR_UNUSED;

    int32_t fixed[6] = {fim_pad, fim_rep, fim_sep, t->eos, t->eot, t->eom};
    for (int k = 0; k < 6; k++)
        if (fixed[k] != TOK_NULL) t->attr[fixed[k]] |= TOK_ATTR_EOG_;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (tok_text_in(t, i, tok_eog_texts)) t->attr[i] |= TOK_ATTR_EOG_ | TOK_ATTR_CONTROL;
    for (int32_t i = 0; i < t->n_vocab; i++)   /* gpt-oss: always rendered */
        if (tok_text_in(t, i, tok_always_user_texts))
            t->attr[i] = (uint16_t)(TOK_ATTR_USER_DEFINED | (t->attr[i] & TOK_ATTR_EOG_));

    /* o200k_harmony / solar-open: <|end|> ends a message, not generation */
    if ((tok_eog_has_text(t, "<|return|>") &&
         (tok_eog_has_text(t, "<|call|>") || tok_eog_has_text(t, "<|calls|>"))) ||
        ((tok_eog_has_text(t, "<|call|>") || tok_eog_has_text(t, "<|calls|>")) && tok_eog_has_text(t, "<|flush|>")))
        tok_eog_remove_text(t, "<|end|>", TOK_ATTR_USER_DEFINED);
    /* gemma4 / paddleocr: </s> is text there */
    if (tok_eog_has_text(t, "<|tool_response>")) tok_eog_remove_text(t, "</s>", TOK_ATTR_NORMAL);
}

static int tok_cmp_special(const void *a, const void *b, void *ctx) {
    const struct tok *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->text_len[x] != t->text_len[y]) return t->text_len[x] > t->text_len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int tok_build_special(struct tok *t) {
    int32_t n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (t->attr[i] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) n++;
    t->special = malloc((size_t)(n ? n : 1) * sizeof *t->special);
    if (!t->special) return ENG_E_NOMEM;
    t->n_special = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (t->attr[i] & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) t->special[t->n_special++] = i;
    /* longest first, so <|im_start|> wins over a shorter token inside it; ties by id */
    qsort_r(t->special, (size_t)t->n_special, sizeof *t->special, tok_cmp_special, t);
    return 0;
}

struct tok_buf {
    char *p;
    size_t n, cap;
};

static int tok_buf_put(struct tok_buf *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return ENG_E_NOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* A BYTE token's value: two hex digits after "<0x" (llama.cpp: strtol of substr(3, 2)). */
static int tok_byte_value(const char *s, size_t len) {
    int v = 0;
    for (size_t i = 3; i < len && i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) break;
        v = v * 16 + d;
    }
    return v;
}

/* What llama_token_to_piece(special = true) gives, computed once per token. */
static int tok_piece_build(const struct tok *t, int32_t id, struct tok_buf *b) {
    const char *s = t->text + t->text_off[id];
    size_t len = t->text_len[id];
    unsigned a = t->attr[id];
    if (a & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED)) return tok_buf_put(b, s, len);
    if (a & TOK_ATTR_NORMAL) {
        if (t->kind == TOK_KIND_SPM) {   /* U+2581 back to space */
            for (size_t i = 0; i < len; i++) {
                int rc;
                if (i + 2 < len && (unsigned char)s[i] == 0xe2 && (unsigned char)s[i + 1] == 0x96 &&
                    (unsigned char)s[i + 2] == 0x81) {
                    rc = tok_buf_put(b, " ", 1);
                    i += 2;
                } else {
                    rc = tok_buf_put(b, s + i, 1);
                }
                if (rc) return rc;
            }
            return 0;
        }
        for (size_t i = 0; i < len;) {   /* byte-level: each code point stands for one byte */
            uint32_t c = tok_utf8_next_lenient((const unsigned char *)s, len, &i);
            int byte = tok_cpt_byte(c);
            int rc;
            if (byte >= 0) {
                unsigned char ch = (unsigned char)byte;
                rc = tok_buf_put(b, &ch, 1);
            } else {   /* llama_decode_text's marker for a code point outside the table */
                char u[4], tmp[16];
                size_t k = tok_utf8_put(c, u);
                rc = tok_buf_put(b, "[UNK_BYTE_0x", 12);
                for (size_t j = 0; j < k && !rc; j++) {
                    snprintf(tmp, sizeof tmp, "%02x", (unsigned char)u[j]);
                    rc = tok_buf_put(b, tmp, 2);
                }
                if (!rc) rc = tok_buf_put(b, s, len);
                if (!rc) rc = tok_buf_put(b, "]", 1);
            }
            if (rc) return rc;
        }
        return 0;
    }
    if ((a & TOK_ATTR_BYTE) && len >= 3) {
        unsigned char ch = (unsigned char)tok_byte_value(s, len);
        return tok_buf_put(b, &ch, 1);
    }
    return 0;   /* unused and undefined tokens decode to nothing */
}

static int tok_build_pieces(struct tok *t) {
    struct tok_buf b = {0};
    t->piece_max = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        size_t start = b.n;
        int rc = tok_piece_build(t, i, &b);
        if (rc || b.n > UINT32_MAX) {
            free(b.p);
            return rc ? rc : ENG_E_NOMEM;
        }
        t->piece_off[i] = (uint32_t)start;
        t->piece_len[i] = (uint32_t)(b.n - start);
        if (b.n - start > t->piece_max) t->piece_max = b.n - start;
    }
    t->piece = b.p ? b.p : malloc(1);
    return t->piece ? 0 : ENG_E_NOMEM;
}

/* SentencePiece byte fallback: <0xNN>, else the one-byte token (llama_vocab::byte_to_token). */
static void tok_build_byte_tokens(struct tok *t) {
    for (int b = 0; b < 256; b++) {
        char hex[8], one[2] = {(char)b, 0};
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        int32_t id = tok_find_text(t, hex);
        if (id < 0) id = tok_map_find(&t->vocab, one, 1);
        t->byte_tok[b] = id;
    }
}

int tok_load(struct tok **out, const struct gguf_file *g, char *err, size_t err_cap) {
    *out = NULL;
    if (err && err_cap) err[0] = 0;
    struct tok *t = calloc(1, sizeof *t);
    if (!t) return ENG_E_NOMEM;
    const struct gguf_str *model = NULL, *pre = NULL;
    int32_t fim_pad = TOK_NULL, fim_rep = TOK_NULL, fim_sep = TOK_NULL, sep = TOK_NULL;
    int rc = gguf_get_str(g, "tokenizer.ggml.model", &model, err, err_cap);
    if (rc == ENG_E_NOT_FOUND) {
        rc = eng_err_set(err, err_cap, ENG_E_FORMAT, "%s: tokenizer.ggml.model: missing", tok_path(g));
        goto err;
    }
    if (rc) goto err;
    if (strcmp(model->s, "gpt2") == 0) {
        t->kind = TOK_KIND_BPE;
    } else if (strcmp(model->s, "llama") == 0) {
        t->kind = TOK_KIND_SPM;
    } else {
        rc = eng_err_set(err, err_cap, ENG_E_UNSUPPORTED,
                     "%s: tokenizer.ggml.model: \"%.*s\" is not supported (gpt2 and llama are)", tok_path(g),
                     TOK_SHOW_MAX, model->s);
        goto err;
    }
    if (gguf_find_kv(g, "tokenizer.ggml.pre")) {
        rc = gguf_get_str(g, "tokenizer.ggml.pre", &pre, err, err_cap);
        if (rc) goto err;
    }
    if ((rc = tok_load_tokens(t, g, err, err_cap))) goto err;
    if ((rc = tok_load_scores_types(t, g, err, err_cap))) goto err;

    /* llama.cpp's defaults per vocabulary kind, then the file's keys */
    t->eot = t->eom = t->pad = TOK_NULL;
    if (t->kind == TOK_KIND_SPM) {
        t->bos = 1, t->eos = 2, t->unk = 0;
        t->add_bos = true, t->add_eos = false, t->add_space_prefix = true;
    } else {
        t->bos = 11, t->eos = 11, t->unk = TOK_NULL;
        t->add_bos = false, t->add_eos = false, t->add_space_prefix = false;
        if ((rc = tok_load_merges(t, g, err, err_cap))) goto err;
        if ((rc = tok_bpe_init(t, pre ? pre->s : NULL, err, err_cap))) goto err;
    }
    if (t->bos >= t->n_vocab) t->bos = TOK_NULL;
    if (t->eos >= t->n_vocab) t->eos = TOK_NULL;
    if (t->unk >= t->n_vocab) t->unk = TOK_NULL;
    static const char *const bool_keys[3] = {"tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                                             "tokenizer.ggml.add_space_prefix"};
    bool *bools[3] = {&t->add_bos, &t->add_eos, &t->add_space_prefix};
    for (int k = 0; k < 3; k++)
        if ((rc = tok_load_bool(g, bool_keys[k], bools[k], err, err_cap))) goto err;
    struct { const char *key; int32_t *id; } ids[] = {
        {"tokenizer.ggml.bos_token_id", &t->bos}, {"tokenizer.ggml.eos_token_id", &t->eos},
        {"tokenizer.ggml.eot_token_id", &t->eot}, {"tokenizer.ggml.eom_token_id", &t->eom},
        {"tokenizer.ggml.unknown_token_id", &t->unk}, {"tokenizer.ggml.seperator_token_id", &sep},
        {"tokenizer.ggml.padding_token_id", &t->pad}, {"tokenizer.ggml.fim_pad_token_id", &fim_pad},
        {"tokenizer.ggml.fim_rep_token_id", &fim_rep}, {"tokenizer.ggml.fim_sep_token_id", &fim_sep},
    };
    for (size_t k = 0; k < sizeof ids / sizeof ids[0]; k++)
        if ((rc = tok_load_id(g, ids[k].key, t->n_vocab, ids[k].id, err, err_cap))) goto err;
    if (t->add_bos && t->bos == TOK_NULL) {
        rc = eng_err_set(err, err_cap, ENG_E_FORMAT,
                     "%s: tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set",
                     tok_path(g));
        goto err;
    }
    if (t->add_eos && t->eos == TOK_NULL) {
        rc = eng_err_set(err, err_cap, ENG_E_FORMAT,
                     "%s: tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set",
                     tok_path(g));
        goto err;
    }

    tok_mark_special(t, fim_pad, fim_rep, fim_sep);
    if ((rc = tok_build_special(t))) goto err;
    if ((rc = tok_build_pieces(t))) goto err;
    tok_build_byte_tokens(t);
    *out = t;
    return 0;
err:
    if (rc == ENG_E_NOMEM && err && err_cap && !err[0])
        eng_err_set(err, err_cap, rc, "%s: tokenizer: out of memory", tok_path(g));
    tok_free(t);
    return rc;
}

void tok_free(struct tok *t) {
    if (!t) return;
    tok_bpe_free(t);
    tok_map_free(&t->vocab);
    tok_map_free(&t->merges);
    free(t->text);
    free(t->text_off);
    free(t->text_len);
    free(t->score);
    free(t->attr);
    free(t->piece);
    free(t->piece_off);
    free(t->piece_len);
    free(t->merge);
    free(t->merge_off);
    free(t->merge_len);
    free(t->special);
    free(t);
}

/* ---------------------------------------------------------------- encoding */

struct tok_frag {
    size_t off, len;
    int32_t id;         /* a special token, or TOK_NULL for raw text */
};

struct tok_frags {
    struct tok_frag *v;
    size_t n, cap;
};

static int tok_frag_push(struct tok_frags *f, size_t off, size_t len, int32_t id) {
    if (f->n == f->cap) {
        size_t cap = f->cap ? 2 * f->cap : 16;
        struct tok_frag *p = realloc(f->v, cap * sizeof *p);
        if (!p) return ENG_E_NOMEM;
        f->v = p;
        f->cap = cap;
    }
    f->v[f->n++] = (struct tok_frag){off, len, id};
    return 0;
}

/* tokenizer_st_partition: for each special token, longest first, cut every raw
 * fragment at each of its occurrences. */
static int tok_partition(const struct tok *t, const char *text, size_t len, bool parse_special,
                         struct tok_frags *cur) {
    struct tok_frags next = {0};
    int rc = 0;
    cur->n = 0;
    if (len == 0) return 0;
    if ((rc = tok_frag_push(cur, 0, len, TOK_NULL))) return rc;
    for (int32_t k = 0; k < t->n_special; k++) {
        int32_t sid = t->special[k];
        if (!parse_special && (t->attr[sid] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN))) continue;
        const char *st = t->text + t->text_off[sid];
        size_t sl = t->text_len[sid];
        bool any = false;
        for (size_t i = 0; i < cur->n && !any; i++)
            any = cur->v[i].id == TOK_NULL && cur->v[i].len >= sl &&
                  memmem(text + cur->v[i].off, cur->v[i].len, st, sl) != NULL;
        if (!any) continue;
        next.n = 0;
        for (size_t i = 0; i < cur->n && !rc; i++) {
            struct tok_frag f = cur->v[i];
            if (f.id != TOK_NULL) {
                rc = tok_frag_push(&next, f.off, f.len, f.id);
                continue;
            }
            size_t pos = f.off, end = f.off + f.len;
            while (!rc && pos < end) {
                const char *m = memmem(text + pos, end - pos, st, sl);
                if (!m) {
                    rc = tok_frag_push(&next, pos, end - pos, TOK_NULL);
                    break;
                }
                size_t at = (size_t)(m - text);
                if (at > pos) rc = tok_frag_push(&next, pos, at - pos, TOK_NULL);
                if (!rc) rc = tok_frag_push(&next, at, sl, sid);
                pos = at + sl;
            }
        }
        if (rc) break;
        struct tok_frags tmp = *cur;
        *cur = next;
        next = tmp;
    }
    free(next.v);
    return rc;
}

/* SentencePiece sees spaces as U+2581, with one space prefixed to each raw
 * fragment that starts the text or follows a special token. */
static int tok_spm_fragment(const struct tok *t, const char *s, size_t len, bool prefix, struct tok_buf *buf,
                            struct tok_vec *out) {
    buf->n = 0;
    int rc = 0;
    if (prefix) rc = tok_buf_put(buf, "\xe2\x96\x81", 3);
    for (size_t i = 0; i < len && !rc; i++)
        rc = s[i] == ' ' ? tok_buf_put(buf, "\xe2\x96\x81", 3) : tok_buf_put(buf, s + i, 1);
    if (rc) return rc;
    return tok_spm_encode(t, buf->p, buf->n, out);
}

static int tok_encode_vec(const struct tok *t, const char *text, size_t len, bool add_special,
                          bool parse_special, struct tok_vec *out) {
    struct tok_frags frags = {0};
    struct tok_buf buf = {0};
    int rc = tok_partition(t, text, len, parse_special, &frags);
    if (rc) goto done;
    if (add_special && t->add_bos && (rc = tok_vec_push(out, t->bos))) goto done;
    bool prev_special = true;   /* SPM: the first fragment gets the space prefix too */
    for (size_t i = 0; i < frags.n; i++) {
        const struct tok_frag *f = &frags.v[i];
        if (f->id != TOK_NULL) {
            rc = tok_vec_push(out, f->id);
            prev_special = true;
        } else if (t->kind == TOK_KIND_SPM) {
            rc = tok_spm_fragment(t, text + f->off, f->len, t->add_space_prefix && prev_special, &buf, out);
            prev_special = false;
        } else {
            rc = tok_bpe_encode(t, text + f->off, f->len, out);
        }
        if (rc) goto done;
    }
    if (add_special && t->add_eos) rc = tok_vec_push(out, t->eos);
done:
    free(frags.v);
    free(buf.p);
    return rc;
}

int tok_encode(const struct tok *t, const char *text, size_t len, bool add_special, bool parse_special,
               int32_t *ids, int cap, int *n_out) {
    struct tok_vec v = {0};
    *n_out = 0;
    int rc = tok_encode_vec(t, text, len, add_special, parse_special, &v);
    if (!rc && v.n > INT32_MAX) rc = ENG_E_TOO_LONG;
    if (!rc) {
        *n_out = (int)v.n;
        if (v.n > (size_t)(cap < 0 ? 0 : cap))
            rc = ENG_E_RANGE;
        else if (v.n)
            memcpy(ids, v.v, v.n * sizeof *ids);
    }
    free(v.v);
    return rc;
}

int tok_encode_alloc(const struct tok *t, const char *text, size_t len, bool add_special, bool parse_special,
                     int32_t **ids, int *n_out) {
    struct tok_vec v = {0};
    *ids = NULL;
    *n_out = 0;
    int rc = tok_encode_vec(t, text, len, add_special, parse_special, &v);
    if (!rc && v.n > INT32_MAX) rc = ENG_E_TOO_LONG;
    if (rc) {
        free(v.v);
        return rc;
    }
    *ids = v.v;
    *n_out = (int)v.n;
    return 0;
}

/* ---------------------------------------------------------------- queries */

enum tok_kind tok_kind(const struct tok *t) { return (enum tok_kind)t->kind; }
int tok_n_vocab(const struct tok *t) { return t->n_vocab; }
int32_t tok_bos(const struct tok *t) { return t->bos; }
int32_t tok_eos(const struct tok *t) { return t->eos; }
int32_t tok_eot(const struct tok *t) { return t->eot; }
int32_t tok_unk(const struct tok *t) { return t->unk; }
int32_t tok_pad(const struct tok *t) { return t->pad; }
bool tok_add_bos(const struct tok *t) { return t->add_bos; }
bool tok_add_eos(const struct tok *t) { return t->add_eos; }

bool tok_is_eog(const struct tok *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->attr[id] & TOK_ATTR_EOG_);
}

unsigned tok_attr(const struct tok *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? (t->attr[id] & ~TOK_ATTR_EOG_) : 0;
}

bool tok_is_control(const struct tok *t, int32_t id) {
    return (tok_attr(t, id) & TOK_ATTR_CONTROL) != 0;
}

int32_t tok_id_of_n(const struct tok *t, const char *text, size_t len) {
    return tok_map_find(&t->vocab, text, len);
}

int32_t tok_id_of(const struct tok *t, const char *text) {
    return tok_id_of_n(t, text, strlen(text));
}

const char *tok_text(const struct tok *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    if (len) *len = t->text_len[id];
    return t->text + t->text_off[id];
}

size_t tok_piece(const struct tok *t, int32_t id, unsigned flags, char *buf, size_t cap) {
    if (id < 0 || id >= t->n_vocab) return 0;
    if (!(flags & TOK_PIECE_SPECIAL) && (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN))) return 0;
    size_t n = t->piece_len[id];
    if (buf && cap) memcpy(buf, t->piece + t->piece_off[id], n < cap ? n : cap);
    return n;
}

size_t tok_piece_max(const struct tok *t) { return t->piece_max; }

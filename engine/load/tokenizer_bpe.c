/* tokenizer_bpe.c — byte-level BPE ("gpt2" vocabularies): regex
 * pre-tokenization, GPT-2's byte-to-code-point mapping, and merging by rank.
 *
 * Pre-tokenization runs the regex list llama.cpp picks for tokenizer.ggml.pre,
 * in sequence: each regex splits every piece produced so far into its matches
 * and the text between them.  llama.cpp runs most of these regexes through
 * hand-written matchers that replace the patterns' \s with its own whitespace
 * table (Python's \s: tab..CR, space, U+0085, U+00A0, U+1680, U+2000..U+200A,
 * U+2028, U+2029, U+202F, U+205F, U+3000), so the PCRE2 patterns below spell
 * that class out instead of trusting PCRE2's \s.  \p{L}, \p{N} and \p{P} are
 * PCRE2's (Unicode 14 in PCRE2 10.42; llama.cpp's tables are Unicode 15, so the
 * letters added in 15 may split differently).
 *
 * Text is first decoded the way llama.cpp decodes it: a byte that does not
 * start a well-formed sequence becomes U+FFFD, overlong forms are re-encoded
 * in their shortest form.  That is lossy, but it is what the model was fed.
 *
 * Merging is llama.cpp's: a heap of adjacent pairs ordered by merge rank, then
 * by position; stale pairs (a side already merged) are skipped when popped.
 * O(n log n) per word, so a run of 10,000 spaces costs milliseconds.
 *
 * It does not split special tokens (tokenizer.c does, before calling here).
 */
#include "engine/load/tokenizer_bpe.h"
#include "engine/load/tokenizer_utf8.h"
#include "engine/err.h"
#include "engine/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* llama.cpp's whitespace set, for use inside a character class. */
#define RE_WS "\\t\\n\\x{0b}\\f\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}" \
              "\\x{202f}\\x{205f}\\x{3000}"
/* Letters, numbers and punctuation for use inside a class: PCRE2's \p{..}
 * plus what llama.cpp's tables (Unicode 15.1) have and PCRE2 10.42's
 * (Unicode 14) lack.  The lists are the complete difference, computed code
 * point by code point against llama.cpp's unicode-data.cpp; no code point is
 * in a PCRE2 class and missing from llama.cpp's, so additions suffice. */
#define RE_L "\\p{L}\\x{1123f}-\\x{11240}\\x{11f02}\\x{11f04}-\\x{11f10}\\x{11f12}-\\x{11f33}\\x{1342f}" \
          "\\x{13441}-\\x{13446}\\x{1b132}\\x{1b155}\\x{1df25}-\\x{1df2a}\\x{1e030}-\\x{1e06d}"          \
          "\\x{1e4d0}-\\x{1e4eb}\\x{2b739}\\x{2ebf0}-\\x{2ee5d}\\x{31350}-\\x{323af}"
#define RE_N "\\p{N}\\x{11f50}-\\x{11f59}\\x{1d2c0}-\\x{1d2d3}\\x{1e4f0}-\\x{1e4f9}"
#define RE_P "\\p{P}\\x{11b00}-\\x{11b09}\\x{11f43}-\\x{11f4f}"

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static const char RE_GPT2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?[" RE_L "]+| ?[" RE_N "]+| ?[^" RE_WS RE_L RE_N "]+"
    "|[" RE_WS "]+(?![^" RE_WS "])|[" RE_WS "]+";
/* Llama 3: case-insensitive contractions, a letter run with one leading
 * non-letter, numbers in groups of up to three, newline-aware whitespace. */
static const char RE_LLAMA3[] =
    "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"
    "|[^\\r\\n" RE_L RE_N "]?[" RE_L "]+|[" RE_N "]{1,3}| ?[^" RE_WS RE_L RE_N "]+[\\r\\n]*"
    "|[" RE_WS "]*[\\r\\n]+|[" RE_WS "]+(?![^" RE_WS "])|[" RE_WS "]+";
/* Qwen2: as Llama 3 with single digits. */
static const char RE_QWEN2[] =
    "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"
    "|[^\\r\\n" RE_L RE_N "]?[" RE_L "]+|[" RE_N "]| ?[^" RE_WS RE_L RE_N "]+[\\r\\n]*"
    "|[" RE_WS "]*[\\r\\n]+|[" RE_WS "]+(?![^" RE_WS "])|[" RE_WS "]+";

struct tok_pre_name {
    const char *name;
    enum tok_pre pre;
    bool ignore_merges;
    bool add_bos;
};

/* tokenizer.ggml.pre values and what llama.cpp does with them (llama-vocab.cpp, load()). */
static const struct tok_pre_name tok_pre_names[] = {
    {"default", TOK_PRE_DEFAULT, false, false},
    {"llama3", TOK_PRE_LLAMA3, true, true}, {"llama-v3", TOK_PRE_LLAMA3, true, true},
    {"llama-bpe", TOK_PRE_LLAMA3, true, true}, {"falcon3", TOK_PRE_LLAMA3, true, true},
    {"falcon-h1", TOK_PRE_LLAMA3, true, true}, {"pixtral", TOK_PRE_LLAMA3, true, true},
    {"midm-2.0", TOK_PRE_LLAMA3, true, true}, {"lfm2", TOK_PRE_LLAMA3, true, true},
    {"dbrx", TOK_PRE_LLAMA3, false, false}, {"smaug-bpe", TOK_PRE_LLAMA3, false, false},
    {"gpt-2", TOK_PRE_GPT2, false, false}, {"phi-2", TOK_PRE_GPT2, false, false},
    {"jina-es", TOK_PRE_GPT2, false, false}, {"jina-de", TOK_PRE_GPT2, false, false},
    {"gigachat", TOK_PRE_GPT2, false, false}, {"jina-v2-es", TOK_PRE_GPT2, false, false},
    {"jina-v2-de", TOK_PRE_GPT2, false, false}, {"a.x-4.0", TOK_PRE_GPT2, false, false},
    {"mellum", TOK_PRE_GPT2, false, false}, {"modern-bert", TOK_PRE_GPT2, false, false},
    {"mpt", TOK_PRE_GPT2, false, false}, {"olmo", TOK_PRE_GPT2, false, false},
    {"jais", TOK_PRE_GPT2, false, false}, {"trillion", TOK_PRE_GPT2, false, false},
    {"granite-docling", TOK_PRE_GPT2, false, false}, {"exaone4", TOK_PRE_GPT2, false, false},
    {"smollm", TOK_PRE_SMOLLM, false, false}, {"starcoder", TOK_PRE_SMOLLM, false, false},
    {"refact", TOK_PRE_SMOLLM, false, false}, {"command-r", TOK_PRE_SMOLLM, false, false},
    {"codeshell", TOK_PRE_SMOLLM, false, false}, {"exaone", TOK_PRE_SMOLLM, false, false},
    {"minerva-7b", TOK_PRE_SMOLLM, false, false}, {"mellum2", TOK_PRE_SMOLLM, false, false},
    {"qwen2", TOK_PRE_QWEN2, false, false}, {"deepseek-r1-qwen", TOK_PRE_QWEN2, false, false},
    {"megrez", TOK_PRE_QWEN2, false, false}, {"stablelm2", TOK_PRE_QWEN2, false, false},
    {"hunyuan", TOK_PRE_QWEN2, false, false}, {"solar-open", TOK_PRE_QWEN2, false, false},
    {"kormo", TOK_PRE_QWEN2, false, false}, {"f2llmv2", TOK_PRE_QWEN2, false, false},
};

uint32_t tok_byte_cpt(unsigned char b) {
    /* printable bytes stand for themselves; the other 68 get 256.. in byte order */
    if (b <= 0x20) return 256u + b;
    if (b >= 0x7f && b <= 0xa0) return b + 162u;
    if (b == 0xad) return 323;
    return b;
}

int tok_cpt_byte(uint32_t c) {
    if (c < 256) return (c <= 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad) ? -1 : (int)c;
    if (c <= 288) return (int)(c - 256);
    if (c <= 322) return (int)(c - 162);
    if (c == 323) return 0xad;
    return -1;
}

static int tok_bpe_compile(struct tok *t, const char *pattern, char *err, size_t err_cap) {
    int ecode;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ecode, &eoff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        snprintf(err, err_cap, "tokenizer: pre-tokenizer regex does not compile at %zu: %s", (size_t)eoff,
                 (const char *)msg);
        return ENG_E_INTERNAL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);  /* optional: the interpreter is used if JIT is unavailable */
    t->regex[t->n_regex++] = re;
    return 0;
}

int tok_bpe_init(struct tok *t, const char *pre_name, char *err, size_t err_cap) {
    t->pre = TOK_PRE_DEFAULT;
    if (!pre_name) {
        LOG_WARN("tokenizer: tokenizer.ggml.pre is missing, using the default pre-tokenizer");
    } else {
        size_t k, n = sizeof tok_pre_names / sizeof tok_pre_names[0];
        for (k = 0; k < n; k++)
            if (strcmp(pre_name, tok_pre_names[k].name) == 0) break;
        if (k == n) {
            LOG_WARN("tokenizer: unknown tokenizer.ggml.pre \"%s\", using the default pre-tokenizer", pre_name);
        } else {
            t->pre = tok_pre_names[k].pre;
            t->ignore_merges = tok_pre_names[k].ignore_merges;
            t->add_bos = tok_pre_names[k].add_bos;
        }
    }
    int rc = 0;
    switch (t->pre) {
    case TOK_PRE_DEFAULT:
        if (!rc) rc = tok_bpe_compile(t, "[" RE_P "$+<=>^~|]+", err, err_cap);
        if (!rc) rc = tok_bpe_compile(t, RE_GPT2, err, err_cap);
        if (!rc) rc = tok_bpe_compile(t, "[" RE_N "]+", err, err_cap);
        if (!rc) rc = tok_bpe_compile(t, "[0-9][0-9][0-9]", err, err_cap);
        break;
    case TOK_PRE_GPT2: rc = tok_bpe_compile(t, RE_GPT2, err, err_cap); break;
    case TOK_PRE_SMOLLM:
        rc = tok_bpe_compile(t, "[" RE_N "]", err, err_cap);
        if (!rc) rc = tok_bpe_compile(t, RE_GPT2, err, err_cap);
        break;
    case TOK_PRE_LLAMA3: rc = tok_bpe_compile(t, RE_LLAMA3, err, err_cap); break;
    case TOK_PRE_QWEN2: rc = tok_bpe_compile(t, RE_QWEN2, err, err_cap); break;
    }
    return rc;
}

void tok_bpe_free(struct tok *t) {
    for (int i = 0; i < t->n_regex; i++) pcre2_code_free(t->regex[i]);
    t->n_regex = 0;
}

/* ---------------------------------------------------------------- one encode call */

struct bpe_piece {
    uint32_t off, len;
};

struct bpe_sym {
    uint32_t start, n;      /* bytes of the encoded word; n == 0 once merged away */
    int32_t prev, next;
};

struct bpe_pair {
    int32_t rank, left, right;
    uint32_t size;          /* left.n + right.n when pushed: a mismatch means stale */
};

struct bpe_work {
    char *norm, *match;             /* canonical text, and the same with stand-ins for PCRE2 */
    size_t n_text;
    struct bpe_piece *pieces[2];
    size_t n_piece[2], cap_piece[2];
    char *enc;                      /* a word in GPT-2's byte alphabet */
    size_t cap_enc;
    struct bpe_sym *sym;
    size_t cap_sym;
    struct bpe_pair *heap;
    size_t n_heap, cap_heap;
    char *key;                      /* "left right" lookup key */
    size_t cap_key;
};

static int bpe_grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return ENG_E_NOMEM;
    *p = q;
    *cap = c;
    return 0;
}

static int bpe_piece_push(struct bpe_work *w, int k, size_t off, size_t len) {
    if (bpe_grow((void **)&w->pieces[k], &w->cap_piece[k], w->n_piece[k] + 1, sizeof(struct bpe_piece)))
        return ENG_E_NOMEM;
    w->pieces[k][w->n_piece[k]++] = (struct bpe_piece){(uint32_t)off, (uint32_t)len};
    return 0;
}

/* Decode as llama.cpp does and re-encode; the match copy replaces code points
 * PCRE2 refuses in UTF mode (surrogates, values above U+10FFFF) by private-use
 * characters of the same length and the same class (none of L, N, P, space). */
static int bpe_normalize(struct bpe_work *w, const char *text, size_t len) {
    if (len > UINT32_MAX / 4) return ENG_E_TOO_LONG;
    w->norm = malloc(3 * len + 1);
    w->match = malloc(3 * len + 1);
    if (!w->norm || !w->match) return ENG_E_NOMEM;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        uint32_t c = tok_utf8_next_lenient((const unsigned char *)text, len, &i);
        size_t k = tok_utf8_put(c, w->norm + o);
        if (c >= 0xd800 && c <= 0xdfff)
            tok_utf8_put(0xe000, w->match + o);
        else if (c > 0x10ffff)
            tok_utf8_put(0xf0000, w->match + o);
        else
            memcpy(w->match + o, w->norm + o, k);
        o += k;
    }
    w->n_text = o;
    return 0;
}

static size_t bpe_utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

/* Apply one regex to every piece: matches and the gaps between them both
 * become pieces (llama.cpp's unicode_regex_split_stl). */
static int bpe_split(struct bpe_work *w, const pcre2_code *re, pcre2_match_data *md, int from) {
    int to = !from;
    w->n_piece[to] = 0;
    for (size_t p = 0; p < w->n_piece[from]; p++) {
        struct bpe_piece pc = w->pieces[from][p];
        PCRE2_SPTR subj = (PCRE2_SPTR)(w->match + pc.off);
        size_t pos = 0, last = 0;
        while (pos < pc.len) {
            int rc = pcre2_match(re, subj, pc.len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) return ENG_E_INTERNAL;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t s = ov[0], e = ov[1];
            if (e == s) {   /* none of our patterns matches empty; step over it if one ever does */
                pos = s + bpe_utf8_len(subj[s]);
                continue;
            }
            if (s > last && bpe_piece_push(w, to, pc.off + last, s - last)) return ENG_E_NOMEM;
            if (bpe_piece_push(w, to, pc.off + s, e - s)) return ENG_E_NOMEM;
            last = pos = e;
        }
        if (last < pc.len && bpe_piece_push(w, to, pc.off + last, pc.len - last)) return ENG_E_NOMEM;
    }
    return 0;
}

static bool bpe_less(const struct bpe_pair *a, const struct bpe_pair *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static int bpe_heap_push(struct bpe_work *w, struct bpe_pair p) {
    if (bpe_grow((void **)&w->heap, &w->cap_heap, w->n_heap + 1, sizeof p)) return ENG_E_NOMEM;
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!bpe_less(&p, &w->heap[up])) break;
        w->heap[i] = w->heap[up];
        i = up;
    }
    w->heap[i] = p;
    return 0;
}

static struct bpe_pair bpe_heap_pop(struct bpe_work *w) {
    struct bpe_pair top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && bpe_less(&w->heap[c + 1], &w->heap[c])) c++;
        if (!bpe_less(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

/* llm_tokenizer_bpe_session::add_new_bigram */
static int bpe_add_pair(const struct tok *t, struct bpe_work *w, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return 0;
    const struct bpe_sym *l = &w->sym[left], *r = &w->sym[right];
    size_t klen = (size_t)l->n + 1 + r->n;
    if (bpe_grow((void **)&w->key, &w->cap_key, klen, 1)) return ENG_E_NOMEM;
    memcpy(w->key, w->enc + l->start, l->n);
    w->key[l->n] = ' ';
    memcpy(w->key + l->n + 1, w->enc + r->start, r->n);
    int32_t rank = tok_map_find(&t->merges, w->key, klen);
    if (rank < 0) return 0;
    return bpe_heap_push(w, (struct bpe_pair){rank, left, right, l->n + r->n});
}

static int bpe_word(const struct tok *t, struct bpe_work *w, const char *word, size_t len, struct tok_vec *out) {
    if (bpe_grow((void **)&w->enc, &w->cap_enc, 2 * len, 1) ||
        bpe_grow((void **)&w->sym, &w->cap_sym, len, sizeof(struct bpe_sym)))
        return ENG_E_NOMEM;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        uint32_t c = tok_byte_cpt((unsigned char)word[i]);
        size_t k = tok_utf8_put(c, w->enc + n);
        w->sym[i] = (struct bpe_sym){(uint32_t)n, (uint32_t)k, (int32_t)i - 1, i + 1 < len ? (int32_t)i + 1 : -1};
        n += k;
    }
    if (t->ignore_merges) {   /* llama3: a word the vocabulary has whole is not merged */
        int32_t id = tok_map_find(&t->vocab, w->enc, n);
        if (id >= 0) return tok_vec_push(out, id);
    }
    int rc = 0;
    w->n_heap = 0;
    for (size_t i = 1; i < len && !rc; i++) rc = bpe_add_pair(t, w, (int32_t)i - 1, (int32_t)i);
    while (!rc && w->n_heap) {
        struct bpe_pair p = bpe_heap_pop(w);
        struct bpe_sym *l = &w->sym[p.left], *r = &w->sym[p.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != p.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) w->sym[r->next].prev = p.left;
        rc = bpe_add_pair(t, w, l->prev, p.left);
        if (!rc) rc = bpe_add_pair(t, w, p.left, l->next);
    }
    for (int32_t i = 0; i >= 0 && !rc; i = w->sym[i].next) {
        const struct bpe_sym *s = &w->sym[i];
        int32_t id = tok_map_find(&t->vocab, w->enc + s->start, s->n);
        if (id >= 0) {
            rc = tok_vec_push(out, id);
            continue;
        }
        /* no token: llama.cpp emits the single-byte tokens of the encoded text
         * it can find and drops the rest */
        for (uint32_t j = 0; j < s->n && !rc; j++) {
            id = tok_map_find(&t->vocab, w->enc + s->start + j, 1);
            if (id >= 0) rc = tok_vec_push(out, id);
        }
    }
    return rc;
}

int tok_bpe_encode(const struct tok *t, const char *text, size_t len, struct tok_vec *out) {
    struct bpe_work w = {0};
    pcre2_match_data *md = NULL;
    int rc = 0;
    if (len == 0) return 0;
    if ((rc = bpe_normalize(&w, text, len))) goto done;
    md = pcre2_match_data_create(1, NULL);
    if (!md) {
        rc = ENG_E_NOMEM;
        goto done;
    }
    int cur = 0;
    if ((rc = bpe_piece_push(&w, cur, 0, w.n_text))) goto done;
    for (int r = 0; r < t->n_regex; r++) {
        if ((rc = bpe_split(&w, t->regex[r], md, cur))) goto done;
        cur = !cur;
    }
    for (size_t p = 0; p < w.n_piece[cur] && !rc; p++)
        rc = bpe_word(t, &w, w.norm + w.pieces[cur][p].off, w.pieces[cur][p].len, out);
done:
    pcre2_match_data_free(md);
    free(w.norm);
    free(w.match);
    free(w.pieces[0]);
    free(w.pieces[1]);
    free(w.enc);
    free(w.sym);
    free(w.heap);
    free(w.key);
    return rc;
}

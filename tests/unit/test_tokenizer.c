/* test_tokenizer.c — the tokenizers against llama.cpp's token ids.
 *
 * tests/golden/data/tok_*.tsv (written by tests/golden/gen_tokenizer.py with
 * llama-cpp-python) hold ~520 strings each with the ids llama.cpp produced:
 * for the default model's vocabulary (gpt2 BPE, pre-tokenizer "smollm"), for
 * the same vocabulary under four other pre-tokenizers (the GGUF is rebuilt
 * here with another tokenizer.ggml.pre, as the script did), and for a small
 * SentencePiece vocabulary (tok_spm.gguf).  Every case must match exactly;
 * tok_*_meta.txt adds the EOG set and hashes of every token's piece.
 * Also: decode(encode(s)) == s, the streaming decoder never emits half a
 * character and agrees with tok_decode, and broken vocabularies give errors
 * that name the key.  Run from the repository root.
 */
#include "engine/err.h"
#include "engine/load/gguf.h"
#include "engine/load/tokenizer.h"
#include "tests/unit/common_test.h"

#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define GOLDEN_DIR "tests/golden/data/"
#define ERR_CAP 512

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---------------------------------------------------------------- golden files */

struct gcase {
    int flags;              /* 1 = parse_special, 2 = add_special */
    char *text;
    size_t len;
    int32_t *ids;
    int n_ids;
};

struct golden {
    struct gcase *c;
    int n;
};

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int32_t *parse_ids(const char *s, int *n) {
    int cap = 16;
    int32_t *v = malloc(cap * sizeof *v);
    *n = 0;
    if (strcmp(s, "-") == 0) return v;
    while (*s) {
        char *end;
        long x = strtol(s, &end, 10);
        ck_assert_msg(end != s, "bad id list near \"%.20s\"", s);
        if (*n == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        v[(*n)++] = (int32_t)x;
        s = end;
        while (*s == ' ') s++;
    }
    return v;
}

static struct golden load_golden(const char *file) {
    char path[256], line[1 << 16];
    snprintf(path, sizeof path, GOLDEN_DIR "%s", file);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    struct golden g = {0};
    int cap = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        line[strcspn(line, "\n")] = 0;
        char *flags = strtok(line, "\t"), *hex = strtok(NULL, "\t"), *ids = strtok(NULL, "\t");
        ck_assert_msg(flags && hex && ids, "%s: malformed line", path);
        if (g.n == cap) g.c = realloc(g.c, (cap = cap ? 2 * cap : 256) * sizeof *g.c);
        struct gcase *c = &g.c[g.n++];
        c->flags = atoi(flags);
        size_t hl = strcmp(hex, "-") == 0 ? 0 : strlen(hex);
        c->text = malloc(hl / 2 + 1);
        for (size_t i = 0; i < hl / 2; i++) c->text[i] = (char)(hexval(hex[2 * i]) * 16 + hexval(hex[2 * i + 1]));
        c->len = hl / 2;
        c->text[c->len] = 0;
        c->ids = parse_ids(ids, &c->n_ids);
    }
    fclose(f);
    ck_assert_msg(g.n > 0, "%s: no cases", path);
    return g;
}

static void free_golden(struct golden *g) {
    for (int i = 0; i < g->n; i++) {
        free(g->c[i].text);
        free(g->c[i].ids);
    }
    free(g->c);
}

static void print_escaped(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f) fprintf(f, "\\x%02x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void print_ids(FILE *f, const char *label, const int32_t *v, int n) {
    fprintf(f, "    %s [", label);
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? ", " : "", v[i]);
    fprintf(f, "]\n");
}

/* Encode every case; print each mismatch and the match count; return mismatches. */
static int check_golden(const struct tok *t, const char *name, const struct golden *g) {
    int bad = 0;
    for (int i = 0; i < g->n; i++) {
        const struct gcase *c = &g->c[i];
        int32_t *ids;
        int n;
        int rc = tok_encode_alloc(t, c->text, c->len, c->flags & 2, c->flags & 1, &ids, &n);
        ck_assert_msg(rc == 0, "%s: encode failed: %s", name, eng_err_name(rc));
        if (n != c->n_ids || (n && memcmp(ids, c->ids, (size_t)n * sizeof *ids) != 0)) {
            if (++bad <= 20) {
                fprintf(stderr, "%s: mismatch (flags %d) for ", name, c->flags);
                print_escaped(stderr, c->text, c->len);
                fputc('\n', stderr);
                print_ids(stderr, "llama.cpp:", c->ids, c->n_ids);
                print_ids(stderr, "ours:     ", ids, n);
            }
        }
        free(ids);
    }
    printf("tokenizer golden %s: %d/%d cases match llama.cpp\n", name, g->n - bad, g->n);
    fflush(stdout);
    return bad;
}

static struct tok *load_tok(const char *path) {
    char err[ERR_CAP] = "";
    struct gguf_file *g = NULL;
    int rc = gguf_open(&g, path, err, sizeof err);
    ck_assert_msg(rc == 0, "gguf_open %s: %s", path, err);
    struct tok *t = NULL;
    rc = tok_load(&t, g, err, sizeof err);
    ck_assert_msg(rc == 0, "tok_load %s: %s (%s)", path, eng_err_name(rc), err);
    gguf_close(g);   /* the tokenizer keeps its own copies */
    return t;
}

/* ---------------------------------------------------------------- vocabulary GGUFs */

static char tmp_dir[PATH_MAX];

static const char *tmp_path(const char *name) {
    static char buf[PATH_MAX + 64];
    snprintf(buf, sizeof buf, "%s/%s", tmp_dir, name);
    return buf;
}

static void setup_tmp(void) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/ppd-test-tok-XXXXXX");
    ck_assert(mkdtemp(tmp_dir) != NULL);
}

static void copy_str_arr(struct gguf_writer *w, const struct gguf_file *g, const char *key) {
    const struct gguf_kv *kv = gguf_find_kv(g, key);
    ck_assert_msg(kv && kv->type == GGUF_VT_ARRAY && kv->arr_type == GGUF_VT_STRING, "%s missing", key);
    const char **v = malloc(kv->arr_n * sizeof *v);
    for (uint64_t i = 0; i < kv->arr_n; i++) v[i] = kv->arr_str[i].s;
    ck_assert_int_eq(gguf_writer_set_arr_str(w, key, v, kv->arr_n), 0);
    free(v);
}

/* The model's tokenizer keys with another tokenizer.ggml.pre (or none when
 * pre is NULL), as gen_tokenizer.py's variant_gguf writes them. */
static struct gguf_writer *variant_writer(const struct gguf_file *g, const char *pre) {
    struct gguf_writer *w = gguf_writer_new();
    ck_assert(w != NULL);
    ck_assert_int_eq(gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2"), 0);
    if (pre) ck_assert_int_eq(gguf_writer_set_str(w, "tokenizer.ggml.pre", pre), 0);
    copy_str_arr(w, g, "tokenizer.ggml.tokens");
    copy_str_arr(w, g, "tokenizer.ggml.merges");
    const struct gguf_kv *kv = gguf_find_kv(g, "tokenizer.ggml.token_type");
    ck_assert(kv != NULL);
    ck_assert_int_eq(gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, kv->arr_data, kv->arr_n), 0);
    static const char *const ids[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                      "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"};
    for (int i = 0; i < 4; i++) {
        uint32_t v;
        char err[ERR_CAP];
        if (gguf_get_u32(g, ids[i], &v, err, sizeof err) == 0)
            ck_assert_int_eq(gguf_writer_set_u32(w, ids[i], v), 0);
    }
    ck_assert_int_eq(gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false), 0);
    return w;
}

static struct tok *load_variant(const char *pre, const char *file) {
    char err[ERR_CAP] = "";
    struct gguf_file *g = NULL;
    ck_assert_msg(gguf_open(&g, test_model_path(), err, sizeof err) == 0, "%s", err);
    struct gguf_writer *w = variant_writer(g, pre);
    gguf_close(g);
    ck_assert_msg(gguf_writer_write(w, tmp_path(file), err, sizeof err) == 0, "%s", err);
    gguf_writer_free(w);
    return load_tok(tmp_path(file));
}

/* ---------------------------------------------------------------- meta files */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static void check_meta(const struct tok *t, const char *file) {
    char path[256], line[4096];
    snprintf(path, sizeof path, GOLDEN_DIR "%s", file);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    int n_vocab = tok_n_vocab(t);
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *key = strtok(line, " "), *rest = strtok(NULL, "");
        if (!key) continue;
        if (!rest) rest = "";
        if (strcmp(key, "n_vocab") == 0) {
            ck_assert_int_eq(n_vocab, atoi(rest));
        } else if (strcmp(key, "bos") == 0) {
            ck_assert_int_eq(tok_bos(t), atoi(rest));
        } else if (strcmp(key, "eos") == 0) {
            ck_assert_int_eq(tok_eos(t), atoi(rest));
        } else if (strcmp(key, "add_bos") == 0) {
            ck_assert_int_eq(tok_add_bos(t), atoi(rest));
        } else if (strcmp(key, "add_eos") == 0) {
            ck_assert_int_eq(tok_add_eos(t), atoi(rest));
        } else if (strcmp(key, "eog") == 0) {
            int n;
            int32_t *v = parse_ids(rest, &n);
            int k = 0;
            for (int32_t id = 0; id < n_vocab; id++) {
                bool want = k < n && v[k] == id;
                if (want) k++;
                ck_assert_msg(tok_is_eog(t, id) == want, "%s: token %d: EOG %d, llama.cpp says %d", file, id,
                              tok_is_eog(t, id), want);
            }
            free(v);
        } else if (strncmp(key, "pieces", 6) == 0) {
            unsigned flags = key[6] == '1' ? TOK_PIECE_SPECIAL : 0;
            char *save = NULL, *hs = strtok_r(rest, " ", &save);
            char buf[4096];
            for (int b0 = 0; b0 < n_vocab; b0 += 1024, hs = strtok_r(NULL, " ", &save)) {
                ck_assert_msg(hs != NULL, "%s: too few piece hashes", file);
                uint64_t h = 0xcbf29ce484222325ull;
                for (int id = b0; id < n_vocab && id < b0 + 1024; id++) {
                    size_t k = tok_piece(t, id, flags, buf, sizeof buf);
                    ck_assert(k <= sizeof buf);
                    uint32_t k32 = (uint32_t)k;
                    unsigned char le[4] = {k32 & 255, (k32 >> 8) & 255, (k32 >> 16) & 255, k32 >> 24};
                    h = fnv1a(h, le, 4);
                    h = fnv1a(h, buf, k);
                }
                ck_assert_msg(h == strtoull(hs, NULL, 16),
                              "%s: %s: pieces of ids %d..%d differ from llama_token_to_piece", file, key, b0,
                              b0 + 1023);
            }
        }
    }
    fclose(f);
}

/* ---------------------------------------------------------------- golden tests */

START_TEST(test_golden_smollm2) {
    struct tok *t = load_tok(test_model_path());
    struct golden g = load_golden("tok_smollm2.tsv");
    int bad = check_golden(t, "smollm2", &g);
    ck_assert_msg(bad == 0, "%d of %d cases differ from llama.cpp", bad, g.n);
    check_meta(t, "tok_smollm2_meta.txt");
    free_golden(&g);
    tok_free(t);
}
END_TEST

static const char *const variants[] = {"llama-bpe", "default", "gpt-2", "qwen2"};

START_TEST(test_golden_pre_variants) {
    setup_tmp();
    const char *pre = variants[_i];
    char file[64], gfile[64], name[64];
    snprintf(file, sizeof file, "v-%s.gguf", pre);
    snprintf(gfile, sizeof gfile, "tok_smollm2-%s.tsv", pre);
    snprintf(name, sizeof name, "smollm2-%s", pre);
    struct tok *t = load_variant(pre, file);
    struct golden g = load_golden(gfile);
    int bad = check_golden(t, name, &g);
    ck_assert_msg(bad == 0, "%s: %d of %d cases differ from llama.cpp", pre, bad, g.n);
    free_golden(&g);
    tok_free(t);
    unlink(tmp_path(file));
    rmdir(tmp_dir);
}
END_TEST

/* An unknown pre-tokenizer name falls back to the default regexes (with a warning). */
START_TEST(test_unknown_pre_is_default) {
    setup_tmp();
    struct tok *t = load_variant("no-such-pre", "v-unknown.gguf");
    struct golden g = load_golden("tok_smollm2-default.tsv");
    ck_assert_int_eq(check_golden(t, "smollm2-unknown-pre", &g), 0);
    free_golden(&g);
    tok_free(t);
    unlink(tmp_path("v-unknown.gguf"));
    rmdir(tmp_dir);
}
END_TEST

START_TEST(test_golden_spm) {
    struct tok *t = load_tok(GOLDEN_DIR "tok_spm.gguf");
    ck_assert_int_eq(tok_kind(t), TOK_KIND_SPM);
    struct golden g = load_golden("tok_spm.tsv");
    int bad = check_golden(t, "spm", &g);
    ck_assert_msg(bad == 0, "%d of %d cases differ from llama.cpp", bad, g.n);
    check_meta(t, "tok_spm_meta.txt");
    free_golden(&g);
    tok_free(t);
}
END_TEST

/* ---------------------------------------------------------------- decoding */

/* Strict UTF-8 validation (Unicode Table 3-7). */
static bool valid_utf8(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t len;
        unsigned lo = 0x80, hi = 0xbf;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c == 0xe0) len = 3, lo = 0xa0;
        else if (c == 0xed) len = 3, hi = 0x9f;
        else if (c >= 0xe1 && c <= 0xef) len = 3;
        else if (c == 0xf0) len = 4, lo = 0x90;
        else if (c == 0xf4) len = 4, hi = 0x8f;
        else if (c >= 0xf1 && c <= 0xf3) len = 4;
        else return false;
        if (i + len > n) return false;
        if (p[i + 1] < lo || p[i + 1] > hi) return false;
        for (size_t k = 2; k < len; k++)
            if (p[i + k] < 0x80 || p[i + k] > 0xbf) return false;
        i += len;
    }
    return true;
}

/* Stream ids through a tok_detok: every chunk valid UTF-8, the whole equal to tok_decode. */
static void check_stream(const struct tok *t, const int32_t *ids, int n, unsigned flags, const char *what) {
    size_t cap = tok_detok_cap(t);
    char *chunk = malloc(cap);
    size_t total_cap = 64, total = 0;
    char *all = malloc(total_cap);
    struct tok_detok d;
    tok_detok_init(&d, flags);
    for (int i = 0; i <= n; i++) {
        size_t k = i < n ? tok_detok_push(t, &d, ids[i], chunk, cap) : tok_detok_flush(&d, chunk, cap);
        ck_assert_msg(k != SIZE_MAX, "%s: output room refused", what);
        ck_assert_msg(valid_utf8(chunk, k), "%s: chunk %d is not valid UTF-8", what, i);
        while (total + k > total_cap) all = realloc(all, total_cap *= 2);
        memcpy(all + total, chunk, k);
        total += k;
    }
    size_t need = tok_decode(t, ids, (size_t)n, flags, NULL, 0);
    char *whole = malloc(need + 1);
    ck_assert_uint_eq(tok_decode(t, ids, (size_t)n, flags, whole, need), need);
    ck_assert_msg(need == total && memcmp(whole, all, total) == 0, "%s: streamed decode differs from tok_decode",
                  what);
    free(whole);
    free(all);
    free(chunk);
}

static int roundtrip_vocab(const struct tok *t, const char *name, const char *golden_file, bool spm) {
    struct golden g = load_golden(golden_file);
    int checked = 0, streamed = 0;
    for (int i = 0; i < g.n; i++) {
        const struct gcase *c = &g.c[i];
        if (c->flags & 2) continue;
        int32_t *ids;
        int n;
        ck_assert_int_eq(tok_encode_alloc(t, c->text, c->len, false, c->flags & 1, &ids, &n), 0);
        unsigned flags = TOK_PIECE_SPECIAL | (spm ? TOK_DECODE_STRIP_SPACE : 0);
        check_stream(t, ids, n, flags, name);
        streamed++;
        bool special = false;
        for (int k = 0; k < n; k++)
            special |= (tok_attr(t, ids[k]) & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) != 0;
        /* SentencePiece inserts a space after each special token; invalid UTF-8 is not kept */
        if (valid_utf8(c->text, c->len) && !(spm && special)) {
            size_t need = tok_decode(t, ids, (size_t)n, flags, NULL, 0);
            char *out = malloc(need + 1);
            tok_decode(t, ids, (size_t)n, flags, out, need);
            if (need != c->len || memcmp(out, c->text, need) != 0) {
                fprintf(stderr, "%s: decode(encode(s)) != s for ", name);
                print_escaped(stderr, c->text, c->len);
                fprintf(stderr, " -> ");
                print_escaped(stderr, out, need);
                fputc('\n', stderr);
                ck_abort_msg("%s: round trip failed", name);
            }
            free(out);
            checked++;
        }
        free(ids);
    }
    printf("tokenizer %s: decode(encode(s)) == s for %d strings, %d streamed\n", name, checked, streamed);
    free_golden(&g);
    return checked;
}

START_TEST(test_roundtrip_smollm2) {
    struct tok *t = load_tok(test_model_path());
    ck_assert_int_gt(roundtrip_vocab(t, "smollm2", "tok_smollm2.tsv", false), 300);
    tok_free(t);
}
END_TEST

START_TEST(test_roundtrip_spm) {
    struct tok *t = load_tok(GOLDEN_DIR "tok_spm.gguf");
    ck_assert_int_gt(roundtrip_vocab(t, "spm", "tok_spm.tsv", true), 250);
    tok_free(t);
}
END_TEST

/* Byte tokens one at a time: nothing until the character is complete. */
START_TEST(test_detok_holds_partial) {
    struct tok *t = load_tok(GOLDEN_DIR "tok_spm.gguf");
    int32_t b[6] = {tok_id_of(t, "<0xE4>"), tok_id_of(t, "<0xBD>"), tok_id_of(t, "<0xA0>"),
                    tok_id_of(t, "<0xF0>"), tok_id_of(t, "<0x9F>"), tok_id_of(t, "<0x91>")};
    for (int i = 0; i < 6; i++) ck_assert_int_ge(b[i], 0);
    char out[64];
    struct tok_detok d;
    tok_detok_init(&d, 0);
    ck_assert_uint_eq(tok_detok_push(t, &d, b[0], out, sizeof out), 0);
    ck_assert_uint_eq(tok_detok_push(t, &d, b[1], out, sizeof out), 0);
    ck_assert_uint_eq(tok_detok_push(t, &d, b[2], out, sizeof out), 3);
    ck_assert(memcmp(out, "\xe4\xbd\xa0", 3) == 0);
    /* a 4-byte emoji cut short by an ASCII token: U+FFFD, then the letter */
    ck_assert_uint_eq(tok_detok_push(t, &d, b[3], out, sizeof out), 0);
    ck_assert_uint_eq(tok_detok_push(t, &d, b[4], out, sizeof out), 0);
    ck_assert_uint_eq(tok_detok_push(t, &d, b[5], out, sizeof out), 0);
    size_t k = tok_detok_push(t, &d, tok_id_of(t, "<0x41>"), out, sizeof out);
    ck_assert_uint_eq(k, 4);
    ck_assert(memcmp(out, "\xef\xbf\xbd" "A", 4) == 0);
    /* held bytes at the end of the stream become one U+FFFD */
    ck_assert_uint_eq(tok_detok_push(t, &d, b[0], out, sizeof out), 0);
    ck_assert_uint_eq(tok_detok_flush(&d, out, sizeof out), 3);
    ck_assert(memcmp(out, "\xef\xbf\xbd", 3) == 0);
    ck_assert_uint_eq(tok_detok_flush(&d, out, sizeof out), 0);
    /* too little room: refused, state unchanged */
    ck_assert_uint_eq(tok_detok_push(t, &d, b[0], out, 1), SIZE_MAX);
    tok_free(t);
}
END_TEST

/* Multi-byte text through the default model token by token. */
START_TEST(test_detok_stream_smollm2) {
    struct tok *t = load_tok(test_model_path());
    static const char *const texts[] = {
        "你好，世界！日本語のテキストと한국어 문장。", "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👋🏽 wave",
        "Ångström café naïve — «quotes» and “more”", "混合 mixed 🇫🇷🇩🇪 ½ ① ٣٤٥",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int32_t *ids;
        int n;
        size_t len = strlen(texts[i]);
        ck_assert_int_eq(tok_encode_alloc(t, texts[i], len, false, true, &ids, &n), 0);
        size_t cap = tok_detok_cap(t), total = 0;
        char *chunk = malloc(cap), all[512];
        struct tok_detok d;
        tok_detok_init(&d, 0);
        int held = 0;
        for (int k = 0; k <= n; k++) {
            size_t m = k < n ? tok_detok_push(t, &d, ids[k], chunk, cap) : tok_detok_flush(&d, chunk, cap);
            ck_assert(valid_utf8(chunk, m));
            held += k < n && d.n_pend > 0;
            ck_assert(total + m < sizeof all);
            memcpy(all + total, chunk, m);
            total += m;
        }
        ck_assert_msg(total == len && memcmp(all, texts[i], len) == 0, "stream of text %zu differs", i);
        ck_assert_msg(held > 0 || i == 2, "text %zu: expected some tokens to end inside a character", i);
        free(chunk);
        free(ids);
    }
    tok_free(t);
}
END_TEST

/* ---------------------------------------------------------------- queries */

START_TEST(test_eog_and_lookup) {
    struct tok *t = load_tok(test_model_path());
    ck_assert_int_eq(tok_kind(t), TOK_KIND_BPE);
    ck_assert_int_eq(tok_n_vocab(t), 49152);
    int32_t im_end = tok_id_of(t, "<|im_end|>"), im_start = tok_id_of(t, "<|im_start|>");
    ck_assert_int_eq(im_end, 2);
    ck_assert_int_eq(im_start, 1);
    ck_assert(tok_is_eog(t, im_end));
    ck_assert(tok_is_eog(t, tok_id_of(t, "<|endoftext|>")));
    ck_assert(tok_is_eog(t, tok_eos(t)));
    ck_assert(!tok_is_eog(t, im_start));
    ck_assert(!tok_is_eog(t, tok_id_of(t, "Hello")));
    ck_assert(!tok_is_eog(t, -1));
    ck_assert(!tok_is_eog(t, 49152));
    ck_assert_int_eq(tok_id_of(t, "no such token text"), TOK_NULL);
    ck_assert(tok_is_control(t, im_start));
    size_t len;
    ck_assert_str_eq(tok_text(t, im_start, &len), "<|im_start|>");
    ck_assert_uint_eq(len, 12);
    ck_assert_ptr_null(tok_text(t, -5, NULL));
    char buf[64];
    ck_assert_uint_eq(tok_piece(t, im_end, 0, buf, sizeof buf), 0);
    ck_assert_uint_eq(tok_piece(t, im_end, TOK_PIECE_SPECIAL, buf, sizeof buf), 10);
    ck_assert(memcmp(buf, "<|im_end|>", 10) == 0);
    int32_t sp = tok_id_of(t, "\xc4\xa0the");   /* "Ġthe" */
    ck_assert_int_ge(sp, 0);
    ck_assert_uint_eq(tok_piece(t, sp, 0, buf, sizeof buf), 4);
    ck_assert(memcmp(buf, " the", 4) == 0);
    tok_free(t);
}
END_TEST

START_TEST(test_encode_range) {
    struct tok *t = load_tok(test_model_path());
    const char *s = "<|im_start|>user\nHello there, how are you?<|im_end|>";
    int32_t ids[4];
    int n = -1;
    ck_assert_int_eq(tok_encode(t, s, strlen(s), false, true, ids, 4, &n), ENG_E_RANGE);
    ck_assert_int_gt(n, 4);
    int32_t *big = malloc((size_t)n * sizeof *big);
    int n2 = -1;
    ck_assert_int_eq(tok_encode(t, s, strlen(s), false, true, big, n, &n2), 0);
    ck_assert_int_eq(n2, n);
    ck_assert_int_eq(big[0], 1);
    ck_assert_int_eq(big[n - 1], 2);
    ck_assert_int_eq(tok_encode(t, "", 0, false, true, ids, 0, &n2), 0);
    ck_assert_int_eq(n2, 0);
    free(big);
    tok_free(t);
}
END_TEST

/* Long and repetitive inputs stay fast (printed, not asserted: timing is for benchmarks). */
START_TEST(test_long_inputs) {
    struct tok *t = load_tok(test_model_path());
    size_t n = 100000;
    char *s = malloc(n + 1);
    static const char *const parts[] = {"The quick brown fox ", "jumps over 12345 lazy dogs. ",
                                        "Ça coûte 3,50 € — très cher!\n", "def f(x):\n\treturn x ** 2\n",
                                        "日本語のテキスト、", "   spaces   and\ttabs ", "👍🏽 ok; ", "it's they're "};
    size_t o = 0;
    for (int k = 0; o < n; k++) {
        const char *p = parts[(k * 7) % 8];
        size_t l = strlen(p);
        if (o + l > n) break;
        memcpy(s + o, p, l);
        o += l;
    }
    int32_t *ids;
    int m;
    double t0 = now_ms();
    ck_assert_int_eq(tok_encode_alloc(t, s, o, false, true, &ids, &m), 0);
    double t1 = now_ms();
    size_t need = tok_decode(t, ids, (size_t)m, 0, NULL, 0);
    char *back = malloc(need);
    tok_decode(t, ids, (size_t)m, 0, back, need);
    ck_assert(need == o && memcmp(back, s, o) == 0);
    printf("tokenizer: encoded %zu bytes into %d tokens in %.1f ms\n", o, m, t1 - t0);
    free(back);
    free(ids);
    for (size_t k = 0; k < 3; k++) {
        size_t len = k == 0 ? 10000 : k == 1 ? 100000 : 20000;
        char fill = k == 2 ? '\n' : ' ';
        memset(s, fill, len);
        t0 = now_ms();
        ck_assert_int_eq(tok_encode_alloc(t, s, len, false, true, &ids, &m), 0);
        t1 = now_ms();
        printf("tokenizer: %zu x %s -> %d tokens in %.1f ms\n", len, fill == ' ' ? "' '" : "'\\n'", m, t1 - t0);
        need = tok_decode(t, ids, (size_t)m, 0, NULL, 0);
        ck_assert_uint_eq(need, len);
        free(ids);
    }
    fflush(stdout);
    free(s);
    tok_free(t);
}
END_TEST

/* ---------------------------------------------------------------- broken vocabularies */

struct broken {
    const char *name;
    const char *key;        /* must appear in the message */
    int code;
};

/* A tiny valid gpt2 vocabulary, then one defect per case. */
static struct gguf_writer *tiny_vocab(int defect) {
    struct gguf_writer *w = gguf_writer_new();
    const char *tokens[] = {"<s>", "</s>", "a", "b", "ab", "\xc4\xa0", "\xc4\xa0" "a", "a"};
    const char *merges[] = {"a b", "\xc4\xa0 a", "ab"};
    int32_t types[] = {3, 3, 1, 1, 1, 1, 1, 1};
    uint64_t n_tok = defect == 3 ? 8 : 7;                                  /* 3: duplicate "a" */
    gguf_writer_set_str(w, "tokenizer.ggml.model", defect == 5 ? "bert" : "gpt2");
    gguf_writer_set_str(w, "tokenizer.ggml.pre", "gpt-2");
    if (defect != 4) gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokens, n_tok);  /* 4: no tokens */
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, defect == 1 ? 3 : 2);     /* 1: "ab" */
    gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_VT_INT32, types, defect == 6 ? 3 : n_tok);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", defect == 2 ? 99999 : 0);       /* 2: bos range */
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 1);
    if (defect == 7) gguf_writer_set_str(w, "tokenizer.ggml.scores", "not an array");
    if (defect == 8) gguf_writer_set_u32(w, "tokenizer.ggml.eot_token_id", 7);            /* 8: eot == n */
    return w;
}

static const struct broken broken_cases[] = {
    {"valid", NULL, 0},
    {"merge without a space", "tokenizer.ggml.merges[2]", ENG_E_FORMAT},
    {"bos out of range", "tokenizer.ggml.bos_token_id", ENG_E_FORMAT},
    {"duplicate token", "tokenizer.ggml.tokens", ENG_E_FORMAT},
    {"no tokens", "tokenizer.ggml.tokens", ENG_E_FORMAT},
    {"unsupported model", "tokenizer.ggml.model", ENG_E_UNSUPPORTED},
    {"short token_type", "tokenizer.ggml.token_type", ENG_E_FORMAT},
    {"scores not an array", "tokenizer.ggml.scores", ENG_E_FORMAT},
    {"eot out of range", "tokenizer.ggml.eot_token_id", ENG_E_FORMAT},
};

START_TEST(test_broken_vocab) {
    setup_tmp();
    const struct broken *b = &broken_cases[_i];
    char err[ERR_CAP] = "";
    struct gguf_writer *w = tiny_vocab(_i);
    ck_assert_int_eq(gguf_writer_write(w, tmp_path("broken.gguf"), err, sizeof err), 0);
    gguf_writer_free(w);
    struct gguf_file *g = NULL;
    ck_assert_msg(gguf_open(&g, tmp_path("broken.gguf"), err, sizeof err) == 0, "%s", err);
    struct tok *t = (struct tok *)1;
    int rc = tok_load(&t, g, err, sizeof err);
    gguf_close(g);
    unlink(tmp_path("broken.gguf"));
    rmdir(tmp_dir);
    if (b->code == 0) {
        ck_assert_msg(rc == 0, "%s: %s", b->name, err);
        int32_t ids[8];
        int n;
        ck_assert_int_eq(tok_encode(t, " ab a", 5, false, false, ids, 8, &n), 0);
        ck_assert_int_eq(n, 3);   /* Ġ, ab, Ġa: no merge "Ġ ab", so the space stays alone */
        ck_assert_int_eq(ids[0], 5);
        ck_assert_int_eq(ids[1], 4);
        ck_assert_int_eq(ids[2], 6);
        tok_free(t);
        return;
    }
    ck_assert_msg(rc == b->code, "%s: got %s (%s), want %s", b->name, eng_err_name(rc), err,
                  eng_err_name(b->code));
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err, b->key) != NULL, "%s: message \"%s\" does not name %s", b->name, err, b->key);
    ck_assert_msg(strstr(err, "broken.gguf") != NULL, "%s: message \"%s\" does not name the file", b->name,
                  err);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("golden");
    test_set_timeout(tc, 120);
    tcase_add_test(tc, test_golden_smollm2);
    tcase_add_loop_test(tc, test_golden_pre_variants, 0, (int)(sizeof variants / sizeof variants[0]));
    tcase_add_test(tc, test_unknown_pre_is_default);
    tcase_add_test(tc, test_golden_spm);
    suite_add_tcase(s, tc);
    tc = tcase_create("decode");
    test_set_timeout(tc, 120);
    tcase_add_test(tc, test_roundtrip_smollm2);
    tcase_add_test(tc, test_roundtrip_spm);
    tcase_add_test(tc, test_detok_holds_partial);
    tcase_add_test(tc, test_detok_stream_smollm2);
    suite_add_tcase(s, tc);
    tc = tcase_create("api");
    test_set_timeout(tc, 120);
    tcase_add_test(tc, test_eog_and_lookup);
    tcase_add_test(tc, test_encode_range);
    tcase_add_test(tc, test_long_inputs);
    tcase_add_loop_test(tc, test_broken_vocab, 0, (int)(sizeof broken_cases / sizeof broken_cases[0]));
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* tokenizer_spm.c — SentencePiece BPE ("llama" vocabularies), as llama.cpp's
 * llm_tokenizer_spm_session does it.
 *
 * The text (spaces already escaped to U+2581 by tokenizer.c) is split into
 * UTF-8 characters by their lead bytes; every adjacent pair whose
 * concatenation is a vocabulary token goes into a heap ordered by that
 * token's score (highest first, then leftmost); popping merges the pair if
 * neither side changed since it was pushed.  What remains are tokens, or
 * characters the vocabulary lacks, which fall back to their bytes' <0xNN>
 * tokens.
 *
 * llama.cpp also keeps a "rev_merge" map to re-split a final symbol that is
 * not a token; every merged symbol is a token by construction, so the only
 * non-tokens left are single characters and the byte fallback covers them.
 *
 * It does not normalize (NFKC), remove extra whitespace, or split on
 * whitespace first as the sentencepiece library may: llama.cpp does none of
 * that either, and the GGUF carries no normalizer.
 */
#include "engine/load/tokenizer_spm.h"
#include "engine/err.h"

#include <stdlib.h>

struct spm_sym {
    uint32_t start, n;
    int32_t prev, next;
};

struct spm_pair {
    float score;
    int32_t left, right;
    uint32_t size;
};

struct spm_work {
    struct spm_sym *sym;
    struct spm_pair *heap;
    size_t n_heap, cap_heap;
};

/* Higher score first; equal scores: the leftmost pair. */
static bool spm_before(const struct spm_pair *a, const struct spm_pair *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int spm_heap_push(struct spm_work *w, struct spm_pair p) {
    if (w->n_heap == w->cap_heap) {
        size_t cap = w->cap_heap ? 2 * w->cap_heap : 64;
        struct spm_pair *h = realloc(w->heap, cap * sizeof *h);
        if (!h) return ENG_E_NOMEM;
        w->heap = h;
        w->cap_heap = cap;
    }
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!spm_before(&p, &w->heap[up])) break;
        w->heap[i] = w->heap[up];
        i = up;
    }
    w->heap[i] = p;
    return 0;
}

static struct spm_pair spm_heap_pop(struct spm_work *w) {
    struct spm_pair top = w->heap[0], last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && spm_before(&w->heap[c + 1], &w->heap[c])) c++;
        if (!spm_before(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n) w->heap[i] = last;
    return top;
}

/* try_add_bigram: the pair counts only if its concatenation is a token. */
static int spm_add_pair(const struct tok *t, struct spm_work *w, const char *text, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return 0;
    const struct spm_sym *l = &w->sym[left], *r = &w->sym[right];
    int32_t id = tok_map_find(&t->vocab, text + l->start, (size_t)l->n + r->n);
    if (id < 0) return 0;
    return spm_heap_push(w, (struct spm_pair){t->score[id], left, right, l->n + r->n});
}

int tok_spm_encode(const struct tok *t, const char *text, size_t len, struct tok_vec *out) {
    static const unsigned char lead_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    struct spm_work w = {0};
    int rc = 0;
    if (len == 0) return 0;
    if (len > UINT32_MAX / 2) return ENG_E_TOO_LONG;
    w.sym = malloc(len * sizeof *w.sym);
    if (!w.sym) return ENG_E_NOMEM;
    int32_t n = 0;
    for (size_t off = 0; off < len; n++) {
        size_t k = lead_len[(unsigned char)text[off] >> 4];
        if (k > len - off) k = len - off;
        w.sym[n] = (struct spm_sym){(uint32_t)off, (uint32_t)k, n - 1, off + k < len ? n + 1 : -1};
        off += k;
    }
    for (int32_t i = 1; i < n && !rc; i++) rc = spm_add_pair(t, &w, text, i - 1, i);
    while (!rc && w.n_heap) {
        struct spm_pair p = spm_heap_pop(&w);
        struct spm_sym *l = &w.sym[p.left], *r = &w.sym[p.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != p.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) w.sym[r->next].prev = p.left;
        rc = spm_add_pair(t, &w, text, l->prev, p.left);
        if (!rc) rc = spm_add_pair(t, &w, text, p.left, l->next);
    }
    for (int32_t i = 0; i >= 0 && !rc; i = w.sym[i].next) {
        const struct spm_sym *s = &w.sym[i];
        int32_t id = tok_map_find(&t->vocab, text + s->start, s->n);
        if (id >= 0) {
            rc = tok_vec_push(out, id);
            continue;
        }
        for (uint32_t j = 0; j < s->n && !rc; j++) {
            /* llama.cpp throws when a byte has no token; the unknown token is the kinder answer */
            int32_t b = t->byte_tok[(unsigned char)text[s->start + j]];
            if (b < 0) b = t->unk;
            if (b >= 0) rc = tok_vec_push(out, b);
        }
    }
    free(w.sym);
    free(w.heap);
    return rc;
}

/* tokenizer_vocab.c — the tokenizer's containers (tokenizer_vocab.h): the
 * open-addressing map from byte strings to entry indices and the growable id
 * list of one encode call.  Loading the vocabulary is tokenizer.c's.
 */
#include "engine/load/tokenizer_vocab.h"
#include "engine/err.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- hash map */

uint64_t tok_hash(const char *s, size_t len) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

int tok_map_init(struct tok_map *m, size_t n, const char *base, const uint32_t *off, const uint32_t *len) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;      /* load factor <= 1/2 keeps probe runs short */
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return ENG_E_NOMEM;
    memset(m->slot, 0xff, cap * sizeof *m->slot);
    m->mask = (uint32_t)(cap - 1);
    m->base = base;
    m->off = off;
    m->len = len;
    return 0;
}

void tok_map_free(struct tok_map *m) {
    free(m->slot);
    m->slot = NULL;
}

int32_t tok_map_find(const struct tok_map *m, const char *key, size_t len) {
    if (!m->slot) return -1;
    uint32_t h = (uint32_t)tok_hash(key, len) & m->mask;
    for (;; h = (h + 1) & m->mask) {
        int32_t i = m->slot[h];
        if (i < 0) return -1;
        if (m->len[i] == len && memcmp(m->base + m->off[i], key, len) == 0) return i;
    }
}

int32_t tok_map_insert(struct tok_map *m, int32_t i) {
    const char *key = m->base + m->off[i];
    size_t len = m->len[i];
    uint32_t h = (uint32_t)tok_hash(key, len) & m->mask;
    for (;; h = (h + 1) & m->mask) {
        int32_t j = m->slot[h];
        if (j < 0) {
            m->slot[h] = i;
            return i;
        }
        if (m->len[j] == len && memcmp(m->base + m->off[j], key, len) == 0) return j;
    }
}

int tok_vec_push(struct tok_vec *v, int32_t id) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        int32_t *p = realloc(v->v, cap * sizeof *p);
        if (!p) return ENG_E_NOMEM;
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = id;
    return 0;
}

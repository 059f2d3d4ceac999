/* prefix_store.c — the block store of prefix_store.h. */
#include "engine/decode/prefix_store.h"

#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "engine/model/backend.h"

#define PS_B ENG_PSTORE_BLOCK

/* The parent hash of block 0 of every chain. */
#define PS_SEED 0x9e3779b97f4a7c15ull

/* A block's chained hash: FNV-1a over its token ids, started from its
 * parent's hash, then splitmix64's finaliser to spread the bits over the
 * buckets.  Not cryptographic: a lookup compares tokens and parents anyway. */
static uint64_t ps_hash(uint64_t parent, const int32_t *tok) {
    uint64_t h = parent ^ 0xcbf29ce484222325ull;
    for (int i = 0; i < PS_B; i++) {
        h ^= (uint32_t)tok[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

size_t eng_pstore_block_bytes(const struct eng_kv *kv) {
    return 2 * (size_t)kv->n_layer * PS_B * (size_t)kv->kv_dim * sizeof(float);
}

/* Element offset of position 0 of `layer` in block `blk` (into k or v). */
static size_t ps_offset(const struct eng_pstore *ps, int blk, int layer) {
    return ((size_t)blk * (size_t)ps->kv->n_layer + (size_t)layer) * PS_B * (size_t)ps->kv->kv_dim;
}

/* Blocks a slot can hold whole. */
static int ps_max_blocks(const struct eng_pstore *ps) { return ps->kv->max_seq / PS_B; }

int eng_pstore_init(struct eng_pstore *ps, const struct eng_kv *kv, size_t max_bytes) {
    memset(ps, 0, sizeof *ps);
    ps->kv = kv;
    ps->pinned = -1;
    ps->free_head = -1;
    ps->hash_mask = ~0ull;
    ps->block_bytes = eng_pstore_block_bytes(kv);
    size_t cap = max_bytes / ps->block_bytes;
    if (cap > INT_MAX / 4) cap = INT_MAX / 4;   /* keeps the bucket count an int */
    if (cap == 0) return 0;
    int n_bucket = 1;
    while ((size_t)n_bucket < 2 * cap) n_bucket <<= 1;
    const struct eng_backend *be = kv->be;
    const size_t half = ps->block_bytes / 2 * cap;
    ps->cap = (int)cap;
    ps->n_bucket = n_bucket;
    ps->k = be->iface->buf_alloc(be->ctx, half);
    ps->v = be->iface->buf_alloc(be->ctx, half);
    ps->tok = malloc(sizeof *ps->tok * cap * PS_B);
    ps->hash = malloc(sizeof *ps->hash * cap);
    ps->parent = malloc(sizeof *ps->parent * cap);
    ps->ref = calloc(cap, sizeof *ps->ref);
    ps->stamp = calloc(cap, sizeof *ps->stamp);
    ps->next = malloc(sizeof *ps->next * cap);
    ps->used = calloc(cap, sizeof *ps->used);
    ps->bucket = malloc(sizeof *ps->bucket * (size_t)n_bucket);
    ps->walk = malloc(sizeof *ps->walk * (size_t)(ps_max_blocks(ps) + 1));
    if (!ps->k || !ps->v || !ps->tok || !ps->hash || !ps->parent || !ps->ref || !ps->stamp || !ps->next ||
        !ps->used || !ps->bucket || !ps->walk) {
        eng_pstore_free(ps);
        return ENG_E_NOMEM;
    }
    for (int i = 0; i < n_bucket; i++) ps->bucket[i] = -1;
    for (int i = 0; i < ps->cap; i++) ps->next[i] = i + 1 < ps->cap ? i + 1 : -1;
    ps->free_head = 0;
    return 0;
}

void eng_pstore_free(struct eng_pstore *ps) {
    if (!ps || !ps->kv) return;
    const struct eng_backend *be = ps->kv->be;
    if (ps->k) be->iface->buf_free(be->ctx, ps->k);
    if (ps->v) be->iface->buf_free(be->ctx, ps->v);
    free(ps->tok);
    free(ps->hash);
    free(ps->parent);
    free(ps->ref);
    free(ps->stamp);
    free(ps->next);
    free(ps->used);
    free(ps->bucket);
    free(ps->walk);
    memset(ps, 0, sizeof *ps);
}

/* The block with this (masked) hash, parent and tokens; -1 when none.  The
 * hash only narrows the search: tokens and parent decide. */
static int ps_find(const struct eng_pstore *ps, uint64_t hm, int parent, const int32_t *tok) {
    for (int i = ps->bucket[hm & (uint64_t)(ps->n_bucket - 1)]; i >= 0; i = ps->next[i])
        if (ps->hash[i] == hm && ps->parent[i] == parent &&
            !memcmp(ps->tok + (size_t)i * PS_B, tok, sizeof *tok * PS_B))
            return i;
    return -1;
}

/* The leading blocks of tok that the store holds (at most nb); their indices
 * go to out when it is not NULL. */
static int ps_walk(const struct eng_pstore *ps, const int32_t *tok, int nb, int *out) {
    if (ps->cap == 0) return 0;
    if (nb > ps_max_blocks(ps)) nb = ps_max_blocks(ps);
    uint64_t h = PS_SEED;
    int parent = -1;
    for (int b = 0; b < nb; b++) {
        const int32_t *t = tok + (size_t)b * PS_B;
        h = ps_hash(h, t);
        const int blk = ps_find(ps, h & ps->hash_mask, parent, t);
        if (blk < 0) return b;
        if (out) out[b] = blk;
        parent = blk;
    }
    return nb;
}

int eng_pstore_peek(const struct eng_pstore *ps, const int32_t *tok, int n) {
    return n > 0 ? ps_walk(ps, tok, n / PS_B, NULL) : 0;
}

int eng_pstore_match(struct eng_pstore *ps, const int32_t *tok, int n) {
    eng_pstore_drop(ps);
    if (ps->cap == 0 || n < PS_B) return 0;
    ps->n_walk = ps_walk(ps, tok, n / PS_B, ps->walk);
    const long long now = ++ps->clock;
    for (int b = 0; b < ps->n_walk; b++) ps->stamp[ps->walk[b]] = now;
    if (ps->n_walk > 0) {
        ps->pinned = ps->walk[ps->n_walk - 1];
        ps->ref[ps->pinned]++;
    }
    return ps->n_walk;
}

void eng_pstore_drop(struct eng_pstore *ps) {
    if (ps->cap > 0 && ps->pinned >= 0) ps->ref[ps->pinned]--;
    ps->pinned = -1;
    ps->n_walk = 0;
}

/* Copy block `blk` from (to_slot false) or to (true) entries [pos, pos + BLOCK) of slot. */
static void ps_copy(const struct eng_pstore *ps, int blk, int slot, int pos, bool to_slot) {
    const struct eng_kv *kv = ps->kv;
    const struct eng_backend *be = kv->be;
    const size_t bytes = sizeof(float) * PS_B * (size_t)kv->kv_dim;
    for (int l = 0; l < kv->n_layer; l++) {
        float *sk = kv->k + eng_kv_offset(kv, l, slot, pos), *sv = kv->v + eng_kv_offset(kv, l, slot, pos);
        float *bk = ps->k + ps_offset(ps, blk, l), *bv = ps->v + ps_offset(ps, blk, l);
        be->iface->buf_copy(be->ctx, to_slot ? sk : bk, to_slot ? bk : sk, bytes);
        be->iface->buf_copy(be->ctx, to_slot ? sv : bv, to_slot ? bv : sv, bytes);
    }
}

void eng_pstore_take(struct eng_pstore *ps, int slot, int b0, int nb) {
    if (nb > ps->n_walk) nb = ps->n_walk;
    for (int b = b0 < 0 ? 0 : b0; b < nb; b++) ps_copy(ps, ps->walk[b], slot, b * PS_B, true);
    eng_pstore_drop(ps);
}

/* Take block `blk` out of the index and its parent's references, and free it. */
static void ps_evict(struct eng_pstore *ps, int blk) {
    for (int *pp = &ps->bucket[ps->hash[blk] & (uint64_t)(ps->n_bucket - 1)]; *pp >= 0; pp = &ps->next[*pp])
        if (*pp == blk) {
            *pp = ps->next[blk];
            break;
        }
    if (ps->parent[blk] >= 0) ps->ref[ps->parent[blk]]--;
    ps->used[blk] = 0;
    ps->next[blk] = ps->free_head;
    ps->free_head = blk;
    ps->n_used--;
    ps->n_evicted++;
}

/* A free block, evicting the least recently used unreferenced one when none
 * is free; -1 when every block held is referenced or pinned. */
static int ps_alloc(struct eng_pstore *ps) {
    if (ps->free_head < 0) {
        int victim = -1;
        for (int i = 0; i < ps->cap; i++)
            if (ps->used[i] && ps->ref[i] == 0 && (victim < 0 || ps->stamp[i] < ps->stamp[victim])) victim = i;
        if (victim < 0) return -1;
        ps_evict(ps, victim);
    }
    const int blk = ps->free_head;
    ps->free_head = ps->next[blk];
    ps->used[blk] = 1;
    ps->n_used++;
    return blk;
}

int eng_pstore_save(struct eng_pstore *ps, int slot, const int32_t *tok, int n) {
    if (ps->cap == 0 || n < PS_B) return 0;
    int nb = n / PS_B;
    if (nb > ps_max_blocks(ps)) nb = ps_max_blocks(ps);
    const long long now = ++ps->clock;
    uint64_t h = PS_SEED;
    int parent = -1, stored = 0;
    for (int b = 0; b < nb; b++) {
        const int32_t *t = tok + (size_t)b * PS_B;
        h = ps_hash(h, t);
        const uint64_t hm = h & ps->hash_mask;
        int blk = ps_find(ps, hm, parent, t);
        if (blk < 0) {
            if (parent >= 0) ps->ref[parent]++;   /* pinned: the parent may be a leaf, the eviction must not take it */
            blk = ps_alloc(ps);
            if (parent >= 0) ps->ref[parent]--;
            if (blk < 0) break;
            memcpy(ps->tok + (size_t)blk * PS_B, t, sizeof *t * PS_B);
            ps->hash[blk] = hm;
            ps->parent[blk] = parent;
            ps->ref[blk] = 0;
            const int bu = (int)(hm & (uint64_t)(ps->n_bucket - 1));
            ps->next[blk] = ps->bucket[bu];
            ps->bucket[bu] = blk;
            if (parent >= 0) ps->ref[parent]++;   /* the child's reference */
            ps_copy(ps, blk, slot, b * PS_B, false);
            stored++;
            ps->n_stored++;
        }
        ps->stamp[blk] = now;
        parent = blk;
    }
    return stored;
}
